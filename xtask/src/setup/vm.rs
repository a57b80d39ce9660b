//! What `vm-test` needs to boot throwaway guests under QEMU's software emulation: Debian's
//! `qemu-system-x86`, `busybox-static` and two stock kernels (`linux-image-6.12-amd64`, and
//! `linux-image-amd64`, Debian 12's 6.1), plus virtme-ng from PyPI in a venv in the tool cache.
//! A venv is not relocatable, so it is built in place and marked complete only at the end.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::Item;
use crate::util;

/// virtme-ng release (PyPI); 1.42 boots Debian's kernels with `--disable-kvm` on this machine.
pub const VIRTME_NG_VERSION: &str = "1.42";

/// Debian packages the guests need.
const APT_PACKAGES: [&str; 4] = [
    "qemu-system-x86",
    "busybox-static",
    "linux-image-6.12-amd64",
    "linux-image-amd64",
];

/// Marker written last into a finished venv.
const COMPLETE: &str = ".bpfexec-complete";

/// `$CACHE/virtme-ng-<v>`: the venv whose `bin/` must be on PATH (vng runs `virtme-run`).
pub fn venv_dir(cache: &Path) -> PathBuf {
    cache.join(format!("virtme-ng-{VIRTME_NG_VERSION}"))
}

/// Installs what is missing; one item per tool.
pub fn ensure(cache: &Path) -> Result<Vec<Item>> {
    Ok(vec![ensure_packages()?, ensure_virtme_ng(cache)?])
}

fn installed(package: &str) -> bool {
    util::probe(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|s| s.trim() == "install ok installed")
}

fn ensure_packages() -> Result<Item> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed(p))
        .collect();
    let detail = APT_PACKAGES.join(", ");
    if missing.is_empty() {
        return Ok(Item::found("qemu + guest kernels", detail));
    }
    if util::euid()? != 0 || util::which("apt-get").is_none() {
        bail!(
            "the VM tests need the Debian packages {} (missing: {}); install them as root with \
             `apt-get install --no-install-recommends {}`",
            detail,
            missing.join(", "),
            missing.join(" ")
        );
    }
    let apt = || {
        let mut cmd = Command::new("apt-get");
        cmd.env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    };
    util::run(apt().args(["-q", "update"]))?;
    util::run(
        apt()
            .args(["-q", "-y", "--no-install-recommends", "install"])
            .args(&missing),
    )?;
    if let Some(still) = missing.iter().find(|p| !installed(p)) {
        bail!("apt-get ran but {still} is still not installed");
    }
    Ok(Item::installed("qemu + guest kernels", detail))
}

fn ensure_virtme_ng(cache: &Path) -> Result<Item> {
    let venv = venv_dir(cache);
    let vng = venv.join("bin/vng");
    if venv.join(COMPLETE).exists() && util::is_executable(&vng) {
        return Ok(Item::found("virtme-ng", vng.display().to_string()));
    }
    if venv.exists() {
        std::fs::remove_dir_all(&venv)
            .with_context(|| format!("removing the unfinished venv {}", venv.display()))?;
    }
    let python = util::which("python3").context(
        "virtme-ng needs python3 with the venv module (Debian: apt-get install python3-venv)",
    )?;
    util::run(Command::new(&python).arg("-m").arg("venv").arg(&venv))?;
    util::run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("virtme-ng=={VIRTME_NG_VERSION}")),
    )?;
    if !util::is_executable(&vng) {
        bail!(
            "pip installed virtme-ng {VIRTME_NG_VERSION} but {} is missing",
            vng.display()
        );
    }
    std::fs::write(venv.join(COMPLETE), VIRTME_NG_VERSION)
        .with_context(|| format!("marking {} complete", venv.display()))?;
    Ok(Item::installed("virtme-ng", vng.display().to_string()))
}

/// The newest installed kernel image `/boot/vmlinuz-<series>.<n>…` with its modules, as
/// `(version, image)`; e.g. series `6.12` or `6.1`.
pub fn kernel(series: &str) -> Result<(String, PathBuf)> {
    let prefix = format!("vmlinuz-{series}.");
    let mut found: Vec<(Vec<u32>, String)> = std::fs::read_dir("/boot")
        .context("reading /boot")?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let version = name.strip_prefix("vmlinuz-")?.to_owned();
            name.starts_with(&prefix).then_some(())?;
            Path::new("/lib/modules")
                .join(&version)
                .is_dir()
                .then_some(())?;
            let key = version
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse().ok())
                .collect();
            Some((key, version))
        })
        .collect();
    found.sort();
    let (_, version) = found.pop().with_context(|| {
        format!("no kernel {series}.x with modules in /boot and /lib/modules (run `cargo xtask vm-test`, which installs it)")
    })?;
    let image = Path::new("/boot").join(format!("vmlinuz-{version}"));
    Ok((version, image))
}
