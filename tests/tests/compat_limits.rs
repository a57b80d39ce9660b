//! Issue 11, cgroup options: raw_exec's `memory_max = -1` (no hard limit with memory
//! oversubscription) and `cgroup_v1_override` / `cgroup_v2_override` (join existing cgroups in
//! raw mode; clear refusals otherwise), and the systemd driver's `swap_max`, `pids_max` (with the
//! "Process limit reached" task event), IO limits (`io_weight` and per-device throttles on a loop
//! device the check attaches) and `group` (checked against `denied_host_gids`). Each through the
//! real Nomad agent; cgroup files are read where the kernel keeps them (v1 on this machine; the
//! v2 branches read the task's scope).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use bpfexec_e2e::isolation::{
    cgroup_paths, expect_refusal, host_is_cgroup_v2, run_batch, section, sections, shell_config,
    v1_task_cgroup,
};
use bpfexec_e2e::jobspec::TASK;
use bpfexec_e2e::suite::{self, TIMEOUT, alloc_file, stop_and_wait, wait_file};
use bpfexec_e2e::wait::{POLL, poll_until};
use bpfexec_e2e::{Agent, AgentOptions, Check, run_checks, unique};

/// `staff`: a group the checks name in `denied_host_gids` (exists on Debian).
const DENIED_GROUP: (&str, u32) = ("staff", 50);

#[test]
fn compat_limits() {
    if !suite::is_bpfexec() {
        println!("SKIP: compat_limits: bpfexec-only checks (BPFEXEC_E2E_DRIVER=raw_exec)");
        return;
    }
    let opts = AgentOptions::bpfexec()
        .plugin_config("allow_unisolated = true")
        .plugin_config(&format!("denied_host_gids = \"{}\"", DENIED_GROUP.1));
    run_checks(
        "compat_limits",
        opts,
        &[
            Check {
                name: "memory_max_unlimited",
                run: memory_max_unlimited,
            },
            Check {
                name: "cgroup_override",
                run: cgroup_override,
            },
            Check {
                name: "cgroup_override_refusals",
                run: cgroup_override_refusals,
            },
            Check {
                name: "swap_max",
                run: swap_max,
            },
            Check {
                name: "pids_max",
                run: pids_max,
            },
            Check {
                name: "io_limits",
                run: io_limits,
            },
            Check {
                name: "group",
                run: group,
            },
        ],
    );
}

fn read_trim(path: &Path) -> Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .to_owned())
}

/// The cgroup directory of the task for `controller`: Nomad's v1 layout (or the driver's for
/// pids/blkio), or the task's v2 scope read from the running process.
fn task_cgroup(controller: &str, alloc: &str, pid: i32) -> Result<PathBuf> {
    if host_is_cgroup_v2() {
        let text = read_trim(Path::new(&format!("/proc/{pid}/cgroup")))?;
        let scope = cgroup_paths(&text).get("").cloned().unwrap_or_default();
        return Ok(PathBuf::from(format!("/sys/fs/cgroup{scope}")));
    }
    Ok(v1_task_cgroup(controller, alloc, TASK))
}

/// Turns on memory oversubscription in the scheduler (Nomad ignores `memory_max` without it).
fn enable_oversubscription(agent: &Agent) -> Result<()> {
    let api = agent.api();
    let mut cfg: serde_json::Value = api.get_json("/v1/operator/scheduler/configuration")?;
    let mut sched = cfg
        .get_mut("SchedulerConfig")
        .map(serde_json::Value::take)
        .context("no SchedulerConfig in the scheduler configuration")?;
    sched["MemoryOversubscriptionEnabled"] = serde_json::Value::Bool(true);
    api.post_json("/v1/operator/scheduler/configuration", &sched)?;
    Ok(())
}

