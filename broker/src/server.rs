//! The listener and the connections: one tokio task per connection, reading
//! size-prefixed frames and answering them one at a time, in order (as Kafka does).
//!
//! Limits: a frame larger than `request_bytes_max` (or with a negative size), a frame
//! that does not decode, or a silence longer than `idle_timeout` closes that connection
//! with a logged reason; nothing else is affected. A frame's buffer grows with the bytes
//! that actually arrive, so a client announcing a large frame and sending nothing costs
//! nothing. Connections beyond `connections_max` are closed when accepted.
//!
//! With TLS (tls.rs) each accepted connection first completes its handshake, within
//! [`TLS_HANDSHAKE_TIMEOUT`], on its own task; a failed handshake (a plaintext client, an
//! untrusted client certificate) closes that connection with a logged reason.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufStream};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::codec::{decode_frame, FrameError};
use crate::handlers::{handle, Broker};
use crate::{Config, Shared};

/// How long a TLS client has to complete its handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the broker could not start.
#[derive(Debug)]
pub enum StartError {
    Bind { addr: SocketAddr, source: std::io::Error },
    DataDir { path: std::path::PathBuf, source: std::io::Error },
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            StartError::DataDir { path, source } => {
                write!(f, "cannot create the data directory {}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for StartError {}

/// A running broker.
#[derive(Debug)]
pub struct BrokerHandle {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    broker: Shared,
}

impl BrokerHandle {
    /// The address it listens on (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The broker's state (its topics are open for writing in this process).
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Stop accepting, close every connection, and wait until it is done.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }

    /// Wait until the broker stops (it stops only through [`BrokerHandle::shutdown`]
    /// or when its task is aborted).
    pub async fn wait(&mut self) {
        let _ = (&mut self.task).await;
    }
}

/// Bind `config.listen` and serve on the current tokio runtime (multi-threaded or not).
pub async fn start(config: Config) -> Result<BrokerHandle, StartError> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|source| StartError::DataDir { path: config.data_dir.clone(), source })?;
    let listener =
        TcpListener::bind(config.listen).await.map_err(|source| StartError::Bind { addr: config.listen, source })?;
    let local_addr = listener.local_addr().map_err(|source| StartError::Bind { addr: config.listen, source })?;
    let broker: Shared = Arc::new(Broker::new(config));
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(accept_loop(listener, broker.clone(), stop_rx));
    tracing::info!(%local_addr, data_dir = %broker.config.data_dir.display(), "flow broker listening");
    Ok(BrokerHandle { local_addr, stop, task, broker })
}

async fn accept_loop(listener: TcpListener, broker: Shared, mut stop: watch::Receiver<bool>) {
    let permits = Arc::new(Semaphore::new(broker.config.limits.connections_max));
    let mut conns = JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {
                broker.groups.lock().unwrap_or_else(|p| p.into_inner()).tick(Instant::now());
                while conns.try_join_next().is_some() {}
            }
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, limit = broker.config.limits.connections_max, "closing a new connection: too many connections (--max-connections)");
                    drop(stream);
                    continue;
                };
                let b = broker.clone();
                conns.spawn(async move {
                    let _ = stream.set_nodelay(true);
                    let served = match stream.local_addr() {
                        Err(e) => Err(io_closed("local address", e)),
                        Ok(local) => match b.config.tls.clone() {
                            None => connection(stream, peer, local, b).await,
                            Some(tls) => {
                                let acceptor = tokio_rustls::TlsAcceptor::from(tls);
                                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                                    Err(_) => Err(Closed::Closed(format!("no TLS handshake within {TLS_HANDSHAKE_TIMEOUT:?}"))),
                                    Ok(Err(e)) => Err(Closed::Closed(handshake_failed(&e))),
                                    Ok(Ok(tls_stream)) => connection(tls_stream, peer, local, b).await,
                                }
                            }
                        },
                    };
                    match served {
                        Ok(()) => {}
                        // The client hung up (possibly while we answered): nothing to report.
                        Err(Closed::HungUp(reason)) => tracing::debug!(%peer, "connection ended: {reason}"),
                        Err(Closed::Closed(reason)) => tracing::warn!(%peer, "closing the connection: {reason}"),
                    }
                    drop(permit);
                });
            }
        }
    }
    conns.shutdown().await;
}

/// The logged reason of a failed TLS handshake, with what the client likely lacks.
fn handshake_failed(e: &std::io::Error) -> String {
    use rustls::{AlertDescription as Alert, Error as Tls, InvalidMessage};
    let tls = e.get_ref().and_then(|inner| inner.downcast_ref::<Tls>());
    let hint = match tls {
        Some(Tls::InvalidMessage(InvalidMessage::InvalidContentType)) => {
            " (the client did not start TLS: it needs security.protocol=SSL or SASL_SSL)"
        }
        Some(Tls::NoCertificatesPresented) => {
            " (--tls-client-ca requires a client certificate: ssl.certificate.location and ssl.key.location)"
        }
        Some(Tls::AlertReceived(Alert::UnknownCA | Alert::BadCertificate)) => {
            " (the client does not trust this server's certificate: give it the CA with ssl.ca.location)"
        }
        _ => "",
    };
    format!("TLS handshake failed: {e}{hint}")
}

