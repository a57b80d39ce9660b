//! The end-to-end subset `cargo xtask vm-test` runs as root in its cgroup-v2-only QEMU guest
//! (issue 10 §2, issue 11's v2 branches): checks of several suites against ONE real Nomad agent,
//! because every agent start costs tens of seconds under software emulation. Placement in the
//! task's scope under `nomad.slice` with its memory, cpu and cpuset limits and device rules; OOM
//! kills of the main process and of a child (Nomad's `oom_killed` and the driver's reasons);
//! stops through `cgroup.kill` that leave the scope empty; signals to every process, `work_dir`,
//! host namespaces; an escape; `alloc exec` without and with a terminal; exit reasons; the
//! process tree and exec history; TaskStats (per pid, and the scope's `memory.peak`,
//! `memory.stat` and `cpu.stat`); `memory_max = -1`, `cgroup_v2_override`, `memory.swap.max`,
//! `pids.max`, `io.max`/`io.weight`, `group`; PSI of the task's scope in the driver's
//! `/metrics`; no lost probe record. Last, a leak at stop on a second agent with the escape
//! checker off.
//!
//! The checks live in their suites' files (included below as modules; their own `#[test]`
//! entries are not compiled here, as this target has no test harness). On a host this binary
//! does nothing unless `BPFEXEC_VM_GUEST=1` (set by the guest's script): the suites it draws
//! from run there in full already.

#![allow(
    dead_code,
    unused_imports,
    reason = "the included suite files' #[test] entries, and what only they use, are not compiled in a harness-less target"
)]

#[path = "compat_limits.rs"]
mod compat_limits;
#[path = "escapes.rs"]
mod escapes;
#[path = "exec_tty.rs"]
mod exec_tty;
#[path = "exit_reasons.rs"]
mod exit_reasons;
#[path = "oom_reasons.rs"]
mod oom_reasons;
#[path = "process_tree.rs"]
mod process_tree;
#[path = "task_options.rs"]
mod task_options;

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use bpfexec_e2e::isolation::{cgroup_paths, shell_config};
use bpfexec_e2e::jobspec::TASK;
use bpfexec_e2e::suite::{self, TIMEOUT, stop_and_wait};
use bpfexec_e2e::wait::{POLL, poll_until};
use bpfexec_e2e::{Agent, AgentOptions, Check, run_checks};

/// Set (to 1) by `vm-test`'s guest script.
const GUEST_ENV: &str = "BPFEXEC_VM_GUEST";

/// The driver's `http_addr` port (`/metrics`, `/v1/observer`, `/v1/tree`).
static PORT: OnceLock<u16> = OnceLock::new();

/// `staff`, named in `denied_host_gids` as `compat_limits` expects.
const DENIED_GID: u32 = 50;

/// Checks on the agent with the escape checker on (every second).
const CHECKS: &[Check] = &[
    Check {
        name: "cgroup_and_limits",
        run: task_options::cgroup_and_limits,
    },
    Check {
        name: "oom_killed",
        run: task_options::oom_killed,
    },
    Check {
        name: "oom_killed_child",
        run: task_options::oom_killed_child,
    },
    Check {
        name: "signal_group_default",
        run: task_options::signal_group_default,
    },
    Check {
        name: "signal_all_processes",
        run: task_options::signal_all_processes,
    },
    Check {
        name: "work_dir",
        run: task_options::work_dir,
    },
    Check {
        name: "host_namespaces",
        run: task_options::host_namespaces,
    },
    Check {
        name: "escape_while_running",
        run: escapes::escape_while_running,
    },
    Check {
        name: "exec_no_tty",
        run: exec_tty::exec_no_tty,
    },
    Check {
        name: "exec_tty_shell",
        run: exec_tty::exec_tty_shell,
    },
    Check {
        name: "exit_zero",
        run: exit_reasons::exit_zero,
    },
    Check {
        name: "exit_three",
        run: exit_reasons::exit_three,
    },
    Check {
        name: "host_signals",
        run: exit_reasons::host_signals,
    },
    Check {
        name: "other_alloc_sigkill",
        run: exit_reasons::other_alloc_sigkill,
    },
    Check {
        name: "other_alloc_sigkill_short",
        run: exit_reasons::other_alloc_sigkill_short,
    },
    Check {
        name: "self_signal",
        run: exit_reasons::self_signal,
    },
    Check {
        name: "segfault",
        run: exit_reasons::segfault,
    },
    Check {
        name: "driver_stop",
        run: exit_reasons::driver_stop,
    },
    Check {
        name: "kill_timeout_escalation",
        run: exit_reasons::kill_timeout_escalation,
    },
    Check {
        name: "oom_main",
        run: oom_reasons::oom_main,
    },
    Check {
        name: "oom_child_survives",
        run: oom_reasons::oom_child_survives,
    },
    Check {
        name: "oom_child_causes_exit",
        run: oom_reasons::oom_child_causes_exit,
    },
    Check {
        name: "missing_binary",
        run: oom_reasons::missing_binary,
    },
    Check {
        name: "tree_matches_ps",
        run: process_tree::tree_matches_ps,
    },
    Check {
        name: "exec_history_from_start",
        run: process_tree::exec_history_from_start,
    },
    Check {
        name: "task_stats_per_pid",
        run: process_tree::task_stats_per_pid,
    },
    Check {
        name: "task_stats_cgroup",
        run: task_stats_cgroup,
    },
    Check {
        name: "pressure_metrics",
        run: pressure_metrics,
    },
    Check {
        name: "cgroup_override",
        run: compat_limits::cgroup_override,
    },
    Check {
        name: "cgroup_override_refusals",
        run: compat_limits::cgroup_override_refusals,
    },
    Check {
        name: "swap_max",
        run: compat_limits::swap_max,
    },
    Check {
        name: "pids_max",
        run: compat_limits::pids_max,
    },
    Check {
        name: "io_limits",
        run: compat_limits::io_limits,
    },
    Check {
        name: "group",
        run: compat_limits::group,
    },
    // Turns memory oversubscription on for the rest of the agent's life: last but one.
    Check {
        name: "memory_max_unlimited",
        run: compat_limits::memory_max_unlimited,
    },
    Check {
        name: "lost_counter_zero",
        run: exit_reasons::lost_counter_zero,
    },
];

