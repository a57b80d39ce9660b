//! Acceptance (f)-(g): tasks survive an agent restart and a plugin SIGKILL, are recovered (same
//! pid, not restarted), and their own exit code is reported exactly — including a task that
//! exits while the agent (and so the plugin) is down, and one whose StartTask the plugin died in
//! (Nomad retries it with the same task id: the task runs once).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bpfexec_e2e::procs;
use bpfexec_e2e::suite::{
    self, TIMEOUT, alloc_file, count_events, expect_terminated, task_alive, wait_task_pid,
};
use bpfexec_e2e::wait::{POLL, poll_until, wait_for};
use bpfexec_e2e::{Agent, Check, run_checks};
use nix::sys::signal::Signal;

#[test]
fn recovery() {
    run_checks(
        "recovery",
        suite::options(),
        &[
            Check {
                name: "agent_restart",
                run: agent_restart,
            },
            Check {
                name: "plugin_sigkill",
                run: plugin_sigkill,
            },
            Check {
                name: "exit_while_agent_down",
                run: exit_while_agent_down,
            },
            Check {
                name: "plugin_killed_during_start",
                run: plugin_killed_during_start,
            },
            Check {
                name: "agent_stopped_during_start",
                run: agent_stopped_during_start,
            },
        ],
    );
}

/// A task that records its pid, waits for `$NOMAD_ALLOC_DIR/go`, then exits with `code`.
fn wait_then_exit(code: i32) -> String {
    format!(
        "echo $$ > \"$NOMAD_ALLOC_DIR/pid\"\n\
         while [ ! -e \"$NOMAD_ALLOC_DIR/go\" ]; do sleep 0.2; done\n\
         exit {code}"
    )
}

fn gone(pid: i32) -> bool {
    wait_for(Duration::from_secs(10), POLL, || !procs::is_alive(pid))
}

fn agent_restart(agent: &mut Agent) -> Result<()> {
    // SIGTERM ends the shell at once (a non-interactive sh waiting on a foreground child may
    // sit out SIGINT, the default kill_signal, until kill_timeout).
    let job = suite::service("restart")
        .shell("echo $$ > \"$NOMAD_ALLOC_DIR/pid\"\nwhile :; do sleep 0.5; done")
        .kill_signal("SIGTERM");
    let job_id = agent.api().register_job(&job.to_hcl())?;
    let alloc = agent.api().wait_job_alloc(&job_id, TIMEOUT)?;
    agent
        .api()
        .wait_alloc_status(&alloc, &["running"], TIMEOUT)?;
    let pid = wait_task_pid(agent, &alloc, "pid")?;

    let t = Instant::now();
    agent.stop()?;
    println!("graceful agent stop took {:.1?}", t.elapsed());
    std::thread::sleep(Duration::from_secs(1));
    ensure!(
        task_alive(pid, &alloc),
        "task pid {pid} died with the agent (graceful stop must leave tasks running)"
    );
    let t = Instant::now();
    agent.restart()?;
    println!("agent restart to ready took {:.1?}", t.elapsed());
    // Give the restored task runner time to recover (or wrongly restart) the task.
    std::thread::sleep(Duration::from_secs(3));
    let a = agent
        .api()
        .wait_alloc_status(&alloc, &["running"], TIMEOUT)?;
    ensure!(
        task_alive(pid, &alloc),
        "task pid {pid} is gone after the agent restart:\n{}",
        a.describe()
    );
    let now = wait_task_pid(agent, &alloc, "pid")?;
    ensure!(
        now == pid,
        "the task was started again (host pid now {now}, was {pid}):\n{}",
        a.describe()
    );
    ensure!(
        count_events(&a, "Started") == 1,
        "expected one Started event (recovered, not restarted):\n{}",
        a.describe()
    );

    let t = Instant::now();
    agent.api().stop_job(&job_id, false)?;
    let a = agent
        .api()
        .wait_alloc_status(&alloc, &["complete"], TIMEOUT)?;
    println!("job stop after recovery took {:.1?}", t.elapsed());
    ensure!(
        gone(pid),
        "task pid {pid} still alive after job stop:\n{}",
        a.describe()
    );
    Ok(())
}

