//! Streams the agent's log at TRACE level through Nomad's `/v1/agent/monitor` endpoint
//! (`log_level=trace&log_json=true&plain=true`: one hclog JSON object per line), whatever the
//! agent's own `log_level`, so checks can read timestamps of lines the agent file does not have
//! (e.g. the task runner's `finished prestart hooks`, logged just before it calls StartTask).
//! Also switches a running agent to TRACE (config rewrite + SIGHUP) and parses the RFC 3339
//! timestamps hclog and Go's `time.Time` JSON use.

use std::io::{BufRead as _, BufReader};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, ensure};
use nix::sys::signal::Signal;
use serde_json::Value;

use crate::agent::Agent;

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
            .recv_timeout(crate::wait::scaled(Duration::from_secs(10)))
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

/// Switches a running agent to `log_level = "TRACE"`: rewrites the `log_level` line of its
/// config file and sends SIGHUP (Nomad reloads the log level on SIGHUP; the task runner logs its
/// prestart timing lines only when its own level is TRACE). Returns once the agent log shows a
/// `[TRACE]` line.
pub fn enable_trace_logging(agent: &Agent) -> Result<()> {
    let path = agent.root().join("agent.hcl");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut found = false;
    let new: Vec<String> = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("log_level") {
                found = true;
                "log_level = \"TRACE\"".to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect();
    ensure!(found, "{} has no log_level line", path.display());
    std::fs::write(&path, new.join("\n") + "\n")?;
    let pid = agent.pid().context("the agent is not running")?;
    crate::procs::signal(pid, Signal::SIGHUP).context("sending SIGHUP to the agent")?;
    crate::wait::poll_until(
        "the agent log to show TRACE lines after SIGHUP",
        Duration::from_secs(10),
        crate::wait::POLL,
        |_| {
            Ok(std::fs::read_to_string(agent.log_path())
                .ok()
                .filter(|t| t.contains("[TRACE]"))
                .map(|_| ()))
        },
    )
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
pub fn parse_rfc3339_nanos(text: &str) -> Option<i128> {
    let text = text.trim();
    let (date, rest) = text.split_at_checked(10)?;
    let rest = rest.strip_prefix(['T', ' '])?;
    let mut ymd = date.split('-').map(str::parse::<i64>);
    let (year, month, day) = (ymd.next()?.ok()?, ymd.next()?.ok()?, ymd.next()?.ok()?);
    let (clock, rest) = rest.split_at_checked(8)?;
    let mut hms = clock.split(':').map(str::parse::<i64>);
    let (hour, minute, second) = (hms.next()?.ok()?, hms.next()?.ok()?, hms.next()?.ok()?);
    let (fraction, zone) = match rest.strip_prefix('.') {
        Some(after) => {
            let end = after
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(after.len());
            (&after[..end], &after[end..])
        }
        None => ("", rest),
    };
    let mut nanos: i128 = 0;
    for (place, digit) in (0u32..9).rev().zip(fraction.chars()) {
        nanos += i128::from(digit.to_digit(10)?) * 10i128.pow(place);
    }
    let zone = zone.trim_start();
    let offset_secs: i64 = if zone.is_empty() || zone.starts_with('Z') {
        0
    } else {
        let sign = if zone.starts_with('-') { -1 } else { 1 };
        let digits = zone.get(1..)?;
        let (zone_h, zone_m) = if digits.as_bytes().get(2) == Some(&b':') {
            (digits.get(0..2)?, digits.get(3..5)?)
        } else {
            (digits.get(0..2)?, digits.get(2..4)?)
        };
        sign * (zone_h.parse::<i64>().ok()? * 3600 + zone_m.parse::<i64>().ok()? * 60)
    };
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
        - offset_secs;
    Some(i128::from(secs) * 1_000_000_000 + nanos)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::parse_rfc3339_nanos;

    #[test]
    fn parses_timestamps() {
        assert_eq!(
            parse_rfc3339_nanos("1970-01-01T00:00:01Z"),
            Some(1_000_000_000)
        );
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
