//! Builds the `LaunchSpec` for a task: full isolation (private mount, pid and ipc namespaces, a
//! root of read-only `chroot_env` binds plus /alloc, /local, /secrets, /tmp and volume mounts,
//! the task user, exec's capability rules, no_new_privs) or, when the operator allows it,
//! `isolation = "none"` (raw_exec: host view, the task user, still the task's cgroups).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use bpfexec_proto::drivers;

use super::{caps, identity};
use crate::config::plugin::PluginConfig;
use crate::config::task::{Isolation, NsMode, SeccompChoice, TaskConfig};
use crate::errors::DriverError;
use crate::supervisor::sandbox::{host_path, order};
use crate::supervisor::spec::{Bind, LaunchSpec, Sandbox};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn refuse(task: &str, reason: impl Into<String>) -> DriverError {
    DriverError::Start {
        task: task.to_owned(),
        reason: reason.into(),
        recoverable: false,
    }
}

/// Everything `plan` needs besides the Nomad task config.
pub struct PlanInput<'a> {
    pub nomad: &'a drivers::TaskConfig,
    pub task: &'a TaskConfig,
    pub plugin: &'a PluginConfig,
    /// This task's state directory (the sandbox root is created inside it).
    pub state_dir: &'a Path,
    pub cgroup_join: Vec<PathBuf>,
}

pub fn plan(input: &PlanInput<'_>) -> Result<LaunchSpec, DriverError> {
    let PlanInput {
        nomad,
        task,
        plugin,
        ..
    } = input;
    let id = nomad.id.as_str();
    let task_dir = Path::new(&nomad.alloc_dir).join(&nomad.name);
    let isolated = match task.isolation {
        Isolation::Full => true,
        Isolation::None if plugin.allow_unisolated => false,
        Isolation::None => {
            return Err(refuse(
                id,
                "isolation = \"none\" is disabled on this client; the operator must set allow_unisolated = true in the plugin config",
            ));
        }
    };
    let ident = task_identity(nomad, plugin, isolated)?;
    let mut env: BTreeMap<String, String> = nomad.env.clone().into_iter().collect();
    if isolated {
        // Nomad gives IMAGE-isolated tasks no host environment; keep a usable PATH.
        env.entry("PATH".into())
            .or_insert_with(|| DEFAULT_PATH.to_owned());
    } else {
        // Nomad set the task-view paths (/alloc, /local, /secrets); raw mode sees the host's.
        let alloc = Path::new(&nomad.alloc_dir);
        env.insert(
            "NOMAD_ALLOC_DIR".into(),
            alloc.join("alloc").display().to_string(),
        );
        env.insert(
            "NOMAD_TASK_DIR".into(),
            task_dir.join("local").display().to_string(),
        );
        env.insert(
            "NOMAD_SECRETS_DIR".into(),
            task_dir.join("secrets").display().to_string(),
        );
    }
    let (sandbox, caps) = if isolated {
        let sb = sandbox(input, &task_dir)?;
        let caps = caps::effective(&plugin.allow_caps, &task.cap_add, &task.cap_drop)
            .map_err(|e| refuse(id, e.to_string()))?;
        (Some(sb), Some(caps))
    } else {
        (None, None)
    };
    let view = |p: &Path| -> Option<PathBuf> {
        match &sandbox {
            Some(sb) => host_path(&sb.mounts, p),
            None => Some(p.to_path_buf()),
        }
    };
    let relative_base = if isolated {
        PathBuf::from("/")
    } else {
        task_dir.clone()
    };
    let program = resolve_program(id, &task.command, &relative_base, &env, &view)?;
    let cwd = match &task.work_dir {
        Some(dir) => PathBuf::from(dir),
        None if isolated => PathBuf::from("/"),
        None => task_dir.clone(),
    };
    let pid_ns = isolated && task.pid_mode.unwrap_or(plugin.default_pid_mode) == NsMode::Private;
    let seccomp = seccomp_for(id, task, plugin, caps.as_deref())?;
    Ok(LaunchSpec {
        task_id: id.to_owned(),
        program,
        argv0: task.command.clone(),
        args: task.args.clone(),
        env,
        cwd,
        stdout_path: PathBuf::from(&nomad.stdout_path),
        stderr_path: PathBuf::from(&nomad.stderr_path),
        cgroup_join: input.cgroup_join.clone(),
        self_track: None,
        oom_score_adj: Some(task.oom_score_adj.unwrap_or(0)),
        pid_ns,
        sandbox,
        identity: if ident.uid == 0 && !isolated {
            None
        } else {
            Some(ident)
        },
        caps,
        no_new_privs: isolated,
        seccomp,
    })
}

