//! The JSON bodies of the HTTP API, shared by the server and the client.
//!
//! These names are a contract (a Python client is written against them): change them
//! only together with `openapi.json`, the docs and the clients.

use std::collections::BTreeMap;

use corral_record::Record;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `POST /runs`. Unknown fields are refused (400), so a typo is never silently ignored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// The command and its arguments (the first is looked up in `PATH`).
    pub command: Vec<String>,
    /// The working directory (the service's own, `/` under systemd, when null).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Environment variables to set, on top of the service's unless `clear_env`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Start from an empty environment (plus `env`).
    #[serde(default)]
    pub clear_env: bool,
    /// The profile the limits start from (`default` when null).
    #[serde(default)]
    pub profile: Option<String>,
    /// Limit overrides, as in a profile: `memory`, `swap`, `cpus`, `pids`, `timeout`,
    /// `cpu_time`, `grace`, `output_limit` (and `require_isolation`, `syscalls`, `network`,
    /// `pid_ns`, `isolation`; the disk limits `io_read_bps`, `io_write_bps`,
    /// `io_read_iops`, `io_write_iops`, `io_weight`, `io_device`, `file_size`, `disk`).
    #[serde(default)]
    pub limits: Option<Map<String, Value>>,
    /// A caller-chosen run id (1-64 of `[A-Za-z0-9_-]`); generated when null.
    #[serde(default)]
    pub id: Option<String>,
    /// Submitting again with the same key returns the existing run (200) instead of
    /// starting another.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Higher runs first; FIFO within one priority.
    #[serde(default)]
    pub priority: i64,
}

/// The answer to `POST /runs` (201, or 200 for a repeated idempotency key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitResponse {
    /// The run's id.
    pub id: String,
    /// `queued` or `running` (or later states for an idempotent repeat).
    pub state: RunState,
}

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Accepted and waiting for budget.
    Queued,
    /// Admitted: its cgroup exists or is being made, or it is running.
    Running,
    /// Finished; the record says how.
    Done,
    /// In flight when a previous service instance died; reaped at restart.
    Lost,
}

impl RunState {
    /// The name used in JSON, the ledger and query strings.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Running => "running",
            RunState::Done => "done",
            RunState::Lost => "lost",
        }
    }

    /// All states.
    pub const ALL: [RunState; 4] = [
        RunState::Queued,
        RunState::Running,
        RunState::Done,
        RunState::Lost,
    ];

    /// True for the states a run never leaves.
    pub fn is_final(self) -> bool {
        matches!(self, RunState::Done | RunState::Lost)
    }
}

/// A state name that is not one of [`RunState::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown state {0:?}; use queued, running, done or lost")]
pub struct UnknownState(pub String);

impl std::str::FromStr for RunState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, UnknownState> {
        RunState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_string()))
    }
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `GET /runs/{id}`: a run's status and, once final, its result record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunStatus {
    /// The run's id.
    pub id: String,
    /// Its state.
    pub state: RunState,
    /// When it was accepted (RFC 3339 UTC).
    pub submitted_at: String,
    /// When it was admitted (RFC 3339 UTC); null while queued.
    pub started_at: Option<String>,
    /// Its priority.
    pub priority: i64,
    /// Who submitted it (and whose it is): absent from services before owners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<RunOwner>,
    /// The `corral.result/v1` record; null until the run is `done` or `lost`.
    pub record: Option<Record>,
    /// The Slurm job carrying the run, once the Slurm executor handed it over (absent
    /// for runs on the service's own host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slurm_job_id: Option<String>,
    /// The command as submitted (also while queued or running, before any record):
    /// absent from services before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// A running run's usage now (absent otherwise, and from services before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<LiveUsage>,
    /// The profile the run's limits start from, as submitted (`default` when the request
    /// named none; also while queued or running): absent from services before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
}

/// What a running run uses now, read from its cgroup's counters about once a second.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LiveUsage {
    /// Seconds since its command started.
    pub elapsed_s: f64,
    /// CPU seconds of its whole tree so far.
    #[serde(default)]
    pub cpu_s: Option<f64>,
    /// Memory charged to it now.
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// Its peak memory so far.
    #[serde(default)]
    pub memory_peak_bytes: Option<u64>,
    /// Processes in it now.
    pub processes: u64,
    /// Its wall-clock limit in seconds.
    #[serde(default)]
    pub timeout_s: Option<f64>,
    /// Its memory limit.
    #[serde(default)]
    pub memory_limit_bytes: Option<u64>,
}

/// The owner of a run: the user that submitted it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunOwner {
    /// The submitter's uid (from the kernel, at submission).
    pub uid: u32,
    /// Its name (the number when it has none).
    pub name: String,
}

/// `GET /runs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunList {
    /// The runs, oldest submission first.
    pub runs: Vec<RunStatus>,
}

/// Every 4xx/5xx answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// One clear message.
    pub error: String,
}

