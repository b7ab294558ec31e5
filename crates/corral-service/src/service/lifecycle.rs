//! The run lifecycle: submit (validate, admit, store, queue), pump (start what fits),
//! run (one run from `running` to its record), cancel, and the drain after a signal.
//!
//! The ledger is written first at each step: the submission before its 201, `running`
//! before the run's cgroup exists, the record before anyone is told the run is done.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use corral_record::{rfc3339, Reason, Record};
use corral_run::ident::new_run_id;
use corral_run::{Cancel, Observer, Progress};
use tokio::sync::watch;

use crate::ledger::{Inserted, NewRun};
use crate::service::auth::{self, Caller, Forbidden};
use crate::service::records::{explain_cancel, CancelBy, Never};
use crate::service::validate;
use crate::service::{Job, Service, ServiceError};
use crate::wire::{LiveUsage, RunState, RunStatus, SubmitResponse};
use corral_run::identity::{Directory, SystemDirectory};

/// What `POST /runs` did with a valid submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// A new run was stored and queued (or started at once).
    New,
    /// The idempotency key was used before: the answer is that run.
    Repeated,
}

/// What `POST /runs/{id}/cancel` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// The run was queued: it is cancelled and done now.
    Dequeued,
    /// The run is running: it was told to stop, and its record will say `cancelled`.
    Signalled,
    /// The run is not active here (finished, or between two ledger steps): nothing
    /// was done.
    NotActive,
}

impl Service {
    /// `POST /runs`: validates, stores and queues a submission; starts it at once when
    /// it fits.
    pub async fn submit(
        self: &Arc<Self>,
        caller: &Caller,
        body: &[u8],
    ) -> Result<(Submitted, SubmitResponse), ServiceError> {
        let r = self.submit_inner(caller, body).await;
        let m = &self.metrics;
        let c = match &r {
            Ok((Submitted::New, _)) => &m.accepted,
            Ok((Submitted::Repeated, _)) => &m.idempotent,
            Err(_) => &m.refused,
        };
        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        r
    }

    async fn submit_inner(
        self: &Arc<Self>,
        caller: &Caller,
        body: &[u8],
    ) -> Result<(Submitted, SubmitResponse), ServiceError> {
        if self.lock().draining {
            return Err(ServiceError::Draining);
        }
        if !caller.may_submit {
            return Err(Forbidden::NotAllowed {
                uid: caller.uid,
                group: self
                    .access
                    .allow_group
                    .as_ref()
                    .map(|g| g.name.clone())
                    .unwrap_or_default(),
            }
            .into());
        }
        let validate::Resolved {
            request: req,
            profile,
            mut limits,
        } = validate::parse(body, &self.profiles, self.output_limit)?;
        // A missing working directory is the caller's mistake, said now, not a
        // spawn_failed record later.
        if let Some(cwd) = &req.cwd {
            if !std::path::Path::new(cwd).is_dir() {
                return Err(ServiceError::NoCwd(cwd.clone()));
            }
        }
        // Who the run executes as: its submitter, unless an admin names someone.
        let asked = req
            .limits
            .as_ref()
            .is_some_and(|m| m.contains_key("user"))
            .then(|| limits.user.clone());
        limits.user = auth::run_user(caller, asked.as_ref(), &limits.user, &SystemDirectory)?;
        corral_run::run::check_isolation(self.backend.as_ref(), &limits)
            .map_err(ServiceError::Refused)?;
        let need = {
            let g = self.lock();
            let need = g.adm.budget().need(&limits)?;
            g.adm.check_user_need(&need)?;
            need
        };
        let request_json = serde_json::to_string(&req).map_err(ServiceError::Encode)?;
        let limits_json = serde_json::to_string(&limits).map_err(ServiceError::Encode)?;
        let mut tries = 0;
        let job = loop {
            let id = req.id.clone().unwrap_or_else(new_run_id);
            let job = Job {
                id: id.clone(),
                request: req.clone(),
                profile: profile.clone(),
                limits: limits.clone(),
                submitted_at: rfc3339(SystemTime::now()),
                submitted_by: caller.uid,
            };
            let new = NewRun {
                id,
                idempotency_key: req.idempotency_key.clone(),
                priority: req.priority,
                request: request_json.clone(),
                profile: profile.clone(),
                limits: limits_json.clone(),
                submitted_at: job.submitted_at.clone(),
                submitted_by: caller.uid,
            };
            match self.db(move |l| l.insert(&new)).await? {
                Inserted::New => break job,
                // Keys are per user: another's run (even for an admin) is neither shown
                // nor reused.
                Inserted::Existing(row) if row.submitted_by.unwrap_or(0) != caller.uid => {
                    return Err(ServiceError::KeyTaken)
                }
                // The same key with another body is a client bug, not a repeat.
                Inserted::Existing(row)
                    if serde_json::from_str::<crate::wire::SubmitRequest>(&row.request)
                        .ok()
                        .as_ref()
                        != Some(&req) =>
                {
                    return Err(ServiceError::KeyReused)
                }
                Inserted::Existing(row) => {
                    return Ok((
                        Submitted::Repeated,
                        SubmitResponse {
                            id: row.id.clone(),
                            state: row.state,
                        },
                    ))
                }
                Inserted::IdTaken if req.id.is_some() => {
                    return Err(ServiceError::Conflict(job.id));
                }
                Inserted::IdTaken if tries < 5 => tries += 1,
                Inserted::IdTaken => return Err(ServiceError::NoUniqueId),
            }
        };
        let id = job.id.clone();
        self.lock().enqueue(job, req.priority, need);
        tracing::info!("run {id} accepted (priority {})", req.priority);
        self.pump();
        let state = self
            .lock()
            .active
            .get(&id)
            .map_or(RunState::Running, |a| a.state);
        Ok((Submitted::New, SubmitResponse { id, state }))
    }

