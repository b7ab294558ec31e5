//! The systemd backend: a transient scope per run, made through the manager's D-Bus
//! API, with a delegated cgroup v2 subtree that corral then supervises exactly as the
//! cgroup2 backend does.
//!
//! For non-root users on cgroup v2 (who cannot create cgroups of their own), and for
//! root hosts that want systemd to own the cgroups. Root talks to the system manager,
//! everyone else to their user manager (`user@UID.service`), each through its bus.
//!
//! One run's layout:
//!
//! ```text
//! <slice>/corral-<cgroup name>.scope/   S: MemoryMax, MemorySwapMax, CPUQuota, TasksMax=N+1
//! ├── keeper/    K: a `sleep infinity` that keeps S alive until corral has read S
//! └── payload/   the run: memory.max, memory.swap.max, pids.max=N, memory.oom.group=1
//! ```
//!
//! 1. K is started (PDEATHSIG=SIGKILL, stdio on /dev/null) and handed to
//!    `StartTransientUnit` as the scope's only pid; corral waits for the job's
//!    `JobRemoved` (result `done`), registered before the call.
//! 2. corral moves K into `S/keeper`, so S holds no process, enables the memory and
//!    pids controllers in S's subtree, and creates `S/payload` with the same limits
//!    as S (pids: N, while S allows N+1 for K). The payload is its own OOM domain:
//!    the kernel picks OOM victims among the run's processes only, never K, and
//!    `memory.oom.group` ends the whole run, as on cgroup2.
//! 3. The child is born in `S/payload` with `clone3(CLONE_INTO_CGROUP)` when corral may
//!    migrate into it (root; a user whose own cgroup shares a delegated ancestor with
//!    it). Otherwise (a user in a root-owned login session) the child waits on a gate
//!    before exec while the manager attaches it with `AttachProcessesToUnit(unit,
//!    "/payload", [pid])`; corral releases it once `/proc/PID/cgroup` says it is there.
//!    Either way it never runs a single instruction of the command outside its limits.
//! 4. Supervision, events, kills and counters act on `S/payload` (corral owns it);
//!    throttling and I/O come from S (K neither runs nor does I/O).
//! 5. Teardown: rmdir `S/payload`, kill and reap K; S is then empty, and systemd
//!    stops the scope and removes its cgroup (`CollectMode=inactive-or-failed`).
//!    corral waits for that, bounded, and falls back to `StopUnit`.
//!
//! systemd ignores a scope property whose controller it does not have (a user manager
//! delegates only what `user@.service`'s `Delegate=` lists): corral reads the
//! delegated controllers and reports such a limit as not enforced, with the fix.

mod bus;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use corral_cgroup::layout::{join_rel, Layout, LayoutKind, Membership, Mount};
use corral_cgroup::util::read_flat_keyed;
use corral_cgroup::v2::{parse_io_stat, Cgroup2};
use corral_spec::{LimitKind, Limits};
use rustix::process::Signal;
use zbus::zvariant::Value;

use super::cgroup2::Sandbox2;
use super::{
    host_has_swap, Backend, BackendError, BackendKind, Collected, Event, Plan, Reaped, Sandbox,
};
use crate::guard::GuardEntry;
use crate::ident::parse_cgroup_name;
use crate::spawn::{self, ChildSetup, Exec, Placement, Spawned};
use bus::{BusError, Manager, Scope};

/// The slice corral's scopes go into.
pub const SLICE: &str = "corral.slice";
/// The prefix of corral's scope units.
pub const UNIT_PREFIX: &str = "corral-";
/// How long corral waits for systemd to start a scope.
const JOB_WAIT: Duration = Duration::from_secs(10);
/// How long teardown waits for systemd to remove an emptied scope's cgroup.
const COLLECT_WAIT: Duration = Duration::from_secs(3);

/// The systemd backend: a connection to the system or user manager.
#[derive(Debug)]
pub struct SystemdBackend {
    mgr: Arc<Manager>,
    mount: Mount,
    /// The cgroup whose `cgroup.controllers` says what the manager may use: the root
    /// for the system manager, `user@UID.service` for a user manager.
    delegated_from: PathBuf,
    /// Where the scopes' cgroups appear (`<manager's cgroup>/corral.slice`).
    slice_dir: PathBuf,
}

