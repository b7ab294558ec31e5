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

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use axum::http::StatusCode;
use corral_record::{
    compose_notes, rfc3339, signal_name, Captured, LimitValues, LimitsRecord, Outcome, Output,
    Reason, Record, SCHEMA,
};
use corral_run::ident::{new_run_id, validate_id, Owner};
use corral_run::{Backend, Cancel, RunSpec, Stdio};
use corral_spec::{format_duration, Limits, LimitsPatch, ProfileSet};
use tokio::sync::watch;

use crate::admission::{Admission, Budget, Need};
use crate::cgroups::{Reaped, ServiceTree};
use crate::config::ServeConfig;
use crate::ledger::{Inserted, Ledger, NewRun, Row};
use crate::metrics::{Metrics, Snapshot};
use crate::wire::{
    BudgetStatus, Health, RunList, RunState, RunStatus, SubmitRequest, SubmitResponse,
};

/// An error answer: a status code and one clear message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The message for `{"error": ...}`.
    pub message: String,
}

impl ApiError {
    /// An error with `status`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
    fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
    fn internal(message: impl std::fmt::Display) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message.to_string())
    }
    fn not_found(id: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, format!("no run with id {id:?}"))
    }
}

/// The exit status recorded for a run that was lost (corral itself failed it).
pub const LOST_EXIT_CODE: i32 = 125;

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
}

impl Job {
    fn from_row(row: &Row) -> Result<Job, String> {
        let request: SubmitRequest = serde_json::from_str(&row.request)
            .map_err(|e| format!("run {}: bad request in the ledger: {e}", row.id))?;
        let limits: Limits = serde_json::from_str(&row.limits)
            .map_err(|e| format!("run {}: bad limits in the ledger: {e}", row.id))?;
        Ok(Job {
            id: row.id.clone(),
            request,
            profile: row.profile.clone(),
            limits,
            submitted_at: row.submitted_at.clone(),
        })
    }

