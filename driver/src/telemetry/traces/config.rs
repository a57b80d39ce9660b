//! OTLP trace export settings: the plugin config's `otlp { endpoint, protocol, headers, timeout,
//! max_process_spans }` block, or, as with any OpenTelemetry SDK, the standard
//! `OTEL_EXPORTER_OTLP_[TRACES_]{ENDPOINT,PROTOCOL,HEADERS,TIMEOUT}` variables in the agent's
//! environment (the block wins). Validated at SetConfig with errors naming the field.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::ConfigError;

/// Default per-request timeout (the OTLP exporter specification's).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default cap of process spans per task run.
pub const DEFAULT_MAX_PROCESS_SPANS: usize = 1000;

/// How spans travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl Protocol {
    fn parse(field: &'static str, s: &str) -> Result<Self, ConfigError> {
        match s {
            "grpc" => Ok(Self::Grpc),
            "http/protobuf" => Ok(Self::HttpProtobuf),
            other => Err(ConfigError::Invalid {
                field,
                problem: format!("{other:?} is not a supported OTLP protocol"),
                fix: "use \"grpc\" or \"http/protobuf\"".into(),
            }),
        }
    }

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::HttpProtobuf => "http/protobuf",
        }
    }
}

/// Where and how traces are exported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpConfig {
    /// The full URL requests go to (for http/protobuf, with its `/v1/traces` path).
    pub endpoint: String,
    pub protocol: Protocol,
    pub headers: BTreeMap<String, String>,
    pub timeout: Duration,
    pub max_process_spans: usize,
    /// Where the settings came from, for the logs: `plugin config` or `environment`.
    pub source: &'static str,
}

/// The `otlp` block as Nomad decodes it.
#[derive(Debug, Default, serde::Deserialize)]
pub struct RawOtlp {
    pub endpoint: Option<String>,
    pub protocol: Option<String>,
    pub headers: Option<BTreeMap<String, String>>,
    pub timeout: Option<String>,
    pub max_process_spans: Option<crate::config::number::Number>,
}

fn check_endpoint(field: &'static str, endpoint: &str) -> Result<(), ConfigError> {
    let bad = |problem: String| ConfigError::Invalid {
        field,
        problem,
        fix: "give a URL such as \"http://127.0.0.1:4317\" (grpc) or \"http://127.0.0.1:4318\" \
              (http/protobuf)"
            .into(),
    };
    if endpoint.starts_with("https://") {
        return Err(ConfigError::Invalid {
            field,
            problem: format!(
                "{endpoint:?} needs TLS, which this build of the driver does not have"
            ),
            fix: "export to a collector on this host over http:// (e.g. an OpenTelemetry \
                  Collector that forwards to your backend over TLS)"
                .into(),
        });
    }
    let rest = endpoint
        .strip_prefix("http://")
        .ok_or_else(|| bad(format!("{endpoint:?} does not start with http://")))?;
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(bad(format!("{endpoint:?} has no host")));
    }
    if let Some((_, port)) = host.rsplit_once(':')
        && !host.ends_with(']')
        && port.parse::<u16>().is_err()
    {
        return Err(bad(format!("{endpoint:?} has an invalid port {port:?}")));
    }
    endpoint
        .parse::<http::Uri>()
        .map_err(|e| bad(format!("{endpoint:?} is not a valid URL: {e}")))?;
    Ok(())
}

fn check_headers(
    field: &'static str,
    headers: &BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    for (k, v) in headers {
        let name_ok = http::HeaderName::from_bytes(k.as_bytes()).is_ok();
        let value_ok = http::HeaderValue::from_str(v).is_ok();
        if !name_ok || !value_ok {
            return Err(ConfigError::Invalid {
                field,
                problem: format!(
                    "{k:?} = {v:?} is not a valid HTTP header ({})",
                    if name_ok { "bad value" } else { "bad name" }
                ),
                fix: "use header names of letters, digits and dashes, and printable ASCII \
                      values, e.g. headers = { \"x-api-key\" = \"secret\" }"
                    .into(),
            });
        }
    }
    Ok(())
}

