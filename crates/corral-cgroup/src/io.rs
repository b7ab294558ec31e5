//! Disk I/O limits on a group, and the per-device counters.
//!
//! One writer per hierarchy kind, like [`crate::limits`]: [`crate::v2::Cgroup2::write_io`]
//! writes `io.max` (one line per device) and `io.weight` (or `io.bfq.weight`);
//! [`crate::v1::Group1::write_io`] writes `blkio.throttle.{read,write}_{bps,iops}_device`
//! (one write per device) and `blkio.weight` (or `blkio.bfq.weight`) where the kernel
//! has it. Devices are whole disks by `MAJ:MIN`; finding them is the caller's job.

use std::fmt;

use corral_spec::LimitKind;

use crate::limits::LimitError;

/// A block device number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DevNum {
    /// The major number.
    pub major: u32,
    /// The minor number.
    pub minor: u32,
}

impl fmt::Display for DevNum {
    /// `MAJ:MIN`, as cgroup files and `/sys/dev/block` spell it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

impl DevNum {
    /// Parses `MAJ:MIN`.
    pub fn parse(s: &str) -> Option<DevNum> {
        let (a, b) = s.trim().split_once(':')?;
        Some(DevNum {
            major: a.parse().ok()?,
            minor: b.parse().ok()?,
        })
    }
}

/// The I/O limits to write on one group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IoSet {
    /// The whole disks the throttles apply to.
    pub devices: Vec<DevNum>,
    /// Read bytes a second per device.
    pub read_bps: Option<u64>,
    /// Written bytes a second per device.
    pub write_bps: Option<u64>,
    /// Read operations a second per device.
    pub read_iops: Option<u64>,
    /// Write operations a second per device.
    pub write_iops: Option<u64>,
    /// Proportional weight (1-10000; v1 and BFQ take 1-1000 and the value is clamped).
    pub weight: Option<u64>,
}

impl IoSet {
    /// True when a bandwidth or operation-rate limit is set.
    pub fn throttles(&self) -> bool {
        self.read_bps.is_some()
            || self.write_bps.is_some()
            || self.read_iops.is_some()
            || self.write_iops.is_some()
    }

    /// The four throttles with their v2 `io.max` keys, v1 file names and limit kinds.
    pub fn throttle_items(&self) -> [(Option<u64>, &'static str, &'static str, LimitKind); 4] {
        [
            (
                self.read_bps,
                "rbps",
                "blkio.throttle.read_bps_device",
                LimitKind::IoReadBps,
            ),
            (
                self.write_bps,
                "wbps",
                "blkio.throttle.write_bps_device",
                LimitKind::IoWriteBps,
            ),
            (
                self.read_iops,
                "riops",
                "blkio.throttle.read_iops_device",
                LimitKind::IoReadIops,
            ),
            (
                self.write_iops,
                "wiops",
                "blkio.throttle.write_iops_device",
                LimitKind::IoWriteIops,
            ),
        ]
    }

    /// The `io.max` line for `dev`: `MAJ:MIN rbps=N wbps=max ...`.
    pub fn io_max_line(&self, dev: DevNum) -> String {
        let mut s = dev.to_string();
        for (v, key, _, _) in self.throttle_items() {
            s.push(' ');
            s.push_str(key);
            s.push('=');
            match v {
                Some(n) => s.push_str(&n.to_string()),
                None => s.push_str("max"),
            }
        }
        s
    }
}

/// Which weight file a group had, after [`IoSet::weight`] was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFile {
    /// No weight file: the kernel has no proportional I/O control here.
    Absent,
    /// The generic one (`io.weight` on v2 (iocost), `blkio.weight` on v1 (CFQ)).
    Generic,
    /// BFQ's (`io.bfq.weight`, `blkio.bfq.weight`): effective on disks using BFQ.
    Bfq,
}

/// What a group holds after an [`IoSet`] was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoHeld {
    /// True when the throttle files exist (and were written, where limits were asked).
    pub throttle: bool,
    /// The weight file written, if any.
    pub weight: WeightFile,
}

/// Clamps a 1-10000 weight to a 1-1000 file (v1's and BFQ's range), keeping 100 as
/// the default.
pub fn weight_1000(w: u64) -> u64 {
    w.clamp(1, 1000)
}

pub(crate) fn io_error(kind: LimitKind) -> impl Fn(crate::CgroupError) -> LimitError {
    LimitError::at(kind)
}

