//! hclspec builders and the two schemas Nomad decodes HCL with: the plugin block's `config {}`
//! (agent file) and the task's `config {}` (job file). Literal values are HCL source text.

use bpfexec_proto::hclspec::{self, Spec, spec::Block};

/// A named attribute of HCL type `ty` (e.g. `string`, `list(string)`).
pub fn attr(name: &str, ty: &str, required: bool) -> Spec {
    Spec {
        block: Some(Block::Attr(hclspec::Attr {
            name: name.into(),
            r#type: ty.into(),
            required,
        })),
    }
}

/// An optional attribute that falls back to `default_hcl` (HCL source: strings need quotes).
pub fn with_default(name: &str, ty: &str, default_hcl: &str) -> Spec {
    Spec {
        block: Some(Block::Default(Box::new(hclspec::Default {
            primary: Some(Box::new(attr(name, ty, false))),
            default: Some(Box::new(Spec {
                block: Some(Block::Literal(hclspec::Literal {
                    value: default_hcl.into(),
                })),
            })),
        }))),
    }
}

/// A block whose attributes form a map of `ty` (hclspec BlockAttrs).
pub fn block_attrs(name: &str, ty: &str) -> Spec {
    Spec {
        block: Some(Block::BlockAttrs(hclspec::BlockAttrs {
            name: name.into(),
            r#type: ty.into(),
            required: false,
        })),
    }
}

/// An optional nested block decoded with `nested` (hclspec Block).
pub fn block(name: &str, nested: Spec) -> Spec {
    Spec {
        block: Some(Block::BlockValue(Box::new(hclspec::Block {
            name: name.into(),
            required: false,
            nested: Some(Box::new(nested)),
        }))),
    }
}

/// Any number of nested blocks, each decoded with `nested` (hclspec BlockList).
pub fn block_list(name: &str, nested: Spec) -> Spec {
    Spec {
        block: Some(Block::BlockList(Box::new(hclspec::BlockList {
            name: name.into(),
            min_items: 0,
            max_items: 0,
            nested: Some(Box::new(nested)),
        }))),
    }
}

/// The root object of a schema.
pub fn object(fields: Vec<(&str, Spec)>) -> Spec {
    Spec {
        block: Some(Block::Object(hclspec::Object {
            attributes: fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        })),
    }
}

/// Quotes a string as an HCL string literal.
pub fn hcl_string(s: &str) -> String {
    let escaped = s.replace('\\', "\\\\").replace('"', "\\\"");
    format!("\"{escaped}\"")
}

/// Schema of `plugin "nomad-driver-bpfexec" { config { … } }`. Defaults for lists and maps
/// live in `PluginConfig` (an absent value arrives as null).
pub fn plugin_schema() -> Spec {
    let mut attrs = vec![
        (
            "state_dir",
            with_default(
                "state_dir",
                "string",
                &hcl_string(super::plugin::DEFAULT_STATE_DIR),
            ),
        ),
        (
            "default_pid_mode",
            with_default("default_pid_mode", "string", "\"private\""),
        ),
        (
            "default_ipc_mode",
            with_default("default_ipc_mode", "string", "\"private\""),
        ),
        ("allow_caps", attr("allow_caps", "list(string)", false)),
        (
            "denied_host_uids",
            attr("denied_host_uids", "string", false),
        ),
        (
            "denied_host_gids",
            attr("denied_host_gids", "string", false),
        ),
        // A block of string attributes, as Nomad's agent config writes maps:
        // chroot_env { "/bin" = "/bin" }.
        ("chroot_env", block_attrs("chroot_env", "string")),
        (
            "no_pivot_root",
            with_default("no_pivot_root", "bool", "false"),
        ),
        (
            "allow_unisolated",
            with_default("allow_unisolated", "bool", "false"),
        ),
        (
            "allow_unrestricted_devices",
            with_default("allow_unrestricted_devices", "bool", "false"),
        ),
        ("allow_root", with_default("allow_root", "bool", "false")),
        (
            "default_seccomp",
            with_default("default_seccomp", "string", "\"default\""),
        ),
        ("bpf_pin_dir", attr("bpf_pin_dir", "string", false)),
        ("http_addr", attr("http_addr", "string", false)),
        (
            "escape_check_interval",
            with_default(
                "escape_check_interval",
                "string",
                &hcl_string(super::plugin::DEFAULT_ESCAPE_CHECK),
            ),
        ),
        (
            "journald_socket",
            with_default(
                "journald_socket",
                "string",
                &hcl_string(super::plugin::DEFAULT_JOURNALD_SOCKET),
            ),
        ),
        (
            "ephemeral_uid_range",
            attr("ephemeral_uid_range", "string", false),
        ),
        (
            "default_ephemeral_user",
            with_default("default_ephemeral_user", "bool", "false"),
        ),
        (
            "metrics_retention",
            attr("metrics_retention", "string", false),
        ),
        (
            "otlp",
            block(
                "otlp",
                object(vec![
                    ("endpoint", attr("endpoint", "string", false)),
                    ("protocol", attr("protocol", "string", false)),
                    ("headers", attr("headers", "map(string)", false)),
                    ("timeout", attr("timeout", "string", false)),
                    (
                        "max_process_spans",
                        attr("max_process_spans", "number", false),
                    ),
                ]),
            ),
        ),
    ];
    attrs.extend(probe_attrs());
    object(attrs)
}

