//! Backends: what isolates a run. One trait, one implementation per host kind.
//!
//! A [`Backend`] is set up once per process (it finds and prepares corral's cgroup
//! root, or its systemd connection) and creates one [`Sandbox`] per run. A sandbox is
//! the run's isolation: it tells [`crate::spawn`] where to place the child, reports
//! kernel events, reads counters, ends the whole tree and removes itself. The
//! supervisor ([`crate::supervise`]) drives any sandbox the same way.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use corral_cgroup::limits::{Enforced, Held, LimitSet};
use corral_record::{Gap, LimitValues, WaitStatus};
use corral_spec::{LimitKind, Limits};
use rustix::process::Signal;

use crate::spawn::{ChildSetup, Placement};

pub mod cgroup1;
pub mod cgroup2;
pub mod rlimit;
pub mod systemd;

/// The kinds of backend, strongest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// A cgroup v2 child created by corral.
    Cgroup2,
    /// A transient systemd scope with a delegated cgroup v2 subtree.
    Systemd,
    /// A group in each cgroup v1 controller hierarchy.
    Cgroup1,
    /// Resource limits (`setrlimit`) and a process group only.
    Rlimit,
}

impl BackendKind {
    /// Every backend, strongest first: the order `auto` tries them in, and the choices
    /// of `--backend` besides `auto`.
    pub const ALL: [BackendKind; 4] = [
        BackendKind::Cgroup2,
        BackendKind::Systemd,
        BackendKind::Cgroup1,
        BackendKind::Rlimit,
    ];

    /// The name used on the command line and in records.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Cgroup2 => "cgroup2",
            BackendKind::Systemd => "systemd",
            BackendKind::Cgroup1 => "cgroup1",
            BackendKind::Rlimit => "rlimit",
        }
    }
}

/// A backend name that is none of corral's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown backend {0:?}; use auto, cgroup2, systemd, cgroup1 or rlimit")]
pub struct UnknownBackend(pub String);

impl std::str::FromStr for BackendKind {
    type Err = UnknownBackend;
    fn from_str(s: &str) -> Result<Self, UnknownBackend> {
        match s {
            "cgroup2" => Ok(BackendKind::Cgroup2),
            "systemd" => Ok(BackendKind::Systemd),
            "cgroup1" => Ok(BackendKind::Cgroup1),
            "rlimit" => Ok(BackendKind::Rlimit),
            _ => Err(UnknownBackend(s.to_string())),
        }
    }
}

/// A backend that cannot be set up, or a sandbox that cannot be created or removed.
/// Causes are kept as typed fields (the cgroup file and errno, the D-Bus error), so
/// callers match on what went wrong; each message names its cause, so causes are not
/// also returned by `source()` (corral prints error chains joined with `: `, which
/// would repeat them).
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The host lacks what the backend needs (a mount, a controller, a writable root).
    #[error("{0}")]
    Unavailable(String),
    /// corral's cgroup root cannot be prepared; the hint follows from the errno.
    #[error(
        "cannot prepare corral's cgroup root at {}: {error}{}",
        .path.display(),
        root_hint(.error)
    )]
    Root {
        /// The cgroup being prepared.
        path: std::path::PathBuf,
        /// Why, with the file and errno.
        error: corral_cgroup::CgroupError,
    },
    /// A step on the run's cgroups failed (create, kill, remove).
    #[error("{what}: {error}")]
    Cgroup {
        /// What was being done ("cannot create the run's cgroup", ...).
        what: &'static str,
        /// Why, with the file and errno.
        error: corral_cgroup::CgroupError,
    },
    /// A limit could not be written (which one, the file and the errno). Not a
    /// `source()`: the message already holds the cause, and `{:#}` would repeat it.
    #[error("{0}")]
    Limit(corral_cgroup::limits::LimitError),
    /// A cgroup file operation failed.
    #[error("{0}")]
    File(corral_cgroup::CgroupError),
    /// Another OS call failed (a pipe, inotify, `/dev/null`).
    #[error("{what}: {error}")]
    Os {
        /// What was being done.
        what: String,
        /// The OS error.
        error: std::io::Error,
    },
    /// The systemd backend failed.
    #[error("{0}")]
    Systemd(systemd::SystemdError),
    /// The backend asked for by name cannot be set up.
    #[error("{} backend: {error}", .kind.as_str())]
    Named {
        /// The backend.
        kind: BackendKind,
        /// Why.
        error: Box<BackendError>,
    },
    /// `auto` found no backend that can run here.
    #[error("no backend can run here: {}", passed_over(.0))]
    NoneAvailable(Vec<(BackendKind, BackendError)>),
}