/// Why the systemd backend could not be set up, start a scope, or remove it. Each
/// message names its cause; causes are fields, not `source()` (corral prints error
/// chains joined, which would repeat them).
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    /// PID 1 is not systemd.
    #[error("systemd is not the init system here (no /run/systemd/system)")]
    NotInit,
    /// systemd runs a hybrid or legacy cgroup layout.
    #[error(
        "systemd runs this host with a {0} cgroup layout; the systemd backend needs \
         the unified hierarchy (boot with systemd.unified_cgroup_hierarchy=1)"
    )]
    NotUnified(&'static str),
    /// The system manager's bus cannot be reached.
    #[error("cannot reach the systemd system manager: {0}")]
    SystemUnreachable(BusError),
    /// The user manager's bus cannot be reached.
    #[error(
        "cannot reach the systemd user manager of uid {uid} (is user@{uid}.service \
         running, with XDG_RUNTIME_DIR set?): {error}"
    )]
    UserUnreachable {
        /// The user.
        uid: u32,
        /// Why.
        error: BusError,
    },
    /// `StartTransientUnit` failed.
    #[error("systemd refused the scope {unit}: {error}")]
    Refused {
        /// The scope unit.
        unit: String,
        /// Why.
        error: BusError,
    },
    /// The scope's start job ended with another result than `done`.
    #[error("systemd could not start the scope {unit}: job result \"{result}\"")]
    JobFailed {
        /// The scope unit.
        unit: String,
        /// systemd's job result (`failed`, `canceled`, `timeout`, ...).
        result: String,
    },
    /// Waiting for a job failed (timeout, lost connection).
    #[error("{0}")]
    Bus(BusError),
    /// The keeper did not appear in the scope's cgroup in time.
    #[error("systemd started {unit} but process {pid} is still in {now} after {within:?}")]
    NotInScope {
        /// The scope unit.
        unit: String,
        /// The keeper.
        pid: i32,
        /// Where it is (its cgroup, or `no cgroup`).
        now: String,
        /// How long corral waited.
        within: Duration,
    },
    /// The run's first process did not arrive in the payload in time.
    #[error("process {pid} is in {now} instead of {} after {within:?}", .want.display())]
    NotInCgroup {
        /// The process.
        pid: i32,
        /// Where it is (its cgroup, or `no cgroup`).
        now: String,
        /// The cgroup it should be in.
        want: PathBuf,
        /// How long corral waited.
        within: Duration,
    },
    /// The manager could not attach the run's first process to the payload.
    #[error("cannot move the run into {}: {error}", .payload.display())]
    Attach {
        /// The payload cgroup (hierarchy path).
        payload: PathBuf,
        /// Why.
        error: Box<SystemdError>,
    },
    /// The keeper cannot be moved into `keeper/`.
    #[error("cannot move the keeper into its cgroup: {0}")]
    MoveKeeper(corral_cgroup::CgroupError),
    /// The keeper cannot be prepared or started.
    #[error("cannot {what} the scope's keeper: {error}")]
    Keeper {
        /// `prepare` or `start`.
        what: &'static str,
        /// Why.
        error: crate::spawn::SpawnError,
    },
    /// systemd did not remove an emptied scope's cgroup, even after `StopUnit`.
    #[error("the cgroup {} of {unit} is still there after StopUnit", .dir.display())]
    NotCollected {
        /// The scope unit.
        unit: String,
        /// Its cgroup directory.
        dir: PathBuf,
    },
    /// `StopUnit` failed.
    #[error("StopUnit {unit}: {error}")]
    Stop {
        /// The scope unit.
        unit: String,
        /// Why.
        error: BusError,
    },
}

impl From<BusError> for SystemdError {
    fn from(e: BusError) -> Self {
        SystemdError::Bus(e)
    }
}

/// The scope unit of the run cgroup `name`.
pub fn unit_name(name: &str) -> String {
    format!("{UNIT_PREFIX}{name}.scope")
}

/// The run cgroup name inside a scope unit name, if it is one of corral's.
pub fn name_of_unit(unit: &str) -> Option<&str> {
    unit.strip_prefix(UNIT_PREFIX)?.strip_suffix(".scope")
}

fn read_controllers(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("cgroup.controllers"))
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// The controller a limit needs.
const LIMIT_CONTROLLERS: &[(LimitKind, &str)] = &[
    (LimitKind::Memory, "memory"),
    (LimitKind::Swap, "memory"),
    (LimitKind::Cpus, "cpu"),
    (LimitKind::Pids, "pids"),
    (LimitKind::IoReadBps, "io"),
    (LimitKind::IoWriteBps, "io"),
    (LimitKind::IoReadIops, "io"),
    (LimitKind::IoWriteIops, "io"),
    (LimitKind::IoWeight, "io"),
];