/// Checks after the agent is restarted with `escape_check_interval = "0"`.
const LEAK_CHECKS: &[Check] = &[Check {
    name: "leak_at_stop",
    run: leak_at_stop,
}];

fn main() {
    if std::env::var(GUEST_ENV).as_deref() != Ok("1") {
        println!(
            "v2_guest: runs inside `cargo xtask vm-test`'s cgroup-v2 guest ({GUEST_ENV}=1); \
             its checks run on this host in their own suites"
        );
        return;
    }
    let port = match bpfexec_e2e::env::free_port() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("v2_guest: no free port for the driver's http_addr: {e:#}");
            std::process::exit(1);
        }
    };
    for cell in [
        &PORT,
        &exit_reasons::PORT,
        &oom_reasons::PORT,
        &process_tree::PORT,
    ] {
        let _ = cell.set(port);
    }
    let base = format!(
        "allow_unisolated = true\ndenied_host_gids = \"{DENIED_GID}\"\nhttp_addr = \"127.0.0.1:{port}\""
    );
    // run_checks panics when a check fails; the leak phase still runs, then the panic is
    // passed on so the binary fails.
    let first = std::panic::catch_unwind(|| {
        run_checks(
            "v2_guest",
            AgentOptions::bpfexec()
                .plugin_config(&format!("{base}\nescape_check_interval = \"1s\"")),
            CHECKS,
        );
    });
    run_checks(
        "v2_guest_leaks",
        AgentOptions::bpfexec().plugin_config(&format!("{base}\nescape_check_interval = \"0\"")),
        LEAK_CHECKS,
    );
    if let Err(panic) = first {
        std::panic::resume_unwind(panic);
    }
}

fn leak_at_stop(agent: &mut Agent) -> Result<()> {
    escapes::leak_at_stop(agent)
}

/// The task's scope, from its process's `/proc/<pid>/cgroup`.
fn scope_of(pid: i32) -> Result<std::path::PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .with_context(|| format!("reading /proc/{pid}/cgroup"))?;
    let path = cgroup_paths(&text).get("").cloned().unwrap_or_default();
    Ok(std::path::PathBuf::from(format!("/sys/fs/cgroup{path}")))
}