impl From<corral_cgroup::CgroupError> for BackendError {
    fn from(e: corral_cgroup::CgroupError) -> Self {
        BackendError::File(e)
    }
}

impl From<systemd::SystemdError> for BackendError {
    fn from(e: systemd::SystemdError) -> Self {
        BackendError::Systemd(e)
    }
}

impl BackendError {
    /// An OS error while doing `what`.
    pub fn os(what: impl Into<String>, error: impl Into<std::io::Error>) -> BackendError {
        BackendError::Os {
            what: what.into(),
            error: error.into(),
        }
    }

    /// The errno behind this error, if there is one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            BackendError::Root { error, .. }
            | BackendError::Cgroup { error, .. }
            | BackendError::File(error) => error.raw_os_error(),
            BackendError::Limit(e) => e.source.raw_os_error(),
            BackendError::Os { error, .. } => error.raw_os_error(),
            BackendError::Named { error, .. } => error.raw_os_error(),
            _ => None,
        }
    }
}

/// What to do about a cgroup root that cannot be prepared, from the errno.
fn root_hint(e: &corral_cgroup::CgroupError) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => {
            " (run as root, choose a writable --cgroup-root, or use the systemd backend for a delegated cgroup)"
        }
        Some(libc::EBUSY) => " (a cgroup with processes cannot enable controllers for children)",
        _ => "",
    }
}

/// `kind: why; kind: why` for the backends `auto` passed over.
fn passed_over(passed: &[(BackendKind, BackendError)]) -> String {
    passed
        .iter()
        .map(|(k, e)| format!("{}: {e}", k.as_str()))
        .collect::<Vec<_>>()
        .join("; ")
}

/// What a backend would enforce of some limits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// The values it enforces (`None` where unlimited or not enforced).
    pub enforced: LimitValues,
    /// Requested limits it cannot enforce.
    pub gaps: Vec<Gap>,
}

impl Plan {
    /// Starts a plan that enforces everything requested; backends then remove what they
    /// cannot do with [`Plan::drop_limit`]. Timeouts are enforced by the supervisor on
    /// every backend.
    pub fn everything(limits: &Limits) -> Plan {
        Plan {
            enforced: LimitValues::from_limits(limits),
            gaps: Vec::new(),
        }
    }

    /// Marks a requested limit as not enforced, with the reason. Does nothing when the
    /// limit was not requested (unlimited), or is not one a backend enforces (grace,
    /// output limit: see [`LimitKind::ENFORCEABLE`]).
    pub fn drop_limit(&mut self, limit: LimitKind, why: impl Into<String>) {
        let e = &mut self.enforced;
        let was = match limit {
            LimitKind::Memory => e.memory_bytes.take().is_some(),
            LimitKind::Swap => e.swap_bytes.take().is_some(),
            LimitKind::Cpus => e.cpus.take().is_some(),
            LimitKind::Pids => e.pids.take().is_some(),
            LimitKind::Timeout => e.timeout_s.take().is_some(),
            LimitKind::CpuTime => e.cpu_time_s.take().is_some(),
            LimitKind::IoReadBps => e.io_read_bps.take().is_some(),
            LimitKind::IoWriteBps => e.io_write_bps.take().is_some(),
            LimitKind::IoReadIops => e.io_read_iops.take().is_some(),
            LimitKind::IoWriteIops => e.io_write_iops.take().is_some(),
            LimitKind::IoWeight => e.io_weight.take().is_some(),
            LimitKind::FileSize => e.file_size_bytes.take().is_some(),
            LimitKind::Disk => e.disk_bytes.take().is_some(),
            LimitKind::Grace
            | LimitKind::OutputLimit
            | LimitKind::RequireIsolation
            | LimitKind::Syscalls
            | LimitKind::Network
            | LimitKind::Isolation
            | LimitKind::PidNs
            | LimitKind::Fs
            | LimitKind::Rw
            | LimitKind::Hide
            | LimitKind::User
            | LimitKind::IoDevice => false,
        };
        if was {
            self.gaps.push(Gap {
                limit,
                why: why.into(),
            });
        }
    }
}

