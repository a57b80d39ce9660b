//! Scenario tests of the observer with synthetic event sequences: a fake kernel (maps and event
//! channel), a fake procfs and a fake cgroupfs, so no root is needed.
#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    clippy::many_single_char_names,
    reason = "tests fail loudly; scenarios read best in one piece"
)]

use std::{path::PathBuf, sync::Arc, time::Duration};

use bpfexec_common::{SignalFact, TaskFacts};

use super::{
    backend::fake::FakeKernel, memcg::fake::FakeCgroupFs, proc::fake::FakeProc,
    reap::fake::FakeReaper, *,
};

mod strays;
use crate::probes::ProcessEvent;

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000_000_000;
const KEY: TaskKey = TaskKey(0xA);
const OTHER: TaskKey = TaskKey(0xB);
const MEMCG: &str = "/sys/fs/cgroup/memory/bpfexec-test";

struct World {
    proc: Arc<FakeProc>,
    cg: Arc<FakeCgroupFs>,
    reaper: Arc<FakeReaper>,
}

impl World {
    fn new() -> Self {
        let proc = Arc::new(FakeProc::default());
        let w = Self {
            reaper: Arc::new(FakeReaper::new(Arc::clone(&proc))),
            proc,
            cg: Arc::new(FakeCgroupFs::default()),
        };
        w.cg.set(&format!("{MEMCG}/memory.limit_in_bytes"), "33554432");
        w.cg.set(&format!("{MEMCG}/memory.failcnt"), "0");
        w
    }

    fn sources(&self) -> Sources {
        Sources {
            proc: self.proc.clone(),
            cgroups: self.cg.clone(),
            roots: MemcgRoots {
                v1_memory: Some(PathBuf::from("/sys/fs/cgroup/memory")),
                v2: None,
            },
            reaper: self.reaper.clone(),
        }
    }

    fn state(&self) -> ObserverState {
        let s = self.sources();
        let config = ObserverConfig {
            driver_pids: vec![5],
            ..ObserverConfig::default()
        };
        ObserverState::new(
            config,
            s.proc,
            s.cgroups,
            s.roots,
            "nomad-driver-bp".into(),
            0,
        )
    }
}

fn meta(task: &str, alloc: &str, main: u32) -> TaskMeta {
    TaskMeta {
        task_id: format!("{alloc}/{task}/1"),
        alloc_id: alloc.into(),
        task_name: task.into(),
        main_pid: main,
        main_start_time: 0,
        supervisor_pid: Some(99),
        memcg_dir: None,
        home: None,
        other_homes: Vec::new(),
    }
}

fn fork(t: u64, key: TaskKey, parent: u32, child: u32, comm: &str) -> ProcessEvent {
    ProcessEvent::Fork {
        ktime_ns: t,
        cpu: 0,
        task: key.0,
        parent_pid: parent,
        parent_tid: parent,
        child_pid: child,
        clone_flags: 0x11,
        parent_comm: comm.into(),
        child_comm: comm.into(),
    }
}

fn exec(t: u64, key: TaskKey, pid: u32, file: &str, comm: &str) -> ProcessEvent {
    ProcessEvent::Exec {
        ktime_ns: t,
        cpu: 0,
        task: key.0,
        pid,
        tid: pid,
        old_pid: pid,
        filename: file.into(),
        comm: comm.into(),
    }
}

fn exit(t: u64, key: TaskKey, pid: u32) -> ProcessEvent {
    ProcessEvent::Exit {
        ktime_ns: t,
        cpu: 0,
        task: key.0,
        pid,
        tid: pid,
        group_dead: Some(true),
        comm: "x".into(),
    }
}

#[allow(clippy::too_many_arguments, reason = "a test event builder")]
fn signal(
    t: u64,
    sig: i32,
    code: i32,
    sender: (u32, &str, TaskKey),
    target: (u32, &str, TaskKey),
) -> ProcessEvent {
    ProcessEvent::Signal {
        ktime_ns: t,
        cpu: 0,
        sender_pid: sender.0,
        sender_tid: sender.0,
        sender_uid: 0,
        sender_comm: sender.1.into(),
        sender_task: sender.2.0,
        target_pid: target.0,
        target_tgid: target.0,
        target_comm: target.1.into(),
        target_task: target.2.0,
        sig,
        errno: 0,
        code,
        group: true,
        result: 0,
    }
}

