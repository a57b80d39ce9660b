//! The fact bus: producers publish batches of [`Fact`]s without ever waiting; each sink reads
//! them from its own bounded queue. A sink that falls behind (or is gone) loses batches, counted
//! per sink, and never slows the probes' reader, a task or a Nomad RPC. Sinks that only want
//! lifecycle facts (Nomad's task events) get batches without process-level facts, so a fork or
//! signal storm can never crowd out a task's exit event.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use tokio::sync::mpsc;

use super::fact::Fact;

/// A batch of facts, shared by every sink that reads it.
pub type FactBatch = Arc<[Fact]>;

struct Port {
    name: &'static str,
    tx: mpsc::Sender<FactBatch>,
    process_level: bool,
    dropped: AtomicU64,
}

/// What a sink reads.
pub struct FactReceiver {
    rx: mpsc::Receiver<FactBatch>,
}

impl FactReceiver {
    /// The next batch; None once the bus is gone.
    pub async fn recv(&mut self) -> Option<FactBatch> {
        self.rx.recv().await
    }

    /// A batch if one is queued.
    pub fn try_recv(&mut self) -> Option<FactBatch> {
        self.rx.try_recv().ok()
    }
}

/// One producer side shared by the observer and the task table; sinks subscribe at start-up.
#[derive(Default)]
pub struct FactBus {
    ports: RwLock<Vec<Arc<Port>>>,
}

impl FactBus {
    #[must_use]
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Adds a sink named `name` with a queue of `capacity` batches; `process_level`: whether it
    /// wants exec/fork/exit and signal facts too.
    pub fn subscribe(
        &self,
        name: &'static str,
        capacity: usize,
        process_level: bool,
    ) -> FactReceiver {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        self.ports
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::new(Port {
                name,
                tx,
                process_level,
                dropped: AtomicU64::new(0),
            }));
        FactReceiver { rx }
    }

    /// Hands `facts` to every sink without waiting.
    pub fn publish(&self, facts: Vec<Fact>) {
        if facts.is_empty() {
            return;
        }
        let ports = self.ports.read().unwrap_or_else(PoisonError::into_inner);
        if ports.is_empty() {
            return;
        }
        let lifecycle_only = facts.iter().all(|f| !f.is_process_level());
        let all: FactBatch = facts.into();
        let mut lifecycle: Option<FactBatch> = lifecycle_only.then(|| Arc::clone(&all));
        for port in ports.iter() {
            let batch = if port.process_level {
                Arc::clone(&all)
            } else {
                let l = lifecycle.get_or_insert_with(|| {
                    all.iter()
                        .filter(|f| !f.is_process_level())
                        .cloned()
                        .collect::<Vec<_>>()
                        .into()
                });
                if l.is_empty() {
                    continue;
                }
                Arc::clone(l)
            };
            if let Err(mpsc::error::TrySendError::Full(lost)) = port.tx.try_send(batch) {
                let before = port.dropped.fetch_add(lost.len() as u64, Ordering::Relaxed);
                if before == 0 {
                    tracing::warn!(
                        sink = port.name,
                        "a telemetry sink fell behind; its facts are dropped and counted \
                         (bpfexec_sink_dropped_facts_total)"
                    );
                }
            }
        }
    }

    /// Facts each sink lost because its queue was full.
    pub fn dropped(&self) -> Vec<(&'static str, u64)> {
        self.ports
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|p| (p.name, p.dropped.load(Ordering::Relaxed)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observer::TaskKey;
    use crate::telemetry::fact::ProcessFact;

    fn exec(pid: u32) -> Fact {
        Fact::Process {
            key: TaskKey(1),
            at: std::time::UNIX_EPOCH,
            fact: ProcessFact::Exit {
                pid,
                comm: "x".into(),
            },
        }
    }

    fn notice() -> Fact {
        Fact::Notice {
            key: TaskKey(1),
            task_id: "t".into(),
            alloc_id: "a".into(),
            task_name: "n".into(),
            message: "m".into(),
            annotations: std::collections::BTreeMap::new(),
        }
    }

    #[test]
    fn a_full_sink_loses_and_counts_without_blocking_the_others() {
        let bus = FactBus::new();
        let mut slow = bus.subscribe("slow", 1, true);
        let mut fast = bus.subscribe("fast", 16, true);
        bus.publish(vec![exec(1), exec(2)]);
        bus.publish(vec![exec(3)]);
        bus.publish(vec![exec(4)]);
        assert_eq!(slow.try_recv().map(|b| b.len()), Some(2));
        assert!(slow.try_recv().is_none());
        let fast_total: usize = std::iter::from_fn(|| fast.try_recv())
            .map(|b| b.len())
            .sum();
        assert_eq!(fast_total, 4);
        assert_eq!(bus.dropped(), vec![("slow", 2), ("fast", 0)]);
    }

    #[test]
    fn lifecycle_sinks_never_see_process_storms() {
        let bus = FactBus::new();
        let mut events = bus.subscribe("nomad_events", 1, false);
        for pid in 0..100 {
            bus.publish(vec![exec(pid)]);
        }
        bus.publish(vec![exec(7), notice(), exec(8)]);
        let batch = events.try_recv().expect("the notice arrives");
        assert_eq!(batch.len(), 1);
        assert!(matches!(batch[0], Fact::Notice { .. }));
        assert_eq!(bus.dropped(), vec![("nomad_events", 0)]);
    }
}
