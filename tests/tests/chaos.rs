//! Issue 12 §3, chaos: a churn of short and long tasks through the real Nomad agent while the
//! plugin is SIGKILLed several times (Nomad relaunches it) and the agent is restarted once. Each
//! short task ends on its own with an exit code or a signal it raised itself; two long tasks
//! are SIGKILLed by this test (one while no plugin runs); the rest are stopped by Nomad at the
//! end. Every task's exit code (Nomad's `Terminated`) and exit reason (the driver's event) must
//! be the true one and its command must have run exactly once (a plugin killed during a
//! StartTask must not make Nomad's retry start it again); then, after the jobs are stopped and
//! garbage-collected, nothing is left (processes, mounts, cgroups, state dirs, pinned-map
//! entries) and the driver is healthy.
//!
//! 40 short and 6 long tasks by default; `BPFEXEC_E2E_LONG=1` runs 120 and 12.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bpfexec_e2e::api::Alloc;
use bpfexec_e2e::observe::{exit_events, expect_details};
use bpfexec_e2e::suite::{self, TIMEOUT, expect_terminated, wait_task_pid};
use bpfexec_e2e::wait::{POLL, poll_until};
use bpfexec_e2e::{Agent, AgentOptions, Check, DRIVER_NAME, leftovers, procs, run_checks};
use nix::sys::signal::Signal;

static PORT: OnceLock<u16> = OnceLock::new();

/// Small task logs, so a 10 MB `ephemeral_disk` holds them (Nomad checks it).
const SMALL_LOGS: &str = "    logs {\n      max_files     = 2\n      max_file_size = 1\n    }\n";

/// (short tasks, long tasks).
fn sizes() -> (usize, usize) {
    if std::env::var("BPFEXEC_E2E_LONG").is_ok_and(|v| v == "1") {
        (120, 12)
    } else {
        (40, 6)
    }
}

#[test]
fn chaos() {
    if !suite::is_bpfexec() {
        println!("SKIP: chaos: bpfexec-only checks (BPFEXEC_E2E_DRIVER=raw_exec)");
        return;
    }
    let port = *PORT.get_or_init(|| bpfexec_e2e::env::free_port().unwrap_or(0));
    run_checks(
        "chaos",
        AgentOptions::bpfexec().plugin_config(&format!("http_addr = \"127.0.0.1:{port}\"")),
        &[Check {
            name: "churn_with_plugin_kills_and_agent_restart",
            run: churn,
        }],
    );
}

/// How a task ends, as the test arranged it.
#[derive(Clone, Debug)]
enum Expect {
    /// `exit <code>`.
    Exited(i64),
    /// `kill -TERM $$`: SIGTERM raised by the task's own main process.
    SelfTerm,
    /// SIGKILL from this test process (a host process).
    HostKill,
    /// Stopped by Nomad (`kill_signal = "SIGTERM"` from the driver).
    Stopped,
}

struct Task {
    job: String,
    alloc: String,
    expect: Expect,
}

/// SIGKILLs the plugin and waits until Nomad relaunched it.
fn kill_plugin(agent: &Agent, then: impl FnOnce() -> Result<()>) -> Result<()> {
    let plugins = agent.plugin_pids();
    ensure!(!plugins.is_empty(), "no plugin process");
    for p in &plugins {
        procs::signal(*p, Signal::SIGKILL).context("SIGKILL to the plugin")?;
    }
    println!("chaos: SIGKILLed plugin {plugins:?}");
    then()?;
    poll_until("Nomad to relaunch the plugin", TIMEOUT, POLL, |_| {
        Ok(agent
            .plugin_pids()
            .into_iter()
            .find(|p| !plugins.contains(p)))
    })?;
    Ok(())
}

/// Each task notes every run of its command here: a task must run exactly once.
const RUNS: &str = "echo run >> \"$NOMAD_ALLOC_DIR/runs\"";

fn short_job(i: usize) -> (String, Expect) {
    let pause = format!("{RUNS}\nsleep 0.{}", i % 10);
    if i % 6 == 5 {
        (format!("{pause}\nkill -TERM $$\nsleep 5"), Expect::SelfTerm)
    } else {
        let code = i64::try_from(i % 4).unwrap_or(0);
        (format!("{pause}\nexit {code}"), Expect::Exited(code))
    }
}

/// Registers a job; retried while the agent restarts.
fn register(agent: &Agent, hcl: &str) -> Result<String> {
    poll_until("the job registered", TIMEOUT, POLL, |last| {
        match agent.api().register_job(hcl) {
            Ok(id) => Ok(Some(id)),
            Err(e) => {
                *last = format!("{e:#}");
                Ok(None)
            }
        }
    })
}

/// A long task: (job, alloc, host pid of its main process).
type Long = (String, String, i32);

