//! The service's own cgroup tree: one budget over all runs, the supervisor outside it.
//!
//! ```text
//! <root>/                    the service root (default <mount>/corral-service)
//!   supervisor/              the service process itself (a leaf)
//!   runs/                    the budget: memory.max, cpu.max, pids.max
//!     <id>.<boot>.<pid>.<start>/   one cgroup per run, made by the corral-run backend
//! ```
//!
//! On cgroup v1 the same relative layout exists in each controller hierarchy and the
//! budget is `memory.limit_in_bytes`, `cpu.cfs_quota_us` and `pids.max` of `runs`.
//! Because the service sits in `supervisor`, an OOM kill inside `runs` (by a run's own
//! limit or by the shared budget) never picks the service, and cgroup v2's rule that a
//! cgroup with enabled controllers holds no processes is kept.
//!
//! Under systemd with `Delegate=yes` and `DelegateSubgroup=supervisor` the service
//! starts inside `<unit cgroup>/supervisor`; the unit's cgroup is then the default root.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use corral_cgroup::layout::{join_rel, Layout, Membership};
use corral_cgroup::limits::{Held, LimitError, LimitSet};
use corral_cgroup::tree::Tree as EndTree;
use corral_cgroup::v1::{Group1, RUN_CONTROLLERS as V1_CONTROLLERS};
use corral_cgroup::v2::{Cgroup2, RUN_CONTROLLERS as V2_CONTROLLERS};
use corral_cgroup::CgroupError;
use corral_run::backend::{cgroup1::Cgroup1Backend, cgroup2::Cgroup2Backend};
use corral_run::backend::{cpu_quota_us, Backend, BackendError, BackendKind, CPU_PERIOD_US};
use corral_run::ident::{parse_cgroup_name, Owner};
use corral_spec::LimitKind;

/// The name of the default service root under the cgroup mount.
pub const DEFAULT_ROOT: &str = "corral-service";

/// The budget written on `runs`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetLimits {
    /// Memory in bytes.
    pub memory: u64,
    /// CPUs.
    pub cpus: f64,
    /// Tasks.
    pub pids: u64,
    /// Swap (`None`: no cap).
    pub swap: Option<u64>,
}

/// What the runs' parent cgroup is charged now, and its peak where the kernel keeps one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeUsage {
    /// Memory charged to `runs` now.
    pub memory: Option<u64>,
    /// The most memory `runs` was ever charged (v1 `max_usage_in_bytes`, v2 `peak`).
    pub memory_peak: Option<u64>,
    /// Tasks in `runs` now.
    pub pids: Option<u64>,
}

/// A run cgroup left by an earlier service instance, and what was done to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reaped {
    /// The cgroup's name under `runs`.
    pub name: String,
    /// The run id the name encodes (if it is a corral run cgroup).
    pub id: Option<String>,
    /// Processes that were still alive and were killed.
    pub killed: usize,
    /// Set when the cgroup could not be removed.
    pub error: Option<String>,
}

enum Tree {
    V2 {
        root: Cgroup2,
        supervisor: Cgroup2,
        runs: Cgroup2,
        origin: Option<PathBuf>,
    },
    V1 {
        layout: Box<Layout>,
        ctrls: Vec<&'static str>,
        root_rel: PathBuf,
        supervisor: Group1,
        runs: Group1,
        origin: Membership,
    },
}

/// The service's cgroup tree.
pub struct ServiceTree {
    tree: Tree,
    delegated: bool,
    /// The caps [`ServiceTree::apply_io_budget`] wrote, for `/health` and `/metrics`.
    io_budget: std::sync::Mutex<Option<corral_cgroup::io::IoSet>>,
}

/// Why cgroup2 cannot hold the service's tree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum V2Unusable {
    /// No cgroup2 mount.
    #[error("no cgroup2 file system is mounted")]
    NoMount,
    /// The mount lacks required controllers (bound to v1, or disabled).
    #[error("the cgroup2 mount at {} lacks the {} controller(s)", mount.display(), missing.join(", "))]
    Lacks {
        /// The cgroup2 mount point.
        mount: PathBuf,
        /// The required controllers it lacks.
        missing: Vec<&'static str>,
    },
}

