//! The observer's view of procfs behind a trait ([`ProcSource`]), so the tree and recovery logic is
//! unit-tested with a fake: `/proc/<pid>/stat` (proc(5): ppid, flags, start time, CPU ticks,
//! RSS), `/proc/<pid>/cmdline`, `/proc/<pid>/cgroup`, pending signals from `/proc/<pid>/status`,
//! and the list of live PIDs.

use std::{collections::HashMap, fs};

/// `PF_EXITING` in the kernel's per-task flags (`include/linux/sched.h`): `do_exit` has begun.
const PF_EXITING: u64 = 0x4;
/// Bit of SIGKILL in the pending-signal masks of `/proc/<pid>/status`.
const SIGKILL_BIT: u64 = 1 << (libc::SIGKILL - 1);

/// The fields of `/proc/<pid>/stat` the observer uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcStat {
    pub comm: String,
    pub state: char,
    pub ppid: u32,
    /// Kernel task flags (`PF_*`).
    pub flags: u64,
    /// Clock ticks of user / system CPU time.
    pub utime: u64,
    pub stime: u64,
    /// Start time in clock ticks since boot.
    pub start_time: u64,
    pub rss_pages: u64,
}

impl ProcStat {
    /// A zombie or dead process is gone for the observer's purposes.
    #[must_use]
    pub fn is_alive(&self) -> bool {
        self.state != 'Z' && self.state != 'X'
    }

    /// Alive and not on its way out: not a zombie, and `do_exit` has not begun (an exiting
    /// process may already show the root cgroup).
    #[must_use]
    pub fn is_running(&self) -> bool {
        self.is_alive() && self.flags & PF_EXITING == 0
    }
}

/// Read access to procfs.
pub trait ProcSource: Send + Sync {
    fn stat(&self, pid: u32) -> Option<ProcStat>;
    /// Arguments of `pid` (empty for kernel threads and zombies).
    fn cmdline(&self, pid: u32) -> Option<Vec<String>>;
    /// Every PID (thread-group id) in `/proc`.
    fn pids(&self) -> Vec<u32>;
    /// Text of `/proc/<pid>/cgroup`.
    fn cgroup(&self, pid: u32) -> Option<String>;
    /// Thread ids of process `pid` other than `pid` itself (`/proc/<pid>/task`).
    fn threads(&self, pid: u32) -> Vec<u32>;
    /// A SIGKILL is pending for `pid` (it is about to die), from `SigPnd` / `ShdPnd` of
    /// `/proc/<pid>/status`.
    fn kill_pending(&self, pid: u32) -> bool;
}

/// The real `/proc`.
#[derive(Clone, Copy, Debug, Default)]
pub struct LiveProc;

impl ProcSource for LiveProc {
    fn stat(&self, pid: u32) -> Option<ProcStat> {
        parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }

    fn cmdline(&self, pid: u32) -> Option<Vec<String>> {
        let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        Some(split_cmdline(&raw))
    }

