//! Privileged test of the eBPF probe pipeline on the real kernel: loads the embedded probes
//! (unpinned), tracks a gated shell by PID and checks the fork/exec/exit/signal events the probes
//! attribute to its task, and that untracked processes produce no events at all.
//! Needs root (`CAP_BPF`, `CAP_PERFMON`, `CAP_SYS_ADMIN` for tracefs). Without root it prints SKIP,
//! except under `CI=true`, where a missing precondition is a failure.
#![allow(
    clippy::expect_used,
    clippy::too_many_lines,
    reason = "a test: failures should panic loudly, and the scenario reads best in one piece"
)]

use std::{
    io::Write as _,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use bpfexec_driver::probes::{Pinning, ProbeOptions, ProbeSet, ProcessEvent};
use tokio::sync::broadcast::{Receiver, error::TryRecvError};

const TASK: u64 = 0x7e57;

fn have_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "probes_privileged needs root (CAP_BPF/CAP_PERFMON/CAP_SYS_ADMIN) and CI=true forbids skipping"
    );
    println!("SKIP probes_privileged: not root");
    false
}

/// Collects events until `done` holds for the collected list or the deadline passes.
async fn collect_until(
    rx: &mut Receiver<ProcessEvent>,
    seen: &mut Vec<ProcessEvent>,
    done: impl Fn(&[ProcessEvent]) -> bool,
) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        loop {
            match rx.try_recv() {
                Ok(ev) => seen.push(ev),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Lagged(n)) => panic!("test receiver lagged by {n} events"),
                Err(TryRecvError::Closed) => return done(seen),
            }
        }
        if done(seen) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done(seen)
}

fn exec_of(events: &[ProcessEvent], want: u32, suffix: &str) -> bool {
    events.iter().any(|e| {
        matches!(e, ProcessEvent::Exec { pid, filename, task, .. }
            if *pid == want && filename.ends_with(suffix) && *task == TASK)
    })
}

fn children_of(events: &[ProcessEvent], parent: u32) -> Vec<u32> {
    events
        .iter()
        .filter_map(|e| match e {
            ProcessEvent::Fork {
                parent_pid,
                child_pid,
                task,
                ..
            } if *parent_pid == parent && *task == TASK => Some(*child_pid),
            _ => None,
        })
        .collect()
}

/// The process `want` ended: its last thread's exit (`group_dead`), or on kernels whose
/// `sched_process_exit` has no `group_dead` field (6.1 and 6.12 have none) its leader's exit.
fn exit_of(events: &[ProcessEvent], want: u32) -> bool {
    events.iter().any(|e| {
        matches!(e, ProcessEvent::Exit { pid, tid, group_dead, task, .. }
            if *pid == want && *task == TASK
                && (*group_dead == Some(true) || (group_dead.is_none() && tid == pid)))
    })
}

