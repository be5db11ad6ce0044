//! HTTP/1.x message heads, parsed from the bytes a syscall moved.
//!
//! The parser is deliberately partial: it reads the start line and only the header fields the
//! agent uses (framing, identity, propagation). Credentials (`Authorization`, `Cookie`,
//! `Set-Cookie`) are never copied out of the buffer, and bodies are never looked at; only their
//! length matters, for framing. Input is untrusted: every limit is explicit and every failure is
//! a [`ParseError`], never a panic.

use std::fmt;

/// A request or response head larger than this is not HTTP the agent follows.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// More header lines than this is treated as malformed.
const MAX_HEADER_LINES: usize = 128;
const MAX_METHOD_LEN: usize = 16;

/// Methods recognised at the start of a request. A closed list keeps binary protocols and
/// random bytes from being mistaken for HTTP.
const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "TRACE", "CONNECT"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// The head is not complete yet: more bytes may make it parse.
    Incomplete,
    /// These bytes are not an HTTP/1.x head.
    Invalid(&'static str),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Incomplete => f.write_str("incomplete HTTP head"),
            Self::Invalid(why) => write!(f, "not an HTTP/1.x head: {why}"),
        }
    }
}

impl std::error::Error for ParseError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

impl Version {
    /// The value of OTel's `network.protocol.version`.
    pub fn as_semconv(&self) -> &'static str {
        match self {
            Self::Http10 => "1.0",
            Self::Http11 => "1.1",
        }
    }

    fn parse(text: &[u8]) -> Result<Self, ParseError> {
        match text {
            b"HTTP/1.1" => Ok(Self::Http11),
            b"HTTP/1.0" => Ok(Self::Http10),
            _ if b"HTTP/1.1".starts_with(text) => Err(ParseError::Incomplete),
            _ => Err(ParseError::Invalid("unsupported protocol version")),
        }
    }
}

/// How the body after a head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body follows.
    Empty,
    /// Exactly this many bytes follow.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// The body runs until the connection closes (responses only).
    UntilClose,
}

/// The header fields the agent keeps. Everything else is skipped unread.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields {
    pub content_length: Option<u64>,
    pub chunked: bool,
    pub host: Option<String>,
    pub user_agent: Option<String>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    /// Scouter SDK propagation headers.
    pub scouter_trace_id: Option<String>,
    pub scouter_span_id: Option<String>,
    pub scouter_is_sampled: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// The request target as sent (origin form `/path?query`, or absolute form).
    pub target: String,
    pub version: Version,
    pub fields: Fields,
    /// Bytes of the head, including the blank line.
    pub head_len: usize,
}

impl RequestHead {
    /// The body framing (RFC 9112 §6.3 for requests: no length means no body).
    pub fn body(&self) -> BodyFraming {
        if self.fields.chunked {
            BodyFraming::Chunked
        } else {
            match self.fields.content_length {
                Some(0) | None => BodyFraming::Empty,
                Some(n) => BodyFraming::Length(n),
            }
        }
    }

    /// The path of the target, without query or fragment.
    pub fn path(&self) -> &str {
        let target = self.target.as_str();
        let after_authority = match target.find("://") {
            Some(scheme_end) => {
                let rest = &target[scheme_end + 3..];
                rest.find('/').map_or("/", |i| &rest[i..])
            }
            None => target,
        };
        let end = after_authority.find(['?', '#']).unwrap_or(after_authority.len());
        &after_authority[..end]
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub version: Version,
    pub status: u16,
    pub fields: Fields,
    pub head_len: usize,
}

impl ResponseHead {
    /// 1xx responses precede the final response of the same exchange.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status)
    }

    /// The body framing (RFC 9112 §6.3), given the request method it answers.
    pub fn body(&self, request_method: &str) -> BodyFraming {
        if request_method == "HEAD" || self.status == 204 || self.status == 304 || self.is_interim() {
            return BodyFraming::Empty;
        }
        if self.fields.chunked {
            return BodyFraming::Chunked;
        }
        match self.fields.content_length {
            Some(0) => BodyFraming::Empty,
            Some(n) => BodyFraming::Length(n),
            None => BodyFraming::UntilClose,
        }
    }
}

