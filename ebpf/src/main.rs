//! Thin tracepoint probes with in-kernel attribution by PID lineage. Each probe reads the fields the
//! driver located in the tracefs `format` files (passed in as `*_LAYOUT` globals), looks the
//! process up in `TRACKED` (`tgid -> task key`, seeded by userspace), and only for tracked
//! processes fills one fixed-size `bpfexec-common` record into the `EVENTS` ring buffer (the per-CPU
//! `LOST` counter is bumped when it is full). `task_newtask` extends `TRACKED` to new processes of
//! tracked ones and `THREADS` to their threads; `sched_process_exit` removes them. The probes also
//! keep the pinned per-task `FACTS` (signals to the main process, OOM kills) up to date in place.
//! A task holds at most `TRACK_LIMITS.per_task` entries of `TRACKED`; a process that does not fit
//! (its task's share used up, or the map full) is not tracked and is counted in its task's facts
//! instead, so one task's fork storm neither fills the map for others nor goes unnoticed.
//! No policy here: classification lives in the driver.
#![no_std]
#![no_main]
// The BPF target has no atomic compare-and-swap, so `core::sync::atomic` offers no `fetch_add`;
// the intrinsic lowers to the BPF atomic add instruction the per-task counters need.
#![feature(core_intrinsics)]
#![allow(internal_features)]

use aya_ebpf::{
    EbpfContext, Global,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel_str_bytes,
    },
    macros::{map, tracepoint},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use bpfexec_common::{
    BPF_F_NO_PREALLOC, CLONE_THREAD, COMM_LEN, EVENTS_BYTES, EventHeader, ExecLayout, ExecRecord,
    ExitLayout, ExitRecord, FACTS_MAX, FieldLoc, ForkRecord, HELPERS_MAX, NewTaskLayout, OomFact,
    OomLayout, OomVictimRecord, SIGNAL_SLOTS, SignalFact, SignalLayout, SignalRecord, THREADS_MAX,
    TRACKED_MAX, TaskFacts, TrackLimits, is_noise_signal, kind, signal_result,
};
use core::intrinsics::{AtomicOrdering, atomic_xadd};

/// Adds `v` to `*dst` atomically (relaxed), as concurrent probes on other CPUs may too.
///
/// # Safety
/// `dst` must point to a live, 8-byte aligned map value field.
#[inline(always)]
unsafe fn atomic_add<T: Copy>(dst: *mut T, v: T) {
    // SAFETY: the caller passes a valid, aligned pointer into a map value.
    unsafe {
        atomic_xadd::<T, T, { AtomicOrdering::Relaxed }>(dst, v);
    }
}

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map]
static TRACKED: HashMap<u32, u64> = HashMap::with_max_entries(TRACKED_MAX, BPF_F_NO_PREALLOC);

#[map]
static THREADS: HashMap<u32, u32> = HashMap::with_max_entries(THREADS_MAX, BPF_F_NO_PREALLOC);

#[map]
static FACTS: HashMap<u64, TaskFacts> = HashMap::with_max_entries(FACTS_MAX, BPF_F_NO_PREALLOC);

#[map]
static HELPERS: HashMap<u32, u64> = HashMap::with_max_entries(HELPERS_MAX, BPF_F_NO_PREALLOC);

