//! The plugin's agent-side configuration (`plugin "nomad-driver-bpfexec" { config {} }`), decoded
//! from the cty-msgpack bytes Nomad sends in SetConfig and validated with errors that name the
//! offending field. Option names and defaults follow Nomad's exec driver and client.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::ConfigError;
use super::ranges::IdRanges;
use super::task::{NsMode, SeccompChoice};

pub const DEFAULT_STATE_DIR: &str = "/run/bpfexec";

/// Docker's default capabilities minus NET_RAW, as Nomad's exec allows by default.
pub const DEFAULT_ALLOW_CAPS: [&str; 13] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// Host paths bind-mounted (read-only) into every isolated task, as exec's default chroot_env.
pub const DEFAULT_CHROOT_ENV: [&str; 9] = [
    "/bin",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/run/resolvconf",
    "/run/systemd/resolve",
    "/sbin",
    "/usr",
];

#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    clippy::struct_excessive_bools,
    reason = "each is an independent operator switch, named as in the plugin block"
)]
pub struct PluginConfig {
    /// Where per-task supervisor state lives (spec, exit records, logs, mount points).
    pub state_dir: PathBuf,
    pub default_pid_mode: NsMode,
    pub default_ipc_mode: NsMode,
    /// Capability names without `CAP_`, upper case; `ALL` allowed.
    pub allow_caps: Vec<String>,
    pub denied_host_uids: IdRanges,
    pub denied_host_gids: IdRanges,
    /// Host path → path inside the task.
    pub chroot_env: BTreeMap<String, String>,
    pub no_pivot_root: bool,
    pub allow_unisolated: bool,
    /// Run isolated tasks even where no mechanism can enforce their device rules (no v1 devices
    /// controller, no cgroup); the fingerprint then says `driver.bpfexec.devices = unenforced`.
    pub allow_unrestricted_devices: bool,
    /// Isolated tasks may run as uid 0 (refused by default, as Nomad refuses root for exec).
    pub allow_root: bool,
    /// Seccomp profile of isolated tasks that do not set `seccomp`.
    pub default_seccomp: SeccompChoice,
    /// bpffs directory where the probes pin their maps and links, so task tracking survives
    /// driver restarts; empty string disables pinning.
    pub bpf_pin_dir: Option<PathBuf>,
    /// Address of the local JSON endpoint (`/v1/tasks`, `/v1/tree`, `/v1/observer`); None = off.
    pub http_addr: Option<std::net::SocketAddr>,
    /// How often running tasks' processes are checked for having left the task's cgroup; zero
    /// turns the check off (processes that outlive their task are still killed).
    pub escape_check_interval: std::time::Duration,
    /// systemd-journald's native socket, for tasks with `logging { driver = "journald" }`.
    pub journald_socket: PathBuf,
    /// Ephemeral users (`ephemeral_uid_range`, `default_ephemeral_user`); None: off.
    pub ephemeral: Option<EphemeralUsers>,
    /// How long a destroyed task's metric series stay.
    pub metrics_retention: std::time::Duration,
    /// OTLP trace export (the `otlp` block, else the `OTEL_EXPORTER_OTLP_*` environment); None:
    /// off.
    pub otlp: Option<crate::telemetry::traces::OtlpConfig>,
    /// Capacity of the probes' tracked-process map (live processes of all tasks together).
    pub tracked_processes: u32,
    /// Entries of that map one task may hold; its further processes are counted, not tracked.
    pub tracked_processes_per_task: u32,
    /// Where tracefs is (mounted there when it is not); None: `/sys/kernel/tracing`, then
    /// `/sys/kernel/debug/tracing`, mounting at the first.
    pub tracefs_dir: Option<PathBuf>,
    /// Where bpffs is mounted when `bpf_pin_dir` is below it and it is not mounted yet.
    pub bpffs_dir: PathBuf,
    /// Stay healthy when the probes cannot load (tasks then run without kernel observation) or
    /// cannot pin their state (it then does not survive plugin restarts).
    pub allow_unobserved: bool,
}

/// Smallest accepted `tracked_processes` (a few tasks' worth).
pub const MIN_TRACKED_PROCESSES: u32 = 64;
/// Largest accepted `tracked_processes`: the kernel's highest `pid_max` (2^22).
pub const MAX_TRACKED_PROCESSES: u32 = 1 << 22;

