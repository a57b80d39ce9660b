//! Decodes the raw `bpfexec-common` records from the `EVENTS` ring buffer into owned
//! [`ProcessEvent`]s. Every length is checked; string lengths reported by the probe are clamped.
//! Every event carries the task key the probes attributed it to (PID lineage, see `common`).

use std::{ffi::OsStr, os::unix::ffi::OsStrExt as _, path::PathBuf};

use bpfexec_common::{
    EventHeader, ExecRecord, ExitRecord, FILENAME_LEN, ForkRecord, OomVictimRecord, SignalRecord,
    kind,
};

/// A process-lifecycle event observed by the probes for a tracked process. `pid` is a thread-group
/// id (what userspace calls a PID), `tid` a thread id. `ktime_ns` is `CLOCK_MONOTONIC` in
/// nanoseconds. `task` is the task key (never 0 except for an untracked signal target).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProcessEvent {
    /// `sched_process_exec`: `pid` now runs `filename`.
    Exec {
        ktime_ns: u64,
        cpu: u32,
        task: u64,
        pid: u32,
        tid: u32,
        /// Differs from `pid` when a non-leader thread called exec.
        old_pid: u32,
        /// The path passed to exec (truncated to 127 bytes).
        filename: PathBuf,
        /// Command name after exec.
        comm: String,
    },
    /// `sched_process_exit`: the process `pid` is gone (its last thread `tid` exited).
    Exit {
        ktime_ns: u64,
        cpu: u32,
        task: u64,
        pid: u32,
        tid: u32,
        /// `Some(true)` when the tracepoint said so; `None` when the kernel's tracepoint has no
        /// `group_dead` (then the leader's exit stands for the process's).
        group_dead: Option<bool>,
        comm: String,
    },
    /// `task_newtask`: thread `parent_tid` of `parent_pid` created the new process `child_pid`
    /// (threads are not reported).
    Fork {
        ktime_ns: u64,
        cpu: u32,
        task: u64,
        parent_pid: u32,
        parent_tid: u32,
        child_pid: u32,
        clone_flags: u64,
        parent_comm: String,
        child_comm: String,
    },
    /// `signal_generate`: `sender_pid` generated signal `sig` for thread `target_pid` (of process
    /// `target_tgid`); the sender, the target, or both are tracked.
    Signal {
        ktime_ns: u64,
        cpu: u32,
        sender_pid: u32,
        sender_tid: u32,
        sender_uid: u32,
        sender_comm: String,
        /// Task key of the sender (0: not a task process).
        sender_task: u64,
        target_pid: u32,
        /// Process of the target thread (0 when the target is not tracked).
        target_tgid: u32,
        target_comm: String,
        /// Task key of the target (0: not a task process).
        target_task: u64,
        sig: i32,
        errno: i32,
        code: i32,
        /// The signal targets the whole thread group.
        group: bool,
        /// Kernel `TRACE_SIGNAL_*` result: 0 delivered, 1 ignored, 2 already pending, …
        result: i32,
    },
    /// `oom/mark_victim`: the OOM killer chose process `pid` (thread `tid`). Sizes are in KiB.
    OomVictim {
        ktime_ns: u64,
        cpu: u32,
        task: u64,
        pid: u32,
        tid: u32,
        comm: String,
        uid: u32,
        total_vm_kb: u64,
        anon_rss_kb: u64,
        file_rss_kb: u64,
        shmem_rss_kb: u64,
        pgtables_kb: u64,
        oom_score_adj: i16,
        /// The process that was allocating when the OOM killer ran.
        trigger_pid: u32,
    },
}

/// A ring-buffer record that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{kind} record is {len} bytes, expected at least {need}")]
    TooShort {
        kind: &'static str,
        len: usize,
        need: usize,
    },
    #[error("unknown record kind {0} (driver and probes out of sync?)")]
    UnknownKind(u32),
}