/// What went wrong preparing, limiting or handing out the service's cgroup tree.
/// Each message is one sentence for the user.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// A backend without cgroups was asked for.
    #[error(
        "the service needs a cgroup backend (cgroup2 or cgroup1) to hold its budget; {} cannot",
        .0.as_str()
    )]
    NotCgroup(BackendKind),
    /// Neither cgroup2 nor a v1 memory hierarchy is usable.
    #[error("no usable cgroup backend: {0}, and no cgroup v1 memory hierarchy")]
    NoBackend(#[source] V2Unusable),
    /// cgroup2 was asked for and cannot be used.
    #[error(transparent)]
    V2(#[from] V2Unusable),
    /// The service root is outside the cgroup2 mount.
    #[error(transparent)]
    OutsideMount(#[from] std::path::StripPrefixError),
    /// The service root is the cgroup2 mount itself.
    #[error("the service root must be below the cgroup2 mount")]
    RootIsMount,
    /// No v1 memory hierarchy is mounted.
    #[error("no cgroup v1 memory hierarchy is mounted")]
    NoV1Memory,
    /// The v1 service root is not a plain relative path.
    #[error("the cgroup v1 service root must be a path below the hierarchy roots, got {}", .0.display())]
    BadV1Root(PathBuf),
    /// A cgroup of the tree cannot be created or set up (v2).
    #[error(
        "cannot prepare the service cgroup {}: {source} (run as root, or give a delegated          --cgroup-root)",
        at.display()
    )]
    Prepare {
        /// The cgroup being worked on.
        at: PathBuf,
        /// The failed cgroup operation.
        #[source]
        source: CgroupError,
    },
    /// A directory of the tree cannot be created (v1).
    #[error(
        "cannot create {}: {source} (run as root, or give a writable --cgroup-root)",
        dir.display()
    )]
    Create {
        /// The directory.
        dir: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The service cannot move itself into `supervisor`.
    #[error("cannot move the service into {}: {source}", into.display())]
    MoveIn {
        /// The supervisor cgroup (v1: its path inside each hierarchy).
        into: PathBuf,
        /// The failed write.
        #[source]
        source: CgroupError,
    },
    /// `supervisor` already holds other processes.
    #[error(
        "{} already holds processes {pids:?}: is another corral service using this cgroup root?",
        at.display()
    )]
    SupervisorBusy {
        /// The supervisor cgroup (v1: its path inside each hierarchy).
        at: PathBuf,
        /// The processes found there.
        pids: Vec<i32>,
    },
    /// The service root holds processes itself.
    #[error("the service root {} holds processes {pids:?}; choose an empty --cgroup-root", root.display())]
    RootBusy {
        /// The service root.
        root: PathBuf,
        /// The processes found there.
        pids: Vec<i32>,
    },
    /// A run cgroup under `runs` belongs to another live corral process.
    #[error(
        "run {id} under {root} belongs to a live corral process (pid {pid}): is another corral          service using this cgroup root?"
    )]
    LiveOwner {
        /// The run's id.
        id: String,
        /// The service root, as [`ServiceTree::root_display`] shows it.
        root: String,
        /// The owner's pid.
        pid: i32,
    },
    /// The budget could not be written on `runs`.
    #[error("cannot set the service's {} budget: {}", .0.noun(), .0.source)]
    Budget(#[source] LimitError),
    /// The corral-run backend under `runs` cannot be set up.
    #[error("{} backend: {source}", kind.as_str())]
    Backend {
        /// cgroup2 or cgroup1.
        kind: BackendKind,
        /// Why.
        #[source]
        source: BackendError,
    },
    /// A cgroup file of the tree cannot be read.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
}

fn v2_usable(layout: &Layout) -> Result<(), V2Unusable> {
    let m = layout.v2.as_ref().ok_or(V2Unusable::NoMount)?;
    let missing = layout.missing_v2_controllers();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(V2Unusable::Lacks {
            mount: m.mount_point.clone(),
            missing,
        })
    }
}

