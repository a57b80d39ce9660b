//! Issue 3 acceptance, resources and exec's task options: the task's processes sit in the cgroups
//! Nomad made for it with the limits it asked for (memory, cpu shares, `oom_score_adj`), a task
//! over its memory limit is OOM-killed and reported so, `work_dir`, read-only and read-write host
//! `volume_mount`s, `pid_mode`/`ipc_mode = "host"`, and `signal_all_processes` (stop and
//! `alloc signal` reach every process; after `kill_timeout` nothing survives).

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bpfexec_e2e::isolation::{
    V1_CONTROLLERS, cgroup_paths, config_body, host_is_cgroup_v2, run_batch, section, sections,
    shell_config, v1_task_cgroup, with_group_hcl,
};
use bpfexec_e2e::jobspec::TASK;
use bpfexec_e2e::suite::{self, TIMEOUT, alloc_file, stop_and_wait, wait_task_pid};
use bpfexec_e2e::wait::{POLL, poll_until, wait_for};
use bpfexec_e2e::{Agent, AgentOptions, Check, procs, run_checks, unique};

/// The host dir behind the agent's `host_volume "data"` (per test process).
fn volume_dir() -> PathBuf {
    std::env::temp_dir().join(format!("bpfexec-e2e-volume-{}", std::process::id()))
}

struct VolumeDir(PathBuf);

impl Drop for VolumeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn task_options() {
    if !suite::is_bpfexec() {
        println!("SKIP: task_options: bpfexec-only checks (BPFEXEC_E2E_DRIVER=raw_exec)");
        return;
    }
    if !bpfexec_e2e::env::require_root("task_options") {
        return;
    }
    let vol = VolumeDir(volume_dir());
    std::fs::create_dir_all(&vol.0).expect("creating the host volume dir");
    // World-writable, so only a read-only mount can stop the task (user nobody) writing.
    std::fs::set_permissions(&vol.0, std::fs::Permissions::from_mode(0o777))
        .expect("chmod the host volume dir");
    let opts = AgentOptions::bpfexec().extra_hcl(&format!(
        "client {{\n  host_volume \"data\" {{\n    path = {}\n    read_only = false\n  }}\n}}",
        bpfexec_e2e::config::hcl_string(&vol.0.to_string_lossy())
    ));
    run_checks(
        "task_options",
        opts,
        &[
            Check {
                name: "cgroup_and_limits",
                run: cgroup_and_limits,
            },
            Check {
                name: "oom_killed",
                run: oom_killed,
            },
            Check {
                name: "oom_killed_child",
                run: oom_killed_child,
            },
            Check {
                name: "work_dir",
                run: work_dir,
            },
            Check {
                name: "volume_mounts",
                run: volume_mounts,
            },
            Check {
                name: "host_namespaces",
                run: host_namespaces,
            },
            Check {
                name: "signal_all_processes",
                run: signal_all_processes,
            },
            Check {
                name: "signal_group_default",
                run: signal_group_default,
            },
        ],
    );
}

fn read_trim(path: &std::path::Path) -> Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .to_owned())
}

