//! Python code locations for HTTP spans (`code.function.name`, `code.file.path`,
//! `code.line.number`), by span id.
//!
//! The kernel captures a thread's stack when it starts a client request and when it reads the
//! body of a request it serves ([`crate::frames`] turns the stack into application frames).
//! A client span gets the frame that made the call; the server span it is a child of (same
//! process) gets the handler on that stack, and so does a server span whose body its handler
//! read. Frameworks write responses after the handler returned, so the response write's stack
//! is never used. Entries wait here until their span is built; they are bounded, and a
//! process's entries go with it.

use std::collections::HashMap;

use scouter_ebpf::{context_origin, SpanContext};

use super::{AttributeValue, Span, SpanId, SpanKind};
use crate::events::SocketId;
use crate::frames::attribution::Attribution;
use crate::frames::code::CodeLocation;

/// Locations waiting for their span, per kind; past this the oldest generation is dropped.
const MAX_WAITING: usize = 16_384;

#[derive(Default)]
pub struct CodeAttributions {
    /// The identity of the request each socket started last (client) or serves (server).
    requests: HashMap<SocketId, SpanContext>,
    callers: Waiting,
    handlers: Waiting,
}

impl CodeAttributions {
    /// A request started on `socket` with the kernel's identity `context`.
    pub fn request_started(&mut self, socket: SocketId, context: SpanContext) {
        self.requests.insert(socket, context);
    }

    /// The stack of the thread that started a client request (`server` false) or read a served
    /// request's body (`server` true) on `socket`.
    pub fn stack_seen(&mut self, socket: SocketId, server: bool, attribution: Attribution) {
        let Some(context) = self.requests.get(&socket) else { return };
        let (span, pid) = (SpanId(context.span_id), socket.pid);
        if server {
            if let Some(handler) = attribution.handler {
                self.handlers.insert_if_absent(pid, span, handler);
            }
            return;
        }
        if let Some(caller) = attribution.caller {
            self.callers.insert_if_absent(pid, span, caller);
        }
        // A parent found in this process is the request this thread or task serves.
        if context.origin == context_origin::LOCAL_PARENT {
            if let Some(handler) = attribution.handler {
                self.handlers.insert_if_absent(pid, SpanId(context.parent_span_id), handler);
            }
        }
    }

    /// Sets `span`'s code attributes, if a stack told them.
    pub fn apply(&mut self, pid: u32, span: &mut Span) {
        let waiting = match span.kind {
            SpanKind::Client => &mut self.callers,
            SpanKind::Server => &mut self.handlers,
            _ => return,
        };
        if let Some(location) = waiting.take(pid, span.span_id) {
            set_code_attributes(span, location);
        }
    }

    pub fn socket_closed(&mut self, socket: SocketId) {
        self.requests.remove(&socket);
    }

    pub fn process_exited(&mut self, pid: u32) {
        self.requests.retain(|socket, _| socket.pid != pid);
        self.callers.forget_process(pid);
        self.handlers.forget_process(pid);
    }
}

fn set_code_attributes(span: &mut Span, location: CodeLocation) {
    let attributes = &mut span.attributes;
    attributes.insert("code.function.name".into(), AttributeValue::from(location.function));
    attributes.insert("code.file.path".into(), AttributeValue::from(location.file.to_string()));
    if let Some(line) = location.line {
        attributes.insert("code.line.number".into(), AttributeValue::from(line));
    }
}

/// Locations by (process, span id), in two generations so the oldest half can be dropped at
/// once when spans never come (their exchange was never completed).
#[derive(Default)]
struct Waiting {
    current: HashMap<(u32, SpanId), CodeLocation>,
    previous: HashMap<(u32, SpanId), CodeLocation>,
}

impl Waiting {
    fn insert_if_absent(&mut self, pid: u32, span: SpanId, location: CodeLocation) {
        let key = (pid, span);
        if self.current.contains_key(&key) || self.previous.contains_key(&key) {
            return;
        }
        if self.current.len() >= MAX_WAITING / 2 {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(key, location);
    }

    fn take(&mut self, pid: u32, span: SpanId) -> Option<CodeLocation> {
        let key = (pid, span);
        self.current.remove(&key).or_else(|| self.previous.remove(&key))
    }

    fn forget_process(&mut self, pid: u32) {
        self.current.retain(|(owner, _), _| *owner != pid);
        self.previous.retain(|(owner, _), _| *owner != pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(function: &str) -> CodeLocation {
        CodeLocation { function: function.into(), file: "/srv/app.py".into(), line: Some(7) }
    }

    fn span(kind: SpanKind, id: [u8; 8]) -> Span {
        Span::for_test(kind, SpanId(id))
    }

    #[test]
    fn a_client_stack_names_the_call_and_its_local_parent_s_handler() {
        let mut code = CodeAttributions::default();
        let socket = SocketId { pid: 5, id: 9 };
        let context = SpanContext {
            span_id: [2; 8],
            parent_span_id: [1; 8],
            origin: context_origin::LOCAL_PARENT,
            ..SpanContext::default()
        };
        code.request_started(socket, context);
        let attribution = Attribution { caller: Some(location("fetch")), handler: Some(location("view")) };
        code.stack_seen(socket, false, attribution);

        let mut client = span(SpanKind::Client, [2; 8]);
        code.apply(5, &mut client);
        assert_eq!(client.attributes["code.function.name"], AttributeValue::from("fetch"));
        assert_eq!(client.attributes["code.line.number"], AttributeValue::from(7u32));

        let mut server = span(SpanKind::Server, [1; 8]);
        code.apply(5, &mut server);
        assert_eq!(server.attributes["code.function.name"], AttributeValue::from("view"));

        let mut other = span(SpanKind::Server, [1; 8]);
        code.apply(6, &mut other);
        assert!(!other.attributes.contains_key("code.function.name"), "another process's span");
    }

    #[test]
    fn waiting_locations_are_bounded() {
        let mut waiting = Waiting::default();
        for n in 0..(MAX_WAITING as u64 * 2) {
            waiting.insert_if_absent(1, SpanId(n.to_le_bytes()), location("f"));
        }
        assert!(waiting.current.len() + waiting.previous.len() <= MAX_WAITING);
    }
}
