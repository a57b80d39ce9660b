//! Privileged tests of the eBPF observer on the real kernel (root required; without root it prints
//! SKIP, except under `CI=true` where that is a failure): a three-level process tree compared with
//! /proc, signal provenance (a host process named `kill-bot`, another task, a thread target),
//! real memory-cgroup OOM kills in throwaway cgroup v1 memory cgroups created and removed here
//! (main victim, child victim with clean exit, main exiting because of its child), and recovery
//! of pinned state across a simulated driver restart, including a task that ends while no
//! driver runs. Pins go to a per-test bpffs directory that is removed afterwards.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::too_many_lines,
    reason = "a test: failures should panic loudly, and the scenarios read best in one piece"
)]

mod support;

use std::{
    collections::BTreeMap,
    fs,
    os::unix::{fs::PermissionsExt as _, process::ExitStatusExt as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};
use support::{PinRoot, Reaper, go, have_root, spawn_gated};

use bpfexec_driver::{
    observer::{
        ExitReason, MainExit, Observer, ObserverConfig, OomScope, SenderClass, TaskKey, TaskMeta,
    },
    probes::Pinning,
};
use nix::{sys::signal::Signal, unistd::Pid};

/// Memory limit of the throwaway OOM cgroups.
const LIMIT: u64 = 32 << 20;

/// The tests share the kernel's tracking state of this process's children: run them one by one.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn stat_of(pid: u32) -> Option<(u32, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    if f[0] == "Z" {
        return None;
    }
    Some((f[1].parse().ok()?, f[19].parse().ok()?))
}

fn meta(name: &str, alloc: &str, pid: u32) -> TaskMeta {
    TaskMeta {
        task_id: format!("{alloc}/{name}/t"),
        alloc_id: alloc.to_owned(),
        task_name: name.to_owned(),
        main_pid: pid,
        main_start_time: stat_of(pid).map_or(0, |s| s.1),
        supervisor_pid: None,
        memcg_dir: None,
        home: None,
        other_homes: Vec::new(),
    }
}

fn key(name: &str) -> TaskKey {
    TaskKey::from_task_id(&format!("observer-test-{}-{name}", std::process::id()))
}

/// What /proc says about the live descendants of `root` (and `root`): pid -> (ppid, cmdline).
fn proc_tree(root: u32) -> BTreeMap<u32, (u32, Vec<String>)> {
    let mut all = BTreeMap::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Some((ppid, _)) = stat_of(pid) {
            let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args = cmd
                .split(|b| *b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect();
            all.insert(pid, (ppid, args));
        }
    }
    let mut out = BTreeMap::new();
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        if let Some(v) = all.get(&p) {
            out.insert(p, v.clone());
            stack.extend(all.iter().filter(|(_, (pp, _))| *pp == p).map(|(c, _)| *c));
        }
    }
    out
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_exit(mut child: Child) -> MainExit {
    let status: ExitStatus = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .expect("waiting for the main process");
    match (status.code(), status.signal()) {
        (Some(code), _) => MainExit::new(code, 0, false),
        (None, Some(sig)) => MainExit::new(128 + sig, sig, status.core_dumped()),
        _ => MainExit::new(-1, 0, false),
    }
}

