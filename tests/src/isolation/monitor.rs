//! Streams the agent's log at TRACE level through Nomad's `/v1/agent/monitor` endpoint
//! (`log_level=trace&log_json=true&plain=true`: one hclog JSON object per line), whatever the
//! agent's own `log_level`, so checks can read timestamps of lines the agent file does not have
//! (e.g. the task runner's `finished prestart hooks`, logged just before it calls StartTask).
//! Also parses the RFC 3339 timestamps hclog and Go's `time.Time` JSON use.

use std::io::{BufRead as _, BufReader};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use serde_json::Value;

/// A background reader of the agent's TRACE log stream. The thread ends when the agent closes
/// the connection (at agent shutdown).
pub struct LogMonitor {
    lines: Arc<Mutex<Vec<Value>>>,
}

impl LogMonitor {
    /// Connects to the agent at `addr` (e.g. `http://127.0.0.1:4646`) and waits until the
    /// stream is open.
    pub fn start(addr: &str) -> Result<Self> {
        let url = format!(
            "{}/v1/agent/monitor?log_level=trace&log_json=true&plain=true",
            addr.trim_end_matches('/')
        );
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let target = url.clone();
        std::thread::Builder::new()
            .name("agent-monitor".into())
            .spawn(move || {
                let http = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(None)
                    .build()
                    .new_agent();
                let resp = match http.get(&target).call() {
                    Ok(r) if r.status().is_success() => r,
                    Ok(r) => {
                        let _ = ready_tx.send(Err(format!("HTTP {}", r.status())));
                        return;
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let reader = BufReader::new(resp.into_body().into_reader());
                for line in reader.lines() {
                    let Ok(line) = line else { break };
                    if let Ok(v) = serde_json::from_str::<Value>(line.trim())
                        && let Ok(mut l) = sink.lock()
                    {
                        l.push(v);
                    }
                }
            })
            .context("spawning the monitor thread")?;
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .context("the agent monitor stream did not open within 10 s")?
            .map_err(|e| anyhow!("opening {url}: {e}"))?;
        Ok(LogMonitor { lines })
    }

    /// The first line so far for which `pred` holds.
    #[must_use]
    pub fn find(&self, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        self.lines.lock().ok()?.iter().find(|v| pred(v)).cloned()
    }

    /// How many lines were received so far.
    #[must_use]
    pub fn len(&self) -> usize {
        self.lines.lock().map_or(0, |l| l.len())
    }

    /// Whether nothing was received yet.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A string field of a JSON log line.
#[must_use]
pub fn field<'a>(line: &'a Value, key: &str) -> Option<&'a str> {
    line.get(key)?.as_str()
}

/// Unix nanoseconds of an RFC 3339 timestamp (`2025-11-23T02:40:00.123456789Z`, any fraction
/// length, `Z` or `±HH:MM`). Go's `time.Time` text form with a monotonic suffix
/// (`2025-11-23 02:40:00.1 +0000 UTC m=+1.2`) is accepted too.
#[must_use]
pub fn parse_rfc3339_nanos(s: &str) -> Option<i128> {
    let s = s.trim();
    let (date, rest) = s.split_at_checked(10)?;
    let rest = rest.strip_prefix(['T', ' '])?;
    let mut d = date.split('-');
    let (y, mo, da): (i64, i64, i64) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    let (hms, rest) = rest.split_at_checked(8)?;
    let mut t = hms.split(':');
    let (h, mi, se): (i64, i64, i64) = (
        t.next()?.parse().ok()?,
        t.next()?.parse().ok()?,
        t.next()?.parse().ok()?,
    );
    let (frac, zone) = match rest.strip_prefix('.') {
        Some(r) => {
            let end = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
            (&r[..end], &r[end..])
        }
        None => ("", rest),
    };
    let mut nanos: i128 = 0;
    for (i, c) in frac.chars().take(9).enumerate() {
        nanos += i128::from(c.to_digit(10)?) * 10i128.pow(8 - i as u32);
    }
    let zone = zone.trim_start();
    let offset_s: i64 = if zone.starts_with('Z') || zone.is_empty() {
        0
    } else {
        let sign = if zone.starts_with('-') { -1 } else { 1 };
        let z = zone.get(1..)?;
        let (zh, zm) = if z.as_bytes().get(2) == Some(&b':') {
            (z.get(0..2)?, z.get(3..5)?)
        } else {
            (z.get(0..2)?, z.get(2..4)?)
        };
        sign * (zh.parse::<i64>().ok()? * 3600 + zm.parse::<i64>().ok()? * 60)
    };
    let secs = days_from_civil(y, mo, da) * 86_400 + h * 3600 + mi * 60 + se - offset_s;
    Some(i128::from(secs) * 1_000_000_000 + nanos)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::parse_rfc3339_nanos;

    #[test]
    fn parses_timestamps() {
        assert_eq!(parse_rfc3339_nanos("1970-01-01T00:00:01Z"), Some(1_000_000_000));
        assert_eq!(
            parse_rfc3339_nanos("2025-11-23T02:40:00.123456789Z"),
            Some(1_763_865_600_123_456_789)
        );
        assert_eq!(
            parse_rfc3339_nanos("2025-11-23T03:40:00.5+01:00"),
            Some(1_763_865_600_500_000_000)
        );
        assert_eq!(
            parse_rfc3339_nanos("2025-11-23 02:40:00.000001 +0000 UTC m=+3.1"),
            Some(1_763_865_600_000_001_000)
        );
    }
}
