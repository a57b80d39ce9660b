//! Per-task memory of the helper processes each driver keeps next to a task, measured with K
//! sleeping tasks per driver (one driver at a time): RSS and PSS from `/proc/<pid>/smaps_rollup`
//! (PSS splits shared pages among the processes mapping them, so it is the fair per-task cost).
//! Helpers: bpfexec's `nomad-driver-bpfexec __supervise` processes (executable in the agent's
//! plugin dir, other than the plugin itself); exec's and raw_exec's `nomad executor`; and, for
//! every driver alike, Nomad's per-task `nomad logmon`. The bpfexec plugin process itself is
//! shared by all tasks of the node and reported separately.

use std::path::Path;
use std::time::Duration;

use anyhow::{Result, bail};
use bpfexec_e2e::{Agent, JobSpec, procs};
use serde_json::{Value, json};

use super::jobs::{self, Driver};
use crate::demo;

/// RSS and PSS in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mem {
    pub rss_kib: u64,
    pub pss_kib: u64,
}

impl Mem {
    fn add(&mut self, other: Mem) {
        self.rss_kib += other.rss_kib;
        self.pss_kib += other.pss_kib;
    }
}

/// `Rss:` and `Pss:` of one process (zero if it vanished).
pub fn mem_of(pid: i32) -> Mem {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    parse_rollup(&text)
}

fn parse_rollup(text: &str) -> Mem {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Mem {
        rss_kib: field("Rss:"),
        pss_kib: field("Pss:"),
    }
}

/// Helper processes of one kind: how many and their summed memory.
#[derive(Debug, Clone, Copy, Default)]
pub struct Group {
    pub count: usize,
    pub mem: Mem,
}

impl Group {
    pub fn of(pids: &[i32]) -> Self {
        let mut mem = Mem::default();
        for p in pids {
            mem.add(mem_of(*p));
        }
        Self {
            count: pids.len(),
            mem,
        }
    }

    pub fn to_json(self, tasks: usize) -> Value {
        let per = |v: u64| (v as f64 / tasks.max(1) as f64 / 1024.0 * 100.0).round() / 100.0;
        json!({
            "processes": self.count,
            "rss_kib_total": self.mem.rss_kib,
            "pss_kib_total": self.mem.pss_kib,
            "rss_mib_per_task": per(self.mem.rss_kib),
            "pss_mib_per_task": per(self.mem.pss_kib),
        })
    }
}

/// What one driver's K tasks cost.
#[derive(Debug, Clone)]
pub struct Measurement {
    pub driver: Driver,
    pub tasks: usize,
    /// supervisors (bpfexec) or executors (exec, raw_exec)
    pub driver_helpers: Group,
    pub logmon: Group,
    /// The bpfexec plugin (shared by every task of the node).
    pub plugin: Option<Group>,
}

impl Measurement {
    pub fn to_json(&self) -> Value {
        json!({
            "tasks": self.tasks,
            "driver_helpers": self.driver_helpers.to_json(self.tasks),
            "logmon": self.logmon.to_json(self.tasks),
            "plugin_shared": self.plugin.map(|g| g.to_json(1)),
        })
    }
}

fn agent_children_matching(agent: &Agent, word: &str) -> Vec<i32> {
    let Some(agent_pid) = agent.pid() else {
        return Vec::new();
    };
    procs::children(agent_pid)
        .into_iter()
        .filter(|p| procs::cmdline(*p).is_some_and(|argv| argv.get(1).is_some_and(|a| a == word)))
        .collect()
}

pub fn bpfexec_helpers(agent: &Agent) -> Vec<i32> {
    let plugin = agent.plugin_path();
    let plugins = agent.plugin_pids();
    procs::find(|p| {
        let by_exe = procs::exe(p).is_some_and(|e| e.starts_with(&plugin));
        let by_argv = procs::cmdline(p)
            .and_then(|a| a.first().cloned())
            .is_some_and(|a| Path::new(&a) == plugin);
        (by_exe || by_argv) && !plugins.contains(&p)
    })
}

/// Starts `tasks` sleeping tasks on `driver`, measures, and removes them.
pub fn measure(agent: &Agent, driver: Driver, tasks: usize) -> Result<Measurement> {
    let api = agent.api();
    let mut job_ids = Vec::new();
    let mut allocs = Vec::new();
    for i in 0..tasks {
        let id = format!("bench-mem-{}-{i}", driver.name().replace('_', "-"));
        let hcl = JobSpec::service(&id)
            .driver(driver.name())
            .command("/bin/sleep")
            .args(["3600"])
            .to_hcl();
        let (job, alloc) = jobs::submit(api, &hcl)?;
        job_ids.push(job);
        allocs.push(alloc);
    }
    for alloc in &allocs {
        jobs::wait_status(api, alloc, &["running"], Duration::from_secs(600))?;
    }
    // Let the helpers finish their start-up work (executor and logmon settle after a moment).
    if demo::sleep(Duration::from_secs(3)) {
        bail!("interrupted");
    }
    let driver_helpers = match driver {
        Driver::Bpfexec => Group::of(&bpfexec_helpers(agent)),
        Driver::Exec | Driver::RawExec => Group::of(&agent_children_matching(agent, "executor")),
    };
    let logmon = Group::of(&agent_children_matching(agent, "logmon"));
    let plugin = (driver == Driver::Bpfexec).then(|| Group::of(&agent.plugin_pids()));
    jobs::purge_and_gc(agent, &job_ids, Duration::from_secs(300))?;
    Ok(Measurement {
        driver,
        tasks,
        driver_helpers,
        logmon,
        plugin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_smaps_rollup() {
        let text = "55d0-7ffd ---p 00000000 00:00 0 [rollup]\nRss:                2560 kB\nPss:                 731 kB\nPss_Dirty:           300 kB\n";
        assert_eq!(
            parse_rollup(text),
            Mem {
                rss_kib: 2560,
                pss_kib: 731
            }
        );
    }
}
