//! Files a task's supervisor shares with the plugin under `<state_dir>/tasks/<task>/`: the launch
//! spec and planned state the plugin writes, the start report and exit record the supervisor
//! writes. They survive the plugin process, which is what lets a restarted plugin recover a task
//! and its true exit status, and adopt a task whose StartTask its predecessor did not finish.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub const SPEC_FILE: &str = "spec.json";
pub const EXIT_FILE: &str = "exit.json";
/// Space for the exit record, reserved when the task starts: the helper overwrites it in place
/// and renames it, so a state_dir that filled up meanwhile still gets the task's exit status.
pub const EXIT_SLOT: &str = ".exit.slot";
/// Size of [`EXIT_SLOT`]; an exit record is under 100 bytes of JSON.
const EXIT_SLOT_BYTES: usize = 512;
pub const LOG_FILE: &str = "supervisor.log";
/// The supervisor's [`StartReport`], also kept on disk: a plugin that died during StartTask
/// never read it from the pipe, and its replacement adopts the task from it.
pub const START_REPORT_FILE: &str = "start-report.json";
/// What the plugin knew of the task before launching it (its driver state without the
/// processes), written before the launch for the same reason.
pub const PLANNED_FILE: &str = "planned-state.json";

/// First (and only) line a supervisor writes on its stdout, read by the plugin's StartTask.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartReport {
    Started {
        /// The task's main process (host pid).
        pid: u32,
        start_time: u64,
        /// The process that waits for the task and writes its exit record (the supervisor itself,
        /// or the init of the task's pid namespace).
        supervisor_pid: u32,
        supervisor_start_time: u64,
    },
    Failed {
        error: String,
    },
}

/// How the task's main process ended, as recorded by its supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// Exit code; for a signal death `128 + signal`, like Nomad's exec driver.
    pub exit_code: i32,
    /// Terminating signal, 0 when the process exited normally.
    pub signal: i32,
    pub core_dumped: bool,
    /// Wall-clock time of the exit, milliseconds since the Unix epoch.
    pub finished_at_ms: u64,
}

impl ExitRecord {
    pub fn from_status(status: std::process::ExitStatus, finished_at_ms: u64) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => Self {
                exit_code: code,
                signal: 0,
                core_dumped: false,
                finished_at_ms,
            },
            (None, Some(sig)) => Self {
                exit_code: 128 + sig,
                signal: sig,
                core_dumped: status.core_dumped(),
                finished_at_ms,
            },
            (None, None) => Self {
                exit_code: -1,
                signal: 0,
                core_dumped: false,
                finished_at_ms,
            },
        }
    }
}

/// Directory holding one task's supervisor files.
pub fn task_state_dir(state_dir: &Path, task_id: &str) -> PathBuf {
    state_dir.join("tasks").join(sanitize(task_id))
}

/// What a task state dir is renamed to while it is removed.
pub const REMOVING_SUFFIX: &str = ".removing";

