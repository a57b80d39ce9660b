//! Timestamps from the agent log (hclog text lines; plugin lines carry their own `timestamp=`
//! field, RFC 3339 UTC with milliseconds): when a task's logmon opened its FIFOs (the last
//! prestart step before Nomad calls the driver's StartTask) and when bpfexec logged "task started"
//! (just before its StartTask returns).

use std::path::Path;

/// Unix ns of the `timestamp=` field of the last line that contains every needle.
fn last_timestamp(log: &str, needles: &[&str]) -> Option<i64> {
    log.lines()
        .rev()
        .find(|l| needles.iter().all(|n| l.contains(n)))
        .and_then(|l| {
            let ts = l.split("timestamp=").nth(1)?;
            parse_rfc3339(ts.split_whitespace().next()?)
        })
}

/// Snapshot of the agent log for several look-ups.
pub struct AgentLog(String);

impl AgentLog {
    pub fn read(path: &Path) -> Self {
        Self(
            std::fs::read(path)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default(),
        )
    }

    /// When logmon of `alloc` opened its last FIFO.
    pub fn logmon_ready(&self, alloc: &str) -> Option<i64> {
        last_timestamp(
            &self.0,
            &["logmon", "opening fifo", &format!("alloc_id={alloc}")],
        )
    }

    /// bpfexec's own measure of a task of `alloc`: µs from StartTask received to the supervisor
    /// reporting the command exec'd (monotonic clock, the `start_us` field of its log line).
    pub fn bpfexec_start_us(&self, alloc: &str) -> Option<f64> {
        let line =
            self.0.lines().rev().find(|l| {
                l.contains("StartTask done") && l.contains(&format!("task_id={alloc}/"))
            })?;
        let value = line.split("start_us=").nth(1)?.split_whitespace().next()?;
        value.trim_matches('"').parse().ok()
    }

    /// When bpfexec logged "task started" for a task of `alloc`.
    pub fn bpfexec_task_started(&self, alloc: &str) -> Option<i64> {
        last_timestamp(&self.0, &["task started", &format!("task_id={alloc}/")])
    }
}

/// `2026-11-23T02:32:49.407Z` (any number of fraction digits, `Z` only) → Unix ns.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let text = text.trim_matches('"').strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let ymd: Vec<i64> = date
        .split('-')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let (clock, frac) = time.split_once('.').unwrap_or((time, ""));
    let hms: Vec<i64> = clock
        .split(':')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let ([year, month, day], [hour, minute, second]) = (ymd.as_slice(), hms.as_slice()) else {
        return None;
    };
    let mut nanos = 0i64;
    let mut scale = 100_000_000i64;
    for digit in frac.chars().take(9) {
        nanos += i64::from(digit.to_digit(10)?) * scale;
        scale /= 10;
    }
    let days = days_from_civil(*year, *month, *day);
    Some((days * 86_400 + hour * 3600 + minute * 60 + second) * 1_000_000_000 + nanos)
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
    use super::*;

    #[test]
    fn parses_known_instants() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2000-03-01T00:00:01.5Z"),
            Some(951_868_801_500_000_000)
        );
        assert_eq!(
            parse_rfc3339("2026-11-23T02:32:49.407Z"),
            Some(1_795_401_169_407_000_000)
        );
        assert_eq!(parse_rfc3339("2026-11-23 02:32:49"), None);
    }

    #[test]
    fn finds_lines() {
        let log = AgentLog(
            "x [DEBUG] client.alloc_runner.task_runner.task_hook.logmon.nomad: opening fifo: alloc_id=abc task=t path=/x/.t.stdout.fifo @module=logmon timestamp=1970-01-01T00:00:01.000Z\n\
             x [DEBUG] client.alloc_runner.task_runner.task_hook.logmon.nomad: opening fifo: alloc_id=abc task=t @module=logmon path=/x/.t.stderr.fifo timestamp=1970-01-01T00:00:01.002Z\n\
             x [INFO]  client.driver_mgr.nomad-driver-bpfexec: task started: driver=bpfexec pid=1 task_id=abc/t/1234 timestamp=1970-01-01T00:00:01.010Z\n"
                .to_owned(),
        );
        assert_eq!(log.logmon_ready("abc"), Some(1_002_000_000));
        assert_eq!(log.bpfexec_task_started("abc"), Some(1_010_000_000));
        assert_eq!(log.logmon_ready("zzz"), None);
    }
}
