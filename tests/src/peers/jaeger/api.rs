//! Typed views of Jaeger's query HTTP API answers (`/api/services`, `/api/traces`,
//! `/api/traces/{id}`): traces with spans, CHILD_OF/FOLLOWS_FROM references, typed tags, logs
//! (OTLP span events become logs whose `event` field is the event name) and the emitting
//! process, resolved per span. [`Trace::tree`] builds the span tree from CHILD_OF references.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use serde::Deserialize;
use serde_json::Value;

use crate::peers::http::{Answer, ApiError};

/// A tag (span attribute, resource attribute or event field) value.
#[derive(Debug, Clone, PartialEq)]
pub enum TagValue {
    /// `string`.
    Str(String),
    /// `bool`.
    Bool(bool),
    /// `int64`.
    Int(i64),
    /// `float64`.
    Float(f64),
    /// `binary` (as Jaeger encodes it).
    Binary(String),
}

impl TagValue {
    /// The string, for a string tag.
    #[must_use]
    pub fn as_str(&self) -> Option<&str> {
        match self {
            TagValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, for an int64 tag.
    #[must_use]
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            TagValue::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The boolean, for a bool tag.
    #[must_use]
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            TagValue::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The number, for an int64 or float64 tag.
    #[must_use]
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            TagValue::Int(i) => Some(*i as f64),
            TagValue::Float(f) => Some(*f),
            _ => None,
        }
    }
}

impl fmt::Display for TagValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TagValue::Str(s) | TagValue::Binary(s) => f.write_str(s),
            TagValue::Bool(b) => write!(f, "{b}"),
            TagValue::Int(i) => write!(f, "{i}"),
            TagValue::Float(x) => write!(f, "{x}"),
        }
    }
}

/// A key and its typed value.
#[derive(Debug, Clone, PartialEq)]
pub struct Tag {
    /// The attribute key.
    pub key: String,
    /// Its value.
    pub value: TagValue,
}

/// A span log: an OTLP span event.
#[derive(Debug, Clone, PartialEq)]
pub struct Log {
    /// When, Unix microseconds.
    pub timestamp: u64,
    /// Its fields: the event name under `event`, then the event's attributes.
    pub fields: Vec<Tag>,
}

impl Log {
    /// The event name (field `event`).
    #[must_use]
    pub fn name(&self) -> Option<&str> {
        find_tag(&self.fields, "event").and_then(TagValue::as_str)
    }

    /// The value of field `key`.
    #[must_use]
    pub fn field(&self, key: &str) -> Option<&TagValue> {
        find_tag(&self.fields, key)
    }
}

/// The process (OTLP resource) that emitted a span.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Process {
    /// `service.name`.
    pub service_name: String,
    /// The other resource attributes.
    pub tags: Vec<Tag>,
}

impl Process {
    /// The value of resource attribute `key`.
    #[must_use]
    pub fn tag(&self, key: &str) -> Option<&TagValue> {
        find_tag(&self.tags, key)
    }
}

/// How a span refers to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefType {
    /// The other span is the parent.
    ChildOf,
    /// A link.
    FollowsFrom,
}

/// A reference to another span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// CHILD_OF (the parent) or FOLLOWS_FROM.
    pub ref_type: RefType,
    /// The other span's trace id (normalized, see [`normalize_id`]).
    pub trace_id: String,
    /// The other span's id (normalized).
    pub span_id: String,
}

/// One span.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// Trace id, 32 lowercase hex digits.
    pub trace_id: String,
    /// Span id, 16 lowercase hex digits.
    pub span_id: String,
    /// The span name.
    pub operation_name: String,
    /// References (the parent is the CHILD_OF one).
    pub references: Vec<Reference>,
    /// Start, Unix microseconds.
    pub start_time: u64,
    /// Duration, microseconds.
    pub duration: u64,
    /// Attributes, plus what Jaeger derives: `span.kind`, `otel.status_code`,
    /// `otel.status_description`, `error` (true when the status is Error), `otel.scope.name`.
    pub tags: Vec<Tag>,
    /// Span events.
    pub logs: Vec<Log>,
    /// The emitting process.
    pub process: Process,
}

impl Span {
    /// The value of attribute `key`.
    #[must_use]
    pub fn tag(&self, key: &str) -> Option<&TagValue> {
        find_tag(&self.tags, key)
    }