fn oom(t: u64, key: TaskKey, pid: u32, comm: &str, rss_kb: u64) -> ProcessEvent {
    ProcessEvent::OomVictim {
        ktime_ns: t,
        cpu: 0,
        task: key.0,
        pid,
        tid: pid,
        comm: comm.into(),
        uid: 0,
        total_vm_kb: rss_kb * 2,
        anon_rss_kb: rss_kb,
        file_rss_kb: 0,
        shmem_rss_kb: 0,
        pgtables_kb: 0,
        oom_score_adj: 0,
        trigger_pid: pid,
    }
}

const NOBODY: TaskKey = TaskKey(0);

#[test]
fn tree_follows_a_three_level_fork_chain() {
    let w = World::new();
    w.proc
        .add(100, 99, "sh", &["sh", "-c", "sh -c 'sleep 100; :'; :"], 500);
    let mut s = w.state();
    assert!(
        s.register(KEY, meta("web", "alloc-1", 100), false, 0)
            .is_empty()
    );
    s.seed(KEY, 100, 99, 0);
    s.apply(&fork(10, KEY, 100, 101, "sh"));
    w.proc.add(102, 101, "sleep", &["sleep", "100"], 502);
    s.apply(&fork(20, KEY, 101, 102, "sh"));
    s.apply(&exec(30, KEY, 102, "/usr/bin/sleep", "sleep"));
    // A short-lived process: exec'd and gone before /proc could be read.
    s.apply(&fork(40, KEY, 100, 103, "sh"));
    s.apply(&exec(41, KEY, 103, "/bin/true", "true"));
    s.apply(&exit(42, KEY, 103));
    let tree = s.tree(KEY).unwrap();
    let shape: Vec<(u32, u32)> = tree.processes.iter().map(|p| (p.pid, p.ppid)).collect();
    assert_eq!(shape, [(100, 99), (101, 100), (102, 101)]);
    assert_eq!(tree.roots, [100]);
    assert_eq!(tree.processes[2].cmdline, ["sleep", "100"]);
    assert_eq!(tree.processes[2].start_time_ticks, Some(502));
    assert_eq!(
        tree.processes[1].cmdline, tree.processes[0].cmdline,
        "fork copies argv"
    );
    assert_eq!(tree.execs.len(), 2);
    assert_eq!(
        tree.execs[1].cmdline,
        ["/bin/true"],
        "exec'd path when /proc is gone"
    );
    assert_eq!(tree.exited, 1);
    assert_eq!(tree.task_id, "alloc-1/web/1");
    let json = serde_json::to_value(&tree).unwrap();
    assert_eq!(json["processes"][2]["exe"], "/usr/bin/sleep");
    let mut pids = s.pids(KEY);
    pids.sort_unstable();
    assert_eq!(pids, [100, 101, 102]);
}