fn plugin_sigkill(agent: &mut Agent) -> Result<()> {
    if !suite::is_bpfexec() {
        println!("(raw_exec run: no external plugin process to kill; skipped)");
        return Ok(());
    }
    let job = suite::batch("plugin-kill").shell(&wait_then_exit(7));
    let job_id = agent.api().register_job(&job.to_hcl())?;
    let alloc = agent.api().wait_job_alloc(&job_id, TIMEOUT)?;
    agent
        .api()
        .wait_alloc_status(&alloc, &["running"], TIMEOUT)?;
    let pid = wait_task_pid(agent, &alloc, "pid")?;

    let plugins = agent.plugin_pids();
    ensure!(
        plugins.len() == 1,
        "expected one plugin process under the agent, found {plugins:?}"
    );
    let old = plugins[0];
    println!("killing plugin pid {old}: {}", procs::describe(&[old]));
    procs::signal(old, Signal::SIGKILL).context("SIGKILL to the plugin")?;
    let new = poll_until("Nomad to relaunch the plugin", TIMEOUT, POLL, |last| {
        let now = agent.plugin_pids();
        *last = format!("plugin pids {now:?}");
        Ok(now.into_iter().find(|p| *p != old))
    })
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", agent.log_tail(60)))?;
    println!("plugin relaunched as pid {new}");
    ensure!(
        task_alive(pid, &alloc),
        "task pid {pid} died with the plugin"
    );
    // Let the relaunched plugin recover the task before it exits.
    std::thread::sleep(Duration::from_secs(3));
    ensure!(
        task_alive(pid, &alloc),
        "task pid {pid} died after the plugin was relaunched"
    );

    std::fs::write(alloc_file(agent, &alloc, "go"), b"")?;
    let a = agent
        .api()
        .wait_alloc_status(&alloc, &["failed"], TIMEOUT)?;
    expect_terminated(&a, 7, 0)?;
    ensure!(
        count_events(&a, "Started") == 1,
        "the task was restarted:\n{}",
        a.describe()
    );
    Ok(())
}

fn exit_while_agent_down(agent: &mut Agent) -> Result<()> {
    let job = suite::batch("exit-down").shell(&wait_then_exit(5));
    let job_id = agent.api().register_job(&job.to_hcl())?;
    let alloc = agent.api().wait_job_alloc(&job_id, TIMEOUT)?;
    agent
        .api()
        .wait_alloc_status(&alloc, &["running"], TIMEOUT)?;
    let pid = wait_task_pid(agent, &alloc, "pid")?;

    agent.stop()?;
    ensure!(
        task_alive(pid, &alloc),
        "task pid {pid} died with the agent"
    );
    std::fs::write(alloc_file(agent, &alloc, "go"), b"")?;
    ensure!(
        gone(pid),
        "task pid {pid} did not exit after its go file appeared"
    );
    agent.restart()?;
    let a = agent
        .api()
        .wait_alloc_status(&alloc, &["failed"], TIMEOUT)?;
    expect_terminated(&a, 5, 0)?;
    Ok(())
}

/// Supervisors (`__supervise <state_dir>/tasks/...`) of this agent's driver.
fn supervisors(agent: &Agent) -> Vec<i32> {
    let tasks = agent.layout().state_dir.join("tasks");
    procs::find(|p| {
        procs::cmdline(p).is_some_and(|argv| {
            argv.get(1).is_some_and(|a| a == "__supervise")
                && argv
                    .get(2)
                    .is_some_and(|d| std::path::Path::new(d).starts_with(&tasks))
        })
    })
}

/// Registers a batch job whose command notes each run in `$NOMAD_ALLOC_DIR/runs`, waits for
/// `go` and exits 6; returns its id as soon as its supervisor exists (StartTask in flight).
fn register_caught_starting(agent: &Agent, prefix: &str) -> Result<String> {
    let before = supervisors(agent);
    let job = suite::batch(prefix).shell(
        "echo run >> \"$NOMAD_ALLOC_DIR/runs\"\n\
         while [ ! -e \"$NOMAD_ALLOC_DIR/go\" ]; do sleep 0.2; done\n\
         exit 6",
    );
    let job_id = agent.api().register_job(&job.to_hcl())?;
    poll_until(
        "the task's supervisor to appear",
        TIMEOUT,
        Duration::from_millis(1),
        |_| {
            Ok(supervisors(agent)
                .iter()
                .any(|p| !before.contains(p))
                .then_some(()))
        },
    )?;
    Ok(job_id)
}