    /// The string value of attribute `key`.
    #[must_use]
    pub fn tag_str(&self, key: &str) -> Option<&str> {
        self.tag(key).and_then(TagValue::as_str)
    }

    /// The parent's span id (first CHILD_OF reference within the same trace).
    #[must_use]
    pub fn parent_id(&self) -> Option<&str> {
        self.references
            .iter()
            .find(|r| r.ref_type == RefType::ChildOf && r.trace_id == self.trace_id)
            .map(|r| r.span_id.as_str())
    }

    /// Whether the span's status is Error (Jaeger's `error=true` tag).
    #[must_use]
    pub fn is_error(&self) -> bool {
        self.tag("error").and_then(TagValue::as_bool) == Some(true)
    }

    /// The span events named `name`.
    pub fn events<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Log> + 'a {
        self.logs.iter().filter(move |l| l.name() == Some(name))
    }
}

/// One trace.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    /// Trace id, 32 lowercase hex digits.
    pub trace_id: String,
    /// Its spans, in Jaeger's order.
    pub spans: Vec<Span>,
}

/// A span with its children (by CHILD_OF reference), children ordered by start time.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanNode<'a> {
    /// The span.
    pub span: &'a Span,
    /// Spans whose parent it is.
    pub children: Vec<SpanNode<'a>>,
}

impl SpanNode<'_> {
    /// This node and all its descendants, depth first.
    #[must_use]
    pub fn descendants(&self) -> Vec<&Span> {
        let mut out = vec![self.span];
        for child in &self.children {
            out.extend(child.descendants());
        }
        out
    }

    fn render(&self, depth: usize, out: &mut String) {
        let _ = writeln!(
            out,
            "{:indent$}{} [{}] {}µs{}",
            "",
            self.span.operation_name,
            self.span.span_id,
            self.span.duration,
            if self.span.is_error() { " ERROR" } else { "" },
            indent = depth * 2
        );
        for child in &self.children {
            child.render(depth + 1, out);
        }
    }
}

impl Trace {
    /// The span with id `span_id`.
    #[must_use]
    pub fn span(&self, span_id: &str) -> Option<&Span> {
        let id = normalize_id(span_id, 16);
        self.spans.iter().find(|s| s.span_id == id)
    }

    /// Spans named `operation`.
    pub fn spans_named<'a>(&'a self, operation: &'a str) -> impl Iterator<Item = &'a Span> + 'a {
        self.spans
            .iter()
            .filter(move |s| s.operation_name == operation)
    }

    /// The span tree: roots are spans without a parent in this trace (a parent not received
    /// makes its children roots too), ordered by start time, as are children.
    #[must_use]
    pub fn tree(&self) -> Vec<SpanNode<'_>> {
        fn build<'a>(span: &'a Span, children: &BTreeMap<&str, Vec<&'a Span>>) -> SpanNode<'a> {
            let mut kids: Vec<&Span> = children
                .get(span.span_id.as_str())
                .cloned()
                .unwrap_or_default();
            kids.sort_by_key(|s| s.start_time);
            SpanNode {
                span,
                children: kids.into_iter().map(|k| build(k, children)).collect(),
            }
        }
        let mut children: BTreeMap<&str, Vec<&Span>> = BTreeMap::new();
        let mut roots = Vec::new();
        for span in &self.spans {
            match span.parent_id() {
                Some(parent) if self.span(parent).is_some() => {
                    children.entry(parent).or_default().push(span);
                }
                _ => roots.push(span),
            }
        }
        roots.sort_by_key(|s| s.start_time);
        roots.into_iter().map(|r| build(r, &children)).collect()
    }

    /// The tree as indented text (`name [span id] duration`), for messages.
    #[must_use]
    pub fn render_tree(&self) -> String {
        let mut out = String::new();
        for root in self.tree() {
            root.render(0, &mut out);
        }
        out
    }
}

fn find_tag<'a>(tags: &'a [Tag], key: &str) -> Option<&'a TagValue> {
    tags.iter().find(|t| t.key == key).map(|t| &t.value)
}

