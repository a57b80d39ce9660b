use std::collections::HashMap;

use super::*;
use crate::config::task::TaskConfig;

fn nomad(alloc_dir: &Path) -> drivers::TaskConfig {
    drivers::TaskConfig {
        id: "a1/web/0001".into(),
        name: "web".into(),
        alloc_id: "a1".into(),
        alloc_dir: alloc_dir.display().to_string(),
        env: HashMap::from([
            ("PATH".to_owned(), "/usr/bin:/bin".to_owned()),
            ("NOMAD_ALLOC_DIR".to_owned(), "/alloc".to_owned()),
        ]),
        stdout_path: "/dev/null".into(),
        stderr_path: "/dev/null".into(),
        ..Default::default()
    }
}

fn task(command: &str) -> TaskConfig {
    TaskConfig {
        command: command.into(),
        args: vec![],
        pid_mode: None,
        ipc_mode: None,
        cap_add: vec![],
        cap_drop: vec![],
        work_dir: None,
        isolation: Isolation::Full,
        signal_all_processes: false,
        oom_score_adj: None,
        seccomp: None,
    }
}

fn alloc() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for d in ["alloc", "web/local", "web/secrets", "web/tmp"] {
        std::fs::create_dir_all(dir.path().join(d)).expect("mkdir");
    }
    dir
}

fn run(
    n: &drivers::TaskConfig,
    t: &TaskConfig,
    p: &PluginConfig,
) -> Result<LaunchSpec, DriverError> {
    plan(&PlanInput {
        nomad: n,
        task: t,
        plugin: p,
        state_dir: Path::new("/run/bpfexec/tasks/x"),
        cgroup_join: vec![],
    })
}

#[test]
fn full_isolation_by_default() {
    let a = alloc();
    let spec = run(&nomad(a.path()), &task("/bin/sh"), &PluginConfig::default()).expect("plan");
    let sb = spec.sandbox.expect("sandbox");
    assert!(spec.pid_ns && sb.ipc_ns && sb.pivot_root);
    let targets: Vec<_> = sb
        .mounts
        .iter()
        .map(|b| b.target.display().to_string())
        .collect();
    for t in ["/usr", "/etc", "/alloc", "/local", "/secrets", "/tmp"] {
        assert!(
            targets.contains(&t.to_owned()),
            "{t} missing from {targets:?}"
        );
    }
    assert!(
        sb.mounts
            .iter()
            .filter(|b| b.target == Path::new("/usr"))
            .all(|b| b.readonly)
    );
    assert!(
        sb.mounts
            .iter()
            .filter(|b| b.target == Path::new("/local"))
            .all(|b| !b.readonly)
    );
    assert_eq!(spec.identity.expect("identity").user, "nobody");
    assert!(spec.no_new_privs);
    assert_eq!(spec.caps.expect("caps").len(), 13);
    assert_eq!(spec.cwd, PathBuf::from("/"));
    assert_eq!(spec.env["NOMAD_ALLOC_DIR"], "/alloc");
}

#[test]
fn bare_commands_resolve_inside_the_task_view() {
    let a = alloc();
    let spec = run(&nomad(a.path()), &task("sh"), &PluginConfig::default()).expect("plan");
    assert!(spec.program.ends_with("sh"));
    let p = PluginConfig {
        chroot_env: [("/etc".to_owned(), "/etc".to_owned())].into(),
        ..PluginConfig::default()
    };
    let err = run(&nomad(a.path()), &task("/bin/sh"), &p)
        .expect_err("no /bin in chroot")
        .to_string();
    assert!(
        err.contains("does not exist in the task's filesystem"),
        "{err}"
    );
}

#[test]
fn raw_mode_needs_the_operator_and_uses_host_paths() {
    let a = alloc();
    let mut t = task("/bin/sh");
    t.isolation = Isolation::None;
    let err = run(&nomad(a.path()), &t, &PluginConfig::default())
        .expect_err("refused")
        .to_string();
    assert!(err.contains("allow_unisolated"), "{err}");
    let p = PluginConfig {
        allow_unisolated: true,
        ..PluginConfig::default()
    };
    let spec = run(&nomad(a.path()), &t, &p).expect("raw");
    assert!(spec.sandbox.is_none() && !spec.pid_ns && spec.caps.is_none());
    assert_eq!(
        spec.env["NOMAD_ALLOC_DIR"],
        a.path().join("alloc").display().to_string()
    );
    assert_eq!(spec.cwd, a.path().join("web"));
}