/// raw_exec's escape hatch: `memory_max = -1` with oversubscription enabled means no hard limit
/// (`memory` becomes the soft one), and a task above `memory` is not OOM-killed.
pub(crate) fn memory_max_unlimited(agent: &mut Agent) -> Result<()> {
    enable_oversubscription(agent)?;
    let script = "echo $$ > /alloc/pid; /usr/bin/perl -e '$x = \"a\" x (80*1024*1024); print \"survived\\n\"; sleep 10'";
    let job = suite::batch("memmax").raw_config(&shell_config(script, &[]));
    let hcl = job
        .memory_mb(32)
        .to_hcl()
        .replace("memory = 32\n", "memory = 32\n        memory_max = -1\n");
    let api = agent.api();
    let job_id = api.register_job(&hcl)?;
    let alloc = api.wait_job_alloc(&job_id, TIMEOUT)?;
    let pid = suite::wait_task_pid(agent, &alloc, "pid")?;
    let dir = task_cgroup("memory", &alloc, pid)?;
    let (hard, soft) = if host_is_cgroup_v2() {
        (
            read_trim(&dir.join("memory.max"))?,
            read_trim(&dir.join("memory.low"))?,
        )
    } else {
        (
            read_trim(&dir.join("memory.limit_in_bytes"))?,
            read_trim(&dir.join("memory.soft_limit_in_bytes"))?,
        )
    };
    println!("memory_max = -1: hard {hard}, soft {soft}");
    ensure!(
        hard == "max" || hard.parse::<u64>().is_ok_and(|v| v > 1 << 60),
        "memory_max = -1 left a hard limit of {hard}"
    );
    ensure!(
        soft == (32u64 << 20).to_string(),
        "memory = 32 should be the soft limit, found {soft}"
    );
    let a = api.wait_alloc_status(&alloc, &["complete"], TIMEOUT)?;
    let out = api.logs(&a.id, TASK, bpfexec_e2e::LogType::Stdout)?;
    ensure!(
        out.contains("survived"),
        "an 80 MiB task with memory = 32, memory_max = -1 did not survive: {out:?}"
    );
    Ok(())
}

/// A v1 (or v2) cgroup the check makes and removes.
struct TestCgroup(Vec<PathBuf>);

impl TestCgroup {
    fn make(dirs: Vec<PathBuf>) -> Result<Self> {
        for d in &dirs {
            std::fs::create_dir_all(d).with_context(|| format!("mkdir {}", d.display()))?;
        }
        Ok(Self(dirs))
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = bpfexec_e2e::wait::wait_for(TIMEOUT, POLL, || std::fs::remove_dir(d).is_ok());
        }
    }
}

/// `cgroup_v1_override` (v2: `cgroup_v2_override`) in raw mode: the task is in the named cgroups
/// (relative and absolute paths), not in Nomad's.
pub(crate) fn cgroup_override(agent: &mut Agent) -> Result<()> {
    let name = unique("bpfexec-e2e-override");
    let (config, cg) = if host_is_cgroup_v2() {
        let dir = PathBuf::from(format!("/sys/fs/cgroup/{name}"));
        (
            format!("cgroup_v2_override = \"{name}\""),
            TestCgroup::make(vec![dir])?,
        )
    } else {
        let pids = PathBuf::from(format!("/sys/fs/cgroup/pids/{name}"));
        let memory = PathBuf::from(format!("/sys/fs/cgroup/memory/{name}"));
        (
            format!(
                "cgroup_v1_override = {{ pids = \"{name}\", memory = \"{}\" }}",
                memory.display()
            ),
            TestCgroup::make(vec![pids, memory])?,
        )
    };
    let script = "echo $$ > \"$NOMAD_ALLOC_DIR/pid\"; cat /proc/self/cgroup";
    let job = suite::batch("override")
        .raw_config(&shell_config(script, &["isolation = \"none\"", &config]));
    let (_a, out) = run_batch(agent, &job.to_hcl())?;
    println!("task's /proc/self/cgroup:\n{out}");
    let paths = cgroup_paths(&out);
    let want = format!("/{name}");
    if host_is_cgroup_v2() {
        ensure!(
            paths.get("") == Some(&want),
            "the task is not in {want}: {paths:?}"
        );
    } else {
        for ctrl in ["pids", "memory"] {
            ensure!(
                paths.get(ctrl) == Some(&want),
                "the task's {ctrl} cgroup is {:?}, not the override {want}",
                paths.get(ctrl)
            );
        }
        ensure!(
            !paths
                .get("freezer")
                .is_some_and(|p| p.starts_with("/nomad/")),
            "with an override the task must not join Nomad's cgroups: {paths:?}"
        );
    }
    drop(cg);
    Ok(())
}