impl ProcessEvent {
    /// Decodes one ring-buffer record.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let header: EventHeader = read_record(bytes, "header")?;
        let EventHeader {
            kind: record_kind,
            cpu,
            ktime_ns,
            pid,
            tid,
        } = header;
        Ok(match record_kind {
            kind::EXEC => {
                let r: ExecRecord = read_record(bytes, "exec")?;
                let len = (r.filename_len as usize).min(FILENAME_LEN);
                Self::Exec {
                    ktime_ns,
                    cpu,
                    task: r.task,
                    pid: r.pid,
                    tid,
                    old_pid: r.old_pid,
                    filename: PathBuf::from(OsStr::from_bytes(until_nul(&r.filename[..len]))),
                    comm: c_string(&r.comm),
                }
            }
            kind::EXIT => {
                let r: ExitRecord = read_record(bytes, "exit")?;
                Self::Exit {
                    ktime_ns,
                    cpu,
                    task: r.task,
                    pid,
                    tid: r.pid,
                    group_dead: match r.group_dead {
                        ExitRecord::GROUP_DEAD_UNKNOWN => None,
                        v => Some(v != 0),
                    },
                    comm: c_string(&r.comm),
                }
            }
            kind::FORK => {
                let r: ForkRecord = read_record(bytes, "fork")?;
                Self::Fork {
                    ktime_ns,
                    cpu,
                    task: r.task,
                    parent_pid: pid,
                    parent_tid: tid,
                    child_pid: r.child_pid,
                    clone_flags: r.clone_flags,
                    parent_comm: c_string(&r.parent_comm),
                    child_comm: c_string(&r.child_comm),
                }
            }
            kind::SIGNAL => {
                let r: SignalRecord = read_record(bytes, "signal")?;
                Self::Signal {
                    ktime_ns,
                    cpu,
                    sender_pid: pid,
                    sender_tid: tid,
                    sender_uid: r.sender_uid,
                    sender_comm: c_string(&r.sender_comm),
                    sender_task: r.sender_task,
                    target_pid: r.target_pid,
                    target_tgid: r.target_tgid,
                    target_comm: c_string(&r.target_comm),
                    target_task: r.target_task,
                    sig: r.sig,
                    errno: r.errno,
                    code: r.code,
                    group: r.group != 0,
                    result: r.result,
                }
            }
            kind::OOM_VICTIM => {
                let r: OomVictimRecord = read_record(bytes, "oom_victim")?;
                Self::OomVictim {
                    ktime_ns,
                    cpu,
                    task: r.task,
                    pid: r.victim_tgid,
                    tid: r.victim_pid,
                    comm: c_string(&r.comm),
                    uid: r.uid,
                    total_vm_kb: r.total_vm_kb,
                    anon_rss_kb: r.anon_rss_kb,
                    file_rss_kb: r.file_rss_kb,
                    shmem_rss_kb: r.shmem_rss_kb,
                    pgtables_kb: r.pgtables_kb,
                    oom_score_adj: r.oom_score_adj,
                    trigger_pid: pid,
                }
            }
            other => return Err(DecodeError::UnknownKind(other)),
        })
    }

    /// `CLOCK_MONOTONIC` nanoseconds at which the probe ran.
    #[must_use]
    pub fn ktime_ns(&self) -> u64 {
        match self {
            Self::Exec { ktime_ns, .. }
            | Self::Exit { ktime_ns, .. }
            | Self::Fork { ktime_ns, .. }
            | Self::Signal { ktime_ns, .. }
            | Self::OomVictim { ktime_ns, .. } => *ktime_ns,
        }
    }
}

/// Copies a `T` out of the front of `bytes` after checking the length.
fn read_record<T: aya::Pod>(bytes: &[u8], kind: &'static str) -> Result<T, DecodeError> {
    let need = size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::TooShort {
            kind,
            len: bytes.len(),
            need,
        });
    }
    // SAFETY: `bytes` holds at least `size_of::<T>()` bytes (checked above); `T: Pod` means every
    // bit pattern is a valid `T`; `read_unaligned` imposes no alignment requirement.
    Ok(unsafe { bytes.as_ptr().cast::<T>().read_unaligned() })
}

fn until_nul(bytes: &[u8]) -> &[u8] {
    bytes
        .iter()
        .position(|&b| b == 0)
        .map_or(bytes, |end| &bytes[..end])
}

