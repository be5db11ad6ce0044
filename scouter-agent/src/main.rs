//! Scouter Agent: traces Python services with eBPF.
//!
//! The stages, one module each, named after what flows through them:
//! - [`discovery`]: finds Python processes (a /proc scan, then exec/fork/exit events) and
//!   identifies their interpreter;
//! - [`probes`]: loads the eBPF object and attaches its programs;
//! - [`events`]: reads the ring buffer and decodes kernel events;
//! - [`spans`]: assembles events into spans (HTTP parsing, request/response pairing);
//! - [`export`]: sends finished spans to their sinks (the Scouter backend, an OTLP collector,
//!   the embedded store, stdout) with sampling, batching and retries;
//! - [`store`]: the embedded trace store, and [`viewer`] renders it in the terminal.
//!
//! [`agent`] wires the stages together; [`config`] resolves flags, environment and the
//! configuration file; [`health`] serves metrics and health; [`check`] reports what the host
//! supports.

mod agent;
mod check;
mod cli;
mod config;
mod discovery;
mod errors;
mod events;
mod export;
mod frames;
mod health;
mod merge;
mod probes;
mod spans;
mod store;
mod viewer;

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser as _;

use cli::{Cli, Command, TracesCommand};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log);
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // `{:#}` prints the whole context chain on one line, without a backtrace.
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        None => agent::run(cli.run.to_config()?),
        Some(Command::Run(args)) => agent::run(args.to_config()?),
        Some(Command::Check { verifier, io_capture }) => check::run(verifier, io_capture),
        Some(Command::Config { print, settings }) => {
            anyhow::ensure!(print, "`scouter-agent config` needs --print (the only action so far)");
            print!("{}", settings.printable()?);
            Ok(())
        }
        Some(Command::Traces { command }) => match command {
            TracesCommand::List { json, limit, store } => viewer::list(&store.path, limit, json),
            TracesCommand::Show { trace_id, json, store } => viewer::show(&store.path, &trace_id, json),
        },
    }
}

fn init_logging(filter: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
}
