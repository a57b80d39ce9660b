//! Read-only views of an [`Agent`]: API client, paths, log, the driver plugin's processes, and
//! the diagnostics a failing check prints.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Result;

use super::Agent;
use crate::api::{Client, LOG_TAIL_LINES};
use crate::config::AgentLayout;
use crate::{PLUGIN_FILE_NAME, procs, tail_file};

impl Agent {
    /// The API client.
    #[must_use]
    pub fn api(&self) -> &Client {
        &self.api
    }

    /// The HTTP address, e.g. `http://127.0.0.1:4646` (for `NOMAD_ADDR`).
    #[must_use]
    pub fn addr(&self) -> &str {
        self.api.base()
    }

    /// The agent's pid, if running.
    #[must_use]
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// The temp dir holding everything of this agent.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Paths and ports.
    #[must_use]
    pub fn layout(&self) -> &AgentLayout {
        &self.layout
    }

    /// The agent's combined stdout/stderr log (all runs).
    #[must_use]
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last `n` lines of the agent log.
    #[must_use]
    pub fn log_tail(&self, n: usize) -> String {
        tail_file(&self.log_path, n)
    }

    /// Host path of an allocation's dir (`<data_dir>/alloc/<id>`); its shared dir
    /// (`NOMAD_ALLOC_DIR` under `fs_isolation` NONE) is `alloc_dir(id).join("alloc")`.
    #[must_use]
    pub fn alloc_dir(&self, alloc_id: &str) -> PathBuf {
        self.layout.data_dir.join("alloc").join(alloc_id)
    }

    /// The driver copy in the plugin dir.
    #[must_use]
    pub fn plugin_path(&self) -> PathBuf {
        self.layout.plugin_dir.join(PLUGIN_FILE_NAME)
    }

    /// Pids of the driver plugin processes (children of the agent running the plugin binary,
    /// excluding `__supervise` supervisors).
    #[must_use]
    pub fn plugin_pids(&self) -> Vec<i32> {
        let Some(agent) = self.pid() else {
            return Vec::new();
        };
        let plugin = self.plugin_path();
        procs::children(agent)
            .into_iter()
            .filter(|p| {
                let argv = procs::cmdline(*p).unwrap_or_default();
                let by_argv = argv.first().is_some_and(|a| Path::new(a) == plugin);
                let by_exe = procs::exe(*p).is_some_and(|e| e.starts_with(&plugin));
                (by_argv || by_exe) && argv.get(1).is_none_or(|a| a != "__supervise")
            })
            .collect()
    }

    /// Allocations (with events) of every job registered through [`Agent::api`], plus the agent
    /// log tail: what a failing test should print.
    #[must_use]
    pub fn diagnostics(&self) -> String {
        self.diagnostics_since(0)
    }

    /// Like [`Agent::diagnostics`], for the jobs registered after the first `skip` ones.
    #[must_use]
    pub fn diagnostics_since(&self, skip: usize) -> String {
        let mut out = String::new();
        for job in self.api.registered_jobs().into_iter().skip(skip) {
            match self.api.job_allocs(&job) {
                Ok(allocs) if allocs.is_empty() => {
                    let _ = writeln!(out, "job {job}: no allocations");
                }
                Ok(allocs) => {
                    for a in allocs {
                        let _ = writeln!(out, "{}", a.describe());
                    }
                }
                Err(e) => {
                    let _ = writeln!(out, "job {job}: cannot list allocations: {e:#}");
                }
            }
        }
        let _ = write!(
            out,
            "--- last {LOG_TAIL_LINES} lines of {} ---\n{}",
            self.log_path.display(),
            self.log_tail(LOG_TAIL_LINES)
        );
        out
    }

    /// Opens the agent log for appending a note (e.g. test phase markers).
    pub fn note(&self, text: &str) -> Result<()> {
        let mut f: File = OpenOptions::new().append(true).open(&self.log_path)?;
        writeln!(f, "=== bpfexec-e2e: {text} ===")?;
        Ok(())
    }
}
