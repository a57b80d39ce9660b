//! The device rules of one task as the cgroup v2 device program (`bpfexec-devices`) reads them:
//! a fixed array in the program's global `DEVICE_RULES`, filled by the driver at load time, one
//! program per task. The kernel contract is `BPF_PROG_TYPE_CGROUP_DEVICE`: the context's
//! `access_type` holds the device type (`BPF_DEVCG_DEV_*`) in its low 16 bits and the access bits
//! (`BPF_DEVCG_ACC_*`) in its high 16 bits; returning 1 allows the access, 0 refuses it (EPERM).

/// Name of the global holding a task's [`DeviceRules`].
pub const GLOBAL_DEVICE_RULES: &str = "DEVICE_RULES";
/// Name of the device program in the `bpfexec-devices` object.
pub const DEVICE_PROGRAM: &str = "bpfexec_devices";

/// Most rules one task can have: the standard nodes, devpts, and the devices Nomad assigned.
pub const DEVICE_RULES_MAX: usize = 64;

/// `BPF_DEVCG_DEV_BLOCK` and `BPF_DEVCG_DEV_CHAR`.
pub const DEV_BLOCK: u32 = 1;
pub const DEV_CHAR: u32 = 2;
/// `BPF_DEVCG_ACC_MKNOD`, `BPF_DEVCG_ACC_READ`, `BPF_DEVCG_ACC_WRITE`.
pub const ACC_MKNOD: u32 = 1;
pub const ACC_READ: u32 = 2;
pub const ACC_WRITE: u32 = 4;
/// A major or minor that matches any number.
pub const ANY: u32 = u32::MAX;

/// One allow rule: a device type, major and minor (or [`ANY`]) and the accesses allowed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceRule {
    pub kind: u32,
    pub access: u32,
    pub major: u32,
    pub minor: u32,
}

impl DeviceRule {
    pub const NONE: Self = Self {
        kind: 0,
        access: 0,
        major: 0,
        minor: 0,
    };

    /// True when this rule allows every bit of `access` on device `kind` `major`:`minor`.
    #[must_use]
    pub const fn allows(&self, kind: u32, major: u32, minor: u32, access: u32) -> bool {
        self.kind == kind
            && (self.major == ANY || self.major == major)
            && (self.minor == ANY || self.minor == minor)
            && access & !self.access == 0
    }
}

/// A task's rules: the first `count` entries of `rules` apply; everything else is refused.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceRules {
    pub count: u32,
    pub pad: u32,
    pub rules: [DeviceRule; DEVICE_RULES_MAX],
}

impl DeviceRules {
    pub const EMPTY: Self = Self {
        count: 0,
        pad: 0,
        rules: [DeviceRule::NONE; DEVICE_RULES_MAX],
    };

    /// The decision the program makes (shared so userspace tests it).
    #[must_use]
    pub fn allows(&self, kind: u32, major: u32, minor: u32, access: u32) -> bool {
        let n = (self.count as usize).min(DEVICE_RULES_MAX);
        self.rules[..n]
            .iter()
            .any(|r| r.allows(kind, major, minor, access))
    }
}

const _: () = {
    assert!(core::mem::size_of::<DeviceRule>() == 16);
    assert!(core::mem::size_of::<DeviceRules>() == 8 + 16 * DEVICE_RULES_MAX);
};

#[cfg(feature = "user")]
mod pod {
    // SAFETY: both are `#[repr(C)]`, `Copy`, made only of `u32`s (every bit pattern is valid)
    // with no implicit padding (the size assertions above).
    unsafe impl aya::Pod for super::DeviceRule {}
    // SAFETY: see above (an array of padding-free rules after two `u32`s).
    unsafe impl aya::Pod for super::DeviceRules {}
}
