//! Escapes and leaks with the fake kernel, procfs and reaper: which processes count as strays,
//! that each is killed through the reaper and reported once, and that processes on their way out
//! (zombies, `PF_EXITING`, SIGKILL pending) or no longer the task's are left alone.

use crate::observer::NoticeReceiver;

use super::*;
use crate::cgroups::CgroupHome;

const HOME: &str = "/nomad/alloc-1.web";

fn in_freezer(path: &str) -> String {
    format!("12:freezer:{path}\n4:memory:/bpfexec-test\n0::/\n")
}

fn home() -> CgroupHome {
    CgroupHome {
        controller: Some("freezer".into()),
        path: HOME.into(),
    }
}

fn homed_meta() -> TaskMeta {
    TaskMeta {
        home: Some(home()),
        ..meta("web", "alloc-1", 100)
    }
}

/// A task: main 100 (sh) with children 101 (sh) and 102 (sleep), all in the task's cgroup.
fn world_with_task() -> World {
    let w = World::new();
    for (pid, parent, comm) in [(100, 99, "sh"), (101, 100, "sh"), (102, 101, "sleep")] {
        w.proc.add(pid, parent, comm, &[comm], u64::from(pid) * 10);
        w.proc.set_cgroup(pid, &in_freezer(HOME));
    }
    w
}

/// An observer whose own tick never checks escapes (the tests call the check).
fn observer(w: &World, kernel: &Arc<FakeKernel>) -> Arc<Observer> {
    let config = ObserverConfig {
        escape_check_ns: 0,
        ..ObserverConfig::default()
    };
    Observer::start_with(
        kernel.clone(),
        w.sources(),
        config,
        crate::telemetry::FactBus::new(),
    )
}

fn drain(rx: &mut NoticeReceiver) -> Vec<Notice> {
    std::iter::from_fn(|| rx.try_recv()).collect()
}

#[tokio::test]
async fn an_escapee_is_killed_and_reported_once() {
    let w = world_with_task();
    let kernel = Arc::new(FakeKernel::default());
    let o = observer(&w, &kernel);
    let mut rx = o.notices();
    assert_eq!(o.track(KEY, homed_meta()).unwrap().processes, 3);
    o.check_escapes(SEC);
    assert!(drain(&mut rx).is_empty(), "everyone is home");

    // 102 moves itself to a cgroup of its own; 101 nests a cgroup inside the task's (fine).
    w.proc.set_cgroup(102, &in_freezer("/bpfexec-e2e-escape-1"));
    w.proc
        .set_cgroup(101, &in_freezer(&format!("{HOME}/worker")));
    o.check_escapes(2 * SEC);
    let n = drain(&mut rx);
    assert_eq!(n.len(), 1, "{n:?}");
    assert_eq!(
        n[0].message,
        "Process pid 102 (sleep) left the task's cgroup /nomad/alloc-1.web for \
         /bpfexec-e2e-escape-1 (freezer hierarchy) and was killed: a process outside the task's \
         cgroup escapes the resource limits Nomad set for the task"
    );
    assert_eq!(n[0].annotations["reason"], "cgroup-escape");
    assert_eq!(n[0].annotations["pid"], "102");
    assert_eq!(n[0].annotations["comm"], "sleep");
    assert_eq!(n[0].annotations["cgroup"], "/bpfexec-e2e-escape-1");
    assert_eq!(n[0].task_name, "web");
    assert_eq!(w.reaper.killed(), [102]);

    // One that cannot be killed is reported once, not on every check.
    w.proc.set_cgroup(101, &in_freezer("/elsewhere"));
    w.reaper.refuse.lock().unwrap().insert(101);
    o.check_escapes(4 * SEC);
    let n = drain(&mut rx);
    assert_eq!(n.len(), 1, "{n:?}");
    assert_eq!(n[0].annotations["action"], "kill_failed");
    o.check_escapes(6 * SEC);
    assert!(drain(&mut rx).is_empty(), "reported once");
    assert_eq!(w.reaper.killed(), [102]);
}

