//! Waiting for a task's main process while answering its seccomp listener: SIGCHLD arrives on a
//! signalfd (blocked before the task was forked), so one poll(2) covers both. With
//! `reap_all` (the init of a pid namespace) every child is reaped, not just the main process.

use std::io;
use std::os::fd::AsFd;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::record::{ExitRecord, now_ms};
use super::spec::LaunchSpec;
use crate::seccomp::listener::{HostFiles, Listener};

/// The task's listener, ready to serve, when its process handed one over.
pub fn listener(
    fd: Option<std::os::fd::OwnedFd>,
    host: Option<HostFiles>,
    spec: &LaunchSpec,
) -> Option<Listener> {
    let profile = spec.seccomp.as_ref()?.profile.clone();
    Some(Listener::new(fd?, host?, &profile))
}

/// The host files a listener needs, when the task has a seccomp filter.
pub fn host_files(spec: &LaunchSpec, state_dir: &std::path::Path) -> io::Result<Option<HostFiles>> {
    spec.seccomp
        .as_ref()
        .map(|_| HostFiles::open(state_dir))
        .transpose()
}

/// The exit record of a main process's wait status (`128 + signal` for a signal death).
pub fn exit_record(status: WaitStatus) -> ExitRecord {
    let (exit_code, signal, core_dumped) = match status {
        WaitStatus::Exited(_, code) => (code, 0, false),
        WaitStatus::Signaled(_, sig, core) => (128 + sig as i32, sig as i32, core),
        _ => (-1, 0, false),
    };
    ExitRecord {
        exit_code,
        signal,
        core_dumped,
        finished_at_ms: now_ms(),
    }
}

/// Blocks SIGCHLD (call before forking the task) and returns the descriptor it arrives on.
pub fn sigchld_fd() -> io::Result<SignalFd> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    set.thread_block().map_err(io::Error::from)?;
    SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(io::Error::from)
}

/// Waits until `main` ends and returns its wait status, serving `listener` meanwhile (it is
/// closed once no process uses the filter any more, or if it fails).
pub fn wait_main(
    main: Pid,
    reap_all: bool,
    sigfd: &SignalFd,
    mut listener: Option<Listener>,
) -> io::Result<WaitStatus> {
    let target = if reap_all { None } else { Some(main) };
    loop {
        loop {
            match waitpid(target, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => break,
                Ok(status) if status.pid() == Some(main) => return Ok(status),
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(io::Error::other(format!("waiting for the task: {e}"))),
            }
        }
        let (sig_ready, notif_ready, hung_up) = {
            let mut fds = vec![PollFd::new(sigfd.as_fd(), PollFlags::POLLIN)];
            if let Some(l) = listener.as_ref() {
                fds.push(PollFd::new(l.fd(), PollFlags::POLLIN));
            }
            // SIGCHLD reaches the signalfd only if no other thread takes it; the helpers are
            // single-threaded, a test harness is not: look again at least every second.
            match poll(&mut fds, PollTimeout::from(1000u16)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            let revents = |i: usize| {
                fds.get(i)
                    .and_then(PollFd::revents)
                    .unwrap_or_else(PollFlags::empty)
            };
            (
                revents(0).contains(PollFlags::POLLIN),
                revents(1).contains(PollFlags::POLLIN),
                revents(1).intersects(PollFlags::POLLHUP | PollFlags::POLLERR),
            )
        };
        if sig_ready {
            while let Ok(Some(_)) = sigfd.read_signal() {}
        }
        if notif_ready && let Some(l) = listener.as_mut() {
            if let Err(e) = l.serve_one() {
                // Closing the listener keeps refusing (with ENOSYS): never a reason to stop
                // waiting for the task.
                super::log(&format!("seccomp listener failed, closing it: {e}"));
                listener = None;
            }
        } else if hung_up {
            // Every process under the filter is gone: nothing more will be refused.
            listener = None;
        }
    }
}