#[unsafe(no_mangle)]
static EXEC_LAYOUT: Global<ExecLayout> = Global::new(ExecLayout {
    filename: FieldLoc::ABSENT,
    pid: FieldLoc::ABSENT,
    old_pid: FieldLoc::ABSENT,
});
#[unsafe(no_mangle)]
static EXIT_LAYOUT: Global<ExitLayout> = Global::new(ExitLayout {
    comm: FieldLoc::ABSENT,
    pid: FieldLoc::ABSENT,
    group_dead: FieldLoc::ABSENT,
});
#[unsafe(no_mangle)]
static NEWTASK_LAYOUT: Global<NewTaskLayout> = Global::new(NewTaskLayout {
    pid: FieldLoc::ABSENT,
    comm: FieldLoc::ABSENT,
    clone_flags: FieldLoc::ABSENT,
});
#[unsafe(no_mangle)]
static SIGNAL_LAYOUT: Global<SignalLayout> = Global::new(SignalLayout {
    sig: FieldLoc::ABSENT,
    errno: FieldLoc::ABSENT,
    code: FieldLoc::ABSENT,
    comm: FieldLoc::ABSENT,
    pid: FieldLoc::ABSENT,
    group: FieldLoc::ABSENT,
    result: FieldLoc::ABSENT,
});
#[unsafe(no_mangle)]
static TRACK_LIMITS: Global<TrackLimits> = Global::new(TrackLimits { per_task: 0 });
#[unsafe(no_mangle)]
static OOM_LAYOUT: Global<OomLayout> = Global::new(OomLayout {
    pid: FieldLoc::ABSENT,
    comm: FieldLoc::ABSENT,
    total_vm: FieldLoc::ABSENT,
    anon_rss: FieldLoc::ABSENT,
    file_rss: FieldLoc::ABSENT,
    shmem_rss: FieldLoc::ABSENT,
    uid: FieldLoc::ABSENT,
    pgtables: FieldLoc::ABSENT,
    oom_score_adj: FieldLoc::ABSENT,
});

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: helper without arguments, always safe to call from a tracepoint.
    unsafe { bpf_ktime_get_ns() }
}

/// (tgid, tid) of the current task.
#[inline(always)]
fn current_ids() -> (u32, u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    ((pid_tgid >> 32) as u32, pid_tgid as u32)
}

#[inline(always)]
fn header(kind: u32, ktime_ns: u64, tgid: u32, tid: u32) -> EventHeader {
    EventHeader {
        kind,
        // SAFETY: helper without arguments, always safe to call from a tracepoint.
        cpu: unsafe { bpf_get_smp_processor_id() },
        ktime_ns,
        pid: tgid,
        tid,
    }
}

/// Task key of process `tgid`, if tracked.
#[inline(always)]
fn task_of(tgid: u32) -> Option<u64> {
    // SAFETY: the value is copied out immediately; a concurrent delete can at worst make us read
    // a key that was just untracked, which userspace tolerates.
    unsafe { TRACKED.get(tgid).copied() }
}

/// (tgid, task key) of thread or process `tid`, if it belongs to a tracked process.
#[inline(always)]
fn resolve(tid: u32) -> Option<(u32, u64)> {
    if let Some(task) = task_of(tid) {
        return Some((tid, task));
    }
    // SAFETY: as in `task_of`, the value is copied out at once.
    let tgid = unsafe { THREADS.get(tid).copied() }?;
    task_of(tgid).map(|task| (tgid, task))
}

/// Wake the reader only for records someone waits for (`urgent`: a task's main process ended,
/// an OOM kill) or when a quarter of the ring is filled: a wake-up per record costs more than
/// the probe itself on small VMs. Userspace also drains on a timer, so the rest (process tree,
/// exec history) is read within tens of milliseconds anyway.
#[inline(always)]
fn submit_flags(urgent: bool) -> u64 {
    const AVAIL_DATA: u64 = 0;
    const NO_WAKEUP: u64 = 1;
    const FORCE_WAKEUP: u64 = 2;
    if urgent || EVENTS.query(AVAIL_DATA) >= u64::from(EVENTS_BYTES) / 4 {
        FORCE_WAKEUP
    } else {
        NO_WAKEUP
    }
}

#[inline(always)]
fn count_lost() {
    if let Some(counter) = LOST.get_ptr_mut(0) {
        // SAFETY: the pointer comes from a successful per-CPU array lookup; this CPU owns the slot
        // and tracepoint programs do not nest on one CPU for the same program.
        unsafe { *counter += 1 };
    }
}

