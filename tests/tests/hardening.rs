//! Issue 12 §1, kernel knobs out of a task's reach: a task running as root (the agent sets
//! `allow_root = true`, and adds `/sys` to `chroot_env` so the /sys rules are exercised too)
//! finds every path Nomad's exec and Docker make read-only mounted read-only, and every path they
//! mask empty; writing a host sysctl fails with EROFS and leaves the host value as it was; the
//! task's own /proc still works (ps, /proc/self/*). Without `allow_root` the same job is refused
//! by name (checked in `basics.rs`, whose agent has the defaults).
//!
//! Seccomp: under the default profile a root task's calls to the keyring, bpf, perf, mount and
//! user namespaces fail with EPERM (clone3 with ENOSYS, so libc falls back to clone) and each
//! refused call is a task event naming it; shells, Python, Perl, a Go binary (Nomad) and a Rust
//! binary (the driver) run normally; `nomad alloc exec` sessions get the same filter;
//! `seccomp = "unconfined"` lifts it; an OCI profile file replaces it; a bad profile fails the
//! start by name.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use bpfexec_e2e::isolation::exec::nomad_exec;
use bpfexec_e2e::isolation::{expect_refusal, run_batch, section, sections, shell_config};
use bpfexec_e2e::jobspec::TASK;
use bpfexec_e2e::suite::{self, TIMEOUT, stop_and_wait};
use bpfexec_e2e::wait::{POLL, poll_until};
use bpfexec_e2e::{Agent, AgentOptions, Check, env, run_checks, unique};

/// Read-only paths of exec (libcontainer) and Docker.
const READONLY: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Masked paths of exec and Docker.
const MASKED: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// The default `chroot_env` plus the host's /sys and the directories of the Nomad binary (Go)
/// and the driver binary (Rust), so tasks can run both.
fn chroot_env() -> Result<String> {
    let dir_of = |p: std::path::PathBuf| -> Result<String> {
        Ok(p.parent()
            .ok_or_else(|| anyhow::anyhow!("{} has no directory", p.display()))?
            .display()
            .to_string())
    };
    let go = dir_of(env::nomad_bin()?)?;
    let rust = dir_of(env::driver_bin()?)?;
    Ok(format!(
        r#"chroot_env {{
  "/bin" = "/bin"
  "/etc" = "/etc"
  "/lib" = "/lib"
  "/lib32" = "/lib32"
  "/lib64" = "/lib64"
  "/sbin" = "/sbin"
  "/usr" = "/usr"
  "/sys" = "/sys"
  "{go}" = "/opt/go-bin"
  "{rust}" = "/opt/rust-bin"
}}"#
    ))
}

#[test]
fn hardening() {
    if !suite::is_bpfexec() {
        println!("SKIP: hardening: bpfexec-only checks (BPFEXEC_E2E_DRIVER=raw_exec)");
        return;
    }
    let chroot = match chroot_env() {
        Ok(c) => c,
        Err(e) => panic!("hardening: {e:#}"),
    };
    run_checks(
        "hardening",
        AgentOptions::bpfexec().plugin_config(&format!("allow_root = true\n{chroot}")),
        &[
            Check {
                name: "proc_paths_locked",
                run: proc_paths_locked,
            },
            Check {
                name: "sys_paths_locked",
                run: sys_paths_locked,
            },
            Check {
                name: "own_proc_works",
                run: own_proc_works,
            },
            Check {
                name: "seccomp_refuses_and_reports",
                run: seccomp_refuses_and_reports,
            },
            Check {
                name: "seccomp_normal_programs",
                run: seccomp_normal_programs,
            },
            Check {
                name: "seccomp_alloc_exec",
                run: seccomp_alloc_exec,
            },
            Check {
                name: "seccomp_unconfined_and_profiles",
                run: seccomp_unconfined_and_profiles,
            },
        ],
    );
}

/// Runs `script` as root in an isolated task and returns its sectioned output.
fn run_root(agent: &Agent, prefix: &str, script: &str) -> Result<BTreeMap<String, String>> {
    let job = suite::batch(prefix)
        .raw_config(&shell_config(script, &[]))
        .extra_task_hcl("    user = \"root\"\n");
    let (_alloc, out) = run_batch(agent, &job.to_hcl())?;
    println!("task output:\n{out}");
    Ok(sections(&out))
}

