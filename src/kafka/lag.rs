//! The lag gauges, kept on a thread of their own. A lag update asks the
//! broker for every owned partition's log bounds: two requests and two
//! waits. On the consumer thread, every message fetched meanwhile waited
//! for them too, every five seconds (docs/performance.md, "Freshness").

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, ConsumerContext};

use crate::kafka::assignment::Assignment;
use crate::kafka::client;
use crate::ops::metrics::Metrics;
use crate::types::TopicPartition;

/// How often the lag gauges are updated.
const LAG_INTERVAL: Duration = Duration::from_secs(5);

/// The longest a lag update waits for the log bounds.
const LAG_TIMEOUT: Duration = Duration::from_millis(500);

/// The lag thread; dropping this stops it and waits for it (at most one
/// update in flight), so the consumer it shares is released on the
/// consumer's own thread.
pub(super) struct LagUpdates {
    /// Dropped to stop the thread.
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LagUpdates {
    /// Updates the gauges of `assignment`'s partitions now and every
    /// [`LAG_INTERVAL`], through `consumer`'s connections.
    pub fn spawn<C: ConsumerContext + 'static>(
        consumer: Arc<BaseConsumer<C>>,
        assignment: Assignment,
        metrics: Metrics,
    ) -> LagUpdates {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("kafka-lag".into())
            .spawn(move || loop {
                update(&consumer, &assignment, &metrics);
                match stopped.recv_timeout(LAG_INTERVAL) {
                    Err(RecvTimeoutError::Timeout) => continue,
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
            })
            .expect("spawn lag thread");
        LagUpdates {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for LagUpdates {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn update<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    assignment: &Assignment,
    metrics: &Metrics,
) {
    let tps: Vec<TopicPartition> = assignment
        .positions()
        .into_iter()
        .map(|(tp, _)| tp)
        .collect();
    let bounds = client::log_bounds_each(consumer, &tps, LAG_TIMEOUT);
    for (tp, bounds) in tps.iter().zip(bounds) {
        let Ok((low, high)) = bounds else { continue };
        // Revoked while the broker answered: setting its gauge would bring
        // back the series the revocation removed, frozen at this value.
        assignment.while_owned(tp, |planned| {
            let pos = planned.map_or(low, |o| o.0);
            metrics.set_lag(tp, (high - pos).max(0));
        });
    }
}
