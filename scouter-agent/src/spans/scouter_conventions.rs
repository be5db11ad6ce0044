//! The Scouter SDK's span conventions, where the agent's spans have the same things to say:
//!
//! - the resource names its instrumentation in `scouter.scope` (the SDK writes
//!   `scouter.tracer.<version>`; the agent `scouter.agent.<version>`);
//! - a tag is the attribute `scouter.tracing.tag.<key>`; the server indexes a trace by the
//!   tags it finds as `baggage.scouter.tracing.tag.<key>`, which the SDK sets on the span that
//!   started with them, so the agent sets both on the spans that begin the trace's work in a
//!   process and the first one on every other;
//! - inputs are one JSON object in `scouter.tracing.input` (the server parses it as JSON), each
//!   string value cut at 1000 characters and marked `...[truncated]`, as the SDK's default.

use thiserror::Error;

use super::Span;

/// Resource attribute naming the instrumentation.
pub const SCOPE_KEY: &str = "scouter.scope";
/// Span attribute holding a function's inputs as a JSON object.
pub const INPUT_KEY: &str = "scouter.tracing.input";
const TAG_PREFIX: &str = "scouter.tracing.tag.";
const INDEXED_TAG_PREFIX: &str = "baggage.scouter.tracing.tag.";

/// Longest string value inside `scouter.tracing.input`, in characters (the SDK's default).
pub const MAX_IO_STRING_CHARS: usize = 1000;
/// Appended to a string that was cut, by the SDK and by the agent alike.
pub const TRUNCATION_MARKER: &str = "...[truncated]";

/// `scouter.scope` of every resource the agent describes.
pub fn scope() -> String {
    format!("scouter.agent.{}", env!("CARGO_PKG_VERSION"))
}

/// `text` cut to `max_chars` characters, marked when cut.
pub fn truncated(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}{TRUNCATION_MARKER}", &text[..cut]),
        None => text.to_owned(),
    }
}

/// A tag that `key=value` did not spell.
#[derive(Debug, Error, PartialEq)]
#[error("tag {0:?}: expected KEY=VALUE with a KEY of letters, digits, '_', '-' and '.'")]
pub struct TagError(String);

/// The configured tags, put on every span.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tags(Vec<(String, String)>);

impl Tags {
    /// Tags from `KEY=VALUE` strings; a key given twice keeps its last value.
    pub fn parse<S: AsRef<str>>(specs: &[S]) -> Result<Self, TagError> {
        let mut tags: Vec<(String, String)> = Vec::new();
        for spec in specs {
            let (key, value) = parse_tag(spec.as_ref())?;
            tags.retain(|(existing, _)| *existing != key);
            tags.push((key, value));
        }
        Ok(Tags(tags))
    }

    /// Tags `span`; a span that begins its process's part of a trace (no parent, or a parent
    /// in another process) also carries them in the form the server indexes traces by.
    pub fn apply(&self, span: &mut Span) {
        let begins_local_work = span.parent_span_id.is_none() || span.flags.remote_parent;
        for (key, value) in &self.0 {
            span.attributes.insert(format!("{TAG_PREFIX}{key}"), value.as_str().into());
            if begins_local_work {
                span.attributes.insert(format!("{INDEXED_TAG_PREFIX}{key}"), value.as_str().into());
            }
        }
    }
}

fn parse_tag(spec: &str) -> Result<(String, String), TagError> {
    let invalid = || TagError(spec.to_owned());
    let (key, value) = spec.split_once('=').ok_or_else(invalid)?;
    let key = key.trim();
    let key_is_valid =
        !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !key_is_valid {
        return Err(invalid());
    }
    Ok((key.to_owned(), value.trim().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spans::{AttributeValue, SpanId, SpanKind};

    #[test]
    fn a_long_string_is_cut_at_the_limit_and_marked() {
        assert_eq!(truncated("abc", 3), "abc");
        assert_eq!(truncated("abcd", 3), "abc...[truncated]");
        // Characters, not bytes: a multi-byte character is never split.
        assert_eq!(truncated("ééééé", 2), "éé...[truncated]");
        assert_eq!(truncated(&"x".repeat(1500), MAX_IO_STRING_CHARS).chars().count(), 1000 + TRUNCATION_MARKER.len());
    }

    #[test]
    fn tags_parse_from_key_value_and_refuse_anything_else() {
        let tags = Tags::parse(&["env=prod", "team = payments ", "env=staging"]).unwrap();
        let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        assert_eq!(tags, Tags(vec![pair("team", "payments"), pair("env", "staging")]));
        assert_eq!(Tags::parse(&["novalue"]), Err(TagError("novalue".into())));
        assert_eq!(Tags::parse(&["=x"]), Err(TagError("=x".into())));
        assert_eq!(Tags::parse(&["a b=x"]), Err(TagError("a b=x".into())));
        assert!(Tags::parse(&["empty="]).is_ok(), "an empty value is a value");
    }

    #[test]
    fn every_span_is_tagged_and_only_local_roots_carry_the_indexed_form() {
        let tags = Tags::parse(&["env=prod"]).unwrap();
        let tag = |span: &Span, key: &str| span.attributes.get(key).cloned();
        let prod = Some(AttributeValue::from("prod"));

        let mut root = Span::for_test(SpanKind::Server, SpanId([1; 8]));
        tags.apply(&mut root);
        assert_eq!(tag(&root, "scouter.tracing.tag.env"), prod);
        assert_eq!(tag(&root, "baggage.scouter.tracing.tag.env"), prod);

        let mut called = Span::for_test(SpanKind::Server, SpanId([2; 8]));
        called.parent_span_id = Some(SpanId([9; 8]));
        called.flags.remote_parent = true;
        tags.apply(&mut called);
        assert_eq!(tag(&called, "baggage.scouter.tracing.tag.env"), prod);

        let mut child = Span::for_test(SpanKind::Client, SpanId([3; 8]));
        child.parent_span_id = Some(SpanId([1; 8]));
        tags.apply(&mut child);
        assert_eq!(tag(&child, "scouter.tracing.tag.env"), prod);
        assert_eq!(tag(&child, "baggage.scouter.tracing.tag.env"), None);
    }
}