/// Lowercase hex id left-padded with zeros to `width` digits: Jaeger drops a zero high half
/// of a trace id (`00000000000000001234…` comes back as 16 digits).
#[must_use]
pub fn normalize_id(id: &str, width: usize) -> String {
    let id = id.trim().to_ascii_lowercase();
    format!("{id:0>width$}")
}

// ---- wire format -------------------------------------------------------------------------

#[derive(Deserialize)]
struct RawTag {
    key: String,
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    value: Value,
}

impl RawTag {
    fn into_tag(self) -> Tag {
        let value = match (self.kind.as_str(), self.value) {
            ("float64", Value::Number(n)) => TagValue::Float(n.as_f64().unwrap_or(f64::NAN)),
            ("binary", Value::String(s)) => TagValue::Binary(s),
            (_, Value::String(s)) => TagValue::Str(s),
            (_, Value::Bool(b)) => TagValue::Bool(b),
            (_, Value::Number(n)) => match n.as_i64() {
                Some(i) => TagValue::Int(i),
                None => TagValue::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            (_, other) => TagValue::Str(other.to_string()),
        };
        Tag {
            key: self.key,
            value,
        }
    }
}

fn tags(raw: Option<Vec<RawTag>>) -> Vec<Tag> {
    raw.unwrap_or_default()
        .into_iter()
        .map(RawTag::into_tag)
        .collect()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawReference {
    ref_type: String,
    #[serde(rename = "traceID")]
    trace_id: String,
    #[serde(rename = "spanID")]
    span_id: String,
}

#[derive(Deserialize)]
struct RawLog {
    timestamp: u64,
    #[serde(default)]
    fields: Option<Vec<RawTag>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSpan {
    #[serde(rename = "traceID")]
    trace_id: String,
    #[serde(rename = "spanID")]
    span_id: String,
    operation_name: String,
    #[serde(default)]
    references: Option<Vec<RawReference>>,
    start_time: u64,
    duration: u64,
    #[serde(default)]
    tags: Option<Vec<RawTag>>,
    #[serde(default)]
    logs: Option<Vec<RawLog>>,
    #[serde(rename = "processID", default)]
    process_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawProcess {
    service_name: String,
    #[serde(default)]
    tags: Option<Vec<RawTag>>,
}

#[derive(Deserialize)]
struct RawTrace {
    #[serde(rename = "traceID")]
    trace_id: String,
    #[serde(default)]
    spans: Vec<RawSpan>,
    #[serde(default)]
    processes: BTreeMap<String, RawProcess>,
}

#[derive(Deserialize)]
struct RawError {
    #[serde(default)]
    msg: String,
}

/// `{"data": …, "errors": [{"code", "msg"}]}`.
#[derive(Deserialize)]
struct Envelope<T> {
    #[serde(default = "Option::default")]
    data: Option<T>,
    #[serde(default)]
    errors: Option<Vec<RawError>>,
}

impl RawTrace {
    fn into_trace(self) -> Trace {
        let processes: BTreeMap<String, Process> = self
            .processes
            .into_iter()
            .map(|(id, p)| {
                (
                    id,
                    Process {
                        service_name: p.service_name,
                        tags: tags(p.tags),
                    },
                )
            })
            .collect();
        let spans = self
            .spans
            .into_iter()
            .map(|s| Span {
                trace_id: normalize_id(&s.trace_id, 32),
                span_id: normalize_id(&s.span_id, 16),
                operation_name: s.operation_name,
                references: s
                    .references
                    .unwrap_or_default()
                    .into_iter()
                    .map(|r| Reference {
                        ref_type: if r.ref_type.eq_ignore_ascii_case("CHILD_OF") {
                            RefType::ChildOf
                        } else {
                            RefType::FollowsFrom
                        },
                        trace_id: normalize_id(&r.trace_id, 32),
                        span_id: normalize_id(&r.span_id, 16),
                    })
                    .collect(),
                start_time: s.start_time,
                duration: s.duration,
                tags: tags(s.tags),
                logs: s
                    .logs
                    .unwrap_or_default()
                    .into_iter()
                    .map(|l| Log {
                        timestamp: l.timestamp,
                        fields: tags(l.fields),
                    })
                    .collect(),
                process: processes.get(&s.process_id).cloned().unwrap_or_default(),
            })
            .collect();
        Trace {
            trace_id: normalize_id(&self.trace_id, 32),
            spans,
        }
    }
}

/// The `data` of an answer, or the `errors[].msg` of a failed one.
fn data<T: serde::de::DeserializeOwned>(answer: &Answer) -> Result<T, ApiError> {
    let envelope: Envelope<T> = match serde_json::from_str(&answer.body) {
        Ok(e) => e,
        Err(_) if !(200..300).contains(&answer.status) => {
            return Err(answer.rejected(answer.body.trim().to_owned()));
        }
        Err(e) => return Err(answer.unexpected(format!("not a Jaeger query API answer: {e}"))),
    };
    let errors: Vec<String> = envelope
        .errors
        .unwrap_or_default()
        .into_iter()
        .map(|e| e.msg)
        .collect();
    if !errors.is_empty() || !(200..300).contains(&answer.status) {
        return Err(answer.rejected(errors.join("; ")));
    }
    envelope
        .data
        .ok_or_else(|| answer.unexpected("no `data` in the answer"))
}

/// `/api/services`.
pub(super) fn services(answer: &Answer) -> Result<Vec<String>, ApiError> {
    let services: Option<Vec<String>> = data(answer)?;
    Ok(services.unwrap_or_default())
}

/// `/api/traces?…` and `/api/traces/{id}`.
pub(super) fn traces(answer: &Answer) -> Result<Vec<Trace>, ApiError> {
    let raw: Option<Vec<RawTrace>> = data(answer)?;
    Ok(raw
        .unwrap_or_default()
        .into_iter()
        .map(RawTrace::into_trace)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = r#"{"data":[{"traceID":"abc","spans":[
      {"traceID":"abc","spanID":"2","operationName":"child","references":[{"refType":"CHILD_OF","traceID":"abc","spanID":"1"}],
       "startTime":20,"duration":5,"tags":[{"key":"n","type":"int64","value":7},{"key":"error","type":"bool","value":true}],
       "logs":[{"timestamp":21,"fields":[{"key":"event","type":"string","value":"exec"},{"key":"x","type":"string","value":"y"}]}],
       "processID":"p1","warnings":null},
      {"traceID":"abc","spanID":"1","operationName":"root","references":[],"startTime":10,"duration":50,
       "tags":[{"key":"s","type":"string","value":"v"}],"logs":[],"processID":"p1","warnings":null}],
      "processes":{"p1":{"serviceName":"svc","tags":[{"key":"host.name","type":"string","value":"h"}]}},"warnings":null}],
      "total":0,"limit":0,"offset":0,"errors":null}"#;

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status,
            body: body.to_owned(),
            what: "trace abc".to_owned(),
            url: "http://127.0.0.1:1/api/traces/abc".to_owned(),
            peer: "jaeger",
        }
    }

    #[test]
    fn trace_decodes_and_builds_its_tree() {
        let traces = traces(&answer(200, TRACE)).expect("decodes");
        let trace = &traces[0];
        assert_eq!(trace.trace_id, format!("{:0>32}", "abc"));
        let child = trace.span("2").expect("child");
        assert_eq!(child.parent_id(), Some("0000000000000001"));
        assert_eq!(child.tag("n").and_then(TagValue::as_i64), Some(7));
        assert!(child.is_error());
        assert_eq!(child.events("exec").count(), 1);
        assert_eq!(
            child.logs[0].field("x").and_then(TagValue::as_str),
            Some("y")
        );
        assert_eq!(child.process.service_name, "svc");
        assert_eq!(
            child.process.tag("host.name").and_then(TagValue::as_str),
            Some("h")
        );
        let tree = trace.tree();
        assert_eq!(tree.len(), 1);
        assert_eq!(tree[0].span.operation_name, "root");
        assert_eq!(tree[0].children[0].span.operation_name, "child");
        assert_eq!(tree[0].descendants().len(), 2);
        assert!(
            trace
                .render_tree()
                .contains("  child [0000000000000002] 5µs ERROR")
        );
    }

    #[test]
    fn not_found_is_rejected_with_jaegers_text() {
        let err = traces(&answer(
            404,
            r#"{"data":null,"total":0,"limit":0,"offset":0,"errors":[{"code":404,"msg":"trace not found"}]}"#,
        ))
        .expect_err("404");
        assert!(err.is_not_found());
        assert!(err.to_string().contains("trace not found"), "{err}");
    }
}
