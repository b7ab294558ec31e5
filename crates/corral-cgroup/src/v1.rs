//! The legacy (v1) layout: one hierarchy per controller.
//!
//! A run's group is one directory per controller hierarchy, at the same relative path in
//! each (`/sys/fs/cgroup/memory/<rel>`, `/sys/fs/cgroup/pids/<rel>`, ...). Hierarchies
//! that co-mount several controllers (`cpu,cpuacct`) share one directory, which is
//! created, written and removed once. A new process moves itself into each hierarchy
//! (writing `0` to `tasks` while single-threaded); its children inherit all of them.
//!
//! v1 lacks v2's `cgroup.kill`, `memory.oom.group` and `cgroup.events`: a whole-tree kill
//! goes through the freezer ([`Group1::kill_all`]), an OOM kill takes one process and is
//! noticed through an eventfd ([`Group1::oom_eventfd`]), and emptiness is found by
//! reading `cgroup.procs` ([`Group1::is_empty`]).
//!
//! Seen on 6.18 (hybrid layout): v1 `pids.events` raises no inotify event when a fork
//! is refused (the v1 path notifies a file v1 does not have), so poll it; `pids.peak`
//! exists in v1 too; with `memory.memsw.limit_in_bytes` set, neither failcnt counts
//! (see [`Stats1::memsw_failcnt`]).

use std::collections::BTreeSet;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::event::{eventfd, EventfdFlags};
use rustix::fs::{Mode, OFlags};
use rustix::process::{Pid, Signal};

use corral_spec::LimitKind;

use crate::layout::{join_rel, Layout, Membership};
use crate::limits::{cpus_of, memsw_first, memsw_limit, Enforced, Held, LimitError, LimitSet};
use crate::util::{self, read_flat_keyed};
use crate::{CgroupError, Result};

/// The v1 controllers corral creates a run's group in, in creation order.
pub const RUN_CONTROLLERS: &[&str] = crate::layout::V1_CONTROLLERS;

/// Limit files at or above this value mean "unlimited" (the kernel reports `-1` as
/// `PAGE_COUNTER_MAX * PAGE_SIZE`, 9223372036854771712 with 4 KiB pages).
const UNLIMITED_FROM: u64 = 1 << 62;

/// How long [`Group1::kill_all`] waits for `freezer.state` to read `FROZEN` per round.
const FREEZE_WAIT: Duration = Duration::from_secs(1);

/// One hierarchy's directory of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hier {
    /// The controllers of this hierarchy that the group was asked for (several when
    /// co-mounted, e.g. `cpu` and `cpuacct`).
    controllers: Vec<String>,
    /// The group's directory in this hierarchy.
    dir: PathBuf,
    /// The group's cgroup path as `/proc/PID/cgroup` names it (`/a/b`).
    cgroup_path: PathBuf,
    /// Where the hierarchy is mounted; [`Group1::create`] makes nothing above it.
    mount_point: PathBuf,
}

/// The blkio files counting a group's bytes, the first that exists is read.
pub const BLKIO_BYTES_FILES: [&str; 4] = [
    "blkio.throttle.io_service_bytes_recursive",
    "blkio.io_service_bytes_recursive",
    "blkio.throttle.io_service_bytes",
    "blkio.io_service_bytes",
];

/// A run's group: one directory per controller hierarchy, same relative path in each.
///
/// Co-mounted hierarchies (`cpu,cpuacct`) share one directory, which is created,
/// written and removed once. A `Group1` is only a handle: dropping it removes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group1 {
    rel: PathBuf,
    hiers: Vec<Hier>,
}

