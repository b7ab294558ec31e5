//! The service core: submissions, the queue, runs, cancels, recovery and the drain.
//!
//! State lives in two places. The ledger is the truth about every run and is written
//! first at each step (a submission before its 201, `running` before the run's cgroup
//! exists, the record before anyone is told the run is done). The in-memory part holds
//! what only this instance needs: the admission queue and reservations, each active
//! run's cancel switch, and a "done" signal that `wait` and `follow` block on.
//!
//! Runs are started with `tokio::spawn`, so [`corral_run::run()`] always runs on a worker
//! thread of the multi-threaded runtime (never on the blocking pool: the child's
//! `PR_SET_PDEATHSIG` is tied to the thread that created it). Ledger calls go to the
//! blocking pool.
//!
//! One concern per file, each a part of `impl Service` or pure functions beside it:
//!
//! * this file: the [`Service`] and its shared state, construction, the [`RunsTree`]
//!   seam;
//! * [`lifecycle`]: submit, pump, run, cancel, drain;
//! * [`executor`]: where an admitted run executes: here, or as a Slurm job;
//! * [`recovery`]: what a restart does with the runs the last instance left;
//! * [`retention`]: removing captured output after `--keep-output`, and the 410;
//! * [`validate`]: from a request body to a request and its effective limits;
//! * [`records`]: the records of runs that never ran, and who cancelled a run;
//! * [`query`]: status, list, wait, health, metrics;
//! * [`error`]: [`ServiceError`]; only `http.rs` maps it to status codes.
//!
//! The core knows no HTTP and needs no root: a fake backend and tree
//! (`testing.rs`) run it on a temporary ledger in the unit tests.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use corral_record::Record;
use corral_run::ident::Owner;
use corral_run::{Backend, Cancel, RunSpec, Stdio};
use corral_spec::{Limits, ProfileSet};
use tokio::sync::watch;

use crate::admission::{Admission, Budget, Need};
use crate::cgroups::{Reaped, ServiceTree, TreeUsage};
use crate::config::ServeConfig;
use crate::ledger::{Ledger, LedgerError, Row};
use crate::metrics::Metrics;
use crate::wire::{LiveUsage, RunState, SubmitRequest};

pub mod auth;
pub mod error;
pub mod executor;
pub mod lifecycle;
pub mod query;
pub mod records;
pub mod recovery;
pub mod retention;
#[cfg(test)]
mod testing;
pub mod validate;

pub use auth::{Access, Caller, Forbidden};
pub use error::ServiceError;
pub use lifecycle::{Cancelled, Submitted};
pub use query::status_of;
pub use records::LOST_EXIT_CODE;
pub use retention::OutputGone;

use records::{CancelBy, Never};

/// A run as submitted and resolved: what is needed to start it, fixed at submission.
#[derive(Debug, Clone)]
pub struct Job {
    /// The run id.
    pub id: String,
    /// The submission.
    pub request: SubmitRequest,
    /// The profile name.
    pub profile: String,
    /// The effective limits.
    pub limits: Limits,
    /// When it was accepted.
    pub submitted_at: String,
    /// The uid that submitted it (root's for rows from before submitters were kept).
    pub submitted_by: u32,
}

/// A ledger row whose stored request or limits no longer parse.
#[derive(Debug, thiserror::Error)]
#[error("run {id}: bad {what} in the ledger: {source}")]
pub struct BadRow {
    /// The run.
    pub id: String,
    /// `request` or `limits`.
    pub what: &'static str,
    /// Why it does not parse.
    pub source: serde_json::Error,
}

