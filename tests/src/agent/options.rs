//! [`AgentOptions`]: what goes into an [`Agent`](super::Agent)'s configuration file beyond the
//! fixed layout (driver block or not, extra plugin and agent HCL) and how long to wait for it.

use std::time::Duration;

/// How an [`Agent`](super::Agent) is configured.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Copy `DRIVER_BIN` into the plugin dir and add its `plugin "nomad-driver-bpfexec"` block.
    pub with_driver: bool,
    /// Extra HCL lines inside that block's `config {}` (after `state_dir`).
    pub plugin_config: String,
    /// Extra top-level agent HCL.
    pub extra_hcl: String,
    /// Extra environment of the agent process (its plugins inherit it), e.g.
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub env: Vec<(String, String)>,
    /// Make [`Agent::wait_ready`](super::Agent::wait_ready) also wait until the node reports
    /// `bpfexec` detected and healthy.
    pub wait_driver_healthy: bool,
    /// Timeout of [`Agent::wait_ready`](super::Agent::wait_ready).
    pub ready_timeout: Duration,
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self::bpfexec()
    }
}

impl AgentOptions {
    /// The driver under test, waited for until healthy.
    #[must_use]
    pub fn bpfexec() -> Self {
        AgentOptions {
            with_driver: true,
            plugin_config: String::new(),
            extra_hcl: String::new(),
            env: Vec::new(),
            wait_driver_healthy: true,
            ready_timeout: Duration::from_secs(60),
        }
    }

    /// No bpfexec; Nomad's built-in `raw_exec` enabled instead (harness self-test).
    #[must_use]
    pub fn raw_exec() -> Self {
        AgentOptions {
            with_driver: false,
            wait_driver_healthy: false,
            extra_hcl: "plugin \"raw_exec\" {\n  config {\n    enabled = true\n  }\n}\n".to_owned(),
            ..Self::bpfexec()
        }
    }

    /// Appends lines to the driver's `config {}` block.
    #[must_use]
    pub fn plugin_config(mut self, hcl: &str) -> Self {
        self.plugin_config.push_str(hcl);
        self.plugin_config.push('\n');
        self
    }

    /// Sets an environment variable of the agent process (and so of the driver plugin).
    #[must_use]
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Appends top-level agent HCL.
    #[must_use]
    pub fn extra_hcl(mut self, hcl: &str) -> Self {
        self.extra_hcl.push_str(hcl);
        self.extra_hcl.push('\n');
        self
    }
}
