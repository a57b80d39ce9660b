//! The kernel-side toolchain: nightly rustc with `rust-src` (for `-Z build-std=core` on
//! `bpfel-unknown-none`) and bpf-linker built against nightly's own shared libLLVM, so both use
//! the same LLVM major (ENGINEERING.md §2).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::{Item, TmpDir, publish};
use crate::tools::{self, BPF_LINKER_LLVM_FEATURE, BPF_LINKER_VERSION};
use crate::util;

/// LLVM major that `BPF_LINKER_LLVM_FEATURE` selects.
const LLVM_MAJOR: &str = "22";

pub fn ensure_nightly() -> Result<Item> {
    // Ask `toolchain list` first: `rustup +nightly …` may auto-install a full-profile nightly.
    let toolchains = util::output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is needed to manage the nightly toolchain")?;
    let installed = if toolchains.lines().any(|l| l.starts_with("nightly-")) {
        util::probe(Command::new("rustup").args(["+nightly", "component", "list", "--installed"]))
    } else {
        None
    };
    let has_src = |list: &str| list.lines().any(|l| l.trim().starts_with("rust-src"));
    let did_install = match installed {
        Some(list) if has_src(&list) => false,
        Some(_) => {
            // Adding only the component keeps the installed nightly (and its libLLVM, which
            // bpf-linker links against) instead of updating it.
            util::run(Command::new("rustup").args([
                "component",
                "add",
                "rust-src",
                "--toolchain",
                "nightly",
            ]))?;
            true
        }
        None => {
            util::run(Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]))
            .context("cannot install the nightly toolchain (is rustup installed?)")?;
            true
        }
    };
    let version = util::output(Command::new("rustc").args(["+nightly", "--version"]))?;
    let detail = format!("{} with rust-src", version.trim());
    Ok(if did_install {
        Item::installed("nightly toolchain", detail)
    } else {
        Item::found("nightly toolchain", detail)
    })
}

pub fn ensure_bpf_linker(cache: &Path) -> Result<Item> {
    let name = format!("bpf-linker {BPF_LINKER_VERSION}");
    let bin = tools::bpf_linker_bin(cache);
    // Keep the rpath target current even when the binary is already there.
    let llvm = link_nightly_llvm(cache)?;
    if let Some(version) = linker_version(&bin) {
        return Ok(Item::found(name, format!("{} ({version})", bin.display())));
    }
    if bin.exists() {
        println!(
            "[setup] {} exists but does not run; rebuilding it",
            bin.display()
        );
    }

    println!(
        "[setup] building bpf-linker {BPF_LINKER_VERSION} against {} (takes a few minutes)",
        llvm.display()
    );
    let staging = TmpDir::new(cache, &format!("bpf-linker-{BPF_LINKER_VERSION}"))?;
    let root = staging.path().join("root");
    util::run(
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .current_dir(cache)
            .env("LLVM_PREFIX", tools::llvm_prefix(cache))
            .args([
                "install",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--locked",
            ])
            .args([
                "--no-default-features",
                "--features",
                BPF_LINKER_LLVM_FEATURE,
                "--root",
            ])
            .arg(&root),
    )?;
    let staged_bin = root.join("bin").join("bpf-linker");
    let Some(version) = linker_version(&staged_bin) else {
        bail!("the freshly built {} does not run", staged_bin.display());
    };
    publish(&root, &tools::bpf_linker_root(cache))?;
    Ok(Item::installed(
        name,
        format!("{} ({version})", bin.display()),
    ))
}

fn linker_version(bin: &Path) -> Option<String> {
    if !util::is_executable(bin) {
        return None;
    }
    util::probe(Command::new(bin).arg("--version")).map(|v| util::first_line(&v).to_owned())
}

/// Makes `$CACHE/llvm-from-nightly/lib/{libLLVM.so,<soname>}` point at nightly's shared libLLVM
/// and returns the library. The toolchain also ships a linker script named `libLLVM-*.so`; the
/// real ELF file (whose name is its soname) is the one to link.
fn link_nightly_llvm(cache: &Path) -> Result<PathBuf> {
    let verbose = util::output(Command::new("rustc").args(["+nightly", "--version", "--verbose"]))?;
    let llvm_version = verbose
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))
        .map(str::trim)
        .context("`rustc +nightly --version --verbose` reports no LLVM version")?;
    if llvm_version.split('.').next() != Some(LLVM_MAJOR) {
        bail!(
            "nightly uses LLVM {llvm_version} but bpf-linker is built with `{BPF_LINKER_LLVM_FEATURE}`; \
             update BPF_LINKER_LLVM_FEATURE in xtask/src/tools.rs (and bpf-linker if needed)"
        );
    }
    let sysroot = util::output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let lib_dir = Path::new(sysroot.trim()).join("lib");
    let real = find_elf_libllvm(&lib_dir)?;
    let file_name = real.file_name().context("libLLVM path has no file name")?;

    let dir = tools::llvm_prefix(cache).join("lib");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for link_name in [Path::new("libLLVM.so"), Path::new(file_name)] {
        let link = dir.join(link_name);
        if std::fs::read_link(&link).is_ok_and(|t| t == real) {
            continue;
        }
        let tmp = dir.join(format!(
            ".{}.tmp-{}",
            link_name.display(),
            std::process::id()
        ));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&real, &tmp)
            .with_context(|| format!("cannot create symlink {}", tmp.display()))?;
        std::fs::rename(&tmp, &link)
            .with_context(|| format!("cannot move symlink into place at {}", link.display()))?;
    }
    Ok(real)
}

fn find_elf_libllvm(lib_dir: &Path) -> Result<PathBuf> {
    let entries = std::fs::read_dir(lib_dir)
        .with_context(|| format!("cannot list nightly's lib dir {}", lib_dir.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("libLLVM") || !name.contains(".so") {
            continue;
        }
        let mut magic = [0u8; 4];
        let is_elf = std::fs::File::open(entry.path())
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
            .is_ok()
            && magic == *b"\x7fELF";
        if is_elf {
            return Ok(entry.path());
        }
    }
    bail!(
        "no shared libLLVM in {} (nightly should ship one; reinstall nightly with rustup)",
        lib_dir.display()
    )
}
