//! Acceptance (d)-(e): `nomad job stop` on a task that ignores its `kill_signal` ends after
//! `kill_timeout` with no process left behind, and `nomad alloc signal` reaches the task.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use bpfexec_e2e::jobspec::TASK;
use bpfexec_e2e::suite::{self, TIMEOUT, alloc_file, stop_and_wait, wait_file, wait_task_pid};
use bpfexec_e2e::wait::{POLL, poll_until, wait_for};
use bpfexec_e2e::{Agent, Check, procs, run_checks};

#[test]
fn lifecycle() {
    run_checks(
        "lifecycle",
        suite::options(),
        &[
            Check {
                name: "stop_after_kill_timeout",
                run: stop_after_kill_timeout,
            },
            Check {
                name: "signal_usr1",
                run: signal_usr1,
            },
            Check {
                name: "signal_reaches_process_group",
                run: signal_reaches_process_group,
            },
        ],
    );
}

/// A marker for `sleep`'s argv that is still a valid duration: `1000.<9 unique digits>`.
fn sleep_marker() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "1000.{:04}{:05}",
        std::process::id() % 10_000,
        nanos % 100_000
    )
}

fn stop_after_kill_timeout(agent: &mut Agent) -> Result<()> {
    let marker = sleep_marker();
    // The main shell survives SIGTERM but records it (proof the kill_signal was delivered); the
    // marked child ignores SIGTERM outright (`trap ''` survives exec). Only the driver's SIGKILL
    // of every task process after kill_timeout can end them.
    let script = format!(
        "trap 'echo term >> \"$NOMAD_ALLOC_DIR/term\"' TERM\n\
         echo $$ > \"$NOMAD_ALLOC_DIR/pid\"\n\
         (trap '' TERM; exec sleep {marker}) &\n\
         while :; do sleep 1; done"
    );
    let job = suite::service("stop-term")
        .shell(&script)
        .kill_signal("SIGTERM")
        .kill_timeout("3s");
    let api = agent.api();
    let job_id = api.register_job(&job.to_hcl())?;
    let alloc = api.wait_job_alloc(&job_id, TIMEOUT)?;
    api.wait_alloc_status(&alloc, &["running"], TIMEOUT)?;
    let pid = wait_task_pid(agent, &alloc, "pid")?;
    poll_until("the marked sleep to start", TIMEOUT, POLL, |_| {
        Ok((procs::find_by_cmdline(&marker).len() >= 2).then_some(()))
    })?;
    let before = procs::find_by_cmdline(&marker);
    println!(
        "task pid {pid}; marked processes before stop:\n{}",
        procs::describe(&before)
    );

    let t = Instant::now();
    api.stop_job(&job_id, false)?;
    let done = api.wait_alloc_status(&alloc, &["complete", "failed"], TIMEOUT)?;
    let took = t.elapsed();
    println!("stop took {took:.1?}; alloc {}", done.describe());
    ensure!(
        took >= Duration::from_millis(2500),
        "the task ignored SIGTERM but stopped after only {took:?} (< kill_timeout 3s): was SIGTERM sent?"
    );
    ensure!(
        took <= Duration::from_secs(15),
        "stop took {took:?}, far more than kill_timeout 3s"
    );
    let term = std::fs::read_to_string(alloc_file(agent, &alloc, "term")).unwrap_or_default();
    ensure!(
        term.contains("term"),
        "the task's main process never received SIGTERM (its kill_signal)"
    );
    let gone = wait_for(Duration::from_secs(5), POLL, || {
        procs::find_by_cmdline(&marker).is_empty()
            && procs::find_by_environ(&format!("NOMAD_ALLOC_ID={alloc}")).is_empty()
    });
    let left: Vec<i32> = procs::find_by_cmdline(&marker)
        .into_iter()
        .chain(procs::find_by_environ(&format!("NOMAD_ALLOC_ID={alloc}")))
        .collect();
    ensure!(
        gone,
        "processes of the stopped task remain:\n{}",
        procs::describe(&left)
    );
    Ok(())
}

fn signal_usr1(agent: &mut Agent) -> Result<()> {
    let script = "trap 'echo usr1 > \"$NOMAD_ALLOC_DIR/usr1\"' USR1\n\
                  echo ready > \"$NOMAD_ALLOC_DIR/ready\"\n\
                  while :; do sleep 0.2; done";
    let job = suite::service("usr1").shell(script);
    let api = agent.api();
    let job_id = api.register_job(&job.to_hcl())?;
    let alloc = api.wait_job_alloc(&job_id, TIMEOUT)?;
    api.wait_alloc_status(&alloc, &["running"], TIMEOUT)?;
    wait_file(&alloc_file(agent, &alloc, "ready"), TIMEOUT)?;
    api.signal_alloc(&alloc, TASK, "SIGUSR1")?;
    let got = wait_file(&alloc_file(agent, &alloc, "usr1"), Duration::from_secs(15))
        .map_err(|e| anyhow::anyhow!("{e:#}{}", api.diagnostics(Some(&alloc))))?;
    ensure!(got == "usr1", "usr1 file holds {got:?}");
    let a = api.alloc(&alloc)?;
    ensure!(
        a.client_status == "running",
        "the task did not survive SIGUSR1: {}",
        a.describe()
    );
    stop_and_wait(agent, &job_id, &alloc)?;
    Ok(())
}

/// `nomad alloc signal` reaches the task's process group (issue 3; exec reaches only the main
/// process): the main shell handles it and a child that does not handle it dies of it.
fn signal_reaches_process_group(agent: &mut Agent) -> Result<()> {
    let marker = sleep_marker();
    let script = format!(
        "trap 'echo usr1 > \"$NOMAD_ALLOC_DIR/usr1\"' USR1\n\
         sleep {marker} &\n\
         echo ready > \"$NOMAD_ALLOC_DIR/ready\"\n\
         while :; do sleep 0.2; done"
    );
    let job = suite::service("usr1-main").shell(&script);
    let api = agent.api();
    let job_id = api.register_job(&job.to_hcl())?;
    let alloc = api.wait_job_alloc(&job_id, TIMEOUT)?;
    api.wait_alloc_status(&alloc, &["running"], TIMEOUT)?;
    wait_file(&alloc_file(agent, &alloc, "ready"), TIMEOUT)?;
    let child = poll_until("the marked child", TIMEOUT, POLL, |_| {
        Ok(procs::find_by_cmdline(&marker)
            .into_iter()
            .find(|p| procs::cmdline(*p).is_some_and(|a| a.first().is_some_and(|c| c == "sleep"))))
    })?;
    api.signal_alloc(&alloc, TASK, "SIGUSR1")?;
    wait_file(&alloc_file(agent, &alloc, "usr1"), Duration::from_secs(15))?;
    poll_until("the child to die of SIGUSR1", Duration::from_secs(10), POLL, |_| {
        Ok((!procs::is_alive(child)).then_some(()))
    })
    .map_err(|e| anyhow::anyhow!("SIGUSR1 did not reach the task's child `sleep {marker}` (pid {child}) in its process group: {e}"))?;
    stop_and_wait(agent, &job_id, &alloc)?;
    Ok(())
}
