//! The language server over its real transport: the `flowc lsp` binary, spoken to
//! in JSON-RPC over pipes, as an editor would.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(20);

struct Client {
    child: Child,
    stdin: ChildStdin,
    rx: Receiver<Value>,
    /// Notifications received while waiting for something else.
    pending: Vec<Value>,
    next_id: i64,
}

impl Client {
    fn start() -> Client {
        Client::start_with_env(&[])
    }

    fn start_with_env(env: &[(&str, &str)]) -> Client {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowc"));
        cmd.arg("lsp").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start flowc lsp");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            loop {
                let mut len = None;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let l = line.trim_end();
                    if l.is_empty() {
                        break;
                    }
                    if let Some(v) = l.strip_prefix("Content-Length: ") {
                        len = v.parse::<usize>().ok();
                    }
                }
                let mut body = vec![0; len.expect("Content-Length")];
                if r.read_exact(&mut body).is_err() {
                    return;
                }
                let v: Value = serde_json::from_slice(&body).expect("the server writes JSON");
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        let mut c = Client { child, stdin, rx, pending: Vec::new(), next_id: 1 };
        let init = c.request(
            "initialize",
            json!({ "processId": null, "rootUri": null, "capabilities": {
                "textDocument": { "publishDiagnostics": { "relatedInformation": true } } } }),
        );
        assert!(init["result"]["capabilities"]["hoverProvider"].as_bool().unwrap(), "{init}");
        c.notify("initialized", json!({}));
        c
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.stdin.write_all(bytes).unwrap();
        self.stdin.flush().unwrap();
    }

    fn send(&mut self, v: Value) {
        let body = v.to_string();
        self.send_raw(format!("Content-Length: {}\r\n\r\n{body}", body.len()).as_bytes());
    }

    fn notify(&mut self, method: &str, params: Value) {
        self.send(json!({ "jsonrpc": "2.0", "method": method, "params": params }));
    }

    fn recv(&mut self, deadline: Instant) -> Value {
        match self.rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(v) => v,
            Err(RecvTimeoutError::Timeout) => panic!("no message from the server in time"),
            Err(RecvTimeoutError::Disconnected) => panic!("the server closed its output"),
        }
    }

    /// Sends a request and returns the whole response (`result` or `error`).
    fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send(json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }));
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let v = self.recv(deadline);
            if v.get("id") == Some(&json!(id)) && v.get("method").is_none() {
                return v;
            }
            self.pending.push(v);
        }
    }

    fn result(&mut self, method: &str, params: Value) -> Value {
        let r = self.request(method, params);
        assert!(r.get("error").is_none(), "{method} failed: {r}");
        r["result"].clone()
    }

    /// The next diagnostics published for `uri` (at `version`, if given).
    fn diagnostics(&mut self, uri: &str, version: Option<i64>) -> Vec<Value> {
        let matches = |v: &Value| {
            v["method"] == "textDocument/publishDiagnostics"
                && v["params"]["uri"] == uri
                && version.is_none_or(|x| v["params"]["version"] == x)
        };
        if let Some(i) = self.pending.iter().position(matches) {
            let v = self.pending.remove(i);
            return v["params"]["diagnostics"].as_array().unwrap().clone();
        }
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let v = self.recv(deadline);
            if matches(&v) {
                return v["params"]["diagnostics"].as_array().unwrap().clone();
            }
            self.pending.push(v);
        }
    }

    fn open(&mut self, uri: &str, text: &str) -> Vec<Value> {
        self.notify(
            "textDocument/didOpen",
            json!({ "textDocument": { "uri": uri, "languageId": "flow", "version": 1, "text": text } }),
        );
        self.diagnostics(uri, Some(1))
    }

    fn shutdown(mut self) {
        let r = self.request("shutdown", Value::Null);
        assert!(r.get("error").is_none(), "{r}");
        self.notify("exit", Value::Null);
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "flowc lsp exited with {status}");
                return;
            }
            assert!(Instant::now() < deadline, "flowc lsp did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pos(line: u32, character: u32) -> Value {
    json!({ "line": line, "character": character })
}

fn at(uri: &str, line: u32, character: u32) -> Value {
    json!({ "textDocument": { "uri": uri }, "position": pos(line, character) })
}

