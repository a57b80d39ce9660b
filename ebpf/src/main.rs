//! Thin tracepoint probes: read the fields the driver located in the tracefs `format` files
//! (passed in as `*_LAYOUT` globals), fill one fixed-size `bpfexec-common` record, and submit it to
//! the `EVENTS` ring buffer. When the ring buffer is full the per-CPU `LOST` counter is bumped.
//! No attribution or policy here: that lives in the driver.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext, Global,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns,
        bpf_probe_read_kernel_str_bytes,
    },
    macros::{map, tracepoint},
    maps::{PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use bpfexec_common::{
    COMM_LEN, EventHeader, ExecLayout, ExecRecord, ExitLayout, ExitRecord, FieldLoc, ForkLayout,
    ForkRecord, OomLayout, OomVictimRecord, SignalLayout, SignalRecord, kind,
};

/// 1 MiB of records (a power-of-two multiple of the page size, as the kernel requires).
const EVENTS_BYTES: u32 = 1 << 20;

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

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
static FORK_LAYOUT: Global<ForkLayout> = Global::new(ForkLayout {
    parent_comm: FieldLoc::ABSENT,
    parent_pid: FieldLoc::ABSENT,
    child_comm: FieldLoc::ABSENT,
    child_pid: FieldLoc::ABSENT,
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
fn header(kind: u32) -> EventHeader {
    let pid_tgid = bpf_get_current_pid_tgid();
    EventHeader {
        kind,
        // SAFETY: helper without arguments, always safe to call from a tracepoint.
        cpu: unsafe { bpf_get_smp_processor_id() },
        // SAFETY: helper without arguments, always safe to call from a tracepoint.
        ktime_ns: unsafe { bpf_ktime_get_ns() },
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
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
    let layout = EXEC_LAYOUT.load();
    let Some(mut entry) = EVENTS.reserve::<ExecRecord>(0) else {
        count_lost();
        return 0;
    };
    let rec = entry.as_mut_ptr();
    // SAFETY: `rec` points to a reserved, exclusively owned ring-buffer slot of the right size
    // and alignment (8); every field is written before submit.
    unsafe {
        (*rec).header = header(kind::EXEC);
        (*rec).pid = read_int(&ctx, layout.pid) as u32;
        (*rec).old_pid = read_int(&ctx, layout.old_pid) as u32;
        (*rec).pad = 0;
        (*rec).comm = current_comm();
        (*rec).filename_len = read_str(&ctx, layout.filename, &mut (*rec).filename);
    }
    entry.submit(0);
    0
}

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let layout = EXIT_LAYOUT.load();
    let Some(mut entry) = EVENTS.reserve::<ExitRecord>(0) else {
        count_lost();
        return 0;
    };
    let rec = entry.as_mut_ptr();
    // SAFETY: see `sched_process_exec`.
    unsafe {
        (*rec).header = header(kind::EXIT);
        (*rec).pid = read_int(&ctx, layout.pid) as u32;
        (*rec).group_dead = if layout.group_dead.is_present() {
            u8::from(read_int(&ctx, layout.group_dead) != 0)
        } else {
            ExitRecord::GROUP_DEAD_UNKNOWN
        };
        (*rec).pad = [0; 3];
        (*rec).comm = [0; COMM_LEN];
        read_str(&ctx, layout.comm, &mut (*rec).comm);
    }
    entry.submit(0);
    0
}

#[tracepoint(category = "sched", name = "sched_process_fork")]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    let layout = FORK_LAYOUT.load();
    let Some(mut entry) = EVENTS.reserve::<ForkRecord>(0) else {
        count_lost();
        return 0;
    };
    let rec = entry.as_mut_ptr();
    // SAFETY: see `sched_process_exec`.
    unsafe {
        (*rec).header = header(kind::FORK);
        (*rec).parent_pid = read_int(&ctx, layout.parent_pid) as u32;
        (*rec).child_pid = read_int(&ctx, layout.child_pid) as u32;
        (*rec).parent_comm = [0; COMM_LEN];
        (*rec).child_comm = [0; COMM_LEN];
        read_str(&ctx, layout.parent_comm, &mut (*rec).parent_comm);
        read_str(&ctx, layout.child_comm, &mut (*rec).child_comm);
    }
    entry.submit(0);
    0
}

#[tracepoint(category = "signal", name = "signal_generate")]
pub fn signal_generate(ctx: TracePointContext) -> u32 {
    let layout = SIGNAL_LAYOUT.load();
    let Some(mut entry) = EVENTS.reserve::<SignalRecord>(0) else {
        count_lost();
        return 0;
    };
    let rec = entry.as_mut_ptr();
    // SAFETY: see `sched_process_exec`.
    unsafe {
        (*rec).header = header(kind::SIGNAL);
        (*rec).sig = read_int(&ctx, layout.sig) as i32;
        (*rec).errno = read_int(&ctx, layout.errno) as i32;
        (*rec).code = read_int(&ctx, layout.code) as i32;
        (*rec).target_pid = read_int(&ctx, layout.pid) as u32;
        (*rec).group = read_int(&ctx, layout.group) as i32;
        (*rec).result = read_int(&ctx, layout.result) as i32;
        (*rec).target_comm = [0; COMM_LEN];
        read_str(&ctx, layout.comm, &mut (*rec).target_comm);
        (*rec).sender_comm = current_comm();
    }
    entry.submit(0);
    0
}

#[tracepoint(category = "oom", name = "mark_victim")]
pub fn mark_victim(ctx: TracePointContext) -> u32 {
    let layout = OOM_LAYOUT.load();
    let Some(mut entry) = EVENTS.reserve::<OomVictimRecord>(0) else {
        count_lost();
        return 0;
    };
    let rec = entry.as_mut_ptr();
    // SAFETY: see `sched_process_exec`.
    unsafe {
        (*rec).header = header(kind::OOM_VICTIM);
        (*rec).victim_pid = read_int(&ctx, layout.pid) as u32;
        (*rec).uid = read_int(&ctx, layout.uid) as u32;
        (*rec).total_vm_kb = read_int(&ctx, layout.total_vm) as u64;
        (*rec).anon_rss_kb = read_int(&ctx, layout.anon_rss) as u64;
        (*rec).file_rss_kb = read_int(&ctx, layout.file_rss) as u64;
        (*rec).shmem_rss_kb = read_int(&ctx, layout.shmem_rss) as u64;
        (*rec).pgtables_kb = read_int(&ctx, layout.pgtables) as u64;
        (*rec).oom_score_adj = read_int(&ctx, layout.oom_score_adj) as i16;
        (*rec).pad = [0; 6];
        (*rec).comm = [0; COMM_LEN];
        read_str(&ctx, layout.comm, &mut (*rec).comm);
    }
    entry.submit(0);
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
