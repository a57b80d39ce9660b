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
        ..TaskConfig::default()
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
        ephemeral_id: None,
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

#[test]
fn commands_follow_execs_search_order_and_artifacts_become_executable() {
    use std::os::unix::fs::PermissionsExt as _;
    let a = alloc();
    let local_sh = a.path().join("web/local/sh");
    std::fs::write(&local_sh, "#!/bin/sh\necho local\n").expect("write");
    std::fs::set_permissions(&local_sh, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    // local/ first: a bare name, and a path relative to the task directory.
    for cmd in ["sh", "local/sh"] {
        let spec = run(&nomad(a.path()), &task(cmd), &PluginConfig::default()).expect(cmd);
        assert_eq!(spec.program, PathBuf::from("/local/sh"), "{cmd}");
    }
    let mode = std::fs::metadata(&local_sh)
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o555, 0o555, "the artifact was made executable");
    // Not in local/: the fixed directories.
    let spec = run(&nomad(a.path()), &task("env"), &PluginConfig::default()).expect("env");
    assert!(
        ["/usr/local/bin/env", "/usr/bin/env", "/bin/env"]
            .contains(&spec.program.to_string_lossy().as_ref()),
        "{}",
        spec.program.display()
    );
    let err = run(
        &nomad(a.path()),
        &task("no-such-command-bpfexec"),
        &PluginConfig::default(),
    )
    .expect_err("missing")
    .to_string();
    assert!(err.contains("local/, its root, /usr/local/bin"), "{err}");
}

#[test]
fn non_executable_files_outside_the_allocation_are_refused() {
    let a = alloc();
    let err = run(
        &nomad(a.path()),
        &task("/etc/passwd"),
        &PluginConfig::default(),
    )
    .expect_err("not executable")
    .to_string();
    assert!(err.contains("not an executable file"), "{err}");
}

#[test]
fn journald_logging_needs_the_socket() {
    let a = alloc();
    let mut t = task("/bin/sh");
    t.logging = crate::config::logging::LogDriver::Journald;
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("socket");
    let p = PluginConfig {
        journald_socket: socket.clone(),
        ..PluginConfig::default()
    };
    let err = run(&nomad(a.path()), &t, &p)
        .expect_err("no socket")
        .to_string();
    assert!(err.contains("no journald socket"), "{err}");
    let _server = std::os::unix::net::UnixDatagram::bind(&socket).expect("bind");
    let mut n = nomad(a.path());
    n.job_name = "j".into();
    let spec = run(&n, &t, &p).expect("plan");
    let journal = spec.journal.expect("journal");
    assert_eq!(journal.socket, socket);
    assert_eq!(journal.identifier, "web");
    assert!(
        journal
            .fields
            .contains(&("NOMAD_JOB_NAME".into(), "j".into()))
    );
}

#[test]
fn group_and_ephemeral_identities() {
    let a = alloc();
    let mut t = task("/bin/sh");
    t.group = Some("65534".into());
    let spec = run(&nomad(a.path()), &t, &PluginConfig::default()).expect("group");
    assert_eq!(spec.identity.expect("identity").gid, 65534);
    let spec = plan(&PlanInput {
        nomad: &nomad(a.path()),
        task: &task("/bin/sh"),
        plugin: &PluginConfig::default(),
        state_dir: Path::new("/run/bpfexec/tasks/x"),
        cgroup_join: vec![],
        ephemeral_id: Some(3_900_000_001),
    })
    .expect("ephemeral");
    assert_eq!(
        spec.caps.as_deref(),
        Some(&[][..]),
        "ephemeral users get no capabilities"
    );
    let id = spec.identity.expect("identity");
    assert_eq!((id.uid, id.gid), (3_900_000_001, 3_900_000_001));
    assert!(id.groups.is_empty());
}

#[test]
fn images_need_isolation_and_a_root_image_replaces_chroot_env() {
    let a = alloc();
    std::fs::write(a.path().join("web/local/root.sqfs"), b"hsqs....").expect("write");
    let mut t = task("/bin/busybox");
    t.images.root = Some("local/root.sqfs".into());
    let spec = run(&nomad(a.path()), &t, &PluginConfig::default()).expect("root image");
    let sb = spec.sandbox.expect("sandbox");
    assert_eq!(sb.images.len(), 1);
    assert_eq!(sb.images[0].target, PathBuf::from("/"));
    assert!(!sb.mounts.iter().any(|b| b.target == Path::new("/usr")));
    assert!(sb.mounts.iter().any(|b| b.target == Path::new("/local")));
    // Inside the image the plugin cannot look: an absolute command is taken as it is, a bare
    // name is refused.
    assert_eq!(spec.program, PathBuf::from("/bin/busybox"));
    t.command = "busybox".into();
    let err = run(&nomad(a.path()), &t, &PluginConfig::default())
        .expect_err("bare")
        .to_string();
    assert!(err.contains("absolute path inside the image"), "{err}");
    t.command = "/bin/sh".into();
    t.isolation = Isolation::None;
    let p = PluginConfig {
        allow_unisolated: true,
        ..PluginConfig::default()
    };
    let err = run(&nomad(a.path()), &t, &p).expect_err("raw").to_string();
    assert!(err.contains("not available with isolation"), "{err}");
}
