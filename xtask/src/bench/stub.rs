//! Small HTTP/1.1 servers the bench runs on its own threads, outside any Python process, so
//! they are identical in every mode and neither the agent nor OpenTelemetry sees them:
//!
//! - the downstream service, answering every request at once with `200 ok`;
//! - the OTLP/HTTP receiver, answering `200` with an empty (valid) ExportTraceServiceResponse
//!   to every export and discarding it after counting its spans.
//!
//! One thread per connection, keep-alive, Content-Length or chunked request bodies.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};

use super::otlp;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Downstream,
    OtlpReceiver,
}

/// What a server received so far.
#[derive(Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub body_bytes: AtomicU64,
    /// OTLP receiver: spans in the export requests it could decode.
    pub spans: AtomicU64,
    /// OTLP receiver: export requests it could not decode (e.g. compressed).
    pub undecoded: AtomicU64,
}

/// A snapshot of [`Counters`], to subtract an earlier one from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub requests: u64,
    pub body_bytes: u64,
    pub spans: u64,
    pub undecoded: u64,
}

impl Totals {
    pub fn since(self, earlier: Totals) -> Totals {
        Totals {
            requests: self.requests - earlier.requests,
            body_bytes: self.body_bytes - earlier.body_bytes,
            spans: self.spans - earlier.spans,
            undecoded: self.undecoded - earlier.undecoded,
        }
    }
}

pub struct StubServer {
    addr: SocketAddr,
    counters: Arc<Counters>,
}

impl StubServer {
    /// Listens on a free port of 127.0.0.1 and serves from background threads until exit.
    pub fn start(role: Role) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("cannot listen on 127.0.0.1")?;
        let addr = listener.local_addr().context("cannot read the listening address")?;
        let counters = Arc::new(Counters::default());
        let shared = Arc::clone(&counters);
        std::thread::Builder::new()
            .name(format!("{role:?}"))
            .spawn(move || accept_forever(&listener, role, &shared))
            .context("cannot start a server thread")?;
        Ok(Self { addr, counters })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn totals(&self) -> Totals {
        let c = &self.counters;
        Totals {
            requests: c.requests.load(Ordering::Relaxed),
            body_bytes: c.body_bytes.load(Ordering::Relaxed),
            spans: c.spans.load(Ordering::Relaxed),
            undecoded: c.undecoded.load(Ordering::Relaxed),
        }
    }
}

fn accept_forever(listener: &TcpListener, role: Role, counters: &Arc<Counters>) {
    for stream in listener.incoming().flatten() {
        let counters = Arc::clone(counters);
        // A connection that cannot get a thread is dropped; the client sees the error.
        let _ = std::thread::Builder::new().spawn(move || {
            let _ = serve_connection(stream, role, &counters);
        });
    }
}

fn serve_connection(stream: TcpStream, role: Role, counters: &Counters) -> Result<()> {
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    while let Some(request) = read_request(&mut reader)? {
        counters.requests.fetch_add(1, Ordering::Relaxed);
        counters.body_bytes.fetch_add(request.body.len() as u64, Ordering::Relaxed);
        writer.write_all(respond(role, &request, counters))?;
        if request.close {
            break;
        }
    }
    Ok(())
}

const DOWNSTREAM_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n";
const OTLP_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n";

fn respond(role: Role, request: &Request, counters: &Counters) -> &'static [u8] {
    match role {
        Role::Downstream => DOWNSTREAM_RESPONSE,
        Role::OtlpReceiver => {
            match otlp::count_spans(&request.body).filter(|_| !request.encoded) {
                Some(spans) => counters.spans.fetch_add(spans, Ordering::Relaxed),
                None => counters.undecoded.fetch_add(1, Ordering::Relaxed),
            };
            OTLP_RESPONSE
        }
    }
}

struct Request {
    body: Vec<u8>,
    /// The client asked to close the connection after this request.
    close: bool,
    /// The body has a Content-Encoding (e.g. gzip), so it is not plain protobuf.
    encoded: bool,
}

/// Reads one request; `None` when the client closed the connection between requests.
fn read_request(reader: &mut BufReader<TcpStream>) -> Result<Option<Request>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let close_by_default = line.trim_end().ends_with("HTTP/1.0");
    let mut length = 0usize;
    let (mut chunked, mut encoded, mut close) = (false, false, close_by_default);
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            bail!("connection closed inside a request head");
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else { continue };
        let value = value.trim().to_ascii_lowercase();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = value.parse().context("bad Content-Length")?,
            "transfer-encoding" => chunked = value.contains("chunked"),
            "content-encoding" => encoded = value != "identity",
            "connection" => close = value.contains("close") || (close_by_default && !value.contains("keep-alive")),
            _ => {}
        }
    }
    let body = if chunked { read_chunked(reader)? } else { read_exact(reader, length)? };
    Ok(Some(Request { body, close, encoded }))
}

fn read_exact(reader: &mut BufReader<TcpStream>, length: usize) -> Result<Vec<u8>> {
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(body)
}

fn read_chunked(reader: &mut BufReader<TcpStream>) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let size = line.trim().split(';').next().unwrap_or_default();
        let size = usize::from_str_radix(size, 16).with_context(|| format!("bad chunk size `{size}`"))?;
        body.extend(read_exact(reader, size)?);
        line.clear();
        reader.read_line(&mut line)?; // the CRLF after the chunk (or after the trailers)
        if size == 0 {
            return Ok(body);
        }
    }
}

/// One `GET url_path` on a fresh connection with `Connection: close`; the status code.
pub fn get_status(addr: &str, path: &str, timeout: Duration) -> Result<u16> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    BufReader::new(stream).read_line(&mut response).with_context(|| format!("no response from {addr}"))?;
    let status = response.split_whitespace().nth(1).with_context(|| format!("bad status line `{response}`"))?;
    status.parse().with_context(|| format!("bad status line `{response}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_downstream_answers_keep_alive_requests() {
        let server = StubServer::start(Role::Downstream).unwrap();
        let addr = server.addr.to_string();
        let mut stream = TcpStream::connect(&addr).unwrap();
        stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nPOST /a HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi").unwrap();
        let mut reader = BufReader::new(stream);
        for _ in 0..2 {
            let mut head = String::new();
            while !head.ends_with("\r\n\r\n") {
                reader.read_line(&mut head).unwrap();
            }
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            let mut body = [0; 3];
            reader.read_exact(&mut body).unwrap();
        }
        assert_eq!(get_status(&addr, "/", Duration::from_secs(5)).unwrap(), 200);
        let totals = server.totals();
        assert_eq!((totals.requests, totals.body_bytes), (3, 2));
    }
}
