//! `flowc serve`: run the Kafka-protocol broker (`flow-broker`) over a data directory
//! until interrupted. Parses flags into the broker's `Config` and sets up logging to
//! stderr; the broker itself lives in the `flow-broker` crate. With `--pipelines FILE`,
//! the file's pipelines run beside it, on their own thread (the runtime's `run` blocks
//! and builds its own tokio runtime), sharing the broker's open topics (docs/kafka.md).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use flow_broker::{Config, Limits};
use flow_runtime::run::{self, RunError, RunOptions, Summary};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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
    /// Run this .flow file's pipelines in the same process, over the same data directory:
    /// records Kafka clients produce flow straight into them. Their topic inputs wait for
    /// more records until the server stops (Ctrl-C, which drains them first).
    #[arg(long, value_name = "FILE.flow")]
    pub pipelines: Option<PathBuf>,
    /// Require SASL/PLAIN authentication with the users of this file (`user:password` a line).
    #[arg(long, value_name = "FILE")]
    pub sasl_users: Option<PathBuf>,
    /// Serve TLS only, with this certificate chain (PEM, leaf first); needs --tls-key.
    /// Clients set security.protocol=SSL (or SASL_SSL with --sasl-users).
    #[arg(long, value_name = "FILE.pem", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE.pem", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require every client to present a certificate signed by one of these CAs (PEM)
    /// (Kafka's ssl.client.auth=required); needs --tls-cert.
    #[arg(long, value_name = "FILE.pem", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
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
    // The pipelines are checked before anything listens: a file with errors stops here.
    let program = match &args.pipelines {
        None => None,
        Some(file) => {
            let c = crate::front::run_front_end(file);
            for d in &c.diagnostics {
                eprint!("{}", d.render(&c.sources, 100));
                eprintln!();
            }
            let Some(program) = c.program else {
                eprintln!("error: {} has errors; not serving", file.display());
                return ExitCode::from(1);
            };
            let base_dir = file.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf);
            let mut opts = RunOptions::new(args.data_dir.clone(), base_dir);
            opts.follow_topics = true;
            Some((program, opts))
        }
    };
    let sasl_users = match &args.sasl_users {
        None => None,
        Some(path) => match flow_broker::sasl::Users::load(path) {
            Ok(users) => Some(Arc::new(users)),
            Err(e) => {
                eprintln!("error: --sasl-users {e}");
                return ExitCode::from(2);
            }
        },
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let files = flow_broker::tls::TlsFiles { cert, key, client_ca: args.tls_client_ca.as_deref() };
            match flow_broker::tls::server_config(&files) {
                Ok(c) => Some(c),
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        _ => None,
    };
    if tls.is_none() && !args.listen.ip().is_loopback() {
        let secrets = if sasl_users.is_some() { " and SASL/PLAIN passwords" } else { "" };
        tracing::warn!(
            listen = %args.listen,
            "this listener is reachable from other machines without TLS: records{secrets} cross the network in clear; give --tls-cert and --tls-key"
        );
    }
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
        sasl_users,
        tls,
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
        let stop = Arc::new(AtomicBool::new(false));
        let mut pipelines = program.map(|(program, mut opts)| {
            opts.stop = stop.clone();
            let (tx, rx) = tokio::sync::oneshot::channel();
            let spawned = std::thread::Builder::new().name("flowc-pipelines".into()).spawn(move || {
                let _ = tx.send(run::run(&program, &opts));
            });
            if let Err(e) = spawned {
                eprintln!("error: cannot start the pipelines' thread: {e}");
            }
            rx
        });
        let mut status = ExitCode::SUCCESS;
        let ended = async {
            match pipelines.as_mut() {
                Some(rx) => rx.await.map_err(|_| RunError::Setup("the pipelines' thread ended without a result".into())),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {
                eprintln!("flowc serve: stopping");
                if let Some(rx) = pipelines.take() {
                    // The pipelines finish what they read before the broker goes away.
                    stop.store(true, Ordering::SeqCst);
                    let r = rx.await.map_err(|_| RunError::Setup("the pipelines' thread ended without a result".into()));
                    status = report(r.and_then(|r| r));
                }
            }
            r = ended => {
                // Bounded inputs all ended (the server goes on), or the pipelines failed (it stops).
                status = report(r.and_then(|r| r));
                if status == ExitCode::SUCCESS {
                    let _ = tokio::signal::ctrl_c().await;
                    eprintln!("flowc serve: stopping");
                }
            }
        }
        handle.shutdown().await;
        status
    })
}

/// Says what the pipelines did (or why they failed) on stderr.
fn report(r: Result<Summary, RunError>) -> ExitCode {
    match r {
        Ok(summary) => {
            for s in &summary.skipped {
                eprintln!("note: pipeline `{}` was not run: {}", s.pipeline, s.message);
            }
            for p in &summary.pipelines {
                eprintln!(
                    "pipeline {}: {} records in, {} out, {} dead-lettered",
                    p.name, p.records_in, p.records_out, p.dead_lettered
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: pipelines: {e}");
            ExitCode::from(1)
        }
    }
}
