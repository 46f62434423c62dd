//! `flowc serve`: run the Kafka-protocol broker (`flow-broker`) over a data directory
//! until interrupted. Parses flags into the broker's `Config` and sets up logging to
//! stderr; the broker itself lives in the `flow-broker` crate.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use flow_broker::{Config, Limits};

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// The log's data directory.
    #[arg(long, env = "FLOW_DATA_DIR", default_value = "./.flow/data")]
    pub data_dir: PathBuf,
    /// Address to listen on. Clients are told to come back to the address they connected to.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub listen: SocketAddr,
    /// Largest request in bytes (Kafka's socket.request.max.bytes); larger ones close the connection.
    #[arg(long, default_value_t = Limits::default().request_bytes_max)]
    pub max_request_bytes: usize,
    /// Largest record batch in bytes (Kafka's message.max.bytes); larger ones get MESSAGE_TOO_LARGE.
    #[arg(long, default_value_t = Limits::default().message_bytes_max)]
    pub max_message_bytes: usize,
    /// Most open connections.
    #[arg(long, default_value_t = Limits::default().connections_max)]
    pub max_connections: usize,
    /// Read and write buffer of each connection, in bytes.
    #[arg(long, default_value_t = Limits::default().connection_buffer_bytes)]
    pub connection_buffer_bytes: usize,
    /// Most bytes in one Fetch response.
    #[arg(long, default_value_t = Limits::default().fetch_bytes_max)]
    pub max_fetch_bytes: usize,
    /// Close connections idle for this long (e.g. 10m).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// Create unknown topics (1 partition) when a client's Metadata request allows it.
    #[arg(long)]
    pub auto_create_topics: bool,
    /// Log level on stderr: error, warn, info, debug, trace.
    #[arg(long, default_value = "info")]
    pub log_level: tracing::Level,
}

pub fn run(args: ServeArgs) -> ExitCode {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_max_level(args.log_level)
        .with_target(false)
        .init();
    let defaults = Limits::default();
    let config = Config {
        data_dir: args.data_dir,
        listen: args.listen,
        limits: Limits {
            request_bytes_max: args.max_request_bytes.max(64),
            message_bytes_max: args.max_message_bytes,
            connections_max: args.max_connections.max(1),
            connection_buffer_bytes: args.connection_buffer_bytes.max(512),
            fetch_bytes_max: args.max_fetch_bytes.max(1),
            idle_timeout: args.idle_timeout,
            ..defaults
        },
        auto_create_topics: args.auto_create_topics,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        let handle = match flow_broker::start(config).await {
            Ok(h) => h,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        // The first line on stdout says where it listens (tests read it to learn the port).
        println!("flowc serve: listening on {}", handle.local_addr());
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("flowc serve: stopping");
        handle.shutdown().await;
        ExitCode::SUCCESS
    })
}
