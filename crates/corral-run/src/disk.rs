//! Which disks a run's I/O limits apply to, and what each backend makes of them.
//!
//! The kernel throttles I/O per whole disk (`io.max`, `blkio.throttle.*` take the
//! `MAJ:MIN` of a disk, not of a partition). A path's file system is on the device of
//! its `st_dev`; when that is no block device (btrfs and other file systems with
//! anonymous device numbers), the mount table names the source device. From there
//! `/sys/dev/block/MAJ:MIN` leads to the disk: a partition's parent directory is its
//! disk (it has a `partition` file), and a device-mapper or md device lists the
//! devices it is made of in `slaves/`, each resolved the same way.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use corral_cgroup::io::{DevNum, IoSet, WeightFile};
use corral_spec::{LimitKind, Limits};

use crate::backend::{BackendError, Plan, Sandbox, IO_LIMITS};

/// A device named with `--io-device` that cannot be used (exit 125).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// The path does not exist (or cannot be looked at).
    #[error("unknown I/O device {}: {why}", .path.display())]
    Unknown {
        /// The path as given.
        path: PathBuf,
        /// The OS error.
        why: String,
    },
    /// The path exists but is no block device.
    #[error(
        "--io-device {}: not a block device (name a disk or partition such as /dev/sda, or leave it out to limit the disks under the working directory)",
        .path.display()
    )]
    NotBlock {
        /// The path as given.
        path: PathBuf,
    },
}

/// `MAJ:MIN` of a raw `dev_t`.
pub fn dev_num(dev: u64) -> DevNum {
    DevNum {
        major: rustix::fs::major(dev),
        minor: rustix::fs::minor(dev),
    }
}

/// The whole disks behind block device `dev`, through partitions and stacked devices
/// (device mapper, md), read from the sysfs tree at `sys` (`/sys`). Empty when `dev`
/// is no block device sysfs knows.
pub fn whole_disks(sys: &Path, dev: DevNum) -> Vec<DevNum> {
    let mut out = Vec::new();
    resolve(sys, dev, 0, &mut out);
    out.sort();
    out.dedup();
    out
}

fn read_dev(dir: &Path) -> Option<DevNum> {
    DevNum::parse(&std::fs::read_to_string(dir.join("dev")).ok()?)
}

fn resolve(sys: &Path, dev: DevNum, depth: usize, out: &mut Vec<DevNum>) {
    if depth > 8 {
        return;
    }
    let Ok(dir) = std::fs::canonicalize(sys.join("dev/block").join(dev.to_string())) else {
        return;
    };
    if dir.join("partition").exists() {
        if let Some(parent) = dir.parent().and_then(read_dev) {
            resolve(sys, parent, depth + 1, out);
            return;
        }
    }
    let slaves: Vec<DevNum> = std::fs::read_dir(dir.join("slaves"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let p = std::fs::canonicalize(e.path()).ok()?;
                    read_dev(&p)
                })
                .collect()
        })
        .unwrap_or_default();
    if slaves.is_empty() {
        out.push(dev);
    } else {
        for s in slaves {
            resolve(sys, s, depth + 1, out);
        }
    }
}

/// The source device of the mount with device number `dev` in a mountinfo text, when
/// that source is a path (`/dev/sda2`).
fn mount_source(mountinfo: &str, dev: DevNum) -> Option<PathBuf> {
    let want = dev.to_string();
    mountinfo.lines().find_map(|l| {
        let mut it = l.split(' ');
        let majmin = it.nth(2)?;
        if majmin != want {
            return None;
        }
        let rest = l.split(" - ").nth(1)?;
        let src = rest.split(' ').nth(1)?;
        src.starts_with('/').then(|| PathBuf::from(src))
    })
}

