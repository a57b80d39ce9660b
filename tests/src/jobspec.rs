//! Builds the HCL of a one-group, one-task test job. Defaults fail fast (`restart { attempts = 0
//! mode = "fail" }`, no rescheduling) so a task's own exit is what the test observes.

use std::fmt::Write as _;

use crate::DRIVER_NAME;
use crate::config::hcl_string;

/// The task name every [`JobSpec`] uses.
pub const TASK: &str = "task";
/// The group name every [`JobSpec`] uses.
pub const GROUP: &str = "group";

/// How the task's `config {}` block is produced.
#[derive(Debug, Clone)]
enum TaskConfig {
    /// `command` and optional `args`.
    Command {
        command: String,
        args: Option<Vec<String>>,
    },
    /// Verbatim HCL lines (for invalid-config tests).
    Raw(String),
}

/// A test job: one group `group`, one task `task`.
#[derive(Debug, Clone)]
pub struct JobSpec {
    id: String,
    job_type: &'static str,
    driver: String,
    config: TaskConfig,
    kill_signal: Option<String>,
    kill_timeout: Option<String>,
    env: Vec<(String, String)>,
    memory_mb: u32,
    cpu_mhz: u32,
    /// Group `count`.
    count: u32,
    /// Group `ephemeral_disk` size in MB (None: Nomad's default, 300 MB per allocation).
    disk_mb: Option<u32>,
    /// Group `restart { attempts, delay }` (default: no restart).
    restart: (u32, String),
    extra_task_hcl: String,
}

impl JobSpec {
    fn new(id: &str, job_type: &'static str) -> Self {
        JobSpec {
            id: id.to_owned(),
            job_type,
            driver: DRIVER_NAME.to_owned(),
            config: TaskConfig::Command {
                command: "/bin/true".to_owned(),
                args: None,
            },
            kill_signal: None,
            kill_timeout: None,
            env: Vec::new(),
            memory_mb: 64,
            cpu_mhz: 100,
            count: 1,
            disk_mb: None,
            restart: (0, "15s".to_owned()),
            extra_task_hcl: String::new(),
        }
    }

    /// A `batch` job (runs to completion).
    #[must_use]
    pub fn batch(id: &str) -> Self {
        Self::new(id, "batch")
    }

    /// A `service` job (runs until stopped).
    #[must_use]
    pub fn service(id: &str) -> Self {
        Self::new(id, "service")
    }

    /// The job id.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Task driver (default `bpfexec`; the harness smoke test uses `raw_exec`).
    #[must_use]
    pub fn driver(mut self, driver: &str) -> Self {
        driver.clone_into(&mut self.driver);
        self
    }

    /// `config { command = … }`.
    #[must_use]
    pub fn command(mut self, command: &str) -> Self {
        let args = match self.config {
            TaskConfig::Command { args, .. } => args,
            TaskConfig::Raw(_) => None,
        };
        self.config = TaskConfig::Command {
            command: command.to_owned(),
            args,
        };
        self
    }

