//! Helpers for the isolation acceptance checks (issue 3): task `config {}` bodies with the
//! exec-compatible keys, group-level HCL (host volumes), capability masks as in
//! `/proc/<pid>/status` (`capabilities(7)` numbering), sectioned task output, cgroup v1 paths as
//! Nomad lays them out (`/sys/fs/cgroup/<controller>/nomad/<alloc>.<task>`), and waits for a
//! start refusal. Submodules drive `nomad alloc exec` under a pseudo-terminal ([`pty`]) and
//! stream the agent's TRACE log through `/v1/agent/monitor` ([`monitor`]).

pub mod exec;
pub mod monitor;
pub mod pty;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};

use crate::agent::Agent;
use crate::api::{Alloc, LogType, TaskEvent};
use crate::config::hcl_string;
use crate::jobspec::{JobSpec, TASK};
use crate::suite::TIMEOUT;
use crate::wait::{POLL, poll_until};

/// Capability numbers (`linux/capability.h`) of the names the checks use.
const CAP_NUMBERS: [(&str, u32); 16] = [
    ("CHOWN", 0),
    ("DAC_OVERRIDE", 1),
    ("FOWNER", 3),
    ("FSETID", 4),
    ("KILL", 5),
    ("SETGID", 6),
    ("SETUID", 7),
    ("SETPCAP", 8),
    ("NET_BIND_SERVICE", 10),
    ("NET_RAW", 13),
    ("SYS_CHROOT", 18),
    ("SYS_ADMIN", 21),
    ("MKNOD", 27),
    ("AUDIT_WRITE", 29),
    ("SETFCAP", 31),
    ("SYS_PTRACE", 19),
];

/// exec's default capability set: Docker's defaults minus `NET_RAW`.
pub const DEFAULT_CAPS: [&str; 13] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// The bit mask of capability `names` (without `CAP_`), as `CapEff:` prints it.
///
/// # Panics
/// On a name missing from the table above (a bug in the calling test).
#[must_use]
pub fn cap_mask(names: &[&str]) -> u64 {
    names.iter().fold(0, |mask, name| {
        let bit = CAP_NUMBERS
            .iter()
            .find(|(n, _)| n == name)
            .map_or_else(|| panic!("unknown capability {name}"), |(_, b)| *b);
        mask | (1u64 << bit)
    })
}

/// The `CapEff:` mask in a `/proc/<pid>/status` text.
#[must_use]
pub fn cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// A task `config {}` body: `command`, `args` and extra raw lines (e.g. `cap_add = ["chown"]`).
#[must_use]
pub fn config_body(command: &str, args: &[&str], extra: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| hcl_string(a)).collect();
    let mut body = format!(
        "command = {}\n      args = [{}]",
        hcl_string(command),
        args.join(", ")
    );
    for line in extra {
        body.push_str("\n      ");
        body.push_str(line);
    }
    body
}

/// `/bin/sh -c script` with extra config lines.
#[must_use]
pub fn shell_config(script: &str, extra: &[&str]) -> String {
    config_body("/bin/sh", &["-c", script], extra)
}

/// The job's HCL with `extra` inserted at the top of its group (e.g. a `volume {}` block).
pub fn with_group_hcl(job: &JobSpec, extra: &str) -> Result<String> {
    let hcl = job.to_hcl();
    let anchor = "    count = 1\n";
    let at = hcl
        .find(anchor)
        .context("the job HCL has no `count = 1` line to anchor group HCL on")?
        + anchor.len();
    Ok(format!("{}{extra}\n{}", &hcl[..at], &hcl[at..]))
}

/// Splits task output written as `== name` headers followed by lines into name → text.
#[must_use]
pub fn sections(output: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut current: Option<(String, Vec<&str>)> = None;
    for line in output.lines() {
        if let Some(name) = line.strip_prefix("== ") {
            if let Some((n, lines)) = current.take() {
                out.insert(n, lines.join("\n"));
            }
            current = Some((name.trim().to_owned(), Vec::new()));
        } else if let Some((_, lines)) = current.as_mut() {
            lines.push(line);
        }
    }
    if let Some((n, lines)) = current {
        out.insert(n, lines.join("\n"));
    }
    out
}

/// One section of [`sections`], or an error quoting the whole output.
pub fn section<'a>(secs: &'a BTreeMap<String, String>, name: &str) -> Result<&'a str> {
    secs.get(name)
        .map(String::as_str)
        .ok_or_else(|| anyhow!("the task printed no `== {name}` section; sections: {secs:?}"))
}

