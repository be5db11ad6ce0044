//! Sending planned requests and recording what happened.
//!
//! A test describes its traffic as connections, each a list of [`Call`]s (a request and the
//! status the server must answer). [`run_connection`] sends them in order on one connection
//! and returns an [`Exchange`] per call: the request, the response's status and version, and
//! wall-clock times taken just before sending and just after the response was read. Those are
//! the facts the spans are checked against.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use crate::http::{HttpConnection, Request};

/// A request and the status its response must have.
#[derive(Debug, Clone)]
pub struct Call {
    pub request: Request,
    pub expected_status: u16,
}

impl Call {
    pub fn new(request: Request, expected_status: u16) -> Self {
        Self { request, expected_status }
    }
}

/// One completed request/response pair.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub request: Request,
    pub status: u16,
    /// The protocol version both sides used: "1.1" or "1.0".
    pub protocol_version: String,
    /// Wall clock (Unix nanoseconds) just before the request was written.
    pub sent_at: u64,
    /// Wall clock (Unix nanoseconds) just after the response was read.
    pub received_at: u64,
    /// Which connection of the plan carried it (0-based), for messages.
    pub connection: usize,
}

impl Exchange {
    /// A one-line description for messages.
    pub fn describe(&self) -> String {
        format!(
            "{} {} HTTP/{} -> {} (connection #{})",
            self.request.method, self.request.target, self.protocol_version, self.status, self.connection
        )
    }
}

/// Current wall-clock time in Unix nanoseconds.
pub fn now_unix_nanos() -> u64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX)
}

/// Sends `calls` in order on one new connection to `port`, then closes it. With `expect_close`,
/// also checks that the server closed the connection after the last response (HTTP/1.0).
pub fn run_connection(port: u16, calls: &[Call], index: usize, expect_close: bool) -> Result<Vec<Exchange>> {
    let mut connection = HttpConnection::connect(port)?;
    let mut exchanges = Vec::with_capacity(calls.len());
    for call in calls {
        exchanges.push(exchange(&mut connection, call, index)?);
    }
    if expect_close && !connection.closed_by_server(Duration::from_secs(5))? {
        bail!("the server on port {port} kept connection #{index} open after an HTTP/1.0 response");
    }
    Ok(exchanges)
}

/// Runs every connection of `plan` one after the other; returns all exchanges in order.
pub fn run_plan(port: u16, plan: &[Vec<Call>], expect_close: bool) -> Result<Vec<Exchange>> {
    let mut exchanges = Vec::new();
    for (index, calls) in plan.iter().enumerate() {
        exchanges.extend(run_connection(port, calls, index, expect_close)?);
    }
    Ok(exchanges)
}

/// Sends one call on `connection` (connection number `index` of the test) and records it.
pub fn exchange(connection: &mut HttpConnection, call: &Call, index: usize) -> Result<Exchange> {
    let request = &call.request;
    let sent_at = now_unix_nanos();
    let response = connection.send(request)?;
    let received_at = now_unix_nanos();
    if response.status != call.expected_status {
        bail!(
            "test server bug: {} {} answered {} instead of {}",
            request.method,
            request.target,
            response.status,
            call.expected_status
        );
    }
    let request_version = request.version.strip_prefix("HTTP/").context("request version")?;
    let response_version = response.version.strip_prefix("HTTP/").context("response version")?;
    if request_version != response_version {
        bail!(
            "test setup: request said HTTP/{request_version} but the response HTTP/{response_version}; \
             the tests keep both equal so the expected network.protocol.version is unambiguous"
        );
    }
    Ok(Exchange {
        request: request.clone(),
        status: response.status,
        protocol_version: response_version.to_owned(),
        sent_at,
        received_at,
        connection: index,
    })
}

/// The standard mix for the keep-alive server: 9 requests on 6 connections. Three share a
/// keep-alive connection (GET, POST with a body, a 404); four have a connection each (a query
/// string, a `Connection: close`, a 3000-byte POST, a 500); and a final keep-alive pair ends
/// with a POST answered 503. Paths are unique, so each span can be matched
/// to its request by `url.path`.
pub fn keepalive_mix() -> Vec<Vec<Call>> {
    vec![
        vec![
            Call::new(Request::get("/ka/first"), 200),
            Call::new(Request::post("/ka/echo", "a small request body"), 200),
            Call::new(Request::get("/status/404"), 404),
        ],
        vec![Call::new(Request::get("/single/query?item=42&sort=asc"), 200)],
        vec![Call::new(Request::get("/single/close").header("Connection", "close"), 200)],
        vec![Call::new(Request::post("/single/upload", vec![b'u'; 3000]), 200)],
        vec![Call::new(Request::get("/status/500"), 500)],
        vec![Call::new(Request::get("/ka2/first"), 200), Call::new(Request::post("/status/503", "retry later"), 503)],
    ]
}

/// The mix for `python -m http.server`: HTTP/1.0 requests, one per connection — a file, a 404,
/// the directory listing, a HEAD, and a POST (501, not implemented).
pub fn http10_mix() -> Vec<Vec<Call>> {
    let http10 = |method: &str, target: &str| Request::new(method, target).version("HTTP/1.0");
    vec![
        vec![Call::new(http10("GET", "/hello.txt"), 200)],
        vec![Call::new(http10("GET", "/does-not-exist"), 404)],
        vec![Call::new(http10("GET", "/"), 200)],
        vec![Call::new(http10("HEAD", "/hello.txt"), 200)],
        vec![Call::new(http10("POST", "/hello.txt"), 501)],
    ]
}

/// Pseudo-random bytes (xorshift64*, fixed seed: every run sends the same data).
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.max(1);
    (0..len)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixes_have_unique_paths() {
        for mix in [keepalive_mix(), http10_mix()] {
            let calls: Vec<&Call> = mix.iter().flatten().collect();
            let mut paths: Vec<(&str, &str)> =
                calls.iter().map(|c| (c.request.method.as_str(), c.request.path())).collect();
            paths.sort_unstable();
            paths.dedup();
            assert_eq!(paths.len(), calls.len());
        }
    }

    #[test]
    fn random_bytes_are_deterministic_and_not_http() {
        let bytes = pseudo_random_bytes(4096, 7);
        assert_eq!(bytes, pseudo_random_bytes(4096, 7));
        assert!(!bytes[0].is_ascii_uppercase());
        assert!(bytes.iter().filter(|&&b| b == 0).count() < 64);
    }
}