/// Whether `bytes` could be the start of a request (a known method and a space). Cheap; used to
/// decide whether a read begins a new request.
pub fn looks_like_request(bytes: &[u8]) -> bool {
    METHODS.iter().any(|m| {
        let m = m.as_bytes();
        bytes.len() > m.len() && bytes.starts_with(m) && bytes[m.len()] == b' '
    })
}

/// Whether `bytes` could be the start of a response.
pub fn looks_like_response(bytes: &[u8]) -> bool {
    bytes.starts_with(b"HTTP/1.") && bytes.len() > 9
}

pub fn parse_request(bytes: &[u8]) -> Result<RequestHead, ParseError> {
    let (start_line, header_block, head_len) = split_head(bytes)?;
    let mut parts = start_line.splitn(3, |&b| b == b' ');
    let method = parts.next().ok_or(ParseError::Invalid("empty request line"))?;
    let target = parts.next().ok_or(ParseError::Invalid("request line has no target"))?;
    let version = parts.next().ok_or(ParseError::Invalid("request line has no version"))?;
    let method = parse_method(method)?;
    let target = parse_target(target)?;
    let version = Version::parse(version)?;
    let fields = parse_fields(header_block)?;
    reject_ambiguous_framing(&fields)?;
    Ok(RequestHead { method, target, version, fields, head_len })
}

pub fn parse_response(bytes: &[u8]) -> Result<ResponseHead, ParseError> {
    let (start_line, header_block, head_len) = split_head(bytes)?;
    let mut parts = start_line.splitn(3, |&b| b == b' ');
    let version = Version::parse(parts.next().unwrap_or_default())?;
    let status = parts.next().ok_or(ParseError::Invalid("status line has no status code"))?;
    let status = parse_status(status)?;
    let fields = parse_fields(header_block)?;
    reject_ambiguous_framing(&fields)?;
    Ok(ResponseHead { version, status, fields, head_len })
}

/// Splits a complete head into its start line and header block; `Incomplete` until the blank
/// line arrives (within [`MAX_HEAD_BYTES`]).
fn split_head(bytes: &[u8]) -> Result<(&[u8], &[u8], usize), ParseError> {
    let window = &bytes[..bytes.len().min(MAX_HEAD_BYTES)];
    let Some(end) = find(window, b"\r\n\r\n") else {
        if bytes.len() >= MAX_HEAD_BYTES {
            return Err(ParseError::Invalid("head exceeds the size limit"));
        }
        // A partial start line must already look like HTTP, or more bytes will not help.
        validate_partial_start(window)?;
        return Err(ParseError::Incomplete);
    };
    let head = &window[..end];
    let (start_line, headers) = match find(head, b"\r\n") {
        Some(i) => (&head[..i], &head[i + 2..]),
        None => (head, &head[head.len()..]),
    };
    Ok((start_line, headers, end + 4))
}

