//! The unified (v2) hierarchy: one directory per cgroup, controllers enabled per subtree.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::{Mode, OFlags};

use corral_spec::LimitKind;

use crate::limits::{cpus_of, Enforced, Held, LimitError, LimitSet};
use crate::util::{self, read_flat_keyed};
use crate::{CgroupError, Result};

/// The controllers corral enables for run cgroups.
pub const RUN_CONTROLLERS: &[&str] = &["memory", "cpu", "pids", "io"];

/// The controllers a cgroup2 mount must offer for corral to use it (the limits'
/// controllers; `io` is only counted, so it is enabled where available).
pub const REQUIRED_CONTROLLERS: &[&str] = &["memory", "cpu", "pids"];

/// One cgroup in the unified hierarchy, named by its directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup2 {
    path: PathBuf,
}

/// Everything a run's cgroup counts, read in one go after the run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats2 {
    /// `memory.events` (`oom`, `oom_kill`, `oom_group_kill`, `max`, `high`, ...).
    pub memory_events: HashMap<String, u64>,
    /// `memory.peak` (kernel 5.19+).
    pub memory_peak: Option<u64>,
    /// `memory.current`.
    pub memory_current: Option<u64>,
    /// `cpu.stat` (`usage_usec`, `user_usec`, `system_usec`, `nr_throttled`, ...).
    pub cpu_stat: HashMap<String, u64>,
    /// `pids.events` (`max`: forks refused by `pids.max`).
    pub pids_events: HashMap<String, u64>,
    /// `pids.peak` (kernel 6.1+).
    pub pids_peak: Option<u64>,
    /// `pids.current`.
    pub pids_current: Option<u64>,
    /// Bytes read and written, summed over devices from `io.stat`.
    pub io_bytes: Option<(u64, u64)>,
}

fn opt<T>(r: Result<T>) -> Option<T> {
    r.ok()
}

