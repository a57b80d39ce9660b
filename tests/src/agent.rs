//! One real, non-dev Nomad agent (server with `bootstrap_expect = 1` + client) in its own temp
//! dir, with a copy of the driver in its `plugin_dir`. Non-dev matters: the client state DB
//! persists task handles, so agent restarts exercise `RecoverTask`, and a graceful stop leaves
//! tasks running (Nomad's documented client behaviour).

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::Signal;

mod inspect;
mod options;

pub use options::AgentOptions;

use crate::api::{Client, LOG_TAIL_LINES, Node};
use crate::config::{self, AgentLayout};
use crate::wait::{POLL, poll_until};
use crate::{DRIVER_NAME, PLUGIN_FILE_NAME, cleanup, env, procs};

/// A running (or stopped, restartable) Nomad agent. Dropping it stops all jobs, stops the agent
/// and removes everything it left behind (see the crate docs).
pub struct Agent {
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    layout: AgentLayout,
    config_path: PathBuf,
    log_path: PathBuf,
    nomad: PathBuf,
    opts: AgentOptions,
    child: Option<Child>,
    run_log_offset: u64,
    starts: u32,
    node_id: Option<String>,
    api: Client,
}

impl Agent {
    /// Lays out a temp dir, writes the config and launches `nomad agent -config=…`. Does not wait;
    /// call [`Agent::wait_ready`].
    pub fn start(opts: AgentOptions) -> Result<Agent> {
        let mut agent = Self::prepare(opts)?;
        agent.spawn()?;
        Ok(agent)
    }

    /// [`Agent::start`] followed by [`Agent::wait_ready`].
    pub fn start_ready(opts: AgentOptions) -> Result<Agent> {
        let mut agent = Self::start(opts)?;
        agent.wait_ready()?;
        Ok(agent)
    }

    /// Starts an agent that is expected to refuse to start (e.g. an invalid plugin config) and
    /// returns everything it printed. Fails if it is still running after the ready timeout.
    pub fn start_expect_failure(opts: AgentOptions) -> Result<String> {
        let timeout = opts.ready_timeout;
        let mut agent = Self::start(opts)?;
        let deadline = Instant::now() + crate::wait::scaled(timeout);
        while Instant::now() < deadline {
            if agent.try_exit_status()?.is_some() {
                return fs::read_to_string(&agent.log_path).context("reading the agent output");
            }
            std::thread::sleep(POLL);
        }
        let tail = agent.log_tail(LOG_TAIL_LINES);
        agent.kill();
        bail!(
            "the agent was expected to fail at start-up but still runs after {timeout:?}:\n{tail}"
        )
    }