/// Registers `hcl` (a batch job), waits until it completes and returns the allocation and its
/// stdout (whole).
/// On failure the error also quotes the per-task supervisor logs.
pub fn run_batch(agent: &Agent, hcl: &str) -> Result<(Alloc, String)> {
    let api = agent.api();
    let alloc = api
        .run_job(hcl, &["complete"], TIMEOUT)
        .map_err(|e| anyhow!("{e:#}\n{}", supervisor_logs(agent)))?;
    let out = api.logs(&alloc.id, TASK, LogType::Stdout)?;
    Ok((alloc, out))
}

/// Registers `hcl` and waits for a task event whose text contains `needle` (a start refusal);
/// returns that event. Fails if the task starts instead (a `Started` event appears).
pub fn expect_refusal(agent: &Agent, hcl: &str, needle: &str) -> Result<(String, TaskEvent)> {
    let api = agent.api();
    let job = api.register_job(hcl)?;
    let alloc = api.wait_job_alloc(&job, TIMEOUT)?;
    let ev = poll_until(
        &format!("a task event of alloc {alloc} naming {needle:?}"),
        TIMEOUT,
        POLL,
        |last| {
            let a = api.alloc(&alloc)?;
            let events = a.events(TASK);
            if let Some(e) = events.iter().find(|e| e.kind == "Started") {
                bail!("the task started ({e}) although it should have been refused");
            }
            if let Some(e) = events.iter().find(|e| e.all_text().contains(needle)) {
                return Ok(Some(e.clone()));
            }
            *last = a.describe();
            Ok(None)
        },
    )
    .map_err(|e| anyhow!("{e:#}{}", api.diagnostics(Some(&alloc))))?;
    Ok((alloc, ev))
}

/// The cgroup v1 controllers bpfexec places tasks in, with Nomad's layout.
pub const V1_CONTROLLERS: [&str; 3] = ["memory", "cpu", "freezer"];

/// Nomad's cgroup v1 directory of a task for `controller`.
#[must_use]
pub fn v1_task_cgroup(controller: &str, alloc: &str, task: &str) -> PathBuf {
    PathBuf::from(format!("/sys/fs/cgroup/{controller}/nomad/{alloc}.{task}"))
}

/// `controller` → path, from a `/proc/<pid>/cgroup` text (v1 lines `N:ctrl[,ctrl]:/path`).
#[must_use]
pub fn cgroup_paths(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        for c in ctrls.split(',') {
            out.insert(c.to_owned(), path.to_owned());
        }
    }
    out
}

/// Whether the host uses cgroup v2 only (no v1 memory controller hierarchy).
#[must_use]
pub fn host_is_cgroup_v2() -> bool {
    std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// The per-task supervisor logs under the agent's driver state dir (for failure reports).
#[must_use]
pub fn supervisor_logs(agent: &Agent) -> String {
    let dir = agent.layout().state_dir.join("tasks");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return format!("(no {})", dir.display());
    };
    let mut out = String::new();
    for e in entries.flatten() {
        let log = e.path().join("supervisor.log");
        if let Ok(text) = std::fs::read_to_string(&log) {
            let _ = writeln!(out, "--- {} ---\n{}", log.display(), text.trim_end());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_mask_matches_exec() {
        assert_eq!(cap_mask(&DEFAULT_CAPS), 0xa804_05fb);
        assert_eq!(cap_mask(&["CHOWN"]), 1);
        assert_eq!(
            cap_eff("Name:\tx\nCapEff:\t00000000a80405fb\n"),
            Some(0xa804_05fb)
        );
    }

    #[test]
    fn sections_and_cgroups_parse() {
        let s = sections("junk\n== a\n1\n2\n== b\n== c\nx");
        assert_eq!(s["a"], "1\n2");
        assert_eq!(s["b"], "");
        assert_eq!(s["c"], "x");
        let c = cgroup_paths("4:memory:/nomad/a.t\n1:cpu,cpuacct:/nomad/a.t\n0::/x");
        assert_eq!(c["memory"], "/nomad/a.t");
        assert_eq!(c["cpuacct"], "/nomad/a.t");
        assert_eq!(c[""], "/x");
    }

    #[test]
    fn group_hcl_is_inserted() {
        let job = JobSpec::batch("j");
        let hcl = with_group_hcl(&job, "    volume \"v\" {}").expect("anchor");
        assert!(hcl.contains("count = 1\n    volume \"v\" {}\n"));
    }
}