    /// `config { args = [...] }`.
    #[must_use]
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let args: Vec<String> = args.into_iter().map(Into::into).collect();
        let command = match self.config {
            TaskConfig::Command { command, .. } => command,
            TaskConfig::Raw(_) => "/bin/true".to_owned(),
        };
        self.config = TaskConfig::Command {
            command,
            args: Some(args),
        };
        self
    }

    /// Shorthand: `command = "/bin/sh"`, `args = ["-c", script]`.
    #[must_use]
    pub fn shell(self, script: &str) -> Self {
        self.command("/bin/sh").args(["-c", script])
    }

    /// Replaces the whole `config {}` body with raw HCL (for invalid configurations).
    #[must_use]
    pub fn raw_config(mut self, hcl: &str) -> Self {
        self.config = TaskConfig::Raw(hcl.to_owned());
        self
    }

    /// Task `kill_signal` (e.g. `SIGTERM`).
    #[must_use]
    pub fn kill_signal(mut self, signal: &str) -> Self {
        self.kill_signal = Some(signal.to_owned());
        self
    }

    /// Task `kill_timeout` (e.g. `3s`).
    #[must_use]
    pub fn kill_timeout(mut self, timeout: &str) -> Self {
        self.kill_timeout = Some(timeout.to_owned());
        self
    }

    /// Adds a task environment variable.
    #[must_use]
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Task `resources { memory = … }` in MiB (default 64).
    #[must_use]
    pub fn memory_mb(mut self, mb: u32) -> Self {
        self.memory_mb = mb;
        self
    }

    /// The task's CPU reservation in MHz (default 100; many tasks on a small node need less).
    #[must_use]
    pub fn cpu_mhz(mut self, mhz: u32) -> Self {
        self.cpu_mhz = mhz;
        self
    }

    /// Allocations of the group (default 1).
    #[must_use]
    pub fn count(mut self, n: u32) -> Self {
        self.count = n;
        self
    }

    /// The group's `ephemeral_disk` in MB (Nomad reserves 300 MB of the node's disk per
    /// allocation by default, which limits how many fit on a test machine).
    #[must_use]
    pub fn disk_mb(mut self, mb: u32) -> Self {
        self.disk_mb = Some(mb);
        self
    }

    /// Nomad restarts the failed task `attempts` times, `delay` apart, in the same allocation
    /// (then the allocation fails; it is never rescheduled).
    #[must_use]
    pub fn restarts(mut self, attempts: u32, delay: &str) -> Self {
        self.restart = (attempts, delay.to_owned());
        self
    }

    /// Extra HCL inside the `task {}` block.
    #[must_use]
    pub fn extra_task_hcl(mut self, hcl: &str) -> Self {
        hcl.clone_into(&mut self.extra_task_hcl);
        self
    }

    fn config_body(&self) -> String {
        match &self.config {
            TaskConfig::Raw(hcl) => hcl.clone(),
            TaskConfig::Command { command, args } => {
                let mut body = format!("command = {}", hcl_string(command));
                if let Some(args) = args {
                    let list: Vec<String> = args.iter().map(|a| hcl_string(a)).collect();
                    let _ = write!(body, "\n      args = [{}]", list.join(", "));
                }
                body
            }
        }
    }

    /// The job's HCL.
    #[must_use]
    pub fn to_hcl(&self) -> String {
        let mut task_extra = String::new();
        if let Some(s) = &self.kill_signal {
            let _ = writeln!(task_extra, "    kill_signal = {}", hcl_string(s));
        }
        if let Some(t) = &self.kill_timeout {
            let _ = writeln!(task_extra, "    kill_timeout = {}", hcl_string(t));
        }
        if !self.env.is_empty() {
            task_extra.push_str("    env {\n");
            for (k, v) in &self.env {
                let _ = writeln!(task_extra, "      {k} = {}", hcl_string(v));
            }
            task_extra.push_str("    }\n");
        }
        task_extra.push_str(&self.extra_task_hcl);
        format!(
            r#"job {id} {{
  type = "{job_type}"
  group "{GROUP}" {{
    count = {count}
{disk}    restart {{
      attempts = {attempts}
      delay    = {delay}
      mode     = "fail"
    }}
    reschedule {{
      attempts  = 0
      unlimited = false
    }}
    task "{TASK}" {{
      driver = {driver}
      config {{
      {config}
      }}
      resources {{
        cpu    = {cpu}
        memory = {memory}
      }}
{task_extra}    }}
  }}
}}
"#,
            id = hcl_string(&self.id),
            job_type = self.job_type,
            driver = hcl_string(&self.driver),
            config = self.config_body(),
            memory = self.memory_mb,
            cpu = self.cpu_mhz,
            count = self.count,
            disk = self
                .disk_mb
                .map(|mb| format!("    ephemeral_disk {{\n      size = {mb}\n    }}\n"))
                .unwrap_or_default(),
            attempts = self.restart.0,
            delay = hcl_string(&self.restart.1),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_shell_job_renders() {
        let hcl = JobSpec::batch("j1")
            .shell("echo $$ > ${X}")
            .kill_signal("SIGTERM")
            .env("A", "b")
            .to_hcl();
        assert!(hcl.contains(r#"job "j1""#));
        assert!(hcl.contains(r#"type = "batch""#));
        assert!(hcl.contains(r#"driver = "bpfexec""#));
        assert!(hcl.contains(r#"args = ["-c", "echo $$ > $${X}"]"#));
        assert!(hcl.contains(r#"kill_signal = "SIGTERM""#));
        assert!(hcl.contains(r#"A = "b""#));
    }

    #[test]
    fn raw_config_replaces_body() {
        let hcl = JobSpec::service("j2")
            .raw_config(r#"args = ["x"]"#)
            .to_hcl();
        assert!(hcl.contains(r#"args = ["x"]"#));
        assert!(!hcl.contains("command"));
    }
}
