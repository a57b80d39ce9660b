//! Starting a task: resolve the command, write the launch spec, start the task's supervisor in
//! its own session and read its one-line start report.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::errors::DriverError;
use crate::supervisor::record::{self, LOG_FILE, SPEC_FILE, StartReport};
use crate::supervisor::{SUPERVISE_ARG, spec::LaunchSpec};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A started supervisor and the task process it reported.
pub struct Launched {
    pub supervisor: tokio::process::Child,
    pub supervisor_pid: u32,
    pub pid: u32,
    pub start_time: u64,
}

fn start_err(task: &str, reason: impl Into<String>) -> DriverError {
    DriverError::Start {
        task: task.to_owned(),
        reason: reason.into(),
        recoverable: false,
    }
}

/// Finds the program for `command` the way exec/raw_exec do: absolute paths as they are,
/// paths with a slash relative to the task directory, bare names on the task's `PATH`.
pub fn resolve_program(
    task: &str,
    command: &str,
    task_dir: &Path,
    env: &BTreeMap<String, String>,
) -> Result<PathBuf, DriverError> {
    let candidate = if command.contains('/') {
        let p = Path::new(command);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            task_dir.join(p)
        }
    } else {
        let path = env.get("PATH").map_or(DEFAULT_PATH, String::as_str);
        path.split(':')
            .filter(|d| !d.is_empty())
            .map(|d| Path::new(d).join(command))
            .find(|p| is_executable(p))
            .ok_or_else(|| {
                start_err(task, format!(
                    "command {command:?} was not found on PATH ({path}); set config {{ command }} to an absolute path"
                ))
            })?
    };
    if !candidate.exists() {
        return Err(start_err(
            task,
            format!(
                "command {:?} does not exist ({})",
                command,
                candidate.display()
            ),
        ));
    }
    if candidate.is_dir() || !is_executable(&candidate) {
        return Err(start_err(
            task,
            format!(
                "command {:?} ({}) is not an executable file; check config {{ command }} and the file's mode",
                command,
                candidate.display()
            ),
        ));
    }
    Ok(candidate)
}

fn is_executable(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: access(2) with a valid NUL-terminated path.
    path.is_file() && unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0
}

/// Writes the spec and starts the supervisor; returns once the task process exists.
pub async fn launch(dir: &Path, spec: &LaunchSpec) -> Result<Launched, DriverError> {
    let task = spec.task_id.as_str();
    std::fs::create_dir_all(dir)
        .map_err(|e| DriverError::io(format!("creating {}", dir.display()), e))?;
    record::write_json(dir, SPEC_FILE, spec)
        .map_err(|e| DriverError::io(format!("writing the launch spec in {}", dir.display()), e))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(LOG_FILE))
        .map_err(|e| DriverError::io(format!("opening {}", dir.join(LOG_FILE).display()), e))?;
    let mut cmd = tokio::process::Command::new("/proc/self/exe");
    cmd.arg0("nomad-driver-bpfexec")
        .arg(SUPERVISE_ARG)
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(false);
    // SAFETY: runs in the forked child before exec; setsid(2) is async-signal-safe and the
    // closure touches no memory shared with other threads.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(|_| ())
                .map_err(std::io::Error::from)
        });
    }
    let mut supervisor = cmd
        .spawn()
        .map_err(|e| DriverError::io("starting the task supervisor", e))?;
    let supervisor_pid = supervisor
        .id()
        .ok_or_else(|| start_err(task, "the supervisor exited at once"))?;
    let stdout = supervisor
        .stdout
        .take()
        .ok_or_else(|| start_err(task, "no pipe to the supervisor"))?;
    let mut line = String::new();
    let read =
        tokio::time::timeout(START_TIMEOUT, BufReader::new(stdout).read_line(&mut line)).await;
    let report = match read {
        Ok(Ok(n)) if n > 0 => serde_json::from_str::<StartReport>(line.trim_end())
            .map_err(|e| start_err(task, format!("the supervisor answered {line:?}: {e}")))?,
        Ok(Ok(_)) => return Err(start_err(task, supervisor_died_message(dir))),
        Ok(Err(e)) => return Err(DriverError::io("reading the supervisor's start report", e)),
        Err(_) => {
            let _ = supervisor.start_kill();
            return Err(DriverError::Start {
                task: task.to_owned(),
                reason: format!(
                    "the task did not start within {}s (are the log FIFOs readable?)",
                    START_TIMEOUT.as_secs()
                ),
                recoverable: true,
            });
        }
    };
    match report {
        StartReport::Started { pid, start_time } => Ok(Launched {
            supervisor,
            supervisor_pid,
            pid,
            start_time,
        }),
        StartReport::Failed { error } => {
            let _ = supervisor.wait().await;
            Err(start_err(task, error))
        }
    }
}

fn supervisor_died_message(dir: &Path) -> String {
    let log = std::fs::read_to_string(dir.join(LOG_FILE)).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(5).collect();
    format!(
        "the supervisor exited before starting the task; its log says: {}",
        tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_absolute_relative_and_path_lookups() {
        let env = BTreeMap::from([("PATH".to_owned(), "/nonexistent:/bin:/usr/bin".to_owned())]);
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            resolve_program("t", "/bin/sh", dir.path(), &env).expect("abs"),
            PathBuf::from("/bin/sh")
        );
        assert!(
            resolve_program("t", "sh", dir.path(), &env)
                .expect("path")
                .ends_with("sh")
        );
        let local = dir.path().join("local");
        std::fs::create_dir_all(&local).expect("mkdir");
        let script = local.join("run.sh");
        std::fs::write(&script, "#!/bin/sh\n").expect("write");
        let err =
            resolve_program("t", "local/run.sh", dir.path(), &env).expect_err("not executable");
        assert!(err.to_string().contains("not an executable"), "{err}");
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        assert_eq!(
            resolve_program("t", "local/run.sh", dir.path(), &env).expect("rel"),
            script
        );
    }

    #[test]
    fn missing_commands_are_named() {
        let env = BTreeMap::new();
        let dir = tempfile::tempdir().expect("tempdir");
        let err = resolve_program("t", "/no/such/bin", dir.path(), &env)
            .expect_err("missing")
            .to_string();
        assert!(
            err.contains("/no/such/bin") && err.contains("does not exist"),
            "{err}"
        );
        let err = resolve_program("t", "no-such-program-xyz", dir.path(), &env)
            .expect_err("missing")
            .to_string();
        assert!(err.contains("not found on PATH"), "{err}");
    }
}