/// The disk I/O limits a cgroup enforces per device.
pub const IO_LIMITS: [LimitKind; 5] = [
    LimitKind::IoReadBps,
    LimitKind::IoWriteBps,
    LimitKind::IoReadIops,
    LimitKind::IoWriteIops,
    LimitKind::IoWeight,
];

/// The limits to write on a run's cgroup (or a budget's): `limits` in cgroup terms,
/// the CPU quota over [`CPU_PERIOD_US`].
pub fn limit_set(limits: &Limits) -> LimitSet {
    LimitSet {
        memory: limits.memory,
        swap: limits.swap,
        cpu_quota_us: limits.cpus.map(cpu_quota_us),
        cpu_period_us: CPU_PERIOD_US,
        pids: limits.pids,
    }
}

impl Plan {
    /// Records that `limit` is enforced only in part, with the reason, keeping its
    /// enforced value (cgroup v1's write throttle, which misses buffered writeback).
    /// Does nothing when the limit was not requested.
    pub fn note_partial(&mut self, limit: LimitKind, why: impl Into<String>) {
        let requested = match limit {
            LimitKind::IoWriteBps => self.enforced.io_write_bps.is_some(),
            LimitKind::IoWriteIops => self.enforced.io_write_iops.is_some(),
            LimitKind::IoReadBps => self.enforced.io_read_bps.is_some(),
            LimitKind::IoReadIops => self.enforced.io_read_iops.is_some(),
            _ => false,
        };
        if requested {
            self.gaps.push(Gap {
                limit,
                why: why.into(),
            });
        }
    }

    /// Marks every disk I/O limit (bandwidth, operation rates, weight) as not enforced.
    pub fn drop_io(&mut self, why: &str) {
        for k in IO_LIMITS {
            self.drop_limit(k, why);
        }
    }

    /// Takes the memory, CPU and pids limits a cgroup holds after they were written
    /// ([`Held::Read`]) as the enforced values; a limit whose file the cgroup lacks
    /// ([`Held::Absent`]) keeps the plan's value. Swap is left to the caller, whose
    /// hierarchy kind decides how it reads back.
    pub(crate) fn read_back(&mut self, held: &Enforced) {
        fn take<T: Copy>(dst: &mut Option<T>, h: Held<T>) {
            if let Held::Read(v) = h {
                *dst = v;
            }
        }
        take(&mut self.enforced.memory_bytes, held.memory);
        take(&mut self.enforced.cpus, held.cpus);
        take(&mut self.enforced.pids, held.pids);
    }
}

/// Something the kernel reported about a running sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The OOM killer acted in the run.
    Oom,
    /// Something else changed (a process exited, the tree emptied, a counter moved).
    Changed,
}

/// The counters of a finished run, from the kernel's accounting of that run alone.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Collected {
    /// Processes killed by the OOM killer.
    pub oom_kill: u64,
    /// Forks refused by the process limit.
    pub pids_max: u64,
    /// Periods throttled by the CPU quota.
    pub cpu_throttled: u64,
    /// Time throttled, in microseconds.
    pub cpu_throttled_us: u64,
    /// Times the memory limit was hit.
    pub memory_max: u64,
    /// User CPU time.
    pub cpu_user: Duration,
    /// System CPU time.
    pub cpu_system: Duration,
    /// Peak memory.
    pub memory_peak: Option<u64>,
    /// Peak number of tasks.
    pub pids_peak: Option<u64>,
    /// Bytes read from block devices.
    pub io_read: Option<u64>,
    /// Bytes written to block devices.
    pub io_write: Option<u64>,
    /// What each device did, where the backend counts it per device.
    pub io_devices: Vec<corral_cgroup::io::DeviceIo>,
    /// `io.pressure`'s `some` and `full` totals in µs (cgroup v2).
    pub io_pressure: (Option<u64>, Option<u64>),
}