/// The scope properties for `io`: `IOReadBandwidthMax=` and friends as `a(st)` on
/// `/dev/block/MAJ:MIN` of each disk, and `IOWeight=`.
fn io_properties(io: &corral_cgroup::io::IoSet) -> Vec<(String, Value<'static>)> {
    let mut props: Vec<(String, Value<'static>)> = Vec::new();
    for (v, _, _, kind) in io.throttle_items() {
        let name = match kind {
            LimitKind::IoReadBps => "IOReadBandwidthMax",
            LimitKind::IoWriteBps => "IOWriteBandwidthMax",
            LimitKind::IoReadIops => "IOReadIOPSMax",
            _ => "IOWriteIOPSMax",
        };
        if let Some(n) = v {
            let per_dev: Vec<(String, u64)> = io
                .devices
                .iter()
                .map(|d| (format!("/dev/block/{d}"), n))
                .collect();
            props.push((name.into(), Value::from(per_dev)));
        }
    }
    if let Some(w) = io.weight {
        props.push(("IOWeight".into(), Value::from(w)));
    }
    props
}

/// The one-line reason for a limit whose controller the manager lacks.
fn missing_why(scope: Scope, controller: &str) -> String {
    match scope {
        Scope::User(_) => format!(
            "the user manager does not delegate the {controller} controller, so systemd \
             would silently ignore this limit (add {controller} to Delegate= of \
             user@.service: `systemctl edit user@.service`, [Service] Delegate=cpu cpuset io \
             memory pids, then restart the user manager or log in again)"
        ),
        Scope::System => format!(
            "the {controller} controller is not available in the cgroup2 root, so systemd \
             would silently ignore this limit"
        ),
    }
}

/// Drops from `plan` every limit whose controller is not in `have`, and swap where the
/// kernel does not account it.
fn restrict(plan: &mut Plan, have: &[String], scope: Scope, swap_accounted: bool) {
    for (limit, c) in LIMIT_CONTROLLERS {
        if !have.iter().any(|h| h == c) {
            plan.drop_limit(*limit, missing_why(scope, c));
        }
    }
    if !swap_accounted && host_has_swap() {
        plan.drop_limit(
            LimitKind::Swap,
            "swap accounting is off (no memory.swap.max)",
        );
    }
}

impl SystemdBackend {
    /// Connects to the manager: the system manager for root, the user's own manager
    /// otherwise. Fails with the reason when this host has no usable systemd.
    pub fn new() -> Result<Self, BackendError> {
        let layout = Layout::cached();
        if !Path::new("/run/systemd/system").exists() {
            return Err(SystemdError::NotInit.into());
        }
        let mount = match (&layout.v2, layout.kind()) {
            (Some(m), LayoutKind::Unified) => m.clone(),
            _ => return Err(SystemdError::NotUnified(layout.kind().as_str()).into()),
        };
        let euid = rustix::process::geteuid();
        let scope = if euid.is_root() {
            Scope::System
        } else {
            Scope::User(euid.as_raw())
        };
        let mgr = Manager::connect(scope).map_err(|error| match scope {
            Scope::System => SystemdError::SystemUnreachable(error),
            Scope::User(uid) => SystemdError::UserUnreachable { uid, error },
        })?;
        let delegated_from = match scope {
            Scope::System => mount.mount_point.clone(),
            Scope::User(uid) => mount
                .mount_point
                .join(format!("user.slice/user-{uid}.slice/user@{uid}.service")),
        };
        let slice_dir = delegated_from.join(SLICE);
        Ok(SystemdBackend {
            mgr: Arc::new(mgr),
            mount,
            delegated_from,
            slice_dir,
        })
    }

    /// The controllers the manager can give a scope.
    pub fn delegated(&self) -> Vec<String> {
        read_controllers(&self.delegated_from)
    }

    fn swap_accounted(&self) -> bool {
        // The root cgroup has no memory.* files: look at one below it.
        [
            self.delegated_from.clone(),
            self.mount.mount_point.join("system.slice"),
            self.mount.mount_point.join("init.scope"),
        ]
        .iter()
        .any(|d| d.join("memory.swap.max").exists())
    }

    /// Starts the scope for `unit` around the keeper and returns when its job is done.
    fn start_scope(
        &self,
        unit: &str,
        name: &str,
        keeper: &Keeper,
        limits: &Limits,
    ) -> Result<(), BackendError> {
        let id = parse_cgroup_name(name).map_or_else(|| name.to_string(), |(id, _)| id);
        let mut props: Vec<(String, Value<'static>)> = vec![
            (
                "Description".into(),
                Value::from(format!("corral run {id}")),
            ),
            ("Slice".into(), Value::from(SLICE)),
            ("Delegate".into(), Value::from(true)),
            ("CollectMode".into(), Value::from("inactive-or-failed")),
            ("PIDs".into(), Value::from(vec![keeper.pid() as u32])),
        ];
        if let Some(m) = limits.memory {
            props.push(("MemoryMax".into(), Value::from(m)));
        }
        if let Some(s) = limits.swap {
            props.push(("MemorySwapMax".into(), Value::from(s)));
        }
        if let Some(c) = limits.cpus {
            let per_sec = ((c * 1e6).round() as u64).max(10_000);
            props.push(("CPUQuotaPerSecUSec".into(), Value::from(per_sec)));
        }
        if let Some(n) = limits.pids {
            // One task more for the keeper; the payload gets exactly N.
            props.push(("TasksMax".into(), Value::from(n.saturating_add(1))));
        }
        if self.mgr.major() >= 253 {
            // Scopes know OOMPolicy= from 253 on; the default (stop) would tear the
            // scope down, with corral's counters, at the first OOM kill.
            props.push(("OOMPolicy".into(), Value::from("continue")));
        }
        let job = self.mgr.expect_job(unit);
        self.mgr
            .start_transient_unit(unit, props)
            .map_err(|error| SystemdError::Refused {
                unit: unit.to_string(),
                error,
            })?;
        match job.wait(JOB_WAIT) {
            Ok(r) if r == "done" => Ok(()),
            Ok(result) => Err(SystemdError::JobFailed {
                unit: unit.to_string(),
                result,
            }
            .into()),
            Err(e) => Err(SystemdError::Bus(e).into()),
        }
    }

    /// Builds the run's layout inside a started scope.
    fn build(&self, unit: &str, keeper: &Keeper, limits: &Limits) -> Result<Built, BackendError> {
        let t = Instant::now();
        let rel = wait_in_unit(keeper.pid(), unit, Duration::from_secs(5))?;
        let in_scope = t.elapsed();
        let scope = Cgroup2::at(join_rel(&self.mount, &rel));
        let kcg = scope.create_child("keeper")?;
        kcg.add_pid(keeper.pid())
            .map_err(SystemdError::MoveKeeper)?;
        tracing::debug!(
            "{unit}: keeper seen in the scope after {in_scope:?}, moved to keeper/ in {:?}",
            t.elapsed() - in_scope
        );
        let have = scope.controllers()?;
        let wanted: Vec<&str> = ["memory", "pids"]
            .into_iter()
            .filter(|c| have.iter().any(|h| h == c))
            .collect();
        scope.enable_controllers(&wanted)?;
        let payload = scope.create_child("payload")?;
        let mut plan = Plan::everything(limits);
        restrict(
            &mut plan,
            &have,
            self.mgr.scope,
            scope.has_file("memory.swap.max"),
        );
        let mut inner = Sandbox2::new(payload.clone(), limits, plan)?;
        // Root placed straight into the payload gets what the cgroup2 backend gives it:
        // a cgroup namespace rooted there and no capability to climb out.
        inner.contain = super::cgroup2::containment(&self.mount.mount_point);
        // Enforced: the payload's own limits, bounded by what systemd wrote on S.
        let mut plan = inner.plan();
        let e = &mut plan.enforced;
        e.memory_bytes = min_opt(
            e.memory_bytes,
            scope.read_limit("memory.max").ok().flatten(),
        );
        e.swap_bytes = min_opt(
            e.swap_bytes,
            scope.read_limit("memory.swap.max").ok().flatten(),
        );
        e.pids = min_opt(
            e.pids,
            scope
                .read_limit("pids.max")
                .ok()
                .flatten()
                .map(|n| n.saturating_sub(1)),
        );
        if have.iter().any(|h| h == "cpu") {
            if let Ok((q, period)) = scope.read_cpu_max() {
                e.cpus = q.map(|q| q as f64 / period as f64);
            }
        }
        // A limit systemd was asked for but did not apply is not enforced.
        for (limit, requested, got) in [
            (
                LimitKind::Memory,
                limits.memory.is_some(),
                e.memory_bytes.is_some(),
            ),
            (LimitKind::Cpus, limits.cpus.is_some(), e.cpus.is_some()),
            (LimitKind::Pids, limits.pids.is_some(), e.pids.is_some()),
        ] {
            let listed = plan.gaps.iter().any(|g| g.limit == limit);
            if requested && !got && !listed {
                plan.gaps.push(corral_record::Gap {
                    limit,
                    why: "systemd did not apply this limit to the scope".into(),
                });
            }
        }
        let own = Membership::current().v2;
        let payload_rel = rel.join("payload");
        let direct = own.is_some_and(|o| can_migrate(&self.mount, &o, &payload_rel));
        Ok(Built {
            scope,
            inner,
            plan,
            payload_rel,
            direct,
        })
    }
}

/// A run's layout inside its started scope.
struct Built {
    scope: Cgroup2,
    inner: Sandbox2,
    plan: Plan,
    payload_rel: PathBuf,
    /// corral may place the child into the payload itself (else the manager attaches it).
    direct: bool,
}

fn min_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, _) => None,
    }
}