#[test]
fn sender_classes() {
    let w = World::new();
    let mut s = w.state();
    s.register(KEY, meta("web", "alloc-1", 100), false, 0);
    s.register(OTHER, meta("db", "alloc-2", 200), false, 0);
    let main = (100, "app", KEY);
    let cases: [(ProcessEvent, &str); 7] = [
        (signal(10, 15, 0, (4242, "kill-bot", NOBODY), main), "host"),
        (
            signal(11, 10, 0, (200, "sh", OTHER), main),
            "other_allocation",
        ),
        (signal(12, 12, 0, (101, "sh", KEY), main), "same_task"),
        (signal(13, 6, -6, (100, "app", KEY), main), "same_process"),
        (
            signal(14, 1, 0, (99, "nomad-driver-bp", NOBODY), main),
            "driver",
        ),
        (signal(15, 2, 0, (5, "x", NOBODY), main), "driver"),
        (signal(16, 11, 1, (100, "app", KEY), main), "kernel"),
    ];
    for (ev, _) in &cases {
        s.apply(ev);
    }
    for (sig, (_, want)) in [15, 10, 12, 6, 1, 2, 11].into_iter().zip(cases.iter()) {
        let r = s.classify(KEY, &MainExit::new(128 + sig, sig, false), None, SEC);
        let ExitReason::Signaled {
            sender: Some(sender),
            ..
        } = &r
        else {
            panic!("{sig}: {r:?}")
        };
        assert_eq!(sender.class.name(), *want, "signal {sig}");
        if let SenderClass::OtherAllocation {
            alloc_id,
            task_name,
        } = &sender.class
        {
            assert_eq!((alloc_id.as_str(), task_name.as_str()), ("alloc-2", "db"));
        }
    }
    let r = s.classify(KEY, &MainExit::new(143, 15, false), None, SEC);
    let (oom, msg, a) = r.to_nomad();
    assert!(!oom);
    assert_eq!(
        msg,
        "Killed by SIGTERM from pid 4242 (kill-bot, uid 0), a host process"
    );
    assert_eq!(a["sender_comm"], "kill-bot");
    assert_eq!(a["sender_class"], "host");
    let r = s.classify(KEY, &MainExit::new(139, 11, true), None, SEC);
    assert_eq!(
        r.to_nomad().1,
        "Killed by SIGSEGV from the kernel (segmentation fault: address not mapped) in pid 100 \
         (app); core dumped"
    );
    let r = s.classify(KEY, &MainExit::new(138, 10, false), None, SEC);
    assert!(
        r.to_nomad()
            .1
            .contains("of task \"db\" in allocation alloc-2"),
        "{r:?}"
    );
}

#[test]
fn child_oom_is_a_notice_then_a_clean_exit_is_not_oom() {
    let w = World::new();
    w.proc.add(100, 1, "sh", &["sh"], 1);
    let mut s = w.state();
    s.register(KEY, meta("web", "alloc-1", 100), false, 0);
    s.apply(&fork(10, KEY, 100, 101, "sh"));
    s.apply(&exec(11, KEY, 101, "/usr/bin/tail", "tail"));
    w.cg.set(&format!("{MEMCG}/memory.failcnt"), "42");
    let notices = s.apply(&oom(SEC, KEY, 101, "tail", 30 * 1024));
    assert_eq!(notices.len(), 1);
    assert_eq!(
        notices[0].message,
        "Child process pid 101 (tail, 30 MiB RSS) was OOM-killed (memory limit of cgroup \
         /bpfexec-test); the main process was not the victim"
    );
    assert_eq!(notices[0].annotations["oom_scope"], "cgroup");
    assert_eq!(notices[0].task_name, "web");
    // The kernel's SIGKILL to the victim is not a separate notice.
    let n = s.apply(&signal(
        SEC + 1,
        9,
        0x80,
        (100, "sh", KEY),
        (101, "tail", KEY),
    ));
    assert!(n.is_empty());
    s.apply(&exit(SEC + 2, KEY, 101));
    assert!(s.tick(SEC + 10 * MS, false).is_empty());
    // Much later the main process exits cleanly, or fails for another reason.
    s.apply(&exit(60 * SEC, KEY, 100));
    let r = s.classify(KEY, &MainExit::new(0, 0, false), None, 60 * SEC);
    assert_eq!(r, ExitReason::Exited { code: 0 });
    assert!(!r.to_nomad().0);
    assert_eq!(
        s.classify(KEY, &MainExit::new(2, 0, false), None, 60 * SEC),
        ExitReason::Exited { code: 2 }
    );
}