/// The plugin's ephemeral-user settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EphemeralUsers {
    /// The uids (each task gets uid = gid = one of them), first and last.
    pub range: (u32, u32),
    /// Tasks without a `user` run as an ephemeral user unless they set `ephemeral_user = false`.
    pub by_default: bool,
}

/// journald's native protocol socket (systemd's default path).
pub const DEFAULT_JOURNALD_SOCKET: &str = "/run/systemd/journal/socket";

/// Default of `escape_check_interval` (HCL text and value).
pub const DEFAULT_ESCAPE_CHECK: &str = "2s";

impl Default for PluginConfig {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            default_pid_mode: NsMode::Private,
            default_ipc_mode: NsMode::Private,
            allow_caps: DEFAULT_ALLOW_CAPS.iter().map(|s| (*s).to_owned()).collect(),
            denied_host_uids: IdRanges::default(),
            denied_host_gids: IdRanges::default(),
            chroot_env: DEFAULT_CHROOT_ENV
                .iter()
                .map(|p| ((*p).to_owned(), (*p).to_owned()))
                .collect(),
            no_pivot_root: false,
            allow_unisolated: false,
            allow_unrestricted_devices: false,
            allow_root: false,
            default_seccomp: SeccompChoice::Default,
            bpf_pin_dir: Some(PathBuf::from(crate::probes::pin::DEFAULT_PIN_ROOT)),
            http_addr: None,
            escape_check_interval: std::time::Duration::from_nanos(
                crate::observer::DEFAULT_ESCAPE_CHECK_NS,
            ),
            journald_socket: PathBuf::from(DEFAULT_JOURNALD_SOCKET),
            ephemeral: None,
            metrics_retention: crate::telemetry::metrics::DEFAULT_RETENTION,
            otlp: None,
            tracked_processes: bpfexec_common::TRACKED_MAX,
            tracked_processes_per_task: bpfexec_common::TRACKED_PER_TASK_DEFAULT,
            tracefs_dir: None,
            bpffs_dir: PathBuf::from(crate::probes::pin::BPFFS_MOUNT),
            allow_unobserved: false,
        }
    }
}

#[derive(Debug, Deserialize)]
struct Raw {
    state_dir: Option<String>,
    default_pid_mode: Option<String>,
    default_ipc_mode: Option<String>,
    allow_caps: Option<Vec<String>>,
    denied_host_uids: Option<String>,
    denied_host_gids: Option<String>,
    chroot_env: Option<BTreeMap<String, String>>,
    no_pivot_root: Option<bool>,
    allow_unisolated: Option<bool>,
    allow_unrestricted_devices: Option<bool>,
    allow_root: Option<bool>,
    default_seccomp: Option<String>,
    bpf_pin_dir: Option<String>,
    http_addr: Option<String>,
    escape_check_interval: Option<String>,
    journald_socket: Option<String>,
    ephemeral_uid_range: Option<String>,
    default_ephemeral_user: Option<bool>,
    metrics_retention: Option<String>,
    otlp: Option<crate::telemetry::traces::RawOtlp>,
    #[serde(flatten)]
    probe: ProbeRaw,
}

impl PluginConfig {
    /// Decodes and validates; empty bytes (no config block) give the defaults. OTLP settings may
    /// also come from the process environment (`OTEL_EXPORTER_OTLP_*`).
    pub fn decode(msgpack: &[u8]) -> Result<Self, ConfigError> {
        Self::decode_with_env(msgpack, &|k| std::env::var(k).ok())
    }

