//! cgroup v2 device control: the task's device rules (the same list the v1 devices cgroup gets)
//! are written into an instance of the `bpfexec-devices` `BPF_PROG_TYPE_CGROUP_DEVICE` program
//! (loaded by aya), which is attached to the task's cgroup with `BPF_PROG_ATTACH` before the task
//! joins it, without `BPF_F_ALLOW_OVERRIDE` or `BPF_F_ALLOW_MULTI`, so cgroups the task nests
//! inside its own inherit it and cannot replace it. The kernel keeps a program attached that way
//! for as long as the cgroup exists, like systemd's and runc's device programs: it outlives the
//! plugin and goes when Nomad removes the task's cgroup. (aya 0.14 attaches through a bpf_link
//! on kernels from 5.7, which would detach when the plugin's last descriptor closes.)

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use aya::EbpfLoader;
use aya::programs::{CgroupDevice, ProgramFd};
use bpfexec_common::devices::{
    ACC_MKNOD, ACC_READ, ACC_WRITE, ANY, DEV_BLOCK, DEV_CHAR, DEVICE_PROGRAM, DEVICE_RULES_MAX,
    DeviceRule as BpfRule, DeviceRules, GLOBAL_DEVICE_RULES,
};

use super::devices::DeviceRule;

/// The device program object built by `build.rs` (empty when built with `AYA_BUILD_SKIP=1`).
fn embedded_object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bpfexec-devices"))
}

/// Why the device program could not be put on a task's cgroup.
#[derive(Debug, thiserror::Error)]
pub enum DeviceProgramError {
    #[error("the driver was built without its eBPF programs (AYA_BUILD_SKIP)")]
    NotBuilt,
    #[error("the task has {0} device rules; at most {DEVICE_RULES_MAX} fit the device program")]
    TooManyRules(usize),
    #[error("loading the cgroup device program: {0}")]
    Load(String),
    #[error("attaching the cgroup device program to {path}: {source}")]
    Attach {
        path: String,
        source: std::io::Error,
    },
}

/// True when the driver carries the device program.
#[must_use]
pub fn built() -> bool {
    !embedded_object().is_empty()
}

/// The program's form of `rules`.
pub fn bpf_rules(rules: &[DeviceRule]) -> Result<DeviceRules, DeviceProgramError> {
    if rules.len() > DEVICE_RULES_MAX {
        return Err(DeviceProgramError::TooManyRules(rules.len()));
    }
    let mut out = DeviceRules::EMPTY;
    for (slot, rule) in out.rules.iter_mut().zip(rules) {
        let access = if rule.access.is_empty() {
            "rwm"
        } else {
            rule.access.as_str()
        };
        let number = |n: Option<u64>| n.map_or(ANY, |n| u32::try_from(n).unwrap_or(ANY));
        *slot = BpfRule {
            kind: if rule.block { DEV_BLOCK } else { DEV_CHAR },
            access: access.chars().fold(0, |acc, c| {
                acc | match c {
                    'r' => ACC_READ,
                    'w' => ACC_WRITE,
                    'm' => ACC_MKNOD,
                    _ => 0,
                }
            }),
            major: number(rule.major),
            minor: number(rule.minor),
        };
    }
    out.count = rules.len() as u32;
    Ok(out)
}

/// Device programs loaded so far, by their rules, for the plugin's life: most tasks share a rule
/// set (the standard nodes), and loading an instance (object, BTF, verifier) costs far more than
/// attaching one (about 126 ms against a few µs in a debug build on this machine's 6.18). A
/// cgroup keeps its own reference to what is attached, so evicting a set detaches nothing.
static LOADED: Mutex<Vec<(Vec<DeviceRule>, ProgramFd)>> = Mutex::new(Vec::new());

/// Rule sets [`LOADED`] keeps (the oldest is dropped first).
const LOADED_KEPT: usize = 32;

fn load_error(e: &dyn std::fmt::Display) -> DeviceProgramError {
    DeviceProgramError::Load(e.to_string())
}

