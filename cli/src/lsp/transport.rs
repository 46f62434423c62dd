//! The stdio transport: JSON-RPC messages framed with `Content-Length` headers.
//!
//! Unlike `lsp_server::Connection::stdio`, a malformed message (bad header, bad JSON,
//! not a JSON-RPC message) is logged and skipped: the server must not die on bad
//! input. The reader stops at end of input or after the `exit` notification.

use lsp_server::{Connection, Message};
use std::io::{self, BufRead, Write};
use std::thread;

/// Largest message accepted, in bytes: a bigger `Content-Length` is bad input.
const MESSAGE_BYTES_MAX: usize = 256 << 20;

/// The reader and writer threads; join them after the server loop returns.
pub struct IoThreads {
    reader: thread::JoinHandle<()>,
    writer: thread::JoinHandle<io::Result<()>>,
}

impl IoThreads {
    pub fn join(self) {
        // The reader may be blocked on stdin after `exit`; it ends with the process.
        drop(self.reader);
        if let Ok(Err(e)) = self.writer.join() {
            eprintln!("flowc lsp: writing to the client failed: {e}");
        }
    }
}

pub fn stdio() -> (Connection, IoThreads) {
    let (writer_tx, writer_rx) = crossbeam_channel::unbounded::<Message>();
    let (reader_tx, reader_rx) = crossbeam_channel::unbounded::<Message>();
    let writer = thread::Builder::new()
        .name("flowc-lsp-writer".into())
        .spawn(move || {
            let stdout = io::stdout();
            let mut out = stdout.lock();
            for m in writer_rx {
                m.write(&mut out)?;
            }
            out.flush()
        })
        .expect("spawn the writer thread");
    let reader = thread::Builder::new()
        .name("flowc-lsp-reader".into())
        .spawn(move || {
            let stdin = io::stdin();
            let mut input = stdin.lock();
            loop {
                match read_message(&mut input) {
                    Ok(Some(Ok(msg))) => {
                        let exit = matches!(&msg, Message::Notification(n) if n.method == "exit");
                        if reader_tx.send(msg).is_err() || exit {
                            return;
                        }
                    }
                    Ok(Some(Err(why))) => eprintln!("flowc lsp: skipping a malformed message: {why}"),
                    Ok(None) => return,
                    Err(e) => {
                        eprintln!("flowc lsp: reading from the client failed: {e}");
                        return;
                    }
                }
            }
        })
        .expect("spawn the reader thread");
    (Connection { sender: writer_tx, receiver: reader_rx }, IoThreads { reader, writer })
}

/// Reads one framed message. `Ok(None)` at end of input; `Ok(Some(Err))` for a
/// message that is malformed but framed well enough to skip.
pub fn read_message(r: &mut impl BufRead) -> io::Result<Option<Result<Message, String>>> {
    let mut length: Option<usize> = None;
    let mut line = String::new();
    let mut bad_header = None;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            if length.is_some() || bad_header.is_some() {
                break;
            }
            continue; // stray blank line between messages
        }
        match l.split_once(':') {
            Some((name, value)) if name.trim().eq_ignore_ascii_case("content-length") => {
                match value.trim().parse::<usize>() {
                    Ok(n) if n <= MESSAGE_BYTES_MAX => length = Some(n),
                    _ => bad_header = Some(format!("bad Content-Length {:?}", value.trim())),
                }
            }
            Some(_) => {} // Content-Type and other headers
            None => bad_header = Some(format!("bad header line {l:?}")),
        }
    }
    let Some(n) = length else {
        return Ok(Some(Err(bad_header.unwrap_or_else(|| "no Content-Length".into()))));
    };
    let mut body = vec![0u8; n];
    r.read_exact(&mut body)?;
    let Ok(text) = String::from_utf8(body) else {
        return Ok(Some(Err("the body is not UTF-8".into())));
    };
    Ok(Some(serde_json::from_str::<Message>(&text).map_err(|e| format!("not a JSON-RPC message: {e}"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(body: &str) -> String {
        format!("Content-Length: {}\r\n\r\n{body}", body.len())
    }

    #[test]
    fn skips_malformed_messages_and_reads_on() {
        let good = r#"{"jsonrpc":"2.0","method":"initialized","params":{}}"#;
        let input = format!("{}{}garbage line\r\n\r\n{}", frame("{not json"), frame(r#"{"x":1}"#), frame(good));
        let mut r = io::Cursor::new(input.into_bytes());
        assert!(matches!(read_message(&mut r), Ok(Some(Err(_)))));
        assert!(matches!(read_message(&mut r), Ok(Some(Err(_)))));
        assert!(matches!(read_message(&mut r), Ok(Some(Err(_)))));
        match read_message(&mut r) {
            Ok(Some(Ok(Message::Notification(n)))) => assert_eq!(n.method, "initialized"),
            other => panic!("expected the notification, got {other:?}"),
        }
        assert!(matches!(read_message(&mut r), Ok(None)));
    }
}
