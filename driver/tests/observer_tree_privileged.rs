//! Privileged test (root; without root it prints SKIP, except under `CI=true` where that is a
//! failure) of the observer's live process tree on the real kernel, checked against `ps`: a task
//! whose main process starts a three-level fork chain (sh → sh → sh → sleep) is reported with
//! the same pids, parents, names, command lines and start times as `ps -e` shows, with every
//! exec in its history; when the deepest process is replaced the tree follows. Then an exec/fork
//! storm in a second task (thousands of short processes) is fully accounted for (exits counted,
//! bounded exec history) and the ring buffer's `LOST` counter stays 0.
//!
//! The end-to-end suite checks the tree a running driver serves (`tests/tests/process_tree.rs`,
//! `/v1/tree`); this test drives `bpfexec_driver::observer` and the probes directly, tracking
//! before the processes start, under a per-test bpffs pin directory removed afterwards.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::too_many_lines,
    reason = "a test: failures should panic loudly, and the scenario reads best in one piece"
)]

mod support;

use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};
use support::{PinRoot, Reaper, have_root, spawn_gated};

use bpfexec_driver::{
    observer::{Observer, ObserverConfig, ProcessTree, TaskKey, TaskMeta},
    probes::{ProbeOptions, ProbeSet},
};
use nix::{sys::signal::Signal, unistd::Pid};

/// Short processes of the storm task; `BPFEXEC_TEST_STORM` lowers it where forks are slow (the
/// software-emulated guests of `cargo xtask vm-test` manage a few per second).
fn storm_size() -> u32 {
    std::env::var("BPFEXEC_TEST_STORM")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

fn start_time_ticks(pid: u32) -> u64 {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    text.rfind(')')
        .and_then(|i| text[i + 2..].split_whitespace().nth(19)?.parse().ok())
        .unwrap_or(0)
}

fn meta(name: &str, pid: u32) -> TaskMeta {
    TaskMeta {
        task_id: format!("alloc-{name}/{name}/t"),
        alloc_id: format!("alloc-{name}"),
        task_name: name.to_owned(),
        main_pid: pid,
        main_start_time: start_time_ticks(pid),
        supervisor_pid: None,
        memcg_dir: None,
        home: None,
        other_homes: Vec::new(),
    }
}

fn key(name: &str) -> TaskKey {
    TaskKey::from_task_id(&format!("tree-ps-test-{}-{name}", std::process::id()))
}

/// One row of `ps`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PsRow {
    ppid: u32,
    comm: String,
    args: String,
    /// Seconds since the process started (`etimes`).
    age_s: u64,
}

/// `ps -e -o pid=,ppid=,etimes=,comm=,args=`, restricted to `root` and its descendants.
fn ps_tree(root: u32) -> BTreeMap<u32, PsRow> {
    let out = Command::new("ps")
        .args(["-e", "-o", "pid=,ppid=,etimes=,comm=,args="])
        .output()
        .expect("running ps");
    assert!(out.status.success(), "ps failed: {out:?}");
    let mut all = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut f = line.split_whitespace();
        let (Some(pid), Some(parent), Some(age), Some(comm)) =
            (f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let row = PsRow {
            ppid: parent.parse().unwrap(),
            age_s: age.parse().unwrap(),
            comm: comm.to_owned(),
            args: f.collect::<Vec<_>>().join(" "),
        };
        all.insert(pid.parse::<u32>().unwrap(), row);
    }
    let mut tree = BTreeMap::new();
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        if let Some(row) = all.get(&p) {
            tree.insert(p, row.clone());
            stack.extend(all.iter().filter(|(_, r)| r.ppid == p).map(|(c, _)| *c));
        }
    }
    tree
}

