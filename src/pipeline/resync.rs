//! Keeping planned positions equal to the stored ones when something else
//! moved them: a replay (NOTIFY on the LISTEN connection), a lost database
//! connection (a failover may have moved positions back), a fence, or a
//! partition whose position fell out of its log (the out-of-range policy).

use std::collections::HashMap;
use std::time::Duration;

use sqlx::postgres::PgListener;

use super::Pipeline;
use crate::backoff::Backoff;
use crate::kafka::assignment::{Envelope, Generation, Polled};
use crate::kafka::consumer::Command;
use crate::store::offsets::{self, OffsetReset, REPLAY_CHANNEL};
use crate::types::{Offset, TopicPartition};

/// The LISTEN connection, and the re-read of positions it may owe after the
/// connection was lost (at most one attempt per RESYNC_RETRY).
pub(super) struct Watch {
    pub(super) listener: Option<PgListener>,
    pub(super) resync_at: Option<tokio::time::Instant>,
    pub(super) last_resync: Option<tokio::time::Instant>,
}

/// Pause between attempts to re-read positions after a lost connection.
pub(super) const RESYNC_RETRY: Duration = Duration::from_secs(1);

/// What the LISTEN connection reported.
pub(super) enum Notice {
    /// A replay rewrote the positions of a group (the payload).
    Offsets(String),
    /// The connection was lost: notifications may have been missed, and
    /// stored positions may have moved (a failover).
    Lost,
}

pub(super) async fn recv_notification(listener: &mut Option<PgListener>) -> Notice {
    match listener {
        Some(l) => match l.try_recv().await {
            Ok(Some(n)) => Notice::Offsets(n.payload().to_string()),
            // Returned at once (no await after the loss is seen), so a
            // cancelled branch cannot swallow it.
            Ok(None) => Notice::Lost,
            Err(e) => {
                tracing::debug!(error = %e, "LISTEN connection error");
                Notice::Lost
            }
        },
        None => std::future::pending().await,
    }
}

impl Pipeline {
    /// A replay notice re-reads the group's positions; a lost connection
    /// schedules a re-read for when the database answers again.
    pub(super) async fn on_notice(&self, watch: &mut Watch, n: Notice) {
        match n {
            Notice::Offsets(group) if group == self.group() => {
                tracing::info!("offsets rewritten (replay): re-reading positions");
                self.resync_all().await;
            }
            Notice::Offsets(_) => {}
            Notice::Lost => {
                tracing::warn!(
                    "database connection lost: re-reading stored positions once it answers \
                     (a failover may have moved them back)"
                );
                watch.listener = None;
                let now = tokio::time::Instant::now();
                watch.resync_at =
                    Some(watch.last_resync.map_or(now, |t| now.max(t + RESYNC_RETRY)));
            }
        }
    }

    /// The re-read after a lost connection: LISTEN again, then positions;
    /// tried again after RESYNC_RETRY while the database does not answer.
    pub(super) async fn resync_due(&self, watch: &mut Watch) {
        let now = tokio::time::Instant::now();
        watch.last_resync = Some(now);
        let done = self.relisten_and_resync(&mut watch.listener).await;
        watch.resync_at = (!done).then_some(now + RESYNC_RETRY);
    }

