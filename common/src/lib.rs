//! Fixed-size `#[repr(C)]` records and map values shared by the eBPF probes and the driver: the
//! ring-buffer event records, the pinned per-task "facts" map value, and the tracepoint field
//! layouts the driver passes to the probes as globals.
//!
//! Contract with the kernel: the probes are classic tracepoints whose field offsets come from
//! `/sys/kernel/tracing/events/<category>/<name>/format` at start-up (never baked in at build time).
//! Every record starts with an [`EventHeader`]; `kind` says which record follows. All records are
//! 8-byte aligned, contain no implicit padding, and are valid for every bit pattern.
//!
//! Attribution is by PID lineage: userspace writes a task's first process into [`MAP_TRACKED`]
//! (`tgid -> task key`); the probes add the new processes of tracked processes, keep their threads
//! in [`MAP_THREADS`] (`tid -> tgid`), and emit records only for tracked processes.
#![no_std]

pub mod devices;

/// Length of a task command name (`TASK_COMM_LEN`), NUL-padded.
pub const COMM_LEN: usize = 16;
/// Bytes of the executed path kept by the exec probe (longer paths are truncated).
pub const FILENAME_LEN: usize = 128;

/// Version of everything pinned under bpffs (map names, key/value layouts, sizes). The driver pins
/// into a directory named after it, so a driver with another layout never reuses stale maps.
/// Bump it whenever a pinned map's definition or value layout changes.
pub const PIN_LAYOUT_VERSION: u32 = 3;

/// Name of the ring buffer map that carries the records (pinned).
pub const MAP_EVENTS: &str = "EVENTS";
/// Name of the per-CPU `u64` counter of records dropped because the ring buffer was full (pinned).
pub const MAP_LOST: &str = "LOST";
/// `HashMap<u32 tgid, u64 task key>`: processes that belong to a task (pinned).
pub const MAP_TRACKED: &str = "TRACKED";
/// `HashMap<u32 tid, u32 tgid>`: non-leader threads of tracked processes (pinned).
pub const MAP_THREADS: &str = "THREADS";
/// `HashMap<u64 task key, TaskFacts>`: what the probes learned about each task's main process and
/// OOM kills, written in the kernel even while no driver reads the ring buffer (pinned).
pub const MAP_FACTS: &str = "FACTS";
/// `HashMap<u32 tgid, u64 task key>`: each task's helper (the supervisor or the init of its pid
/// namespace), so the probes can record who signalled it (pinned).
pub const MAP_HELPERS: &str = "HELPERS";

/// Size of the `EVENTS` ring buffer: 4 MiB, roughly 40,000 records of backlog.
pub const EVENTS_BYTES: u32 = 4 << 20;
/// Default capacity of `TRACKED` (live processes of all tasks together); the driver may load the
/// map with another size (plugin option `tracked_processes`).
pub const TRACKED_MAX: u32 = 65_536;
/// Default share of `TRACKED` one task may hold (plugin option `tracked_processes_per_task`):
/// a fork storm in one task stops being tracked at its share instead of filling the map for all.
pub const TRACKED_PER_TASK_DEFAULT: u32 = TRACKED_MAX / 4;
/// Capacity of `THREADS` (live non-leader threads of all tasks together).
pub const THREADS_MAX: u32 = 131_072;
/// Capacity of `FACTS` (tasks known to the driver, running or exited but not yet destroyed).
pub const FACTS_MAX: u32 = 8_192;
/// Capacity of `HELPERS` (one per task, as `FACTS`).
pub const HELPERS_MAX: u32 = FACTS_MAX;
/// `BPF_F_NO_PREALLOC`: hash maps allocate entries on use, so unused capacity costs no memory.
pub const BPF_F_NO_PREALLOC: u32 = 1;

/// `CLONE_THREAD` in `task_newtask`'s `clone_flags`: the new task is a thread, not a process.
pub const CLONE_THREAD: u64 = 0x0001_0000;
/// `CLONE_PARENT`: the new process gets its creator's parent as its parent.
pub const CLONE_PARENT: u64 = 0x0000_8000;