/// The 0-based (line, UTF-16 column) of the first `needle` in `text` (plus `skip`
/// characters), computed independently of the server.
fn find(text: &str, needle: &str, skip: usize) -> (u32, u32) {
    let i = text.find(needle).unwrap_or_else(|| panic!("{needle:?} not in the text"));
    let line = text[..i].matches('\n').count();
    let line_start = text[..i].rfind('\n').map_or(0, |j| j + 1);
    let before: String = text[line_start..i].chars().chain(needle.chars().take(skip)).collect();
    (line as u32, before.encode_utf16().count() as u32)
}

fn code(d: &Value) -> &str {
    d["code"].as_str().unwrap_or("")
}

fn uri_of(p: &Path) -> String {
    format!("file://{}", p.display())
}

const PROGRAM: &str = r#"schema Txn {
    id: string,
    account: string,
    amount: decimal(12, 2),
    ts: timestamp,
}

const LIMIT = 100

topic txns: Txn { partitions: 2, key: account }
source bank: Txn = file("txns.jsonl", format: json) event_time ts watermark 5s
sink out = stdout()

pipeline big =
    from bank
    | where amount > LIMIT and lower(account) != "x"
    | window tumbling(1m)
    | aggregate { total: sum(amount), n: count() }
    -> out

pipeline copy = from bank -> txns
"#;

#[test]
fn diagnostics_on_open_and_change_with_utf16_columns() {
    let mut c = Client::start();
    let uri = "file:///tmp/flow-lsp-test/utf16.flow";
    // Non-ASCII before the error on its line: é is 1 UTF-16 unit (2 bytes), 😀 is 2
    // units (4 bytes).
    let text = "schema T { id: string, ts: timestamp }\nsource s: T = file(\"t.jsonl\") event_time ts watermark 1s\nsink out = stdout()\npipeline p = from s | where \"é😀\" == idd -> out\n";
    let diags = c.open(uri, text);
    assert_eq!(diags.len(), 1, "{diags:?}");
    let d = &diags[0];
    assert_eq!(code(d), "E0103");
    assert_eq!(d["severity"], 1);
    assert_eq!(d["source"], "flowc");
    assert!(d["message"].as_str().unwrap().starts_with("unknown field `idd`"), "{d}");
    assert!(d["message"].as_str().unwrap().contains("help: did you mean `id`?"), "{d}");
    let (line, col) = find(text, "idd", 0);
    assert_eq!((line, col), (3, 37)); // 36 characters before it, and 😀 counts twice
    assert_eq!(d["range"]["start"], pos(line, col));
    assert_eq!(d["range"]["end"], pos(line, col + 3));

    // An incremental change fixing the name: the error goes away.
    c.notify(
        "textDocument/didChange",
        json!({ "textDocument": { "uri": uri, "version": 2 },
                "contentChanges": [{ "range": { "start": pos(line, col), "end": pos(line, col + 3) }, "text": "id" }] }),
    );
    assert_eq!(c.diagnostics(uri, Some(2)), Vec::<Value>::new());

    // A full-text change with a syntax error and a warning-free rest.
    let broken = "schema T { id: string ts: timestamp }\n";
    c.notify(
        "textDocument/didChange",
        json!({ "textDocument": { "uri": uri, "version": 3 }, "contentChanges": [{ "text": broken }] }),
    );
    let diags = c.diagnostics(uri, Some(3));
    assert_eq!(diags.iter().map(code).collect::<Vec<_>>(), vec!["E0001"], "{diags:?}");

    // Warnings are warnings.
    let unused = "schema T { id: string }\n";
    c.notify(
        "textDocument/didChange",
        json!({ "textDocument": { "uri": uri, "version": 4 }, "contentChanges": [{ "text": unused }] }),
    );
    let diags = c.diagnostics(uri, Some(4));
    assert_eq!(diags.iter().map(code).collect::<Vec<_>>(), vec!["W0001"], "{diags:?}");
    assert_eq!(diags[0]["severity"], 2);
    c.shutdown();
}

