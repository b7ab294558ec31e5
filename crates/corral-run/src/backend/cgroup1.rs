//! The cgroup v1 backend: one group per run in each controller hierarchy.
//!
//! v1 has no `memory.oom.group`, so an OOM kill takes one process and corral ends the
//! rest of the tree itself when the OOM eventfd fires; no `cgroup.kill`, so the tree is
//! killed under the freezer; no `cgroup.events`, so the end of a tree is found by
//! reading `cgroup.procs` (only while a killed tree is being torn down).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use corral_cgroup::layout::Layout;
use corral_cgroup::limits::Held;
use corral_cgroup::tree::{Tree, RMDIR_BUDGET};
use corral_cgroup::v1::{eventfd_take, Group1, RUN_CONTROLLERS};
use corral_spec::{LimitKind, Limits};
use rustix::process::Signal;

use super::{
    host_has_swap, limit_set, reap_dead, Backend, BackendError, BackendKind, Collected, Event,
    Plan, Reaped, Sandbox,
};
use crate::guard::GuardEntry;
use crate::spawn::{ChildSetup, Containment, Placement};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;

/// The cgroup v1 backend.
#[derive(Debug)]
pub struct Cgroup1Backend {
    layout: Layout,
    root: PathBuf,
    controllers: Vec<String>,
    memsw: bool,
}

/// Turns `--cgroup-root` into the path inside each hierarchy: `/corral` and `corral`
/// both mean `<mount>/corral`; a path under one of the v1 mounts is taken relative to
/// that mount (`/sys/fs/cgroup/memory/corral` is `corral` too).
fn relative_root(layout: &Layout, root: Option<&Path>) -> PathBuf {
    let Some(r) = root else {
        return PathBuf::from("corral");
    };
    for m in layout.v1.values() {
        if let Ok(rel) = r.strip_prefix(&m.mount_point) {
            return rel.to_path_buf();
        }
    }
    r.strip_prefix("/").unwrap_or(r).to_path_buf()
}

impl Cgroup1Backend {
    /// Finds the v1 hierarchies and checks that corral may create groups there.
    pub fn new(root: Option<&Path>) -> Result<Self, BackendError> {
        let layout = Layout::cached().clone();
        let mem = layout.v1.get("memory").ok_or_else(|| {
            BackendError::Unavailable("no cgroup v1 memory hierarchy is mounted".into())
        })?;
        let rel = relative_root(&layout, root);
        if rel.as_os_str().is_empty() {
            return Err(BackendError::Unavailable(
                "the cgroup v1 root must be below the hierarchy roots (e.g. /corral)".into(),
            ));
        }
        let probe = mem.mount_point.join(&rel);
        let existing = probe
            .ancestors()
            .find(|p| p.exists())
            .unwrap_or(&mem.mount_point);
        if rustix::fs::access(existing, rustix::fs::Access::WRITE_OK).is_err() {
            return Err(BackendError::Unavailable(format!(
                "cannot create cgroups under {} (run as root, or use --cgroup-root with a \
                 writable group)",
                existing.display()
            )));
        }
        let controllers: Vec<String> = RUN_CONTROLLERS
            .iter()
            .filter(|c| layout.v1.contains_key(**c))
            .map(|c| c.to_string())
            .collect();
        let memsw = mem.mount_point.join("memory.memsw.limit_in_bytes").exists();
        Ok(Cgroup1Backend {
            layout,
            root: rel,
            controllers,
            memsw,
        })
    }

    fn has(&self, c: &str) -> bool {
        self.controllers.iter().any(|x| x == c)
    }
}

impl Backend for Cgroup1Backend {
    fn kind(&self) -> BackendKind {
        BackendKind::Cgroup1
    }

    fn reap_leftovers(&self) -> Vec<Reaped> {
        // Every run has a memory group (the memory hierarchy is required): list there.
        let dir = self.layout.v1["memory"].mount_point.join(&self.root);
        let names = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        let root = self.root.clone();
        reap_dead(names, |n| GuardEntry::V1(root.join(n)))
    }