fn start_long(agent: &Agent) -> Result<Long> {
    let job = suite::service("chaos-long")
        .kill_signal("SIGTERM")
        .cpu_mhz(20)
        .memory_mb(32)
        .disk_mb(10)
        .extra_task_hcl(SMALL_LOGS)
        .shell(&format!(
            "{RUNS}\necho $$ > /alloc/pid\nwhile :; do sleep 0.5; done"
        ));
    let id = register(agent, &job.to_hcl())?;
    let alloc = agent.api().wait_job_alloc(&id, TIMEOUT)?;
    agent
        .api()
        .wait_alloc_status(&alloc, &["running"], TIMEOUT)?;
    let pid = wait_task_pid(agent, &alloc, "pid")?;
    Ok((id, alloc, pid))
}

/// The chaos at step `step` (tenths of the churn): plugin kills, the agent restart, long tasks
/// SIGKILLed by this process (one while no plugin runs).
fn disrupt(
    agent: &mut Agent,
    step: usize,
    long: &mut Vec<Long>,
    tasks: &mut Vec<Task>,
) -> Result<()> {
    match step {
        2 | 6 | 9 => kill_plugin(agent, || Ok(()))?,
        5 => {
            println!("chaos: restarting the agent");
            agent.restart()?;
        }
        3 | 7 => {
            let (job, alloc, pid) = long.remove(0);
            let kill = || procs::signal(pid, Signal::SIGKILL).context("SIGKILL to a long task");
            if step == 7 {
                kill_plugin(agent, kill)?;
            } else {
                kill()?;
            }
            tasks.push(Task {
                job,
                alloc,
                expect: Expect::HostKill,
            });
        }
        _ => {}
    }
    Ok(())
}

/// Registers the short tasks one every 0.3 s, disrupting as it goes; returns their jobs.
fn short_churn(
    agent: &mut Agent,
    n_short: usize,
    long: &mut Vec<Long>,
    tasks: &mut Vec<Task>,
) -> Result<Vec<(String, Expect)>> {
    let mut jobs = Vec::new();
    for i in 0..n_short {
        let step = i * 10 / n_short;
        if i == 0 || step != (i - 1) * 10 / n_short {
            disrupt(agent, step, long, tasks)?;
        }
        let (script, expect) = short_job(i);
        let job = suite::batch("chaos-short")
            .cpu_mhz(20)
            .memory_mb(32)
            .shell(&script);
        jobs.push((register(agent, &job.to_hcl())?, expect));
        std::thread::sleep(Duration::from_millis(300));
    }
    Ok(jobs)
}

fn churn(agent: &mut Agent) -> Result<()> {
    let (n_short, n_long) = sizes();
    let port = *PORT.get().context("port")?;
    let baseline = leftovers::map_baseline(port)?;
    let started = Instant::now();
    let mut tasks: Vec<Task> = Vec::new();
    let mut long = (0..n_long)
        .map(|_| start_long(agent))
        .collect::<Result<Vec<_>>>()?;
    let short_jobs = short_churn(agent, n_short, &mut long, &mut tasks)?;
    println!(
        "chaos: {n_short} short tasks registered in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    for (job, expect) in short_jobs {
        let alloc = agent.api().wait_job_alloc(&job, TIMEOUT)?;
        tasks.push(Task { job, alloc, expect });
    }
    for (job, alloc, _) in long {
        agent.api().stop_job(&job, false)?;
        tasks.push(Task {
            job,
            alloc,
            expect: Expect::Stopped,
        });
    }

    let mut wrong = Vec::new();
    let mut duplicates = 0;
    let mut lost_by_nomad = Vec::new();
    for t in &tasks {
        match check(agent, t) {
            Ok(Checked::Reported(n)) => duplicates += n.saturating_sub(1),
            Ok(Checked::NomadLost(how)) => lost_by_nomad.push(format!("{} ({how:?})", t.alloc)),
            Err(e) => wrong.push(format!("{} ({:?}): {e:#}", t.alloc, t.expect)),
        }
    }
    ensure!(
        wrong.is_empty(),
        "{} of {} tasks were not reported truly:\n{}",
        wrong.len(),
        tasks.len(),
        wrong.join("\n")
    );
    println!(
        "CHAOS tasks={} short={n_short} long={n_long} plugin_kills=4 agent_restarts=1 \
         repeated_exit_events={duplicates} lost_by_nomad={} seconds={:.0}",
        tasks.len(),
        lost_by_nomad.len(),
        started.elapsed().as_secs_f64()
    );
    if !lost_by_nomad.is_empty() {
        println!("chaos: Nomad lost after a plugin death (see NomadLost): {lost_by_nomad:?}");
    }
    nothing_left(agent, &tasks, port, &baseline)
}

