//! cgroup v2 device control (`BPF_PROG_TYPE_CGROUP_DEVICE`): one instance per task, attached to
//! the task's cgroup, allows a device access only when one of the task's rules (the global
//! `DEVICE_RULES`, written by the driver at load time) allows every requested access bit on that
//! device type and number; anything else gets EPERM, as with the v1 devices controller's
//! "deny all, then allow" list. The rule logic is `DeviceRule::allows`, shared with userspace.
#![no_std]
#![no_main]

use aya_ebpf::{macros::cgroup_device, programs::DeviceContext};
use bpfexec_common::devices::{DEVICE_RULES_MAX, DeviceRules};

/// The task's rules; overridden by the loader (`GLOBAL_DEVICE_RULES`).
#[unsafe(no_mangle)]
static DEVICE_RULES: DeviceRules = DeviceRules::EMPTY;

#[cgroup_device]
pub fn bpfexec_devices(ctx: DeviceContext) -> i32 {
    // SAFETY: the kernel passes the program a valid `bpf_cgroup_dev_ctx` for the access it checks.
    let dev = unsafe { &*ctx.device };
    // The kernel packs `(access << 16) | type` (__cgroup_bpf_check_dev_permission).
    let kind = dev.access_type & 0xffff;
    let access = dev.access_type >> 16;
    let rules = &raw const DEVICE_RULES;
    // SAFETY: reads of our own read-only global; volatile, so the value the loader wrote is used
    // rather than the compile-time default. One rule at a time keeps the BPF stack small.
    let count = unsafe { core::ptr::read_volatile(&raw const (*rules).count) } as usize;
    let mut i = 0;
    while i < DEVICE_RULES_MAX {
        if i >= count {
            break;
        }
        // SAFETY: as above; `i` is below DEVICE_RULES_MAX.
        let rule = unsafe { core::ptr::read_volatile(&raw const (*rules).rules[i]) };
        if rule.allows(kind, dev.major, dev.minor, access) {
            return 1;
        }
        i += 1;
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
