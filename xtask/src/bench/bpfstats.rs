//! Kernel-measured run time of the bpfexec probes. `bpf(BPF_ENABLE_STATS, BPF_STATS_RUN_TIME)`
//! (Linux >= 5.8) turns on per-program `run_time_ns` / `run_cnt` accounting for as long as the
//! returned fd stays open (closing it, or exiting, turns it back off). Our probes are the
//! programs our plugin process holds (program fds, link fds) plus those behind the bpffs-pinned
//! links in the pin directory it holds open (`<dir>/links/<hash>/<program>`, opened with
//! `BPF_OBJ_GET`; with pinning, a restarted driver keeps the attachments, and programs, of an
//! earlier one and may hold no program fd at all). Their counters are read by id
//! (`BPF_PROG_GET_FD_BY_ID`, then `/proc/self/fdinfo/<fd>`). This is the exact CPU the probes
//! spend, free of the machine noise that wall-clock comparisons suffer from.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::path::Path;

use anyhow::{Result, bail};

/// `enum bpf_cmd` values used here.
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_ENABLE_STATS: libc::c_long = 32;
/// `enum bpf_stats_type`: BPF_STATS_RUN_TIME.
const BPF_STATS_RUN_TIME: u32 = 0;

/// Keeps run-time statistics on while alive.
pub struct StatsGuard {
    _fd: OwnedFd,
}

/// `union bpf_attr` as used by BPF_ENABLE_STATS: one `__u32 type`.
#[repr(C)]
struct EnableStatsAttr {
    kind: u32,
}

/// Turns BPF run-time statistics on until the guard is dropped.
pub fn enable() -> Result<StatsGuard> {
    let attr = EnableStatsAttr {
        kind: BPF_STATS_RUN_TIME,
    };
    // SAFETY: bpf(2) reads `size_of::<EnableStatsAttr>()` bytes from a valid, initialised
    // struct that lives across the call; it returns a new fd (owned below) or -1.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_ENABLE_STATS,
            &raw const attr,
            std::mem::size_of::<EnableStatsAttr>(),
        )
    };
    match owned(ret) {
        Some(fd) => Ok(StatsGuard { _fd: fd }),
        None => bail!(
            "bpf(BPF_ENABLE_STATS) failed: {}",
            std::io::Error::last_os_error()
        ),
    }
}

/// Summed counters of a set of programs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProgStats {
    pub programs: u32,
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

impl ProgStats {
    pub fn since(self, earlier: ProgStats) -> ProgStats {
        ProgStats {
            programs: self.programs,
            run_time_ns: self.run_time_ns.saturating_sub(earlier.run_time_ns),
            run_cnt: self.run_cnt.saturating_sub(earlier.run_cnt),
        }
    }
}

fn text_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(name))
        .map(str::trim)
}

fn field(info: &str, name: &str) -> u64 {
    text_field(info, name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Wraps a non-negative bpf(2) result as an owned fd.
fn owned(ret: libc::c_long) -> Option<OwnedFd> {
    let fd = i32::try_from(ret).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fdinfo_of(fd: &OwnedFd) -> String {
    std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).unwrap_or_default()
}

/// `union bpf_attr` for BPF_OBJ_GET.
#[repr(C)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// Opens a pinned bpffs object.
fn obj_get(path: &Path) -> Option<OwnedFd> {
    let c_path = CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    let attr = ObjGetAttr {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    // SAFETY: bpf(2) reads the struct and the NUL-terminated path it points to; both live
    // across the call.
    owned(unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &raw const attr,
            std::mem::size_of::<ObjGetAttr>(),
        )
    })
}

/// `union bpf_attr` for BPF_PROG_GET_FD_BY_ID.
#[repr(C)]
struct IdAttr {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

fn prog_by_id(id: u32) -> Option<OwnedFd> {
    let attr = IdAttr {
        id,
        next_id: 0,
        open_flags: 0,
    };
    // SAFETY: bpf(2) reads `size_of::<IdAttr>()` bytes of a valid struct that outlives the call.
    owned(unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_GET_FD_BY_ID,
            &raw const attr,
            std::mem::size_of::<IdAttr>(),
        )
    })
}

