//! `cargo xtask setup`: idempotently installs what the build and tests need into the per-version
//! cache (nightly + rust-src, bpf-linker, a Nomad agent and Jaeger built from the Go module
//! proxy), Prometheus with promtool and the test peers of the compatibility checks (journald,
//! mksquashfs, busybox) from Debian. Every install goes to a temp dir first and is renamed into
//! place.

mod debian;
mod go;
mod jaeger;
mod nomad;
mod prometheus;
mod rust;
pub mod vm;

pub use jaeger::installed as installed_jaeger;
pub use nomad::installed as installed_nomad;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::tools;
use crate::util;

/// What setup found or did for one tool.
pub struct Item {
    pub name: String,
    pub installed: bool,
    pub detail: String,
}

impl Item {
    pub fn found(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            installed: false,
            detail: detail.into(),
        }
    }

    pub fn installed(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            installed: true,
            detail: detail.into(),
        }
    }
}

pub fn run(args: &[String]) -> Result<()> {
    if let Some(arg) = args.first() {
        bail!("`setup` takes no arguments (got `{arg}`)");
    }
    ensure_all()
}

/// Installs whatever is missing and prints one line per tool.
pub fn ensure_all() -> Result<()> {
    let start = Instant::now();
    let cache = tools::cache_root()?;
    std::fs::create_dir_all(&cache)
        .with_context(|| format!("cannot create the tool cache {}", cache.display()))?;
    println!("[setup] tool cache: {}", cache.display());
    remove_stale_tmp_dirs(&cache);

    // In order: bpf-linker links nightly's libLLVM, so nightly comes first.
    let items = [
        step(rust::ensure_nightly())?,
        step(rust::ensure_bpf_linker(&cache))?,
        step(nomad::ensure(&cache))?,
        step(jaeger::ensure(&cache))?,
        step(prometheus::ensure())?,
        step(debian::ensure())?,
    ];

    let installed = items.iter().filter(|i| i.installed).count();
    println!(
        "[setup] done in {}: {} found, {installed} installed",
        util::fmt_duration(start.elapsed()),
        items.len() - installed
    );
    Ok(())
}

fn step(result: Result<Item>) -> Result<Item> {
    let item = result?;
    let verb = if item.installed { "installed" } else { "found" };
    println!("[setup] {:<22} {verb:<9} {}", item.name, item.detail);
    Ok(item)
}

/// A temp dir in the cache that is removed (made writable first: Go's module cache copies are
/// read-only) unless it was published.
pub struct TmpDir {
    path: PathBuf,
}

impl TmpDir {
    pub fn new(cache: &Path, what: &str) -> Result<Self> {
        let path = tools::tmp_dir(cache, what);
        remove_tree(&path);
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        remove_tree(&self.path);
    }
}

fn remove_tree(path: &Path) {
    if path.exists() {
        let _ = Command::new("chmod")
            .arg("-R")
            .arg("u+w")
            .arg(path)
            .output();
        let _ = std::fs::remove_dir_all(path);
    }
}

/// Moves a fully built `staged` dir to `dest` with a rename (atomic on the cache filesystem).
/// A broken `dest` from an earlier run is replaced.
pub fn publish(staged: &Path, dest: &Path) -> Result<()> {
    if dest.exists() {
        remove_tree(dest);
    }
    std::fs::rename(staged, dest).with_context(|| {
        format!(
            "cannot move {} into place at {}",
            staged.display(),
            dest.display()
        )
    })
}

/// Removes `.tmp-<what>-<pid>` dirs left by interrupted runs whose process is gone.
fn remove_stale_tmp_dirs(cache: &Path) {
    let Ok(entries) = std::fs::read_dir(cache) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(tools::TMP_PREFIX) else {
            continue;
        };
        let pid = rest.rsplit('-').next().and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            println!("[setup] removing leftover of an interrupted install: {name}");
            remove_tree(&entry.path());
        }
    }
}
