//! Fixed-size `#[repr(C)]` records that the eBPF probes write into the `EVENTS` ring buffer and the
//! driver reads, plus the tracepoint field layouts the driver passes to the probes as globals.
//!
//! Contract with the kernel: the probes are classic tracepoints whose field offsets come from
//! `/sys/kernel/tracing/events/<category>/<name>/format` at start-up (never baked in at build time).
//! Every record starts with an [`EventHeader`]; `kind` says which record follows. All records are
//! 8-byte aligned, contain no implicit padding, and are valid for every bit pattern.
#![no_std]

/// Length of a task command name (`TASK_COMM_LEN`), NUL-padded.
pub const COMM_LEN: usize = 16;
/// Bytes of the executed path kept by the exec probe (longer paths are truncated).
pub const FILENAME_LEN: usize = 128;

/// Name of the ring buffer map that carries the records.
pub const MAP_EVENTS: &str = "EVENTS";
/// Name of the per-CPU `u64` counter of records dropped because the ring buffer was full.
pub const MAP_LOST: &str = "LOST";

/// Names of the globals that carry the tracepoint layouts, one per probe.
pub const GLOBAL_EXEC_LAYOUT: &str = "EXEC_LAYOUT";
/// See [`GLOBAL_EXEC_LAYOUT`].
pub const GLOBAL_EXIT_LAYOUT: &str = "EXIT_LAYOUT";
/// See [`GLOBAL_EXEC_LAYOUT`].
pub const GLOBAL_FORK_LAYOUT: &str = "FORK_LAYOUT";
/// See [`GLOBAL_EXEC_LAYOUT`].
pub const GLOBAL_SIGNAL_LAYOUT: &str = "SIGNAL_LAYOUT";
/// See [`GLOBAL_EXEC_LAYOUT`].
pub const GLOBAL_OOM_LAYOUT: &str = "OOM_LAYOUT";

/// Values of [`EventHeader::kind`].
pub mod kind {
    /// [`super::ExecRecord`] from `sched/sched_process_exec`.
    pub const EXEC: u32 = 1;
    /// [`super::ExitRecord`] from `sched/sched_process_exit`.
    pub const EXIT: u32 = 2;
    /// [`super::ForkRecord`] from `sched/sched_process_fork`.
    pub const FORK: u32 = 3;
    /// [`super::SignalRecord`] from `signal/signal_generate`.
    pub const SIGNAL: u32 = 4;
    /// [`super::OomVictimRecord`] from `oom/mark_victim`.
    pub const OOM_VICTIM: u32 = 5;
}

/// Common prefix of every record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// One of the [`kind`] constants.
    pub kind: u32,
    /// CPU the probe ran on.
    pub cpu: u32,
    /// `bpf_ktime_get_ns()`: `CLOCK_MONOTONIC` nanoseconds.
    pub ktime_ns: u64,
    /// Thread-group id (the userspace PID) of the task running the probe.
    pub pid: u32,
    /// Thread id of the task running the probe.
    pub tid: u32,
}

/// `sched_process_exec`: the current task finished `execve` successfully.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecRecord {
    pub header: EventHeader,
    /// Tracepoint `pid` (the PID after exec).
    pub pid: u32,
    /// Tracepoint `old_pid` (differs when a non-leader thread called exec).
    pub old_pid: u32,
    /// Bytes of `filename` that are valid (without the NUL), at most [`FILENAME_LEN`].
    pub filename_len: u32,
    /// Always zero; makes the layout explicit.
    pub pad: u32,
    /// `comm` of the task after exec.
    pub comm: [u8; COMM_LEN],
    /// Tracepoint `filename` (`__data_loc char[]`), NUL-terminated when shorter than the buffer.
    pub filename: [u8; FILENAME_LEN],
}

