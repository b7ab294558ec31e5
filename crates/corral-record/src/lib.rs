//! The result record of one run (`corral.result/v1`) and how its reason is decided.
//!
//! A record says what was asked ([`LimitValues`] requested), what the host really
//! enforced, which backend did it, why the run ended ([`Reason`]), what the kernel
//! counted, and, in [`Record::notes`], the same in a sentence or two for a scientist.
//!
//! The reason is decided by [`classify`] from the exit status and the cgroup's counters
//! together, after the whole process tree is gone: an exit status can arrive before
//! the OOM counter moves, so neither alone is trusted.

mod classify;
mod notes;
pub mod timeline;

use serde::{Deserialize, Serialize};

pub use classify::{classify, Evidence, KillCause, Verdict, WaitStatus};
pub use classify::{reports_out_of_memory, OUT_OF_MEMORY_REPORTS};
pub use notes::compose_notes;
pub use timeline::{Timeline, TimelineEvent, TimelinePoint};

/// The schema name written into every record.
pub const SCHEMA: &str = "corral.result/v1";

/// Why a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The main process exited by itself (any exit code).
    Exited,
    /// The main process died of a signal that corral did not send.
    Signaled,
    /// The kernel's OOM killer ended the run: it hit its memory budget.
    Oom,
    /// corral ended the run at its wall-clock limit.
    Timeout,
    /// corral ended the run when its CPU-time budget was used up.
    CpuTime,
    /// corral was asked to stop (a signal to corral, or a cancel through the service).
    Cancelled,
    /// The command could not be started (not found, not executable, bad cwd, ...).
    SpawnFailed,
    /// The supervisor died with the run in flight; recorded by the service's ledger.
    Lost,
    /// A write went past the run's largest-file limit (`--file-size`, `RLIMIT_FSIZE`):
    /// the writer died of `SIGXFSZ`, or failed with `EFBIG` leaving a file at the limit.
    FileSize,
    /// The run used up its disk budget (`--disk`, a project quota): writes failed with
    /// `EDQUOT` and the command failed.
    Disk,
}

impl Reason {
    /// The name used in JSON and in `corral` output.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Exited => "exited",
            Reason::Signaled => "signaled",
            Reason::Oom => "oom",
            Reason::Timeout => "timeout",
            Reason::CpuTime => "cpu_time",
            Reason::Cancelled => "cancelled",
            Reason::SpawnFailed => "spawn_failed",
            Reason::Lost => "lost",
            Reason::FileSize => "file_size",
            Reason::Disk => "disk",
        }
    }

    /// All reasons, for metrics and documentation.
    pub const ALL: [Reason; 10] = [
        Reason::Exited,
        Reason::Signaled,
        Reason::Oom,
        Reason::Timeout,
        Reason::CpuTime,
        Reason::Cancelled,
        Reason::SpawnFailed,
        Reason::Lost,
        Reason::FileSize,
        Reason::Disk,
    ];
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Limit values as they appear in the record; `null` means unlimited (requested) or
/// not enforced / unlimited (enforced: see [`LimitsRecord::not_enforced`] for which).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LimitValues {
    /// Memory budget in bytes.
    pub memory_bytes: Option<u64>,
    /// Swap budget in bytes.
    pub swap_bytes: Option<u64>,
    /// CPU quota in CPUs.
    pub cpus: Option<f64>,
    /// Maximum number of tasks.
    pub pids: Option<u64>,
    /// Wall-clock limit in seconds.
    pub timeout_s: Option<f64>,
    /// CPU-time limit in seconds.
    pub cpu_time_s: Option<f64>,
    /// Read bandwidth in bytes a second per device (absent in older records).
    #[serde(default)]
    pub io_read_bps: Option<u64>,
    /// Write bandwidth in bytes a second per device (absent in older records).
    #[serde(default)]
    pub io_write_bps: Option<u64>,
    /// Read operations a second per device (absent in older records).
    #[serde(default)]
    pub io_read_iops: Option<u64>,
    /// Write operations a second per device (absent in older records).
    #[serde(default)]
    pub io_write_iops: Option<u64>,
    /// Proportional I/O weight (absent in older records).
    #[serde(default)]
    pub io_weight: Option<u64>,
    /// The largest file the run may write, in bytes (absent in older records).
    #[serde(default)]
    pub file_size_bytes: Option<u64>,
    /// The space the run may add under its writable paths (absent in older records).
    #[serde(default)]
    pub disk_bytes: Option<u64>,
}

