//! One direction of an HTTP/1.x connection as a stream of messages.
//!
//! The kernel reports each syscall's byte count exactly but copies only its first
//! `MAX_CAPTURE` bytes, so the stream knows precisely where bodies end when they are framed by
//! `Content-Length`, and follows chunked bodies while their bytes are visible. When framing is
//! lost (a head or chunk header beyond the copied bytes, or garbage), the stream says so and
//! resynchronises at the next syscall that starts like a message; the connection then falls
//! back to the other direction's activity to close the exchange.

use super::http1::{BodyFraming, ParseError, MAX_HEAD_BYTES};

/// What feeding one syscall's bytes produced, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamItem<H> {
    /// A head was parsed; its first byte arrived at `start_time`.
    Head { head: H, start_time: u64 },
    /// The message whose head was last reported is complete at `time`.
    Complete { time: u64 },
    /// Bytes that are not a message this stream can follow.
    Garbage(ParseError),
    /// The stream lost track of message boundaries (bytes not captured).
    LostSync,
}

#[derive(Debug)]
enum State {
    /// At a message boundary.
    Idle,
    /// A head split across syscalls.
    Head {
        buf: Vec<u8>,
        start_time: u64,
    },
    /// Body bytes still to come.
    Body {
        remaining: u64,
    },
    Chunked(Chunked),
    /// The body runs until the connection closes.
    UntilClose,
    /// Boundaries unknown; wait for a syscall that starts like a message.
    Lost,
}

/// A message stream; `H` is the head type (request or response).
#[derive(Debug)]
pub struct MessageStream {
    state: State,
}

/// One syscall's worth of bytes.
pub struct Segment<'a> {
    pub bytes: &'a [u8],
    pub total_len: u64,
    /// When the syscall returned.
    pub time: u64,
    /// When a message starting in this segment counts as started (a read's return, a write's
    /// entry: the moment its first byte moved).
    pub start_time: u64,
}

impl Default for MessageStream {
    fn default() -> Self {
        Self { state: State::Idle }
    }
}

impl MessageStream {
    /// Whether the current message's body runs until the connection closes.
    pub fn is_until_close(&self) -> bool {
        matches!(self.state, State::UntilClose)
    }

    /// Feeds one syscall's bytes. `parse` turns a complete head into `H`; `framing` says how its
    /// body is delimited; `starts_message` sniffs whether bytes begin a message (to resync).
    pub fn feed<H>(
        &mut self,
        segment: &Segment<'_>,
        parse: impl Fn(&[u8]) -> Result<(H, usize), ParseError>,
        framing: impl Fn(&H) -> BodyFraming,
        starts_message: impl Fn(&[u8]) -> bool,
    ) -> Vec<StreamItem<H>> {
        let mut items = Vec::new();
        let mut pos: u64 = 0;
        if matches!(self.state, State::Lost) && starts_message(segment.bytes) {
            self.state = State::Idle;
        }
        while pos < segment.total_len {
            let captured_rest = segment.bytes.get(pos as usize..).unwrap_or(&[]);
            match &mut self.state {
                State::Idle => {
                    if captured_rest.is_empty() {
                        self.lose(&mut items);
                        break;
                    }
                    self.state = State::Head { buf: Vec::new(), start_time: segment.start_time };
                }
                State::Head { buf, start_time } => {
                    let before = buf.len();
                    let take = captured_rest.len().min(MAX_HEAD_BYTES.saturating_sub(before));
                    buf.extend_from_slice(&captured_rest[..take]);
                    match parse(buf) {
                        Ok((head, head_len)) => {
                            let start_time = *start_time;
                            pos += (head_len - before) as u64;
                            let body = framing(&head);
                            items.push(StreamItem::Head { head, start_time });
                            self.begin_body(body, segment.time, &mut items);
                        }
                        Err(ParseError::Incomplete) => {
                            let all_captured = pos + captured_rest.len() as u64 == segment.total_len;
                            if !all_captured {
                                self.lose(&mut items);
                            }
                            break;
                        }
                        Err(invalid) => {
                            items.push(StreamItem::Garbage(invalid));
                            self.state = State::Lost;
                            break;
                        }
                    }
                }
                State::Body { remaining } => {
                    let available = segment.total_len - pos;
                    if available >= *remaining {
                        pos += *remaining;
                        self.state = State::Idle;
                        items.push(StreamItem::Complete { time: segment.time });
                    } else {
                        *remaining -= available;
                        break;
                    }
                }
                State::Chunked(chunked) => match chunked.advance(captured_rest, segment.total_len - pos) {
                    ChunkProgress::Consumed => break,
                    ChunkProgress::Finished(used) => {
                        pos += used as u64;
                        self.state = State::Idle;
                        items.push(StreamItem::Complete { time: segment.time });
                    }
                    ChunkProgress::Invalid => {
                        items.push(StreamItem::Garbage(ParseError::Invalid("bad chunked encoding")));
                        self.state = State::Lost;
                        break;
                    }
                    ChunkProgress::NotVisible => {
                        self.lose(&mut items);
                        break;
                    }
                },
                State::UntilClose | State::Lost => break,
            }
        }
        items
    }

