//! Issue 12 §2, the truth after any kill: when every process of this agent's driver binary is
//! SIGKILLed at once (what `pkill -9 nomad-driver-bpfexec` does, done here by PID for this
//! agent's own plugin copy only: other agents on the machine are left alone), the task dies
//! with its pid namespace's init and Nomad is told the true end (SIGKILL, exit code 137) with an
//! event naming the helper and who killed it (pid, command, uid). The same when only the helper
//! is killed while the plugin runs, and for a helper without a pid namespace
//! (`pid_mode = "host"`), whose task outlives it: its later end is reported as the probes saw it.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use bpfexec_e2e::suite::{self, TIMEOUT, count_events, expect_terminated, wait_task_pid};
use bpfexec_e2e::wait::{POLL, poll_until, wait_for};
use bpfexec_e2e::{Agent, Check, procs, run_checks};
use nix::sys::signal::Signal;

#[test]
fn helper_death() {
    if !suite::is_bpfexec() {
        println!("SKIP: helper_death: bpfexec-only checks (BPFEXEC_E2E_DRIVER=raw_exec)");
        return;
    }
    run_checks(
        "helper_death",
        suite::options(),
        &[
            Check {
                name: "all_driver_processes_killed",
                run: all_driver_processes_killed,
            },
            Check {
                name: "helper_killed_plugin_alive",
                run: helper_killed_plugin_alive,
            },
            Check {
                name: "host_pid_helper_killed",
                run: host_pid_helper_killed,
            },
        ],
    );
}

/// Every process running this agent's copy of the driver (plugin and per-task helpers).
fn driver_processes(agent: &Agent) -> Vec<i32> {
    let plugin = agent.plugin_path();
    procs::find(|p| procs::exe(p).is_some_and(|e| e.starts_with(&plugin)))
}

/// The helper of the task whose main process is `task_pid` (its parent, a driver process).
fn helper_of(agent: &Agent, task_pid: i32) -> Result<i32> {
    let parent = procs::ppid(task_pid).context("the task has no parent")?;
    ensure!(
        driver_processes(agent).contains(&parent),
        "the parent {parent} of task pid {task_pid} is not a driver process: {}",
        procs::describe(&[parent])
    );
    Ok(parent)
}

/// A long-running service task recording its host pid; returns (job, alloc, task pid).
fn start_sleeper(agent: &Agent, prefix: &str, extra: &str) -> Result<(String, String, i32)> {
    let mut job =
        suite::service(prefix).shell("echo $$ > \"$NOMAD_ALLOC_DIR/pid\"\nexec sleep 600");
    if !extra.is_empty() {
        job = job.raw_config(extra);
    }
    let api = agent.api();
    let job_id = api.register_job(&job.to_hcl())?;
    let alloc = api.wait_job_alloc(&job_id, TIMEOUT)?;
    api.wait_alloc_status(&alloc, &["running"], TIMEOUT)?;
    let pid = wait_task_pid(agent, &alloc, "pid")?;
    Ok((job_id, alloc, pid))
}

/// Waits for the `Driver` event explaining the helper's death and checks it names `killer`.
fn expect_helper_event(agent: &Agent, alloc: &str, helper: i32, killer: u32) -> Result<()> {
    let api = agent.api();
    let ev = poll_until("the helper-death event", TIMEOUT, POLL, |last| {
        let events = api.task_events(alloc, bpfexec_e2e::jobspec::TASK)?;
        *last = format!("{events:?}");
        Ok(events
            .into_iter()
            .find(|e| e.all_text().contains("task's helper (pid")))
    })?;
    let text = ev.all_text();
    println!("event: {text}");
    ensure!(
        text.contains(&format!("pid {helper}")),
        "the event does not name helper pid {helper}: {text}"
    );
    ensure!(
        text.contains(&format!("from pid {killer} (")) && text.contains("uid 0"),
        "the event does not name the killer pid {killer} and its uid: {text}"
    );
    Ok(())
}

fn all_driver_processes_killed(agent: &mut Agent) -> Result<()> {
    let (_job, alloc, pid) = start_sleeper(agent, "pkill-all", "")?;
    let helper = helper_of(agent, pid)?;
    let old_plugins = agent.plugin_pids();
    let victims = driver_processes(agent);
    ensure!(
        victims.contains(&helper) && victims.len() >= 2,
        "expected the plugin and the helper among {victims:?}"
    );
    println!("SIGKILL to {}", procs::describe(&victims));
    for p in &victims {
        let _ = procs::signal(*p, Signal::SIGKILL);
    }
    ensure!(
        wait_for(Duration::from_secs(10), POLL, || !procs::is_alive(pid)),
        "the task survived its helper's death"
    );
    poll_until("Nomad to relaunch the plugin", TIMEOUT, POLL, |last| {
        let now = agent.plugin_pids();
        *last = format!("plugin pids {now:?}");
        Ok(now.into_iter().find(|p| !old_plugins.contains(p)))
    })?;
    let a = agent
        .api()
        .wait_alloc_status(&alloc, &["failed", "complete"], TIMEOUT)
        .or_else(|_| agent.api().alloc(&alloc))?;
    println!("{}", a.describe());
    expect_terminated(&a, 137, 9)?;
    expect_helper_event(agent, &alloc, helper, std::process::id())?;
    ensure!(
        count_events(&a, "Started") >= 1,
        "no Started event:\n{}",
        a.describe()
    );
    Ok(())
}

fn helper_killed_plugin_alive(agent: &mut Agent) -> Result<()> {
    let (_job, alloc, pid) = start_sleeper(agent, "kill-helper", "")?;
    let helper = helper_of(agent, pid)?;
    procs::signal(helper, Signal::SIGKILL).context("SIGKILL to the helper")?;
    let a = agent
        .api()
        .wait_alloc_status(&alloc, &["failed", "pending", "complete"], TIMEOUT)?;
    let a = poll_until("a Terminated event", TIMEOUT, POLL, |last| {
        let a = agent.api().alloc(&alloc)?;
        *last = a.describe();
        Ok((count_events(&a, "Terminated") > 0).then_some(a))
    })
    .unwrap_or(a);
    expect_terminated(&a, 137, 9)?;
    expect_helper_event(agent, &alloc, helper, std::process::id())
}

fn host_pid_helper_killed(agent: &mut Agent) -> Result<()> {
    let config = "command = \"/bin/sh\"\n      args = [\"-c\", \"echo $$ > \\\"$NOMAD_ALLOC_DIR/pid\\\"; exec sleep 600\"]\n      pid_mode = \"host\"";
    let (_job, alloc, pid) = start_sleeper(agent, "host-helper", config)?;
    let helper = helper_of(agent, pid)?;
    procs::signal(helper, Signal::SIGKILL).context("SIGKILL to the helper")?;
    std::thread::sleep(Duration::from_secs(2));
    ensure!(
        procs::is_alive(pid),
        "without a pid namespace the task must outlive its helper"
    );
    procs::signal(pid, Signal::SIGKILL).context("SIGKILL to the task")?;
    let a = poll_until("a Terminated event", TIMEOUT, POLL, |last| {
        let a = agent.api().alloc(&alloc)?;
        *last = a.describe();
        Ok((count_events(&a, "Terminated") > 0).then_some(a))
    })?;
    expect_terminated(&a, 137, 9)?;
    expect_helper_event(agent, &alloc, helper, std::process::id())
}
