//! The settings of `scouter-agent run`: one struct that is both the command line (clap) and
//! the configuration file (serde), so a flag `--foo-bar` and a file key `foo_bar` are the same
//! setting by construction. Every field is optional here; [`super::resolve`] applies the
//! precedence (flag, then environment variable, then file, then default).

use std::path::PathBuf;

use clap::builder::BoolishValueParser;
use clap::{Args, ValueEnum};

use crate::probes::IoCaptureChoice;
use serde::{Deserialize, Serialize};
use serde_json::{to_value, Value};

/// `true`/`false`, also `1`/`0`, `yes`/`no`, `on`/`off`; a bare flag means `true`.
fn boolish() -> BoolishValueParser {
    BoolishValueParser::new()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScouterTransportKind {
    Http,
    Grpc,
    Kafka,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
pub enum OtlpProtocol {
    #[value(name = "grpc")]
    #[serde(rename = "grpc")]
    Grpc,
    #[value(name = "http/protobuf")]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Gzip,
    None,
}

/// Options of `scouter-agent run`; each is also a key of the `--config` file.
#[derive(Clone, Debug, Default, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Path of the embedded trace store (an SQLite file, created if missing)
    /// [default: /var/lib/scouter-agent/traces.db].
    #[arg(long, value_name = "PATH", env = "SCOUTER_AGENT_STORE_PATH")]
    pub store_path: Option<PathBuf>,

    /// Delete stored spans older than this many hours [default: 72].
    #[arg(long, value_name = "HOURS", env = "SCOUTER_AGENT_STORE_MAX_AGE_HOURS")]
    pub store_max_age_hours: Option<u64>,

    /// Keep the store under this many MiB, deleting the oldest spans first [default: 512].
    #[arg(long, value_name = "MIB", env = "SCOUTER_AGENT_STORE_MAX_MB")]
    pub store_max_mb: Option<u64>,

    /// Keep writing the embedded store when a Scouter backend is configured (by default the
    /// store is the destination only when no backend is).
    #[arg(long, env = "SCOUTER_AGENT_KEEP_LOCAL_STORE", num_args = 0..=1, default_missing_value = "true", value_parser = boolish())]
    pub keep_local_store: Option<bool>,

    /// Also print one line per finished span on standard output.
    #[arg(long, env = "SCOUTER_AGENT_STDOUT", num_args = 0..=1, default_missing_value = "true", value_parser = boolish())]
    pub stdout: Option<bool>,

    /// Trace only these process ids (repeatable); default: every Python process.
    #[arg(long = "pid", value_name = "PID")]
    #[serde(default, rename = "pid", skip_serializing_if = "Vec::is_empty")]
    pub pids: Vec<u32>,

    /// Do not insert a W3C `traceparent` header into outgoing plain-HTTP requests of traced
    /// processes. By default one is inserted (exactly one, after the request line, and never
    /// when the request already has one) so downstream services join the caller's trace.
    #[arg(long, env = "SCOUTER_AGENT_NO_PROPAGATE", num_args = 0..=1, default_missing_value = "true", value_parser = boolish())]
    pub no_propagate: Option<bool>,

    /// How socket I/O is seen: `socket` (fentry/fexit on the kernel's socket functions: other
    /// processes' file and pipe I/O run nothing), `syscalls` (tracepoints on the read/write
    /// syscalls: every such syscall on the host runs a program), or `auto` (the socket layer
    /// where the kernel allows it, else the syscalls; `check` says which) [default: auto].
    #[arg(long, value_enum, value_name = "CAPTURE", env = "SCOUTER_AGENT_IO_CAPTURE")]
    pub io_capture: Option<IoCaptureChoice>,

    /// A request being served stops parenting its thread's outgoing calls after this many
    /// seconds (guards against a thread that keeps working after its request) [default: 300].
    #[arg(long, value_name = "SECS", env = "SCOUTER_AGENT_MAX_TRANSACTION_SECS")]
    pub max_transaction_secs: Option<u64>,

    /// Make every call of the selected Python functions a span (repeatable):
    /// `MODULE:QUALNAME`, globs allowed (`*` any run of characters, dots included; `?` one),
    /// optionally followed by arguments to capture: `shop.orders:OrderService.place*(order_id)`.
    /// Costs every Python call of the processes concerned about 2-3 µs (see the README); none
    /// by default. The variable takes patterns separated by `;`. In the file: `[[functions]]`.
    #[arg(long = "function", value_name = "PATTERN", env = "SCOUTER_AGENT_FUNCTIONS", value_delimiter = ';')]
    #[serde(skip)]
    pub function_patterns: Vec<String>,

    /// Name HTTP spans after this route template when a request's path matches it
    /// (repeatable): `"GET /users/{id}"`, with `http.route` (servers) or `url.template`
    /// (clients). Placeholders take a whole segment: `{id}`, `<id>`, `<int:id>`, `:id`; a last
    /// segment `{rest:path}`, `<path:rest>` or `*` takes the rest of the path. The most literal
    /// matching template wins. Without one, spans are named `"{METHOD}"` (the raw path stays in
    /// `url.path`, out of the name). The variable takes templates separated by `;`. In the
    /// file: `[[routes]]`.
    #[arg(long = "route", value_name = "TEMPLATE", env = "SCOUTER_AGENT_ROUTES", value_delimiter = ';')]
    #[serde(skip)]
    pub route_templates: Vec<String>,

    /// Tag every span (repeatable): `--tag env=prod` gives the attribute
    /// `scouter.tracing.tag.env`, as the Scouter SDK's `set_tag` does; spans that begin a
    /// trace's work in a process also carry `baggage.scouter.tracing.tag.env`, by which the
    /// Scouter server finds traces. The variable takes tags separated by `,`.
    #[arg(long = "tag", value_name = "KEY=VALUE", env = "SCOUTER_AGENT_TAGS", value_delimiter = ',')]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,

    // --- Export (every sink) ---
    /// Keep this fraction of traces (0.0-1.0) in every sink [default: 1.0]. Decided from the
    /// trace id, so every agent keeps or drops the same traces.
    #[arg(long, value_name = "RATIO", env = "SCOUTER_AGENT_SAMPLE_RATIO", help_heading = "Export")]
    pub sample_ratio: Option<f64>,

    /// Drop traces whose caller said "not sampled" (W3C flag 0 or Scouter's
    /// `is_sampled: false`) [default: true].
    #[arg(long, value_name = "BOOL", env = "SCOUTER_AGENT_HONOR_SAMPLED_FLAG", value_parser = boolish(), help_heading = "Export")]
    pub honor_sampled_flag: Option<bool>,

    /// Spans each sink queues before new ones are dropped (counted) [default: 2048].
    #[arg(long, value_name = "SPANS", env = "SCOUTER_AGENT_MAX_QUEUE_SIZE", help_heading = "Export")]
    pub max_queue_size: Option<usize>,

    /// The longest a span waits in its sink's queue before its batch is sent [default: 5000].
    #[arg(long, value_name = "MS", env = "SCOUTER_AGENT_SCHEDULED_DELAY_MS", help_heading = "Export")]
    pub scheduled_delay_ms: Option<u64>,

    /// Spans per batch (a batch larger than the transport's request limit is split)
    /// [default: 512].
    #[arg(long, value_name = "SPANS", env = "SCOUTER_AGENT_MAX_EXPORT_BATCH_SIZE", help_heading = "Export")]
    pub max_export_batch_size: Option<usize>,

    /// On SIGTERM/SIGINT, keep delivering what was accepted for at most this long [default: 10].
    #[arg(long, value_name = "SECS", env = "SCOUTER_AGENT_FLUSH_TIMEOUT_SECS", help_heading = "Export")]
    pub flush_timeout_secs: Option<u64>,

    /// Retry a failed request (connection error, 429, 5xx, RESOURCE_EXHAUSTED) with backoff
    /// for at most this long before its spans are dropped (counted) [default: 300].
    #[arg(long, value_name = "SECS", env = "SCOUTER_AGENT_RETRY_MAX_ELAPSED_SECS", help_heading = "Export")]
    pub retry_max_elapsed_secs: Option<u64>,

    // --- Scouter backend ---
    /// Scouter transport. Default: gRPC when SCOUTER_GRPC_URI (or --scouter-grpc-uri) is set,
    /// else HTTP when SCOUTER_SERVER_URI is, else Kafka when KAFKA_BROKERS is; with none of
    /// them no Scouter backend is used and spans go to the embedded store.
    #[arg(long, value_name = "TRANSPORT", env = "SCOUTER_AGENT_SCOUTER_TRANSPORT", help_heading = "Scouter backend")]
    pub scouter_transport: Option<ScouterTransportKind>,

    /// Scouter HTTP base URI, e.g. `http://scouter:8000` [default: http://localhost:8000].
    #[arg(long, value_name = "URI", env = "SCOUTER_SERVER_URI", help_heading = "Scouter backend")]
    pub scouter_server_uri: Option<String>,

    /// Scouter gRPC URI [default: http://localhost:50051].
    #[arg(long, value_name = "URI", env = "SCOUTER_GRPC_URI", help_heading = "Scouter backend")]
    pub scouter_grpc_uri: Option<String>,

    /// Scouter user for the login (HTTP and gRPC).
    #[arg(long, value_name = "USER", env = "SCOUTER_USERNAME", help_heading = "Scouter backend")]
    pub scouter_username: Option<String>,

    /// Scouter password (shown masked by `config --print`).
    #[arg(
        long,
        value_name = "PASSWORD",
        env = "SCOUTER_PASSWORD",
        hide_env_values = true,
        help_heading = "Scouter backend"
    )]
    pub scouter_password: Option<String>,

    /// Kafka brokers for the Scouter Kafka transport, comma-separated `host:port`.
    #[arg(long, value_name = "BROKERS", env = "KAFKA_BROKERS", help_heading = "Scouter backend")]
    pub kafka_brokers: Option<String>,

    /// Kafka topic [default: SCOUTER_KAFKA_TOPIC, else KAFKA_TOPIC, else scouter_monitoring].
    #[arg(long, value_name = "TOPIC", help_heading = "Scouter backend")]
    pub scouter_kafka_topic: Option<String>,

    /// Keep this fraction of traces for the Scouter backend only, on top of --sample-ratio.
    #[arg(long, value_name = "RATIO", env = "SCOUTER_AGENT_SCOUTER_SAMPLE_RATIO", help_heading = "Scouter backend")]
    pub scouter_sample_ratio: Option<f64>,

    // --- OTLP collector ---
    /// OTLP collector endpoint; setting it turns the OTLP sink on. Also
    /// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT. For HTTP, a URL
    /// without a path (and OTEL_EXPORTER_OTLP_ENDPOINT always) gets `/v1/traces` appended.
    #[arg(long, value_name = "URL", help_heading = "OTLP collector")]
    pub otlp_endpoint: Option<String>,

    /// `grpc` or `http/protobuf` [default: OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL, else grpc].
    #[arg(long, value_name = "PROTOCOL", help_heading = "OTLP collector")]
    pub otlp_protocol: Option<OtlpProtocol>,

    /// Extra request headers, `key=value,key2=value2` (values URL-decoded) [default:
    /// OTEL_EXPORTER_OTLP_(TRACES_)HEADERS]. Values are masked by `config --print`.
    #[arg(long, value_name = "HEADERS", help_heading = "OTLP collector")]
    pub otlp_headers: Option<String>,

    /// `gzip` or `none` [default: OTEL_EXPORTER_OTLP_(TRACES_)COMPRESSION, else none].
    #[arg(long, value_name = "COMPRESSION", help_heading = "OTLP collector")]
    pub otlp_compression: Option<Compression>,

    /// Per-request timeout in milliseconds [default: OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT, else
    /// 10000].
    #[arg(long, value_name = "MS", help_heading = "OTLP collector")]
    pub otlp_timeout_ms: Option<u64>,

    /// Keep this fraction of traces for the OTLP collector only, on top of --sample-ratio.
    #[arg(long, value_name = "RATIO", env = "SCOUTER_AGENT_OTLP_SAMPLE_RATIO", help_heading = "OTLP collector")]
    pub otlp_sample_ratio: Option<f64>,

    // --- SDK receivers ---
    /// Receive spans from in-process SDKs over gRPC here: OTLP's TraceService and Scouter's
    /// AuthService/MessageService (point `SCOUTER_GRPC_URI` at it); `off` disables it
    /// [default: 127.0.0.1:4317].
    #[arg(long, value_name = "ADDR", env = "SCOUTER_AGENT_RECEIVE_GRPC", help_heading = "SDK receivers")]
    pub receive_grpc: Option<String>,

    /// Receive spans from in-process SDKs over HTTP here: OTLP `POST /v1/traces` (protobuf or
    /// JSON) and Scouter's `/scouter/auth/login` + `/scouter/message` (point
    /// `SCOUTER_SERVER_URI` at it); `off` disables it [default: 127.0.0.1:4318].
    #[arg(long, value_name = "ADDR", env = "SCOUTER_AGENT_RECEIVE_HTTP", help_heading = "SDK receivers")]
    pub receive_http: Option<String>,

    /// How long the agent's span of an HTTP call whose `traceparent` an SDK wrote waits for the
    /// SDK's span of the same call, to merge the two [default: 10000].
    #[arg(long, value_name = "MS", env = "SCOUTER_AGENT_SDK_TWIN_WINDOW_MS", help_heading = "SDK receivers")]
    pub sdk_twin_window_ms: Option<u64>,

    // --- Kubernetes ---
    /// Pod metadata for spans, service names and process rules (`k8s.*`, `container.id`):
    /// `auto` watches this node's pods through the API server when the agent runs in a pod
    /// (KUBERNETES_SERVICE_HOST is set), `off` never does, a URL names an API server to use
    /// without credentials (such as `kubectl proxy`'s) [default: auto].
    #[arg(long, value_name = "auto|off|URL", env = "SCOUTER_AGENT_KUBERNETES", help_heading = "Kubernetes")]
    pub kubernetes: Option<String>,

    /// The node whose pods are watched (the DaemonSet passes `spec.nodeName`)
    /// [default: the host name].
    #[arg(long, value_name = "NAME", env = "NODE_NAME", help_heading = "Kubernetes")]
    pub node_name: Option<String>,

    // --- Operations ---
    /// Serve Prometheus metrics (`/metrics`) and health (`/healthz`, `/readyz`) here;
    /// `off` disables it [default: 127.0.0.1:9464].
    #[arg(long, value_name = "ADDR", env = "SCOUTER_AGENT_METRICS_LISTEN", help_heading = "Operations")]
    pub metrics_listen: Option<String>,

    /// A TOML configuration file with any of these settings as keys (`store_path = "..."`,
    /// `otlp_endpoint = "..."`), plus `[[functions]]`, `[[routes]]`, `[[include]]`,
    /// `[[exclude]]` and `[[service_names]]` tables. Flags and environment variables take
    /// precedence over the file (see the README).
    #[arg(long, value_name = "FILE", env = "SCOUTER_AGENT_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// The file's `[[functions]]` tables.
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub functions: Vec<FunctionEntry>,

    /// The file's `[[routes]]` tables.
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteEntry>,

    /// The file's `[[include]]` tables: trace only the processes one matches (none: all).
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<ProcessEntry>,

    /// The file's `[[exclude]]` tables: never trace the processes one matches.
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<ProcessEntry>,

    /// The file's `[[service_names]]` tables: the first that matches names the service of a
    /// process without its own `OTEL_SERVICE_NAME`.
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_names: Vec<ProcessEntry>,
}