pub(crate) fn cgroup_and_limits(agent: &mut Agent) -> Result<()> {
    let script = "echo $$ > /alloc/pid\n\
                  sleep 1000 &\n\
                  while :; do sleep 1; done";
    let job = suite::service("cgroups")
        .raw_config(&shell_config(script, &["oom_score_adj = 300"]))
        .memory_mb(48)
        .kill_signal("SIGKILL");
    let api = agent.api();
    let job_id = api.register_job(&job.to_hcl())?;
    let alloc = api.wait_job_alloc(&job_id, TIMEOUT)?;
    api.wait_alloc_status(&alloc, &["running"], TIMEOUT)?;
    let main = wait_task_pid(agent, &alloc, "pid")?;
    // Every process of the task: those with its alloc id in their environment, plus the
    // pid-namespace init (the main process's parent).
    let pids = procs::find_by_environ(&format!("NOMAD_ALLOC_ID={alloc}"));
    ensure!(pids.len() >= 2, "expected sh and sleep, found {pids:?}");
    println!("task processes:\n{}", procs::describe(&pids));
    // The pid-namespace init is the driver's supervisor, not a task process: informational.
    if let Some(init) = procs::ppid(main) {
        let text = std::fs::read_to_string(format!("/proc/{init}/cgroup")).unwrap_or_default();
        println!(
            "pid-namespace init {init} ({}) cgroups: {:?}",
            procs::cmdline(init).unwrap_or_default().join(" "),
            cgroup_paths(&text)
        );
    }
    let mut scope = None;
    for pid in &pids {
        let text = read_trim(std::path::Path::new(&format!("/proc/{pid}/cgroup")))?;
        let paths = cgroup_paths(&text);
        if host_is_cgroup_v2() {
            let p = paths.get("").cloned().unwrap_or_default();
            ensure!(
                p.starts_with("/nomad.slice/") && p.ends_with(&format!("/{alloc}.{TASK}.scope")),
                "pid {pid} is in cgroup {p:?}, not Nomad's task scope under nomad.slice:\n{text}"
            );
            scope = Some(PathBuf::from(format!("/sys/fs/cgroup{p}")));
            continue;
        }
        for ctrl in V1_CONTROLLERS {
            let want = format!("/nomad/{alloc}.{TASK}");
            ensure!(
                paths.get(ctrl) == Some(&want),
                "pid {pid}: {ctrl} cgroup is {:?}, expected {want}; /proc/{pid}/cgroup:\n{text}",
                paths.get(ctrl)
            );
        }
        // The driver's own devices cgroup for the task (Nomad makes none on v1).
        let want = format!("/nomad/{alloc}.{TASK}");
        ensure!(
            paths.get("devices") == Some(&want),
            "pid {pid}: devices cgroup is {:?}, expected {want}; /proc/{pid}/cgroup:\n{text}",
            paths.get("devices")
        );
        // No reserved cores: Nomad's shared cpuset partition.
        ensure!(
            paths.get("cpuset").map(String::as_str) == Some("/nomad/share"),
            "pid {pid}: cpuset cgroup is {:?}, expected Nomad's shared partition /nomad/share",
            paths.get("cpuset")
        );
    }
    limits_and_devices(&alloc, scope.as_deref())?;
    let adj = read_trim(std::path::Path::new(&format!("/proc/{main}/oom_score_adj")))?;
    ensure!(
        adj == "300",
        "oom_score_adj of the task is {adj}, expected 300"
    );
    stop_and_wait(agent, &job_id, &alloc)?;
    if !host_is_cgroup_v2() {
        // Destroying the task (the client's garbage collection) removes the driver's devices
        // cgroup.
        let devices = v1_task_cgroup("devices", &alloc, TASK);
        agent.api().client_gc()?;
        bpfexec_e2e::wait::poll_until(
            "the task's devices cgroup to be removed",
            TIMEOUT,
            bpfexec_e2e::wait::POLL,
            |_| Ok((!devices.exists()).then_some(())),
        )?;
    }
    Ok(())
}

