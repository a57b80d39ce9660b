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
    attrs.insert("driver.bpfexec.probes".to_owned(), string(probes.clone()));
    if !attached.is_empty() {
        attrs.insert(
            "driver.bpfexec.probes.attached".to_owned(),
            string(attached),
        );
    }
    if let Some(e) = &probe_error {
        attrs.insert("driver.bpfexec.probes.error".to_owned(), string(e.clone()));
    }
    let pinning_off = rt.pinning_off().await;
    if probes == "loaded" {
        attrs.insert(
            "driver.bpfexec.probes.pinned".to_owned(),
            string(if pinning_off.is_some() {
                "false"
            } else {
                "true"
            }),
        );
    }
    if let Some(why) = &pinning_off {
        attrs.insert(
            "driver.bpfexec.probes.pinned.error".to_owned(),
            string(why.clone()),
        );
    }
    let (health, description) = match health(rt) {
        (HealthState::Healthy, _) => observation_health(rt, probe_error, pinning_off),
        other => other,
    };
    FingerprintResponse {
        attributes: attrs,
        health: health as i32,
        health_description: description,
        err: String::new(),
    }
}

/// A driver whose probes failed to load, or could not pin their state although the operator
/// wants it pinned, is unhealthy unless the operator accepts that (`allow_unobserved`): tasks
/// would run without the kernel observation (exit reasons, escapes, leaks) or lose it at every
/// plugin restart, silently.
fn observation_health(
    rt: &Runtime,
    probe_error: Option<String>,
    pinning_off: Option<String>,
) -> (HealthState, String) {
    let Ok(cfg) = rt.configured() else {
        return (HealthState::Healthy, "Healthy".into());
    };
    if cfg.plugin.allow_unobserved {
        return (HealthState::Healthy, "Healthy".into());
    }
    if let Some(e) = probe_error {
        return (
            HealthState::Unhealthy,
            format!(
                "eBPF probes failed to load: {e}; tasks would run without kernel observation \
                 (exit reasons, escapes, leaks): fix the cause and restart the agent, or set \
                 allow_unobserved = true to run tasks anyway"
            ),
        );
    }
    if let Some(why) = pinning_off
        && cfg.plugin.bpf_pin_dir.is_some()
    {
        return (
            HealthState::Unhealthy,
            format!(
                "eBPF probe state cannot be pinned: {why}; what the probes see would not survive \
                 a plugin restart: fix the cause and restart the agent, or set bpf_pin_dir = \"\" \
                 (or allow_unobserved = true) to run without"
            ),
        );
    }
    (HealthState::Healthy, "Healthy".into())
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
