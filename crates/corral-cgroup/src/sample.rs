//! One reading of a running group's counters for a timeline: only the few files a
//! reading needs (memory now, CPU used, processes, I/O bytes, pressure, and the
//! counters whose changes are the timeline's events).

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use crate::util::parse_flat_keyed;

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

/// The files of a group a reading needs, opened once and re-read from the start with
/// `pread` at each reading (a cgroup file regenerates its text when read from offset 0):
/// one system call per file instead of a path lookup, open, read and close.
#[derive(Debug, Default)]
pub struct Sampler {
    memory: Option<File>,
    cpu: Option<File>,
    io: Option<File>,
    pressure: [Option<File>; 3],
    cpu_stat: Option<File>,
    memory_events: Option<File>,
    memory_failcnt: Option<File>,
    oom_control: Option<File>,
    v1: bool,
}

fn open(p: Option<PathBuf>) -> Option<File> {
    File::open(p?).ok()
}

fn pread(f: &Option<File>) -> Option<String> {
    let f = f.as_ref()?;
    let mut buf = vec![0u8; 4096];
    let mut got = 0;
    loop {
        match f.read_at(&mut buf[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => {
                got += n;
                if got == buf.len() {
                    buf.resize(buf.len() * 2, 0);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        }
    }
    buf.truncate(got);
    String::from_utf8(buf).ok()
}

fn number(f: &Option<File>) -> Option<u64> {
    pread(f)?.trim().parse().ok()
}

fn keyed(f: &Option<File>) -> HashMap<String, u64> {
    pread(f).map(|t| parse_flat_keyed(&t)).unwrap_or_default()
}

impl Sampler {
    /// Opens the files of a cgroup v2 group (absent ones are left out).
    pub fn v2(cg: &crate::v2::Cgroup2) -> Sampler {
        let f = |n: &str| open(Some(cg.path().join(n)));
        Sampler {
            memory: f("memory.current"),
            cpu: f("cpu.stat"),
            io: f("io.stat"),
            pressure: [f("memory.pressure"), f("cpu.pressure"), f("io.pressure")],
            memory_events: f("memory.events"),
            ..Sampler::default()
        }
    }

    /// Opens the files of a v1 group (v1 has no pressure files and no `memory.high`).
    pub fn v1(g: &crate::v1::Group1) -> Sampler {
        let f = |c: &str, n: &str| open(g.dir(c).map(|d| d.join(n)));
        let io = g.dir("blkio").and_then(|d| {
            crate::v1::BLKIO_BYTES_FILES
                .iter()
                .find_map(|n| File::open(d.join(n)).ok())
        });
        Sampler {
            memory: f("memory", "memory.usage_in_bytes"),
            cpu: f("cpuacct", "cpuacct.usage"),
            io,
            cpu_stat: f("cpu", "cpu.stat"),
            memory_failcnt: f("memory", "memory.failcnt"),
            oom_control: f("memory", "memory.oom_control"),
            v1: true,
            ..Sampler::default()
        }
    }

    /// Reads the counters of a timeline point.
    pub fn read(&self) -> Sample {
        let psi = |f: &Option<File>| pread(f).and_then(|t| parse_pressure_avg10(&t));
        let io = pread(&self.io).map(|t| {
            if self.v1 {
                crate::v1::parse_blkio_bytes(&t)
            } else {
                crate::v2::parse_io_stat(&t)
            }
        });
        if self.v1 {
            return Sample {
                memory_bytes: number(&self.memory),
                cpu_us: number(&self.cpu).map(|ns| ns / 1000),
                io_read_bytes: io.map(|b| b.0),
                io_write_bytes: io.map(|b| b.1),
                pressure: [None; 3],
                cpu_throttled: keyed(&self.cpu_stat).get("nr_throttled").copied(),
                memory_high: None,
                memory_max: number(&self.memory_failcnt),
                oom_kill: keyed(&self.oom_control).get("oom_kill").copied(),
            };
        }
        let cpu = keyed(&self.cpu);
        let mem = keyed(&self.memory_events);
        Sample {
            memory_bytes: number(&self.memory),
            cpu_us: cpu.get("usage_usec").copied(),
            io_read_bytes: io.map(|b| b.0),
            io_write_bytes: io.map(|b| b.1),
            pressure: [
                psi(&self.pressure[0]),
                psi(&self.pressure[1]),
                psi(&self.pressure[2]),
            ],
            cpu_throttled: cpu.get("nr_throttled").copied(),
            memory_high: mem.get("high").copied(),
            memory_max: mem.get("max").copied(),
            oom_kill: mem.get("oom_kill").copied(),
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

    #[test]
    fn a_sampler_rereads_its_open_files() {
        let dir = std::env::temp_dir().join(format!("corral-sampler-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let w = |n: &str, t: &str| std::fs::write(dir.join(n), t).unwrap();
        w("memory.current", "4096\n");
        w("cpu.stat", "usage_usec 1500\nnr_throttled 0\n");
        w("memory.events", "low 0\nhigh 0\nmax 2\noom 0\noom_kill 0\n");
        w("io.stat", "8:0 rbytes=10 wbytes=20 rios=1 wios=1\n");
        w(
            "memory.pressure",
            "some avg10=1.50 avg60=0 avg300=0 total=9\n",
        );
        let s = Sampler::v2(&crate::v2::Cgroup2::at(&dir));
        let a = s.read();
        assert_eq!(a.memory_bytes, Some(4096));
        assert_eq!(a.cpu_us, Some(1500));
        assert_eq!((a.io_read_bytes, a.io_write_bytes), (Some(10), Some(20)));
        assert_eq!(a.pressure, [Some(1.5), None, None]);
        assert_eq!((a.memory_max, a.oom_kill), (Some(2), Some(0)));
        // Rewritten in place (a cgroup file's text changes under the open file).
        w("memory.current", "8192\n");
        w("memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n");
        let b = s.read();
        assert_eq!(b.memory_bytes, Some(8192));
        assert_eq!((b.memory_max, b.oom_kill), (Some(3), Some(1)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
