//! One reading of a running group's counters for a timeline: only the few files a
//! reading needs (memory now, CPU used, processes, I/O bytes, pressure, and the
//! counters whose changes are the timeline's events).

use crate::util::{read, read_flat_keyed, read_u64};

/// The counters of a group at one moment; `None` where the host does not have them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// Memory charged now, in bytes.
    pub memory_bytes: Option<u64>,
    /// CPU time used so far, in µs.
    pub cpu_us: Option<u64>,
    /// Bytes read from block devices so far.
    pub io_read_bytes: Option<u64>,
    /// Bytes written to block devices so far.
    pub io_write_bytes: Option<u64>,
    /// `some avg10` of `memory.pressure`, `cpu.pressure`, `io.pressure` (percent).
    pub pressure: [Option<f64>; 3],
    /// Periods throttled by the CPU quota so far.
    pub cpu_throttled: Option<u64>,
    /// Times over `memory.high` (cgroup v2).
    pub memory_high: Option<u64>,
    /// Times the memory limit was hit (v2 `memory.events` `max`, v1 `memory.failcnt`).
    pub memory_max: Option<u64>,
    /// Processes killed by the OOM killer so far.
    pub oom_kill: Option<u64>,
}

/// The `some avg10` value of a pressure file (percent).
pub fn parse_pressure_avg10(text: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with("some"))?
        .split_whitespace()
        .find_map(|t| t.strip_prefix("avg10="))?
        .parse()
        .ok()
}

impl crate::v2::Cgroup2 {
    /// Reads the counters of a timeline point (about eight small files).
    pub fn sample(&self) -> Sample {
        let f = |n: &str| self.path().join(n);
        let cpu = read_flat_keyed(&f("cpu.stat")).unwrap_or_default();
        let mem = read_flat_keyed(&f("memory.events")).unwrap_or_default();
        let io = read(&f("io.stat"))
            .ok()
            .map(|t| crate::v2::parse_io_stat(&t));
        let psi = |n: &str| read(&f(n)).ok().and_then(|t| parse_pressure_avg10(&t));
        Sample {
            memory_bytes: read_u64(&f("memory.current")).ok().flatten(),
            cpu_us: cpu.get("usage_usec").copied(),
            io_read_bytes: io.map(|b| b.0),
            io_write_bytes: io.map(|b| b.1),
            pressure: [
                psi("memory.pressure"),
                psi("cpu.pressure"),
                psi("io.pressure"),
            ],
            cpu_throttled: cpu.get("nr_throttled").copied(),
            memory_high: mem.get("high").copied(),
            memory_max: mem.get("max").copied(),
            oom_kill: mem.get("oom_kill").copied(),
        }
    }
}

impl crate::v1::Group1 {
    /// Reads the counters of a timeline point (v1 has no pressure files and no
    /// `memory.high`).
    pub fn sample(&self) -> Sample {
        let in_dir = |c: &str, n: &str| self.dir(c).map(|d| d.join(n));
        let num = |c: &str, n: &str| in_dir(c, n).and_then(|p| read_u64(&p).ok().flatten());
        let keyed = |c: &str, n: &str| {
            in_dir(c, n)
                .and_then(|p| read_flat_keyed(&p).ok())
                .unwrap_or_default()
        };
        let io = self.io_bytes();
        Sample {
            memory_bytes: num("memory", "memory.usage_in_bytes"),
            cpu_us: num("cpuacct", "cpuacct.usage").map(|ns| ns / 1000),
            io_read_bytes: io.map(|b| b.0),
            io_write_bytes: io.map(|b| b.1),
            pressure: [None; 3],
            cpu_throttled: keyed("cpu", "cpu.stat").get("nr_throttled").copied(),
            memory_high: None,
            memory_max: num("memory", "memory.failcnt"),
            oom_kill: keyed("memory", "memory.oom_control")
                .get("oom_kill")
                .copied(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pressure_avg10() {
        let t = "some avg10=12.50 avg60=1.00 avg300=0.00 total=1234\n\
                 full avg10=3.00 avg60=0.00 avg300=0.00 total=99\n";
        assert_eq!(parse_pressure_avg10(t), Some(12.5));
        assert_eq!(parse_pressure_avg10(""), None);
    }
}