/// True when this process may move a process from `own` into `target` (both
/// hierarchy-relative): the kernel requires write access to `cgroup.procs` of their
/// nearest common ancestor (and of the target, which corral created).
fn can_migrate(mount: &Mount, own: &Path, target: &Path) -> bool {
    let common: PathBuf = own
        .components()
        .zip(target.components())
        .take_while(|(a, b)| a == b)
        .map(|(a, _)| a)
        .filter(|c| !matches!(c, Component::RootDir))
        .collect();
    let dir = join_rel(mount, &Path::new("/").join(common));
    rustix::fs::access(dir.join("cgroup.procs"), rustix::fs::Access::WRITE_OK).is_ok()
}

/// Waits until `pid` sits in the cgroup of `unit` (a user manager may have the system
/// manager move it, asynchronously) and returns that cgroup's hierarchy path.
fn wait_in_unit(pid: i32, unit: &str, within: Duration) -> Result<PathBuf, BackendError> {
    let t = Instant::now();
    let mut delay = Duration::from_micros(100);
    loop {
        let cg = Membership::of_pid(pid).v2;
        if let Some(p) = &cg {
            if p.file_name().is_some_and(|n| n == unit) {
                return Ok(p.clone());
            }
        }
        if t.elapsed() >= within {
            return Err(SystemdError::NotInScope {
                unit: unit.to_string(),
                pid,
                now: cg.map_or_else(|| "no cgroup".into(), |p| p.display().to_string()),
                within,
            }
            .into());
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(10));
    }
}