/// The limits Nomad asked for (48 MiB, cpu = 100) in the task's cgroups (`scope`: its v2 scope,
/// `None` on v1), and its device rules enforced.
fn limits_and_devices(alloc: &str, scope: Option<&std::path::Path>) -> Result<()> {
    if !host_is_cgroup_v2() {
        let mem = read_trim(&v1_task_cgroup("memory", alloc, TASK).join("memory.limit_in_bytes"))?;
        ensure!(
            mem == (48u64 << 20).to_string(),
            "memory.limit_in_bytes = {mem}, expected 48 MiB = {}",
            48u64 << 20
        );
        let shares = read_trim(&v1_task_cgroup("cpu", alloc, TASK).join("cpu.shares"))?;
        ensure!(
            shares == "100",
            "cpu.shares = {shares}, expected 100 (cpu = 100)"
        );
        println!("memory.limit_in_bytes = {mem}, cpu.shares = {shares}");
        let list = read_trim(&v1_task_cgroup("devices", alloc, TASK).join("devices.list"))?;
        ensure!(
            list.lines().any(|l| l == "c 1:3 rwm") && !list.lines().any(|l| l.starts_with("a ")),
            "devices.list does not deny by default with /dev/null allowed:\n{list}"
        );
    }
    if let Some(scope) = scope {
        let max = read_trim(&scope.join("memory.max"))?;
        ensure!(
            max == (48u64 << 20).to_string(),
            "memory.max of {} = {max}, expected 48 MiB = {}",
            scope.display(),
            48u64 << 20
        );
        // cpu = 100 is 100 v1 shares: cpu.weight 4 by runc's (and Nomad's) conversion.
        let weight = read_trim(&scope.join("cpu.weight"))?;
        ensure!(
            weight == "4",
            "cpu.weight of {} = {weight}, expected 4 (cpu = 100)",
            scope.display()
        );
        // No reserved cores: the scope is in Nomad's shared partition (`share.slice`, whose
        // cpuset Nomad keeps to the cores no task reserved) and runs on exactly those cores.
        let share = scope.parent().unwrap_or(scope);
        let cpus = read_trim(&scope.join("cpuset.cpus.effective"))?;
        let shared = read_trim(&share.join("cpuset.cpus.effective"))?;
        ensure!(
            share.ends_with("share.slice") && !cpus.is_empty() && cpus == shared,
            "the scope {} runs on cores {cpus:?}, expected those of Nomad's shared partition \
             {} ({shared:?})",
            scope.display(),
            share.display()
        );
        println!("memory.max = {max}, cpu.weight = {weight}, cpuset.cpus = {cpus}");
    }
    // Device control, seen from a process of ours put in the task's cgroup the way the task's
    // are (v2: the scope, where the driver attached its device program; v1: the driver's devices
    // cgroup): a device outside the task's rules is refused even to root.
    let join = match scope {
        Some(scope) => scope.join("cgroup.procs"),
        None => v1_task_cgroup("devices", alloc, TASK).join("tasks"),
    };
    let refused = device_refused_in(&join, "/dev/console")?;
    ensure!(
        refused,
        "a process in the task's cgroup ({}) could open /dev/console: device rules not enforced",
        join.display()
    );
    Ok(())
}

/// Whether `sh` run in the cgroup joined through `join` (by writing "0" to it before the exec)
/// is refused opening `node` with EPERM.
fn device_refused_in(join: &std::path::Path, node: &str) -> Result<bool> {
    use std::os::unix::process::CommandExt as _;
    let join = join.to_path_buf();
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.args(["-c", &format!(": < {node}")]);
    // SAFETY: runs in the forked child before exec; one open and one write.
    unsafe {
        cmd.pre_exec(move || std::fs::write(&join, "0"));
    }
    let out = cmd.output().context("running sh in the task's cgroup")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!(
        "opening {node} in the task's cgroup: {} {stderr}",
        out.status
    );
    Ok(!out.status.success() && stderr.contains("not permitted"))
}

/// Runs a batch job with `resources { memory = 32 }` whose `config` is `config`, expects it to
/// fail, and returns its `Terminated` event.
fn run_oom_job(agent: &Agent, prefix: &str, config: &str) -> Result<bpfexec_e2e::TaskEvent> {
    let job = suite::batch(prefix).raw_config(config).memory_mb(32);
    let alloc = agent.api().run_job(&job.to_hcl(), &["failed"], TIMEOUT)?;
    let ev = alloc
        .last_event(TASK, "Terminated")
        .context("no Terminated event")?;
    println!("Terminated: {ev}");
    println!(
        "kernel: {}",
        kernel_oom_line(&alloc.id).unwrap_or_else(|| "(no OOM kill of this task in dmesg)".into())
    );
    Ok(ev)
}

