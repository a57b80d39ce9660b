//! Issue 3 acceptance, isolation: a task sees only its own processes and its own root (no host
//! files outside `chroot_env`, /alloc /local /secrets present), runs as `nobody` or the job's
//! `user`, has exec's capability set adjusted by `cap_add`/`cap_drop`, and is refused before
//! start for a capability outside `allow_caps`, a user in `denied_host_uids`, or
//! `isolation = "none"` without `allow_unisolated`. The agent denies uid 0 (`denied_host_uids`).
//! A second agent checks that a custom `chroot_env` map replaces the default one.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;

use anyhow::{Context, Result, ensure};
use bpfexec_e2e::isolation::{
    DEFAULT_CAPS, cap_eff, cap_mask, expect_refusal, run_batch, section, sections, shell_config,
};
use bpfexec_e2e::suite::{self, alloc_file};
use bpfexec_e2e::{Agent, AgentOptions, Check, procs, run_checks, unique};

#[test]
fn isolation() {
    if !suite::is_bpfexec() {
        println!("SKIP: isolation: bpfexec-only checks (BPFEXEC_E2E_DRIVER=raw_exec)");
        return;
    }
    run_checks(
        "isolation",
        AgentOptions::bpfexec().plugin_config("denied_host_uids = \"0\""),
        &[
            Check {
                name: "task_view",
                run: task_view,
            },
            Check {
                name: "requested_user",
                run: requested_user,
            },
            Check {
                name: "caps_default",
                run: caps_default,
            },
            Check {
                name: "caps_drop_all_add_chown",
                run: caps_drop_all_add_chown,
            },
            Check {
                name: "cap_outside_allow_caps_refused",
                run: cap_outside_allow_caps_refused,
            },
            Check {
                name: "denied_uid_refused",
                run: denied_uid_refused,
            },
            Check {
                name: "unisolated_refused",
                run: unisolated_refused,
            },
            Check {
                name: "chroot_env_custom_map",
                run: chroot_env_custom_map,
            },
        ],
    );
}

/// A world-readable marker file on the host, removed on drop.
struct Marker(PathBuf);

impl Marker {
    fn create(dir: &str, content: &str) -> Result<Marker> {
        let path = PathBuf::from(dir).join(unique("bpfexec-secret"));
        std::fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
        Ok(Marker(path))
    }
}

