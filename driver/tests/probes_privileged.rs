//! Privileged test of the eBPF probe pipeline on the real kernel: loads the embedded probes,
//! spawns `/bin/true` and a forking shell, and checks the exec/fork/exit events for those PIDs.
//! Needs root (`CAP_BPF`, `CAP_PERFMON`, `CAP_SYS_ADMIN` for tracefs). Without root it prints SKIP,
//! except under `CI=true`, where a missing precondition is a failure.
#![allow(
    clippy::expect_used,
    clippy::too_many_lines,
    reason = "a test: failures should panic loudly, and the scenario reads best in one piece"
)]

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use bpfexec_driver::probes::{ProbeSet, ProcessEvent};
use tokio::sync::broadcast::{Receiver, error::TryRecvError};

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
        matches!(e, ProcessEvent::Exec { pid, filename, .. } if *pid == want && filename.ends_with(suffix))
    })
}

fn fork_of(events: &[ProcessEvent], child: u32) -> bool {
    events
        .iter()
        .any(|e| matches!(e, ProcessEvent::Fork { child_pid, .. } if *child_pid == child))
}

fn exit_of(events: &[ProcessEvent], want: u32) -> bool {
    events.iter().any(
        |e| matches!(e, ProcessEvent::Exit { pid, group_dead: Some(true), .. } if *pid == want),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_see_exec_fork_exit() {
    if !have_root() {
        return;
    }
    let probes = ProbeSet::load().expect("loading the eBPF probes");
    for tp in [
        "sched/sched_process_exec",
        "sched/sched_process_fork",
        "sched/sched_process_exit",
    ] {
        assert!(
            probes.attached().contains(&tp),
            "{tp} not attached: {:?}",
            probes.attached()
        );
    }
    println!("attached: {:?}", probes.attached());
    let mut rx = probes.subscribe();

    // 1. /bin/true: fork (from this test process), exec, exit.
    let mut child = Command::new("/bin/true")
        .spawn()
        .expect("spawning /bin/true");
    let pid = child.id();
    assert!(child.wait().expect("waiting for /bin/true").success());
    let mut seen = Vec::new();
    let ok = collect_until(&mut rx, &mut seen, |ev| {
        fork_of(ev, pid) && exec_of(ev, pid, "true") && exit_of(ev, pid)
    })
    .await;
    assert!(
        ok,
        "missing fork/exec/exit for /bin/true pid {pid}; events for it: {:#?}",
        seen.iter().filter(|e| mentions(e, pid)).collect::<Vec<_>>()
    );

    // The strings come through: `comm` after exec, `__data_loc` comms of the fork record.
    for e in seen.iter().filter(|e| mentions(e, pid)) {
        println!("{e:?}");
        match e {
            ProcessEvent::Exec { comm, tid, .. } | ProcessEvent::Exit { comm, tid, .. } => {
                assert_eq!((comm.as_str(), *tid), ("true", pid));
            }
            ProcessEvent::Fork {
                parent_comm,
                child_comm,
                parent_pid,
                ..
            } => {
                assert_eq!(*parent_pid, std::process::id());
                assert!(!parent_comm.is_empty() && !child_comm.is_empty(), "{e:?}");
            }
            _ => {}
        }
    }

    // 2. A shell that forks a child: the shell's own fork shows up with the shell as parent.
    let mut sh = Command::new("/bin/sh")
        .args(["-c", "/bin/sleep 0 & wait $!; exit 3"])
        .spawn()
        .expect("spawning /bin/sh");
    let sh_pid = sh.id();
    assert_eq!(sh.wait().expect("waiting for sh").code(), Some(3));
    let mut seen = Vec::new();
    let ok = collect_until(&mut rx, &mut seen, |ev| {
        let grandchild = ev.iter().find_map(|e| match e {
            ProcessEvent::Fork {
                parent_pid,
                child_pid,
                ..
            } if *parent_pid == sh_pid => Some(*child_pid),
            _ => None,
        });
        exec_of(ev, sh_pid, "sh")
            && exit_of(ev, sh_pid)
            && grandchild.is_some_and(|g| exec_of(ev, g, "sleep") && exit_of(ev, g))
    })
    .await;
    assert!(
        ok,
        "missing events for sh pid {sh_pid}: {:#?}",
        seen.iter()
            .filter(|e| mentions(e, sh_pid))
            .collect::<Vec<_>>()
    );

    // 3. signal_generate (optional tracepoint): a SIGKILL sent to a sleeping child.
    if probes.attached().contains(&"signal/signal_generate") {
        let mut sleeper = Command::new("/bin/sleep")
            .arg("30")
            .spawn()
            .expect("spawning sleep");
        let spid = sleeper.id();
        sleeper.kill().expect("killing our own sleep child");
        let _ = sleeper.wait();
        let mut seen = Vec::new();
        let ok = collect_until(&mut rx, &mut seen, |ev| {
            ev.iter().any(|e| matches!(e, ProcessEvent::Signal { target_pid, sig: 9, .. } if *target_pid == spid))
        })
        .await;
        assert!(ok, "no SIGKILL signal_generate event for pid {spid}");
    }

    assert!(probes.events_received() > 0);
    assert_eq!(probes.malformed_events(), 0);
    assert_eq!(probes.lost_events().expect("reading LOST"), 0);
    assert!(Path::new(probes.tracefs()).join("events").is_dir());
    println!("events received: {}", probes.events_received());
}

fn mentions(e: &ProcessEvent, pid: u32) -> bool {
    match e {
        ProcessEvent::Exec { pid: p, .. }
        | ProcessEvent::Exit { pid: p, .. }
        | ProcessEvent::Signal { target_pid: p, .. }
        | ProcessEvent::OomVictim { pid: p, .. } => *p == pid,
        ProcessEvent::Fork {
            parent_pid,
            child_pid,
            ..
        } => *parent_pid == pid || *child_pid == pid,
    }
}