/// Removes a task state dir so that an interruption (the plugin killed midway) leaves either the
/// whole dir or one named `<dir>.removing`, never a dir that lost its planned state: renamed
/// first (atomic), then removed. `Ok` when there was nothing to remove.
pub fn remove_task_dir(dir: &Path) -> io::Result<()> {
    let mut doomed = dir.as_os_str().to_owned();
    doomed.push(REMOVING_SUFFIX);
    let doomed = PathBuf::from(doomed);
    match fs::rename(dir, &doomed) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    match fs::remove_dir_all(&doomed) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Turns a Nomad task id (`<alloc>/<task>/<invocation>`) into one safe path component.
pub fn sanitize(task_id: &str) -> String {
    task_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Writes `value` as JSON to `dir/name` atomically (temp file, rename). No fsync: these files
/// must survive the plugin process, not a machine crash (which ends the tasks too), and an fsync
/// would sit on every task start.
pub fn write_json<T: Serialize>(dir: &Path, name: &str, value: &T) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let data = serde_json::to_vec(value).map_err(io::Error::other)?;
    let mut file = fs::File::create(&tmp)?;
    file.write_all(&data)?;
    fs::rename(&tmp, dir.join(name))
}

/// Reserves the space of the exit record (see [`EXIT_SLOT`]).
pub fn reserve_exit(dir: &Path) -> io::Result<()> {
    fs::write(dir.join(EXIT_SLOT), [b' '; EXIT_SLOT_BYTES])
}

/// Writes the exit record: into the reserved slot when there is one (no new blocks needed, so
/// it works on a full filesystem), otherwise like [`write_json`].
pub fn write_exit(dir: &Path, record: &ExitRecord) -> io::Result<()> {
    let data = serde_json::to_vec(record).map_err(io::Error::other)?;
    let slot = dir.join(EXIT_SLOT);
    if data.len() <= EXIT_SLOT_BYTES
        && let Ok(mut file) = fs::OpenOptions::new().write(true).open(&slot)
    {
        // JSON followed by the slot's remaining spaces (trailing whitespace is valid JSON).
        file.write_all(&data)?;
        drop(file);
        return fs::rename(&slot, dir.join(EXIT_FILE));
    }
    write_json(dir, EXIT_FILE, record)
}

/// Reads `dir/name` as JSON; `Ok(None)` when the file does not exist.
pub fn read_json<T: DeserializeOwned>(dir: &Path, name: &str) -> io::Result<Option<T>> {
    match fs::read(dir.join(name)) {
        Ok(data) => serde_json::from_slice(&data).map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", dir.join(name).display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    #[test]
    fn exit_status_mapping_follows_exec_conventions() {
        let exited = ExitRecord::from_status(ExitStatus::from_raw(3 << 8), 1);
        assert_eq!((exited.exit_code, exited.signal), (3, 0));
        let killed = ExitRecord::from_status(ExitStatus::from_raw(9), 1);
        assert_eq!(
            (killed.exit_code, killed.signal, killed.core_dumped),
            (137, 9, false)
        );
        let cored = ExitRecord::from_status(ExitStatus::from_raw(0x0b | 0x80), 1);
        assert_eq!(
            (cored.exit_code, cored.signal, cored.core_dumped),
            (139, 11, true)
        );
    }

    #[test]
    fn json_round_trip_and_missing_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rec = ExitRecord {
            exit_code: 7,
            signal: 0,
            core_dumped: false,
            finished_at_ms: 42,
        };
        write_json(dir.path(), EXIT_FILE, &rec).expect("write");
        assert_eq!(
            read_json::<ExitRecord>(dir.path(), EXIT_FILE).expect("read"),
            Some(rec)
        );
        assert_eq!(
            read_json::<ExitRecord>(dir.path(), "nope.json").expect("read"),
            None
        );
    }

    #[test]
    fn exit_records_fill_the_reserved_slot() {
        let dir = tempfile::tempdir().expect("tempdir");
        reserve_exit(dir.path()).expect("reserve");
        let rec = ExitRecord {
            exit_code: 3,
            signal: 0,
            core_dumped: false,
            finished_at_ms: 42,
        };
        write_exit(dir.path(), &rec).expect("write");
        assert!(!dir.path().join(EXIT_SLOT).exists());
        assert_eq!(
            fs::metadata(dir.path().join(EXIT_FILE))
                .expect("exit")
                .len(),
            EXIT_SLOT_BYTES as u64
        );
        assert_eq!(
            read_json::<ExitRecord>(dir.path(), EXIT_FILE).expect("read"),
            Some(rec)
        );
        // Without a slot (a task started by an older driver) it is written as before.
        let other = tempfile::tempdir().expect("tempdir");
        write_exit(other.path(), &rec).expect("write");
        assert_eq!(
            read_json::<ExitRecord>(other.path(), EXIT_FILE).expect("read"),
            Some(rec)
        );
    }

    #[test]
    fn task_ids_become_one_path_component() {
        assert_eq!(
            sanitize("4f1c/web server/abcd1234"),
            "4f1c_web_server_abcd1234"
        );
        assert_eq!(sanitize("../x"), ".._x");
    }
}
