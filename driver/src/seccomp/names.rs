//! System call names and numbers of the machine's architecture (and of the 32-bit ABI a 64-bit
//! x86 kernel also accepts), from the `syscall-numbers` tables.

use std::collections::HashMap;
use std::sync::LazyLock;

#[cfg(target_arch = "x86_64")]
use syscall_numbers::x86_64 as native;

#[cfg(target_arch = "aarch64")]
use syscall_numbers::aarch64 as native;

/// `AUDIT_ARCH_*` of the native ABI (linux/audit.h).
#[cfg(target_arch = "x86_64")]
pub const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
pub const AUDIT_ARCH: u32 = 0xC000_00B7;

/// `AUDIT_ARCH_I386`.
pub const AUDIT_ARCH_I386: u32 = 0x4000_0003;

/// How OCI profiles name this architecture (`architectures`).
#[cfg(target_arch = "x86_64")]
pub const SCMP_ARCH_NAMES: &[&str] = &["SCMP_ARCH_X86_64"];
#[cfg(target_arch = "aarch64")]
pub const SCMP_ARCH_NAMES: &[&str] = &["SCMP_ARCH_AARCH64"];

/// How Docker profiles name this architecture (`includes.arches`).
#[cfg(target_arch = "x86_64")]
pub const DOCKER_ARCH_NAMES: &[&str] = &["amd64", "x86_64"];
#[cfg(target_arch = "aarch64")]
pub const DOCKER_ARCH_NAMES: &[&str] = &["arm64", "aarch64"];

/// Highest syscall number the tables are scanned for.
const MAX_NR: i64 = 1024;

static BY_NAME: LazyLock<HashMap<&'static str, i64>> = LazyLock::new(|| {
    (0..MAX_NR)
        .filter_map(|nr| native::sys_call_name(nr as libc::c_long).map(|n| (n, nr)))
        .filter(|(n, _)| !n.is_empty())
        .collect()
});

/// The native number of syscall `name`, if this architecture has it.
pub fn number(name: &str) -> Option<i64> {
    BY_NAME.get(name).copied()
}

/// A readable name for syscall `nr` of audit architecture `arch`: `keyctl`, `i386 syscall 5`
/// (`open`), or `syscall 999`.
pub fn describe(arch: u32, nr: i32) -> String {
    if arch == AUDIT_ARCH {
        if let Some(name) = native::sys_call_name(libc::c_long::from(nr)) {
            return name.to_owned();
        }
        return format!("syscall {nr}");
    }
    #[cfg(target_arch = "x86_64")]
    if arch == AUDIT_ARCH_I386 {
        return match syscall_numbers::x86::sys_call_name(libc::c_long::from(nr)) {
            Some(name) => format!("{name} (32-bit x86)"),
            None => format!("32-bit x86 syscall {nr}"),
        };
    }
    format!("syscall {nr} of architecture {arch:#x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let nr = number("keyctl").expect("keyctl");
        assert_eq!(describe(AUDIT_ARCH, nr as i32), "keyctl");
        assert!(number("no_such_call").is_none());
        assert_eq!(describe(AUDIT_ARCH, 100_000), "syscall 100000");
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn x86_numbers() {
        assert_eq!(number("bpf"), Some(321));
        assert_eq!(number("clone3"), Some(435));
        assert!(describe(AUDIT_ARCH_I386, 5).contains("open"));
    }
}