/// The disks under `path`'s file system; `Err` says why there are none.
pub fn disks_of_path(sys: &Path, path: &Path) -> Result<Vec<DevNum>, String> {
    let md = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let dev = dev_num(md.dev());
    let disks = whole_disks(sys, dev);
    if !disks.is_empty() {
        return Ok(disks);
    }
    // An anonymous device number (btrfs, overlay over a disk): the mount's source.
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if let Some(src) = mount_source(&info, dev) {
        if let Ok(m) = std::fs::metadata(&src) {
            if m.file_type().is_block_device() {
                let d = whole_disks(sys, dev_num(m.rdev()));
                if !d.is_empty() {
                    return Ok(d);
                }
            }
        }
    }
    Err(format!(
        "{} is on no block device (device {dev}: tmpfs, a network or virtual file system)",
        path.display()
    ))
}

/// The disks of a device named with `--io-device`.
pub fn disks_of_device(sys: &Path, path: &Path) -> Result<Vec<DevNum>, DeviceError> {
    let md = std::fs::metadata(path).map_err(|e| DeviceError::Unknown {
        path: path.to_path_buf(),
        why: e.to_string(),
    })?;
    if !md.file_type().is_block_device() {
        return Err(DeviceError::NotBlock {
            path: path.to_path_buf(),
        });
    }
    let disks = whole_disks(sys, dev_num(md.rdev()));
    if disks.is_empty() {
        return Err(DeviceError::Unknown {
            path: path.to_path_buf(),
            why: format!(
                "block device {} is not known to the kernel (no /sys/dev/block entry)",
                dev_num(md.rdev())
            ),
        });
    }
    Ok(disks)
}

/// The disks a run's I/O limits apply to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Targets {
    /// The disks.
    pub disks: Vec<DevNum>,
    /// Paths whose disk could not be found, and why (their I/O is not limited).
    pub missed: Vec<String>,
}

/// True when `limits` ask for any I/O limit.
pub fn wants_io(limits: &Limits) -> bool {
    limits.io_read_bps.is_some()
        || limits.io_write_bps.is_some()
        || limits.io_read_iops.is_some()
        || limits.io_write_iops.is_some()
        || limits.io_weight.is_some()
}

/// Finds the disks for `limits`: the `--io-device` ones (a bad one is an error), else
/// those under `cwd` and each `rw` path. `rw` paths must already be absolute.
pub fn targets(sys: &Path, limits: &Limits, cwd: &Path) -> Result<Targets, DeviceError> {
    let mut t = Targets::default();
    if !limits.io_device.is_empty() {
        for p in &limits.io_device {
            t.disks.extend(disks_of_device(sys, p)?);
        }
    } else {
        let mut paths = vec![cwd.to_path_buf()];
        paths.extend(limits.rw.iter().cloned());
        for p in paths {
            match disks_of_path(sys, &p) {
                Ok(d) => t.disks.extend(d),
                Err(why) => t.missed.push(why),
            }
        }
    }
    t.disks.sort();
    t.disks.dedup();
    Ok(t)
}

/// The [`IoSet`] to write for `limits` on `disks`.
pub fn io_set(limits: &Limits, disks: &[DevNum]) -> IoSet {
    IoSet {
        devices: disks.to_vec(),
        read_bps: limits.io_read_bps,
        write_bps: limits.io_write_bps,
        read_iops: limits.io_read_iops,
        write_iops: limits.io_write_iops,
        weight: limits.io_weight,
    }
}

/// The I/O scheduler a disk uses (`mq-deadline`, `bfq`, `none`), from
/// `/sys/dev/block/MAJ:MIN/queue/scheduler`'s bracketed entry.
pub fn scheduler(sys: &Path, dev: DevNum) -> Option<String> {
    let t = std::fs::read_to_string(
        sys.join("dev/block")
            .join(dev.to_string())
            .join("queue/scheduler"),
    )
    .ok()?;
    let s = t.split('[').nth(1)?.split(']').next()?;
    Some(s.to_string())
}

