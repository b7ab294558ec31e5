//! `GET /metrics`: the Prometheus text format, written by hand.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use corral_record::Reason;

use crate::wire::{BudgetStatus, IoBudgetDevice, IoBudgetStatus, RunState, UserUsage};

/// Launch-latency bucket bounds in seconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A fixed-bucket histogram with atomic counters.
#[derive(Debug)]
pub struct Histogram {
    counts: Vec<AtomicU64>,
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: LATENCY_BUCKETS.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            if s <= *b {
                self.counts[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str) {
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{b}\"}} {}",
                self.counts[i].load(Ordering::Relaxed)
            );
        }
        let n = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {n}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {n}");
    }
}

/// The service's own counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Admission to the child's start.
    pub launch_latency: Histogram,
    /// Submissions accepted (201).
    pub accepted: AtomicU64,
    /// Submissions answered with an existing run (idempotency key, 200).
    pub idempotent: AtomicU64,
    /// Submissions refused (4xx, 503).
    pub refused: AtomicU64,
    /// Output files removed after `--keep-output`.
    pub outputs_pruned: AtomicU64,
}

/// Everything a scrape shows, gathered by the caller.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The backend.
    pub backend: String,
    /// Ledger counts by state.
    pub by_state: Vec<(String, u64)>,
    /// Ledger counts by reason.
    pub by_reason: Vec<(String, u64)>,
    /// Runs waiting in this instance's queue.
    pub queued: usize,
    /// Runs admitted by this instance and not finished.
    pub running: usize,
    /// The budget and its use.
    pub budget: BudgetStatus,
    /// 1 after SIGTERM.
    pub draining: bool,
    /// Each user with runs running or waiting.
    pub users: Vec<UserUsage>,
}

/// A per-user gauge: name, help, and its value for one user.
type PerUser = (&'static str, &'static str, fn(&UserUsage) -> f64);

/// An I/O budget cap: name, help, and the cap.
type IoCap = (
    &'static str,
    &'static str,
    fn(&IoBudgetStatus) -> Option<u64>,
);

/// A per-disk counter of the I/O budget: name, help, and its value for one disk.
type IoMoved = (&'static str, &'static str, fn(&IoBudgetDevice) -> u64);

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The `--budget-io-*` caps per disk (-1: no cap; no samples without an I/O budget)
/// and what the runs moved on each.
fn render_io_budget(o: &mut String, io: Option<&IoBudgetStatus>) {
    let devices = io.map_or(&[][..], |b| &b.devices[..]);
    let cap = |v: Option<u64>| v.map_or(-1.0, |v| v as f64);
    let caps: [IoCap; 4] = [
        (
            "corral_budget_io_read_bps",
            "The runs' shared read bandwidth on a disk, bytes a second (-1: no cap).",
            |b| b.read_bps,
        ),
        (
            "corral_budget_io_write_bps",
            "The runs' shared write bandwidth on a disk, bytes a second (-1: no cap).",
            |b| b.write_bps,
        ),
        (
            "corral_budget_io_read_iops",
            "The runs' shared read operations a second on a disk (-1: no cap).",
            |b| b.read_iops,
        ),
        (
            "corral_budget_io_write_iops",
            "The runs' shared write operations a second on a disk (-1: no cap).",
            |b| b.write_iops,
        ),
    ];
    for (name, help, v) in caps {
        family(o, name, "gauge", help);
        if let Some(b) = io {
            for d in devices {
                let _ = writeln!(o, "{name}{{device=\"{}\"}} {}", d.device, cap(v(b)));
            }
        }
    }
    let moved: [IoMoved; 2] = [
        (
            "corral_budget_io_read_bytes_total",
            "Bytes the runs' parent cgroup read from a disk under the I/O budget.",
            |d| d.read_bytes,
        ),
        (
            "corral_budget_io_written_bytes_total",
            "Bytes the runs' parent cgroup wrote to a disk under the I/O budget.",
            |d| d.written_bytes,
        ),
    ];
    for (name, help, v) in moved {
        family(o, name, "counter", help);
        for d in devices {
            let _ = writeln!(o, "{name}{{device=\"{}\"}} {}", d.device, v(d));
        }
    }
}

