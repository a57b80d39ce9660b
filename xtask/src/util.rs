//! Running external commands with clear errors: every child gets no stdin (CI has none), and a
//! failure names the exact command line, its exit status and, for captured runs, its stderr.

use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Human-readable form of a command line, as it could be pasted into a shell.
pub fn describe(cmd: &Command) -> String {
    let mut line = String::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value
            && [
                "PATH",
                "LLVM_PREFIX",
                "CGO_ENABLED",
                "GOFLAGS",
                "GOTOOLCHAIN",
            ]
            .iter()
            .any(|k| OsStr::new(k) == key)
        {
            // PATH is long and only its new head matters to a reader.
            let shown = if key == "PATH" {
                let value = value.to_string_lossy();
                let head = value.split(':').next().unwrap_or_default();
                format!("\"{head}:$PATH\"")
            } else {
                quote(&value.to_string_lossy())
            };
            let _ = write!(line, "{}={shown} ", key.to_string_lossy());
        }
    }
    line.push_str(&quote(&cmd.get_program().to_string_lossy()));
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&quote(&arg.to_string_lossy()));
    }
    line
}

/// Quotes a word for a POSIX shell when it contains anything but safe characters.
pub fn quote(word: &str) -> String {
    let safe = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if safe {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

fn spawn_error(cmd: &Command, err: &std::io::Error) -> anyhow::Error {
    let program = cmd.get_program().to_string_lossy();
    if err.kind() == std::io::ErrorKind::NotFound {
        anyhow::anyhow!("cannot run `{program}`: not found (is it installed and on PATH?)")
    } else {
        anyhow::anyhow!("cannot run `{}`: {err}", describe(cmd))
    }
}

/// Runs a command with inherited stdout/stderr, echoing it first; fails on a non-zero exit.
/// `apt-get update` then a non-interactive install of `packages` (keeping existing config files).
pub fn apt_install(packages: &[&str]) -> Result<()> {
    let apt = || {
        let mut cmd = Command::new("apt-get");
        cmd.env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    };
    run(apt().args(["-q", "update"]))?;
    run(apt()
        .args([
            "-q",
            "-y",
            "--no-install-recommends",
            "-o",
            "Dpkg::Options::=--force-confdef",
            "-o",
            "Dpkg::Options::=--force-confold",
            "install",
        ])
        .args(packages))
}

pub fn run(cmd: &mut Command) -> Result<()> {
    println!("    $ {}", describe(cmd));
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .map_err(|e| spawn_error(cmd, &e))?;
    if !status.success() {
        bail!("`{}` failed ({status})", describe(cmd));
    }
    Ok(())
}

/// Runs a command quietly and returns its stdout; on failure the error carries stderr's tail.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| spawn_error(cmd, &e))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "`{}` failed ({}):\n{}",
            describe(cmd),
            out.status,
            tail.join("\n")
        );
    }
    String::from_utf8(out.stdout)
        .with_context(|| format!("`{}`: stdout is not UTF-8", describe(cmd)))
}

/// Like [`output`], but `None` when the program is missing or fails (used for probing).
pub fn probe(cmd: &mut Command) -> Option<String> {
    output(cmd).ok()
}

/// First line of a string, trimmed (version banners).
pub fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default().trim()
}

/// Finds an executable on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// True for a regular file with an execute bit.
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `PATH` with `dir` put in front.
pub fn path_with(dir: &Path) -> Result<OsString> {
    let mut dirs = vec![dir.to_path_buf()];
    if let Some(old) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&old));
    }
    std::env::join_paths(dirs).context("PATH contains a ':' in a directory name")
}

/// Effective uid of this process (the owner of `/proc/self`), without unsafe code.
pub fn euid() -> Result<u32> {
    use std::os::unix::fs::MetadataExt as _;
    Ok(std::fs::metadata("/proc/self")
        .context("cannot stat /proc/self")?
        .uid())
}

/// `1m23.4s` / `4.2s`.
pub fn fmt_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs >= 60.0 {
        let minutes = (secs / 60.0).floor();
        format!("{minutes:.0}m{:04.1}s", secs - minutes * 60.0)
    } else {
        format!("{secs:.1}s")
    }
}