/// The overrides' refusals, each naming the option: a missing cgroup, an isolated task, and the
/// override of the other cgroup version.
pub(crate) fn cgroup_override_refusals(agent: &mut Agent) -> Result<()> {
    let (this, other) = if host_is_cgroup_v2() {
        (
            "cgroup_v2_override = \"bpfexec-e2e-missing\"",
            "cgroup_v1_override = { pids = \"x\" }",
        )
    } else {
        (
            "cgroup_v1_override = { pids = \"bpfexec-e2e-missing\" }",
            "cgroup_v2_override = \"x\"",
        )
    };
    for (extra, needle) in [
        (
            vec!["isolation = \"none\"", this],
            "does not exist; create it before the task starts",
        ),
        (vec![this], "honoured only with isolation = \"none\""),
        (
            vec!["isolation = \"none\"", other],
            "but this client runs cgroup",
        ),
    ] {
        let job = suite::batch("override-bad").raw_config(&shell_config("true", &extra));
        let (_alloc, ev) = expect_refusal(agent, &job.to_hcl(), needle)?;
        println!("refusal: {}", ev.all_text());
    }
    Ok(())
}

/// `swap_max`: v1 `memory.memsw.limit_in_bytes` = memory + swap (v2 `memory.swap.max`).
pub(crate) fn swap_max(agent: &mut Agent) -> Result<()> {
    for (swap, extra_mb) in [("16M", 16u64), ("0", 0)] {
        let job = suite::service("swap")
            .raw_config(&shell_config(
                "echo $$ > /alloc/pid; exec sleep 1000",
                &[&format!("swap_max = \"{swap}\"")],
            ))
            .memory_mb(48)
            .kill_signal("SIGKILL");
        let (job_id, alloc, pid) = suite::start_service(agent, &job.to_hcl())?;
        let dir = task_cgroup("memory", &alloc, pid)?;
        let (file, want) = if host_is_cgroup_v2() {
            ("memory.swap.max", (extra_mb << 20).to_string())
        } else {
            (
                "memory.memsw.limit_in_bytes",
                ((48 + extra_mb) << 20).to_string(),
            )
        };
        let got = read_trim(&dir.join(file))?;
        println!("swap_max = {swap:?}: {file} = {got}");
        ensure!(
            got == want,
            "swap_max = {swap:?}: {file} = {got}, expected {want}"
        );
        stop_and_wait(agent, &job_id, &alloc)?;
    }
    Ok(())
}