/// Renders the metrics.
pub fn render(m: &Metrics, s: &Snapshot) -> String {
    let mut o = String::with_capacity(4096);
    family(
        &mut o,
        "corral_service_info",
        "gauge",
        "The service's backend and version.",
    );
    let _ = writeln!(
        o,
        "corral_service_info{{backend=\"{}\",version=\"{}\"}} 1",
        s.backend,
        env!("CARGO_PKG_VERSION")
    );
    family(
        &mut o,
        "corral_runs",
        "gauge",
        "Runs in the ledger by state.",
    );
    for st in RunState::ALL {
        let n = s
            .by_state
            .iter()
            .find(|(k, _)| k == st.as_str())
            .map_or(0, |(_, n)| *n);
        let _ = writeln!(o, "corral_runs{{state=\"{st}\"}} {n}");
    }
    family(
        &mut o,
        "corral_runs_finished",
        "gauge",
        "Finished runs in the ledger by the reason they ended.",
    );
    for r in Reason::ALL {
        let n = s
            .by_reason
            .iter()
            .find(|(k, _)| k == r.as_str())
            .map_or(0, |(_, n)| *n);
        let _ = writeln!(o, "corral_runs_finished{{reason=\"{r}\"}} {n}");
    }
    let gauges: [(&str, &str, f64); 12] = [
        (
            "corral_queue_depth",
            "Runs waiting for budget.",
            s.queued as f64,
        ),
        (
            "corral_running",
            "Runs admitted and not finished.",
            s.running as f64,
        ),
        (
            "corral_max_running",
            "The concurrency bound.",
            s.budget.max_running as f64,
        ),
        (
            "corral_budget_memory_bytes",
            "The runs' shared memory budget.",
            s.budget.memory_bytes as f64,
        ),
        (
            "corral_budget_memory_reserved_bytes",
            "The memory limits of the running runs, summed.",
            s.budget.memory_reserved_bytes as f64,
        ),
        (
            "corral_budget_memory_used_bytes",
            "Memory charged to the runs' parent cgroup.",
            s.budget.memory_used_bytes.unwrap_or(0) as f64,
        ),
        (
            "corral_budget_cpus",
            "The runs' shared CPU budget.",
            s.budget.cpus,
        ),
        (
            "corral_budget_cpus_reserved",
            "The CPU quotas of the running runs, summed.",
            s.budget.cpus_reserved,
        ),
        (
            "corral_budget_pids",
            "The runs' shared task limit.",
            s.budget.pids as f64,
        ),
        (
            "corral_budget_swap_bytes",
            "The runs' shared swap (-1: no cap).",
            s.budget.swap_bytes.map_or(-1.0, |b| b as f64),
        ),
        (
            "corral_budget_pids_current",
            "Tasks in the runs' parent cgroup.",
            s.budget.pids_current.unwrap_or(0) as f64,
        ),
        (
            "corral_draining",
            "1 while the service drains after SIGTERM.",
            if s.draining { 1.0 } else { 0.0 },
        ),
    ];
    for (name, help, v) in gauges {
        family(&mut o, name, "gauge", help);
        let _ = writeln!(o, "{name} {v}");
    }
    render_io_budget(&mut o, s.budget.io.as_ref());
    let per_user: [PerUser; 4] = [
        (
            "corral_user_running",
            "A user's runs running now (users with runs running or waiting).",
            |u| u.running as f64,
        ),
        ("corral_user_queued", "A user's runs waiting.", |u| {
            u.queued as f64
        }),
        (
            "corral_user_memory_reserved_bytes",
            "The memory a user's running runs reserve.",
            |u| u.memory_reserved_bytes as f64,
        ),
        (
            "corral_user_cpus_reserved",
            "The CPUs a user's running runs reserve.",
            |u| u.cpus_reserved,
        ),
    ];
    for (name, help, v) in per_user {
        family(&mut o, name, "gauge", help);
        for u in &s.users {
            let _ = writeln!(o, "{name}{{uid=\"{}\"}} {}", u.uid, v(u));
        }
    }
    family(
        &mut o,
        "corral_submissions_total",
        "counter",
        "Submissions to this instance by outcome.",
    );
    for (k, v) in [
        ("accepted", &m.accepted),
        ("idempotent", &m.idempotent),
        ("refused", &m.refused),
    ] {
        let _ = writeln!(
            o,
            "corral_submissions_total{{outcome=\"{k}\"}} {}",
            v.load(Ordering::Relaxed)
        );
    }
    family(
        &mut o,
        "corral_output_files_pruned_total",
        "counter",
        "Captured output files removed after --keep-output.",
    );
    let _ = writeln!(
        o,
        "corral_output_files_pruned_total {}",
        m.outputs_pruned.load(Ordering::Relaxed)
    );
    family(
        &mut o,
        "corral_launch_latency_seconds",
        "histogram",
        "Time from a run's admission to the start of its command.",
    );
    m.launch_latency
        .render(&mut o, "corral_launch_latency_seconds");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(io: Option<IoBudgetStatus>) -> Snapshot {
        Snapshot {
            backend: "cgroup2".into(),
            by_state: Vec::new(),
            by_reason: Vec::new(),
            queued: 0,
            running: 0,
            budget: BudgetStatus {
                memory_bytes: 1 << 30,
                memory_reserved_bytes: 0,
                memory_used_bytes: None,
                cpus: 2.0,
                cpus_reserved: 0.0,
                pids: 100,
                swap_bytes: Some(0),
                pids_current: None,
                max_running: 4,
                user_max_running: None,
                user_memory_bytes: None,
                user_cpus: None,
                io,
            },
            draining: false,
            users: Vec::new(),
        }
    }

    #[test]
    fn the_io_budget_is_shown_per_disk() {
        let io = IoBudgetStatus {
            read_bps: None,
            write_bps: Some(10 << 20),
            read_iops: None,
            write_iops: Some(500),
            devices: vec![IoBudgetDevice {
                device: "7:0".into(),
                read_bytes: 3,
                written_bytes: 4096,
            }],
        };
        let text = render(&Metrics::default(), &snapshot(Some(io)));
        for line in [
            "corral_budget_io_write_bps{device=\"7:0\"} 10485760",
            "corral_budget_io_read_bps{device=\"7:0\"} -1",
            "corral_budget_io_write_iops{device=\"7:0\"} 500",
            "corral_budget_io_read_iops{device=\"7:0\"} -1",
            "corral_budget_io_read_bytes_total{device=\"7:0\"} 3",
            "corral_budget_io_written_bytes_total{device=\"7:0\"} 4096",
            "# TYPE corral_budget_io_written_bytes_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
        // Without an I/O budget: the families, no samples.
        let text = render(&Metrics::default(), &snapshot(None));
        assert!(text.contains("# TYPE corral_budget_io_write_bps gauge"));
        assert!(!text.contains("corral_budget_io_write_bps{"));
    }
}
