//! Issue 4 acceptance, recovery: tasks that end while the agent (and so the driver plugin) is
//! down still get their true exit reason once the agent is back — the probes keep running
//! through their pinned links and record into pinned maps, and the restarted driver reads them.
//! One task is killed by a host process named `kill-bot`, another is OOM-killed by its memory
//! limit, a third has a child OOM-killed and then exits 0 (not an OOM exit) — all while no
//! driver runs. The ring buffer's lost counter is still 0 afterwards.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use bpfexec_e2e::api::TaskEvent;
use bpfexec_e2e::jobspec::TASK;
use bpfexec_e2e::observe::scenario::{GATE, HOG, expect_nothing_lost};
use bpfexec_e2e::observe::{
    EVENT_TIMEOUT, KillBot, exit_events, expect_details, expect_exit_result, expect_message,
};
use bpfexec_e2e::suite::{self, TIMEOUT, alloc_file, task_alive, wait_file, wait_task_pid};
use bpfexec_e2e::wait::{POLL, poll_until, wait_for};
use bpfexec_e2e::{Agent, AgentOptions, Check, procs, run_checks};

#[test]
fn observer_recovery() {
    if !suite::is_bpfexec() {
        println!("SKIP: observer_recovery: bpfexec-only checks (BPFEXEC_E2E_DRIVER=raw_exec)");
        return;
    }
    run_checks(
        "observer_recovery",
        AgentOptions::bpfexec(),
        &[
            Check {
                name: "reasons_while_driver_down",
                run: reasons_while_driver_down,
            },
            Check {
                name: "lost_counter_zero",
                run: lost_counter_zero,
            },
        ],
    );
}

/// A started task: alloc id and host pid of its main process.
struct Started {
    alloc: String,
    pid: i32,
}

fn start(agent: &Agent, hcl: &str) -> Result<Started> {
    let api = agent.api();
    let job = api.register_job(hcl)?;
    let alloc = api.wait_job_alloc(&job, TIMEOUT)?;
    api.wait_alloc_status(&alloc, &["running"], TIMEOUT)?;
    let pid = wait_task_pid(agent, &alloc, "pid")?;
    Ok(Started { alloc, pid })
}

fn gone(pid: i32) -> bool {
    wait_for(Duration::from_secs(10), POLL, || !procs::is_alive(pid))
}

/// The three tasks: one for kill-bot, one that OOMs in its main process, one that OOMs in a
/// child and then waits for `/alloc/go2` to exit 0.
fn start_tasks(agent: &Agent) -> Result<[Started; 3]> {
    let killed = start(
        agent,
        &suite::service("down-kill")
            .shell("echo $$ > /alloc/pid\nwhile :; do sleep 0.2; done")
            .to_hcl(),
    )?;
    let oom = start(
        agent,
        &suite::batch("down-oom")
            .shell(&format!("{GATE}exec {HOG}"))
            .memory_mb(32)
            .to_hcl(),
    )?;
    let child_oom = start(
        agent,
        &suite::batch("down-child-oom")
            .shell(&format!(
                "{GATE}{HOG}\necho \"rc=$?\" > /alloc/rc\n\
                 while [ ! -e /alloc/go2 ]; do sleep 0.1; done\nexit 0"
            ))
            .memory_mb(32)
            .to_hcl(),
    )?;
    Ok([killed, oom, child_oom])
}

