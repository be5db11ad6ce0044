//! Function spans: one INTERNAL span per call of a selected Python function, from the kernel's
//! entry and return events (`scouter-ebpf/src/programs/python_call.rs`).
//!
//! The kernel gives a call its ids at entry, so what the call does (client requests, nested
//! calls) is already its child. A code object the agent had not decided about yet is reported
//! as a tentative call; when the agent decides against it, the call's span is dropped and its
//! children, which name it as their parent, are handed to the call's own parent instead
//! ([`FunctionSpans::reparent`], applied to every span before export).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::frames::calls::CalledFunction;
use crate::frames::objects::ArgumentValue;

use super::scouter_conventions::{self, MAX_IO_STRING_CHARS, TRUNCATION_MARKER};
use super::{AttributeValue, Attributes, ContextFlags, Resource, Span, SpanId, SpanKind, Status, StatusCode, TraceId};

/// Calls open at once, host-wide, before the oldest are given up (a generator never finished).
const MAX_OPEN_CALLS: usize = 65_536;
/// Dropped tentative spans remembered for re-parenting their children.
const MAX_DROPPED: usize = 65_536;

/// A `co_flags` bit and the `function.type` it gives.
const FUNCTION_TYPES: [(u32, &str); 3] = [(0x200, "async_generator"), (0x80, "async"), (0x20, "generator")];

/// A call the kernel reported starting.
#[derive(Clone, Debug)]
pub struct StartedCall {
    pub pid: u32,
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    /// W3C trace flags of the trace the call belongs to.
    pub trace_flags: u8,
    pub start: u64,
    pub function: Arc<CalledFunction>,
    /// Captured arguments by name, in the order the function declares them.
    pub arguments: Vec<(String, ArgumentValue)>,
    pub resource: Arc<Resource>,
}

/// How a call ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallEnd {
    Returned,
    /// An exception left the function; its type's name if it could be read.
    Raised(Option<String>),
}

#[derive(Default)]
pub struct FunctionSpans {
    open: HashMap<SpanId, StartedCall>,
    /// Dropped tentative span → its parent.
    dropped: HashMap<SpanId, Option<SpanId>>,
    dropped_order: VecDeque<SpanId>,
    /// Calls given up without an end (process exit, too many open, evicted by the kernel).
    pub abandoned: u64,
}

impl FunctionSpans {
    pub fn started(&mut self, call: StartedCall) {
        if self.open.len() >= MAX_OPEN_CALLS {
            self.give_up_oldest();
        }
        self.open.insert(call.span_id, call);
    }

    /// A tentative call turned out not to be selected: no span, and its children belong to
    /// its parent.
    pub fn not_selected(&mut self, span_id: SpanId, parent: Option<SpanId>) {
        if self.dropped_order.len() >= MAX_DROPPED {
            if let Some(oldest) = self.dropped_order.pop_front() {
                self.dropped.remove(&oldest);
            }
        }
        self.dropped.insert(span_id, parent);
        self.dropped_order.push_back(span_id);
    }

    /// The kernel stopped following the tentative call `span_id` (its thread was in too many
    /// calls): no span, and its children belong to its parent, as if it were not selected.
    pub fn evicted(&mut self, span_id: SpanId) {
        if let Some(call) = self.open.remove(&span_id) {
            self.abandoned += 1;
            self.not_selected(span_id, call.parent_span_id);
        }
    }

    /// The span of the call `span_id`, now over; `None` for calls not reported (dropped,
    /// or started before the agent).
    pub fn returned(&mut self, span_id: SpanId, end: u64, how: CallEnd) -> Option<Span> {
        let call = self.open.remove(&span_id)?;
        Some(span_of(call, end, how))
    }

    /// Makes a span whose parent was a dropped tentative call a child of that call's parent.
    pub fn reparent(&self, span: &mut Span) {
        // Dropped calls nest (a tentative call inside another); the chain is short.
        for _ in 0..64 {
            let Some(parent) = span.parent_span_id else { return };
            let Some(&replacement) = self.dropped.get(&parent) else { return };
            span.parent_span_id = replacement;
        }
    }

    /// The process is gone: its open calls will never end.
    pub fn process_exited(&mut self, pid: u32) {
        let before = self.open.len();
        self.open.retain(|_, call| call.pid != pid);
        self.abandoned += (before - self.open.len()) as u64;
    }

    fn give_up_oldest(&mut self) {
        let oldest = self.open.iter().min_by_key(|(_, call)| call.start).map(|(id, _)| *id);
        if let Some(oldest) = oldest {
            self.open.remove(&oldest);
            self.abandoned += 1;
        }
    }
}