/// What one device did, from `io.stat` (v2) or `blkio.throttle.io_service*` (v1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceIo {
    /// The device.
    pub dev: Option<DevNum>,
    /// Bytes read.
    pub rbytes: u64,
    /// Bytes written.
    pub wbytes: u64,
    /// Read operations.
    pub rios: u64,
    /// Write operations.
    pub wios: u64,
}

/// Parses `io.stat` per device.
pub fn parse_io_stat_devices(text: &str) -> Vec<DeviceIo> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let Some(dev) = it.next().and_then(DevNum::parse) else {
            continue;
        };
        let mut d = DeviceIo {
            dev: Some(dev),
            ..DeviceIo::default()
        };
        for tok in it {
            let Some((k, v)) = tok.split_once('=') else {
                continue;
            };
            let v: u64 = v.parse().unwrap_or(0);
            match k {
                "rbytes" => d.rbytes = v,
                "wbytes" => d.wbytes = v,
                "rios" => d.rios = v,
                "wios" => d.wios = v,
                _ => {}
            }
        }
        out.push(d);
    }
    out
}

/// Parses v1's `blkio.throttle.io_service_bytes` and `io_serviced` together, per device
/// (`MAJ:MIN Read N` lines; `Total` lines are skipped).
pub fn parse_blkio_devices(bytes: &str, serviced: &str) -> Vec<DeviceIo> {
    let mut out: Vec<DeviceIo> = Vec::new();
    let mut add = |text: &str, ops: bool| {
        for line in text.lines() {
            let mut it = line.split_whitespace();
            let (Some(dev), Some(op), Some(v)) = (it.next(), it.next(), it.next()) else {
                continue;
            };
            let (Some(dev), Ok(v)) = (DevNum::parse(dev), v.parse::<u64>()) else {
                continue;
            };
            let i = match out.iter().position(|d| d.dev == Some(dev)) {
                Some(i) => i,
                None => {
                    out.push(DeviceIo {
                        dev: Some(dev),
                        ..DeviceIo::default()
                    });
                    out.len() - 1
                }
            };
            let d = &mut out[i];
            match (op, ops) {
                ("Read", false) => d.rbytes = v,
                ("Write", false) => d.wbytes = v,
                ("Read", true) => d.rios = v,
                ("Write", true) => d.wios = v,
                _ => {}
            }
        }
    };
    add(bytes, false);
    add(serviced, true);
    out.retain(|d| d.rbytes + d.wbytes + d.rios + d.wios > 0);
    out
}

/// Parses the `some` and `full` totals (µs) of a pressure file (`io.pressure`).
pub fn parse_pressure_totals(text: &str) -> (Option<u64>, Option<u64>) {
    let mut some = None;
    let mut full = None;
    for line in text.lines() {
        let total = line
            .split_whitespace()
            .find_map(|t| t.strip_prefix("total="))
            .and_then(|v| v.parse().ok());
        if line.starts_with("some") {
            some = total;
        } else if line.starts_with("full") {
            full = total;
        }
    }
    (some, full)
}

impl crate::v2::Cgroup2 {
    /// Writes `set` on this cgroup: one `io.max` line per device (when a throttle is
    /// asked for), and the weight to `io.bfq.weight` or `io.weight`, whichever exists
    /// (BFQ's first: `io.weight` needs iocost enabled on the device to act). The io
    /// controller must be enabled in the parent's subtree.
    pub fn write_io(&self, set: &IoSet) -> Result<IoHeld, LimitError> {
        let max = self.path().join("io.max");
        let throttle = max.exists();
        if throttle && set.throttles() {
            for dev in &set.devices {
                crate::util::write(&max, &set.io_max_line(*dev))
                    .map_err(io_error(LimitKind::IoWriteBps))?;
            }
        }
        let mut weight = WeightFile::Absent;
        if let Some(w) = set.weight {
            let bfq = self.path().join("io.bfq.weight");
            let generic = self.path().join("io.weight");
            if bfq.exists() {
                crate::util::write(&bfq, &weight_1000(w).to_string())
                    .map_err(io_error(LimitKind::IoWeight))?;
                weight = WeightFile::Bfq;
            } else if generic.exists() {
                crate::util::write(&generic, &format!("default {w}"))
                    .map_err(io_error(LimitKind::IoWeight))?;
                weight = WeightFile::Generic;
            }
        }
        Ok(IoHeld { throttle, weight })
    }

