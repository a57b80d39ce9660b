//! `nomad alloc exec` without a terminal, through the real Nomad CLI, with a watchdog (the CLI
//! has no timeout of its own).

use std::io::Write as _;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::agent::Agent;
use crate::jobspec::TASK;
use crate::{env, procs};

/// `nomad alloc exec -i=<stdin given> -t=false -task task <alloc> argv…` with `stdin` piped in.
pub fn nomad_exec(
    agent: &Agent,
    alloc: &str,
    argv: &[&str],
    stdin: Option<&str>,
) -> Result<Output> {
    let nomad = env::nomad_bin()?;
    let interactive = format!("-i={}", stdin.is_some());
    let mut cmd = Command::new(&nomad);
    cmd.args([
        "alloc",
        "exec",
        &interactive,
        "-t=false",
        "-task",
        TASK,
        alloc,
    ])
    .args(argv)
    .env("NOMAD_ADDR", agent.addr())
    .stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().context("spawning nomad alloc exec")?;
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().context("no stdin pipe")?;
        pipe.write_all(text.as_bytes())?;
    }
    // `nomad alloc exec` has no timeout of its own; a watchdog kills it if it hangs.
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx
            .recv_timeout(crate::wait::scaled(Duration::from_secs(30)))
            .is_err()
        {
            let _ = procs::signal(
                i32::try_from(pid).unwrap_or(0),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    });
    let out = child.wait_with_output();
    let _ = done_tx.send(());
    let _ = watchdog.join();
    let out = out.context("waiting for nomad alloc exec")?;
    println!(
        "$ nomad alloc exec {interactive} -t=false {} -> {}\nstdout: {}\nstderr: {}",
        argv.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end()
    );
    Ok(out)
}
