//! Issue 4 acceptance, process tree: the live tree the driver serves for a running task
//! (`GET /v1/tree` on its local JSON endpoint, `http_addr`) matches `ps` on the host — a main
//! shell with a three-level fork chain below it (sh → sh → sh → sleep): same pids, parents,
//! names, command lines and start times — and follows the task when its deepest process is
//! replaced (fork time and exec recorded). The exec history covers the task from its start (the
//! chain's execs happen within milliseconds of it). The observer's counters
//! (`GET /v1/observer`) expose the ring buffer's lost-record count, which is 0, as is the pinned
//! `LOST` map itself.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use bpfexec_e2e::jobspec::TASK;
use bpfexec_e2e::observe::scenario::expect_nothing_lost;
use bpfexec_e2e::observe::{DriverHttp, Tree, ps_tree};
use bpfexec_e2e::suite::{self, TIMEOUT, stop_and_wait, wait_task_pid};
use bpfexec_e2e::wait::{POLL, poll_until};
use bpfexec_e2e::{Agent, AgentOptions, Check, procs, run_checks};
use nix::sys::signal::Signal;

/// The driver's `http_addr` port for this test process.
pub(crate) static PORT: OnceLock<u16> = OnceLock::new();

fn http() -> DriverHttp {
    DriverHttp::new(*PORT.get().unwrap_or(&0))
}

#[test]
fn process_tree() {
    if !suite::is_bpfexec() {
        println!("SKIP: process_tree: bpfexec-only checks (BPFEXEC_E2E_DRIVER=raw_exec)");
        return;
    }
    let port = *PORT.get_or_init(|| bpfexec_e2e::env::free_port().unwrap_or(0));
    run_checks(
        "process_tree",
        AgentOptions::bpfexec().plugin_config(&format!("http_addr = \"127.0.0.1:{port}\"")),
        &[
            Check {
                name: "tree_matches_ps",
                run: tree_matches_ps,
            },
            Check {
                name: "task_stats_per_pid",
                run: task_stats_per_pid,
            },
            Check {
                name: "exec_history_from_start",
                run: exec_history_from_start,
            },
            Check {
                name: "lost_counter_zero",
                run: lost_counter_zero,
            },
        ],
    );
}

/// Waits until `/v1/tree` of the task satisfies `cond`.
fn wait_tree(alloc: &str, what: &str, cond: impl Fn(&Tree) -> bool) -> Result<Tree> {
    let api = http();
    poll_until(what, Duration::from_secs(15), POLL, |last| {
        match api.tree(alloc, TASK) {
            Ok(t) if cond(&t) => return Ok(Some(t)),
            Ok(t) => *last = format!("{t:?}"),
            Err(e) => *last = format!("{e:#}"),
        }
        Ok(None)
    })
}

fn clock_ticks() -> Result<u64> {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.context("CLK_TCK")?;
    Ok(u64::try_from(hz)?)
}

fn boot_time_s() -> Result<u64> {
    std::fs::read_to_string("/proc/stat")?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .context("no btime in /proc/stat")?
        .trim()
        .parse()
        .context("btime")
}

/// The served tree and `ps` agree on pids, parents, names, command lines and start times.
fn compare_with_ps(tree: &Tree) -> Result<()> {
    let ps = ps_tree(tree.main_pid)?;
    let ours: BTreeMap<u32, (u32, String, String)> = tree
        .processes
        .iter()
        .map(|p| (p.pid, (p.ppid, p.comm.clone(), p.cmdline.join(" "))))
        .collect();
    let theirs: BTreeMap<u32, (u32, String, String)> = ps
        .iter()
        .map(|(pid, r)| (*pid, (r.ppid, r.comm.clone(), r.args.clone())))
        .collect();
    ensure!(
        ours == theirs,
        "the driver's tree differs from ps:\n  driver: {ours:?}\n  ps:     {theirs:?}"
    );
    let (hz, btime) = (clock_ticks()?, boot_time_s()?);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    for p in &tree.processes {
        let ps_start = now - ps[&p.pid].age_s;
        let ticks = p
            .start_time_ticks
            .with_context(|| format!("pid {} has no start time", p.pid))?;
        let ours = btime + ticks / hz;
        ensure!(
            ours.abs_diff(ps_start) <= 2,
            "pid {}: start time {ours} s (ticks {ticks}) but ps says {ps_start} s",
            p.pid
        );
        if let Some(ms) = p.started_at_ms {
            ensure!(
                (ms / 1000).abs_diff(ps_start) <= 2,
                "pid {}: fork time {ms} ms but ps says {ps_start} s",
                p.pid
            );
        }
    }
    Ok(())
}

