//! Seccomp profiles as rules over syscall numbers: bpfexec's built-in default (Docker's default
//! profile in spirit, written as a deny list so ordinary programs keep every call they use), and
//! OCI profiles read from JSON (the runtime-spec `linux.seccomp` object, plus Docker's
//! `includes`/`excludes` by capability, architecture and kernel version, so Docker's own
//! `default.json` can be used as it is).

use std::collections::BTreeSet;

use serde::Deserialize;

use super::SeccompError;
use super::names;

/// What a filter does with a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    Allow,
    /// Fails with EPERM and is reported (through the task helper's seccomp listener).
    Deny,
    /// Fails with this errno, silently (e.g. ENOSYS for clone3, so libc falls back to clone).
    Errno(u32),
    Log,
    Trace(u32),
    Trap,
    KillThread,
    KillProcess,
}

/// One comparison of a syscall argument (64-bit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cond {
    pub index: u8,
    pub op: Op,
    pub value: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// `(arg & mask) == value`.
    MaskedEq(u64),
}

/// `action` for syscall `nr` when all `conds` hold (no conditions: always).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub nr: i64,
    pub conds: Vec<Cond>,
    pub action: Action,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// Action for calls no rule matches.
    pub default: Action,
    pub rules: Vec<Rule>,
}

/// Calls the default profile refuses unless the task holds one of the capabilities (names
/// without `CAP_`; an empty list: always refused). Each group says what it protects.
const DENIED: &[(&[&str], &[&str])] = &[
    // The kernel keyring is not namespaced: keys of the host and of other tasks.
    (&["add_key", "keyctl", "request_key"], &[]),
    // Replacing or rebooting the running kernel.
    (&["kexec_load", "kexec_file_load", "reboot"], &["SYS_BOOT"]),
    // Loading kernel code.
    (
        &[
            "init_module",
            "finit_module",
            "delete_module",
            "create_module",
            "query_module",
            "get_kernel_syms",
        ],
        &["SYS_MODULE"],
    ),
    // eBPF and perf: kernel attack surface and a view of other processes.
    (&["bpf"], &["SYS_ADMIN", "BPF"]),
    (&["perf_event_open"], &["SYS_ADMIN", "PERFMON"]),
    // Mounts and namespaces (unprivileged user namespaces are the usual way in).
    (
        &[
            "mount",
            "umount2",
            "pivot_root",
            "move_mount",
            "open_tree",
            "fsopen",
            "fsconfig",
            "fsmount",
            "fspick",
            "mount_setattr",
            "setns",
            "unshare",
            "quotactl",
            "quotactl_fd",
            "swapon",
            "swapoff",
            "fanotify_init",
            "lookup_dcookie",
            "nfsservctl",
        ],
        &["SYS_ADMIN"],
    ),
    (&["acct"], &["SYS_PACCT"]),
    (&["syslog"], &["SYSLOG"]),
    (&["iopl", "ioperm"], &["SYS_RAWIO"]),
    (&["open_by_handle_at"], &["DAC_READ_SEARCH"]),
    (
        &["settimeofday", "clock_settime", "clock_adjtime", "stime"],
        &["SYS_TIME"],
    ),
    (&["userfaultfd"], &["SYS_PTRACE"]),
    (&["vhangup"], &["SYS_TTY_CONFIG"]),
    // io_uring bypasses syscall filtering for the operations it performs.
    (
        &["io_uring_setup", "io_uring_enter", "io_uring_register"],
        &[],
    ),
    // Obsolete interfaces nobody needs.
    (
        &["sysfs", "_sysctl", "uselib", "ustat", "vm86", "vm86old"],
        &[],
    ),
];

/// clone(2) flags that create namespaces.
const NAMESPACE_FLAGS: [u64; 7] = [
    0x0002_0000, // CLONE_NEWNS
    0x0200_0000, // CLONE_NEWCGROUP
    0x0400_0000, // CLONE_NEWUTS
    0x0800_0000, // CLONE_NEWIPC
    0x1000_0000, // CLONE_NEWUSER
    0x2000_0000, // CLONE_NEWPID
    0x4000_0000, // CLONE_NEWNET
];

/// Names of the calls the default profile refuses for a task with `caps` (for the README and
/// tests).
pub fn default_denied(caps: &[String]) -> Vec<&'static str> {
    let has = |c: &&str| caps.iter().any(|h| h == c || h == "ALL");
    DENIED
        .iter()
        .filter(|(_, unless)| !unless.iter().any(has))
        .flat_map(|(names, _)| names.iter().copied())
        .collect()
}