impl Drop for Marker {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn host_ns(kind: &str) -> Result<String> {
    Ok(std::fs::read_link(format!("/proc/self/ns/{kind}"))?
        .to_string_lossy()
        .into_owned())
}

/// Processes seen inside: pid 1 is our init, then the task's shell and `ps`; nothing of the host.
fn check_processes(s: &BTreeMap<String, String>) -> Result<()> {
    let ps: Vec<(i32, String)> = section(s, "ps")?
        .lines()
        .filter_map(|l| {
            let (pid, args) = l.trim().split_once(' ')?;
            Some((pid.parse().ok()?, args.trim().to_owned()))
        })
        .collect();
    let init = ps.iter().find(|(p, _)| *p == 1);
    ensure!(
        init.is_some_and(|(_, a)| a.contains("__supervise")),
        "pid 1 inside the task is not the bpfexec init: {ps:?}"
    );
    ensure!(
        ps.len() <= 4 && ps.iter().all(|(p, _)| *p < 50),
        "the task sees more than its own processes (init, sh, ps): {ps:?}"
    );
    ensure!(
        ps.iter().any(|(_, a)| a.starts_with("ps ")),
        "ps did not list itself: {ps:?}"
    );
    let host_count = procs::pids().len();
    let inner: Vec<&str> = section(s, "procpids")?.split_whitespace().collect();
    ensure!(
        inner.len() <= 5 && host_count > inner.len() + 5,
        "/proc inside lists {inner:?} (the host has {host_count} processes)"
    );
    Ok(())
}

fn task_view(agent: &mut Agent) -> Result<()> {
    let content = unique("top-secret-content");
    // /root is 0700; /var/tmp is world-readable, so only the private root can hide that one.
    let in_root = Marker::create("/root", &content)?;
    let in_var = Marker::create("/var/tmp", &content)?;
    let script = format!(
        "echo '== id'; id\n\
         echo '== ps'; ps -e -o pid=,args=\n\
         echo '== procpids'; ls /proc | grep -E '^[0-9]+$' | tr '\\n' ' '; echo\n\
         echo '== root'; ls /\n\
         echo '== dirs'; for d in /alloc /local /secrets /tmp; do [ -d \"$d\" ] && echo \"$d\"; done\n\
         echo '== env'; echo \"$NOMAD_ALLOC_DIR $NOMAD_TASK_DIR $NOMAD_SECRETS_DIR\"\n\
         echo '== secret-root'; cat {root} 2>&1; echo \"rc=$?\"\n\
         echo '== secret-var'; cat {var} 2>&1; echo \"rc=$?\"\n\
         echo '== ns'; readlink /proc/self/ns/pid /proc/self/ns/ipc /proc/self/ns/mnt\n\
         echo '== nnp'; grep NoNewPrivs /proc/self/status\n\
         echo '== write-usr'; touch /usr/bpfexec-probe 2>&1; echo \"rc=$?\"\n",
        root = in_root.0.display(),
        var = in_var.0.display(),
    );
    let job = suite::batch("view").raw_config(&shell_config(&script, &[]));
    let (_alloc, out) = run_batch(agent, &job.to_hcl())?;
    println!("task output:\n{out}");
    let s = sections(&out);

    let id = section(&s, "id")?;
    ensure!(
        id.contains("uid=65534(nobody)"),
        "default user is not nobody: {id}"
    );

    check_processes(&s)?;

    let root = section(&s, "root")?;
    let entries: Vec<&str> = root.split_whitespace().collect();
    for want in [
        "alloc", "local", "secrets", "tmp", "bin", "usr", "etc", "proc", "dev",
    ] {
        ensure!(entries.contains(&want), "`ls /` lacks {want}: {entries:?}");
    }
    for unwanted in ["root", "var", "home", "opt", "srv", "work"] {
        ensure!(
            !entries.contains(&unwanted),
            "`ls /` shows host dir {unwanted} outside chroot_env: {entries:?}"
        );
    }
    let dirs = section(&s, "dirs")?;
    ensure!(
        dirs.split_whitespace().count() == 4,
        "missing task dirs: {dirs:?}"
    );
    let env = section(&s, "env")?;
    ensure!(
        env.trim() == "/alloc /local /secrets",
        "NOMAD_ALLOC_DIR/TASK_DIR/SECRETS_DIR are {env:?}, expected the task view /alloc /local /secrets"
    );
    for name in ["secret-root", "secret-var"] {
        let text = section(&s, name)?;
        ensure!(
            !text.contains(&content) && !text.contains("rc=0"),
            "the task read a host marker outside chroot_env ({name}): {text:?}"
        );
    }
    let ns = section(&s, "ns")?;
    let ns: Vec<&str> = ns.lines().collect();
    ensure!(ns.len() == 3, "readlink of namespaces printed {ns:?}");
    for (i, kind) in ["pid", "ipc", "mnt"].iter().enumerate() {
        let host = host_ns(kind)?;
        ensure!(
            ns[i] != host,
            "the task shares the host {kind} namespace {host}"
        );
    }
    let nnp = section(&s, "nnp")?;
    ensure!(
        nnp.split_whitespace().last() == Some("1"),
        "no_new_privs is not set: {nnp:?}"
    );
    let w = section(&s, "write-usr")?;
    ensure!(!w.contains("rc=0"), "the task could write into /usr: {w:?}");
    Ok(())
}

fn requested_user(agent: &mut Agent) -> Result<()> {
    let job = suite::batch("user-daemon")
        .raw_config(&shell_config("id", &[]))
        .extra_task_hcl("    user = \"daemon\"\n");
    let (_a, out) = run_batch(agent, &job.to_hcl())?;
    ensure!(
        out.contains("uid=1(daemon)"),
        "user = \"daemon\" but the task printed: {out}"
    );
    Ok(())
}

fn caps_of(agent: &Agent, prefix: &str, script: &str, extra: &[&str]) -> Result<(u64, String)> {
    let script = format!("grep Cap /proc/self/status\n{script}");
    let job = suite::batch(prefix).raw_config(&shell_config(&script, extra));
    let (_a, out) = run_batch(agent, &job.to_hcl())?;
    println!("task output:\n{out}");
    let eff = cap_eff(&out).with_context(|| format!("no CapEff line in {out:?}"))?;
    Ok((eff, out))
}

fn caps_default(agent: &mut Agent) -> Result<()> {
    let (eff, _) = caps_of(agent, "caps-default", "", &[])?;
    let want = cap_mask(&DEFAULT_CAPS);
    ensure!(
        eff == want,
        "CapEff {eff:016x}, expected exec's default set {want:016x} (extra {:x}, missing {:x})",
        eff & !want,
        want & !eff
    );
    Ok(())
}

fn caps_drop_all_add_chown(agent: &mut Agent) -> Result<()> {
    // CAP_CHOWN must really be effective for nobody: give a file away to uid 1.
    let (eff, out) = caps_of(
        agent,
        "caps-chown",
        "touch /tmp/f && chown 1 /tmp/f && echo chown-ok",
        &["cap_drop = [\"all\"]", "cap_add = [\"chown\"]"],
    )?;
    ensure!(
        eff == cap_mask(&["CHOWN"]),
        "cap_drop = [all], cap_add = [chown] gave CapEff {eff:016x}, expected only CAP_CHOWN (1)"
    );
    ensure!(
        out.contains("chown-ok"),
        "chown failed with CAP_CHOWN: {out}"
    );
    Ok(())
}

fn cap_outside_allow_caps_refused(agent: &mut Agent) -> Result<()> {
    let script = "touch \"$NOMAD_ALLOC_DIR/ran\"";
    let job =
        suite::batch("cap-netraw").raw_config(&shell_config(script, &["cap_add = [\"net_raw\"]"]));
    let (alloc, ev) = expect_refusal(agent, &job.to_hcl(), "CAP_NET_RAW")?;
    println!("refusal: {ev}");
    ensure!(
        !alloc_file(agent, &alloc, "ran").exists(),
        "the refused task ran anyway"
    );
    Ok(())
}

fn denied_uid_refused(agent: &mut Agent) -> Result<()> {
    let script = "touch \"$NOMAD_ALLOC_DIR/ran\"";
    let job = suite::batch("denied-root")
        .raw_config(&shell_config(script, &[]))
        .extra_task_hcl("    user = \"root\"\n");
    let (alloc, ev) = expect_refusal(agent, &job.to_hcl(), "denied_host_uids")?;
    println!("refusal: {ev}");
    std::thread::sleep(std::time::Duration::from_millis(500));
    ensure!(
        !alloc_file(agent, &alloc, "ran").exists(),
        "the task of a denied uid ran (it created $NOMAD_ALLOC_DIR/ran)"
    );
    Ok(())
}

fn unisolated_refused(agent: &mut Agent) -> Result<()> {
    let script = "touch \"$NOMAD_ALLOC_DIR/ran\"";
    let job =
        suite::batch("raw-refused").raw_config(&shell_config(script, &["isolation = \"none\""]));
    let (alloc, ev) = expect_refusal(agent, &job.to_hcl(), "allow_unisolated")?;
    println!("refusal: {ev}");
    ensure!(
        !alloc_file(agent, &alloc, "ran").exists(),
        "the refused raw task ran anyway"
    );
    Ok(())
}

/// A custom `chroot_env`, written as exec users know it from the client's `chroot_env { … }`,
/// replaces the default map: mapped trees appear at their task paths, unmapped ones (here /sbin)
/// do not.
fn chroot_env_custom_map(_agent: &mut Agent) -> Result<()> {
    let map = r#"chroot_env {
  "/bin" = "/bin"
  "/etc" = "/etc"
  "/lib" = "/lib"
  "/lib64" = "/lib64"
  "/usr" = "/usr"
  "/opt" = "/extra/opt"
}"#;
    let opts = AgentOptions {
        ready_timeout: std::time::Duration::from_secs(30),
        ..AgentOptions::bpfexec().plugin_config(map)
    };
    let other =
        Agent::start_ready(opts).context("an agent with a custom chroot_env map did not start")?;
    let job = suite::batch("chroot-block").raw_config(&shell_config(
        "ls /; test -d /extra/opt && echo has-extra; test -e /sbin || echo no-sbin",
        &[],
    ));
    let (_a, out) = run_batch(&other, &job.to_hcl())
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", other.diagnostics()))?;
    println!("task output:\n{out}");
    ensure!(
        out.contains("has-extra") && out.contains("no-sbin"),
        "the custom chroot_env (with /opt at /extra/opt and no /sbin) is not what the task sees: {out}"
    );
    Ok(())
}
