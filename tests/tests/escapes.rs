//! Issue 4 acceptance, escapes and leaks: processes of a task that leave its cgroup while it runs,
//! or that outlive it, are reported as one task event each (escape) or per task end (leak) and
//! killed. Raw-mode tasks (`isolation = "none"`, host pid namespace, root) start a background
//! child that calls `setsid` (leaving the task's process group) and moves itself into a cgroup
//! THIS TEST created (`bpfexec-e2e-escape-*` in the freezer hierarchy, or the cgroup2 root on a
//! v2 host), then sleeps.
//!
//! * `cgroup_escape` (agent with `escape_check_interval = "1s"`): the escape event names the pid,
//!   `sleep` and the test's cgroup; the escapee is dead, the task itself still runs, and its stop
//!   reports no leak.
//! * `leaks` (agent with `escape_check_interval = "0"`, so only the end-of-task sweep sees the
//!   escapee): a stop reports `1 process outlived the task and was killed: <pid> (sleep)`; a task
//!   that exits on its own with the escapee and a `setsid` child still in the task's cgroup
//!   reports both.
//!
//! The test's cgroup is removed (after it is empty) in every case; only processes of the test's
//! own jobs are ever in it.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use bpfexec_e2e::isolation::shell_config;
use bpfexec_e2e::observe::escape::{TestCgroup, await_sleep};
use bpfexec_e2e::observe::{
    events_with_reason, expect_details, expect_message, wait_ended, wait_notice,
};
use bpfexec_e2e::suite::{self, TIMEOUT, alloc_file, task_alive, wait_file, wait_task_pid};
use bpfexec_e2e::wait::{POLL, poll_until};
use bpfexec_e2e::{Agent, AgentOptions, Check, procs, run_checks};

#[test]
fn cgroup_escape() {
    if !suite::is_bpfexec() {
        println!("SKIP: cgroup_escape: bpfexec-only checks (BPFEXEC_E2E_DRIVER=raw_exec)");
        return;
    }
    run_checks(
        "cgroup_escape",
        AgentOptions::bpfexec()
            .plugin_config("allow_unisolated = true\n    escape_check_interval = \"1s\""),
        &[Check {
            name: "escape_while_running",
            run: escape_while_running,
        }],
    );
}

#[test]
fn leaks() {
    if !suite::is_bpfexec() {
        println!("SKIP: leaks: bpfexec-only checks (BPFEXEC_E2E_DRIVER=raw_exec)");
        return;
    }
    run_checks(
        "leaks",
        AgentOptions::bpfexec()
            .plugin_config("allow_unisolated = true\n    escape_check_interval = \"0\""),
        &[
            Check {
                name: "leak_at_stop",
                run: leak_at_stop,
            },
            Check {
                name: "leak_at_exit",
                run: leak_at_exit,
            },
        ],
    );
}

fn expect_dead(pid: i32, alloc: &str) -> Result<()> {
    poll_until(
        &format!("pid {pid} of alloc {alloc} to be dead"),
        Duration::from_secs(10),
        POLL,
        |last| {
            *last = procs::describe(&[pid]);
            Ok((!task_alive(pid, alloc)).then_some(()))
        },
    )
}

/// Starts a raw-mode service job running `script` (which writes the main pid to `pid` and the
/// escapee's to `escapee` in the alloc dir); returns (job id, alloc id, main pid, escapee pid).
fn start_escaper(agent: &Agent, prefix: &str, script: &str) -> Result<(String, String, i32, i32)> {
    let job = suite::service(prefix).raw_config(&shell_config(script, &["isolation = \"none\""]));
    let api = agent.api();
    let job_id = api.register_job(&job.to_hcl())?;
    let alloc = api.wait_job_alloc(&job_id, TIMEOUT)?;
    api.wait_alloc_status(&alloc, &["running"], TIMEOUT)?;
    let main = wait_task_pid(agent, &alloc, "pid")?;
    let escapee: i32 = wait_file(&alloc_file(agent, &alloc, "escapee"), TIMEOUT)?
        .parse()
        .context("the escapee's pid")?;
    Ok((job_id, alloc, main, escapee))
}