/// Depth of each process below the main one (main = 0).
fn depths(tree: &Tree) -> Result<BTreeMap<u32, u32>> {
    let parent: BTreeMap<u32, u32> = tree.processes.iter().map(|p| (p.pid, p.ppid)).collect();
    let mut out = BTreeMap::new();
    for p in &tree.processes {
        let (mut cur, mut d) = (p.pid, 0);
        while cur != tree.main_pid {
            cur = *parent
                .get(&cur)
                .with_context(|| format!("pid {} is not below the main process", p.pid))?;
            d += 1;
            ensure!(d < 16, "parent loop at pid {}", p.pid);
        }
        out.insert(d, p.pid);
    }
    Ok(out)
}

/// Starts the chain task; returns (job id, alloc id, host pid of the main process) once
/// `/v1/tree` shows all four processes.
fn start_chain(agent: &Agent, prefix: &str) -> Result<(String, String, Tree)> {
    // One line (ps shows a newline in an argument as `?`); `; :` keeps dash from exec'ing its
    // last command, so each level stays a shell waiting for its child; the deepest shell
    // restarts its sleep forever.
    let script = "echo $$ > /alloc/pid; sh -c 'sh -c \"while :; do sleep 1000; done\"; :'; :";
    let job = suite::service(prefix).shell(script).kill_signal("SIGKILL");
    let api = agent.api();
    let job_id = api.register_job(&job.to_hcl())?;
    let alloc = api.wait_job_alloc(&job_id, TIMEOUT)?;
    api.wait_alloc_status(&alloc, &["running"], TIMEOUT)?;
    let main = u32::try_from(wait_task_pid(agent, &alloc, "pid")?)?;
    let tree = wait_tree(&alloc, "a four-process chain in /v1/tree", |t| {
        t.processes.len() == 4 && t.processes.iter().any(|p| p.comm == "sleep")
    })?;
    ensure!(
        tree.main_pid == main && tree.roots == [main],
        "main pid {} / roots {:?}, expected {main}",
        tree.main_pid,
        tree.roots
    );
    ensure!(
        tree.alloc_id == alloc && tree.task_name == TASK,
        "tree of {}/{}",
        tree.alloc_id,
        tree.task_name
    );
    Ok((job_id, alloc, tree))
}

pub(crate) fn tree_matches_ps(agent: &mut Agent) -> Result<()> {
    let (job_id, alloc, tree) = start_chain(agent, "tree")?;
    println!("tree: {tree:#?}");
    let depth = depths(&tree)?;
    ensure!(
        depth.keys().copied().eq(0..4),
        "not a three-level chain below the main process: depths {depth:?}"
    );
    compare_with_ps(&tree)?;

    // Replace the deepest process: the tree follows, still matches ps, and the new sleep's
    // fork and exec are recorded.
    let old = depth[&3];
    procs::signal(i32::try_from(old)?, Signal::SIGKILL).context("killing the task's sleep")?;
    let tree = wait_tree(&alloc, "the replacement sleep in /v1/tree", |t| {
        t.processes.len() == 4
            && t.processes.iter().any(|p| p.comm == "sleep")
            && !t.processes.iter().any(|p| p.pid == old)
    })?;
    compare_with_ps(&tree)?;
    ensure!(
        tree.exited >= 1,
        "the killed sleep is not counted as exited"
    );
    let new = depths(&tree)?[&3];
    let node = tree.processes.iter().find(|p| p.pid == new);
    ensure!(
        node.is_some_and(|n| n.started_at_ms.is_some()),
        "the replacement sleep {new} has no fork time: {node:?}"
    );
    ensure!(
        tree.execs
            .iter()
            .any(|e| e.pid == new && e.filename.ends_with("sleep")),
        "the replacement sleep's exec is not in the history: {:?}",
        tree.execs
    );
    stop_and_wait(agent, &job_id, &alloc)?;
    Ok(())
}

