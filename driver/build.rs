//! Builds the kernel-side probes (`ebpf/`, crate `bpfexec-ebpf`) with nightly + bpf-linker through
//! aya-build, leaving the objects at `$OUT_DIR/bpfexec-ebpf` (the probes, embedded by
//! `src/probes/loader.rs`) and `$OUT_DIR/bpfexec-devices` (the cgroup v2 device program, embedded
//! by `src/cgroups/device_program.rs`).
//!
//! `ebpf/` is outside the workspace, so aya-build's `cargo build --package bpfexec-ebpf` runs with
//! `ebpf/` as the working directory. Set `AYA_BUILD_SKIP=1` to build the driver without probes
//! (an empty object is embedded and `ProbeSet::load` then reports that clearly).

use std::{
    env,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

const EBPF_PACKAGE: &str = "bpfexec-ebpf";
/// The package's second binary: the cgroup v2 device program (`ebpf/src/devices.rs`).
const DEVICES_OBJECT: &str = "bpfexec-devices";
const BPF_LINKER: &str = "bpf-linker";
const BPF_LINKER_VERSION: &str = "0.13.0";

fn main() -> anyhow::Result<()> {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?);
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let repo = manifest_dir
        .parent()
        .context("driver/ has no parent directory")?;
    let ebpf_dir = repo.join("ebpf");
    let common_dir = repo.join("common");

    // Narrow rebuild triggers: only the probe sources, the shared records and this script.
    // (aya-build adds `rerun-if-changed` for the whole `ebpf/` directory itself.)
    println!("cargo:rerun-if-changed=build.rs");
    for path in [
        ebpf_dir.join("src"),
        ebpf_dir.join("Cargo.toml"),
        ebpf_dir.join("Cargo.lock"),
        common_dir.join("src"),
        common_dir.join("Cargo.toml"),
    ] {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    println!("cargo:rerun-if-env-changed=BPFEXEC_CACHE");
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");

    let object = out_dir.join(EBPF_PACKAGE);
    if skip_requested() {
        println!("cargo:warning=AYA_BUILD_SKIP is set: building the driver WITHOUT eBPF probes");
        for name in [EBPF_PACKAGE, DEVICES_OBJECT] {
            let object = out_dir.join(name);
            if !object.exists() {
                fs::write(&object, b"").with_context(|| format!("writing {}", object.display()))?;
            }
        }
        return Ok(());
    }

    ensure_bpf_linker()?;

    // aya-build forwards every stderr line of the nested cargo as a `cargo:warning`; keep only
    // real diagnostics (compiler messages arrive separately, as JSON on stdout).
    // SAFETY: single-threaded build script; nothing else reads the environment concurrently.
    unsafe { env::set_var("CARGO_TERM_QUIET", "true") };
    // aya-build spawns `cargo build --package bpfexec-ebpf` in the current directory; `ebpf/`
    // is its own workspace root, so run it from there.
    env::set_current_dir(&ebpf_dir).with_context(|| format!("entering {}", ebpf_dir.display()))?;
    let root_dir = ebpf_dir
        .to_str()
        .context("the ebpf/ path is not valid UTF-8")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: EBPF_PACKAGE,
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context("building the eBPF probes (crate bpfexec-ebpf) with nightly and bpf-linker")?;

    for object in [object, out_dir.join(DEVICES_OBJECT)] {
        if !object.is_file() {
            bail!("aya-build finished but {} is missing", object.display());
        }
    }
    Ok(())
}

fn skip_requested() -> bool {
    env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// Makes sure `bpf-linker` is reachable for the nested nightly build: on `PATH`, or else in the
/// version-keyed cache that `cargo xtask setup` fills (whose bin dir is then put first on `PATH`).
fn ensure_bpf_linker() -> anyhow::Result<()> {
    let path = env::var_os("PATH").unwrap_or_default();
    if env::split_paths(&path).any(|dir| is_executable(&dir.join(BPF_LINKER))) {
        return Ok(());
    }
    let cache = env::var_os("BPFEXEC_CACHE").map(PathBuf::from).or_else(|| {
        env::var_os("HOME").map(|home| Path::new(&home).join(".cache").join("bpfexec"))
    });
    if let Some(bin) = cache.map(|c| {
        c.join(format!("{BPF_LINKER}-{BPF_LINKER_VERSION}"))
            .join("bin")
    }) && is_executable(&bin.join(BPF_LINKER))
    {
        let mut dirs = vec![bin];
        dirs.extend(env::split_paths(&path));
        let joined: OsString = env::join_paths(dirs).context("joining PATH")?;
        // SAFETY: build scripts are single-threaded at this point (nothing has been spawned
        // yet), so no other thread can be reading the environment concurrently.
        unsafe { env::set_var("PATH", joined) };
        return Ok(());
    }
    bail!(
        "bpf-linker not found on PATH: run `cargo xtask setup` (it installs bpf-linker \
         {BPF_LINKER_VERSION} into ~/.cache/bpfexec) and build through `cargo xtask …`, or add its \
         bin dir to PATH (or set AYA_BUILD_SKIP=1 to build the driver without eBPF probes)"
    )
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
