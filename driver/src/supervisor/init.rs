//! Private pid namespace: the supervisor unshares a pid namespace and forks its init (pid 1
//! there, host mount namespace). Init starts the task (pid 2), tells the supervisor, reaps every
//! orphan, writes the task's exit record when it ends and exits, which makes the kernel SIGKILL
//! anything left in the namespace. The supervisor reports the task's host pid to the plugin and
//! exits, leaving init as the task's only helper process.

use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::sched::{CloneFlags, unshare};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Pid, fork};

use super::spec::LaunchSpec;
use super::{child, detach_stdout, finish, log, report_failure, report_started, serve};

pub fn launch(
    dir: &Path,
    spec: &LaunchSpec,
    streams: Option<super::journalrelay::Streams>,
) -> io::Result<()> {
    unshare(CloneFlags::CLONE_NEWPID)
        .map_err(|e| io::Error::other(format!("unsharing the pid namespace: {e}")))?;
    let (rx, tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    // The supervisor closes `ack_tx` once it has read the task's host pid: until then init must
    // not reap the task, or a task that exits at once would vanish before it is reported.
    let (ack_rx, ack_tx) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    // SAFETY: the supervisor is single-threaded, so the child may run arbitrary code.
    match unsafe { fork() }.map_err(io::Error::from)? {
        ForkResult::Child => {
            drop(rx);
            drop(ack_tx);
            let code = match init(dir, spec, tx, ack_rx, streams) {
                Ok(()) => 0,
                Err(e) => {
                    log(&format!("init failed: {e}"));
                    1
                }
            };
            std::process::exit(code);
        }
        ForkResult::Parent { child: init_pid } => {
            drop(streams);
            drop(tx);
            drop(ack_rx);
            let result = relay(dir, spec, rx, init_pid.as_raw() as u32);
            drop(ack_tx);
            result
        }
    }
}

/// Supervisor side: wait for init's word and pass it on to the plugin.
fn relay(dir: &Path, spec: &LaunchSpec, rx: OwnedFd, init_pid: u32) -> io::Result<()> {
    let mut line = String::new();
    BufReader::new(std::fs::File::from(rx)).read_line(&mut line)?;
    let line = line.trim_end();
    if let Some(error) = line.strip_prefix("error:") {
        let _ = waitpid(Pid::from_raw(init_pid as i32), None);
        return report_failure(dir, spec, &io::Error::other(error.to_owned()));
    }
    if !line.starts_with("started") {
        let _ = waitpid(Pid::from_raw(init_pid as i32), None);
        return report_failure(
            dir,
            spec,
            &io::Error::other("the namespace init died before starting the task"),
        );
    }
    let children = std::fs::read_to_string(format!("/proc/{init_pid}/task/{init_pid}/children"))?;
    let pid: u32 = children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| io::Error::other("the task exited before it could be reported"))?;
    report_started(dir, pid, init_pid)?;
    log(&format!(
        "task {} started as pid {pid} under init {init_pid}",
        spec.task_id
    ));
    Ok(())
}

/// Init side (pid 1 of the task's namespace).
fn init(
    dir: &Path,
    spec: &LaunchSpec,
    tx: OwnedFd,
    ack: OwnedFd,
    streams: Option<super::journalrelay::Streams>,
) -> io::Result<()> {
    detach_stdout()?;
    let host = serve::host_files(spec, dir)?;
    let sigfd = serve::sigchld_fd()?;
    let mut tx = std::fs::File::from(tx);
    let spawned = child::spawn(spec, streams.as_ref());
    // The task holds its copies; the relay ends when the task's are closed.
    drop(streams);
    let spawned = match spawned {
        Ok(c) => c,
        Err(e) => {
            let msg = e.to_string().replace('\n', " ");
            let _ = writeln!(tx, "error:{msg}");
            return Ok(());
        }
    };
    let main = Pid::from_raw(spawned.pid as i32);
    writeln!(tx, "started")?;
    drop(tx);
    // Wait (EOF) until the supervisor has seen the task.
    let _ = std::io::Read::read(&mut std::fs::File::from(ack), &mut [0u8; 1]);
    super::trim::drop_text_pages();
    let listener = serve::listener(spawned.listener, host, spec);
    let status = serve::wait_main(main, true, &sigfd, listener)?;
    finish(dir, &serve::exit_record(status))
}
