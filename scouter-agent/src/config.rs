//! The agent's settings. One definition, filled from the command line (and environment
//! variables named in `--help`) and from the configuration file (`--config`), which today holds
//! the function selections:
//!
//! ```toml
//! [[functions]]
//! pattern = "shop.orders:OrderService.place*"   # MODULE:QUALNAME, globs allowed
//! arguments = ["order_id"]                      # optional: arguments to capture
//! services = ["shop-*"]                         # optional: only these services (globs)
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::frames::selection::{FunctionPattern, FunctionRule, FunctionSelection, Glob, PatternError};

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
    /// The Python functions whose calls become spans (none by default).
    pub functions: FunctionSelection,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("configuration file {path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("configuration file {path}: {source}")]
    FilePattern { path: PathBuf, source: PatternError },
    #[error("--function: {0}")]
    Pattern(#[from] PatternError),
}

/// The configuration file's contents.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub functions: Vec<FunctionEntry>,
}

/// One `[[functions]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionEntry {
    pub pattern: String,
    #[serde(default)]
    pub arguments: Vec<String>,
    #[serde(default)]
    pub services: Vec<String>,
}

impl ConfigFile {
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.into(), source })
    }

    /// The file's rules, its `arguments` added to those a pattern names itself.
    pub fn function_rules(&self, path: &Path) -> Result<Vec<FunctionRule>, ConfigError> {
        self.functions
            .iter()
            .map(|entry| {
                let in_file = |source| ConfigError::FilePattern { path: path.into(), source };
                let mut pattern = FunctionPattern::parse(&entry.pattern).map_err(in_file)?;
                pattern.add_arguments(&entry.pattern, &entry.arguments).map_err(in_file)?;
                Ok(FunctionRule { pattern, services: entry.services.iter().map(|s| Glob::new(s)).collect() })
            })
            .collect()
    }
}

/// Rules from `--function` patterns (every service) and from the configuration file.
pub fn function_selection(patterns: &[String], file: Option<&Path>) -> Result<FunctionSelection, ConfigError> {
    let mut rules = patterns
        .iter()
        .map(|text| Ok(FunctionRule { pattern: FunctionPattern::parse(text)?, services: Vec::new() }))
        .collect::<Result<Vec<_>, ConfigError>>()?;
    if let Some(path) = file {
        rules.extend(ConfigFile::read(path)?.function_rules(path)?);
    }
    Ok(FunctionSelection { rules })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_and_the_flags_make_one_selection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            r#"
[[functions]]
pattern = "shop.orders:OrderService.place*"
arguments = ["order_id"]
services = ["shop-*"]

[[functions]]
pattern = "shop.util:fib(n)"
arguments = ["depth"]
"#,
        )
        .unwrap();
        let selection = function_selection(&["jobs:run".to_owned()], Some(&path)).unwrap();
        assert_eq!(selection.rules.len(), 3);
        assert_eq!(
            selection.select("shop-api", "shop.orders", "OrderService.place_order"),
            Some(vec!["order_id".into()])
        );
        assert_eq!(selection.select("billing", "shop.orders", "OrderService.place_order"), None);
        assert_eq!(selection.select("any", "shop.util", "fib"), Some(vec!["n".into(), "depth".into()]));
        assert_eq!(selection.select("any", "jobs", "run"), Some(vec![]));
    }

    #[test]
    fn unknown_keys_and_bad_patterns_are_reported_with_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "[[functions]]\npatern = \"a:b\"\n").unwrap();
        let error = function_selection(&[], Some(&path)).unwrap_err().to_string();
        assert!(error.contains("agent.toml") && error.contains("patern"), "{error}");
        std::fs::write(&path, "[[functions]]\npattern = \"nocolon\"\n").unwrap();
        let error = function_selection(&[], Some(&path)).unwrap_err().to_string();
        assert!(error.contains("agent.toml") && error.contains("no ':'"), "{error}");
        assert!(function_selection(&["x".into()], None).unwrap_err().to_string().starts_with("--function"));
        assert!(function_selection(&[], Some(&dir.path().join("missing.toml"))).is_err());
    }
}