fn validate_partial_start(bytes: &[u8]) -> Result<(), ParseError> {
    let line_end = find(bytes, b"\r\n").unwrap_or(bytes.len());
    // A read may end between the start line's CR and LF.
    let line = bytes[..line_end].strip_suffix(b"\r").unwrap_or(&bytes[..line_end]);
    if line.iter().any(|&b| b == 0 || (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(ParseError::Invalid("control characters in the start line"));
    }
    let starts_like_http = looks_like_request(line)
        || line.starts_with(b"HTTP/")
        || b"HTTP/".starts_with(line)
        || METHODS.iter().any(|m| m.as_bytes().starts_with(line));
    if starts_like_http {
        Ok(())
    } else {
        Err(ParseError::Invalid("does not start like HTTP/1.x"))
    }
}

fn parse_method(method: &[u8]) -> Result<String, ParseError> {
    if method.is_empty() || method.len() > MAX_METHOD_LEN {
        return Err(ParseError::Invalid("bad method length"));
    }
    if !method.iter().all(|b| b.is_ascii_uppercase()) {
        return Err(ParseError::Invalid("method is not an uppercase token"));
    }
    Ok(String::from_utf8_lossy(method).into_owned())
}

fn parse_target(target: &[u8]) -> Result<String, ParseError> {
    if target.is_empty() {
        return Err(ParseError::Invalid("empty request target"));
    }
    if target.iter().any(|&b| b <= b' ' || b == 0x7f) {
        return Err(ParseError::Invalid("request target has whitespace or control characters"));
    }
    Ok(String::from_utf8_lossy(target).into_owned())
}

fn parse_status(status: &[u8]) -> Result<u16, ParseError> {
    if status.len() != 3 || !status.iter().all(u8::is_ascii_digit) {
        return Err(ParseError::Invalid("status code is not three digits"));
    }
    let code = status.iter().fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
    if (100..=599).contains(&code) {
        Ok(code)
    } else {
        Err(ParseError::Invalid("status code out of range"))
    }
}

fn parse_fields(block: &[u8]) -> Result<Fields, ParseError> {
    let mut fields = Fields::default();
    if block.is_empty() {
        return Ok(fields);
    }
    for (index, line) in block.split(|&b| b == b'\n').enumerate() {
        if index >= MAX_HEADER_LINES {
            return Err(ParseError::Invalid("too many header lines"));
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&b| b == b':').ok_or(ParseError::Invalid("header line without colon"))?;
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        if name.is_empty() || name.iter().any(|b| !is_token_byte(*b)) {
            return Err(ParseError::Invalid("malformed header name"));
        }
        apply_field(&mut fields, name, value)?;
    }
    Ok(fields)
}

/// Keeps the fields the agent needs; everything else, credentials included, is not copied.
fn apply_field(fields: &mut Fields, name: &[u8], value: &[u8]) -> Result<(), ParseError> {
    let text = || String::from_utf8_lossy(value).into_owned();
    match name.to_ascii_lowercase().as_slice() {
        b"content-length" => {
            let length = parse_content_length(value)?;
            if fields.content_length.is_some_and(|seen| seen != length) {
                return Err(ParseError::Invalid("conflicting Content-Length values"));
            }
            fields.content_length = Some(length);
        }
        b"transfer-encoding" => {
            fields.chunked =
                value.rsplit(|&b| b == b',').next().is_some_and(|last| trim(last).eq_ignore_ascii_case(b"chunked"));
        }
        b"host" => fields.host = Some(text()),
        b"user-agent" => fields.user_agent = Some(text()),
        b"traceparent" => fields.traceparent = Some(text()),
        b"tracestate" => fields.tracestate = Some(text()),
        b"trace_id" => fields.scouter_trace_id = Some(text()),
        b"span_id" => fields.scouter_span_id = Some(text()),
        b"is_sampled" => fields.scouter_is_sampled = Some(text()),
        _ => {}
    }
    Ok(())
}

fn parse_content_length(value: &[u8]) -> Result<u64, ParseError> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return Err(ParseError::Invalid("Content-Length is not a decimal number"));
    }
    Ok(value.iter().fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0')))
}

