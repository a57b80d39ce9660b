//! Job plumbing shared by the measurements: the three drivers under comparison, registering a
//! one-task job and waiting for its allocation, reading a task's stdout, and purging jobs plus
//! garbage-collecting their allocations (exec's chroot dirs hold ~150k hard links each) so the
//! next sample starts on a quiet client.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bpfexec_e2e::jobspec::TASK;
use bpfexec_e2e::{Agent, Alloc, Client, LogType, poll_until};

use crate::demo::interrupted;

const POLL: Duration = Duration::from_millis(100);

/// A task driver in the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    Bpfexec,
    Exec,
    RawExec,
}

impl Driver {
    pub const ALL: [Driver; 3] = [Driver::Bpfexec, Driver::Exec, Driver::RawExec];

    pub fn name(self) -> &'static str {
        match self {
            Driver::Bpfexec => "bpfexec",
            Driver::Exec => "exec",
            Driver::RawExec => "raw_exec",
        }
    }
}

fn check_interrupt() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// Registers `hcl` and returns `(job id, alloc id)` once the job has an allocation.
pub fn submit(api: &Client, hcl: &str) -> Result<(String, String)> {
    let job = api.register_job(hcl)?;
    let alloc = api.wait_job_alloc(&job, Duration::from_secs(60))?;
    Ok((job, alloc))
}

/// Waits until `alloc` has one of the client statuses in `want`; fails if it ends otherwise.
pub fn wait_status(api: &Client, alloc: &str, want: &[&str], timeout: Duration) -> Result<Alloc> {
    poll_until(
        &format!("alloc {alloc} to reach {want:?}"),
        timeout,
        POLL,
        |last| {
            check_interrupt()?;
            let a = api.alloc(alloc)?;
            if want.contains(&a.client_status.as_str()) {
                return Ok(Some(a));
            }
            if a.is_terminal() {
                return Err(anyhow!(
                    "alloc {alloc} ended {} (wanted {want:?}):\n{}",
                    a.client_status,
                    a.describe()
                ));
            }
            *last = format!("client_status={}", a.client_status);
            Ok(None)
        },
    )
}

/// Runs a batch job to completion and returns its allocation and the task's stdout.
pub fn run_batch(api: &Client, hcl: &str, timeout: Duration) -> Result<(String, Alloc, String)> {
    let (job, alloc) = submit(api, hcl)?;
    let done = wait_status(api, &alloc, &["complete"], timeout)?;
    // Log shipping can trail the exit by a moment.
    let stdout = poll_until("the task's stdout", Duration::from_secs(5), POLL, |_| {
        let text = api.logs(&alloc, TASK, LogType::Stdout).unwrap_or_default();
        Ok((!text.trim().is_empty()).then_some(text))
    })
    .with_context(|| format!("alloc {alloc} printed nothing"))?;
    Ok((job, done, stdout))
}

/// Stops `jobs`, waits until their allocations are terminal, has the client destroy them (and
/// waits until their alloc dirs are gone), then purges the jobs.
pub fn purge_and_gc(agent: &Agent, jobs: &[String], timeout: Duration) -> Result<()> {
    let api = agent.api();
    let mut allocs = Vec::new();
    for job in jobs {
        allocs.extend(api.job_allocs(job)?.into_iter().map(|a| a.id));
        api.stop_job(job, false)?;
    }
    poll_until("the jobs' allocations to stop", timeout, POLL, |last| {
        check_interrupt()?;
        let mut live = 0;
        for id in &allocs {
            if !api.alloc(id)?.is_terminal() {
                live += 1;
            }
        }
        *last = format!("{live} still live");
        Ok((live == 0).then_some(()))
    })?;
    let mut polls = 0u32;
    poll_until("the alloc dirs to be removed", timeout, POLL, |last| {
        check_interrupt()?;
        if polls.is_multiple_of(10) {
            api.client_gc()?;
        }
        polls += 1;
        let left = allocs
            .iter()
            .filter(|a| agent.alloc_dir(a).exists())
            .count();
        *last = format!("{left} left");
        Ok((left == 0).then_some(()))
    })?;
    for job in jobs {
        api.stop_job(job, true)?;
    }
    Ok(())
}
