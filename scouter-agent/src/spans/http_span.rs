//! HTTP spans from completed exchanges, with OTel semantic-convention attributes.
//!
//! Privacy by default: only the header fields the parser keeps can reach a span (never
//! credentials or cookies, never bodies), and query strings are left out of `url.path` and
//! redacted in `url.full`.

use std::sync::Arc;

use super::assembly::{CompletedExchange, FailedConnect, Role};
use super::ids::{SpanId, TraceId};
use super::propagation;
use super::routes::Routes;
use super::{Attributes, ContextFlags, Resource, Span, SpanKind, Status, StatusCode};
use crate::events::Peer;
use scouter_ebpf::context_origin;

/// Builds the span of one exchange, for the process described by `resource`; `routes` name
/// it after its route template when one matches.
pub fn span_from_exchange(exchange: &CompletedExchange, resource: Arc<Resource>, routes: &Routes) -> Span {
    let identity = identity(exchange);
    let kind = match exchange.role {
        Role::Server => SpanKind::Server,
        Role::Client => SpanKind::Client,
    };
    let method = &exchange.request.method;
    let mut attributes = attributes(exchange);
    let name = match routes.route_of(resource.service_name(), exchange.request.path()) {
        Some(route) => {
            let key = match exchange.role {
                Role::Server => "http.route",
                Role::Client => "url.template",
            };
            attributes.insert(key.into(), route.into());
            format!("{method} {route}")
        }
        None => method.clone(),
    };
    Span {
        trace_id: identity.trace_id,
        span_id: identity.span_id,
        parent_span_id: identity.parent,
        name,
        kind,
        start_time_unix_nano: exchange.start_time,
        end_time_unix_nano: exchange.end_time,
        attributes,
        status: status(exchange),
        resource,
        flags: identity.flags,
        trace_state: String::new(),
        events: Vec::new(),
        links: Vec::new(),
        scope: None,
    }
}

struct Identity {
    trace_id: TraceId,
    span_id: SpanId,
    parent: Option<SpanId>,
    flags: ContextFlags,
}

/// The kernel's identity when it gave one (it decided it before any byte left, and the
/// downstream service got it); otherwise the same rules applied to the parsed head: a server
/// adopts the caller's context as its parent, a client request that already carries a context
/// (an SDK propagated it) is that context's span.
fn identity(exchange: &CompletedExchange) -> Identity {
    if let Some(kernel) = exchange.context {
        let parent = SpanId(kernel.parent_span_id);
        let remote = kernel.origin == context_origin::REMOTE_PARENT;
        return Identity {
            trace_id: TraceId(kernel.trace_id),
            span_id: SpanId(kernel.span_id),
            parent: parent.is_valid().then_some(parent),
            flags: ContextFlags::from_w3c(kernel.flags, remote),
        };
    }
    let carried = propagation::extract(&exchange.request.fields);
    match (exchange.role, carried) {
        (Role::Server, Some(remote)) => Identity {
            trace_id: remote.trace_id,
            span_id: SpanId::random(),
            parent: Some(remote.span_id),
            flags: ContextFlags { sampled: remote.sampled, remote_parent: true },
        },
        (Role::Client, Some(own)) => Identity {
            trace_id: own.trace_id,
            span_id: own.span_id,
            parent: None,
            flags: ContextFlags { sampled: own.sampled, remote_parent: false },
        },
        (_, None) => Identity {
            trace_id: TraceId::random(),
            span_id: SpanId::random(),
            parent: None,
            flags: ContextFlags::default(),
        },
    }
}

