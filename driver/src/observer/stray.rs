//! Stray processes of a task (issue 4, "escapes and leaks"): a tracked process that left the
//! task's own cgroup while the task runs (an escape: it evades the limits Nomad set), or one
//! still alive after the task's main process ended (a leak). Both are SIGKILLed; this module
//! holds what was found and the task event texts (`reason=cgroup-escape`, `reason=leak`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::error::ReapError;
use super::reap::Reaped;
use crate::cgroups::CgroupHome;

/// Leaked processes named in a leak message (all of them are in the annotations).
const NAMED_IN_MESSAGE: usize = 20;

/// One stray process, as procfs showed it when it was judged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stray {
    pub pid: u32,
    /// Start time in clock ticks since boot: the process's identity with the PID.
    pub start_time: u64,
    pub comm: String,
    /// For an escape, its cgroup path (in the hierarchy of `left`).
    pub cgroup: Option<String>,
    /// For an escape, the task cgroup it left (None for a leak).
    pub left: Option<CgroupHome>,
}

impl Stray {
    fn label(&self) -> String {
        format!("{} ({})", self.pid, self.comm)
    }
}

/// The notice for an escape (a stray with the cgroup it `left`), or `None` when the process
/// turned out not to be the task's any more once pinned.
pub fn escape_notice(
    stray: &Stray,
    result: &Result<Reaped, ReapError>,
) -> Option<(String, BTreeMap<String, String>)> {
    let home = stray.left.as_ref()?;
    let now_in = stray.cgroup.clone().unwrap_or_default();
    let mut a = BTreeMap::new();
    a.insert("reason".to_owned(), "cgroup-escape".to_owned());
    a.insert("pid".to_owned(), stray.pid.to_string());
    a.insert("comm".to_owned(), stray.comm.clone());
    a.insert("cgroup".to_owned(), now_in.clone());
    a.insert("task_cgroup".to_owned(), home.path.clone());
    a.insert("hierarchy".to_owned(), home.hierarchy().to_owned());
    let outcome = match result {
        Ok(Reaped::NotOurs) => return None,
        Ok(r) => {
            a.insert("action".to_owned(), r.name().to_owned());
            match r {
                Reaped::Killed => "was killed".to_owned(),
                _ => "exited before it could be killed".to_owned(),
            }
        }
        Err(e) => {
            a.insert("action".to_owned(), "kill_failed".to_owned());
            a.insert("error".to_owned(), e.to_string());
            format!("could not be killed ({e}); kill it by hand")
        }
    };
    let message = format!(
        "Process pid {} left the task's cgroup {} for {now_in} ({} hierarchy) and {outcome}: a \
         process outside the task's cgroup escapes the resource limits Nomad set for the task",
        stray.label(),
        home.path,
        home.hierarchy(),
    );
    Some((message, a))
}

/// The one notice for the processes that outlived a task, from what killing each did; `None`
/// when none was left to kill.
pub fn leak_notice(
    results: &[(Stray, Result<Reaped, ReapError>)],
) -> Option<(String, BTreeMap<String, String>)> {
    let killed: Vec<&Stray> = results
        .iter()
        .filter(|(_, r)| matches!(r, Ok(Reaped::Killed)))
        .map(|(s, _)| s)
        .collect();
    let failed: Vec<(&Stray, &ReapError)> = results
        .iter()
        .filter_map(|(s, r)| r.as_ref().err().map(|e| (s, e)))
        .collect();
    let leaked: Vec<&Stray> = killed
        .iter()
        .copied()
        .chain(failed.iter().map(|(s, _)| *s))
        .collect();
    if leaked.is_empty() {
        return None;
    }
    let join = |strays: &[&Stray], f: fn(&Stray) -> String| {
        strays.iter().map(|s| f(s)).collect::<Vec<_>>().join(",")
    };
    let mut a = BTreeMap::new();
    a.insert("reason".to_owned(), "leak".to_owned());
    a.insert("count".to_owned(), leaked.len().to_string());
    a.insert("pids".to_owned(), join(&leaked, |s| s.pid.to_string()));
    a.insert("comms".to_owned(), join(&leaked, |s| s.comm.clone()));
    a.insert("killed".to_owned(), join(&killed, |s| s.pid.to_string()));
    let n = leaked.len();
    let (noun, verb) = if n == 1 {
        ("process", "was")
    } else {
        ("processes", "were")
    };
    let message = if failed.is_empty() {
        format!(
            "{n} {noun} outlived the task and {verb} killed: {}",
            names(&killed)
        )
    } else {
        let failed_strays: Vec<&Stray> = failed.iter().map(|(s, _)| *s).collect();
        let errors: Vec<String> = failed.iter().map(|(_, e)| e.to_string()).collect();
        a.insert(
            "failed".to_owned(),
            join(&failed_strays, |s| s.pid.to_string()),
        );
        a.insert("error".to_owned(), errors.join("; "));
        let mut m = format!("{n} {noun} outlived the task");
        if !killed.is_empty() {
            let _ = write!(m, "; killed: {}", names(&killed));
        }
        let _ = write!(
            m,
            "; could not be killed: {} ({}); kill them by hand",
            names(&failed_strays),
            errors.join("; ")
        );
        m
    };
    Some((message, a))
}

