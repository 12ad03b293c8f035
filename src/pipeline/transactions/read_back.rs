//! What the sink's admission does to what it consumes, for messages read
//! outside the consumer (`verify` folds ranges of the log into a copy of
//! the table): markers are positions, not rows; with whole source
//! transactions the gate releases the changes — whole, in commit order,
//! each row's last change stamped with its transaction's commit — so the
//! copy gets the positions the sink wrote.

use std::sync::Arc;

use super::{is_marker, Gate, Overflow};
use crate::config::route_set::RouteSet;
use crate::config::SourceTransactions;
use crate::kafka::assignment::{Envelope, Polled};
use crate::kafka::message::SourceMessage;

pub struct ReadBack {
    gate: Option<Gate>,
}

impl ReadBack {
    pub fn new(cfg: &SourceTransactions, routes: Arc<RouteSet>) -> ReadBack {
        let gate = cfg.enabled.then(|| {
            Gate::new(cfg.max_buffered_events, cfg.on_overflow, move |topic| {
                routes.matching(topic).is_some()
            })
        });
        ReadBack { gate }
    }

    /// Takes a chunk in (offset order per partition); what the sink would
    /// apply of what was read so far, markers left out.
    pub fn admit(&mut self, chunk: Vec<SourceMessage>) -> Result<Vec<SourceMessage>, Overflow> {
        let Some(gate) = &mut self.gate else {
            return Ok(chunk.into_iter().filter(|m| !is_marker(m)).collect());
        };
        for m in chunk {
            gate.push(Envelope::message(m, 1));
        }
        Ok(messages(gate.release()?))
    }

    /// At the end of the ranges: what the gate still holds, as read. The
    /// sink's stored positions sit on transaction boundaries, so a range
    /// read from the log's start leaves nothing here; one read from later
    /// can leave transactions it caught in part.
    pub fn rest(&mut self) -> Vec<SourceMessage> {
        let Some(gate) = &mut self.gate else {
            return Vec::new();
        };
        let rest = messages(gate.drain());
        if !rest.is_empty() {
            tracing::warn!(
                changes = rest.len(),
                "source transactions read in part (the range starts inside them): \
                 applied as read"
            );
        }
        rest
    }
}

/// The messages among what the gate released (markers come out as
/// positions, which a range read has no use for).
fn messages(released: Vec<Envelope>) -> Vec<SourceMessage> {
    released
        .into_iter()
        .filter_map(|env| match env.item {
            Polled::Message(m) => Some(m),
            _ => None,
        })
        .collect()
}