/// The service budget and what is reserved or used of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetStatus {
    /// The runs' shared memory limit in bytes.
    pub memory_bytes: u64,
    /// The sum of the running runs' memory limits.
    pub memory_reserved_bytes: u64,
    /// The memory the runs' parent cgroup is charged now.
    pub memory_used_bytes: Option<u64>,
    /// The runs' shared CPU quota in CPUs.
    pub cpus: f64,
    /// The sum of the running runs' CPU quotas.
    pub cpus_reserved: f64,
    /// The runs' shared task limit.
    pub pids: u64,
    /// The runs' shared swap in bytes; null for no cap.
    pub swap_bytes: Option<u64>,
    /// Tasks in the runs' parent cgroup now.
    pub pids_current: Option<u64>,
    /// How many runs may run at once.
    pub max_running: usize,
    /// How many runs of one user may run at once; null for no per-user cap.
    #[serde(default)]
    pub user_max_running: Option<usize>,
    /// The memory one user's running runs may reserve together; null for no cap.
    #[serde(default)]
    pub user_memory_bytes: Option<u64>,
    /// The CPUs one user's running runs may reserve together; null for no cap.
    #[serde(default)]
    pub user_cpus: Option<f64>,
    /// The runs' shared disk bandwidth (`--budget-io-*`) and what they moved on its
    /// disks; null when no such cap is set.
    #[serde(default)]
    pub io: Option<IoBudgetStatus>,
}

/// The service's `--budget-io-*` caps (per disk, on the runs' parent cgroup) and what
/// the runs read and wrote on those disks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoBudgetStatus {
    /// Bytes the runs may read a second, together, per disk; null for no cap.
    pub read_bps: Option<u64>,
    /// Bytes the runs may write a second, together, per disk; null for no cap.
    pub write_bps: Option<u64>,
    /// Read operations a second; null for no cap.
    pub read_iops: Option<u64>,
    /// Write operations a second; null for no cap.
    pub write_iops: Option<u64>,
    /// Each capped disk.
    pub devices: Vec<IoBudgetDevice>,
}

/// One disk under the service's I/O budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoBudgetDevice {
    /// The disk, `MAJ:MIN`.
    pub device: String,
    /// Bytes the runs' parent cgroup has read from it (since the service made it).
    pub read_bytes: u64,
    /// Bytes the runs' parent cgroup has written to it.
    pub written_bytes: u64,
}

/// One user's share of this instance's queue and budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserUsage {
    /// The user (the runs' submitter).
    pub uid: u32,
    /// Its runs running now.
    pub running: usize,
    /// Its runs waiting.
    pub queued: usize,
    /// The memory its running runs reserve.
    pub memory_reserved_bytes: u64,
    /// The CPUs its running runs reserve.
    pub cpus_reserved: f64,
}

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// `ok`, or `draining` after SIGTERM.
    pub status: String,
    /// corral's version.
    pub version: String,
    /// The backend: `cgroup2` or `cgroup1`.
    pub backend: String,
    /// Why and where (the backend's own description).
    pub backend_reason: String,
    /// The service's cgroup root (for cgroup1: the path inside each hierarchy).
    pub cgroup_root: String,
    /// Runs waiting for budget.
    pub queued: usize,
    /// Runs admitted and not finished.
    pub running: usize,
    /// The budget.
    pub budget: BudgetStatus,
    /// The ledger file.
    pub ledger: String,
    /// The service's pid.
    pub pid: u32,
    /// Each user with runs running or waiting in this instance.
    #[serde(default)]
    pub users: Vec<UserUsage>,
    /// Where runs execute, when not on this host (`--executor slurm`); absent for the
    /// local executor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<ExecutorStatus>,
}

/// `/health`'s `executor`: runs execute elsewhere, and the budget above does not apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutorStatus {
    /// `slurm`.
    pub kind: String,
    /// Whether the service's budget decides when runs start (`false` under Slurm).
    pub budget_applies: bool,
    /// The partition jobs go to (`null`: Slurm's default).
    pub partition: Option<String>,
    /// The account jobs are charged to (`null`: the user's default).
    pub account: Option<String>,
    /// The spool every node sees (records, captured output, scripts).
    pub spool: String,
    /// One sentence for people.
    pub note: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submit_defaults_and_unknown_fields() {
        let r: SubmitRequest = serde_json::from_str(r#"{"command": ["true"]}"#).unwrap();
        assert_eq!(r.command, vec!["true"]);
        assert_eq!(r.priority, 0);
        assert!(!r.clear_env && r.limits.is_none() && r.id.is_none());
        let r: SubmitRequest = serde_json::from_str(
            r#"{"command": ["x"], "cwd": null, "env": {"A": "1"}, "clear_env": true,
                "profile": null, "limits": {"memory": "512M", "cpus": 0.5}, "id": null,
                "idempotency_key": "k", "priority": 3}"#,
        )
        .unwrap();
        assert_eq!(r.env["A"], "1");
        assert_eq!(r.priority, 3);
        let e = serde_json::from_str::<SubmitRequest>(r#"{"command": ["x"], "memory": "1G"}"#)
            .unwrap_err();
        assert!(e.to_string().contains("unknown field `memory`"), "{e}");
        assert!(serde_json::from_str::<SubmitRequest>(r#"{"cwd": "/"}"#).is_err());
    }

    #[test]
    fn states() {
        for s in RunState::ALL {
            assert_eq!(s.as_str().parse::<RunState>().unwrap(), s);
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        assert!("cancelled".parse::<RunState>().is_err());
        assert_eq!(
            "cancelled".parse::<RunState>().unwrap_err().to_string(),
            "unknown state \"cancelled\"; use queued, running, done or lost"
        );
    }
}
