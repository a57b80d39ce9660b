//! Host process inspection through procfs (`/proc/<pid>/{cmdline,environ,stat,exe,fd}`): find
//! processes by a marker, follow parent links, check liveness, signal a pid we own.
//!
//! Every reader tolerates processes vanishing mid-scan (they just drop out of the result).

use std::fs;
use std::path::{Path, PathBuf};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// All pids currently listed in `/proc`.
#[must_use]
pub fn pids() -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

fn nul_separated(path: &Path) -> Option<Vec<String>> {
    let raw = fs::read(path).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
    )
}

/// The argv of `pid` (empty for kernel threads), or `None` if it is gone.
#[must_use]
pub fn cmdline(pid: i32) -> Option<Vec<String>> {
    nul_separated(Path::new(&format!("/proc/{pid}/cmdline")))
}

/// The environment (`KEY=value` entries) of `pid` as it was at exec, or `None` if unreadable.
#[must_use]
pub fn environ(pid: i32) -> Option<Vec<String>> {
    nul_separated(Path::new(&format!("/proc/{pid}/environ")))
}

/// The value of `key` in the environment of `pid`.
#[must_use]
pub fn env_var(pid: i32, key: &str) -> Option<String> {
    let prefix = format!("{key}=");
    environ(pid)?
        .into_iter()
        .find_map(|kv| kv.strip_prefix(&prefix).map(str::to_owned))
}

/// The executable of `pid` (`/proc/<pid>/exe`).
#[must_use]
pub fn exe(pid: i32) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/exe")).ok()
}

/// The targets of the open file descriptors of `pid`.
#[must_use]
pub fn open_files(pid: i32) -> Vec<PathBuf> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.filter_map(|e| fs::read_link(e.ok()?.path()).ok())
        .collect()
}

/// `(state, ppid)` from `/proc/<pid>/stat` (the comm field may contain spaces and parentheses,
/// so parse after the last `)`).
fn stat(pid: i32) -> Option<(char, i32)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let parent = fields.next()?.parse().ok()?;
    Some((state, parent))
}

/// The parent pid of `pid`.
#[must_use]
pub fn ppid(pid: i32) -> Option<i32> {
    stat(pid).map(|(_, p)| p)
}

/// Whether `pid` exists and is not a zombie (an exited process not yet reaped is dead to us).
#[must_use]
pub fn is_alive(pid: i32) -> bool {
    stat(pid).is_some_and(|(state, _)| state != 'Z' && state != 'X')
}

/// Direct children of `pid`.
#[must_use]
pub fn children(pid: i32) -> Vec<i32> {
    pids()
        .into_iter()
        .filter(|p| ppid(*p) == Some(pid))
        .collect()
}

/// Every live process (other than this one) with `marker` in any argv element.
#[must_use]
pub fn find_by_cmdline(marker: &str) -> Vec<i32> {
    find(|pid| cmdline(pid).is_some_and(|argv| argv.iter().any(|a| a.contains(marker))))
}

/// Every live process (other than this one) with `marker` in any environment entry.
#[must_use]
pub fn find_by_environ(marker: &str) -> Vec<i32> {
    find(|pid| environ(pid).is_some_and(|env| env.iter().any(|kv| kv.contains(marker))))
}

/// Every live process (other than this one) for which `pred` holds.
#[must_use]
pub fn find(mut pred: impl FnMut(i32) -> bool) -> Vec<i32> {
    let me = std::process::id() as i32;
    pids()
        .into_iter()
        .filter(|p| *p != me && is_alive(*p) && pred(*p))
        .collect()
}

/// One line per pid: `pid ppid argv…`, for error messages.
#[must_use]
pub fn describe(pids: &[i32]) -> String {
    pids.iter()
        .map(|p| {
            format!(
                "{p} (ppid {}) {}",
                ppid(*p).unwrap_or(0),
                cmdline(*p).unwrap_or_default().join(" ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Sends `sig` to `pid`. Only call this with a pid the suite started or identified as its own.
pub fn signal(pid: i32, sig: Signal) -> nix::Result<()> {
    kill(Pid::from_raw(pid), sig)
}

/// Reads a pid file (e.g. one a task wrote with `echo $$ > file`).
#[must_use]
pub fn read_pid_file(path: &Path) -> Option<i32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The pid of `pid` in each pid namespace it belongs to, outermost (host) first: the `NSpid:`
/// line of `/proc/<pid>/status`. A task in its own pid namespace has two or more entries.
#[must_use]
pub fn ns_pids(pid: i32) -> Option<Vec<i32>> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    line.split_whitespace().map(|p| p.parse().ok()).collect()
}

/// The host pid of the process of allocation `alloc_id` whose pid in its own (innermost) pid
/// namespace is `inner_pid` — e.g. what a task wrote with `echo $$`. Tasks are recognised by
/// `NOMAD_ALLOC_ID` in their environment.
#[must_use]
pub fn host_pid_of(alloc_id: &str, inner_pid: i32) -> Option<i32> {
    let marker = format!("NOMAD_ALLOC_ID={alloc_id}");
    find(|pid| {
        ns_pids(pid).is_some_and(|ns| ns.last() == Some(&inner_pid))
            && environ(pid).is_some_and(|env| env.contains(&marker))
    })
    .into_iter()
    .next()
}