/// Stops and garbage-collects every job; nothing of them may stay; the driver is healthy.
fn nothing_left(
    agent: &Agent,
    tasks: &[Task],
    port: u16,
    baseline: &BTreeMap<String, u64>,
) -> Result<()> {
    for t in tasks {
        agent.api().stop_job(&t.job, false)?;
    }
    agent.api().client_gc()?;
    let ids: Vec<String> = tasks.iter().map(|t| t.alloc.clone()).collect();
    leftovers::wait_nothing_left(agent, &ids, port, baseline)?;
    let node = agent.node()?;
    let d = node.drivers.get(DRIVER_NAME).cloned().unwrap_or_default();
    ensure!(d.healthy, "the driver ended unhealthy: {d:?}");
    Ok(())
}

/// How a task's end reached Nomad.
enum Checked {
    /// Truly, with this many exit-reason events.
    Reported(usize),
    /// Not (fully) in Nomad's allocation, because Nomad lost it on its side (see [`NomadLost`];
    /// races inside Nomad the driver cannot reach). Counted and printed, not a failure.
    NomadLost(NomadLost),
}

/// `Reattach` and `NeverStarted` follow a plugin SIGKILL: Nomad's driver manager hands out the
/// dead plugin instance until it has noticed the process exit, and a task runner given it gives
/// up. `StuckRunning` follows the agent restart. The last two lose only the exit-reason event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NomadLost {
    /// Re-attaching to the task failed ("failed to restore handle on driver after it exited
    /// unexpectedly", or "failed to initialize driver after it exited unexpectedly"): Nomad
    /// marks it dead with no exit code and never asks for it again.
    /// The command must still have run once; the driver's sweep removes the task once its
    /// allocation is collected.
    Reattach,
    /// Creating the task's runner failed ("error adding alloc ... plugin is shut down"): the
    /// allocation fails with no task events and its command never runs.
    NeverStarted,
    /// The exit code and reason are true, but Nomad shows the task running for good: the agent
    /// was stopped while its task runner handled the exit, and the restored runner exited
    /// without marking the task dead ("task run loop exiting" after the restart).
    StuckRunning,
    /// The exit code is true, but the exit-reason event never reached Nomad: the plugin was
    /// SIGKILLed within a second of the task's end, with the event still on its way (Nomad has
    /// no way to ask a new plugin for the events of a task it has seen end).
    EventDiedWithPlugin,
    /// The exit code is true, and Nomad received the driver's exit-reason event (its log says
    /// "Task event: ... type=Driver"), but only after the task runner had exited, when Nomad no
    /// longer updates the allocation: Nomad's event goroutines lagged behind its task runner.
    LateEvent,
}

/// Whether Nomad's log shows `alloc`'s task runner exited.
fn run_loop_exited(agent: &Agent, alloc: &str) -> bool {
    std::fs::read_to_string(agent.log_path()).is_ok_and(|log| {
        log.lines()
            .any(|l| l.contains(alloc) && l.contains("task run loop exiting"))
    })
}

/// Whether Nomad's log shows the driver's event for `alloc` arrived after its task runner had
/// exited.
fn event_after_run_loop(agent: &Agent, alloc: &str) -> bool {
    let Ok(log) = std::fs::read_to_string(agent.log_path()) else {
        return false;
    };
    let mut exited = false;
    for l in log.lines().filter(|l| l.contains(alloc)) {
        if l.contains("task run loop exiting") {
            exited = true;
        } else if exited && l.contains("Task event:") && l.contains("type=Driver") {
            return true;
        }
    }
    false
}

/// Milliseconds since midnight of a Nomad log line (`    2026-12-02T16:10:41.319Z [INFO] ...`).
fn log_ms(line: &str) -> Option<i64> {
    let t = line.trim_start().get(11..23)?;
    let field = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    Some(((field(0..2)? * 60 + field(3..5)?) * 60 + field(6..8)?) * 1000 + field(9..12)?)
}

/// Whether a plugin process was SIGKILLed within a second of `alloc`'s Terminated event and
/// Nomad never logged a driver event for it.
fn event_died_with_plugin(agent: &Agent, alloc: &str) -> bool {
    let Ok(log) = std::fs::read_to_string(agent.log_path()) else {
        return false;
    };
    let of_alloc = |kind: &str| {
        log.lines()
            .find(|l| l.contains(alloc) && l.contains("Task event:") && l.contains(kind))
    };
    if of_alloc("type=Driver").is_some() {
        return false;
    }
    let Some(ended) = of_alloc("type=Terminated").and_then(log_ms) else {
        return false;
    };
    log.lines()
        .filter(|l| l.contains("plugin process exited: driver=bpfexec") && l.contains("killed"))
        .filter_map(log_ms)
        .any(|k| (ended - 500..=ended + 1000).contains(&k))
}