#[tokio::test]
async fn processes_on_their_way_out_are_not_escapees() {
    let w = world_with_task();
    for (pid, comm) in [(103, "zombie"), (104, "exiting"), (105, "killed")] {
        w.proc.add(pid, 100, comm, &[comm], u64::from(pid) * 10);
        w.proc.set_cgroup(pid, &in_freezer("/"));
    }
    w.proc.set_state(103, 'Z');
    w.proc.set_exiting(104);
    w.proc.set_kill_pending(105);
    let kernel = Arc::new(FakeKernel::default());
    let o = observer(&w, &kernel);
    let mut rx = o.notices();
    o.track(KEY, homed_meta()).unwrap();
    // 104 and 105 were seeded (alive); 103 was not (a zombie). Seed it as if a fork was seen.
    lock_state(&o).seed(KEY, 103, 100, 0);
    o.check_escapes(SEC);
    assert!(drain(&mut rx).is_empty());
    assert!(w.reaper.killed().is_empty());
}

#[tokio::test]
async fn a_pid_the_kernel_no_longer_tracks_is_left_alone() {
    let w = world_with_task();
    let kernel = Arc::new(FakeKernel::default());
    let o = observer(&w, &kernel);
    let mut rx = o.notices();
    o.track(KEY, homed_meta()).unwrap();
    // 102 exited and its PID went to a host process elsewhere, before the exit event was read.
    kernel.untrack_pid(102).unwrap();
    w.proc
        .set_cgroup(102, &in_freezer("/system.slice/sshd.service"));
    o.check_escapes(SEC);
    assert!(drain(&mut rx).is_empty());
    assert!(w.reaper.killed().is_empty());
}

#[tokio::test]
async fn no_escape_check_without_a_home_or_before_one_was_seen_or_after_the_end() {
    let w = world_with_task();
    for pid in [100, 101, 102] {
        w.proc.set_cgroup(pid, &in_freezer("/somewhere"));
    }
    let kernel = Arc::new(FakeKernel::default());
    let o = observer(&w, &kernel);
    let mut rx = o.notices();
    // Never seen at home (e.g. the task never joined its cgroup): not armed.
    o.track(KEY, homed_meta()).unwrap();
    o.check_escapes(SEC);
    // No home at all.
    w.proc.add(200, 1, "db", &["db"], 2000);
    o.track(OTHER, meta("db", "alloc-2", 200)).unwrap();
    o.check_escapes(2 * SEC);
    assert!(drain(&mut rx).is_empty());
    // Armed, then the main process ends: leaks are the sweep's business, not escapes.
    for pid in [100, 101, 102] {
        w.proc.set_cgroup(pid, &in_freezer(HOME));
    }
    o.check_escapes(3 * SEC);
    kernel.events.send(exit(4 * SEC, KEY, 100)).unwrap();
    until(&o, 1).await;
    w.proc.set_cgroup(102, &in_freezer("/somewhere"));
    o.check_escapes(5 * SEC);
    assert!(drain(&mut rx).is_empty());
    assert!(w.reaper.killed().is_empty());
}

#[test]
fn escape_checks_run_at_the_configured_period() {
    let w = World::new();
    let mut s = ObserverState::new(
        ObserverConfig {
            escape_check_ns: 2 * SEC,
            ..ObserverConfig::default()
        },
        w.proc.clone(),
        w.cg.clone(),
        MemcgRoots::default(),
        String::new(),
        0,
    );
    assert!(s.escape_check_due(10 * SEC));
    assert!(!s.escape_check_due(11 * SEC));
    assert!(s.escape_check_due(12 * SEC));
    let mut disabled = ObserverState::new(
        ObserverConfig {
            escape_check_ns: 0,
            ..ObserverConfig::default()
        },
        w.proc.clone(),
        w.cg.clone(),
        MemcgRoots::default(),
        String::new(),
        0,
    );
    assert!(!disabled.escape_check_due(100 * SEC));
}