impl Profile {
    /// The built-in profile for a task holding `caps` (upper-case names without `CAP_`).
    pub fn builtin(caps: &[String]) -> Self {
        let mut rules: Vec<Rule> = default_denied(caps)
            .into_iter()
            .filter_map(names::number)
            .map(|nr| Rule {
                nr,
                conds: Vec::new(),
                action: Action::Deny,
            })
            .collect();
        let sys_admin = caps.iter().any(|c| c == "SYS_ADMIN" || c == "ALL");
        if !sys_admin {
            if let Some(clone) = names::number("clone") {
                // clone's flags are its first argument on every architecture we build for.
                rules.extend(NAMESPACE_FLAGS.iter().map(|flag| Rule {
                    nr: clone,
                    conds: vec![Cond {
                        index: 0,
                        op: Op::MaskedEq(*flag),
                        value: *flag,
                    }],
                    action: Action::Deny,
                }));
            }
            if let Some(clone3) = names::number("clone3") {
                // Its flags sit in memory a filter cannot read. ENOSYS (not EPERM) makes libc
                // fall back to clone, whose flags the rules above check.
                rules.push(Rule {
                    nr: clone3,
                    conds: Vec::new(),
                    action: Action::Errno(libc::ENOSYS as u32),
                });
            }
        }
        Self {
            default: Action::Allow,
            rules,
        }
    }

    /// Parses an OCI seccomp profile for a task holding `caps`.
    pub fn from_oci_json(text: &str, caps: &[String]) -> Result<Self, SeccompError> {
        let oci: OciProfile =
            serde_json::from_str(text).map_err(|e| SeccompError::Profile(e.to_string()))?;
        let default_errno = oci.default_errno_ret.unwrap_or(libc::EPERM as u32);
        let default = action(&oci.default_action, Some(default_errno), default_errno)?;
        if !oci.architectures.is_empty()
            && !oci
                .architectures
                .iter()
                .any(|a| names::SCMP_ARCH_NAMES.contains(&a.as_str()))
        {
            return Err(SeccompError::Profile(format!(
                "it lists the architectures {:?}, none of which is this machine's ({})",
                oci.architectures,
                std::env::consts::ARCH
            )));
        }
        let kernel = kernel_version();
        let mut rules = Vec::new();
        for (i, sc) in oci.syscalls.iter().enumerate() {
            if !applies(&sc.includes, &sc.excludes, caps, kernel) {
                continue;
            }
            let act = action(&sc.action, sc.errno_ret, default_errno)
                .map_err(|e| SeccompError::Profile(format!("syscalls[{i}]: {e}")))?;
            let conds = sc
                .args
                .iter()
                .map(cond)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| SeccompError::Profile(format!("syscalls[{i}]: {e}")))?;
            let all_names: BTreeSet<&str> = sc
                .names
                .iter()
                .map(String::as_str)
                .chain(sc.name.as_deref())
                .collect();
            // Names this architecture does not have are skipped, as runc does.
            for nr in all_names.into_iter().filter_map(names::number) {
                rules.push(Rule {
                    nr,
                    conds: conds.clone(),
                    action: act,
                });
            }
        }
        Ok(Self { default, rules })
    }
}

fn action(name: &str, errno: Option<u32>, default_errno: u32) -> Result<Action, SeccompError> {
    Ok(match name {
        "SCMP_ACT_ALLOW" => Action::Allow,
        "SCMP_ACT_ERRNO" => match errno.unwrap_or(default_errno) {
            e if e == libc::EPERM as u32 => Action::Deny,
            e => Action::Errno(e),
        },
        "SCMP_ACT_NOTIFY" => Action::Deny,
        "SCMP_ACT_LOG" => Action::Log,
        "SCMP_ACT_TRACE" => Action::Trace(errno.unwrap_or(0)),
        "SCMP_ACT_TRAP" => Action::Trap,
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => Action::KillThread,
        "SCMP_ACT_KILL_PROCESS" => Action::KillProcess,
        other => {
            return Err(SeccompError::Profile(format!(
                "unknown action {other:?} (use SCMP_ACT_ALLOW, SCMP_ACT_ERRNO, SCMP_ACT_KILL_PROCESS, …)"
            )));
        }
    })
}

fn cond(a: &OciArg) -> Result<Cond, SeccompError> {
    let index = u8::try_from(a.index)
        .ok()
        .filter(|i| *i < 6)
        .ok_or_else(|| SeccompError::Profile(format!("argument index {} is not 0-5", a.index)))?;
    let (op, value) = match a.op.as_str() {
        "SCMP_CMP_EQ" => (Op::Eq, a.value),
        "SCMP_CMP_NE" => (Op::Ne, a.value),
        "SCMP_CMP_LT" => (Op::Lt, a.value),
        "SCMP_CMP_LE" => (Op::Le, a.value),
        "SCMP_CMP_GT" => (Op::Gt, a.value),
        "SCMP_CMP_GE" => (Op::Ge, a.value),
        "SCMP_CMP_MASKED_EQ" => (Op::MaskedEq(a.value), a.value_two),
        other => {
            return Err(SeccompError::Profile(format!(
                "unknown comparison {other:?}"
            )));
        }
    };
    Ok(Cond { index, op, value })
}

