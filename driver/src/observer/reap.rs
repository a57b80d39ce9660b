//! Killing a stray task process (an escape or a leak) behind a seam ([`Reaper`]): the real one
//! pins the process with a pidfd (`pidfd_open(2)`), checks its start time and that it still
//! belongs to the task, then sends SIGKILL through the pidfd (`pidfd_send_signal(2)`), so a PID
//! recycled at any point is never signalled. Unit tests use a fake that records kills.

use super::error::ReapError;
use crate::procfs::PidFd;

/// What became of a process the observer meant to kill.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reaped {
    /// SIGKILL was delivered.
    Killed,
    /// It had exited already (or its PID now belongs to another process).
    Gone,
    /// Pinned, it turned out not to be the task's process any more: left alone.
    NotOurs,
}

impl Reaped {
    /// The word for annotations.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Killed => "killed",
            Self::Gone => "gone",
            Self::NotOurs => "not_ours",
        }
    }
}

/// Kills processes by PID and start time.
pub trait Reaper: Send + Sync {
    /// SIGKILLs `pid` if it is still the process that started at `start_time` (clock ticks since
    /// boot) and `still_ours()` holds once the process is pinned.
    fn kill(
        &self,
        pid: u32,
        start_time: u64,
        still_ours: &dyn Fn() -> bool,
    ) -> Result<Reaped, ReapError>;
}

/// The real [`Reaper`], on pidfds.
#[derive(Clone, Copy, Debug, Default)]
pub struct PidFdReaper;

impl Reaper for PidFdReaper {
    fn kill(
        &self,
        pid: u32,
        start_time: u64,
        still_ours: &dyn Fn() -> bool,
    ) -> Result<Reaped, ReapError> {
        let fd = match PidFd::open(pid, Some(start_time)) {
            Ok(fd) => fd,
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ESRCH) =>
            {
                return Ok(Reaped::Gone);
            }
            Err(source) => return Err(ReapError::Open { pid, source }),
        };
        if !still_ours() {
            return Ok(Reaped::NotOurs);
        }
        match fd.send_signal(libc::SIGKILL) {
            Ok(true) => Ok(Reaped::Killed),
            Ok(false) => Ok(Reaped::Gone),
            Err(source) => Err(ReapError::Signal { pid, source }),
        }
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A reaper that records kills and makes the fake `/proc` forget the victims.
    use std::{
        collections::BTreeSet,
        sync::{Arc, Mutex, PoisonError},
    };

    use super::{ReapError, Reaped, Reaper};
    use crate::observer::proc::{ProcSource, fake::FakeProc};

    pub struct FakeReaper {
        proc: Arc<FakeProc>,
        /// (pid, start time) of every SIGKILL sent.
        pub kills: Mutex<Vec<(u32, u64)>>,
        /// PIDs whose kill fails with EPERM.
        pub refuse: Mutex<BTreeSet<u32>>,
    }

    impl FakeReaper {
        pub fn new(proc: Arc<FakeProc>) -> Self {
            Self {
                proc,
                kills: Mutex::default(),
                refuse: Mutex::default(),
            }
        }

        pub fn killed(&self) -> Vec<u32> {
            self.kills
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .map(|(p, _)| *p)
                .collect()
        }
    }

    impl Reaper for FakeReaper {
        fn kill(
            &self,
            pid: u32,
            start_time: u64,
            still_ours: &dyn Fn() -> bool,
        ) -> Result<Reaped, ReapError> {
            if self
                .proc
                .stat(pid)
                .is_none_or(|s| s.start_time != start_time)
            {
                return Ok(Reaped::Gone);
            }
            if !still_ours() {
                return Ok(Reaped::NotOurs);
            }
            if self
                .refuse
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(&pid)
            {
                return Err(ReapError::Signal {
                    pid,
                    source: std::io::Error::from_raw_os_error(libc::EPERM),
                });
            }
            self.kills
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((pid, start_time));
            self.proc.remove(pid);
            Ok(Reaped::Killed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pidfd_reaper_kills_only_the_pinned_process() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id();
        let start = crate::procfs::start_time(pid).expect("start time");
        let r = PidFdReaper;
        assert_eq!(
            r.kill(pid, start + 1, &|| true).expect("kill"),
            Reaped::Gone
        );
        assert_eq!(
            r.kill(pid, start, &|| false).expect("kill"),
            Reaped::NotOurs
        );
        assert_eq!(r.kill(pid, start, &|| true).expect("kill"), Reaped::Killed);
        let status = child.wait().expect("wait");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
        assert_eq!(r.kill(pid, start, &|| true).expect("kill"), Reaped::Gone);
    }
}
