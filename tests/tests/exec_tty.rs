//! Issue 3 acceptance, `nomad alloc exec` through the real Nomad CLI (ExecTaskStreaming): without
//! a terminal it runs `id` as the task user and passes stdin, output and the exit code; with a
//! terminal (a pseudo-terminal driven by the test) an interactive shell sees the task's root,
//! user, capabilities and pid namespace, follows window resizes and exits with the right code.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bpfexec_e2e::isolation::exec::nomad_exec;
use bpfexec_e2e::isolation::pty::PtySession;
use bpfexec_e2e::isolation::{DEFAULT_CAPS, cap_eff, cap_mask};
use bpfexec_e2e::jobspec::TASK;
use bpfexec_e2e::suite::{self, TIMEOUT, alloc_file, stop_and_wait, wait_file};
use bpfexec_e2e::{Agent, AgentOptions, Check, env, procs, run_checks};

#[test]
fn exec_tty() {
    if !suite::is_bpfexec() {
        println!("SKIP: exec_tty: bpfexec-only checks (BPFEXEC_E2E_DRIVER=raw_exec)");
        return;
    }
    run_checks(
        "exec_tty",
        AgentOptions::bpfexec(),
        &[
            Check {
                name: "exec_no_tty",
                run: exec_no_tty,
            },
            Check {
                name: "exec_tty_shell",
                run: exec_tty_shell,
            },
        ],
    );
}

/// Starts a long-running task that records its pid namespace; returns (job, alloc, ns).
fn start_task(agent: &Agent, prefix: &str) -> Result<(String, String, String)> {
    let job = suite::service(prefix)
        .shell(
            "readlink /proc/self/ns/pid > /alloc/ns\n\
             while :; do sleep 1; done",
        )
        .kill_signal("SIGKILL");
    let api = agent.api();
    let job_id = api.register_job(&job.to_hcl())?;
    let alloc = api.wait_job_alloc(&job_id, TIMEOUT)?;
    api.wait_alloc_status(&alloc, &["running"], TIMEOUT)?;
    let ns = wait_file(&alloc_file(agent, &alloc, "ns"), TIMEOUT)?;
    Ok((job_id, alloc, ns))
}

pub(crate) fn exec_no_tty(agent: &mut Agent) -> Result<()> {
    let (job_id, alloc, task_ns) = start_task(agent, "exec")?;

    let out = nomad_exec(agent, &alloc, &["id"], None)?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && text.contains("uid=65534(nobody)"),
        "`nomad alloc exec id` did not run as nobody: {} {text:?}",
        out.status
    );

    let script = "grep CapEff /proc/self/status; readlink /proc/self/ns/pid; ls /; \
                  test -t 0 || echo no-tty";
    let out = nomad_exec(agent, &alloc, &["/bin/sh", "-c", script], None)?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let eff = cap_eff(&text).with_context(|| format!("no CapEff in {text:?}"))?;
    ensure!(
        eff == cap_mask(&DEFAULT_CAPS),
        "exec'd command has CapEff {eff:016x}, the task's set is {:016x}",
        cap_mask(&DEFAULT_CAPS)
    );
    ensure!(
        text.lines().any(|l| l == task_ns),
        "exec'd command is not in the task's pid namespace {task_ns}: {text:?}"
    );
    let entries: Vec<&str> = text.split_whitespace().collect();
    ensure!(
        ["alloc", "local", "secrets"]
            .iter()
            .all(|d| entries.contains(d))
            && !entries.contains(&"root"),
        "exec'd command does not see the task's root: {text:?}"
    );
    ensure!(
        text.contains("no-tty"),
        "stdin is a terminal without -t: {text:?}"
    );

    let out = nomad_exec(agent, &alloc, &["/bin/cat"], Some("hello-through-stdin\n"))?;
    ensure!(
        String::from_utf8_lossy(&out.stdout).contains("hello-through-stdin"),
        "stdin did not reach the exec'd command"
    );

    let out = nomad_exec(
        agent,
        &alloc,
        &["/bin/sh", "-c", "echo err >&2; exit 7"],
        None,
    )?;
    ensure!(
        out.status.code() == Some(7),
        "exit 7 in the exec'd command gave the CLI {}",
        out.status
    );
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("err"),
        "stderr of the exec'd command was lost"
    );
    stop_and_wait(agent, &job_id, &alloc)?;
    Ok(())
}

