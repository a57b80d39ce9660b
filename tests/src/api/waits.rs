//! Waits on allocation state through the API. Each has a timeout; each error carries the
//! allocation's task events (or the job's evaluations when nothing was placed) and the last
//! [`LOG_TAIL_LINES`] lines of the agent log, so a failing test explains itself.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Result, anyhow};

use super::{Alloc, Client, LogType, TaskEvent};
use crate::wait::{POLL, poll_until};

/// How many agent log lines wait errors quote.
pub const LOG_TAIL_LINES: usize = 60;

impl Client {
    /// Diagnostics for an error: the allocation (with events) if given, then the agent log tail.
    #[must_use]
    pub fn diagnostics(&self, alloc: Option<&str>) -> String {
        let mut out = String::new();
        if let Some(id) = alloc {
            match self.alloc(id) {
                Ok(a) => {
                    let _ = write!(out, "\n{}", a.describe());
                }
                Err(e) => {
                    let _ = write!(out, "\n(could not read alloc {id}: {e:#})");
                }
            }
        }
        if let Some(path) = &self.log_path {
            let _ = write!(
                out,
                "\n--- last {LOG_TAIL_LINES} lines of {} ---\n{}",
                path.display(),
                crate::tail_file(path, LOG_TAIL_LINES)
            );
        }
        out
    }

    /// Waits until `job` has an allocation; returns the newest one's id. On timeout the error
    /// includes the job's evaluations (placement failures say which constraint or driver
    /// filtered the node).
    pub fn wait_job_alloc(&self, job: &str, timeout: Duration) -> Result<String> {
        poll_until(
            &format!("an allocation of job {job}"),
            timeout,
            POLL,
            |_| Ok(self.job_allocs(job)?.into_iter().next().map(|a| a.id)),
        )
        .map_err(|e| {
            let evals = self
                .job_evaluations(job)
                .map_or_else(|e| format!("{e:#}"), |v| v.to_string());
            anyhow!(
                "{e:#}\nevaluations of {job}: {evals}{}",
                self.diagnostics(None)
            )
        })
    }

    /// Waits until allocation `alloc` has one of the client statuses in `want` (`pending`,
    /// `running`, `complete`, `failed`, `lost`). Fails early if it becomes terminal with
    /// another status.
    pub fn wait_alloc_status(
        &self,
        alloc: &str,
        want: &[&str],
        timeout: Duration,
    ) -> Result<Alloc> {
        let result = poll_until(
            &format!("alloc {alloc} to reach client status {want:?}"),
            timeout,
            POLL,
            |last| {
                let a = self.alloc(alloc)?;
                if want.contains(&a.client_status.as_str()) {
                    return Ok(Some(a));
                }
                if a.is_terminal() {
                    return Err(anyhow!(
                        "alloc {alloc} ended with client status {:?}, expected one of {want:?}",
                        a.client_status
                    ));
                }
                *last = format!("client_status={}", a.client_status);
                Ok(None)
            },
        );
        result.map_err(|e| anyhow!("{e:#}{}", self.diagnostics(Some(alloc))))
    }

    /// Waits until `task` of `alloc` has an event of type `kind` (e.g. `Terminated`,
    /// `Failed Validation`); returns the newest such event.
    pub fn wait_task_event(
        &self,
        alloc: &str,
        task: &str,
        kind: &str,
        timeout: Duration,
    ) -> Result<TaskEvent> {
        poll_until(
            &format!("a {kind:?} event of task {task} in alloc {alloc}"),
            timeout,
            POLL,
            |_| Ok(self.alloc(alloc)?.last_event(task, kind)),
        )
        .map_err(|e| anyhow!("{e:#}{}", self.diagnostics(Some(alloc))))
    }

    /// Waits until the `stdout`/`stderr` log of `task` contains `needle`; returns the log.
    pub fn wait_logs_contain(
        &self,
        alloc: &str,
        task: &str,
        kind: LogType,
        needle: &str,
        timeout: Duration,
    ) -> Result<String> {
        poll_until(
            &format!("{kind:?} of task {task} in alloc {alloc} to contain {needle:?}"),
            timeout,
            POLL,
            |last| {
                match self.logs(alloc, task, kind) {
                    Ok(text) if text.contains(needle) => return Ok(Some(text)),
                    Ok(text) => *last = format!("log so far: {text:?}"),
                    Err(e) => *last = format!("{e:#}"),
                }
                Ok(None)
            },
        )
        .map_err(|e| anyhow!("{e:#}{}", self.diagnostics(Some(alloc))))
    }

    /// Registers `hcl`, waits for its allocation and for that allocation to reach one of
    /// `want`; returns the allocation.
    pub fn run_job(&self, hcl: &str, want: &[&str], timeout: Duration) -> Result<Alloc> {
        let job = self.register_job(hcl)?;
        let alloc = self.wait_job_alloc(&job, timeout)?;
        self.wait_alloc_status(&alloc, want, timeout)
    }

    /// Stops every job of the cluster and waits (up to `timeout`) until every allocation is
    /// terminal. Best effort: returns the first error but tries everything.
    pub fn stop_all_jobs(&self, timeout: Duration) -> Result<()> {
        let mut first_err = None;
        for job in self.jobs()? {
            if let Err(e) = self.stop_job(&job, false) {
                first_err.get_or_insert(e);
            }
        }
        let waited = poll_until("every allocation to be terminal", timeout, POLL, |last| {
            let live: Vec<String> = self
                .allocs()?
                .into_iter()
                .filter(|a| !a.is_terminal())
                .map(|a| format!("{} ({})", a.id, a.client_status))
                .collect();
            if live.is_empty() {
                return Ok(Some(()));
            }
            *last = live.join(", ");
            Ok(None)
        });
        if let Err(e) = waited {
            first_err.get_or_insert(e);
        }
        first_err.map_or(Ok(()), Err)
    }
}