pub(crate) fn escape_while_running(agent: &mut Agent) -> Result<()> {
    let cg = TestCgroup::create()?;
    let script = format!(
        "echo $$ > \"$NOMAD_ALLOC_DIR/pid\"\n{}{}while :; do sleep 0.2; done\n",
        cg.escapee("escapee"),
        await_sleep("escapee")
    );
    let (job_id, alloc, main, escapee) = start_escaper(agent, "escape", &script)?;
    let api = agent.api();
    println!(
        "main pid {main}, escapee pid {escapee}, test cgroup {}",
        cg.path
    );
    let ev = wait_notice(api, &alloc, "cgroup-escape")?;
    println!("escape event: {ev}");
    expect_details(
        &ev,
        &[
            ("pid", &escapee.to_string()),
            ("comm", "sleep"),
            ("cgroup", &cg.path),
            ("action", "killed"),
        ],
    )?;
    ensure!(
        ev.display_message.starts_with(&format!(
            "Process pid {escapee} (sleep) left the task's cgroup "
        )) && ev.display_message.contains(&cg.path),
        "unexpected escape message: {ev}"
    );
    expect_dead(escapee, &alloc)?;
    ensure!(
        task_alive(main, &alloc),
        "the task's main process {main} should still run after its child escaped"
    );
    ensure!(
        events_with_reason(&api.alloc(&alloc)?, "cgroup-escape").len() == 1,
        "one escapee must give one event: {}",
        api.alloc(&alloc)?.describe()
    );
    api.stop_job(&job_id, false)?;
    let (a, _, _) = wait_ended(api, &alloc, &["complete"])?;
    ensure!(
        events_with_reason(&a, "leak").is_empty(),
        "the escapee was killed already; the stop must report no leak: {}",
        a.describe()
    );
    Ok(())
}

pub(crate) fn leak_at_stop(agent: &mut Agent) -> Result<()> {
    let cg = TestCgroup::create()?;
    let script = format!(
        "{}{}echo $$ > \"$NOMAD_ALLOC_DIR/pid\"\nwhile :; do sleep 0.2; done\n",
        cg.escapee("escapee"),
        await_sleep("escapee")
    );
    let (job_id, alloc, _, escapee) = start_escaper(agent, "leak-stop", &script)?;
    let api = agent.api();
    ensure!(
        cg.members().contains(&escapee),
        "the escapee {escapee} is not in the test cgroup: {:?}",
        cg.members()
    );
    api.stop_job(&job_id, false)?;
    wait_ended(api, &alloc, &["complete"])?;
    let ev = wait_notice(api, &alloc, "leak")?;
    println!("leak event: {ev}");
    expect_message(
        &ev,
        &format!("1 process outlived the task and was killed: {escapee} (sleep)"),
    )?;
    expect_details(
        &ev,
        &[
            ("count", "1"),
            ("pids", &escapee.to_string()),
            ("comms", "sleep"),
        ],
    )?;
    expect_dead(escapee, &alloc)
}

fn leak_at_exit(agent: &mut Agent) -> Result<()> {
    let cg = TestCgroup::create()?;
    let script = format!(
        "{}setsid /bin/sh -c 'echo $$ > \"$NOMAD_ALLOC_DIR/stayer\"; exec sleep 1000' &\n{}{}exit 0\n",
        cg.escapee("escapee"),
        await_sleep("escapee"),
        await_sleep("stayer")
    );
    let job =
        suite::batch("leak-exit").raw_config(&shell_config(&script, &["isolation = \"none\""]));
    let api = agent.api();
    let job_id = api.register_job(&job.to_hcl())?;
    let alloc = api.wait_job_alloc(&job_id, TIMEOUT)?;
    wait_ended(api, &alloc, &["complete"])?;
    let escapee: i32 = wait_file(&alloc_file(agent, &alloc, "escapee"), TIMEOUT)?.parse()?;
    let stayer: i32 = wait_file(&alloc_file(agent, &alloc, "stayer"), TIMEOUT)?.parse()?;
    let ev = wait_notice(api, &alloc, "leak")?;
    println!("leak event: {ev}");
    let mut pids = [escapee, stayer];
    pids.sort_unstable();
    expect_message(
        &ev,
        &format!(
            "2 processes outlived the task and were killed: {} (sleep), {} (sleep)",
            pids[0], pids[1]
        ),
    )?;
    expect_details(
        &ev,
        &[
            ("count", "2"),
            ("pids", &format!("{},{}", pids[0], pids[1])),
            ("comms", "sleep,sleep"),
        ],
    )?;
    expect_dead(escapee, &alloc)?;
    expect_dead(stayer, &alloc)
}