/// Mount points in a mountinfo text → their per-mount options and filesystem type.
fn mounts(mountinfo: &str) -> BTreeMap<String, (String, String)> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            Some((
                (*f.get(4)?).to_owned(),
                ((*f.get(5)?).to_owned(), (*f.get(sep + 1)?).to_owned()),
            ))
        })
        .collect()
}

fn is_ro(opts: &str) -> bool {
    opts.split(',').any(|o| o == "ro")
}

/// Shell lines printing, for each path, whether it exists and how big it reads.
fn probe_lines(paths: &[&str]) -> String {
    use std::fmt::Write as _;
    paths.iter().fold(String::new(), |mut s, p| {
        let _ = writeln!(
            s,
            "if [ -d {p} ]; then echo \"{p} dir $(ls -A {p} | wc -l)\"; \
             elif [ -e {p} ]; then echo \"{p} file $(head -c 65536 {p} 2>/dev/null | wc -c)\"; \
             else echo \"{p} absent\"; fi"
        );
        s
    })
}

/// `path → (kind, entries or bytes)` from [`probe_lines`] output.
fn probes(text: &str) -> BTreeMap<String, (String, u64)> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let path = w.next()?.to_owned();
            let kind = w.next()?.to_owned();
            let n = w.next().and_then(|n| n.parse().ok()).unwrap_or(0);
            Some((path, (kind, n)))
        })
        .collect()
}

fn check_masked(paths: &[&str], s: &BTreeMap<String, String>) -> Result<()> {
    let seen = probes(section(s, "masked")?);
    let mi = mounts(section(s, "mountinfo")?);
    for p in paths {
        let on_host = Path::new(p).exists();
        let (kind, size) = seen
            .get(*p)
            .cloned()
            .unwrap_or_else(|| ("absent".into(), 0));
        println!("masked {p}: host has it: {on_host}; task sees {kind} {size}");
        if !on_host {
            continue;
        }
        ensure!(
            kind == "absent" || size == 0,
            "{p} is not masked inside the task: it reads {size} (bytes or entries)"
        );
        ensure!(
            kind == "absent" || mi.contains_key(*p),
            "{p} has no masking mount in the task's mountinfo"
        );
    }
    Ok(())
}

fn proc_paths_locked(agent: &mut Agent) -> Result<()> {
    let swappiness = std::fs::read_to_string("/proc/sys/vm/swappiness")?
        .trim()
        .to_owned();
    let script = format!(
        "echo '== id'; id -u\n\
         echo '== mountinfo'; cat /proc/self/mountinfo\n\
         echo '== masked'\n{masked}\
         echo '== write-sysctl'; {{ echo {swappiness} > /proc/sys/vm/swappiness; }} 2>&1; echo \"rc=$?\"\n\
         echo '== write-sysrq'; {{ echo h > /proc/sysrq-trigger; }} 2>&1; echo \"rc=$?\"\n\
         echo '== write-irq'; {{ cat /proc/irq/default_smp_affinity > /proc/irq/default_smp_affinity; }} 2>&1; echo \"rc=$?\"\n",
        masked = probe_lines(&MASKED[..9]),
    );
    let s = run_root(agent, "proc-locked", &script)?;
    ensure!(
        section(&s, "id")?.trim() == "0",
        "the task did not run as root"
    );
    let mi = mounts(section(&s, "mountinfo")?);
    for p in READONLY {
        if !Path::new(p).exists() {
            println!("read-only {p}: absent on this kernel");
            continue;
        }
        let (opts, fs) = mi.get(p).cloned().unwrap_or_default();
        println!("read-only {p}: mount options {opts:?} ({fs})");
        ensure!(
            is_ro(&opts),
            "{p} is not a read-only mount inside the task (options {opts:?})"
        );
    }
    for (name, what) in [
        ("write-sysctl", "/proc/sys/vm/swappiness"),
        ("write-sysrq", "/proc/sysrq-trigger"),
        ("write-irq", "/proc/irq/default_smp_affinity"),
    ] {
        if !Path::new(what).exists() {
            println!("{what}: absent on this kernel");
            continue;
        }
        let out = section(&s, name)?;
        ensure!(
            !out.contains("rc=0") && out.contains("Read-only file system"),
            "a root task could write {what}: {out:?}"
        );
    }
    let after = std::fs::read_to_string("/proc/sys/vm/swappiness")?;
    ensure!(
        after.trim() == swappiness,
        "the host's vm.swappiness changed from {swappiness} to {after}"
    );
    check_masked(&MASKED[..9], &s)
}

