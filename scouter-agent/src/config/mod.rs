//! The agent's configuration: one definition of each setting ([`settings::Settings`], both the
//! command line and the configuration file's keys), resolved here into what the stages need
//! ([`AgentConfig`]).
//!
//! Precedence, highest first: a command-line flag; its environment variable (named in
//! `--help`; the standard `OTEL_EXPORTER_OTLP_*`, `SCOUTER_*` and `KAFKA_*` variables included);
//! the `--config` file; the default. The file is TOML, with every flag as a key
//! (`--otlp-endpoint` is `otlp_endpoint`) plus tables for function selections and routes:
//!
//! ```toml
//! scouter_server_uri = "http://scouter:8000"
//! otlp_endpoint = "http://collector:4317"
//! sample_ratio = 0.25
//!
//! [[functions]]
//! pattern = "shop.orders:OrderService.place*"   # MODULE:QUALNAME, globs allowed
//! arguments = ["order_id"]                      # optional: arguments to capture
//! services = ["shop-*"]                         # optional: only these services (globs)
//!
//! [[routes]]
//! template = "/orders/{order_id}"               # names spans "GET /orders/{order_id}"
//! services = ["shop-*"]                         # optional: only these services (globs)
//! ```
//!
//! `scouter-agent config --print` shows the result, secrets masked.

pub mod settings;

use crate::probes::IoCaptureChoice;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::discovery::rules::{ProcessMatch, ProcessRules};
use crate::export::kafka;
use crate::frames::selection::{FunctionPattern, FunctionRule, FunctionSelection, Glob, PatternError};
use crate::merge::receivers::ReceiverConfig;
use crate::spans::routes::{RouteError, RouteTemplate, Routes};
use crate::spans::scouter_conventions::{TagError, Tags};
use settings::{Compression, OtlpProtocol, ProcessEntry, ScouterTransportKind, Settings};

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
    /// Only trace these processes (empty: every Python process on the host).
    pub pids: Vec<u32>,
    /// How often the store is pruned and /proc is rescanned as a safety net for missed execs.
    pub housekeeping_interval: Duration,
    /// Insert a W3C `traceparent` into outgoing plain-HTTP requests of traced processes.
    pub propagate: bool,
    /// How socket I/O may be captured.
    pub io_capture: IoCaptureChoice,
    /// A request being served parents its thread's client calls for at most this long.
    pub max_transaction: Duration,
    /// The Python functions whose calls become spans (none by default).
    pub functions: FunctionSelection,
    /// Route templates that name HTTP spans (none by default: spans are named `"{METHOD}"`).
    pub routes: Routes,
    /// Tags put on every span (none by default).
    pub tags: Tags,
    pub export: ExportConfig,
    /// Where metrics and health are served (None: not served).
    pub metrics_listen: Option<SocketAddr>,
    /// Where SDKs send their spans.
    pub receivers: ReceiverConfig,
    /// How long an agent span that may have an SDK twin waits for it.
    pub sdk_twin_window: Duration,
    /// Pod metadata from the API server (None: not watched).
    pub kubernetes: Option<KubernetesConfig>,
    /// Which processes are traced, and what their services are called.
    pub process_rules: ProcessRules,
}

/// Where the pods of this node are watched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubernetesConfig {
    pub api: KubernetesApi,
    pub node_name: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KubernetesApi {
    /// The API server of the cluster the agent's pod runs in, with its service account.
    InCluster,
    /// An API server at this URL, without credentials (`kubectl proxy`, tests).
    Url(String),
}

/// Where spans go and how.
#[derive(Clone, Debug)]
pub struct ExportConfig {
    /// Write the embedded store (no Scouter backend, or `--keep-local-store`).
    pub local_store: bool,
    pub stdout: bool,
    pub scouter: Option<ScouterConfig>,
    pub otlp: Option<OtlpConfig>,
    /// Fraction of traces every sink keeps.
    pub sample_ratio: f64,
    pub honor_sampled_flag: bool,
    pub batch: BatchConfig,
    pub flush_timeout: Duration,
    pub retry_max_elapsed: Duration,
}

/// The Scouter SDK's `BatchConfig`, per sink.
#[derive(Clone, Copy, Debug)]
pub struct BatchConfig {
    pub max_queue_size: usize,
    pub scheduled_delay: Duration,
    pub max_export_batch_size: usize,
}

