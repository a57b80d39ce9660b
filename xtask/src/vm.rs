//! `cargo xtask vm-test`: the privileged tests and an end-to-end subset with a real Nomad client,
//! as root inside throwaway QEMU guests (software emulation; virtme-ng shares the host's root
//! read-only): Debian's 6.12 kernel booted with `cgroup_no_v1=all` (a cgroup-v2-only host), and
//! Debian 12's stock 6.1 kernel for the probe tests (tracepoint formats differ between kernels).
//! Everything is built on the host; a generated script runs the test binaries in the guest and
//! writes one result line per step into a directory the guest may write (`--rwdir`); any failed
//! or missing step fails the command.

mod plan;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::env::ToolEnv;
use crate::setup;
use crate::tools::{self, Profile};
use crate::{driver, util};

pub use plan::Guest;

struct Options {
    full: bool,
    kernels: Vec<&'static str>,
    start_time: bool,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut opts = Options {
        full: false,
        kernels: vec!["6.12", "6.1"],
        start_time: false,
    };
    for arg in args {
        match arg.as_str() {
            "--full" => opts.full = true,
            "--start-time" => opts.start_time = true,
            "--v2-only" => opts.kernels = vec!["6.12"],
            "--6.1-only" => opts.kernels = vec!["6.1"],
            other => {
                bail!("unknown `vm-test` option `{other}` (expected --full, --v2-only, --6.1-only)")
            }
        }
    }
    Ok(opts)
}

pub fn run(args: &[String]) -> Result<()> {
    let opts = parse(args)?;
    let started = Instant::now();
    if util::euid()? != 0 {
        bail!(
            "vm-test installs Debian packages and runs privileged tests in its guests: run it as root"
        );
    }
    setup::ensure_all()?;
    let cache = tools::cache_root()?;
    for item in setup::vm::ensure(&cache)? {
        let verb = if item.installed { "installed" } else { "found" };
        println!("[vm-test] {:<22} {verb:<9} {}", item.name, item.detail);
    }
    let binaries = build()?;
    let env = ToolEnv::resolve(Profile::Debug)?;
    let guests: Vec<(Guest, &str)> = if opts.start_time {
        vec![
            // Debian's 6.12 is built without the v1 memory and cpuset controllers
            // (CONFIG_MEMCG_V1, CONFIG_CPUSETS_V1), which Nomad's v1 layout needs: 6.1 has both.
            (Guest::start_time(&binaries, &env, true)?, "6.1"),
            (Guest::start_time(&binaries, &env, false)?, "6.1"),
        ]
    } else {
        opts.kernels
            .iter()
            .map(|series| {
                let guest = if *series == "6.1" {
                    Guest::probes_on_6_1(&binaries)?
                } else {
                    Guest::cgroup_v2(&binaries, &env, opts.full)?
                };
                Ok((guest, *series))
            })
            .collect::<Result<_>>()?
    };
    let mut failures = Vec::new();
    for (guest, series) in &guests {
        let took = Instant::now();
        match boot(guest, &cache, series) {
            Ok(()) => println!(
                "[vm-test] {}: all {} steps passed in {}",
                guest.name,
                guest.steps.len(),
                util::fmt_duration(took.elapsed())
            ),
            Err(e) => {
                println!("[vm-test] {}: FAILED: {e:#}", guest.name);
                failures.push(format!("{}: {e:#}", guest.name));
            }
        }
    }
    if opts.start_time {
        report_start_times(&guests);
    }
    println!(
        "[vm-test] total {} (build, boot and tests)",
        util::fmt_duration(started.elapsed())
    );
    if !failures.is_empty() {
        bail!("vm-test failed:\n  {}", failures.join("\n  "));
    }
    Ok(())
}

/// Test binaries built on the host, by cargo target name.
pub struct Binaries {
    pub tests: Vec<(String, PathBuf)>,
}

impl Binaries {
    pub fn get(&self, name: &str) -> Result<&Path> {
        self.tests
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.as_path())
            .with_context(|| format!("cargo built no test binary named `{name}`"))
    }
}

/// Builds the driver (and its plugin-dir copy) and the test binaries, without running them.
fn build() -> Result<Binaries> {
    driver::build(Profile::Debug)?;
    let mut tests = Vec::new();
    for package in ["bpfexec-driver", "bpfexec-e2e"] {
        let mut cmd = driver::cargo()?;
        cmd.args([
            "test",
            "-p",
            package,
            "--tests",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ]);
        println!("    $ {}", util::describe(&cmd));
        let out = util::output(&mut cmd)?;
        for line in out.lines() {
            let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let (Some(name), Some(exe)) = (
                msg.pointer("/target/name").and_then(|v| v.as_str()),
                msg.get("executable").and_then(|v| v.as_str()),
            ) else {
                continue;
            };
            let is_test = msg
                .pointer("/target/kind")
                .and_then(|k| k.as_array())
                .is_some_and(|k| k.iter().any(|x| x == "test"));
            if is_test && msg.pointer("/profile/test") == Some(&serde_json::Value::Bool(true)) {
                tests.push((name.to_owned(), PathBuf::from(exe)));
            }
        }
    }
    Ok(Binaries { tests })
}