/// `sched_process_exit`: a task (thread) is exiting.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExitRecord {
    pub header: EventHeader,
    /// Tracepoint `pid` (the exiting thread's id).
    pub pid: u32,
    /// Tracepoint `group_dead`: 1 when the last thread of the process exits, 0 otherwise,
    /// [`ExitRecord::GROUP_DEAD_UNKNOWN`] when the kernel's tracepoint has no such field.
    pub group_dead: u8,
    /// Always zero; makes the layout explicit.
    pub pad: [u8; 3],
    /// Tracepoint `comm`.
    pub comm: [u8; COMM_LEN],
}

impl ExitRecord {
    /// Value of [`ExitRecord::group_dead`] on kernels whose tracepoint lacks the field.
    pub const GROUP_DEAD_UNKNOWN: u8 = 0xff;
}

/// `sched_process_fork`: the current task created a new task (process or thread).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForkRecord {
    pub header: EventHeader,
    /// Tracepoint `parent_pid` (the parent thread's id).
    pub parent_pid: u32,
    /// Tracepoint `child_pid` (the new task's id: a PID for a process, a TID for a thread).
    pub child_pid: u32,
    pub parent_comm: [u8; COMM_LEN],
    pub child_comm: [u8; COMM_LEN],
}

/// `signal_generate`: the current task (the sender) generated a signal for `target_pid`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SignalRecord {
    pub header: EventHeader,
    pub sig: i32,
    pub errno: i32,
    pub code: i32,
    /// Tracepoint `pid`: the target task.
    pub target_pid: u32,
    /// Tracepoint `group`: non-zero when the signal targets the whole thread group.
    pub group: i32,
    /// Tracepoint `result` (`TRACE_SIGNAL_DELIVERED` = 0, `IGNORED`, `ALREADY_PENDING`, …).
    pub result: i32,
    /// Tracepoint `comm`: the target's command name.
    pub target_comm: [u8; COMM_LEN],
    /// `comm` of the sender (the current task).
    pub sender_comm: [u8; COMM_LEN],
}

/// `oom/mark_victim`: the OOM killer chose `victim_pid`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OomVictimRecord {
    pub header: EventHeader,
    pub victim_pid: u32,
    pub uid: u32,
    pub total_vm_kb: u64,
    pub anon_rss_kb: u64,
    pub file_rss_kb: u64,
    pub shmem_rss_kb: u64,
    pub pgtables_kb: u64,
    pub oom_score_adj: i16,
    /// Always zero; makes the layout explicit.
    pub pad: [u8; 6],
    pub comm: [u8; COMM_LEN],
}

/// Where one tracepoint field lives in the raw trace record (the probe's context).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FieldLoc {
    /// Byte offset from the start of the record (including the `common_*` fields).
    pub offset: u16,
    /// Size in bytes as stated by the `format` file (4 for a `__data_loc`).
    pub size: u16,
    /// [`FieldLoc::PRESENT`], [`FieldLoc::DATA_LOC`], [`FieldLoc::SIGNED`], [`FieldLoc::REL_LOC`].
    pub flags: u32,
}

impl FieldLoc {
    /// The field exists on this kernel; absent fields read as zero / empty.
    pub const PRESENT: u32 = 1;
    /// The field is a `__data_loc`: a `u32` whose low 16 bits are the offset of the data from
    /// the start of the record and whose high 16 bits are its length.
    pub const DATA_LOC: u32 = 2;
    /// The field is a signed integer (sign-extend when widening).
    pub const SIGNED: u32 = 4;
    /// The field is a `__rel_loc`: like [`FieldLoc::DATA_LOC`], but the data offset is relative
    /// to the end of the 4-byte field itself.
    pub const REL_LOC: u32 = 8;
    /// A field that this kernel does not have.
    pub const ABSENT: Self = Self {
        offset: 0,
        size: 0,
        flags: 0,
    };

    #[must_use]
    pub const fn is_present(self) -> bool {
        self.flags & Self::PRESENT != 0
    }
}