/// Waits until `pid` is in the cgroup `rel`.
fn wait_in_cgroup(pid: i32, rel: &Path, within: Duration) -> Result<(), SystemdError> {
    let t = Instant::now();
    let mut delay = Duration::from_micros(100);
    loop {
        let cg = Membership::of_pid(pid).v2;
        if cg.as_deref() == Some(rel) {
            return Ok(());
        }
        if t.elapsed() >= within {
            return Err(SystemdError::NotInCgroup {
                pid,
                now: cg.map_or_else(|| "no cgroup".into(), |p| p.display().to_string()),
                want: rel.to_path_buf(),
                within,
            });
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(10));
    }
}

/// Waits until systemd has removed `dir` (after the scope emptied); if it does not
/// within [`COLLECT_WAIT`], asks it to stop the unit and waits for that job.
fn await_collected(mgr: &Manager, unit: &str, dir: &Path) -> Result<(), SystemdError> {
    let gone = |within: Duration| {
        let t = Instant::now();
        let mut delay = Duration::from_micros(200);
        while dir.exists() {
            if t.elapsed() >= within {
                return false;
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(20));
        }
        true
    };
    if gone(COLLECT_WAIT) {
        return Ok(());
    }
    stop_unit(mgr, unit)?;
    if gone(Duration::from_secs(2)) {
        Ok(())
    } else {
        Err(SystemdError::NotCollected {
            unit: unit.to_string(),
            dir: dir.to_path_buf(),
        })
    }
}

/// `StopUnit`, waiting for the job; an unknown unit is already stopped.
fn stop_unit(mgr: &Manager, unit: &str) -> Result<(), SystemdError> {
    let job = mgr.expect_job(unit);
    match mgr.stop_unit(unit) {
        Ok(_) => Ok(job.wait(JOB_WAIT).map(drop)?),
        Err(e) if e.is_no_such_unit() => Ok(()),
        Err(error) => Err(SystemdError::Stop {
            unit: unit.to_string(),
            error,
        }),
    }
}

