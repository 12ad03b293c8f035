//! Probes that cost the system under test nothing: CPU time of the sink,
//! Postgres and the broker read from /proc.

use crate::*;

/// CPU counters at one moment: the whole machine's busy and total time
/// (all cores, `/proc/stat`), one process's CPU time, and the CPU time of
/// Postgres and of the Kafka broker, in seconds.
#[derive(Clone, Copy)]
pub(crate) struct CpuMark {
    pub(crate) busy: f64,
    pub(crate) total: f64,
    pub(crate) process: f64,
    pub(crate) postgres: f64,
    pub(crate) broker: f64,
}

impl CpuMark {
    pub(crate) fn now(pid: Option<u32>) -> CpuMark {
        // cpu  user nice system idle iowait irq softirq steal (USER_HZ ticks)
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let ticks: Vec<f64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .take(8)
            .filter_map(|t| t.parse().ok())
            .collect();
        let total: f64 = ticks.iter().sum();
        let idle = ticks.get(3).unwrap_or(&0.0) + ticks.get(4).unwrap_or(&0.0);
        let (postgres, broker) = service_cpu();
        CpuMark {
            busy: (total - idle) / 100.0,
            total: total / 100.0,
            process: pid.map_or(0.0, |p| proc_stats(p).1),
            postgres,
            broker,
        }
    }
}

/// CPU seconds so far of every Postgres process (with the backends that
/// exited, which the postmaster counts as its children's time) and of the
/// Kafka broker's JVM: who, besides the sink, takes the cores.
pub(crate) fn service_cpu() -> (f64, f64) {
    let (mut postgres, mut broker) = (0.0, 0.0);
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return (0.0, 0.0);
    };
    for pid in dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()) {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let Some((head, [utime, stime, cutime, cstime])) = cpu_times(&stat) else {
            continue;
        };
        if head.ends_with("(postgres") {
            postgres += utime + stime + cutime + cstime;
        } else if head.ends_with("(java")
            && std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(11).any(|w| w == b"kafka.Kafka"))
        {
            broker += utime + stime;
        }
    }
    (postgres, broker)
}

/// Records CPU use since `since` under `prefix`: `machine_busy`, the share
/// of all cores busy (sink, Postgres, broker and anything else on the
/// machine), and `cpu_us_per_<unit>`, busy CPU time per unit of work, split
/// into `postgres_cpu_us_per_<unit>` and `broker_cpu_us_per_<unit>`; with
/// a process, also its own `process_cpu_us_per_<unit>`. The ceilings run one
/// Postgres backend; a sink phase shares the same cores with the broker and
/// its own parsing: this is what says whether a phase was bound by the
/// machine's CPU, and by whose.
pub(crate) fn record_cpu(
    out: &mut Results,
    prefix: &str,
    since: &CpuMark,
    pid: Option<u32>,
    unit: &str,
    units: usize,
) {
    let now = CpuMark::now(pid);
    let key = |s: String| prefixed(prefix, &s);
    let busy = now.busy - since.busy;
    out.insert(
        key("machine_busy".into()),
        json!(busy / (now.total - since.total).max(1e-9)),
    );
    let per_unit = |s: f64| s * 1e6 / units as f64;
    out.insert(key(format!("cpu_us_per_{unit}")), json!(per_unit(busy)));
    out.insert(
        key(format!("postgres_cpu_us_per_{unit}")),
        json!(per_unit(now.postgres - since.postgres)),
    );
    out.insert(
        key(format!("broker_cpu_us_per_{unit}")),
        json!(per_unit(now.broker - since.broker)),
    );
    if pid.is_some() {
        out.insert(
            key(format!("process_cpu_us_per_{unit}")),
            json!(per_unit(now.process - since.process)),
        );
    }
}

/// A process's peak resident memory (MB) and CPU seconds so far.
pub(crate) fn proc_stats(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let cpu = cpu_times(&stat).map_or(0.0, |(_, [utime, stime, ..])| utime + stime);
    (memory_mb(pid, "VmHWM:"), cpu)
}

/// One memory line of `/proc/<pid>/status` (`VmHWM:` peak, `VmRSS:` now),
/// in MB; 0 when unreadable.
pub(crate) fn memory_mb(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// A `/proc/<pid>/stat` line's text up to its command name's `(name`, and
/// its utime, stime, cutime and cstime in seconds (USER_HZ ticks / 100).
/// The name may hold spaces and parentheses: the fields start after its
/// last `)`.
pub(crate) fn cpu_times(stat: &str) -> Option<(&str, [f64; 4])> {
    let (head, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let mut next = || fields.next().map_or(0.0, |t| t.parse().unwrap_or(0.0)) / 100.0;
    Some((head, [next(), next(), next(), next()]))
}