fn sys_paths_locked(agent: &mut Agent) -> Result<()> {
    let probe_cg = format!(
        "/sys/fs/cgroup/pids/bpfexec-escape-{}",
        bpfexec_e2e::unique("x")
    );
    let script = format!(
        "echo '== mountinfo'; cat /proc/self/mountinfo\n\
         echo '== masked'\n{masked}\
         echo '== mkdir-cgroup'; mkdir {probe_cg} 2>&1; echo \"rc=$?\"\n",
        masked = probe_lines(&MASKED[9..]),
    );
    let result = run_root(agent, "sys-locked", &script);
    // Should the lock-down ever fail, leave the host as it was.
    let _ = std::fs::remove_dir(&probe_cg);
    let s = result?;
    let mi = mounts(section(&s, "mountinfo")?);
    let under_sys: Vec<(&String, &(String, String))> = mi
        .iter()
        .filter(|(p, _)| *p == "/sys" || p.starts_with("/sys/"))
        .collect();
    ensure!(
        !under_sys.is_empty(),
        "/sys is not mounted in the task although chroot_env binds it"
    );
    for (p, (opts, fs)) in &under_sys {
        ensure!(
            is_ro(opts),
            "{p} ({fs}) is writable inside the task (options {opts:?}); everything under /sys must be read-only"
        );
    }
    println!("{} mounts under /sys, all read-only", under_sys.len());
    let out = section(&s, "mkdir-cgroup")?;
    ensure!(
        !out.contains("rc=0"),
        "a root task created a cgroup on the host: {out:?}"
    );
    check_masked(&MASKED[9..], &s)
}

fn own_proc_works(agent: &mut Agent) -> Result<()> {
    let script = "echo '== ps'; ps -e -o pid=,comm= | wc -l\n\
                  echo '== status'; grep -E '^(Pid|Name):' /proc/self/status\n\
                  echo '== fd'; ls /proc/self/fd | wc -l\n\
                  echo '== exe'; readlink /proc/self/exe\n\
                  echo '== cmdline'; tr '\\0' ' ' < /proc/self/cmdline; echo\n\
                  echo '== oom'; echo 0 > /proc/self/oom_score_adj && cat /proc/self/oom_score_adj\n\
                  echo '== meminfo'; grep -c . /proc/meminfo\n\
                  echo '== sysctl-read'; cat /proc/sys/kernel/ostype\n";
    let s = run_root(agent, "own-proc", script)?;
    let ps: u32 = section(&s, "ps")?.trim().parse().unwrap_or(0);
    ensure!(ps >= 2, "ps -e lists {ps} processes inside the task");
    ensure!(
        section(&s, "status")?.contains("Pid:"),
        "/proc/self/status unreadable"
    );
    let fds: u32 = section(&s, "fd")?.trim().parse().unwrap_or(0);
    ensure!(fds >= 3, "/proc/self/fd lists {fds} entries");
    ensure!(
        section(&s, "exe")?.contains("readlink"),
        "/proc/self/exe does not name readlink: {:?}",
        section(&s, "exe")?
    );
    ensure!(
        section(&s, "cmdline")?.contains("tr"),
        "/proc/self/cmdline unreadable"
    );
    ensure!(
        section(&s, "oom")?.trim() == "0",
        "/proc/self/oom_score_adj is not writable by the task"
    );
    ensure!(
        section(&s, "sysctl-read")?.contains("Linux"),
        "sysctls are no longer readable"
    );
    Ok(())
}