/// How a backend is set up and creates sandboxes.
pub trait Backend: Send + Sync {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;
    /// Why it was chosen (for the record's `backend_reason`).
    fn reason(&self) -> String;
    /// What it would enforce of `limits`, without creating anything.
    fn plan(&self, limits: &Limits) -> Plan;
    /// Creates the sandbox of one run, named `name`, with `limits` applied.
    fn create(&self, name: &str, limits: &Limits) -> Result<Box<dyn Sandbox>, BackendError>;
    /// Kills and removes the runs left under this backend's root by supervisors that
    /// are gone (crashed, killed); runs of live supervisors are not touched.
    fn reap_leftovers(&self) -> Vec<Reaped> {
        Vec::new()
    }
}

/// A leftover run found by [`Backend::reap_leftovers`].
#[derive(Debug)]
pub struct Reaped {
    /// The cgroup's name (`<id>.<boot>.<pid>.<start>`).
    pub name: String,
    /// Whether it was removed; otherwise the error.
    pub result: Result<(), BackendError>,
}

/// Reaps the run cgroups named in `names` whose owners are dead, using `entry` to say
/// how each is cleaned up.
pub fn reap_dead(
    names: Vec<String>,
    entry: impl Fn(&str) -> crate::guard::GuardEntry,
) -> Vec<Reaped> {
    names
        .into_iter()
        .filter(|n| crate::ident::parse_cgroup_name(n).is_some_and(|(_, owner)| !owner.is_alive()))
        .map(|n| {
            let result = crate::guard::end(&entry(&n)).map_err(BackendError::from);
            Reaped { name: n, result }
        })
        .collect()
}

/// The isolation of one run. All methods are cheap and non-blocking except where noted.
pub trait Sandbox: Send {
    /// The run's cgroup directory, for the record.
    fn cgroup(&self) -> Option<String>;
    /// What the crash guard must end if the supervisor dies.
    fn guard_entry(&self) -> Option<crate::guard::GuardEntry>;
    /// What the backend enforces for this run (read back from the kernel where possible).
    fn plan(&self) -> Plan;
    /// Where to place the child.
    fn placement(&self) -> Placement<'_>;
    /// Adds what the child must do before exec (rlimits, process group, gate).
    fn child_setup<'a>(&'a self, setup: &mut ChildSetup<'a>) {
        let _ = setup;
    }
    /// Called once the child exists (before a gate is released).
    fn after_spawn(&mut self, pid: i32) -> Result<(), BackendError> {
        let _ = pid;
        Ok(())
    }
    /// An fd that becomes readable when the kernel reports something (inotify on events
    /// files, an OOM eventfd). `None`: the backend has no events; the supervisor then
    /// waits for an empty tree with a short backoff.
    fn event_fd(&self) -> Option<BorrowedFd<'_>>;
    /// Drains the event fd after it became readable, and says what happened.
    fn on_event(&mut self) -> Event;
    /// True when the event fd also becomes readable as processes exit (cgroup2's
    /// `cgroup.events`), so the supervisor can wait on it for an empty tree; otherwise
    /// it checks [`Sandbox::process_count`] with a short backoff.
    fn notifies_empty(&self) -> bool {
        true
    }
    /// True when the kernel kills the whole run on OOM (cgroup2's `memory.oom.group`);
    /// otherwise the supervisor ends the rest of the tree after an OOM event.
    fn kernel_kills_group_on_oom(&self) -> bool;
    /// The OOM-kill counter so far.
    fn oom_kills(&self) -> u64;
    /// The CPU time of the whole run so far, if the backend can tell.
    fn cpu_usage(&self) -> Option<Duration>;
    /// How many processes the run has now.
    fn process_count(&self) -> usize;
    /// The memory charged to the run now and its peak so far, in bytes, where the
    /// backend can tell (two counter files; read on a timer by a live display).
    fn memory_now(&self) -> (Option<u64>, Option<u64>) {
        (None, None)
    }
    /// The counters of a timeline point (memory now, CPU, I/O, pressure, and the event
    /// counters), read from the sandbox's files; the default has memory and CPU only.
    fn sample(&self) -> corral_cgroup::sample::Sample {
        corral_cgroup::sample::Sample {
            memory_bytes: self.memory_now().0,
            cpu_us: self.cpu_usage().map(|d| d.as_micros() as u64),
            ..Default::default()
        }
    }
    /// Sends `sig` to every process of the run; returns how many were signalled.
    fn signal_all(&self, sig: Signal) -> usize;
    /// Kills every process of the run at once (SIGKILL, no escape).
    fn kill_all(&self) -> Result<(), BackendError>;
    /// Reaps the main process after its pidfd became readable.
    fn reap(&mut self, pidfd: &OwnedFd) -> std::io::Result<WaitStatus> {
        reap_pidfd(pidfd)
    }
    /// Writes the disk I/O limits `io` (bandwidth and operation rates per disk, a
    /// weight) on the run's group. `None`: the backend cannot limit I/O (its plan says
    /// so already).
    fn limit_io(
        &mut self,
        io: &corral_cgroup::io::IoSet,
    ) -> Result<Option<corral_cgroup::io::IoHeld>, BackendError> {
        let _ = io;
        Ok(None)
    }
    /// Reads every counter. Call once the tree is gone.
    fn collect(&self) -> Collected;
    /// Removes the sandbox (bounded retries; may block briefly).
    fn teardown(self: Box<Self>) -> Result<(), BackendError>;
}

