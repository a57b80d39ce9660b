//! Builds the `LaunchSpec` for a task: full isolation (private mount, pid and ipc namespaces, a
//! root of read-only `chroot_env` binds plus /alloc, /local, /secrets, /tmp and volume mounts,
//! the task user, exec's capability rules, no_new_privs) or, when the operator allows it,
//! `isolation = "none"` (raw_exec: host view, the task user, still the task's cgroups).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use bpfexec_proto::drivers;

use super::{caps, identity};
use crate::config::logging::LogDriver;
use crate::config::plugin::PluginConfig;
use crate::config::task::{Isolation, NsMode, SeccompChoice, TaskConfig};
use crate::errors::DriverError;
use crate::supervisor::sandbox::{host_path, order};
use crate::supervisor::spec::{Bind, JournalSpec, LaunchSpec, Sandbox};

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
    /// The ephemeral uid (= gid) claimed for the task, when it runs as one.
    pub ephemeral_id: Option<u32>,
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
    let ident = task_identity(input, isolated)?;
    let env = task_env(nomad, isolated, &task_dir);
    if !isolated && task.images.is_set() {
        return Err(refuse(
            id,
            "root_image and mount_image need the task's own mount namespace; they are not available with isolation = \"none\"",
        ));
    }
    let (sandbox, caps) = if isolated {
        let sb = sandbox(input, &task_dir)?;
        // An ephemeral user holds only what the task adds (DynamicUser= services run without
        // capabilities): exec's default set has KILL and DAC_OVERRIDE, which would let it signal
        // and read other tasks' processes and files, the very thing its own uid is to prevent.
        let all = ["all".to_owned()];
        let drop = if input.ephemeral_id.is_some() {
            &all[..]
        } else {
            &task.cap_drop[..]
        };
        let caps = caps::effective(&plugin.allow_caps, &task.cap_add, drop)
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
    let search = Search {
        task: id,
        command: &task.command,
        isolated,
        task_dir: &task_dir,
        alloc_dir: Path::new(&nomad.alloc_dir),
        path: env.get("PATH").map_or(DEFAULT_PATH, String::as_str),
        view: &view,
        in_root_image: isolated && task.images.root.is_some(),
    };
    let program = search.resolve()?;
    let cwd = match &task.work_dir {
        Some(dir) => PathBuf::from(dir),
        None if isolated => PathBuf::from("/"),
        None => task_dir.clone(),
    };
    let pid_ns = isolated && task.pid_mode.unwrap_or(plugin.default_pid_mode) == NsMode::Private;
    let seccomp = seccomp_for(id, task, plugin, caps.as_deref())?;
    let journal = match task.logging {
        LogDriver::Nomad => None,
        LogDriver::Journald => Some(journal_spec(id, nomad, plugin)?),
    };
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
        cgroup_into: None,
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
        journal,
    })
}

/// The task's environment: Nomad's, with a PATH for an isolated task (Nomad gives IMAGE-isolated
/// tasks no host environment) and the host paths of the task directories in raw mode (Nomad set
/// the task-view ones, /alloc, /local, /secrets).
fn task_env(
    nomad: &drivers::TaskConfig,
    isolated: bool,
    task_dir: &Path,
) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = nomad.env.clone().into_iter().collect();
    if isolated {
        env.entry("PATH".into())
            .or_insert_with(|| DEFAULT_PATH.to_owned());
    } else {
        let alloc = Path::new(&nomad.alloc_dir);
        for (key, path) in [
            ("NOMAD_ALLOC_DIR", alloc.join("alloc")),
            ("NOMAD_TASK_DIR", task_dir.join("local")),
            ("NOMAD_SECRETS_DIR", task_dir.join("secrets")),
        ] {
            env.insert(key.into(), path.display().to_string());
        }
    }
    env
}

