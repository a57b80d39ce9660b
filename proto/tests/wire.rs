//! Golden wire-byte tests: prove that our protos put every field Nomad and go-plugin rely on at
//! the right number with the right wire type. Expected bytes are worked out by hand from the
//! protobuf tag formula `(field_number << 3) | wire_type` (0 = varint, 1 = 64-bit, 2 = length-
//! delimited), never produced by the code under test.

use bpfexec_proto::{base, drivers, google_rpc, hclspec, plugin, structs};
use prost::{Message, Name};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn bytes<M: Message>(msg: &M) -> Vec<u8> {
    msg.encode_to_vec()
}

#[test]
fn exit_result_fields_1_2_3() {
    let msg = drivers::ExitResult {
        exit_code: 3,
        signal: 9,
        oom_killed: true,
    };
    assert_eq!(bytes(&msg), [0x08, 0x03, 0x10, 0x09, 0x18, 0x01]);
}

#[test]
fn plugin_info_type_is_1_and_name_is_4() -> TestResult {
    let msg = base::PluginInfoResponse {
        r#type: base::PluginType::Driver.into(),
        name: "x".into(),
        ..Default::default()
    };
    // 0x08 = #1 varint, DRIVER = 2; 0x22 = #4 length-delimited.
    assert_eq!(bytes(&msg), [0x08, 0x02, 0x22, 0x01, b'x']);
    // #2 plugin_api_versions and #3 plugin_version, decoded from hand-made bytes.
    let decoded = base::PluginInfoResponse::decode(
        &[
            0x12, 0x06, b'v', b'0', b'.', b'1', b'.', b'0', 0x1a, 0x01, b'1',
        ][..],
    )?;
    assert_eq!(decoded.plugin_api_versions, ["v0.1.0"]);
    assert_eq!(decoded.plugin_version, "1");
    assert_eq!(base::PluginType::Unknown as i32, 0);
    assert_eq!(base::PluginType::Device as i32, 3);
    Ok(())
}

#[test]
fn nomad_driver_config_max_port_is_1_min_port_is_2() -> TestResult {
    let msg = base::NomadDriverConfig {
        client_max_port: 7,
        client_min_port: 5,
        topology: None,
    };
    assert_eq!(bytes(&msg), [0x08, 0x07, 0x10, 0x05]);
    let decoded = base::NomadDriverConfig::decode(&[0x10, 0x05, 0x08, 0x07][..])?;
    assert_eq!((decoded.client_max_port, decoded.client_min_port), (7, 5));
    // Topology is #3 and its override_total_compute is #4.
    let topo = base::NomadDriverConfig::decode(&[0x1a, 0x02, 0x20, 0x64][..])?;
    assert_eq!(topo.topology.map(|t| t.override_total_compute), Some(100));
    Ok(())
}

#[test]
fn set_config_request_fields() {
    let msg = base::SetConfigRequest {
        msgpack_config: vec![0x80],
        nomad_config: Some(base::NomadConfig {
            driver: Some(base::NomadDriverConfig::default()),
        }),
        plugin_api_version: "v".into(),
    };
    // #1 bytes, #2 NomadConfig{#1 driver = empty}, #3 string.
    assert_eq!(
        bytes(&msg),
        [0x0a, 0x01, 0x80, 0x12, 0x02, 0x0a, 0x00, 0x1a, 0x01, b'v']
    );
}

#[test]
fn task_handle_version_is_1() {
    let msg = drivers::TaskHandle {
        version: 1,
        ..Default::default()
    };
    assert_eq!(bytes(&msg), [0x08, 0x01]);
    let full = drivers::TaskHandle {
        version: 1,
        config: Some(drivers::TaskConfig::default()),
        state: drivers::TaskState::Running.into(),
        driver_state: vec![0xff],
    };
    assert_eq!(
        bytes(&full),
        [0x08, 0x01, 0x12, 0x00, 0x18, 0x01, 0x22, 0x01, 0xff]
    );
}