/// Adds the signal path to an http/protobuf base endpoint (`http://h:4318` ->
/// `http://h:4318/v1/traces`), as the OTLP exporter specification does for the generic endpoint.
fn with_traces_path(endpoint: &str) -> String {
    let after_scheme = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    match after_scheme.find('/') {
        Some(i) if !after_scheme[i..].trim_end_matches('/').is_empty() => endpoint.to_owned(),
        _ => format!("{}/v1/traces", endpoint.trim_end_matches('/')),
    }
}

/// `k1=v1,k2=v2` (values URL-decoded), as `OTEL_EXPORTER_OTLP_HEADERS` and
/// `OTEL_RESOURCE_ATTRIBUTES` are written.
#[must_use]
pub fn parse_pairs(s: &str) -> BTreeMap<String, String> {
    s.split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), percent_decode(v.trim())))
        .filter(|(k, _)| !k.is_empty())
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl OtlpConfig {
    /// From the plugin config block (`Some`) or else the environment (`env` looks a variable up);
    /// `Ok(None)`: trace export is off.
    pub fn resolve(
        raw: Option<RawOtlp>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, ConfigError> {
        let env = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        match raw {
            Some(raw) => Self::from_block(raw).map(Some),
            None => Self::from_env(&env),
        }
    }

    fn from_block(raw: RawOtlp) -> Result<Self, ConfigError> {
        let protocol = match raw.protocol.as_deref().filter(|p| !p.is_empty()) {
            Some(p) => Protocol::parse("otlp.protocol", p)?,
            None => Protocol::Grpc,
        };
        let endpoint =
            raw.endpoint
                .filter(|e| !e.is_empty())
                .ok_or_else(|| ConfigError::Invalid {
                    field: "otlp.endpoint",
                    problem: "the otlp block has no endpoint".into(),
                    fix: "set otlp { endpoint = \"http://127.0.0.1:4317\" } or remove the block"
                        .into(),
                })?;
        check_endpoint("otlp.endpoint", &endpoint)?;
        let headers = raw.headers.unwrap_or_default();
        check_headers("otlp.headers", &headers)?;
        let timeout = match raw.timeout.filter(|t| !t.is_empty()) {
            Some(t) => crate::config::duration::parse("otlp.timeout", &t)?,
            None => DEFAULT_TIMEOUT,
        };
        if timeout.is_zero() {
            return Err(ConfigError::Invalid {
                field: "otlp.timeout",
                problem: "a zero timeout would fail every export".into(),
                fix: "give a duration such as \"10s\"".into(),
            });
        }
        let max_process_spans = match raw
            .max_process_spans
            .map(|n| n.as_i64("otlp.max_process_spans"))
            .transpose()?
        {
            None => DEFAULT_MAX_PROCESS_SPANS,
            Some(n) if n >= 0 => n as usize,
            Some(n) => {
                return Err(ConfigError::Invalid {
                    field: "otlp.max_process_spans",
                    problem: format!("{n} is negative"),
                    fix: "give the most process spans one task run may export, e.g. 1000 (0: \
                          only the task's own spans)"
                        .into(),
                });
            }
        };
        Ok(Self {
            endpoint: match protocol {
                Protocol::Grpc => endpoint,
                Protocol::HttpProtobuf => with_traces_path(&endpoint),
            },
            protocol,
            headers,
            timeout,
            max_process_spans,
            source: "plugin config",
        })
    }

    fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Option<Self>, ConfigError> {
        let either = |specific: &str, generic: &str| env(specific).or_else(|| env(generic));
        let protocol = match either(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ) {
            Some(p) => Protocol::parse("OTEL_EXPORTER_OTLP_PROTOCOL", p.trim())?,
            None => Protocol::Grpc,
        };
        let endpoint = match (
            env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            env("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            (Some(e), _) => {
                check_endpoint("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &e)?;
                e
            }
            (None, Some(e)) => {
                check_endpoint("OTEL_EXPORTER_OTLP_ENDPOINT", &e)?;
                match protocol {
                    Protocol::Grpc => e,
                    Protocol::HttpProtobuf => with_traces_path(&e),
                }
            }
            (None, None) => return Ok(None),
        };
        let headers = either(
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "OTEL_EXPORTER_OTLP_HEADERS",
        )
        .map(|h| parse_pairs(&h))
        .unwrap_or_default();
        check_headers("OTEL_EXPORTER_OTLP_HEADERS", &headers)?;
        let timeout = match either(
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ) {
            Some(ms) => {
                Duration::from_millis(ms.trim().parse().map_err(|_| ConfigError::Invalid {
                    field: "OTEL_EXPORTER_OTLP_TIMEOUT",
                    problem: format!("{ms:?} is not a number of milliseconds"),
                    fix: "give milliseconds, e.g. OTEL_EXPORTER_OTLP_TIMEOUT=10000".into(),
                })?)
            }
            None => DEFAULT_TIMEOUT,
        };
        Ok(Some(Self {
            endpoint,
            protocol,
            headers,
            timeout,
            max_process_spans: DEFAULT_MAX_PROCESS_SPANS,
            source: "environment",
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn off_without_block_or_environment() {
        assert_eq!(OtlpConfig::resolve(None, &env_of(&[])).expect("ok"), None);
    }

    #[test]
    fn the_environment_alone_turns_export_on_and_the_block_wins() {
        let env = env_of(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=a%20b,x=1"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
        ]);
        let c = OtlpConfig::resolve(None, &env).expect("ok").expect("on");
        assert_eq!(c.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(c.protocol, Protocol::HttpProtobuf);
        assert_eq!(c.headers["api-key"], "a b");
        assert_eq!(c.timeout, Duration::from_millis(2500));
        assert_eq!(c.source, "environment");
        let block = RawOtlp {
            endpoint: Some("http://127.0.0.1:4317".into()),
            ..RawOtlp::default()
        };
        let c = OtlpConfig::resolve(Some(block), &env)
            .expect("ok")
            .expect("on");
        assert_eq!(c.endpoint, "http://127.0.0.1:4317");
        assert_eq!(c.protocol, Protocol::Grpc);
        assert_eq!(c.source, "plugin config");
        let specific = env_of(&[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318/custom"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
        ]);
        let c = OtlpConfig::resolve(None, &specific)
            .expect("ok")
            .expect("on");
        assert_eq!(c.endpoint, "http://c:4318/custom", "used as is");
    }

    #[test]
    fn invalid_settings_name_the_field() {
        let cases: Vec<(RawOtlp, &str)> = vec![
            (RawOtlp::default(), "otlp.endpoint"),
            (
                RawOtlp {
                    endpoint: Some("collector:4317".into()),
                    ..RawOtlp::default()
                },
                "otlp.endpoint",
            ),
            (
                RawOtlp {
                    endpoint: Some("https://collector.example:4317".into()),
                    ..RawOtlp::default()
                },
                "otlp.endpoint",
            ),
            (
                RawOtlp {
                    endpoint: Some("http://c:99999".into()),
                    ..RawOtlp::default()
                },
                "otlp.endpoint",
            ),
            (
                RawOtlp {
                    endpoint: Some("http://c:4317".into()),
                    protocol: Some("http/json".into()),
                    ..RawOtlp::default()
                },
                "otlp.protocol",
            ),
            (
                RawOtlp {
                    endpoint: Some("http://c:4317".into()),
                    headers: Some(BTreeMap::from([("bad header".into(), "v".into())])),
                    ..RawOtlp::default()
                },
                "otlp.headers",
            ),
            (
                RawOtlp {
                    endpoint: Some("http://c:4317".into()),
                    timeout: Some("soon".into()),
                    ..RawOtlp::default()
                },
                "otlp.timeout",
            ),
            (
                RawOtlp {
                    endpoint: Some("http://c:4317".into()),
                    max_process_spans: Some(crate::config::number::Number::Int(-1)),
                    ..RawOtlp::default()
                },
                "otlp.max_process_spans",
            ),
        ];
        for (raw, field) in cases {
            let err = OtlpConfig::resolve(Some(raw), &env_of(&[]))
                .expect_err("must fail")
                .to_string();
            assert!(err.contains(field), "{field}: {err}");
        }
        let err = OtlpConfig::resolve(None, &env_of(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "nope")]))
            .expect_err("must fail")
            .to_string();
        assert!(err.contains("OTEL_EXPORTER_OTLP_ENDPOINT"), "{err}");
    }
}
