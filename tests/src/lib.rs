//! Harness for the end-to-end suite: a real, non-dev Nomad agent (server + client) running jobs on
//! the real `nomad-driver-bpfexec` binary, driven through Nomad's HTTP API.
//!
//! Used by the tests in `tests/tests/` and by `cargo xtask demo`. The typical flow:
//!
//! ```no_run
//! use bpfexec_e2e::{Agent, AgentOptions, JobSpec};
//! # fn main() -> anyhow::Result<()> {
//! let agent = Agent::start_ready(AgentOptions::bpfexec())?;
//! let job = JobSpec::batch("hello").command("/bin/echo").args(["hi"]);
//! let api = agent.api();
//! api.register_job(&job.to_hcl())?;
//! let alloc = api.wait_job_alloc("hello", std::time::Duration::from_secs(30))?;
//! let alloc = api.wait_alloc_status(&alloc, &["complete"], std::time::Duration::from_secs(30))?;
//! println!("{}", api.logs(&alloc.id, "task", bpfexec_e2e::LogType::Stdout)?);
//! # Ok(()) }
//! ```
//!
//! Binaries come from the environment: `NOMAD_BIN` (the Nomad 1.10.5 agent) and `DRIVER_BIN` (the
//! driver), both set by `cargo xtask test` (see [`mod@env`]). Everything an [`Agent`] creates (data
//! dir, plugin dir, driver state dir, log) lives in one temp dir that is removed on drop, after
//! the agent and every process it started are gone.
//!
//! Running the suite (as root): `cargo xtask test`, or by hand
//! `NOMAD_BIN=… DRIVER_BIN=… cargo test -p bpfexec-e2e --tests -- --nocapture`. Knobs:
//! `BPFEXEC_E2E_ONLY=check1,check2` (run only those checks), `BPFEXEC_E2E_KEEP=1` (keep each
//! agent's temp dir and log), `BPFEXEC_E2E_DRIVER=raw_exec` (run the checks against Nomad's
//! built-in `raw_exec` to validate the harness itself; no `DRIVER_BIN` needed),
//! `BPFEXEC_E2E_TIME_SCALE=20` (multiply every wait, for software-emulated guests).

pub mod agent;
pub mod api;
mod cleanup;
pub mod config;
pub mod env;
pub mod fileserver;
pub mod harness;
pub mod isolation;
pub mod jobspec;
pub mod journald;
pub mod leftovers;
pub mod mixin;
pub mod observe;
pub mod peers;
pub mod procs;
pub mod suite;
pub mod wait;

pub use agent::{Agent, AgentOptions};
pub use api::{Alloc, Client, LogType, Node, TaskEvent, TaskState};
pub use harness::{Check, run_checks};
pub use jobspec::JobSpec;
pub use wait::poll_until;

/// The driver name jobs use (`driver = "bpfexec"`), as reported by the plugin's `PluginInfo`.
pub const DRIVER_NAME: &str = "bpfexec";

/// The plugin's file name in the agent's `plugin_dir`, which is also the name of its
/// `plugin "…" {}` block in the agent configuration.
pub const PLUGIN_FILE_NAME: &str = "nomad-driver-bpfexec";

/// A string unique to this process and call, usable as a job id suffix or a process marker.
/// Only `[a-z0-9-]`, so it is safe in job ids, HCL strings and shell words.
#[must_use]
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{prefix}-{}-{n}-{:x}",
        std::process::id(),
        nanos % 0x0010_0000
    )
}

/// The last `n` lines of a text file (lossy UTF-8), or a note saying why it can't be read.
/// Nomad's per-request HTTP debug lines (mostly the harness's own polling) are left out.
#[must_use]
pub fn tail_file(path: &std::path::Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| !l.contains("[DEBUG] http: request complete"))
                .collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}