    fn reason(&self) -> String {
        format!(
            "cgroup v1 hierarchies ({}) under /{}",
            self.controllers.join(", "),
            self.root.display()
        )
    }

    fn plan(&self, limits: &Limits) -> Plan {
        let mut p = Plan::everything(limits);
        if !self.has("memory") {
            p.drop_limit(LimitKind::Memory, "no v1 memory hierarchy");
        }
        if let Some(why) = swap_gap(limits, self.memsw, host_has_swap()) {
            p.drop_limit(LimitKind::Swap, why);
        }
        if !self.has("cpu") {
            p.drop_limit(LimitKind::Cpus, "no v1 cpu hierarchy");
        }
        if !self.has("cpuacct") {
            p.drop_limit(
                LimitKind::CpuTime,
                "no v1 cpuacct hierarchy to measure CPU time",
            );
        }
        if !self.has("pids") {
            p.drop_limit(LimitKind::Pids, "no v1 pids hierarchy");
        }
        match self.layout.v1.get("blkio") {
            None => p.drop_io("no v1 blkio hierarchy"),
            Some(m) => {
                let d = &m.mount_point;
                if !d.join("blkio.weight").exists() && !d.join("blkio.bfq.weight").exists() {
                    p.drop_limit(
                        LimitKind::IoWeight,
                        "no blkio.weight: this kernel's I/O schedulers have no cgroup v1 weights (needs BFQ with blkio.bfq.weight)",
                    );
                }
                for k in [LimitKind::IoWriteBps, LimitKind::IoWriteIops] {
                    p.note_partial(k, V1_WRITEBACK);
                }
            }
        }
        p
    }

    fn create(&self, name: &str, limits: &Limits) -> Result<Box<dyn Sandbox>, BackendError> {
        let ctrls: Vec<&str> = self.controllers.iter().map(String::as_str).collect();
        let group =
            Group1::create(&self.layout, &self.root.join(name), &ctrls).map_err(|error| {
                BackendError::Cgroup {
                    what: "cannot create the run's cgroups",
                    error,
                }
            })?;
        match Sandbox1::new(group.clone(), limits, self.plan(limits)) {
            Ok(mut s) => {
                s.contain = containment(&self.layout);
                Ok(Box::new(s))
            }
            Err(e) => {
                let _ = group.remove(Duration::from_millis(500));
                Err(e)
            }
        }
    }
}

/// Why a v1 write throttle holds only in part.
pub const V1_WRITEBACK: &str = "cgroup v1 throttles only direct I/O: buffered writes reach the disk later through the kernel's writeback, outside the run's group, unthrottled (cgroup v2 with the memory controller throttles them too)";

/// Root can write any cgroup.procs, and v1 has no namespace check on moves: give
/// root-run analyses a mount namespace in which every cgroup file system is read-only.
/// They still read their own limits (`/proc/self/cgroup` names their groups).
fn containment(layout: &Layout) -> Option<Containment> {
    if !rustix::process::geteuid().is_root() {
        return None;
    }
    let mut points: Vec<PathBuf> = layout.v1.values().map(|m| m.mount_point.clone()).collect();
    points.extend(layout.v2.iter().map(|m| m.mount_point.clone()));
    points.sort();
    points.dedup();
    Some(Containment {
        cgroup_namespace: false,
        cgroup2_mount: None,
        readonly: points
            .iter()
            .filter_map(|p| CString::new(p.as_os_str().as_bytes()).ok())
            .collect(),
    })
}