/// Slots of [`TaskFacts::signals`]: one per classic signal number 1..=31; slot 0 collects every
/// real-time signal (32..=64).
pub const SIGNAL_SLOTS: usize = 32;
// The probe masks signal numbers with `SIGNAL_SLOTS - 1`.
const _: () = assert!(SIGNAL_SLOTS.is_power_of_two());

/// Names of the globals that carry the tracepoint layouts, one per probe.
pub const GLOBAL_EXEC_LAYOUT: &str = "EXEC_LAYOUT";
/// See [`GLOBAL_EXEC_LAYOUT`].
pub const GLOBAL_EXIT_LAYOUT: &str = "EXIT_LAYOUT";
/// See [`GLOBAL_EXEC_LAYOUT`].
pub const GLOBAL_NEWTASK_LAYOUT: &str = "NEWTASK_LAYOUT";
/// See [`GLOBAL_EXEC_LAYOUT`].
pub const GLOBAL_SIGNAL_LAYOUT: &str = "SIGNAL_LAYOUT";
/// See [`GLOBAL_EXEC_LAYOUT`].
pub const GLOBAL_OOM_LAYOUT: &str = "OOM_LAYOUT";
/// Name of the global that carries [`TrackLimits`].
pub const GLOBAL_TRACK_LIMITS: &str = "TRACK_LIMITS";

/// How many processes the probes track per task, set by the driver at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrackLimits {
    /// A task whose [`TaskFacts::live_processes`] reached this gets no more `TRACKED` entries:
    /// its new processes are counted in [`TaskFacts::untracked_processes`] instead. 0: no limit
    /// but the map's capacity.
    pub per_task: u64,
}

/// Values of [`EventHeader::kind`].
pub mod kind {
    /// [`super::ExecRecord`] from `sched/sched_process_exec`.
    pub const EXEC: u32 = 1;
    /// [`super::ExitRecord`] from `sched/sched_process_exit` (whole process gone).
    pub const EXIT: u32 = 2;
    /// [`super::ForkRecord`] from `task/task_newtask` (a new process, never a thread).
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

/// `sched_process_exec`: a tracked process finished `execve` successfully.
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
    /// Task key of the process.
    pub task: u64,
    /// `comm` of the task after exec.
    pub comm: [u8; COMM_LEN],
    /// Tracepoint `filename` (`__data_loc char[]`), NUL-terminated when shorter than the buffer.
    pub filename: [u8; FILENAME_LEN],
}

/// `sched_process_exit`: the last thread of a tracked process is exiting.
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
    /// Task key of the process.
    pub task: u64,
    /// Tracepoint `comm`.
    pub comm: [u8; COMM_LEN],
}

impl ExitRecord {
    /// Value of [`ExitRecord::group_dead`] on kernels whose tracepoint lacks the field.
    pub const GROUP_DEAD_UNKNOWN: u8 = 0xff;
}

/// `task_newtask`: a tracked process (the header's pid) created a new process `child_pid`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForkRecord {
    pub header: EventHeader,
    /// Tracepoint `pid`: the new process's PID.
    pub child_pid: u32,
    /// Always zero; makes the layout explicit.
    pub pad: u32,
    /// Tracepoint `clone_flags` (never has [`CLONE_THREAD`] here).
    pub clone_flags: u64,
    /// Task key of both processes.
    pub task: u64,
    /// `comm` of the creating thread.
    pub parent_comm: [u8; COMM_LEN],
    /// Tracepoint `comm` of the new process (inherited from the creator until it execs).
    pub child_comm: [u8; COMM_LEN],
}

