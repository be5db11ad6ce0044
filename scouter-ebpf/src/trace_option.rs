//! Trace context in a TCP header option, for TLS connections whose bytes cannot be edited.
//!
//! Over plain HTTP the client's context travels in a `traceparent` header the sk_msg program
//! inserts. Over TLS the payload is ciphertext, so the sockops program writes the context into
//! the TCP header of the request's first data segment instead, and the receiving host's
//! sockops program reads it back (see `programs/trace_option.rs` in the kernel crate).
//!
//! The option is an experimental one (kind 254, RFC 6994) with a 16-bit experiment id:
//!
//! ```text
//! kind=254 | len=28 | ExID (2, big endian) | trace id (16) | span id (8)
//! ```
//!
//! 28 bytes is all the room a data segment has left once the timestamps option (12 bytes with
//! its padding) is in: TCP has 40 bytes of options. So the W3C flags byte does not fit; the
//! sampled bit is carried by the choice of ExID instead ([`EXID_SAMPLED`] or
//! [`EXID_NOT_SAMPLED`]). Peers that do not run the agent ignore the option: TCP skips options
//! of unknown kinds (RFC 9293 §3.1) and Linux only records that it saw one.

use crate::traceparent::TraceParent;

/// Experimental TCP option kind (RFC 4727, RFC 6994).
pub const KIND: u8 = 254;
/// Total option length: kind, length, ExID, trace id, span id.
pub const LEN: usize = 2 + 2 + 16 + 8;
/// ExID of a context whose trace is sampled (W3C flags `01`).
pub const EXID_SAMPLED: u16 = 0x5C7A;
/// ExID of a context whose trace is not sampled (flags `00`).
pub const EXID_NOT_SAMPLED: u16 = 0x5C7B;

/// The option carrying `context` (flags other than the sampled bit are not carried).
#[inline(always)]
pub fn encode(context: &TraceParent) -> [u8; LEN] {
    let mut option = [0u8; LEN];
    encode_into(&context.trace_id, &context.span_id, context.sampled(), &mut option);
    option
}

/// [`encode`], written into `option` (the kernel keeps it in a map value).
#[inline(always)]
pub fn encode_into(trace_id: &[u8; 16], span_id: &[u8; 8], sampled: bool, option: &mut [u8; LEN]) {
    let exid = if sampled { EXID_SAMPLED } else { EXID_NOT_SAMPLED }.to_be_bytes();
    option[0] = KIND;
    option[1] = LEN as u8;
    option[2] = exid[0];
    option[3] = exid[1];
    let mut k = 0;
    while k < 16 {
        option[4 + k] = trace_id[k];
        k += 1;
    }
    k = 0;
    while k < 8 {
        option[20 + k] = span_id[k];
        k += 1;
    }
}

/// What `bpf_load_hdr_opt` searches by to find the option with the given sampled bit: the
/// kind, the "length" of the ExID part (kind, length and the two ExID bytes), and the ExID.
#[inline(always)]
pub fn search_key(sampled: bool) -> [u8; LEN] {
    let exid = if sampled { EXID_SAMPLED } else { EXID_NOT_SAMPLED }.to_be_bytes();
    let mut key = [0u8; LEN];
    key[0] = KIND;
    key[1] = 4;
    key[2] = exid[0];
    key[3] = exid[1];
    key
}

/// The context in an option as found on the wire; `None` unless it is ours, whole and valid
/// (ids not all zero).
#[inline(always)]
pub fn decode(option: &[u8; LEN]) -> Option<TraceParent> {
    if option[0] != KIND || option[1] as usize != LEN {
        return None;
    }
    let flags = match u16::from_be_bytes([option[2], option[3]]) {
        EXID_SAMPLED => 1,
        EXID_NOT_SAMPLED => 0,
        _ => return None,
    };
    let mut trace_id = [0u8; 16];
    let mut span_id = [0u8; 8];
    let mut k = 0;
    let mut nonzero = 0u8;
    while k < 16 {
        trace_id[k] = option[4 + k];
        nonzero |= trace_id[k];
        k += 1;
    }
    if nonzero == 0 {
        return None;
    }
    k = 0;
    nonzero = 0;
    while k < 8 {
        span_id[k] = option[20 + k];
        nonzero |= span_id[k];
        k += 1;
    }
    if nonzero == 0 {
        return None;
    }
    Some(TraceParent { trace_id, span_id, flags })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(flags: u8) -> TraceParent {
        let mut trace_id = [0u8; 16];
        for (i, b) in trace_id.iter_mut().enumerate() {
            *b = i as u8 + 1;
        }
        TraceParent { trace_id, span_id: [0xAB; 8], flags }
    }

    #[test]
    fn fits_beside_timestamps() {
        // 40 bytes of TCP options, 12 taken by timestamps (10) and their padding.
        assert_eq!(LEN, 40 - 12);
        assert_eq!(LEN % 4, 0, "no padding needed");
    }

    #[test]
    fn round_trips_with_the_sampled_bit() {
        for flags in [0, 1] {
            let option = encode(&context(flags));
            assert_eq!(&option[..2], &[KIND, LEN as u8]);
            assert_eq!(decode(&option), Some(context(flags)));
        }
        // Other flag bits are not carried.
        assert_eq!(decode(&encode(&context(0x03))).map(|c| c.flags), Some(1));
    }

    #[test]
    fn the_search_key_matches_the_option_head() {
        let option = encode(&context(1));
        let key = search_key(true);
        assert_eq!(&key[..4], &[KIND, 4, option[2], option[3]]);
        assert_eq!(&search_key(false)[2..4], &EXID_NOT_SAMPLED.to_be_bytes());
    }

    #[test]
    fn rejects_foreign_or_invalid_options() {
        let mut option = encode(&context(1));
        option[3] ^= 0xFF;
        assert_eq!(decode(&option), None, "another experiment's ExID");
        let mut option = encode(&context(1));
        option[1] = 27;
        assert_eq!(decode(&option), None, "wrong length");
        let mut option = encode(&context(1));
        option[4..20].fill(0);
        assert_eq!(decode(&option), None, "zero trace id");
        let mut option = encode(&context(1));
        option[20..].fill(0);
        assert_eq!(decode(&option), None, "zero span id");
    }
}