#[test]
fn rapid_changes_are_debounced_and_the_last_one_wins() {
    let mut c = Client::start();
    let uri = "file:///tmp/flow-lsp-test/debounce.flow";
    c.open(uri, "schema T { id: string }\n");
    for v in 2..=20 {
        let text = format!("schema T {{ id: string, x{v}: nope }}\n");
        c.notify(
            "textDocument/didChange",
            json!({ "textDocument": { "uri": uri, "version": v }, "contentChanges": [{ "text": text }] }),
        );
    }
    let diags = c.diagnostics(uri, Some(20));
    assert_eq!(diags.len(), 1, "{diags:?}");
    assert_eq!(code(&diags[0]), "E0102");
    let published = c.pending.iter().filter(|v| v["method"] == "textDocument/publishDiagnostics").count();
    assert!(published < 19, "every change was checked ({published} publications)");
    c.shutdown();
}

/// Every case of tests/diagnostics: the server reports what `flowc check --format
/// json` reports for the file (code, severity, message, start line and column).
#[test]
fn diagnostics_match_flowc_check() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/diagnostics");
    let dir = dir.canonicalize().unwrap();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "flow"))
        .collect();
    files.sort();
    assert!(files.len() > 50);
    let mut c = Client::start();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let out =
            Command::new(env!("CARGO_BIN_EXE_flowc")).args(["check", "--format", "json"]).arg(f).output().unwrap();
        let want: Vec<(String, String, String, u64, u64)> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|v| v["file"] == f.display().to_string())
            .map(|v| {
                (
                    v["code"].as_str().unwrap().to_string(),
                    v["severity"].as_str().unwrap().to_string(),
                    v["message"].as_str().unwrap().to_string(),
                    v["line"].as_u64().unwrap() - 1,
                    v["column"].as_u64().unwrap() - 1,
                )
            })
            .collect();
        let uri = uri_of(f);
        let got: Vec<(String, String, String, u64, u64)> = c
            .open(&uri, &text)
            .iter()
            .map(|d| {
                let sev = if d["severity"] == 1 { "error" } else { "warning" };
                let msg = d["message"].as_str().unwrap().split("\nhelp: ").next().unwrap().to_string();
                let start = &d["range"]["start"];
                // Columns: check counts characters, LSP UTF-16 units; the cases are ASCII
                // before their errors, or the test would say so.
                (
                    code(d).to_string(),
                    sev.to_string(),
                    msg,
                    start["line"].as_u64().unwrap(),
                    start["character"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(got, want, "{}", f.display());
        c.notify("textDocument/didClose", json!({ "textDocument": { "uri": uri } }));
        assert_eq!(c.diagnostics(&uri, None), Vec::<Value>::new());
    }
    c.shutdown();
}

#[test]
fn hover_shows_types_signatures_schemas_and_windows() {
    let mut c = Client::start();
    let uri = "file:///tmp/flow-lsp-test/hover.flow";
    assert_eq!(c.open(uri, PROGRAM), Vec::<Value>::new());
    let hover = |c: &mut Client, needle: &str, skip: usize| -> String {
        let (l, ch) = find(PROGRAM, needle, skip);
        let r = c.result("textDocument/hover", at(uri, l, ch));
        r["contents"]["value"].as_str().unwrap_or_else(|| panic!("no hover at {needle:?}: {r}")).to_string()
    };
    // A field: its type.
    let h = hover(&mut c, "amount > LIMIT", 1);
    assert!(h.contains("field amount: decimal(12, 2)"), "{h}");
    // A stdlib function: signature and doc.
    let h = hover(&mut c, "lower(account)", 1);
    assert!(h.contains("lower(string) -> string") && h.contains("lower case"), "{h}");
    // An aggregate.
    let h = hover(&mut c, "sum(amount)", 1);
    assert!(h.contains("aggregate:"), "{h}");
    // A schema (used as a topic's schema): its fields.
    let h = hover(&mut c, "Txn {", 1);
    assert!(h.contains("schema Txn {") && h.contains("amount: decimal(12, 2)"), "{h}");
    // A source: schema, connector and event time.
    let h = hover(&mut c, "from bank", 6);
    assert!(h.contains("source bank: Txn from file event_time ts"), "{h}");
    // A const: type and value.
    let h = hover(&mut c, "LIMIT and", 1);
    assert!(h.contains("const LIMIT: int = 100"), "{h}");
    // A window: kind and size.
    let h = hover(&mut c, "tumbling(1m)", 1);
    assert!(h.contains("tumbling window of 1m"), "{h}");
    // An expression: its type.
    let h = hover(&mut c, "> LIMIT", 0);
    assert!(h.contains(": bool"), "{h}");
    // A field an operator made.
    let h = hover(&mut c, "total: sum", 1);
    assert!(h.contains("field total: decimal"), "{h}");
    // Nothing at all: null, not an error.
    let r = c.result("textDocument/hover", at(uri, 6, 0));
    assert!(r.is_null(), "{r}");
    c.shutdown();
}

#[test]
fn definition_and_references_across_imported_files() {
    let dir = tempfile::tempdir().unwrap();
    let lib_text = "schema Txn { account: string, amount: int, ts: timestamp }\ntopic txns: Txn { partitions: 1 }\nsink out = stdout()\n";
    let main_text = "import \"lib.flow\"\n\nsource bank: Txn = file(\"t.jsonl\") event_time ts watermark 1s\npipeline a = from bank -> txns\npipeline b = from txns | where amount > 1 | select { account, amount } -> out\n";
    std::fs::write(dir.path().join("lib.flow"), lib_text).unwrap();
    std::fs::write(dir.path().join("main.flow"), main_text).unwrap();
    let main = uri_of(&dir.path().join("main.flow"));
    let lib = uri_of(&dir.path().join("lib.flow"));
    let mut c = Client::start();
    assert_eq!(c.open(&main, main_text), Vec::<Value>::new());

    // A topic used in main, declared in lib.
    let (l, ch) = find(main_text, "-> txns", 4);
    let d = c.result("textDocument/definition", at(&main, l, ch));
    assert_eq!(d["uri"], lib.as_str());
    let (dl, dc) = find(lib_text, "txns:", 0);
    assert_eq!(d["range"]["start"], pos(dl, dc));

    // A field used in a pipeline, declared in the schema of lib.
    let (l, ch) = find(main_text, "amount > 1", 2);
    let d = c.result("textDocument/definition", at(&main, l, ch));
    assert_eq!(d["uri"], lib.as_str());
    let (dl, dc) = find(lib_text, "amount: int", 0);
    assert_eq!(d["range"], json!({ "start": pos(dl, dc), "end": pos(dl, dc + 6) }));

    // The import path: the imported file.
    let (l, ch) = find(main_text, "lib.flow", 2);
    let d = c.result("textDocument/definition", at(&main, l, ch));
    assert_eq!((d["uri"].as_str().unwrap(), d["range"]["start"].clone()), (lib.as_str(), pos(0, 0)));

    // A schema.
    let (l, ch) = find(main_text, "Txn", 0);
    let d = c.result("textDocument/definition", at(&main, l, ch));
    assert_eq!((d["uri"].as_str().unwrap(), d["range"]["start"].clone()), (lib.as_str(), pos(0, 7)));

    // References of the field: the declaration, `amount > 1`, and the select item.
    let (l, ch) = find(main_text, "amount > 1", 0);
    let refs = c.result(
        "textDocument/references",
        json!({ "textDocument": { "uri": main }, "position": pos(l, ch), "context": { "includeDeclaration": true } }),
    );
    let mut got: Vec<(String, Value)> = refs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["uri"].as_str().unwrap().to_string(), r["range"]["start"].clone()))
        .collect();
    got.sort_by_key(|(u, p)| (u.clone(), p.to_string()));
    let (s1l, s1c) = find(main_text, "amount > 1", 0);
    let (s2l, s2c) = find(main_text, "amount }", 0);
    let mut want = vec![(lib.clone(), pos(dl, dc)), (main.clone(), pos(s1l, s1c)), (main.clone(), pos(s2l, s2c))];
    want.sort_by_key(|(u, p)| (u.clone(), p.to_string()));
    assert_eq!(got, want);

    // References of a source, without the declaration.
    let (l, ch) = find(main_text, "bank", 0);
    let refs = c.result(
        "textDocument/references",
        json!({ "textDocument": { "uri": main }, "position": pos(l, ch), "context": { "includeDeclaration": false } }),
    );
    let (ul, uc) = find(main_text, "from bank", 5);
    assert_eq!(refs, json!([{ "uri": main, "range": { "start": pos(ul, uc), "end": pos(ul, uc + 4) } }]));
    c.shutdown();
}