/// A copy of /bin/sh named `kill-bot` (its `comm` is the file name) that signals `target`.
fn kill_bot(dir: &Path, target: u32, sig: &str) -> u32 {
    let bot = dir.join("kill-bot");
    if !bot.exists() {
        fs::copy(fs::canonicalize("/bin/sh").unwrap(), &bot).unwrap();
        fs::set_permissions(&bot, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut child = Command::new(&bot)
        .args(["-c", &format!("kill -{sig} {target}")])
        .spawn()
        .expect("running kill-bot");
    let pid = child.id();
    assert!(child.wait().unwrap().success(), "kill-bot failed");
    pid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tree_and_signal_provenance() {
    if !have_root("tree_and_signal_provenance") {
        return;
    }
    let _serial = SERIAL.lock().await;
    let pins = PinRoot::new("tree");
    let probes = pins.load();
    println!("pinning: {:?}", probes.pinning());
    let observer = Observer::start(
        Arc::clone(&probes),
        ObserverConfig::default(),
        bpfexec_driver::telemetry::FactBus::new(),
    );
    let tmp = tempfile::tempdir().unwrap();
    let mut reaper = Reaper::default();

    // 1. sh -> sh -> sleep, compared with /proc.
    let (main, stdin) = spawn_gated("sh -c 'sleep 1000; :'; :");
    let main_pid = main.id();
    reaper.0.push(main_pid);
    let k = key("tree");
    let report = observer
        .track(k, meta("web", "alloc-web", main_pid))
        .unwrap();
    assert_eq!(report.processes, 1);
    go(stdin);
    // Three processes are in the tree as soon as the last fork is seen; the leaf's exec of
    // `sleep` follows it (a fork inherits its parent's command line until then). Under
    // emulation the probes' records of the fork and the exec can be drained apart, so the tree
    // is compared with /proc once it has seen the leaf's exec.
    wait_until("a three-level tree with the leaf's exec", || {
        observer.tree(k).is_some_and(|t| {
            t.processes.len() == 3 && t.execs.iter().any(|e| e.filename.ends_with("sleep"))
        })
    })
    .await;
    let tree = observer.tree(k).unwrap();
    let proc_view = proc_tree(main_pid);
    reaper.0.extend(proc_view.keys());
    println!("{}", serde_json::to_string_pretty(&tree).unwrap());
    let ours: BTreeMap<u32, (u32, Vec<String>)> = tree
        .processes
        .iter()
        .map(|p| (p.pid, (p.ppid, p.cmdline.clone())))
        .collect();
    assert_eq!(ours, proc_view, "observer tree vs /proc");
    assert_eq!(tree.roots, [main_pid]);
    assert!(tree.processes.iter().all(|p| p.start_time_ticks.is_some()));
    assert!(tree.execs.iter().any(|e| e.filename.ends_with("sleep")));
    let tracked = probes.kernel().tracked().unwrap();
    for pid in proc_view.keys() {
        assert!(
            tracked.contains(&(*pid, k.0)),
            "pid {pid} not in TRACKED: {tracked:?}"
        );
    }
    assert_eq!(observer.pid_usage(k).len(), 3);

    // 2. SIGTERM from a host process named kill-bot.
    let bot = kill_bot(tmp.path(), main_pid, "TERM");
    let exit = wait_exit(main).await;
    assert_eq!(exit.signal, libc::SIGTERM);
    let reason = observer.classify(k, &exit).await;
    println!("{reason:?}");
    let ExitReason::Signaled {
        signal,
        sender: Some(sender),
        ..
    } = &reason
    else {
        panic!("not a signal death with a sender: {reason:?}")
    };
    assert_eq!(*signal, libc::SIGTERM);
    assert_eq!(
        (sender.pid, sender.comm.as_str(), &sender.class),
        (bot, "kill-bot", &SenderClass::Host)
    );
    let (oom, message, annotations) = reason.to_nomad();
    println!("{message} {annotations:?}");
    assert!(!oom);
    assert_eq!(
        message,
        format!("Killed by SIGTERM from pid {bot} (kill-bot, uid 0), a host process")
    );
    observer.forget(k).unwrap();

    // 3. SIGUSR1 from a process of another task.
    let (victim, vin) = spawn_gated("exec sleep 1000");
    reaper.0.push(victim.id());
    let kv = key("victim");
    observer
        .track(kv, meta("db", "alloc-victim", victim.id()))
        .unwrap();
    let (killer, kin) = spawn_gated(&format!("kill -USR1 {}", victim.id()));
    let ka = key("killer");
    observer
        .track(ka, meta("cron", "alloc-killer", killer.id()))
        .unwrap();
    go(vin);
    go(kin);
    let killer_pid = killer.id();
    assert_eq!(wait_exit(killer).await.exit_code, 0);
    let exit = wait_exit(victim).await;
    let reason = observer.classify(kv, &exit).await;
    let ExitReason::Signaled {
        sender: Some(sender),
        ..
    } = &reason
    else {
        panic!("{reason:?}")
    };
    assert_eq!(sender.pid, killer_pid);
    assert_eq!(
        sender.class,
        SenderClass::OtherAllocation {
            alloc_id: "alloc-killer".into(),
            task_name: "cron".into()
        }
    );
    println!("{}", reason.to_nomad().1);

    // 4. Threads are not processes: a thread of a tracked process is no Fork event, and a signal
    // to that thread is attributed to its process.
    let thread_task = key("threads");
    let me = std::process::id();
    observer
        .track(thread_task, meta("self", "alloc-self", me))
        .unwrap();
    let mut rx = probes.subscribe();
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let worker = std::thread::spawn(move || {
        tid_tx.send(nix::unistd::gettid().as_raw() as u32).unwrap();
        std::thread::sleep(Duration::from_millis(300));
    });
    let tid = tid_rx.recv().unwrap();
    // SAFETY: tgkill with our own pid and a live thread id of ours, signal 0 (existence check
    // only, nothing is delivered).
    let _ = unsafe { libc::syscall(libc::SYS_tgkill, me, tid, 0) };
    // SIGUSR2, ignored for the whole test process: harmless to send to our own thread (SIGURG,
    // ignored by default, is one of the signals the probes do not record).
    // SAFETY: SIG_IGN installs no handler code; tgkill as above.
    let _ = unsafe {
        libc::signal(libc::SIGUSR2, libc::SIG_IGN);
        libc::syscall(libc::SYS_tgkill, me, tid, libc::SIGUSR2)
    };
    worker.join().unwrap();
    let mut saw_signal = false;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !saw_signal {
        while let Ok(ev) = rx.try_recv() {
            match ev {
                bpfexec_driver::probes::ProcessEvent::Fork { child_pid, .. } => {
                    assert_ne!(child_pid, tid, "a thread was reported as a process");
                }
                bpfexec_driver::probes::ProcessEvent::Signal {
                    target_pid,
                    target_tgid,
                    target_task,
                    sig,
                    ..
                } if target_pid == tid && sig == libc::SIGUSR2 => {
                    assert_eq!((target_tgid, target_task), (me, thread_task.0));
                    saw_signal = true;
                }
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(saw_signal, "no attributed signal to thread {tid}");
    observer.forget(thread_task).unwrap();

    let stats = observer.stats();
    println!("{stats:?}");
    assert_eq!(stats.lost_events, 0);
    assert!(stats.events_processed > 0);
}

/// A throwaway memory cgroup (v1 `memory` hierarchy, or the cgroup2 root of a v2-only host with
/// the memory controller enabled for its children), removed (after killing its processes) when
/// dropped.
struct MemCgroup(PathBuf);

/// The host runs cgroup v2 only.
fn unified_only() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.subtree_control").exists()
}

impl MemCgroup {
    fn new(tag: &str, limit: u64) -> Self {
        let root = if unified_only() {
            // A fresh v2 host (no systemd, no Nomad yet) enables no controller for children.
            let control = Path::new("/sys/fs/cgroup/cgroup.subtree_control");
            if !fs::read_to_string(control)
                .unwrap_or_default()
                .split_whitespace()
                .any(|c| c == "memory")
            {
                fs::write(control, "+memory").expect("enabling the memory controller");
            }
            "/sys/fs/cgroup"
        } else {
            "/sys/fs/cgroup/memory"
        };
        let dir = PathBuf::from(format!("{root}/bpfexec-test-{}-{tag}", std::process::id()));
        fs::create_dir(&dir).expect("creating the test memory cgroup");
        let cg = Self(dir);
        if unified_only() {
            fs::write(cg.0.join("memory.max"), limit.to_string()).unwrap();
            let _ = fs::write(cg.0.join("memory.swap.max"), "0");
        } else {
            fs::write(cg.0.join("memory.limit_in_bytes"), limit.to_string()).unwrap();
            let _ = fs::write(cg.0.join("memory.swappiness"), "0");
        }
        cg
    }

    fn relative(&self) -> String {
        format!("/{}", self.0.file_name().unwrap().to_string_lossy())
    }

    /// `sh` that joins this cgroup, waits for `go`, then runs `script`.
    fn spawn(&self, script: &str) -> (Child, ChildStdin) {
        let mut child = Command::new("/bin/sh")
            .args([
                "-c",
                "echo $$ > \"$0/cgroup.procs\" && read go && exec /bin/sh -c \"$1\"",
                self.0.to_str().unwrap(),
                script,
            ])
            .stdin(Stdio::piped())
            .spawn()
            .expect("spawning sh");
        let stdin = child.stdin.take().unwrap();
        // Like the driver's supervisor, track only once the process is in its cgroup.
        let name = self.relative();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !fs::read_to_string(format!("/proc/{}/cgroup", child.id()))
            .unwrap_or_default()
            .lines()
            .any(|l| (l.contains(":memory:") || l.starts_with("0::")) && l.ends_with(&name))
        {
            assert!(Instant::now() < deadline, "sh never joined {name}");
            std::thread::sleep(Duration::from_millis(5));
        }
        (child, stdin)
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            let procs = fs::read_to_string(self.0.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            if fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("could not remove {}", self.0.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_cgroup_oom_kills() {
    if !have_root("memory_cgroup_oom_kills") {
        return;
    }
    if !unified_only() && !Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "no cgroup v1 memory hierarchy at /sys/fs/cgroup/memory and CI=true forbids skipping"
        );
        println!("SKIP memory_cgroup_oom_kills: no cgroup v1 memory controller");
        return;
    }
    let _serial = SERIAL.lock().await;
    let pins = PinRoot::new("oom");
    let probes = pins.load();
    let observer = Observer::start(
        Arc::clone(&probes),
        ObserverConfig::default(),
        bpfexec_driver::telemetry::FactBus::new(),
    );
    let mut notices = observer.notices();

    // A. The main process is the victim.
    let cg = MemCgroup::new("main", LIMIT);
    let (main, stdin) = cg.spawn("exec tail /dev/zero");
    let k = key("oom-main");
    observer
        .track(k, meta("hog", "alloc-oom", main.id()))
        .unwrap();
    go(stdin);
    let exit = wait_exit(main).await;
    assert_eq!(exit.signal, libc::SIGKILL, "{exit:?}");
    let reason = observer.classify(k, &exit).await;
    let (oom, message, annotations) = reason.to_nomad();
    println!("A: {message} {annotations:?}");
    assert!(oom, "{reason:?}");
    let ExitReason::OomKilled {
        scope,
        victim_comm,
        main_process,
        rss_kb,
        ..
    } = &reason
    else {
        panic!("{reason:?}")
    };
    assert!(*main_process);
    assert_eq!(victim_comm, "tail");
    assert!(*rss_kb > 16 * 1024, "rss {rss_kb} KiB");
    assert_eq!(
        scope,
        &OomScope::Cgroup {
            cgroup: cg.relative()
        }
    );
    observer.forget(k).unwrap();
    drop(cg);

    // B. A child is the victim; the main process carries on and exits 0: not an OOM exit, but
    // a notice while it runs.
    let cg = MemCgroup::new("child", LIMIT);
    let (main, stdin) = cg.spawn("tail /dev/zero; sleep 0.5; exit 0");
    let main_pid = main.id();
    let k = key("oom-child");
    observer
        .track(k, meta("batch", "alloc-oom-child", main_pid))
        .unwrap();
    go(stdin);
    let notice = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let n = notices.recv().await.unwrap();
            if n.task_key == k {
                return n;
            }
        }
    })
    .await
    .expect("no child OOM notice");
    println!("B notice: {} {:?}", notice.message, notice.annotations);
    assert_eq!(notice.annotations["reason"], "child_oom_killed");
    assert_eq!(notice.annotations["victim_comm"], "tail");
    assert_eq!(notice.annotations["oom_scope"], "cgroup");
    assert_ne!(notice.annotations["victim_pid"], main_pid.to_string());
    let exit = wait_exit(main).await;
    assert_eq!(exit.exit_code, 0);
    let reason = observer.classify(k, &exit).await;
    assert_eq!(reason, ExitReason::Exited { code: 0 });
    assert!(!reason.to_nomad().0);
    observer.forget(k).unwrap();
    drop(cg);

    // C. The main process exits because its child was OOM-killed.
    let cg = MemCgroup::new("cause", LIMIT);
    let (main, stdin) = cg.spawn("tail /dev/zero; exit $?");
    let k = key("oom-cause");
    observer
        .track(k, meta("wrapper", "alloc-oom-cause", main.id()))
        .unwrap();
    go(stdin);
    let exit = wait_exit(main).await;
    assert_eq!(exit.exit_code, 137, "{exit:?}");
    let reason = observer.classify(k, &exit).await;
    let (oom, message, _) = reason.to_nomad();
    println!("C: {message}");
    assert!(oom, "{reason:?}");
    assert!(matches!(
        reason,
        ExitReason::OomKilled {
            main_process: false,
            ..
        }
    ));
    observer.forget(k).unwrap();
    drop(cg);
    assert_eq!(observer.lost_events(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_state_survives_a_driver_restart() {
    if !have_root("pinned_state_survives_a_driver_restart") {
        return;
    }
    let _serial = SERIAL.lock().await;
    let pin_root = PinRoot::new("restart");
    let tmp = tempfile::tempdir().unwrap();
    let mut reaper = Reaper::default();
    let k = key("restart");

    // Driver 1 starts the task: sh runs four sleeps one after the other.
    let probes = pin_root.load();
    let observer = Observer::start(
        Arc::clone(&probes),
        ObserverConfig::default(),
        bpfexec_driver::telemetry::FactBus::new(),
    );
    let (main, stdin) = spawn_gated("sleep 1001; sleep 1002; sleep 1003; sleep 1004");
    let main_pid = main.id();
    reaper.0.push(main_pid);
    let m = meta("svc", "alloc-restart", main_pid);
    observer.track(k, m.clone()).unwrap();
    go(stdin);
    let sleeper = |n: &str| {
        proc_tree(main_pid)
            .into_iter()
            .find(|(_, (_, args))| args.get(1).is_some_and(|a| a == n))
            .map(|(pid, _)| pid)
    };
    wait_until("sleep 1001", || sleeper("1001").is_some()).await;
    let first = sleeper("1001").unwrap();
    reaper.0.push(first);

    // The driver goes away (its links stay pinned, the probes keep running).
    drop(observer);
    drop(probes);
    nix::sys::signal::kill(Pid::from_raw(first as i32), Signal::SIGKILL).unwrap();
    wait_until("sleep 1002 (forked while no driver ran)", || {
        sleeper("1002").is_some()
    })
    .await;
    let second = sleeper("1002").unwrap();
    reaper.0.push(second);

    // Driver 2 reuses the pinned maps and links and recovers the task (and unpins the state of
    // another pin layout version it finds).
    fs::create_dir(pin_root.0.join("v0")).unwrap();
    let probes = pin_root.load();
    assert!(!pin_root.0.join("v0").exists(), "stale layout version kept");
    let Pinning::On {
        maps_reused,
        links_reused,
        ..
    } = probes.pinning().clone()
    else {
        panic!("not pinned: {:?}", probes.pinning())
    };
    assert!(maps_reused);
    assert_eq!(
        links_reused.len(),
        probes.attached().len(),
        "{links_reused:?}"
    );
    let tracked = probes.kernel().tracked().unwrap();
    assert!(
        tracked.contains(&(main_pid, k.0)),
        "main not tracked: {tracked:?}"
    );
    assert!(
        tracked.contains(&(second, k.0)),
        "the process forked while no driver ran is tracked: {tracked:?}"
    );
    assert!(
        !tracked.iter().any(|(p, _)| *p == first),
        "exited pid still tracked"
    );
    // A second driver on the same pin root must not share the ring buffer: it runs unpinned.
    let intruder = pin_root.load();
    let Pinning::Off { reason } = intruder.pinning() else {
        panic!(
            "two drivers pinned the same state: {:?}",
            intruder.pinning()
        )
    };
    assert!(reason.contains("another bpfexec driver"), "{reason}");
    drop(intruder);
    let observer = Observer::start(
        Arc::clone(&probes),
        ObserverConfig::default(),
        bpfexec_driver::telemetry::FactBus::new(),
    );
    let report = observer.recover(k, m.clone()).unwrap();
    println!("recover: {report:?}");
    assert!(report.kernel_facts_reused && report.main_alive);
    wait_until("the backlog and the recovered tree", || {
        observer.tree(k).is_some_and(|t| {
            let pids: Vec<u32> = t.processes.iter().map(|p| p.pid).collect();
            (pids == [main_pid, second] || pids == [second, main_pid])
                && t.processes.iter().any(|p| p.cmdline == ["sleep", "1002"])
        })
    })
    .await;
    let tree = observer.tree(k).unwrap();
    let node = tree.processes.iter().find(|p| p.pid == second).unwrap();
    assert_eq!(node.cmdline, ["sleep", "1002"]);
    assert_eq!(node.ppid, main_pid);

    // Live attribution after recovery: the next fork and exit.
    nix::sys::signal::kill(Pid::from_raw(second as i32), Signal::SIGKILL).unwrap();
    wait_until("sleep 1003 in the tree", || {
        observer.tree(k).is_some_and(|t| {
            t.processes.len() == 2
                && t.processes.iter().any(|p| p.cmdline == ["sleep", "1003"])
                && !t.processes.iter().any(|p| p.pid == second)
        })
    })
    .await;
    let third = sleeper("1003").unwrap();
    reaper.0.push(third);

    // Driver 2 goes away; kill-bot kills the main process while no driver runs.
    drop(observer);
    drop(probes);
    let bot = kill_bot(tmp.path(), main_pid, "TERM");
    let exit = wait_exit(main).await;
    assert_eq!(exit.signal, libc::SIGTERM);

    // Driver 3 learns the true reason from the pinned state.
    let probes = pin_root.load();
    let observer = Observer::start(
        Arc::clone(&probes),
        ObserverConfig::default(),
        bpfexec_driver::telemetry::FactBus::new(),
    );
    let report = observer.recover(k, m).unwrap();
    println!("recover after exit: {report:?}");
    assert!(!report.main_alive && report.kernel_facts_reused);
    let reason = observer.classify(k, &exit).await;
    let (oom, message, annotations) = reason.to_nomad();
    println!("{message} {annotations:?}");
    assert!(!oom);
    assert_eq!(
        message,
        format!("Killed by SIGTERM from pid {bot} (kill-bot, uid 0), a host process")
    );
    observer.forget(k).unwrap();
    assert!(probes.kernel().facts(k.0).unwrap().is_none());
    assert_eq!(observer.lost_events(), 0);
}
