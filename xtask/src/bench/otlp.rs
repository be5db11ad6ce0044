//! Counting the spans of an OTLP/HTTP protobuf export, without a protobuf library.
//!
//! ExportTraceServiceRequest { repeated ResourceSpans resource_spans = 1; }
//! ResourceSpans { Resource resource = 1; repeated ScopeSpans scope_spans = 2; ... }
//! ScopeSpans { InstrumentationScope scope = 1; repeated Span spans = 2; ... }

const LEN: u64 = 2;

/// The number of spans in an ExportTraceServiceRequest; `None` if it is not valid protobuf.
pub fn count_spans(request: &[u8]) -> Option<u64> {
    let mut spans = 0;
    for resource_spans in embedded(request, 1)? {
        for scope_spans in embedded(resource_spans, 2)? {
            spans += embedded(scope_spans, 2)?.len() as u64;
        }
    }
    Some(spans)
}

/// The payloads of every length-delimited field numbered `wanted` in `message`.
fn embedded(mut message: &[u8], wanted: u64) -> Option<Vec<&[u8]>> {
    let mut found = Vec::new();
    while !message.is_empty() {
        let key = varint(&mut message)?;
        let (field, wire_type) = (key >> 3, key & 7);
        let payload_len = match wire_type {
            0 => {
                varint(&mut message)?;
                0
            }
            1 => 8,
            LEN => usize::try_from(varint(&mut message)?).ok()?,
            5 => 4,
            _ => return None,
        };
        let payload = message.get(..payload_len)?;
        if field == wanted && wire_type == LEN {
            found.push(payload);
        }
        message = &message[payload_len..];
    }
    Some(found)
}

/// Reads a base-128 varint from the front of `bytes`.
fn varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(number: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![(number << 3) | 2, u8::try_from(payload.len()).unwrap()];
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn counts_spans_across_resources_and_scopes() {
        let span = [field(1, &[0xab; 16]), vec![0x38, 0x96, 0x01] /* field 7 varint 150 */].concat();
        let scope_a = [field(1, b"scope"), field(2, &span), field(2, &span)].concat();
        let scope_b = field(2, &span);
        let resource_1 = [field(1, b"resource"), field(2, &scope_a), field(2, &scope_b)].concat();
        let resource_2 = field(2, &field(2, &span));
        let request = [field(1, &resource_1), field(1, &resource_2)].concat();
        assert_eq!(count_spans(&request), Some(4));
        assert_eq!(count_spans(&[]), Some(0));
    }

    #[test]
    fn garbage_is_not_counted() {
        assert_eq!(count_spans(&[0x0a, 0x05, 0x00]), None); // length past the end
        assert_eq!(count_spans(&[0x1f, 0x8b, 0x08, 0x00]), None); // gzip magic
    }
}