/// Who the task runs as: its user (`nobody` by default, root in raw mode) or its ephemeral id,
/// with the task's `group`; refused when the plugin denies it or, for an isolated task, when it
/// is uid 0 without `allow_root`.
fn task_identity(input: &PlanInput<'_>, isolated: bool) -> Result<identity::Identity, DriverError> {
    let PlanInput {
        nomad,
        task,
        plugin,
        ..
    } = input;
    let id = nomad.id.as_str();
    let user = match nomad.user.as_str() {
        "" if isolated => identity::DEFAULT_USER,
        "" => "root",
        named => named,
    };
    let mut ident = match input.ephemeral_id {
        Some(eid) => identity::ephemeral(eid),
        None => identity::resolve(user).map_err(|e| refuse(id, e))?,
    };
    if let Some(group) = &task.group {
        ident = identity::with_group(ident, group).map_err(|e| refuse(id, e))?;
    }
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

/// Where a `logging { driver = "journald" }` task's output goes; refused when journald's socket
/// is not there (its output would be lost).
fn journal_spec(
    id: &str,
    nomad: &drivers::TaskConfig,
    plugin: &PluginConfig,
) -> Result<JournalSpec, DriverError> {
    use std::os::unix::fs::FileTypeExt;
    let socket = &plugin.journald_socket;
    if !std::fs::metadata(socket).is_ok_and(|m| m.file_type().is_socket()) {
        return Err(refuse(
            id,
            format!(
                "logging.driver = \"journald\" but there is no journald socket at {} (is systemd-journald running?); start it, point the plugin's journald_socket at it, or use logging {{ driver = \"nomad\" }}",
                socket.display()
            ),
        ));
    }
    Ok(JournalSpec {
        socket: socket.clone(),
        identifier: nomad.name.clone(),
        fields: crate::journal::task_fields(nomad),
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
    let root_image = task.images.root.is_some();
    let mut mounts: Vec<Bind> = plugin
        .chroot_env
        .iter()
        // A root image replaces the host's directories.
        .filter(|(host, _)| !root_image && Path::new(host).exists())
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
    let mounts = order(mounts);
    let images = super::images::resolve(
        &task.images,
        task_dir,
        Path::new(&nomad.alloc_dir),
        &|p: &Path| host_path(&mounts, p),
    )
    .map_err(|e| refuse(&nomad.id, e))?;
    Ok(Sandbox {
        root: state_dir.join("root"),
        mounts,
        images,
        devices,
        ipc_ns: task.ipc_mode.unwrap_or(plugin.default_ipc_mode) == NsMode::Private,
        netns,
        pivot_root: !plugin.no_pivot_root,
    })
}

/// Where and how to look for the task's command.
struct Search<'a> {
    task: &'a str,
    command: &'a str,
    isolated: bool,
    /// The task directory on the host.
    task_dir: &'a Path,
    /// The allocation directory on the host: files in it (artifacts, templates) are made
    /// executable when they are not, as exec does.
    alloc_dir: &'a Path,
    /// The task's PATH, searched last.
    path: &'a str,
    /// Task path → host path.
    view: &'a dyn Fn(&Path) -> Option<PathBuf>,
    /// The task's root is a filesystem image, which the plugin cannot look into: a command that
    /// is not in the task's own directories is taken as a path inside the image, unchecked.
    in_root_image: bool,
}

impl Search<'_> {
    /// The candidates in exec's order: the task's `local/`, the task directory (for an isolated
    /// task its root, which holds `chroot_env`, the task's directories and the volume mounts,
    /// so mounts come in here), then for a bare name `/usr/local/bin`, `/usr/bin`, `/bin` and
    /// finally the task's PATH. In raw mode (raw_exec's order): `local/`, the task directory,
    /// an absolute host path, then the PATH. As the task sees them.
    fn candidates(&self) -> Vec<PathBuf> {
        let cmd = self.command;
        let rel = cmd.trim_start_matches('/');
        let mut out = Vec::new();
        if self.isolated {
            out.push(Path::new("/local").join(rel));
            out.push(Path::new("/").join(rel));
        } else {
            out.push(self.task_dir.join("local").join(rel));
            out.push(self.task_dir.join(rel));
            if cmd.starts_with('/') {
                out.push(PathBuf::from(cmd));
            }
        }
        if !cmd.contains('/') {
            let fixed = if self.isolated {
                ["/usr/local/bin", "/usr/bin", "/bin"].as_slice()
            } else {
                [].as_slice()
            };
            for dir in fixed
                .iter()
                .copied()
                .chain(self.path.split(':').filter(|d| d.starts_with('/')))
            {
                out.push(Path::new(dir).join(cmd));
            }
        }
        out
    }

    /// Finds the program; checked on the host through `view`.
    fn resolve(&self) -> Result<PathBuf, DriverError> {
        let found = self.candidates().into_iter().find_map(|c| {
            let host = (self.view)(&c)?;
            host.is_file().then_some((c, host))
        });
        if found.is_none() && self.in_root_image {
            return if self.command.contains('/') {
                Ok(Path::new("/").join(self.command.trim_start_matches('/')))
            } else {
                Err(refuse(
                    self.task,
                    format!(
                        "command {:?} is not in the task's directories and the driver cannot search the root_image for it; give its absolute path inside the image, e.g. \"/bin/{}\"",
                        self.command, self.command
                    ),
                ))
            };
        }
        let Some((candidate, host)) = found else {
            let where_ = if self.command.contains('/') {
                "in the task's filesystem".to_owned()
            } else {
                format!(
                    "in the task's local/, its root, /usr/local/bin, /usr/bin, /bin or its PATH ({})",
                    self.path
                )
            };
            return Err(refuse(
                self.task,
                format!(
                    "command {:?} does not exist {where_}; check config {{ command }} and the plugin's chroot_env (or fetch it with an artifact into local/)",
                    self.command
                ),
            ));
        };
        if !is_executable(&host) {
            self.make_executable(&candidate, &host)?;
        }
        if let Some(interp) = shebang(&host)
            && !(self.view)(&interp).is_some_and(|h| is_executable(&h))
        {
            return Err(refuse(
                self.task,
                format!(
                    "command {:?} is a script whose interpreter {} does not exist (or is not executable) in the task's filesystem; fix its #! line or add the interpreter's directory to chroot_env",
                    self.command,
                    interp.display()
                ),
            ));
        }
        Ok(candidate)
    }

    /// Adds the execute bits to a command from the allocation directory (an artifact fetched
    /// without them), as exec does; anything else that is not executable is refused.
    fn make_executable(&self, candidate: &Path, host: &Path) -> Result<(), DriverError> {
        let not_exec = || {
            refuse(
                self.task,
                format!(
                    "command {:?} ({}) is not an executable file; check config {{ command }} and the file's mode",
                    self.command,
                    candidate.display()
                ),
            )
        };
        let in_alloc = match (host.canonicalize(), self.alloc_dir.canonicalize()) {
            (Ok(h), Ok(a)) => h.starts_with(a),
            _ => false,
        };
        if !in_alloc {
            return Err(not_exec());
        }
        let mode = std::fs::metadata(host)
            .map_err(|_| not_exec())?
            .permissions()
            .mode();
        std::fs::set_permissions(host, std::fs::Permissions::from_mode(mode | 0o555))
            .map_err(|e| DriverError::io(format!("making {} executable", host.display()), e))?;
        Ok(())
    }
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
