//! The cgroup v2 backend: one child cgroup of corral's root per run.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use corral_cgroup::layout::{join_rel, Layout, Membership};
use corral_cgroup::limits::Held;
use corral_cgroup::tree::{Tree, RMDIR_BUDGET};
use corral_cgroup::v2::{Cgroup2, RUN_CONTROLLERS};
use corral_spec::{LimitKind, Limits};
use rustix::fs::inotify;
use rustix::process::Signal;

use super::{
    host_has_swap, limit_set, reap_dead, Backend, BackendError, BackendKind, Collected, Event,
    Plan, Reaped, Sandbox,
};
use crate::guard::GuardEntry;
use crate::spawn::{ChildSetup, Containment, Placement};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;

/// The cgroup v2 backend: corral's root cgroup with the controllers enabled.
#[derive(Debug)]
pub struct Cgroup2Backend {
    mount_point: PathBuf,
    root: Cgroup2,
    controllers: Vec<String>,
    reason: String,
}

/// Where corral puts its run cgroups by default: a `corral` cgroup beside corral's own
/// cgroup when that parent is writable, else `<mount>/corral`.
pub fn default_root(layout: &Layout) -> Option<PathBuf> {
    let mount = layout.v2.as_ref()?;
    let own = Membership::current().v2?;
    let top = mount.mount_point.join("corral");
    let Some(parent) = own.parent() else {
        return Some(top);
    };
    let parent_dir = join_rel(mount, parent);
    let writable = |p: &Path| rustix::fs::access(p, rustix::fs::Access::WRITE_OK).is_ok();
    if parent_dir != mount.mount_point
        && writable(&parent_dir)
        && writable(&parent_dir.join("cgroup.subtree_control"))
    {
        Some(parent_dir.join("corral"))
    } else {
        Some(top)
    }
}

impl Cgroup2Backend {
    /// Prepares corral's root cgroup (`root`, or [`default_root`]): creates it and its
    /// parents, and enables the memory, cpu, pids and io controllers down to it and in
    /// it. Fails with a precise message when the host has no usable cgroup v2 or corral
    /// may not write there.
    pub fn new(root: Option<&Path>) -> Result<Self, BackendError> {
        let layout = Layout::cached().clone();
        let mount = layout.v2.clone().ok_or_else(|| {
            BackendError::Unavailable("no cgroup2 file system is mounted on this host".into())
        })?;
        let missing = layout.missing_v2_controllers();
        if !missing.is_empty() {
            return Err(BackendError::Unavailable(format!(
                "the cgroup2 mount at {} lacks the {} controller{} (bound to cgroup v1 \
                 hierarchies on this host, or disabled)",
                mount.mount_point.display(),
                missing.join(", "),
                if missing.len() == 1 { "" } else { "s" }
            )));
        }
        let root_path = match root {
            Some(r) => r.to_path_buf(),
            None => default_root(&layout).expect("a v2 mount exists"),
        };
        let rel = root_path.strip_prefix(&mount.mount_point).map_err(|_| {
            BackendError::Unavailable(format!(
                "cgroup root {} is not inside the cgroup2 mount {}",
                root_path.display(),
                mount.mount_point.display()
            ))
        })?;
        // Create every level and enable the controllers down to the root's children.
        let mut cur = Cgroup2::at(&mount.mount_point);
        let wanted: Vec<&str> = RUN_CONTROLLERS.to_vec();
        for comp in rel.components() {
            let name = comp.as_os_str().to_string_lossy();
            cur.enable_controllers(&wanted)
                .map_err(|e| perm_hint(e, &cur))?;
            cur = cur.ensure_child(&name).map_err(|e| perm_hint(e, &cur))?;
        }
        let root = cur;
        if !root.procs().unwrap_or_default().is_empty() {
            return Err(BackendError::Unavailable(format!(
                "cgroup root {} holds processes itself; choose an empty cgroup with \
                 --cgroup-root (cgroup v2 forbids processes beside child cgroups)",
                root.path().display()
            )));
        }
        let controllers = root
            .enable_controllers(&wanted)
            .map_err(|e| perm_hint(e, &root))?;
        Ok(Cgroup2Backend {
            mount_point: mount.mount_point.clone(),
            reason: format!(
                "cgroup v2 at {} with controllers {}",
                root.path().display(),
                controllers.join(", ")
            ),
            root,
            controllers,
        })
    }

    /// corral's root cgroup.
    pub fn root(&self) -> &Cgroup2 {
        &self.root
    }

    fn has(&self, c: &str) -> bool {
        self.controllers.iter().any(|x| x == c)
    }
}

