//! The agent's settings. One definition, filled from the command line (and environment
//! variables named in `--help`); later a configuration file feeds the same structs.

use std::path::PathBuf;
use std::time::Duration;

/// Default location of the embedded trace store.
pub const DEFAULT_STORE_PATH: &str = "/var/lib/scouter-agent/traces.db";

/// Where the embedded store lives and how much it keeps.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub path: PathBuf,
    /// Spans that started longer ago than this are deleted.
    pub max_age: Duration,
    /// The store is trimmed (oldest spans first) to stay under this many bytes.
    pub max_bytes: u64,
}

/// Everything `scouter-agent run` needs.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub store: StoreConfig,
    /// Also print one line per finished span on standard output.
    pub stdout: bool,
    /// Only trace these processes (empty: every Python process on the host).
    pub pids: Vec<u32>,
    /// How often the store is pruned and /proc is rescanned as a safety net for missed execs.
    pub housekeeping_interval: Duration,
    /// Insert a W3C `traceparent` into outgoing plain-HTTP requests of traced processes.
    pub propagate: bool,
    /// A request being served parents its thread's client calls for at most this long.
    pub max_transaction: Duration,
}