/// Python making raw system calls (x86-64 numbers) and printing `name errno`.
const SYSCALLS_PY: &str = r#"
import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
calls = [("keyctl", 250, 0, 0), ("bpf", 321, 0, 0), ("perf_event_open", 298, 0, 0),
         ("unshare", 272, 0x10000000, 0), ("mount", 165, 0, 0), ("init_module", 175, 0, 0),
         ("clone3", 435, 0, 0)]
for name, nr, a, b in calls:
    ctypes.set_errno(0)
    rc = libc.syscall(nr, ctypes.c_long(a), ctypes.c_long(b), 0, 0, 0)
    e = ctypes.get_errno()
    print(name, errno.errorcode.get(e, "OK") if rc < 0 else "OK")
"#;

/// `name → errno name` from [`SYSCALLS_PY`] output.
fn syscall_results(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let (n, e) = l.trim().split_once(' ')?;
            Some((n.to_owned(), e.to_owned()))
        })
        .collect()
}

/// The refused calls the default profile must report with EPERM.
const REPORTED: [&str; 6] = [
    "keyctl",
    "bpf",
    "perf_event_open",
    "unshare",
    "mount",
    "init_module",
];

/// Waits for task events naming each of `syscalls` as refused by seccomp.
fn wait_seccomp_events(agent: &Agent, alloc: &str, syscalls: &[&str]) -> Result<()> {
    let api = agent.api();
    poll_until(
        &format!("seccomp task events naming {syscalls:?}"),
        TIMEOUT,
        POLL,
        |last| {
            let events = api.task_events(alloc, TASK)?;
            let texts: Vec<String> = events
                .iter()
                .map(bpfexec_e2e::TaskEvent::all_text)
                .filter(|t| t.contains("Seccomp refused"))
                .collect();
            let missing: Vec<&&str> = syscalls
                .iter()
                .filter(|s| {
                    !texts
                        .iter()
                        .any(|t| t.contains(&format!("system call {s} ")))
                })
                .collect();
            if missing.is_empty() {
                println!("seccomp events:\n{}", texts.join("\n"));
                return Ok(Some(()));
            }
            *last = format!("missing {missing:?}; seen {texts:?}");
            Ok(None)
        },
    )
}

fn seccomp_refuses_and_reports(agent: &mut Agent) -> Result<()> {
    for user in ["root", "nobody"] {
        let job = suite::batch(&format!("seccomp-{user}"))
            .command("/usr/bin/python3")
            .args(["-c", SYSCALLS_PY])
            .extra_task_hcl(&format!("    user = \"{user}\"\n"));
        let (alloc, out) = run_batch(agent, &job.to_hcl())?;
        println!("{user}:\n{out}");
        let r = syscall_results(&out);
        for name in REPORTED {
            ensure!(
                r.get(name).map(String::as_str) == Some("EPERM"),
                "{name} as {user}: expected EPERM, got {:?}",
                r.get(name)
            );
        }
        ensure!(
            r.get("clone3").map(String::as_str) == Some("ENOSYS"),
            "clone3 must fail with ENOSYS (so libc falls back to clone), got {:?}",
            r.get("clone3")
        );
        wait_seccomp_events(agent, &alloc.id, &REPORTED)?;
    }
    Ok(())
}

fn seccomp_normal_programs(agent: &mut Agent) -> Result<()> {
    let script = "echo '== sh'; echo a b c | tr ' ' '\\n' | sort -r | head -1\n\
         echo '== python'; python3 -c 'import threading, subprocess, os\n\
t = threading.Thread(target=lambda: None); t.start(); t.join()\n\
print(subprocess.run([\"/bin/echo\", \"sub\"], capture_output=True).stdout.decode().strip(), os.getpid() > 0)'\n\
         echo '== perl'; perl -e 'my $p = fork(); if ($p == 0) { exit 3 } waitpid($p, 0); print $? >> 8, \"\\n\"'\n\
         echo '== go'; /opt/go-bin/nomad version | head -1\n\
         echo '== rust'; /opt/rust-bin/nomad-driver-bpfexec 2>&1 | head -1; echo \"rc=$?\"\n\
         echo '== unshare'; unshare -U true 2>&1; echo \"rc=$?\"\n";
    let s = run_root(agent, "seccomp-normal", script)?;
    ensure!(
        section(&s, "sh")?.trim() == "c",
        "the shell pipeline failed"
    );
    ensure!(
        section(&s, "python")?.trim() == "sub True",
        "python with threads and a subprocess failed: {:?}",
        section(&s, "python")?
    );
    ensure!(section(&s, "perl")?.trim() == "3", "perl fork/wait failed");
    ensure!(
        section(&s, "go")?.contains("Nomad v"),
        "the Go binary (nomad version) failed: {:?}",
        section(&s, "go")?
    );
    ensure!(
        section(&s, "rust")?.contains("plugin"),
        "the Rust binary (the driver, run by hand) failed: {:?}",
        section(&s, "rust")?
    );
    ensure!(
        !section(&s, "unshare")?.contains("rc=0"),
        "unshare -U (a user namespace) succeeded inside the task"
    );
    Ok(())
}