fn span_of(call: StartedCall, end: u64, how: CallEnd) -> Span {
    let mut attributes = function_attributes(&call.function);
    add_arguments(&mut attributes, &call.arguments);
    let mut status = Status::default();
    if let CallEnd::Raised(type_name) = how {
        let type_name = type_name.unwrap_or_else(|| "exception".to_owned());
        // Closing a generator early is how it is meant to stop, not a failure.
        if type_name != "GeneratorExit" {
            attributes.insert("exception.type".into(), type_name.clone().into());
            attributes.insert("error.type".into(), type_name.clone().into());
            status = Status { code: StatusCode::Error, message: type_name };
        }
    }
    Span {
        trace_id: call.trace_id,
        span_id: call.span_id,
        parent_span_id: call.parent_span_id,
        name: call.function.code.qualname.clone(),
        kind: SpanKind::Internal,
        start_time_unix_nano: call.start,
        end_time_unix_nano: end.max(call.start),
        attributes,
        status,
        resource: call.resource,
        // The parent is this process's own span (a request being served or an enclosing call).
        flags: ContextFlags::from_w3c(call.trace_flags, false),
        trace_state: String::new(),
        events: Vec::new(),
        links: Vec::new(),
        scope: None,
    }
}

/// The semantic-convention `code.*` attributes and the Scouter SDK's `function.*` ones.
fn function_attributes(function: &CalledFunction) -> Attributes {
    let code = &function.code;
    let mut attributes = Attributes::new();
    attributes.insert("code.function.name".into(), code.qualname.clone().into());
    attributes.insert("code.file.path".into(), code.file.to_string().into());
    attributes.insert("code.line.number".into(), code.line.into());
    attributes.insert("function.module".into(), function.module.clone().into());
    attributes.insert("function.qualname".into(), code.qualname.clone().into());
    attributes.insert("function.name".into(), code.name.clone().into());
    attributes.insert("function.type".into(), function_type(code.flags).into());
    attributes
}

fn function_type(flags: u32) -> &'static str {
    FUNCTION_TYPES.iter().find(|(bit, _)| flags & bit != 0).map_or("sync", |(_, name)| name)
}

/// `function.argument.<name>` per argument, and `scouter.tracing.input` with all of them as
/// a JSON object (as the Scouter SDK records a function's inputs; its strings cut as the SDK
/// cuts them, so the object stays valid JSON).
fn add_arguments(attributes: &mut Attributes, arguments: &[(String, ArgumentValue)]) {
    if arguments.is_empty() {
        return;
    }
    let mut input = serde_json::Map::new();
    for (name, value) in arguments {
        attributes.insert(format!("function.argument.{name}"), attribute_value(value));
        input.insert(name.clone(), json_value(value));
    }
    let json = serde_json::Value::Object(input).to_string();
    attributes.insert(scouter_conventions::INPUT_KEY.into(), json.into());
}

fn attribute_value(value: &ArgumentValue) -> AttributeValue {
    match value {
        ArgumentValue::None => "None".into(),
        ArgumentValue::Bool(v) => (*v).into(),
        ArgumentValue::Int(v) => (*v).into(),
        ArgumentValue::Float(v) => AttributeValue::Double(*v),
        ArgumentValue::Str { text, truncated } => truncated_text(text, *truncated).into(),
        ArgumentValue::Other { type_name } => format!("<{type_name}>").into(),
    }
}

fn json_value(value: &ArgumentValue) -> serde_json::Value {
    match value {
        ArgumentValue::None => serde_json::Value::Null,
        ArgumentValue::Bool(v) => (*v).into(),
        ArgumentValue::Int(v) => (*v).into(),
        ArgumentValue::Float(v) => serde_json::Number::from_f64(*v).map_or(serde_json::Value::Null, Into::into),
        ArgumentValue::Str { text, truncated } => {
            scouter_conventions::truncated(&truncated_text(text, *truncated), MAX_IO_STRING_CHARS).into()
        }
        ArgumentValue::Other { type_name } => format!("<{type_name}>").into(),
    }
}

