//! The `hashicorp.nomad.plugins.drivers.proto.Driver` gRPC service: thin glue from Nomad's
//! requests to the runtime, following the semantics in plugins/drivers (never a nil result or
//! stats aggregate, both inspect timestamps, handles that echo the TaskConfig).

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bpfexec_proto::drivers::{self, driver_server::Driver};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::config::schema;
use crate::errors::DriverError;
use crate::runtime::Runtime;
use crate::signals;
use crate::tasks::state::Outcome;

type RpcStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

const FINGERPRINT_PERIOD: Duration = Duration::from_secs(30);
const DEFAULT_STOP_SIGNAL: i32 = libc::SIGINT;
/// How long WaitTask waits for the task's end event to reach Nomad before answering.
const END_EVENT_WAIT: Duration = Duration::from_secs(1);

pub struct DriverService {
    rt: Arc<Runtime>,
}

impl DriverService {
    pub fn new(rt: Arc<Runtime>) -> Self {
        Self { rt }
    }
}

/// Runs `produce` in a task that feeds a gRPC server stream until the client goes away.
fn stream_from<T, F, Fut>(produce: F) -> RpcStream<T>
where
    T: Send + 'static,
    F: FnOnce(mpsc::Sender<Result<T, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(produce(tx));
    Box::pin(ReceiverStream::new(rx))
}

fn exit_result(o: &Outcome) -> drivers::ExitResult {
    drivers::ExitResult {
        exit_code: o.exit_code,
        signal: o.signal,
        oom_killed: o.oom_killed,
    }
}

fn timestamp_ms(ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp::from(UNIX_EPOCH + Duration::from_millis(ms))
}

fn duration(d: Option<&prost_types::Duration>) -> Duration {
    d.and_then(|d| Duration::try_from(*d).ok())
        .unwrap_or_default()
}

#[tonic::async_trait]
impl Driver for DriverService {
    async fn task_config_schema(
        &self,
        _: Request<drivers::TaskConfigSchemaRequest>,
    ) -> Result<Response<drivers::TaskConfigSchemaResponse>, Status> {
        Ok(Response::new(drivers::TaskConfigSchemaResponse {
            spec: Some(schema::task_schema()),
        }))
    }

    async fn capabilities(
        &self,
        _: Request<drivers::CapabilitiesRequest>,
    ) -> Result<Response<drivers::CapabilitiesResponse>, Status> {
        use drivers::driver_capabilities::{FsIsolation, MountConfigs};
        use drivers::network_isolation_spec::NetworkIsolationMode;
        Ok(Response::new(drivers::CapabilitiesResponse {
            capabilities: Some(drivers::DriverCapabilities {
                send_signals: true,
                exec: true,
                // IMAGE: the client builds no chroot; we assemble the task's root ourselves.
                fs_isolation: FsIsolation::Image as i32,
                network_isolation_modes: vec![
                    NetworkIsolationMode::Host as i32,
                    NetworkIsolationMode::Group as i32,
                ],
                must_create_network: false,
                mount_configs: MountConfigs::UnknownMounts as i32,
                disable_log_collection: false,
                dynamic_workload_users: false,
            }),
        }))
    }

    type FingerprintStream = RpcStream<drivers::FingerprintResponse>;

    async fn fingerprint(
        &self,
        _: Request<drivers::FingerprintRequest>,
    ) -> Result<Response<Self::FingerprintStream>, Status> {
        let rt = self.rt.clone();
        Ok(Response::new(stream_from(move |tx| async move {
            let mut last: Option<drivers::FingerprintResponse> = None;
            loop {
                let fp = crate::fingerprint::current(&rt).await;
                if last.as_ref() != Some(&fp) {
                    if tx.send(Ok(fp.clone())).await.is_err() {
                        return;
                    }
                    last = Some(fp);
                }
                tokio::select! {
                    () = tokio::time::sleep(FINGERPRINT_PERIOD) => {}
                    () = tx.closed() => return,
                }
            }
        })))
    }

    async fn recover_task(
        &self,
        req: Request<drivers::RecoverTaskRequest>,
    ) -> Result<Response<drivers::RecoverTaskResponse>, Status> {
        let handle = req
            .into_inner()
            .handle
            .ok_or_else(|| Status::invalid_argument("RecoverTask needs a task handle"))?;
        self.rt.tasks.recover(&handle)?;
        Ok(Response::new(drivers::RecoverTaskResponse {}))
    }

