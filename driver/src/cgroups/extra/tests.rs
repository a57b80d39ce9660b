use std::collections::BTreeMap;

use super::*;
use crate::config::resources::DeviceIo;

/// Devices by a fixed table, so plans are tested without real disks.
struct FakeDevices;

impl DeviceLookup for FakeDevices {
    fn disk_of(&self, path: &str) -> io::Result<(u64, u64)> {
        match path {
            "/dev/vda" | "/dev/vda1" | "/srv/data" => Ok((254, 0)),
            _ => Err(io::Error::new(io::ErrorKind::NotFound, "no such device")),
        }
    }
}

/// A fake v2 scope (`nomad.slice/share.slice/<alloc>.<task>.scope`) with the files the kernel
/// has when the io, memory and pids controllers are enabled.
fn v2_scope(root: &Path, files: &[&str]) -> TaskCgroups {
    let scope = root.join("nomad.slice/share.slice/a1.web.scope");
    fs::create_dir_all(&scope).expect("mkdir");
    for f in files {
        fs::write(scope.join(f), "").expect("file");
    }
    TaskCgroups {
        mode: CgroupMode::V2,
        dirs: vec![scope],
        owned: Vec::new(),
    }
}

/// A fake v1 task: Nomad's freezer/cpu/memory dirs plus the driver's pids and blkio dirs.
fn v1_task(root: &Path, blkio_files: &[&str]) -> TaskCgroups {
    let mut cg = TaskCgroups::for_task(
        CgroupMode::V1,
        root,
        &root.join("cpuset/nomad/share").display().to_string(),
        "a1",
        "web",
    )
    .expect("cg");
    for c in ["pids", "blkio"] {
        let d = root.join(c).join("nomad/a1.web");
        fs::create_dir_all(&d).expect("mkdir");
        cg.owned.push(d);
    }
    for d in &cg.dirs {
        fs::create_dir_all(d).expect("mkdir");
    }
    for f in blkio_files {
        fs::write(root.join("blkio/nomad/a1.web").join(f), "").expect("file");
    }
    cg
}