fn reasons_while_driver_down(agent: &mut Agent) -> Result<()> {
    let [killed, oom, child_oom] = start_tasks(agent)?;
    let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", oom.pid))?
        .lines()
        .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_owned()))
        .context("the OOM task's memory cgroup")?;

    agent.stop()?;
    ensure!(
        agent.plugin_pids().is_empty(),
        "the plugin still runs with the agent stopped"
    );
    for t in [&killed, &oom, &child_oom] {
        ensure!(
            task_alive(t.pid, &t.alloc),
            "task {} died with the agent",
            t.alloc
        );
    }
    let bot = KillBot::new()?.send("TERM", killed.pid)?;
    std::fs::write(alloc_file(agent, &oom.alloc, "go"), b"go\n")?;
    std::fs::write(alloc_file(agent, &child_oom.alloc, "go"), b"go\n")?;
    let rc = wait_file(&alloc_file(agent, &child_oom.alloc, "rc"), TIMEOUT)?;
    ensure!(
        rc == "rc=137",
        "the child of the third task ended with {rc}"
    );
    std::fs::write(alloc_file(agent, &child_oom.alloc, "go2"), b"go\n")?;
    for t in [&killed, &oom, &child_oom] {
        ensure!(gone(t.pid), "task pid {} did not end", t.pid);
    }

    agent.restart()?;
    let ends = collect_ends(agent, &[&killed.alloc, &oom.alloc, &child_oom.alloc])?;
    let mut failures = Vec::new();
    let mut check = |name: &str, r: Result<()>| {
        if let Err(e) = r {
            failures.push(format!("{name}: {e:#}"));
        }
    };

    let (term, ev) = &ends[0];
    check(
        "SIGTERM from kill-bot while the driver was down",
        expect_exit_result(term, 143, 15, false).and_then(|()| {
            let ev = ev.as_ref().context("no driver exit-reason event")?;
            expect_message(
                ev,
                &format!("Killed by SIGTERM from pid {bot} (kill-bot, uid 0), a host process"),
            )?;
            expect_details(
                ev,
                &[
                    ("reason", "signaled"),
                    ("signal", "SIGTERM"),
                    ("sender_pid", &bot.to_string()),
                    ("sender_comm", "kill-bot"),
                    ("sender_class", "host"),
                ],
            )
        }),
    );

    let (term, ev) = &ends[1];
    check(
        "memory-limit OOM of the main process while the driver was down",
        expect_exit_result(term, 137, 9, true).and_then(|()| {
            let ev = ev.as_ref().context("no driver exit-reason event")?;
            let victim = oom.pid.to_string();
            let want = [
                ("reason", "oom_killed"),
                ("victim_pid", victim.as_str()),
                ("victim_comm", "perl"),
                ("victim_is_main", "true"),
                ("oom_scope", "cgroup"),
                ("oom_cgroup", cgroup.as_str()),
            ];
            expect_details(ev, &want)
        }),
    );

    let (term, ev) = &ends[2];
    check(
        "child OOM while the driver was down, then exit 0",
        expect_exit_result(term, 0, 0, false).and_then(|()| {
            let ev = ev.as_ref().context("no driver exit-reason event")?;
            expect_message(ev, "Exited normally (code 0)")
        }),
    );
    ensure!(
        failures.is_empty(),
        "{}\n--- agent log lines about driver events ---\n{}",
        failures.join("\n"),
        driver_event_log_lines(agent)
    );
    Ok(())
}

/// Waits until every allocation is terminal, then (up to [`EVENT_TIMEOUT`] in all) for their
/// driver exit-reason events; returns each one's `Terminated` event and exit-reason event (if
/// it came).
fn collect_ends(agent: &Agent, allocs: &[&str]) -> Result<Vec<(TaskEvent, Option<TaskEvent>)>> {
    let api = agent.api();
    for id in allocs {
        api.wait_alloc_status(id, &["complete", "failed"], TIMEOUT)?;
    }
    let all_there = |_: &mut String| -> Result<Option<()>> {
        for id in allocs {
            if exit_events(&api.alloc(id)?).is_empty() {
                return Ok(None);
            }
        }
        Ok(Some(()))
    };
    if poll_until(
        "the driver exit-reason events",
        EVENT_TIMEOUT,
        POLL,
        all_there,
    )
    .is_err()
    {
        println!("(some driver exit-reason events never came)");
    }
    let mut out = Vec::new();
    for id in allocs {
        let a = api.alloc(id)?;
        println!("{}", a.describe());
        let term = a
            .last_event(TASK, "Terminated")
            .with_context(|| format!("alloc {id} has no Terminated event"))?;
        let events = exit_events(&a);
        ensure!(
            events.len() <= 1,
            "alloc {id} has {} exit-reason events:\n{}",
            events.len(),
            a.describe()
        );
        out.push((term, events.into_iter().next()));
    }
    Ok(out)
}

/// The agent log lines of the current run about driver task events (Nomad warns "no handler
/// registered for event" when it drops one).
fn driver_event_log_lines(agent: &Agent) -> String {
    let log = std::fs::read_to_string(agent.log_path()).unwrap_or_default();
    let run = log.rsplit("agent start #").next().unwrap_or_default();
    run.lines()
        .filter(|l| l.contains("type=Driver") || l.contains("no handler registered for event"))
        .map(|l| l.chars().take(400).collect::<String>())
        .collect::<Vec<_>>()
        .join("\n")
}

fn lost_counter_zero(agent: &mut Agent) -> Result<()> {
    expect_nothing_lost(agent, None)
}