#[test]
fn an_edit_in_an_imported_open_file_rechecks_its_importer() {
    let dir = tempfile::tempdir().unwrap();
    let lib_text = "schema Txn { account: string, ts: timestamp }\nsink out = stdout()\n";
    let main_text = "import \"lib.flow\"\nsource bank: Txn = file(\"t.jsonl\")\npipeline a = from bank | where account == \"x\" -> out\n";
    std::fs::write(dir.path().join("lib.flow"), lib_text).unwrap();
    let main = uri_of(&dir.path().join("main.flow"));
    let lib = uri_of(&dir.path().join("lib.flow"));
    let mut c = Client::start();
    assert_eq!(c.open(&main, main_text), Vec::<Value>::new());
    // Alone, lib declares things nothing uses.
    let lib_diags = c.open(&lib, lib_text);
    assert_eq!(lib_diags.iter().map(code).collect::<Vec<_>>(), vec!["W0001", "W0001"]);
    // Opening lib re-checks main, which reads it: still clean.
    assert_eq!(c.diagnostics(&main, Some(1)), Vec::<Value>::new());
    // Rename the field in the (unsaved) lib buffer: main now has an unknown field.
    c.notify(
        "textDocument/didChange",
        json!({ "textDocument": { "uri": lib, "version": 2 },
                "contentChanges": [{ "text": "schema Txn { acount: string, ts: timestamp }\nsink out = stdout()\n" }] }),
    );
    let diags = c.diagnostics(&main, None);
    assert_eq!(diags.iter().map(code).collect::<Vec<_>>(), vec!["E0103"], "{diags:?}");
    c.shutdown();
}