impl Cgroup2 {
    /// Names an existing cgroup directory (nothing is checked or created).
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Cgroup2 { path: path.into() }
    }

    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// True when the directory exists.
    pub fn exists(&self) -> bool {
        self.file("cgroup.procs").exists()
    }

    /// True when this cgroup has the named interface file (to probe kernel features).
    pub fn has_file(&self, name: &str) -> bool {
        self.file(name).exists()
    }

    /// The controllers available to this cgroup (`cgroup.controllers`).
    pub fn controllers(&self) -> Result<Vec<String>> {
        Ok(util::read(&self.file("cgroup.controllers"))?
            .split_whitespace()
            .map(str::to_string)
            .collect())
    }

    /// The controllers enabled for this cgroup's children (`cgroup.subtree_control`).
    pub fn subtree_control(&self) -> Result<Vec<String>> {
        Ok(util::read(&self.file("cgroup.subtree_control"))?
            .split_whitespace()
            .map(str::to_string)
            .collect())
    }

    /// Enables each wanted controller for this cgroup's children, one at a time, so one
    /// missing controller does not prevent the others. Returns the controllers that are
    /// enabled afterwards (a subset of `wanted`).
    pub fn enable_controllers(&self, wanted: &[&str]) -> Result<Vec<String>> {
        let available = self.controllers()?;
        let mut enabled = self.subtree_control()?;
        for c in wanted {
            if enabled.iter().any(|e| e == c) || !available.iter().any(|a| a == c) {
                continue;
            }
            match util::write(&self.file("cgroup.subtree_control"), &format!("+{c}")) {
                Ok(()) => enabled.push(c.to_string()),
                Err(e) => tracing::debug!("cannot enable {c} in {}: {e}", self.path.display()),
            }
        }
        Ok(enabled
            .into_iter()
            .filter(|e| wanted.contains(&e.as_str()))
            .collect())
    }

    /// Creates a child cgroup; fails if it exists.
    pub fn create_child(&self, name: &str) -> Result<Cgroup2> {
        let child = Cgroup2::at(self.path.join(name));
        util::mkdir(&child.path, false)?;
        Ok(child)
    }

    /// Opens a child cgroup that may already exist, creating it otherwise.
    pub fn ensure_child(&self, name: &str) -> Result<Cgroup2> {
        let child = Cgroup2::at(self.path.join(name));
        util::mkdir(&child.path, true)?;
        Ok(child)
    }

    /// The parent cgroup (None at the mount point's root, which has no `cgroup.type`).
    pub fn parent(&self) -> Option<Cgroup2> {
        let p = self.path.parent()?;
        let parent = Cgroup2::at(p);
        parent.exists().then_some(parent)
    }

    /// The child cgroups' names.
    pub fn children(&self) -> Result<Vec<String>> {
        let rd = std::fs::read_dir(&self.path).map_err(|source| CgroupError::Io {
            op: "list",
            path: self.path.clone(),
            source,
        })?;
        Ok(rd
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect())
    }

    /// The processes in this cgroup (not in its children).
    pub fn procs(&self) -> Result<Vec<i32>> {
        util::read_pids(&self.file("cgroup.procs"))
    }

    /// `cgroup.events`' `populated`: true while any process lives in this subtree.
    pub fn populated(&self) -> Result<bool> {
        let ev = read_flat_keyed(&self.file("cgroup.events"))?;
        Ok(ev.get("populated").copied().unwrap_or(0) != 0)
    }

    /// `cgroup.events`' `frozen`.
    pub fn frozen(&self) -> Result<bool> {
        let ev = read_flat_keyed(&self.file("cgroup.events"))?;
        Ok(ev.get("frozen").copied().unwrap_or(0) != 0)
    }

    /// Sets `memory.max` (None: `max`).
    pub fn set_memory_max(&self, bytes: Option<u64>) -> Result<()> {
        util::write(&self.file("memory.max"), &num_or_max(bytes))
    }

    /// Sets `memory.swap.max` (None: `max`). Missing when swap accounting is off.
    pub fn set_swap_max(&self, bytes: Option<u64>) -> Result<()> {
        util::write(&self.file("memory.swap.max"), &num_or_max(bytes))
    }

    /// Sets `memory.oom.group`: an OOM kill takes the whole cgroup, not one process.
    pub fn set_oom_group(&self, on: bool) -> Result<()> {
        util::write(&self.file("memory.oom.group"), if on { "1" } else { "0" })
    }

    /// Sets `cpu.max` to `quota_us` per `period_us` (None: `max`).
    pub fn set_cpu_max(&self, quota_us: Option<u64>, period_us: u64) -> Result<()> {
        util::write(
            &self.file("cpu.max"),
            &format!("{} {period_us}", num_or_max(quota_us)),
        )
    }

    /// Sets `pids.max` (None: `max`).
    pub fn set_pids_max(&self, n: Option<u64>) -> Result<()> {
        util::write(&self.file("pids.max"), &num_or_max(n))
    }

    /// Reads back a single-value limit file (`memory.max`, `pids.max`, ...).
    pub fn read_limit(&self, name: &str) -> Result<Option<u64>> {
        util::read_u64(&self.file(name))
    }

    /// Reads `cpu.max` back as (quota_us or None for max, period_us).
    pub fn read_cpu_max(&self) -> Result<(Option<u64>, u64)> {
        let p = self.file("cpu.max");
        let s = util::read(&p)?;
        let mut it = s.split_whitespace();
        let bad = || CgroupError::Parse {
            path: p.clone(),
            what: format!("expected \"QUOTA PERIOD\", got {s:?}"),
        };
        let q = it.next().ok_or_else(bad)?;
        let period = it.next().and_then(|x| x.parse().ok()).ok_or_else(bad)?;
        let quota = if q == "max" {
            None
        } else {
            Some(q.parse().map_err(|_| bad())?)
        };
        Ok((quota, period))
    }

    /// Writes `limits` to whichever of `memory.max`, `memory.swap.max`, `cpu.max` and
    /// `pids.max` exist (swap only beside `memory.max`), and reads each back. A missing
    /// file is [`Held::Absent`]; the first refused write is the error.
    pub fn write_limits(&self, limits: &LimitSet) -> std::result::Result<Enforced, LimitError> {
        let mut out = Enforced::default();
        if self.has_file("memory.max") {
            self.set_memory_max(limits.memory)
                .map_err(LimitError::at(LimitKind::Memory))?;
            out.memory = Held::Read(self.read_limit("memory.max").ok().flatten());
            if self.has_file("memory.swap.max") {
                self.set_swap_max(limits.swap)
                    .map_err(LimitError::at(LimitKind::Swap))?;
                out.swap = Held::Read(self.read_limit("memory.swap.max").ok().flatten());
            }
        }
        if self.has_file("cpu.max") {
            self.set_cpu_max(limits.cpu_quota_us, limits.cpu_period_us)
                .map_err(LimitError::at(LimitKind::Cpus))?;
            out.cpus = Held::Read(self.read_cpu_max().ok().and_then(|(q, p)| cpus_of(q, p)));
        }
        if self.has_file("pids.max") {
            self.set_pids_max(limits.pids)
                .map_err(LimitError::at(LimitKind::Pids))?;
            out.pids = Held::Read(self.read_limit("pids.max").ok().flatten());
        }
        Ok(out)
    }

    /// Opens the directory for `clone3(CLONE_INTO_CGROUP)`.
    pub fn open_dir(&self) -> Result<OwnedFd> {
        rustix::fs::open(
            &self.path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| CgroupError::Io {
            op: "open",
            path: self.path.clone(),
            source: e.into(),
        })
    }

    /// Opens `cgroup.procs` for writing, so a child can move itself in before exec.
    pub fn open_procs(&self) -> Result<OwnedFd> {
        let p = self.file("cgroup.procs");
        rustix::fs::open(&p, OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty()).map_err(|e| {
            CgroupError::Io {
                op: "open",
                path: p,
                source: e.into(),
            }
        })
    }

    /// Moves a process into this cgroup.
    pub fn add_pid(&self, pid: i32) -> Result<()> {
        util::write(&self.file("cgroup.procs"), &pid.to_string())
    }

    /// The path of an events file, to watch with inotify (`cgroup.events`,
    /// `memory.events`, `pids.events`): the kernel signals a modification on each change.
    pub fn events_file(&self, name: &str) -> PathBuf {
        self.file(name)
    }

    /// Reads `cpu.stat`'s `usage_usec`: CPU time of the whole subtree so far.
    pub fn cpu_usage_usec(&self) -> Result<u64> {
        let m = read_flat_keyed(&self.file("cpu.stat"))?;
        m.get("usage_usec")
            .copied()
            .ok_or_else(|| CgroupError::Parse {
                path: self.file("cpu.stat"),
                what: "no usage_usec".into(),
            })
    }

    /// Reads `memory.events` (empty map when the memory controller is off).
    pub fn memory_events(&self) -> HashMap<String, u64> {
        read_flat_keyed(&self.file("memory.events")).unwrap_or_default()
    }

    /// Reads every counter corral reports; absent files give `None`/empty maps.
    pub fn stats(&self) -> Stats2 {
        Stats2 {
            memory_events: self.memory_events(),
            memory_peak: opt(util::read_u64(&self.file("memory.peak"))).flatten(),
            memory_current: opt(util::read_u64(&self.file("memory.current"))).flatten(),
            cpu_stat: read_flat_keyed(&self.file("cpu.stat")).unwrap_or_default(),
            pids_events: read_flat_keyed(&self.file("pids.events")).unwrap_or_default(),
            pids_peak: opt(util::read_u64(&self.file("pids.peak"))).flatten(),
            pids_current: opt(util::read_u64(&self.file("pids.current"))).flatten(),
            io_bytes: opt(util::read(&self.file("io.stat"))).map(|s| parse_io_stat(&s)),
        }
    }

    /// Kills every process in the subtree at once with `cgroup.kill` (5.14+). Returns
    /// false when the kernel has no `cgroup.kill`; use [`Cgroup2::kill_by_freezing`].
    pub fn kill(&self) -> Result<bool> {
        let f = self.file("cgroup.kill");
        if !f.exists() {
            return Ok(false);
        }
        util::write(&f, "1")?;
        Ok(true)
    }

    /// Freezes or thaws the subtree (`cgroup.freeze`, 5.2+).
    pub fn set_frozen(&self, frozen: bool) -> Result<()> {
        util::write(&self.file("cgroup.freeze"), if frozen { "1" } else { "0" })
    }

    /// The pre-5.14 way to kill a subtree: freeze it so nothing forks, SIGKILL every
    /// process of every descendant, thaw. Frozen tasks die on SIGKILL once thawed.
    pub fn kill_by_freezing(&self) -> Result<()> {
        let _ = self.set_frozen(true);
        for cg in self.subtree() {
            for pid in cg.procs().unwrap_or_default() {
                // A pid that vanished meanwhile is fine; frozen tasks cannot be reused.
                if let Some(p) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                }
            }
        }
        self.set_frozen(false)
    }

    /// This cgroup and all its descendants, parents before children.
    pub fn subtree(&self) -> Vec<Cgroup2> {
        let mut out = vec![self.clone()];
        let mut i = 0;
        while i < out.len() {
            let cur = out[i].clone();
            for c in cur.children().unwrap_or_default() {
                out.push(Cgroup2::at(cur.path.join(c)));
            }
            i += 1;
        }
        out
    }

    /// Removes this cgroup and any descendants (deepest first), retrying EBUSY within
    /// `budget` each. The subtree must be empty of processes.
    pub fn remove(&self, budget: Duration) -> Result<()> {
        let mut all = self.subtree();
        all.reverse();
        for cg in all {
            util::rmdir_retry(&cg.path, budget)?;
        }
        Ok(())
    }
}

fn num_or_max(v: Option<u64>) -> String {
    v.map_or_else(|| "max".to_string(), |n| n.to_string())
}

/// Sums `rbytes` and `wbytes` over the devices of an `io.stat` file.
pub fn parse_io_stat(text: &str) -> (u64, u64) {
    let (mut r, mut w) = (0u64, 0u64);
    for tok in text.split_whitespace() {
        if let Some(v) = tok.strip_prefix("rbytes=") {
            r = r.saturating_add(v.parse().unwrap_or(0));
        } else if let Some(v) = tok.strip_prefix("wbytes=") {
            w = w.saturating_add(v.parse().unwrap_or(0));
        }
    }
    (r, w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_stat() {
        let t = "8:0 rbytes=100 wbytes=5 rios=1 wios=1\n254:0 rbytes=23 wbytes=7 rios=2\n";
        assert_eq!(parse_io_stat(t), (123, 12));
        assert_eq!(num_or_max(None), "max");
    }
}