/// The exec history covers the task from its start (the task's process registers itself with
/// the probes before its exec): the main process's own exec and the execs of the chain's three
/// levels, which happen within milliseconds of the task's start, and their fork times.
pub(crate) fn exec_history_from_start(agent: &mut Agent) -> Result<()> {
    let (job_id, alloc, tree) = start_chain(agent, "tree-start")?;
    let depth = depths(&tree)?;
    let mut missing = Vec::new();
    if let Some(main) = depth.get(&0)
        && !tree.execs.iter().any(|e| e.pid == *main)
    {
        missing.push(format!("the main process's exec (pid {main})"));
    }
    for (level, want) in [(1, "sh"), (2, "sh"), (3, "sleep")] {
        let Some(pid) = depth.get(&level).copied() else {
            missing.push(format!("no level {level}"));
            continue;
        };
        if !tree
            .execs
            .iter()
            .any(|e| e.pid == pid && e.filename.ends_with(want))
        {
            missing.push(format!("exec of {want} by pid {pid} (level {level})"));
        }
        if tree
            .processes
            .iter()
            .find(|p| p.pid == pid)
            .is_none_or(|p| p.started_at_ms.is_none())
        {
            missing.push(format!("fork time of pid {pid} (level {level})"));
        }
    }
    stop_and_wait(agent, &job_id, &alloc)?;
    ensure!(
        missing.is_empty(),
        "the tree misses what the task did right after its start: {}\nexecs: {:?}",
        missing.join(", "),
        tree.execs
    );
    Ok(())
}

/// Nomad's view of the task's resource usage (the driver's TaskStats) has per-pid CPU and memory
/// for every process of the chain.
pub(crate) fn task_stats_per_pid(agent: &mut Agent) -> Result<()> {
    let (job_id, alloc, tree) = start_chain(agent, "stats")?;
    let want: Vec<String> = tree.processes.iter().map(|p| p.pid.to_string()).collect();
    let api = agent.api();
    let pids = poll_until(
        "per-pid usage of every process of the chain in the alloc stats",
        Duration::from_secs(20),
        POLL,
        |last| {
            let stats = api.alloc_stats(&alloc)?;
            let pids = stats["Tasks"][TASK]["Pids"].clone();
            *last = stats.to_string().chars().take(3000).collect();
            Ok(pids
                .as_object()
                .is_some_and(|m| want.iter().all(|p| m.contains_key(p)))
                .then_some(pids))
        },
    )?;
    for pid in &want {
        let rss = pids[pid.as_str()]["MemoryStats"]["RSS"]
            .as_u64()
            .unwrap_or(0);
        ensure!(
            rss > 0,
            "pid {pid} has no RSS in its per-pid usage: {}",
            pids[pid.as_str()]
        );
        ensure!(
            pids[pid.as_str()]["CpuStats"].is_object(),
            "pid {pid} has no CPU stats: {}",
            pids[pid.as_str()]
        );
    }
    println!("per-pid usage for {want:?}");
    stop_and_wait(agent, &job_id, &alloc)?;
    Ok(())
}

fn lost_counter_zero(agent: &mut Agent) -> Result<()> {
    expect_nothing_lost(agent, PORT.get().copied())
}