/// Why a connection ended early.
enum Closed {
    /// The peer went away (reset, broken pipe).
    HungUp(String),
    /// We close it: a bad frame, a limit, an idle timeout.
    Closed(String),
}

impl From<String> for Closed {
    fn from(s: String) -> Closed {
        Closed::Closed(s)
    }
}

fn io_closed(what: &str, e: std::io::Error) -> Closed {
    use std::io::ErrorKind::*;
    match e.kind() {
        BrokenPipe | ConnectionReset | ConnectionAborted | UnexpectedEof => Closed::HungUp(format!("{what}: {e}")),
        _ => Closed::Closed(format!("{what}: {e}")),
    }
}

/// Serve one connection (TCP, or TLS over it) until the client closes it (`Ok`) or it
/// must be closed. `local` is the address the client connected to (it is advertised).
async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    peer: SocketAddr,
    local: SocketAddr,
    broker: Shared,
) -> Result<(), Closed> {
    let limits = broker.config.limits.clone();
    // Requests are read and answered in turn on one task: one buffered stream serves both.
    let mut io = BufStream::with_capacity(limits.connection_buffer_bytes, limits.connection_buffer_bytes, stream);
    let mut session = crate::sasl::Session::default();
    loop {
        let mut size = [0u8; 4];
        match tokio::time::timeout(limits.idle_timeout, io.read_exact(&mut size)).await {
            Err(_) => return Err(format!("idle for {:?}", limits.idle_timeout).into()),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(io_closed("read failed", e)),
            Ok(Ok(_)) => {}
        }
        let size = i32::from_be_bytes(size);
        if size < 0 || size as usize > limits.request_bytes_max {
            return Err(Closed::Closed(format!(
                "a request of {size} bytes exceeds the limit of {} bytes (--max-request-bytes)",
                limits.request_bytes_max
            )));
        }
        let frame = read_frame(&mut io, size as usize, &limits).await?;
        // The codec is a dependency: a panic in it must not take the broker down.
        let decoded = match std::panic::catch_unwind(|| decode_frame(frame)) {
            Ok(Ok(d)) => d,
            Ok(Err(FrameError(reason))) => return Err(format!("malformed request: {reason}").into()),
            Err(_) => return Err("malformed request: the decoder panicked".to_string().into()),
        };
        let response = match session.step(broker.config.sasl_users.as_deref(), &decoded) {
            crate::sasl::Step::Pass => {
                handle(&broker, decoded, local).await.map_err(|e| Closed::Closed(format!("cannot answer: {e}")))?
            }
            crate::sasl::Step::Answer(bytes) => Some(bytes),
            crate::sasl::Step::AnswerAndClose(bytes, reason) => {
                io.write_all(&bytes).await.map_err(|e| io_closed("write failed", e))?;
                io.flush().await.map_err(|e| io_closed("write failed", e))?;
                return Err(Closed::Closed(reason));
            }
            crate::sasl::Step::Close(reason) => return Err(Closed::Closed(reason)),
        };
        if let Some(bytes) = response {
            io.write_all(&bytes).await.map_err(|e| io_closed("write failed", e))?;
            io.flush().await.map_err(|e| io_closed("write failed", e))?;
        }
        tracing::trace!(%peer, "request answered");
    }
}

async fn read_frame<R: AsyncRead + Unpin>(
    rd: &mut R,
    size: usize,
    limits: &crate::Limits,
) -> Result<bytes::Bytes, Closed> {
    let step = limits.connection_buffer_bytes.max(4096);
    let mut buf = BytesMut::with_capacity(size.min(step));
    while buf.len() < size {
        buf.reserve((size - buf.len()).min(step.max(1 << 20)));
        let want = (size - buf.len()) as u64;
        let read = tokio::time::timeout(limits.idle_timeout, (&mut *rd).take(want).read_buf(&mut buf)).await;
        match read {
            Err(_) => return Err(format!("idle for {:?} in the middle of a request", limits.idle_timeout).into()),
            Ok(Err(e)) => return Err(io_closed("read failed", e)),
            Ok(Ok(0)) => {
                return Err(format!("the connection ended inside a request ({} of {size} bytes)", buf.len()).into())
            }
            Ok(Ok(_)) => {}
        }
    }
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::handshake_failed;
    use rustls::{AlertDescription, Error, InvalidMessage};

    /// The hints read rustls' error as tokio-rustls hands it over (inside the io error).
    #[test]
    fn failed_handshakes_say_what_the_client_lacks() {
        let io = |e: Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let plain = handshake_failed(&io(Error::InvalidMessage(InvalidMessage::InvalidContentType)));
        assert!(plain.contains("did not start TLS"), "{plain}");
        assert!(handshake_failed(&io(Error::NoCertificatesPresented)).contains("requires a client certificate"));
        let ca = handshake_failed(&io(Error::AlertReceived(AlertDescription::UnknownCA)));
        assert!(ca.contains("does not trust"), "{ca}");
        let other = handshake_failed(&std::io::Error::other("reset"));
        assert_eq!(other, "TLS handshake failed: reset");
    }
}
