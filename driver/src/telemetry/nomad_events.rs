//! Sink: Nomad task events (the driver's TaskEvents stream, shown by `nomad alloc status`). Live
//! notices and each run's end become `DriverTaskEvent`s. Nomad drops events for allocations it
//! has not registered yet, which is the case while it restores them (RecoverTask), so the events
//! of a recovered task are held until Nomad waits on it again (WaitTask), then sent a moment
//! later.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use bpfexec_proto::drivers;
use tokio::sync::broadcast;

use super::bus::{FactBus, FactReceiver};
use super::end_delivery::EndDelivery;
use super::fact::Fact;
use super::ids;

/// How long after Nomad's WaitTask held events are delivered.
const RELEASE_DELAY: Duration = Duration::from_secs(1);
/// Batches the sink may fall behind by (lifecycle facts only: a few per task).
const QUEUE: usize = 4096;

/// A Nomad task event for the TaskEvents stream.
pub fn task_event(
    task_id: &str,
    alloc_id: &str,
    task_name: &str,
    at: SystemTime,
    message: String,
    annotations: BTreeMap<String, String>,
) -> drivers::DriverTaskEvent {
    drivers::DriverTaskEvent {
        task_id: task_id.to_owned(),
        alloc_id: alloc_id.to_owned(),
        task_name: task_name.to_owned(),
        timestamp: Some(prost_types::Timestamp::from(at)),
        message,
        annotations: annotations.into_iter().collect(),
    }
}

struct Outbox {
    events: broadcast::Sender<drivers::DriverTaskEvent>,
    held: Mutex<HashMap<String, Vec<drivers::DriverTaskEvent>>>,
    /// Exit events carry the run's trace id (trace export is on).
    trace_ids: AtomicBool,
    /// Where WaitTask learns that a task's end event has reached Nomad's stream.
    ends: Arc<EndDelivery>,
}

impl Outbox {
    fn send(&self, event: drivers::DriverTaskEvent) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(queue) = held.get_mut(&event.task_id) {
            queue.push(event);
        } else {
            let _ = self.events.send(event);
        }
    }

    fn event_of(&self, fact: &Fact) -> Option<drivers::DriverTaskEvent> {
        match fact {
            Fact::Notice {
                task_id,
                alloc_id,
                task_name,
                message,
                annotations,
                ..
            } => Some(task_event(
                task_id,
                alloc_id,
                task_name,
                SystemTime::now(),
                message.clone(),
                annotations.clone(),
            )),
            Fact::Ended { task, end } => {
                let mut annotations = end.annotations.clone();
                if self.trace_ids.load(Ordering::Relaxed) {
                    annotations.insert(
                        "trace_id".to_owned(),
                        ids::trace_id(&task.task_id).to_string(),
                    );
                }
                Some(task_event(
                    &task.task_id,
                    &task.alloc_id,
                    &task.task_name,
                    end.at,
                    end.message.clone(),
                    annotations,
                ))
            }
            _ => None,
        }
    }
}

/// The Nomad task-event sink.
pub struct NomadEvents {
    outbox: Arc<Outbox>,
}

impl NomadEvents {
    /// Subscribes to `bus` and forwards to `events` (what the TaskEvents RPC streams). Must be
    /// called inside a tokio runtime.
    pub fn start(bus: &FactBus, events: broadcast::Sender<drivers::DriverTaskEvent>) -> Self {
        let outbox = Arc::new(Outbox {
            events,
            held: Mutex::new(HashMap::new()),
            trace_ids: AtomicBool::new(false),
            ends: Arc::new(EndDelivery::default()),
        });
        tokio::spawn(run(
            bus.subscribe("nomad_events", QUEUE, false),
            Arc::clone(&outbox),
        ));
        Self { outbox }
    }

    /// Where the TaskEvents stream reports what it handed to Nomad and WaitTask waits for a
    /// task's end event.
    #[must_use]
    pub fn ends(&self) -> Arc<EndDelivery> {
        Arc::clone(&self.outbox.ends)
    }

    /// Exit events name the run's trace id from now on.
    pub fn annotate_trace_ids(&self) {
        self.outbox.trace_ids.store(true, Ordering::Relaxed);
    }

    /// Holds the task's events until [`NomadEvents::release`] (RecoverTask).
    pub fn hold(&self, task_id: &str) {
        self.outbox
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(task_id.to_owned())
            .or_default();
    }

    /// Nomad waits on the task again: deliver what was held, a moment later so the restored
    /// allocation is registered for events by then. Returns when they will have been sent, for
    /// a held task (facts published at recovery reach this sink well within that delay).
    pub fn release(&self, task_id: &str) -> Option<tokio::time::Instant> {
        let held = self
            .outbox
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(task_id);
        if !held {
            return None;
        }
        let outbox = Arc::clone(&self.outbox);
        let task_id = task_id.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(RELEASE_DELAY).await;
            let queued = outbox
                .held
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&task_id);
            for event in queued.unwrap_or_default() {
                let _ = outbox.events.send(event);
            }
        });
        Some(tokio::time::Instant::now() + RELEASE_DELAY * 2)
    }
}

async fn run(mut facts: FactReceiver, outbox: Arc<Outbox>) {
    while let Some(batch) = facts.recv().await {
        for fact in batch.iter() {
            let Some(event) = outbox.event_of(fact) else {
                continue;
            };
            if matches!(fact, Fact::Ended { .. }) {
                outbox.ends.sent(&event.task_id, &event.message);
            }
            outbox.send(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observer::TaskKey;
    use crate::telemetry::fact::{EndKind, TaskEnd, TaskIdentity};

    fn ended(task_id: &str) -> Fact {
        Fact::Ended {
            task: Arc::new(TaskIdentity {
                task_id: task_id.into(),
                alloc_id: "a".into(),
                task_name: "web".into(),
                ..TaskIdentity::default()
            }),
            end: TaskEnd {
                at: SystemTime::now(),
                exit_code: 3,
                signal: 0,
                oom_killed: false,
                kind: EndKind::ExitedError,
                reason: None,
                message: "Exited with code 3".into(),
                annotations: BTreeMap::from([("reason".into(), "exited".into())]),
            },
        }
    }

    #[tokio::test]
    async fn ends_and_notices_become_events_held_ones_wait_for_release() {
        let bus = FactBus::new();
        let (tx, mut rx) = broadcast::channel(16);
        let sink = NomadEvents::start(&bus, tx);
        sink.annotate_trace_ids();
        sink.hold("held");
        bus.publish(vec![
            ended("held"),
            Fact::Notice {
                key: TaskKey(1),
                task_id: "t1".into(),
                alloc_id: "a".into(),
                task_name: "web".into(),
                message: "Child process pid 9 (x) crashed".into(),
                annotations: BTreeMap::new(),
            },
            ended("t1"),
        ]);
        let first = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("event")
            .expect("open");
        assert!(first.message.contains("crashed"));
        let second = rx.recv().await.expect("open");
        assert_eq!(second.task_id, "t1");
        assert_eq!(
            second.annotations.get("trace_id").map(String::len),
            Some(32),
            "{second:?}"
        );
        assert!(rx.try_recv().is_err(), "the held task's event waits");
        assert!(sink.release("t1").is_none(), "nothing held for t1");
        assert!(sink.release("held").is_some());
        let held = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("released")
            .expect("open");
        assert_eq!(held.task_id, "held");
    }
}
