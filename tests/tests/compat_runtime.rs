//! Issue 11, runtime options: commands from `artifact`s (fetched by Nomad's go-getter from an
//! HTTP server on loopback) and exec's command search order, journald logging with
//! `logs { disabled = true }` (a real systemd-journald in a journal namespace of the test's own,
//! read back with `journalctl`; the logmon process it saves is measured), filesystem images
//! (`mount_image`, `root_image`; squashfs made with mksquashfs, loop devices released when the
//! task ends) and ephemeral users (distinct uids from the plugin's range that cannot signal,
//! ptrace or read each other, kept across a plugin restart, released at destroy).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, Result, bail, ensure};
use bpfexec_e2e::fileserver::FileServer;
use bpfexec_e2e::isolation::{
    config_body, expect_refusal, run_batch, section, sections, shell_config, with_group_hcl,
};
use bpfexec_e2e::jobspec::{JobSpec, TASK};
use bpfexec_e2e::journald::Journald;
use bpfexec_e2e::suite::{self, TIMEOUT, alloc_file, stop_and_wait, wait_file};
use bpfexec_e2e::wait::{POLL, poll_until};
use bpfexec_e2e::{Agent, AgentOptions, Check, procs, run_checks, unique};
use nix::sys::signal::Signal;

/// The uids the plugin hands out as ephemeral users in these checks.
const EPHEMERAL: (u32, u32) = (3_999_000, 3_999_009);

/// Shared between the checks of this file (one agent); the server and journald themselves are
/// owned by the test function, so they are stopped however it ends.
struct Fixture {
    /// `http://127.0.0.1:<port>/` of the artifact server.
    server: String,
    volume: PathBuf,
    /// The journal namespace of the test's journald.
    journal: String,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

fn fixture() -> Result<&'static Fixture> {
    FIXTURE
        .get()
        .context("the checks' fixture (server, journald) was not set up")
}

