//! Ordering a task's end event before its exit: Nomad stops recording a task's events once its
//! task runner has the exit result from WaitTask, so an exit-reason event that reaches Nomad
//! later is lost. The Nomad-event sink notes each end event it sends; the TaskEvents stream notes
//! each event it hands to Nomad's connection; WaitTask answers once the task's end event has been
//! handed over (or a time limit passed: a missing subscriber must not hold Nomad up). Nomad reads
//! the event stream in goroutines of its own, which lag behind its task runner under load, so
//! WaitTask then also gives the event [`SETTLE`] to arrive. (Holding the DestroyTask that follows
//! the exit instead widens a window in which an agent stopped meanwhile restores the task as
//! running for good.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

#[derive(Default)]
struct End {
    /// The message of the newest end event sent for the task, once the sink has sent one.
    message: Option<String>,
    /// Whether that event has been handed to Nomad's TaskEvents stream.
    delivered: bool,
    /// When it was.
    delivered_at: Option<Instant>,
    notify: Arc<Notify>,
}

/// How long after its hand-over an end event is given to reach Nomad's task state.
pub const SETTLE: Duration = Duration::from_millis(250);

/// Per task: its end event's way from the sink to Nomad's stream.
#[derive(Default)]
pub struct EndDelivery {
    ends: Mutex<HashMap<String, End>>,
}

impl EndDelivery {
    fn ends(&self) -> std::sync::MutexGuard<'_, HashMap<String, End>> {
        self.ends.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The sink sent (or holds, for a recovered task) `message` as the task's end event.
    pub fn sent(&self, task_id: &str, message: &str) {
        let mut ends = self.ends();
        let end = ends.entry(task_id.to_owned()).or_default();
        end.message = Some(message.to_owned());
        end.delivered = false;
        end.delivered_at = None;
    }

    /// The TaskEvents stream handed an event of the task with `message` to Nomad.
    pub fn forwarded(&self, task_id: &str, message: &str) {
        let mut ends = self.ends();
        if let Some(end) = ends.get_mut(task_id)
            && end.message.as_deref() == Some(message)
        {
            end.delivered = true;
            end.delivered_at = Some(Instant::now());
            end.notify.notify_waiters();
        }
    }

    /// Returns once the task's end event has been handed to Nomad, or after `limit`; true when
    /// it was.
    pub async fn wait(&self, task_id: &str, limit: Duration) -> bool {
        let wait = async {
            loop {
                let notify = {
                    let mut ends = self.ends();
                    let end = ends.entry(task_id.to_owned()).or_default();
                    if end.delivered {
                        return;
                    }
                    Arc::clone(&end.notify)
                };
                let notified = notify.notified();
                tokio::pin!(notified);
                // Registered before the check below, so a hand-over in between still wakes us.
                notified.as_mut().enable();
                if self.ends().get(task_id).is_some_and(|e| e.delivered) {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }

    /// Returns once the task's end event, if it was handed over, has had [`SETTLE`] to reach
    /// Nomad.
    pub async fn settle(&self, task_id: &str) {
        let since = self.ends().get(task_id).and_then(|e| e.delivered_at);
        if let Some(left) = since.and_then(|at| SETTLE.checked_sub(at.elapsed())) {
            tokio::time::sleep(left).await;
        }
    }

    /// The task is gone (DestroyTask).
    pub fn forget(&self, task_id: &str) {
        self.ends().remove(task_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_for_the_hand_over_of_the_end_event() {
        let d = Arc::new(EndDelivery::default());
        let waiter = tokio::spawn({
            let d = Arc::clone(&d);
            async move { d.wait("t", Duration::from_secs(5)).await }
        });
        tokio::task::yield_now().await;
        d.sent("t", "Exited with code 3");
        d.forwarded("t", "a notice, not the end");
        d.forwarded("other", "Exited with code 3");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "only the end event counts");
        d.forwarded("t", "Exited with code 3");
        assert!(waiter.await.expect("joined"));
        // A second WaitTask of the same run answers at once.
        assert!(d.wait("t", Duration::from_millis(10)).await);
    }

    #[tokio::test]
    async fn the_answer_is_held_until_the_end_event_settled() {
        let d = EndDelivery::default();
        let t0 = Instant::now();
        d.settle("unknown").await;
        d.sent("t", "Exited normally");
        d.settle("t").await;
        assert!(t0.elapsed() < SETTLE / 2, "nothing handed over: no hold");
        let t0 = Instant::now();
        d.forwarded("t", "Exited normally");
        d.settle("t").await;
        assert!(t0.elapsed() + Duration::from_millis(5) >= SETTLE);
    }

    #[tokio::test]
    async fn gives_up_after_the_limit() {
        let d = EndDelivery::default();
        d.sent("t", "Exited normally");
        assert!(!d.wait("t", Duration::from_millis(20)).await);
        d.forget("t");
        assert!(d.ends().is_empty());
    }

    #[tokio::test]
    async fn a_newer_end_event_is_waited_for_again() {
        let d = EndDelivery::default();
        d.sent("t", "Exited normally");
        d.forwarded("t", "Exited normally");
        d.sent("t", "Exited normally (recovered)");
        assert!(!d.wait("t", Duration::from_millis(20)).await);
    }
}
