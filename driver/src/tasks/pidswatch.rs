//! Reports a task hitting its `pids_max` as a task event: the kernel counts the forks and clones
//! its pids controller refused in `pids.events` (`max N`, v1 and v2 alike), which is read every
//! second while the task runs and once more when it ends. The first hit is reported at once,
//! later ones at most every 30 s, with the running total.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bpfexec_proto::drivers;
use tokio::sync::watch;

use super::observe::Observation;
use super::state::{DriverState, Outcome};
use crate::cgroups::{CgroupMode, TaskCgroups, extra};

const POLL: Duration = Duration::from_secs(1);
const REPEAT: Duration = Duration::from_secs(30);

/// The task's `pids.events` file.
pub fn events_file(cg: &TaskCgroups) -> Option<PathBuf> {
    let dir = match cg.mode {
        CgroupMode::V2 => cg.own_dir(),
        CgroupMode::V1 => extra::owned_dir(cg, "pids"),
    }?;
    Some(dir.join("pids.events"))
}

/// The refused-fork counter (`max`) in a `pids.events` file.
pub fn hits(file: &Path) -> Option<u64> {
    crate::cgroups::read_keyed(file)
        .into_iter()
        .find(|(k, _)| k == "max")
        .map(|(_, v)| v)
}

/// The task event's text and annotations for `total` refused forks so far.
pub fn event(
    pids_max: u64,
    total: u64,
    current: Option<u64>,
) -> (String, BTreeMap<String, String>) {
    let mut annotations = BTreeMap::new();
    annotations.insert("reason".to_owned(), "pids-limit".to_owned());
    annotations.insert("pids_max".to_owned(), pids_max.to_string());
    annotations.insert("hits".to_owned(), total.to_string());
    if let Some(c) = current {
        annotations.insert("pids_current".to_owned(), c.to_string());
    }
    (
        format!(
            "Process limit reached: the task may have {pids_max} processes and threads (pids_max), and {total} fork{} or clone{} failed because of it; raise pids_max if the task needs more",
            if total == 1 { "" } else { "s" },
            if total == 1 { "" } else { "s" },
        ),
        annotations,
    )
}

/// Watches the task described by `state` until `exit` reports its end.
pub fn spawn(
    cfg: drivers::TaskConfig,
    state: &DriverState,
    observation: Arc<Observation>,
    mut exit: watch::Receiver<Option<Outcome>>,
) {
    let (Some(pids_max), Some(file)) =
        (state.pids_max, state.cgroups.as_ref().and_then(events_file))
    else {
        return;
    };
    let mut reported = state.pids_hits_before;
    tokio::spawn(async move {
        let mut last_sent: Option<Instant> = None;
        loop {
            let ended = if exit.borrow().is_some() {
                true
            } else {
                match tokio::time::timeout(POLL, exit.changed()).await {
                    Ok(Ok(())) => exit.borrow().is_some(),
                    // The task's table entry is gone.
                    Ok(Err(_)) => true,
                    Err(_) => false,
                }
            };
            let total = hits(&file).unwrap_or(reported);
            let due = last_sent.is_none_or(|t| t.elapsed() >= REPEAT) || ended;
            if total > reported && due {
                let current = crate::cgroups::read_u64(&file.with_file_name("pids.current"));
                observation.pids_limit_hits(&cfg, pids_max, total);
                let (message, annotations) = event(pids_max, total, current);
                observation.notice(&cfg, message, annotations);
                reported = total;
                last_sent = Some(Instant::now());
            }
            if ended {
                return;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("pids.events");
        std::fs::write(&f, "max 7\n").expect("write");
        assert_eq!(hits(&f), Some(7));
        assert_eq!(hits(&dir.path().join("none")), None);
        let v2 = TaskCgroups {
            mode: CgroupMode::V2,
            dirs: vec!["/s".into()],
            owned: Vec::new(),
        };
        assert_eq!(events_file(&v2), Some(PathBuf::from("/s/pids.events")));
        let v1 = TaskCgroups {
            mode: CgroupMode::V1,
            dirs: vec!["/cg/freezer/nomad/a.t".into()],
            owned: vec!["/cg/pids/nomad/a.t".into()],
        };
        assert_eq!(
            events_file(&v1),
            Some(PathBuf::from("/cg/pids/nomad/a.t/pids.events"))
        );
    }

    #[test]
    fn event_names_the_limit() {
        let (message, annotations) = event(16, 3, Some(16));
        assert!(message.contains("pids_max"), "{message}");
        assert!(message.contains("3 forks"), "{message}");
        assert_eq!(annotations["reason"], "pids-limit");
        assert_eq!(annotations["hits"], "3");
    }
}