impl ServiceTree {
    /// Creates (or adopts) the tree and moves this process into `supervisor`. `want`:
    /// the backend (`None`: cgroup2 where usable, else cgroup1). Nothing is killed or
    /// limited yet: call [`ServiceTree::reap_strays`] and then
    /// [`ServiceTree::apply_budget`].
    pub fn prepare(
        want: Option<BackendKind>,
        root: Option<&Path>,
    ) -> Result<ServiceTree, TreeError> {
        let layout = Layout::detect();
        let kind = match want {
            Some(k @ (BackendKind::Cgroup2 | BackendKind::Cgroup1)) => k,
            Some(k) => return Err(TreeError::NotCgroup(k)),
            None => match v2_usable(&layout) {
                Ok(()) => BackendKind::Cgroup2,
                Err(why2) if layout.v1.contains_key("memory") => {
                    tracing::info!("using cgroup1: {why2}");
                    BackendKind::Cgroup1
                }
                Err(why2) => return Err(TreeError::NoBackend(why2)),
            },
        };
        match kind {
            BackendKind::Cgroup2 => Self::prepare_v2(layout, root),
            _ => Self::prepare_v1(layout, root),
        }
    }

    fn prepare_v2(layout: Layout, root: Option<&Path>) -> Result<ServiceTree, TreeError> {
        v2_usable(&layout)?;
        let mount = layout.v2.clone().expect("checked");
        let own = Membership::current().v2;
        let mut delegated = false;
        let root_path = match root {
            Some(r) if r.starts_with(&mount.mount_point) => r.to_path_buf(),
            Some(r) => mount.mount_point.join(r.strip_prefix("/").unwrap_or(r)),
            None => match own.as_deref() {
                Some(o) if o.file_name().is_some_and(|n| n == "supervisor") => {
                    delegated = true;
                    join_rel(&mount, o.parent().expect("has a name"))
                }
                _ => mount.mount_point.join(DEFAULT_ROOT),
            },
        };
        let rel = root_path.strip_prefix(&mount.mount_point)?.to_path_buf();
        if rel.as_os_str().is_empty() {
            return Err(TreeError::RootIsMount);
        }
        let wanted: Vec<&str> = V2_CONTROLLERS.to_vec();
        let hint = |source: CgroupError, at: &Path| TreeError::Prepare {
            at: at.to_path_buf(),
            source,
        };
        let mut cur = Cgroup2::at(&mount.mount_point);
        for comp in rel.components() {
            cur.enable_controllers(&wanted)
                .map_err(|e| hint(e, cur.path()))?;
            cur = cur
                .ensure_child(&comp.as_os_str().to_string_lossy())
                .map_err(|e| hint(e, cur.path()))?;
        }
        let root = cur;
        let supervisor = root
            .ensure_child("supervisor")
            .map_err(|e| hint(e, root.path()))?;
        let me = std::process::id() as i32;
        if supervisor.procs()?.contains(&me) {
            delegated = true;
        } else {
            supervisor.add_pid(me).map_err(|source| TreeError::MoveIn {
                into: supervisor.path().to_path_buf(),
                source,
            })?;
        }
        let others: Vec<i32> = supervisor
            .procs()?
            .into_iter()
            .filter(|&p| p != me)
            .collect();
        if !others.is_empty() {
            return Err(TreeError::SupervisorBusy {
                at: supervisor.path().to_path_buf(),
                pids: others,
            });
        }
        let inside = root.procs()?;
        if !inside.is_empty() {
            return Err(TreeError::RootBusy {
                root: root.path().to_path_buf(),
                pids: inside,
            });
        }
        root.enable_controllers(&wanted)
            .map_err(|e| hint(e, root.path()))?;
        let runs = root
            .ensure_child("runs")
            .map_err(|e| hint(e, root.path()))?;
        // Where to go back to at a clean exit (the root cgroup `/` has no file name).
        let origin = own
            .filter(|o| !delegated && o.file_name() != Some(std::ffi::OsStr::new("supervisor")))
            .map(|o| join_rel(&mount, &o));
        Ok(ServiceTree {
            tree: Tree::V2 {
                root,
                supervisor,
                runs,
                origin,
            },
            delegated,
            io_budget: Default::default(),
        })
    }

