//! Where tools and build outputs live: the per-version tool cache outside the clone
//! (`${BPFEXEC_CACHE:-$HOME/.cache/bpfexec}`) and the driver paths under the cargo target dir.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// bpf-linker release; its LLVM major must match nightly rustc's (LLVM 22, feature `llvm-22`).
pub const BPF_LINKER_VERSION: &str = "0.13.0";
pub const BPF_LINKER_LLVM_FEATURE: &str = "llvm-22";

/// A Nomad release buildable from the Go module proxy: the nomad module version plus the
/// pseudo-version of its nested `api` module at the same commit (commit-hash queries are refused).
#[derive(Clone, Copy, Debug)]
pub struct NomadRelease {
    pub version: &'static str,
    pub api_pseudo_version: &'static str,
}

/// The release the project targets.
pub const NOMAD_PRIMARY: NomadRelease = NomadRelease {
    version: "1.10.5",
    api_pseudo_version: "v0.0.0-20250909143645-a3b86c697f38",
};

/// Used only when the primary release cannot be fetched or built (reported loudly).
pub const NOMAD_FALLBACK: NomadRelease = NomadRelease {
    version: "1.9.7",
    api_pseudo_version: "v0.0.0-20250311090715-f8695974efdb",
};

/// Jaeger release (the v2 all-in-one binary of that tag) built by setup as the real OTLP peer.
pub const JAEGER_VERSION: &str = "1.76.0";
/// Its Go module.
pub const JAEGER_MODULE: &str = "github.com/jaegertracing/jaeger";

/// Name of the driver binary, also its required file name inside Nomad's `plugin_dir`.
pub const DRIVER_BIN_NAME: &str = "nomad-driver-bpfexec";

/// Cargo profile the driver is built with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    Debug,
    Release,
}

impl Profile {
    /// Parses `--release` out of an argument list (everything else is left to the caller).
    pub fn from_args(args: &[String]) -> Self {
        if args.iter().any(|a| a == "--release") {
            Self::Release
        } else {
            Self::Debug
        }
    }

    pub fn dir_name(self) -> &'static str {
        match self {
            Self::Debug => "debug",
            Self::Release => "release",
        }
    }
}

/// The cache root; created on demand by setup.
pub fn cache_root() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("BPFEXEC_CACHE").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("neither BPFEXEC_CACHE nor HOME is set: cannot place the tool cache")?;
    Ok(Path::new(&home).join(".cache").join("bpfexec"))
}

/// `$CACHE/bpf-linker-<v>` (a `cargo install --root`).
pub fn bpf_linker_root(cache: &Path) -> PathBuf {
    cache.join(format!("bpf-linker-{BPF_LINKER_VERSION}"))
}

pub fn bpf_linker_bin_dir(cache: &Path) -> PathBuf {
    bpf_linker_root(cache).join("bin")
}

pub fn bpf_linker_bin(cache: &Path) -> PathBuf {
    bpf_linker_bin_dir(cache).join("bpf-linker")
}

/// `LLVM_PREFIX` for building bpf-linker: `lib/` holds symlinks to nightly's shared libLLVM.
/// bpf-linker's rpath points here, so these links must outlive the build.
pub fn llvm_prefix(cache: &Path) -> PathBuf {
    cache.join("llvm-from-nightly")
}

pub fn nomad_dir(cache: &Path, release: NomadRelease) -> PathBuf {
    cache.join(format!("nomad-{}", release.version))
}

pub fn nomad_bin(cache: &Path, release: NomadRelease) -> PathBuf {
    nomad_dir(cache, release).join("nomad")
}

/// `$CACHE/jaeger-<v>`.
pub fn jaeger_dir(cache: &Path) -> PathBuf {
    cache.join(format!("jaeger-{JAEGER_VERSION}"))
}

pub fn jaeger_bin(cache: &Path) -> PathBuf {
    jaeger_dir(cache).join("jaeger")
}

/// Prefix of temporary directories in the cache; the suffix is the owning pid.
pub const TMP_PREFIX: &str = ".tmp-";

/// A fresh temp dir inside the cache (same filesystem, so a final `rename` is atomic).
pub fn tmp_dir(cache: &Path, what: &str) -> PathBuf {
    cache.join(format!("{TMP_PREFIX}{what}-{}", std::process::id()))
}

/// The workspace root (xtask lives one level below it).
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Cargo's target dir, honouring `CARGO_TARGET_DIR`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => repo_root().join(dir),
        None => repo_root().join("target"),
    }
}

/// The driver binary `cargo build -p bpfexec-driver` produces.
pub fn driver_bin(profile: Profile) -> PathBuf {
    target_dir().join(profile.dir_name()).join(DRIVER_BIN_NAME)
}

/// A Nomad `plugin_dir` holding a copy (not a symlink) of the driver.
pub fn plugin_dir(profile: Profile) -> PathBuf {
    target_dir().join("nomad-plugins").join(profile.dir_name())
}
