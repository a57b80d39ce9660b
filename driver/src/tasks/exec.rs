//! Running commands inside a task (Nomad's ExecTask for script checks, ExecTaskStreaming for
//! `nomad alloc exec`): the plugin starts `nomad-driver-bpfexec __exec`, which enters the task's
//! namespaces, cgroups, root, user and capabilities, and relays its stdio as gRPC frames: through
//! a pseudo-terminal (with resizes) when a TTY is asked for, through pipes otherwise.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Stdio;
use std::time::Duration;

use bpfexec_proto::drivers::{
    self, ExecTaskStreamingIoOperation as IoOp, ExecTaskStreamingResponse as Frame,
};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::Task;
use crate::errors::DriverError;
use crate::supervisor::enter::EXEC_ARG;

fn helper(task: &Task, command: &[String], tty: bool) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("/proc/self/exe");
    cmd.arg0("nomad-driver-bpfexec")
        .arg(EXEC_ARG)
        .arg(&task.state.dir)
        .arg(task.state.pid.to_string())
        .arg(if tty { "1" } else { "0" })
        .arg("--")
        .args(command)
        // The helper takes the task's environment from its spec.
        .env_clear()
        .kill_on_drop(true);
    cmd
}

fn result_of(status: std::process::ExitStatus) -> drivers::ExitResult {
    let rec = crate::supervisor::record::ExitRecord::from_status(status, 0);
    drivers::ExitResult {
        exit_code: rec.exit_code,
        signal: rec.signal,
        oom_killed: false,
    }
}

fn check(task: &Task, command: &[String]) -> Result<(), DriverError> {
    if command.is_empty() {
        return Err(DriverError::Unsupported("exec needs a command".into()));
    }
    if !task.is_running() {
        return Err(DriverError::Exited(task.state.task_id.clone()));
    }
    Ok(())
}

/// ExecTask: run to completion (or `timeout`), collecting output.
pub async fn run_once(
    task: &Task,
    command: &[String],
    timeout: Duration,
) -> Result<drivers::ExecTaskResponse, DriverError> {
    check(task, command)?;
    let mut cmd = helper(task, command, false);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .map_err(|e| DriverError::io("starting the exec helper", e))?;
    let output = child.wait_with_output();
    let output = if timeout.is_zero() {
        output.await
    } else {
        tokio::time::timeout(timeout, output).await.map_err(|_| {
            DriverError::Unsupported(format!("exec did not finish within {}s", timeout.as_secs()))
        })?
    }
    .map_err(|e| DriverError::io("waiting for the exec helper", e))?;
    Ok(drivers::ExecTaskResponse {
        stdout: output.stdout,
        stderr: output.stderr,
        result: Some(result_of(output.status)),
    })
}

fn out(stdout: bool, data: Vec<u8>, close: bool) -> Frame {
    let op = Some(IoOp { data, close });
    if stdout {
        Frame {
            stdout: op,
            ..Default::default()
        }
    } else {
        Frame {
            stderr: op,
            ..Default::default()
        }
    }
}

type Tx = mpsc::Sender<Result<Frame, Status>>;

/// ExecTaskStreaming: relays frames until the command exits, then sends the exit frame.
pub async fn run_streaming(
    task: &Task,
    setup: drivers::exec_task_streaming_request::Setup,
    inbound: Streaming<drivers::ExecTaskStreamingRequest>,
    tx: Tx,
) -> Result<(), DriverError> {
    check(task, &setup.command)?;
    let status = if setup.tty {
        with_tty(task, &setup.command, inbound, &tx).await?
    } else {
        with_pipes(task, &setup.command, inbound, &tx).await?
    };
    let _ = tx
        .send(Ok(Frame {
            exited: true,
            result: Some(result_of(status)),
            ..Default::default()
        }))
        .await;
    Ok(())
}