impl Job {
    /// The job a ledger row stores.
    pub fn from_row(row: &Row) -> Result<Job, BadRow> {
        let bad = |what| {
            move |source| BadRow {
                id: row.id.clone(),
                what,
                source,
            }
        };
        let request: SubmitRequest = serde_json::from_str(&row.request).map_err(bad("request"))?;
        let limits: Limits = serde_json::from_str(&row.limits).map_err(bad("limits"))?;
        Ok(Job {
            id: row.id.clone(),
            request,
            profile: row.profile.clone(),
            limits,
            submitted_at: row.submitted_at.clone(),
            submitted_by: row.submitted_by.unwrap_or(0),
        })
    }

    fn spec(&self, out: &Path) -> RunSpec {
        RunSpec {
            id: Some(self.id.clone()),
            command: self.request.command.clone(),
            cwd: self.request.cwd.as_ref().map(PathBuf::from),
            env: self
                .request
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            clear_env: self.request.clear_env,
            stdin: Stdio::Null,
            stdout: Stdio::File(out.join(format!("{}.stdout", self.id))),
            stderr: Stdio::File(out.join(format!("{}.stderr", self.id))),
            profile: self.profile.clone(),
            limits: self.run_limits(out),
            // Every run of the service keeps its timeline.
            timeline: Some(corral_run::timeline::DEFAULT_INTERVAL),
        }
    }

    /// The run's limits, with the service's state directory (the ledger's, holding
    /// every run's output) added to its hidden paths: no run sees the ledger or another
    /// run's output, whatever its file-system view. A run whose working directory or a
    /// `rw` path lies inside it is refused when it starts.
    fn run_limits(&self, out: &Path) -> Limits {
        let mut limits = self.limits.clone();
        if let Some(state) = out.parent().and_then(|d| std::fs::canonicalize(d).ok()) {
            if state.parent().is_some() {
                corral_spec::add_paths(&mut limits.hide, &[state]);
            }
        }
        limits
    }
}

/// What the core needs of the service's cgroup tree. [`ServiceTree`] is the real one;
/// the unit tests use a fake, so the core runs without root or cgroups.
pub trait RunsTree: Send + Sync {
    /// The service root, for `/health`.
    fn root_display(&self) -> String;
    /// The runs' parent directories (one per hierarchy on cgroup1; the first is the
    /// one a record names).
    fn runs_dirs(&self) -> Vec<PathBuf>;
    /// What the runs' parent is charged now.
    fn usage(&self) -> TreeUsage;
    /// The runs' shared disk budget and what they moved on its disks, if one is set.
    fn io_budget(&self) -> Option<crate::wire::IoBudgetStatus> {
        None
    }
}

impl RunsTree for ServiceTree {
    fn root_display(&self) -> String {
        ServiceTree::root_display(self)
    }
    fn runs_dirs(&self) -> Vec<PathBuf> {
        ServiceTree::runs_dirs(self)
    }
    fn usage(&self) -> TreeUsage {
        ServiceTree::usage(self)
    }
    fn io_budget(&self) -> Option<crate::wire::IoBudgetStatus> {
        ServiceTree::io_budget(self)
    }
}

struct Active {
    job: Arc<Job>,
    state: RunState,
    need: Need,
    cancel: Option<watch::Sender<Option<Cancel>>>,
    cancelled_by: Option<CancelBy>,
    done: watch::Sender<bool>,
    /// While it runs: its usage at the last tick of its observer.
    live: Option<LiveUsage>,
    /// While it runs: its observer's readings so far (bounded like a record's
    /// timeline), for `GET /runs/{id}/timeline`.
    history: corral_record::timeline::Timeline,
}

/// A run an earlier instance handed to Slurm, to be watched again once the runtime
/// runs.
struct Resumed {
    job: Arc<Job>,
    /// Its job, or `None`: admitted, but it never reached Slurm (submitted now).
    job_id: Option<String>,
    started_at: String,
    cancel: watch::Receiver<Option<Cancel>>,
}

struct Inner {
    adm: Admission,
    active: HashMap<String, Active>,
    draining: bool,
    resumed: Vec<Resumed>,
}