    fn pids(&self) -> Vec<u32> {
        fs::read_dir("/proc")
            .map(|dir| {
                dir.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn cgroup(&self, pid: u32) -> Option<String> {
        fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()
    }

    fn threads(&self, pid: u32) -> Vec<u32> {
        fs::read_dir(format!("/proc/{pid}/task"))
            .map(|dir| {
                dir.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse().ok())
                    .filter(|tid| *tid != pid)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn kill_pending(&self, pid: u32) -> bool {
        fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| sigkill_pending(&s))
    }
}

/// True when the `SigPnd` (thread) or `ShdPnd` (process) mask of a status text has SIGKILL.
#[must_use]
pub fn sigkill_pending(status: &str) -> bool {
    status.lines().any(|line| {
        let Some((key, mask)) = line.split_once(':') else {
            return false;
        };
        (key == "SigPnd" || key == "ShdPnd")
            && u64::from_str_radix(mask.trim(), 16).is_ok_and(|m| m & SIGKILL_BIT != 0)
    })
}

/// Splits the NUL-separated `cmdline` into arguments.
#[must_use]
pub fn split_cmdline(raw: &[u8]) -> Vec<String> {
    raw.split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// Parses a stat line; the command name may contain spaces and parentheses, so fields are
/// counted from the last `)`.
#[must_use]
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // fields[0] is field 3 (state) of proc(5).
    let field = |n: usize| fields.get(n - 3).copied();
    Some(ProcStat {
        comm,
        state: field(3)?.chars().next()?,
        ppid: field(4)?.parse().ok()?,
        flags: field(9)?.parse().ok()?,
        utime: field(14)?.parse().ok()?,
        stime: field(15)?.parse().ok()?,
        start_time: field(22)?.parse().ok()?,
        rss_pages: field(24)?.parse().ok()?,
    })
}

/// Live descendants of `roots` (not the roots themselves), with their parent, from one pass over
/// `/proc`.
pub fn descendants(src: &dyn ProcSource, roots: &[u32]) -> Vec<(u32, u32)> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for pid in src.pids() {
        if let Some(st) = src.stat(pid).filter(ProcStat::is_alive) {
            children.entry(st.ppid).or_default().push(pid);
        }
    }
    let mut out = Vec::new();
    let mut stack: Vec<u32> = roots.to_vec();
    while let Some(parent) = stack.pop() {
        for child in children.get(&parent).into_iter().flatten() {
            if !roots.contains(child) && !out.iter().any(|(p, _)| p == child) {
                out.push((*child, parent));
                stack.push(*child);
            }
        }
    }
    out
}

/// CPU and memory of one process, for Nomad's per-pid `TaskResourceUsage`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PidUsage {
    pub pid: u32,
    pub rss_bytes: u64,
    pub user_ns: u64,
    pub system_ns: u64,
}

/// Reads [`PidUsage`] of `pid` from `src`; `ticks_per_second` and `page_size` convert units.
pub fn pid_usage(
    src: &dyn ProcSource,
    pid: u32,
    ticks_per_second: u64,
    page_size: u64,
) -> Option<PidUsage> {
    let st = src.stat(pid).filter(ProcStat::is_alive)?;
    let ns_per_tick = 1_000_000_000 / ticks_per_second.max(1);
    Some(PidUsage {
        pid,
        rss_bytes: st.rss_pages * page_size,
        user_ns: st.utime * ns_per_tick,
        system_ns: st.stime * ns_per_tick,
    })
}

#[cfg(test)]
pub(crate) mod fake {
    //! A scripted `/proc` for unit tests.
    use std::{
        collections::{BTreeMap, BTreeSet},
        sync::Mutex,
    };

    use super::{PF_EXITING, ProcSource, ProcStat};

    /// stat, cmdline, /proc/<pid>/cgroup text.
    type Entry = (ProcStat, Vec<String>, String);

    #[derive(Default)]
    pub struct FakeProc {
        pub procs: Mutex<BTreeMap<u32, Entry>>,
        /// PIDs with a SIGKILL pending.
        pub killed: Mutex<BTreeSet<u32>>,
    }

    impl FakeProc {
        pub fn add(&self, pid: u32, parent: u32, comm: &str, args: &[&str], start_time: u64) {
            let st = ProcStat {
                comm: comm.into(),
                state: 'S',
                ppid: parent,
                flags: 0,
                utime: 10,
                stime: 5,
                start_time,
                rss_pages: 100,
            };
            let args = args.iter().map(|s| (*s).to_owned()).collect();
            let cg = "4:memory:/bpfexec-test\n0::/\n".to_owned();
            self.procs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(pid, (st, args, cg));
        }

        pub fn set_cgroup(&self, pid: u32, text: &str) {
            if let Some(p) = self
                .procs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get_mut(&pid)
            {
                p.2 = text.to_owned();
            }
        }

        /// Sets the process state letter (`Z` for a zombie).
        pub fn set_state(&self, pid: u32, state: char) {
            self.edit(pid, |st| st.state = state);
        }

        /// Marks the process as exiting (`PF_EXITING`).
        pub fn set_exiting(&self, pid: u32) {
            self.edit(pid, |st| st.flags |= PF_EXITING);
        }

        /// Marks a SIGKILL pending for `pid`.
        pub fn set_kill_pending(&self, pid: u32) {
            self.killed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(pid);
        }

        fn edit(&self, pid: u32, f: impl FnOnce(&mut ProcStat)) {
            if let Some(p) = self
                .procs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get_mut(&pid)
            {
                f(&mut p.0);
            }
        }

        pub fn remove(&self, pid: u32) {
            self.procs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&pid);
        }

        fn get(&self, pid: u32) -> Option<Entry> {
            self.procs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(&pid)
                .cloned()
        }
    }

    impl ProcSource for FakeProc {
        fn stat(&self, pid: u32) -> Option<ProcStat> {
            self.get(pid).map(|p| p.0)
        }
        fn cmdline(&self, pid: u32) -> Option<Vec<String>> {
            self.get(pid).map(|p| p.1)
        }
        fn pids(&self) -> Vec<u32> {
            self.procs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .keys()
                .copied()
                .collect()
        }
        fn cgroup(&self, pid: u32) -> Option<String> {
            self.get(pid).map(|p| p.2)
        }
        fn threads(&self, pid: u32) -> Vec<u32> {
            // Fake threads: pid * 1000 + 1 for PIDs above 1000.
            if pid > 1000 {
                vec![pid * 1000 + 1]
            } else {
                Vec::new()
            }
        }
        fn kill_pending(&self, pid: u32) -> bool {
            self.killed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains(&pid)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{fake::FakeProc, *};

    #[test]
    fn parses_stat_with_odd_comm() {
        let line = "42 (a (b) c) S 7 42 42 0 -1 4194304 1 0 0 0 11 12 0 0 20 0 1 0 555 1000 33 \
                    18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        let st = parse_stat(line).expect("parse");
        assert_eq!(st.comm, "a (b) c");
        assert_eq!((st.state, st.ppid, st.flags), ('S', 7, 4_194_304));
        assert_eq!(
            (st.utime, st.stime, st.start_time, st.rss_pages),
            (11, 12, 555, 33)
        );
        assert!(st.is_alive());
        assert!(st.is_running());
        let exiting = ProcStat {
            flags: st.flags | PF_EXITING,
            ..st.clone()
        };
        assert!(exiting.is_alive() && !exiting.is_running());
        let zombie = ProcStat { state: 'Z', ..st };
        assert!(!zombie.is_running());
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn sigkill_pending_reads_both_masks() {
        let idle = "Name:\tsleep\nSigPnd:\t0000000000000000\nShdPnd:\t0000000000000000\n";
        assert!(!sigkill_pending(idle));
        assert!(!sigkill_pending(
            "SigPnd:\t0000000000000000\nShdPnd:\t0000000000004000\n"
        ));
        assert!(sigkill_pending(
            "SigPnd:\t0000000000000000\nShdPnd:\t0000000000000100\n"
        ));
        assert!(sigkill_pending("SigPnd:\t0000000000000100\n"));
        assert!(!sigkill_pending("SigPnd:\tzz\n"));
        let me = std::process::id();
        assert!(!LiveProc.kill_pending(me));
    }

    #[test]
    fn cmdline_is_split_on_nul() {
        assert_eq!(split_cmdline(b"sh\0-c\0echo hi\0"), ["sh", "-c", "echo hi"]);
        assert!(split_cmdline(b"").is_empty());
    }

    #[test]
    fn descendants_walks_three_levels() {
        let p = FakeProc::default();
        p.add(10, 1, "sh", &["sh"], 1);
        p.add(11, 10, "sh", &["sh"], 2);
        p.add(12, 11, "sleep", &["sleep", "9"], 3);
        p.add(13, 1, "other", &["other"], 4);
        let mut d = descendants(&p, &[10]);
        d.sort_unstable();
        assert_eq!(d, [(11, 10), (12, 11)]);
    }

    #[test]
    fn usage_converts_units() {
        let p = FakeProc::default();
        p.add(10, 1, "sh", &["sh"], 1);
        let u = pid_usage(&p, 10, 100, 4096).expect("usage");
        assert_eq!(u.rss_bytes, 409_600);
        assert_eq!((u.user_ns, u.system_ns), (100_000_000, 50_000_000));
        assert!(pid_usage(&p, 99, 100, 4096).is_none());
    }
}
