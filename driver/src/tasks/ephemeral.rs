//! Ephemeral identities (systemd's DynamicUser=): a task gets a uid (and the same gid) of its own
//! from the plugin's `ephemeral_uid_range`, unused by the host's user and group databases and by
//! every other task. A claim is a file `<state_dir>/ephemeral/<uid>` holding the task id, made
//! with O_EXCL so two starts never get the same id, and it outlives the plugin process (the id is
//! in `driver_state` too); it is released when the task is destroyed. A claim whose task has no
//! state directory any more is stale and reused. A restarted task gets back the uid that owns its
//! `local/` when that is free, so what its earlier run wrote stays its own; its `local/`,
//! `secrets/` and `tmp/` are given to the uid (mode 0700), the shared `alloc/` stays as Nomad
//! made it.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use bpfexec_proto::drivers;

use super::StartContext;
use crate::config::task::TaskConfig;
use crate::errors::DriverError;
use crate::supervisor::record::task_state_dir;

/// The task's ephemeral uid, when it runs as one (`ephemeral_user`, or the plugin's
/// `default_ephemeral_user` for a task without a `user`); its private directories become its.
pub fn for_task(
    ctx: &StartContext,
    cfg: &drivers::TaskConfig,
    task_cfg: &TaskConfig,
) -> Result<Option<u32>, DriverError> {
    let refuse = |reason: String| DriverError::Start {
        task: cfg.id.clone(),
        reason,
        recoverable: false,
    };
    let wanted = match task_cfg.ephemeral_user {
        Some(true) if !cfg.user.is_empty() => {
            return Err(refuse(format!(
                "ephemeral_user = true conflicts with the task's user = {:?}; remove one of them",
                cfg.user
            )));
        }
        Some(w) => w,
        None => ctx.plugin.ephemeral.is_some_and(|e| e.by_default) && cfg.user.is_empty(),
    };
    if !wanted {
        return Ok(None);
    }
    let Some(range) = ctx.plugin.ephemeral.map(|e| e.range) else {
        return Err(refuse(
            "ephemeral_user = true but this client has no ephemeral_uid_range; the operator sets it in the plugin config".into(),
        ));
    };
    let task_dir = std::path::Path::new(&cfg.alloc_dir).join(&cfg.name);
    // A claim whose task has no state directory counts as stale: make it first.
    let state = task_state_dir(&ctx.plugin.state_dir, &cfg.id);
    std::fs::create_dir_all(&state)
        .map_err(|e| DriverError::io(format!("creating {}", state.display()), e))?;
    let id = claim(
        &ctx.plugin.state_dir,
        range,
        &cfg.id,
        owner_of_local(&task_dir),
    )
    .map_err(|e| refuse(format!("cannot get an ephemeral user: {e}")))?;
    if let Err(e) = own_task_dirs(&task_dir, id) {
        release(&ctx.plugin.state_dir, id, &cfg.id);
        return Err(refuse(format!(
            "cannot give the task's directories to its ephemeral user {id}: {e}"
        )));
    }
    Ok(Some(id))
}

fn claims_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("ephemeral")
}

/// True when the host's databases already name `id` as a user or a group.
fn taken_on_host(id: u32) -> bool {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(id))
        .ok()
        .flatten()
        .is_some()
        || nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(id))
            .ok()
            .flatten()
            .is_some()
}

