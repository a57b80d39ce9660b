//! Typed views of Prometheus' HTTP API v1 answers (`/api/v1/query`, `query_range`, `series`,
//! `label/<name>/values`, `targets`, `alerts`, `rules`) and the envelope they come in:
//! `{"status":"success","data":…}` or `{"status":"error","errorType":…,"error":…}`.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::peers::http::{Answer, ApiError};

/// A label set (`__name__` included where Prometheus returns it).
pub type Labels = BTreeMap<String, String>;

/// One sample of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series' labels.
    pub labels: Labels,
    /// Evaluation time, Unix seconds.
    pub timestamp: f64,
    /// The value (`NaN` and infinities included).
    pub value: f64,
}

impl Sample {
    /// The value of label `name`.
    #[must_use]
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.get(name).map(String::as_str)
    }

    /// The metric name (`__name__`; absent after most aggregations).
    #[must_use]
    pub fn metric_name(&self) -> Option<&str> {
        self.label("__name__")
    }
}

/// One series of a range query.
#[derive(Debug, Clone, PartialEq)]
pub struct RangeSeries {
    /// The series' labels.
    pub labels: Labels,
    /// `(Unix seconds, value)` points, oldest first.
    pub points: Vec<(f64, f64)>,
}

/// What an instant query returned.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryResult {
    /// An instant vector (possibly empty: no data).
    Vector(Vec<Sample>),
    /// A scalar.
    Scalar {
        /// Evaluation time, Unix seconds.
        timestamp: f64,
        /// The value.
        value: f64,
    },
    /// A range vector (a query like `x[1m]`).
    Matrix(Vec<RangeSeries>),
    /// A string literal.
    String {
        /// Evaluation time, Unix seconds.
        timestamp: f64,
        /// The string.
        value: String,
    },
}

/// Health of a scrape target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetHealth {
    /// The last scrape succeeded.
    Up,
    /// The last scrape failed (see [`Target::last_error`]).
    Down,
    /// Not scraped yet.
    #[serde(other)]
    Unknown,
}

/// An active scrape target (`/api/v1/targets`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    /// The scrape job's name.
    #[serde(rename = "scrapePool")]
    pub job: String,
    /// The URL scraped.
    pub scrape_url: String,
    /// Health after the last scrape.
    pub health: TargetHealth,
    /// The last scrape's error (empty when it succeeded).
    #[serde(default)]
    pub last_error: String,
    /// When it was last scraped (RFC 3339; the zero time before the first scrape).
    #[serde(default)]
    pub last_scrape: String,
    /// The target's labels after relabelling (`job`, `instance`, ...).
    #[serde(default)]
    pub labels: Labels,
}

/// State of an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    /// The rule's expression returns nothing for it.
    Inactive,
    /// Active, but not yet for the rule's `for` duration.
    Pending,
    /// Firing.
    Firing,
}

/// An active alert (`/api/v1/alerts`, or inside a rule).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    /// Labels (`alertname`, the rule's and the series' labels).
    pub labels: Labels,
    /// Annotations (summary, description, ...), templates expanded.
    #[serde(default)]
    pub annotations: Labels,
    /// Pending or firing.
    pub state: AlertState,
    /// Since when it is active (RFC 3339).
    #[serde(default)]
    pub active_at: Option<String>,
    /// The expression's value when it was last evaluated (as Prometheus formats it).
    #[serde(default)]
    pub value: String,
}

impl Alert {
    /// The `alertname` label.
    #[must_use]
    pub fn name(&self) -> &str {
        self.labels.get("alertname").map_or("", String::as_str)
    }

    /// The value of label `name`.
    #[must_use]
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.get(name).map(String::as_str)
    }
}

/// Whether a rule alerts or records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleKind {
    /// An alerting rule.
    Alerting,
    /// A recording rule.
    Recording,
}

/// A loaded rule (`/api/v1/rules`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// Alert name or recorded series name.
    pub name: String,
    /// The `PromQL` expression.
    pub query: String,
    /// Alerting or recording.
    #[serde(rename = "type")]
    pub kind: RuleKind,
    /// `ok`, `err` or `unknown` (not evaluated yet).
    #[serde(default)]
    pub health: String,
    /// The last evaluation's error.
    #[serde(default)]
    pub last_error: String,
    /// Alerting rules: the worst state of their alerts.
    #[serde(default)]
    pub state: Option<AlertState>,
    /// Alerting rules: the `for` duration in seconds.
    #[serde(default)]
    pub duration: f64,
    /// Alerting rules: their active alerts.
    #[serde(default)]
    pub alerts: Vec<Alert>,
    /// The rule's labels.
    #[serde(default)]
    pub labels: Labels,
    /// Alerting rules: their annotations (templates unexpanded).
    #[serde(default)]
    pub annotations: Labels,
}

/// A rule group (`/api/v1/rules`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RuleGroup {
    /// Group name.
    pub name: String,
    /// The rule file it came from.
    pub file: String,
    /// Evaluation interval, seconds.
    #[serde(default)]
    pub interval: f64,
    /// Its rules.
    pub rules: Vec<Rule>,
}

