//! Process facts from procfs and pidfds: start times (to tell a live process from a recycled pid),
//! liveness, and race-free signalling through `pidfd_send_signal(2)`.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

/// Start time of `pid` in clock ticks since boot (field 22 of `/proc/<pid>/stat`).
pub fn start_time(pid: u32) -> io::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&stat)
        .map(|s| s.start_time)
        .ok_or_else(|| bad_stat(pid))
}

/// The fields of `/proc/<pid>/stat` the driver uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub state: char,
    pub ppid: u32,
    pub pgrp: i32,
    pub utime: u64,
    pub stime: u64,
    pub start_time: u64,
    pub rss_pages: u64,
}

/// Reads `/proc/<pid>/stat`.
pub fn stat(pid: u32) -> io::Result<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&text).ok_or_else(|| bad_stat(pid))
}

fn bad_stat(pid: u32) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("/proc/{pid}/stat has an unexpected shape"),
    )
}

/// Parses a stat line; the command name may contain spaces and parentheses, so fields are
/// counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state) of proc(5).
    let field = |n: usize| fields.get(n - 3).copied();
    Some(Stat {
        state: field(3)?.chars().next()?,
        ppid: field(4)?.parse().ok()?,
        pgrp: field(5)?.parse().ok()?,
        utime: field(14)?.parse().ok()?,
        stime: field(15)?.parse().ok()?,
        start_time: field(22)?.parse().ok()?,
        rss_pages: field(24)?.parse().ok()?,
    })
}

/// True when `pid` exists, is not a zombie, and started at `start_time`.
pub fn is_same_live_process(pid: u32, start_time: u64) -> bool {
    matches!(stat(pid), Ok(s) if s.start_time == start_time && s.state != 'Z' && s.state != 'X')
}

/// Command line of `pid`, arguments joined by spaces (empty for kernel threads).
pub fn cmdline(pid: u32) -> io::Result<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline"))?;
    Ok(raw
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect::<Vec<_>>()
        .join(" "))
}

/// Live processes whose arguments after argv[0] are exactly `args` (a scan of /proc), each with
/// its start time, so it can be signalled through a pidfd without a pid-reuse race.
pub fn find_by_args(args: &[&[u8]]) -> Vec<(u32, u64)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|raw| {
                let mut parts = raw.split(|b| *b == 0);
                parts.next();
                let rest: Vec<&[u8]> = parts.filter(|p| !p.is_empty()).collect();
                rest == args
            })
        })
        .filter_map(|pid| {
            let st = stat(pid).ok()?;
            (st.state != 'Z' && st.state != 'X').then_some((pid, st.start_time))
        })
        .collect()
}

/// Path of the running executable of `pid`.
pub fn exe(pid: u32) -> io::Result<PathBuf> {
    fs::read_link(format!("/proc/{pid}/exe"))
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

/// Page size in bytes.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 { size as u64 } else { 4096 }
}

/// A pidfd: a handle on one process that never refers to a recycled pid.
#[derive(Debug)]
pub struct PidFd {
    fd: OwnedFd,
    pid: u32,
}

impl PidFd {
    /// Opens a pidfd for `pid` and checks that the process is the one that started at
    /// `start_time` (the check after opening closes the pid-reuse race).
    pub fn open(pid: u32, start_time: Option<u64>) -> io::Result<Self> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no pointers.
        let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel returned a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(ret as RawFd) };
        if let Some(expected) = start_time {
            let actual = start_time_or_gone(pid)?;
            if actual != expected {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "pid {pid} now belongs to another process (start time {actual}, expected {expected})"
                    ),
                ));
            }
        }
        Ok(Self { fd, pid })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends `signal` to the process. `ESRCH` (already exited) is reported as `Ok(false)`.
    pub fn send_signal(&self, signal: i32) -> io::Result<bool> {
        // SAFETY: pidfd_send_signal with a valid fd, a signal number, a null siginfo and no flags.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        delivered(ret)
    }

    /// True once the process has exited (the pidfd polls readable).
    pub fn has_exited(&self) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        let ret = unsafe { libc::poll(&raw mut pfd, 1, 0) };
        ret > 0 && (pfd.revents & libc::POLLIN) != 0
    }
}

impl AsRawFd for PidFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

fn start_time_or_gone(pid: u32) -> io::Result<u64> {
    start_time(pid).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            io::Error::new(io::ErrorKind::NotFound, format!("pid {pid} has exited"))
        } else {
            e
        }
    })
}

/// Sends `signal` to every member of process group `pgid`; `ESRCH` (empty group) is `Ok(false)`.
pub fn signal_group(pgid: u32, signal: i32) -> io::Result<bool> {
    // SAFETY: kill(2) with a negative pid addresses a process group; no pointers involved.
    let ret = unsafe { libc::kill(-(pgid as libc::pid_t), signal) };
    delivered(i64::from(ret))
}

/// A signalling syscall's result: delivered, nobody left to receive it (`ESRCH`), or an error.
fn delivered(ret: i64) -> io::Result<bool> {
    if ret == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        Ok(false)
    } else {
        Err(err)
    }
}

/// Every pid on the host whose process group is `pgid`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| matches!(stat(*pid), Ok(s) if s.pgrp == pgid as i32))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_and_parens_in_comm() {
        let line = "1234 (a (weird) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 \
                    98765 1000000 321 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let s = parse_stat(line).expect("parses");
        assert_eq!(s.state, 'S');
        assert_eq!(s.ppid, 1);
        assert_eq!(s.pgrp, 1234);
        assert_eq!(s.utime, 7);
        assert_eq!(s.stime, 3);
        assert_eq!(s.start_time, 98765);
        assert_eq!(s.rss_pages, 321);
    }

    #[test]
    fn own_process_is_alive_and_matches_its_start_time() {
        let me = std::process::id();
        let st = start_time(me).expect("own stat");
        assert!(is_same_live_process(me, st));
        assert!(!is_same_live_process(me, st + 1));
        let fd = PidFd::open(me, Some(st)).expect("pidfd");
        assert!(!fd.has_exited());
        assert!(PidFd::open(me, Some(st + 1)).is_err());
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_stat("garbage").is_none());
        assert!(parse_stat("1 (x) S 1").is_none());
    }
}
