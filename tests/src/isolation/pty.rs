//! Runs a command (the real `nomad alloc exec -i -t …`) on a fresh pseudo-terminal, as a user at
//! a terminal would: the child is a session leader with the pty slave as its controlling
//! terminal and stdio (`setsid(2)`, `TIOCSCTTY`), the test types into the master and reads what
//! the command prints. Resizing the master's window (`TIOCSWINSZ`) makes the kernel send
//! SIGWINCH to the child, as a terminal emulator does.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::pty::{Winsize, openpty};

/// A command running on a pseudo-terminal we hold the master side of.
pub struct PtySession {
    child: Child,
    master: File,
    output: Vec<u8>,
    eof: bool,
}

fn winsize(rows: u16, cols: u16) -> Winsize {
    Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

impl PtySession {
    /// Starts `program args…` with environment additions `envs` on a new `rows`×`cols` pty.
    pub fn spawn(
        program: &std::path::Path,
        args: &[&str],
        envs: &[(&str, &str)],
        rows: u16,
        cols: u16,
    ) -> Result<Self> {
        let pty = openpty(Some(&winsize(rows, cols)), None).context("openpty")?;
        let slave: OwnedFd = pty.slave;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(envs.iter().copied())
            .stdin(Stdio::from(slave.try_clone()?))
            .stdout(Stdio::from(slave.try_clone()?))
            .stderr(Stdio::from(slave));
        // SAFETY: between fork and exec the closure only makes async-signal-safe system calls
        // (setsid, ioctl) on the child's own stdin, and allocates nothing.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {} on a pty", program.display()))?;
        // `cmd` (and with it our copies of the slave) is dropped here, so the master reads EIO
        // once the child and its descendants have closed the terminal.
        drop(cmd);
        Ok(PtySession {
            child,
            master: File::from(pty.master),
            output: Vec::new(),
            eof: false,
        })
    }

    /// The child's pid.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the command printed so far (lossy UTF-8, terminal control sequences kept).
    #[must_use]
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.output).into_owned()
    }

    /// Types `text` (as keystrokes: `\n` is Enter).
    pub fn send(&mut self, text: &str) -> Result<()> {
        self.master
            .write_all(text.as_bytes())
            .context("writing to the pty master")
    }

    /// Sets the terminal size (the kernel signals SIGWINCH to the child's foreground group).
    pub fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        let ws = winsize(rows, cols);
        // SAFETY: TIOCSWINSZ on the pty master fd we own, with a valid winsize struct.
        let rc = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &raw const ws) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error()).context("TIOCSWINSZ");
        }
        Ok(())
    }

    /// Reads whatever is available within `wait`; returns whether anything was read.
    fn pump(&mut self, wait: Duration) -> Result<bool> {
        if self.eof {
            return Ok(false);
        }
        let ms = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(self.master.as_fd(), PollFlags::POLLIN)];
        let ready = poll(&mut fds, PollTimeout::from(ms)).context("poll on the pty master")?;
        if ready == 0 {
            return Ok(false);
        }
        let mut buf = [0u8; 4096];
        match self.master.read(&mut buf) {
            Ok(0) => {
                self.eof = true;
                Ok(false)
            }
            Ok(n) => {
                self.output.extend_from_slice(&buf[..n]);
                Ok(true)
            }
            // EIO: every holder of the slave side has closed it.
            Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                self.eof = true;
                Ok(false)
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(false),
            Err(e) => Err(e).context("reading the pty master"),
        }
    }

    /// Waits until the output since byte `from` contains `needle`; returns that part.
    pub fn expect_from(&mut self, from: usize, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + crate::wait::scaled(timeout);
        loop {
            let since =
                String::from_utf8_lossy(&self.output[from.min(self.output.len())..]).into_owned();
            if since.contains(needle) {
                return Ok(since);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.eof {
                bail!(
                    "the terminal never showed {needle:?} (within {timeout:?}{}); output so far:\n{}",
                    if self.eof { ", end of output" } else { "" },
                    self.output()
                );
            }
            self.pump(left.min(Duration::from_millis(200)))?;
        }
    }

    /// Byte length of the output so far (a mark for [`PtySession::expect_from`]).
    #[must_use]
    pub fn mark(&self) -> usize {
        self.output.len()
    }

    /// Waits up to `timeout` for the command to exit, reading its output meanwhile; `None` if
    /// it still runs.
    pub fn try_wait_exit(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + crate::wait::scaled(timeout);
        loop {
            if let Some(status) = self.child.try_wait()? {
                // Drain what is left (until end of output or a quiet 100 ms).
                while self.pump(Duration::from_millis(100))? {}
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            self.pump(Duration::from_millis(50))?;
        }
    }

    /// Waits for the command to exit (reading its output meanwhile); kills it on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.try_wait_exit(timeout)? {
            return Ok(status);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        bail!(
            "the command did not exit within {timeout:?}; output:\n{}",
            self.output()
        )
    }
}

impl Drop for PtySession {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