impl LimitValues {
    /// The values of typed [`corral_spec::Limits`].
    pub fn from_limits(l: &corral_spec::Limits) -> Self {
        LimitValues {
            memory_bytes: l.memory,
            swap_bytes: l.swap,
            cpus: l.cpus,
            pids: l.pids,
            timeout_s: l.timeout.map(|d| d.as_secs_f64()),
            cpu_time_s: l.cpu_time.map(|d| d.as_secs_f64()),
            io_read_bps: l.io_read_bps,
            io_write_bps: l.io_write_bps,
            io_read_iops: l.io_read_iops,
            io_write_iops: l.io_write_iops,
            io_weight: l.io_weight,
            file_size_bytes: l.file_size,
            disk_bytes: l.disk,
        }
    }
}

/// A requested limit that the host could not enforce, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// The limit; serialized as its field name in [`LimitValues`] (`cpus`,
    /// `memory_bytes`, ...).
    pub limit: corral_spec::LimitKind,
    /// Why it is not enforced, in one sentence.
    pub why: String,
}

/// Requested versus enforced limits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LimitsRecord {
    /// What the profile, metadata and flags asked for.
    pub requested: LimitValues,
    /// What the backend really enforces (`null` where not enforced).
    pub enforced: LimitValues,
    /// Each requested limit that is not enforced, with the reason.
    pub not_enforced: Vec<Gap>,
    /// Seconds between SIGTERM and SIGKILL.
    pub grace_s: f64,
}

impl LimitsRecord {
    /// The `requested` limits next to what a backend's plan enforces of them
    /// (`enforced`) and what it cannot (`not_enforced`).
    pub fn new(
        requested: &corral_spec::Limits,
        enforced: LimitValues,
        not_enforced: Vec<Gap>,
    ) -> LimitsRecord {
        LimitsRecord {
            requested: LimitValues::from_limits(requested),
            enforced,
            not_enforced,
            grace_s: requested.grace.as_secs_f64(),
        }
    }
}

/// A syscall policy by name and version (`corral-default`, 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyscallPolicy {
    /// The policy's name.
    pub policy: String,
    /// Its version: raised whenever its list of denied calls changes.
    pub version: u32,
}

fn default_isolation() -> String {
    "default".into()
}

fn default_pid_ns() -> String {
    "off".into()
}

/// The isolation layers a run asked for (profile, metadata, flags).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IsolationRequested {
    /// The sandbox's master switch: `default`, or `off` (no sandbox; `network` and
    /// `syscalls` say what the run got after explicit per-layer keys). Absent in records
    /// written before it existed: `default`.
    #[serde(default = "default_isolation")]
    pub isolation: String,
    /// The syscall filter: `default` or `off`.
    pub syscalls: String,
    /// The network: `none` (its own namespace, loopback only) or `host`.
    pub network: String,
    /// Who the command runs as: `default`, `dynamic` or `name[:group]`. Absent in
    /// records written before it existed: `default`.
    #[serde(default = "default_isolation")]
    pub user: String,
    /// The pid namespace: `on` (its own) or `off` (the host's). Absent in records
    /// written before it existed: `off`, what those runs had.
    #[serde(default = "default_pid_ns")]
    pub pid_ns: String,
    /// The file-system view asked for (`null` only in records written before the
    /// layer existed).
    #[serde(default)]
    pub fs: Option<FsRequested>,
}

/// The file-system view a run asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsRequested {
    /// `read-only` (the host read-only) or `host` (the host's files).
    pub mode: String,
    /// The paths to keep writable besides the working directory, as absolute paths.
    pub rw: Vec<String>,
    /// The paths to hide.
    pub hide: Vec<String>,
}

/// The file-system view a run got.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsEnforced {
    /// `read-only` or `host`.
    pub mode: String,
    /// Every writable path: in the read-only view the working directory, each `rw`
    /// path, `/tmp` and `/dev/shm`; with `host`, `/` (everything corral may write).
    pub writable: Vec<String>,
    /// Each path covered by an empty read-only directory (or file).
    pub hidden: Vec<String>,
    /// `/tmp` and `/dev/shm` are private to the run (fresh tmpfs mounts whose pages
    /// count against its memory budget), gone when it ends.
    pub private_tmp: bool,
}