/// `signal_generate`: the current task (the sender) generated a signal for `target_pid`, and the
/// sender or the target is tracked.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SignalRecord {
    pub header: EventHeader,
    pub sig: i32,
    pub errno: i32,
    /// `si_code`: `SI_USER` (0), `SI_TKILL` (-6), `SI_QUEUE` (-1), `SI_KERNEL` (0x80), or a
    /// positive fault / child code raised by the kernel itself.
    pub code: i32,
    /// Tracepoint `pid`: the target thread.
    pub target_pid: u32,
    /// Tracepoint `group`: non-zero when the signal targets the whole thread group.
    pub group: i32,
    /// Tracepoint `result` (`TRACE_SIGNAL_DELIVERED` = 0, `IGNORED`, `ALREADY_PENDING`, …).
    pub result: i32,
    /// Thread-group id of the target when it is tracked (0 otherwise).
    pub target_tgid: u32,
    /// Real uid of the sender (`bpf_get_current_uid_gid`).
    pub sender_uid: u32,
    /// Task key of the target (0 when untracked).
    pub target_task: u64,
    /// Task key of the sender (0 when untracked).
    pub sender_task: u64,
    /// Tracepoint `comm`: the target's command name.
    pub target_comm: [u8; COMM_LEN],
    /// `comm` of the sender (the current task).
    pub sender_comm: [u8; COMM_LEN],
}

/// `signal_generate` result codes (`enum trace_signal_result` in the kernel).
pub mod signal_result {
    pub const DELIVERED: i32 = 0;
    pub const IGNORED: i32 = 1;
    pub const ALREADY_PENDING: i32 = 2;
    pub const OVERFLOW_FAIL: i32 = 3;
    pub const LOSE_INFO: i32 = 4;
}

/// Signals the probes do not record: they can neither end a process nor say anything about why
/// one ended, and `SIGCHLD` alone would be a quarter of all records in a fork storm (one per
/// process exit). Numbers are the generic Linux ones (x86-64, arm64): SIGCHLD, SIGURG, SIGWINCH.
#[must_use]
pub const fn is_noise_signal(sig: i32) -> bool {
    matches!(sig, 17 | 23 | 28)
}

/// `oom/mark_victim`: the OOM killer chose `victim_pid`, which belongs to a tracked process.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OomVictimRecord {
    pub header: EventHeader,
    /// Tracepoint `pid`: the victim thread the OOM killer picked.
    pub victim_pid: u32,
    pub uid: u32,
    pub total_vm_kb: u64,
    pub anon_rss_kb: u64,
    pub file_rss_kb: u64,
    pub shmem_rss_kb: u64,
    pub pgtables_kb: u64,
    pub oom_score_adj: i16,
    /// Always zero; makes the layout explicit.
    pub pad: [u8; 2],
    /// Thread-group id of the victim.
    pub victim_tgid: u32,
    /// Task key of the victim.
    pub task: u64,
    pub comm: [u8; COMM_LEN],
}

/// The last delivered generation of one signal number to a task's main process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SignalFact {
    /// 0 when the slot was never written.
    pub ktime_ns: u64,
    pub sender_task: u64,
    pub sender_pid: u32,
    pub sender_tid: u32,
    pub sender_uid: u32,
    pub code: i32,
    /// Exact signal number (slot 0 holds real-time signals).
    pub sig: i32,
    pub target_tid: u32,
    pub sender_comm: [u8; COMM_LEN],
}

/// One OOM kill in a task.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OomFact {
    /// 0 when no such kill happened.
    pub ktime_ns: u64,
    pub victim_pid: u32,
    pub victim_tid: u32,
    pub total_vm_kb: u64,
    pub anon_rss_kb: u64,
    pub file_rss_kb: u64,
    pub shmem_rss_kb: u64,
    pub uid: u32,
    pub oom_score_adj: i16,
    /// Always zero; makes the layout explicit.
    pub pad: [u8; 2],
    pub comm: [u8; COMM_LEN],
}