/// Boots `guest` on the newest installed `series` kernel and checks its results.
fn boot(guest: &Guest, cache: &Path, series: &str) -> Result<()> {
    let (version, image) = setup::vm::kernel(series)?;
    let out = tools::target_dir().join("vm-test").join(guest.name);
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("clearing {}", out.display()))?;
    }
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let sources = stage(guest, &out)?;
    let script = out.join("guest.sh");
    std::fs::write(&script, guest.script(&out, &sources))
        .with_context(|| format!("writing {}", script.display()))?;
    println!(
        "\n[vm-test] booting {} ({version}, {}), {} steps; logs in {}",
        guest.name,
        guest.append,
        guest.steps.len(),
        out.display()
    );
    let venv_bin = setup::vm::venv_dir(cache).join("bin");
    let mut cmd = Command::new("timeout");
    cmd.args(["-k", "30", &guest.timeout.as_secs().to_string()])
        .arg(venv_bin.join("vng"))
        .arg("--disable-kvm")
        .arg("--run")
        .arg(&image)
        .args(["--cpus", "2", "--memory", "4G"])
        .arg(format!("--rwdir={}", out.display()))
        .arg("--append")
        .arg(guest.append)
        .arg("--exec")
        .arg(format!("/bin/sh {}", script.display()))
        .env("PATH", util::path_with(&venv_bin)?)
        .current_dir(&out);
    forward(&mut cmd, &out.join("console.log"))?;
    check(guest, &out)
}

/// Prepares the guest's binaries: Rust ones without their debug information (`objcopy
/// --strip-debug`, a plain copy where that fails) in `out/bin`, others as they are; returns the
/// files the guest copies into its RAM.
fn stage(guest: &Guest, out: &Path) -> Result<Vec<PathBuf>> {
    let dir = out.join("bin");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut sources: Vec<PathBuf> = Vec::new();
    for s in &guest.stage {
        let source = if s.strip {
            let name = s
                .host
                .file_name()
                .with_context(|| format!("{} has no file name", s.host.display()))?;
            let dest = dir.join(name);
            let stripped = Command::new("objcopy")
                .arg("--strip-debug")
                .arg(&s.host)
                .arg(&dest)
                .status()
                .is_ok_and(|st| st.success());
            if !stripped {
                std::fs::copy(&s.host, &dest).with_context(|| {
                    format!("copying {} to {}", s.host.display(), dest.display())
                })?;
            }
            dest
        } else {
            s.host.clone()
        };
        if !sources.contains(&source) {
            sources.push(source);
        }
    }
    Ok(sources)
}

/// Runs vng with its output piped (QEMU reopens fds 1 and 2, which would truncate a file they
/// point at) and copied to our stdout and `log`.
fn forward(cmd: &mut Command, log: &Path) -> Result<()> {
    use std::io::Write as _;
    println!("    $ {}", util::describe(cmd));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting vng")?;
    let mut file =
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let stderr = child.stderr.take().context("no stderr pipe")?;
    let err_thread = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("    [guest] {line}");
            let _ = writeln!(file, "{line}");
        }
    }
    let status = child.wait().context("waiting for vng")?;
    let stderr = err_thread.join().unwrap_or_default();
    for line in &stderr {
        let _ = writeln!(file, "stderr: {line}");
    }
    if !status.success() {
        let tail: Vec<&String> = stderr.iter().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().map(String::as_str).collect();
        println!(
            "[vm-test] vng exited with {status} (124 = timed out); its stderr ends:\n{}",
            tail.join("\n")
        );
    }
    Ok(())
}

/// Reads the guest's result lines (`<step> <exit code> <seconds>`); every planned step must
/// have run and passed.
fn check(guest: &Guest, out: &Path) -> Result<()> {
    let results = std::fs::read_to_string(out.join("results")).unwrap_or_default();
    let mut failed = Vec::new();
    println!("[vm-test] {} results:", guest.name);
    for step in &guest.steps {
        let line = results
            .lines()
            .find(|l| l.split_whitespace().next() == Some(step.name.as_str()));
        let mut parts = line.unwrap_or_default().split_whitespace().skip(1);
        let (code, secs) = (parts.next(), parts.next().unwrap_or("?"));
        let status = match code {
            Some("0") => "ok".to_owned(),
            Some(code) => format!("FAILED (exit {code})"),
            None => "DID NOT RUN".to_owned(),
        };
        println!("    {status:<16} {:<34} {secs}s", step.name);
        if code != Some("0") {
            failed.push(step.name.clone());
            let log = out.join(format!("{}.log", step.name));
            if let Ok(text) = std::fs::read_to_string(&log) {
                let tail: Vec<&str> = text.lines().rev().take(60).collect();
                println!("    --- {} (last 60 lines) ---", log.display());
                for l in tail.into_iter().rev() {
                    println!("    | {l}");
                }
            }
        }
    }
    if let Ok(info) = std::fs::read_to_string(out.join("guest-info")) {
        println!("[vm-test] guest: {}", info.trim());
    }
    if failed.is_empty() {
        Ok(())
    } else {
        bail!(
            "{} step(s) failed or did not run: {} (logs in {})",
            failed.len(),
            failed.join(", "),
            out.display()
        )
    }
}

/// The `START-LATENCY` lines of each start-time guest, one after the other (same kernel, same
/// emulation, cgroup v1 hybrid vs cgroup v2 only).
fn report_start_times(guests: &[(Guest, &str)]) {
    println!("\n[vm-test] start time, driver side (StartTask received -> command exec'd):");
    for (guest, _) in guests {
        let log = tools::target_dir()
            .join("vm-test")
            .join(guest.name)
            .join("e2e-start_latency.log");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        println!("  {}:", guest.name);
        for line in text.lines().filter(|l| l.starts_with("START-LATENCY")) {
            println!("    {line}");
        }
    }
}

/// Minutes as a `Duration` (for the plan's timeouts).
pub const fn minutes(m: u64) -> Duration {
    Duration::from_secs(m * 60)
}