async fn with_pipes(
    task: &Task,
    command: &[String],
    mut inbound: Streaming<drivers::ExecTaskStreamingRequest>,
    tx: &Tx,
) -> Result<std::process::ExitStatus, DriverError> {
    let mut cmd = helper(task, command, false);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| DriverError::io("starting the exec helper", e))?;
    let mut stdin = child.stdin.take();
    let pumps = [
        child
            .stdout
            .take()
            .map(|s| pump(Box::new(s), true, tx.clone())),
        child
            .stderr
            .take()
            .map(|s| pump(Box::new(s), false, tx.clone())),
    ];
    let status = loop {
        tokio::select! {
            status = child.wait() => break status.map_err(|e| DriverError::io("waiting for the exec helper", e))?,
            msg = inbound.next() => match msg {
                Some(Ok(req)) => if let Some(op) = req.stdin {
                    if let Some(s) = stdin.as_mut() && !op.data.is_empty() {
                        let _ = s.write_all(&op.data).await;
                    }
                    if op.close {
                        stdin = None;
                    }
                },
                // The client went away: stop the command.
                Some(Err(_)) | None => {
                    let _ = child.start_kill();
                }
            },
        }
    };
    for p in pumps.into_iter().flatten() {
        let _ = p.await;
    }
    Ok(status)
}

fn pump(
    mut r: Box<dyn tokio::io::AsyncRead + Unpin + Send>,
    stdout: bool,
    tx: Tx,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send(Ok(out(stdout, buf[..n].to_vec(), false)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        let _ = tx.send(Ok(out(stdout, Vec::new(), true))).await;
    })
}

async fn with_tty(
    task: &Task,
    command: &[String],
    mut inbound: Streaming<drivers::ExecTaskStreamingRequest>,
    tx: &Tx,
) -> Result<std::process::ExitStatus, DriverError> {
    let pty = nix::pty::openpty(None, None)
        .map_err(|e| DriverError::io("opening a pseudo-terminal", e.into()))?;
    let slave = |what| {
        pty.slave
            .try_clone()
            .map_err(|e| DriverError::io(format!("duplicating the terminal for {what}"), e))
    };
    let mut cmd = helper(task, command, true);
    cmd.stdin(Stdio::from(slave("stdin")?))
        .stdout(Stdio::from(slave("stdout")?))
        .stderr(Stdio::from(slave("stderr")?));
    let mut child = cmd
        .spawn()
        .map_err(|e| DriverError::io("starting the exec helper", e))?;
    // The Command still holds its copies of the slave: without dropping them the master never
    // sees EIO when the command ends.
    drop(cmd);
    drop(pty.slave);
    let master: OwnedFd = pty.master;
    let mut reader = std::fs::File::from(
        master
            .try_clone()
            .map_err(|e| DriverError::io("duplicating the terminal", e))?,
    );
    let out_tx = tx.clone();
    let reading = tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; 32 * 1024];
        // Ends with EIO once the command and everything holding the terminal are gone.
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0
                || out_tx
                    .blocking_send(Ok(out(true, buf[..n].to_vec(), false)))
                    .is_err()
            {
                break;
            }
        }
        let _ = out_tx.blocking_send(Ok(out(true, Vec::new(), true)));
    });
    let mut writer = std::fs::File::from(
        master
            .try_clone()
            .map_err(|e| DriverError::io("duplicating the terminal", e))?,
    );
    let status = loop {
        tokio::select! {
            status = child.wait() => break status.map_err(|e| DriverError::io("waiting for the exec helper", e))?,
            msg = inbound.next() => match msg {
                Some(Ok(req)) => {
                    if let Some(size) = req.tty_size {
                        resize(&master, size.height, size.width);
                    }
                    if let Some(op) = req.stdin {
                        if !op.data.is_empty() {
                            let _ = writer.write_all(&op.data);
                        }
                        if op.close {
                            // End of input on a terminal is ^D.
                            let _ = writer.write_all(&[4]);
                        }
                    }
                }
                Some(Err(_)) | None => {
                    let _ = child.start_kill();
                }
            },
        }
    };
    drop(writer);
    drop(master);
    let _ = tokio::time::timeout(Duration::from_secs(5), reading).await;
    Ok(status)
}

fn resize(master: &OwnedFd, rows: i32, cols: i32) {
    let ws = libc::winsize {
        ws_row: rows.clamp(0, i32::from(u16::MAX)) as u16,
        ws_col: cols.clamp(0, i32::from(u16::MAX)) as u16,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ on our pty master with a valid winsize.
    unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &raw const ws) };
}
