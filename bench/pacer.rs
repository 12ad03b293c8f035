//! A producer that holds a fixed rate, each event stamped with its send
//! time (the freshness phase's probe: bench/freshness.rs).

use crate::*;

/// The pacer's time slice: at most this long between its wake-ups while
/// events are due faster (a slice's events leave together).
const SLICE: Duration = Duration::from_millis(1);

/// A producer that holds a fixed rate.
pub(crate) struct Pacer {
    producer: std::sync::Arc<ThreadedProducer<DefaultProducerContext>>,
    topic: String,
}

/// What one paced segment sent.
pub(crate) struct Segment {
    pub events: usize,
    pub achieved_per_s: f64,
    /// The latest any event was sent after its scheduled time.
    pub max_late_ms: f64,
    /// The last key sent to each partition.
    pub last_keys: Vec<String>,
}

impl Pacer {
    pub fn new(b: &Bench, topic: &str) -> anyhow::Result<Pacer> {
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", &b.brokers)
            // Small, so the event leaves at once; the send time is in the event.
            .set(
                "linger.ms",
                std::env::var("BENCH_PACER_LINGER_MS").unwrap_or_else(|_| "1".into()),
            )
            .create()?;
        Ok(Pacer {
            producer: std::sync::Arc::new(producer),
            topic: topic.to_string(),
        })
    }

    /// Sends `rate × seconds` events with keys `<prefix>-<n>` at `rate`, on a
    /// thread of its own; returns once all are acknowledged.
    pub async fn run(&self, prefix: String, rate: f64, seconds: f64) -> anyhow::Result<Segment> {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || pace(&producer, &topic, &prefix, rate, seconds)).await?
    }
}

/// Event `n` of a segment, sent at `sent_us` (µs since the epoch): the
/// orders' shape (bench/data.rs) with the send time.
fn event(key: &str, n: usize, sent_us: i64) -> String {
    let cents = (n % 10_000) as i64 + 100;
    let s = n % 86_400;
    format!(
        r#"{{"order_id":"{key}","customer":"c{}","amount":{}.{:02},"currency":"{}","status":"new","version":1,"ts":"2026-11-27T{:02}:{:02}:{:02}Z","sent_us":{sent_us}}}"#,
        n % 1000,
        cents / 100,
        cents % 100,
        if n.is_multiple_of(3) { "USD" } else { "EUR" },
        s / 3600,
        s % 3600 / 60,
        s % 60
    )
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// The pacing loop, in slices of [`SLICE`]: every event due is sent
/// (event `n` is due at `start + n / rate`), each stamped with its own send
/// time, then the thread sleeps until the next slice. One wake-up per event
/// cost the bench a third of a core at 20k events/s.
fn pace(
    producer: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    prefix: &str,
    rate: f64,
    seconds: f64,
) -> anyhow::Result<Segment> {
    let total = events_at(rate, seconds);
    let start = Instant::now();
    let mut max_late = Duration::ZERO;
    let mut n = 0;
    while n < total {
        let now = Instant::now();
        let due = (((now - start).as_secs_f64() * rate) as usize + 1).min(total);
        while n < due {
            let late = Instant::now()
                .saturating_duration_since(start + Duration::from_secs_f64(n as f64 / rate));
            max_late = max_late.max(late);
            let key = format!("{prefix}-{n}");
            let payload = event(&key, n, now_us());
            let partition = (n % PARTITIONS as usize) as i32;
            loop {
                let rec = BaseRecord::to(topic)
                    .partition(partition)
                    .key(&key)
                    .payload(&payload);
                match producer.send(rec) {
                    Ok(()) => break,
                    // The queue is full: the broker is behind, not the pacer.
                    Err(_) => std::thread::sleep(Duration::from_micros(200)),
                }
            }
            n += 1;
        }
        if n < total {
            let next = start + Duration::from_secs_f64(n as f64 / rate);
            let wake = next.max(now + SLICE);
            std::thread::sleep(wake.saturating_duration_since(Instant::now()));
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    producer.flush(Duration::from_secs(60))?;
    let last_keys = (total.saturating_sub(PARTITIONS as usize)..total)
        .map(|n| format!("{prefix}-{n}"))
        .collect();
    Ok(Segment {
        events: total,
        // n events span n - 1 intervals of the schedule.
        achieved_per_s: (total - 1) as f64 / elapsed,
        max_late_ms: max_late.as_secs_f64() * 1e3,
        last_keys,
    })
}

/// Events of one rate's segment.
pub(crate) fn events_at(rate: f64, seconds: f64) -> usize {
    (rate * seconds).round().max(PARTITIONS as f64) as usize
}