#[test]
fn denied_users_and_caps_are_refused_before_start() {
    let a = alloc();
    let mut n = nomad(a.path());
    n.user = "root".into();
    let p = PluginConfig {
        denied_host_uids: crate::config::ranges::IdRanges::parse("denied_host_uids", "0")
            .expect("r"),
        ..PluginConfig::default()
    };
    let err = run(&n, &task("/bin/sh"), &p)
        .expect_err("denied")
        .to_string();
    assert!(err.contains("denied_host_uids"), "{err}");
    let mut t = task("/bin/sh");
    t.cap_add = vec!["net_raw".into()];
    let err = run(&nomad(a.path()), &t, &PluginConfig::default())
        .expect_err("cap")
        .to_string();
    assert!(err.contains("CAP_NET_RAW"), "{err}");
}

#[test]
fn isolated_root_needs_allow_root_and_raw_root_does_not() {
    let a = alloc();
    for user in ["root", "0"] {
        let mut n = nomad(a.path());
        n.user = user.into();
        let err = run(&n, &task("/bin/sh"), &PluginConfig::default())
            .expect_err("root refused")
            .to_string();
        assert!(err.contains("allow_root = true"), "{err}");
        let allowed = PluginConfig {
            allow_root: true,
            ..PluginConfig::default()
        };
        let spec = run(&n, &task("/bin/sh"), &allowed).expect("root allowed");
        assert_eq!(spec.identity.map(|i| i.uid), Some(0));
    }
    let mut raw = task("/bin/sh");
    raw.isolation = Isolation::None;
    let p = PluginConfig {
        allow_unisolated: true,
        ..PluginConfig::default()
    };
    let spec = run(&nomad(a.path()), &raw, &p).expect("raw mode runs as root");
    assert!(spec.identity.is_none());
}

#[test]
fn host_modes_and_volumes() {
    let a = alloc();
    let vol = tempfile::tempdir().expect("vol");
    let mut n = nomad(a.path());
    n.mounts = vec![drivers::Mount {
        task_path: "/data".into(),
        host_path: vol.path().display().to_string(),
        readonly: true,
        ..Default::default()
    }];
    let mut t = task("/bin/sh");
    t.pid_mode = Some(NsMode::Host);
    t.ipc_mode = Some(NsMode::Host);
    t.work_dir = Some("/local".into());
    let spec = run(&n, &t, &PluginConfig::default()).expect("plan");
    let sb = spec.sandbox.expect("sandbox");
    assert!(!spec.pid_ns && !sb.ipc_ns);
    assert!(
        sb.mounts
            .iter()
            .any(|b| b.target == Path::new("/data") && b.readonly)
    );
    assert_eq!(spec.cwd, PathBuf::from("/local"));
}

#[test]
fn scripts_with_a_missing_interpreter_are_refused_by_name() {
    let a = alloc();
    let script = a.path().join("web/local/run.sh");
    std::fs::write(&script, "#!/no/such/interp -x\necho\n").expect("write");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let err = run(
        &nomad(a.path()),
        &task("/local/run.sh"),
        &PluginConfig::default(),
    )
    .expect_err("refused")
    .to_string();
    assert!(err.contains("/no/such/interp"), "{err}");
    std::fs::write(&script, "#!/bin/sh\necho\n").expect("write");
    assert!(
        run(
            &nomad(a.path()),
            &task("/local/run.sh"),
            &PluginConfig::default()
        )
        .is_ok()
    );
}

#[test]
fn devices_are_bound_after_dev_and_task_dirs_are_nodev() {
    let a = alloc();
    let mut n = nomad(a.path());
    n.devices = vec![
        drivers::Device {
            task_path: "/dev/accel0".into(),
            host_path: "/dev/zero".into(),
            cgroup_permissions: "rwm".into(),
        },
        drivers::Device {
            task_path: "/dev/ro0".into(),
            host_path: "/dev/null".into(),
            cgroup_permissions: "r".into(),
        },
    ];
    let spec = run(&n, &task("/bin/sh"), &PluginConfig::default()).expect("plan");
    let sb = spec.sandbox.expect("sandbox");
    let devices: Vec<_> = sb
        .devices
        .iter()
        .map(|d| (d.target.display().to_string(), d.readonly, d.nodev))
        .collect();
    assert_eq!(
        devices,
        vec![
            ("/dev/accel0".to_owned(), false, false),
            ("/dev/ro0".to_owned(), false, false)
        ]
    );
    assert!(!sb.mounts.iter().any(|b| b.target.starts_with("/dev")));
    for t in ["/alloc", "/local", "/secrets", "/tmp"] {
        assert!(
            sb.mounts
                .iter()
                .any(|b| b.target == Path::new(t) && b.nodev),
            "{t} must be nodev"
        );
    }
    n.devices[0].host_path = "/dev/bpfexec-no-such-device".into();
    let err = run(&n, &task("/bin/sh"), &PluginConfig::default())
        .expect_err("a missing host device is refused")
        .to_string();
    assert!(err.contains("bpfexec-no-such-device"), "{err}");
}