fn seccomp_alloc_exec(agent: &mut Agent) -> Result<()> {
    let job = suite::service("seccomp-exec")
        .command("/bin/sleep")
        .args(["300"]);
    let api = agent.api();
    let job_id = api.register_job(&job.to_hcl())?;
    let alloc = api.wait_job_alloc(&job_id, TIMEOUT)?;
    api.wait_alloc_status(&alloc, &["running"], TIMEOUT)?;
    let out = nomad_exec(
        agent,
        &alloc,
        &["/usr/bin/python3", "-c", SYSCALLS_PY],
        None,
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    let r = syscall_results(&text);
    ensure!(
        out.status.success() && r.get("keyctl").map(String::as_str) == Some("EPERM"),
        "keyctl in an alloc exec session: {:?} ({})",
        r.get("keyctl"),
        out.status
    );
    let shell = nomad_exec(
        agent,
        &alloc,
        &["/bin/sh", "-c", "id -u; ls / | wc -l"],
        None,
    )?;
    ensure!(
        shell.status.success(),
        "a plain shell in an alloc exec session failed: {shell:?}"
    );
    wait_seccomp_events(agent, &alloc, &["keyctl"])?;
    stop_and_wait(agent, &job_id, &alloc).map(|_| ())
}

fn seccomp_unconfined_and_profiles(agent: &mut Agent) -> Result<()> {
    // Unconfined: the call reaches the kernel (no EPERM from a filter).
    let job = suite::batch("seccomp-unconfined").raw_config(&format!(
        "command = \"/usr/bin/python3\"\n      args = [\"-c\", {}]\n      seccomp = \"unconfined\"",
        bpfexec_e2e::config::hcl_string(SYSCALLS_PY)
    ));
    let (_a, out) = run_batch(agent, &job.to_hcl())?;
    let r = syscall_results(&out);
    ensure!(
        r.get("keyctl").map(String::as_str) != Some("EPERM"),
        "keyctl is refused although seccomp = \"unconfined\": {out}"
    );
    // A custom OCI profile: everything allowed but mkdir (EPERM, reported).
    let dir = tempfile_dir()?;
    let path = dir.join("no-mkdir.json");
    std::fs::write(
        &path,
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}"#,
    )?;
    let job = suite::batch("seccomp-profile").raw_config(&shell_config(
        "mkdir /tmp/d 2>&1; echo \"rc=$?\"",
        &[&format!("seccomp = \"{}\"", path.display())],
    ));
    let (alloc, out) = run_batch(agent, &job.to_hcl())?;
    ensure!(
        out.contains("Operation not permitted") && !out.contains("rc=0"),
        "mkdir was not refused under the custom profile: {out}"
    );
    wait_seccomp_events(agent, &alloc.id, &["mkdir"])?;
    // A profile that does not parse fails the start, naming the option.
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{ not json")?;
    let job = suite::batch("seccomp-bad").raw_config(&shell_config(
        "true",
        &[&format!("seccomp = \"{}\"", bad.display())],
    ));
    let (_alloc, ev) = expect_refusal(agent, &job.to_hcl(), "seccomp")?;
    println!("refusal: {ev}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// A private directory for profile files, readable by the plugin (root).
fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(unique("bpfexec-seccomp"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