/// Whether a weight file acts on `disks`: BFQ's only where each disk uses BFQ; v2's
/// `io.weight` only where iocost is enabled for each disk (`io.cost.qos` of the root
/// cgroup says `enable=1`). `Err` says why not.
pub fn weight_acts(
    sys: &Path,
    file: WeightFile,
    disks: &[DevNum],
    cost_qos: Option<&str>,
) -> Result<(), String> {
    match file {
        WeightFile::Absent => Err("no weight file in the run's group: the kernel has no proportional I/O control here (needs BFQ, or iocost on cgroup v2)".into()),
        WeightFile::Bfq => {
            for d in disks {
                let s = scheduler(sys, *d).unwrap_or_else(|| "unknown".into());
                if s != "bfq" {
                    return Err(format!(
                        "disk {d} uses the {s} I/O scheduler, which has no weights (echo bfq > /sys/dev/block/{d}/queue/scheduler)"
                    ));
                }
            }
            Ok(())
        }
        WeightFile::Generic => match cost_qos {
            // v1's blkio.weight (CFQ) acts wherever the file exists.
            None => Ok(()),
            Some(qos) => {
                for d in disks {
                    let on = qos.lines().any(|l| {
                        l.starts_with(&format!("{d} ")) && l.contains("enable=1")
                    });
                    if !on {
                        let s = scheduler(sys, *d).unwrap_or_else(|| "unknown".into());
                        if s != "bfq" {
                            return Err(format!(
                                "io.weight acts only where iocost is enabled (io.cost.qos) or the disk uses BFQ; disk {d} has neither (scheduler {s})"
                            ));
                        }
                    }
                }
                Ok(())
            }
        },
    }
}

/// Writes the I/O limits of `limits` on `sandbox` for the disks in `t`, and records in
/// `plan` what could not be enforced: no disk found, no throttle files, a weight the
/// disks' schedulers ignore, paths whose disk is unknown. `v1`: the group is a cgroup
/// v1 one (where `blkio.weight` is CFQ's and acts wherever it exists).
pub fn apply(
    v1: bool,
    sandbox: &mut dyn Sandbox,
    limits: &Limits,
    t: &Targets,
    plan: &mut Plan,
) -> Result<(), BackendError> {
    let sys = Path::new("/sys");
    if t.disks.is_empty() {
        plan.drop_io(&format!(
            "no disk to limit: {}",
            if t.missed.is_empty() {
                "none found".to_string()
            } else {
                t.missed.join("; ")
            }
        ));
        return Ok(());
    }
    let set = io_set(limits, &t.disks);
    let Some(held) = sandbox.limit_io(&set)? else {
        return Ok(());
    };
    if set.throttles() && !held.throttle {
        for k in IO_LIMITS.into_iter().filter(|k| *k != LimitKind::IoWeight) {
            plan.drop_limit(
                k,
                "the kernel has no I/O throttling here (no io.max / blkio.throttle files: CONFIG_BLK_DEV_THROTTLING is off)",
            );
        }
    }
    if set.weight.is_some() {
        let qos = (!v1)
            .then(|| std::fs::read_to_string("/sys/fs/cgroup/io.cost.qos").unwrap_or_default());
        if let Err(why) = weight_acts(sys, held.weight, &t.disks, qos.as_deref()) {
            plan.drop_limit(LimitKind::IoWeight, why);
        }
    }
    if !t.missed.is_empty() {
        plan.gaps.push(corral_record::Gap {
            limit: LimitKind::IoDevice,
            why: format!("not limited: {}", t.missed.join("; ")),
        });
    }
    Ok(())
}

