//! A real Nomad agent built from the Go module proxy (nomad-plugin-protocol.md §7): download the
//! nomad module and its nested `api` module at the same commit, put api where nomad's
//! `replace ./api` expects it, build with cgo, check `nomad version`, move into the cache.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::go::{self, download, go_command};
use super::{Item, TmpDir, publish};
use crate::tools::{self, NOMAD_FALLBACK, NOMAD_PRIMARY, NomadRelease};
use crate::util;

/// The Nomad in the cache (primary release first), if one is there and runs.
pub fn installed(cache: &Path) -> Option<(NomadRelease, PathBuf)> {
    [NOMAD_PRIMARY, NOMAD_FALLBACK]
        .into_iter()
        .find_map(|release| {
            let bin = tools::nomad_bin(cache, release);
            verify(&bin, release).ok().map(|_| (release, bin))
        })
}

pub fn ensure(cache: &Path) -> Result<Item> {
    if let Some((release, bin)) = installed(cache) {
        if release.version != NOMAD_PRIMARY.version {
            warn_fallback(&format!(
                "only the fallback Nomad {} is in the cache; delete {} to retry {}",
                release.version,
                bin.display(),
                NOMAD_PRIMARY.version
            ));
        }
        return Ok(Item::found(name(release), bin.display().to_string()));
    }
    let go = go::require(
        &["go", "gcc"],
        "building Nomad needs Go (1.24+) and gcc (cgo)",
    )?;
    println!(
        "[setup] building Nomad {} from the Go module proxy with {go} (takes a few minutes)",
        NOMAD_PRIMARY.version,
    );
    let release = match build(cache, NOMAD_PRIMARY) {
        Ok(()) => NOMAD_PRIMARY,
        Err(err) => {
            warn_fallback(&format!(
                "Nomad {} could not be built: {err:#}\nfalling back to Nomad {}",
                NOMAD_PRIMARY.version, NOMAD_FALLBACK.version
            ));
            build(cache, NOMAD_FALLBACK).with_context(|| {
                format!(
                    "the fallback Nomad {} could not be built either",
                    NOMAD_FALLBACK.version
                )
            })?;
            NOMAD_FALLBACK
        }
    };
    let bin = tools::nomad_bin(cache, release);
    Ok(Item::installed(name(release), bin.display().to_string()))
}

fn name(release: NomadRelease) -> String {
    format!("nomad {}", release.version)
}

fn warn_fallback(message: &str) {
    eprintln!();
    for line in message.lines() {
        eprintln!("!!! WARNING: {line}");
    }
    eprintln!(
        "!!! WARNING: the e2e tests will run against a Nomad that is not the targeted release"
    );
    eprintln!();
}

/// Runs `nomad version` and checks it names the release.
fn verify(bin: &Path, release: NomadRelease) -> Result<String> {
    if !util::is_executable(bin) {
        bail!("{} is missing", bin.display());
    }
    let out = util::output(Command::new(bin).arg("version"))?;
    let first = util::first_line(&out);
    if !first.contains(&format!("v{}", release.version)) {
        bail!(
            "{} reports `{first}`, expected v{}",
            bin.display(),
            release.version
        );
    }
    Ok(first.to_owned())
}

fn build(cache: &Path, release: NomadRelease) -> Result<()> {
    let staging = TmpDir::new(cache, &format!("nomad-{}", release.version))?;
    let nomad_mod = download(
        staging.path(),
        "github.com/hashicorp/nomad",
        &format!("v{}", release.version),
    )?;
    let api_mod = download(
        staging.path(),
        "github.com/hashicorp/nomad/api",
        release.api_pseudo_version,
    )?;

    // Module cache copies are read-only; nested modules (api) are not part of the nomad zip.
    let src = staging.path().join("src");
    util::run(Command::new("cp").arg("-R").arg(&nomad_mod).arg(&src))?;
    util::run(Command::new("chmod").args(["-R", "u+w"]).arg(&src))?;
    let api_dest = src.join("api");
    if api_dest.exists() {
        std::fs::remove_dir_all(&api_dest)
            .with_context(|| format!("cannot remove {}", api_dest.display()))?;
    }
    util::run(Command::new("cp").arg("-R").arg(&api_mod).arg(&api_dest))?;
    util::run(Command::new("chmod").args(["-R", "u+w"]).arg(&api_dest))?;

    let out_dir = staging.path().join("out");
    std::fs::create_dir_all(&out_dir)?;
    let bin = out_dir.join("nomad");
    util::run(
        go_command()
            .current_dir(&src)
            .env("CGO_ENABLED", "1")
            .args(["build", "-trimpath", "-o"])
            .arg(&bin)
            .arg("."),
    )?;
    verify(&bin, release)?;
    publish(&out_dir, &tools::nomad_dir(cache, release))
}