    async fn start_task(
        &self,
        req: Request<drivers::StartTaskRequest>,
    ) -> Result<Response<drivers::StartTaskResponse>, Status> {
        let cfg = req
            .into_inner()
            .task
            .ok_or_else(|| Status::invalid_argument("StartTask needs a task config"))?;
        let received = std::time::Instant::now();
        let ctx = self.rt.configured()?.start;
        let state = self
            .rt
            .tasks
            .start(&ctx, cfg.clone(), received)
            .await
            .inspect_err(|e| {
                tracing::warn!(task_id = %cfg.id, error = %e, "task did not start");
            })?;
        // From StartTask received to the task's command running (its exec succeeded).
        let micros = received.elapsed().as_micros() as u64;
        tracing::info!(task_id = %cfg.id, start_us = micros, "StartTask done: command running");
        let handle = drivers::TaskHandle {
            version: 1,
            config: Some(cfg),
            state: drivers::TaskState::Running as i32,
            driver_state: state.encode(),
        };
        Ok(Response::new(drivers::StartTaskResponse {
            result: drivers::start_task_response::Result::Success as i32,
            driver_error_msg: String::new(),
            handle: Some(handle),
            network_override: None,
        }))
    }

    async fn wait_task(
        &self,
        req: Request<drivers::WaitTaskRequest>,
    ) -> Result<Response<drivers::WaitTaskResponse>, Status> {
        let task = self.rt.tasks.get(&req.into_inner().task_id)?;
        let delivered = self.rt.tasks.observation.release(&task.state.task_id);
        let outcome = task.wait().await;
        if let Some(at) = delivered {
            tokio::time::sleep_until(at).await;
        }
        let observation = &self.rt.tasks.observation;
        if !observation
            .end_delivered(&task.state.task_id, END_EVENT_WAIT)
            .await
        {
            tracing::debug!(task_id = %task.state.task_id, "the task's end event was not handed to Nomad in time; answering WaitTask anyway");
        }
        observation.end_settled(&task.state.task_id).await;
        Ok(Response::new(drivers::WaitTaskResponse {
            result: Some(exit_result(&outcome)),
            err: outcome.err.unwrap_or_default(),
        }))
    }

    async fn stop_task(
        &self,
        req: Request<drivers::StopTaskRequest>,
    ) -> Result<Response<drivers::StopTaskResponse>, Status> {
        let req = req.into_inner();
        let signal = if req.signal.is_empty() {
            DEFAULT_STOP_SIGNAL
        } else {
            signals::parse(&req.signal).ok_or_else(|| DriverError::BadSignal(req.signal.clone()))?
        };
        self.rt
            .tasks
            .stop(&req.task_id, duration(req.timeout.as_ref()), signal)
            .await?;
        Ok(Response::new(drivers::StopTaskResponse {}))
    }

    async fn destroy_task(
        &self,
        req: Request<drivers::DestroyTaskRequest>,
    ) -> Result<Response<drivers::DestroyTaskResponse>, Status> {
        let req = req.into_inner();
        let state_dir = self.rt.configured().ok().map(|c| c.start.plugin.state_dir);
        self.rt
            .tasks
            .destroy(&req.task_id, req.force, state_dir.as_deref())
            .await?;
        Ok(Response::new(drivers::DestroyTaskResponse {}))
    }

    async fn inspect_task(
        &self,
        req: Request<drivers::InspectTaskRequest>,
    ) -> Result<Response<drivers::InspectTaskResponse>, Status> {
        let task = self.rt.tasks.get(&req.into_inner().task_id)?;
        let outcome = task.outcome();
        let state = if outcome.is_some() {
            drivers::TaskState::Exited
        } else {
            drivers::TaskState::Running
        };
        let status = drivers::TaskStatus {
            id: task.config.id.clone(),
            name: task.config.name.clone(),
            state: state as i32,
            started_at: Some(timestamp_ms(task.state.started_at_ms)),
            // Go drivers send the zero time while running; the client needs the field present.
            completed_at: Some(outcome.as_ref().map_or(
                prost_types::Timestamp {
                    seconds: -62_135_596_800,
                    nanos: 0,
                },
                |o| timestamp_ms(o.finished_at_ms),
            )),
            result: outcome.as_ref().map(exit_result),
        };
        let attributes = [
            ("pid".to_owned(), task.state.pid.to_string()),
            (
                "supervisor_pid".to_owned(),
                task.state.supervisor_pid.to_string(),
            ),
        ]
        .into();
        Ok(Response::new(drivers::InspectTaskResponse {
            task: Some(status),
            driver: Some(drivers::TaskDriverStatus { attributes }),
            network_override: None,
        }))
    }

    type TaskStatsStream = RpcStream<drivers::TaskStatsResponse>;

