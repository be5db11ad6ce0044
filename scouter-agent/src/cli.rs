//! Command-line interface. Every flag also names its environment variable in `--help`.

use crate::probes::IoCaptureChoice;
use std::path::PathBuf;
#[cfg(test)]
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::settings::Settings;
use crate::config::{self, AgentConfig, ConfigError, DEFAULT_STORE_PATH};

/// Scouter Agent traces Python services with eBPF: HTTP server and client spans for every Python
/// process on the host, joined into one trace across services, with no code change and no
/// restart.
///
/// With no subcommand it runs the agent (`scouter-agent run`). It needs root (or CAP_BPF,
/// CAP_PERFMON, CAP_SYS_PTRACE, CAP_SYS_ADMIN and CAP_DAC_READ_SEARCH); `scouter-agent check`
/// tells what this host supports.
#[derive(Debug, Parser)]
#[command(name = "scouter-agent", version, propagate_version = true, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Options of `run`, accepted without the subcommand too.
    #[command(flatten)]
    pub run: Settings,

    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or `scouter_agent=debug`.
    #[arg(long, global = true, env = "SCOUTER_AGENT_LOG", default_value = "info")]
    pub log: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Trace Python processes until SIGINT/SIGTERM (the default).
    Run(Settings),
    /// Read the embedded trace store.
    Traces {
        #[command(subcommand)]
        command: TracesCommand,
    },
    /// Report which kernel features the agent needs are available, and what to do if not.
    /// Exits non-zero when the agent cannot run here.
    Check {
        /// Also load every program with the verifier's statistics log and print, per program,
        /// the stack of each frame, the combined stack of its deepest call chain, the
        /// instructions the verifier processed and the time it took.
        #[arg(long)]
        verifier: bool,
        /// The socket I/O capture to load, as `run --io-capture` takes it.
        #[arg(long, value_enum, default_value_t = IoCaptureChoice::Auto)]
        io_capture: IoCaptureChoice,
    },
    /// Show the configuration `run` would use with the same options: flags, then environment
    /// variables, then the `--config` file, then defaults; secrets masked.
    Config {
        /// Print the effective configuration (as TOML, usable as a `--config` file).
        #[arg(long)]
        print: bool,
        #[command(flatten)]
        settings: Settings,
    },
}

#[derive(Debug, Subcommand)]
pub enum TracesCommand {
    /// The most recent traces, newest first.
    List {
        /// Print JSON (an array of trace summaries) instead of a table.
        #[arg(long)]
        json: bool,
        /// How many traces to show.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// One trace: a waterfall of its spans, or JSON (an array of spans).
    Show {
        /// The trace id (32 hex digits).
        trace_id: String,
        /// Print the spans as JSON instead of a waterfall.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Path of the embedded trace store (an SQLite file, created if missing).
    #[arg(long = "store-path", env = "SCOUTER_AGENT_STORE_PATH", default_value = DEFAULT_STORE_PATH)]
    pub path: PathBuf,
}

impl Settings {
    /// The agent's configuration from these flags, the process's environment and `--config`.
    pub fn to_config(&self) -> Result<AgentConfig, ConfigError> {
        config::resolve(self, &process_env)
    }

    /// What `config --print` shows: every setting in effect, secrets masked, as TOML that reads
    /// back as a configuration file.
    pub fn printable(&self) -> Result<String, ConfigError> {
        let file = config::read_file(self.config.as_deref())?;
        // Refuse to print what `run` would refuse to start with.
        config::resolve_with_file(self, &file, &process_env)?;
        let effective = config::masked(config::effective(self, &file, &process_env));
        Ok(toml::to_string(&effective).expect("settings serialise to TOML"))
    }
}

/// A variable of the process's environment; empty counts as unset, as the OTel SDKs do.
fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_config(args: &[&str]) -> AgentConfig {
        let cli = Cli::try_parse_from(std::iter::once("scouter-agent").chain(args.iter().copied())).unwrap();
        match cli.command {
            Some(Command::Run(run)) => run.to_config().unwrap(),
            _ => cli.run.to_config().unwrap(),
        }
    }

    #[test]
    fn propagation_is_on_by_default_and_the_flags_reach_the_config() {
        let defaults = run_config(&[]);
        assert!(defaults.propagate);
        assert_eq!(defaults.max_transaction, Duration::from_secs(300));
        let set = run_config(&["run", "--no-propagate", "--max-transaction-secs", "30"]);
        assert!(!set.propagate);
        assert_eq!(set.max_transaction, Duration::from_secs(30));
        assert!(run_config(&["--stdout", "--pid", "7"]).export.stdout, "a bare boolean flag means true");
        assert!(!run_config(&["--stdout", "false"]).export.stdout);
    }

    #[test]
    fn functions_are_selected_by_flag_and_none_by_default() {
        assert!(run_config(&[]).functions.rules.is_empty());
        let set = run_config(&["--function", "app:fib(n)", "--function", "app:Orders.*"]);
        assert_eq!(set.functions.rules.len(), 2);
        assert_eq!(set.functions.select("svc", "app", "fib"), Some(vec!["n".to_owned()]));
    }

    #[test]
    fn config_print_takes_the_run_options() {
        let cli = Cli::try_parse_from(["scouter-agent", "config", "--print", "--sample-ratio", "0.5"]).unwrap();
        let Some(Command::Config { print: true, settings }) = cli.command else { panic!("config --print") };
        assert!(settings.printable().unwrap().contains("sample_ratio = 0.5"));
        let cli = Cli::try_parse_from(["scouter-agent", "config", "--print", "--sample-ratio", "2"]).unwrap();
        let Some(Command::Config { settings, .. }) = cli.command else { panic!("config --print") };
        assert!(settings.printable().is_err(), "what run refuses is not printed");
    }
}
