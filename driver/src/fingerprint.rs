//! The driver's fingerprint: health and node attributes (`driver.bpfexec.*`), sent at once when
//! Nomad opens the stream and again whenever it changes (checked every 30 s, as exec does).

use std::collections::HashMap;

use bpfexec_proto::drivers::{FingerprintResponse, fingerprint_response::HealthState};
use bpfexec_proto::structs::{Attribute, attribute::Value};

use crate::runtime::Runtime;
use crate::tasks::devcg::DeviceControl;

fn string(s: impl Into<String>) -> Attribute {
    Attribute {
        value: Some(Value::StringVal(s.into())),
        unit: String::new(),
    }
}

/// Computes the current fingerprint.
pub async fn current(rt: &Runtime) -> FingerprintResponse {
    let mut attrs = HashMap::new();
    attrs.insert(
        "driver.bpfexec".to_owned(),
        Attribute {
            value: Some(Value::BoolVal(true)),
            unit: String::new(),
        },
    );
    attrs.insert(
        "driver.bpfexec.version".to_owned(),
        string(env!("CARGO_PKG_VERSION")),
    );
    attrs.insert(
        "driver.bpfexec.cgroup_mode".to_owned(),
        string(rt.cgroup_mode.map_or("none", |m| m.as_str())),
    );
    if let Ok(cfg) = rt.configured() {
        let control = DeviceControl::detect(rt.cgroup_mode, &cfg.start.cgroup_root);
        attrs.insert(
            "driver.bpfexec.devices".to_owned(),
            string(control.attribute(&cfg.plugin)),
        );
        if let DeviceControl::Unavailable(why) = control {
            attrs.insert("driver.bpfexec.devices.error".to_owned(), string(why));
        }
    }
    let (probes, attached, probe_error) = rt.probe_summary().await;
    attrs.insert("driver.bpfexec.probes".to_owned(), string(probes));
    if !attached.is_empty() {
        attrs.insert(
            "driver.bpfexec.probes.attached".to_owned(),
            string(attached),
        );
    }
    if let Some(e) = probe_error {
        attrs.insert("driver.bpfexec.probes.error".to_owned(), string(e));
    }
    let (health, description) = health(rt);
    FingerprintResponse {
        attributes: attrs,
        health: health as i32,
        health_description: description,
        err: String::new(),
    }
}

fn health(rt: &Runtime) -> (HealthState, String) {
    if !nix::unistd::geteuid().is_root() {
        return (
            HealthState::Unhealthy,
            "bpfexec needs root to start and isolate tasks: run the Nomad client as root".into(),
        );
    }
    let cfg = match rt.configured() {
        Ok(cfg) => cfg,
        Err(e) => return (HealthState::Unhealthy, e.to_string()),
    };
    let dir = &cfg.plugin.state_dir;
    if let Err(e) = std::fs::create_dir_all(dir.join("tasks")) {
        return (
            HealthState::Unhealthy,
            format!(
                "cannot create state_dir {}: {e}; point the plugin's state_dir at a writable directory",
                dir.display()
            ),
        );
    }
    // Starting a task writes there: a full or read-only state_dir fails every start.
    let probe = dir.join("tasks").join(".health-probe");
    if let Err(e) = std::fs::write(&probe, b"ok") {
        let what = match e.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT) => "is full",
            Some(libc::EROFS) => "is read-only",
            _ => "is not writable",
        };
        return (
            HealthState::Unhealthy,
            format!(
                "state_dir {} {what} ({e}): new tasks cannot start; free space in it or point the plugin's state_dir at a writable directory (running tasks go on)",
                dir.display()
            ),
        );
    }
    let _ = std::fs::remove_file(&probe);
    (HealthState::Healthy, "Healthy".into())
}
