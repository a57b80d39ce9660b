//! `cargo xtask build`: builds the driver (its build.rs compiles the eBPF crate with nightly and
//! needs bpf-linker on PATH) and refreshes `PLUGIN_DIR`, which Nomad requires to hold a copy (not
//! a symlink) named `nomad-driver-bpfexec`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::tools::{self, DRIVER_BIN_NAME, Profile};
use crate::util;

pub fn run(args: &[String]) -> Result<()> {
    if let Some(other) = args.iter().find(|a| *a != "--release") {
        bail!("unknown `build` option `{other}` (expected --release)");
    }
    let profile = Profile::from_args(args);
    let plugin = build(profile)?;
    println!("driver: {}", tools::driver_bin(profile).display());
    println!("plugin: {}", plugin.display());
    Ok(())
}

/// A `cargo` command with bpf-linker's dir first on PATH.
pub fn cargo() -> Result<Command> {
    let cache = tools::cache_root()?;
    let linker = tools::bpf_linker_bin(&cache);
    if !util::is_executable(&linker) {
        bail!(
            "{} is missing: run `cargo xtask setup` first",
            linker.display()
        );
    }
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(tools::repo_root())
        .env("PATH", util::path_with(&tools::bpf_linker_bin_dir(&cache))?);
    Ok(cmd)
}

/// Builds the driver and returns the refreshed plugin binary's path.
pub fn build(profile: Profile) -> Result<PathBuf> {
    let mut cmd = cargo()?;
    cmd.args(["build", "-p", "bpfexec-driver"]);
    if profile == Profile::Release {
        cmd.arg("--release");
    }
    util::run(&mut cmd)?;
    refresh_plugin_dir(profile)
}

/// Copies the driver into `PLUGIN_DIR` via a temp name + rename, so an agent still running the
/// old binary is unaffected (no ETXTBSY) and no half-written file is ever visible.
pub fn refresh_plugin_dir(profile: Profile) -> Result<PathBuf> {
    let source = tools::driver_bin(profile);
    if !source.is_file() {
        bail!("{} was not produced by the build", source.display());
    }
    let dir = tools::plugin_dir(profile);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dest = dir.join(DRIVER_BIN_NAME);
    let tmp = dir.join(format!(".{DRIVER_BIN_NAME}.tmp-{}", std::process::id()));
    copy(&source, &tmp)?;
    std::fs::rename(&tmp, &dest)
        .with_context(|| format!("cannot move {} to {}", tmp.display(), dest.display()))?;
    Ok(dest)
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to)
        .map(|_| ())
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))
}
