//! A minimal HTTP/1.x client over `std::net::TcpStream`.
//!
//! Real client libraries hide connection reuse and retries; the tests need the opposite: exact
//! control over which requests share a connection and certainty about how many requests were
//! sent. [`HttpConnection`] writes requests verbatim and reads each response completely
//! (Content-Length, chunked, or until close; no body for HEAD, 1xx, 204 and 304) so the next
//! request on the same connection starts cleanly.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Read/write timeout on test connections: generous, but bounded.
pub const IO_TIMEOUT: Duration = Duration::from_secs(15);

/// An HTTP request, serialized exactly as built.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The request target: path and optional query.
    pub target: String,
    /// "HTTP/1.1" or "HTTP/1.0".
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn new(method: &str, target: &str) -> Self {
        Self {
            method: method.to_owned(),
            target: target.to_owned(),
            version: "HTTP/1.1".to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn get(target: &str) -> Self {
        Self::new("GET", target)
    }

    /// A POST with a body (Content-Length is added when serializing).
    pub fn post(target: &str, body: impl Into<Vec<u8>>) -> Self {
        Self { body: body.into(), ..Self::new("POST", target) }
    }

    pub fn version(mut self, version: &str) -> Self {
        self.version = version.to_owned();
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The path part of the target (what `url.path` should hold).
    pub fn path(&self) -> &str {
        self.target.split(['?', '#']).next().unwrap_or_default()
    }

    /// Whether the request line says HTTP/1.0.
    pub fn is_http10(&self) -> bool {
        self.version == "HTTP/1.0"
    }

    /// The bytes on the wire. Adds `Host`, and `Content-Length` for bodies and for POST/PUT.
    pub fn to_bytes(&self, port: u16) -> Vec<u8> {
        let mut head = format!("{} {} {}\r\nHost: 127.0.0.1:{port}\r\n", self.method, self.target, self.version);
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if !self.body.is_empty() || matches!(self.method.as_str(), "POST" | "PUT") {
            head.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

/// A complete HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    /// "HTTP/1.1" or "HTTP/1.0", from the status line.
    pub version: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// One client connection to 127.0.0.1:port.
pub struct HttpConnection {
    port: u16,
    reader: BufReader<TcpStream>,
}

impl HttpConnection {
    pub fn connect(port: u16) -> Result<Self> {
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let stream =
            TcpStream::connect_timeout(&address, IO_TIMEOUT).with_context(|| format!("connecting to {address}"))?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Self { port, reader: BufReader::new(stream) })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Sends `request` and reads its whole response.
    pub fn send(&mut self, request: &Request) -> Result<Response> {
        self.write_raw(&request.to_bytes(self.port))
            .with_context(|| format!("sending {} {}", request.method, request.target))?;
        read_response(&mut self.reader, &request.method)
            .with_context(|| format!("reading the response to {} {}", request.method, request.target))
    }

    /// Sends `request`'s head, waits `pause`, then its body, and reads the whole response: the
    /// server reads the body in a read of its own, from the handler.
    pub fn send_body_separately(&mut self, request: &Request, pause: Duration) -> Result<Response> {
        let bytes = request.to_bytes(self.port);
        let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n").context("a request without a head end")? + 4;
        let what = || format!("sending {} {}", request.method, request.target);
        self.write_raw(&bytes[..head_end]).with_context(what)?;
        std::thread::sleep(pause);
        self.write_raw(&bytes[head_end..]).with_context(what)?;
        read_response(&mut self.reader, &request.method)
            .with_context(|| format!("reading the response to {} {}", request.method, request.target))
    }

    /// Writes bytes as they are (for malformed input).
    pub fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        let stream = self.reader.get_mut();
        stream.write_all(bytes)?;
        stream.flush()
    }

    /// Closes the sending half: the server sees end of file.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        self.reader.get_ref().shutdown(Shutdown::Write)
    }

    /// Reads and discards whatever the server sends until it closes the connection (or an error
    /// or the timeout ends it); returns how many bytes arrived.
    pub fn drain(&mut self, timeout: Duration) -> usize {
        let _ = self.reader.get_ref().set_read_timeout(Some(timeout));
        let mut total = 0;
        let mut buffer = [0u8; 4096];
        while let Ok(n) = self.reader.read(&mut buffer) {
            if n == 0 {
                break;
            }
            total += n;
        }
        total
    }

    /// Whether the server has closed the connection: a read returns end of file (or a reset)
    /// within `timeout`, with no unexpected bytes.
    pub fn closed_by_server(&mut self, timeout: Duration) -> Result<bool> {
        self.reader.get_ref().set_read_timeout(Some(timeout))?;
        let mut byte = [0u8; 1];
        let result = match self.reader.read(&mut byte) {
            Ok(0) => Ok(true),
            Ok(_) => bail!("the server sent bytes after a complete response"),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Ok(true),
            Err(e) => Err(e.into()),
        };
        self.reader.get_ref().set_read_timeout(Some(IO_TIMEOUT))?;
        result
    }
}

/// Reads one response from `reader`; `method` is the request's (HEAD responses have no body).
pub fn read_response(reader: &mut impl BufRead, method: &str) -> Result<Response> {
    let status_line = read_line(reader)?.context("the connection closed before a status line")?;
    let (version, status) = parse_status_line(&status_line)?;
    let headers = read_headers(reader)?;
    let mut response = Response { version, status, headers, body: Vec::new() };
    response.body = read_body(reader, method, &response)?;
    Ok(response)
}

fn parse_status_line(line: &str) -> Result<(String, u16)> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        bail!("not an HTTP/1.x status line: {line:?}");
    }
    let status = code.parse().with_context(|| format!("bad status code in {line:?}"))?;
    Ok((version.to_owned(), status))
}

fn read_headers(reader: &mut impl BufRead) -> Result<Vec<(String, String)>> {
    let mut headers = Vec::new();
    loop {
        let line = read_line(reader)?.context("the connection closed inside the response head")?;
        if line.is_empty() {
            return Ok(headers);
        }
        let (name, value) = line.split_once(':').with_context(|| format!("bad header line {line:?}"))?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
}

fn read_body(reader: &mut impl BufRead, method: &str, response: &Response) -> Result<Vec<u8>> {
    let bodiless = method == "HEAD" || response.status < 200 || matches!(response.status, 204 | 304);
    if bodiless {
        return Ok(Vec::new());
    }
    if response.header("Transfer-Encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        return read_chunked(reader);
    }
    if let Some(length) = response.header("Content-Length") {
        let length: usize = length.parse().with_context(|| format!("bad Content-Length {length:?}"))?;
        let mut body = vec![0; length];
        reader.read_exact(&mut body).context("the connection closed inside the body")?;
        return Ok(body);
    }
    let mut body = Vec::new();
    reader.read_to_end(&mut body).context("reading a body delimited by close")?;
    Ok(body)
}

fn read_chunked(reader: &mut impl BufRead) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = read_line(reader)?.context("the connection closed inside a chunked body")?;
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).with_context(|| format!("bad chunk size {line:?}"))?;
        if size == 0 {
            read_headers(reader)?; // trailers
            return Ok(body);
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        let crlf = read_line(reader)?;
        if crlf.as_deref() != Some("") {
            bail!("chunk not followed by CRLF");
        }
    }
}