    async fn task_stats(
        &self,
        req: Request<drivers::TaskStatsRequest>,
    ) -> Result<Response<Self::TaskStatsStream>, Status> {
        let req = req.into_inner();
        let task = self.rt.tasks.get(&req.task_id)?;
        let interval = duration(req.collection_interval.as_ref()).max(Duration::from_millis(100));
        let mhz = self.rt.configured().map_or(0.0, |c| c.compute.mhz_per_core);
        let observation = Arc::clone(&self.rt.tasks.observation);
        tracing::debug!(task_id = %req.task_id, interval_ms = interval.as_millis() as u64, "TaskStats stream opened");
        Ok(Response::new(stream_from(move |tx| async move {
            let mut sampler = crate::stats::Sampler::new(mhz);
            let mut ticker = tokio::time::interval(interval);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    () = tx.closed() => return,
                }
                if !task.is_running() {
                    return;
                }
                // Per-pid usage covers every process the probes attribute to the task.
                let pids = observation.pids_of(&task);
                let stats = sampler.sample(&task.state.task_id, task.state.cgroups.as_ref(), &pids);
                if tx
                    .send(Ok(drivers::TaskStatsResponse { stats: Some(stats) }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        })))
    }

    type TaskEventsStream = RpcStream<drivers::DriverTaskEvent>;

    async fn task_events(
        &self,
        _: Request<drivers::TaskEventsRequest>,
    ) -> Result<Response<Self::TaskEventsStream>, Status> {
        let mut rx = self.rt.events.subscribe();
        let observation = Arc::clone(&self.rt.tasks.observation);
        let events = stream_from(move |tx| async move {
            loop {
                tokio::select! {
                    ev = rx.recv() => match ev {
                        Ok(ev) => if tx.send(Ok(ev)).await.is_err() { return },
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => tracing::warn!(missed = n, "task events were dropped: Nomad read them too slowly"),
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    },
                    () = tx.closed() => return,
                }
            }
        });
        // Marked handed over when tonic takes the event to write it to Nomad's connection.
        Ok(Response::new(Box::pin(events.inspect(move |ev| {
            if let Ok(ev) = ev {
                observation.event_forwarded(&ev.task_id, &ev.message);
            }
        }))))
    }

    async fn signal_task(
        &self,
        req: Request<drivers::SignalTaskRequest>,
    ) -> Result<Response<drivers::SignalTaskResponse>, Status> {
        let req = req.into_inner();
        let signal = signals::parse(&req.signal)
            .ok_or_else(|| DriverError::BadSignal(req.signal.clone()))?;
        self.rt.tasks.signal(&req.task_id, signal)?;
        let task = self.rt.tasks.get(&req.task_id)?;
        tracing::info!(task_id = %req.task_id, signal = %signals::name(signal), pid = task.state.pid, "signal sent");
        Ok(Response::new(drivers::SignalTaskResponse {}))
    }

    async fn exec_task(
        &self,
        req: Request<drivers::ExecTaskRequest>,
    ) -> Result<Response<drivers::ExecTaskResponse>, Status> {
        let req = req.into_inner();
        let task = self.rt.tasks.get(&req.task_id)?;
        let resp =
            crate::tasks::exec::run_once(&task, &req.command, duration(req.timeout.as_ref()))
                .await?;
        Ok(Response::new(resp))
    }

    type ExecTaskStreamingStream = RpcStream<drivers::ExecTaskStreamingResponse>;

    async fn exec_task_streaming(
        &self,
        req: Request<Streaming<drivers::ExecTaskStreamingRequest>>,
    ) -> Result<Response<Self::ExecTaskStreamingStream>, Status> {
        let mut inbound = req.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("exec stream closed before its setup frame"))?;
        let setup = first
            .setup
            .ok_or_else(|| Status::invalid_argument("the first exec frame must carry setup"))?;
        let task = self.rt.tasks.get(&setup.task_id)?;
        Ok(Response::new(stream_from(move |tx| async move {
            if let Err(e) =
                crate::tasks::exec::run_streaming(&task, setup, inbound, tx.clone()).await
            {
                let _ = tx.send(Err(e.into())).await;
            }
        })))
    }

    async fn create_network(
        &self,
        _: Request<drivers::CreateNetworkRequest>,
    ) -> Result<Response<drivers::CreateNetworkResponse>, Status> {
        Err(DriverError::Unsupported(
            "bpfexec does not create networks; Nomad's network hook does".into(),
        )
        .into())
    }

    async fn destroy_network(
        &self,
        _: Request<drivers::DestroyNetworkRequest>,
    ) -> Result<Response<drivers::DestroyNetworkResponse>, Status> {
        Err(DriverError::Unsupported(
            "bpfexec does not create networks; Nomad's network hook does".into(),
        )
        .into())
    }
}
