//! Issue 3 acceptance, raw mode: with `allow_unisolated = true` a task with `isolation = "none"`
//! runs like raw_exec (host namespaces and paths, `NOMAD_ALLOC_DIR` the host path, root by
//! default or the job's `user`) yet still in its Nomad cgroup. (The refusal without
//! `allow_unisolated` is checked in `isolation.rs`.) The same agent denies no uid and sets
//! `allow_root = true`, so it also checks an isolated task with `user = "root"`.

use anyhow::{Context, Result, ensure};
use bpfexec_e2e::isolation::{
    DEFAULT_CAPS, V1_CONTROLLERS, cap_eff, cap_mask, cgroup_paths, host_is_cgroup_v2, run_batch,
    section, sections, shell_config,
};
use bpfexec_e2e::jobspec::TASK;
use bpfexec_e2e::suite;
use bpfexec_e2e::{Agent, AgentOptions, Check, run_checks, unique};

#[test]
fn raw_mode() {
    if !suite::is_bpfexec() {
        println!("SKIP: raw_mode: bpfexec-only checks (BPFEXEC_E2E_DRIVER=raw_exec)");
        return;
    }
    run_checks(
        "raw_mode",
        AgentOptions::bpfexec().plugin_config("allow_unisolated = true\nallow_root = true"),
        &[
            Check {
                name: "raw_task_host_view",
                run: raw_task_host_view,
            },
            Check {
                name: "raw_task_user",
                run: raw_task_user,
            },
            Check {
                name: "isolated_root_user",
                run: isolated_root_user,
            },
        ],
    );
}

fn ns(kind: &str) -> Result<String> {
    Ok(std::fs::read_link(format!("/proc/self/ns/{kind}"))?
        .to_string_lossy()
        .into_owned())
}

fn raw_task_host_view(agent: &mut Agent) -> Result<()> {
    let marker = std::path::PathBuf::from("/root").join(unique("bpfexec-raw-marker"));
    std::fs::write(&marker, "x").context("creating the /root marker")?;
    let name = marker
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let script = "echo '== alloc'; echo \"$NOMAD_ALLOC_DIR\"\n\
                  echo '== id'; id\n\
                  echo '== root'; ls /root\n\
                  echo '== ns'; readlink /proc/self/ns/pid /proc/self/ns/mnt /proc/self/ns/ipc\n\
                  echo '== cgroup'; cat /proc/self/cgroup\n";
    let job = suite::batch("raw").raw_config(&shell_config(script, &["isolation = \"none\""]));
    let result = run_batch(agent, &job.to_hcl());
    let _ = std::fs::remove_file(&marker);
    let (alloc, out) = result?;
    println!("task output:\n{out}");
    let s = sections(&out);
    let host_alloc = agent.alloc_dir(&alloc.id).join("alloc");
    ensure!(
        section(&s, "alloc")?.trim() == host_alloc.to_string_lossy(),
        "NOMAD_ALLOC_DIR of a raw task is {:?}, expected the host path {}",
        section(&s, "alloc")?,
        host_alloc.display()
    );
    ensure!(
        section(&s, "id")?.contains("uid=0(root)"),
        "a raw task without `user` should run as root: {:?}",
        section(&s, "id")?
    );
    ensure!(
        section(&s, "root")?.lines().any(|l| l.trim() == name),
        "`ls /root` in the raw task does not show the host marker {name}"
    );
    let task_ns: Vec<&str> = section(&s, "ns")?.lines().collect();
    let host_ns = [ns("pid")?, ns("mnt")?, ns("ipc")?];
    ensure!(
        task_ns == host_ns.iter().map(String::as_str).collect::<Vec<_>>(),
        "a raw task should share the host namespaces {host_ns:?}, it has {task_ns:?}"
    );
    let paths = cgroup_paths(section(&s, "cgroup")?);
    if host_is_cgroup_v2() {
        let p = paths.get("").cloned().unwrap_or_default();
        ensure!(
            p.ends_with(&format!("/{}.{TASK}.scope", alloc.id)),
            "the raw task is in cgroup {p:?}, not its Nomad scope"
        );
    } else {
        for ctrl in V1_CONTROLLERS {
            let want = format!("/nomad/{}.{TASK}", alloc.id);
            ensure!(
                paths.get(ctrl) == Some(&want),
                "the raw task's {ctrl} cgroup is {:?}, expected {want}",
                paths.get(ctrl)
            );
        }
    }
    Ok(())
}

fn raw_task_user(agent: &mut Agent) -> Result<()> {
    let job = suite::batch("raw-nobody")
        .raw_config(&shell_config("id", &["isolation = \"none\""]))
        .extra_task_hcl("    user = \"nobody\"\n");
    let (_a, out) = run_batch(agent, &job.to_hcl())?;
    ensure!(
        out.contains("uid=65534(nobody)"),
        "raw task with user = nobody printed {out:?}"
    );
    Ok(())
}

fn isolated_root_user(agent: &mut Agent) -> Result<()> {
    let job = suite::batch("iso-root")
        .raw_config(&shell_config("id; grep CapEff /proc/self/status", &[]))
        .extra_task_hcl("    user = \"root\"\n");
    let (_a, out) = run_batch(agent, &job.to_hcl())?;
    println!("task output:\n{out}");
    ensure!(out.contains("uid=0(root)"), "user = root printed {out:?}");
    let eff = cap_eff(&out).with_context(|| format!("no CapEff in {out:?}"))?;
    ensure!(
        eff == cap_mask(&DEFAULT_CAPS),
        "an isolated root task has CapEff {eff:016x}, expected exec's default set {:016x}",
        cap_mask(&DEFAULT_CAPS)
    );
    Ok(())
}