/// Claims a free id of `range` for `task_id`, preferring `prefer`.
pub fn claim(
    state_dir: &Path,
    range: (u32, u32),
    task_id: &str,
    prefer: Option<u32>,
) -> io::Result<u32> {
    let dir = claims_dir(state_dir);
    fs::create_dir_all(&dir)?;
    let (lo, hi) = range;
    let preferred = prefer.filter(|p| (lo..=hi).contains(p));
    for id in preferred.into_iter().chain(lo..=hi) {
        if taken_on_host(id) {
            continue;
        }
        let file = dir.join(id.to_string());
        for _ in 0..2 {
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&file)
            {
                Ok(mut f) => {
                    f.write_all(task_id.as_bytes())?;
                    return Ok(id);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let holder = fs::read_to_string(&file).unwrap_or_default();
                    if holder == task_id {
                        return Ok(id);
                    }
                    if holder.is_empty() || task_state_dir(state_dir, &holder).exists() {
                        break;
                    }
                    // The task that held it is gone without being destroyed here.
                    let _ = fs::remove_file(&file);
                }
                Err(e) => return Err(e),
            }
        }
    }
    Err(io::Error::other(format!(
        "every id of ephemeral_uid_range {lo}-{hi} is in use (by tasks or the host's users and groups); widen the range"
    )))
}

/// Releases `id` if `task_id` holds it.
pub fn release(state_dir: &Path, id: u32, task_id: &str) {
    let file = claims_dir(state_dir).join(id.to_string());
    if fs::read_to_string(&file).is_ok_and(|h| h == task_id) {
        let _ = fs::remove_file(file);
    }
}

/// The uid owning the task's `local/`, a hint for `claim`.
pub fn owner_of_local(task_dir: &Path) -> Option<u32> {
    fs::metadata(task_dir.join("local")).ok().map(|m| m.uid())
}

/// Gives the task's private directories to `id`.
pub fn own_task_dirs(task_dir: &Path, id: u32) -> io::Result<()> {
    for d in ["local", "secrets", "tmp"] {
        let path = task_dir.join(d);
        if !path.exists() {
            continue;
        }
        std::os::unix::fs::chown(&path, Some(id), Some(id))
            .map_err(|e| io::Error::new(e.kind(), format!("chown {}: {e}", path.display())))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700))
            .map_err(|e| io::Error::new(e.kind(), format!("chmod {}: {e}", path.display())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A range high enough that no host database names its ids.
    const RANGE: (u32, u32) = (3_900_000_000, 3_900_000_002);

    #[test]
    fn claims_are_exclusive_released_and_stale_ones_reused() {
        let state = tempfile::tempdir().expect("tempdir");
        let mk = |task: &str| fs::create_dir_all(task_state_dir(state.path(), task)).expect("dir");
        mk("a");
        mk("b");
        let a = claim(state.path(), RANGE, "a", None).expect("a");
        let b = claim(state.path(), RANGE, "b", None).expect("b");
        assert_ne!(a, b);
        // Idempotent for the same task.
        assert_eq!(claim(state.path(), RANGE, "a", None).expect("again"), a);
        // A preference is honoured when free, ignored when held.
        mk("c");
        assert_eq!(
            claim(state.path(), RANGE, "c", Some(a)).expect("c"),
            RANGE.1
        );
        mk("d");
        let err = claim(state.path(), RANGE, "d", None).expect_err("full");
        assert!(err.to_string().contains("widen the range"), "{err}");
        release(state.path(), a, "not-a");
        assert!(
            claim(state.path(), RANGE, "d", None).is_err(),
            "wrong holder kept it"
        );
        release(state.path(), a, "a");
        assert_eq!(claim(state.path(), RANGE, "d", Some(a)).expect("d"), a);
        // Task "b" vanished without DestroyTask: its claim is stale.
        fs::remove_dir_all(task_state_dir(state.path(), "b")).expect("rm");
        mk("e");
        assert_eq!(claim(state.path(), RANGE, "e", None).expect("e"), b);
    }

    #[test]
    fn task_dirs_are_given_to_the_id() {
        let task = tempfile::tempdir().expect("tempdir");
        for d in ["local", "secrets"] {
            fs::create_dir_all(task.path().join(d)).expect("mkdir");
        }
        own_task_dirs(task.path(), 4242).expect("chown");
        let m = fs::metadata(task.path().join("local")).expect("meta");
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (4242, 4242, 0o700));
        assert_eq!(owner_of_local(task.path()), Some(4242));
    }
}