/// Fields of `sched/sched_process_exec`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecLayout {
    pub filename: FieldLoc,
    pub pid: FieldLoc,
    pub old_pid: FieldLoc,
}

/// Fields of `sched/sched_process_exit`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitLayout {
    pub comm: FieldLoc,
    pub pid: FieldLoc,
    pub group_dead: FieldLoc,
}

/// Fields of `sched/sched_process_fork`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForkLayout {
    pub parent_comm: FieldLoc,
    pub parent_pid: FieldLoc,
    pub child_comm: FieldLoc,
    pub child_pid: FieldLoc,
}

/// Fields of `signal/signal_generate`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SignalLayout {
    pub sig: FieldLoc,
    pub errno: FieldLoc,
    pub code: FieldLoc,
    pub comm: FieldLoc,
    pub pid: FieldLoc,
    pub group: FieldLoc,
    pub result: FieldLoc,
}

/// Fields of `oom/mark_victim`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OomLayout {
    pub pid: FieldLoc,
    pub comm: FieldLoc,
    pub total_vm: FieldLoc,
    pub anon_rss: FieldLoc,
    pub file_rss: FieldLoc,
    pub shmem_rss: FieldLoc,
    pub uid: FieldLoc,
    pub pgtables: FieldLoc,
    pub oom_score_adj: FieldLoc,
}

// Sizes are part of the contract with the probes: a change here must rebuild both sides.
const _: () = {
    assert!(core::mem::size_of::<EventHeader>() == 24);
    assert!(core::mem::size_of::<ExecRecord>() == 184);
    assert!(core::mem::size_of::<ExitRecord>() == 48);
    assert!(core::mem::size_of::<ForkRecord>() == 64);
    assert!(core::mem::size_of::<SignalRecord>() == 80);
    assert!(core::mem::size_of::<OomVictimRecord>() == 96);
    assert!(core::mem::size_of::<FieldLoc>() == 8);
    assert!(core::mem::align_of::<ExecRecord>() == 8);
};

#[cfg(feature = "user")]
mod pod {
    use super::{
        EventHeader, ExecLayout, ExecRecord, ExitLayout, ExitRecord, FieldLoc, ForkLayout,
        ForkRecord, OomLayout, OomVictimRecord, SignalLayout, SignalRecord,
    };

    // SAFETY: every type below is `#[repr(C)]`, `Copy`, built only from integers and byte arrays
    // (so every bit pattern is valid), and has no implicit padding: the explicit `pad` fields
    // and the size assertions above make the layout exact.
    unsafe impl aya::Pod for EventHeader {}
    // SAFETY: see the comment on `EventHeader` above.
    unsafe impl aya::Pod for ExecRecord {}
    // SAFETY: see the comment on `EventHeader` above.
    unsafe impl aya::Pod for ExitRecord {}
    // SAFETY: see the comment on `EventHeader` above.
    unsafe impl aya::Pod for ForkRecord {}
    // SAFETY: see the comment on `EventHeader` above.
    unsafe impl aya::Pod for SignalRecord {}
    // SAFETY: see the comment on `EventHeader` above.
    unsafe impl aya::Pod for OomVictimRecord {}
    // SAFETY: see the comment on `EventHeader` above.
    unsafe impl aya::Pod for FieldLoc {}
    // SAFETY: see the comment on `EventHeader` above (arrays of `FieldLoc`, no padding).
    unsafe impl aya::Pod for ExecLayout {}
    // SAFETY: see the comment on `EventHeader` above.
    unsafe impl aya::Pod for ExitLayout {}
    // SAFETY: see the comment on `EventHeader` above.
    unsafe impl aya::Pod for ForkLayout {}
    // SAFETY: see the comment on `EventHeader` above.
    unsafe impl aya::Pod for SignalLayout {}
    // SAFETY: see the comment on `EventHeader` above.
    unsafe impl aya::Pod for OomLayout {}
}