fn attributes(exchange: &CompletedExchange) -> Attributes {
    let request = &exchange.request;
    let mut attributes = Attributes::new();
    let mut put = |key: &str, value: super::AttributeValue| {
        attributes.insert(key.to_owned(), value);
    };
    put("http.request.method", request.method.clone().into());
    if let Some(response) = &exchange.response {
        put("http.response.status_code", response.status.into());
    }
    if let Some(error) = error_type(exchange) {
        put("error.type", error.into());
    }
    put("network.protocol.name", "http".into());
    put("network.protocol.version", request.version.as_semconv().into());
    let scheme = if exchange.tls { "https" } else { "http" };
    put("url.scheme", scheme.into());
    if let Some(agent) = &request.fields.user_agent {
        put("user_agent.original", agent.clone().into());
    }
    let host = request.fields.host.as_deref().map(split_host_port);
    match exchange.role {
        Role::Server => {
            put("url.path", request.path().to_owned().into());
            if let Some(port) = exchange.local_port {
                put("server.port", port.into());
            }
            if let Some((name, _)) = host {
                put("server.address", name.to_owned().into());
            }
            if let Peer::Ip { addr, port } = exchange.peer {
                put("client.address", addr.to_string().into());
                put("client.port", port.into());
            }
        }
        Role::Client => {
            let (name, port) = match (host, exchange.peer) {
                (Some((name, port)), Peer::Ip { port: peer_port, .. }) => (name.to_owned(), port.unwrap_or(peer_port)),
                (Some((name, port)), _) => (name.to_owned(), port.unwrap_or(default_port(scheme))),
                (None, Peer::Ip { addr, port }) => (addr.to_string(), port),
                (None, _) => (String::new(), default_port(scheme)),
            };
            put("url.full", redacted_url(scheme, &name, port, &request.target).into());
            put("server.address", name.into());
            put("server.port", port.into());
            if let Peer::Ip { addr, .. } = exchange.peer {
                put("network.peer.address", addr.to_string().into());
            }
        }
    }
    attributes
}

/// Why the exchange failed, as semantic conventions spell it: the failure when no response
/// came, else the status code when it counts as an error for this side.
fn error_type(exchange: &CompletedExchange) -> Option<String> {
    let Some(response) = &exchange.response else { return exchange.error.map(str::to_owned) };
    let failed = match exchange.role {
        // 4xx is the caller's error, not the server's.
        Role::Server => response.status >= 500,
        Role::Client => response.status >= 400,
    };
    failed.then(|| response.status.to_string())
}

fn status(exchange: &CompletedExchange) -> Status {
    match error_type(exchange) {
        Some(_) => error_status(),
        None => Status::default(),
    }
}

fn error_status() -> Status {
    Status { code: StatusCode::Error, message: String::new() }
}

/// A CLIENT span for a connection that failed before a request could be sent. Nothing says
/// which protocol it was for, so it is named after what happened, not after HTTP.
pub fn span_from_failed_connect(failed: &FailedConnect, resource: Arc<Resource>) -> Span {
    let mut attributes = Attributes::new();
    if let Peer::Ip { addr, port } = failed.peer {
        attributes.insert("server.address".into(), addr.to_string().into());
        attributes.insert("server.port".into(), port.into());
        attributes.insert("network.peer.address".into(), addr.to_string().into());
    }
    attributes.insert("network.transport".into(), "tcp".into());
    attributes.insert("error.type".into(), failed.error.into());
    Span {
        trace_id: TraceId::random(),
        span_id: SpanId::random(),
        parent_span_id: None,
        name: "connect".into(),
        kind: SpanKind::Client,
        start_time_unix_nano: failed.start_time,
        end_time_unix_nano: failed.end_time,
        attributes,
        status: error_status(),
        resource,
        flags: ContextFlags::default(),
        trace_state: String::new(),
        events: Vec::new(),
        links: Vec::new(),
        scope: None,
    }
}

fn split_host_port(host: &str) -> (&str, Option<u16>) {
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        let (addr, after) = rest.split_once(']').unwrap_or((rest, ""));
        return (addr, after.strip_prefix(':').and_then(|p| p.parse().ok()));
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') => (name, port.parse().ok()),
        _ => (host, None),
    }
}