/// Value of the pinned `FACTS` map: created by userspace when a task is tracked, then updated in
/// place by the probes. It carries what an exit classification needs even when ring-buffer
/// records were lost or no driver was reading them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskFacts {
    /// The task's main process (tgid), written by userspace.
    pub main_pid: u32,
    /// OOM kills of any process of the task.
    pub oom_kills: u32,
    /// Last successful exec of the main process (0: none seen since tracking).
    pub main_exec_ktime_ns: u64,
    /// When the main process's last thread exited (0: still running or not seen).
    pub main_exit_ktime_ns: u64,
    /// `CLOCK_MONOTONIC` when userspace started tracking the task.
    pub tracked_ktime_ns: u64,
    /// The most recent OOM kill anywhere in the task.
    pub last_oom: OomFact,
    /// The OOM kill of the main process, if any.
    pub main_oom: OomFact,
    /// Per signal number: the last generation that reached the main process.
    pub signals: [SignalFact; SIGNAL_SLOTS],
    /// The last signal that reached the task's helper (`HELPERS`); its SIGKILL ends the task.
    pub helper_signal: SignalFact,
    /// Processes of the task the probes added to `TRACKED` minus those that exited (atomic; the
    /// processes userspace registered are not counted, so it may dip below zero).
    pub live_processes: i64,
    /// New processes of the task the probes could not track: the task's share of `TRACKED`
    /// ([`TrackLimits::per_task`]) was used up or the map was full (atomic). Their events and
    /// those of their descendants are not seen: the task's observation is degraded.
    pub untracked_processes: u64,
    /// New threads of tracked processes that did not fit in `THREADS` (atomic).
    pub untracked_threads: u64,
}

impl TaskFacts {
    /// Slot of [`TaskFacts::signals`] for signal `sig`.
    #[must_use]
    pub const fn signal_slot(sig: i32) -> usize {
        if sig > 0 && sig < SIGNAL_SLOTS as i32 {
            sig as usize
        } else {
            0
        }
    }
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

/// Fields of `task/task_newtask`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NewTaskLayout {
    pub pid: FieldLoc,
    pub comm: FieldLoc,
    pub clone_flags: FieldLoc,
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

// Sizes are part of the contract with the probes: a change here must rebuild both sides (and a
// change to a pinned value must bump PIN_LAYOUT_VERSION).
const _: () = {
    assert!(core::mem::size_of::<EventHeader>() == 24);
    assert!(core::mem::size_of::<ExecRecord>() == 192);
    assert!(core::mem::size_of::<ExitRecord>() == 56);
    assert!(core::mem::size_of::<ForkRecord>() == 80);
    assert!(core::mem::size_of::<SignalRecord>() == 104);
    assert!(core::mem::size_of::<OomVictimRecord>() == 104);
    assert!(core::mem::size_of::<SignalFact>() == 56);
    assert!(core::mem::size_of::<OomFact>() == 72);
    assert!(core::mem::size_of::<TaskFacts>() == 32 + 2 * 72 + (SIGNAL_SLOTS + 1) * 56 + 24);
    assert!(core::mem::size_of::<TrackLimits>() == 8);
    assert!(core::mem::size_of::<FieldLoc>() == 8);
    assert!(core::mem::align_of::<ExecRecord>() == 8);
    assert!(core::mem::align_of::<TaskFacts>() == 8);
};

#[cfg(feature = "user")]
mod pod {
    use super::{
        EventHeader, ExecLayout, ExecRecord, ExitLayout, ExitRecord, FieldLoc, ForkRecord,
        NewTaskLayout, OomFact, OomLayout, OomVictimRecord, SignalFact, SignalLayout, SignalRecord,
        TaskFacts, TrackLimits,
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
    unsafe impl aya::Pod for SignalFact {}
    // SAFETY: see the comment on `EventHeader` above.
    unsafe impl aya::Pod for OomFact {}
    // SAFETY: see the comment on `EventHeader` above (arrays of padding-free structs).
    unsafe impl aya::Pod for TaskFacts {}
    // SAFETY: see the comment on `EventHeader` above.
    unsafe impl aya::Pod for FieldLoc {}
    // SAFETY: see the comment on `EventHeader` above (arrays of `FieldLoc`, no padding).
    unsafe impl aya::Pod for ExecLayout {}
    // SAFETY: see the comment on `EventHeader` above.
    unsafe impl aya::Pod for ExitLayout {}
    // SAFETY: see the comment on `EventHeader` above.
    unsafe impl aya::Pod for NewTaskLayout {}
    // SAFETY: see the comment on `EventHeader` above.
    unsafe impl aya::Pod for SignalLayout {}
    // SAFETY: see the comment on `EventHeader` above.
    unsafe impl aya::Pod for OomLayout {}
    // SAFETY: see the comment on `EventHeader` above (one u64).
    unsafe impl aya::Pod for TrackLimits {}
}
