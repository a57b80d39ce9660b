//! Polling with a deadline: every wait in the suite goes through [`poll_until`], so none can hang.

use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};

/// Default polling interval.
pub const POLL: Duration = Duration::from_millis(200);

/// Environment variable multiplying every wait of the suite (default 1), for slow machines such
/// as the software-emulated guests of `cargo xtask vm-test`.
pub const TIME_SCALE_ENV: &str = "BPFEXEC_E2E_TIME_SCALE";

/// `timeout` times [`TIME_SCALE_ENV`].
pub fn scaled(timeout: Duration) -> Duration {
    let factor = std::env::var(TIME_SCALE_ENV)
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|f| f.is_finite() && *f >= 1.0)
        .unwrap_or(1.0);
    timeout.mul_f64(factor)
}

/// Calls `f` every `interval` until it returns `Ok(Some(v))` (→ `Ok(v)`), returns an error
/// (→ that error), or `timeout` elapses (→ an error naming `what` and the last observation
/// `f` reported through `last`).
///
/// `f` receives a `&mut String` where it can store a description of what it saw last; the
/// timeout error includes it.
pub fn poll_until<T>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut f: impl FnMut(&mut String) -> Result<Option<T>>,
) -> Result<T> {
    let timeout = scaled(timeout);
    let start = Instant::now();
    let mut last = String::new();
    loop {
        if let Some(v) = f(&mut last)? {
            return Ok(v);
        }
        if start.elapsed() >= timeout {
            let seen = if last.is_empty() {
                String::new()
            } else {
                format!("; last seen: {last}")
            };
            return Err(anyhow!(
                "timed out after {timeout:?} waiting for {what}{seen}"
            ));
        }
        std::thread::sleep(interval);
    }
}

/// Like [`poll_until`] for a plain condition: `true` once `cond` holds, `false` on timeout.
pub fn wait_for(timeout: Duration, interval: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let timeout = scaled(timeout);
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(interval);
    }
}
