//! The agent's settings. One definition, filled from the command line (and environment
//! variables named in `--help`) and from the configuration file (`--config`), which today holds
//! the function selections and route templates:
//!
//! ```toml
//! [[functions]]
//! pattern = "shop.orders:OrderService.place*"   # MODULE:QUALNAME, globs allowed
//! arguments = ["order_id"]                      # optional: arguments to capture
//! services = ["shop-*"]                         # optional: only these services (globs)
//!
//! [[routes]]
//! template = "/orders/{order_id}"               # names spans "GET /orders/{order_id}"
//! services = ["shop-*"]                         # optional: only these services (globs)
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::frames::selection::{FunctionPattern, FunctionRule, FunctionSelection, Glob, PatternError};
use crate::spans::routes::{RouteError, RouteTemplate, Routes};

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
    /// Route templates that name HTTP spans (none by default: spans are named `"{METHOD}"`).
    pub routes: Routes,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("configuration file {path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("configuration file {path}: {source}")]
    FilePattern { path: PathBuf, source: PatternError },
    #[error("configuration file {path}: {source}")]
    FileRoute { path: PathBuf, source: RouteError },
    #[error("--function: {0}")]
    Pattern(#[from] PatternError),
    #[error("--route: {0}")]
    Route(#[from] RouteError),
}

/// The configuration file's contents.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub functions: Vec<FunctionEntry>,
    #[serde(default)]
    pub routes: Vec<RouteEntry>,
    /// Where it was read from, for error messages.
    #[serde(skip)]
    path: PathBuf,
}

/// One `[[routes]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteEntry {
    pub template: String,
    #[serde(default)]
    pub services: Vec<String>,
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
    /// The file at `path`, or an empty configuration without one.
    pub fn read(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else { return Ok(Self::default()) };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let file: Self = toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.into(), source })?;
        Ok(Self { path: path.into(), ..file })
    }

    /// The file's rules, its `arguments` added to those a pattern names itself.
    pub fn function_rules(&self) -> Result<Vec<FunctionRule>, ConfigError> {
        self.functions
            .iter()
            .map(|entry| {
                let in_file = |source| ConfigError::FilePattern { path: self.path.clone(), source };
                let mut pattern = FunctionPattern::parse(&entry.pattern).map_err(in_file)?;
                pattern.add_arguments(&entry.pattern, &entry.arguments).map_err(in_file)?;
                Ok(FunctionRule { pattern, services: entry.services.iter().map(|s| Glob::new(s)).collect() })
            })
            .collect()
    }

    /// The file's route templates.
    pub fn route_templates(&self) -> Result<Vec<RouteTemplate>, ConfigError> {
        self.routes
            .iter()
            .map(|entry| {
                let template = RouteTemplate::parse(&entry.template)
                    .map_err(|source| ConfigError::FileRoute { path: self.path.clone(), source })?;
                Ok(template.for_services(&entry.services))
            })
            .collect()
    }
}

/// Rules from `--function` patterns (every service) and from the configuration file.
pub fn function_selection(patterns: &[String], file: &ConfigFile) -> Result<FunctionSelection, ConfigError> {
    let mut rules = patterns
        .iter()
        .map(|text| Ok(FunctionRule { pattern: FunctionPattern::parse(text)?, services: Vec::new() }))
        .collect::<Result<Vec<_>, ConfigError>>()?;
    rules.extend(file.function_rules()?);
    Ok(FunctionSelection { rules })
}

/// Templates from `--route` (every service), then from the configuration file.
pub fn routes(templates: &[String], file: &ConfigFile) -> Result<Routes, ConfigError> {
    let mut all = templates.iter().map(|text| RouteTemplate::parse(text)).collect::<Result<Vec<_>, _>>()?;
    all.extend(file.route_templates()?);
    Ok(Routes::new(all))
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
        let selection = function_selection(&["jobs:run".to_owned()], &ConfigFile::read(Some(&path)).unwrap()).unwrap();
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
    fn routes_come_from_the_flags_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "[[routes]]\ntemplate = \"/orders/{id}\"\nservices = [\"shop-*\"]\n").unwrap();
        let routes = routes(&["/users/<int:id>".into()], &ConfigFile::read(Some(&path)).unwrap()).unwrap();
        assert_eq!(routes.len(), 2);
        assert_eq!(routes.route_of("shop-api", "/orders/9"), Some("/orders/{id}"));
        assert_eq!(routes.route_of("billing", "/orders/9"), None);
        assert_eq!(routes.route_of("billing", "/users/3"), Some("/users/<int:id>"));
    }

    #[test]
    fn unknown_keys_and_bad_patterns_are_reported_with_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "[[functions]]\npatern = \"a:b\"\n").unwrap();
        let error = ConfigFile::read(Some(&path)).unwrap_err().to_string();
        assert!(error.contains("agent.toml") && error.contains("patern"), "{error}");
        std::fs::write(&path, "[[functions]]\npattern = \"nocolon\"\n").unwrap();
        let error = function_selection(&[], &ConfigFile::read(Some(&path)).unwrap()).unwrap_err().to_string();
        assert!(error.contains("agent.toml") && error.contains("no ':'"), "{error}");
        let none = ConfigFile::default();
        assert!(function_selection(&["x".into()], &none).unwrap_err().to_string().starts_with("--function"));
        assert!(ConfigFile::read(Some(&dir.path().join("missing.toml"))).is_err());
        std::fs::write(&path, "[[routes]]\ntemplate = \"orders/{id}\"\n").unwrap();
        let error = routes(&[], &ConfigFile::read(Some(&path)).unwrap()).unwrap_err().to_string();
        assert!(error.contains("agent.toml") && error.contains("starts with '/'"), "{error}");
        assert!(routes(&["/a/*/b".into()], &none).unwrap_err().to_string().starts_with("--route"));
    }
}
