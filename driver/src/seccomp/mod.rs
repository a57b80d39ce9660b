//! Seccomp for isolated tasks (seccomp(2), SECCOMP_SET_MODE_FILTER): the plugin resolves the
//! task's `seccomp` choice (built-in default, unconfined, or an OCI profile file) into BPF
//! programs when it plans the start, so a bad profile fails StartTask by name; the task's process
//! installs them last thing before exec (after `no_new_privs`), and hands the listener's file
//! descriptor to its helper, which answers every refused call with EPERM and records it for the
//! plugin to report as a task event.
//!
//! Why user notification: a refusal costs a round trip to the helper, but allowed calls cost
//! nothing beyond the filter itself (which the kernel's action cache skips for calls whose answer
//! does not depend on arguments). The alternative, a `raw_syscalls/sys_exit` probe filtering
//! for -EPERM, would run on every system call of every process on the host.

pub mod compile;
pub mod install;
pub mod listener;
pub mod names;
pub mod profile;

use serde::{Deserialize, Serialize};

use crate::config::task::SeccompChoice;

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("the seccomp profile is invalid: {0}")]
    Profile(String),
    #[error("cannot read the seccomp profile {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot build the seccomp filter: {0}")]
    Compile(String),
}

/// One classic-BPF program: `(code, jt, jf, k)` instructions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Program {
    /// Installed with `SECCOMP_FILTER_FLAG_NEW_LISTENER` (exactly one per task).
    pub listener: bool,
    pub insns: Vec<(u16, u8, u8, u32)>,
}

/// What a task's process installs: the profile's name (for events) and its programs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeccompSpec {
    pub profile: String,
    pub programs: Vec<Program>,
}

/// The filters for `choice` and a task holding `caps`; None for `unconfined`.
pub fn resolve(
    choice: &SeccompChoice,
    caps: &[String],
) -> Result<Option<SeccompSpec>, SeccompError> {
    let profile = match choice {
        SeccompChoice::Unconfined => return Ok(None),
        SeccompChoice::Default => profile::Profile::builtin(caps),
        SeccompChoice::Profile(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| SeccompError::Read {
                path: path.clone(),
                source,
            })?;
            profile::Profile::from_oci_json(&text, caps)?
        }
    };
    Ok(Some(SeccompSpec {
        profile: choice.label(),
        programs: compile::compile(&profile)?,
    }))
}