    /// [`PluginConfig::decode`] with the environment looked up through `env`.
    pub fn decode_with_env(
        msgpack: &[u8],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut cfg = Self::default();
        if msgpack.is_empty() {
            cfg.otlp = crate::telemetry::traces::OtlpConfig::resolve(None, env)?;
            return Ok(cfg);
        }
        let raw: Raw = super::decode_msgpack(msgpack, "plugin config")?;
        if let Some(dir) = raw.state_dir.filter(|d| !d.is_empty()) {
            let dir = PathBuf::from(dir);
            if !dir.is_absolute() {
                return Err(ConfigError::Invalid {
                    field: "state_dir",
                    problem: format!("{:?} is a relative path", dir.display().to_string()),
                    fix: "give an absolute directory, e.g. state_dir = \"/run/bpfexec\"".into(),
                });
            }
            cfg.state_dir = dir;
        }
        if let Some(m) = raw.default_pid_mode.filter(|m| !m.is_empty()) {
            cfg.default_pid_mode = NsMode::parse("default_pid_mode", &m)?;
        }
        if let Some(m) = raw.default_ipc_mode.filter(|m| !m.is_empty()) {
            cfg.default_ipc_mode = NsMode::parse("default_ipc_mode", &m)?;
        }
        if let Some(caps) = raw.allow_caps {
            cfg.allow_caps = caps
                .iter()
                .map(|c| crate::isolation::caps::normalize(c).map_err(|problem| ConfigError::Invalid {
                    field: "allow_caps",
                    problem,
                    fix: "use capability names such as \"chown\" or \"CAP_NET_BIND_SERVICE\", or \"all\"".into(),
                }))
                .collect::<Result<_, _>>()?;
        }
        if let Some(r) = raw.denied_host_uids {
            cfg.denied_host_uids = IdRanges::parse("denied_host_uids", &r)?;
        }
        if let Some(r) = raw.denied_host_gids {
            cfg.denied_host_gids = IdRanges::parse("denied_host_gids", &r)?;
        }
        if let Some(env) = raw.chroot_env {
            for (host, task) in &env {
                if !host.starts_with('/') || !task.starts_with('/') {
                    return Err(ConfigError::Invalid {
                        field: "chroot_env",
                        problem: format!("{host:?} = {task:?} is not a pair of absolute paths"),
                        fix: "map absolute host paths to absolute task paths, e.g. chroot_env { \"/usr\" = \"/usr\" }".into(),
                    });
                }
            }
            cfg.chroot_env = env;
        }
        if let Some(dir) = raw.bpf_pin_dir {
            cfg.bpf_pin_dir = if dir.is_empty() {
                None
            } else if dir.starts_with('/') {
                Some(PathBuf::from(dir))
            } else {
                return Err(ConfigError::Invalid {
                    field: "bpf_pin_dir",
                    problem: format!("{dir:?} is a relative path"),
                    fix: "give a directory on bpffs, e.g. bpf_pin_dir = \"/sys/fs/bpf/bpfexec\", or \"\" to disable pinning".into(),
                });
            };
        }
        if let Some(addr) = raw.http_addr.filter(|a| !a.is_empty()) {
            cfg.http_addr = Some(addr.parse().map_err(|_| ConfigError::Invalid {
                field: "http_addr",
                problem: format!("{addr:?} is not an address"),
                fix: "give ip:port, e.g. http_addr = \"127.0.0.1:4649\"".into(),
            })?);
        }
        if let Some(every) = raw.escape_check_interval.filter(|e| !e.is_empty()) {
            cfg.escape_check_interval = super::duration::parse("escape_check_interval", &every)?;
        }
        if let Some(sock) = journald_socket(raw.journald_socket)? {
            cfg.journald_socket = sock;
        }
        cfg.ephemeral = ephemeral_users(
            raw.ephemeral_uid_range,
            raw.default_ephemeral_user,
            &cfg.denied_host_uids,
        )?;
        if let Some(keep) = raw.metrics_retention.filter(|e| !e.is_empty()) {
            cfg.metrics_retention = super::duration::parse("metrics_retention", &keep)?;
        }
        cfg.otlp = crate::telemetry::traces::OtlpConfig::resolve(raw.otlp, env)?;
        cfg.no_pivot_root = raw.no_pivot_root.unwrap_or(false);
        cfg.allow_unisolated = raw.allow_unisolated.unwrap_or(false);
        cfg.allow_unrestricted_devices = raw.allow_unrestricted_devices.unwrap_or(false);
        cfg.allow_root = raw.allow_root.unwrap_or(false);
        if let Some(choice) = raw.default_seccomp.filter(|c| !c.is_empty()) {
            cfg.default_seccomp = SeccompChoice::parse("default_seccomp", &choice)?;
        }
        cfg.probe_options(raw.probe)?;
        Ok(cfg)
    }

