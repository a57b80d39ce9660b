//! `logging { driver = "journald" }`: the task's stdout and stderr are pipes to a small relay
//! process that sends each line to systemd-journald (`crate::journal`), stdout at priority info
//! and stderr at err, with the task's identity as fields. The relay is forked by the supervisor
//! before the task's pid namespace exists, so it outlives the task's init and drains what the
//! task wrote last; it ends when every writer is gone (the task and all it started).

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::unistd::{ForkResult, fork};

use super::spec::JournalSpec;
use crate::journal::{self, Journal};

/// The write ends the task gets as stdout and stderr.
pub struct Streams {
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// Forks the relay; returns the pipes' write ends for the task.
pub fn start(spec: &JournalSpec) -> io::Result<Streams> {
    let journal = Journal::new(&spec.socket, &spec.identifier, &spec.fields)?;
    let (out_r, out_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // SAFETY: the supervisor is single-threaded, so the child may run arbitrary code.
    match unsafe { fork() }.map_err(io::Error::from)? {
        ForkResult::Child => {
            drop(out_w);
            drop(err_w);
            let _ = super::detach_stdout();
            super::trim::drop_text_pages();
            let code = match relay(&journal, out_r, err_r) {
                Ok(()) => 0,
                Err(e) => {
                    super::log(&format!("journal relay failed: {e}"));
                    1
                }
            };
            std::process::exit(code);
        }
        ForkResult::Parent { child } => {
            super::log(&format!(
                "task output goes to the journal at {} through relay pid {child}",
                spec.socket.display()
            ));
            Ok(Streams {
                stdout: out_w,
                stderr: err_w,
            })
        }
    }
}

/// Reads both pipes until both are closed, sending every line.
fn relay(journal: &Journal, stdout: OwnedFd, stderr: OwnedFd) -> io::Result<()> {
    let mut streams = [
        (
            Some(File::from(stdout)),
            Vec::new(),
            journal::PRIORITY_STDOUT,
        ),
        (
            Some(File::from(stderr)),
            Vec::new(),
            journal::PRIORITY_STDERR,
        ),
    ];
    let mut warned = false;
    let mut buf = vec![0u8; 16 * 1024];
    while streams.iter().any(|s| s.0.is_some()) {
        let ready: Vec<bool> = {
            let mut fds: Vec<PollFd<'_>> = streams
                .iter()
                .filter_map(|s| s.0.as_ref())
                .map(|f| PollFd::new(f.as_fd(), PollFlags::POLLIN))
                .collect();
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
            fds.iter()
                .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                .collect()
        };
        let mut ready = ready.into_iter();
        for (file, pending, priority) in &mut streams {
            let Some(f) = file.as_mut() else { continue };
            if !ready.next().unwrap_or(false) {
                continue;
            }
            let n = match f.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            pending.extend_from_slice(&buf[..n]);
            let eof = n == 0;
            for line in journal::take_lines(pending, eof) {
                if let Err(e) = journal.send(*priority, &line)
                    && !warned
                {
                    super::log(&format!(
                        "cannot send the task's output to the journal ({e}); lines are dropped until journald is back"
                    ));
                    warned = true;
                }
            }
            if eof {
                *file = None;
            }
        }
    }
    Ok(())
}