/// System boot time (`btime` of /proc/stat), seconds since the epoch.
fn boot_time_s() -> u64 {
    fs::read_to_string("/proc/stat")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The observer's tree and `ps` agree on pids, parents, names, command lines and start times.
fn assert_matches_ps(tree: &ProcessTree, main: u32) {
    let ps = ps_tree(main);
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap()
        .cast_unsigned();
    let btime = boot_time_s();
    let now = now_s();
    let ours: BTreeMap<u32, (u32, String, String)> = tree
        .processes
        .iter()
        .map(|p| (p.pid, (p.ppid, p.comm.clone(), p.cmdline.join(" "))))
        .collect();
    let theirs: BTreeMap<u32, (u32, String, String)> = ps
        .iter()
        .map(|(pid, r)| (*pid, (r.ppid, r.comm.clone(), r.args.clone())))
        .collect();
    assert_eq!(ours, theirs, "observer tree (left) vs ps (right)");
    for p in &tree.processes {
        let row = &ps[&p.pid];
        // ps: started `etimes` whole seconds ago; ours: clock ticks after boot.
        let ps_start = now - row.age_s;
        let ticks = p.start_time_ticks.expect("start time of a live process");
        let our_start = btime + ticks / hz;
        assert!(
            our_start.abs_diff(ps_start) <= 2,
            "pid {}: start {our_start} (ticks {ticks}) vs ps {ps_start}",
            p.pid
        );
        if let Some(ms) = p.started_at_ms {
            assert!(
                (ms / 1000).abs_diff(ps_start) <= 2,
                "pid {}: fork time {ms} ms vs ps start {ps_start} s",
                p.pid
            );
        }
    }
}

async fn wait_tree(
    observer: &Observer,
    k: TaskKey,
    what: &str,
    mut cond: impl FnMut(&ProcessTree) -> bool,
) -> ProcessTree {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(t) = observer.tree(k).filter(|t| cond(t)) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; tree: {:?}",
            observer.tree(k)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tree_matches_ps_and_nothing_is_lost() {
    if !have_root("tree_matches_ps_and_nothing_is_lost") {
        return;
    }
    let pins = PinRoot::new("tree-ps");
    let probes = Arc::new(
        ProbeSet::load_with(&ProbeOptions::pinned_at(&pins.0)).expect("loading the probes"),
    );
    let observer = Observer::start(
        Arc::clone(&probes),
        ObserverConfig::default(),
        bpfexec_driver::telemetry::FactBus::new(),
    );
    let mut reaper = Reaper::default();

    // Main sh → level-1 sh → level-2 sh → sleep; each shell waits for its child (`; :` keeps
    // dash from exec'ing its last command), the level-2 shell restarts its sleep forever.
    let (main, mut stdin) =
        spawn_gated("sh -c 'sh -c \"while :; do sleep 1000; done\"; :' level1; :");
    let main_pid = main.id();
    reaper.0.push(main_pid);
    let k = key("chain");
    observer
        .track(k, meta("chain", main_pid))
        .expect("tracking the task");
    stdin.write_all(b"go\n").unwrap();
    let tree = wait_tree(&observer, k, "a four-process chain", |t| {
        t.processes.len() == 4 && t.processes.iter().any(|p| p.comm == "sleep")
    })
    .await;
    println!("{}", serde_json::to_string_pretty(&tree).unwrap());
    reaper.0.extend(tree.processes.iter().map(|p| p.pid));
    assert_eq!(tree.roots, [main_pid]);
    assert_eq!(tree.main_pid, main_pid);
    assert_eq!(tree.alloc_id, "alloc-chain");
    // A chain: every process but the main one is the child of the previous one.
    let mut depth = BTreeMap::new();
    for p in &tree.processes {
        let mut d = 0;
        let mut cur = p.pid;
        while cur != main_pid {
            cur = tree.processes.iter().find(|q| q.pid == cur).unwrap().ppid;
            d += 1;
            assert!(d < 10, "pid {} is not below the main process", p.pid);
        }
        depth.insert(d, p.pid);
    }
    assert_eq!(depth.keys().copied().collect::<Vec<_>>(), [0, 1, 2, 3]);
    assert_matches_ps(&tree, main_pid);
    let exec_files: Vec<&str> = tree.execs.iter().map(|e| e.filename.as_str()).collect();
    assert!(
        exec_files.iter().filter(|f| f.ends_with("sh")).count() >= 2
            && exec_files.iter().any(|f| f.ends_with("sleep")),
        "exec history misses the chain's execs: {exec_files:?}"
    );
    assert_eq!(observer.pid_usage(k).len(), 4);

    // Replace the deepest process: the tree follows, and still matches ps.
    let old_sleep = depth[&3];
    nix::sys::signal::kill(Pid::from_raw(old_sleep as i32), Signal::SIGKILL).unwrap();
    let tree = wait_tree(&observer, k, "the replacement sleep", |t| {
        t.processes.len() == 4
            && !t.processes.iter().any(|p| p.pid == old_sleep)
            && t.processes.iter().any(|p| p.comm == "sleep")
    })
    .await;
    reaper.0.extend(tree.processes.iter().map(|p| p.pid));
    assert_matches_ps(&tree, main_pid);
    assert!(
        tree.exited >= 1,
        "the killed sleep is not counted as exited"
    );
    nix::sys::signal::kill(Pid::from_raw(main_pid as i32), Signal::SIGKILL).unwrap();
    observer.forget(k).unwrap();

    // An exec/fork storm: `storm_n` short processes, every one accounted for, nothing lost.
    let storm_n = storm_size();
    let before = observer.stats();
    let (storm, mut stdin) = spawn_gated(&format!(
        "i=0; while [ $i -lt {storm_n} ]; do /bin/true; i=$((i+1)); done; exec sleep 1000"
    ));
    let storm_pid = storm.id();
    reaper.0.push(storm_pid);
    let ks = key("storm");
    observer.track(ks, meta("storm", storm_pid)).unwrap();
    let t0 = Instant::now();
    stdin.write_all(b"go\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let tree = loop {
        let t = observer.tree(ks).unwrap();
        if t.exited >= u64::from(storm_n) {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "storm not accounted for: {} of {storm_n} exits seen",
            t.exited
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took = t0.elapsed();
    let after = observer.stats();
    println!(
        "storm: {storm_n} processes in {took:.1?}; exited {}, execs kept {} dropped {}; stats before \
         {before:?} after {after:?}",
        tree.exited,
        tree.execs.len(),
        tree.execs_dropped
    );
    assert_eq!(tree.exited, u64::from(storm_n), "exits counted");
    assert!(tree.execs.len() <= ObserverConfig::default().exec_history);
    assert!(
        tree.execs.len() as u64 + tree.execs_dropped >= u64::from(storm_n),
        "execs kept + dropped < {storm_n}"
    );
    // fork + exec + exit of each short process.
    assert!(
        after.events_processed - before.events_processed >= 3 * u64::from(storm_n),
        "events processed {} → {}",
        before.events_processed,
        after.events_processed
    );
    assert_eq!(after.lost_events, 0, "ring-buffer records lost");
    assert_eq!(
        after.lagged_events, 0,
        "observer fell behind the probe channel"
    );
    assert_eq!(observer.lost_events(), 0);
    nix::sys::signal::kill(Pid::from_raw(storm_pid as i32), Signal::SIGKILL).unwrap();
    observer.forget(ks).unwrap();
    drop(main);
    drop(storm);
}