#[derive(Deserialize)]
struct Envelope {
    status: String,
    #[serde(default)]
    data: Option<Value>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

/// The `data` of a successful answer, decoded as `T`; the error text of a failed one.
pub(super) fn data<T: serde::de::DeserializeOwned>(answer: &Answer) -> Result<T, ApiError> {
    let envelope: Envelope = match serde_json::from_str(&answer.body) {
        Ok(e) => e,
        Err(_) if !(200..300).contains(&answer.status) => {
            return Err(answer.rejected(answer.body.trim().to_owned()));
        }
        Err(e) => return Err(answer.unexpected(format!("not a Prometheus API answer: {e}"))),
    };
    if envelope.status != "success" || !(200..300).contains(&answer.status) {
        let message = format!(
            "{}: {}",
            envelope.error_type.as_deref().unwrap_or("error"),
            envelope.error.as_deref().unwrap_or("(no error text)")
        );
        return Err(answer.rejected(message));
    }
    let data = envelope.data.unwrap_or(Value::Null);
    serde_json::from_value(data).map_err(|e| answer.unexpected(format!("unexpected data: {e}")))
}

#[derive(Deserialize)]
struct RawSample {
    #[serde(default)]
    metric: Labels,
    value: (f64, String),
}

#[derive(Deserialize)]
struct RawRange {
    #[serde(default)]
    metric: Labels,
    #[serde(default)]
    values: Vec<(f64, String)>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawResult {
    result_type: String,
    result: Value,
}

/// Parses a sample value as Prometheus writes it (`"1.5"`, `"NaN"`, `"+Inf"`, `"-Inf"`).
pub(super) fn parse_value(text: &str) -> Option<f64> {
    text.parse().ok()
}

fn value(answer: &Answer, text: &str) -> Result<f64, ApiError> {
    parse_value(text)
        .ok_or_else(|| answer.unexpected(format!("sample value {text:?} is not a number")))
}

fn range(answer: &Answer, raw: Vec<RawRange>) -> Result<Vec<RangeSeries>, ApiError> {
    raw.into_iter()
        .map(|s| {
            let points = s
                .values
                .iter()
                .map(|(t, v)| Ok((*t, value(answer, v)?)))
                .collect::<Result<_, ApiError>>()?;
            Ok(RangeSeries {
                labels: s.metric,
                points,
            })
        })
        .collect()
}

/// The typed result of `/api/v1/query` or `/api/v1/query_range`.
pub(super) fn query_result(answer: &Answer) -> Result<QueryResult, ApiError> {
    let raw: RawResult = data(answer)?;
    let decode =
        |e: serde_json::Error| answer.unexpected(format!("bad {} result: {e}", raw.result_type));
    match raw.result_type.as_str() {
        "vector" => {
            let samples: Vec<RawSample> =
                serde_json::from_value(raw.result.clone()).map_err(decode)?;
            samples
                .into_iter()
                .map(|s| {
                    Ok(Sample {
                        labels: s.metric,
                        timestamp: s.value.0,
                        value: value(answer, &s.value.1)?,
                    })
                })
                .collect::<Result<_, _>>()
                .map(QueryResult::Vector)
        }
        "scalar" => {
            let (timestamp, text): (f64, String) =
                serde_json::from_value(raw.result.clone()).map_err(decode)?;
            Ok(QueryResult::Scalar {
                timestamp,
                value: value(answer, &text)?,
            })
        }
        "matrix" => {
            let series: Vec<RawRange> =
                serde_json::from_value(raw.result.clone()).map_err(decode)?;
            range(answer, series).map(QueryResult::Matrix)
        }
        "string" => {
            let (timestamp, value): (f64, String) =
                serde_json::from_value(raw.result.clone()).map_err(decode)?;
            Ok(QueryResult::String { timestamp, value })
        }
        other => Err(answer.unexpected(format!("unknown resultType {other:?}"))),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct TargetsData {
    pub active_targets: Vec<Target>,
}

#[derive(Deserialize)]
pub(super) struct AlertsData {
    pub alerts: Vec<Alert>,
}

#[derive(Deserialize)]
pub(super) struct RulesData {
    pub groups: Vec<RuleGroup>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status,
            body: body.to_owned(),
            what: "query `x`".to_owned(),
            url: "http://127.0.0.1:1/api/v1/query".to_owned(),
            peer: "prometheus",
        }
    }

    #[test]
    fn special_values_parse() {
        assert_eq!(parse_value("1.5"), Some(1.5));
        assert_eq!(parse_value("+Inf"), Some(f64::INFINITY));
        assert_eq!(parse_value("-Inf"), Some(f64::NEG_INFINITY));
        assert!(parse_value("NaN").is_some_and(f64::is_nan));
        assert_eq!(parse_value("1e+00"), Some(1.0));
    }

    #[test]
    fn vector_and_scalar_results() {
        let a = answer(
            200,
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"__name__":"up","job":"nomad"},"value":[1700000000.5,"1"]}]}}"#,
        );
        let QueryResult::Vector(v) = query_result(&a).expect("vector") else {
            panic!("not a vector")
        };
        assert_eq!(v[0].metric_name(), Some("up"));
        assert_eq!(v[0].label("job"), Some("nomad"));
        assert!((v[0].value - 1.0).abs() < f64::EPSILON);
        let a = answer(
            200,
            r#"{"status":"success","data":{"resultType":"scalar","result":[1.0,"NaN"]}}"#,
        );
        assert!(
            matches!(query_result(&a), Ok(QueryResult::Scalar { value, .. }) if value.is_nan())
        );
    }

    #[test]
    fn errors_carry_the_query_and_prometheus_text() {
        let a = answer(
            400,
            r#"{"status":"error","errorType":"bad_data","error":"1:4: parse error: unclosed left brace"}"#,
        );
        let err = query_result(&a).expect_err("rejected");
        assert_eq!(err.status(), Some(400));
        let text = err.to_string();
        assert!(text.contains("query `x`"), "{text}");
        assert!(text.contains("bad_data: 1:4: parse error"), "{text}");
    }
}