impl Inner {
    /// Puts a job in the admission queue and the active table, as `Queued`: a new
    /// submission and a queued run resumed after a restart enter the same way.
    fn enqueue(&mut self, job: Job, priority: i64, need: Need) {
        self.adm
            .push_owned(&job.id, priority, need, job.submitted_by);
        self.active.insert(
            job.id.clone(),
            Active {
                job: Arc::new(job),
                state: RunState::Queued,
                need,
                cancel: None,
                cancelled_by: None,
                done: watch::channel(false).0,
                live: None,
                history: corral_record::timeline::Timeline::new(1.0),
            },
        );
    }

    /// Admits at once a run that already executes elsewhere (a Slurm job an earlier
    /// instance submitted), so it is active, counted and cancellable like any other.
    fn resume(&mut self, job: Job, priority: i64, job_id: Option<String>, started_at: String) {
        let id = job.id.clone();
        let (tx, rx) = watch::channel(None);
        self.enqueue(job, priority, Need::default());
        while let Some((admitted, _)) = self.adm.admit_next() {
            if let Some(a) = self.active.get_mut(&admitted) {
                a.state = RunState::Running;
                if admitted == id {
                    a.cancel = Some(tx);
                    self.resumed.push(Resumed {
                        job: a.job.clone(),
                        job_id,
                        started_at,
                        cancel: rx,
                    });
                    return;
                }
            }
        }
    }
}

/// Static facts about the service for `/health`.
#[derive(Debug, Clone)]
pub struct Facts {
    /// The service root.
    pub cgroup_root: String,
    /// The ledger path.
    pub ledger: String,
}

/// What a [`Service`] is built from.
pub struct Parts {
    /// The open ledger.
    pub ledger: Ledger,
    /// The prepared cgroup tree (or a fake).
    pub tree: Arc<dyn RunsTree>,
    /// The backend that runs under the tree.
    pub backend: Box<dyn Backend>,
    /// The budget and the concurrency bound.
    pub budget: Budget,
    /// The profiles submissions may name.
    pub profiles: ProfileSet,
    /// What [`ServiceTree::reap_strays`] did to the run cgroups an earlier instance
    /// left.
    pub reaped: Vec<Reaped>,
    /// The TCP listener's bearer tokens.
    pub tokens: auth::Tokens,
}

/// The running service.
pub struct Service {
    ledger: Arc<Ledger>,
    backend: Arc<dyn Backend>,
    tree: Arc<dyn RunsTree>,
    profiles: ProfileSet,
    output_dir: PathBuf,
    output_limit: u64,
    keep_output: Option<Duration>,
    drain_timeout: Duration,
    owner: String,
    access: Access,
    tokens: auth::Tokens,
    facts: Facts,
    executor: executor::Executor,
    inner: Mutex<Inner>,
    /// The service's counters.
    pub metrics: Metrics,
}

/// Creates the output directory 0700 (whatever the umask) and makes an existing one
/// 0700: the captured output of every run is in it.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// The access rules of `--admin-group` and `--allow-group`, their groups looked up.
fn access(cfg: &ServeConfig) -> Result<Access, ServiceError> {
    let group = |flag: &'static str, name: &Option<String>| {
        name.as_deref()
            .map(|n| {
                auth::Group::resolve(n).ok_or_else(|| ServiceError::UnknownGroup {
                    flag,
                    name: n.to_string(),
                })
            })
            .transpose()
    };
    Ok(Access {
        admin_group: group("--admin-group", &cfg.admin_group)?,
        allow_group: group("--allow-group", &cfg.allow_group)?,
    })
}

fn owner_tag() -> String {
    let o = Owner::current();
    format!("{}.{}.{}", o.boot, o.pid, o.start)
}