impl Backend for SystemdBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Systemd
    }

    fn reason(&self) -> String {
        let who = match self.mgr.scope {
            Scope::System => "the system manager".to_string(),
            Scope::User(uid) => format!("the user manager of uid {uid}"),
        };
        let how = format!("over D-Bus at {}", self.mgr.address);
        let d = self.delegated();
        format!(
            "systemd {} ({who} {how}): transient scopes in {SLICE} with Delegate=yes; \
             controllers {}: {}",
            self.mgr.version,
            match self.mgr.scope {
                Scope::System => "available",
                Scope::User(_) => "delegated",
            },
            if d.is_empty() {
                "none".to_string()
            } else {
                d.join(" ")
            }
        )
    }

    fn plan(&self, limits: &Limits) -> Plan {
        let mut p = Plan::everything(limits);
        restrict(
            &mut p,
            &self.delegated(),
            self.mgr.scope,
            self.swap_accounted(),
        );
        p
    }

    fn create(&self, name: &str, limits: &Limits) -> Result<Box<dyn Sandbox>, BackendError> {
        let unit = unit_name(name);
        let t0 = Instant::now();
        let keeper = Keeper::spawn()?;
        if let Err(e) = self.start_scope(&unit, name, &keeper, limits) {
            keeper.end();
            let _ = stop_unit(&self.mgr, &unit);
            return Err(e);
        }
        let t1 = Instant::now();
        match self.build(&unit, &keeper, limits) {
            Ok(b) => {
                tracing::debug!(
                    "{unit}: scope started in {:?}, layout built in {:?} ({})",
                    t1 - t0,
                    t1.elapsed(),
                    if b.direct {
                        "corral places the child"
                    } else {
                        "the manager attaches the child"
                    }
                );
                let gate = if b.direct {
                    None
                } else {
                    Some(
                        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                            .map_err(|e| BackendError::os("pipe", e))?,
                    )
                };
                Ok(Box::new(SandboxSd {
                    inner: Some(b.inner),
                    payload_rel: b.payload_rel,
                    scope: b.scope,
                    unit,
                    keeper: Some(keeper),
                    mgr: self.mgr.clone(),
                    plan: b.plan,
                    gate,
                }))
            }
            Err(e) => {
                let dir = Membership::of_pid(keeper.pid())
                    .v2
                    .map(|r| join_rel(&self.mount, &r));
                keeper.end();
                if let Some(d) = dir.as_ref().and_then(|d| {
                    // K sat in S or in S/keeper.
                    if d.ends_with("keeper") {
                        d.parent().map(Path::to_path_buf)
                    } else {
                        Some(d.clone())
                    }
                }) {
                    let _ = Cgroup2::at(d.join("payload")).remove(Duration::from_millis(500));
                    let _ = await_collected(&self.mgr, &unit, &d);
                } else {
                    let _ = stop_unit(&self.mgr, &unit);
                }
                Err(e)
            }
        }
    }

    fn reap_leftovers(&self) -> Vec<Reaped> {
        let Ok(rd) = std::fs::read_dir(&self.slice_dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in rd.flatten() {
            let Ok(unit) = e.file_name().into_string() else {
                continue;
            };
            let Some(name) = name_of_unit(&unit) else {
                continue;
            };
            let dead = parse_cgroup_name(name).is_some_and(|(_, owner)| !owner.is_alive());
            if !dead || !e.path().is_dir() {
                continue;
            }
            let mut result =
                crate::guard::end(&GuardEntry::V2(e.path())).map_err(BackendError::from);
            if let Err(err) = stop_unit(&self.mgr, &unit) {
                result = result.and(Err(err.into()));
            }
            out.push(Reaped {
                name: name.to_string(),
                result,
            });
        }
        out
    }
}

/// The process that keeps a scope populated while corral reads its counters.
struct Keeper {
    child: Spawned,
}

impl Keeper {
    /// Starts `sleep infinity` with stdio on /dev/null and SIGKILL on corral's death.
    /// It execs, so it holds none of corral's (close-on-exec) descriptors.
    fn spawn() -> Result<Keeper, BackendError> {
        let exec = Exec::new(
            &["sleep".to_string(), "infinity".to_string()],
            &[("PATH".to_string(), "/usr/bin:/bin".to_string())],
            None,
        )
        .map_err(|error| SystemdError::Keeper {
            what: "prepare",
            error,
        })?;
        let null: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(|e| BackendError::os("/dev/null", e))?
            .into();
        let setup = ChildSetup {
            stdin: Some(null.as_fd()),
            stdout: Some(null.as_fd()),
            stderr: Some(null.as_fd()),
            parent_death_signal: Some(libc::SIGKILL),
            ..Default::default()
        };
        let child = spawn::spawn(&exec, &setup, &Placement::default()).map_err(|error| {
            SystemdError::Keeper {
                what: "start",
                error,
            }
        })?;
        Ok(Keeper { child })
    }

    fn pid(&self) -> i32 {
        self.child.pid
    }

    /// Kills and reaps the keeper.
    fn end(self) {
        let _ = rustix::process::pidfd_send_signal(&self.child.pidfd, Signal::KILL);
        let _ = super::reap_pidfd(&self.child.pidfd);
    }
}

