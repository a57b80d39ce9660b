//! Debian packages the end-to-end suite's compatibility checks run against: `systemd` (the real
//! `systemd-journald` and `journalctl`, started by the tests in a journal namespace of their
//! own; no systemd runs as PID 1 here), `squashfs-tools` (mksquashfs, for filesystem images)
//! and `busybox-static` (a root image's only binary). Installed non-interactively when missing;
//! the systemd package starts no daemon on a machine without systemd as PID 1.

use std::path::Path;

use anyhow::{Result, bail};

use super::Item;
use crate::util;

/// (package, a file it installs that the tests use).
const PACKAGES: [(&str, &str); 3] = [
    ("systemd", "/lib/systemd/systemd-journald"),
    ("squashfs-tools", "/usr/bin/mksquashfs"),
    ("busybox-static", "/bin/busybox"),
];

pub fn ensure() -> Result<Item> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, file)| !Path::new(file).exists())
        .map(|(p, _)| *p)
        .collect();
    let detail = PACKAGES
        .iter()
        .map(|(p, _)| *p)
        .collect::<Vec<_>>()
        .join(", ");
    if missing.is_empty() {
        return Ok(Item::found("debian packages", detail));
    }
    if util::euid()? != 0 || util::which("apt-get").is_none() {
        bail!(
            "{} missing; install with `apt-get install {}` (as root)",
            missing.join(", "),
            missing.join(" ")
        );
    }
    util::apt_install(&missing)?;
    if let Some((p, file)) = PACKAGES.iter().find(|(_, f)| !Path::new(f).exists()) {
        bail!("apt-get installed {p} but {file} is still missing");
    }
    Ok(Item::installed("debian packages", detail))
}
