//! Building blocks of the observer scenarios: gated task scripts (the test learns the task's
//! host pid before anything happens), a memory hog and a real segfault in Perl, the end of a
//! task with its single exit-reason event, and small readers (memory cgroup, process name,
//! numeric annotations, the driver's size wording).

use anyhow::{Context, Result, ensure};

use super::{exit_events, wait_ended};
use crate::agent::Agent;
use crate::api::{Alloc, TaskEvent};
use crate::isolation::cgroup_paths;
use crate::suite::{TIMEOUT, alloc_file, wait_task_pid};

/// Script prefix: record the pid, then wait for `/alloc/go`.
pub const GATE: &str = "echo $$ > /alloc/pid\nwhile [ ! -e /alloc/go ]; do sleep 0.1; done\n";

/// Perl growing to 200 MiB (run under `memory = 32`).
pub const HOG: &str = "/usr/bin/perl -e '$x = \"a\" x (200*1024*1024); print \"survived\\n\"'";

/// Perl dereferencing address 1: a real SIGSEGV raised by the kernel (`SEGV_MAPERR`).
pub const SEGV: &str = "/usr/bin/perl -e '$a = unpack(\"p\", pack(\"Q\", 1)); print $a'";

/// Registers `hcl`, waits until its task runs and wrote `/alloc/pid`; returns (job id, alloc id,
/// host pid of the main process).
pub fn start_gated(agent: &Agent, hcl: &str) -> Result<(String, String, i32)> {
    let api = agent.api();
    let job = api.register_job(hcl)?;
    let alloc = api.wait_job_alloc(&job, TIMEOUT)?;
    api.wait_alloc_status(&alloc, &["running"], TIMEOUT)?;
    let pid = wait_task_pid(agent, &alloc, "pid")?;
    Ok((job, alloc, pid))
}

/// Creates `/alloc/<name>` of the allocation (releases a [`GATE`]).
pub fn go(agent: &Agent, alloc: &str, name: &str) -> Result<()> {
    std::fs::write(alloc_file(agent, alloc, name), b"go\n").context("writing the go file")
}

/// Waits for the end of a task, prints it, checks there is exactly one exit-reason event;
/// returns (alloc, `Terminated`, the driver's exit-reason event).
pub fn ended(
    agent: &Agent,
    alloc: &str,
    statuses: &[&str],
) -> Result<(Alloc, TaskEvent, TaskEvent)> {
    let (a, term, ev) = wait_ended(agent.api(), alloc, statuses)?;
    println!("Terminated: {term}");
    println!("Driver:     {ev}");
    let n = exit_events(&a).len();
    ensure!(
        n == 1,
        "expected one exit-reason event, found {n}:\n{}",
        a.describe()
    );
    Ok((a, term, ev))
}

/// The memory cgroup of `pid` as the kernel names it (`/nomad/<alloc>.<task>` on cgroup v1,
/// the unified path on v2).
pub fn memory_cgroup(pid: i32) -> Result<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    let paths = cgroup_paths(&text);
    paths
        .get("memory")
        .or_else(|| paths.get(""))
        .cloned()
        .with_context(|| format!("no memory cgroup in /proc/{pid}/cgroup:\n{text}"))
}

/// The process name (`comm` of the thread-group leader), empty if it is gone.
#[must_use]
pub fn comm_of(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().to_owned())
        .unwrap_or_default()
}

/// A numeric annotation.
pub fn detail_u64(ev: &TaskEvent, key: &str) -> Result<u64> {
    ev.detail(key)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("annotation {key} missing or not a number: {ev}"))
}

/// How the driver's exit messages print a size: MiB from 10 MiB on, KiB below.
#[must_use]
pub fn size_text(kb: u64) -> String {
    if kb >= 10 * 1024 {
        format!("{} MiB", kb / 1024)
    } else {
        format!("{kb} KiB")
    }
}

/// The probes lost no ring-buffer record: the driver's pinned `LOST` map and, with the driver's
/// `http_addr` port, its `/v1/observer` counter both say 0 (and the observer did process
/// events).
pub fn expect_nothing_lost(agent: &Agent, http_port: Option<u16>) -> Result<()> {
    let pinned = super::lost_events(&agent.layout().pin_dir)?;
    println!("pinned LOST (sum over CPUs) = {pinned}");
    ensure!(
        pinned == 0,
        "the pinned LOST map counts {pinned} lost records"
    );
    if let Some(port) = http_port {
        let stats = super::DriverHttp::new(port).observer()?;
        println!("/v1/observer: {stats}");
        let field = |k: &str| stats.get(k).and_then(serde_json::Value::as_u64);
        let lost = field("lost_events").context("/v1/observer has no lost_events")?;
        ensure!(lost == 0, "/v1/observer reports {lost} lost records");
        ensure!(
            field("events_processed").unwrap_or(0) > 0,
            "the observer processed no events: {stats}"
        );
    }
    Ok(())
}