/// `pids_max`: the task's pids cgroup holds the limit, a burst of forks beyond it fails inside
/// the task, and the driver reports the hits as a task event. On v1 the driver's pids cgroup is
/// removed with the task.
pub(crate) fn pids_max(agent: &mut Agent) -> Result<()> {
    // The burst runs in a subshell: a shell whose fork fails exits (dash: code 2).
    let script = "echo $$ > /alloc/pid; (i=0; while [ $i -lt 20 ]; do sleep 1000 & i=$((i+1)); done) 2>/dev/null; \
                  echo forked > /alloc/forked; exec sleep 1000";
    let job = suite::service("pids")
        .raw_config(&shell_config(script, &["pids_max = 8"]))
        .kill_signal("SIGKILL");
    let (job_id, alloc, pid) = suite::start_service(agent, &job.to_hcl())?;
    wait_file(&alloc_file(agent, &alloc, "forked"), TIMEOUT)?;
    let dir = task_cgroup("pids", &alloc, pid)?;
    let max = read_trim(&dir.join("pids.max"))?;
    ensure!(max == "8", "pids.max = {max}, expected 8");
    let current = read_trim(&dir.join("pids.current"))?;
    println!("pids.max = {max}, pids.current = {current}");
    ensure!(
        current.parse::<u64>().is_ok_and(|c| c <= 8),
        "pids.current = {current} exceeds pids_max"
    );
    let text = read_trim(Path::new(&format!("/proc/{pid}/cgroup")))?;
    if !host_is_cgroup_v2() {
        let want = format!("/nomad/{alloc}.{TASK}");
        ensure!(
            cgroup_paths(&text).get("pids") == Some(&want),
            "the task is not in its pids cgroup {want}:\n{text}"
        );
    }
    let ev = poll_until("a pids-limit task event", TIMEOUT, POLL, |last| {
        let a = agent.api().alloc(&alloc)?;
        *last = a.describe();
        Ok(a.events(TASK)
            .into_iter()
            .find(|e| e.detail("reason") == Some("pids-limit")))
    })?;
    println!("event: {ev}");
    ensure!(
        ev.all_text().contains("Process limit reached") && ev.detail("pids_max") == Some("8"),
        "the pids-limit event does not name the limit: {ev}"
    );
    stop_and_wait(agent, &job_id, &alloc)?;
    if !host_is_cgroup_v2() {
        agent.api().client_gc()?;
        poll_until(
            "the task's pids cgroup to be removed",
            TIMEOUT,
            POLL,
            |_| Ok((!dir.exists()).then_some(())),
        )?;
    }
    Ok(())
}

/// A loop device of the check's own (a sparse file), detached on drop.
struct LoopDevice(String);