/// The task's user (`nobody` by default, root in raw mode), refused when the plugin denies it
/// or, for an isolated task, when it is uid 0 without `allow_root`.
fn task_identity(
    nomad: &drivers::TaskConfig,
    plugin: &PluginConfig,
    isolated: bool,
) -> Result<identity::Identity, DriverError> {
    let id = nomad.id.as_str();
    let user = match nomad.user.as_str() {
        "" if isolated => identity::DEFAULT_USER,
        "" => "root",
        named => named,
    };
    let ident = identity::resolve(user).map_err(|e| refuse(id, e))?;
    identity::check_denied(&ident, &plugin.denied_host_uids, &plugin.denied_host_gids)
        .map_err(|e| refuse(id, e))?;
    if isolated && ident.uid == 0 && !plugin.allow_root {
        return Err(refuse(id, root_refused(user)));
    }
    Ok(ident)
}

/// Why an isolated task may not run as `user` (uid 0) without `allow_root`.
fn root_refused(user: &str) -> String {
    format!(
        "user {user:?} is uid 0, and isolated tasks may not run as root on this client (as Nomad \
         refuses root for exec tasks); run the task as another user, or have the operator set \
         allow_root = true in the plugin config \
         (plugin \"nomad-driver-bpfexec\" {{ config {{ allow_root = true }} }})"
    )
}

/// The task's seccomp filters: its `seccomp` or the plugin's `default_seccomp` for isolated
/// tasks (`caps`: the task's capabilities); raw mode runs unconfined, as raw_exec.
fn seccomp_for(
    id: &str,
    task: &TaskConfig,
    plugin: &PluginConfig,
    caps: Option<&[String]>,
) -> Result<Option<crate::seccomp::SeccompSpec>, DriverError> {
    let Some(caps) = caps else {
        return match &task.seccomp {
            Some(c) if *c != SeccompChoice::Unconfined => Err(refuse(
                id,
                "seccomp applies to isolated tasks; isolation = \"none\" runs unconfined like raw_exec: remove seccomp from the task config or use isolation = \"full\"",
            )),
            _ => Ok(None),
        };
    };
    let choice = task.seccomp.as_ref().unwrap_or(&plugin.default_seccomp);
    crate::seccomp::resolve(choice, caps).map_err(|e| {
        refuse(
            id,
            format!(
                "seccomp = {:?}: {e}; fix the profile, or set seccomp = \"default\" or \"unconfined\"",
                choice.label()
            ),
        )
    })
}

