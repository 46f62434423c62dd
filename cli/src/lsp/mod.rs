//! `flowc lsp`: the language server, over stdio.
//!
//! It owns the LSP protocol: open documents, debounced re-checks, publishing
//! diagnostics, and answering hover, definition, references, completion, document
//! symbols and code actions. Everything about the program comes from the compiler's
//! editor queries (`flow_compiler::ide`); this module only converts between LSP
//! positions (0-based lines, UTF-16 columns) and the compiler's byte spans, and
//! between the compiler's values and LSP's JSON types.
//!
//! The server is single-threaded and runs on a thread with the front end's large
//! stack. A panic inside one request is caught and answered as an internal error for
//! that request only; a panic while checking a document leaves its old diagnostics.

mod convert;
mod transport;

use crate::front::FRONT_END_STACK_BYTES;
use convert::{LineIndex, ToLsp};
use flow_compiler::ide::{Analysis, ParseCache};
use flow_compiler::FileLoader;
use lsp_server::{Connection, ErrorCode, Message, Notification, Request, Response};
use lsp_types as lt;
use serde_json::Value;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// How long after the last change a document is re-checked: typing a word costs one
/// check, not one per key.
const DEBOUNCE_MS: u64 = 10;

/// Set to a request method (e.g. `textDocument/hover`) to make its handler panic:
/// fault injection for the test of panic isolation.
const FAULT_ENV: &str = "FLOWC_LSP_PANIC_ON";

/// Runs the server over stdio until the client says `exit` or closes the stream.
pub fn run() -> ExitCode {
    let (conn, io) = transport::stdio();
    let server = std::thread::Builder::new()
        .name("flowc-lsp".into())
        .stack_size(FRONT_END_STACK_BYTES)
        .spawn(move || serve(conn));
    let code = match server.map(|h| h.join()) {
        Ok(Ok(true)) => ExitCode::SUCCESS,
        Ok(Ok(false)) => ExitCode::FAILURE, // exit without shutdown

        Ok(Err(_)) => {
            eprintln!("flowc lsp: the server panicked");
            ExitCode::from(70)
        }
        Err(e) => {
            eprintln!("flowc lsp: cannot start the server thread: {e}");
            ExitCode::from(70)
        }
    };
    io.join();
    code
}