#[test]
fn main_exits_right_after_its_child_is_oom_killed() {
    let w = World::new();
    w.proc.add(100, 1, "sh", &["sh"], 1);
    let mut s = w.state();
    s.register(KEY, meta("web", "alloc-1", 100), false, 0);
    s.apply(&fork(10, KEY, 100, 101, "sh"));
    w.cg.set(&format!("{MEMCG}/memory.failcnt"), "3");
    s.apply(&oom(SEC, KEY, 101, "tail", 31 * 1024));
    s.apply(&exit(SEC + 5 * MS, KEY, 101));
    s.apply(&exit(SEC + 9 * MS, KEY, 100));
    let r = s.classify(KEY, &MainExit::new(137, 0, false), None, 2 * SEC);
    let (oom, msg, a) = r.to_nomad();
    assert!(oom, "{r:?}");
    assert_eq!(
        msg,
        "OOM-killed: memory limit of cgroup /bpfexec-test; victim pid 101 (tail, 31 MiB RSS) \
         was a child process, and the main process then exited with code 137"
    );
    assert_eq!(a["victim_is_main"], "false");
}

#[test]
fn main_process_oom_kill() {
    let w = World::new();
    w.proc.add(100, 1, "python3", &["python3"], 1);
    let mut s = w.state();
    s.register(KEY, meta("web", "alloc-1", 100), false, 0);
    w.cg.set(&format!("{MEMCG}/memory.failcnt"), "9");
    let notices = s.apply(&oom(SEC, KEY, 100, "python3", 512 * 1024));
    assert!(notices.is_empty(), "the exit reason tells this story");
    s.apply(&signal(
        SEC + 1,
        9,
        0x80,
        (100, "python3", KEY),
        (100, "python3", KEY),
    ));
    s.apply(&exit(SEC + 2, KEY, 100));
    let r = s.classify(KEY, &MainExit::new(137, 9, false), None, 2 * SEC);
    let (oom, msg, a) = r.to_nomad();
    assert!(oom);
    assert_eq!(
        msg,
        "OOM-killed: memory limit of cgroup /bpfexec-test; victim pid 100 (python3, 512 MiB \
         RSS) was the main process"
    );
    assert_eq!(
        (a["reason"].as_str(), a["signal"].as_str()),
        ("oom_killed", "SIGKILL")
    );
}

#[test]
fn oom_scope_follows_the_victims_cgroup() {
    // The main process joined its cgroup only after tracking began.
    let w = World::new();
    w.proc.add(100, 1, "sh", &["sh"], 1);
    w.proc.set_cgroup(100, "4:memory:/elsewhere\n");
    let mut s = w.state();
    s.register(KEY, meta("web", "alloc-1", 100), false, 0);
    w.proc.set_cgroup(100, "4:memory:/bpfexec-test\n");
    w.proc.add(101, 100, "tail", &["tail"], 2);
    w.cg.set(&format!("{MEMCG}/memory.failcnt"), "1");
    let n = s.apply(&oom(SEC, KEY, 101, "tail", 1024));
    assert_eq!(n[0].annotations["oom_cgroup"], "/bpfexec-test");
}

#[test]
fn existing_threads_are_registered() {
    let w = World::new();
    w.proc.add(2000, 1, "java", &["java"], 1);
    let kernel = Arc::new(FakeKernel::default());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let o = Observer::start_with(
            kernel.clone(),
            w.sources(),
            ObserverConfig::default(),
            crate::telemetry::FactBus::new(),
        );
        o.track(KEY, meta("jvm", "alloc-1", 2000)).unwrap();
    });
    assert_eq!(kernel.threads.lock().unwrap().get(&2_000_001), Some(&2000));
}

#[test]
fn oom_without_a_moved_cgroup_counter_is_system_wide() {
    let w = World::new();
    w.proc.add(100, 1, "app", &["app"], 1);
    let mut s = w.state();
    s.register(KEY, meta("web", "alloc-1", 100), false, 0);
    s.apply(&oom(SEC, KEY, 100, "app", 2048));
    let r = s.classify(KEY, &MainExit::new(137, 9, false), None, 2 * SEC);
    assert!(
        matches!(
            r,
            ExitReason::OomKilled {
                scope: OomScope::System,
                ..
            }
        ),
        "{r:?}"
    );
    assert!(r.to_nomad().1.contains("system-wide OOM"));
}