/// The kernel log line of an OOM kill in the task's memory cgroup, if `dmesg` shows one.
fn kernel_oom_line(alloc: &str) -> Option<String> {
    let out = std::process::Command::new("dmesg").output().ok()?;
    let needle = format!("task_memcg=/nomad/{alloc}.{TASK}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find(|l| l.contains(&needle))
        .map(|l| l.trim().to_owned())
}

/// Perl as the task's main process grows to 200 MiB under a 32 MiB limit.
const PERL_HOG: &str = "$x = \"a\" x (200*1024*1024); print \"survived\\n\"";

pub(crate) fn oom_killed(agent: &mut Agent) -> Result<()> {
    let ev = run_oom_job(
        agent,
        "oom",
        &config_body("/usr/bin/perl", &["-e", PERL_HOG], &[]),
    )?;
    ensure!(
        ev.detail("oom_killed") == Some("true") && ev.detail_i64("signal") == Some(9),
        "the task exceeded memory = 32 but the Terminated event does not report an OOM kill \
         (oom_killed = true, signal 9): {ev}"
    );
    Ok(())
}

/// exec parity: exec reports `oom_killed` whenever the OOM killer struck in the task's cgroup
/// while it ran, also when the victim is a child and the main process then exits by itself.
pub(crate) fn oom_killed_child(agent: &mut Agent) -> Result<()> {
    let script = format!("/usr/bin/perl -e '{PERL_HOG}'; exit $?");
    let ev = run_oom_job(agent, "oom-child", &shell_config(&script, &[]))?;
    ensure!(
        ev.detail("oom_killed") == Some("true"),
        "a child of the task was OOM-killed (the shell then exited {:?}) but the Terminated \
         event does not report OOM, unlike exec: {ev}",
        ev.detail("exit_code")
    );
    Ok(())
}

pub(crate) fn work_dir(agent: &mut Agent) -> Result<()> {
    let job = suite::batch("workdir").raw_config(&shell_config("pwd", &["work_dir = \"/local\""]));
    let (_a, out) = run_batch(agent, &job.to_hcl())?;
    ensure!(
        out.trim() == "/local",
        "work_dir = /local but pwd printed {out:?}"
    );
    Ok(())
}

fn volume_mounts(agent: &mut Agent) -> Result<()> {
    let token = unique("vol");
    let script = format!(
        "echo '== rw'; echo {token} > /data-rw/{token} 2>&1 && echo written; echo \"rc=$?\"\n\
         echo '== ro'; (echo x > /data-ro/{token}-ro) 2>&1; echo \"rc=$?\"\n\
         echo '== ro-read'; cat /data-ro/{token}\n"
    );
    let job = suite::batch("volumes")
        .raw_config(&shell_config(&script, &[]))
        .extra_task_hcl(
            "    volume_mount {\n      volume = \"data\"\n      destination = \"/data-rw\"\n      read_only = false\n    }\n\
             \x20   volume_mount {\n      volume = \"data\"\n      destination = \"/data-ro\"\n      read_only = true\n    }\n",
        );
    let hcl = with_group_hcl(
        &job,
        "    volume \"data\" {\n      type = \"host\"\n      source = \"data\"\n      read_only = false\n    }",
    )?;
    let (_a, out) = run_batch(agent, &hcl)?;
    println!("task output:\n{out}");
    let s = sections(&out);
    let rw = section(&s, "rw")?;
    ensure!(
        rw.contains("written"),
        "writing the read-write volume failed: {rw:?}"
    );
    let host = read_trim(&volume_dir().join(&token))?;
    ensure!(host == token, "the host volume file holds {host:?}");
    let ro = section(&s, "ro")?;
    ensure!(
        !ro.contains("rc=0") && ro.contains("Read-only"),
        "writing the read-only volume mount did not fail with EROFS: {ro:?}"
    );
    ensure!(
        !volume_dir().join(format!("{token}-ro")).exists(),
        "the read-only mount let a file through to the host"
    );
    let read = section(&s, "ro-read")?;
    ensure!(
        read.trim() == token,
        "the read-only mount is not readable: {read:?}"
    );
    Ok(())
}

pub(crate) fn host_namespaces(agent: &mut Agent) -> Result<()> {
    let script = "echo '== ns'; readlink /proc/self/ns/pid /proc/self/ns/ipc\n\
                  echo '== init'; tr '\\0' ' ' < /proc/1/cmdline; echo\n\
                  echo '== count'; ls /proc | grep -cE '^[0-9]+$'\n";
    let job = suite::batch("hostns").raw_config(&shell_config(
        script,
        &["pid_mode = \"host\"", "ipc_mode = \"host\""],
    ));
    let (_a, out) = run_batch(agent, &job.to_hcl())?;
    println!("task output:\n{out}");
    let s = sections(&out);
    let ns: Vec<&str> = section(&s, "ns")?.lines().collect();
    let host = |k: &str| -> Result<String> {
        Ok(std::fs::read_link(format!("/proc/self/ns/{k}"))?
            .to_string_lossy()
            .into_owned())
    };
    ensure!(
        ns.first().copied() == Some(host("pid")?.as_str()),
        "pid_mode = host, but the task's pid namespace {ns:?} is not the host's {}",
        host("pid")?
    );
    ensure!(
        ns.get(1).copied() == Some(host("ipc")?.as_str()),
        "ipc_mode = host, but the task's ipc namespace {ns:?} is not the host's {}",
        host("ipc")?
    );
    let init = section(&s, "init")?.trim().to_owned();
    let host_init = procs::cmdline(1).unwrap_or_default().join(" ");
    ensure!(
        init == host_init.trim(),
        "pid 1 seen by the task is {init:?}, the host's is {host_init:?}"
    );
    let count: usize = section(&s, "count")?.trim().parse()?;
    ensure!(count > 20, "the task's /proc lists only {count} processes");
    Ok(())
}

/// A task whose main shell traps TERM (and survives it) and whose two children run in their own
/// sessions (`setsid`, so outside the main process group), trap TERM and USR1, and log them.
fn trapping_job(prefix: &str, marker: &str, all: bool) -> String {
    // Inside the main script's double quotes: `\$1` is the child's own $1 (its number).
    let child = "trap 'echo child-usr1-\\$1 >> /alloc/log' USR1; \
                 trap 'echo child-term-\\$1 >> /alloc/log; exit 0' TERM; \
                 while :; do sleep 0.1; done";
    let script = format!(
        "trap 'echo main-term >> /alloc/log' TERM\n\
         trap 'echo main-usr1 >> /alloc/log' USR1\n\
         for i in 1 2; do setsid sh -c \"{child}\" {marker} $i & done\n\
         echo $$ > /alloc/pid\n\
         while :; do sleep 0.1; done"
    );
    let extra = if all {
        vec!["signal_all_processes = true"]
    } else {
        vec![]
    };
    suite::service(prefix)
        .raw_config(&shell_config(&script, &extra))
        .kill_signal("SIGTERM")
        .kill_timeout("3s")
        .to_hcl()
}

fn log_lines(agent: &Agent, alloc: &str) -> Vec<String> {
    std::fs::read_to_string(alloc_file(agent, alloc, "log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A started [`trapping_job`].
struct Trapping {
    alloc: String,
    job_id: String,
    /// The task's own cgroup (v2: its scope; v1: its freezer cgroup, where the stop's kill
    /// looks).
    cgroup: PathBuf,
}

/// Runs [`trapping_job`]; returns it once both children run.
fn start_trapping(agent: &Agent, prefix: &str, marker: &str, all: bool) -> Result<Trapping> {
    let api = agent.api();
    let job_id = api.register_job(&trapping_job(prefix, marker, all))?;
    let alloc = api.wait_job_alloc(&job_id, TIMEOUT)?;
    api.wait_alloc_status(&alloc, &["running"], TIMEOUT)?;
    let main = wait_task_pid(agent, &alloc, "pid")?;
    let cgroup = if host_is_cgroup_v2() {
        let text = read_trim(std::path::Path::new(&format!("/proc/{main}/cgroup")))?;
        let scope = cgroup_paths(&text).get("").cloned().unwrap_or_default();
        PathBuf::from(format!("/sys/fs/cgroup{scope}"))
    } else {
        v1_task_cgroup("freezer", &alloc, TASK)
    };
    poll_until("both marked children", TIMEOUT, POLL, |last| {
        let found = procs::find_by_cmdline(marker);
        *last = procs::describe(&found);
        Ok((found.len() >= 2).then_some(()))
    })?;
    Ok(Trapping {
        alloc,
        job_id,
        cgroup,
    })
}

/// Stops the job; checks it took about `kill_timeout` and left no process behind, in the
/// task's cgroup (emptied by the driver's kill: `cgroup.kill` on v2) or anywhere else.
fn stop_and_check_gone(agent: &Agent, t: &Trapping, marker: &str) -> Result<()> {
    let (job_id, alloc) = (t.job_id.as_str(), t.alloc.as_str());
    let procs_file = t.cgroup.join("cgroup.procs");
    let members = read_trim(&procs_file)?;
    println!(
        "{} before the stop: {}",
        procs_file.display(),
        members.replace('\n', " ")
    );
    let started = Instant::now();
    stop_and_wait(agent, job_id, alloc)?;
    let took = started.elapsed();
    println!("stop took {took:.1?}");
    ensure!(
        took >= Duration::from_millis(2500)
            && took <= bpfexec_e2e::wait::scaled(Duration::from_secs(20)),
        "the main process ignores TERM, so the stop should take kill_timeout (3s): took {took:?}"
    );
    // The cgroup empties once the task is stopped (or is removed with it).
    poll_until(
        &format!("the task's cgroup {} to be empty", t.cgroup.display()),
        Duration::from_secs(5),
        POLL,
        |last| {
            let left = std::fs::read_to_string(&procs_file).unwrap_or_default();
            left.trim().replace('\n', " ").clone_into(last);
            Ok(left.trim().is_empty().then_some(()))
        },
    )?;
    let gone = wait_for(Duration::from_secs(5), POLL, || {
        procs::find_by_cmdline(marker).is_empty()
            && procs::find_by_environ(&format!("NOMAD_ALLOC_ID={alloc}")).is_empty()
    });
    let left: Vec<i32> = procs::find_by_cmdline(marker)
        .into_iter()
        .chain(procs::find_by_environ(&format!("NOMAD_ALLOC_ID={alloc}")))
        .collect();
    ensure!(
        gone,
        "processes of the stopped task survive kill_timeout:\n{}",
        procs::describe(&left)
    );
    Ok(())
}

pub(crate) fn signal_all_processes(agent: &mut Agent) -> Result<()> {
    let marker = unique("sigall");
    let t = start_trapping(agent, "sigall", &marker, true)?;
    let alloc = t.alloc.clone();
    agent.api().signal_alloc(&alloc, TASK, "SIGUSR1")?;
    poll_until(
        "USR1 in the main process and both children",
        Duration::from_secs(10),
        POLL,
        |last| {
            let l = log_lines(agent, &alloc);
            *last = format!("{l:?}");
            let all = ["main-usr1", "child-usr1-1", "child-usr1-2"]
                .iter()
                .all(|w| l.iter().any(|x| x == w));
            Ok(all.then_some(()))
        },
    )?;
    stop_and_check_gone(agent, &t, &marker)?;
    let l = log_lines(agent, &alloc);
    println!("signals logged by the task: {l:?}");
    for want in ["main-term", "child-term-1", "child-term-2"] {
        ensure!(
            l.iter().any(|x| x == want),
            "with signal_all_processes = true, {want} was not logged on stop: {l:?}"
        );
    }
    Ok(())
}

/// Without the option, stop's SIGTERM reaches only the main process group: the children (own
/// sessions) do not log it; they still must not survive kill_timeout.
pub(crate) fn signal_group_default(agent: &mut Agent) -> Result<()> {
    let marker = unique("sigpg");
    let t = start_trapping(agent, "sigpg", &marker, false)?;
    stop_and_check_gone(agent, &t, &marker)?;
    let l = log_lines(agent, &t.alloc);
    println!("signals logged by the task: {l:?}");
    ensure!(
        l.iter().any(|x| x == "main-term"),
        "the main process did not get SIGTERM: {l:?}"
    );
    ensure!(
        !l.iter().any(|x| x.starts_with("child-term")),
        "without signal_all_processes SIGTERM reached children in other sessions: {l:?}"
    );
    Ok(())
}