#[test]
fn start_task_response_handle_is_3() {
    let msg = drivers::StartTaskResponse {
        handle: Some(drivers::TaskHandle {
            version: 1,
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(bytes(&msg), [0x1a, 0x02, 0x08, 0x01]);
}

#[test]
fn recover_task_request_handle_is_2() {
    let msg = drivers::RecoverTaskRequest {
        task_id: String::new(),
        handle: Some(drivers::TaskHandle {
            version: 1,
            ..Default::default()
        }),
    };
    assert_eq!(bytes(&msg), [0x12, 0x02, 0x08, 0x01]);
}

#[test]
fn memory_usage_out_of_order_numbers() -> TestResult {
    let usage = drivers::MemoryUsage {
        usage: 5,
        ..Default::default()
    };
    assert_eq!(bytes(&usage), [0x38, 0x05]); // #7 varint
    let swap = drivers::MemoryUsage {
        swap: 6,
        ..Default::default()
    };
    assert_eq!(bytes(&swap), [0x40, 0x06]); // #8 varint
    let measured = drivers::MemoryUsage {
        measured_fields: vec![
            drivers::memory_usage::Fields::Rss.into(),
            drivers::memory_usage::Fields::Swap.into(),
        ],
        ..Default::default()
    };
    assert_eq!(bytes(&measured), [0x32, 0x02, 0x00, 0x06]); // #6 packed enums
    let decoded = drivers::MemoryUsage::decode(&[0x40, 0x02, 0x32, 0x01, 0x05, 0x38, 0x01][..])?;
    assert_eq!((decoded.usage, decoded.swap), (1, 2));
    assert_eq!(
        decoded.measured_fields,
        [drivers::memory_usage::Fields::Usage as i32]
    );
    Ok(())
}

#[test]
fn cpu_usage_fields() {
    let msg = drivers::CpuUsage {
        percent: 1.0,
        measured_fields: vec![drivers::cpu_usage::Fields::Percent.into()],
        ..Default::default()
    };
    // #6 double (wire type 1), 1.0 little-endian; #7 packed enums.
    assert_eq!(
        bytes(&msg),
        [0x31, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f, 0x3a, 0x01, 0x05]
    );
}

#[test]
fn task_stats_agg_resource_usage_is_3() {
    let msg = drivers::TaskStats {
        agg_resource_usage: Some(drivers::TaskResourceUsage::default()),
        ..Default::default()
    };
    assert_eq!(bytes(&msg), [0x1a, 0x00]);
    let stamped = drivers::TaskStats {
        timestamp: Some(prost_types::Timestamp {
            seconds: 1,
            nanos: 0,
        }),
        ..Default::default()
    };
    assert_eq!(bytes(&stamped), [0x12, 0x02, 0x08, 0x01]);
}

#[test]
fn driver_capabilities_numbers() -> TestResult {
    use drivers::driver_capabilities::{FsIsolation, MountConfigs};
    let fs = drivers::DriverCapabilities {
        fs_isolation: FsIsolation::Chroot.into(),
        ..Default::default()
    };
    assert_eq!(bytes(&fs), [0x18, 0x01]);
    let logs = drivers::DriverCapabilities {
        disable_log_collection: true,
        ..Default::default()
    };
    assert_eq!(bytes(&logs), [0x40, 0x01]);
    let users = drivers::DriverCapabilities {
        dynamic_workload_users: true,
        ..Default::default()
    };
    assert_eq!(bytes(&users), [0x48, 0x01]);
    let mounts = drivers::DriverCapabilities {
        mount_configs: MountConfigs::NoMounts.into(),
        ..Default::default()
    };
    assert_eq!(bytes(&mounts), [0x30, 0x01]);
    let modes = drivers::DriverCapabilities {
        send_signals: true,
        exec: true,
        network_isolation_modes: vec![
            drivers::network_isolation_spec::NetworkIsolationMode::Host.into(),
            drivers::network_isolation_spec::NetworkIsolationMode::Group.into(),
        ],
        must_create_network: true,
        ..Default::default()
    };
    assert_eq!(
        bytes(&modes),
        [0x08, 0x01, 0x10, 0x01, 0x22, 0x02, 0x00, 0x01, 0x28, 0x01]
    );
    // A 1.9 agent may still send the retired #7 bool; it must be skipped, not rejected.
    let old = drivers::DriverCapabilities::decode(&[0x38, 0x01, 0x40, 0x01][..])?;
    assert!(old.disable_log_collection);
    // ANY_MOUNTS is an alias of value 0: prost keeps only the first name.
    assert_eq!(MountConfigs::UnknownMounts as i32, 0);
    assert_eq!(MountConfigs::from_str_name("ANY_MOUNTS"), None);
    assert_eq!(FsIsolation::Unveil as i32, 3);
    Ok(())
}

#[test]
fn task_config_high_numbers() {
    let msg = drivers::TaskConfig {
        alloc_id: "a".into(),
        job_id: "j".into(),
        parent_job_id: "p".into(),
        ..Default::default()
    };
    // #15 → 0x7a; #18 → 146 → varint 0x92 0x01; #22 → 178 → 0xb2 0x01.
    assert_eq!(
        bytes(&msg),
        [
            0x7a, 0x01, b'a', 0x92, 0x01, 0x01, b'j', 0xb2, 0x01, 0x01, b'p'
        ]
    );
    let fifo = drivers::TaskConfig {
        stdout_path: "o".into(),
        ..Default::default()
    };
    assert_eq!(bytes(&fifo), [0x5a, 0x01, b'o']); // #11
}

#[test]
fn linux_resources_percent_ticks_8_cgroup_9() -> TestResult {
    let ticks = drivers::LinuxResources {
        percent_ticks: 1.0,
        ..Default::default()
    };
    assert_eq!(bytes(&ticks), [0x41, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f]);
    let decoded = drivers::LinuxResources::decode(&[0x4a, 0x01, b'/', 0x32, 0x01, b'0'][..])?;
    assert_eq!(decoded.cpuset_cgroup, "/");
    assert_eq!(decoded.cpuset_cpus, "0");
    let mem = drivers::AllocatedMemoryResources {
        memory_mb: 1,
        memory_max_mb: 2,
    };
    assert_eq!(bytes(&mem), [0x10, 0x01, 0x18, 0x02]);
    Ok(())
}

#[test]
fn network_isolation_hosts_config_is_4() {
    let msg = drivers::NetworkIsolationSpec {
        mode: drivers::network_isolation_spec::NetworkIsolationMode::Group.into(),
        hosts_config: Some(drivers::HostsConfig {
            hostname: "h".into(),
            address: String::new(),
        }),
        ..Default::default()
    };
    assert_eq!(bytes(&msg), [0x08, 0x01, 0x22, 0x03, 0x0a, 0x01, b'h']);
}

#[test]
fn mount_and_fingerprint_forward_compat_fields() {
    let mount = drivers::Mount {
        request_name: "v".into(),
        ..Default::default()
    };
    assert_eq!(bytes(&mount), [0x32, 0x01, b'v']);
    let fp = drivers::FingerprintResponse {
        health: drivers::fingerprint_response::HealthState::Healthy.into(),
        err: "e".into(),
        ..Default::default()
    };
    assert_eq!(bytes(&fp), [0x10, 0x02, 0x22, 0x01, b'e']);
}

#[test]
fn stop_task_timeout_is_2() {
    let msg = drivers::StopTaskRequest {
        timeout: Some(prost_types::Duration {
            seconds: 5,
            nanos: 0,
        }),
        ..Default::default()
    };
    assert_eq!(bytes(&msg), [0x12, 0x02, 0x08, 0x05]);
}

#[test]
fn exec_streaming_frames() {
    let req = drivers::ExecTaskStreamingRequest {
        stdin: Some(drivers::ExecTaskStreamingIoOperation {
            data: Vec::new(),
            close: true,
        }),
        ..Default::default()
    };
    assert_eq!(bytes(&req), [0x1a, 0x02, 0x10, 0x01]);
    let resp = drivers::ExecTaskStreamingResponse {
        exited: true,
        result: Some(drivers::ExitResult::default()),
        ..Default::default()
    };
    assert_eq!(bytes(&resp), [0x18, 0x01, 0x22, 0x00]);
}

#[test]
fn hclspec_attr_variant_is_3() {
    let spec = hclspec::Spec {
        block: Some(hclspec::spec::Block::Attr(hclspec::Attr {
            name: "a".into(),
            r#type: "bool".into(),
            required: true,
        })),
    };
    assert_eq!(
        bytes(&spec),
        [
            0x1a, 0x0b, 0x0a, 0x01, b'a', 0x12, 0x04, b'b', b'o', b'o', b'l', 0x18, 0x01
        ]
    );
    let literal = hclspec::Spec {
        block: Some(hclspec::spec::Block::Literal(hclspec::Literal {
            value: "1".into(),
        })),
    };
    assert_eq!(bytes(&literal), [0x52, 0x03, 0x0a, 0x01, b'1']); // #10
}

#[test]
fn attribute_oneof_and_unit() {
    let msg = structs::Attribute {
        value: Some(structs::attribute::Value::BoolVal(true)),
        unit: "u".into(),
    };
    assert_eq!(bytes(&msg), [0x20, 0x01, 0x2a, 0x01, b'u']);
    let int = structs::Attribute {
        value: Some(structs::attribute::Value::IntVal(1)),
        unit: String::new(),
    };
    assert_eq!(bytes(&int), [0x10, 0x01]);
}

#[test]
fn recoverable_error_in_status_details() -> TestResult {
    let marker = structs::RecoverableError { recoverable: true };
    assert_eq!(bytes(&marker), [0x08, 0x01]);
    assert_eq!(
        structs::RecoverableError::type_url(),
        "type.googleapis.com/hashicorp.nomad.plugins.shared.structs.RecoverableError"
    );
    let any = prost_types::Any::from_msg(&marker)?;
    let status = google_rpc::Status {
        code: 9,
        message: "m".into(),
        details: vec![any],
    };
    let round = google_rpc::Status::decode(bytes(&status).as_slice())?;
    assert_eq!(round.code, 9);
    let back: structs::RecoverableError = round.details[0].to_msg()?;
    assert!(back.recoverable);
    // code #1, message #2, details #3.
    let head = &bytes(&google_rpc::Status {
        code: 9,
        message: "m".into(),
        details: vec![],
    })[..];
    assert_eq!(head, [0x08, 0x09, 0x12, 0x01, b'm']);
    Ok(())
}

#[test]
fn go_plugin_messages() {
    let stdio = plugin::StdioData {
        channel: plugin::stdio_data::Channel::Stderr.into(),
        data: b"hi".to_vec(),
    };
    assert_eq!(bytes(&stdio), [0x08, 0x02, 0x12, 0x02, b'h', b'i']);
    let conn = plugin::ConnInfo {
        service_id: 1,
        knock: Some(plugin::conn_info::Knock {
            knock: false,
            ack: true,
            error: String::new(),
        }),
        ..Default::default()
    };
    assert_eq!(bytes(&conn), [0x08, 0x01, 0x22, 0x02, 0x10, 0x01]);
    assert!(bytes(&plugin::Empty {}).is_empty());
}

#[test]
fn service_names() {
    assert_eq!(
        drivers::driver_server::SERVICE_NAME,
        "hashicorp.nomad.plugins.drivers.proto.Driver"
    );
    assert_eq!(
        base::base_plugin_server::SERVICE_NAME,
        "hashicorp.nomad.plugins.base.proto.BasePlugin"
    );
    assert_eq!(
        plugin::grpc_controller_server::SERVICE_NAME,
        "plugin.GRPCController"
    );
    assert_eq!(plugin::grpc_stdio_server::SERVICE_NAME, "plugin.GRPCStdio");
    assert_eq!(
        plugin::grpc_broker_server::SERVICE_NAME,
        "plugin.GRPCBroker"
    );
}

/// The server stubs route on literal `/package.Service/Method` paths; make sure every method
/// Nomad or go-plugin calls is routed under exactly the name it uses.
#[test]
fn method_paths() {
    let driver = include_str!(concat!(
        env!("OUT_DIR"),
        "/hashicorp.nomad.plugins.drivers.proto.rs"
    ));
    for method in [
        "TaskConfigSchema",
        "Capabilities",
        "Fingerprint",
        "RecoverTask",
        "StartTask",
        "WaitTask",
        "StopTask",
        "DestroyTask",
        "InspectTask",
        "TaskStats",
        "TaskEvents",
        "SignalTask",
        "ExecTask",
        "ExecTaskStreaming",
        "CreateNetwork",
        "DestroyNetwork",
    ] {
        let path = format!("\"/hashicorp.nomad.plugins.drivers.proto.Driver/{method}\"");
        assert!(driver.contains(&path), "missing route {path}");
    }
    let base = include_str!(concat!(
        env!("OUT_DIR"),
        "/hashicorp.nomad.plugins.base.proto.rs"
    ));
    for method in ["PluginInfo", "ConfigSchema", "SetConfig"] {
        let path = format!("\"/hashicorp.nomad.plugins.base.proto.BasePlugin/{method}\"");
        assert!(base.contains(&path), "missing route {path}");
    }
    let go_plugin = include_str!(concat!(env!("OUT_DIR"), "/plugin.rs"));
    for path in [
        "\"/plugin.GRPCController/Shutdown\"",
        "\"/plugin.GRPCStdio/StreamStdio\"",
        "\"/plugin.GRPCBroker/StartStream\"",
    ] {
        assert!(go_plugin.contains(path), "missing route {path}");
    }
}
