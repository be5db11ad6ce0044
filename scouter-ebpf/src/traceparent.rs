//! W3C `traceparent` (Trace Context level 1), read and written by both sides: the kernel
//! adopts incoming values and formats the line the sk_msg program inserts; the agent reads the
//! same values when the kernel could not (heads beyond [`HEAD_SCAN`](crate::HEAD_SCAN)).
//!
//! Written for the verifier as much as for people: fixed-size arrays, no slices of unknown
//! length in the kernel-facing functions, no allocation.

/// `00-<32 hex>-<16 hex>-<2 hex>`.
pub const VALUE_LEN: usize = 55;
/// The header name, lowercase (header names compare case-insensitively).
pub const NAME: &[u8; 11] = b"traceparent";
/// The line the agent inserts after a request line: `traceparent: <value>\r\n`.
pub const LINE_LEN: usize = NAME.len() + 2 + VALUE_LEN + 2;

/// The fields of a valid value. Aligned like [`SpanContext`](crate::SpanContext), for the same
/// reason: the kernel copies its ids a word at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(8))]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
}

impl TraceParent {
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

/// Parses a value whose first [`VALUE_LEN`] bytes are `value`; `after` is the byte that
/// follows them (0 at the end of the value). Version `00` must end there; later versions may
/// continue with `-…` and are read by their first four fields, as the spec asks.
#[inline(always)]
pub fn parse(value: &[u8; VALUE_LEN], after: u8) -> Option<TraceParent> {
    let mut parsed = TraceParent { trace_id: [0; 16], span_id: [0; 8], flags: 0 };
    parse_into(value, after, &mut parsed).then_some(parsed)
}

/// [`parse`], written into `out` (whose content is unspecified when it returns false): the
/// kernel keeps the result in a map value rather than on its small stack.
#[inline(always)]
pub fn parse_into(value: &[u8; VALUE_LEN], after: u8, out: &mut TraceParent) -> bool {
    let Some(version) = hex_byte(value[0], value[1]) else { return false };
    if version == 0xff || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return false;
    }
    let ends = matches!(after, 0 | b'\r' | b'\n' | b' ' | b'\t');
    if !(ends || (version != 0 && after == b'-')) {
        return false;
    }
    let mut i = 0;
    while i < 16 {
        let Some(byte) = hex_byte(value[3 + 2 * i], value[4 + 2 * i]) else { return false };
        out.trace_id[i] = byte;
        i += 1;
    }
    let mut i = 0;
    while i < 8 {
        let Some(byte) = hex_byte(value[36 + 2 * i], value[37 + 2 * i]) else { return false };
        out.span_id[i] = byte;
        i += 1;
    }
    let Some(flags) = hex_byte(value[53], value[54]) else { return false };
    out.flags = flags;
    !is_zero(&out.trace_id) && !is_zero(&out.span_id)
}

/// [`parse`] for a value of any length (surrounding whitespace already removed).
pub fn parse_slice(value: &[u8]) -> Option<TraceParent> {
    let head: &[u8; VALUE_LEN] = value.get(..VALUE_LEN)?.try_into().ok()?;
    let after = value.get(VALUE_LEN).copied().unwrap_or(0);
    if after != 0 && after != b'-' {
        return None;
    }
    parse(head, after)
}

/// Writes `traceparent: 00-<trace>-<span>-<flags>\r\n`. Constant offsets only (the kernel
/// calls it).
#[inline(always)]
pub fn write_line(trace_id: &[u8; 16], span_id: &[u8; 8], flags: u8, line: &mut [u8; LINE_LEN]) {
    const PREFIX: &[u8; 16] = b"traceparent: 00-";
    const TRACE_AT: usize = PREFIX.len();
    const SPAN_AT: usize = TRACE_AT + 33;
    const FLAGS_AT: usize = SPAN_AT + 17;
    let mut k = 0;
    while k < PREFIX.len() {
        line[k] = PREFIX[k];
        k += 1;
    }
    put_hex_at::<TRACE_AT, 16>(trace_id, line);
    line[SPAN_AT - 1] = b'-';
    put_hex_at::<SPAN_AT, 8>(span_id, line);
    line[FLAGS_AT - 1] = b'-';
    put_hex(flags, line, FLAGS_AT);
    line[FLAGS_AT + 2] = b'\r';
    line[FLAGS_AT + 3] = b'\n';
}

/// Parses `N` bytes from `2N` lowercase hex digits (the Scouter SDK's `trace_id`/`span_id`).
#[inline(always)]
pub fn parse_hex<const N: usize, const D: usize>(digits: &[u8; D]) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    parse_hex_into(digits, &mut out).then_some(out)
}

/// [`parse_hex`], written into `out` (unspecified when it returns false). Not inlined: in
/// the kernel its unrolled loop is a frame of its own rather than spills in its caller's.
#[inline(never)]
pub fn parse_hex_into<const N: usize, const D: usize>(digits: &[u8; D], out: &mut [u8; N]) -> bool {
    let mut i = 0;
    while i < N {
        if 2 * i + 1 >= D {
            return false;
        }
        let Some(byte) = hex_byte(digits[2 * i], digits[2 * i + 1]) else { return false };
        out[i] = byte;
        i += 1;
    }
    !is_zero(out)
}

/// Writes `bytes` as lowercase hex into `line` from `AT` on. Not inlined, for the same reason
/// as [`parse_hex_into`].
#[inline(never)]
fn put_hex_at<const AT: usize, const N: usize>(bytes: &[u8; N], line: &mut [u8; LINE_LEN]) {
    let mut k = 0;
    while k < N {
        put_hex(bytes[k], line, AT + 2 * k);
        k += 1;
    }
}

#[inline(always)]
fn put_hex(byte: u8, line: &mut [u8; LINE_LEN], at: usize) {
    let digit = |n: u8| if n < 10 { b'0' + n } else { b'a' + n - 10 };
    line[at] = digit(byte >> 4);
    line[at + 1] = digit(byte & 0xf);
}

/// Lowercase only: the spec forbids uppercase, and accepting it would change ids on re-export.
#[inline(always)]
fn hex_nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

#[inline(always)]
fn hex_byte(hi: u8, lo: u8) -> Option<u8> {
    Some(hex_nibble(hi)? << 4 | hex_nibble(lo)?)
}

#[inline(always)]
fn is_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &[u8] = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn written_lines_parse_back() {
        let parsed = parse_slice(VALID).unwrap();
        assert!(parsed.sampled());
        let mut line = [0u8; LINE_LEN];
        write_line(&parsed.trace_id, &parsed.span_id, parsed.flags, &mut line);
        assert_eq!(&line[..], b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n");
    }

    #[test]
    fn rejects_what_the_spec_rejects() {
        for bad in [
            &b""[..],
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            b"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            b"00-00000000000000000000000000000000-b7ad6b7169203331-01",
            b"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            b"00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            b"0x-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01x",
        ] {
            assert_eq!(parse_slice(bad), None, "{bad:?}");
        }
        assert!(parse_slice(b"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00-future").is_some());
    }

    #[test]
    fn scouter_hex_ids() {
        assert_eq!(parse_hex::<8, 16>(b"b7ad6b7169203331"), Some([0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31]));
        assert_eq!(parse_hex::<8, 16>(b"0000000000000000"), None);
        assert_eq!(parse_hex::<8, 16>(b"B7AD6B7169203331"), None);
    }
}