    fn spec(&self, out: &std::path::Path) -> RunSpec {
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
            limits: self.limits.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CancelBy {
    Api,
    Drain(i32),
}

struct Active {
    job: Arc<Job>,
    state: RunState,
    need: Need,
    cancel: Option<watch::Sender<Option<Cancel>>>,
    cancelled_by: Option<CancelBy>,
    done: watch::Sender<bool>,
}

struct Inner {
    adm: Admission,
    active: HashMap<String, Active>,
    draining: bool,
}

/// Static facts about the service for `/health`.
#[derive(Debug, Clone)]
pub struct Facts {
    /// The service root.
    pub cgroup_root: String,
    /// The ledger path.
    pub ledger: String,
}

/// The running service.
pub struct Service {
    ledger: Arc<Ledger>,
    backend: Arc<dyn Backend>,
    tree: Arc<ServiceTree>,
    profiles: ProfileSet,
    output_dir: PathBuf,
    output_limit: u64,
    keep_output: Option<Duration>,
    drain_timeout: Duration,
    owner: String,
    facts: Facts,
    inner: Mutex<Inner>,
    /// The service's counters.
    pub metrics: Metrics,
}

/// Replaces the first sentence of a record's notes.
fn replace_first_sentence(notes: &str, first: &str) -> String {
    match notes.find(". ") {
        Some(i) => format!("{first} {}", &notes[i + 2..]),
        None => first.to_string(),
    }
}

fn owner_tag() -> String {
    let o = Owner::current();
    format!("{}.{}.{}", o.boot, o.pid, o.start)
}

impl Service {
    /// Builds the service over an open ledger and a prepared cgroup tree, and recovers
    /// from an earlier instance: runs the ledger says were running are recorded as
    /// `lost` (their cgroups were reaped by [`ServiceTree::reap_strays`], whose result
    /// is `reaped`), and queued runs are queued again in their order.
    pub fn new(
        ledger: Ledger,
        tree: ServiceTree,
        backend: Box<dyn Backend>,
        budget: Budget,
        reaped: Vec<Reaped>,
        cfg: &ServeConfig,
    ) -> Result<Arc<Service>, String> {
        let output_dir = ledger
            .path()
            .parent()
            .map(|p| p.join("output"))
            .unwrap_or_else(|| PathBuf::from("output"));
        std::fs::create_dir_all(&output_dir)
            .map_err(|e| format!("cannot create {}: {e}", output_dir.display()))?;
        let profiles = ProfileSet::load_default().map_err(|e| e.to_string())?;
        let facts = Facts {
            cgroup_root: tree.root_display(),
            ledger: ledger.path().display().to_string(),
        };
        let svc = Service {
            ledger: Arc::new(ledger),
            backend: Arc::from(backend),
            tree: Arc::new(tree),
            profiles,
            output_dir,
            output_limit: cfg.output_limit,
            keep_output: cfg.keep_output,
            drain_timeout: cfg.drain_timeout,
            owner: owner_tag(),
            facts,
            inner: Mutex::new(Inner {
                adm: Admission::new(budget),
                active: HashMap::new(),
                draining: false,
            }),
            metrics: Metrics::default(),
        };
        svc.recover(reaped)?;
        Ok(Arc::new(svc))
    }

    fn recover(&self, reaped: Vec<Reaped>) -> Result<(), String> {
        let e = |e: crate::ledger::LedgerError| e.to_string();
        let pid = std::process::id();
        let now = humantime::format_rfc3339_seconds(SystemTime::now());
        for row in self.ledger.in_state(RunState::Running).map_err(e)? {
            let job = match Job::from_row(&row) {
                Ok(j) => j,
                Err(why) => {
                    tracing::error!("{why}");
                    continue;
                }
            };
            let found = reaped.iter().find(|r| r.id.as_deref() == Some(&job.id));
            let mut note = format!(
                "Lost: the corral service stopped while this run was in flight; the restarted \
                 service (pid {pid}) recorded it at {now}"
            );
            match found {
                Some(r) if r.killed > 0 => note.push_str(&format!(
                    " and killed the {} process{} still left in its cgroup",
                    r.killed,
                    if r.killed == 1 { "" } else { "es" }
                )),
                Some(_) => note.push_str(" and removed its empty cgroup"),
                None => note.push_str(
                    "; its processes had already been ended and its cgroup removed (by the \
                     dead service's crash guard)",
                ),
            }
            if let Some(err) = found.and_then(|r| r.error.as_ref()) {
                note.push_str(&format!(" (cleanup problem: {err})"));
            }
            note.push('.');
            let mut rec = self.synth(
                &job,
                Reason::Lost,
                LOST_EXIT_CODE,
                None,
                row.started_at.clone(),
                Some(&note),
            );
            if let Some(r) = found {
                rec.cgroup = self
                    .tree
                    .runs_dirs()
                    .first()
                    .map(|d| d.join(&r.name).display().to_string());
            }
            self.ledger
                .finish(&job.id, RunState::Lost, &rec)
                .map_err(e)?;
            tracing::warn!(
                "run {} was in flight when the last service died: lost",
                job.id
            );
        }
        for r in &reaped {
            let known =
                r.id.as_deref()
                    .map(|id| self.ledger.get(id).ok().flatten().is_some())
                    .unwrap_or(false);
            if !known {
                tracing::warn!(
                    "removed cgroup {} under runs/ that no ledger row accounts for",
                    r.name
                );
            }
        }
        let mut g = self.lock();
        for row in self.ledger.in_state(RunState::Queued).map_err(e)? {
            let job = match Job::from_row(&row) {
                Ok(j) => j,
                Err(why) => {
                    tracing::error!("{why}");
                    continue;
                }
            };
            // Admission is checked again: the budget may have shrunk since.
            let need = match g.adm.budget().need(&job.limits) {
                Ok(n) => n,
                Err(why) => {
                    drop(g);
                    let rec = self.synth(
                        &job,
                        Reason::SpawnFailed,
                        125,
                        Some(format!("it no longer fits the service budget: {why}")),
                        None,
                        None,
                    );
                    self.ledger
                        .finish(&job.id, RunState::Done, &rec)
                        .map_err(e)?;
                    g = self.lock();
                    continue;
                }
            };
            g.adm.push(&job.id, row.priority, need);
            g.active.insert(
                job.id.clone(),
                Active {
                    job: Arc::new(job),
                    state: RunState::Queued,
                    need,
                    cancel: None,
                    cancelled_by: None,
                    done: watch::channel(false).0,
                },
            );
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn db<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&Ledger) -> Result<T, crate::ledger::LedgerError> + Send + 'static,
    {
        let l = self.ledger.clone();
        match tokio::task::spawn_blocking(move || f(&l)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(ApiError::internal(e)),
            Err(e) => Err(ApiError::internal(format!("ledger task failed: {e}"))),
        }
    }

    /// The backend.
    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// The cgroup tree.
    pub fn tree(&self) -> &ServiceTree {
        &self.tree
    }

    /// Where a run's captured stream goes.
    pub fn output_path(&self, id: &str, stream: &str) -> PathBuf {
        self.output_dir.join(format!("{id}.{stream}"))
    }

    /// How long captured output outlives its run (`--keep-output`; `None`: for ever).
    pub fn keep_output(&self) -> Option<Duration> {
        self.keep_output
    }

    /// Removes captured output last written more than `--keep-output` ago, unless its
    /// run is still queued or running (a quiet run keeps its files however long it
    /// runs). Files no ledger row accounts for go too. The records stay in the ledger.
    /// Returns how many files were removed.
    pub fn prune_outputs(&self) -> usize {
        let Some(keep) = self.keep_output else {
            return 0;
        };
        let entries = match std::fs::read_dir(&self.output_dir) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("cannot list {}: {e}", self.output_dir.display());
                return 0;
            }
        };
        let now = SystemTime::now();
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| {
                n.strip_suffix(".stdout")
                    .or_else(|| n.strip_suffix(".stderr"))
            }) else {
                continue;
            };
            let age = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok());
            if age.is_none_or(|a| a <= keep) {
                continue;
            }
            match self.ledger.get(id) {
                Ok(Some(row)) if !row.state.is_final() => continue,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!("pruning output: cannot look up run {id}: {e}");
                    continue;
                }
            }
            match std::fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!("cannot remove {}: {e}", entry.path().display()),
            }
        }
        if removed > 0 {
            self.metrics
                .outputs_pruned
                .fetch_add(removed as u64, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(
                "removed {removed} output file(s) older than {} (--keep-output)",
                format_duration(keep)
            );
        }
        removed
    }

    /// Why a finished run's captured `stream` cannot be shown any more: it was captured
    /// (the record says so) and its file is gone, removed after `--keep-output`.
    pub fn output_gone(&self, status: &RunStatus, stream: &str) -> Option<String> {
        let out = status.record.as_ref()?.output.as_ref()?;
        let captured = match stream {
            "stdout" => out.stdout.as_ref(),
            _ => out.stderr.as_ref(),
        }?;
        if !status.state.is_final() || self.output_path(&status.id, stream).exists() {
            return None;
        }
        let kept = match self.keep_output {
            Some(k) => format!(
                "this service keeps captured output for {} after it was last written",
                format_duration(k)
            ),
            None => "it was removed from the output directory".to_string(),
        };
        Some(format!(
            "the {stream} of run {} ({} bytes) is no longer kept: {kept} (corral serve \
             --keep-output); the run's record is still available",
            status.id, captured.bytes
        ))
    }

    fn resolve(&self, req: &SubmitRequest) -> Result<(String, Limits), ApiError> {
        if req.command.is_empty() || req.command[0].is_empty() {
            return Err(ApiError::bad(
                "\"command\" must hold the command and its arguments, e.g. [\"python3\", \"x.py\"]",
            ));
        }
        if req.command.iter().any(|a| a.contains('\0')) {
            return Err(ApiError::bad("\"command\" must not contain NUL bytes"));
        }
        if let Some(cwd) = &req.cwd {
            if !cwd.starts_with('/') || cwd.contains('\0') {
                return Err(ApiError::bad(format!(
                    "\"cwd\" must be an absolute path, got {cwd:?}"
                )));
            }
        }
        for (k, v) in &req.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return Err(ApiError::bad(format!(
                    "invalid environment variable {k:?}: names must be non-empty without '=' \
                     and neither may contain NUL"
                )));
            }
        }
        if let Some(id) = &req.id {
            validate_id(id).map_err(ApiError::bad)?;
        }
        if let Some(k) = &req.idempotency_key {
            if k.is_empty() || k.len() > 256 {
                return Err(ApiError::bad(
                    "\"idempotency_key\" must be 1-256 characters",
                ));
            }
        }
        let name = req.profile.clone().unwrap_or_else(|| "default".into());
        let mut limits = self
            .profiles
            .get(&name)
            .map_err(|e| ApiError::bad(e.to_string()))?
            .limits;
        if let Some(table) = &req.limits {
            LimitsPatch::from_table(table, "limits")
                .map_err(|e| ApiError::bad(e.to_string()))?
                .apply(&mut limits);
        }
        if limits.output_limit.is_none() {
            limits.output_limit = Some(self.output_limit);
        }
        Ok((name, limits))
    }

    /// `POST /runs`: validates, stores and queues a submission; starts it at once when
    /// it fits. Returns 201 (or 200 for a repeated idempotency key).
    pub async fn submit(
        self: &Arc<Self>,
        body: &[u8],
    ) -> Result<(StatusCode, SubmitResponse), ApiError> {
        let r = self.submit_inner(body).await;
        let m = &self.metrics;
        let c = match &r {
            Ok((StatusCode::CREATED, _)) => &m.accepted,
            Ok(_) => &m.idempotent,
            Err(_) => &m.refused,
        };
        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        r
    }

    async fn submit_inner(
        self: &Arc<Self>,
        body: &[u8],
    ) -> Result<(StatusCode, SubmitResponse), ApiError> {
        if self.lock().draining {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the corral service is shutting down and accepts no new runs",
            ));
        }
        let req: SubmitRequest = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad(format!("invalid JSON body: {e}")))?;
        let (profile, limits) = self.resolve(&req)?;
        corral_run::run::check_isolation(self.backend.as_ref(), &limits)
            .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
        let need = self
            .lock()
            .adm
            .budget()
            .need(&limits)
            .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e))?;
        let request_json = serde_json::to_string(&req).map_err(ApiError::internal)?;
        let limits_json = serde_json::to_string(&limits).map_err(ApiError::internal)?;
        let mut tries = 0;
        let job = loop {
            let id = req.id.clone().unwrap_or_else(new_run_id);
            let job = Job {
                id: id.clone(),
                request: req.clone(),
                profile: profile.clone(),
                limits: limits.clone(),
                submitted_at: rfc3339(SystemTime::now()),
            };
            let new = NewRun {
                id,
                idempotency_key: req.idempotency_key.clone(),
                priority: req.priority,
                request: request_json.clone(),
                profile: profile.clone(),
                limits: limits_json.clone(),
                submitted_at: job.submitted_at.clone(),
            };
            match self.db(move |l| l.insert(&new)).await? {
                Inserted::New => break job,
                Inserted::Existing(row) => {
                    return Ok((
                        StatusCode::OK,
                        SubmitResponse {
                            id: row.id.clone(),
                            state: row.state,
                        },
                    ))
                }
                Inserted::IdTaken if req.id.is_some() => {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        format!("a run with id {:?} already exists", job.id),
                    ))
                }
                Inserted::IdTaken if tries < 5 => tries += 1,
                Inserted::IdTaken => {
                    return Err(ApiError::internal("could not generate a unique run id"))
                }
            }
        };
        let id = job.id.clone();
        {
            let mut g = self.lock();
            g.adm.push(&id, req.priority, need);
            g.active.insert(
                id.clone(),
                Active {
                    job: Arc::new(job),
                    state: RunState::Queued,
                    need,
                    cancel: None,
                    cancelled_by: None,
                    done: watch::channel(false).0,
                },
            );
        }
        tracing::info!("run {id} accepted (priority {})", req.priority);
        self.pump();
        let state = self
            .lock()
            .active
            .get(&id)
            .map_or(RunState::Running, |a| a.state);
        Ok((StatusCode::CREATED, SubmitResponse { id, state }))
    }

    /// Starts every queued run that fits, in queue order.
    pub fn pump(self: &Arc<Self>) {
        let mut launch = Vec::new();
        {
            let mut g = self.lock();
            if g.draining {
                return;
            }
            while let Some((id, need)) = g.adm.admit_next() {
                let (tx, rx) = watch::channel(None);
                match g.active.get_mut(&id) {
                    Some(a) => {
                        a.state = RunState::Running;
                        a.cancel = Some(tx);
                        launch.push((id, a.job.clone(), rx));
                    }
                    None => g.adm.release(&need),
                }
            }
        }
        let admitted = SystemTime::now();
        for (id, job, rx) in launch {
            tokio::spawn(self.clone().run_one(id, job, rx, admitted));
        }
    }

    async fn run_one(
        self: Arc<Self>,
        id: String,
        job: Arc<Job>,
        cancel: watch::Receiver<Option<Cancel>>,
        admitted: SystemTime,
    ) {
        let started_at = rfc3339(SystemTime::now());
        let (l, i, s, o) = (
            self.ledger.clone(),
            id.clone(),
            started_at.clone(),
            self.owner.clone(),
        );
        let marked = tokio::task::spawn_blocking(move || l.mark_running(&i, &s, &o)).await;
        let record = match marked {
            Ok(Ok(())) if cancel.borrow().is_some() => self.synth(
                &job,
                Reason::Cancelled,
                128 + libc::SIGTERM,
                None,
                Some(started_at),
                None,
            ),
            Ok(Ok(())) => {
                tracing::info!("run {id} admitted");
                let spec = job.spec(&self.output_dir);
                match corral_run::run(self.backend.as_ref(), spec, cancel).await {
                    Ok(rec) => {
                        if rec.outcome.reason != Reason::SpawnFailed {
                            if let Ok(t) = humantime::parse_rfc3339(&rec.started_at) {
                                let d = t.duration_since(admitted).unwrap_or_default();
                                self.metrics.launch_latency.observe(d);
                            }
                        }
                        rec
                    }
                    Err(e) => self.synth(
                        &job,
                        Reason::SpawnFailed,
                        125,
                        Some(format!("corral could not run it: {e}")),
                        Some(started_at),
                        None,
                    ),
                }
            }
            Ok(Err(e)) => self.synth(
                &job,
                Reason::SpawnFailed,
                125,
                Some(format!("the ledger could not record its start: {e}")),
                Some(started_at),
                None,
            ),
            Err(e) => self.synth(
                &job,
                Reason::SpawnFailed,
                125,
                Some(format!("the ledger task failed: {e}")),
                Some(started_at),
                None,
            ),
        };
        let by = self.lock().active.get(&id).and_then(|a| a.cancelled_by);
        let record = self.explain_cancel(record, by);
        tracing::info!(
            "run {id} ended: {} (exit status {})",
            record.outcome.reason,
            record.outcome.exit_code
        );
        self.store_final(&id, RunState::Done, record).await;
        {
            let mut g = self.lock();
            if let Some(a) = g.active.remove(&id) {
                g.adm.release(&a.need);
                let _ = a.done.send(true);
            }
        }
        self.pump();
    }

    fn explain_cancel(&self, mut rec: Record, by: Option<CancelBy>) -> Record {
        if rec.outcome.reason != Reason::Cancelled {
            return rec;
        }
        let wall = format_duration(Duration::from_secs_f64(rec.usage.wall_s.max(0.0)));
        let first = match by {
            Some(CancelBy::Api) => format!(
                "Cancelled after {wall}: a client cancelled it through the corral service \
                 (POST /runs/{}/cancel).",
                rec.id
            ),
            Some(CancelBy::Drain(sig)) => format!(
                "Cancelled after {wall}: the corral service received {} and the run did not \
                 finish within its {} drain timeout.",
                signal_name(sig),
                format_duration(self.drain_timeout)
            ),
            None => return rec,
        };
        rec.notes = replace_first_sentence(&rec.notes, &first);
        rec
    }

    async fn store_final(&self, id: &str, state: RunState, rec: Record) {
        let mut delay = Duration::from_millis(50);
        for attempt in 1..=5 {
            let (l, i, r) = (self.ledger.clone(), id.to_string(), rec.clone());
            match tokio::task::spawn_blocking(move || l.finish(&i, state, &r)).await {
                Ok(Ok(())) => return,
                Ok(Err(e)) => tracing::error!("storing the record of {id} (try {attempt}): {e}"),
                Err(e) => tracing::error!("storing the record of {id} (try {attempt}): {e}"),
            }
            tokio::time::sleep(delay).await;
            delay *= 4;
        }
    }

    /// A record for a run that never ran under a sandbox (cancelled while queued, lost,
    /// or failed before it could start).
    fn synth(
        &self,
        job: &Job,
        reason: Reason,
        exit_code: i32,
        error: Option<String>,
        started_at: Option<String>,
        first_note: Option<&str>,
    ) -> Record {
        let plan = self.backend.plan(&job.limits);
        let now = rfc3339(SystemTime::now());
        let captured = |stream: &str| {
            let p = self.output_path(&job.id, stream);
            std::fs::metadata(&p).ok().map(|m| Captured {
                path: p.display().to_string(),
                bytes: m.len(),
                dropped_bytes: 0,
            })
        };
        let output = match (captured("stdout"), captured("stderr")) {
            (None, None) => None,
            (stdout, stderr) => Some(Output { stdout, stderr }),
        };
        let mut rec = Record {
            schema: SCHEMA.to_string(),
            id: job.id.clone(),
            command: job.request.command.clone(),
            cwd: job.request.cwd.clone(),
            profile: job.profile.clone(),
            backend: self.backend.kind().as_str().to_string(),
            backend_reason: self.backend.reason(),
            cgroup: None,
            limits: LimitsRecord {
                requested: LimitValues::from_limits(&job.limits),
                enforced: plan.enforced,
                not_enforced: plan.gaps,
                grace_s: job.limits.grace.as_secs_f64(),
            },
            outcome: Outcome {
                reason,
                exit_code,
                signal: None,
                process_exit_code: None,
                error,
            },
            events: Default::default(),
            usage: Default::default(),
            output,
            started_at: started_at.unwrap_or_else(|| now.clone()),
            finished_at: now,
            notes: String::new(),
            corral_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        rec.notes = compose_notes(&rec);
        if let Some(first) = first_note {
            rec.notes = replace_first_sentence(&rec.notes, first);
        } else if reason == Reason::Cancelled {
            rec.notes = replace_first_sentence(
                &rec.notes,
                "Cancelled before it started: a client cancelled it through the corral \
                 service while it was waiting for budget.",
            );
        }
        rec
    }

    /// `GET /runs/{id}`.
    pub async fn status(&self, id: &str) -> Result<RunStatus, ApiError> {
        let i = id.to_string();
        match self.db(move |l| l.get(&i)).await? {
            Some(row) => Ok(status_of(&row)),
            None => Err(ApiError::not_found(id)),
        }
    }

    /// `GET /runs`.
    pub async fn list(&self, state: Option<RunState>, limit: usize) -> Result<RunList, ApiError> {
        let rows = self.db(move |l| l.list(state, limit)).await?;
        Ok(RunList {
            runs: rows.iter().map(status_of).collect(),
        })
    }

    /// The "done" signal of an active run (`None` when the run is not active here).
    pub fn done_signal(&self, id: &str) -> Option<watch::Receiver<bool>> {
        self.lock().active.get(id).map(|a| a.done.subscribe())
    }

    /// `GET /runs/{id}/wait`: the status once final (true), or after `timeout` (false).
    pub async fn wait(&self, id: &str, timeout: Duration) -> Result<(bool, RunStatus), ApiError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let rx = self.done_signal(id);
            let st = self.status(id).await?;
            if st.state.is_final() {
                return Ok((true, st));
            }
            match rx {
                Some(mut rx) => {
                    let done = tokio::time::timeout_at(deadline, rx.wait_for(|d| *d))
                        .await
                        .is_ok_and(|r| r.is_ok());
                    if !done {
                        let st = self.status(id).await?;
                        return Ok((st.state.is_final(), st));
                    }
                }
                // Not active but not final: it is between two ledger steps.
                None => {
                    if tokio::time::Instant::now() >= deadline {
                        return Ok((false, st));
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    /// `POST /runs/{id}/cancel`: a queued run is cancelled at once (200, done); a running
    /// run is told to stop (202, running; its record will say `cancelled`); a finished
    /// run is left as it is (200).
    pub async fn cancel(self: &Arc<Self>, id: &str) -> Result<(StatusCode, RunStatus), ApiError> {
        enum Act {
            Queued(Arc<Job>),
            Signalled,
            NotActive,
        }
        let act = {
            let mut g = self.lock();
            let inner = &mut *g;
            match inner.active.get_mut(id) {
                Some(a) if a.state == RunState::Queued && inner.adm.remove(id) => {
                    a.cancelled_by = Some(CancelBy::Api);
                    Act::Queued(a.job.clone())
                }
                Some(a) => {
                    a.cancelled_by.get_or_insert(CancelBy::Api);
                    if let Some(tx) = &a.cancel {
                        tx.send_replace(Some(Cancel { signal: None }));
                    }
                    Act::Signalled
                }
                None => Act::NotActive,
            }
        };
        match act {
            Act::Queued(job) => {
                let rec = self.synth(
                    &job,
                    Reason::Cancelled,
                    128 + libc::SIGTERM,
                    None,
                    None,
                    None,
                );
                self.store_final(id, RunState::Done, rec).await;
                {
                    let mut g = self.lock();
                    if let Some(a) = g.active.remove(id) {
                        let _ = a.done.send(true);
                    }
                }
                self.pump();
                Ok((StatusCode::OK, self.status(id).await?))
            }
            Act::Signalled => Ok((StatusCode::ACCEPTED, self.status(id).await?)),
            Act::NotActive => Ok((StatusCode::OK, self.status(id).await?)),
        }
    }

    fn running_count(&self) -> usize {
        self.lock()
            .active
            .values()
            .filter(|a| a.state == RunState::Running)
            .count()
    }

    /// True after SIGTERM.
    pub fn draining(&self) -> bool {
        self.lock().draining
    }

    /// The graceful shutdown: stops admitting (submissions get 503), lets running runs
    /// go on for the drain timeout (or until `hurry` completes, e.g. a second signal),
    /// then cancels what still runs and waits for their records. Queued runs stay
    /// queued in the ledger.
    pub async fn drain(
        self: &Arc<Self>,
        signal: i32,
        hurry: impl std::future::Future<Output = ()>,
    ) {
        self.lock().draining = true;
        let deadline = tokio::time::Instant::now() + self.drain_timeout;
        tokio::pin!(hurry);
        while self.running_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(25)) => {}
                _ = &mut hurry => break,
            }
        }
        let mut longest_grace = Duration::ZERO;
        {
            let mut g = self.lock();
            for a in g.active.values_mut() {
                if a.state != RunState::Running {
                    continue;
                }
                a.cancelled_by.get_or_insert(CancelBy::Drain(signal));
                longest_grace = longest_grace.max(a.job.limits.grace);
                if let Some(tx) = &a.cancel {
                    tx.send_replace(Some(Cancel {
                        signal: Some(signal),
                    }));
                }
            }
        }
        let bound = Instant::now() + longest_grace + Duration::from_secs(30);
        while self.running_count() > 0 && Instant::now() < bound {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn budget_status(&self) -> BudgetStatus {
        let (b, reserved) = {
            let g = self.lock();
            (*g.adm.budget(), g.adm.reserved())
        };
        let u = self.tree.usage();
        BudgetStatus {
            memory_bytes: b.memory,
            memory_reserved_bytes: reserved.memory,
            memory_used_bytes: u.memory,
            cpus: b.cpus,
            cpus_reserved: reserved.cpus(),
            pids: b.pids,
            swap_bytes: b.swap,
            pids_current: u.pids,
            max_running: b.max_running,
        }
    }

    /// `GET /health`.
    pub fn health(&self) -> Health {
        let (queued, running, draining) = {
            let g = self.lock();
            (g.adm.queued(), g.adm.running(), g.draining)
        };
        Health {
            status: if draining { "draining" } else { "ok" }.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            backend: self.backend.kind().as_str().to_string(),
            backend_reason: self.backend.reason(),
            cgroup_root: self.facts.cgroup_root.clone(),
            queued,
            running,
            budget: self.budget_status(),
            ledger: self.facts.ledger.clone(),
            pid: std::process::id(),
        }
    }

    /// What `GET /metrics` shows.
    pub async fn snapshot(&self) -> Result<Snapshot, ApiError> {
        let (by_state, by_reason) = self
            .db(|l| Ok((l.count_by_state()?, l.count_by_reason()?)))
            .await?;
        let (queued, running, draining) = {
            let g = self.lock();
            (g.adm.queued(), g.adm.running(), g.draining)
        };
        Ok(Snapshot {
            backend: self.backend.kind().as_str().to_string(),
            by_state,
            by_reason,
            queued,
            running,
            budget: self.budget_status(),
            draining,
        })
    }
}

/// A ledger row as the API shows it.
pub fn status_of(row: &Row) -> RunStatus {
    let record = row
        .record
        .as_deref()
        .and_then(|r| match serde_json::from_str::<Record>(r) {
            Ok(rec) => Some(rec),
            Err(e) => {
                tracing::error!("run {}: unreadable record in the ledger: {e}", row.id);
                None
            }
        });
    RunStatus {
        id: row.id.clone(),
        state: row.state,
        submitted_at: row.submitted_at.clone(),
        started_at: row.started_at.clone(),
        priority: row.priority,
        record,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_sentence() {
        assert_eq!(
            replace_first_sentence("Cancelled after 1.5 s: x and ended the run. More.", "New."),
            "New. More."
        );
        assert_eq!(replace_first_sentence("Only one.", "New."), "New.");
    }
}