    pub(super) async fn listen(&self) -> Option<PgListener> {
        self.try_listen()
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "LISTEN failed; replays are noticed at the next fence")
            })
            .ok()
    }

    /// A LISTEN connection that reports a lost connection at once (instead
    /// of reconnecting first, which a cancelled `select!` branch could cut
    /// short, losing the report).
    pub(super) async fn try_listen(&self) -> Result<PgListener, sqlx::Error> {
        let mut l = PgListener::connect_with(self.writer.pool()).await?;
        l.eager_reconnect(false);
        l.listen(REPLAY_CHANNEL).await?;
        Ok(l)
    }

    /// After a lost connection: LISTEN again, then re-read every position
    /// (in this order, so a replay committed after the read is notified).
    /// False while the database does not answer.
    pub(super) async fn relisten_and_resync(&self, listener: &mut Option<PgListener>) -> bool {
        if listener.is_none() {
            match self.try_listen().await {
                Ok(l) => *listener = Some(l),
                Err(_) => return false,
            }
        }
        self.resync_all().await
    }

    /// Acts on out-of-range reports; returns the other envelopes.
    pub(super) async fn handle_out_of_range(&self, envs: Vec<Envelope>) -> Vec<Envelope> {
        if !envs
            .iter()
            .any(|e| matches!(e.item, Polled::OutOfRange { .. }))
        {
            return envs;
        }
        let (out_of_range, envs): (Vec<Envelope>, Vec<Envelope>) = envs
            .into_iter()
            .partition(|e| matches!(e.item, Polled::OutOfRange { .. }));
        for e in out_of_range {
            if let Polled::OutOfRange {
                tp,
                position,
                low,
                high,
            } = e.item
            {
                let reset = OffsetReset::plan(&tp, position, low, high, self.out_of_range);
                self.on_out_of_range(&tp, e.generation, reset, (position, low, high))
                    .await;
            }
        }
        envs
    }

    /// A partition's position is outside its log. Policy `fail` stops the
    /// partition (loudly); `earliest`/`latest` move the stored position, with
    /// the move and the records never read recorded in the same transaction,
    /// then seek there.
    pub(super) async fn on_out_of_range(
        &self,
        tp: &TopicPartition,
        generation: Generation,
        reset: Option<OffsetReset>,
        (position, low, high): (Offset, Offset, Offset),
    ) {
        self.metrics
            .out_of_range
            .with_label_values(&[self.out_of_range.as_str()])
            .inc();
        let Some(reset) = reset else {
            if self.assignment.stall(tp, generation) {
                self.metrics.set_stalled(tp, true);
                tracing::error!(
                    %tp, %position, log_start = %low, log_end = %high,
                    "stored position is outside the partition's log (retention deleted unread records, \
                     or the topic was recreated); partition stopped (kafka.on_offset_out_of_range = \"fail\"). \
                     Move it with `kafka-pg-sink replay --topic {} --partition {} --to-earliest` (or --to-offset)",
                    tp.topic, tp.partition
                );
            }
            return;
        };
        let mut backoff = Backoff::database();
        loop {
            if !self.assignment.is_current(tp, generation) {
                return; // a seek or a rebalance came first
            }
            let planned = self.assignment.planned(tp).flatten();
            match offsets::reset(self.writer.pool(), self.group(), planned, &reset).await {
                Ok(moved) => {
                    if moved {
                        self.metrics.count_lost(tp, reset.lost);
                        tracing::warn!(
                            %tp, from = %reset.from, to = %reset.to, log_start = %low, log_end = %high,
                            lost = reset.lost, policy = reset.policy,
                            "stored position was outside the partition's log; moved (recorded in sink_offset_resets)"
                        );
                    }
                    self.resync(std::slice::from_ref(tp)).await;
                    return;
                }
                Err(e) => {
                    self.metrics.db_retries.inc();
                    tracing::warn!(error = %e, "recording the offset reset failed; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }

    /// Stored positions of `tps`, retrying until Postgres answers.
    pub(super) async fn read_stored(
        &self,
        tps: &[TopicPartition],
    ) -> HashMap<TopicPartition, Offset> {
        let mut backoff = Backoff::database();
        loop {
            match offsets::read(self.writer.pool(), self.group(), tps).await {
                Ok(s) => return s,
                Err(e) => {
                    self.metrics.db_retries.inc();
                    tracing::warn!(error = %e, "re-reading offsets failed; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }

    /// Re-reads stored positions and seeks every given partition there.
    pub(super) async fn resync(&self, tps: &[TopicPartition]) {
        let stored = self.read_stored(tps).await;
        let seeks = self.assignment.begin_seek(tps, &stored);
        // Before the consumer seeks: the gate forgets what it will read again.
        self.admission.lock().expect("admission").rewound(&seeks);
        for (tp, off) in seeks {
            let _ = self.commands.send(Command::Seek(tp, off));
        }
    }

    /// After a replay NOTIFY or a lost connection: seek partitions whose
    /// stored position differs from what this process planned. Returns
    /// false if the positions could not be read.
    pub(super) async fn resync_all(&self) -> bool {
        let owned = self.assignment.positions();
        let tps: Vec<TopicPartition> = owned.iter().map(|(tp, _)| tp.clone()).collect();
        let Ok(stored) = offsets::read(self.writer.pool(), self.group(), &tps).await else {
            return false;
        };
        let changed: Vec<TopicPartition> = owned
            .into_iter()
            .filter(|(tp, planned)| stored.get(tp).copied() != *planned)
            .map(|(tp, _)| tp)
            .collect();
        if !changed.is_empty() {
            tracing::info!(partitions = ?changed, "stored positions differ from the planned ones; seeking");
            self.resync(&changed).await;
        }
        true
    }
}
