//! A job task's `config {}` for `driver = "bpfexec"`, decoded from cty-msgpack and validated.
//! Names and meanings follow Nomad's exec driver; `isolation`, `signal_all_processes` and
//! `oom_score_adj` are ours; raw_exec's cgroup overrides and the systemd driver's limits, group,
//! logging, images and ephemeral users are decoded by their own modules.

use serde::Deserialize;

use super::ConfigError;
use super::images::{self, Images};
use super::logging::{self, LogDriver};
use super::number::Number;
use super::overrides::{self, CgroupOverride};
use super::resources::{self, ExtraLimits};

/// Namespace mode for `pid_mode` / `ipc_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NsMode {
    Private,
    Host,
}

impl NsMode {
    pub fn parse(field: &'static str, value: &str) -> Result<Self, ConfigError> {
        match value {
            "private" => Ok(Self::Private),
            "host" => Ok(Self::Host),
            other => Err(ConfigError::Invalid {
                field,
                problem: format!("{other:?} is not a mode"),
                fix: format!("use {field} = \"private\" or {field} = \"host\""),
            }),
        }
    }
}

/// `isolation = "full"` (default) or `"none"` (raw_exec-like, needs `allow_unisolated`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    #[default]
    Full,
    None,
}

/// `seccomp = "default" | "unconfined" | "<absolute path of an OCI seccomp profile>"`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SeccompChoice {
    /// bpfexec's built-in profile (Docker's default in spirit).
    Default,
    /// No filter.
    Unconfined,
    /// An OCI (runtime-spec `linux.seccomp`, or Docker's profile format) JSON file on the client.
    Profile(std::path::PathBuf),
}

impl SeccompChoice {
    pub fn parse(field: &'static str, value: &str) -> Result<Self, ConfigError> {
        match value {
            "default" => Ok(Self::Default),
            "unconfined" => Ok(Self::Unconfined),
            path if path.starts_with('/') => Ok(Self::Profile(path.into())),
            other => Err(ConfigError::Invalid {
                field,
                problem: format!("{other:?} is neither a profile name nor an absolute path"),
                fix: format!(
                    "use {field} = \"default\", \"unconfined\" or the absolute path of an OCI seccomp profile (JSON) on the client"
                ),
            }),
        }
    }

