//! A small blocking client for the Nomad HTTP API (v1.10): jobs, allocations, task events, logs,
//! signals, nodes. The `wait_*` methods (e.g. [`Client::wait_alloc_status`]) always have a
//! timeout; their errors carry the allocation's task events and the tail of the agent log.

mod types;
mod waits;

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

pub use types::{Alloc, DriverInfo, Node, NodeStub, TaskEvent, TaskState};
pub use waits::LOG_TAIL_LINES;

/// Which log stream to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogType {
    /// The task's stdout.
    Stdout,
    /// The task's stderr.
    Stderr,
}

impl LogType {
    fn as_str(self) -> &'static str {
        match self {
            LogType::Stdout => "stdout",
            LogType::Stderr => "stderr",
        }
    }
}

/// Blocking Nomad API client bound to one agent's HTTP address.
pub struct Client {
    base: String,
    http: ureq::Agent,
    log_path: Option<PathBuf>,
    registered: Mutex<Vec<String>>,
}

impl Client {
    /// A client for `base` (e.g. `http://127.0.0.1:4646`).
    #[must_use]
    pub fn new(base: &str) -> Self {
        let http = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(crate::wait::scaled(Duration::from_secs(30))))
            .build()
            .new_agent();
        Client {
            base: base.trim_end_matches('/').to_owned(),
            http,
            log_path: None,
            registered: Mutex::new(Vec::new()),
        }
    }

    /// Same, with the agent log to quote in wait errors.
    #[must_use]
    pub fn with_log(mut self, log_path: PathBuf) -> Self {
        self.log_path = Some(log_path);
        self
    }

    /// The base address.
    #[must_use]
    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn finish(
        path: &str,
        resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<String> {
        let mut resp = resp.with_context(|| format!("HTTP request {path}"))?;
        let status = resp.status();
        let body = resp
            .body_mut()
            .read_to_string()
            .with_context(|| format!("reading the response body of {path}"))?;
        if !status.is_success() {
            bail!("{path}: HTTP {status}: {}", body.trim());
        }
        Ok(body)
    }

    /// GET `path` as text.
    pub fn get_text(&self, path: &str) -> Result<String> {
        Self::finish(path, self.http.get(&self.url(path)).call())
    }

    /// GET `path` as JSON.
    pub fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        let body = self.get_text(path)?;
        serde_json::from_str(&body).with_context(|| format!("decoding the JSON of {path}"))
    }

    /// POST `body` as JSON to `path`, returning the response JSON (`Null` for an empty body).
    pub fn post_json(&self, path: &str, body: &Value) -> Result<Value> {
        let text = Self::finish(path, self.http.post(&self.url(path)).send_json(body))?;
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).with_context(|| format!("decoding the JSON of {path}"))
    }

    /// PUT with an empty body.
    pub fn put_empty(&self, path: &str) -> Result<String> {
        Self::finish(path, self.http.put(&self.url(path)).send_empty())
    }

    /// DELETE `path`.
    pub fn delete(&self, path: &str) -> Result<String> {
        Self::finish(path, self.http.delete(&self.url(path)).call())
    }

    /// The current leader's RPC address (empty when there is none yet).
    pub fn leader(&self) -> Result<String> {
        self.get_json("/v1/status/leader")
    }

    /// All nodes.
    pub fn nodes(&self) -> Result<Vec<NodeStub>> {
        self.get_json("/v1/nodes")
    }

    /// One node with its drivers and attributes.
    pub fn node(&self, id: &str) -> Result<Node> {
        self.get_json(&format!("/v1/node/{id}"))
    }

    /// Parses a job from HCL (server-side, canonicalized) into its JSON form.
    pub fn parse_job(&self, hcl: &str) -> Result<Value> {
        self.post_json(
            "/v1/jobs/parse",
            &json!({ "JobHCL": hcl, "Canonicalize": true }),
        )
        .context("parsing the job HCL")
    }

    /// Registers a job given as HCL; returns its id.
    pub fn register_job(&self, hcl: &str) -> Result<String> {
        let job = self.parse_job(hcl)?;
        let id = job
            .get("ID")
            .and_then(Value::as_str)
            .context("parsed job has no ID")?
            .to_owned();
        self.post_json("/v1/jobs", &json!({ "Job": job }))
            .with_context(|| format!("registering job {id}"))?;
        if let Ok(mut r) = self.registered.lock() {
            r.push(id.clone());
        }
        Ok(id)
    }

    /// Ids of the jobs registered through this client, in order.
    #[must_use]
    pub fn registered_jobs(&self) -> Vec<String> {
        self.registered
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Ids of every job known to the cluster.
    pub fn jobs(&self) -> Result<Vec<String>> {
        let jobs: Vec<Value> = self.get_json("/v1/jobs")?;
        Ok(jobs
            .iter()
            .filter_map(|j| j.get("ID")?.as_str().map(str::to_owned))
            .collect())
    }

    /// Allocations of `job`, newest first.
    pub fn job_allocs(&self, job: &str) -> Result<Vec<Alloc>> {
        let mut allocs: Vec<Alloc> = self.get_json(&format!("/v1/job/{job}/allocations"))?;
        allocs.sort_by_key(|a| std::cmp::Reverse(a.create_index));
        Ok(allocs)
    }

    /// Every allocation in the cluster.
    pub fn allocs(&self) -> Result<Vec<Alloc>> {
        self.get_json("/v1/allocations")
    }

    /// One allocation with its task states.
    pub fn alloc(&self, id: &str) -> Result<Alloc> {
        self.get_json(&format!("/v1/allocation/{id}"))
    }

    /// Events of `task` in allocation `alloc`.
    pub fn task_events(&self, alloc: &str, task: &str) -> Result<Vec<TaskEvent>> {
        Ok(self.alloc(alloc)?.events(task))
    }

    /// The whole `stdout`/`stderr` log of a task so far (plain text, from the start).
    pub fn logs(&self, alloc: &str, task: &str, kind: LogType) -> Result<String> {
        self.get_text(&format!(
            "/v1/client/fs/logs/{alloc}?task={task}&type={}&plain=true&origin=start",
            kind.as_str()
        ))
    }

    /// Stops (deregisters) a job; `purge` also removes it from the state store.
    pub fn stop_job(&self, job: &str, purge: bool) -> Result<()> {
        self.delete(&format!("/v1/job/{job}?purge={purge}"))?;
        Ok(())
    }

    /// Sends `signal` (e.g. `SIGUSR1`) to `task` of an allocation.
    pub fn signal_alloc(&self, alloc: &str, task: &str, signal: &str) -> Result<()> {
        self.post_json(
            &format!("/v1/client/allocation/{alloc}/signal"),
            &json!({ "Task": task, "Signal": signal }),
        )?;
        Ok(())
    }

    /// Asks the local client to garbage-collect terminal allocations (destroys their alloc
    /// dirs, secrets mounts and cgroups).
    pub fn client_gc(&self) -> Result<()> {
        self.put_empty("/v1/client/gc")?;
        Ok(())
    }

    /// The client's resource usage of an allocation (`/v1/client/allocation/<id>/stats`): the
    /// TaskStats the driver streams, per task, with per-pid usage under `Pids`.
    pub fn alloc_stats(&self, alloc: &str) -> Result<Value> {
        self.get_json(&format!("/v1/client/allocation/{alloc}/stats"))
    }

    /// Evaluations of a job, for "why was nothing placed" diagnostics.
    pub fn job_evaluations(&self, job: &str) -> Result<Value> {
        self.get_json(&format!("/v1/job/{job}/evaluations"))
    }
}