/// Reads an integer field of 1, 2, 4 or 8 bytes (sign-extended when `SIGNED`); 0 when absent.
#[inline(always)]
fn read_int(ctx: &TracePointContext, loc: FieldLoc) -> i64 {
    if !loc.is_present() {
        return 0;
    }
    let off = usize::from(loc.offset);
    let signed = loc.flags & FieldLoc::SIGNED != 0;
    // SAFETY: `read_at` goes through bpf_probe_read_kernel, which tolerates any address; the
    // offsets come from the kernel's own `format` file for this tracepoint.
    unsafe {
        match loc.size {
            1 if signed => ctx.read_at::<i8>(off).map_or(0, i64::from),
            1 => ctx.read_at::<u8>(off).map_or(0, i64::from),
            2 if signed => ctx.read_at::<i16>(off).map_or(0, i64::from),
            2 => ctx.read_at::<u16>(off).map_or(0, i64::from),
            4 if signed => ctx.read_at::<i32>(off).map_or(0, i64::from),
            4 => ctx.read_at::<u32>(off).map_or(0, i64::from),
            8 => ctx.read_at::<i64>(off).unwrap_or(0),
            _ => 0,
        }
    }
}

/// Copies a string field (fixed `char[N]` or `__data_loc char[]`) into `dst`, NUL-terminated.
/// Returns the number of bytes before the NUL (0 when absent or unreadable).
#[inline(always)]
fn read_str(ctx: &TracePointContext, loc: FieldLoc, dst: &mut [u8]) -> u32 {
    dst[0] = 0;
    if !loc.is_present() {
        return 0;
    }
    let base = ctx.as_ptr().cast::<u8>().cast_const();
    let data_off = if loc.flags & (FieldLoc::DATA_LOC | FieldLoc::REL_LOC) != 0 {
        // SAFETY: bpf_probe_read_kernel of the 4-byte __data_loc word inside the trace record.
        let Ok(word) = (unsafe { ctx.read_at::<u32>(usize::from(loc.offset)) }) else {
            return 0;
        };
        let rel_base = if loc.flags & FieldLoc::REL_LOC != 0 {
            usize::from(loc.offset) + 4
        } else {
            0
        };
        rel_base + (word & 0xffff) as usize
    } else {
        usize::from(loc.offset)
    };
    // SAFETY: bpf_probe_read_kernel_str reads at most `dst.len()` bytes and tolerates faults;
    // the address is inside (or computed from) the trace record the kernel handed us.
    match unsafe { bpf_probe_read_kernel_str_bytes(base.wrapping_add(data_off), dst) } {
        Ok(bytes) => bytes.len() as u32,
        Err(_) => 0,
    }
}