/// The probes' options of the plugin config (kernel filesystems, tracked-process map).
fn probe_attrs() -> Vec<(&'static str, Spec)> {
    vec![
        ("tracefs_dir", attr("tracefs_dir", "string", false)),
        ("bpffs_dir", attr("bpffs_dir", "string", false)),
        (
            "allow_unobserved",
            with_default("allow_unobserved", "bool", "false"),
        ),
        (
            "tracked_processes",
            attr("tracked_processes", "number", false),
        ),
        (
            "tracked_processes_per_task",
            attr("tracked_processes_per_task", "number", false),
        ),
    ]
}

/// Schema of a job task's `config { … }`.
pub fn task_schema() -> Spec {
    object(vec![
        ("command", attr("command", "string", true)),
        ("args", attr("args", "list(string)", false)),
        ("pid_mode", attr("pid_mode", "string", false)),
        ("ipc_mode", attr("ipc_mode", "string", false)),
        ("cap_add", attr("cap_add", "list(string)", false)),
        ("cap_drop", attr("cap_drop", "list(string)", false)),
        ("work_dir", attr("work_dir", "string", false)),
        ("isolation", attr("isolation", "string", false)),
        (
            "signal_all_processes",
            attr("signal_all_processes", "bool", false),
        ),
        ("oom_score_adj", attr("oom_score_adj", "number", false)),
        ("seccomp", attr("seccomp", "string", false)),
        // Maps in a job's task config reach the driver as lists of maps (Nomad's HCL parsing
        // turns `x = { … }` into a one-element list), hence list(map(…)), as raw_exec declares
        // cgroup_v1_override; `MapOrList` takes both shapes.
        // raw_exec's cgroup overrides.
        (
            "cgroup_v1_override",
            attr("cgroup_v1_override", "list(map(string))", false),
        ),
        (
            "cgroup_v2_override",
            attr("cgroup_v2_override", "string", false),
        ),
        // The systemd transient-unit driver's limits, group, logging, images and users.
        ("swap_max", attr("swap_max", "string", false)),
        ("pids_max", attr("pids_max", "number", false)),
        ("io_weight", attr("io_weight", "number", false)),
        (
            "io_read_bandwidth_max",
            attr("io_read_bandwidth_max", "list(map(string))", false),
        ),
        (
            "io_write_bandwidth_max",
            attr("io_write_bandwidth_max", "list(map(string))", false),
        ),
        (
            "io_read_iops_max",
            attr("io_read_iops_max", "list(map(number))", false),
        ),
        (
            "io_write_iops_max",
            attr("io_write_iops_max", "list(map(number))", false),
        ),
        ("group", attr("group", "string", false)),
        (
            "logging",
            block(
                "logging",
                object(vec![("driver", attr("driver", "string", false))]),
            ),
        ),
        ("root_image", attr("root_image", "string", false)),
        (
            "mount_image",
            block_list(
                "mount_image",
                object(vec![
                    ("source", attr("source", "string", true)),
                    ("target", attr("target", "string", true)),
                ]),
            ),
        ),
        ("ephemeral_user", attr("ephemeral_user", "bool", false)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_schema_requires_command() {
        let Some(Block::Object(obj)) = task_schema().block else {
            panic!("object")
        };
        let Some(Block::Attr(cmd)) = obj.attributes["command"].block.clone() else {
            panic!("attr")
        };
        assert!(cmd.required);
        assert_eq!(cmd.r#type, "string");
        let Some(Block::Attr(args)) = obj.attributes["args"].block.clone() else {
            panic!("attr")
        };
        assert_eq!(args.r#type, "list(string)");
    }

    #[test]
    fn defaults_name_their_attribute_and_quote_strings() {
        let Some(Block::Object(obj)) = plugin_schema().block else {
            panic!("object")
        };
        let Some(Block::Default(d)) = obj.attributes["state_dir"].block.clone() else {
            panic!("default")
        };
        let Some(Block::Attr(a)) = d.primary.and_then(|p| p.block) else {
            panic!("attr")
        };
        assert_eq!(a.name, "state_dir");
        let Some(Block::Literal(l)) = d.default.and_then(|p| p.block) else {
            panic!("literal")
        };
        assert_eq!(l.value, "\"/run/bpfexec\"");
    }

    #[test]
    fn hcl_strings_are_escaped() {
        assert_eq!(hcl_string(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}