    /// Starts every queued run that fits, in queue order (and, the first time, watches
    /// again the Slurm jobs an earlier instance left).
    pub fn pump(self: &Arc<Self>) {
        let mut launch = Vec::new();
        {
            let mut g = self.lock();
            if g.draining {
                return;
            }
            for r in std::mem::take(&mut g.resumed) {
                tokio::spawn(self.clone().resume_one(r));
            }
            while let Some((id, need)) = g.adm.admit_next() {
                let (tx, rx) = watch::channel(None);
                match g.active.get_mut(&id) {
                    Some(a) => {
                        a.state = RunState::Running;
                        a.cancel = Some(tx);
                        launch.push((id, a.job.clone(), rx));
                    }
                    None => g.adm.release(&id, &need),
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
        let failed = |why: String| Never::Failed {
            why,
            started_at: Some(started_at.clone()),
        };
        let record = match marked {
            Ok(Ok(())) if cancel.borrow().is_some() => self.synth(
                &job,
                Never::Cancelled {
                    started_at: Some(started_at.clone()),
                },
            ),
            Ok(Ok(())) => {
                tracing::info!("run {id} admitted");
                self.create_outputs(&job);
                let spec = job.spec(&self.output_dir);
                match self.execute(&job, spec, cancel, &started_at).await {
                    Ok(rec) => {
                        if rec.outcome.reason != Reason::SpawnFailed {
                            if let Ok(t) = humantime::parse_rfc3339(&rec.started_at) {
                                let d = t.duration_since(admitted).unwrap_or_default();
                                self.metrics.launch_latency.observe(d);
                            }
                        }
                        rec
                    }
                    Err(e) => self.synth(&job, failed(e)),
                }
            }
            Ok(Err(e)) => self.synth(
                &job,
                failed(format!("the ledger could not record its start: {e}")),
            ),
            Err(e) => self.synth(&job, failed(format!("the ledger task failed: {e}"))),
        };
        self.end_run(&id, record).await;
    }

    /// A run an earlier instance handed to Slurm: watched again until Slurm is done
    /// with it, then recorded like any run.
    async fn resume_one(self: Arc<Self>, r: super::Resumed) {
        let Some(x) = self.executor.slurm().cloned() else {
            return;
        };
        let record = match &r.job_id {
            Some(job_id) => {
                tracing::info!("run {} (Slurm job {job_id}) is watched again", r.job.id);
                self.follow_job(&x, &r.job, job_id, r.cancel, &r.started_at)
                    .await
            }
            None => {
                self.create_outputs(&r.job);
                let spec = r.job.spec(&self.output_dir);
                self.execute(&r.job, spec, r.cancel, &r.started_at)
                    .await
                    .unwrap_or_else(|why| {
                        self.synth(
                            &r.job,
                            Never::Failed {
                                why,
                                started_at: Some(r.started_at.clone()),
                            },
                        )
                    })
            }
        };
        self.end_run(&r.job.id, record).await;
    }

    /// Explains who cancelled the run, stores its record, and tells whoever waits.
    async fn end_run(self: &Arc<Self>, id: &str, record: Record) {
        let id = id.to_string();
        let by = self.lock().active.get(&id).and_then(|a| a.cancelled_by);
        let record = explain_cancel(record, by, self.drain_timeout);
        tracing::info!(
            "run {id} ended: {} (exit status {})",
            record.outcome.reason,
            record.outcome.exit_code
        );
        self.store_final(&id, RunState::Done, record).await;
        {
            let mut g = self.lock();
            if let Some(a) = g.active.remove(&id) {
                g.adm.release(&id, &a.need);
                let _ = a.done.send(true);
            }
        }
        self.pump();
    }

    /// Keeps a running run's usage for `GET /runs/{id}` (`live`), about once a second.
    pub(super) fn live_observer(
        self: Arc<Self>,
        id: &str,
        limits: &corral_spec::Limits,
    ) -> Observer {
        let id = id.to_string();
        let (timeout_s, memory_limit_bytes) =
            (limits.timeout.map(|t| t.as_secs_f64()), limits.memory);
        Observer {
            every: Duration::from_secs(1),
            on_tick: Box::new(move |p: &Progress| {
                let live = LiveUsage {
                    elapsed_s: p.elapsed.as_secs_f64(),
                    cpu_s: p.cpu.map(|c| c.as_secs_f64()),
                    memory_bytes: p.memory_bytes,
                    memory_peak_bytes: p.memory_peak_bytes,
                    processes: p.processes as u64,
                    timeout_s,
                    memory_limit_bytes,
                };
                if let Some(a) = self.lock().active.get_mut(&id) {
                    a.live = Some(live);
                    let point = corral_record::timeline::TimelinePoint {
                        t: live.elapsed_s,
                        memory_bytes: live.memory_bytes,
                        cpu_s: live.cpu_s,
                        processes: live.processes,
                        ..Default::default()
                    };
                    a.history
                        .push_point(point, corral_record::timeline::MAX_POINTS);
                }
            }),
        }
    }

    /// Stores a final record, retrying a failing ledger a few times.
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

    /// `POST /runs/{id}/cancel`: a queued run is cancelled at once; a running run is
    /// told to stop; a finished run is left as it is. Returns what was done and the
    /// run's status after.
    pub async fn cancel(
        self: &Arc<Self>,
        caller: &Caller,
        id: &str,
    ) -> Result<(Cancelled, RunStatus), ServiceError> {
        // Another user's run is answered like a run that does not exist.
        let before = self.status(caller, id).await?;
        if !before.state.is_final() {
            let (i, by, at) = (id.to_string(), caller.uid, rfc3339(SystemTime::now()));
            self.db(move |l| l.mark_cancelled(&i, by, &at)).await?;
        }
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
                let rec = self.synth(&job, Never::Cancelled { started_at: None });
                self.store_final(id, RunState::Done, rec).await;
                {
                    let mut g = self.lock();
                    if let Some(a) = g.active.remove(id) {
                        let _ = a.done.send(true);
                    }
                }
                self.pump();
                Ok((Cancelled::Dequeued, self.status(caller, id).await?))
            }
            Act::Signalled => Ok((Cancelled::Signalled, self.status(caller, id).await?)),
            Act::NotActive => Ok((Cancelled::NotActive, self.status(caller, id).await?)),
        }
    }

    /// Creates a run's output files before it starts: mode 0600 whatever the umask,
    /// owned by the user the run executes as when that is known now (a named user or
    /// the submitter; a dynamic uid is chosen later, so its files stay root's). The run
    /// itself then truncates and writes them.
    fn create_outputs(&self, job: &Job) {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let owner = match &job.limits.user {
            corral_spec::User::Named { user, group } => SystemDirectory
                .account(user, group.as_deref())
                .ok()
                .map(|a| (a.uid, a.gid)),
            _ => None,
        };
        for stream in ["stdout", "stderr"] {
            let p = self.output_path(&job.id, stream);
            let made = std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(&p)
                .and_then(|f| {
                    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
                    if let Some((uid, gid)) = owner {
                        std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
                    }
                    Ok(())
                });
            if let Err(e) = made {
                tracing::warn!("run {}: cannot prepare {}: {e}", job.id, p.display());
            }
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

    /// The graceful shutdown: stops admitting (submissions are refused as
    /// [`ServiceError::Draining`]), lets running runs go on for the drain timeout (or
    /// until `hurry` completes, e.g. a second signal), then cancels what still runs
    /// and waits for their records. Queued runs stay queued in the ledger. Under the
    /// Slurm executor nothing is cancelled: the jobs go on and the next instance
    /// collects them.
    pub async fn drain(
        self: &Arc<Self>,
        signal: i32,
        hurry: impl std::future::Future<Output = ()>,
    ) {
        self.lock().draining = true;
        if self.executor.slurm().is_some() {
            // The jobs go on in Slurm: the next instance watches them again and
            // collects their records.
            return;
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::testing::{block_on, test_service};

    const BODY: &[u8] =
        br#"{"command": ["true"], "limits": {"memory": "1M", "cpus": 0.1, "swap": "0"}}"#;

    /// With no room to run (max_running 0), a submission is stored and queued; a
    /// cancel takes it out of the queue and records it as cancelled.
    #[test]
    fn submit_queue_and_cancel_without_cgroups() {
        let t = test_service(|_| {});
        let svc = t.svc.clone();
        let root = Caller::root();
        block_on(async move {
            let (how, resp) = svc.submit(&root, BODY).await.unwrap();
            assert_eq!(how, Submitted::New);
            assert_eq!(resp.state, RunState::Queued);
            let (how, st) = svc.cancel(&root, &resp.id).await.unwrap();
            assert_eq!(how, Cancelled::Dequeued);
            assert_eq!(st.state, RunState::Done);
            let rec = st.record.unwrap();
            assert_eq!(rec.outcome.reason, Reason::Cancelled);
            assert!(rec.notes.starts_with("Cancelled before it started"));
            let (how, st) = svc.cancel(&root, &resp.id).await.unwrap();
            assert_eq!(how, Cancelled::NotActive);
            assert_eq!(st.state, RunState::Done);
            assert!(matches!(
                svc.cancel(&root, "nope").await,
                Err(ServiceError::NotFound(id)) if id == "nope"
            ));
        });
    }

    #[test]
    fn refusals_are_typed() {
        let t = test_service(|_| {});
        let svc = t.svc.clone();
        let root = Caller::root();
        block_on(async move {
            let body = br#"{"command": ["true"], "id": "mine", "idempotency_key": "k",
                            "limits": {"memory": "1M", "cpus": 0.1, "swap": "0"}}"#;
            assert_eq!(svc.submit(&root, body).await.unwrap().0, Submitted::New);
            let (how, resp) = svc.submit(&root, body).await.unwrap();
            assert_eq!((how, resp.id.as_str()), (Submitted::Repeated, "mine"));
            let other = br#"{"command": ["true"], "id": "mine",
                             "limits": {"memory": "1M", "cpus": 0.1, "swap": "0"}}"#;
            assert!(matches!(
                svc.submit(&root, other).await,
                Err(ServiceError::Conflict(id)) if id == "mine"
            ));
            assert!(matches!(
                svc.submit(&root, br#"{"command": []}"#).await,
                Err(ServiceError::Invalid(validate::Invalid::NoCommand))
            ));
            assert!(matches!(
                svc.submit(
                    &root,
                    br#"{"command": ["true"], "limits": {"memory": "2G", "cpus": 0.1}}"#
                )
                .await,
                Err(ServiceError::OverBudget(
                    crate::admission::NeedError::MemoryOverBudget { .. }
                ))
            ));
            let m = &svc.metrics;
            let n = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
            assert_eq!((n(&m.accepted), n(&m.idempotent), n(&m.refused)), (1, 1, 3));
            svc.drain(libc::SIGTERM, async {}).await;
            assert!(svc.draining());
            assert!(matches!(
                svc.submit(&root, BODY).await,
                Err(ServiceError::Draining)
            ));
            // A drain leaves queued runs queued.
            assert_eq!(
                svc.status(&root, "mine").await.unwrap().state,
                RunState::Queued
            );
        });
    }

    fn user(uid: u32) -> Caller {
        Caller {
            uid,
            gid: uid,
            pid: None,
            admin: false,
            may_submit: true,
        }
    }

    /// Each user sees, waits for, reads and cancels only their own runs (another's is
    /// a 404 like an unknown id); runs execute as their submitter; naming another user
    /// is refused; admins see and cancel everything; the ledger keeps who did what.
    #[test]
    fn each_user_their_own() {
        let t = test_service(|_| {});
        let svc = t.svc.clone();
        let (a, b, root) = (user(4001), user(4002), Caller::root());
        block_on(async move {
            let (_, ra) = svc.submit(&a, BODY).await.unwrap();
            let (_, rb) = svc.submit(&b, BODY).await.unwrap();
            let users: Vec<(u32, usize, usize)> = svc
                .health()
                .users
                .iter()
                .map(|u| (u.uid, u.running, u.queued))
                .collect();
            assert_eq!(users, [(4001, 0, 1), (4002, 0, 1)]);
            let text = crate::metrics::render(&svc.metrics, &svc.snapshot().await.unwrap());
            assert!(
                text.contains("corral_user_queued{uid=\"4002\"} 1\n"),
                "{text}"
            );
            let row = svc.ledger.get(&ra.id).unwrap().unwrap();
            assert_eq!(row.submitted_by, Some(4001));
            let job = super::Job::from_row(&row).unwrap();
            assert_eq!(
                job.limits.user,
                corral_spec::User::Named {
                    user: "4001".into(),
                    group: None
                },
                "the run executes as its submitter"
            );
            let st = svc.status(&a, &ra.id).await.unwrap();
            assert_eq!(st.owner.as_ref().map(|o| o.uid), Some(4001));
            // B cannot see A's run, whatever the route: the same error as no run.
            let not_found = |e: ServiceError, id: &str| {
                assert!(matches!(&e, ServiceError::NotFound(i) if i == id), "{e}");
                assert_eq!(e.to_string(), format!("no run with id {id:?}"));
            };
            not_found(svc.status(&b, &ra.id).await.unwrap_err(), &ra.id);
            not_found(
                svc.wait(&b, &ra.id, Duration::ZERO).await.unwrap_err(),
                &ra.id,
            );
            not_found(svc.output(&b, &ra.id, "stdout").await.unwrap_err(), &ra.id);
            not_found(svc.cancel(&b, &ra.id).await.unwrap_err(), &ra.id);
            let ids =
                |l: crate::wire::RunList| l.runs.into_iter().map(|r| r.id).collect::<Vec<_>>();
            assert_eq!(ids(svc.list(&b, None, 10).await.unwrap()), [rb.id.as_str()]);
            assert_eq!(ids(svc.list(&a, None, 10).await.unwrap()), [ra.id.as_str()]);
            assert_eq!(
                ids(svc.list(&root, None, 10).await.unwrap()),
                [ra.id.clone(), rb.id.clone()]
            );
            // Nothing of A's was touched by B's attempts.
            let row = svc.ledger.get(&ra.id).unwrap().unwrap();
            assert_eq!((row.state, row.cancelled_by), (RunState::Queued, None));
            // Naming another user is a 403; naming oneself is fine.
            let as_other =
                br#"{"command": ["true"], "limits": {"memory": "1M", "cpus": 0.1, "user": "4001"}}"#;
            let e = svc.submit(&b, as_other).await.unwrap_err();
            assert!(matches!(e, ServiceError::Forbidden(_)), "{e}");
            assert!(e
                .to_string()
                .starts_with("uid 4002 may not run commands as user \"4001\""));
            assert_eq!(
                svc.submit(&a, as_other).await.unwrap().1.state,
                RunState::Queued
            );
            // An idempotency key is the submitter's: another user's is not reused.
            let keyed = br#"{"command": ["true"], "idempotency_key": "k1",
                             "limits": {"memory": "1M", "cpus": 0.1}}"#;
            let (_, first) = svc.submit(&a, keyed).await.unwrap();
            assert!(matches!(
                svc.submit(&b, keyed).await,
                Err(ServiceError::KeyTaken)
            ));
            assert_eq!(svc.submit(&a, keyed).await.unwrap().1.id, first.id);
            // B cancels its own, root cancels A's; the ledger says who.
            svc.cancel(&b, &rb.id).await.unwrap();
            svc.cancel(&root, &ra.id).await.unwrap();
            let (ra_row, rb_row) = (
                svc.ledger.get(&ra.id).unwrap().unwrap(),
                svc.ledger.get(&rb.id).unwrap().unwrap(),
            );
            assert_eq!(
                (ra_row.cancelled_by, rb_row.cancelled_by),
                (Some(0), Some(4002))
            );
            assert!(ra_row.cancelled_at.is_some() && ra_row.state == RunState::Done);
            // A caller outside --allow-group may not submit.
            let mut outsider = user(4003);
            outsider.may_submit = false;
            let e = svc.submit(&outsider, BODY).await.unwrap_err();
            assert!(matches!(e, ServiceError::Forbidden(_)), "{e}");
        });
    }
}
