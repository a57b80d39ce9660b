//! A terminal that belongs to the task: for `alloc exec -t`, the helper opens a pseudo-terminal
//! in the task's own devpts (so `tty`, `ttyname` and programs that reopen their terminal work
//! inside the task's root) and relays bytes between it and the plugin's terminal, passing window
//! size changes on (SIGWINCH) until the command exits.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::termios;

/// The task-side terminal: master kept by the helper, slave given to the command.
pub struct InnerPty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
}

/// Opens a pty through the current root's `/dev/ptmx` (call after entering the task's mounts).
pub fn open_inner() -> io::Result<InnerPty> {
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(io::Error::from)?;
    nix::pty::grantpt(&master).map_err(io::Error::from)?;
    nix::pty::unlockpt(&master).map_err(io::Error::from)?;
    let name = nix::pty::ptsname_r(&master).map_err(io::Error::from)?;
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(&name)?;
    let master: OwnedFd = master.into();
    Ok(InnerPty {
        master,
        slave: slave.into(),
    })
}

/// Makes the helper the session leader of the plugin's terminal (fd 0) so resizes reach it as
/// SIGWINCH, and puts that terminal in raw mode so bytes pass through untouched.
pub fn take_outer_terminal() -> io::Result<()> {
    nix::unistd::setsid().map_err(io::Error::from)?;
    // SAFETY: TIOCSCTTY on fd 0 (a pty slave) with an integer argument.
    if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let stdin = io::stdin();
    let mut t = termios::tcgetattr(stdin.as_fd()).map_err(io::Error::from)?;
    termios::cfmakeraw(&mut t);
    termios::tcsetattr(stdin.as_fd(), termios::SetArg::TCSANOW, &t).map_err(io::Error::from)
}

/// Copies the window size of fd 0 onto `master`.
pub fn copy_size(master: BorrowedFd<'_>) {
    // SAFETY: winsize is plain data; both ioctls take a pointer to one.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        if libc::ioctl(0, libc::TIOCGWINSZ, &raw mut ws) == 0 {
            libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &raw const ws);
        }
    }
}

/// Signals the relay waits on; block them before spawning the command.
pub fn block_signals() -> io::Result<SignalFd> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    set.add(Signal::SIGWINCH);
    set.thread_block().map_err(io::Error::from)?;
    SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(io::Error::from)
}

/// Relays until `child` has exited and its terminal output is drained; returns its status.
pub fn relay(
    master: OwnedFd,
    sigfd: &SignalFd,
    child: &mut std::process::Child,
    mut listener: Option<crate::seccomp::listener::Listener>,
) -> io::Result<std::process::ExitStatus> {
    let mut inner = File::from(master);
    let mut outer_in = File::from(io::stdin().as_fd().try_clone_to_owned()?);
    let mut outer_out = io::stdout();
    let mut buf = [0u8; 16 * 1024];
    let mut input_open = true;
    let mut status = None;
    loop {
        let timeout = if status.is_some() {
            PollTimeout::from(50u16)
        } else {
            PollTimeout::NONE
        };
        let (ready_in, ready_master, ready_sig, notif) = {
            let mut fds = vec![
                PollFd::new(inner.as_fd(), PollFlags::POLLIN),
                PollFd::new(sigfd.as_fd(), PollFlags::POLLIN),
            ];
            if let Some(l) = listener.as_ref() {
                fds.push(PollFd::new(l.fd(), PollFlags::POLLIN));
            }
            let listen_at = fds.len() - 1;
            if input_open {
                fds.push(PollFd::new(outer_in.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, timeout) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            let ev = |i: usize| {
                fds.get(i)
                    .and_then(PollFd::revents)
                    .is_some_and(|r| !r.is_empty())
            };
            let notif = listener.is_some().then(|| {
                fds.get(listen_at)
                    .and_then(PollFd::revents)
                    .unwrap_or_else(PollFlags::empty)
            });
            (input_open && ev(fds.len() - 1), ev(0), ev(1), notif)
        };
        match notif {
            Some(r) if r.contains(PollFlags::POLLIN) => {
                if let Some(l) = listener.as_mut()
                    && l.serve_one().is_err()
                {
                    listener = None;
                }
            }
            Some(r) if !r.is_empty() => listener = None,
            _ => {}
        }
        if ready_master {
            match inner.read(&mut buf) {
                Ok(n) if n > 0 => {
                    outer_out.write_all(&buf[..n])?;
                    outer_out.flush()?;
                }
                // EIO: every holder of the task's terminal is gone.
                _ => {
                    if let Some(s) = status {
                        return Ok(s);
                    }
                }
            }
        } else if let Some(s) = status {
            return Ok(s);
        }
        if ready_in {
            match outer_in.read(&mut buf) {
                Ok(n) if n > 0 => inner.write_all(&buf[..n])?,
                _ => input_open = false,
            }
        }
        if ready_sig {
            while let Ok(Some(info)) = sigfd.read_signal() {
                if info.ssi_signo == Signal::SIGWINCH as u32 {
                    copy_size(inner.as_fd());
                }
            }
            if status.is_none() {
                status = child.try_wait()?;
            }
        }
    }
}