/// Docker's `includes` / `excludes`: all included capabilities held, this architecture included,
/// the kernel at least `minKernel`; no excluded capability held, this architecture not excluded.
fn applies(inc: &OciFilter, exc: &OciFilter, caps: &[String], kernel: (u32, u32)) -> bool {
    let has = |c: &String| {
        let c = c.trim_start_matches("CAP_");
        caps.iter().any(|h| h == c || h == "ALL")
    };
    let this_arch = |a: &String| names::DOCKER_ARCH_NAMES.contains(&a.as_str());
    inc.caps.iter().all(has)
        && (inc.arches.is_empty() || inc.arches.iter().any(this_arch))
        && inc
            .min_kernel
            .as_deref()
            .and_then(parse_version)
            .is_none_or(|min| kernel >= min)
        && !exc.caps.iter().any(has)
        && !exc.arches.iter().any(this_arch)
}

fn parse_version(v: &str) -> Option<(u32, u32)> {
    let mut it = v.split(['.', '-']);
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

fn kernel_version() -> (u32, u32) {
    nix::sys::utsname::uname()
        .ok()
        .and_then(|u| parse_version(&u.release().to_string_lossy()))
        .unwrap_or((0, 0))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OciProfile {
    default_action: String,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    syscalls: Vec<OciSyscall>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OciSyscall {
    #[serde(default)]
    names: Vec<String>,
    /// Docker's older one-name form.
    #[serde(default)]
    name: Option<String>,
    action: String,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Vec<OciArg>,
    #[serde(default)]
    includes: OciFilter,
    #[serde(default)]
    excludes: OciFilter,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OciFilter {
    #[serde(default)]
    caps: Vec<String>,
    #[serde(default)]
    arches: Vec<String>,
    #[serde(default)]
    min_kernel: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OciArg {
    index: u32,
    value: u64,
    #[serde(default)]
    value_two: u64,
    op: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn builtin_denies_by_capability() {
        let plain = default_denied(&caps(&["CHOWN"]));
        for name in [
            "bpf",
            "keyctl",
            "mount",
            "unshare",
            "kexec_load",
            "init_module",
        ] {
            assert!(plain.contains(&name), "{name}");
        }
        let admin = default_denied(&caps(&["SYS_ADMIN"]));
        assert!(!admin.contains(&"mount") && !admin.contains(&"bpf"));
        assert!(admin.contains(&"keyctl"), "the keyring stays refused");
        let p = Profile::builtin(&caps(&[]));
        let clone = names::number("clone").expect("clone");
        assert_eq!(p.rules.iter().filter(|r| r.nr == clone).count(), 7);
        let clone3 = names::number("clone3").expect("clone3");
        assert!(
            p.rules
                .iter()
                .any(|r| r.nr == clone3 && r.action == Action::Errno(libc::ENOSYS as u32))
        );
        assert!(
            Profile::builtin(&caps(&["SYS_ADMIN"]))
                .rules
                .iter()
                .all(|r| r.nr != clone && r.nr != clone3)
        );
    }

    #[test]
    fn oci_profile_with_docker_extensions() {
        let json = r#"{
          "defaultAction": "SCMP_ACT_ERRNO",
          "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"],
          "syscalls": [
            {"names": ["read", "write", "no_such_call"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38,
             "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["bpf"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_BPF"]}}
          ]
        }"#;
        let p = Profile::from_oci_json(json, &caps(&["CHOWN"])).expect("parse");
        assert_eq!(p.default, Action::Deny);
        let read = names::number("read").expect("read");
        assert!(
            p.rules
                .iter()
                .any(|r| r.nr == read && r.action == Action::Allow)
        );
        let bpf = names::number("bpf").expect("bpf");
        assert!(p.rules.iter().all(|r| r.nr != bpf), "bpf needs CAP_BPF");
        assert!(p.rules.iter().any(|r| r.action == Action::Errno(38)));
        let pers = p
            .rules
            .iter()
            .find(|r| Some(r.nr) == names::number("personality"))
            .expect("personality");
        assert_eq!(pers.conds[0].value, 8);
        let admin = Profile::from_oci_json(json, &caps(&["SYS_ADMIN", "BPF"])).expect("parse");
        assert!(admin.rules.iter().all(|r| r.action != Action::Errno(38)));
        assert!(admin.rules.iter().any(|r| r.nr == bpf));
    }

    #[test]
    fn bad_profiles_say_what_is_wrong() {
        for (json, needle) in [
            ("{", "EOF"),
            (r#"{"defaultAction": "SCMP_ACT_MAYBE"}"#, "SCMP_ACT_MAYBE"),
            (
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_PPC"]}"#,
                "architectures",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"],
                   "action": "SCMP_ACT_ERRNO", "args": [{"index": 9, "value": 1, "op": "SCMP_CMP_EQ"}]}]}"#,
                "index 9",
            ),
        ] {
            let e = Profile::from_oci_json(json, &[])
                .expect_err(json)
                .to_string();
            assert!(e.contains(needle), "{e}");
        }
    }
}
