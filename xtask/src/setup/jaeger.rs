//! Jaeger v1.76.0 (the v2 all-in-one binary, same commit as v2.13.0), the real OTLP receiver of
//! the e2e suite and the demo, built from the Go module proxy. Its go.mod has a `replace`
//! directive, so `go install module@version` refuses it; instead an empty module requires it as
//! a tool (`go get -tool`) and `go build` builds it. The binary records the module versions it
//! was built from; `go version -m` must show jaeger v1.76.0 before it is moved into the cache.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Result, bail};

use super::go::{self, go_command};
use super::{Item, TmpDir, publish};
use crate::tools::{self, JAEGER_MODULE, JAEGER_VERSION};
use crate::util;

/// The Jaeger in the cache, if there is one.
pub fn installed(cache: &Path) -> Option<PathBuf> {
    let bin = tools::jaeger_bin(cache);
    util::is_executable(&bin).then_some(bin)
}

pub fn ensure(cache: &Path) -> Result<Item> {
    let name = format!("jaeger {JAEGER_VERSION}");
    let go = go::require(&["go"], "building Jaeger needs Go (1.24+)")?;
    if let Some(bin) = installed(cache) {
        match verify(&bin) {
            Ok(()) => return Ok(Item::found(name, bin.display().to_string())),
            Err(e) => println!("[setup] rebuilding Jaeger: {e:#}"),
        }
    }
    println!(
        "[setup] building Jaeger {JAEGER_VERSION} from the Go module proxy with {go} (about 5 minutes on 2 idle cores)"
    );
    let start = Instant::now();
    build(cache)?;
    Ok(Item::installed(
        name,
        format!(
            "{} (built in {})",
            tools::jaeger_bin(cache).display(),
            util::fmt_duration(start.elapsed())
        ),
    ))
}

fn build(cache: &Path) -> Result<()> {
    let staging = TmpDir::new(cache, &format!("jaeger-{JAEGER_VERSION}"))?;
    let src = staging.path().join("src");
    let out_dir = staging.path().join("out");
    std::fs::create_dir_all(&src)?;
    std::fs::create_dir_all(&out_dir)?;
    // `go get` lists every one of its ~400 modules on stderr: keep that out of the log unless
    // it fails (the error quotes the tail).
    for args in [
        vec![
            "mod".to_owned(),
            "init".to_owned(),
            "bpfexec-jaeger-build".to_owned(),
        ],
        vec![
            "get".to_owned(),
            "-tool".to_owned(),
            format!("{JAEGER_MODULE}/cmd/jaeger@v{JAEGER_VERSION}"),
        ],
    ] {
        let mut cmd = go_command();
        cmd.current_dir(&src).args(&args);
        println!("    $ {}", util::describe(&cmd));
        util::output(&mut cmd)?;
    }
    let bin = out_dir.join("jaeger");
    util::run(
        go_command()
            .current_dir(&src)
            .env("CGO_ENABLED", "0")
            .args(["build", "-trimpath", "-o"])
            .arg(&bin)
            .arg(format!("{JAEGER_MODULE}/cmd/jaeger")),
    )?;
    verify(&bin)?;
    publish(&out_dir, &tools::jaeger_dir(cache))
}

/// `go version -m <bin>` must list the jaeger module at the pinned version.
fn verify(bin: &Path) -> Result<()> {
    let info = util::output(go_command().args(["version", "-m"]).arg(bin))?;
    let built_from = info.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let kind = fields.next()?;
        let module = fields.next()?;
        ((kind == "dep" || kind == "mod") && module == JAEGER_MODULE).then(|| fields.next())?
    });
    match built_from {
        Some(v) if v == format!("v{JAEGER_VERSION}") => Ok(()),
        Some(v) => bail!(
            "{} was built from {JAEGER_MODULE} {v}, expected v{JAEGER_VERSION}",
            bin.display()
        ),
        None => bail!(
            "`go version -m {}` does not list {JAEGER_MODULE}:\n{info}",
            bin.display()
        ),
    }
}