/// v1's user/system times are sampled at the scheduler tick (4 ms at 250 Hz), while
/// `cpuacct.usage` is exact: split the exact total in the sampled proportion, as the
/// kernel itself does for v2's `cpu.stat` and for `/proc/PID/stat` (`cputime_adjust`).
fn split_usage(total: Option<u64>, user: Option<u64>, system: Option<u64>) -> (u64, u64) {
    match (total, user, system) {
        (Some(t), Some(u), Some(s)) if u + s > 0 => {
            let u2 = (t as u128 * u as u128 / (u + s) as u128) as u64;
            (u2, t - u2)
        }
        (Some(t), _, _) => (t, 0),
        (None, u, s) => (u.unwrap_or(0), s.unwrap_or(0)),
    }
}

/// One run's v1 groups.
#[derive(Debug)]
pub struct Sandbox1 {
    contain: Option<Containment>,
    group: Group1,
    procs: Vec<OwnedFd>,
    oom_fd: Option<OwnedFd>,
    plan: Plan,
    oom_seen: u64,
    sampler: std::sync::OnceLock<corral_cgroup::sample::Sampler>,
}

impl Sandbox1 {
    fn new(group: Group1, limits: &Limits, mut plan: Plan) -> Result<Self, BackendError> {
        let held = group
            .write_limits(&limit_set(limits))
            .map_err(BackendError::Limit)?;
        plan.read_back(&held);
        // Swap is memsw - memory where both are limited; otherwise the plan's value stays.
        if let Held::Read(Some(swap)) = held.swap {
            plan.enforced.swap_bytes = Some(swap);
        }
        let oom_fd = match group.dir("memory") {
            Some(_) => Some(group.oom_eventfd()?),
            None => None,
        };
        let procs = group.open_tasks_files()?;
        Ok(Sandbox1 {
            contain: None,
            group,
            procs,
            oom_fd,
            plan,
            oom_seen: 0,
            sampler: std::sync::OnceLock::new(),
        })
    }
}

impl Sandbox for Sandbox1 {
    fn guard_entry(&self) -> Option<GuardEntry> {
        Some(GuardEntry::V1(self.group.rel().to_path_buf()))
    }

    fn cgroup(&self) -> Option<String> {
        self.group
            .dir("memory")
            .or_else(|| self.group.dirs().first().copied())
            .map(|d| d.display().to_string())
    }

    fn plan(&self) -> Plan {
        self.plan.clone()
    }