/// One run's scope.
pub struct SandboxSd {
    inner: Option<Sandbox2>,
    scope: Cgroup2,
    payload_rel: PathBuf,
    unit: String,
    keeper: Option<Keeper>,
    mgr: Arc<Manager>,
    plan: Plan,
    /// Set when the manager must attach the child: (read end for the child, write end).
    gate: Option<(OwnedFd, OwnedFd)>,
}

impl SandboxSd {
    fn inner(&self) -> &Sandbox2 {
        self.inner.as_ref().expect("present until teardown")
    }
    fn inner_mut(&mut self) -> &mut Sandbox2 {
        self.inner.as_mut().expect("present until teardown")
    }
}

impl Sandbox for SandboxSd {
    fn cgroup(&self) -> Option<String> {
        self.inner().cgroup()
    }

    /// The whole scope: if corral dies, the guard kills the keeper with the run.
    fn guard_entry(&self) -> Option<GuardEntry> {
        Some(GuardEntry::V2(self.scope.path().to_path_buf()))
    }

    fn plan(&self) -> Plan {
        self.plan.clone()
    }

    fn placement(&self) -> Placement<'_> {
        if self.gate.is_some() {
            Placement::default()
        } else {
            self.inner().placement()
        }
    }

    fn child_setup<'a>(&'a self, setup: &mut ChildSetup<'a>) {
        match &self.gate {
            // Moved by systemd after the start: no namespace may be rooted before that.
            Some((rx, _)) => setup.gate = Some(rx.as_fd()),
            None => self.inner().child_setup(setup),
        }
    }

    fn after_spawn(&mut self, pid: i32) -> Result<(), BackendError> {
        let Some((rx, tx)) = self.gate.take() else {
            return Ok(());
        };
        drop(rx);
        let t = Instant::now();
        self.mgr
            .attach_processes(&self.unit, "/payload", &[pid as u32])
            .map_err(SystemdError::from)
            .and_then(|()| wait_in_cgroup(pid, &self.payload_rel, Duration::from_secs(5)))
            .map_err(|e| SystemdError::Attach {
                payload: self.payload_rel.clone(),
                error: Box::new(e),
            })?;
        rustix::io::write(&tx, b"g").map_err(|e| BackendError::os("releasing the run", e))?;
        tracing::debug!("{}: child attached in {:?}", self.unit, t.elapsed());
        Ok(())
    }

    fn event_fd(&self) -> Option<BorrowedFd<'_>> {
        self.inner().event_fd()
    }

    fn on_event(&mut self) -> Event {
        self.inner_mut().on_event()
    }

    fn kernel_kills_group_on_oom(&self) -> bool {
        self.inner().kernel_kills_group_on_oom()
    }

    fn oom_kills(&self) -> u64 {
        self.inner().oom_kills()
    }

    fn cpu_usage(&self) -> Option<Duration> {
        self.inner().cpu_usage()
    }

    fn process_count(&self) -> usize {
        self.inner().process_count()
    }

    fn memory_now(&self) -> (Option<u64>, Option<u64>) {
        self.inner().memory_now()
    }

    fn sample(&self) -> corral_cgroup::sample::Sample {
        self.inner().sample()
    }

    fn signal_all(&self, sig: Signal) -> usize {
        self.inner().signal_all(sig)
    }

    fn kill_all(&self) -> Result<(), BackendError> {
        self.inner().kill_all()
    }

    /// The scope's `IOReadBandwidthMax=` and friends (on `/dev/block/MAJ:MIN`) and
    /// `IOWeight=`, set on the running scope; systemd writes them to S's `io.max` and
    /// `io.weight`, which bound the payload below it. Read back from S.
    fn limit_io(
        &mut self,
        io: &corral_cgroup::io::IoSet,
    ) -> Result<Option<corral_cgroup::io::IoHeld>, BackendError> {
        use corral_cgroup::io::{IoHeld, WeightFile};
        let props = io_properties(io);
        if !props.is_empty() {
            self.mgr
                .set_unit_properties(&self.unit, props)
                .map_err(|error| SystemdError::Refused {
                    unit: self.unit.clone(),
                    error,
                })?;
        }
        let max = std::fs::read_to_string(self.scope.path().join("io.max")).unwrap_or_default();
        let throttle = !io.throttles()
            || io
                .devices
                .iter()
                .all(|d| max.lines().any(|l| l.starts_with(&format!("{d} "))));
        let weight = if self.scope.has_file("io.bfq.weight") {
            WeightFile::Bfq
        } else if self.scope.has_file("io.weight") {
            WeightFile::Generic
        } else {
            WeightFile::Absent
        };
        Ok(Some(IoHeld { throttle, weight }))
    }

    fn collect(&self) -> Collected {
        let mut c = self.inner().collect();
        if c.io_devices.is_empty() {
            c.io_devices = self.scope.io_devices();
        }
        if c.io_pressure.0.is_none() {
            c.io_pressure = self.scope.io_pressure();
        }
        // The CPU quota sits on S (the payload has no cpu controller): throttling is
        // counted there. The keeper uses no CPU and does no I/O.
        let st = read_flat_keyed(&self.scope.path().join("cpu.stat")).unwrap_or_default();
        c.cpu_throttled = st.get("nr_throttled").copied().unwrap_or(c.cpu_throttled);
        c.cpu_throttled_us = st
            .get("throttled_usec")
            .copied()
            .unwrap_or(c.cpu_throttled_us);
        if c.io_read.is_none() {
            if let Ok(s) = std::fs::read_to_string(self.scope.path().join("io.stat")) {
                let (r, w) = parse_io_stat(&s);
                c.io_read = Some(r);
                c.io_write = Some(w);
            }
        }
        c
    }

    fn teardown(mut self: Box<Self>) -> Result<(), BackendError> {
        let t = Instant::now();
        let inner = self.inner.take().expect("teardown once");
        let removed = Box::new(inner).teardown();
        if let Some(k) = self.keeper.take() {
            k.end();
        }
        let collected = await_collected(&self.mgr, &self.unit, self.scope.path());
        tracing::debug!("{}: collected in {:?}", self.unit, t.elapsed());
        removed?;
        Ok(collected?)
    }
}

