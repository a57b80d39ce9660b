//! The ring buffer's lost-record counter straight from the driver's pinned per-CPU `LOST` map
//! (`<bpf_pin_dir>/v<N>/maps/LOST`, key 0, one `u64` per possible CPU), read with `bpf(2)`
//! `BPF_OBJ_GET` (read-only) and `BPF_MAP_LOOKUP_ELEM`.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The pinned `LOST` map of the driver whose `bpf_pin_dir` is `pin_dir`
/// (`<pin_dir>/v<N>/maps/LOST`).
pub fn lost_map_path(pin_dir: &Path) -> Result<PathBuf> {
    let entries =
        fs::read_dir(pin_dir).with_context(|| format!("listing {}", pin_dir.display()))?;
    let mut found = Vec::new();
    for e in entries.flatten() {
        let p = e.path().join("maps").join("LOST");
        if e.file_name().to_string_lossy().starts_with('v') && p.exists() {
            found.push(p);
        }
    }
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("no v*/maps/LOST under {}", pin_dir.display()),
        many => bail!("several pin layouts under {}: {many:?}", pin_dir.display()),
    }
}

/// Number of possible CPUs (`/sys/devices/system/cpu/possible`, e.g. `0-1` or `0,2-3`): the
/// number of values a per-CPU map lookup returns.
pub fn possible_cpus() -> Result<usize> {
    let text = fs::read_to_string("/sys/devices/system/cpu/possible")
        .context("reading /sys/devices/system/cpu/possible")?;
    let mut n = 0;
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        n += if let Some((a, b)) = part.split_once('-') {
            b.parse::<usize>()? - a.parse::<usize>()? + 1
        } else {
            part.parse::<usize>()?;
            1
        };
    }
    Ok(n)
}

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_F_RDONLY: u32 = 1 << 3;

/// `union bpf_attr`, large enough for the two commands used here.
#[repr(C, align(8))]
struct BpfAttr([u8; 128]);

impl BpfAttr {
    fn put_u32(&mut self, at: usize, v: u32) {
        self.0[at..at + 4].copy_from_slice(&v.to_ne_bytes());
    }
    fn put_u64(&mut self, at: usize, v: u64) {
        self.0[at..at + 8].copy_from_slice(&v.to_ne_bytes());
    }
}

fn bpf(cmd: libc::c_long, attr: &mut BpfAttr) -> std::io::Result<libc::c_long> {
    // SAFETY: bpf(2) reads (and for some commands writes) at most `size` bytes of the attr
    // union through a valid, exclusive pointer; pointers inside it point to live buffers of
    // the sizes the kernel expects (see the callers).
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.0.as_mut_ptr(),
            std::mem::size_of::<BpfAttr>(),
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Sum over CPUs of the pinned per-CPU `LOST` counter (key 0, one `u64` per CPU): the records
/// the probes dropped because the ring buffer was full.
pub fn lost_events(pin_dir: &Path) -> Result<u64> {
    use std::os::fd::{FromRawFd as _, OwnedFd};
    use std::os::unix::ffi::OsStrExt as _;

    let path = lost_map_path(pin_dir)?;
    let cpath = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let mut attr = BpfAttr([0; 128]);
    // struct { __aligned_u64 pathname; __u32 bpf_fd; __u32 file_flags; ... }
    attr.put_u64(0, cpath.as_ptr() as u64);
    attr.put_u32(12, BPF_F_RDONLY);
    let fd =
        bpf(BPF_OBJ_GET, &mut attr).with_context(|| format!("BPF_OBJ_GET {}", path.display()))?;
    let fd = i32::try_from(fd)?;
    // SAFETY: BPF_OBJ_GET returned a new file descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let cpus = possible_cpus()?;
    let key: u32 = 0;
    let mut values = vec![0u64; cpus];
    let mut attr = BpfAttr([0; 128]);
    // struct { __u32 map_fd; (pad) __aligned_u64 key; __aligned_u64 value; __u64 flags; }
    attr.put_u32(0, u32::try_from(std::os::fd::AsRawFd::as_raw_fd(&fd))?);
    attr.put_u64(8, std::ptr::from_ref(&key) as u64);
    attr.put_u64(16, values.as_mut_ptr() as u64);
    bpf(BPF_MAP_LOOKUP_ELEM, &mut attr)
        .with_context(|| format!("BPF_MAP_LOOKUP_ELEM {} key 0", path.display()))?;
    Ok(values.iter().sum())
}