    fn prepare_v1(layout: Layout, root: Option<&Path>) -> Result<ServiceTree, TreeError> {
        if !layout.v1.contains_key("memory") {
            return Err(TreeError::NoV1Memory);
        }
        let root_rel = match root {
            None => PathBuf::from(DEFAULT_ROOT),
            Some(r) => layout
                .v1
                .values()
                .find_map(|m| r.strip_prefix(&m.mount_point).ok())
                .unwrap_or_else(|| r.strip_prefix("/").unwrap_or(r))
                .to_path_buf(),
        };
        if root_rel.as_os_str().is_empty()
            || root_rel
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(TreeError::BadV1Root(root_rel));
        }
        let ctrls: Vec<&'static str> = V1_CONTROLLERS
            .iter()
            .copied()
            .filter(|c| layout.v1.contains_key(*c))
            .collect();
        let make = |name: &str| -> Result<Group1, TreeError> {
            let g = Group1::open(&layout, &root_rel.join(name), &ctrls);
            for d in g.dirs() {
                std::fs::create_dir_all(d).map_err(|source| TreeError::Create {
                    dir: d.to_path_buf(),
                    source,
                })?;
            }
            Ok(g)
        };
        let origin = Membership::current();
        let supervisor = make("supervisor")?;
        let me = std::process::id() as i32;
        supervisor.add_pid(me).map_err(|source| TreeError::MoveIn {
            into: root_rel.join("supervisor"),
            source,
        })?;
        let others: Vec<i32> = supervisor.pids().into_iter().filter(|&p| p != me).collect();
        if !others.is_empty() {
            return Err(TreeError::SupervisorBusy {
                at: Path::new("/").join(&root_rel).join("supervisor"),
                pids: others,
            });
        }
        let runs = make("runs")?;
        Ok(ServiceTree {
            tree: Tree::V1 {
                layout: Box::new(layout),
                ctrls,
                root_rel,
                supervisor,
                runs,
                origin,
            },
            delegated: false,
            io_budget: Default::default(),
        })
    }

    /// The backend kind of the tree.
    pub fn kind(&self) -> BackendKind {
        match self.tree {
            Tree::V2 { .. } => BackendKind::Cgroup2,
            Tree::V1 { .. } => BackendKind::Cgroup1,
        }
    }

    /// The service root, as given to `--cgroup-root` (v2: a directory; v1: the path
    /// inside each hierarchy).
    pub fn root_display(&self) -> String {
        match &self.tree {
            Tree::V2 { root, .. } => root.path().display().to_string(),
            Tree::V1 { root_rel, .. } => format!("/{}", root_rel.display()),
        }
    }

    /// The directories of `runs` (one for v2; one per hierarchy for v1).
    pub fn runs_dirs(&self) -> Vec<PathBuf> {
        match &self.tree {
            Tree::V2 { runs, .. } => vec![runs.path().to_path_buf()],
            Tree::V1 { runs, .. } => runs.dirs().iter().map(|d| d.to_path_buf()).collect(),
        }
    }

    /// Refuses to go on when a live process other than this one owns a run cgroup
    /// under `runs` (two services on one root would kill each other's runs).
    pub fn check_no_live_owner(&self) -> Result<(), TreeError> {
        let me = Owner::current();
        for name in self.run_cgroups() {
            if let Some((id, owner)) = parse_cgroup_name(&name) {
                if owner != me && owner.is_alive() {
                    return Err(TreeError::LiveOwner {
                        id,
                        root: self.root_display(),
                        pid: owner.pid,
                    });
                }
            }
        }
        Ok(())
    }

    /// The names of the cgroups under `runs`.
    pub fn run_cgroups(&self) -> Vec<String> {
        let mut names = BTreeSet::new();
        for d in self.runs_dirs() {
            if let Ok(rd) = std::fs::read_dir(&d) {
                for e in rd.flatten() {
                    if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        if let Ok(n) = e.file_name().into_string() {
                            names.insert(n);
                        }
                    }
                }
            }
        }
        names.into_iter().collect()
    }

    /// Kills every process under `runs` and removes every cgroup there: at startup,
    /// nothing under `runs` belongs to this instance, so all of it was in flight when an
    /// earlier instance died. Blocks (bounded: a few seconds per cgroup at worst).
    pub fn reap_strays(&self) -> Vec<Reaped> {
        let mut out = Vec::new();
        for name in self.run_cgroups() {
            let id = parse_cgroup_name(&name).map(|(id, _)| id);
            let (killed, error) = match &self.tree {
                Tree::V2 { runs, .. } => reap(&Cgroup2::at(runs.path().join(&name))),
                Tree::V1 {
                    layout,
                    ctrls,
                    root_rel,
                    ..
                } => reap(&Group1::open(
                    layout,
                    &root_rel.join("runs").join(&name),
                    ctrls,
                )),
            };
            if let Some(e) = &error {
                tracing::warn!("reaping {name}: {e}");
            }
            out.push(Reaped {
                name,
                id,
                killed,
                error,
            });
        }
        out
    }

    /// Writes the budget on `runs` with the same writer as a run's limits. Memory, CPU
    /// and pids are required (v1: memory; cpu and pids where their hierarchies are
    /// mounted); swap is written where it is accounted (v1: as memory + swap).
    pub fn apply_budget(&self, b: &BudgetLimits) -> Result<(), TreeError> {
        let set = LimitSet {
            memory: Some(b.memory),
            swap: b.swap,
            cpu_quota_us: Some(cpu_quota_us(b.cpus)),
            cpu_period_us: CPU_PERIOD_US,
            pids: Some(b.pids),
        };
        let missing = |limit, source| TreeError::Budget(LimitError { limit, source });
        match &self.tree {
            Tree::V2 { runs, .. } => {
                let held = runs.write_limits(&set).map_err(TreeError::Budget)?;
                // Without swap accounting there is no file, and no run can swap-limit
                // either (their records say so). The others must be there.
                for (limit, h, file) in [
                    (LimitKind::Memory, held.memory.is_absent(), "memory.max"),
                    (LimitKind::Cpus, held.cpus.is_absent(), "cpu.max"),
                    (LimitKind::Pids, held.pids.is_absent(), "pids.max"),
                ] {
                    if h {
                        return Err(missing(limit, absent_file(&runs.path().join(file))));
                    }
                }
            }
            Tree::V1 { runs, .. } => {
                let held = runs.write_limits(&set).map_err(TreeError::Budget)?;
                if let Held::Absent = held.memory {
                    return Err(missing(
                        LimitKind::Memory,
                        CgroupError::Unsupported(format!(
                            "group {} has no memory hierarchy",
                            runs.rel().display()
                        )),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Writes the runs' shared disk caps on `runs` (`io.max`): all runs together stay
    /// under them. Fails when the group has no `io.max`, and on cgroup v1, whose
    /// `blkio.throttle.*` limits do not hold for a group's children.
    pub fn apply_io_budget(&self, set: &corral_cgroup::io::IoSet) -> Result<(), TreeError> {
        let (held, file) = match &self.tree {
            Tree::V2 { runs, .. } => (
                runs.write_io(set).map_err(TreeError::Budget)?,
                runs.path().join("io.max"),
            ),
            Tree::V1 { .. } => {
                return Err(TreeError::Budget(LimitError {
                    limit: LimitKind::IoWriteBps,
                    source: CgroupError::Unsupported(
                        "a shared disk budget needs cgroup v2: cgroup v1's blkio throttles are not hierarchical (a cap on the runs' parent group does not hold for the runs in it); give each run its own --io-write-bps instead".into(),
                    ),
                }))
            }
        };
        if !held.throttle {
            return Err(TreeError::Budget(LimitError {
                limit: LimitKind::IoWriteBps,
                source: absent_file(&file),
            }));
        }
        *self.io_budget.lock().unwrap_or_else(|e| e.into_inner()) = Some(set.clone());
        Ok(())
    }

    /// The caps of [`ServiceTree::apply_io_budget`], with what `runs` has read and
    /// written on each of their disks (`io.stat`); `None` without such caps.
    pub fn io_budget(&self) -> Option<crate::wire::IoBudgetStatus> {
        let set = self
            .io_budget
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        let moved = match &self.tree {
            Tree::V2 { runs, .. } => std::fs::read_to_string(runs.path().join("io.stat"))
                .map(|t| corral_cgroup::io::parse_io_stat_devices(&t))
                .unwrap_or_default(),
            Tree::V1 { .. } => Vec::new(),
        };
        let devices = set
            .devices
            .iter()
            .map(|d| {
                let m = moved.iter().find(|m| m.dev == Some(*d));
                crate::wire::IoBudgetDevice {
                    device: d.to_string(),
                    read_bytes: m.map_or(0, |m| m.rbytes),
                    written_bytes: m.map_or(0, |m| m.wbytes),
                }
            })
            .collect();
        Some(crate::wire::IoBudgetStatus {
            read_bps: set.read_bps,
            write_bps: set.write_bps,
            read_iops: set.read_iops,
            write_iops: set.write_iops,
            devices,
        })
    }

    /// The corral-run backend that creates run cgroups under `runs`.
    pub fn backend(&self) -> Result<Box<dyn Backend>, TreeError> {
        let at = |kind| move |source| TreeError::Backend { kind, source };
        match &self.tree {
            Tree::V2 { runs, .. } => Cgroup2Backend::new(Some(runs.path()))
                .map(|b| Box::new(b) as Box<dyn Backend>)
                .map_err(at(BackendKind::Cgroup2)),
            Tree::V1 { root_rel, .. } => {
                let p = PathBuf::from("/").join(root_rel).join("runs");
                Cgroup1Backend::new(Some(&p))
                    .map(|b| Box::new(b) as Box<dyn Backend>)
                    .map_err(at(BackendKind::Cgroup1))
            }
        }
    }

    /// What `runs` is charged now.
    pub fn usage(&self) -> TreeUsage {
        let num = |p: PathBuf| corral_cgroup::util::read_u64(&p).ok().flatten();
        match &self.tree {
            Tree::V2 { runs, .. } => TreeUsage {
                memory: num(runs.path().join("memory.current")),
                memory_peak: num(runs.path().join("memory.peak")),
                pids: num(runs.path().join("pids.current")),
            },
            Tree::V1 { runs, .. } => {
                let f = |c: &str, n: &str| runs.dir(c).and_then(|d| num(d.join(n)));
                TreeUsage {
                    memory: f("memory", "memory.usage_in_bytes"),
                    memory_peak: f("memory", "memory.max_usage_in_bytes"),
                    pids: f("pids", "pids.current"),
                }
            }
        }
    }

    /// At a clean exit: moves the service back where it started and removes the tree
    /// (best effort; a tree delegated by systemd is left to systemd).
    pub fn remove(&self) {
        if self.delegated {
            return;
        }
        let me = std::process::id() as i32;
        match &self.tree {
            Tree::V2 {
                root,
                supervisor,
                runs,
                origin,
            } => {
                let Some(origin) = origin else { return };
                if Cgroup2::at(origin).add_pid(me).is_err() {
                    return;
                }
                for cg in [runs, supervisor, root] {
                    let _ = cg.remove(Duration::from_millis(200));
                }
            }
            Tree::V1 {
                layout,
                ctrls,
                root_rel,
                supervisor,
                runs,
                origin,
            } => {
                for (c, rel) in &origin.v1 {
                    if let Some(m) = layout.v1.get(c) {
                        let _ = corral_cgroup::util::write(
                            &join_rel(m, rel).join("cgroup.procs"),
                            &me.to_string(),
                        );
                    }
                }
                if supervisor.pids().contains(&me) {
                    return;
                }
                let _ = runs.remove(Duration::from_millis(200));
                let _ = supervisor.remove(Duration::from_millis(200));
                let root = Group1::open(layout, root_rel, ctrls);
                for d in root.dirs() {
                    let _ = std::fs::remove_dir(d);
                }
            }
        }
    }
}

/// The error writing a file that does not exist gives.
fn absent_file(path: &Path) -> CgroupError {
    CgroupError::Io {
        op: "write",
        path: path.to_path_buf(),
        source: std::io::Error::from_raw_os_error(libc::ENOENT),
    }
}

/// How long a stray run cgroup may take to empty after its kill.
const REAP_WITHIN: Duration = Duration::from_secs(10);

/// Ends one stray run cgroup the way every tree is ended ([`EndTree::end_tree`]):
/// how many processes it held, and why it could not be removed, if it could not.
fn reap(tree: &dyn EndTree) -> (usize, Option<String>) {
    let found = tree.process_count();
    match tree.end_tree(REAP_WITHIN) {
        Ok(n) => (n, None),
        Err(e) => (found, Some(e.to_string())),
    }
}