/// `union bpf_attr` for BPF_OBJ_GET_INFO_BY_FD.
#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The program's name from `struct bpf_prog_info` (bytes 64..80, NUL-padded; the kernel keeps
/// at most 15 characters, so `sched_process_exec` and `_exit` both read `sched_process_e`).
fn prog_name(fd: &OwnedFd) -> Option<String> {
    // 80 bytes of `struct bpf_prog_info`, 8-byte aligned.
    let mut info = [0u64; 10];
    let attr = InfoAttr {
        bpf_fd: u32::try_from(fd.as_raw_fd()).ok()?,
        info_len: std::mem::size_of_val(&info) as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: bpf(2) writes at most `info_len` bytes into `info`, which outlives the call, and
    // reads the attr struct.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &raw const attr,
            std::mem::size_of::<InfoAttr>(),
        )
    };
    if ret != 0 {
        return None;
    }
    let bytes: Vec<u8> = info[8..10].iter().flat_map(|w| w.to_ne_bytes()).collect();
    let name: String = bytes
        .iter()
        .take_while(|b| **b != 0)
        .map(|b| char::from(*b))
        .collect();
    (!name.is_empty()).then_some(name)
}

/// `prog_id`s in the fdinfo of every pinned link under `<dir>/links/*/`, named after the link.
fn pinned_link_progs(dir: &Path, ids: &mut BTreeMap<u32, String>) {
    let Ok(sets) = std::fs::read_dir(dir.join("links")) else {
        return;
    };
    for set in sets.flatten() {
        for link in std::fs::read_dir(set.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Some(fd) = obj_get(&link.path())
                && let Some(id) =
                    text_field(&fdinfo_of(&fd), "prog_id:").and_then(|v| v.parse::<u32>().ok())
            {
                ids.insert(id, link.file_name().to_string_lossy().into_owned());
            }
        }
    }
}

/// Ids (with names where a pinned link tells them) of the probe programs of the plugin
/// processes `pids` (see the module docs).
pub fn probe_ids(pids: &[i32]) -> BTreeMap<u32, String> {
    let mut ids = BTreeMap::new();
    for pid in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let name = target.to_string_lossy();
            if name == "anon_inode:bpf-prog" || name == "anon_inode:bpf_link" {
                let info = std::fs::read_to_string(format!(
                    "/proc/{pid}/fdinfo/{}",
                    fd.file_name().to_string_lossy()
                ))
                .unwrap_or_default();
                if let Some(id) = text_field(&info, "prog_id:").and_then(|v| v.parse::<u32>().ok())
                {
                    ids.entry(id).or_insert_with(|| {
                        let name = prog_by_id(id).as_ref().and_then(prog_name);
                        format!("{} (id {id})", name.as_deref().unwrap_or("?"))
                    });
                }
            } else if target.starts_with("/sys/fs/bpf") && target.is_dir() {
                pinned_link_progs(&target, &mut ids);
            }
        }
    }
    ids
}

/// Counters of a set of programs: their sum and each program's by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Probes {
    pub total: ProgStats,
    pub by_name: BTreeMap<String, ProgStats>,
}

impl Probes {
    pub fn since(&self, earlier: &Probes) -> Probes {
        Probes {
            total: self.total.since(earlier.total),
            by_name: self
                .by_name
                .iter()
                .map(|(name, now)| {
                    let then = earlier.by_name.get(name).copied().unwrap_or_default();
                    (name.clone(), now.since(then))
                })
                .collect(),
        }
    }
}

/// Counters of the programs `ids` (id → name).
pub fn read(ids: &BTreeMap<u32, String>) -> Probes {
    let mut probes = Probes::default();
    for (id, name) in ids {
        if let Some(fd) = prog_by_id(*id) {
            let info = fdinfo_of(&fd);
            let one = ProgStats {
                programs: 1,
                run_time_ns: field(&info, "run_time_ns:"),
                run_cnt: field(&info, "run_cnt:"),
            };
            probes.total.programs += 1;
            probes.total.run_time_ns += one.run_time_ns;
            probes.total.run_cnt += one.run_cnt;
            let slot = probes.by_name.entry(name.clone()).or_default();
            slot.programs += 1;
            slot.run_time_ns += one.run_time_ns;
            slot.run_cnt += one.run_cnt;
        }
    }
    probes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fdinfo_fields() {
        let info = "pos:\t0\nprog_type:\t5\nrun_time_ns:\t1234\nrun_cnt:\t7\n";
        assert_eq!(field(info, "run_time_ns:"), 1234);
        assert_eq!(field(info, "run_cnt:"), 7);
        assert_eq!(field(info, "missing:"), 0);
        assert_eq!(text_field("prog_tag:\tab12\n", "prog_tag:"), Some("ab12"));
    }
}