/// One line without its CRLF; None at end of file.
fn read_line(reader: &mut impl BufRead) -> Result<Option<String>> {
    let mut raw = Vec::new();
    if reader.read_until(b'\n', &mut raw)? == 0 {
        return Ok(None);
    }
    let text = String::from_utf8_lossy(&raw);
    Ok(Some(text.trim_end_matches(['\r', '\n']).to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn parse(raw: &str, method: &str) -> (Response, String) {
        let mut reader = Cursor::new(raw.as_bytes().to_vec());
        let response = read_response(&mut reader, method).unwrap();
        let mut rest = String::new();
        reader.read_to_string(&mut rest).unwrap();
        (response, rest)
    }

    #[test]
    fn content_length_framing_leaves_the_next_response_unread() {
        let (response, rest) = parse("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 404 x\r\n", "GET");
        assert_eq!((response.status, response.body.as_slice()), (200, &b"hello"[..]));
        assert_eq!(rest, "HTTP/1.1 404 x\r\n");
    }

    #[test]
    fn chunked_bodies_are_decoded() {
        let (response, rest) = parse(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\nNEXT",
            "GET",
        );
        assert_eq!(response.body, b"abcde");
        assert_eq!(rest, "NEXT");
    }

    #[test]
    fn head_responses_and_close_delimited_bodies() {
        let (head, rest) = parse("HTTP/1.0 200 OK\r\nContent-Length: 9\r\n\r\n", "HEAD");
        assert!(head.body.is_empty() && rest.is_empty());
        let (closed, _) = parse("HTTP/1.0 200 OK\r\n\r\nuntil the end", "GET");
        assert_eq!((closed.version.as_str(), closed.body.as_slice()), ("HTTP/1.0", &b"until the end"[..]));
    }

    #[test]
    fn requests_serialize_with_host_and_length() {
        let bytes = Request::post("/p?q=1", "abc").header("X-A", "b").to_bytes(8000);
        let text = String::from_utf8(bytes).unwrap();
        assert_eq!(text, "POST /p?q=1 HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nX-A: b\r\nContent-Length: 3\r\n\r\nabc");
        assert_eq!(Request::get("/a/b?c#d").path(), "/a/b");
    }
}