/// The capabilities this server offers.
fn capabilities() -> lt::ServerCapabilities {
    lt::ServerCapabilities {
        position_encoding: Some(lt::PositionEncodingKind::UTF16),
        text_document_sync: Some(lt::TextDocumentSyncCapability::Options(lt::TextDocumentSyncOptions {
            open_close: Some(true),
            change: Some(lt::TextDocumentSyncKind::INCREMENTAL),
            ..Default::default()
        })),
        hover_provider: Some(lt::HoverProviderCapability::Simple(true)),
        definition_provider: Some(lt::OneOf::Left(true)),
        references_provider: Some(lt::OneOf::Left(true)),
        document_symbol_provider: Some(lt::OneOf::Left(true)),
        completion_provider: Some(lt::CompletionOptions {
            trigger_characters: Some(vec!["|".into(), ".".into(), ">".into(), ":".into()]),
            ..Default::default()
        }),
        code_action_provider: Some(lt::CodeActionProviderCapability::Options(lt::CodeActionOptions {
            code_action_kinds: Some(vec![lt::CodeActionKind::QUICKFIX]),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Serves one client on `conn`: the handshake, then messages until `exit` or the end
/// of input. Returns whether `shutdown` came first (LSP: exit code 0, else 1).
pub fn serve(conn: Connection) -> bool {
    let init = serde_json::json!({
        "capabilities": capabilities(),
        "serverInfo": { "name": "flowc", "version": env!("CARGO_PKG_VERSION") },
    });
    // The handshake: nothing but `initialize` is answered before it (LSP says so).
    loop {
        match conn.receiver.recv() {
            Ok(Message::Request(req)) if req.method == "initialize" => {
                let _ = conn.sender.send(Message::Response(Response::new_ok(req.id, init)));
                break;
            }
            Ok(Message::Request(req)) => {
                let _ = conn.sender.send(Message::Response(Response::new_err(
                    req.id,
                    ErrorCode::ServerNotInitialized as i32,
                    "the server is not initialized yet".into(),
                )));
            }
            Ok(Message::Notification(n)) if n.method == "exit" => return false,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    let mut server = Server::new(conn.sender.clone());
    loop {
        let msg = match server.next_deadline() {
            Some(at) => match conn.receiver.recv_deadline(at) {
                Ok(m) => m,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    server.check_due();
                    continue;
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return server.shutdown,
            },
            None => match conn.receiver.recv() {
                Ok(m) => m,
                Err(_) => return server.shutdown,
            },
        };
        match msg {
            Message::Request(req) => {
                if req.method == "shutdown" {
                    server.reply(Response::new_ok(req.id, ()));
                    server.shutdown = true;
                    continue;
                }
                server.on_request(req);
            }
            Message::Notification(n) if n.method == "exit" => return server.shutdown,
            Message::Notification(n) => server.on_notification(n),
            Message::Response(_) => {}
        }
    }
}

/// An open document.
struct Doc {
    text: String,
    version: i32,
    /// The analysis of `text`, when it is up to date.
    analysis: Option<Analysis>,
    /// The files its last check read besides itself (imports), to re-check it when
    /// one of them changes.
    reads: Vec<PathBuf>,
    /// Its declarations parsed so far: an edit re-parses only those it touched.
    cache: ParseCache,
    /// When a request last used its analysis (analyses of idle documents are dropped).
    used: Instant,
    /// Its text or an import changed since its diagnostics were last published.
    dirty: bool,
}

/// Analyses kept in memory: those of the documents used most recently. The others
/// are recomputed when a request needs them (their diagnostics are published).
const ANALYSES_MAX: usize = 8;

struct Server {
    sender: crossbeam_channel::Sender<Message>,
    docs: HashMap<lt::Url, Doc>,
    /// Documents to re-check, and when.
    due: HashMap<lt::Url, Instant>,
    shutdown: bool,
    fault: Option<String>,
}

/// Reads open documents from their buffers and other files from the disk.
struct Overlay<'a> {
    docs: &'a HashMap<lt::Url, Doc>,
}

impl FileLoader for Overlay<'_> {
    fn load(&self, path: &Path) -> std::io::Result<String> {
        if let Some(doc) = lt::Url::from_file_path(path).ok().and_then(|u| self.docs.get(&u)) {
            return Ok(doc.text.clone());
        }
        std::fs::read_to_string(path)
    }
}

/// The path the compiler sees for a document.
fn url_path(url: &lt::Url) -> PathBuf {
    url.to_file_path().unwrap_or_else(|_| PathBuf::from(url.as_str()))
}

/// The URL of a file of a compilation, by the name the compiler gave it.
fn file_url(root: &lt::Url, a: &Analysis, file: flow_compiler::source::FileId) -> Option<lt::Url> {
    if file == a.root() {
        return Some(root.clone());
    }
    let name = &a.comp.sources.get(file).name;
    lt::Url::from_file_path(name).ok()
}

impl Server {
    fn new(sender: crossbeam_channel::Sender<Message>) -> Server {
        Server {
            sender,
            docs: HashMap::new(),
            due: HashMap::new(),
            shutdown: false,
            fault: std::env::var(FAULT_ENV).ok(),
        }
    }

    fn reply(&self, r: Response) {
        let _ = self.sender.send(Message::Response(r));
    }

    fn notify(&self, method: &str, params: impl serde::Serialize) {
        let _ = self.sender.send(Message::Notification(Notification::new(method.into(), params)));
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.due.values().min().copied()
    }

    /// Re-checks the documents whose debounce time has passed.
    fn check_due(&mut self) {
        let now = Instant::now();
        let ready: Vec<lt::Url> = self.due.iter().filter(|(_, t)| **t <= now).map(|(u, _)| u.clone()).collect();
        for u in ready {
            self.due.remove(&u);
            self.check(&u);
        }
    }

    /// Analyses `url` now and publishes its diagnostics if they may have changed.
    fn check(&mut self, url: &lt::Url) {
        let Some(doc) = self.docs.get_mut(url) else { return };
        let path = url_path(url);
        let text = doc.text.clone();
        let version = doc.version;
        let mut cache = std::mem::take(&mut doc.cache);
        let loader = Overlay { docs: &self.docs };
        let analysis = match catch_unwind(AssertUnwindSafe(|| Analysis::with_cache(&path, text, &loader, &mut cache))) {
            Ok(a) => a,
            Err(panic) => {
                eprintln!("flowc lsp: checking {url} panicked: {}", panic_message(&panic));
                return;
            }
        };
        let diagnostics = convert::diagnostics(url, &analysis);
        let root = analysis.root();
        let reads =
            analysis.comp.sources.files().filter(|(id, _)| *id != root).map(|(_, f)| PathBuf::from(&f.name)).collect();
        let mut publish = false;
        if let Some(doc) = self.docs.get_mut(url) {
            doc.analysis = Some(analysis);
            doc.reads = reads;
            doc.cache = cache;
            doc.used = Instant::now();
            publish = std::mem::take(&mut doc.dirty);
        }
        self.evict();
        if !publish {
            return;
        }
        self.notify(
            "textDocument/publishDiagnostics",
            lt::PublishDiagnosticsParams { uri: url.clone(), diagnostics, version: Some(version) },
        );
    }

    /// Drops the analyses of the least recently used documents beyond [`ANALYSES_MAX`].
    fn evict(&mut self) {
        let mut live: Vec<(Instant, lt::Url)> =
            self.docs.iter().filter(|(_, d)| d.analysis.is_some()).map(|(u, d)| (d.used, u.clone())).collect();
        if live.len() <= ANALYSES_MAX {
            return;
        }
        live.sort();
        for (_, u) in &live[..live.len() - ANALYSES_MAX] {
            if let Some(d) = self.docs.get_mut(u) {
                d.analysis = None;
                d.cache = ParseCache::new();
            }
        }
    }

    /// The up-to-date analysis of `url`, checking it first if an edit is pending.
    fn analysis(&mut self, url: &lt::Url) -> Option<&Analysis> {
        let stale = self.docs.get(url).is_some_and(|d| d.analysis.is_none()) || self.due.contains_key(url);
        if stale {
            self.due.remove(url);
            self.check(url);
        }
        let doc = self.docs.get_mut(url)?;
        doc.used = Instant::now();
        doc.analysis.as_ref()
    }

    /// Schedules re-checks of `url` and of every open document that imports it.
    fn schedule(&mut self, url: &lt::Url, delay: Duration) {
        let at = Instant::now() + delay;
        let path = url_path(url);
        let dependents: Vec<lt::Url> =
            self.docs.iter().filter(|(u, d)| *u != url && d.reads.contains(&path)).map(|(u, _)| u.clone()).collect();
        for u in dependents.into_iter().chain(std::iter::once(url.clone())) {
            if let Some(d) = self.docs.get_mut(&u) {
                d.analysis = None;
                d.dirty = true;
            }
            self.due.insert(u, at);
        }
    }

    fn on_notification(&mut self, n: Notification) {
        match n.method.as_str() {
            "textDocument/didOpen" => {
                let Ok(p) = serde_json::from_value::<lt::DidOpenTextDocumentParams>(n.params) else { return };
                let url = p.text_document.uri;
                self.docs.insert(
                    url.clone(),
                    Doc {
                        text: p.text_document.text,
                        version: p.text_document.version,
                        analysis: None,
                        reads: Vec::new(),
                        cache: ParseCache::new(),
                        used: Instant::now(),
                        dirty: true,
                    },
                );
                self.schedule(&url, Duration::ZERO);
                self.check_due();
            }
            "textDocument/didChange" => {
                let Ok(p) = serde_json::from_value::<lt::DidChangeTextDocumentParams>(n.params) else { return };
                let url = p.text_document.uri;
                let Some(doc) = self.docs.get_mut(&url) else { return };
                for change in p.content_changes {
                    match change.range {
                        Some(range) => {
                            let index = LineIndex::new(&doc.text);
                            let start = index.offset(&doc.text, range.start);
                            let end = index.offset(&doc.text, range.end).max(start);
                            doc.text.replace_range(start..end, &change.text);
                        }
                        None => doc.text = change.text,
                    }
                }
                doc.version = p.text_document.version;
                self.schedule(&url, Duration::from_millis(DEBOUNCE_MS));
            }
            "textDocument/didClose" => {
                let Ok(p) = serde_json::from_value::<lt::DidCloseTextDocumentParams>(n.params) else { return };
                self.docs.remove(&p.text_document.uri);
                self.due.remove(&p.text_document.uri);
                self.notify(
                    "textDocument/publishDiagnostics",
                    lt::PublishDiagnosticsParams { uri: p.text_document.uri, diagnostics: Vec::new(), version: None },
                );
            }
            "textDocument/didSave" => {
                // Files that import the saved one may read it from the disk.
                if let Ok(p) = serde_json::from_value::<lt::DidSaveTextDocumentParams>(n.params) {
                    self.schedule(&p.text_document.uri, Duration::ZERO);
                }
            }
            _ => {} // initialized, $/cancelRequest, workspace notifications...
        }
    }

    fn on_request(&mut self, req: Request) {
        let id = req.id.clone();
        if self.shutdown {
            self.reply(Response::new_err(id, ErrorCode::InvalidRequest as i32, "the server is shutting down".into()));
            return;
        }
        let method = req.method.clone();
        let fault = self.fault.as_deref() == Some(method.as_str());
        let result = catch_unwind(AssertUnwindSafe(|| {
            if fault {
                panic!("injected fault in {method} ({FAULT_ENV})");
            }
            self.handle(req)
        }));
        let response = match result {
            Ok(Ok(value)) => Response { id, result: Some(value), error: None },
            Ok(Err((code, message))) => Response::new_err(id, code as i32, message),
            Err(panic) => {
                let why = panic_message(&panic);
                eprintln!("flowc lsp: {method} panicked: {why}");
                Response::new_err(id, ErrorCode::InternalError as i32, format!("internal error in {method}: {why}"))
            }
        };
        self.reply(response);
    }

    fn handle(&mut self, req: Request) -> Result<Value, (ErrorCode, String)> {
        fn params<P: serde::de::DeserializeOwned>(v: Value) -> Result<P, (ErrorCode, String)> {
            serde_json::from_value(v).map_err(|e| (ErrorCode::InvalidParams, format!("invalid params: {e}")))
        }
        fn json(v: impl serde::Serialize) -> Result<Value, (ErrorCode, String)> {
            serde_json::to_value(v).map_err(|e| (ErrorCode::InternalError, e.to_string()))
        }
        match req.method.as_str() {
            "textDocument/hover" => {
                let p: lt::HoverParams = params(req.params)?;
                let url = p.text_document_position_params.text_document.uri;
                let pos = p.text_document_position_params.position;
                let Some(a) = self.analysis(&url) else { return json(Value::Null) };
                let (file, offset) = convert::offset(a, pos);
                let hover = a.hover(file, offset).map(|h| lt::Hover {
                    contents: lt::HoverContents::Markup(lt::MarkupContent {
                        kind: lt::MarkupKind::Markdown,
                        value: h.markdown,
                    }),
                    range: Some(h.span.to_lsp(a)),
                });
                json(hover)
            }
            "textDocument/definition" => {
                let p: lt::GotoDefinitionParams = params(req.params)?;
                let url = p.text_document_position_params.text_document.uri;
                let pos = p.text_document_position_params.position;
                let Some(a) = self.analysis(&url) else { return json(Value::Null) };
                let (file, offset) = convert::offset(a, pos);
                let loc = a
                    .definition(file, offset)
                    .and_then(|s| Some(lt::Location { uri: file_url(&url, a, s.file)?, range: s.to_lsp(a) }));
                json(loc.map(lt::GotoDefinitionResponse::Scalar))
            }
            "textDocument/references" => {
                let p: lt::ReferenceParams = params(req.params)?;
                let url = p.text_document_position.text_document.uri;
                let pos = p.text_document_position.position;
                let Some(a) = self.analysis(&url) else { return json(Value::Null) };
                let (file, offset) = convert::offset(a, pos);
                let refs = a.references(file, offset);
                let skip = usize::from(!p.context.include_declaration && !refs.is_empty());
                let locs: Vec<lt::Location> = refs[skip..]
                    .iter()
                    .filter_map(|s| Some(lt::Location { uri: file_url(&url, a, s.file)?, range: s.to_lsp(a) }))
                    .collect();
                json(locs)
            }
            "textDocument/documentSymbol" => {
                let p: lt::DocumentSymbolParams = params(req.params)?;
                let Some(a) = self.analysis(&p.text_document.uri) else { return json(Value::Null) };
                let symbols: Vec<lt::DocumentSymbol> =
                    a.symbols(a.root()).iter().map(|s| convert::symbol(a, s)).collect();
                json(lt::DocumentSymbolResponse::Nested(symbols))
            }
            "textDocument/completion" => {
                let p: lt::CompletionParams = params(req.params)?;
                let url = p.text_document_position.text_document.uri;
                let pos = p.text_document_position.position;
                // Completion re-checks variants of the text: it reads open buffers too.
                if self.analysis(&url).is_none() {
                    return json(Value::Null);
                }
                let doc = &self.docs[&url];
                let a = doc.analysis.as_ref().ok_or((ErrorCode::InternalError, "no analysis".to_string()))?;
                let (_, offset) = convert::offset(a, pos);
                let loader = Overlay { docs: &self.docs };
                let items: Vec<lt::CompletionItem> =
                    a.completions(offset, &loader).into_iter().map(convert::completion).collect();
                json(lt::CompletionResponse::Array(items))
            }
            "textDocument/codeAction" => {
                let p: lt::CodeActionParams = params(req.params)?;
                let url = p.text_document.uri;
                let Some(a) = self.analysis(&url) else { return json(Value::Null) };
                json(convert::quick_fixes(&url, a, p.range))
            }
            m if m.starts_with("$/") => Err((ErrorCode::MethodNotFound, format!("`{m}` is not supported"))),
            m => Err((ErrorCode::MethodNotFound, format!("unknown method `{m}`"))),
        }
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