/// The isolation layers really applied to the run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IsolationEnforced {
    /// The seccomp filter installed before exec (`null`: none).
    pub syscalls: Option<SyscallPolicy>,
    /// `PR_SET_NO_NEW_PRIVS`: exec grants no privileges (setuid, file capabilities).
    pub no_new_privs: bool,
    /// A new session (`setsid`): no controlling terminal.
    pub new_session: bool,
    /// Whether the run may write core dumps (`false`: `RLIMIT_CORE` 0).
    pub core_dumps: bool,
    /// The network the run saw: `loopback` (its own namespace with only `lo`), `host`,
    /// or `null` (a namespace was asked for and could not be made: see `not_enforced`).
    pub network: Option<String>,
    /// The file-system view the run saw, or `null` where it could not be applied
    /// (see `not_enforced`).
    #[serde(default)]
    pub fs: Option<FsEnforced>,
    /// Whether the run had its own pid namespace (its command pid 2 under corral's
    /// mini-init, a fresh `/proc`). Absent in records written before it existed: `false`.
    #[serde(default)]
    pub pid_ns: bool,
    /// The Landlock ABI version of the ruleset that restricted the run's writes to its
    /// writable paths (the second file-system layer, with the read-only view), or
    /// `null`: none (no read-only view, or a kernel without Landlock: see
    /// `not_enforced`).
    #[serde(default)]
    pub landlock: Option<u32>,
    /// Who the command ran as (absent in records written before it existed).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub user: Option<UserRecord>,
    /// The capabilities the command kept: `none`, or `inherited` (`isolation = "off"`:
    /// corral's own, less what the cgroup containment drops). Absent in records
    /// written before it existed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub capabilities: Option<String>,
    /// `true` when the run was born in its own user namespace (an ordinary user's run,
    /// its own uid and gid mapped to themselves), through which it got its network,
    /// pid and file-system layers. Absent when it was not (root's runs, older records).
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub user_namespace: bool,
}

/// The identity a run's command had, in the record's `isolation.enforced.user`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// The user's name (`corral-UID` for a dynamic uid without a passwd entry).
    pub name: String,
    /// The user id.
    pub uid: u32,
    /// The primary group id.
    pub gid: u32,
    /// A dynamic uid from corral's range, held by this run alone.
    pub dynamic: bool,
    /// Root's uid (`--user root`): root's file access, but no capabilities.
    pub root: bool,
    /// How files the run creates in its working directory (and `--rw` paths) get
    /// their owner: `idmapped` (an id-mapped mount: they belong to the directory's
    /// owner), `restored` (written as the dynamic uid through corral's run group,
    /// given back to the directory's owner after the run), `run-user` (they belong to
    /// the run's own user), or `not-writable` (a dynamic uid that could not be given
    /// the directory).
    pub files: String,
}

/// An isolation layer that was asked for but could not be applied, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IsolationGap {
    /// The layer, named as in [`IsolationRequested`] (`syscalls`, `network`).
    pub layer: String,
    /// Why it is not enforced and what would enforce it, in a sentence or two.
    pub why: String,
}

/// Requested versus applied isolation layers, beside [`LimitsRecord`]. Later layers
/// (user, file system, pid namespace, Landlock) add fields to `requested` and
/// `enforced`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IsolationRecord {
    /// What the profile, metadata and flags asked for.
    pub requested: IsolationRequested,
    /// What corral applied.
    pub enforced: IsolationEnforced,
    /// Each requested layer that could not be applied, with the reason.
    pub not_enforced: Vec<IsolationGap>,
}

/// How the run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// Why it ended.
    pub reason: Reason,
    /// corral's exit status for this run (see the README's exit-code table).
    pub exit_code: i32,
    /// The signal that ended the main process, if it died of one.
    pub signal: Option<i32>,
    /// The main process' own exit code, if it exited.
    pub process_exit_code: Option<i32>,
    /// For `spawn_failed`: what went wrong.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
}