#[inline(always)]
fn current_comm() -> [u8; COMM_LEN] {
    bpf_get_current_comm().unwrap_or([0; COMM_LEN])
}

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    let (tgid, tid) = current_ids();
    let Some(task) = task_of(tgid) else {
        return 0;
    };
    let layout = EXEC_LAYOUT.load();
    let now = now_ns();
    let old_pid = read_int(&ctx, layout.old_pid) as u32;
    if old_pid != tgid {
        // A non-leader thread exec'd and took over the leader's pid: its old tid is gone.
        let _ = THREADS.remove(old_pid);
    }
    if let Some(facts) = FACTS.get_ptr_mut(task) {
        // SAFETY: pointer from a successful lookup of a value userspace created; a racing update
        // of one u64 can at worst be lost, never corrupt memory.
        unsafe {
            if (*facts).main_pid == tgid {
                (*facts).main_exec_ktime_ns = now;
            }
        }
    }
    let Some(mut entry) = EVENTS.reserve::<ExecRecord>(0) else {
        count_lost();
        return 0;
    };
    let rec = entry.as_mut_ptr();
    // SAFETY: `rec` points to a reserved, exclusively owned ring-buffer slot of the right size
    // and alignment (8); every field is written before submit.
    unsafe {
        (*rec).header = header(kind::EXEC, now, tgid, tid);
        (*rec).pid = read_int(&ctx, layout.pid) as u32;
        (*rec).old_pid = old_pid;
        (*rec).pad = 0;
        (*rec).task = task;
        (*rec).comm = current_comm();
        (*rec).filename_len = read_str(&ctx, layout.filename, &mut (*rec).filename);
    }
    entry.submit(submit_flags(false));
    0
}

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let (tgid, tid) = current_ids();
    let Some(task) = task_of(tgid) else {
        return 0;
    };
    let layout = EXIT_LAYOUT.load();
    if tid != tgid {
        let _ = THREADS.remove(tid);
    }
    let group_dead = if layout.group_dead.is_present() {
        u8::from(read_int(&ctx, layout.group_dead) != 0)
    } else {
        ExitRecord::GROUP_DEAD_UNKNOWN
    };
    // Without `group_dead` (old kernels) the leader's exit stands for the process's.
    let process_gone = match group_dead {
        ExitRecord::GROUP_DEAD_UNKNOWN => tid == tgid,
        v => v != 0,
    };
    if !process_gone {
        return 0;
    }
    let removed = TRACKED.remove(tgid).is_ok();
    let now = now_ns();
    let mut main_gone = false;
    if let Some(facts) = FACTS.get_ptr_mut(task) {
        // SAFETY: see `sched_process_exec`; the counter is only touched atomically.
        unsafe {
            if removed {
                atomic_add(&raw mut (*facts).live_processes, -1_i64);
            }
            if (*facts).main_pid == tgid {
                (*facts).main_exit_ktime_ns = now;
                main_gone = true;
            }
        }
    }
    let Some(mut entry) = EVENTS.reserve::<ExitRecord>(0) else {
        count_lost();
        return 0;
    };
    let rec = entry.as_mut_ptr();
    // SAFETY: see `sched_process_exec`.
    unsafe {
        (*rec).header = header(kind::EXIT, now, tgid, tid);
        (*rec).pid = read_int(&ctx, layout.pid) as u32;
        (*rec).group_dead = group_dead;
        (*rec).pad = [0; 3];
        (*rec).task = task;
        (*rec).comm = [0; COMM_LEN];
        read_str(&ctx, layout.comm, &mut (*rec).comm);
    }
    entry.submit(submit_flags(main_gone));
    0
}

/// Runs in the creator's context before the new task can run, so the child is tracked before it
/// can fork, exec or exit. `clone_flags` tells threads (kept in `THREADS`) from processes.
#[tracepoint(category = "task", name = "task_newtask")]
pub fn task_newtask(ctx: TracePointContext) -> u32 {
    let (tgid, tid) = current_ids();
    let Some(task) = task_of(tgid) else {
        return 0;
    };
    let layout = NEWTASK_LAYOUT.load();
    let child = read_int(&ctx, layout.pid) as u32;
    let clone_flags = read_int(&ctx, layout.clone_flags) as u64;
    let facts = FACTS.get_ptr_mut(task);
    if clone_flags & CLONE_THREAD != 0 {
        if THREADS.insert(child, tgid, 0).is_err()
            && let Some(facts) = facts
        {
            // SAFETY: pointer from a successful lookup of a value userspace created; the
            // counter is only touched atomically.
            unsafe {
                atomic_add(&raw mut (*facts).untracked_threads, 1_u64);
            }
        }
        return 0;
    }
    if !track_child(child, task, facts) {
        return 0;
    }
    let Some(mut entry) = EVENTS.reserve::<ForkRecord>(0) else {
        count_lost();
        return 0;
    };
    let rec = entry.as_mut_ptr();
    // SAFETY: see `sched_process_exec`.
    unsafe {
        (*rec).header = header(kind::FORK, now_ns(), tgid, tid);
        (*rec).child_pid = child;
        (*rec).pad = 0;
        (*rec).clone_flags = clone_flags;
        (*rec).task = task;
        (*rec).parent_comm = current_comm();
        (*rec).child_comm = [0; COMM_LEN];
        read_str(&ctx, layout.comm, &mut (*rec).child_comm);
    }
    entry.submit(submit_flags(false));
    0
}