fn perm_hint(e: corral_cgroup::CgroupError, cg: &Cgroup2) -> BackendError {
    BackendError::Root {
        path: cg.path().to_path_buf(),
        error: e,
    }
}

impl Backend for Cgroup2Backend {
    fn kind(&self) -> BackendKind {
        BackendKind::Cgroup2
    }

    fn reap_leftovers(&self) -> Vec<Reaped> {
        let root = self.root.path().to_path_buf();
        reap_dead(self.root.children().unwrap_or_default(), |n| {
            GuardEntry::V2(root.join(n))
        })
    }

    fn reason(&self) -> String {
        self.reason.clone()
    }

    fn plan(&self, limits: &Limits) -> Plan {
        let mut p = Plan::everything(limits);
        if !self.has("memory") {
            p.drop_limit(LimitKind::Memory, "the memory controller is not available");
            p.drop_limit(LimitKind::Swap, "the memory controller is not available");
        } else if !self.root.has_file("memory.swap.max") && host_has_swap() {
            p.drop_limit(
                LimitKind::Swap,
                "swap accounting is off (no memory.swap.max)",
            );
        }
        if !self.has("cpu") {
            p.drop_limit(LimitKind::Cpus, "the cpu controller is not available");
        }
        if !self.has("pids") {
            p.drop_limit(LimitKind::Pids, "the pids controller is not available");
        }
        if !self.has("io") {
            p.drop_io("the io controller is not available");
        } else if !self.root.has_file("io.weight") && !self.root.has_file("io.bfq.weight") {
            p.drop_limit(
                LimitKind::IoWeight,
                "no io.weight or io.bfq.weight: this kernel has neither iocost nor BFQ",
            );
        }
        p
    }

    fn create(&self, name: &str, limits: &Limits) -> Result<Box<dyn Sandbox>, BackendError> {
        let cg = self
            .root
            .create_child(name)
            .map_err(|error| BackendError::Cgroup {
                what: "cannot create the run's cgroup",
                error,
            })?;
        match Sandbox2::new(cg.clone(), limits, self.plan(limits)) {
            Ok(mut s) => {
                s.contain = containment(&self.mount_point);
                Ok(Box::new(s))
            }
            Err(e) => {
                let _ = cg.remove(Duration::from_millis(500));
                Err(e)
            }
        }
    }
}

/// Root can write any cgroup.procs: give root-run analyses a cgroup namespace and a
/// fresh cgroup2 mount rooted at their own cgroup (they cannot move out, and they see
/// their own limits at `/sys/fs/cgroup`). Unprivileged runs cannot leave anyway.
pub(super) fn containment(mount_point: &Path) -> Option<Containment> {
    if !rustix::process::geteuid().is_root() {
        return None;
    }
    Some(Containment {
        cgroup_namespace: true,
        cgroup2_mount: CString::new(mount_point.as_os_str().as_bytes()).ok(),
        readonly: Vec::new(),
    })
}

/// One run's cgroup v2.
#[derive(Debug)]
pub struct Sandbox2 {
    pub(super) contain: Option<Containment>,
    cg: Cgroup2,
    dir: OwnedFd,
    procs: OwnedFd,
    inotify: OwnedFd,
    plan: Plan,
    oom_seen: u64,
    oom_group: bool,
    sampler: std::sync::OnceLock<corral_cgroup::sample::Sampler>,
}

impl Sandbox2 {
    pub(crate) fn new(cg: Cgroup2, limits: &Limits, mut plan: Plan) -> Result<Self, BackendError> {
        let held = cg
            .write_limits(&limit_set(limits))
            .map_err(BackendError::Limit)?;
        plan.read_back(&held);
        if let Held::Read(swap) = held.swap {
            plan.enforced.swap_bytes = swap;
        }
        // One OOM kill takes the whole run, so no half-dead tree is left behind.
        let oom_group = !held.memory.is_absent() && cg.set_oom_group(true).is_ok();
        let dir = cg.open_dir()?;
        let procs = cg.open_procs()?;
        let inotify = inotify::init(inotify::CreateFlags::NONBLOCK | inotify::CreateFlags::CLOEXEC)
            .map_err(|e| BackendError::os("inotify_init", e))?;
        for f in ["cgroup.events", "memory.events", "pids.events"] {
            let p = cg.events_file(f);
            if p.exists() {
                inotify::add_watch(&inotify, &p, inotify::WatchFlags::MODIFY)
                    .map_err(|e| BackendError::os(format!("inotify on {}", p.display()), e))?;
            }
        }
        Ok(Sandbox2 {
            contain: None,
            cg,
            dir,
            procs,
            inotify,
            plan,
            oom_seen: 0,
            oom_group,
            sampler: std::sync::OnceLock::new(),
        })
    }
}