#[test]
fn completion_of_fields_streams_keywords_and_functions() {
    let mut c = Client::start();
    let uri = "file:///tmp/flow-lsp-test/complete.flow";
    let head = "schema Txn { account: string, amount: int, ts: timestamp }\nsource bank: Txn = file(\"t.jsonl\") event_time ts watermark 1s\ntopic big: Txn { partitions: 1 }\nsink out = stdout()\n";
    // The pipeline being typed does not parse yet.
    let text = format!("{head}pipeline p = from bank | select {{ x: am");
    let diags = c.open(uri, &text);
    assert!(diags.iter().any(|d| code(d) == "E0001"), "{diags:?}");
    let line = text.lines().count() as u32 - 1;
    let col = text.lines().last().unwrap().len() as u32;
    let labels = |r: &Value| -> Vec<String> {
        r.as_array().unwrap().iter().map(|i| i["label"].as_str().unwrap().to_string()).collect()
    };
    let r = c.result("textDocument/completion", at(uri, line, col));
    let got = labels(&r);
    for want in ["account", "amount", "ts", "lower", "count", "and"] {
        assert!(got.contains(&want.to_string()), "{want} missing from {got:?}");
    }
    let amount = r.as_array().unwrap().iter().find(|i| i["label"] == "amount").unwrap();
    assert_eq!(amount["detail"], "int");
    assert_eq!(amount["kind"], 5); // Field
    let lower = r.as_array().unwrap().iter().find(|i| i["label"] == "lower").unwrap();
    assert_eq!(lower["detail"], "lower(string) -> string");

    // After a `select`, the fields are those it made.
    let text2 = format!("{head}pipeline p = from bank | select {{ who: account, n: amount }} | where ");
    c.notify(
        "textDocument/didChange",
        json!({ "textDocument": { "uri": uri, "version": 2 }, "contentChanges": [{ "text": text2 }] }),
    );
    let col = text2.lines().last().unwrap().len() as u32;
    let got = labels(&c.result("textDocument/completion", at(uri, line, col)));
    assert!(got.contains(&"who".to_string()) && got.contains(&"n".to_string()), "{got:?}");
    assert!(!got.contains(&"account".to_string()), "{got:?}");

    // Right after `|`: operators.
    let text3 = format!("{head}pipeline p = from bank | ");
    c.notify(
        "textDocument/didChange",
        json!({ "textDocument": { "uri": uri, "version": 3 }, "contentChanges": [{ "text": text3 }] }),
    );
    let col = text3.lines().last().unwrap().len() as u32;
    let got = labels(&c.result("textDocument/completion", at(uri, line, col)));
    for want in ["where", "select", "window", "aggregate", "join"] {
        assert!(got.contains(&want.to_string()), "{want} missing from {got:?}");
    }
    assert!(!got.contains(&"account".to_string()), "{got:?}");

    // After `from`: sources and topics; after `->`: topics and sinks.
    let text4 = format!("{head}pipeline p = from ");
    c.notify(
        "textDocument/didChange",
        json!({ "textDocument": { "uri": uri, "version": 4 }, "contentChanges": [{ "text": text4 }] }),
    );
    let col = text4.lines().last().unwrap().len() as u32;
    let got = labels(&c.result("textDocument/completion", at(uri, line, col)));
    assert_eq!(got, vec!["bank", "big"]);
    let text5 = format!("{head}pipeline p = from bank -> ");
    c.notify(
        "textDocument/didChange",
        json!({ "textDocument": { "uri": uri, "version": 5 }, "contentChanges": [{ "text": text5 }] }),
    );
    let col = text5.lines().last().unwrap().len() as u32;
    let got = labels(&c.result("textDocument/completion", at(uri, line, col)));
    assert_eq!(got, vec!["big", "out"]);

    // At the top level: declaration keywords.
    let text6 = format!("{head}\n");
    c.notify(
        "textDocument/didChange",
        json!({ "textDocument": { "uri": uri, "version": 6 }, "contentChanges": [{ "text": text6 }] }),
    );
    let got = labels(&c.result("textDocument/completion", at(uri, line + 1, 0)));
    for want in ["schema", "topic", "source", "sink", "pipeline", "const", "fn"] {
        assert!(got.contains(&want.to_string()), "{want} missing from {got:?}");
    }
    c.shutdown();
}

