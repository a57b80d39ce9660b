//! Acceptance (a)-(c): the node fingerprint, stdout/stderr reaching `nomad alloc logs`, and exit
//! codes / signals reported exactly in the `Terminated` event.

use anyhow::{Context, Result, ensure};
use bpfexec_e2e::jobspec::TASK;
use bpfexec_e2e::suite::{self, TIMEOUT, expect_terminated};
use bpfexec_e2e::{Agent, Check, DRIVER_NAME, LogType, run_checks, unique};

#[test]
fn basics() {
    run_checks(
        "basics",
        suite::options(),
        &[
            Check {
                name: "fingerprint",
                run: fingerprint,
            },
            Check {
                name: "stdout_stderr",
                run: stdout_stderr,
            },
            Check {
                name: "exit_code",
                run: exit_code,
            },
            Check {
                name: "signal_exit",
                run: signal_exit,
            },
            Check {
                name: "root_refused_by_default",
                run: root_refused_by_default,
            },
        ],
    );
}

/// The host's cgroup mode as the contract defines it: `v2` when /sys/fs/cgroup is the unified
/// hierarchy, else `v1` (hybrid counts as v1).
fn host_cgroup_mode() -> &'static str {
    if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "v2"
    } else {
        "v1"
    }
}

fn fingerprint(agent: &mut Agent) -> Result<()> {
    let node = agent.node()?;
    let name = suite::driver();
    let d = node
        .drivers
        .get(name)
        .with_context(|| format!("node has no {name} driver: {:?}", node.drivers.keys()))?;
    ensure!(
        d.detected && d.healthy,
        "{name}: detected={} healthy={} ({})",
        d.detected,
        d.healthy,
        d.health_description
    );
    if !suite::is_bpfexec() {
        println!("(raw_exec run: bpfexec attribute checks skipped)");
        return Ok(());
    }
    let attr = |k: &str| node.attributes.get(k).cloned();
    println!(
        "bpfexec health={:?} attributes: {:?}",
        d.health_description,
        node.attributes
            .iter()
            .filter(|(k, _)| k.starts_with("driver.bpfexec"))
            .collect::<Vec<_>>()
    );
    ensure!(
        attr(&format!("driver.{DRIVER_NAME}")).is_some(),
        "attribute driver.bpfexec missing"
    );
    let version =
        attr("driver.bpfexec.version").context("attribute driver.bpfexec.version missing")?;
    ensure!(
        version == env!("CARGO_PKG_VERSION"),
        "driver.bpfexec.version = {version:?}, expected the crate version {}",
        env!("CARGO_PKG_VERSION")
    );
    let mode = attr("driver.bpfexec.cgroup_mode")
        .context("attribute driver.bpfexec.cgroup_mode missing")?;
    ensure!(
        mode == host_cgroup_mode(),
        "driver.bpfexec.cgroup_mode = {mode:?}, but this host is {}",
        host_cgroup_mode()
    );
    let probes =
        attr("driver.bpfexec.probes").context("attribute driver.bpfexec.probes missing")?;
    ensure!(
        probes == "loaded" || probes == "failed",
        "driver.bpfexec.probes = {probes:?}, expected loaded|failed"
    );
    // Device rules are enforced on this host: no degraded mode was configured.
    let devices =
        attr("driver.bpfexec.devices").context("attribute driver.bpfexec.devices missing")?;
    let want = if host_cgroup_mode() == "v2" {
        "bpf-cgroup-device"
    } else {
        "cgroup-v1"
    };
    ensure!(
        devices == want,
        "driver.bpfexec.devices = {devices:?} (error: {:?}), expected {want} on this cgroup {} host",
        attr("driver.bpfexec.devices.error"),
        host_cgroup_mode()
    );
    Ok(())
}

fn stdout_stderr(agent: &mut Agent) -> Result<()> {
    let out = unique("out-marker");
    let err = unique("err-marker");
    let job = suite::batch("logs").shell(&format!("echo {out}; echo {err} >&2"));
    let api = agent.api();
    let alloc = api.run_job(&job.to_hcl(), &["complete"], TIMEOUT)?;
    let stdout = api.wait_logs_contain(&alloc.id, TASK, LogType::Stdout, &out, TIMEOUT)?;
    let stderr = api.wait_logs_contain(&alloc.id, TASK, LogType::Stderr, &err, TIMEOUT)?;
    ensure!(
        !stdout.contains(&err),
        "stderr text leaked into stdout: {stdout:?}"
    );
    ensure!(
        !stderr.contains(&out),
        "stdout text leaked into stderr: {stderr:?}"
    );
    expect_terminated(&alloc, 0, 0)?;
    Ok(())
}

fn exit_code(agent: &mut Agent) -> Result<()> {
    let job = suite::batch("exit3").shell("exit 3");
    let alloc = agent.api().run_job(&job.to_hcl(), &["failed"], TIMEOUT)?;
    expect_terminated(&alloc, 3, 0)?;
    Ok(())
}

fn signal_exit(agent: &mut Agent) -> Result<()> {
    let job = suite::batch("sigkill").shell("kill -9 $$; sleep 5");
    let alloc = agent.api().run_job(&job.to_hcl(), &["failed"], TIMEOUT)?;
    // exec's convention: a signalled exit is exit_code = 128 + signal, signal = signal.
    expect_terminated(&alloc, 128 + 9, 9)?;
    Ok(())
}

/// Issue 12: like Nomad's client for exec, bpfexec refuses `user = "root"` for isolated tasks
/// unless the operator sets `allow_root = true`; the refusal names the option.
fn root_refused_by_default(agent: &mut Agent) -> Result<()> {
    if !suite::is_bpfexec() {
        println!("(raw_exec run: bpfexec-only check skipped)");
        return Ok(());
    }
    let job = suite::batch("root-refused")
        .command("/bin/sh")
        .args(["-c", "touch \"$NOMAD_ALLOC_DIR/ran\""])
        .extra_task_hcl("    user = \"root\"\n");
    let (alloc, ev) =
        bpfexec_e2e::isolation::expect_refusal(agent, &job.to_hcl(), "allow_root = true")?;
    println!("refusal: {ev}");
    ensure!(
        !suite::alloc_file(agent, &alloc, "ran").exists(),
        "the refused root task ran anyway"
    );
    Ok(())
}