/// The `Measured` names of one stats object.
fn measured(v: &serde_json::Value) -> Vec<String> {
    v["Measured"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// TaskStats from the scope on v2: Nomad's allocation stats for the task carry MaxUsage (from
/// `memory.peak`), KernelUsage (`memory.stat`'s `kernel`) and CFS throttling (`cpu.stat`), as on
/// v1; the peak is at least what the task allocated and not above the scope's own `memory.peak`.
fn task_stats_cgroup(agent: &mut Agent) -> Result<()> {
    let script = "echo $$ > /alloc/pid\n\
                  /usr/bin/perl -e '$x = \"a\" x (24 << 20); open(F, \">/alloc/big\"); print F 1; \
                  close(F); sleep 1000' &\n\
                  while :; do sleep 1; done";
    let job = suite::service("stats-v2")
        .raw_config(&shell_config(script, &[]))
        .memory_mb(96)
        .kill_signal("SIGKILL");
    let (job_id, alloc, pid) = suite::start_service(agent, &job.to_hcl())?;
    suite::wait_file(&suite::alloc_file(agent, &alloc, "big"), TIMEOUT)?;
    let scope = scope_of(pid)?;
    let api = agent.api();
    let usage = poll_until(
        "the task's cgroup memory and throttling in the alloc stats",
        Duration::from_secs(30),
        POLL,
        |last| {
            let stats = api.alloc_stats(&alloc)?;
            let usage = stats["Tasks"][TASK]["ResourceUsage"].clone();
            *last = usage.to_string().chars().take(2000).collect();
            let mem = measured(&usage["MemoryStats"]);
            let cpu = measured(&usage["CpuStats"]);
            let complete = ["Max Usage", "Kernel Usage", "Usage", "RSS"]
                .iter()
                .all(|f| mem.iter().any(|m| m == f))
                && ["Throttled Periods", "Throttled Time"]
                    .iter()
                    .all(|f| cpu.iter().any(|m| m == f))
                && usage["MemoryStats"]["MaxUsage"].as_u64().unwrap_or(0) >= 24 << 20;
            Ok(complete.then_some(usage))
        },
    )?;
    let max_usage = usage["MemoryStats"]["MaxUsage"].as_u64().unwrap_or(0);
    let peak: u64 = std::fs::read_to_string(scope.join("memory.peak"))
        .context("reading the scope's memory.peak")?
        .trim()
        .parse()
        .context("memory.peak")?;
    println!(
        "alloc stats: MemoryStats {} CpuStats {}; {} memory.peak = {peak}",
        usage["MemoryStats"],
        usage["CpuStats"],
        scope.display()
    );
    ensure!(
        max_usage <= peak,
        "MaxUsage {max_usage} is above the scope's memory.peak {peak}"
    );
    stop_and_wait(agent, &job_id, &alloc)?;
    Ok(())
}

/// One `bpfexec_task_pressure_seconds_total` series of the driver's `/metrics`.
#[derive(Debug)]
struct Pressure {
    resource: String,
    kind: String,
    seconds: f64,
}

/// The task's PSI series on the driver's `/metrics`.
fn pressure_series(alloc: &str) -> Result<Vec<Pressure>> {
    let port = PORT.get().copied().unwrap_or(0);
    let text = ureq::get(format!("http://127.0.0.1:{port}/metrics"))
        .call()
        .context("GET /metrics")?
        .body_mut()
        .read_to_string()
        .context("reading /metrics")?;
    let label = |line: &str, name: &str| -> Option<String> {
        let start = line.find(&format!("{name}=\""))? + name.len() + 2;
        let len = line[start..].find('"')?;
        Some(line[start..start + len].to_owned())
    };
    Ok(text
        .lines()
        .filter(|l| {
            l.starts_with("bpfexec_task_pressure_seconds_total{")
                && l.contains(&format!("alloc_id=\"{alloc}\""))
        })
        .filter_map(|l| {
            Some(Pressure {
                resource: label(l, "resource")?,
                kind: label(l, "kind")?,
                seconds: l.rsplit(' ').next()?.parse().ok()?,
            })
        })
        .collect())
}

/// PSI on v2: three busy loops in a task on two vCPUs keep one of them waiting, so the
/// driver's `/metrics` shows `bpfexec_task_pressure_seconds_total` of the task's scope with cpu
/// "some" stall time growing above 0, next to the memory and io series.
fn pressure_metrics(agent: &mut Agent) -> Result<()> {
    let script = "echo $$ > /alloc/pid\n\
                  for i in 1 2 3; do (while :; do :; done) & done\n\
                  wait";
    let job = suite::service("psi")
        .raw_config(&shell_config(script, &[]))
        .kill_signal("SIGKILL");
    let (job_id, alloc, _pid) = suite::start_service(agent, &job.to_hcl())?;
    let series = poll_until(
        "cpu pressure of the task above 0 in the driver's /metrics",
        Duration::from_secs(30),
        POLL,
        |last| {
            let series = pressure_series(&alloc)?;
            *last = format!("{series:?}");
            let cpu_some = series
                .iter()
                .any(|p| p.resource == "cpu" && p.kind == "some" && p.seconds > 0.0);
            Ok(cpu_some.then_some(series))
        },
    )?;
    println!("pressure series of the task: {series:?}");
    for resource in ["memory", "io"] {
        ensure!(
            series.iter().any(|p| p.resource == resource),
            "no {resource} pressure series for the task: {series:?}"
        );
    }
    stop_and_wait(agent, &job_id, &alloc)?;
    Ok(())
}