impl Sandbox for Sandbox2 {
    fn cgroup(&self) -> Option<String> {
        Some(self.cg.path().display().to_string())
    }

    fn guard_entry(&self) -> Option<GuardEntry> {
        Some(GuardEntry::V2(self.cg.path().to_path_buf()))
    }

    fn plan(&self) -> Plan {
        self.plan.clone()
    }

    fn placement(&self) -> Placement<'_> {
        Placement {
            cgroup_dir: Some(self.dir.as_fd()),
            procs: Vec::new(),
            fallback_procs: Some(self.procs.as_fd()),
        }
    }

    fn child_setup<'a>(&'a self, setup: &mut ChildSetup<'a>) {
        setup.contain = self.contain.clone();
    }

    fn event_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.inotify.as_fd())
    }

    fn on_event(&mut self) -> Event {
        let mut buf = [0u8; 1024];
        while let Ok(n) = rustix::io::read(&self.inotify, &mut buf) {
            if n == 0 {
                break;
            }
        }
        let oom = self.oom_kills();
        if oom > self.oom_seen {
            self.oom_seen = oom;
            Event::Oom
        } else {
            Event::Changed
        }
    }

    fn kernel_kills_group_on_oom(&self) -> bool {
        self.oom_group
    }

    fn oom_kills(&self) -> u64 {
        self.cg
            .memory_events()
            .get("oom_kill")
            .copied()
            .unwrap_or(0)
    }

    fn cpu_usage(&self) -> Option<Duration> {
        self.cg.cpu_usage_usec().ok().map(Duration::from_micros)
    }

    fn process_count(&self) -> usize {
        self.cg.process_count()
    }

    fn memory_now(&self) -> (Option<u64>, Option<u64>) {
        let read = |f: &str| self.cg.read_limit(f).ok().flatten();
        (read("memory.current"), read("memory.peak"))
    }

    fn sample(&self) -> corral_cgroup::sample::Sample {
        // The files are opened at the first reading (a run without a timeline opens none).
        self.sampler
            .get_or_init(|| corral_cgroup::sample::Sampler::v2(&self.cg))
            .read()
    }

    fn signal_all(&self, sig: Signal) -> usize {
        let mut n = 0;
        for cg in self.cg.subtree() {
            for pid in cg.procs().unwrap_or_default() {
                if let Some(p) = rustix::process::Pid::from_raw(pid) {
                    if rustix::process::kill_process(p, sig).is_ok() {
                        n += 1;
                    }
                }
            }
        }
        n
    }

    fn kill_all(&self) -> Result<(), BackendError> {
        // One write: the supervisor then waits for `populated 0` on its event fd.
        Ok(self.cg.kill_tree(Duration::ZERO)?)
    }

    fn limit_io(
        &mut self,
        io: &corral_cgroup::io::IoSet,
    ) -> Result<Option<corral_cgroup::io::IoHeld>, BackendError> {
        self.cg.write_io(io).map(Some).map_err(BackendError::Limit)
    }

    fn collect(&self) -> Collected {
        let s = self.cg.stats();
        let get = |m: &std::collections::HashMap<String, u64>, k: &str| m.get(k).copied();
        Collected {
            oom_kill: get(&s.memory_events, "oom_kill").unwrap_or(0),
            pids_max: get(&s.pids_events, "max").unwrap_or(0),
            cpu_throttled: get(&s.cpu_stat, "nr_throttled").unwrap_or(0),
            cpu_throttled_us: get(&s.cpu_stat, "throttled_usec").unwrap_or(0),
            memory_max: get(&s.memory_events, "max").unwrap_or(0),
            cpu_user: Duration::from_micros(get(&s.cpu_stat, "user_usec").unwrap_or(0)),
            cpu_system: Duration::from_micros(get(&s.cpu_stat, "system_usec").unwrap_or(0)),
            memory_peak: s.memory_peak,
            pids_peak: s.pids_peak,
            io_read: s.io_bytes.map(|b| b.0),
            io_write: s.io_bytes.map(|b| b.1),
            io_devices: self.cg.io_devices(),
            io_pressure: self.cg.io_pressure(),
        }
    }

    fn teardown(self: Box<Self>) -> Result<(), BackendError> {
        let Sandbox2 {
            cg,
            dir,
            procs,
            inotify,
            sampler,
            ..
        } = *self;
        drop((dir, procs, inotify, sampler));
        cg.remove_tree(RMDIR_BUDGET)
            .map_err(|error| BackendError::Cgroup {
                what: "cannot remove the run's cgroup",
                error,
            })
    }
}