pub(crate) fn exec_tty_shell(agent: &mut Agent) -> Result<()> {
    let (job_id, alloc, _ns) = start_task(agent, "exec-tty")?;
    let nomad = env::nomad_bin()?;
    let mut term = PtySession::spawn(
        &nomad,
        &[
            "alloc", "exec", "-i", "-t", "-task", TASK, &alloc, "/bin/sh",
        ],
        &[("NOMAD_ADDR", agent.addr()), ("TERM", "xterm")],
        33,
        111,
    )?;
    let t0 = std::time::Instant::now();
    let result = drive_shell(agent, &mut term);
    println!(
        "--- terminal transcript ({:.1?}) ---\n{}\n---",
        t0.elapsed(),
        term.output()
    );
    result?;
    stop_and_wait(agent, &job_id, &alloc)?;
    Ok(())
}

/// Types into the interactive shell; `$((…))` arithmetic makes each marker appear only in the
/// shell's output, not in the echo of what was typed.
fn drive_shell(agent: &Agent, term: &mut PtySession) -> Result<()> {
    let t = Duration::from_secs(20);
    let mark = term.mark();
    term.send("ls /; id; test -t 0 && echo TTY-$((40+2)); stty size; echo DONE-$((1+1))\n")?;
    let out = term.expect_from(mark, "DONE-2", t)?;
    ensure!(
        ["alloc", "local", "secrets"]
            .iter()
            .all(|d| out.contains(d)),
        "`ls /` in the interactive shell does not show the task root: {out:?}"
    );
    ensure!(
        out.contains("uid=65534(nobody)"),
        "interactive shell is not nobody: {out:?}"
    );
    ensure!(
        out.contains("TTY-42"),
        "stdin of the interactive shell is not a terminal: {out:?}"
    );
    ensure!(
        out.contains("33 111"),
        "the task's terminal is not 33x111 like the client's: {out:?}"
    );

    term.resize(40, 120)?;
    std::thread::sleep(Duration::from_millis(500));
    let mark = term.mark();
    term.send("stty size; echo SIZE-$((2+2))\n")?;
    let out = term.expect_from(mark, "SIZE-4", t)?;
    ensure!(
        out.contains("40 120"),
        "after resizing the client terminal to 40x120 the task's is not: {out:?}"
    );

    term.send("exit 5\n")?;
    let sent = Instant::now();
    let quick = term.try_wait_exit(EXIT_PROMPTLY)?;
    // If the CLI lingers, record which terminals the driver plugin still holds open (a kept
    // copy of the pty slave stops the plugin seeing the end of the output).
    let held = if quick.is_none() {
        plugin_ptys(agent)
    } else {
        Vec::new()
    };
    let status = match quick {
        Some(s) => s,
        None => term.wait_exit(t)?,
    };
    let took = sent.elapsed();
    println!("the nomad CLI exited {took:.1?} after `exit 5`");
    ensure!(
        status.code() == Some(5),
        "`exit 5` in the interactive shell gave the nomad CLI {status}"
    );
    ensure!(
        quick.is_some(),
        "the nomad CLI exited only {took:.1?} after the shell's `exit 5` (expected < \
         {EXIT_PROMPTLY:?}); {EXIT_PROMPTLY:?} after it the driver plugin still held these \
         terminals open: {held:?}"
    );
    Ok(())
}

/// How soon the CLI must exit after the interactive shell did.
const EXIT_PROMPTLY: Duration = Duration::from_secs(2);

/// `/dev/pts/*` files the driver plugin processes hold open.
fn plugin_ptys(agent: &Agent) -> Vec<String> {
    agent
        .plugin_pids()
        .into_iter()
        .flat_map(|p| {
            procs::open_files(p)
                .into_iter()
                .map(move |f| format!("pid {p}: {}", f.display()))
        })
        .filter(|s| s.contains("/dev/pts/"))
        .collect()
}