/// RFC 9112 §6.1: a message with both is a smuggling risk; the agent does not guess its framing.
fn reject_ambiguous_framing(fields: &Fields) -> Result<(), ParseError> {
    if fields.chunked && fields.content_length.is_some() {
        Err(ParseError::Invalid("both Transfer-Encoding and Content-Length"))
    } else {
        Ok(())
    }
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |i| i + 1);
    &bytes[start..end]
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GET: &[u8] = b"GET /items/42?token=secret HTTP/1.1\r\nHost: shop:8080\r\nUser-Agent: curl/8\r\nAuthorization: Bearer xyz\r\nCookie: a=b\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n";

    #[test]
    fn parses_a_request_head_and_keeps_only_needed_fields() {
        let head = parse_request(GET).unwrap();
        assert_eq!(head.method, "GET");
        assert_eq!(head.path(), "/items/42");
        assert_eq!(head.version, Version::Http11);
        assert_eq!(head.head_len, GET.len());
        assert_eq!(head.fields.host.as_deref(), Some("shop:8080"));
        assert_eq!(head.fields.user_agent.as_deref(), Some("curl/8"));
        assert!(head.fields.traceparent.is_some());
        assert_eq!(head.body(), BodyFraming::Empty);
        let debug = format!("{head:?}");
        assert!(!debug.contains("Bearer"), "credentials must not be copied: {debug}");
        assert!(!debug.contains("a=b"), "cookies must not be copied: {debug}");
    }

    #[test]
    fn request_body_framing() {
        let post = b"POST /orders HTTP/1.1\r\nContent-Length: 12\r\n\r\n{\"id\": 1234}";
        let head = parse_request(post).unwrap();
        assert_eq!(head.body(), BodyFraming::Length(12));
        assert_eq!(&post[head.head_len..], b"{\"id\": 1234}");
        let chunked = b"POST /up HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        assert_eq!(parse_request(chunked).unwrap().body(), BodyFraming::Chunked);
    }

    #[test]
    fn parses_response_heads_and_framing() {
        let ok = b"HTTP/1.0 200 OK\r\nServer: SimpleHTTP/0.6\r\nContent-Length: 5\r\n\r\nhello";
        let head = parse_response(ok).unwrap();
        assert_eq!((head.version, head.status), (Version::Http10, 200));
        assert_eq!(head.body("GET"), BodyFraming::Length(5));
        assert_eq!(head.body("HEAD"), BodyFraming::Empty);
        let no_length = parse_response(b"HTTP/1.0 200 OK\r\n\r\n").unwrap();
        assert_eq!(no_length.body("GET"), BodyFraming::UntilClose);
        let not_modified = parse_response(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n").unwrap();
        assert_eq!(not_modified.body("GET"), BodyFraming::Empty);
        let interim = parse_response(b"HTTP/1.1 100 Continue\r\n\r\n").unwrap();
        assert!(interim.is_interim());
        let reason_less = parse_response(b"HTTP/1.1 500\r\n\r\n").unwrap();
        assert_eq!(reason_less.status, 500);
    }

    #[test]
    fn truncated_heads_are_incomplete_not_errors() {
        for cut in [1, 3, 4, 10, GET.len() - 1, GET.len() - 2] {
            assert_eq!(parse_request(&GET[..cut]), Err(ParseError::Incomplete), "cut at {cut}");
        }
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Le"), Err(ParseError::Incomplete));
        assert_eq!(parse_response(b"HTT"), Err(ParseError::Incomplete));
    }

    #[test]
    fn malformed_input_is_rejected() {
        let cases: &[&[u8]] = &[
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"get / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET  HTTP/1.1\r\n\r\n",
            b"GET /a b HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nNoColonHere\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /\x00 HTTP/1.1\r\n\r\n",
        ];
        for case in cases {
            assert!(matches!(parse_request(case), Err(ParseError::Invalid(_))), "{case:?}");
        }
        assert!(matches!(parse_response(b"HTTP/1.1 20 OK\r\n\r\n"), Err(ParseError::Invalid(_))));
        assert!(matches!(parse_response(b"HTTP/1.1 999 X\r\n\r\n"), Err(ParseError::Invalid(_))));
        assert!(matches!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n"), Err(ParseError::Invalid(_))));
    }

    #[test]
    fn oversized_heads_are_rejected() {
        let mut big = b"GET / HTTP/1.1\r\n".to_vec();
        while big.len() <= MAX_HEAD_BYTES {
            big.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert!(matches!(parse_request(&big), Err(ParseError::Invalid(_))));
    }

    #[test]
    fn sniffing() {
        assert!(looks_like_request(b"GET / HTTP/1.1"));
        assert!(looks_like_request(b"DELETE /x"));
        assert!(!looks_like_request(b"GET"));
        assert!(!looks_like_request(b"GETX /"));
        assert!(!looks_like_request(&[0x16, 0x03, 0x01]));
        assert!(looks_like_response(b"HTTP/1.1 200 OK"));
        assert!(!looks_like_response(b"HTTP/2"));
    }

    #[test]
    fn absolute_form_targets_give_their_path() {
        let head = parse_request(b"GET http://example.com/a/b?c=d HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(head.path(), "/a/b");
        let bare = parse_request(b"GET http://example.com HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(bare.path(), "/");
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut state = 0x1234_5678_u32;
        for len in 0..600 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    state as u8
                })
                .collect();
            let _ = parse_request(&bytes);
            let _ = parse_response(&bytes);
        }
    }
}