    /// The probes' options: kernel filesystems and the tracked-process map.
    fn probe_options(&mut self, raw: ProbeRaw) -> Result<(), ConfigError> {
        self.tracefs_dir = absolute_dir("tracefs_dir", raw.tracefs_dir, "/sys/kernel/tracing")?;
        if let Some(dir) = absolute_dir("bpffs_dir", raw.bpffs_dir, "/sys/fs/bpf")? {
            self.bpffs_dir = dir;
        }
        self.allow_unobserved = raw.allow_unobserved.unwrap_or(false);
        (self.tracked_processes, self.tracked_processes_per_task) = tracked_limits(
            raw.tracked_processes
                .map(|n| n.as_i64("tracked_processes"))
                .transpose()?,
            raw.tracked_processes_per_task
                .map(|n| n.as_i64("tracked_processes_per_task"))
                .transpose()?,
        )?;
        Ok(())
    }
}

/// The raw probe options (see [`PluginConfig::probe_options`]).
#[derive(Debug, Deserialize)]
struct ProbeRaw {
    tracefs_dir: Option<String>,
    bpffs_dir: Option<String>,
    allow_unobserved: Option<bool>,
    tracked_processes: Option<super::number::Number>,
    tracked_processes_per_task: Option<super::number::Number>,
}

/// An optional absolute directory option (empty: unset).
fn absolute_dir(
    field: &'static str,
    raw: Option<String>,
    example: &str,
) -> Result<Option<PathBuf>, ConfigError> {
    match raw.filter(|d| !d.is_empty()) {
        None => Ok(None),
        Some(d) if d.starts_with('/') => Ok(Some(PathBuf::from(d))),
        Some(d) => Err(ConfigError::Invalid {
            field,
            problem: format!("{d:?} is a relative path"),
            fix: format!("give an absolute directory, e.g. {field} = \"{example}\""),
        }),
    }
}

/// `tracked_processes` and `tracked_processes_per_task`: a capacity in
/// [`MIN_TRACKED_PROCESSES`]..=[`MAX_TRACKED_PROCESSES`] and a share of it. Without a share, a
/// task may hold a quarter of the capacity.
fn tracked_limits(total: Option<i64>, per_task: Option<i64>) -> Result<(u32, u32), ConfigError> {
    let total = match total {
        None => bpfexec_common::TRACKED_MAX,
        Some(n) => u32::try_from(n)
            .ok()
            .filter(|n| (MIN_TRACKED_PROCESSES..=MAX_TRACKED_PROCESSES).contains(n))
            .ok_or_else(|| ConfigError::Invalid {
                field: "tracked_processes",
                problem: format!("{n} is out of range"),
                fix: format!(
                    "give a number of processes from {MIN_TRACKED_PROCESSES} to {MAX_TRACKED_PROCESSES} (default {})",
                    bpfexec_common::TRACKED_MAX
                ),
            })?,
    };
    let per_task = match per_task {
        None => (total / 4).max(1),
        Some(n) => u32::try_from(n)
            .ok()
            .filter(|n| (1..=total).contains(n))
            .ok_or_else(|| ConfigError::Invalid {
                field: "tracked_processes_per_task",
                problem: format!("{n} is not between 1 and tracked_processes ({total})"),
                fix: format!(
                    "give at most tracked_processes ({total}); by default a task may hold a quarter of it ({})",
                    (total / 4).max(1)
                ),
            })?,
    };
    Ok((total, per_task))
}

/// `journald_socket`: an absolute path, or None for the default.
fn journald_socket(raw: Option<String>) -> Result<Option<PathBuf>, ConfigError> {
    let Some(sock) = raw.filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    if !sock.starts_with('/') {
        return Err(ConfigError::Invalid {
            field: "journald_socket",
            problem: format!("{sock:?} is a relative path"),
            fix: format!(
                "give journald's native socket, e.g. journald_socket = \"{DEFAULT_JOURNALD_SOCKET}\" (or /run/systemd/journal.<namespace>/socket)"
            ),
        });
    }
    Ok(Some(PathBuf::from(sock)))
}

