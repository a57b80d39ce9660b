//! Go toolchain helpers shared by the tools built from the Go module proxy (Nomad, Jaeger): the
//! `go` command with the local toolchain only and module mode, `go mod download`, and checks
//! that the needed programs are on PATH.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::util;

/// Fails naming the first of `tools` missing from PATH (`why` says what needs them); returns
/// `go version`'s output.
pub fn require(tools: &[&str], why: &str) -> Result<String> {
    for tool in tools {
        if util::which(tool).is_none() {
            bail!("`{tool}` is not on PATH: {why}");
        }
    }
    Ok(util::output(Command::new("go").arg("version"))?
        .trim()
        .to_owned())
}

/// `go` with the local toolchain only (never a downloaded one) and module mode.
pub fn go_command() -> Command {
    let mut cmd = Command::new("go");
    cmd.env("GOTOOLCHAIN", "local").env("GOFLAGS", "-mod=mod");
    cmd
}

/// `go mod download -json module@version` → the module's extracted dir. The JSON carries the
/// proxy's error (e.g. "unknown revision") when the download fails.
pub fn download(cwd: &Path, module: &str, version: &str) -> Result<PathBuf> {
    let mut cmd = go_command();
    cmd.current_dir(cwd)
        .args(["mod", "download", "-json", &format!("{module}@{version}")])
        .stdin(Stdio::null());
    println!("    $ {}", util::describe(&cmd));
    let out = cmd
        .output()
        .with_context(|| format!("cannot run `{}`", util::describe(&cmd)))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json: Option<serde_json::Value> = serde_json::from_str(&stdout).ok();
    let field = |key: &str| {
        json.as_ref()
            .and_then(|j| j.get(key))
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
    };
    if let Some(error) = field("Error") {
        bail!("go mod download {module}@{version}: {error}");
    }
    if !out.status.success() {
        bail!(
            "go mod download {module}@{version} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let dir = field("Dir").context("`go mod download -json` printed no Dir")?;
    Ok(PathBuf::from(dir))
}