/// A NUL-padded kernel string (`comm`) as UTF-8, lossily.
pub(crate) fn c_string(bytes: &[u8]) -> String {
    String::from_utf8_lossy(until_nul(bytes)).into_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use std::path::Path;

    use bpfexec_common::COMM_LEN;

    use super::*;

    fn comm(s: &str) -> [u8; COMM_LEN] {
        let mut out = [0; COMM_LEN];
        out[..s.len()].copy_from_slice(s.as_bytes());
        out
    }

    fn header(kind: u32) -> EventHeader {
        EventHeader {
            kind,
            cpu: 1,
            ktime_ns: 42,
            pid: 100,
            tid: 101,
        }
    }

    fn bytes_of<T: aya::Pod>(v: &T) -> Vec<u8> {
        // SAFETY: test helper; `T: Pod` has no padding, so all its bytes are initialised.
        unsafe { std::slice::from_raw_parts(std::ptr::from_ref(v).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    fn exec_record(filename: &[u8], len: u32) -> ExecRecord {
        let mut r = ExecRecord {
            header: header(kind::EXEC),
            pid: 100,
            old_pid: 100,
            filename_len: len,
            pad: 0,
            task: 7,
            comm: comm("true"),
            filename: [0xAA; FILENAME_LEN],
        };
        r.filename[..filename.len()].copy_from_slice(filename);
        r
    }

    #[test]
    fn decodes_exec() {
        let mut raw = exec_record(b"/usr/bin/true\0", 13);
        raw.filename[13] = 0;
        let ev = ProcessEvent::decode(&bytes_of(&raw)).unwrap();
        let ProcessEvent::Exec {
            pid,
            tid,
            task,
            filename,
            comm,
            ktime_ns,
            ..
        } = ev
        else {
            panic!("not exec: {ev:?}");
        };
        assert_eq!((pid, tid, task, ktime_ns), (100, 101, 7, 42));
        assert_eq!(filename, Path::new("/usr/bin/true"));
        assert_eq!(comm, "true");
    }

    #[test]
    fn exec_length_is_clamped_and_nul_terminated() {
        // A lying length larger than the buffer is clamped to the buffer.
        let raw = exec_record(b"/bin/x", 10_000);
        let ProcessEvent::Exec { filename, .. } = ProcessEvent::decode(&bytes_of(&raw)).unwrap()
        else {
            panic!()
        };
        // Garbage (0xAA) after the name but no NUL: everything up to the clamp is kept.
        assert_eq!(filename.as_os_str().len(), FILENAME_LEN);
        // A length shorter than the string wins.
        let raw = exec_record(b"/bin/xyz\0", 4);
        let ProcessEvent::Exec { filename, .. } = ProcessEvent::decode(&bytes_of(&raw)).unwrap()
        else {
            panic!()
        };
        assert_eq!(filename, Path::new("/bin"));
    }

    #[test]
    #[allow(
        clippy::too_many_lines,
        reason = "one record of each kind, side by side"
    )]
    fn decodes_exit_fork_signal_oom() {
        let exit = ExitRecord {
            header: header(kind::EXIT),
            pid: 101,
            group_dead: 1,
            pad: [0; 3],
            task: 7,
            comm: comm("sh"),
        };
        assert_eq!(
            ProcessEvent::decode(&bytes_of(&exit)).unwrap(),
            ProcessEvent::Exit {
                ktime_ns: 42,
                cpu: 1,
                task: 7,
                pid: 100,
                tid: 101,
                group_dead: Some(true),
                comm: "sh".into()
            }
        );
        let unknown = ExitRecord {
            group_dead: ExitRecord::GROUP_DEAD_UNKNOWN,
            ..exit
        };
        assert!(matches!(
            ProcessEvent::decode(&bytes_of(&unknown)).unwrap(),
            ProcessEvent::Exit {
                group_dead: None,
                ..
            }
        ));

        let fork = ForkRecord {
            header: header(kind::FORK),
            child_pid: 200,
            pad: 0,
            clone_flags: 0x11,
            task: 7,
            parent_comm: comm("sh"),
            child_comm: comm("sh"),
        };
        assert!(matches!(
            ProcessEvent::decode(&bytes_of(&fork)).unwrap(),
            ProcessEvent::Fork {
                parent_pid: 100,
                parent_tid: 101,
                child_pid: 200,
                clone_flags: 0x11,
                task: 7,
                ..
            }
        ));

        let sig = SignalRecord {
            header: header(kind::SIGNAL),
            sig: 9,
            errno: 0,
            code: 0,
            target_pid: 300,
            group: 1,
            result: 0,
            target_tgid: 300,
            sender_uid: 1000,
            target_task: 7,
            sender_task: 0,
            target_comm: comm("victim"),
            sender_comm: comm("killer"),
        };
        let ev = ProcessEvent::decode(&bytes_of(&sig)).unwrap();
        assert!(matches!(
            &ev,
            ProcessEvent::Signal {
                sig: 9,
                target_pid: 300,
                target_task: 7,
                sender_task: 0,
                sender_uid: 1000,
                group: true,
                sender_pid: 100,
                ..
            }
        ));
        assert_eq!(ev.ktime_ns(), 42);

        let oom = OomVictimRecord {
            header: header(kind::OOM_VICTIM),
            victim_pid: 301,
            uid: 0,
            total_vm_kb: 1,
            anon_rss_kb: 2,
            file_rss_kb: 3,
            shmem_rss_kb: 4,
            pgtables_kb: 5,
            oom_score_adj: -1000,
            pad: [0; 2],
            victim_tgid: 300,
            task: 7,
            comm: comm("hog"),
        };
        assert!(matches!(
            ProcessEvent::decode(&bytes_of(&oom)).unwrap(),
            ProcessEvent::OomVictim {
                pid: 300,
                tid: 301,
                task: 7,
                anon_rss_kb: 2,
                oom_score_adj: -1000,
                trigger_pid: 100,
                ..
            }
        ));
    }

    #[test]
    fn short_and_unknown_records_are_errors() {
        assert_eq!(
            ProcessEvent::decode(&[0; 10]),
            Err(DecodeError::TooShort {
                kind: "header",
                len: 10,
                need: 24
            })
        );
        let raw = bytes_of(&exec_record(b"/x\0", 2));
        assert!(matches!(
            ProcessEvent::decode(&raw[..100]),
            Err(DecodeError::TooShort { kind: "exec", .. })
        ));
        let mut bad = raw;
        bad[0] = 99;
        assert_eq!(
            ProcessEvent::decode(&bad),
            Err(DecodeError::UnknownKind(99))
        );
    }

    #[test]
    fn invalid_utf8_comm_is_replaced() {
        let exit = ExitRecord {
            header: header(kind::EXIT),
            pid: 1,
            group_dead: 0,
            pad: [0; 3],
            task: 1,
            comm: [0xff, 0xfe, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        };
        assert!(matches!(
            ProcessEvent::decode(&bytes_of(&exit)).unwrap(),
            ProcessEvent::Exit { comm, .. } if comm == "\u{fffd}\u{fffd}"
        ));
    }
}