/// Loads an instance of the device program holding `rules`.
fn load(rules: &[DeviceRule]) -> Result<ProgramFd, DeviceProgramError> {
    let object = embedded_object();
    if object.is_empty() {
        return Err(DeviceProgramError::NotBuilt);
    }
    let rules = bpf_rules(rules)?;
    // No kernel BTF: the program has no CO-RE relocations, and `EbpfLoader::new` would parse
    // all of /sys/kernel/btf/vmlinux (135 ms in a debug build here).
    let mut ebpf = EbpfLoader::new()
        .btf(None)
        .override_global(GLOBAL_DEVICE_RULES, &rules, true)
        .load(object)
        .map_err(|e| load_error(&e))?;
    let program: &mut CgroupDevice = ebpf
        .program_mut(DEVICE_PROGRAM)
        .ok_or_else(|| load_error(&format!("no program {DEVICE_PROGRAM} in the object")))?
        .try_into()
        .map_err(|e| load_error(&e))?;
    program.load().map_err(|e| load_error(&e))?;
    // The clone keeps the program loaded once `ebpf` is dropped.
    program
        .fd()
        .map_err(|e| load_error(&e))?
        .try_clone()
        .map_err(|e| load_error(&e))
}

/// A loaded program holding `rules`: the one loaded for the same rules before, or a new one.
fn program_for(rules: &[DeviceRule]) -> Result<ProgramFd, DeviceProgramError> {
    let mut loaded = LOADED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((_, fd)) = loaded.iter().find(|(r, _)| r.as_slice() == rules) {
        return fd.try_clone().map_err(|e| load_error(&e));
    }
    let fd = load(rules)?;
    if loaded.len() >= LOADED_KEPT {
        loaded.remove(0);
    }
    loaded.push((rules.to_vec(), fd.try_clone().map_err(|e| load_error(&e))?));
    Ok(fd)
}

/// Attaches a device program holding `rules` to the cgroup directory `dir`.
pub fn attach(dir: &Path, rules: &[DeviceRule]) -> Result<(), DeviceProgramError> {
    let prog_fd = program_for(rules)?;
    let cgroup = File::open(dir).map_err(|source| DeviceProgramError::Attach {
        path: dir.display().to_string(),
        source,
    })?;
    prog_attach(cgroup.as_fd().as_raw_fd(), prog_fd.as_fd().as_raw_fd()).map_err(|source| {
        DeviceProgramError::Attach {
            path: dir.display().to_string(),
            source,
        }
    })
}

/// `bpf(BPF_PROG_ATTACH)` of a device program to a cgroup, no flags (see the module docs).
fn prog_attach(cgroup_fd: i32, prog_fd: i32) -> std::io::Result<()> {
    /// The `BPF_PROG_ATTACH` part of `union bpf_attr` (linux/bpf.h).
    #[repr(C)]
    struct ProgAttach {
        target_fd: u32,
        attach_bpf_fd: u32,
        attach_type: u32,
        attach_flags: u32,
        replace_bpf_fd: u32,
    }
    /// `enum bpf_cmd`: BPF_PROG_ATTACH; `enum bpf_attach_type`: BPF_CGROUP_DEVICE.
    const BPF_PROG_ATTACH: libc::c_long = 8;
    const BPF_CGROUP_DEVICE: u32 = 6;
    let attr = ProgAttach {
        target_fd: cgroup_fd as u32,
        attach_bpf_fd: prog_fd as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: 0,
        replace_bpf_fd: 0,
    };
    // SAFETY: bpf(2) reads `size` bytes of a `union bpf_attr` prefix from a valid, initialised
    // struct that lives for the call; both descriptors are open for its duration.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &raw const attr,
            std::mem::size_of::<ProgAttach>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_rules_become_program_rules_with_the_same_meaning() {
        let v1 = [
            DeviceRule {
                block: false,
                major: Some(1),
                minor: Some(3),
                access: String::new(),
            },
            DeviceRule {
                block: false,
                major: Some(136),
                minor: None,
                access: "rw".into(),
            },
            DeviceRule {
                block: true,
                major: Some(7),
                minor: Some(0),
                access: "r".into(),
            },
        ];
        let rules = bpf_rules(&v1).expect("rules");
        assert_eq!(rules.count, 3);
        assert!(rules.allows(DEV_CHAR, 1, 3, ACC_READ | ACC_WRITE | ACC_MKNOD));
        assert!(rules.allows(DEV_CHAR, 136, 9, ACC_WRITE));
        assert!(!rules.allows(DEV_CHAR, 136, 9, ACC_MKNOD));
        assert!(rules.allows(DEV_BLOCK, 7, 0, ACC_READ));
        assert!(!rules.allows(DEV_BLOCK, 7, 0, ACC_WRITE), "read-only");
        assert!(!rules.allows(DEV_CHAR, 7, 0, ACC_READ), "type matters");
        assert!(!rules.allows(DEV_CHAR, 10, 237, ACC_READ), "unlisted");
        let too_many = vec![v1[0].clone(); DEVICE_RULES_MAX + 1];
        assert!(matches!(
            bpf_rules(&too_many),
            Err(DeviceProgramError::TooManyRules(_))
        ));
    }
}