/// A string the kernel captured in part carries the marker of a string cut.
fn truncated_text(text: &str, truncated: bool) -> String {
    if truncated {
        format!("{text}{TRUNCATION_MARKER}")
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::code::FunctionCode;

    fn call(span: u8, parent: Option<u8>, flags: u32) -> StartedCall {
        StartedCall {
            pid: 7,
            trace_id: TraceId([1; 16]),
            span_id: SpanId([span; 8]),
            parent_span_id: parent.map(|p| SpanId([p; 8])),
            trace_flags: 1,
            start: 100,
            function: Arc::new(CalledFunction {
                module: "shop.orders".into(),
                code: FunctionCode {
                    qualname: "Orders.place".into(),
                    name: "place".into(),
                    file: "/app/shop/orders.py".into(),
                    line: 12,
                    flags,
                    local_names: vec!["self".into(), "order_id".into()],
                },
            }),
            arguments: vec![
                ("order_id".into(), ArgumentValue::Int(42)),
                ("note".into(), ArgumentValue::None),
                ("item".into(), ArgumentValue::Str { text: "abc".into(), truncated: true }),
                ("data".into(), ArgumentValue::Other { type_name: "dict".into() }),
            ],
            resource: Arc::new(Resource::default()),
        }
    }

    #[test]
    fn a_returned_call_is_an_internal_span_named_by_its_qualified_name() {
        let mut spans = FunctionSpans::default();
        spans.started(call(2, Some(1), 0));
        let span = spans.returned(SpanId([2; 8]), 250, CallEnd::Returned).unwrap();
        assert_eq!(span.name, "Orders.place");
        assert_eq!(span.kind, SpanKind::Internal);
        assert_eq!((span.start_time_unix_nano, span.end_time_unix_nano), (100, 250));
        assert_eq!(span.parent_span_id, Some(SpanId([1; 8])));
        assert_eq!(span.status.code, StatusCode::Unset);
        let attribute = |key: &str| span.attributes.get(key).cloned();
        assert_eq!(attribute("code.function.name"), Some("Orders.place".into()));
        assert_eq!(attribute("code.line.number"), Some(AttributeValue::Int(12)));
        assert_eq!(attribute("function.module"), Some("shop.orders".into()));
        assert_eq!(attribute("function.type"), Some("sync".into()));
        assert_eq!(attribute("function.argument.order_id"), Some(AttributeValue::Int(42)));
        assert_eq!(attribute("function.argument.note"), Some("None".into()));
        assert_eq!(attribute("function.argument.item"), Some("abc...[truncated]".into()));
        assert_eq!(attribute("function.argument.data"), Some("<dict>".into()));
        let input: serde_json::Value = match attribute("scouter.tracing.input") {
            Some(AttributeValue::String(json)) => serde_json::from_str(&json).unwrap(),
            other => panic!("no input: {other:?}"),
        };
        assert_eq!(
            input,
            serde_json::json!({"order_id": 42, "note": null, "item": "abc...[truncated]", "data": "<dict>"})
        );
        assert!(spans.returned(SpanId([2; 8]), 300, CallEnd::Returned).is_none(), "ends once");
    }

    #[test]
    fn a_raised_exception_is_an_error_but_closing_a_generator_is_not() {
        let mut spans = FunctionSpans::default();
        spans.started(call(2, None, 0x80));
        let failed = spans.returned(SpanId([2; 8]), 200, CallEnd::Raised(Some("shop.OutOfStock".into()))).unwrap();
        assert_eq!(failed.status, Status { code: StatusCode::Error, message: "shop.OutOfStock".into() });
        assert_eq!(failed.attributes.get("exception.type"), Some(&"shop.OutOfStock".into()));
        assert_eq!(failed.attributes.get("error.type"), Some(&"shop.OutOfStock".into()));
        assert_eq!(failed.attributes.get("function.type"), Some(&"async".into()));
        spans.started(call(3, None, 0x20));
        let closed = spans.returned(SpanId([3; 8]), 200, CallEnd::Raised(Some("GeneratorExit".into()))).unwrap();
        assert_eq!(closed.status.code, StatusCode::Unset);
        assert_eq!(closed.attributes.get("function.type"), Some(&"generator".into()));
    }

    #[test]
    fn children_of_dropped_tentative_calls_move_to_their_parent() {
        let mut spans = FunctionSpans::default();
        spans.not_selected(SpanId([5; 8]), Some(SpanId([4; 8])));
        spans.not_selected(SpanId([6; 8]), Some(SpanId([5; 8])));
        spans.not_selected(SpanId([8; 8]), None);
        let mut child = Span::for_test(SpanKind::Client, SpanId([9; 8]));
        child.parent_span_id = Some(SpanId([6; 8]));
        spans.reparent(&mut child);
        assert_eq!(child.parent_span_id, Some(SpanId([4; 8])));
        child.parent_span_id = Some(SpanId([8; 8]));
        spans.reparent(&mut child);
        assert_eq!(child.parent_span_id, None, "a dropped root leaves its children roots");
    }

    #[test]
    fn an_evicted_call_has_no_span_and_its_children_move_to_its_parent() {
        let mut spans = FunctionSpans::default();
        spans.started(call(2, Some(1), 0));
        spans.evicted(SpanId([2; 8]));
        assert_eq!(spans.abandoned, 1);
        assert!(spans.returned(SpanId([2; 8]), 200, CallEnd::Returned).is_none());
        let mut child = Span::for_test(SpanKind::Internal, SpanId([3; 8]));
        child.parent_span_id = Some(SpanId([2; 8]));
        spans.reparent(&mut child);
        assert_eq!(child.parent_span_id, Some(SpanId([1; 8])));
    }

    #[test]
    fn calls_of_an_exited_process_are_abandoned() {
        let mut spans = FunctionSpans::default();
        spans.started(call(2, None, 0));
        spans.process_exited(7);
        assert_eq!(spans.abandoned, 1);
        assert!(spans.returned(SpanId([2; 8]), 200, CallEnd::Returned).is_none());
    }
}