#[test]
fn signal_notices_wait_to_learn_whether_the_signal_was_fatal() {
    let w = World::new();
    let mut s = w.state();
    s.register(KEY, meta("web", "alloc-1", 100), false, 0);
    let bot = (4242, "kill-bot", NOBODY);
    // Survived by the main process.
    assert!(
        s.apply(&signal(SEC, 10, 0, bot, (100, "app", KEY)))
            .is_empty()
    );
    let n = s.tick(SEC + 300 * MS, false);
    assert_eq!(n.len(), 1);
    assert_eq!(
        n[0].message,
        "Main process pid 100 (app) received SIGUSR1 from pid 4242 (kill-bot, uid 0), a host \
         process and kept running"
    );
    // Fatal to a child: reported at once when the exit arrives.
    s.apply(&signal(2 * SEC, 15, 0, bot, (101, "worker", KEY)));
    let n = s.apply(&exit(2 * SEC + MS, KEY, 101));
    assert_eq!(n.len(), 1);
    assert!(
        n[0].message
            .starts_with("Child process pid 101 (worker) was killed by SIGTERM")
    );
    // Fatal to the main process: the exit reason tells it, no notice.
    s.apply(&signal(3 * SEC, 15, 0, bot, (100, "app", KEY)));
    assert!(s.apply(&exit(3 * SEC + MS, KEY, 100)).is_empty());
    assert!(s.tick(4 * SEC, false).is_empty());
    // Signals inside the task, from the driver, and quiet ones are never notices.
    s.apply(&signal(5 * SEC, 15, 0, (101, "sh", KEY), (102, "x", KEY)));
    s.apply(&signal(
        5 * SEC,
        15,
        0,
        (99, "nomad-driver-bp", NOBODY),
        (102, "x", KEY),
    ));
    s.apply(&signal(5 * SEC, 17, 0, bot, (102, "x", KEY)));
    assert!(s.tick(6 * SEC, false).is_empty());
    // A crashed child.
    s.apply(&signal(
        7 * SEC,
        11,
        1,
        (103, "worker", KEY),
        (103, "worker", KEY),
    ));
    let n = s.apply(&exit(7 * SEC + MS, KEY, 103));
    assert_eq!(n[0].annotations["reason"], "child_crashed");
}

#[test]
fn notices_for_unclaimed_tasks_wait_for_their_identity() {
    let w = World::new();
    let mut s = w.state();
    s.prime(KEY, 100, 0);
    assert!(s.apply(&oom(SEC, KEY, 101, "tail", 1024)).is_empty());
    let n = s.register(KEY, meta("web", "alloc-1", 100), false, 2 * SEC);
    assert_eq!(n.len(), 1);
    assert_eq!(n[0].alloc_id, "alloc-1");
    // Unclaimed state is dropped after its time to live.
    s.prime(OTHER, 200, 0);
    s.tick(ObserverConfig::default().orphan_ttl_ns + 1, true);
    assert!(!s.knows(OTHER));
    assert!(s.knows(KEY));
}

#[test]
fn kernel_facts_recover_what_happened_while_the_driver_was_down() {
    let w = World::new();
    let mut s = w.state();
    s.register(KEY, meta("web", "alloc-1", 100), false, 0);
    let mut k = TaskFacts {
        main_pid: 100,
        main_exec_ktime_ns: 5,
        main_exit_ktime_ns: 20 * SEC,
        ..TaskFacts::default()
    };
    let mut comm = [0u8; 16];
    comm[..8].copy_from_slice(b"kill-bot");
    k.signals[15] = SignalFact {
        ktime_ns: 19 * SEC,
        sig: 15,
        sender_pid: 4242,
        sender_comm: comm,
        ..SignalFact::default()
    };
    let r = s.classify(KEY, &MainExit::new(143, 15, false), Some(&k), 30 * SEC);
    assert_eq!(
        r.to_nomad().1,
        "Killed by SIGTERM from pid 4242 (kill-bot, uid 0), a host process"
    );
    // Without any kernel knowledge the wait status is all there is.
    let r = s.classify(OTHER, &MainExit::new(143, 15, false), None, 30 * SEC);
    assert_eq!(r.to_nomad().1, "Killed by SIGTERM (sender not observed)");
}

