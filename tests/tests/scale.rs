//! Issue 12 §3, scale: N tasks at once on one client through the real Nomad agent (one job,
//! `count = N`), Nomad asking each for TaskStats every second (its client's default
//! `collection_interval`), then stopped and garbage-collected: every task starts and stops, and
//! nothing is left (processes, mounts, cgroups, task state dirs, pinned-map entries). Prints
//! one `SCALE` line with the start throughput, the plugin's RSS and CPU while the N tasks run
//! and the machine's load (a shared machine: the figures are noisy).
//!
//! 40 tasks by default; `BPFEXEC_E2E_LONG=1` runs 200.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bpfexec_e2e::jobspec::TASK;
use bpfexec_e2e::leftovers;
use bpfexec_e2e::suite;
use bpfexec_e2e::wait::{POLL, poll_until};
use bpfexec_e2e::{Agent, AgentOptions, Check, run_checks};

static PORT: OnceLock<u16> = OnceLock::new();

/// Small task logs, so a 10 MB `ephemeral_disk` holds them (Nomad checks it).
const SMALL_LOGS: &str = "    logs {\n      max_files     = 2\n      max_file_size = 1\n    }\n";

fn tasks() -> u32 {
    if std::env::var("BPFEXEC_E2E_LONG").is_ok_and(|v| v == "1") {
        200
    } else {
        40
    }
}

#[test]
fn scale() {
    if !suite::is_bpfexec() {
        println!("SKIP: scale: bpfexec-only checks (BPFEXEC_E2E_DRIVER=raw_exec)");
        return;
    }
    let port = *PORT.get_or_init(|| bpfexec_e2e::env::free_port().unwrap_or(0));
    run_checks(
        "scale",
        AgentOptions::bpfexec().plugin_config(&format!("http_addr = \"127.0.0.1:{port}\"")),
        &[Check {
            name: "many_tasks_start_and_stop_clean",
            run: many_tasks_start_and_stop_clean,
        }],
    );
}

/// utime + stime of `pid` in clock ticks.
fn cpu_ticks(pid: i32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').context("stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Ok(f.get(11).context("utime")?.parse::<u64>()? + f.get(12).context("stime")?.parse::<u64>()?)
}

/// VmRSS of `pid` in KiB.
fn rss_kb(pid: i32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The long-lived plugin process (Nomad also starts short-lived ones to validate the config).
fn plugin_pid(agent: &Agent) -> Result<i32> {
    let pids = agent.plugin_pids();
    pids.iter()
        .copied()
        .min_by_key(|p| cpu_ticks(*p).map_or(u64::MAX, |_| 0) + u64::try_from(*p).unwrap_or(0))
        .with_context(|| format!("no plugin process among {pids:?}"))
}

/// Allocation ids of `job` by client status.
fn by_status(agent: &Agent, job: &str) -> Result<(Vec<String>, BTreeMap<String, usize>)> {
    let allocs = agent.api().job_allocs(job)?;
    let mut counts = BTreeMap::new();
    for a in &allocs {
        *counts.entry(a.client_status.clone()).or_default() += 1;
    }
    Ok((allocs.into_iter().map(|a| a.id).collect(), counts))
}

fn many_tasks_start_and_stop_clean(agent: &mut Agent) -> Result<()> {
    let n = tasks();
    let port = *PORT.get().context("port")?;
    let baseline = leftovers::map_baseline(port)?;
    let plugin = plugin_pid(agent)?;
    let rss_idle = rss_kb(plugin)?;
    // 5 MHz and 10 MB of disk each: 200 tasks must fit what Nomad fingerprints on a small
    // machine (its default 300 MB ephemeral disk per allocation placed only 114 here).
    let job = suite::service("scale")
        .count(n)
        .cpu_mhz(5)
        .disk_mb(10)
        .extra_task_hcl(SMALL_LOGS)
        .memory_mb(32)
        .kill_signal("SIGTERM")
        .command("/bin/sleep")
        .args(["100000"]);
    let api = agent.api();
    let t0 = Instant::now();
    let job_id = api.register_job(&job.to_hcl())?;
    let wait = Duration::from_secs(60 + u64::from(n));
    let ids = poll_until(&format!("{n} tasks running"), wait, POLL, |last| {
        let (ids, counts) = by_status(agent, &job_id)?;
        *last = format!("{counts:?}");
        Ok((counts.get("running").copied() == Some(n as usize)).then_some(ids))
    })?;
    let start_s = t0.elapsed().as_secs_f64();

    // Every task reports stats to Nomad (TaskStats, every second).
    for id in &ids {
        let stats = api.alloc_stats(id)?;
        ensure!(
            stats["Tasks"][TASK]["ResourceUsage"]["MemoryStats"].is_object(),
            "alloc {id} has no task stats: {stats}"
        );
    }
    // The plugin's cost with N running tasks, over 20 s.
    let window = Duration::from_secs(20);
    let (c0, w0) = (cpu_ticks(plugin)?, Instant::now());
    let mut rss_peak = rss_kb(plugin)?;
    while w0.elapsed() < window {
        std::thread::sleep(Duration::from_secs(1));
        rss_peak = rss_peak.max(rss_kb(plugin)?);
    }
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;
    let cpu_pct = (cpu_ticks(plugin)? - c0) as f64 / hz / w0.elapsed().as_secs_f64() * 100.0;
    let load_running = loadavg();
    let running = leftovers::map_entries(port)?;

    let t1 = Instant::now();
    api.stop_job(&job_id, false)?;
    poll_until(&format!("{n} tasks stopped"), wait, POLL, |last| {
        let (_, counts) = by_status(agent, &job_id)?;
        *last = format!("{counts:?}");
        Ok((counts.get("complete").copied() == Some(n as usize)).then_some(()))
    })?;
    let stop_s = t1.elapsed().as_secs_f64();
    api.client_gc()?;
    let left = leftovers::wait_nothing_left(agent, &ids, port, &baseline)?;
    println!(
        "SCALE tasks={n} start_s={start_s:.1} start_per_s={:.1} stop_s={stop_s:.1} \
         plugin_rss_mib_idle={:.1} plugin_rss_mib_peak={:.1} plugin_cpu_pct={cpu_pct:.1} \
         load_while_running=\"{load_running}\" maps_running={running:?} maps_after={left:?}",
        f64::from(n) / start_s,
        rss_idle as f64 / 1024.0,
        rss_peak as f64 / 1024.0,
    );
    Ok(())
}