/// Limit events counted by the kernel during the run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Events {
    /// Processes killed by the OOM killer.
    pub oom_kill: u64,
    /// Forks refused because the run was at its process limit.
    pub pids_max: u64,
    /// CPU periods in which the run was throttled by its quota.
    pub cpu_throttled: u64,
    /// Total time the run was throttled, in microseconds.
    pub cpu_throttled_us: u64,
    /// Times the run hit its memory limit (reclaim was forced), where counted.
    pub memory_max: u64,
    /// Processes still running after the main process exited, killed by corral.
    pub leftover_killed: u64,
    /// True when corral had to SIGKILL because SIGTERM did not end the run in time.
    pub grace_expired: bool,
}

/// What the run used, from the kernel's accounting of the run alone.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Wall-clock time from start to the end of the whole tree, in seconds.
    pub wall_s: f64,
    /// User CPU time of the whole tree, in seconds.
    pub cpu_user_s: f64,
    /// System CPU time of the whole tree, in seconds.
    pub cpu_system_s: f64,
    /// Peak memory of the run, in bytes (`null` where the host cannot tell).
    pub memory_peak_bytes: Option<u64>,
    /// Peak number of tasks (`null` where the host cannot tell).
    pub pids_peak: Option<u64>,
    /// Bytes read from block devices.
    pub io_read_bytes: Option<u64>,
    /// Bytes written to block devices.
    pub io_write_bytes: Option<u64>,
    /// What the run did on each block device, where the backend counts it per device
    /// (absent in older records).
    #[serde(default)]
    pub io_devices: Vec<DeviceUsage>,
    /// Time some of the run's tasks waited on I/O, in µs (`io.pressure` `some`; cgroup
    /// v2 only).
    #[serde(default)]
    pub io_pressure_some_us: Option<u64>,
    /// Time all of the run's tasks waited on I/O at once, in µs (`io.pressure` `full`).
    #[serde(default)]
    pub io_pressure_full_us: Option<u64>,
    /// Disk space the run had added under its writable paths when it ended, in bytes
    /// (its project quota's usage; only with `--disk` where it is enforced).
    #[serde(default)]
    pub disk_added_bytes: Option<u64>,
    /// The most disk space the run had added at once, in bytes (sampled every 200 ms
    /// and at the end; only with `--disk` where it is enforced).
    #[serde(default)]
    pub disk_peak_bytes: Option<u64>,
}

/// What a run did on one block device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceUsage {
    /// The device, `MAJ:MIN`.
    pub device: String,
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Read operations.
    pub read_ios: u64,
    /// Write operations.
    pub write_ios: u64,
}

/// A captured output stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Captured {
    /// Where it was written.
    pub path: String,
    /// Bytes written to the file.
    pub bytes: u64,
    /// Bytes the run produced beyond `--output-limit`, dropped.
    pub dropped_bytes: u64,
}

/// The captured outputs, when `--stdout`/`--stderr` were given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    /// The standard output file.
    pub stdout: Option<Captured>,
    /// The standard error file.
    pub stderr: Option<Captured>,
}

/// The record of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// The run's id.
    pub id: String,
    /// The command and its arguments.
    pub command: Vec<String>,
    /// The working directory.
    pub cwd: Option<String>,
    /// The profile the limits started from.
    pub profile: String,
    /// The backend that ran it: `cgroup2`, `systemd`, `cgroup1` or `rlimit`.
    pub backend: String,
    /// Why this backend was chosen.
    pub backend_reason: String,
    /// The run's cgroup (for cgroup1: the memory hierarchy's directory), if any.
    pub cgroup: Option<String>,
    /// Requested and enforced limits.
    pub limits: LimitsRecord,
    /// Requested and applied isolation layers (absent in records of runs that never
    /// started a process: written by the service for lost or never-run submissions).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub isolation: Option<IsolationRecord>,
    /// How it ended.
    pub outcome: Outcome,
    /// Limit events.
    pub events: Events,
    /// Resource usage.
    pub usage: Usage,
    /// Captured output files.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub output: Option<Output>,
    /// Start time, RFC 3339 UTC.
    pub started_at: String,
    /// End time, RFC 3339 UTC.
    pub finished_at: String,
    /// What happened, in one or two plain sentences.
    pub notes: String,
    /// The corral version that wrote the record.
    pub corral_version: String,
    /// What the run used over time, and the limit events with their time (present
    /// only when asked for: `corral run --timeline`, and every run of the service).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub timeline: Option<Timeline>,
    /// Where the run was executed: `slurm` when a corral service handed it to Slurm;
    /// absent for a run on the service's (or `corral run`'s) own host.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub executor: Option<String>,
    /// The Slurm job that carried the run (with `executor: "slurm"`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub slurm: Option<SlurmJob>,
}

