//! Renders the agent configuration file: a single non-dev agent acting as server
//! (`bootstrap_expect = 1`) and client on loopback, with the `plugin "nomad-driver-bpfexec"`
//! block of the driver contract (Nomad >= 1.10 only runs plugins named by such a block).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::PLUGIN_FILE_NAME;

/// Paths and ports of one agent, as written into its configuration file.
#[derive(Debug, Clone)]
pub struct AgentLayout {
    /// Node name (unique per agent so parallel agents never look alike in logs).
    pub name: String,
    /// Nomad `data_dir` (server raft state, client state DB, alloc dirs).
    pub data_dir: PathBuf,
    /// Nomad `plugin_dir` holding the driver copy.
    pub plugin_dir: PathBuf,
    /// The driver's `state_dir` (per-task supervisor state).
    pub state_dir: PathBuf,
    /// The driver's `bpf_pin_dir` on bpffs (pinned probe maps and links); removed with the agent
    /// so no probe stays attached after the suite.
    pub pin_dir: PathBuf,
    /// HTTP API port.
    pub http_port: u16,
    /// Server RPC port.
    pub rpc_port: u16,
    /// Serf (gossip) port.
    pub serf_port: u16,
}

/// Quotes `s` as an HCL string literal: escapes `\`, `"`, control characters and the template
/// introducers `${` and `%{`, so the value reaches Nomad verbatim.
#[must_use]
pub fn hcl_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '$' | '%' if chars.peek() == Some(&'{') => {
                out.push(c);
                out.push(c);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// An HCL path string.
fn hcl_path(p: &Path) -> String {
    hcl_string(&p.to_string_lossy())
}

/// The agent configuration file.
///
/// * `with_driver`: add the `plugin "nomad-driver-bpfexec"` block (with `state_dir` and the
///   `plugin_config` lines inside its `config {}`).
/// * `extra_hcl`: appended verbatim at top level (e.g. `plugin "raw_exec" {…}`).
#[must_use]
pub fn render(
    layout: &AgentLayout,
    with_driver: bool,
    plugin_config: &str,
    extra_hcl: &str,
) -> String {
    let mut hcl = format!(
        r#"# Written by the bpfexec end-to-end harness.
name               = {name}
data_dir           = {data_dir}
plugin_dir         = {plugin_dir}
bind_addr          = "127.0.0.1"
log_level          = "DEBUG"
disable_update_check = true

ports {{
  http = {http}
  rpc  = {rpc}
  serf = {serf}
}}

advertise {{
  http = "127.0.0.1"
  rpc  = "127.0.0.1"
  serf = "127.0.0.1"
}}

server {{
  enabled          = true
  bootstrap_expect = 1
}}

# Nomad 1.10 asks drivers for TaskStats (the per-task and per-pid usage behind
# `nomad alloc status -stats` and /v1/client/allocation/<id>/stats) only when allocation
# metrics are published. prometheus_metrics serves them (and all of Nomad's metrics) at
# /v1/metrics?format=prometheus, which the suite's real Prometheus scrapes.
telemetry {{
  publish_allocation_metrics = true
  prometheus_metrics         = true
  collection_interval        = "1s"
}}

client {{
  enabled           = true
  network_interface = "lo"
  servers           = ["127.0.0.1:{rpc}"]

  # Cloud metadata fingerprinters only slow start-up down here (and env_aws aborts client
  # start-up when AWS_CA_BUNDLE is set in the environment, as on some CI hosts).
  options = {{
    "fingerprint.denylist" = "env_aws,env_gce,env_azure,env_digitalocean"
  }}

  # Nomad garbage-collects a finished allocation at once when the host's disk is over 80% full
  # (its default), after which its logs are gone before a check reads them; a busy build
  # machine often is. Keep allocations until the harness asks for a GC (also past Nomad's
  # default of 50 allocations, which the long scale and chaos runs exceed).
  gc_disk_usage_threshold  = 99
  gc_inode_usage_threshold = 99
  gc_max_allocs            = 1000
}}
"#,
        name = hcl_string(&layout.name),
        data_dir = hcl_path(&layout.data_dir),
        plugin_dir = hcl_path(&layout.plugin_dir),
        http = layout.http_port,
        rpc = layout.rpc_port,
        serf = layout.serf_port,
    );
    if with_driver {
        // A test may point the pins elsewhere (a fault); the agent's own pin dir is then unused.
        let own_pins = plugin_config
            .lines()
            .any(|l| l.trim_start().starts_with("bpf_pin_dir"));
        let pins = if own_pins {
            String::new()
        } else {
            format!("    bpf_pin_dir = {}\n", hcl_path(&layout.pin_dir))
        };
        let _ = write!(
            hcl,
            "\nplugin {plugin} {{\n  config {{\n    state_dir = {state}\n{pins}{extra}\n  }}\n}}\n",
            plugin = hcl_string(PLUGIN_FILE_NAME),
            state = hcl_path(&layout.state_dir),
            extra = plugin_config,
        );
    }
    if !extra_hcl.is_empty() {
        hcl.push('\n');
        hcl.push_str(extra_hcl);
        hcl.push('\n');
    }
    hcl
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hcl_string_escapes_templates_and_quotes() {
        assert_eq!(hcl_string(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(
            hcl_string("echo ${X} %{if} $$ 50%"),
            r#""echo $${X} %%{if} $$ 50%""#
        );
        assert_eq!(hcl_string("a\nb"), r#""a\nb""#);
    }

    #[test]
    fn render_has_plugin_block_only_with_driver() {
        let layout = AgentLayout {
            name: "n".into(),
            data_dir: "/d".into(),
            plugin_dir: "/p".into(),
            state_dir: "/s".into(),
            pin_dir: "/sys/fs/bpf/x".into(),
            http_port: 1,
            rpc_port: 2,
            serf_port: 3,
        };
        let with = render(&layout, true, "x = 1", "");
        assert!(with.contains("plugin \"nomad-driver-bpfexec\""));
        assert!(with.contains("state_dir = \"/s\""));
        assert!(with.contains("x = 1"));
        assert!(with.contains("prometheus_metrics         = true"));
        let without = render(&layout, false, "", "plugin \"raw_exec\" {}");
        assert!(!without.contains("nomad-driver-bpfexec"));
        assert!(without.contains("raw_exec"));
    }
}