/// `ephemeral_uid_range` and `default_ephemeral_user`; the default needs a range.
fn ephemeral_users(
    range: Option<String>,
    by_default: Option<bool>,
    denied: &IdRanges,
) -> Result<Option<EphemeralUsers>, ConfigError> {
    let by_default = by_default.unwrap_or(false);
    match range.filter(|r| !r.trim().is_empty()) {
        Some(range) => Ok(Some(EphemeralUsers {
            range: ephemeral_range(&range, denied)?,
            by_default,
        })),
        None if by_default => Err(ConfigError::Invalid {
            field: "default_ephemeral_user",
            problem: "is true but ephemeral_uid_range is not set".into(),
            fix: "set ephemeral_uid_range = \"<first>-<last>\" to the uids tasks may get, e.g. \"61184-65519\"".into(),
        }),
        None => Ok(None),
    }
}

/// Parses `ephemeral_uid_range` ("first-last"): a range of unprivileged ids that the plugin's
/// `denied_host_uids` does not forbid (an ephemeral task's gid is its uid).
fn ephemeral_range(text: &str, denied: &IdRanges) -> Result<(u32, u32), ConfigError> {
    let bad = |problem: String| {
        ConfigError::Invalid {
        field: "ephemeral_uid_range",
        problem,
        fix: "give one range of unused ids above 1000, e.g. ephemeral_uid_range = \"61184-65519\" (systemd's DynamicUser range)".into(),
    }
    };
    let (lo, hi) = text
        .split_once('-')
        .and_then(|(a, b)| Some((a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?)))
        .ok_or_else(|| bad(format!("{text:?} is not a range \"first-last\"")))?;
    if lo > hi || lo <= 1000 || hi >= u32::MAX - 1 {
        return Err(bad(format!("{text:?} is not a range of unprivileged ids")));
    }
    if let Some(id) = denied.first_in(lo, hi) {
        return Err(bad(format!(
            "{text:?} includes uid {id}, which denied_host_uids forbids"
        )));
    }
    Ok((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::enc;
    use rmpv::Value;

    /// Decodes without looking at this process's environment.
    fn decode(bytes: &[u8]) -> Result<PluginConfig, ConfigError> {
        PluginConfig::decode_with_env(bytes, &|_| None)
    }

    #[test]
    fn empty_config_gives_exec_defaults() {
        let cfg = decode(&[]).expect("decode");
        assert_eq!(cfg, PluginConfig::default());
        assert_eq!(cfg.default_pid_mode, NsMode::Private);
        assert!(cfg.allow_caps.contains(&"CHOWN".to_owned()));
        assert!(!cfg.allow_caps.contains(&"NET_RAW".to_owned()));
        assert_eq!(cfg.chroot_env.get("/usr").map(String::as_str), Some("/usr"));
        assert!(!cfg.allow_unisolated);
        assert_eq!(
            super::super::duration::parse("x", DEFAULT_ESCAPE_CHECK).expect("default"),
            cfg.escape_check_interval
        );
    }

    #[test]
    fn nulls_give_defaults_and_values_are_used() {
        let nulls = enc(vec![
            ("state_dir", Value::Nil),
            ("allow_caps", Value::Nil),
            ("no_pivot_root", Value::Nil),
        ]);
        assert_eq!(decode(&nulls).expect("decode"), PluginConfig::default());
        let set = enc(vec![
            ("state_dir", "/tmp/x".into()),
            ("default_pid_mode", "host".into()),
            (
                "allow_caps",
                Value::Array(vec!["chown".into(), "CAP_NET_RAW".into()]),
            ),
            ("denied_host_uids", "0-999".into()),
            (
                "chroot_env",
                Value::Map(vec![("/usr".into(), "/usr".into())]),
            ),
            ("no_pivot_root", true.into()),
            ("allow_unisolated", true.into()),
            ("allow_unrestricted_devices", true.into()),
            ("escape_check_interval", "500ms".into()),
            ("allow_root", true.into()),
            ("default_seccomp", "unconfined".into()),
            ("journald_socket", "/run/systemd/journal.t/socket".into()),
            ("ephemeral_uid_range", "70000-70009".into()),
            ("default_ephemeral_user", true.into()),
            ("tracked_processes", 1000.into()),
        ]);
        let cfg = decode(&set).expect("decode");
        assert_eq!(
            (cfg.tracked_processes, cfg.tracked_processes_per_task),
            (1000, 250)
        );
        assert_eq!(
            cfg.escape_check_interval,
            std::time::Duration::from_millis(500)
        );
        assert_eq!(cfg.state_dir, PathBuf::from("/tmp/x"));
        assert_eq!(cfg.default_pid_mode, NsMode::Host);
        assert_eq!(cfg.allow_caps, vec!["CHOWN", "NET_RAW"]);
        assert!(cfg.denied_host_uids.contains(0));
        assert_eq!(cfg.chroot_env.len(), 1);
        assert!(cfg.no_pivot_root && cfg.allow_unisolated && cfg.allow_unrestricted_devices);
        assert!(cfg.allow_root);
        assert_eq!(cfg.default_seccomp, SeccompChoice::Unconfined);
        assert_eq!(
            cfg.journald_socket,
            PathBuf::from("/run/systemd/journal.t/socket")
        );
        assert_eq!(
            cfg.ephemeral,
            Some(EphemeralUsers {
                range: (70_000, 70_009),
                by_default: true
            })
        );
        let overlap = enc(vec![
            ("denied_host_uids", "70005".into()),
            ("ephemeral_uid_range", "70000-70009".into()),
        ]);
        let err = PluginConfig::decode(&overlap)
            .expect_err("overlap")
            .to_string();
        assert!(err.contains("denied_host_uids"), "{err}");
    }

    #[test]
    fn otlp_block_and_environment() {
        let set = enc(vec![
            ("metrics_retention", "30s".into()),
            (
                "otlp",
                Value::Map(vec![
                    ("endpoint".into(), "http://127.0.0.1:4318".into()),
                    ("protocol".into(), "http/protobuf".into()),
                    ("headers".into(), Value::Nil),
                    ("timeout".into(), Value::Nil),
                    ("max_process_spans".into(), 50.into()),
                ]),
            ),
        ]);
        let cfg = PluginConfig::decode_with_env(&set, &|_| None).expect("decode");
        assert_eq!(cfg.metrics_retention, std::time::Duration::from_secs(30));
        let otlp = cfg.otlp.expect("on");
        assert_eq!(otlp.endpoint, "http://127.0.0.1:4318/v1/traces");
        assert_eq!(otlp.max_process_spans, 50);
        let env =
            |k: &str| (k == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://c:4317".to_owned());
        let cfg = PluginConfig::decode_with_env(&[], &env).expect("decode");
        assert_eq!(
            cfg.otlp.expect("on from the environment").endpoint,
            "http://c:4317"
        );
        let none = enc(vec![("otlp", Value::Nil)]);
        assert!(
            PluginConfig::decode_with_env(&none, &|_| None)
                .expect("decode")
                .otlp
                .is_none()
        );
    }

    #[test]
    fn invalid_values_name_the_field() {
        for (field, value) in [
            ("state_dir", Value::from("relative/dir")),
            ("state_dir", Value::from(5)),
            ("default_ipc_mode", Value::from("shareable")),
            ("allow_caps", Value::Array(vec!["not_a_cap".into()])),
            ("denied_host_gids", Value::from("10-1")),
            ("escape_check_interval", Value::from("soon")),
            ("default_seccomp", Value::from("relative.json")),
            ("journald_socket", Value::from("run/journal")),
            ("ephemeral_uid_range", Value::from("0-100")),
            ("ephemeral_uid_range", Value::from("70000")),
            ("default_ephemeral_user", Value::from(true)),
            ("metrics_retention", Value::from("a while")),
            ("tracked_processes", Value::from(10)),
            ("tracked_processes", Value::from(-1)),
            ("tracked_processes_per_task", Value::from(0)),
            ("tracked_processes_per_task", Value::from(70_000)),
            ("tracefs_dir", Value::from("sys/kernel/tracing")),
            ("bpffs_dir", Value::from("bpf")),
            (
                "otlp",
                Value::Map(vec![("endpoint".into(), "localhost:4317".into())]),
            ),
            (
                "chroot_env",
                Value::Map(vec![("usr".into(), "/usr".into())]),
            ),
        ] {
            let err = PluginConfig::decode_with_env(&enc(vec![(field, value)]), &|_| None)
                .expect_err("must fail")
                .to_string();
            assert!(err.contains(field), "{field}: {err}");
        }
    }
}