    /// How the choice is named in events and errors.
    pub fn label(&self) -> String {
        match self {
            Self::Default => "default".into(),
            Self::Unconfined => "unconfined".into(),
            Self::Profile(p) => p.display().to_string(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct TaskConfig {
    pub command: String,
    pub args: Vec<String>,
    /// None: the plugin's `default_pid_mode`.
    pub pid_mode: Option<NsMode>,
    pub ipc_mode: Option<NsMode>,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub work_dir: Option<String>,
    pub isolation: Isolation,
    pub signal_all_processes: bool,
    pub oom_score_adj: Option<i32>,
    /// None: the plugin's `default_seccomp`.
    pub seccomp: Option<SeccompChoice>,
    /// Swap, pids and IO limits.
    pub limits: ExtraLimits,
    /// raw_exec's `cgroup_v1_override` / `cgroup_v2_override`.
    pub cgroup_override: CgroupOverride,
    /// Primary group (name or gid) instead of the user's.
    pub group: Option<String>,
    pub logging: LogDriver,
    pub images: Images,
    /// Run under a uid/gid of the task's own; None: the plugin's `default_ephemeral_user`.
    pub ephemeral_user: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct Raw {
    command: Option<String>,
    args: Option<Vec<String>>,
    pid_mode: Option<String>,
    ipc_mode: Option<String>,
    cap_add: Option<Vec<String>>,
    cap_drop: Option<Vec<String>>,
    work_dir: Option<String>,
    isolation: Option<String>,
    signal_all_processes: Option<bool>,
    oom_score_adj: Option<Number>,
    seccomp: Option<String>,
    group: Option<String>,
    ephemeral_user: Option<bool>,
    #[serde(flatten)]
    limits: resources::Raw,
    #[serde(flatten)]
    cgroup_override: overrides::Raw,
    #[serde(flatten)]
    logging: logging::Raw,
    #[serde(flatten)]
    images: images::Raw,
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.is_empty())
}

impl TaskConfig {
    pub fn decode(msgpack: &[u8]) -> Result<Self, ConfigError> {
        if msgpack.is_empty() {
            return Err(ConfigError::Invalid {
                field: "command",
                problem: "the task has no driver config".into(),
                fix: "add config { command = \"/path/to/program\" } to the task".into(),
            });
        }
        let raw: Raw = super::decode_msgpack(msgpack, "task config")?;
        let command = raw.command.unwrap_or_default();
        if command.trim().is_empty() {
            return Err(ConfigError::Invalid {
                field: "command",
                problem: "is missing or empty".into(),
                fix: "set config { command = \"/path/to/program\" }".into(),
            });
        }
        let pid_mode = non_empty(raw.pid_mode)
            .map(|m| NsMode::parse("pid_mode", &m))
            .transpose()?;
        let ipc_mode = non_empty(raw.ipc_mode)
            .map(|m| NsMode::parse("ipc_mode", &m))
            .transpose()?;
        let isolation = match non_empty(raw.isolation).as_deref() {
            None | Some("full") => Isolation::Full,
            Some("none") => Isolation::None,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    field: "isolation",
                    problem: format!("{other:?} is not an isolation mode"),
                    fix: "use isolation = \"full\" (default) or \"none\" (raw_exec-like)".into(),
                });
            }
        };
        let oom_score_adj = raw
            .oom_score_adj
            .map(|n| n.as_i64("oom_score_adj"))
            .transpose()?;
        let oom_score_adj = match oom_score_adj {
            Some(v) if !(-1000..=1000).contains(&v) => {
                return Err(ConfigError::Invalid {
                    field: "oom_score_adj",
                    problem: format!("{v} is out of range"),
                    fix: "use a value from -1000 to 1000".into(),
                });
            }
            v => v.map(|v| v as i32),
        };
        if let Some(dir) = raw.work_dir.as_deref()
            && !dir.is_empty()
            && !dir.starts_with('/')
        {
            return Err(ConfigError::Invalid {
                field: "work_dir",
                problem: format!("{dir:?} is not an absolute path"),
                fix: "give an absolute path inside the task, e.g. work_dir = \"/local\"".into(),
            });
        }
        let seccomp = non_empty(raw.seccomp)
            .map(|s| SeccompChoice::parse("seccomp", &s))
            .transpose()?;
        Ok(Self {
            command,
            args: raw.args.unwrap_or_default(),
            pid_mode,
            ipc_mode,
            cap_add: raw.cap_add.unwrap_or_default(),
            cap_drop: raw.cap_drop.unwrap_or_default(),
            work_dir: non_empty(raw.work_dir),
            isolation,
            signal_all_processes: raw.signal_all_processes.unwrap_or(false),
            oom_score_adj,
            seccomp,
            limits: raw.limits.validate()?,
            cgroup_override: raw.cgroup_override.validate()?,
            group: non_empty(raw.group),
            logging: raw.logging.validate()?,
            images: raw.images.validate()?,
            ephemeral_user: raw.ephemeral_user,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::enc;
    use rmpv::Value;

    #[test]
    fn decodes_command_and_args_with_nulls() {
        let cfg = TaskConfig::decode(&enc(vec![
            ("args", Value::Nil),
            ("command", "/bin/true".into()),
        ]))
        .expect("decode");
        assert_eq!(cfg.command, "/bin/true");
        assert!(cfg.args.is_empty());
        assert_eq!(cfg.isolation, Isolation::Full);
        assert_eq!(cfg.pid_mode, None);
        let cfg = TaskConfig::decode(&enc(vec![
            ("args", Value::Array(vec!["-c".into(), "echo hi".into()])),
            ("command", "/bin/sh".into()),
            ("pid_mode", "host".into()),
            ("ipc_mode", "private".into()),
            ("isolation", "none".into()),
            ("oom_score_adj", Value::from(500)),
            ("signal_all_processes", true.into()),
            ("work_dir", "/local".into()),
            ("seccomp", "/etc/bpfexec/profile.json".into()),
        ]))
        .expect("decode");
        assert_eq!(
            cfg.seccomp,
            Some(SeccompChoice::Profile("/etc/bpfexec/profile.json".into()))
        );
        assert_eq!(cfg.args, vec!["-c", "echo hi"]);
        assert_eq!(cfg.pid_mode, Some(NsMode::Host));
        assert_eq!(cfg.ipc_mode, Some(NsMode::Private));
        assert_eq!(cfg.isolation, Isolation::None);
        assert_eq!(cfg.oom_score_adj, Some(500));
        assert!(cfg.signal_all_processes);
        assert_eq!(cfg.work_dir.as_deref(), Some("/local"));
    }

    #[test]
    fn missing_command_names_the_field() {
        let err = TaskConfig::decode(&enc(vec![("command", Value::Nil)]))
            .expect_err("fails")
            .to_string();
        assert!(err.contains("command"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_field() {
        let err = TaskConfig::decode(&enc(vec![
            ("args", "notalist".into()),
            ("command", "/bin/true".into()),
        ]))
        .expect_err("fails")
        .to_string();
        assert!(err.contains("args"), "{err}");
    }

    #[test]
    fn bad_values_name_field_and_fix() {
        for (field, value) in [
            ("pid_mode", Value::from("shared")),
            ("isolation", Value::from("partial")),
            ("oom_score_adj", Value::from(5000)),
            ("work_dir", Value::from("relative")),
            ("seccomp", Value::from("strict")),
        ] {
            let err =
                TaskConfig::decode(&enc(vec![("command", "/bin/true".into()), (field, value)]))
                    .expect_err("fails")
                    .to_string();
            assert!(err.contains(field), "{err}");
        }
    }
}