fn all() -> ExtraLimits {
    let mut io_devices = BTreeMap::new();
    io_devices.insert(
        "/dev/vda1".to_owned(),
        DeviceIo {
            read_bps: Some(Size::Bytes(10 << 20)),
            write_bps: Some(Size::Max),
            read_iops: None,
            write_iops: Some(200),
        },
    );
    ExtraLimits {
        swap_max: Some(Size::Bytes(64 << 20)),
        pids_max: Some(50),
        io_weight: Some(300),
        io_devices,
    }
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn v2_writes_into_the_scope() {
    let root = tempfile::tempdir().expect("tempdir");
    let cg = v2_scope(root.path(), &["io.weight"]);
    let writes = plan(&cg, &all(), MemoryHard::Bytes(128 << 20), &FakeDevices).expect("plan");
    apply(&writes).expect("apply");
    let scope = cg.dirs[0].clone();
    assert_eq!(
        read(&scope.join("memory.swap.max")),
        (64u64 << 20).to_string()
    );
    assert_eq!(read(&scope.join("pids.max")), "50");
    assert_eq!(read(&scope.join("io.weight")), "300");
    assert_eq!(
        read(&scope.join("io.max")),
        format!("254:0 rbps={} wbps=max wiops=200", 10u64 << 20)
    );
}

#[test]
fn v2_uses_bfq_weight_when_that_is_what_the_kernel_has() {
    let root = tempfile::tempdir().expect("tempdir");
    let cg = v2_scope(root.path(), &["io.bfq.weight"]);
    let limits = ExtraLimits {
        io_weight: Some(5000),
        ..ExtraLimits::default()
    };
    let writes = plan(&cg, &limits, MemoryHard::Unlimited, &FakeDevices).expect("plan");
    assert_eq!(writes.len(), 1);
    assert!(writes[0].file.ends_with("io.bfq.weight"));
    assert_eq!(writes[0].value, "1000");
}

#[test]
fn v2_without_any_weight_file_names_the_option() {
    let root = tempfile::tempdir().expect("tempdir");
    let cg = v2_scope(root.path(), &[]);
    let limits = ExtraLimits {
        io_weight: Some(100),
        ..ExtraLimits::default()
    };
    let err = plan(&cg, &limits, MemoryHard::Unlimited, &FakeDevices)
        .expect_err("no weight")
        .to_string();
    assert!(err.starts_with("io_weight: "), "{err}");
    assert!(err.contains("io.weight"), "{err}");
}

#[test]
fn v1_writes_memsw_after_memory_and_into_owned_dirs() {
    let root = tempfile::tempdir().expect("tempdir");
    let cg = v1_task(root.path(), &["blkio.weight"]);
    let writes = plan(&cg, &all(), MemoryHard::Bytes(128 << 20), &FakeDevices).expect("plan");
    apply(&writes).expect("apply");
    let mem = root.path().join("memory/nomad/a1.web");
    assert_eq!(
        read(&mem.join("memory.memsw.limit_in_bytes")),
        ((128u64 + 64) << 20).to_string()
    );
    assert_eq!(read(&root.path().join("pids/nomad/a1.web/pids.max")), "50");
    let blkio = root.path().join("blkio/nomad/a1.web");
    assert_eq!(read(&blkio.join("blkio.weight")), "1000");
    assert_eq!(
        read(&blkio.join("blkio.throttle.read_bps_device")),
        format!("254:0 {}", 10u64 << 20)
    );
    assert_eq!(
        read(&blkio.join("blkio.throttle.write_iops_device")),
        "254:0 200"
    );
    // `max` is no rule at all on v1.
    assert!(!blkio.join("blkio.throttle.write_bps_device").exists());
}

#[test]
fn v1_swap_needs_a_memory_limit_unless_unlimited() {
    let root = tempfile::tempdir().expect("tempdir");
    let cg = v1_task(root.path(), &[]);
    let limits = ExtraLimits {
        swap_max: Some(Size::Bytes(1 << 20)),
        ..ExtraLimits::default()
    };
    let err = plan(&cg, &limits, MemoryHard::Unlimited, &FakeDevices)
        .expect_err("unlimited memory")
        .to_string();
    assert!(err.starts_with("swap_max: "), "{err}");
    let limits = ExtraLimits {
        swap_max: Some(Size::Max),
        ..ExtraLimits::default()
    };
    let w = plan(&cg, &limits, MemoryHard::Unlimited, &FakeDevices).expect("max");
    assert_eq!(w[0].value, "-1");
}

#[test]
fn v1_without_blkio_weight_and_unknown_devices_fail_by_name() {
    let root = tempfile::tempdir().expect("tempdir");
    let cg = v1_task(root.path(), &[]);
    let limits = ExtraLimits {
        io_weight: Some(100),
        ..ExtraLimits::default()
    };
    let err = plan(&cg, &limits, MemoryHard::Unlimited, &FakeDevices)
        .expect_err("no weight")
        .to_string();
    assert!(err.contains("blkio.weight"), "{err}");
    let mut io_devices = BTreeMap::new();
    io_devices.insert(
        "/dev/nope".to_owned(),
        DeviceIo {
            write_iops: Some(1),
            ..DeviceIo::default()
        },
    );
    let limits = ExtraLimits {
        io_devices,
        ..ExtraLimits::default()
    };
    let err = plan(&cg, &limits, MemoryHard::Unlimited, &FakeDevices)
        .expect_err("no device")
        .to_string();
    assert!(
        err.starts_with("io_write_iops_max: device \"/dev/nope\""),
        "{err}"
    );
}

#[test]
fn missing_files_and_cgroups_fail_by_name() {
    let root = tempfile::tempdir().expect("tempdir");
    // A v1 task without the driver's pids cgroup.
    let cg = TaskCgroups {
        mode: CgroupMode::V1,
        dirs: Vec::new(),
        owned: Vec::new(),
    };
    let limits = ExtraLimits {
        pids_max: Some(5),
        ..ExtraLimits::default()
    };
    let err = plan(&cg, &limits, MemoryHard::Unlimited, &FakeDevices)
        .expect_err("no pids cgroup")
        .to_string();
    assert!(err.starts_with("pids_max: "), "{err}");
    let gone = Write {
        option: "swap_max",
        file: root.path().join("nowhere/memory.swap.max"),
        value: "0".into(),
    };
    let err = apply(&[gone]).expect_err("missing").to_string();
    assert!(err.starts_with("swap_max: writing \"0\""), "{err}");
}

#[test]
fn weights_convert_like_systemd() {
    assert_eq!(blkio_weight(100), 500);
    assert_eq!(blkio_weight(1), 10);
    assert_eq!(blkio_weight(10_000), 1000);
    assert_eq!(bfq_weight(100), 100);
}

#[test]
fn host_devices_resolve_block_nodes_and_refuse_tmpfs() {
    // /proc lives on no disk.
    let err = HostDevices.disk_of("/proc/self").expect_err("procfs");
    assert!(err.to_string().contains("not a block device"), "{err}");
    assert!(HostDevices.disk_of("/no/such/path").is_err());
    if let Some(disk) = fs::read_dir("/sys/block")
        .ok()
        .and_then(|mut d| d.next())
        .and_then(Result::ok)
    {
        let want = read(&disk.path().join("dev"));
        let node = Path::new("/dev").join(disk.file_name());
        if node.exists() {
            let (major, minor) = HostDevices.disk_of(&node.to_string_lossy()).expect("disk");
            assert_eq!(format!("{major}:{minor}"), want.trim());
        }
    }
}