/// Reaps a child through its pidfd and returns its status.
pub fn reap_pidfd(pidfd: &OwnedFd) -> std::io::Result<WaitStatus> {
    loop {
        match rustix::process::waitid(
            rustix::process::WaitId::PidFd(pidfd.as_fd()),
            rustix::process::WaitIdOptions::EXITED,
        ) {
            Ok(Some(st)) => return Ok(wait_status(&st)),
            Ok(None) => continue,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Converts a `waitid` status.
pub fn wait_status(st: &rustix::process::WaitIdStatus) -> WaitStatus {
    if let Some(sig) = st.terminating_signal() {
        WaitStatus::Signaled(sig)
    } else {
        WaitStatus::Exited(st.exit_status().unwrap_or(0))
    }
}

/// True when the host has any swap space configured (`/proc/swaps` lists a device).
pub fn host_has_swap() -> bool {
    std::fs::read_to_string("/proc/swaps")
        .map(|s| s.lines().count() > 1)
        .unwrap_or(false)
}

/// The number of CPUs this process may run on.
pub fn online_cpus() -> f64 {
    std::thread::available_parallelism()
        .map(|n| n.get() as f64)
        .unwrap_or(1.0)
}

/// The CPU quota period corral uses (100 ms, as systemd and the kernel default).
pub const CPU_PERIOD_US: u64 = 100_000;

/// The quota in microseconds per [`CPU_PERIOD_US`] for `cpus` CPUs (at least 1 ms, the
/// kernel's minimum).
pub fn cpu_quota_us(cpus: f64) -> u64 {
    ((cpus * CPU_PERIOD_US as f64).round() as u64).max(1000)
}

/// Sets up the backend `want`, or with `None` (auto) the strongest one this host
/// allows: cgroup2 > systemd > cgroup1 > rlimit. The chosen backend's
/// [`Backend::reason`] says why, including why stronger ones were passed over.
pub fn select(
    want: Option<BackendKind>,
    cgroup_root: Option<&std::path::Path>,
) -> Result<Box<dyn Backend>, BackendError> {
    let make = |k: BackendKind| -> Result<Box<dyn Backend>, BackendError> {
        match k {
            BackendKind::Cgroup2 => Ok(Box::new(cgroup2::Cgroup2Backend::new(cgroup_root)?)),
            BackendKind::Cgroup1 => Ok(Box::new(cgroup1::Cgroup1Backend::new(cgroup_root)?)),
            BackendKind::Systemd => Ok(Box::new(systemd::SystemdBackend::new()?)),
            BackendKind::Rlimit => Ok(Box::new(rlimit::RlimitBackend)),
        }
    };
    if let Some(kind) = want {
        return make(kind).map_err(|e| BackendError::Named {
            kind,
            error: Box::new(e),
        });
    }
    let mut passed = Vec::new();
    for k in BackendKind::ALL {
        match make(k) {
            Ok(b) if passed.is_empty() => return Ok(b),
            Ok(b) => return Ok(Box::new(Explained { inner: b, passed })),
            Err(e) => passed.push((k, e)),
        }
    }
    Err(BackendError::NoneAvailable(passed))
}

/// A backend chosen by `auto` after stronger ones failed: its reason says why.
struct Explained {
    inner: Box<dyn Backend>,
    passed: Vec<(BackendKind, BackendError)>,
}

impl Backend for Explained {
    fn kind(&self) -> BackendKind {
        self.inner.kind()
    }
    fn reason(&self) -> String {
        format!(
            "{} (auto: not available: {})",
            self.inner.reason(),
            passed_over(&self.passed)
        )
    }
    fn plan(&self, limits: &Limits) -> Plan {
        self.inner.plan(limits)
    }
    fn create(&self, name: &str, limits: &Limits) -> Result<Box<dyn Sandbox>, BackendError> {
        self.inner.create(name, limits)
    }
    fn reap_leftovers(&self) -> Vec<Reaped> {
        self.inner.reap_leftovers()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    fn denied(path: &str) -> corral_cgroup::CgroupError {
        corral_cgroup::CgroupError::Io {
            op: "mkdir",
            path: path.into(),
            source: std::io::Error::from_raw_os_error(libc::EACCES),
        }
    }

    #[test]
    fn errors_keep_the_errno_and_name_it_once() {
        let e = BackendError::Named {
            kind: BackendKind::Cgroup2,
            error: Box::new(BackendError::Root {
                path: "/sys/fs/cgroup/corral".into(),
                error: denied("/sys/fs/cgroup/corral"),
            }),
        };
        assert_eq!(e.raw_os_error(), Some(libc::EACCES));
        assert!(matches!(
            &e,
            BackendError::Named { error, .. } if matches!(**error, BackendError::Root { .. })
        ));
        assert_eq!(
            e.to_string(),
            "cgroup2 backend: cannot prepare corral's cgroup root at /sys/fs/cgroup/corral: \
             mkdir /sys/fs/cgroup/corral: Permission denied (os error 13) (run as root, choose \
             a writable --cgroup-root, or use the systemd backend for a delegated cgroup)"
        );
        // The message names its cause: printing the chain must not repeat it.
        assert!(e.source().is_none());
    }

    #[test]
    fn auto_lists_what_it_passed_over() {
        let e = BackendError::NoneAvailable(vec![
            (
                BackendKind::Cgroup2,
                BackendError::Unavailable("no cgroup2 file system is mounted on this host".into()),
            ),
            (
                BackendKind::Cgroup1,
                BackendError::Cgroup {
                    what: "cannot create the run's cgroups",
                    error: denied("/sys/fs/cgroup/memory/corral"),
                },
            ),
        ]);
        assert_eq!(
            e.to_string(),
            "no backend can run here: cgroup2: no cgroup2 file system is mounted on this host; \
             cgroup1: cannot create the run's cgroups: mkdir /sys/fs/cgroup/memory/corral: \
             Permission denied (os error 13)"
        );
        assert_eq!(
            "bogus".parse::<BackendKind>().unwrap_err().to_string(),
            "unknown backend \"bogus\"; use auto, cgroup2, systemd, cgroup1 or rlimit"
        );
    }
}