#[derive(Clone, Debug)]
pub enum ScouterTransport {
    Http { uri: String },
    Grpc { uri: String },
    Kafka { brokers: Vec<String>, topic: String },
}

#[derive(Clone, Debug)]
pub struct ScouterConfig {
    pub transport: ScouterTransport,
    pub username: String,
    pub password: String,
    /// Fraction of traces this sink keeps, on top of the global ratio.
    pub sample_ratio: f64,
    pub timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct OtlpConfig {
    pub protocol: OtlpProtocol,
    /// For HTTP, the full URL posted to (`.../v1/traces`).
    pub endpoint: String,
    pub headers: Vec<(String, String)>,
    pub gzip: bool,
    pub timeout: Duration,
    pub sample_ratio: f64,
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
    #[error("--tag: {0}")]
    Tag(#[from] TagError),
    #[error("--{flag}: {reason}")]
    Invalid { flag: &'static str, reason: String },
    #[error("configuration file {path}: [[{table}]]: {reason}")]
    ProcessRule { path: PathBuf, table: &'static str, reason: String },
}

fn invalid(flag: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { flag, reason: reason.into() }
}

/// The `--config` file's settings; none without a file.
pub fn read_file(path: Option<&Path>) -> Result<Settings, ConfigError> {
    let Some(path) = path else { return Ok(Settings::default()) };
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.into(), source })
}

/// The file's `[[functions]]` rules, their `arguments` added to those a pattern names itself.
fn file_function_rules(file: &Settings, path: &Path) -> Result<Vec<FunctionRule>, ConfigError> {
    file.functions
        .iter()
        .map(|entry| {
            let in_file = |source| ConfigError::FilePattern { path: path.into(), source };
            let mut pattern = FunctionPattern::parse(&entry.pattern).map_err(in_file)?;
            pattern.add_arguments(&entry.pattern, &entry.arguments).map_err(in_file)?;
            Ok(FunctionRule { pattern, services: entry.services.iter().map(|s| Glob::new(s)).collect() })
        })
        .collect()
}

/// The file's `[[routes]]` templates.
fn file_route_templates(file: &Settings, path: &Path) -> Result<Vec<RouteTemplate>, ConfigError> {
    file.routes
        .iter()
        .map(|entry| {
            let template = RouteTemplate::parse(&entry.template)
                .map_err(|source| ConfigError::FileRoute { path: path.into(), source })?;
            Ok(template.for_services(&entry.services))
        })
        .collect()
}

/// Rules from `--function` patterns (every service) and from the configuration file.
fn function_selection(patterns: &[String], file: &Settings, path: &Path) -> Result<FunctionSelection, ConfigError> {
    let mut rules = patterns
        .iter()
        .map(|text| Ok(FunctionRule { pattern: FunctionPattern::parse(text)?, services: Vec::new() }))
        .collect::<Result<Vec<_>, ConfigError>>()?;
    rules.extend(file_function_rules(file, path)?);
    Ok(FunctionSelection { rules })
}

/// Templates from `--route` (every service), then from the configuration file.
fn routes(templates: &[String], file: &Settings, path: &Path) -> Result<Routes, ConfigError> {
    let mut all = templates.iter().map(|text| RouteTemplate::parse(text)).collect::<Result<Vec<_>, _>>()?;
    all.extend(file_route_templates(file, path)?);
    Ok(Routes::new(all))
}

/// The standard variables that are not one flag's own (clap reads those): OTLP's, whose
/// `TRACES_` form wins over the generic one, and the Kafka topic's fallback.
fn standard_variables(env: &dyn Fn(&str) -> Option<String>) -> Settings {
    let otlp = |name: &str| {
        env(&format!("OTEL_EXPORTER_OTLP_TRACES_{name}")).or_else(|| env(&format!("OTEL_EXPORTER_OTLP_{name}")))
    };
    Settings {
        otlp_endpoint: otlp("ENDPOINT"),
        otlp_protocol: otlp("PROTOCOL").and_then(|p| <OtlpProtocol as clap::ValueEnum>::from_str(&p, true).ok()),
        otlp_headers: otlp("HEADERS"),
        otlp_compression: otlp("COMPRESSION").and_then(|c| <Compression as clap::ValueEnum>::from_str(&c, true).ok()),
        otlp_timeout_ms: otlp("TIMEOUT").and_then(|t| t.trim().parse().ok()),
        scouter_kafka_topic: env("SCOUTER_KAFKA_TOPIC").or_else(|| env("KAFKA_TOPIC")),
        ..Settings::default()
    }
}

/// Whether the OTLP endpoint came from `OTEL_EXPORTER_OTLP_ENDPOINT` (a base URL, to which
/// HTTP appends `/v1/traces`) rather than a traces-specific setting.
fn otlp_endpoint_is_base(flags: &Settings, env: &dyn Fn(&str) -> Option<String>) -> bool {
    flags.otlp_endpoint.is_none()
        && env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none()
        && env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
}

/// The defaults, as settings (what `config --print` shows for anything not set).
pub fn defaults() -> Settings {
    Settings {
        store_path: Some(DEFAULT_STORE_PATH.into()),
        store_max_age_hours: Some(72),
        store_max_mb: Some(512),
        keep_local_store: Some(false),
        stdout: Some(false),
        no_propagate: Some(false),
        io_capture: Some(IoCaptureChoice::Auto),
        max_transaction_secs: Some(300),
        sample_ratio: Some(1.0),
        honor_sampled_flag: Some(true),
        max_queue_size: Some(2048),
        scheduled_delay_ms: Some(5000),
        max_export_batch_size: Some(512),
        flush_timeout_secs: Some(10),
        retry_max_elapsed_secs: Some(300),
        scouter_server_uri: Some("http://localhost:8000".into()),
        scouter_grpc_uri: Some("http://localhost:50051".into()),
        scouter_kafka_topic: Some(kafka::DEFAULT_TOPIC.into()),
        scouter_sample_ratio: Some(1.0),
        otlp_protocol: Some(OtlpProtocol::Grpc),
        otlp_compression: Some(Compression::None),
        otlp_timeout_ms: Some(10_000),
        otlp_sample_ratio: Some(1.0),
        metrics_listen: Some("127.0.0.1:9464".into()),
        receive_grpc: Some("127.0.0.1:4317".into()),
        receive_http: Some("127.0.0.1:4318".into()),
        sdk_twin_window_ms: Some(crate::merge::DEFAULT_TWIN_WINDOW.as_millis() as u64),
        ..Settings::default()
    }
}

/// The settings in effect: flags over environment over file, before defaults. `env` reads
/// the environment (a parameter so tests need not touch the process's).
pub fn effective(flags: &Settings, file: &Settings, env: &dyn Fn(&str) -> Option<String>) -> Settings {
    let mut merged = flags.or(&standard_variables(env)).or(file);
    if merged.scouter_transport.is_none() {
        merged.scouter_transport = if merged.scouter_grpc_uri.is_some() {
            Some(ScouterTransportKind::Grpc)
        } else if merged.scouter_server_uri.is_some() {
            Some(ScouterTransportKind::Http)
        } else if merged.kafka_brokers.is_some() {
            Some(ScouterTransportKind::Kafka)
        } else {
            None
        };
    }
    merged.or(&defaults())
}

/// `effective` with secrets replaced, for printing.
pub fn masked(mut settings: Settings) -> Settings {
    const MASK: &str = "****";
    if settings.scouter_password.is_some() {
        settings.scouter_password = Some(MASK.into());
    }
    if let Some(headers) = &settings.otlp_headers {
        let masked: Vec<String> = parse_headers(headers).iter().map(|(key, _)| format!("{key}={MASK}")).collect();
        settings.otlp_headers = Some(masked.join(","));
    }
    settings
}

/// `key=value,key2=value2` as OTEL_EXPORTER_OTLP_HEADERS spells it (values percent-decoded).
pub fn parse_headers(text: &str) -> Vec<(String, String)> {
    text.split(',')
        .filter_map(|pair| pair.split_once('='))
        .map(|(key, value)| (key.trim().to_owned(), percent_decode(value.trim())))
        .filter(|(key, _)| !key.is_empty())
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Resolves the command line (with its environment) into the agent's configuration.
pub fn resolve(flags: &Settings, env: &dyn Fn(&str) -> Option<String>) -> Result<AgentConfig, ConfigError> {
    resolve_with_file(flags, &read_file(flags.config.as_deref())?, env)
}

/// [`resolve`] with the `--config` file already read.
pub fn resolve_with_file(
    flags: &Settings,
    file: &Settings,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<AgentConfig, ConfigError> {
    let file_path = flags.config.clone().unwrap_or_default();
    let s = effective(flags, file, env);
    let scouter = scouter_config(&s)?;
    let otlp = s
        .otlp_endpoint
        .as_ref()
        .map(|endpoint| otlp_config(&s, endpoint, otlp_endpoint_is_base(flags, env)))
        .transpose()?;
    let export = ExportConfig {
        local_store: scouter.is_none() || s.keep_local_store == Some(true),
        stdout: s.stdout == Some(true),
        scouter,
        otlp,
        sample_ratio: ratio("sample-ratio", s.sample_ratio)?,
        honor_sampled_flag: s.honor_sampled_flag != Some(false),
        batch: BatchConfig {
            max_queue_size: positive("max-queue-size", s.max_queue_size)?,
            scheduled_delay: Duration::from_millis(s.scheduled_delay_ms.unwrap_or_default()),
            max_export_batch_size: positive("max-export-batch-size", s.max_export_batch_size)?,
        },
        flush_timeout: Duration::from_secs(s.flush_timeout_secs.unwrap_or_default()),
        retry_max_elapsed: Duration::from_secs(s.retry_max_elapsed_secs.unwrap_or_default()),
    };
    Ok(AgentConfig {
        store: StoreConfig {
            path: s.store_path.clone().unwrap_or_else(|| DEFAULT_STORE_PATH.into()),
            max_age: Duration::from_secs(s.store_max_age_hours.unwrap_or_default() * 3600),
            max_bytes: s.store_max_mb.unwrap_or_default() * 1024 * 1024,
        },
        pids: s.pids.clone(),
        housekeeping_interval: Duration::from_secs(30),
        propagate: s.no_propagate != Some(true),
        io_capture: s.io_capture.unwrap_or_default(),
        max_transaction: Duration::from_secs(s.max_transaction_secs.unwrap_or_default()),
        functions: function_selection(&flags.function_patterns, file, &file_path)?,
        routes: routes(&flags.route_templates, file, &file_path)?,
        tags: Tags::parse(&s.tags)?,
        export,
        metrics_listen: listen_address("metrics-listen", s.metrics_listen.as_deref())?,
        receivers: ReceiverConfig {
            grpc: listen_address("receive-grpc", s.receive_grpc.as_deref())?,
            http: listen_address("receive-http", s.receive_http.as_deref())?,
        },
        sdk_twin_window: Duration::from_millis(s.sdk_twin_window_ms.unwrap_or_default()),
        kubernetes: kubernetes_config(&s, env)?,
        process_rules: process_rules(&s, &file_path)?,
    })
}

/// `--kubernetes`: `auto` watches pods when the agent runs in one.
fn kubernetes_config(
    s: &Settings,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<KubernetesConfig>, ConfigError> {
    let mode = s.kubernetes.as_deref().unwrap_or("auto").trim();
    let api = match mode {
        "off" => return Ok(None),
        "auto" if env("KUBERNETES_SERVICE_HOST").is_none() => return Ok(None),
        "auto" => KubernetesApi::InCluster,
        url if url.starts_with("http://") || url.starts_with("https://") => {
            KubernetesApi::Url(url.trim_end_matches('/').to_owned())
        }
        other => return Err(invalid("kubernetes", format!("{other:?} is not auto, off or an http(s) URL"))),
    };
    let node_name = s.node_name.clone().filter(|name| !name.trim().is_empty()).or_else(crate::discovery::hostname);
    let node_name = node_name.ok_or_else(|| invalid("node-name", "no node name: set NODE_NAME (spec.nodeName)"))?;
    Ok(Some(KubernetesConfig { api, node_name }))
}

/// The file's `[[include]]`, `[[exclude]]` and `[[service_names]]` tables.
fn process_rules(s: &Settings, path: &Path) -> Result<ProcessRules, ConfigError> {
    let rule = |table: &'static str, entry: &ProcessEntry| -> Result<ProcessMatch, ConfigError> {
        let fail = |reason: &str| ConfigError::ProcessRule { path: path.to_owned(), table, reason: reason.to_owned() };
        let named = entry.name.is_some();
        if named != (table == "service_names") {
            return Err(fail(if named { "`name` belongs in [[service_names]]" } else { "needs a `name`" }));
        }
        let conditions = [&entry.namespace, &entry.pod_label, &entry.container, &entry.executable];
        if conditions.iter().all(|c| c.is_none()) && entry.port.is_none() {
            return Err(fail("give at least one of namespace, pod_label, container, executable, port"));
        }
        Ok(ProcessMatch {
            namespace: entry.namespace.clone(),
            pod_label: entry.pod_label.as_deref().map(ProcessMatch::parse_label),
            container: entry.container.clone(),
            executable: entry.executable.as_deref().map(Glob::new),
            port: entry.port,
        })
    };
    Ok(ProcessRules {
        include: s.include.iter().map(|e| rule("include", e)).collect::<Result<_, _>>()?,
        exclude: s.exclude.iter().map(|e| rule("exclude", e)).collect::<Result<_, _>>()?,
        service_names: s
            .service_names
            .iter()
            .map(|e| Ok((rule("service_names", e)?, e.name.clone().unwrap_or_default())))
            .collect::<Result<_, ConfigError>>()?,
    })
}

fn scouter_config(s: &Settings) -> Result<Option<ScouterConfig>, ConfigError> {
    let Some(kind) = s.scouter_transport else { return Ok(None) };
    let transport = match kind {
        ScouterTransportKind::Http => {
            ScouterTransport::Http { uri: uri("scouter-server-uri", s.scouter_server_uri.as_deref())? }
        }
        ScouterTransportKind::Grpc => {
            ScouterTransport::Grpc { uri: uri("scouter-grpc-uri", s.scouter_grpc_uri.as_deref())? }
        }
        ScouterTransportKind::Kafka => {
            let brokers = kafka::brokers_from(s.kafka_brokers.as_deref().unwrap_or_default());
            if brokers.is_empty() {
                return Err(invalid(
                    "kafka-brokers",
                    "the Kafka transport needs brokers (KAFKA_BROKERS=host:9092,...)",
                ));
            }
            ScouterTransport::Kafka { brokers, topic: s.scouter_kafka_topic.clone().unwrap_or_default() }
        }
    };
    let login = |value: &Option<String>, flag| match (&transport, value) {
        (ScouterTransport::Kafka { .. }, _) => Ok(String::new()),
        (_, Some(value)) => Ok(value.clone()),
        (_, None) => {
            Err(invalid(flag, "the Scouter HTTP and gRPC transports log in: set SCOUTER_USERNAME and SCOUTER_PASSWORD"))
        }
    };
    Ok(Some(ScouterConfig {
        username: login(&s.scouter_username, "scouter-username")?,
        password: login(&s.scouter_password, "scouter-password")?,
        transport,
        sample_ratio: ratio("scouter-sample-ratio", s.scouter_sample_ratio)?,
        timeout: Duration::from_secs(10),
    }))
}

fn otlp_config(s: &Settings, endpoint: &str, base: bool) -> Result<OtlpConfig, ConfigError> {
    let protocol = s.otlp_protocol.unwrap_or(OtlpProtocol::Grpc);
    let mut endpoint = uri("otlp-endpoint", Some(endpoint))?;
    // A base URL (the generic variable, or any URL without a path) gets OTLP's traces path.
    let has_path = endpoint.splitn(4, '/').nth(3).is_some_and(|path| !path.is_empty());
    if protocol == OtlpProtocol::HttpProtobuf && (base || !has_path) {
        endpoint = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    }
    Ok(OtlpConfig {
        protocol,
        endpoint,
        headers: s.otlp_headers.as_deref().map(parse_headers).unwrap_or_default(),
        gzip: s.otlp_compression == Some(Compression::Gzip),
        timeout: Duration::from_millis(s.otlp_timeout_ms.unwrap_or(10_000)),
        sample_ratio: ratio("otlp-sample-ratio", s.otlp_sample_ratio)?,
    })
}

fn uri(flag: &'static str, value: Option<&str>) -> Result<String, ConfigError> {
    let value = value.unwrap_or_default().trim();
    if !(value.starts_with("http://") || value.starts_with("https://")) {
        return Err(invalid(flag, format!("{value:?} is not an http:// or https:// URI")));
    }
    Ok(value.trim_end_matches('/').to_owned())
}

fn ratio(flag: &'static str, value: Option<f64>) -> Result<f64, ConfigError> {
    match value.unwrap_or(1.0) {
        r if (0.0..=1.0).contains(&r) => Ok(r),
        r => Err(invalid(flag, format!("{r} is not a ratio between 0.0 and 1.0"))),
    }
}

fn positive(flag: &'static str, value: Option<usize>) -> Result<usize, ConfigError> {
    match value {
        Some(n) if n > 0 => Ok(n),
        _ => Err(invalid(flag, "must be at least 1")),
    }
}

/// An `ADDRESS:PORT` to listen on, or `off`.
fn listen_address(flag: &'static str, value: Option<&str>) -> Result<Option<SocketAddr>, ConfigError> {
    match value.map(str::trim) {
        None | Some("off") | Some("") => Ok(None),
        Some(addr) => addr.parse().map(Some).map_err(|_| invalid(flag, format!("{addr:?} is not ADDRESS:PORT or off"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn file(text: &str) -> (tempfile::TempDir, Settings) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, text).unwrap();
        (dir, Settings { config: Some(path), ..Settings::default() })
    }

    #[test]
    fn the_file_and_the_flags_make_one_selection() {
        let (_dir, mut flags) = file(
            r#"
[[functions]]
pattern = "shop.orders:OrderService.place*"
arguments = ["order_id"]
services = ["shop-*"]

[[functions]]
pattern = "shop.util:fib(n)"
arguments = ["depth"]
"#,
        );
        flags.function_patterns = vec!["jobs:run".to_owned()];
        let selection = resolve(&flags, &no_env).unwrap().functions;
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
    fn pods_are_watched_in_a_pod_or_at_a_given_api_server() {
        let in_pod = |name: &str| (name == "KUBERNETES_SERVICE_HOST").then(|| "10.96.0.1".to_owned());
        let flags = |mode: Option<&str>| Settings {
            kubernetes: mode.map(str::to_owned),
            node_name: Some("node-3".into()),
            ..Settings::default()
        };
        assert_eq!(resolve(&flags(None), &no_env).unwrap().kubernetes, None, "auto, outside a pod");
        let auto = resolve(&flags(None), &in_pod).unwrap().kubernetes;
        assert_eq!(auto, Some(KubernetesConfig { api: KubernetesApi::InCluster, node_name: "node-3".into() }));
        assert_eq!(resolve(&flags(Some("off")), &in_pod).unwrap().kubernetes, None);
        let proxy = resolve(&flags(Some("http://127.0.0.1:8001/")), &no_env).unwrap().kubernetes.unwrap();
        assert_eq!(proxy.api, KubernetesApi::Url("http://127.0.0.1:8001".into()));
        let error = resolve(&flags(Some("yes")), &no_env).unwrap_err().to_string();
        assert!(error.contains("--kubernetes") && error.contains("auto, off or an http(s) URL"), "{error}");
    }

    #[test]
    fn process_rules_come_from_the_file_and_are_checked() {
        let (_dir, flags) = file(
            r#"
[[include]]
namespace = "shop"

[[exclude]]
pod_label = "scouter.io/trace=false"

[[service_names]]
executable = "/opt/billing/*"
name = "billing"
"#,
        );
        let rules = resolve(&flags, &no_env).unwrap().process_rules;
        assert_eq!((rules.include.len(), rules.exclude.len(), rules.service_names.len()), (1, 1, 1));
        assert_eq!(rules.exclude[0].pod_label, Some(("scouter.io/trace".into(), Some("false".into()))));
        assert_eq!(rules.service_names[0].1, "billing");
        for (text, complaint) in [
            ("[[exclude]]\nnamespace = \"a\"\nname = \"x\"\n", "`name` belongs in [[service_names]]"),
            ("[[service_names]]\nnamespace = \"a\"\n", "needs a `name`"),
            ("[[include]]\n", "give at least one of"),
        ] {
            let (_dir, flags) = file(text);
            let error = resolve(&flags, &no_env).unwrap_err().to_string();
            assert!(error.contains(complaint) && error.contains("agent.toml"), "{error}");
        }
    }

    #[test]
    fn routes_come_from_the_flags_and_the_file() {
        let (_dir, mut flags) = file("[[routes]]\ntemplate = \"/orders/{id}\"\nservices = [\"shop-*\"]\n");
        flags.route_templates = vec!["/users/<int:id>".into()];
        let routes = resolve(&flags, &no_env).unwrap().routes;
        assert_eq!(routes.len(), 2);
        assert_eq!(routes.route_of("shop-api", "/orders/9"), Some("/orders/{id}"));
        assert_eq!(routes.route_of("billing", "/orders/9"), None);
        assert_eq!(routes.route_of("billing", "/users/3"), Some("/users/<int:id>"));
    }

    #[test]
    fn tags_come_from_the_file_unless_flags_name_them() {
        let (_dir, mut flags) = file("tags = [\"env=staging\", \"team=shop\"]\n");
        assert_eq!(resolve(&flags, &no_env).unwrap().tags, Tags::parse(&["env=staging", "team=shop"]).unwrap());
        flags.tags = vec!["env=prod".into()];
        assert_eq!(resolve(&flags, &no_env).unwrap().tags, Tags::parse(&["env=prod"]).unwrap());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_reported_with_where_they_came_from() {
        let error = |text: &str| resolve(&file(text).1, &no_env).unwrap_err().to_string();
        let e = error("[[functions]]\npatern = \"a:b\"\n");
        assert!(e.contains("agent.toml") && e.contains("patern"), "{e}");
        let e = error("[[functions]]\npattern = \"nocolon\"\n");
        assert!(e.contains("agent.toml") && e.contains("no ':'"), "{e}");
        let e = error("[[routes]]\ntemplate = \"orders/{id}\"\n");
        assert!(e.contains("agent.toml") && e.contains("starts with '/'"), "{e}");
        let e = error("otlp_endpoit = \"http://c:4317\"\n");
        assert!(e.contains("agent.toml") && e.contains("otlp_endpoit"), "{e}");
        let e = error("sample_ratio = 1.5\n");
        assert!(e.starts_with("--sample-ratio") && e.contains("1.5"), "{e}");
        let e = error("scouter_server_uri = \"scouter:8000\"\nscouter_username = \"u\"\nscouter_password = \"p\"\n");
        assert!(e.starts_with("--scouter-server-uri"), "{e}");
        let e = error("scouter_server_uri = \"http://scouter:8000\"\n");
        assert!(e.contains("SCOUTER_USERNAME"), "{e}");
        let e = error("metrics_listen = \"9464\"\n");
        assert!(e.starts_with("--metrics-listen"), "{e}");
        let e = error("tags = [\"env\"]\n");
        assert!(e.starts_with("--tag") && e.contains("KEY=VALUE"), "{e}");
        let none = Settings { function_patterns: vec!["x".into()], ..Settings::default() };
        assert!(resolve(&none, &no_env).unwrap_err().to_string().starts_with("--function"));
        let none = Settings { route_templates: vec!["/a/*/b".into()], ..Settings::default() };
        assert!(resolve(&none, &no_env).unwrap_err().to_string().starts_with("--route"));
        let missing = Settings { config: Some("/nonexistent/agent.toml".into()), ..Settings::default() };
        assert!(resolve(&missing, &no_env).unwrap_err().to_string().contains("/nonexistent/agent.toml"));
    }

    #[test]
    fn without_a_backend_spans_go_to_the_store_with_the_sdk_batch_defaults() {
        let config = resolve(&Settings::default(), &no_env).unwrap();
        let export = &config.export;
        assert!(export.local_store && export.scouter.is_none() && export.otlp.is_none());
        assert_eq!(export.batch.max_queue_size, 2048);
        assert_eq!(export.batch.scheduled_delay, Duration::from_millis(5000));
        assert_eq!(export.batch.max_export_batch_size, 512);
        assert_eq!(export.sample_ratio, 1.0);
        assert!(export.honor_sampled_flag);
        assert_eq!(config.metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
        assert!(config.propagate);
        assert_eq!(config.store.path, PathBuf::from(DEFAULT_STORE_PATH));
    }

    #[test]
    fn the_scouter_transport_follows_the_sdk_variables() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        };
        // clap reads SCOUTER_SERVER_URI etc. into the flags; here they are given as flags.
        let login =
            Settings { scouter_username: Some("u".into()), scouter_password: Some("p".into()), ..Settings::default() };
        let http = Settings { scouter_server_uri: Some("http://s:8000/".into()), ..login.clone() };
        let config = resolve(&http, &no_env).unwrap();
        assert!(
            matches!(&config.export.scouter.as_ref().unwrap().transport, ScouterTransport::Http { uri } if uri == "http://s:8000")
        );
        assert!(!config.export.local_store, "a backend replaces the embedded store");
        let both = Settings { scouter_grpc_uri: Some("http://s:50051".into()), ..http.clone() };
        assert!(matches!(
            resolve(&both, &no_env).unwrap().export.scouter.unwrap().transport,
            ScouterTransport::Grpc { .. }
        ));
        let forced = Settings { scouter_transport: Some(ScouterTransportKind::Http), ..both };
        assert!(matches!(
            resolve(&forced, &no_env).unwrap().export.scouter.unwrap().transport,
            ScouterTransport::Http { .. }
        ));
        let kafka = Settings { kafka_brokers: Some("k1:9092, k2:9092".into()), ..Settings::default() };
        let topic = resolve(&kafka, &env(&[("KAFKA_TOPIC", "t2")])).unwrap().export.scouter.unwrap().transport;
        assert!(
            matches!(&topic, ScouterTransport::Kafka { brokers, topic } if brokers == &["k1:9092", "k2:9092"] && topic == "t2")
        );
        let topic = resolve(&kafka, &env(&[("KAFKA_TOPIC", "t2"), ("SCOUTER_KAFKA_TOPIC", "t1")])).unwrap();
        assert!(
            matches!(topic.export.scouter.unwrap().transport, ScouterTransport::Kafka { topic, .. } if topic == "t1")
        );
        let default = resolve(&kafka, &no_env).unwrap().export.scouter.unwrap().transport;
        assert!(matches!(default, ScouterTransport::Kafka { topic, .. } if topic == "scouter_monitoring"));
        let kept = Settings { keep_local_store: Some(true), ..http };
        assert!(resolve(&kept, &no_env).unwrap().export.local_store);
    }

    #[test]
    fn otlp_follows_the_standard_variables_and_flags_win() {
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=s%3Dcret, x-team = core"),
            ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "none"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
        ];
        let env = |name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string());
        let otlp = resolve(&Settings::default(), &env).unwrap().export.otlp.unwrap();
        assert_eq!(otlp.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(otlp.endpoint, "http://collector:4318/v1/traces", "the generic endpoint is a base URL");
        assert_eq!(
            otlp.headers,
            [("api-key".to_owned(), "s=cret".to_owned()), ("x-team".to_owned(), "core".to_owned())]
        );
        assert!(otlp.gzip, "the TRACES_ variable wins");
        assert_eq!(otlp.timeout, Duration::from_millis(2500));
        let flags = Settings { otlp_endpoint: Some("http://other:4318/custom".into()), ..Settings::default() };
        assert_eq!(resolve(&flags, &env).unwrap().export.otlp.unwrap().endpoint, "http://other:4318/custom");
        let flags = Settings { otlp_endpoint: Some("http://other:4318/".into()), ..Settings::default() };
        assert_eq!(resolve(&flags, &env).unwrap().export.otlp.unwrap().endpoint, "http://other:4318/v1/traces");
        let (_dir, from_file) = file("otlp_endpoint = \"http://file:4317\"\notlp_protocol = \"grpc\"\n");
        let otlp = resolve(&from_file, &env).unwrap().export.otlp.unwrap();
        assert_eq!(otlp.endpoint, "http://collector:4318/v1/traces", "the environment wins over the file");
        let otlp = resolve(&from_file, &no_env).unwrap().export.otlp.unwrap();
        assert_eq!((otlp.endpoint.as_str(), otlp.protocol), ("http://file:4317", OtlpProtocol::Grpc));
    }

    #[test]
    fn printed_settings_mask_secrets() {
        let flags = Settings {
            scouter_password: Some("hunter2".into()),
            otlp_headers: Some("api-key=abc,team=x".into()),
            ..Settings::default()
        };
        let printed = toml::to_string(&masked(effective(&flags, &Settings::default(), &no_env))).unwrap();
        assert!(!printed.contains("hunter2") && !printed.contains("abc"), "{printed}");
        assert!(printed.contains("api-key=****") && printed.contains("scouter_password = \"****\""), "{printed}");
        assert!(printed.contains("max_queue_size = 2048"), "defaults are shown: {printed}");
        let back: Settings = toml::from_str(&printed).expect("the printed configuration reads back as a file");
        assert_eq!(back.max_export_batch_size, Some(512));
    }
}