#[tokio::test]
async fn leaks_are_killed_and_reported_in_one_event() {
    let w = world_with_task();
    w.proc.add(103, 100, "dying", &["dying"], 1030);
    let kernel = Arc::new(FakeKernel::default());
    let o = observer(&w, &kernel);
    let mut rx = o.notices();
    o.track(KEY, homed_meta()).unwrap();
    // The main process ends; the stop's SIGKILL is on its way to 103; 101 and 102 setsid'd away.
    w.proc.remove(100);
    kernel.untrack_pid(100).unwrap();
    w.proc.set_kill_pending(103);
    kernel.events.send(exit(SEC, KEY, 100)).unwrap();
    until(&o, 1).await;
    assert_eq!(o.reap_leaks(KEY).await, 2);
    let n = drain(&mut rx);
    assert_eq!(n.len(), 1, "{n:?}");
    assert_eq!(
        n[0].message,
        "2 processes outlived the task and were killed: 101 (sh), 102 (sleep)"
    );
    assert_eq!(n[0].annotations["reason"], "leak");
    assert_eq!(n[0].annotations["pids"], "101,102");
    assert_eq!(n[0].annotations["comms"], "sh,sleep");
    let mut killed = w.reaper.killed();
    killed.sort_unstable();
    assert_eq!(killed, [101, 102]);
    // Nothing is left (the fake reaper's victims are gone): no second event.
    kernel.untrack_pid(101).unwrap();
    kernel.untrack_pid(102).unwrap();
    assert_eq!(o.reap_leaks(KEY).await, 0);
    assert_eq!(o.reap_leaks_now(KEY), 0);
    assert!(drain(&mut rx).is_empty());
}

#[tokio::test]
async fn a_task_that_ended_cleanly_has_no_leak() {
    let w = world_with_task();
    let kernel = Arc::new(FakeKernel::default());
    let o = observer(&w, &kernel);
    let mut rx = o.notices();
    o.track(KEY, homed_meta()).unwrap();
    for pid in [100, 101, 102] {
        w.proc.remove(pid);
        kernel.untrack_pid(pid).unwrap();
    }
    assert_eq!(o.reap_leaks(KEY).await, 0);
    assert!(drain(&mut rx).is_empty());
    assert!(w.reaper.killed().is_empty());
}

fn lock_state(o: &Observer) -> std::sync::MutexGuard<'_, ObserverState> {
    o.state_for_tests()
}

#[tokio::test]
async fn leaving_only_the_memory_cgroup_is_an_escape_too() {
    let w = World::new();
    for (pid, parent, comm) in [(100, 99, "sh"), (101, 100, "sleep")] {
        w.proc.add(pid, parent, comm, &[comm], u64::from(pid) * 10);
        w.proc
            .set_cgroup(pid, &format!("12:freezer:{HOME}\n4:memory:{HOME}\n0::/\n"));
    }
    let kernel = Arc::new(FakeKernel::default());
    let o = observer(&w, &kernel);
    let mut rx = o.notices();
    let meta = TaskMeta {
        other_homes: vec![CgroupHome {
            controller: Some("memory".into()),
            path: HOME.into(),
        }],
        ..homed_meta()
    };
    o.track(KEY, meta).unwrap();
    o.check_escapes(SEC);
    assert!(drain(&mut rx).is_empty(), "everyone is home");
    // 101 stays in the task's freezer cgroup but moves to a memory cgroup without the limit.
    w.proc.set_cgroup(
        101,
        &format!("12:freezer:{HOME}\n4:memory:/unlimited\n0::/\n"),
    );
    o.check_escapes(2 * SEC);
    let n = drain(&mut rx);
    assert_eq!(n.len(), 1, "{n:?}");
    assert_eq!(n[0].annotations["hierarchy"], "memory");
    assert_eq!(n[0].annotations["cgroup"], "/unlimited");
    assert!(
        n[0].message.contains("(memory hierarchy)"),
        "{}",
        n[0].message
    );
    assert_eq!(w.reaper.killed(), [101]);
}
