//! Logs on stderr as hclog JSON lines (`@level`, `@message`, `@timestamp`, `@module`, plus the
//! event's fields), the shape go-plugin's host parses so `nomad monitor` shows proper levels.

use std::fmt::Write as _;
use std::io::Write as _;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

/// Installs the JSON logger; level from `BPFEXEC_LOG` (default `info`).
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BPFEXEC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(HclogLayer)
        .try_init();
}

struct HclogLayer;

impl<S: Subscriber> Layer<S> for HclogLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let line = render(*event.metadata().level(), event.metadata().target(), |v| {
            event.record(v);
        });
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(line.as_bytes());
    }
}

/// Builds one JSON line; `record` feeds the event's fields into the visitor.
fn render(level: Level, target: &str, record: impl FnOnce(&mut JsonFields)) -> String {
    let mut fields = JsonFields::default();
    record(&mut fields);
    let mut obj = serde_json::Map::new();
    obj.insert("@level".into(), level_name(level).into());
    obj.insert("@message".into(), fields.message.unwrap_or_default().into());
    obj.insert(
        "@timestamp".into(),
        timestamp(std::time::SystemTime::now()).into(),
    );
    obj.insert("@module".into(), module(target).into());
    for (k, v) in fields.extra {
        obj.insert(k, v);
    }
    let mut line = serde_json::Value::Object(obj).to_string();
    line.push('\n');
    line
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::ERROR => "error",
        Level::WARN => "warn",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

fn module(target: &str) -> String {
    let tail = target
        .strip_prefix("bpfexec_driver")
        .unwrap_or(target)
        .trim_start_matches("::");
    if tail.is_empty() {
        "bpfexec".into()
    } else {
        format!("bpfexec.{}", tail.replace("::", "."))
    }
}

#[derive(Default)]
struct JsonFields {
    message: Option<String>,
    extra: Vec<(String, serde_json::Value)>,
}

impl Visit for JsonFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut s = String::new();
        let _ = write!(s, "{value:?}");
        self.put(field, s.into());
    }
}

impl JsonFields {
    fn put(&mut self, field: &Field, value: serde_json::Value) {
        if field.name() == "message" {
            self.message = Some(
                value
                    .as_str()
                    .map_or_else(|| value.to_string(), str::to_owned),
            );
        } else {
            self.extra.push((field.name().to_owned(), value));
        }
    }
}

/// RFC 3339 UTC timestamp with microseconds, as hclog writes them.
fn timestamp(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_micros()
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = UNIX_EPOCH + Duration::from_micros(1_795_399_113_123_456);
        assert_eq!(timestamp(t), "2026-11-23T01:58:33.123456Z");
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn lines_are_hclog_json() {
        let line = render(Level::WARN, "bpfexec_driver::tasks", |f| {
            f.message = Some("hello".into());
            f.extra.push(("task_id".into(), "a/b/c".into()));
        });
        let v: serde_json::Value = serde_json::from_str(line.trim_end()).expect("json");
        assert_eq!(v["@level"], "warn");
        assert_eq!(v["@message"], "hello");
        assert_eq!(v["@module"], "bpfexec.tasks");
        assert_eq!(v["task_id"], "a/b/c");
        assert!(line.ends_with('\n'));
    }
}