/// `url.full` with every query value replaced by `REDACTED` (keys stay: they are low-risk
/// and useful).
fn redacted_url(scheme: &str, host: &str, port: u16, target: &str) -> String {
    if target.contains("://") {
        return redact_query(target);
    }
    let authority = if port == default_port(scheme) { host.to_owned() } else { format!("{host}:{port}") };
    redact_query(&format!("{scheme}://{authority}{target}"))
}

fn default_port(scheme: &str) -> u16 {
    if scheme == "https" {
        443
    } else {
        80
    }
}

fn redact_query(url: &str) -> String {
    let Some((base, query)) = url.split_once('?') else { return url.to_owned() };
    let query = query.split('#').next().unwrap_or_default();
    let redacted: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) => format!("{key}=REDACTED"),
            None => pair.to_owned(),
        })
        .collect();
    format!("{base}?{}", redacted.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::SocketId;
    use crate::spans::http1::{parse_request, parse_response};
    use crate::spans::AttributeValue;

    fn exchange(role: Role, request: &[u8], response: &[u8]) -> CompletedExchange {
        CompletedExchange {
            socket: SocketId { pid: 1, id: 3 },
            role,
            peer: Peer::Ip { addr: "127.0.0.1".parse().unwrap(), port: 5000 },
            local_port: Some(8080),
            request: parse_request(request).unwrap(),
            response: Some(parse_response(response).unwrap()),
            error: None,
            start_time: 100,
            end_time: 200,
            context: None,
            tls: false,
        }
    }

    fn text(span: &Span, key: &str) -> Option<String> {
        span.attributes.get(key).map(|v| v.to_string())
    }

    #[test]
    fn server_span_attributes_and_new_trace() {
        let e = exchange(
            Role::Server,
            b"GET /users/7?token=abc HTTP/1.1\r\nHost: api.local:8080\r\nUser-Agent: t/1\r\nAuthorization: Bearer s3cret\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        );
        let span = span_from_exchange(&e, Arc::new(Resource::default()), &Routes::default());
        assert_eq!(span.kind, SpanKind::Server);
        assert_eq!(span.name, "GET");
        assert!(span.parent_span_id.is_none());
        assert_eq!(text(&span, "url.path").as_deref(), Some("/users/7"));
        assert_eq!(span.attributes.get("http.response.status_code"), Some(&AttributeValue::Int(200)));
        assert_eq!(span.attributes.get("server.port"), Some(&AttributeValue::Int(8080)));
        assert_eq!(text(&span, "server.address").as_deref(), Some("api.local"));
        assert_eq!(text(&span, "client.address").as_deref(), Some("127.0.0.1"));
        assert_eq!(text(&span, "network.protocol.version").as_deref(), Some("1.1"));
        assert_eq!(text(&span, "user_agent.original").as_deref(), Some("t/1"));
        let json = serde_json::to_string(&span).unwrap();
        // (Not "abc" alone: random hex ids may hold it.)
        assert!(!json.contains("token") && !json.contains("s3cret"), "{json}");
        assert_eq!(span.status.code, StatusCode::Unset);
    }

    #[test]
    fn a_matching_route_template_names_the_span_never_the_raw_path() {
        use super::super::routes::RouteTemplate;
        let routes = Routes::new(vec![RouteTemplate::parse("/users/{id}").unwrap()]);
        let server = exchange(Role::Server, b"GET /users/7?x=1 HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n");
        let span = span_from_exchange(&server, Arc::new(Resource::default()), &routes);
        assert_eq!(span.name, "GET /users/{id}");
        assert_eq!(text(&span, "http.route").as_deref(), Some("/users/{id}"));
        assert_eq!(text(&span, "url.path").as_deref(), Some("/users/7"));
        let client =
            exchange(Role::Client, b"POST /users/8 HTTP/1.1\r\nHost: u\r\n\r\n", b"HTTP/1.1 201 Created\r\n\r\n");
        let span = span_from_exchange(&client, Arc::new(Resource::default()), &routes);
        assert_eq!(span.name, "POST /users/{id}");
        assert_eq!(text(&span, "url.template").as_deref(), Some("/users/{id}"));
        assert!(!span.attributes.contains_key("http.route"));
        let other = exchange(Role::Server, b"GET /orders/7 HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(span_from_exchange(&other, Arc::new(Resource::default()), &routes).name, "GET");
    }

    #[test]
    fn server_adopts_remote_parent_and_fails_on_5xx() {
        let e = exchange(
            Role::Server,
            b"GET / HTTP/1.1\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n",
            b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n",
        );
        let span = span_from_exchange(&e, Arc::new(Resource::default()), &Routes::default());
        assert_eq!(span.trace_id.to_string(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(span.parent_span_id.unwrap().to_string(), "b7ad6b7169203331");
        assert_ne!(span.span_id.to_string(), "b7ad6b7169203331");
        assert_eq!(span.status.code, StatusCode::Error);
    }

    #[test]
    fn client_span_redacts_query_and_adopts_sdk_identity() {
        let e = exchange(
            Role::Client,
            b"GET /search?q=secret&page=2 HTTP/1.1\r\nHost: backend:9000\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        );
        let span = span_from_exchange(&e, Arc::new(Resource::default()), &Routes::default());
        assert_eq!(span.kind, SpanKind::Client);
        assert_eq!(text(&span, "url.full").as_deref(), Some("http://backend:9000/search?q=REDACTED&page=REDACTED"));
        assert_eq!(span.attributes.get("server.port"), Some(&AttributeValue::Int(9000)));
        assert_eq!(span.span_id.to_string(), "b7ad6b7169203331");
        assert_eq!(span.status.code, StatusCode::Error);
    }

    #[test]
    fn tls_exchanges_are_https_with_443_as_the_default_port() {
        let ok = b"HTTP/1.1 200 OK\r\n\r\n";
        let mut e = exchange(Role::Client, b"GET /a?k=v HTTP/1.1\r\nHost: api.local\r\n\r\n", ok);
        e.tls = true;
        e.peer = Peer::Unknown;
        let span = span_from_exchange(&e, Arc::new(Resource::default()), &Routes::default());
        assert_eq!(text(&span, "url.scheme").as_deref(), Some("https"));
        assert_eq!(text(&span, "url.full").as_deref(), Some("https://api.local/a?k=REDACTED"));
        assert_eq!(span.attributes.get("server.port"), Some(&AttributeValue::Int(443)));
        let mut e = exchange(Role::Client, b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8443\r\n\r\n", ok);
        e.tls = true;
        let span = span_from_exchange(&e, Arc::new(Resource::default()), &Routes::default());
        assert_eq!(text(&span, "url.full").as_deref(), Some("https://127.0.0.1:8443/"));
    }

    #[test]
    fn the_kernel_identity_wins_over_headers() {
        let mut e = exchange(
            Role::Client,
            b"GET / HTTP/1.1\r\nHost: b\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        );
        e.context = Some(scouter_ebpf::SpanContext {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: [3; 8],
            flags: 1,
            origin: scouter_ebpf::context_origin::LOCAL_PARENT,
            ..Default::default()
        });
        let span = span_from_exchange(&e, Arc::new(Resource::default()), &Routes::default());
        assert_eq!(span.trace_id, TraceId([1; 16]));
        assert_eq!(span.span_id, SpanId([2; 8]));
        assert_eq!(span.parent_span_id, Some(SpanId([3; 8])));
        e.context = Some(scouter_ebpf::SpanContext { parent_span_id: [0; 8], ..e.context.unwrap() });
        assert_eq!(
            span_from_exchange(&e, Arc::new(Resource::default()), &Routes::default()).parent_span_id,
            None,
            "zero means root"
        );
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(split_host_port("a:1"), ("a", Some(1)));
        assert_eq!(split_host_port("a"), ("a", None));
        assert_eq!(split_host_port("[::1]:8080"), ("::1", Some(8080)));
        assert_eq!(split_host_port("::1"), ("::1", None));
    }
}
