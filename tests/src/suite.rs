//! Helpers shared by the acceptance checks: which task driver the suite targets, job builders
//! with unique ids, and assertions on `Terminated` events and files tasks write.
//!
//! The suite targets `bpfexec`. `BPFEXEC_E2E_DRIVER=raw_exec` points the same checks at Nomad's
//! built-in `raw_exec` instead (no `DRIVER_BIN` needed): that validates the harness and the
//! checks' expectations against a reference driver; bpfexec-only checks then skip themselves.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use crate::agent::{Agent, AgentOptions};
use crate::api::{Alloc, TaskEvent};
use crate::jobspec::{JobSpec, TASK};
use crate::wait::{POLL, poll_until};
use crate::{DRIVER_NAME, procs, unique};

/// Environment variable selecting the task driver the checks use (`bpfexec` or `raw_exec`).
pub const DRIVER_ENV: &str = "BPFEXEC_E2E_DRIVER";

/// Generous timeout for scheduling plus a short task.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// The task driver under test: `bpfexec` unless `BPFEXEC_E2E_DRIVER=raw_exec`.
#[must_use]
pub fn driver() -> &'static str {
    match std::env::var(DRIVER_ENV).as_deref() {
        Ok("raw_exec") => "raw_exec",
        _ => DRIVER_NAME,
    }
}

/// Whether the suite targets bpfexec (bpfexec-only checks skip otherwise).
#[must_use]
pub fn is_bpfexec() -> bool {
    driver() == DRIVER_NAME
}

/// Agent options for the selected driver.
#[must_use]
pub fn options() -> AgentOptions {
    if is_bpfexec() {
        AgentOptions::bpfexec()
    } else {
        AgentOptions::raw_exec()
    }
}

/// A batch job with a unique id starting with `prefix`, on the selected driver.
#[must_use]
pub fn batch(prefix: &str) -> JobSpec {
    JobSpec::batch(&unique(prefix)).driver(driver())
}

/// A service job with a unique id starting with `prefix`, on the selected driver.
#[must_use]
pub fn service(prefix: &str) -> JobSpec {
    JobSpec::service(&unique(prefix)).driver(driver())
}

/// The `Terminated` event of the task; checks its `exit_code` and `signal` details. (The
/// harness prints the allocation's events when a check fails.)
pub fn expect_terminated(alloc: &Alloc, exit_code: i64, signal: i64) -> Result<TaskEvent> {
    let ev = alloc
        .last_event(TASK, "Terminated")
        .with_context(|| format!("alloc {} has no Terminated event", alloc.id))?;
    let got_code = ev.detail_i64("exit_code");
    let got_signal = ev.detail_i64("signal").unwrap_or(0);
    ensure!(
        got_code == Some(exit_code) && got_signal == signal,
        "Terminated event has exit_code={got_code:?} signal={got_signal}, expected exit_code={exit_code} \
         signal={signal}: {ev}"
    );
    Ok(ev)
}

/// Host path of a file in the allocation's shared dir: `$NOMAD_ALLOC_DIR/<name>` as the task
/// sees it (`/alloc/<name>` inside an isolated task, the same host path otherwise).
#[must_use]
pub fn alloc_file(agent: &Agent, alloc_id: &str, name: &str) -> PathBuf {
    agent.alloc_dir(alloc_id).join("alloc").join(name)
}

/// Waits until `path` exists and is non-empty; returns its trimmed content.
pub fn wait_file(path: &Path, timeout: Duration) -> Result<String> {
    poll_until(&format!("file {}", path.display()), timeout, POLL, |_| {
        Ok(std::fs::read_to_string(path)
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty()))
    })
}

/// Waits until the task wrote its pid (`echo $$ > "$NOMAD_ALLOC_DIR/<name>"`) and returns the
/// HOST pid of that process. An isolated task runs in its own pid namespace, where `$$` is a
/// small number unrelated to host pids; the host process is found through `NSpid` and
/// `NOMAD_ALLOC_ID` (see [`procs::host_pid_of`]).
pub fn wait_task_pid(agent: &Agent, alloc_id: &str, name: &str) -> Result<i32> {
    let path = alloc_file(agent, alloc_id, name);
    let text = wait_file(&path, TIMEOUT)?;
    let inner: i32 = text
        .parse()
        .with_context(|| format!("{} holds {text:?}, not a pid", path.display()))?;
    poll_until(
        &format!("the host process of task pid {inner} of alloc {alloc_id}"),
        Duration::from_secs(10),
        POLL,
        |_| Ok(procs::host_pid_of(alloc_id, inner)),
    )
}

/// Registers a service job, waits until its allocation runs and its task wrote its pid to
/// `$NOMAD_ALLOC_DIR/pid`; returns (job id, alloc id, host pid).
pub fn start_service(agent: &Agent, hcl: &str) -> Result<(String, String, i32)> {
    let api = agent.api();
    let job = api.register_job(hcl)?;
    let alloc = api.wait_job_alloc(&job, TIMEOUT)?;
    api.wait_alloc_status(&alloc, &["running"], TIMEOUT)?;
    let pid = wait_task_pid(agent, &alloc, "pid")?;
    Ok((job, alloc, pid))
}

/// Whether host pid `pid` is alive and still a process of allocation `alloc_id` (guards
/// against pid reuse).
#[must_use]
pub fn task_alive(pid: i32, alloc_id: &str) -> bool {
    procs::is_alive(pid) && procs::env_var(pid, "NOMAD_ALLOC_ID").as_deref() == Some(alloc_id)
}

/// Count of events of type `kind` for the task.
#[must_use]
pub fn count_events(alloc: &Alloc, kind: &str) -> usize {
    alloc.events(TASK).iter().filter(|e| e.kind == kind).count()
}

/// Stops the job and waits for its allocation to become terminal (keeps the shared agent tidy
/// between checks).
pub fn stop_and_wait(agent: &Agent, job: &str, alloc_id: &str) -> Result<Alloc> {
    agent.api().stop_job(job, false)?;
    agent
        .api()
        .wait_alloc_status(alloc_id, &["complete", "failed"], TIMEOUT)
}
