//! Exponential backoff with equal jitter: each delay is half the current cap
//! plus a random part of the other half, so retries of many replicas spread
//! out but never come back immediately. The one retry schedule of the sink
//! (commit retries, re-reading offsets, the rebalance callback's reads).

use std::time::Duration;

use rand::Rng;

#[derive(Clone, Debug)]
pub struct Backoff {
    cap: Duration,
    max: Duration,
    attempts: u32,
}

impl Backoff {
    /// Starts at `first` (the first cap) and doubles up to `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            cap: first,
            max,
            attempts: 0,
        }
    }

    /// The schedule used for the database: 100 ms doubling to 5 s.
    pub fn database() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(5))
    }

    /// The next delay to wait; advances the schedule.
    pub fn next_delay(&mut self) -> Duration {
        let cap = self.cap.as_millis().max(2) as u64;
        let delay = Duration::from_millis(rand::thread_rng().gen_range(cap / 2..=cap));
        self.cap = (self.cap * 2).min(self.max);
        self.attempts += 1;
        delay
    }

    /// Delays handed out so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_with_equal_jitter_up_to_the_max() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let caps = [100, 200, 400, 800, 800, 800];
        for cap in caps {
            let d = b.next_delay().as_millis() as u64;
            assert!(
                (cap / 2..=cap).contains(&d),
                "{d} outside [{}, {cap}]",
                cap / 2
            );
        }
        assert_eq!(b.attempts(), caps.len() as u32);
    }
}
