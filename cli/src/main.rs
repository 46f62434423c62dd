//! `flowc`: the command-line front door.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod log_cmd;

#[derive(Debug, Parser)]
#[command(
    name = "flowc",
    version,
    about = "flow: stream processing with a durable log"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    #[command(flatten)]
    Log(log_cmd::LogCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Log(cmd) => log_cmd::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(report) => {
            eprintln!("{report:?}");
            ExitCode::FAILURE
        }
    }
}