/// One `[[include]]`, `[[exclude]]` or `[[service_names]]` table: every key given must match.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessEntry {
    pub namespace: Option<String>,
    /// `key=value`, or `key` for any value.
    pub pod_label: Option<String>,
    pub container: Option<String>,
    /// A glob (`*`, `?`) over the executable's path.
    pub executable: Option<String>,
    /// A TCP port the process listens on.
    pub port: Option<u16>,
    /// `[[service_names]]` only: the name to give.
    pub name: Option<String>,
}

/// One `[[functions]]` table.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionEntry {
    pub pattern: String,
    #[serde(default)]
    pub arguments: Vec<String>,
    #[serde(default)]
    pub services: Vec<String>,
}

/// One `[[routes]]` table.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteEntry {
    pub template: String,
    #[serde(default)]
    pub services: Vec<String>,
}

impl Settings {
    /// `self` where set, else `lower`'s value. Merged as serde values, so a new setting needs
    /// no change here; the command-line-only fields (`--function`, `--route`, `--config`) stay
    /// `self`'s.
    pub fn or(&self, lower: &Settings) -> Settings {
        let (Ok(Value::Object(mut high)), Ok(Value::Object(low))) = (to_value(self), to_value(lower)) else {
            unreachable!("settings serialise to a JSON object");
        };
        for (key, value) in low {
            let entry = high.entry(key).or_insert(Value::Null);
            if entry.is_null() || entry.as_array().is_some_and(Vec::is_empty) {
                *entry = value;
            }
        }
        let merged: Settings = serde_json::from_value(Value::Object(high)).expect("merged settings are settings");
        Settings {
            function_patterns: self.function_patterns.clone(),
            route_templates: self.route_templates.clone(),
            config: self.config.clone(),
            ..merged
        }
    }
}