/// Everything a run's v1 group counts, read in one go after the run. A counter whose
/// file (or hierarchy) is missing is `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats1 {
    /// `memory.max_usage_in_bytes`: peak memory (page cache included).
    pub memory_max_usage: Option<u64>,
    /// `memory.memsw.max_usage_in_bytes`: peak memory + swap (swap accounting only).
    pub memsw_max_usage: Option<u64>,
    /// `memory.failcnt`: how often the memory limit was hit.
    pub memory_failcnt: Option<u64>,
    /// `memory.memsw.failcnt`: how often the memory + swap limit was hit. The kernel
    /// charges memsw first, so with equal limits a failure never reaches the memory
    /// counter; and kernels 6.16+ do not count memsw failures at all (seen on 6.18), so
    /// with memsw set both failcnts can stay 0 through an OOM kill. Use `oom_kill`.
    pub memsw_failcnt: Option<u64>,
    /// `memory.oom_control`'s `oom_kill`: processes the OOM killer killed (4.13+).
    pub oom_kill: Option<u64>,
    /// `memory.oom_control`'s `under_oom`: 1 while the group is in OOM.
    pub under_oom: Option<u64>,
    /// User CPU time in ns: `cpuacct.usage_user`, else `cpuacct.stat` ticks converted.
    /// Both are sampled at the scheduler tick on current kernels (unlike the exact
    /// `cpuacct.usage`), so user + system can differ from `cpu_usage_ns` by ~10 %.
    pub cpu_user_ns: Option<u64>,
    /// System CPU time in ns: `cpuacct.usage_sys`, else `cpuacct.stat` ticks converted.
    pub cpu_system_ns: Option<u64>,
    /// `cpuacct.usage`: total CPU time in ns.
    pub cpu_usage_ns: Option<u64>,
    /// `cpu.stat`'s `nr_periods`: enforcement periods that had runnable tasks.
    pub nr_periods: Option<u64>,
    /// `cpu.stat`'s `nr_throttled`: periods in which the quota was exhausted.
    pub nr_throttled: Option<u64>,
    /// `cpu.stat`'s `throttled_time`: total time throttled, in ns.
    pub throttled_ns: Option<u64>,
    /// `pids.current`: tasks charged now (unreaped zombies included).
    pub pids_current: Option<u64>,
    /// `pids.peak`: the most tasks charged at once (present on recent kernels, v1 too).
    pub pids_peak: Option<u64>,
    /// `pids.events`' `max`: forks refused because of `pids.max`.
    pub pids_max_events: Option<u64>,
    /// Bytes read, summed over devices, from `blkio.throttle.io_service_bytes_recursive`
    /// (or the first of its fallbacks that exists).
    pub io_read_bytes: Option<u64>,
    /// Bytes written, summed like `io_read_bytes`.
    pub io_write_bytes: Option<u64>,
}

fn io_err(op: &'static str, path: &Path, e: impl Into<std::io::Error>) -> CgroupError {
    CgroupError::Io {
        op,
        path: path.to_path_buf(),
        source: e.into(),
    }
}