    fn placement(&self) -> Placement<'_> {
        Placement {
            cgroup_dir: None,
            procs: self.procs.iter().map(|f| f.as_fd()).collect(),
            fallback_procs: None,
        }
    }

    fn child_setup<'a>(&'a self, setup: &mut ChildSetup<'a>) {
        setup.contain = self.contain.clone();
    }

    fn event_fd(&self) -> Option<BorrowedFd<'_>> {
        self.oom_fd.as_ref().map(|f| f.as_fd())
    }

    fn on_event(&mut self) -> Event {
        let signalled = match &self.oom_fd {
            Some(fd) => eventfd_take(fd.as_fd()).unwrap_or(0),
            None => 0,
        };
        // The eventfd fires when the group hits OOM, which can be before the kernel's
        // oom_kill counter moves; it also fires at removal, but the fd is closed before
        // corral removes the group, and at registration only if the (new, empty) group
        // were already under OOM. So a signal during the run is an OOM.
        let oom = self.oom_kills();
        if signalled > 0 || oom > self.oom_seen {
            self.oom_seen = oom;
            Event::Oom
        } else {
            Event::Changed
        }
    }

    fn notifies_empty(&self) -> bool {
        false
    }

    fn kernel_kills_group_on_oom(&self) -> bool {
        false
    }

    fn oom_kills(&self) -> u64 {
        self.group.stats().oom_kill.unwrap_or(0)
    }

    fn cpu_usage(&self) -> Option<Duration> {
        self.group.cpu_usage_ns().ok().map(Duration::from_nanos)
    }

    fn process_count(&self) -> usize {
        // Every process of a run is in every hierarchy (the child joins them all before
        // exec, descendants inherit, and root-run analyses see the cgroup mounts
        // read-only), so one hierarchy counts them all.
        self.group.pids_in("memory").len()
    }

    fn memory_now(&self) -> (Option<u64>, Option<u64>) {
        self.group.memory_now()
    }

    fn sample(&self) -> corral_cgroup::sample::Sample {
        // The files are opened at the first reading (a run without a timeline opens none).
        self.sampler
            .get_or_init(|| corral_cgroup::sample::Sampler::v1(&self.group))
            .read()
    }

    fn signal_all(&self, sig: Signal) -> usize {
        self.group.signal_all(sig)
    }

    fn kill_all(&self) -> Result<(), BackendError> {
        self.group
            .kill_tree(Duration::from_secs(5))
            .map_err(|error| BackendError::Cgroup {
                what: "cannot kill the run's processes",
                error,
            })
    }

    fn limit_io(
        &mut self,
        io: &corral_cgroup::io::IoSet,
    ) -> Result<Option<corral_cgroup::io::IoHeld>, BackendError> {
        self.group
            .write_io(io)
            .map(Some)
            .map_err(BackendError::Limit)
    }

    fn collect(&self) -> Collected {
        let s = self.group.stats();
        let (user, system) = split_usage(s.cpu_usage_ns, s.cpu_user_ns, s.cpu_system_ns);
        Collected {
            oom_kill: s.oom_kill.unwrap_or(0),
            pids_max: s.pids_max_events.unwrap_or(0),
            cpu_throttled: s.nr_throttled.unwrap_or(0),
            cpu_throttled_us: s.throttled_ns.unwrap_or(0) / 1000,
            memory_max: s.memory_failcnt.unwrap_or(0),
            cpu_user: Duration::from_nanos(user),
            cpu_system: Duration::from_nanos(system),
            memory_peak: s.memory_max_usage,
            pids_peak: s.pids_peak,
            io_read: s.io_read_bytes,
            io_write: s.io_write_bytes,
            io_devices: self.group.io_devices(),
            io_pressure: (None, None),
        }
    }

    fn teardown(self: Box<Self>) -> Result<(), BackendError> {
        let Sandbox1 {
            group,
            procs,
            oom_fd,
            sampler,
            ..
        } = *self;
        drop((procs, oom_fd, sampler));
        group
            .remove_tree(RMDIR_BUDGET)
            .map_err(|error| BackendError::Cgroup {
                what: "cannot remove the run's cgroups",
                error,
            })
    }
}

/// Why a swap limit cannot hold on cgroup v1, if it cannot. v1 limits swap only as
/// memory + swap (`memory.memsw.limit_in_bytes`): without swap accounting there is no
/// such file, and without a memory limit there is nothing to add the swap limit to.
/// A host without swap has nothing to limit, so the limit holds there.
fn swap_gap(limits: &Limits, memsw: bool, host_swap: bool) -> Option<&'static str> {
    if !host_swap || limits.swap.is_none() {
        None
    } else if !memsw {
        Some("swap accounting is off (no memory.memsw.limit_in_bytes; boot with swapaccount=1)")
    } else if limits.memory.is_none() {
        Some("cgroup v1 limits swap only together with memory (memory + swap), and no memory limit was given")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_needs_accounting_and_a_memory_limit_where_there_is_swap() {
        let mut l = Limits {
            memory: Some(1 << 30),
            swap: Some(0),
            ..Limits::default()
        };
        assert_eq!(swap_gap(&l, true, true), None);
        assert!(swap_gap(&l, false, true).unwrap().contains("swapaccount=1"));
        assert_eq!(
            swap_gap(&l, false, false),
            None,
            "no swap: nothing to limit"
        );
        l.memory = None;
        assert!(swap_gap(&l, true, true)
            .unwrap()
            .contains("no memory limit"));
        assert_eq!(swap_gap(&l, true, false), None);
        l.swap = None;
        assert_eq!(swap_gap(&l, true, true), None, "no swap limit asked for");
    }
}
