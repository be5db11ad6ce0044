//! Command-line interface. Every flag also names its environment variable in `--help`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{
    function_selection, routes, AgentConfig, ConfigError, ConfigFile, StoreConfig, DEFAULT_STORE_PATH,
};

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
    pub run: RunArgs,

    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or `scouter_agent=debug`.
    #[arg(long, global = true, env = "SCOUTER_AGENT_LOG", default_value = "info")]
    pub log: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Trace Python processes until SIGINT/SIGTERM (the default).
    Run(RunArgs),
    /// Read the embedded trace store.
    Traces {
        #[command(subcommand)]
        command: TracesCommand,
    },
    /// Report which kernel features the agent needs are available, and what to do if not.
    /// Exits non-zero when the agent cannot run here.
    Check,
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

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub store: StoreArgs,

    /// Delete stored spans older than this many hours.
    #[arg(long, env = "SCOUTER_AGENT_STORE_MAX_AGE_HOURS", default_value_t = 72)]
    pub store_max_age_hours: u64,

    /// Keep the store under this many MiB, deleting the oldest spans first.
    #[arg(long, env = "SCOUTER_AGENT_STORE_MAX_MB", default_value_t = 512)]
    pub store_max_mb: u64,

    /// Also print one line per finished span on standard output.
    #[arg(long, env = "SCOUTER_AGENT_STDOUT")]
    pub stdout: bool,

    /// Trace only these process ids (repeatable); default: every Python process.
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,

    /// Do not insert a W3C `traceparent` header into outgoing plain-HTTP requests of traced
    /// processes. By default one is inserted (exactly one, after the request line, and never
    /// when the request already has one) so downstream services join the caller's trace.
    #[arg(long, env = "SCOUTER_AGENT_NO_PROPAGATE")]
    pub no_propagate: bool,

    /// A request being served stops parenting its thread's outgoing calls after this many
    /// seconds (guards against a thread that keeps working after its request).
    #[arg(long, env = "SCOUTER_AGENT_MAX_TRANSACTION_SECS", default_value_t = 300)]
    pub max_transaction_secs: u64,

    /// Make every call of the selected Python functions a span (repeatable):
    /// `MODULE:QUALNAME`, globs allowed (`*` any run of characters, dots included; `?` one),
    /// optionally followed by arguments to capture: `shop.orders:OrderService.place*(order_id)`.
    /// Costs every Python call of the processes concerned about 2-3 µs (see the README); none
    /// by default. The variable takes patterns separated by `;`.
    #[arg(long = "function", value_name = "PATTERN", env = "SCOUTER_AGENT_FUNCTIONS", value_delimiter = ';')]
    pub functions: Vec<String>,

    /// Name HTTP spans after this route template when a request's path matches it
    /// (repeatable): `"GET /users/{id}"`, with `http.route` (servers) or `url.template`
    /// (clients). Placeholders take a whole segment: `{id}`, `<id>`, `<int:id>`, `:id`; a last
    /// segment `{rest:path}`, `<path:rest>` or `*` takes the rest of the path. The most literal
    /// matching template wins. Without one, spans are named `"{METHOD}"` (the raw path stays in
    /// `url.path`, out of the name). The variable takes templates separated by `;`.
    #[arg(long = "route", value_name = "TEMPLATE", env = "SCOUTER_AGENT_ROUTES", value_delimiter = ';')]
    pub routes: Vec<String>,

    /// A TOML configuration file; its `[[functions]]` tables select functions like
    /// `--function`, and its `[[routes]]` tables add route templates like `--route`, both
    /// optionally only for some services (see the README).
    #[arg(long, value_name = "FILE", env = "SCOUTER_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
}

impl RunArgs {
    pub fn to_config(&self) -> Result<AgentConfig, ConfigError> {
        let file = ConfigFile::read(self.config.as_deref())?;
        Ok(AgentConfig {
            store: StoreConfig {
                path: self.store.path.clone(),
                max_age: Duration::from_secs(self.store_max_age_hours * 3600),
                max_bytes: self.store_max_mb * 1024 * 1024,
            },
            stdout: self.stdout,
            pids: self.pids.clone(),
            housekeeping_interval: Duration::from_secs(30),
            propagate: !self.no_propagate,
            max_transaction: Duration::from_secs(self.max_transaction_secs),
            functions: function_selection(&self.functions, &file)?,
            routes: routes(&self.routes, &file)?,
        })
    }
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
    }

    #[test]
    fn functions_are_selected_by_flag_and_none_by_default() {
        assert!(run_config(&[]).functions.rules.is_empty());
        let set = run_config(&["--function", "app:fib(n)", "--function", "app:Orders.*"]);
        assert_eq!(set.functions.rules.len(), 2);
        assert_eq!(set.functions.select("svc", "app", "fib"), Some(vec!["n".to_owned()]));
    }
}