impl Group1 {
    /// Creates `<hierarchy root>/<rel>` in each of the given controllers' hierarchies
    /// (parents created as needed, existing parents are fine; the leaf must not exist).
    /// Controllers missing from the layout are skipped and absent from
    /// [`Group1::controllers`]. On failure, removes every directory it created.
    ///
    /// In a new memory group, `memory.use_hierarchy` is set to 1 and the OOM killer is
    /// left on (`oom_kill_disable 0`) if they read otherwise; failing to change them is
    /// only logged.
    pub fn create(layout: &Layout, rel: &Path, controllers: &[&str]) -> Result<Group1> {
        let group = Group1::open(layout, rel, controllers);
        let escapes = rel
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir));
        if escapes || group.hiers.iter().any(|h| h.dir == h.mount_point) {
            return Err(CgroupError::Unsupported(format!(
                "a v1 group needs a path below the hierarchy root, got {}",
                rel.display()
            )));
        }
        let mut created: Vec<PathBuf> = Vec::new();
        let result = group.hiers.iter().try_for_each(|h| {
            if !h.mount_point.is_dir() {
                return Err(io_err(
                    "find hierarchy",
                    &h.mount_point,
                    std::io::Error::from(std::io::ErrorKind::NotFound),
                ));
            }
            let mut missing = Vec::new();
            let mut p = h.dir.parent();
            while let Some(d) = p {
                if d == h.mount_point || !d.starts_with(&h.mount_point) || d.exists() {
                    break;
                }
                missing.push(d.to_path_buf());
                p = d.parent();
            }
            for d in missing.into_iter().rev() {
                match std::fs::create_dir(&d) {
                    Ok(()) => created.push(d),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io_err("mkdir", &d, e)),
                }
            }
            util::mkdir(&h.dir, false)?;
            created.push(h.dir.clone());
            Ok(())
        });
        if let Err(e) = result {
            for d in created.iter().rev() {
                if let Err(e2) = util::rmdir_retry(d, Duration::from_millis(100)) {
                    tracing::warn!("cleanup after failed create: {e2}");
                }
            }
            return Err(e);
        }
        if let Some(m) = group.dir("memory") {
            let p = m.join("memory.use_hierarchy");
            if util::read(&p).is_ok_and(|s| s.trim() == "0") {
                if let Err(e) = util::write(&p, "1") {
                    tracing::debug!("{e}");
                }
            }
            let p = m.join("memory.oom_control");
            let oc = read_flat_keyed(&p).unwrap_or_default();
            if oc.get("oom_kill_disable").copied().unwrap_or(0) != 0 {
                if let Err(e) = util::write(&p, "0") {
                    tracing::warn!("cannot re-enable the OOM killer: {e}");
                }
            }
        }
        Ok(group)
    }

    /// Names an existing group (for gc and tests); nothing is checked or created.
    /// Controllers missing from the layout are skipped.
    pub fn open(layout: &Layout, rel: &Path, controllers: &[&str]) -> Group1 {
        let mut hiers: Vec<Hier> = Vec::new();
        for c in controllers {
            let Some(mount) = layout.v1.get(*c) else {
                tracing::debug!("no v1 hierarchy for {c}");
                continue;
            };
            let dir = join_rel(mount, rel);
            if let Some(h) = hiers.iter_mut().find(|h| h.dir == dir) {
                if !h.controllers.iter().any(|x| x == c) {
                    h.controllers.push(c.to_string());
                }
                continue;
            }
            let cgroup_path = if rel.starts_with(&mount.root) && rel.is_absolute() {
                rel.to_path_buf()
            } else {
                mount.root.join(rel.strip_prefix("/").unwrap_or(rel))
            };
            hiers.push(Hier {
                controllers: vec![c.to_string()],
                dir,
                cgroup_path,
                mount_point: mount.mount_point.clone(),
            });
        }
        Group1 {
            rel: rel.to_path_buf(),
            hiers,
        }
    }

    /// The path the group was created or opened with.
    pub fn rel(&self) -> &Path {
        &self.rel
    }

    /// The controllers this group has a directory for, in the order asked.
    pub fn controllers(&self) -> Vec<String> {
        self.hiers
            .iter()
            .flat_map(|h| h.controllers.iter().cloned())
            .collect()
    }

    /// The group's directory in `controller`'s hierarchy.
    pub fn dir(&self, controller: &str) -> Option<&Path> {
        self.hiers
            .iter()
            .find(|h| h.controllers.iter().any(|c| c == controller))
            .map(|h| h.dir.as_path())
    }

    /// The distinct directories of the group, one per hierarchy.
    pub fn dirs(&self) -> Vec<&Path> {
        self.hiers.iter().map(|h| h.dir.as_path()).collect()
    }

    fn file(&self, controller: &str, name: &str) -> Result<PathBuf> {
        self.dir(controller).map(|d| d.join(name)).ok_or_else(|| {
            CgroupError::Unsupported(format!(
                "group {} has no {controller} hierarchy",
                self.rel.display()
            ))
        })
    }

    fn read_opt(&self, controller: &str, name: &str) -> Option<u64> {
        let p = self.dir(controller)?.join(name);
        util::read_u64(&p).ok().flatten()
    }

    /// Sets `memory.limit_in_bytes` (None: `-1`, unlimited). The kernel refuses a value
    /// above `memory.memsw.limit_in_bytes` (EINVAL); [`Group1::set_memory_limits`]
    /// orders the two writes.
    pub fn set_memory_limit(&self, bytes: Option<u64>) -> Result<()> {
        util::write(
            &self.file("memory", "memory.limit_in_bytes")?,
            &num_or_neg(bytes),
        )
    }

    /// Sets `memory.memsw.limit_in_bytes` (memory + swap; None: unlimited). Returns
    /// false, writing nothing, when the file is missing (swap accounting off). The
    /// kernel requires memsw >= `limit_in_bytes`, so when lowering set the memory limit
    /// first; [`Group1::set_memory_limits`] does this.
    pub fn set_memsw_limit(&self, bytes: Option<u64>) -> Result<bool> {
        let Some(d) = self.dir("memory") else {
            return Ok(false);
        };
        let p = d.join("memory.memsw.limit_in_bytes");
        if !p.exists() {
            return Ok(false);
        }
        util::write(&p, &num_or_neg(bytes))?;
        Ok(true)
    }

    /// Sets both the memory and the memory+swap limits in the order the kernel accepts
    /// (it keeps memsw >= memory after each write: memory first when lowering, memsw
    /// first when raising memory above the current memsw, see [`memsw_first`]).
    /// Returns whether the memsw limit exists and was set.
    pub fn set_memory_limits(&self, mem: Option<u64>, memsw: Option<u64>) -> Result<bool> {
        let current = match self.dir("memory") {
            Some(d) if d.join("memory.memsw.limit_in_bytes").exists() => self.memsw_limit()?,
            _ => None,
        };
        if memsw_first(mem, current) {
            let set = self.set_memsw_limit(memsw)?;
            self.set_memory_limit(mem)?;
            Ok(set)
        } else {
            self.set_memory_limit(mem)?;
            self.set_memsw_limit(memsw)
        }
    }

    /// Writes `limits` to the group's memory, cpu and pids hierarchies (those it has),
    /// and reads each back. Swap goes into `memory.memsw.limit_in_bytes` as
    /// [`memsw_limit`] (memory + swap) where that file exists, and is read back as
    /// memsw minus memory. A missing hierarchy or file is [`Held::Absent`]; the first
    /// refused write is the error (a refused memsw counts as [`LimitKind::Memory`]).
    pub fn write_limits(&self, limits: &LimitSet) -> std::result::Result<Enforced, LimitError> {
        let mut out = Enforced::default();
        if let Some(d) = self.dir("memory") {
            let has_memsw = d.join("memory.memsw.limit_in_bytes").exists();
            self.set_memory_limits(limits.memory, memsw_limit(limits.memory, limits.swap))
                .map_err(LimitError::at(LimitKind::Memory))?;
            let memory = self.memory_limit().ok().flatten();
            out.memory = Held::Read(memory);
            if has_memsw {
                out.swap = Held::Read(match (self.memsw_limit().ok().flatten(), memory) {
                    (Some(sw), Some(m)) => Some(sw.saturating_sub(m)),
                    _ => None,
                });
            }
        }
        if self.dir("cpu").is_some() {
            self.set_cpu_quota(limits.cpu_quota_us, limits.cpu_period_us)
                .map_err(LimitError::at(LimitKind::Cpus))?;
            out.cpus = Held::Read(self.cpu_quota().ok().and_then(|(q, p)| cpus_of(q, p)));
        }
        if self.dir("pids").is_some() {
            self.set_pids_max(limits.pids)
                .map_err(LimitError::at(LimitKind::Pids))?;
            out.pids = Held::Read(self.pids_max().ok().flatten());
        }
        Ok(out)
    }

    /// Reads `memory.limit_in_bytes` back (None: unlimited).
    pub fn memory_limit(&self) -> Result<Option<u64>> {
        read_limit(&self.file("memory", "memory.limit_in_bytes")?)
    }

    /// Reads `memory.memsw.limit_in_bytes` back (None: unlimited).
    pub fn memsw_limit(&self) -> Result<Option<u64>> {
        read_limit(&self.file("memory", "memory.memsw.limit_in_bytes")?)
    }

    /// Sets the CFS bandwidth: `cpu.cfs_period_us`, then `cpu.cfs_quota_us` (None:
    /// `-1`, unlimited). The kernel takes periods of 1 ms to 1 s and quotas of >= 1 ms.
    pub fn set_cpu_quota(&self, quota_us: Option<u64>, period_us: u64) -> Result<()> {
        util::write(
            &self.file("cpu", "cpu.cfs_period_us")?,
            &period_us.to_string(),
        )?;
        util::write(
            &self.file("cpu", "cpu.cfs_quota_us")?,
            &num_or_neg(quota_us),
        )
    }

    /// Reads the CFS bandwidth back as (quota_us or None for unlimited, period_us).
    pub fn cpu_quota(&self) -> Result<(Option<u64>, u64)> {
        let qp = self.file("cpu", "cpu.cfs_quota_us")?;
        let q = util::read(&qp)?;
        let quota = match q.trim() {
            "-1" => None,
            t => Some(t.parse().map_err(|_| CgroupError::Parse {
                path: qp.clone(),
                what: format!("expected a number or -1, got {t:?}"),
            })?),
        };
        let pp = self.file("cpu", "cpu.cfs_period_us")?;
        let period = util::read_u64(&pp)?.ok_or_else(|| CgroupError::Parse {
            path: pp,
            what: "expected a number".into(),
        })?;
        Ok((quota, period))
    }

    /// Sets `cpu.shares`, the group's CFS weight against its siblings (default 1024,
    /// 2..=262144; v2's `cpu.weight`).
    pub fn set_cpu_shares(&self, shares: u64) -> Result<()> {
        util::write(&self.file("cpu", "cpu.shares")?, &shares.to_string())
    }

    /// Sets `pids.max` (None: `max`).
    pub fn set_pids_max(&self, n: Option<u64>) -> Result<()> {
        let v = n.map_or_else(|| "max".to_string(), |n| n.to_string());
        util::write(&self.file("pids", "pids.max")?, &v)
    }

    /// Reads `pids.max` back (None: `max`).
    pub fn pids_max(&self) -> Result<Option<u64>> {
        util::read_u64(&self.file("pids", "pids.max")?)
    }

    /// Opens one `O_WRONLY|O_CLOEXEC` fd per hierarchy directory's `tasks`, for a
    /// freshly forked (so single-threaded) child to move itself in before exec with
    /// [`enter_tasks_files`]. `tasks` rather than `cgroup.procs`: moving only the
    /// writing thread lets the kernel skip the global `cgroup_threadgroup_rwsem`, whose
    /// write side waits for an RCU grace period (8-20 ms per run on 6.18) and
    /// serializes every placement on the host.
    pub fn open_tasks_files(&self) -> Result<Vec<OwnedFd>> {
        self.hiers
            .iter()
            .map(|h| {
                let p = h.dir.join("tasks");
                rustix::fs::open(&p, OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty())
                    .map_err(|e| io_err("open", &p, e))
            })
            .collect()
    }

    /// Moves a process (with all its threads) into the group in every hierarchy.
    pub fn add_pid(&self, pid: i32) -> Result<()> {
        let s = pid.to_string();
        for h in &self.hiers {
            util::write(&h.dir.join("cgroup.procs"), &s)?;
        }
        Ok(())
    }

    /// An eventfd (`EFD_CLOEXEC|EFD_NONBLOCK`) registered through the memory group's
    /// `cgroup.event_control` for `memory.oom_control`: its counter becomes > 0 each
    /// time the group hits its limit and the OOM killer is invoked (read it with
    /// [`eventfd_take`]). The kernel also signals it once when the group is removed
    /// (and at registration if the group is under OOM then), so confirm with
    /// [`Stats1::oom_kill`]. Closing the fd unregisters it.
    ///
    /// Works on 6.18, but the kernel logs once "oom_control is deprecated and will be
    /// removed": if registration fails, poll `oom_kill` in [`Group1::stats`] instead.
    pub fn oom_eventfd(&self) -> Result<OwnedFd> {
        let oc = self.file("memory", "memory.oom_control")?;
        let ctl = self.file("memory", "cgroup.event_control")?;
        let efd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map_err(|e| io_err("eventfd for", &oc, e))?;
        let ofd = rustix::fs::open(&oc, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| io_err("open", &oc, e))?;
        util::write(&ctl, &format!("{} {}", efd.as_raw_fd(), ofd.as_raw_fd()))?;
        Ok(efd)
    }

    /// Every directory of the group in every hierarchy, parents before children.
    fn all_dirs(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for h in &self.hiers {
            out.extend(subtree(&h.dir));
        }
        out
    }

    /// The processes in the group, as the union of `cgroup.procs` over its hierarchies
    /// and their descendant groups (sorted, deduplicated). Zombies are not listed.
    pub fn pids(&self) -> Vec<i32> {
        let mut set = BTreeSet::new();
        for d in self.all_dirs() {
            set.extend(util::read_pids(&d.join("cgroup.procs")).unwrap_or_default());
        }
        set.into_iter().collect()
    }

    /// The processes of the group (and its descendant groups) in one controller's
    /// hierarchy: cheaper than [`Group1::pids`] when every process joins every
    /// hierarchy, as a run's do.
    pub fn pids_in(&self, controller: &str) -> Vec<i32> {
        let Some(h) = self
            .hiers
            .iter()
            .find(|h| h.controllers.iter().any(|c| c == controller))
        else {
            return self.pids();
        };
        subtree(&h.dir)
            .iter()
            .flat_map(|d| util::read_pids(&d.join("cgroup.procs")).unwrap_or_default())
            .collect()
    }

    /// True when no (non-zombie) process is left in any hierarchy of the group.
    pub fn is_empty(&self) -> bool {
        self.pids().is_empty()
    }

    /// True when `/proc/<pid>/cgroup` places the process in this group (or below) in at
    /// least one of the group's hierarchies.
    pub fn contains_pid(&self, pid: i32) -> bool {
        let m = Membership::of_pid(pid);
        self.hiers.iter().any(|h| {
            h.controllers
                .iter()
                .any(|c| m.v1.get(c).is_some_and(|p| p.starts_with(&h.cgroup_path)))
        })
    }

    /// Sends `sig` to every process of the group; returns how many were signalled.
    /// Each pid is pinned with `pidfd_open` and checked to still be in this group
    /// before `pidfd_send_signal`, so a recycled pid is not hit.
    pub fn signal_all(&self, sig: Signal) -> usize {
        self.pids()
            .into_iter()
            .filter(|&pid| self.signal_checked(pid, sig))
            .count()
    }

    fn signal_checked(&self, pid: i32, sig: Signal) -> bool {
        let Some(p) = Pid::from_raw(pid) else {
            return false;
        };
        match rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()) {
            Ok(fd) => {
                self.contains_pid(pid) && rustix::process::pidfd_send_signal(&fd, sig).is_ok()
            }
            // No pidfd_open (pre-5.3): check, then kill; the window is tiny.
            Err(rustix::io::Errno::NOSYS) => {
                self.contains_pid(pid) && rustix::process::kill_process(p, sig).is_ok()
            }
            Err(_) => false,
        }
    }

    /// Writes `freezer.state` (`FROZEN` or `THAWED`). When freezing, waits up to `wait`
    /// for the state to read `FROZEN` and returns whether it did.
    pub fn set_frozen(&self, frozen: bool, wait: Duration) -> Result<bool> {
        let p = self.file("freezer", "freezer.state")?;
        util::write(&p, if frozen { "FROZEN" } else { "THAWED" })?;
        if !frozen {
            return Ok(true);
        }
        let start = Instant::now();
        let mut delay = Duration::from_micros(500);
        loop {
            if util::read(&p)?.trim() == "FROZEN" {
                return Ok(true);
            }
            if start.elapsed() >= wait {
                return Ok(false);
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(10));
        }
    }

    /// Kills every process of the group and its descendant groups.
    ///
    /// With a freezer hierarchy, each round freezes the group (waiting up to 1 s for
    /// `FROZEN`) so nothing can fork, SIGKILLs every pid, thaws, and gives the dying a
    /// moment; rounds repeat until no pid remains. Without a freezer, SIGKILL is sent in
    /// rounds to whatever pids remain. Returns [`CgroupError::Timeout`] if processes are
    /// still there after `budget`. The group is always left thawed.
    pub fn kill_all(&self, budget: Duration) -> Result<()> {
        let start = Instant::now();
        let has_freezer = self
            .dir("freezer")
            .is_some_and(|d| d.join("freezer.state").exists());
        let mut rounds = 0u32;
        loop {
            if self.is_empty() {
                return Ok(());
            }
            if start.elapsed() >= budget {
                return Err(CgroupError::Timeout(format!(
                    "{} still has processes {:?} after {rounds} kill rounds in {:?}",
                    self.rel.display(),
                    self.pids(),
                    budget
                )));
            }
            rounds += 1;
            let remaining = budget.saturating_sub(start.elapsed());
            let frozen = has_freezer
                && match self.set_frozen(true, FREEZE_WAIT.min(remaining)) {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::debug!("freeze failed: {e}");
                        false
                    }
                };
            for pid in self.pids() {
                if frozen {
                    // Frozen tasks cannot exit, so their pids cannot be recycled.
                    if let Some(p) = Pid::from_raw(pid) {
                        let _ = rustix::process::kill_process(p, Signal::KILL);
                    }
                } else {
                    self.signal_checked(pid, Signal::KILL);
                }
            }
            if has_freezer {
                if let Err(e) = self.set_frozen(false, Duration::ZERO) {
                    tracing::warn!("cannot thaw {}: {e}", self.rel.display());
                }
            }
            // Let SIGKILLed tasks finish exiting before freezing them again.
            let settle = Instant::now();
            let mut delay = Duration::from_micros(500);
            while !self.is_empty()
                && settle.elapsed() < Duration::from_millis(100)
                && start.elapsed() < budget
            {
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_millis(10));
            }
        }
    }

    /// Reads `cpuacct.usage`: CPU time of the group (and descendants) in ns.
    pub fn cpu_usage_ns(&self) -> Result<u64> {
        let p = self.file("cpuacct", "cpuacct.usage")?;
        util::read_u64(&p)?.ok_or_else(|| CgroupError::Parse {
            path: p,
            what: "expected a number".into(),
        })
    }

    /// The memory charged to the group now and its peak so far
    /// (`memory.usage_in_bytes`, `memory.max_usage_in_bytes`); `None` where unreadable.
    pub fn memory_now(&self) -> (Option<u64>, Option<u64>) {
        (
            self.read_opt("memory", "memory.usage_in_bytes"),
            self.read_opt("memory", "memory.max_usage_in_bytes"),
        )
    }

    /// Reads every counter corral reports; missing files give `None`.
    pub fn stats(&self) -> Stats1 {
        let mut s = Stats1 {
            memory_max_usage: self.read_opt("memory", "memory.max_usage_in_bytes"),
            memsw_max_usage: self.read_opt("memory", "memory.memsw.max_usage_in_bytes"),
            memory_failcnt: self.read_opt("memory", "memory.failcnt"),
            memsw_failcnt: self.read_opt("memory", "memory.memsw.failcnt"),
            cpu_usage_ns: self.read_opt("cpuacct", "cpuacct.usage"),
            pids_current: self.read_opt("pids", "pids.current"),
            pids_peak: self.read_opt("pids", "pids.peak"),
            ..Stats1::default()
        };
        if let Some(d) = self.dir("memory") {
            if let Ok(m) = read_flat_keyed(&d.join("memory.oom_control")) {
                s.oom_kill = m.get("oom_kill").copied();
                s.under_oom = m.get("under_oom").copied();
            }
        }
        if let Some(d) = self.dir("cpuacct") {
            s.cpu_user_ns = util::read_u64(&d.join("cpuacct.usage_user")).ok().flatten();
            s.cpu_system_ns = util::read_u64(&d.join("cpuacct.usage_sys")).ok().flatten();
            if s.cpu_user_ns.is_none() || s.cpu_system_ns.is_none() {
                if let Ok(m) = read_flat_keyed(&d.join("cpuacct.stat")) {
                    let ns_per_tick = 1_000_000_000 / clock_ticks();
                    let conv = |k: &str| m.get(k).map(|t| t.saturating_mul(ns_per_tick));
                    s.cpu_user_ns = s.cpu_user_ns.or_else(|| conv("user"));
                    s.cpu_system_ns = s.cpu_system_ns.or_else(|| conv("system"));
                }
            }
        }
        if let Some(d) = self.dir("cpu") {
            if let Ok(m) = read_flat_keyed(&d.join("cpu.stat")) {
                s.nr_periods = m.get("nr_periods").copied();
                s.nr_throttled = m.get("nr_throttled").copied();
                s.throttled_ns = m.get("throttled_time").copied();
            }
        }
        if let Some(d) = self.dir("pids") {
            if let Ok(m) = read_flat_keyed(&d.join("pids.events")) {
                s.pids_max_events = m.get("max").copied();
            }
        }
        if let Some((r, w)) = self.io_bytes() {
            s.io_read_bytes = Some(r);
            s.io_write_bytes = Some(w);
        }
        s
    }

    /// Bytes read and written by the group (blkio's service-bytes counters).
    pub fn io_bytes(&self) -> Option<(u64, u64)> {
        let d = self.dir("blkio")?;
        let text = BLKIO_BYTES_FILES
            .iter()
            .find_map(|f| util::read(&d.join(f)).ok())?;
        Some(parse_blkio_bytes(&text))
    }

    /// Removes the group's directory in every hierarchy, deepest descendants first,
    /// with [`util::rmdir_retry`] (EBUSY retried within `budget` per directory). Missing
    /// directories are fine. Every hierarchy is attempted; the first error is returned.
    /// Parents made by [`Group1::create`] are left in place.
    pub fn remove(&self, budget: Duration) -> Result<()> {
        let mut first = None;
        for h in &self.hiers {
            let mut dirs = subtree(&h.dir);
            dirs.reverse();
            for d in dirs {
                if let Err(e) = util::rmdir_retry(&d, budget) {
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// Moves the calling thread into every `tasks` fd from [`Group1::open_tasks_files`]
/// by writing `0` (the writer itself). Async-signal-safe (one `write` per fd), for use
/// between fork and exec, where the calling thread is the whole process.
pub fn enter_tasks_files<Fd: AsFd>(fds: &[Fd]) -> rustix::io::Result<()> {
    for fd in fds {
        rustix::io::write(fd, b"0")?;
    }
    Ok(())
}

/// Reads and resets an eventfd's counter (from [`Group1::oom_eventfd`]); 0 when
/// nothing was signalled since the last read (the fd is non-blocking).
pub fn eventfd_take(fd: BorrowedFd<'_>) -> Result<u64> {
    let mut b = [0u8; 8];
    match rustix::io::read(fd, &mut b) {
        Ok(8) => Ok(u64::from_ne_bytes(b)),
        Ok(n) => Err(CgroupError::Parse {
            path: PathBuf::from("eventfd"),
            what: format!("short read of {n} bytes"),
        }),
        Err(rustix::io::Errno::AGAIN) => Ok(0),
        Err(e) => Err(io_err("read", Path::new("eventfd"), e)),
    }
}

/// A directory and its descendant directories, parents before children.
fn subtree(dir: &Path) -> Vec<PathBuf> {
    if !dir.exists() {
        return Vec::new();
    }
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if let Ok(rd) = std::fs::read_dir(&out[i]) {
            let kids: Vec<PathBuf> = rd
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                .map(|e| e.path())
                .collect();
            out.extend(kids);
        }
        i += 1;
    }
    out
}

fn num_or_neg(v: Option<u64>) -> String {
    v.map_or_else(|| "-1".to_string(), |n| n.to_string())
}

/// Reads a v1 limit file: the kernel shows "unlimited" as a huge number (written as
/// `-1`, which a plain file keeps as is); both read as `None`.
fn read_limit(p: &Path) -> Result<Option<u64>> {
    let s = util::read(p)?;
    match s.trim() {
        "-1" => Ok(None),
        t => t
            .parse::<u64>()
            .map(|v| (v < UNLIMITED_FROM).then_some(v))
            .map_err(|_| CgroupError::Parse {
                path: p.to_path_buf(),
                what: format!("expected a number or -1, got {t:?}"),
            }),
    }
}

fn clock_ticks() -> u64 {
    rustix::param::clock_ticks_per_second().max(1)
}

/// Sums the `Read` and `Write` lines over devices of a blkio `io_service_bytes` file
/// (`MAJ:MIN Op BYTES` lines, plus a final `Total N` line that is ignored).
pub fn parse_blkio_bytes(text: &str) -> (u64, u64) {
    let (mut r, mut w) = (0u64, 0u64);
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 3 {
            continue;
        }
        let v: u64 = f[2].parse().unwrap_or(0);
        match f[1] {
            "Read" => r = r.saturating_add(v),
            "Write" => w = w.saturating_add(v),
            _ => {}
        }
    }
    (r, w)
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMOUNTED: &str = "\
30 25 0:28 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
31 25 0:29 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
";

    #[test]
    fn comounted_share_a_dir() {
        let l = Layout::from_mountinfo(COMOUNTED);
        let g = Group1::open(&l, Path::new("/a/b"), RUN_CONTROLLERS);
        assert_eq!(g.controllers(), vec!["memory", "cpu", "cpuacct"]);
        assert_eq!(g.dirs().len(), 2);
        assert_eq!(
            g.dir("cpuacct"),
            Some(Path::new("/sys/fs/cgroup/cpu,cpuacct/a/b"))
        );
        assert_eq!(g.dir("cpu"), g.dir("cpuacct"));
        assert_eq!(g.dir("pids"), None);
        assert!(matches!(
            g.set_pids_max(Some(1)),
            Err(CgroupError::Unsupported(_))
        ));
        assert_eq!(g.stats(), Stats1::default());
    }

    #[test]
    fn cgroup_paths_with_a_mount_root() {
        let l = Layout::from_mountinfo(
            "31 25 0:29 /outer /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n",
        );
        let g = Group1::open(&l, Path::new("run/x"), &["memory"]);
        assert_eq!(
            g.dir("memory"),
            Some(Path::new("/sys/fs/cgroup/memory/run/x"))
        );
        assert_eq!(g.hiers[0].cgroup_path, PathBuf::from("/outer/run/x"));
        let g = Group1::open(&l, Path::new("/outer/run/x"), &["memory"]);
        assert_eq!(
            g.dir("memory"),
            Some(Path::new("/sys/fs/cgroup/memory/run/x"))
        );
        assert_eq!(g.hiers[0].cgroup_path, PathBuf::from("/outer/run/x"));
    }

    /// A scratch directory standing in for cgroup mounts (plain directories).
    struct Scratch(PathBuf);
    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let p =
                std::env::temp_dir().join(format!("corral-v1-unit-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Scratch(p)
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn fake_layout(lines: &[(&Path, &str)]) -> Layout {
        let text: String = lines
            .iter()
            .enumerate()
            .map(|(i, (mp, opts))| {
                format!(
                    "{} 25 0:{i} / {} rw - cgroup cgroup rw,{opts}\n",
                    30 + i,
                    mp.display()
                )
            })
            .collect();
        Layout::from_mountinfo(&text)
    }

    #[test]
    fn create_comounted_once_and_remove() {
        let s = Scratch::new("comount");
        let (cc, mem) = (s.0.join("cpu,cpuacct"), s.0.join("memory"));
        std::fs::create_dir_all(&cc).unwrap();
        std::fs::create_dir_all(&mem).unwrap();
        let l = fake_layout(&[(&cc, "cpu,cpuacct"), (&mem, "memory")]);
        let rel = Path::new("/parent/run");
        let g = Group1::create(&l, rel, &["memory", "cpu", "cpuacct", "pids"]).unwrap();
        assert_eq!(g.controllers(), vec!["memory", "cpu", "cpuacct"]);
        assert!(cc.join("parent/run").is_dir() && mem.join("parent/run").is_dir());
        // The leaf must not exist; nothing is created or removed on that failure.
        assert!(Group1::create(&l, rel, &["memory", "cpu"]).is_err());
        assert!(cc.join("parent/run").is_dir() && mem.join("parent/run").is_dir());
        std::fs::create_dir(cc.join("parent/run/sub")).unwrap();
        g.remove(Duration::from_millis(100)).unwrap();
        assert!(!cc.join("parent/run").exists() && !mem.join("parent/run").exists());
        assert!(cc.join("parent").is_dir(), "parents are left in place");
        assert!(Group1::create(&l, Path::new("/"), &["memory"]).is_err());
        assert!(Group1::create(&l, Path::new("/a/../.."), &["memory"]).is_err());
    }

    #[test]
    fn failed_create_removes_what_it_made() {
        let s = Scratch::new("fail");
        let mem = s.0.join("memory");
        std::fs::create_dir_all(&mem).unwrap();
        let gone = s.0.join("pids-not-mounted");
        let l = fake_layout(&[(&mem, "memory"), (&gone, "pids")]);
        let e = Group1::create(&l, Path::new("/x/y/run"), &["memory", "pids"]).unwrap_err();
        assert!(e.to_string().contains("pids-not-mounted"), "{e}");
        assert!(!mem.join("x").exists(), "created parents are removed too");
        assert!(!gone.exists(), "nothing is made above a mount point");
    }

    #[test]
    fn blkio_bytes() {
        let t = "8:0 Read 100\n8:0 Write 5\n8:0 Sync 5\n8:0 Async 100\n8:0 Total 105\n\
                 254:0 Read 23\n254:0 Write 7\nTotal 135\n";
        assert_eq!(parse_blkio_bytes(t), (123, 12));
        assert_eq!(parse_blkio_bytes("Total 0\n"), (0, 0));
    }

    #[test]
    fn limits_format() {
        assert_eq!(num_or_neg(None), "-1");
        assert_eq!(num_or_neg(Some(5)), "5");
    }
}