#[test]
fn document_symbols_outline_the_file() {
    let mut c = Client::start();
    let uri = "file:///tmp/flow-lsp-test/symbols.flow";
    c.open(uri, PROGRAM);
    let r = c.result("textDocument/documentSymbol", json!({ "textDocument": { "uri": uri } }));
    let names: Vec<(String, u64)> = r
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap().to_string(), s["kind"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        names,
        vec![
            ("Txn".to_string(), 23),
            ("LIMIT".to_string(), 14),
            ("txns".to_string(), 24),
            ("bank".to_string(), 11),
            ("out".to_string(), 11),
            ("big".to_string(), 12),
            ("copy".to_string(), 12),
        ]
    );
    let fields: Vec<&str> = r[0]["children"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(fields, vec!["id", "account", "amount", "ts"]);
    let (l, ch) = find(PROGRAM, "amount:", 0);
    assert_eq!(r[0]["children"][2]["selectionRange"]["start"], pos(l, ch));
    c.shutdown();
}

#[test]
fn code_action_applies_did_you_mean() {
    let mut c = Client::start();
    let uri = "file:///tmp/flow-lsp-test/fix.flow";
    let text = "schema T { amount: int, ts: timestamp }\nsource bank: T = file(\"t.jsonl\") event_time ts watermark 1s\nsink out = stdout()\npipeline p = from bnk | where ammount > 1 -> out\n";
    let diags = c.open(uri, text);
    assert_eq!(diags.iter().map(code).collect::<Vec<_>>(), vec!["E0101"], "{diags:?}");
    let (l, ch) = find(text, "bnk", 0);
    let r = c.result(
        "textDocument/codeAction",
        json!({ "textDocument": { "uri": uri }, "range": { "start": pos(l, ch), "end": pos(l, ch) },
                "context": { "diagnostics": diags } }),
    );
    let actions = r.as_array().unwrap();
    assert_eq!(actions.len(), 1, "{r}");
    assert_eq!(actions[0]["title"], "replace `bnk` with `bank`");
    assert_eq!(actions[0]["kind"], "quickfix");
    assert_eq!(actions[0]["diagnostics"][0]["code"], "E0101");
    let edits = &actions[0]["edit"]["changes"][uri];
    assert_eq!(edits, &json!([{ "range": { "start": pos(l, ch), "end": pos(l, ch + 3) }, "newText": "bank" }]));

    // Apply it as an editor would: the next error (the field) appears, with its fix.
    c.notify(
        "textDocument/didChange",
        json!({ "textDocument": { "uri": uri, "version": 2 },
                "contentChanges": [{ "range": edits[0]["range"], "text": "bank" }] }),
    );
    let diags = c.diagnostics(uri, Some(2));
    assert_eq!(diags.iter().map(code).collect::<Vec<_>>(), vec!["E0103"], "{diags:?}");
    let r = c.result(
        "textDocument/codeAction",
        json!({ "textDocument": { "uri": uri }, "range": diags[0]["range"], "context": { "diagnostics": diags } }),
    );
    assert_eq!(r[0]["edit"]["changes"][uri][0]["newText"], "amount");
    // No fix where there is no suggestion.
    let r = c.result(
        "textDocument/codeAction",
        json!({ "textDocument": { "uri": uri }, "range": { "start": pos(0, 0), "end": pos(0, 1) }, "context": { "diagnostics": [] } }),
    );
    assert_eq!(r, json!([]));
    c.shutdown();
}

#[test]
fn bad_input_and_unknown_requests_do_not_kill_the_server() {
    let mut c = Client::start();
    let uri = "file:///tmp/flow-lsp-test/robust.flow";
    // Malformed frames and payloads are skipped.
    c.send_raw(b"Content-Length: 9\r\n\r\n{not json");
    c.send_raw(b"this is not a header\r\n\r\n");
    c.send_raw(b"Content-Length: 7\r\n\r\n{\"x\":1}");
    // Unknown requests get MethodNotFound; bad params get InvalidParams.
    let r = c.request("flow/nonsense", json!({}));
    assert_eq!(r["error"]["code"], -32601, "{r}");
    let r = c.request("textDocument/hover", json!({ "nonsense": true }));
    assert_eq!(r["error"]["code"], -32602, "{r}");
    // Requests about documents that are not open answer null.
    let r = c.result("textDocument/hover", at("file:///nowhere.flow", 0, 0));
    assert!(r.is_null());
    // Positions past the end are clamped.
    c.open(uri, "schema T { a: int }\n");
    let r = c.result("textDocument/hover", at(uri, 1000, 1000));
    assert!(r.is_null());
    let r = c.result("textDocument/completion", at(uri, 1000, 1000));
    assert!(r.is_array());
    // Deep nesting: the front end bounds it; the server answers.
    let deep = format!("const X = {}1{}\n", "(".repeat(3000), ")".repeat(3000));
    let chain = format!("const Y = 1{}\n", " + 1".repeat(5000));
    c.notify(
        "textDocument/didChange",
        json!({ "textDocument": { "uri": uri, "version": 2 }, "contentChanges": [{ "text": format!("{deep}{chain}") }] }),
    );
    let diags = c.diagnostics(uri, Some(2));
    assert!(!diags.is_empty());
    let r = c.result("textDocument/hover", at(uri, 1, 12));
    assert!(r.is_object() || r.is_null());
    // Still alive and well.
    let r = c.result("textDocument/documentSymbol", json!({ "textDocument": { "uri": uri } }));
    assert!(r.is_array());
    c.shutdown();
}

#[test]
fn exit_without_shutdown_is_exit_code_1() {
    let mut c = Client::start();
    c.notify("exit", Value::Null);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(status) = c.child.try_wait().unwrap() {
            assert_eq!(status.code(), Some(1));
            return;
        }
        assert!(Instant::now() < deadline, "flowc lsp did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_panic_in_a_request_is_an_internal_error_for_that_request_only() {
    let mut c = Client::start_with_env(&[("FLOWC_LSP_PANIC_ON", "textDocument/hover")]);
    let uri = "file:///tmp/flow-lsp-test/panic.flow";
    c.open(uri, PROGRAM);
    let r = c.request("textDocument/hover", at(uri, 0, 8));
    assert_eq!(r["error"]["code"], -32603, "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("internal error in textDocument/hover"), "{r}");
    // Other requests, and the document, are unaffected.
    let r = c.result("textDocument/definition", at(uri, 9, 13));
    assert_eq!(r["range"]["start"], pos(0, 7));
    c.notify(
        "textDocument/didChange",
        json!({ "textDocument": { "uri": uri, "version": 2 }, "contentChanges": [{ "text": "schema T { a: nope }\n" }] }),
    );
    assert_eq!(c.diagnostics(uri, Some(2)).iter().map(code).collect::<Vec<_>>(), vec!["E0102"]);
    c.shutdown();
}

/// A real editor: Neovim headless, with the configuration of editors/nvim, starts
/// `flowc lsp` for a broken file; we assert the diagnostics it received. Neovim
/// shows byte columns: it converted the server's UTF-16 columns itself.
#[test]
fn neovim_receives_the_diagnostics() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap();
    let file = root.join("tests/nvim/broken.flow");
    let text = std::fs::read_to_string(&file).unwrap();
    let out = tempfile::NamedTempFile::new().unwrap();
    let nvim = std::env::var("NVIM").unwrap_or_else(|_| "nvim".into());
    let status = Command::new(&nvim)
        .args(["--headless", "-n", "-i", "NONE", "-u"])
        .arg(root.join("tests/nvim/e2e.lua"))
        .arg(&file)
        .env("FLOWC", env!("CARGO_BIN_EXE_flowc"))
        .env("FLOW_NVIM_CONFIG", root.join("editors/nvim/flow.lua"))
        .env("FLOW_NVIM_OUT", out.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .unwrap_or_else(|e| {
            panic!("cannot run `{nvim}` (Debian package neovim; scripts/test-editors installs it): {e}")
        });
    assert!(status.success(), "nvim exited with {status}");
    let got: Vec<(String, u64, u64, u64)> = std::fs::read_to_string(out.path())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|v| {
            assert!(v.get("error").is_none(), "{v}");
            assert_eq!(v["source"], "flowc");
            (
                v["code"].as_str().unwrap().to_string(),
                v["lnum"].as_u64().unwrap(),
                v["col"].as_u64().unwrap(),
                v["severity"].as_u64().unwrap(),
            )
        })
        .collect();
    // (code, 0-based line, 0-based byte column, severity 1 = error).
    let byte_col = |needle: &str| -> (u64, u64) {
        let i = text.find(needle).unwrap();
        let line_start = text[..i].rfind('\n').map_or(0, |j| j + 1);
        (text[..i].matches('\n').count() as u64, (i - line_start) as u64)
    };
    let (l1, c1) = byte_col("ammount");
    let (l2, c2) = byte_col("b: int }");
    let (l3, c3) = byte_col("nope");
    assert_eq!((l1, c1), (5, 55)); // after "día 😀": 51 characters, 55 bytes
    let mut want =
        vec![("E0103".to_string(), l1, c1, 1), ("E0001".to_string(), l2, c2, 1), ("E0102".to_string(), l3, c3, 1)];
    let mut got_sorted = got.clone();
    got_sorted.sort_by_key(|d| d.1);
    want.sort_by_key(|d| d.1);
    assert_eq!(got_sorted, want, "{got:?}");
}

/// Analyses of idle documents are dropped (only 8 are kept) and recomputed when a
/// request needs them, without publishing their unchanged diagnostics again.
#[test]
fn many_open_documents_are_answered_after_eviction() {
    let mut c = Client::start();
    let uris: Vec<String> = (0..12).map(|i| format!("file:///tmp/flow-lsp-test/many{i}.flow")).collect();
    for u in &uris {
        assert_eq!(c.open(u, PROGRAM), Vec::<Value>::new());
    }
    let (l, ch) = find(PROGRAM, "from bank", 6);
    for u in &uris {
        let d = c.result("textDocument/definition", at(u, l, ch));
        assert_eq!(d["uri"], u.as_str());
        assert_eq!(d["range"]["start"], pos(10, 7));
    }
    // The answers came without new diagnostics.
    let r = c.result("textDocument/hover", at(&uris[0], l, ch));
    assert!(r["contents"]["value"].as_str().unwrap().contains("source bank"));
    assert!(!c.pending.iter().any(|v| v["method"] == "textDocument/publishDiagnostics"), "{:?}", c.pending);
    c.shutdown();
}