impl Drop for SandboxSd {
    /// A sandbox dropped without teardown (a panic) must not leave the keeper running.
    fn drop(&mut self) {
        if let Some(k) = self.keeper.take() {
            k.end();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_properties_name_each_disk() {
        use corral_cgroup::io::{DevNum, IoSet};
        let io = IoSet {
            devices: vec![
                DevNum { major: 8, minor: 0 },
                DevNum {
                    major: 254,
                    minor: 0,
                },
            ],
            write_bps: Some(10 << 20),
            read_iops: Some(500),
            weight: Some(200),
            ..IoSet::default()
        };
        let p = io_properties(&io);
        let names: Vec<&str> = p.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["IOWriteBandwidthMax", "IOReadIOPSMax", "IOWeight"]);
        assert_eq!(p[0].1.value_signature().to_string(), "a(st)");
        let s = format!("{:?}", p[0].1);
        assert!(
            s.contains("/dev/block/8:0") && s.contains("/dev/block/254:0"),
            "{s}"
        );
        assert_eq!(p[2].1, Value::from(200u64));
        assert!(io_properties(&IoSet::default()).is_empty());
    }

    #[test]
    fn unit_names() {
        let n = "20261127T130501-3f9a2c1b.0a1b2c3d.1234.5678";
        assert_eq!(unit_name(n), format!("corral-{n}.scope"));
        assert_eq!(name_of_unit(&unit_name(n)), Some(n));
        assert_eq!(name_of_unit("other.scope"), None);
        assert!(parse_cgroup_name(name_of_unit(&unit_name(n)).unwrap()).is_some());
    }

    #[test]
    fn gaps_name_the_missing_controller() {
        let limits = Limits {
            memory: Some(64 << 20),
            cpus: Some(0.5),
            pids: Some(10),
            ..Limits::default()
        };
        let mut p = Plan::everything(&limits);
        let have: Vec<String> = ["memory", "pids"].iter().map(|s| s.to_string()).collect();
        restrict(&mut p, &have, Scope::User(4242), true);
        assert_eq!(p.gaps.len(), 1);
        assert_eq!(p.gaps[0].limit, LimitKind::Cpus);
        assert!(p.gaps[0]
            .why
            .contains("does not delegate the cpu controller"));
        assert!(p.gaps[0].why.contains("Delegate="));
        assert_eq!(p.enforced.memory_bytes, Some(64 << 20));
        assert_eq!(p.enforced.cpus, None);
        assert!(!p.gaps[0].why.contains('\n'));
    }

    #[test]
    fn migration_needs_the_common_ancestor() {
        let mount = Mount {
            mount_point: "/nonexistent-cgroup-mount".into(),
            root: "/".into(),
            controllers: Vec::new(),
        };
        assert!(!can_migrate(
            &mount,
            Path::new("/user.slice/user-1.slice/session-1.scope"),
            Path::new("/user.slice/user-1.slice/user@1.service/corral.slice/x.scope/payload"),
        ));
        assert_eq!(min_opt(Some(3), Some(2)), Some(2));
        assert_eq!(min_opt(Some(3), None), Some(3));
        assert_eq!(min_opt(None, Some(3)), None);
    }
}
