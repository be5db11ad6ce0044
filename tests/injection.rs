//! What `traceparent` injection may do to a request on the wire, and checking that it did only
//! that.
//!
//! The agent adds the context of a client span to the outgoing request as exactly one header
//! line, `traceparent: 00-<32 hex trace id>-<16 hex span id>-<2 hex flags>\r\n`, placed right after
//! the request line, and changes no other byte: not the other headers, not `Content-Length`, not
//! the body. [`compare`] takes what the client wrote and what the server received (echoed back by
//! `tests/python/echo_server.py`) and says whether the request arrived unchanged, arrived with
//! such a line inserted, or was damaged, in which case the message shows where.

use std::fmt;

/// A W3C trace context as carried in a `traceparent` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Traceparent {
    pub trace_id: String,
    pub span_id: String,
    pub flags: String,
}

impl Traceparent {
    /// Parses `00-<32 hex>-<16 hex>-<2 hex>` (lowercase, ids not all zero).
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.split('-');
        let (version, trace_id, span_id, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let valid = parts.next().is_none()
            && version == "00"
            && is_hex(trace_id, 32)
            && is_hex(span_id, 16)
            && is_hex(flags, 2)
            && trace_id.bytes().any(|b| b != b'0')
            && span_id.bytes().any(|b| b != b'0');
        valid.then(|| Self { trace_id: trace_id.to_owned(), span_id: span_id.to_owned(), flags: flags.to_owned() })
    }

    /// The header value.
    pub fn value(&self) -> String {
        format!("00-{}-{}-{}", self.trace_id, self.span_id, self.flags)
    }
}

impl fmt::Display for Traceparent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.value())
    }
}

/// What happened to a request between the client and the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Byte for byte what the client wrote.
    Unchanged,
    /// What the client wrote plus one `traceparent` line right after the request line.
    Injected(Traceparent),
}

/// Compares what a server received with what the client wrote; `Err` says how it was damaged.
pub fn compare(written: &[u8], received: &[u8]) -> Result<Delivery, String> {
    if written == received {
        return Ok(Delivery::Unchanged);
    }
    let Some(line_end) = find(written, b"\r\n") else {
        return Err(format!("the request as written has no complete request line: {}", escape(written)));
    };
    let after_request_line = line_end + 2;
    let (head, tail) = written.split_at(after_request_line);
    if !received.starts_with(head) {
        return Err(format!("the request line was changed: {}", difference(written, received)));
    }
    let inserted = &received[after_request_line..];
    let Some(inserted_end) = find(inserted, b"\r\n") else {
        return Err(format!("the server received a truncated request: {}", difference(written, received)));
    };
    let line = String::from_utf8_lossy(&inserted[..inserted_end]);
    let context = line.strip_prefix("traceparent: ").and_then(Traceparent::parse);
    let Some(context) = context else {
        return Err(format!(
            "the request differs, but not by a `traceparent: 00-<32hex>-<16hex>-<2hex>` line right after the \
             request line (the line there is {:?}): {}",
            line,
            difference(written, received)
        ));
    };
    let rest = &inserted[inserted_end + 2..];
    if rest != tail {
        return Err(format!(
            "a traceparent line ({context}) was inserted after the request line, but the rest of the request \
             changed too: {}",
            difference(tail, rest)
        ));
    }
    Ok(Delivery::Injected(context))
}

/// The values of every `traceparent` header in a request head (names compared
/// case-insensitively), in order.
pub fn traceparent_headers(request: &[u8]) -> Vec<String> {
    let head_end = find(request, b"\r\n\r\n").unwrap_or(request.len());
    String::from_utf8_lossy(&request[..head_end])
        .split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .filter(|(name, _)| name.trim().eq_ignore_ascii_case("traceparent"))
        .map(|(_, value)| value.trim().to_owned())
        .collect()
}

/// The first difference between `expected` and `actual`, with the bytes around it.
pub fn difference(expected: &[u8], actual: &[u8]) -> String {
    let at = expected.iter().zip(actual).position(|(a, b)| a != b).unwrap_or(expected.len().min(actual.len()));
    let window = |bytes: &[u8]| escape(&bytes[at.saturating_sub(24)..(at + 40).min(bytes.len())]);
    format!(
        "first difference at byte {at} (expected {} bytes, got {}): expected …{}…, got …{}…",
        expected.len(),
        actual.len(),
        window(expected),
        window(actual)
    )
}

/// Bytes as a quoted string with escapes (`\r\n` visible).
pub fn escape(bytes: &[u8]) -> String {
    format!("\"{}\"", bytes.escape_ascii())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

fn is_hex(text: &str, digits: usize) -> bool {
    text.len() == digits && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Decodes lowercase or uppercase hex (as `raw_client.py` prints bodies).
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// Encodes bytes as lowercase hex.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUEST: &[u8] = b"POST /p?q=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc";
    const LINE: &str = "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n";

    fn with_line_at(at: usize, line: &str) -> Vec<u8> {
        let mut bytes = REQUEST[..at].to_vec();
        bytes.extend_from_slice(line.as_bytes());
        bytes.extend_from_slice(&REQUEST[at..]);
        bytes
    }

    #[test]
    fn unchanged_and_injected_requests() {
        assert_eq!(compare(REQUEST, REQUEST), Ok(Delivery::Unchanged));
        let injected = with_line_at(22, LINE);
        let Ok(Delivery::Injected(context)) = compare(REQUEST, &injected) else { panic!() };
        assert_eq!(context.trace_id, "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(context.span_id, "b7ad6b7169203331");
        assert_eq!(traceparent_headers(&injected), vec![context.value()]);
    }

    #[test]
    fn misplaced_malformed_or_extra_changes_are_damage() {
        assert!(compare(REQUEST, &with_line_at(32, LINE)).is_err(), "after Host");
        assert!(compare(REQUEST, &with_line_at(22, &LINE.replace("-01\r", "-1\r"))).is_err(), "bad flags");
        assert!(compare(REQUEST, &with_line_at(22, &LINE.to_uppercase())).is_err(), "not lowercase");
        let mut body_changed = with_line_at(22, LINE);
        *body_changed.last_mut().unwrap() = b'x';
        let error = compare(REQUEST, &body_changed).unwrap_err();
        assert!(error.contains("the rest of the request changed too"), "{error}");
        assert!(compare(REQUEST, &REQUEST[..REQUEST.len() - 1]).is_err(), "truncated");
        let zero = "traceparent: 00-00000000000000000000000000000000-b7ad6b7169203331-01\r\n";
        assert!(compare(REQUEST, &with_line_at(22, zero)).is_err(), "zero trace id");
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(from_hex(&to_hex(REQUEST)).unwrap(), REQUEST);
        assert_eq!(from_hex("0A"), Some(vec![10]));
        assert_eq!(from_hex("0"), None);
    }
}