impl Service {
    /// Builds the service and recovers from an earlier instance: runs the ledger says
    /// were running are recorded as `lost` (their cgroups were reaped by
    /// [`ServiceTree::reap_strays`], whose result is `parts.reaped`), and queued runs
    /// are queued again in their order. Captured output goes to `output/` beside the
    /// ledger.
    pub fn new(parts: Parts, cfg: &ServeConfig) -> Result<Arc<Service>, ServiceError> {
        let Parts {
            ledger,
            tree,
            backend,
            budget,
            profiles,
            reaped,
            tokens,
        } = parts;
        let executor = match &cfg.executor {
            crate::config::ExecutorConfig::Local => executor::Executor::Local,
            crate::config::ExecutorConfig::Slurm(s) => {
                let x = executor::SlurmExecutor::new(s.clone());
                x.prepare().map_err(ServiceError::Executor)?;
                executor::Executor::Slurm(Arc::new(x))
            }
        };
        // Under Slurm the captured output is in the spool, where the nodes write it;
        // Slurm decides when runs start, so the service admits every run at once.
        let (output_dir, budget, user_caps) = match executor.slurm() {
            Some(x) => (
                x.cfg.output_dir(),
                Budget::unbounded(),
                crate::admission::UserCaps::default(),
            ),
            None => (
                ledger
                    .path()
                    .parent()
                    .map(|p| p.join("output"))
                    .unwrap_or_else(|| PathBuf::from("output")),
                budget,
                crate::admission::UserCaps {
                    max_running: cfg.user_max_running,
                    memory: cfg.user_budget_memory,
                    cpus: cfg.user_budget_cpus,
                },
            ),
        };
        let access = access(cfg)?;
        private_dir(&output_dir).map_err(|source| ServiceError::OutputDir {
            path: output_dir.clone(),
            source,
        })?;
        let facts = Facts {
            cgroup_root: tree.root_display(),
            ledger: ledger.path().display().to_string(),
        };
        let svc = Service {
            ledger: Arc::new(ledger),
            backend: Arc::from(backend),
            tree,
            profiles,
            output_dir,
            output_limit: cfg.output_limit,
            keep_output: cfg.keep_output,
            drain_timeout: cfg.drain_timeout,
            owner: owner_tag(),
            access,
            tokens,
            facts,
            executor,
            inner: Mutex::new(Inner {
                adm: Admission::new(budget).with_user_caps(user_caps),
                active: HashMap::new(),
                draining: false,
                resumed: Vec::new(),
            }),
            metrics: Metrics::default(),
        };
        svc.recover(reaped)?;
        Ok(Arc::new(svc))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Calls the ledger on the blocking pool.
    async fn db<T, F>(&self, f: F) -> Result<T, ServiceError>
    where
        T: Send + 'static,
        F: FnOnce(&Ledger) -> Result<T, LedgerError> + Send + 'static,
    {
        let l = self.ledger.clone();
        Ok(tokio::task::spawn_blocking(move || f(&l)).await??)
    }

    /// The record of a run that never ran under a sandbox.
    fn synth(&self, job: &Job, never: Never) -> Record {
        records::synth(
            self.backend.as_ref(),
            job,
            |stream| self.output_path(&job.id, stream),
            never,
        )
    }

    /// The caller behind a Unix socket connection's peer credentials.
    pub fn caller(&self, uid: u32, gid: u32, pid: Option<i32>) -> Caller {
        self.access.caller(uid, gid, pid)
    }

    /// The caller a bearer token stands for (TCP), if it is one of `--token-file`'s.
    pub fn token_caller(&self, token: &str) -> Option<Caller> {
        let (uid, gid) = self.tokens.lookup(token)?;
        Some(self.access.caller(uid, gid, None))
    }

    /// The backend.
    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// Where the service's runs execute.
    pub fn executor(&self) -> &executor::Executor {
        &self.executor
    }

    /// Where a run's captured stream goes.
    pub fn output_path(&self, id: &str, stream: &str) -> PathBuf {
        self.output_dir.join(format!("{id}.{stream}"))
    }
}