    fn begin_body<H>(&mut self, body: BodyFraming, time: u64, items: &mut Vec<StreamItem<H>>) {
        self.state = match body {
            BodyFraming::Empty => {
                items.push(StreamItem::Complete { time });
                State::Idle
            }
            BodyFraming::Length(n) => State::Body { remaining: n },
            BodyFraming::Chunked => State::Chunked(Chunked::default()),
            BodyFraming::UntilClose => State::UntilClose,
        };
    }

    fn lose<H>(&mut self, items: &mut Vec<StreamItem<H>>) {
        self.state = State::Lost;
        items.push(StreamItem::LostSync);
    }
}

/// A chunked body decoder that tracks boundaries only (never keeps data).
#[derive(Debug, Default)]
struct Chunked {
    phase: ChunkPhase,
    /// Bytes of a size line (or trailer line) seen so far.
    line: Vec<u8>,
}

#[derive(Debug, Default, PartialEq, Eq)]
enum ChunkPhase {
    #[default]
    SizeLine,
    Data {
        remaining: u64,
    },
    DataEnd {
        crlf_left: u8,
    },
    Trailer,
}

enum ChunkProgress {
    /// Everything given was consumed and the body goes on.
    Consumed,
    /// The body ended after this many bytes.
    Finished(usize),
    Invalid,
    /// Framing bytes lie beyond what the kernel copied.
    NotVisible,
}

const MAX_CHUNK_LINE: usize = 1024;

impl Chunked {
    /// Advances over `available` bytes of which `bytes` are the visible prefix.
    fn advance(&mut self, bytes: &[u8], available: u64) -> ChunkProgress {
        let mut i: u64 = 0;
        while i < available {
            match &mut self.phase {
                ChunkPhase::Data { remaining } => {
                    let step = (*remaining).min(available - i);
                    *remaining -= step;
                    i += step;
                    if *remaining == 0 {
                        self.phase = ChunkPhase::DataEnd { crlf_left: 2 };
                    }
                }
                phase => {
                    let Some(&byte) = bytes.get(i as usize) else { return ChunkProgress::NotVisible };
                    i += 1;
                    match phase {
                        ChunkPhase::DataEnd { crlf_left } => {
                            *crlf_left -= 1;
                            if *crlf_left == 0 {
                                self.phase = ChunkPhase::SizeLine;
                            }
                        }
                        ChunkPhase::SizeLine | ChunkPhase::Trailer => {
                            if let Some(done) = self.line_byte(byte) {
                                match done {
                                    LineOutcome::Continue => {}
                                    LineOutcome::Finished => return ChunkProgress::Finished(i as usize),
                                    LineOutcome::Invalid => return ChunkProgress::Invalid,
                                }
                            }
                        }
                        ChunkPhase::Data { .. } => unreachable!("handled above"),
                    }
                }
            }
        }
        ChunkProgress::Consumed
    }

    /// Consumes one byte of a size or trailer line; `Some` when a line ended.
    fn line_byte(&mut self, byte: u8) -> Option<LineOutcome> {
        if byte != b'\n' {
            if self.line.len() >= MAX_CHUNK_LINE {
                return Some(LineOutcome::Invalid);
            }
            self.line.push(byte);
            return None;
        }
        let line = std::mem::take(&mut self.line);
        let line = line.strip_suffix(b"\r").unwrap_or(&line);
        Some(match self.phase {
            ChunkPhase::SizeLine => match chunk_size(line) {
                Some(0) => {
                    self.phase = ChunkPhase::Trailer;
                    LineOutcome::Continue
                }
                Some(size) => {
                    self.phase = ChunkPhase::Data { remaining: size };
                    LineOutcome::Continue
                }
                None => LineOutcome::Invalid,
            },
            _ if line.is_empty() => LineOutcome::Finished,
            _ => LineOutcome::Continue,
        })
    }
}

enum LineOutcome {
    Continue,
    Finished,
    Invalid,
}

fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.split(|&b| b == b';').next()?;
    let digits = std::str::from_utf8(digits).ok()?.trim();
    if digits.is_empty() || digits.len() > 15 {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spans::http1::{looks_like_request, parse_request, RequestHead};

    fn parse(bytes: &[u8]) -> Result<(RequestHead, usize), ParseError> {
        parse_request(bytes).map(|h| {
            let len = h.head_len;
            (h, len)
        })
    }

    fn feed(stream: &mut MessageStream, bytes: &[u8], total: u64, time: u64) -> Vec<StreamItem<RequestHead>> {
        stream.feed(
            &Segment { bytes, total_len: total, time, start_time: time },
            parse,
            |h| h.body(),
            looks_like_request,
        )
    }

    fn kinds(items: &[StreamItem<RequestHead>]) -> Vec<String> {
        items
            .iter()
            .map(|i| match i {
                StreamItem::Head { head, start_time } => format!("head {} {} @{start_time}", head.method, head.target),
                StreamItem::Complete { time } => format!("complete @{time}"),
                StreamItem::Garbage(_) => "garbage".into(),
                StreamItem::LostSync => "lost".into(),
            })
            .collect()
    }

    fn whole(bytes: &[u8]) -> (&[u8], u64) {
        (bytes, bytes.len() as u64)
    }

    #[test]
    fn pipelined_requests_in_one_read() {
        let mut s = MessageStream::default();
        let (b, n) =
            whole(b"GET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyzGET /c HTTP/1.1\r\n\r\n");
        assert_eq!(
            kinds(&feed(&mut s, b, n, 5)),
            ["head GET /a @5", "complete @5", "head POST /b @5", "complete @5", "head GET /c @5", "complete @5"]
        );
    }

    #[test]
    fn a_request_written_three_bytes_at_a_time() {
        let mut s = MessageStream::default();
        let request = b"POST /inject/fragmented HTTP/1.1\r\nHost: 127.0.0.1:9\r\nContent-Length: 5\r\n\r\nhello";
        let mut seen = Vec::new();
        for (i, piece) in request.chunks(3).enumerate() {
            seen.extend(kinds(&feed(&mut s, piece, piece.len() as u64, i as u64)));
        }
        let last = (request.len() - 1) / 3;
        assert_eq!(seen, ["head POST /inject/fragmented @0".to_string(), format!("complete @{last}")]);
    }

    #[test]
    fn head_split_across_reads_and_body_across_reads() {
        let mut s = MessageStream::default();
        let (b, n) = whole(b"POST /up HTTP/1.1\r\nContent-Le");
        assert!(feed(&mut s, b, n, 1).is_empty());
        let (b, n) = whole(b"ngth: 10\r\n\r\n12345");
        assert_eq!(kinds(&feed(&mut s, b, n, 2)), ["head POST /up @1"]);
        let (b, n) = whole(b"67890");
        assert_eq!(kinds(&feed(&mut s, b, n, 3)), ["complete @3"]);
    }

    #[test]
    fn large_body_beyond_capture_is_counted_exactly() {
        let mut s = MessageStream::default();
        let head = b"POST /big HTTP/1.1\r\nContent-Length: 100000\r\n\r\n";
        let items = feed(&mut s, head, head.len() as u64 + 50_000, 1);
        assert_eq!(kinds(&items), ["head POST /big @1"]);
        assert!(feed(&mut s, b"", 49_999, 2).is_empty());
        let (b, n) = whole(b"xGET /next HTTP/1.1\r\n\r\n");
        assert_eq!(kinds(&feed(&mut s, b, n, 3)), ["complete @3", "head GET /next @3", "complete @3"]);
    }

    #[test]
    fn chunked_body() {
        let mut s = MessageStream::default();
        let (b, n) = whole(b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n");
        assert_eq!(kinds(&feed(&mut s, b, n, 1)), ["head POST /c @1"]);
        let (b, n) = whole(b"5;ext=1\r\npedia\r\n0\r\nX-Trailer: 1\r\n\r\nGET / HTTP/1.1\r\n\r\n");
        assert_eq!(kinds(&feed(&mut s, b, n, 2)), ["complete @2", "head GET / @2", "complete @2"]);
    }

    #[test]
    fn garbage_then_resync_at_a_message_start() {
        let mut s = MessageStream::default();
        let (b, n) = whole(&[0x16, 0x03, 0x01, 0x00, 0xa5, 0x01]);
        assert_eq!(kinds(&feed(&mut s, b, n, 1)), ["garbage"]);
        let (b, n) = whole(b"more random bytes");
        assert!(feed(&mut s, b, n, 2).is_empty());
        let (b, n) = whole(b"GET /ok HTTP/1.1\r\n\r\n");
        assert_eq!(kinds(&feed(&mut s, b, n, 3)), ["head GET /ok @3", "complete @3"]);
    }

    #[test]
    fn a_head_cut_by_the_capture_limit_loses_sync() {
        let mut s = MessageStream::default();
        let items = feed(&mut s, b"GET /long HTTP/1.1\r\nX-A: 1", 9000, 1);
        assert_eq!(kinds(&items), ["lost"]);
        assert!(matches!(s.state, State::Lost));
    }

    #[test]
    fn truncated_request_never_completes() {
        let mut s = MessageStream::default();
        let (b, n) = whole(b"GET /half HTTP/1.1\r\nHost: x\r\n");
        assert!(feed(&mut s, b, n, 1).is_empty());
        assert!(!matches!(s.state, State::Lost));
    }
}