/// True when a regular file under `dirs` (searched breadth-first, at most 20000
/// entries) was modified since `since` and is exactly `limit` bytes long: where
/// `RLIMIT_FSIZE` stopped a write with `EFBIG`.
pub fn file_at_limit(dirs: &[PathBuf], limit: u64, since: std::time::SystemTime) -> bool {
    let mut queue: std::collections::VecDeque<PathBuf> = dirs.iter().cloned().collect();
    let mut seen = 0usize;
    while let Some(d) = queue.pop_front() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            seen += 1;
            if seen > 20_000 {
                return false;
            }
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                queue.push_back(e.path());
            } else if md.is_file() && md.len() == limit && md.modified().is_ok_and(|m| m >= since) {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn dev(s: &str) -> DevNum {
        DevNum::parse(s).unwrap()
    }

    /// A fake sysfs: sda (8:0) with partition sda1 (8:1), sdb (8:16), and dm-0
    /// (253:0) over sda1 and sdb; nvme0n1 (259:0) as a plain disk.
    fn fake_sys() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        let dev_dir = |rel: &str, num: &str| {
            let d = r.join("devices").join(rel);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("dev"), format!("{num}\n")).unwrap();
            d
        };
        let sda = dev_dir("pci0/block/sda", "8:0");
        let sda1 = dev_dir("pci0/block/sda/sda1", "8:1");
        std::fs::write(sda1.join("partition"), "1\n").unwrap();
        let sdb = dev_dir("pci0/block/sdb", "8:16");
        let dm = dev_dir("virtual/block/dm-0", "253:0");
        std::fs::create_dir_all(dm.join("slaves")).unwrap();
        symlink(&sda1, dm.join("slaves/sda1")).unwrap();
        symlink(&sdb, dm.join("slaves/sdb")).unwrap();
        dev_dir("pci0/block/nvme0n1", "259:0");
        std::fs::create_dir_all(r.join("dev/block")).unwrap();
        for (n, p) in [
            ("8:0", sda.clone()),
            ("8:1", sda1),
            ("8:16", sdb),
            ("253:0", dm),
            ("259:0", r.join("devices/pci0/block/nvme0n1")),
        ] {
            symlink(p, r.join("dev/block").join(n)).unwrap();
        }
        std::fs::create_dir_all(sda.join("queue")).unwrap();
        std::fs::write(sda.join("queue/scheduler"), "none [mq-deadline] bfq\n").unwrap();
        t
    }

    #[test]
    fn partitions_and_stacked_devices_lead_to_their_disks() {
        let t = fake_sys();
        let s = t.path();
        assert_eq!(whole_disks(s, dev("8:0")), [dev("8:0")]);
        assert_eq!(whole_disks(s, dev("8:1")), [dev("8:0")]);
        assert_eq!(whole_disks(s, dev("253:0")), [dev("8:0"), dev("8:16")]);
        assert_eq!(whole_disks(s, dev("259:0")), [dev("259:0")]);
        assert!(
            whole_disks(s, dev("0:45")).is_empty(),
            "tmpfs, btrfs subvolume"
        );
        assert_eq!(scheduler(s, dev("8:0")).as_deref(), Some("mq-deadline"));
        // Weights: BFQ's file acts only on BFQ disks; io.weight only with iocost.
        let sda = [dev("8:0")];
        let e = weight_acts(s, WeightFile::Bfq, &sda, None).unwrap_err();
        assert!(e.contains("mq-deadline"), "{e}");
        assert!(
            weight_acts(s, WeightFile::Generic, &sda, None).is_ok(),
            "v1 CFQ"
        );
        let e = weight_acts(s, WeightFile::Generic, &sda, Some("")).unwrap_err();
        assert!(e.contains("iocost"), "{e}");
        let qos = "8:0 enable=1 ctrl=auto rpct=0.00\n";
        assert!(weight_acts(s, WeightFile::Generic, &sda, Some(qos)).is_ok());
        assert!(weight_acts(s, WeightFile::Absent, &sda, None).is_err());
    }

    #[test]
    fn mount_sources_come_from_mountinfo() {
        let mi = "29 1 0:45 / / rw,relatime shared:1 - btrfs /dev/sda2 rw\n\
                  30 29 0:22 / /tmp rw shared:2 - tmpfs tmpfs rw\n";
        assert_eq!(
            mount_source(mi, dev("0:45")),
            Some(PathBuf::from("/dev/sda2"))
        );
        assert_eq!(mount_source(mi, dev("0:22")), None);
    }

    #[test]
    fn named_devices_must_be_block_devices() {
        let t = fake_sys();
        let e = disks_of_device(t.path(), Path::new("/nonexistent/dev")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("unknown I/O device /nonexistent/dev: "),
            "{e}"
        );
        let e = disks_of_device(t.path(), Path::new("/etc/hostname")).unwrap_err();
        assert!(e.to_string().contains("not a block device"), "{e}");
        // The host's own disk resolves through the real sysfs (where there is one).
        if let Ok(d) = disks_of_path(Path::new("/sys"), Path::new("/")) {
            assert!(!d.is_empty());
        }
    }
}