/// Whether Nomad's log shows it lost `alloc` after a plugin death, and how.
fn nomad_lost(agent: &Agent, alloc: &str) -> Option<NomadLost> {
    let log = std::fs::read_to_string(agent.log_path()).ok()?;
    let said = |what: &str| log.lines().any(|l| l.contains(what) && l.contains(alloc));
    if said("failed to restore handle on driver after it exited unexpectedly")
        || said("failed to initialize driver after it exited unexpectedly")
    {
        Some(NomadLost::Reattach)
    } else if said("error adding alloc") && said("plugin is shut down") {
        Some(NomadLost::NeverStarted)
    } else {
        None
    }
}

/// Waits for the task's end and checks it.
fn check(agent: &Agent, t: &Task) -> Result<Checked> {
    const STUCK_FOR: Duration = Duration::from_secs(15);
    let api = agent.api();
    let mut stuck_since: Option<Instant> = None;
    let a: Alloc = poll_until(
        "the task's end and exit-reason event",
        TIMEOUT,
        POLL,
        |last| {
            let a = api.alloc(&t.alloc)?;
            *last = a.describe();
            // Non-terminal for 15 s after the runner exited: not a status update on its way.
            let stuck = !a.is_terminal()
                && suite::count_events(&a, "Terminated") > 0
                && run_loop_exited(agent, &t.alloc);
            if !stuck {
                stuck_since = None;
            } else if stuck_since.get_or_insert_with(Instant::now).elapsed() >= STUCK_FOR {
                return Ok(Some(a));
            }
            let ended = !exit_events(&a).is_empty()
                || nomad_lost(agent, &t.alloc).is_some()
                || (suite::count_events(&a, "Terminated") > 0
                    && (event_after_run_loop(agent, &t.alloc)
                        || event_died_with_plugin(agent, &t.alloc)));
            Ok((a.is_terminal() && ended).then_some(a))
        },
    )?;
    let runs = std::fs::read_to_string(suite::alloc_file(agent, &t.alloc, "runs"))
        .map_or(0, |r| r.lines().count());
    let events = exit_events(&a);
    if let Some(how) = nomad_lost(agent, &t.alloc)
        && events.is_empty()
        && suite::count_events(&a, "Terminated") == 0
    {
        let want = usize::from(how == NomadLost::Reattach);
        ensure!(
            runs == want,
            "Nomad lost it ({how:?}); its command ran {runs} times"
        );
        return Ok(Checked::NomadLost(how));
    }
    ensure!(runs == 1, "its command ran {runs} times");
    let (code, signal) = match t.expect {
        Expect::Exited(c) => (c, 0),
        Expect::SelfTerm | Expect::Stopped => (143, 15),
        Expect::HostKill => (137, 9),
    };
    expect_terminated(&a, code, signal)?;
    if events.is_empty() && event_after_run_loop(agent, &t.alloc) {
        return Ok(Checked::NomadLost(NomadLost::LateEvent));
    }
    if events.is_empty() && event_died_with_plugin(agent, &t.alloc) {
        return Ok(Checked::NomadLost(NomadLost::EventDiedWithPlugin));
    }
    let want: BTreeMap<&str, String> = match &t.expect {
        Expect::Exited(c) => [
            ("reason", "exited".to_owned()),
            ("exit_code", c.to_string()),
        ]
        .into(),
        Expect::SelfTerm => [
            ("reason", "signaled".to_owned()),
            ("signal", "SIGTERM".to_owned()),
            ("sender_class", "same_process".to_owned()),
        ]
        .into(),
        Expect::HostKill => [
            ("reason", "signaled".to_owned()),
            ("signal", "SIGKILL".to_owned()),
            ("sender_class", "host".to_owned()),
            ("sender_pid", std::process::id().to_string()),
        ]
        .into(),
        Expect::Stopped => [
            ("reason", "signaled".to_owned()),
            ("signal", "SIGTERM".to_owned()),
            ("sender_class", "driver".to_owned()),
        ]
        .into(),
    };
    let pairs: Vec<(&str, &str)> = want.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for ev in &events {
        expect_details(ev, &pairs)?;
    }
    if !a.is_terminal() {
        return Ok(Checked::NomadLost(NomadLost::StuckRunning));
    }
    Ok(Checked::Reported(events.len()))
}

#[test]
fn nomad_log_times() {
    let line = "    2026-12-02T16:10:41.319Z [INFO]  client.driver_mgr: plugin process exited";
    assert_eq!(log_ms(line), Some(((16 * 60 + 10) * 60 + 41) * 1000 + 319));
    assert_eq!(log_ms("short"), None);
}