impl LoopDevice {
    fn attach(file: &Path) -> Result<Self> {
        let f = std::fs::File::create(file)?;
        f.set_len(16 << 20)?;
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(file)
            .output()
            .context("running losetup")?;
        if !out.status.success() {
            bail!(
                "losetup --find --show {} failed: {}",
                file.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(Self(String::from_utf8_lossy(&out.stdout).trim().to_owned()))
    }

    fn major_minor(&self) -> Result<String> {
        let name = self.0.trim_start_matches("/dev/");
        read_trim(Path::new(&format!("/sys/block/{name}/dev")))
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// Per-device throttles on a loop device: the task's blkio (v2: io) cgroup holds them, and the
/// task's own direct writes to the device go through them. `io_weight` is applied where the
/// kernel has a weight file and refused by name where it has none.
pub(crate) fn io_limits(agent: &mut Agent) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dev = LoopDevice::attach(&tmp.path().join("disk"))?;
    let mm = dev.major_minor()?;
    let script = format!(
        "echo $$ > \"$NOMAD_ALLOC_DIR/pid\"; dd if=/dev/zero of={} bs=64k count=4 oflag=direct 2>&1; exec sleep 1000",
        dev.0
    );
    let limits = [
        format!("io_write_bandwidth_max = {{ \"{}\" = \"4M\" }}", dev.0),
        format!("io_read_iops_max = {{ \"{}\" = 100 }}", dev.0),
    ];
    let job = suite::service("io")
        .raw_config(&shell_config(
            &script,
            &["isolation = \"none\"", &limits[0], &limits[1]],
        ))
        .kill_signal("SIGKILL");
    let (job_id, alloc, pid) = suite::start_service(agent, &job.to_hcl())?;
    if host_is_cgroup_v2() {
        let io_max = read_trim(&task_cgroup("io", &alloc, pid)?.join("io.max"))?;
        println!("io.max:\n{io_max}");
        ensure!(
            io_max.contains(&format!("{mm} rbps=max wbps={} riops=100", 4u64 << 20)),
            "io.max does not hold the limits for {mm}:\n{io_max}"
        );
    } else {
        let dir = task_cgroup("blkio", &alloc, pid)?;
        let wbps = read_trim(&dir.join("blkio.throttle.write_bps_device"))?;
        let riops = read_trim(&dir.join("blkio.throttle.read_iops_device"))?;
        println!("write_bps_device = {wbps:?}, read_iops_device = {riops:?}");
        ensure!(
            wbps == format!("{mm} {}", 4u64 << 20) && riops == format!("{mm} 100"),
            "blkio throttles for {mm} are {wbps:?} / {riops:?}"
        );
        let serviced = poll_until(
            "the task's writes in its blkio cgroup",
            TIMEOUT,
            POLL,
            |_| {
                let s = read_trim(&dir.join("blkio.throttle.io_service_bytes"))?;
                Ok(s.lines()
                    .any(|l| l.starts_with(&format!("{mm} Write")) && !l.ends_with(" 0"))
                    .then_some(s))
            },
        )?;
        println!("blkio.throttle.io_service_bytes:\n{serviced}");
    }
    stop_and_wait(agent, &job_id, &alloc)?;
    // io_weight: applied where the kernel has a weight file (the task's cgroup shows it), refused
    // by name where it has none.
    let job = suite::service("ioweight")
        .raw_config(&shell_config(
            "echo $$ > \"$NOMAD_ALLOC_DIR/pid\"; exec sleep 1000",
            &["isolation = \"none\"", "io_weight = 200"],
        ))
        .kill_signal("SIGKILL");
    let api = agent.api();
    let job_id = api.register_job(&job.to_hcl())?;
    let alloc = api.wait_job_alloc(&job_id, TIMEOUT)?;
    let a = api.wait_alloc_status(&alloc, &["running", "failed"], TIMEOUT)?;
    if a.client_status == "failed" {
        let text: Vec<String> = a
            .events(TASK)
            .iter()
            .map(bpfexec_e2e::TaskEvent::all_text)
            .collect();
        ensure!(
            text.iter()
                .any(|t| t.contains("io_weight: the kernel offers no IO weight")),
            "io_weight failed the task without naming the option: {text:?}"
        );
        println!("io_weight on this kernel: {text:?}");
        return Ok(());
    }
    let pid = suite::wait_task_pid(agent, &alloc, "pid")?;
    let dir = task_cgroup("blkio", &alloc, pid)?;
    let (file, value) = [
        "io.weight",
        "io.bfq.weight",
        "blkio.weight",
        "blkio.bfq.weight",
    ]
    .iter()
    .find_map(|f| Some((*f, read_trim(&dir.join(f)).ok()?)))
    .with_context(|| format!("no weight file in {}", dir.display()))?;
    println!("io_weight = 200: {file} = {value:?}");
    let want = if file == "blkio.weight" {
        "1000"
    } else {
        "200"
    };
    ensure!(
        value == want || value == format!("default {want}"),
        "io_weight = 200 wrote {value:?} to {file}, expected {want}"
    );
    stop_and_wait(agent, &job_id, &alloc)?;
    Ok(())
}

/// `group`: the task's primary group; a group in `denied_host_gids` is refused by name.
pub(crate) fn group(agent: &mut Agent) -> Result<()> {
    let job = suite::batch("group").raw_config(&shell_config(
        "echo \"== gid\"; id -g; echo \"== groups\"; id -G",
        &["group = \"users\""],
    ));
    let (_a, out) = run_batch(agent, &job.to_hcl())?;
    let s = sections(&out);
    let gid = section(&s, "gid")?.trim().to_owned();
    println!(
        "group = \"users\": id -g = {gid}, id -G = {}",
        section(&s, "groups")?.trim()
    );
    ensure!(
        gid == "100",
        "group = \"users\" gave gid {gid}, expected 100"
    );
    let job = suite::batch("group-denied").raw_config(&shell_config(
        "true",
        &[&format!("group = \"{}\"", DENIED_GROUP.0)],
    ));
    let (_a, ev) = expect_refusal(agent, &job.to_hcl(), "denied_host_gids")?;
    println!("refusal: {}", ev.all_text());
    Ok(())
}