fn mentions(e: &ProcessEvent, pid: u32) -> bool {
    match e {
        ProcessEvent::Exec { pid: p, .. }
        | ProcessEvent::Exit { pid: p, .. }
        | ProcessEvent::OomVictim { pid: p, .. } => *p == pid,
        ProcessEvent::Signal {
            target_pid,
            sender_pid,
            ..
        } => *target_pid == pid || *sender_pid == pid,
        ProcessEvent::Fork {
            parent_pid,
            child_pid,
            ..
        } => *parent_pid == pid || *child_pid == pid,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_attribute_tracked_processes_only() {
    if !have_root() {
        return;
    }
    let probes = ProbeSet::load_with(&ProbeOptions::unpinned()).expect("loading the eBPF probes");
    // The optional probes must load wherever their tracepoint exists: a verifier rejection of
    // one (they are optional only for kernels without the tracepoint) must fail here, not
    // silently cost the driver its signal or OOM reports.
    let optional = ["signal/signal_generate", "oom/mark_victim"]
        .into_iter()
        .filter(|tp| {
            ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
                .iter()
                .any(|root| std::path::Path::new(&format!("{root}/events/{tp}/format")).exists())
        });
    for tp in [
        "sched/sched_process_exec",
        "task/task_newtask",
        "sched/sched_process_exit",
    ]
    .into_iter()
    .chain(optional)
    {
        assert!(
            probes.attached().contains(&tp),
            "{tp} not attached: {:?}",
            probes.attached()
        );
    }
    assert!(matches!(probes.pinning(), Pinning::Off { .. }));
    println!("attached: {:?}", probes.attached());
    let mut rx = probes.subscribe();

    // 1. An untracked /bin/true produces nothing.
    let mut child = Command::new("/bin/true")
        .spawn()
        .expect("spawning /bin/true");
    let untracked = child.id();
    assert!(child.wait().expect("waiting for /bin/true").success());

    // 2. A tracked shell: its forks, their execs and exits carry the task key.
    let mut sh = Command::new("/bin/sh")
        .args(["-c", "read go; /bin/true; /bin/sleep 0 & wait $!; exit 3"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawning /bin/sh");
    let sh_pid = sh.id();
    probes
        .kernel()
        .track_pid(sh_pid, TASK)
        .expect("tracking sh");
    sh.stdin
        .take()
        .expect("stdin")
        .write_all(b"go\n")
        .expect("go");
    assert_eq!(sh.wait().expect("waiting for sh").code(), Some(3));
    let mut seen = Vec::new();
    let ok = collect_until(&mut rx, &mut seen, |ev| {
        let kids = children_of(ev, sh_pid);
        kids.len() == 2
            && kids.iter().all(|k| exit_of(ev, *k))
            && kids.iter().any(|k| exec_of(ev, *k, "true"))
            && kids.iter().any(|k| exec_of(ev, *k, "sleep"))
            && exit_of(ev, sh_pid)
    })
    .await;
    assert!(
        ok,
        "missing events for sh pid {sh_pid}: {:#?}",
        seen.iter()
            .filter(|e| mentions(e, sh_pid))
            .collect::<Vec<_>>()
    );
    for e in &seen {
        println!("{e:?}");
        assert!(!mentions(e, untracked), "untracked pid {untracked}: {e:?}");
        if let ProcessEvent::Fork {
            parent_comm,
            child_comm,
            ..
        } = e
        {
            assert_eq!((parent_comm.as_str(), child_comm.as_str()), ("sh", "sh"));
        }
    }
    // Exited processes leave TRACKED.
    let tracked = probes.kernel().tracked().expect("reading TRACKED");
    assert!(
        !tracked.iter().any(|(_, t)| *t == TASK),
        "stale entries: {tracked:?}"
    );

    // 3. signal_generate (optional tracepoint): a SIGKILL sent to a tracked sleeper.
    if probes.attached().contains(&"signal/signal_generate") {
        let mut sleeper = Command::new("/bin/sleep")
            .arg("30")
            .spawn()
            .expect("spawning sleep");
        let spid = sleeper.id();
        probes
            .kernel()
            .track_pid(spid, TASK)
            .expect("tracking sleep");
        sleeper.kill().expect("killing our own sleep child");
        let _ = sleeper.wait();
        let mut seen = Vec::new();
        let ok = collect_until(&mut rx, &mut seen, |ev| {
            ev.iter().any(|e| {
                matches!(e, ProcessEvent::Signal { target_pid, target_task, sig: 9, .. }
                if *target_pid == spid && *target_task == TASK)
            })
        })
        .await;
        assert!(
            ok,
            "no attributed SIGKILL signal_generate event for pid {spid}"
        );
    }

    assert!(probes.events_received() > 0);
    assert_eq!(probes.malformed_events(), 0);
    assert_eq!(probes.lost_events().expect("reading LOST"), 0);
    assert!(Path::new(probes.tracefs()).join("events").is_dir());
    println!("events received: {}", probes.events_received());
}

/// A tracked shell of task `key` that starts `n` sleeping children, then waits for a line on
/// stdin, kills its children and exits.
fn forking_shell(n: usize) -> std::process::Child {
    Command::new("/bin/sh")
        .args([
            "-c",
            &format!(
                "read go; i=0; while [ $i -lt {n} ]; do sleep 30 & p=\"$p $!\"; i=$((i+1)); \
                 done; echo forked; read done; kill $p; wait"
            ),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawning sh")
}

fn track(probes: &ProbeSet, pid: u32, key: u64) {
    let facts = bpfexec_common::TaskFacts {
        main_pid: pid,
        live_processes: 1,
        ..bpfexec_common::TaskFacts::default()
    };
    probes.kernel().put_facts(key, &facts).expect("facts");
    probes.kernel().track_pid(pid, key).expect("tracking");
}

fn go_and_wait_forked(sh: &mut std::process::Child) {
    use std::io::BufRead as _;
    sh.stdin
        .as_mut()
        .expect("stdin")
        .write_all(b"go\n")
        .expect("go");
    let mut line = String::new();
    std::io::BufReader::new(sh.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("reading sh");
    assert_eq!(line.trim(), "forked");
}

/// The tracked-process map full (a share as large as the map, 64 entries): the processes that
/// do not fit are counted on the task that made them, never tracked for another task; a second
/// task's new process is counted on that task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_map_overflow_is_counted_on_its_task() {
    const A: u64 = 0xa11;
    const B: u64 = 0xb22;
    if !have_root() {
        return;
    }
    let options = ProbeOptions {
        tracked_capacity: 64,
        tracked_per_task: 64,
        ..ProbeOptions::unpinned()
    };
    let probes = ProbeSet::load_with(&options).expect("loading the probes");
    let mut b = forking_shell(1);
    track(&probes, b.id(), B);
    let mut a = forking_shell(100);
    track(&probes, a.id(), A);
    go_and_wait_forked(&mut a);
    let tracked = probes.kernel().tracked().expect("TRACKED");
    assert!(
        tracked.len() <= 64,
        "{} entries in a 64-entry map",
        tracked.len()
    );
    let a_facts = probes.kernel().facts(A).expect("facts").expect("A");
    println!(
        "A: {} tracked, {} untracked",
        tracked.iter().filter(|(_, k)| *k == A).count(),
        a_facts.untracked_processes
    );
    assert!(
        a_facts.untracked_processes >= 100 - 63,
        "A's overflow not counted: {a_facts:?}"
    );
    // The map is full: B's new process is not tracked, and counted on B.
    go_and_wait_forked(&mut b);
    let b_facts = probes.kernel().facts(B).expect("facts").expect("B");
    assert_eq!(b_facts.untracked_processes, 1, "{b_facts:?}");
    let tracked = probes.kernel().tracked().expect("TRACKED");
    assert!(
        tracked.iter().filter(|(_, k)| *k == B).count() == 1,
        "B has entries besides its shell: {tracked:?}"
    );
    for sh in [&mut a, &mut b] {
        sh.stdin
            .as_mut()
            .expect("stdin")
            .write_all(b"done\n")
            .expect("done");
        let _ = sh.wait();
    }
}