/// Adds `child` to `TRACKED` for `task` unless the task's share or the map is used up; counts the
/// child in the task's facts either way. False when the child is not tracked.
#[inline(always)]
fn track_child(child: u32, task: u64, facts: Option<*mut TaskFacts>) -> bool {
    let limit = TRACK_LIMITS.load().per_task;
    let Some(facts) = facts else {
        // No facts record (the task is being forgotten): track without accounting.
        return TRACKED.insert(child, task, 0).is_ok();
    };
    // SAFETY: pointer from a successful lookup of a value userspace created; the counters are
    // only touched atomically (the limit check may let a few racing forks through: the share is
    // approximate, the map's capacity is the hard bound).
    unsafe {
        let live = core::ptr::read_volatile(&raw const (*facts).live_processes);
        let within = limit == 0 || live < limit as i64;
        if within && TRACKED.insert(child, task, 0).is_ok() {
            atomic_add(&raw mut (*facts).live_processes, 1_i64);
            return true;
        }
        atomic_add(&raw mut (*facts).untracked_processes, 1_u64);
    }
    false
}

#[tracepoint(category = "signal", name = "signal_generate")]
pub fn signal_generate(ctx: TracePointContext) -> u32 {
    let layout = SIGNAL_LAYOUT.load();
    let sig = read_int(&ctx, layout.sig) as i32;
    if is_noise_signal(sig) {
        return 0;
    }
    let target = read_int(&ctx, layout.pid) as u32;
    let (sender_tgid, sender_tid) = current_ids();
    let (target_tgid, target_task) = resolve(target).unwrap_or((0, 0));
    let sender_task = task_of(sender_tgid).unwrap_or(0);
    if target_task == 0 && sender_task == 0 {
        // A task's helper is no task process, but whoever kills it ends the task: remember it.
        // SAFETY: the value is copied out at once, as in `task_of`.
        if let Some(task) = unsafe { HELPERS.get(target).copied() } {
            record_helper_signal(&ctx, &layout, task, sig, target, sender_tgid, sender_tid);
        }
        return 0;
    }
    let now = now_ns();
    let code = read_int(&ctx, layout.code) as i32;
    let result = read_int(&ctx, layout.result) as i32;
    let sender_uid = bpf_get_current_uid_gid() as u32;
    let sender_comm = current_comm();
    // Remember who reached the main process with this signal number; ignored or merged
    // (already pending) generations never change what the process will receive.
    if target_task != 0
        && (result == signal_result::DELIVERED || result == signal_result::LOSE_INFO)
        && let Some(facts) = FACTS.get_ptr_mut(target_task)
    {
        // Same mapping as `TaskFacts::signal_slot`. The mask is applied to a value the compiler
        // cannot reason about (a volatile re-read), so it stays the last operation on the very
        // register used as the index and the verifier sees the bound there; a plain range
        // check gets split across registers by the optimiser and rejected.
        let idx = sig as u32;
        let wanted = if idx < SIGNAL_SLOTS as u32 { idx } else { 0 };
        // SAFETY: reading a local through a valid reference.
        let opaque = unsafe { core::ptr::read_volatile(&raw const wanted) };
        let slot = (opaque & (SIGNAL_SLOTS as u32 - 1)) as usize;
        // SAFETY: pointer from a successful lookup; `slot` is below the array's length.
        unsafe {
            if (*facts).main_pid == target_tgid {
                (*facts).signals[slot] = SignalFact {
                    ktime_ns: now,
                    sender_task,
                    sender_pid: sender_tgid,
                    sender_tid,
                    sender_uid,
                    code,
                    sig,
                    target_tid: target,
                    sender_comm,
                };
            }
        }
    }
    let Some(mut entry) = EVENTS.reserve::<SignalRecord>(0) else {
        count_lost();
        return 0;
    };
    let rec = entry.as_mut_ptr();
    // SAFETY: see `sched_process_exec`.
    unsafe {
        (*rec).header = header(kind::SIGNAL, now, sender_tgid, sender_tid);
        (*rec).sig = sig;
        (*rec).errno = read_int(&ctx, layout.errno) as i32;
        (*rec).code = code;
        (*rec).target_pid = target;
        (*rec).group = read_int(&ctx, layout.group) as i32;
        (*rec).result = result;
        (*rec).target_tgid = target_tgid;
        (*rec).sender_uid = sender_uid;
        (*rec).target_task = target_task;
        (*rec).sender_task = sender_task;
        (*rec).target_comm = [0; COMM_LEN];
        read_str(&ctx, layout.comm, &mut (*rec).target_comm);
        (*rec).sender_comm = sender_comm;
    }
    entry.submit(submit_flags(false));
    0
}