/// `4711 (sleep), 4712 (sh)`, at most [`NAMED_IN_MESSAGE`] of them.
fn names(strays: &[&Stray]) -> String {
    let mut text = strays
        .iter()
        .take(NAMED_IN_MESSAGE)
        .map(|s| s.label())
        .collect::<Vec<_>>()
        .join(", ");
    if strays.len() > NAMED_IN_MESSAGE {
        let _ = write!(text, " and {} more", strays.len() - NAMED_IN_MESSAGE);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stray(pid: u32, comm: &str, cgroup: Option<&str>) -> Stray {
        Stray {
            pid,
            start_time: u64::from(pid) * 10,
            comm: comm.into(),
            cgroup: cgroup.map(str::to_owned),
            left: None,
        }
    }

    fn eperm(pid: u32) -> ReapError {
        ReapError::Signal {
            pid,
            source: std::io::Error::from_raw_os_error(libc::EPERM),
        }
    }

    #[test]
    fn escape_texts() {
        let home = CgroupHome {
            controller: Some("freezer".into()),
            path: "/nomad/a1.web".into(),
        };
        let s = Stray {
            left: Some(home),
            ..stray(4711, "sleep", Some("/elsewhere"))
        };
        let (m, a) = escape_notice(&s, &Ok(Reaped::Killed)).expect("notice");
        assert_eq!(
            m,
            "Process pid 4711 (sleep) left the task's cgroup /nomad/a1.web for /elsewhere \
             (freezer hierarchy) and was killed: a process outside the task's cgroup escapes \
             the resource limits Nomad set for the task"
        );
        assert_eq!(a["reason"], "cgroup-escape");
        assert_eq!(
            (a["pid"].as_str(), a["comm"].as_str(), a["cgroup"].as_str()),
            ("4711", "sleep", "/elsewhere")
        );
        assert_eq!(a["task_cgroup"], "/nomad/a1.web");
        assert_eq!(a["action"], "killed");
        let (m, a) = escape_notice(&s, &Err(eperm(4711))).expect("notice");
        assert!(
            m.contains("could not be killed (cannot SIGKILL pid 4711"),
            "{m}"
        );
        assert_eq!(a["action"], "kill_failed");
        let (m, _) = escape_notice(&s, &Ok(Reaped::Gone)).expect("notice");
        assert!(m.contains("exited before it could be killed"), "{m}");
        assert!(escape_notice(&s, &Ok(Reaped::NotOurs)).is_none());
    }

    #[test]
    fn leak_texts() {
        let two = [
            (stray(4711, "sleep", None), Ok(Reaped::Killed)),
            (stray(4712, "sh", None), Ok(Reaped::Killed)),
            (stray(4713, "gone", None), Ok(Reaped::Gone)),
            (stray(4714, "other", None), Ok(Reaped::NotOurs)),
        ];
        let (m, a) = leak_notice(&two).expect("notice");
        assert_eq!(
            m,
            "2 processes outlived the task and were killed: 4711 (sleep), 4712 (sh)"
        );
        assert_eq!(a["reason"], "leak");
        assert_eq!(a["count"], "2");
        assert_eq!(a["pids"], "4711,4712");
        assert_eq!(a["comms"], "sleep,sh");
        let (m, _) = leak_notice(&two[..1]).expect("notice");
        assert_eq!(
            m,
            "1 process outlived the task and was killed: 4711 (sleep)"
        );
        let mixed = [
            (stray(4711, "sleep", None), Ok(Reaped::Killed)),
            (stray(4712, "sh", None), Err(eperm(4712))),
        ];
        let (m, a) = leak_notice(&mixed).expect("notice");
        assert_eq!(
            m,
            "2 processes outlived the task; killed: 4711 (sleep); could not be killed: 4712 (sh) \
             (cannot SIGKILL pid 4712: Operation not permitted (os error 1)); kill them by hand"
        );
        assert_eq!(
            (a["killed"].as_str(), a["failed"].as_str()),
            ("4711", "4712")
        );
        assert!(leak_notice(&two[2..]).is_none());
        let many: Vec<_> = (0..25)
            .map(|i| (stray(100 + i, "w", None), Ok(Reaped::Killed)))
            .collect();
        let (m, a) = leak_notice(&many).expect("notice");
        assert!(m.ends_with("119 (w) and 5 more"), "{m}");
        assert_eq!(a["pids"].split(',').count(), 25);
    }
}
