//! `flowc serve`: a broker that speaks the Kafka wire protocol over flow's embedded
//! durable log, so existing Kafka producers and consumers (librdkafka, the Java
//! client, kafka-python, kcat) work against a flow data directory unchanged.
//!
//! Code map:
//! - [`codec`]: frames <-> requests/responses (the `kafka-protocol` crate's codecs),
//!   the API versions we answer, the ApiVersions fallback.
//! - [`server`]: the listener, one tokio task per connection, frame limits; requests
//!   on a connection are answered in order.
//! - [`handlers`]: one function per API over the log ([`flow_runtime::log`]).
//! - [`group`]: the consumer-group coordinator state machine.
//! - [`producer`]: idempotent-produce sequence checks.
//! - [`sasl`]: optional SASL/PLAIN authentication with users from a file.
//! - [`tls`]: TLS for the listener (rustls), optionally with client certificates.
//! - [`alloc`]: the allocator guard against hostile array lengths.
//! - [`bench`]: low-cost Kafka-protocol load drivers for `flowc bench kafka`.
//!
//! What it must not know: .flow programs, pipelines, terminals. Batches are stored as
//! producers sent them (compressed or not) and fetched as they are on disk; the
//! log validates every batch (CRC and records) before it is appended.
//!
//! Start it with [`start`] on a tokio runtime; the returned [`BrokerHandle`] gives the
//! bound address and stops it. The runtime can run pipelines beside it.

pub mod alloc;
pub mod bench;
pub mod codec;
pub mod group;
pub mod handlers;
pub mod producer;
pub mod sasl;
pub mod server;
pub mod tls;

#[cfg(test)]
#[global_allocator]
static TEST_ALLOC: alloc::GuardedAlloc = alloc::GuardedAlloc;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use server::{start, BrokerHandle, StartError};

/// Limits of one broker; every one has a flag on `flowc serve`.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request frame (Kafka's `socket.request.max.bytes`); a larger frame closes
    /// the connection.
    pub request_bytes_max: usize,
    /// Largest record batch in a produce request (Kafka's `message.max.bytes`); a larger
    /// one is answered with MESSAGE_TOO_LARGE. The default, 8 MiB, is above Kafka's
    /// 1 MiB so that a 1 MiB record (with its batch overhead) is accepted.
    pub message_bytes_max: usize,
    /// Open connections; further ones are closed as soon as they are accepted.
    pub connections_max: usize,
    /// Read and write buffer of each connection.
    pub connection_buffer_bytes: usize,
    /// Most bytes one Fetch response carries, whatever the client asks.
    pub fetch_bytes_max: usize,
    /// Longest long-poll of a Fetch, whatever the client asks.
    pub fetch_wait_ms_max: u64,
    /// A connection with no request for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            request_bytes_max: 100 * 1024 * 1024,
            message_bytes_max: 8 * 1024 * 1024,
            connections_max: 1_000,
            connection_buffer_bytes: 64 * 1024,
            fetch_bytes_max: 55 * 1024 * 1024,
            fetch_wait_ms_max: 30_000,
            idle_timeout: Duration::from_secs(600),
        }
    }
}

/// How to run a broker.
#[derive(Debug, Clone)]
pub struct Config {
    /// The log's data directory (as `flowc --data-dir`).
    pub data_dir: PathBuf,
    /// Where to listen. The address advertised to clients (Metadata, FindCoordinator)
    /// is the local address each client connected to.
    pub listen: SocketAddr,
    pub limits: Limits,
    /// Create a topic (one partition) when a client asks for an unknown one in Metadata
    /// with auto-creation allowed. Off by default: topics are created explicitly.
    pub auto_create_topics: bool,
    /// SASL/PLAIN users; with them every connection must authenticate first (sasl.rs).
    pub sasl_users: Option<Arc<sasl::Users>>,
    /// With a TLS configuration (tls.rs) the listener speaks TLS only.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Config {
    pub fn new(data_dir: impl Into<PathBuf>, listen: SocketAddr) -> Config {
        Config {
            data_dir: data_dir.into(),
            listen,
            limits: Limits::default(),
            auto_create_topics: false,
            sasl_users: None,
            tls: None,
        }
    }
}

/// The broker's node id (a single node).
pub const NODE_ID: i32 = 0;
/// The cluster id reported in Metadata.
pub const CLUSTER_ID: &str = "flow";

pub(crate) type Shared = Arc<handlers::Broker>;
