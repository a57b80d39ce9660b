//! Helpers for the eBPF observer's acceptance checks (issue 4): the driver's own task events
//! (Nomad type `Driver`, message in `DisplayMessage`, annotations in `Details`) — the exit-reason
//! event sent when a task ends and the live notices sent while it runs —, a host process named
//! `kill-bot` that signals tasks, the driver's local JSON endpoint (`http_addr`: `/v1/tree`,
//! `/v1/observer`) and `ps` to compare its process trees with, and the ring buffer's lost-record
//! counter read straight from the driver's pinned per-CPU `LOST` map on bpffs (`bpf(2)`
//! `BPF_OBJ_GET` + `BPF_MAP_LOOKUP_ELEM`).

pub mod escape;
mod lost;
pub mod scenario;
mod tree;

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, ensure};

pub use lost::{lost_events, lost_map_path, possible_cpus};
pub use tree::{DriverHttp, PsRow, Tree, TreeExec, TreeNode, ps_tree};

use crate::api::{Alloc, Client, TaskEvent};
use crate::jobspec::TASK;
use crate::wait::{POLL, poll_until};

/// Nomad's event type for messages a driver sends through `TaskEvents`.
pub const DRIVER_EVENT: &str = "Driver";

/// `reason` annotations of exit-reason events (notices use other reasons).
pub const EXIT_REASONS: [&str; 4] = ["exited", "signaled", "oom_killed", "exec_failed"];

/// How long the driver may take to deliver its exit-reason event after the task ended.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// The task's `Driver` events, oldest first.
#[must_use]
pub fn driver_events(alloc: &Alloc) -> Vec<TaskEvent> {
    alloc
        .events(TASK)
        .into_iter()
        .filter(|e| e.kind == DRIVER_EVENT)
        .collect()
}

/// The task's `Driver` events whose `reason` annotation is `reason`.
#[must_use]
pub fn events_with_reason(alloc: &Alloc, reason: &str) -> Vec<TaskEvent> {
    driver_events(alloc)
        .into_iter()
        .filter(|e| e.detail("reason") == Some(reason))
        .collect()
}

/// The driver's exit-reason events (normally exactly one per task run).
#[must_use]
pub fn exit_events(alloc: &Alloc) -> Vec<TaskEvent> {
    driver_events(alloc)
        .into_iter()
        .filter(|e| {
            e.detail("reason")
                .is_some_and(|r| EXIT_REASONS.contains(&r))
        })
        .collect()
}

/// Waits until the allocation is terminal with one of `statuses` AND carries both the
/// `Terminated` event and the driver's exit-reason event; returns the allocation, the
/// `Terminated` event and the exit-reason event.
pub fn wait_ended(
    api: &Client,
    alloc_id: &str,
    statuses: &[&str],
) -> Result<(Alloc, TaskEvent, TaskEvent)> {
    api.wait_alloc_status(alloc_id, statuses, crate::suite::TIMEOUT)?;
    poll_until(
        &format!("the Terminated and driver exit-reason events of alloc {alloc_id}"),
        EVENT_TIMEOUT,
        POLL,
        |last| {
            let a = api.alloc(alloc_id)?;
            let term = a.last_event(TASK, "Terminated");
            let exit = exit_events(&a).pop();
            if let (Some(t), Some(x)) = (term, exit) {
                return Ok(Some((a, t, x)));
            }
            *last = a.describe();
            Ok(None)
        },
    )
    .map_err(|e| anyhow::anyhow!("{e:#}{}", api.diagnostics(Some(alloc_id))))
}

/// Waits until the task has a `Driver` event with annotation `reason` (a notice); returns it.
pub fn wait_notice(api: &Client, alloc_id: &str, reason: &str) -> Result<TaskEvent> {
    poll_until(
        &format!("a driver notice with reason={reason} in alloc {alloc_id}"),
        EVENT_TIMEOUT,
        POLL,
        |last| {
            let a = api.alloc(alloc_id)?;
            if let Some(e) = events_with_reason(&a, reason).pop() {
                return Ok(Some(e));
            }
            *last = a.describe();
            Ok(None)
        },
    )
    .map_err(|e| anyhow::anyhow!("{e:#}{}", api.diagnostics(Some(alloc_id))))
}

/// Checks `Terminated`'s `exit_code`, `signal` and `oom_killed` details (what Nomad recorded of
/// the driver's `ExitResult`).
pub fn expect_exit_result(term: &TaskEvent, exit_code: i64, signal: i64, oom: bool) -> Result<()> {
    let got = (
        term.detail_i64("exit_code"),
        term.detail_i64("signal").unwrap_or(0),
        term.detail("oom_killed") == Some("true"),
    );
    ensure!(
        got == (Some(exit_code), signal, oom),
        "Terminated reports (exit_code, signal, oom_killed) = {got:?}, expected \
         ({exit_code}, {signal}, {oom}): {term}"
    );
    Ok(())
}

/// Checks that `ev` has each annotation `key = value`.
pub fn expect_details(ev: &TaskEvent, want: &[(&str, &str)]) -> Result<()> {
    let wrong: Vec<String> = want
        .iter()
        .filter(|(k, v)| ev.detail(k) != Some(*v))
        .map(|(k, v)| format!("{k}: want {v:?}, got {:?}", ev.detail(k)))
        .collect();
    ensure!(
        wrong.is_empty(),
        "driver event annotations differ ({}): {ev}",
        wrong.join("; ")
    );
    Ok(())
}

/// Checks the event's message (`DisplayMessage`) is exactly `want`.
pub fn expect_message(ev: &TaskEvent, want: &str) -> Result<()> {
    ensure!(
        ev.display_message == want,
        "driver event message is\n  {:?}\nexpected\n  {want:?}\n({ev})",
        ev.display_message
    );
    Ok(())
}

/// The effective uid of a live process (`Uid:` of `/proc/<pid>/status`).
#[must_use]
pub fn uid_of(pid: i32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A copy of `/bin/sh` named `kill-bot` in a temp dir: a host process whose `comm` is
/// `kill-bot`, running the shell's builtin `kill` itself (no child), so the signal's sender is
/// the `kill-bot` process.
pub struct KillBot {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl KillBot {
    /// Comm of the bot process.
    pub const COMM: &'static str = "kill-bot";

    /// Creates the copy.
    pub fn new() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("bpfexec-e2e-killbot-")
            .tempdir()
            .context("creating the kill-bot dir")?;
        let path = dir.path().join(Self::COMM);
        let sh = fs::canonicalize("/bin/sh").context("resolving /bin/sh")?;
        fs::copy(&sh, &path).with_context(|| format!("copying {}", sh.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
        Ok(Self { _dir: dir, path })
    }

    /// Runs `kill-bot -c 'kill -<sig> <pid>'` and waits for it; returns the bot's pid.
    pub fn send(&self, sig: &str, pid: i32) -> Result<u32> {
        let mut child = std::process::Command::new(&self.path)
            .args(["-c", &format!("kill -{sig} {pid}")])
            .spawn()
            .context("running kill-bot")?;
        let bot = child.id();
        let status = child.wait()?;
        ensure!(
            status.success(),
            "kill-bot -c 'kill -{sig} {pid}' failed: {status}"
        );
        Ok(bot)
    }
}