/// Keeps the latest signal generated for a task's helper in the task's facts.
#[inline(always)]
fn record_helper_signal(
    ctx: &TracePointContext,
    layout: &SignalLayout,
    task: u64,
    sig: i32,
    target: u32,
    sender_tgid: u32,
    sender_tid: u32,
) {
    let result = read_int(ctx, layout.result) as i32;
    if result != signal_result::DELIVERED && result != signal_result::LOSE_INFO {
        return;
    }
    if let Some(facts) = FACTS.get_ptr_mut(task) {
        // SAFETY: pointer from a successful lookup of a value userspace created.
        unsafe {
            (*facts).helper_signal = SignalFact {
                ktime_ns: now_ns(),
                sender_task: task_of(sender_tgid).unwrap_or(0),
                sender_pid: sender_tgid,
                sender_tid,
                sender_uid: bpf_get_current_uid_gid() as u32,
                code: read_int(ctx, layout.code) as i32,
                sig,
                target_tid: target,
                sender_comm: current_comm(),
            };
        }
    }
}

#[tracepoint(category = "oom", name = "mark_victim")]
pub fn mark_victim(ctx: TracePointContext) -> u32 {
    let layout = OOM_LAYOUT.load();
    let victim = read_int(&ctx, layout.pid) as u32;
    let Some((victim_tgid, task)) = resolve(victim) else {
        return 0;
    };
    let (tgid, tid) = current_ids();
    let now = now_ns();
    let mut fact = OomFact {
        ktime_ns: now,
        victim_pid: victim_tgid,
        victim_tid: victim,
        total_vm_kb: read_int(&ctx, layout.total_vm) as u64,
        anon_rss_kb: read_int(&ctx, layout.anon_rss) as u64,
        file_rss_kb: read_int(&ctx, layout.file_rss) as u64,
        shmem_rss_kb: read_int(&ctx, layout.shmem_rss) as u64,
        uid: read_int(&ctx, layout.uid) as u32,
        oom_score_adj: read_int(&ctx, layout.oom_score_adj) as i16,
        pad: [0; 2],
        comm: [0; COMM_LEN],
    };
    read_str(&ctx, layout.comm, &mut fact.comm);
    if let Some(facts) = FACTS.get_ptr_mut(task) {
        // SAFETY: pointer from a successful lookup of a value userspace created.
        unsafe {
            (*facts).oom_kills = (*facts).oom_kills.wrapping_add(1);
            (*facts).last_oom = fact;
            if (*facts).main_pid == victim_tgid {
                (*facts).main_oom = fact;
            }
        }
    }
    let Some(mut entry) = EVENTS.reserve::<OomVictimRecord>(0) else {
        count_lost();
        return 0;
    };
    let rec = entry.as_mut_ptr();
    // SAFETY: see `sched_process_exec`.
    unsafe {
        (*rec).header = header(kind::OOM_VICTIM, now, tgid, tid);
        (*rec).victim_pid = victim;
        (*rec).uid = fact.uid;
        (*rec).total_vm_kb = fact.total_vm_kb;
        (*rec).anon_rss_kb = fact.anon_rss_kb;
        (*rec).file_rss_kb = fact.file_rss_kb;
        (*rec).shmem_rss_kb = fact.shmem_rss_kb;
        (*rec).pgtables_kb = read_int(&ctx, layout.pgtables) as u64;
        (*rec).oom_score_adj = fact.oom_score_adj;
        (*rec).pad = [0; 2];
        (*rec).victim_tgid = victim_tgid;
        (*rec).task = task;
        (*rec).comm = fact.comm;
    }
    entry.submit(submit_flags(true));
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// Tracepoint helpers such as `bpf_probe_read_kernel` are GPL-only.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