    fn prepare(opts: AgentOptions) -> Result<Agent> {
        let nomad = env::nomad_bin()?;
        let driver = if opts.with_driver {
            Some(env::driver_bin()?)
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("bpfexec-e2e-")
            .tempdir()
            .context("creating the agent temp dir")?;
        let root = dir.path().to_path_buf();
        let ports = env::free_ports(3)?;
        let layout = AgentLayout {
            name: format!(
                "e2e-{}",
                root.file_name().map_or("x".into(), |n| n.to_string_lossy())
            ),
            data_dir: root.join("data"),
            plugin_dir: root.join("plugins"),
            state_dir: root.join("state"),
            pin_dir: std::path::Path::new("/sys/fs/bpf").join(format!(
                "bpfexec-e2e-{}",
                root.file_name().map_or("x".into(), |n| n.to_string_lossy())
            )),
            http_port: ports[0],
            rpc_port: ports[1],
            serf_port: ports[2],
        };
        for d in [&layout.data_dir, &layout.plugin_dir, &layout.state_dir] {
            fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        if let Some(driver) = driver {
            let dest = layout.plugin_dir.join(PLUGIN_FILE_NAME);
            fs::copy(&driver, &dest)
                .with_context(|| format!("copying {} to {}", driver.display(), dest.display()))?;
            fs::set_permissions(&dest, fs::Permissions::from_mode(0o755))?;
        }
        let config_path = root.join("agent.hcl");
        let hcl = config::render(
            &layout,
            opts.with_driver,
            &opts.plugin_config,
            &opts.extra_hcl,
        );
        fs::write(&config_path, hcl).context("writing the agent config")?;
        let log_path = root.join("agent.log");
        let api = Client::new(&format!("http://127.0.0.1:{}", layout.http_port))
            .with_log(log_path.clone());
        Ok(Agent {
            dir: Some(dir),
            root,
            layout,
            config_path,
            log_path,
            nomad,
            opts,
            child: None,
            run_log_offset: 0,
            starts: 0,
            node_id: None,
            api,
        })
    }

    fn spawn(&mut self) -> Result<()> {
        if self.is_running() {
            bail!("the agent is already running (pid {:?})", self.pid());
        }
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        writeln!(log, "=== bpfexec-e2e: agent start #{} ===", self.starts)?;
        self.run_log_offset = log.metadata()?.len();
        let child = Command::new(&self.nomad)
            .arg("agent")
            .arg(format!("-config={}", self.config_path.display()))
            .envs(self.opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("spawning {} agent", self.nomad.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until there is a leader, this agent's node registered (in this run) and is
    /// `ready`, and — if requested — the node shows `bpfexec` detected and healthy. Returns the
    /// node. On timeout or agent exit the error includes the agent log tail.
    pub fn wait_ready(&mut self) -> Result<Node> {
        let timeout = self.opts.ready_timeout;
        let name = self.layout.name.clone();
        let result = poll_until("the agent to be ready", timeout, POLL, |last| {
            if let Some(status) = self.try_exit_status()? {
                bail!("the agent exited during start-up ({status})");
            }
            let leader = self.api.leader().unwrap_or_default();
            if leader.is_empty() {
                "no leader yet".clone_into(last);
                return Ok(None);
            }
            if !self.run_log_contains("node registration complete") {
                "client not registered yet in this run".clone_into(last);
                return Ok(None);
            }
            let Some(stub) = self.api.nodes()?.into_iter().find(|n| n.name == name) else {
                "node not listed yet".clone_into(last);
                return Ok(None);
            };
            if stub.status != "ready" {
                *last = format!("node status {}", stub.status);
                return Ok(None);
            }
            let node = self.api.node(&stub.id)?;
            if self.opts.wait_driver_healthy {
                let Some(d) = node.drivers.get(DRIVER_NAME) else {
                    *last = format!("no {DRIVER_NAME} in node drivers {:?}", node.drivers.keys());
                    return Ok(None);
                };
                if !(d.detected && d.healthy) {
                    *last = format!(
                        "{DRIVER_NAME}: detected={} healthy={} ({})",
                        d.detected, d.healthy, d.health_description
                    );
                    return Ok(None);
                }
            }
            Ok(Some(node))
        });
        let node = result.map_err(|e| {
            anyhow!(
                "{e:#}\n--- agent log tail ---\n{}",
                self.log_tail(LOG_TAIL_LINES)
            )
        })?;
        self.node_id = Some(node.id.clone());
        Ok(node)
    }

    /// This agent's client node, fresh from the API (after [`Agent::wait_ready`]).
    pub fn node(&self) -> Result<Node> {
        let id = self
            .node_id
            .as_deref()
            .context("the agent has not been ready yet")?;
        self.api.node(id)
    }

    fn run_log_contains(&self, needle: &str) -> bool {
        let Ok(bytes) = fs::read(&self.log_path) else {
            return false;
        };
        let start = (self.run_log_offset as usize).min(bytes.len());
        String::from_utf8_lossy(&bytes[start..]).contains(needle)
    }

    fn try_exit_status(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            None => Ok(None),
            Some(c) => Ok(c.try_wait()?),
        }
    }

    /// Whether the agent process we started is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.try_exit_status(), Ok(None)) && self.child.is_some()
    }

    /// Graceful stop: SIGINT, then wait (up to 30 s, then SIGKILL). Tasks keep running.
    pub fn stop(&mut self) -> Result<()> {
        self.stop_within(Duration::from_secs(30))
    }

    fn stop_within(&mut self, timeout: Duration) -> Result<()> {
        let Some(pid) = self.pid() else { return Ok(()) };
        if self.try_exit_status()?.is_none() {
            procs::signal(pid, Signal::SIGINT).context("sending SIGINT to the agent")?;
            let deadline = Instant::now() + crate::wait::scaled(timeout);
            while self.try_exit_status()?.is_none() {
                if Instant::now() >= deadline {
                    self.kill();
                    bail!("the agent did not exit within {timeout:?} of SIGINT; killed it");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        self.child = None;
        Ok(())
    }

    /// SIGKILL the agent (only the pid we started) and reap it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Replaces the lines inside the plugin's `config {}` (besides `state_dir` and
    /// `bpf_pin_dir`; a `bpf_pin_dir` line here replaces the agent's own) and whether [`Agent::wait_ready`] waits for the driver
    /// to be healthy; takes effect at the next start of the agent.
    pub fn set_plugin_config(&mut self, hcl: &str, wait_driver_healthy: bool) -> Result<()> {
        hcl.clone_into(&mut self.opts.plugin_config);
        self.opts.wait_driver_healthy = wait_driver_healthy;
        let text = config::render(
            &self.layout,
            self.opts.with_driver,
            &self.opts.plugin_config,
            &self.opts.extra_hcl,
        );
        fs::write(&self.config_path, text).context("rewriting the agent config")
    }

    /// Starts a new agent process on the same data dir and config (stopping the current one
    /// gracefully first if it still runs), then waits until ready.
    pub fn restart(&mut self) -> Result<Node> {
        self.stop()?;
        self.spawn()?;
        self.wait_ready()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let mut known_allocs = Vec::new();
        if self.is_running() {
            let allocs = self.api.allocs().unwrap_or_default();
            known_allocs.extend(allocs.iter().map(|a| a.id.clone()));
            if let Err(e) = self.api.stop_all_jobs(Duration::from_secs(20)) {
                eprintln!("bpfexec-e2e: stopping jobs before shutdown: {e:#}");
            }
            // With BPFEXEC_E2E_KEEP the alloc dirs (task logs, files) stay for inspection.
            if !allocs.is_empty() && !env::keep_temp_dirs() {
                let _ = self.api.client_gc();
                cleanup::wait_allocs_destroyed(&self.layout.data_dir, Duration::from_secs(10));
            }
            if let Err(e) = self.stop_within(Duration::from_secs(15)) {
                eprintln!("bpfexec-e2e: {e:#}");
            }
        }
        self.kill();
        cleanup::sweep(&self.root, &self.layout, &self.nomad, &known_allocs);
        // Unpinning the links detaches the probes this agent's driver left attached.
        if let Err(e) = fs::remove_dir_all(&self.layout.pin_dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!(
                "bpfexec-e2e: removing {}: {e}",
                self.layout.pin_dir.display()
            );
        }
        if env::keep_temp_dirs()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("bpfexec-e2e: kept agent dir {}", dir.keep().display());
        }
    }
}