    /// The per-device counters of `io.stat`.
    pub fn io_devices(&self) -> Vec<DeviceIo> {
        crate::util::read(&self.path().join("io.stat"))
            .map(|t| parse_io_stat_devices(&t))
            .unwrap_or_default()
    }

    /// The `some` and `full` totals of `io.pressure`, in µs (where the kernel has PSI).
    pub fn io_pressure(&self) -> (Option<u64>, Option<u64>) {
        crate::util::read(&self.path().join("io.pressure"))
            .map(|t| parse_pressure_totals(&t))
            .unwrap_or((None, None))
    }
}

impl crate::v1::Group1 {
    /// Writes `set` on this group's blkio directory: one `MAJ:MIN N` line per device to
    /// each asked-for `blkio.throttle.*_device` file, and the weight to `blkio.weight`
    /// or `blkio.bfq.weight` where the kernel has one (v1 takes 10-1000 / 1-1000).
    pub fn write_io(&self, set: &IoSet) -> Result<IoHeld, LimitError> {
        let Some(dir) = self.dir("blkio") else {
            return Ok(IoHeld {
                throttle: false,
                weight: WeightFile::Absent,
            });
        };
        let throttle = dir.join("blkio.throttle.write_bps_device").exists();
        if throttle {
            for (v, _, file, kind) in set.throttle_items() {
                if let Some(n) = v {
                    for dev in &set.devices {
                        crate::util::write(&dir.join(file), &format!("{dev} {n}"))
                            .map_err(io_error(kind))?;
                    }
                }
            }
        }
        let mut weight = WeightFile::Absent;
        if let Some(w) = set.weight {
            let generic = dir.join("blkio.weight");
            let bfq = dir.join("blkio.bfq.weight");
            if generic.exists() {
                crate::util::write(&generic, &weight_1000(w).max(10).to_string())
                    .map_err(io_error(LimitKind::IoWeight))?;
                weight = WeightFile::Generic;
            } else if bfq.exists() {
                crate::util::write(&bfq, &weight_1000(w).to_string())
                    .map_err(io_error(LimitKind::IoWeight))?;
                weight = WeightFile::Bfq;
            }
        }
        Ok(IoHeld { throttle, weight })
    }

    /// The per-device counters of `blkio.throttle.io_service_bytes` and `io_serviced`.
    pub fn io_devices(&self) -> Vec<DeviceIo> {
        let Some(dir) = self.dir("blkio") else {
            return Vec::new();
        };
        let read = |f: &str| crate::util::read(&dir.join(f)).unwrap_or_default();
        parse_blkio_devices(
            &read("blkio.throttle.io_service_bytes_recursive"),
            &read("blkio.throttle.io_serviced_recursive"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_max_lines_and_parsers() {
        let s = IoSet {
            devices: vec![],
            write_bps: Some(10 << 20),
            read_iops: Some(5),
            ..IoSet::default()
        };
        let d = DevNum::parse("254:0").unwrap();
        assert_eq!(
            s.io_max_line(d),
            "254:0 rbps=max wbps=10485760 riops=5 wiops=max"
        );
        assert!(s.throttles());
        assert!(!IoSet::default().throttles());
        let t = "8:0 rbytes=100 wbytes=5 rios=1 wios=2 dbytes=0\n254:0 rbytes=23\n";
        let v = parse_io_stat_devices(t);
        assert_eq!(v.len(), 2);
        assert_eq!(
            (v[0].rbytes, v[0].wbytes, v[0].rios, v[0].wios),
            (100, 5, 1, 2)
        );
        let b = "254:0 Read 4096\n254:0 Write 8192\n254:0 Total 12288\n7:0 Read 0\nTotal 12288\n";
        let o = "254:0 Read 1\n254:0 Write 2\n";
        let v = parse_blkio_devices(b, o);
        assert_eq!(v.len(), 1);
        assert_eq!(
            (v[0].rbytes, v[0].wbytes, v[0].rios, v[0].wios),
            (4096, 8192, 1, 2)
        );
        let p = "some avg10=0.00 avg60=0.00 avg300=0.00 total=1234\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=99\n";
        assert_eq!(parse_pressure_totals(p), (Some(1234), Some(99)));
        assert_eq!(weight_1000(5000), 1000);
    }
}