/// The Slurm job of a run the service handed to Slurm, in the record's `slurm`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlurmJob {
    /// The job id `sbatch` answered.
    pub job_id: String,
    /// The job's last state as Slurm reported it (`COMPLETED`, `FAILED`, `TIMEOUT`,
    /// `OUT_OF_MEMORY`, `CANCELLED`, ...), `null` if Slurm never said.
    pub state: Option<String>,
    /// The node it ran on, `null` if it never ran.
    pub node: Option<String>,
}

/// What a record says of a run before it has run: the request, and which backend
/// takes it under which limits. [`Record::new`] builds the rest.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordHead {
    /// The run's id.
    pub id: String,
    /// The command and its arguments.
    pub command: Vec<String>,
    /// The working directory.
    pub cwd: Option<String>,
    /// The profile the limits started from.
    pub profile: String,
    /// The backend that runs it (`cgroup2`, `systemd`, `cgroup1` or `rlimit`).
    pub backend: String,
    /// Why this backend was chosen.
    pub backend_reason: String,
    /// Requested and enforced limits.
    pub limits: LimitsRecord,
}

impl Record {
    /// The one place a record is made: the record of a run that has not run (yet).
    ///
    /// Until its end is known the outcome is `spawn_failed` with exit status 125
    /// (corral failed), so a record cut short never claims more than happened. Both
    /// times are now; there are no events, usage, output, cgroup or notes: the caller
    /// fills in what it learns and composes the notes last ([`compose_notes`]).
    pub fn new(head: RecordHead) -> Record {
        let now = rfc3339(std::time::SystemTime::now());
        Record {
            schema: SCHEMA.to_string(),
            id: head.id,
            command: head.command,
            cwd: head.cwd,
            profile: head.profile,
            backend: head.backend,
            backend_reason: head.backend_reason,
            cgroup: None,
            limits: head.limits,
            isolation: None,
            outcome: Outcome {
                reason: Reason::SpawnFailed,
                exit_code: 125,
                signal: None,
                process_exit_code: None,
                error: None,
            },
            events: Events::default(),
            usage: Usage::default(),
            output: None,
            started_at: now.clone(),
            finished_at: now,
            notes: String::new(),
            corral_version: env!("CARGO_PKG_VERSION").to_string(),
            timeline: None,
            executor: None,
            slurm: None,
        }
    }

    /// Serializes the record as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a record always serializes")
    }
}

/// Formats a system time as RFC 3339 UTC with milliseconds.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// The conventional name of a signal number (`SIGKILL`), or `signal N`.
pub fn signal_name(sig: i32) -> String {
    let n = match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        10 => "SIGUSR1",
        11 => "SIGSEGV",
        12 => "SIGUSR2",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        _ => return format!("signal {sig}"),
    };
    n.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_record_says_corral_failed_until_told_otherwise() {
        let limits = corral_spec::Limits {
            memory: Some(1 << 20),
            grace: std::time::Duration::from_millis(1500),
            ..corral_spec::Limits::default()
        };
        let rec = Record::new(RecordHead {
            id: "r1".into(),
            command: vec!["true".into()],
            cwd: Some("/".into()),
            profile: "default".into(),
            backend: "cgroup1".into(),
            backend_reason: "why".into(),
            limits: LimitsRecord::new(&limits, LimitValues::default(), Vec::new()),
        });
        assert_eq!(rec.schema, SCHEMA);
        assert_eq!(rec.outcome.reason, Reason::SpawnFailed);
        assert_eq!(rec.outcome.exit_code, 125);
        assert_eq!(rec.started_at, rec.finished_at);
        assert_eq!(rec.limits.requested.memory_bytes, Some(1 << 20));
        assert_eq!(rec.limits.enforced.memory_bytes, None);
        assert_eq!(rec.limits.grace_s, 1.5);
        assert_eq!(rec.corral_version, env!("CARGO_PKG_VERSION"));
        assert!(rec.notes.is_empty() && rec.cgroup.is_none() && rec.output.is_none());
        let back: Record = serde_json::from_str(&rec.to_json()).unwrap();
        assert_eq!(back, rec);
    }
}