#[test]
fn exec_failure_before_the_program_ran() {
    let w = World::new();
    let mut s = w.state();
    s.register(KEY, meta("web", "alloc-1", 100), true, 0);
    s.apply(&exit(SEC, KEY, 100));
    let r = s.classify(KEY, &MainExit::new(127, 0, false), None, 2 * SEC);
    assert_eq!(r.name(), "exec_failed");
    assert!(
        r.to_nomad()
            .1
            .starts_with("Exec failed before the task's program ran")
    );
}

async fn until(o: &Observer, n: u64) {
    for _ in 0..200 {
        if o.stats().events_processed >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!(
        "observer processed only {} events",
        o.stats().events_processed
    );
}

#[tokio::test]
async fn observer_tracks_recovers_and_forgets() {
    let w = World::new();
    w.proc.add(100, 99, "sh", &["sh"], 7);
    w.proc.add(101, 100, "sh", &["sh"], 8);
    w.proc.add(102, 101, "sleep", &["sleep", "9"], 9);
    let kernel = Arc::new(FakeKernel::default());
    let o = Observer::start_with(
        kernel.clone(),
        w.sources(),
        ObserverConfig::default(),
        crate::telemetry::FactBus::new(),
    );
    // A recycled PID is refused.
    let mut stale = meta("web", "alloc-1", 100);
    stale.main_start_time = 6;
    assert!(matches!(
        o.track(KEY, stale),
        Err(ObserverError::MainGone { .. })
    ));
    let mut m = meta("web", "alloc-1", 100);
    m.main_start_time = 7;
    let report = o.track(KEY, m.clone()).unwrap();
    assert_eq!(report.processes, 3, "{report:?}");
    let mut tracked = kernel.tracked().unwrap();
    tracked.sort_unstable();
    assert_eq!(tracked, [(100, KEY.0), (101, KEY.0), (102, KEY.0)]);
    assert!(kernel.threads.lock().unwrap().is_empty());
    assert_eq!(kernel.facts(KEY.0).unwrap().unwrap().main_pid, 100);
    let mut notices = o.notices();

    kernel
        .events
        .send(signal(
            SEC,
            10,
            0,
            (4242, "kill-bot", NOBODY),
            (100, "sh", KEY),
        ))
        .unwrap();
    let n = tokio::time::timeout(Duration::from_secs(2), notices.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(n.message.contains("kill-bot"), "{}", n.message);
    until(&o, 1).await;

    // A restart: a new observer over the same kernel state, with a backlog of events the old
    // one never read (the sleeper exited, then the main process was killed by kill-bot).
    drop(o);
    w.proc.remove(102);
    let o = Observer::start_with(
        kernel.clone(),
        w.sources(),
        ObserverConfig::default(),
        crate::telemetry::FactBus::new(),
    );
    let mut k = kernel.facts(KEY.0).unwrap().unwrap();
    k.signals[15] = SignalFact {
        ktime_ns: 2 * SEC,
        sig: 15,
        sender_pid: 4242,
        ..SignalFact::default()
    };
    kernel.put_facts(KEY.0, &k).unwrap();
    kernel.events.send(exit(SEC + 1, KEY, 102)).unwrap();
    until(&o, 1).await;
    let report = o.recover(KEY, m).unwrap();
    assert!(
        report.kernel_facts_reused && report.main_alive,
        "{report:?}"
    );
    assert_eq!(report.processes, 2);
    assert!(
        !kernel.tracked().unwrap().iter().any(|(p, _)| *p == 102),
        "dead pid untracked"
    );
    let tree = o.tree(KEY).unwrap();
    assert_eq!(
        tree.processes.iter().map(|p| p.pid).collect::<Vec<_>>(),
        [100, 101]
    );
    kernel.events.send(exit(3 * SEC, KEY, 100)).unwrap();
    let r = o.classify(KEY, &MainExit::new(143, 15, false)).await;
    let ExitReason::Signaled {
        sender: Some(sender),
        ..
    } = r
    else {
        panic!("{r:?}")
    };
    assert_eq!((sender.pid, sender.class), (4242, SenderClass::Host));
    assert_eq!(o.pid_usage(KEY).len(), 1, "pid 101 is still alive");
    assert_eq!(o.stats().tasks, 1);
    assert_eq!(o.lost_events(), 0);

    o.forget(KEY).unwrap();
    assert!(kernel.tracked().unwrap().is_empty());
    assert!(kernel.facts(KEY.0).unwrap().is_none());
    assert!(o.tree(KEY).is_none());
}

#[test]
fn oom_in_a_backlog_gets_its_scope_once_the_task_is_named() {
    // The main process was OOM-killed while the driver was down: its record waits in the ring
    // buffer and is read before RecoverTask names the task; the process is gone from procfs.
    let w = World::new();
    let mut s = w.state();
    s.prime(KEY, 100, 0);
    w.cg.set(&format!("{MEMCG}/memory.failcnt"), "7");
    assert!(s.apply(&oom(SEC, KEY, 100, "perl", 35 * 1024)).is_empty());
    s.apply(&exit(SEC + 1, KEY, 100));
    let mut m = meta("web", "alloc-1", 100);
    m.memcg_dir = Some(PathBuf::from(MEMCG));
    s.register(KEY, m, false, 2 * SEC);
    let r = s.classify(KEY, &MainExit::new(137, 9, false), None, 2 * SEC);
    let ExitReason::OomKilled {
        scope,
        main_process,
        ..
    } = r
    else {
        panic!("not an OOM kill: {r:?}");
    };
    assert!(main_process);
    assert_eq!(
        scope,
        OomScope::Cgroup {
            cgroup: "/bpfexec-test".into()
        }
    );
}

#[test]
fn a_killed_helper_is_named_with_the_task_s_true_end() {
    // The helper (init of the task's pid namespace, pid 90) was SIGKILLed by pkill (pid 4242);
    // the kernel then killed the main process (sender: the dying init, SI_KERNEL).
    let w = World::new();
    let mut s = w.state();
    s.prime(KEY, 100, 0);
    let mut m = meta("web", "alloc-1", 100);
    m.supervisor_pid = Some(90);
    s.register(KEY, m, false, SEC);
    let mut k = TaskFacts {
        main_pid: 100,
        main_exit_ktime_ns: 3 * SEC,
        ..TaskFacts::default()
    };
    k.signals[9] = SignalFact {
        ktime_ns: 2 * SEC + 1,
        sig: 9,
        code: 0x80,
        sender_pid: 90,
        sender_comm: *b"nomad-driver-bp\0",
        ..SignalFact::default()
    };
    k.helper_signal = SignalFact {
        ktime_ns: 2 * SEC,
        sig: 9,
        code: 0,
        sender_pid: 4242,
        sender_uid: 0,
        sender_comm: *b"pkill\0\0\0\0\0\0\0\0\0\0\0",
        ..SignalFact::default()
    };
    let (main, r) = s
        .classify_helper_death(KEY, 90, Some(&k), 4 * SEC)
        .expect("the main process's exit is known");
    assert_eq!(main, Some(MainExit::new(137, 9, false)));
    let (oom, msg, a) = r.to_nomad();
    assert!(!oom);
    assert!(
        msg.starts_with("Killed by SIGKILL: the task's helper (pid 90"),
        "{msg}"
    );
    assert!(
        msg.contains("from pid 4242 (pkill, uid 0), a host process"),
        "{msg}"
    );
    assert_eq!(a["reason"], "helper_killed");
    assert_eq!(a["helper_sender_pid"], "4242");
    assert_eq!(a["exit_code"], "137");
    // Still running (no exit seen): nothing to say yet.
    k.main_exit_ktime_ns = 0;
    let mut s2 = w.state();
    s2.prime(KEY, 100, 0);
    s2.register(KEY, meta("web", "alloc-1", 100), false, SEC);
    assert!(
        s2.classify_helper_death(KEY, 90, Some(&k), 4 * SEC)
            .is_none()
    );
}