/// Lets the job of [`register_caught_starting`] end: its command ran once, Nomad saw one start
/// and exit code 6. Stops the job; returns the allocation.
fn ran_once(agent: &Agent, job_id: &str) -> Result<String> {
    let alloc = agent.api().wait_job_alloc(job_id, TIMEOUT)?;
    agent
        .api()
        .wait_alloc_status(&alloc, &["running"], TIMEOUT)?;
    std::fs::write(alloc_file(agent, &alloc, "go"), b"")?;
    let a = agent
        .api()
        .wait_alloc_status(&alloc, &["failed"], TIMEOUT)?;
    expect_terminated(&a, 6, 0)?;
    let runs = std::fs::read_to_string(alloc_file(agent, &alloc, "runs"))?;
    ensure!(
        runs.lines().count() == 1 && count_events(&a, "Started") == 1,
        "the command ran {} times:\n{}",
        runs.lines().count(),
        a.describe()
    );
    agent.api().stop_job(job_id, false)?;
    Ok(alloc)
}

/// After GC, nothing of `allocs` is left.
fn nothing_left(agent: &Agent, allocs: &[String]) -> Result<()> {
    agent.api().client_gc()?;
    poll_until("nothing left of the tasks", TIMEOUT, POLL, |last| {
        let left = bpfexec_e2e::leftovers::find(agent, allocs);
        *last = format!("{left:?}");
        Ok(left.is_empty().then_some(()))
    })?;
    Ok(())
}

/// The plugin SIGKILLed the moment a task's supervisor appears, before StartTask has returned.
/// Nomad retries StartTask with the same task id on the relaunched plugin, which must adopt the
/// task its predecessor launched: the command runs once, Nomad sees one start and the true exit
/// code, and nothing of the task is left after GC. The kill can come too late (StartTask already
/// answered): then it is tried again, up to 5 times; at least one try must hit the window.
fn plugin_killed_during_start(agent: &mut Agent) -> Result<()> {
    if !suite::is_bpfexec() {
        println!("(raw_exec run: no external plugin process to kill; skipped)");
        return Ok(());
    }
    let mut allocs = Vec::new();
    for attempt in 1..=5 {
        let plugins = agent.plugin_pids();
        ensure!(plugins.len() == 1, "expected one plugin, found {plugins:?}");
        let job_id = register_caught_starting(agent, "start-kill")?;
        procs::signal(plugins[0], Signal::SIGKILL).context("SIGKILL to the plugin")?;
        poll_until("Nomad to relaunch the plugin", TIMEOUT, POLL, |_| {
            Ok(agent.plugin_pids().into_iter().find(|p| *p != plugins[0]))
        })?;
        let alloc = ran_once(agent, &job_id)?;
        let log = std::fs::read_to_string(agent.log_path())?;
        let retried = log.lines().any(|l| {
            l.contains("failed to start task because plugin shutdown unexpectedly")
                && l.contains(&alloc)
        });
        let adopted = log
            .lines()
            .any(|l| l.contains("adopting it") && l.contains(&alloc));
        println!("attempt {attempt}: StartTask retried by Nomad: {retried}, adopted: {adopted}");
        ensure!(
            retried == adopted,
            "Nomad retried StartTask ({retried}) but the plugin adopted the task: {adopted}"
        );
        allocs.push(alloc);
        if retried {
            return nothing_left(agent, &allocs);
        }
    }
    anyhow::bail!("the plugin kill never landed inside StartTask in 5 tries")
}

/// The agent stopped (SIGINT) the moment a task's supervisor appears, then started again: a
/// graceful stop lets the StartTask in flight finish, so the task is recovered from its handle,
/// runs once and reports its true exit code; nothing is left after GC.
fn agent_stopped_during_start(agent: &mut Agent) -> Result<()> {
    if !suite::is_bpfexec() {
        println!("(raw_exec run: bpfexec-only check; skipped)");
        return Ok(());
    }
    let job_id = register_caught_starting(agent, "start-stop")?;
    agent.restart()?;
    let alloc = ran_once(agent, &job_id)?;
    nothing_left(agent, &[alloc])
}
