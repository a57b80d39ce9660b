//! Debian's `promtool` (`PROMTOOL_BIN`, installed with the `prometheus` package by `cargo xtask
//! setup`): `check config`, `check rules`, `test rules`, or any other subcommand.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::env;

/// Runs `promtool <args>` and returns its combined stdout and stderr; a non-zero exit is an
/// error carrying that output (promtool explains what is wrong there).
pub fn promtool<S: AsRef<OsStr>>(args: &[S]) -> Result<String> {
    let bin = env::promtool_bin()?;
    let mut cmd = Command::new(&bin);
    cmd.args(args).stdin(Stdio::null());
    let shown = format!(
        "{} {}",
        bin.display(),
        args.iter()
            .map(|a| a.as_ref().to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = cmd.output().with_context(|| format!("running `{shown}`"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("`{shown}` failed ({}):\n{}", out.status, text.trim_end());
    }
    Ok(text)
}

/// `promtool check config <path>` (also checks the rule files it names).
pub fn check_config(path: &Path) -> Result<String> {
    let args: [&OsStr; 3] = ["check".as_ref(), "config".as_ref(), path.as_os_str()];
    promtool(&args)
}