#[test]
fn compat_runtime() {
    if !suite::is_bpfexec() {
        println!("SKIP: compat_runtime: bpfexec-only checks (BPFEXEC_E2E_DRIVER=raw_exec)");
        return;
    }
    if !bpfexec_e2e::env::require_root("compat_runtime") {
        return;
    }
    let base =
        TempBase(std::env::temp_dir().join(format!("bpfexec-e2e-compat-{}", std::process::id())));
    let files = base.0.join("files");
    let volume = base.0.join("volume");
    for d in [&files, &volume] {
        std::fs::create_dir_all(d).expect("creating the test dirs");
    }
    std::fs::set_permissions(&volume, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    make_files(&files).expect("making the served files and images");
    let journald = Journald::start().expect("starting systemd-journald");
    println!(
        "journald (namespace {}) listens on {}",
        journald.namespace(),
        journald.socket().display()
    );
    let server = FileServer::start(&files).expect("starting the artifact server");
    let opts = AgentOptions::bpfexec()
        .plugin_config(&format!(
            "journald_socket = {}",
            bpfexec_e2e::config::hcl_string(&journald.socket().to_string_lossy())
        ))
        .plugin_config(&format!(
            "ephemeral_uid_range = \"{}-{}\"",
            EPHEMERAL.0, EPHEMERAL.1
        ))
        .plugin_config("allow_unisolated = true")
        .extra_hcl(&format!(
            "client {{\n  host_volume \"shared\" {{\n    path = {}\n    read_only = false\n  }}\n}}",
            bpfexec_e2e::config::hcl_string(&volume.to_string_lossy())
        ));
    let _ = FIXTURE.set(Fixture {
        server: server.url(""),
        volume,
        journal: journald.namespace().to_owned(),
    });
    run_checks(
        "compat_runtime",
        opts,
        &[
            Check {
                name: "artifact_commands",
                run: artifact_commands,
            },
            Check {
                name: "search_order",
                run: search_order,
            },
            Check {
                name: "journald_logging",
                run: journald_logging,
            },
            Check {
                name: "mount_image",
                run: mount_image,
            },
            Check {
                name: "root_image",
                run: root_image,
            },
            Check {
                name: "ephemeral_users",
                run: ephemeral_users,
            },
        ],
    );
    drop((server, journald, base));
}

/// The checks' files, removed however the test ends.
struct TempBase(PathBuf);

impl Drop for TempBase {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The files the server hands out: scripts without the execute bit, a data file, and two
/// squashfs images (a tools image and a busybox root).
fn make_files(dir: &Path) -> Result<()> {
    let write = |name: &str, text: &str| -> Result<()> {
        let p = dir.join(name);
        std::fs::write(&p, text)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644))?;
        Ok(())
    };
    write(
        "consumer",
        "#!/bin/sh\necho \"consumer ran as uid $(id -u) in $(pwd)\"\n",
    )?;
    write("sh", "#!/bin/sh\necho local-sh-first\n")?;
    write("app.txt", "app data\n")?;
    let tools = dir.join("tools-src");
    std::fs::create_dir_all(&tools)?;
    std::fs::write(tools.join("hello.txt"), "from-image\n")?;
    squash(&tools, &dir.join("tools.squashfs"))?;
    let root = dir.join("root-src");
    for d in ["bin", "etc"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .context("copying /bin/busybox (busybox-static)")?;
    for applet in ["sh", "cat", "ls", "id", "touch"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
    }
    std::fs::write(root.join("etc/image-release"), "bpfexec-test-root\n")?;
    squash(&root, &dir.join("root.squashfs"))
}

fn squash(src: &Path, image: &Path) -> Result<()> {
    let out = Command::new("mksquashfs")
        .arg(src)
        .arg(image)
        .args(["-noappend", "-quiet", "-all-root"])
        .output()
        .context("running mksquashfs (Debian's squashfs-tools; cargo xtask setup installs it)")?;
    ensure!(
        out.status.success(),
        "mksquashfs {} failed: {}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// An `artifact` block fetching `name` from the test's server into `local/<name>`.
fn artifact(name: &str) -> Result<String> {
    Ok(format!(
        "    artifact {{\n      source = \"{}{name}\"\n      destination = \"local/{name}\"\n      mode = \"file\"\n    }}\n",
        fixture()?.server
    ))
}

/// The shared host volume mounted at `/shared` (in the group and the task).
fn with_shared_volume(job: JobSpec) -> Result<String> {
    let job = job.extra_task_hcl(
        "    volume_mount {\n      volume = \"shared\"\n      destination = \"/shared\"\n      read_only = false\n    }\n",
    );
    with_group_hcl(
        &job,
        "    volume \"shared\" {\n      type = \"host\"\n      source = \"shared\"\n      read_only = false\n    }",
    )
}

/// `command = "local/consumer"` from an artifact lacking the execute bit (made executable, as
/// exec does), and `/bin/cat` with a relative argument `local/app.txt`.
fn artifact_commands(agent: &mut Agent) -> Result<()> {
    let job = suite::batch("artifact")
        .raw_config(&config_body("local/consumer", &[], &[]))
        .extra_task_hcl(&artifact("consumer")?);
    let (alloc, out) = run_batch(agent, &job.to_hcl())?;
    println!("local/consumer: {}", out.trim());
    ensure!(
        out.contains("consumer ran as uid 65534 in /"),
        "the artifact command did not run as expected: {out:?}"
    );
    let host = agent.alloc_dir(&alloc.id).join(TASK).join("local/consumer");
    let mode = std::fs::metadata(&host)?.permissions().mode();
    ensure!(
        mode & 0o555 == 0o555,
        "{} has mode {mode:o}: not made executable",
        host.display()
    );
    let job = suite::batch("relarg")
        .raw_config(&config_body("/bin/cat", &["local/app.txt"], &[]))
        .extra_task_hcl(&artifact("app.txt")?);
    let (_a, out) = run_batch(agent, &job.to_hcl())?;
    ensure!(
        out.trim() == "app data",
        "/bin/cat local/app.txt printed {out:?}"
    );
    Ok(())
}

/// exec's search order: the task's `local/` before everything (a `local/sh` wins over `/bin/sh`),
/// a volume mount's files by their task path, then `/usr/local/bin`, `/usr/bin`, `/bin`.
fn search_order(agent: &mut Agent) -> Result<()> {
    let job = suite::batch("local-first")
        .raw_config(&config_body("sh", &[], &[]))
        .extra_task_hcl(&artifact("sh")?);
    let (_a, out) = run_batch(agent, &job.to_hcl())?;
    ensure!(
        out.trim() == "local-sh-first",
        "command \"sh\" with local/sh present ran {out:?}, not local/sh"
    );
    let tool = fixture()?.volume.join(unique("tool"));
    std::fs::write(&tool, "#!/bin/sh\necho from-the-volume\n")?;
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755))?;
    let name = tool
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let job =
        suite::batch("mount-cmd").raw_config(&config_body(&format!("/shared/{name}"), &[], &[]));
    let (_a, out) = run_batch(agent, &with_shared_volume(job)?)?;
    ensure!(
        out.trim() == "from-the-volume",
        "the volume's command printed {out:?}"
    );
    let job = suite::batch("bare").raw_config(&config_body("env", &[], &[]));
    let (_a, out) = run_batch(agent, &job.to_hcl())?;
    ensure!(
        out.contains("NOMAD_ALLOC_ID="),
        "command \"env\" (found in /usr/bin) printed {out:?}"
    );
    Ok(())
}

/// Resident and proportional memory (KiB) of a process, from `smaps_rollup`.
fn rss_pss(pid: i32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    Some((field("Rss:")?, field("Pss:")?))
}

/// Nomad's logmon processes (`nomad logmon`) under the agent.
fn logmons(agent: &Agent) -> Vec<i32> {
    let Some(agent_pid) = agent.pid() else {
        return Vec::new();
    };
    procs::find(|p| {
        procs::ppid(p) == Some(agent_pid)
            && procs::cmdline(p).is_some_and(|c| c.get(1).is_some_and(|a| a == "logmon"))
    })
}

/// `logging { driver = "journald" }` with `logs { disabled = true }`: stdout and stderr lines are
/// in the journal with the task's identity as fields (read with `journalctl NOMAD_ALLOC_ID=…`),
/// no logmon runs for the task, and the relay that replaces it is measured against one.
fn journald_logging(agent: &mut Agent) -> Result<()> {
    let token = unique("jl");
    let script = format!(
        "echo $$ > /alloc/pid; echo out-{token}; echo err-{token} >&2; printf 'no newline-{token}'; exec sleep 1000"
    );
    let before = logmons(agent);
    let job = suite::service("journald")
        .raw_config(&format!(
            "{}\n      logging {{\n        driver = \"journald\"\n      }}",
            shell_config(&script, &[])
        ))
        .extra_task_hcl("    logs {\n      disabled = true\n    }\n")
        .kill_signal("SIGKILL");
    let api = agent.api();
    let (job_id, alloc, _pid) = suite::start_service(agent, &job.to_hcl())?;
    let journal = &fixture()?.journal;
    // The unterminated last line is sent when the stream ends (as journald does with a stream).
    let lines = poll_until("the task's lines in the journal", TIMEOUT, POLL, |last| {
        let e = bpfexec_e2e::journald::entries(journal, "NOMAD_ALLOC_ID", &alloc)?;
        *last = format!("{e:?}");
        Ok((e.len() >= 2).then_some(e.len()))
    })?;
    ensure!(
        lines == 2,
        "the partial line was sent before the stream ended"
    );
    let during = logmons(agent);
    let new_logmons: Vec<&i32> = during.iter().filter(|p| !before.contains(p)).collect();
    ensure!(
        new_logmons.is_empty(),
        "with logs {{ disabled = true }} Nomad still started logmon {new_logmons:?}"
    );
    // What a logmon costs, next to the relay: a task with Nomad's logging, side by side.
    let other = suite::service("logmon")
        .raw_config(&shell_config("echo $$ > /alloc/pid; exec sleep 1000", &[]))
        .kill_signal("SIGKILL");
    let other_id = api.register_job(&other.to_hcl())?;
    let other_alloc = api.wait_job_alloc(&other_id, TIMEOUT)?;
    api.wait_alloc_status(&other_alloc, &["running"], TIMEOUT)?;
    let logmon = poll_until("the other task's logmon", TIMEOUT, POLL, |_| {
        Ok(logmons(agent).into_iter().find(|p| !during.contains(p)))
    })?;
    let relay = relay_pid(agent)?;
    let (lr, lp) = rss_pss(logmon).context("logmon's smaps_rollup")?;
    let (rr, rp) = rss_pss(relay).context("the relay's smaps_rollup")?;
    println!(
        "JOURNALD-MEMORY logmon pid {logmon}: RSS {lr} KiB, PSS {lp} KiB; journal relay pid {relay}: RSS {rr} KiB, PSS {rp} KiB"
    );
    stop_and_wait(agent, &other_id, &other_alloc)?;
    stop_and_wait(agent, &job_id, &alloc)?;
    poll_until(
        "the journal relay to exit with the task",
        TIMEOUT,
        POLL,
        |_| Ok((!procs::is_alive(relay)).then_some(())),
    )?;
    // Every line, the unterminated last one too (sent when the stream ended), with the task's
    // identity.
    let entries = bpfexec_e2e::journald::entries(journal, "NOMAD_ALLOC_ID", &alloc)?;
    let by_message: BTreeMap<String, &serde_json::Value> = entries
        .iter()
        .filter_map(|e| Some((e["MESSAGE"].as_str()?.to_owned(), e)))
        .collect();
    println!(
        "journal entries of alloc {alloc}: {:?}",
        by_message.keys().collect::<Vec<_>>()
    );
    for (message, priority) in [
        (format!("out-{token}"), "6"),
        (format!("err-{token}"), "3"),
        (format!("no newline-{token}"), "6"),
    ] {
        let Some(e) = by_message.get(&message) else {
            bail!("no journal entry {message:?} in {entries:?}");
        };
        for (field, want) in [
            ("PRIORITY", priority),
            ("SYSLOG_IDENTIFIER", TASK),
            ("NOMAD_TASK_NAME", TASK),
            ("NOMAD_GROUP_NAME", bpfexec_e2e::jobspec::GROUP),
            ("NOMAD_JOB_ID", job_id.as_str()),
            ("NOMAD_JOB_NAME", job_id.as_str()),
            ("NOMAD_NAMESPACE", "default"),
            ("NOMAD_ALLOC_ID", alloc.as_str()),
        ] {
            ensure!(
                e[field].as_str() == Some(want),
                "entry {message:?}: {field} = {:?}, expected {want:?}: {e}",
                e[field]
            );
        }
    }
    Ok(())
}

/// The journal relay's pid, from the supervisor log that names it.
fn relay_pid(agent: &Agent) -> Result<i32> {
    let logs = bpfexec_e2e::isolation::supervisor_logs(agent);
    logs.lines()
        .rev()
        .find_map(|l| l.split("through relay pid ").nth(1))
        .and_then(|p| p.trim().parse().ok())
        .with_context(|| format!("no supervisor log names the journal relay:\n{logs}"))
}

/// Loop devices whose backing file lies under `dir`.
fn loops_backed_by(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let dir = dir.to_string_lossy().into_owned();
    entries
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("loop/backing_file"))
                .is_ok_and(|b| b.trim().starts_with(&dir))
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// `mount_image` from an artifact: the image is at its target, read-only, squashfs, through a
/// loop device that is released once the task has ended. Refused in raw mode and for a file
/// that is not squashfs.
fn mount_image(agent: &mut Agent) -> Result<()> {
    let script = "echo $$ > /alloc/pid; echo '== hello'; cat /opt/tools/hello.txt\n\
                  echo '== mount'; grep ' /opt/tools ' /proc/self/mountinfo\n\
                  echo '== write'; (touch /opt/tools/x) 2>&1; echo \"rc=$?\"\n\
                  exec sleep 1000";
    let job = suite::service("mountimg")
        .raw_config(&format!(
            "{}\n      mount_image {{\n        source = \"local/tools.squashfs\"\n        target = \"/opt/tools\"\n      }}",
            shell_config(script, &[])
        ))
        .extra_task_hcl(&artifact("tools.squashfs")?)
        .kill_signal("SIGKILL");
    let api = agent.api();
    let (job_id, alloc, _pid) = suite::start_service(agent, &job.to_hcl())?;
    let out = api.wait_logs_contain(&alloc, TASK, bpfexec_e2e::LogType::Stdout, "rc=", TIMEOUT)?;
    println!("task output:\n{out}");
    let s = sections(&out);
    ensure!(section(&s, "hello")?.trim() == "from-image", "{out}");
    let mount = section(&s, "mount")?;
    ensure!(
        mount.contains(" squashfs ") && mount.contains(" ro,"),
        "/opt/tools is not a read-only squashfs mount: {mount:?}"
    );
    ensure!(
        !section(&s, "write")?.contains("rc=0"),
        "the image was writable: {out}"
    );
    let alloc_dir = agent.alloc_dir(&alloc);
    let loops = loops_backed_by(&alloc_dir);
    println!("loop devices backed by the allocation: {loops:?}");
    ensure!(
        loops.len() == 1,
        "expected one loop device for the image, found {loops:?}"
    );
    stop_and_wait(agent, &job_id, &alloc)?;
    poll_until(
        "the image's loop device to be released",
        TIMEOUT,
        POLL,
        |last| {
            let l = loops_backed_by(&alloc_dir);
            *last = format!("{l:?}");
            Ok(l.is_empty().then_some(()))
        },
    )?;
    for (extra, needle) in [
        (
            "isolation = \"none\"\n      mount_image {\n        source = \"local/tools.squashfs\"\n        target = \"/opt/tools\"\n      }",
            "not available with isolation = \"none\"",
        ),
        ("root_image = \"local/app.txt\"", "is not a squashfs image"),
    ] {
        let job = suite::batch("img-bad")
            .raw_config(&format!(
                "{}\n      {extra}",
                config_body("/bin/true", &[], &[])
            ))
            .extra_task_hcl(&artifact("tools.squashfs")?)
            .extra_task_hcl(&artifact("app.txt")?);
        let (_a, ev) = expect_refusal(agent, &job.to_hcl(), needle)?;
        println!("refusal: {}", ev.all_text());
    }
    Ok(())
}

/// `root_image`: the task's root is the image (a busybox root) plus the task's own directories;
/// the host's `/usr` is not there.
fn root_image(agent: &mut Agent) -> Result<()> {
    let script = "echo '== release'; cat /etc/image-release; echo '== usr'; ls /usr 2>&1; \
                  echo '== local'; ls /local; echo '== id'; id -u";
    let job = suite::batch("rootimg")
        .raw_config(&format!(
            "{}\n      root_image = \"local/root.squashfs\"",
            config_body("/bin/sh", &["-c", script], &[])
        ))
        .extra_task_hcl(&artifact("root.squashfs")?);
    let (alloc, out) = run_batch(agent, &job.to_hcl())?;
    println!("task output:\n{out}");
    let s = sections(&out);
    ensure!(
        section(&s, "release")?.trim() == "bpfexec-test-root",
        "{out}"
    );
    ensure!(
        section(&s, "usr")?.contains("No such file"),
        "the host's /usr is visible in a root_image task: {out}"
    );
    ensure!(section(&s, "local")?.contains("root.squashfs"), "{out}");
    let alloc_dir = agent.alloc_dir(&alloc.id);
    poll_until(
        "the root image's loop device to be released",
        TIMEOUT,
        POLL,
        |_| Ok(loops_backed_by(&alloc_dir).is_empty().then_some(())),
    )?;
    Ok(())
}

/// One ephemeral-user task: writes its uid, its host pid (pid_mode = "host") and a private file
/// in the shared volume, checks its own directories are writable, then waits.
fn ephemeral_job(prefix: &str, token: &str, probe: &str) -> Result<String> {
    let script = format!(
        "id -u > /alloc/uid; echo $$ > /alloc/pid\n\
         (umask 077; echo secret > /shared/{token}-$(id -u))\n\
         for d in /local /secrets /tmp /alloc; do touch $d/w 2>/dev/null && echo \"$d ok\" || echo \"$d FAILED\"; done > /alloc/dirs\n\
         {probe}\n\
         exec sleep 1000"
    );
    let job = suite::service(prefix)
        .raw_config(&shell_config(
            &script,
            &["ephemeral_user = true", "pid_mode = \"host\""],
        ))
        .kill_signal("SIGKILL");
    with_shared_volume(job)
}

/// Ephemeral users: two tasks get distinct uids from the range, cannot signal or read each
/// other (host pid mode, a shared volume), can use their own directories; the ids survive a
/// plugin restart (a third task gets a third id) and are released at destroy.
fn ephemeral_users(agent: &mut Agent) -> Result<()> {
    let token = unique("eph");
    let api = agent.api();
    let start = |hcl: &str| -> Result<(String, String, u32, i32)> {
        let job = api.register_job(hcl)?;
        let alloc = api.wait_job_alloc(&job, TIMEOUT)?;
        api.wait_alloc_status(&alloc, &["running"], TIMEOUT)?;
        let uid: u32 = wait_file(&alloc_file(agent, &alloc, "uid"), TIMEOUT)?.parse()?;
        let pid: i32 = wait_file(&alloc_file(agent, &alloc, "pid"), TIMEOUT)?.parse()?;
        let dirs = wait_file(&alloc_file(agent, &alloc, "dirs"), TIMEOUT)?;
        ensure!(
            !dirs.contains("FAILED"),
            "task uid {uid} cannot write its directories:\n{dirs}"
        );
        Ok((job, alloc, uid, pid))
    };
    let (job_a, alloc_a, uid_a, pid_a) = start(&ephemeral_job("eph-a", &token, "")?)?;
    let probe = format!(
        "{{ echo '== kill'; kill -0 {pid_a} 2>&1; echo \"rc=$?\"\n\
         echo '== environ'; cat /proc/{pid_a}/environ 2>&1 >/dev/null; echo \"rc=$?\"\n\
         echo '== file'; cat /shared/{token}-{uid_a} 2>&1; echo \"rc=$?\"; }} > /alloc/probe"
    );
    let (job_b, alloc_b, uid_b, _pid_b) = start(&ephemeral_job("eph-b", &token, &probe)?)?;
    println!("ephemeral uids: {uid_a}, {uid_b}");
    for uid in [uid_a, uid_b] {
        ensure!(
            (EPHEMERAL.0..=EPHEMERAL.1).contains(&uid),
            "uid {uid} is outside ephemeral_uid_range"
        );
    }
    ensure!(uid_a != uid_b, "both tasks run as uid {uid_a}");
    let probe_out = wait_file(&alloc_file(agent, &alloc_b, "probe"), TIMEOUT)?;
    println!("task B against task A:\n{probe_out}");
    let s = sections(&probe_out);
    for (name, needle) in [
        ("kill", "not permitted"),
        ("environ", "Permission denied"),
        ("file", "Permission denied"),
    ] {
        let text = section(&s, name)?;
        ensure!(
            !text.contains("rc=0") && text.contains(needle),
            "task B could {name} task A's: {text:?}"
        );
    }
    // The plugin restarts; the claims stay, so a new task gets a third id.
    let plugins = agent.plugin_pids();
    ensure!(
        plugins.len() == 1,
        "expected one plugin process, found {plugins:?}"
    );
    procs::signal(plugins[0], Signal::SIGKILL).context("SIGKILL to the plugin")?;
    poll_until("Nomad to relaunch the plugin", TIMEOUT, POLL, |_| {
        Ok(agent.plugin_pids().into_iter().find(|p| *p != plugins[0]))
    })?;
    let (job_c, alloc_c, uid_c, _) = start(&ephemeral_job("eph-c", &token, "")?)?;
    println!("after the plugin restart: uid {uid_c}");
    ensure!(
        uid_c != uid_a && uid_c != uid_b,
        "a task started after the plugin restart got uid {uid_c}, already held by a running task"
    );
    let claims = agent.layout().state_dir.join("ephemeral");
    let count = || std::fs::read_dir(&claims).map_or(0, Iterator::count);
    ensure!(
        count() == 3,
        "{} holds {} claims, expected 3",
        claims.display(),
        count()
    );
    for (job, alloc) in [(&job_a, &alloc_a), (&job_b, &alloc_b), (&job_c, &alloc_c)] {
        stop_and_wait(agent, job, alloc)?;
    }
    agent.api().client_gc()?;
    poll_until("the ephemeral ids to be released", TIMEOUT, POLL, |last| {
        *last = format!("{} claims left", count());
        Ok((count() == 0).then_some(()))
    })?;
    Ok(())
}