fn sandbox(input: &PlanInput<'_>, task_dir: &Path) -> Result<Sandbox, DriverError> {
    let PlanInput {
        nomad,
        task,
        plugin,
        state_dir,
        ..
    } = input;
    let mut mounts: Vec<Bind> = plugin
        .chroot_env
        .iter()
        .filter(|(host, _)| Path::new(host).exists())
        .map(|(host, inside)| Bind {
            source: host.into(),
            target: inside.into(),
            readonly: true,
            nodev: false,
        })
        .collect();
    let alloc = Path::new(&nomad.alloc_dir);
    for (source, target) in [
        (alloc.join("alloc"), "/alloc"),
        (task_dir.join("local"), "/local"),
        (task_dir.join("secrets"), "/secrets"),
        (task_dir.join("tmp"), "/tmp"),
    ] {
        if source.exists() {
            mounts.push(Bind {
                source,
                target: target.into(),
                readonly: false,
                nodev: true,
            });
        }
    }
    for m in &nomad.mounts {
        if !Path::new(&m.task_path).is_absolute() || !Path::new(&m.host_path).exists() {
            return Err(refuse(
                &nomad.id,
                format!(
                    "volume mount {:?} -> {:?} is invalid: the host path must exist and the task path must be absolute",
                    m.host_path, m.task_path
                ),
            ));
        }
        mounts.push(Bind {
            source: m.host_path.clone().into(),
            target: m.task_path.clone().into(),
            readonly: m.readonly,
            nodev: true,
        });
    }
    let mut devices = Vec::new();
    for d in &nomad.devices {
        if !Path::new(&d.task_path).is_absolute() || !Path::new(&d.host_path).exists() {
            return Err(refuse(
                &nomad.id,
                format!(
                    "device {:?} -> {:?} is invalid: the host device must exist and the task path must be absolute (check the device plugin)",
                    d.host_path, d.task_path
                ),
            ));
        }
        devices.push(Bind {
            source: d.host_path.clone().into(),
            target: d.task_path.clone().into(),
            // Nomad's permissions are cgroup-style "rwm". A read-only mount would not stop
            // writes to a device node, so they are not enforced here (see the README).
            readonly: false,
            nodev: false,
        });
    }
    let netns = nomad
        .network_isolation_spec
        .as_ref()
        .filter(|n| {
            n.mode == drivers::network_isolation_spec::NetworkIsolationMode::Group as i32
                && !n.path.is_empty()
        })
        .map(|n| PathBuf::from(&n.path));
    Ok(Sandbox {
        root: state_dir.join("root"),
        mounts: order(mounts),
        devices,
        ipc_ns: task.ipc_mode.unwrap_or(plugin.default_ipc_mode) == NsMode::Private,
        netns,
        pivot_root: !plugin.no_pivot_root,
    })
}

/// Finds the program as the task will see it: absolute paths as they are, paths with a slash
/// relative to the task directory, bare names on the task's `PATH`; checked on the host through
/// `view` (task path → host path).
fn resolve_program(
    task: &str,
    command: &str,
    relative_base: &Path,
    env: &BTreeMap<String, String>,
    view: &dyn Fn(&Path) -> Option<PathBuf>,
) -> Result<PathBuf, DriverError> {
    let usable = |p: &Path| view(p).is_some_and(|h| is_executable(&h));
    let candidate = if command.contains('/') {
        let p = Path::new(command);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            relative_base.join(p)
        }
    } else {
        let path = env.get("PATH").map_or(DEFAULT_PATH, String::as_str);
        path.split(':')
            .filter(|d| !d.is_empty())
            .map(|d| Path::new(d).join(command))
            .find(|p| usable(p))
            .ok_or_else(|| refuse(task, format!("command {command:?} was not found on the task's PATH ({path}); set config {{ command }} to an absolute path")))?
    };
    let Some(host) = view(&candidate).filter(|h| h.exists()) else {
        return Err(refuse(
            task,
            format!(
                "command {command:?} ({}) does not exist in the task's filesystem; check config {{ command }} and the plugin's chroot_env",
                candidate.display()
            ),
        ));
    };
    if host.is_dir() || !is_executable(&host) {
        return Err(refuse(
            task,
            format!(
                "command {command:?} ({}) is not an executable file; check config {{ command }} and the file's mode",
                candidate.display()
            ),
        ));
    }
    if let Some(interp) = shebang(&host)
        && !view(&interp).is_some_and(|h| is_executable(&h))
    {
        return Err(refuse(
            task,
            format!(
                "command {command:?} is a script whose interpreter {} does not exist (or is not executable) in the task's filesystem; fix its #! line or add the interpreter's directory to chroot_env",
                interp.display()
            ),
        ));
    }
    Ok(candidate)
}

/// The interpreter named on a script's `#!` line, if the file is a script.
fn shebang(host: &Path) -> Option<PathBuf> {
    let mut head = [0u8; 256];
    let n = std::io::Read::read(&mut std::fs::File::open(host).ok()?, &mut head).ok()?;
    let line = head[..n].strip_prefix(b"#!")?;
    let line = line.split(|b| *b == b'\n').next()?;
    let text = std::str::from_utf8(line).ok()?;
    text.split_whitespace().next().map(PathBuf::from)
}

fn is_executable(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: access(2) with a valid NUL-terminated path.
    path.is_file() && unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0
}

#[cfg(test)]
mod tests;
