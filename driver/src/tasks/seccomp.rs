//! Reporting the system calls a task's seccomp filter refused: its helper appends one line per
//! distinct call to `seccomp.jsonl` in the task's state directory; this reader turns each into a
//! task event ("Driver" in `nomad alloc status`) every second while the task runs and once more
//! when it ends. The offset reached is kept next to the file, so a restarted plugin reports only
//! what it has not reported before.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bpfexec_proto::drivers;
use tokio::sync::watch;

use super::observe::Observation;
use super::state::Outcome;
use crate::seccomp::listener::{Blocked, read_records};

const POLL: Duration = Duration::from_secs(1);
const OFFSET_FILE: &str = ".seccomp.reported";

/// The task event for one refused call.
pub fn event_text(b: &Blocked) -> (String, BTreeMap<String, String>) {
    let who = match (b.pid, b.uid) {
        (0, _) => "a process of the task".to_owned(),
        (pid, Some(uid)) => format!("pid {pid} ({}, uid {uid})", b.comm),
        (pid, None) => format!("pid {pid} ({})", b.comm),
    };
    let message = format!(
        "Seccomp refused system call {} (EPERM) to {who}: the task's seccomp profile {:?} blocks it; \
         if the task needs it, give it a profile that allows it (seccomp = \"<path>\") or seccomp = \"unconfined\"",
        b.syscall, b.profile
    );
    let mut a = BTreeMap::new();
    a.insert("reason".to_owned(), "seccomp".to_owned());
    a.insert("syscall".to_owned(), b.syscall.clone());
    a.insert("syscall_nr".to_owned(), b.nr.to_string());
    a.insert("seccomp_profile".to_owned(), b.profile.clone());
    if b.pid != 0 {
        a.insert("pid".to_owned(), b.pid.to_string());
        a.insert("comm".to_owned(), b.comm.clone());
    }
    if let Some(uid) = b.uid {
        a.insert("uid".to_owned(), uid.to_string());
    }
    (message, a)
}

fn load_offset(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join(OFFSET_FILE))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Reports what was not reported yet; returns the new offset.
fn report(dir: &Path, from: u64, cfg: &drivers::TaskConfig, obs: &Observation) -> u64 {
    let (records, to) = match read_records(dir, from) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(task_id = %cfg.id, error = %e, "cannot read the seccomp records");
            return from;
        }
    };
    for b in &records {
        let (message, annotations) = event_text(b);
        obs.notice(cfg, message, annotations);
    }
    if to != from {
        // A full or read-only state dir only means repeats after a plugin restart.
        let _ = std::fs::write(dir.join(OFFSET_FILE), to.to_string());
    }
    to
}

/// Follows the task's records until it has ended.
pub fn spawn(
    dir: std::path::PathBuf,
    cfg: drivers::TaskConfig,
    mut exit: watch::Receiver<Option<Outcome>>,
    obs: Arc<Observation>,
) {
    tokio::spawn(async move {
        let mut offset = load_offset(&dir);
        loop {
            let ended = exit.borrow().is_some();
            offset = report(&dir, offset, &cfg, &obs);
            if ended {
                return;
            }
            let _ = tokio::time::timeout(POLL, exit.changed()).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_name_the_call_the_caller_and_the_fix() {
        let b = Blocked {
            syscall: "keyctl".into(),
            nr: 250,
            arch: crate::seccomp::names::AUDIT_ARCH,
            pid: 4711,
            comm: "python3".into(),
            uid: Some(0),
            profile: "default".into(),
            at_ms: 1,
        };
        let (m, a) = event_text(&b);
        assert!(
            m.contains("keyctl") && m.contains("pid 4711 (python3, uid 0)"),
            "{m}"
        );
        assert!(m.contains("unconfined"), "{m}");
        assert_eq!(a["reason"], "seccomp");
        assert_eq!(a["syscall"], "keyctl");
    }
}
