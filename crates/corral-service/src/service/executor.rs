//! Where an admitted run executes: the [`Executor`] seam of the lifecycle.
//!
//! * [`Executor::Local`] (the default): [`corral_run::run()`] on this host, under the
//!   service's cgroup tree and budget.
//! * [`Executor::Slurm`]: one batch job per run. The run's resolved spec and a script
//!   that `exec`s `corral run` go to the spool; `sbatch` takes it; the job's id is
//!   stored in the ledger (`owner = slurm:JOBID`) before anyone can ask about it; the
//!   one [`Poller`] watches the job; once Slurm is done with it, the record `corral
//!   run` wrote on the node is collected from the spool, with Slurm's job id, state and
//!   node added. When there is none (Slurm killed corral with the run, the node
//!   failed, the job vanished), the record is made from Slurm's view (`scontrol`, and
//!   `sacct` per step where it answers) and says so. Slurm decides when a run starts:
//!   the service admits every run at once and its budget does not apply.
//!
//! A restart resumes every `running` run with a job: still in Slurm, it is watched
//! again; finished meanwhile, its record is collected from the spool.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use corral_record::{Reason, Record, SlurmJob};
use corral_run::{Cancel, RunSpec};
use tokio::sync::watch;

use crate::ledger::SLURM_OWNER;
use crate::service::records::Never;
use crate::service::{Job, Service};
use crate::slurm::{self, JobFile, JobView, Poller, Seen, SlurmConfig, Step};

/// Where runs execute.
#[derive(Clone, Default)]
pub enum Executor {
    /// On this host, under the service's budget.
    #[default]
    Local,
    /// As Slurm batch jobs.
    Slurm(Arc<SlurmExecutor>),
}

/// The Slurm executor: its configuration and the poller of its jobs.
pub struct SlurmExecutor {
    /// How it was configured.
    pub cfg: SlurmConfig,
    poller: Arc<Poller>,
}

impl SlurmExecutor {
    /// The executor of a configuration (the poller starts with the first job).
    pub fn new(cfg: SlurmConfig) -> SlurmExecutor {
        SlurmExecutor {
            cfg,
            poller: Arc::new(Poller::default()),
        }
    }

    /// Creates the spool's directories (0700: the jobs run as the service's user). The
    /// error is one sentence.
    pub fn prepare(&self) -> Result<(), String> {
        for d in [
            self.cfg.spool.clone(),
            self.cfg.output_dir(),
            self.cfg.jobs_dir(),
        ] {
            super::private_dir(&d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
        }
        Ok(())
    }
}

impl Executor {
    /// `local` or `slurm`.
    pub fn name(&self) -> &'static str {
        match self {
            Executor::Local => "local",
            Executor::Slurm(_) => "slurm",
        }
    }

    /// The Slurm executor, if this is one.
    pub fn slurm(&self) -> Option<&Arc<SlurmExecutor>> {
        match self {
            Executor::Slurm(x) => Some(x),
            Executor::Local => None,
        }
    }
}

/// What the node left in the spool for a run.
enum NodeRecord {
    /// The record `corral run` wrote.
    Record(Box<Record>),
    /// corral failed before running it (its `corral.error/v1` document).
    Error(String),
    /// Nothing readable.
    None,
}

fn read_node_record(path: &Path) -> NodeRecord {
    let Ok(text) = std::fs::read_to_string(path) else {
        return NodeRecord::None;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return NodeRecord::None;
    };
    match v.get("schema").and_then(|s| s.as_str()) {
        Some("corral.error/v1") => NodeRecord::Error(
            v.get("error")
                .and_then(|e| e.as_str())
                .unwrap_or("unknown error")
                .to_string(),
        ),
        Some(corral_record::SCHEMA) => match serde_json::from_value::<Record>(v) {
            Ok(r) => NodeRecord::Record(Box::new(r)),
            Err(_) => NodeRecord::None,
        },
        _ => NodeRecord::None,
    }
}

/// Adds Slurm's view to the record corral wrote on the node. When Slurm itself ended
/// the job (its time limit, its memory enforcement, a preemption, an administrator's
/// scancel), corral on the node saw only a signal: the reason and the first sentence
/// say what Slurm did.
pub fn merge_slurm_view(
    mut rec: Record,
    job_id: &str,
    state: Option<&str>,
    by_client: bool,
) -> Record {
    let signalled = matches!(rec.outcome.reason, Reason::Cancelled | Reason::Signaled);
    if let Some(s) = state.filter(|_| signalled && !by_client) {
        if matches!(
            s,
            "TIMEOUT" | "DEADLINE" | "OUT_OF_MEMORY" | "PREEMPTED" | "NODE_FAIL" | "CANCELLED"
        ) {
            let (reason, code, sentence) = slurm::slurm_ending(s, job_id, false);
            if matches!(reason, Reason::Oom | Reason::Timeout | Reason::Cancelled) {
                rec.outcome.reason = reason;
                rec.outcome.exit_code = code;
            }
            rec.notes = format!("{sentence} On the node, corral saw: {}", rec.notes);
        }
    }
    rec
}

/// The record of a run whose node left none, made from Slurm's view of its job:
/// `last` as `scontrol` showed it (`None`: Slurm no longer knew it), `steps` from
/// `sacct` where it answered.
pub fn slurm_record_parts(
    job_id: &str,
    last: Option<&JobView>,
    steps: Option<&[Step]>,
    by_client: bool,
) -> (Reason, i32, String) {
    let steps = steps.unwrap_or(&[]);
    let state = slurm::telling_state(last.map(|v| v.state.as_str()), steps);
    let never_ran =
        last.is_some_and(|v| v.node.is_none()) && steps.iter().all(|s| s.node.is_none());
    let source = if steps.is_empty() {
        "scontrol show job"
    } else {
        "sacct, every step"
    };
    let exit = last
        .and_then(|v| v.exit)
        .or_else(|| steps.first().and_then(|s| s.exit));
    let exit = exit.map_or(String::new(), |(c, s)| format!(", exit {c}:{s}"));
    match state {
        Some("CANCELLED") if by_client && never_ran => (
            Reason::Cancelled,
            128 + libc::SIGTERM,
            format!(
                "Cancelled before it started: a client cancelled it while Slurm held job \
                 {job_id} pending. Slurm never started the job."
            ),
        ),
        Some(s) => {
            // A client's cancel that reached corral before it could catch signals (the
            // first moments of the job) leaves no record: it is still that cancel.
            let (reason, code, sentence) =
                if by_client && matches!(s, "FAILED" | "CANCELLED" | "COMPLETED") {
                    (
                        Reason::Cancelled,
                        128 + libc::SIGTERM,
                        format!(
                            "Cancelled: a client cancelled it and Slurm's job {job_id} ended \
                             before corral on the node could record the run."
                        ),
                    )
                } else {
                    slurm::slurm_ending(s, job_id, by_client)
                };
            let node = last
                .and_then(|v| v.node.clone())
                .or_else(|| steps.iter().find_map(|s| s.node.clone()))
                .map_or("the node".to_string(), |n| format!("node {n}"));
            (
                reason,
                code,
                format!(
                    "{sentence} This record was made from Slurm's view of the job ({source}: \
                     {s}{exit}): corral on {node} wrote none, so its usage is what Slurm \
                     counted."
                ),
            )
        }
        None => (
            Reason::Lost,
            crate::service::LOST_EXIT_CODE,
            format!(
                "Lost: Slurm no longer knows job {job_id} and corral on the node wrote no \
                 record of the run (a job is forgotten MinJobAge after it ends, and sacct \
                 had no accounting of it)."
            ),
        ),
    }
}

fn write_job_files(cfg: &SlurmConfig, spec: &RunSpec) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let id = spec.id.clone().unwrap_or_default();
    let jf = serde_json::to_string_pretty(&JobFile::of(spec)).map_err(std::io::Error::other)?;
    std::fs::write(cfg.job_path(&id, "json"), jf + "\n")?;
    let _ = std::fs::remove_file(cfg.job_path(&id, "record.json"));
    let sh = cfg.job_path(&id, "sh");
    std::fs::write(&sh, slurm::script(cfg, &id, &spec.command))?;
    std::fs::set_permissions(&sh, std::fs::Permissions::from_mode(0o700))
}

impl Service {
    /// Runs an admitted run on this service's executor; `Err` is corral's own failure
    /// to run it.
    pub(super) async fn execute(
        self: &Arc<Self>,
        job: &Job,
        spec: RunSpec,
        cancel: watch::Receiver<Option<Cancel>>,
        started_at: &str,
    ) -> Result<Record, String> {
        match self.executor.clone() {
            Executor::Local => {
                let observer = self.clone().live_observer(&job.id, &spec.limits);
                corral_run::run_observed(self.backend.as_ref(), spec, cancel, Some(observer))
                    .await
                    .map_err(|e| format!("corral could not run it: {e}"))
            }
            Executor::Slurm(x) => Ok(self.run_on_slurm(&x, job, spec, cancel, started_at).await),
        }
    }

    async fn run_on_slurm(
        self: &Arc<Self>,
        x: &Arc<SlurmExecutor>,
        job: &Job,
        spec: RunSpec,
        cancel: watch::Receiver<Option<Cancel>>,
        started_at: &str,
    ) -> Record {
        let failed = |why: String| Never::Failed {
            why,
            started_at: Some(started_at.to_string()),
        };
        let cfg = x.cfg.clone();
        let args = slurm::sbatch_args(&cfg, &job.id, &job.limits);
        let written = tokio::task::spawn_blocking(move || write_job_files(&cfg, &spec)).await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return self.synth(
                    job,
                    failed(format!("cannot write its job to the spool: {e}")),
                )
            }
            Err(e) => {
                return self.synth(
                    job,
                    failed(format!("cannot write its job to the spool: {e}")),
                )
            }
        }
        // A controller being restarted refuses submissions for a while: retry for two
        // minutes, backing off, unless the run is cancelled meanwhile. A refusal of the
        // job itself (a bad partition, too much memory) fails the run at once.
        let mut delay = Duration::from_millis(500);
        let mut waited = Duration::ZERO;
        let job_id = loop {
            let a = args.clone();
            let answer = tokio::task::spawn_blocking(move || slurm::command("sbatch", &a))
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
            match answer.map(|out| slurm::parse_sbatch(&out).ok_or(out)) {
                Ok(Ok(id)) => break id,
                Ok(Err(out)) => {
                    return self.synth(job, failed(format!("sbatch answered no job id: {out:?}")))
                }
                Err(e) if waited >= Duration::from_secs(120) || !slurm::transient(&e) => {
                    return self.synth(job, failed(format!("Slurm did not take the job: {e}")))
                }
                Err(e) => tracing::warn!("run {}: {e}; retrying", job.id),
            }
            if cancel.borrow().is_some() {
                return self.synth(
                    job,
                    Never::Cancelled {
                        started_at: Some(started_at.to_string()),
                    },
                );
            }
            tokio::time::sleep(delay).await;
            waited += delay;
            delay = (delay * 2).min(Duration::from_secs(5));
        };
        tracing::info!("run {} is Slurm job {job_id}", job.id);
        let (l, i, o) = (
            self.ledger.clone(),
            job.id.clone(),
            format!("{SLURM_OWNER}{job_id}"),
        );
        match tokio::task::spawn_blocking(move || l.set_owner(&i, &o)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("run {}: storing its job id {job_id}: {e}", job.id),
            Err(e) => tracing::error!("run {}: storing its job id {job_id}: {e}", job.id),
        }
        self.follow_job(x, job, &job_id, cancel, started_at).await
    }

    /// Watches a job until Slurm is done with it, passing a client's cancel on to
    /// Slurm, then collects its record.
    pub(super) async fn follow_job(
        self: &Arc<Self>,
        x: &Arc<SlurmExecutor>,
        job: &Job,
        job_id: &str,
        mut cancel: watch::Receiver<Option<Cancel>>,
        started_at: &str,
    ) -> Record {
        let mut seen = x.poller.watch(job_id);
        let mut last: Option<JobView> = None;
        let mut cancelled = false;
        loop {
            if !cancelled && cancel.borrow_and_update().is_some() {
                cancelled = true;
                let j = job_id.to_string();
                let _ = tokio::task::spawn_blocking(move || slurm::cancel(&j)).await;
            }
            let now = seen.borrow_and_update().clone();
            match now {
                Some(Seen::Job(v)) => {
                    let done = slurm::is_final(&v.state);
                    last = Some(v);
                    if done {
                        break;
                    }
                }
                Some(Seen::Gone) => break,
                None => {}
            }
            tokio::select! {
                r = seen.changed() => if r.is_err() { break },
                r = cancel.changed(), if !cancelled => if r.is_err() { cancelled = true },
            }
        }
        drop(seen);
        let (svc, x, job2, id, by) = (
            self.clone(),
            x.clone(),
            job.clone(),
            job_id.to_string(),
            cancelled,
        );
        let started = started_at.to_string();
        tokio::task::spawn_blocking(move || svc.collect(&x.cfg, &job2, &id, last, by, &started))
            .await
            .unwrap_or_else(|e| {
                self.synth(
                    job,
                    Never::Failed {
                        why: format!("collecting its record failed: {e}"),
                        started_at: Some(started_at.to_string()),
                    },
                )
            })
    }

    /// The record of a job Slurm is done with (blocking: reads the spool, may ask
    /// `sacct`).
    fn collect(
        &self,
        cfg: &SlurmConfig,
        job: &Job,
        job_id: &str,
        last: Option<JobView>,
        by_client: bool,
        started_at: &str,
    ) -> Record {
        let path = cfg.job_path(&job.id, "record.json");
        // A shared file system may show the record a little after the job ended.
        let mut node_rec = read_node_record(&path);
        let ran = last.as_ref().is_none_or(|v| v.node.is_some());
        for _ in 0..10 {
            if !matches!(node_rec, NodeRecord::None) || !ran {
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
            node_rec = read_node_record(&path);
        }
        let steps = slurm::sacct(job_id);
        let state = slurm::telling_state(
            last.as_ref().map(|v| v.state.as_str()),
            steps.as_deref().unwrap_or(&[]),
        )
        .map(str::to_string);
        let node = last
            .as_ref()
            .and_then(|v| v.node.clone())
            .or_else(|| steps.iter().flatten().find_map(|s| s.node.clone()));
        let mut rec = match node_rec {
            NodeRecord::Record(r) => merge_slurm_view(*r, job_id, state.as_deref(), by_client),
            NodeRecord::Error(e) => self.synth(
                job,
                Never::Failed {
                    why: format!(
                        "corral on {} could not run it: {e}",
                        node.as_deref().unwrap_or("the node")
                    ),
                    started_at: Some(started_at.to_string()),
                },
            ),
            NodeRecord::None => {
                let (reason, exit_code, note) =
                    slurm_record_parts(job_id, last.as_ref(), steps.as_deref(), by_client);
                let mut r = self.synth(
                    job,
                    Never::Ended {
                        reason,
                        exit_code,
                        started_at: Some(started_at.to_string()),
                        note,
                    },
                );
                r.backend_reason = format!(
                    "not known: corral on the node wrote no record (this is the service \
                     host's backend: {})",
                    r.backend_reason
                );
                let all = steps.as_deref().unwrap_or(&[]);
                r.usage.wall_s = all.iter().filter_map(|s| s.elapsed_s).fold(
                    last.as_ref().and_then(|v| v.run_time_s).unwrap_or(0) as f64,
                    f64::max,
                );
                r.usage.cpu_user_s = all.first().and_then(|s| s.total_cpu_s).unwrap_or(0.0);
                r.usage.memory_peak_bytes = all.iter().filter_map(|s| s.max_rss).max();
                r
            }
        };
        rec.executor = Some("slurm".into());
        rec.slurm = Some(SlurmJob {
            job_id: job_id.to_string(),
            state,
            node,
        });
        rec
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(state: &str, node: Option<&str>) -> JobView {
        JobView {
            job_id: "9".into(),
            state: state.into(),
            node: node.map(str::to_string),
            exit: Some((0, 9)),
            ..JobView::default()
        }
    }

    #[test]
    fn endings_without_a_node_record() {
        let (r, code, note) =
            slurm_record_parts("9", Some(&view("FAILED", Some("n1"))), None, false);
        assert_eq!((r, code), (Reason::Lost, 125));
        assert!(
            note.contains("Slurm's view of the job (scontrol show job: FAILED, exit 0:9)"),
            "{note}"
        );
        assert!(note.contains("corral on node n1 wrote none"), "{note}");
        let steps = slurm::parse_sacct(
            "9|FAILED|1:0|n1|00:00:07||00:01\n9.batch|OUT_OF_MEMORY|0:125|n1|00:00:07|1M|00:01\n",
        );
        let (r, code, note) =
            slurm_record_parts("9", Some(&view("FAILED", Some("n1"))), Some(&steps), false);
        assert_eq!((r, code), (Reason::Oom, 137));
        assert!(
            note.starts_with("Out of memory: Slurm ended job 9"),
            "{note}"
        );
        assert!(note.contains("sacct, every step"), "{note}");
        let (r, _, note) = slurm_record_parts("9", Some(&view("CANCELLED", None)), None, true);
        assert_eq!(r, Reason::Cancelled);
        assert!(note.starts_with("Cancelled before it started"), "{note}");
        let (r, _, note) = slurm_record_parts("9", None, None, false);
        assert_eq!(r, Reason::Lost);
        assert!(note.contains("no longer knows job 9"), "{note}");
        let (r, code, note) =
            slurm_record_parts("9", Some(&view("FAILED", Some("n1"))), None, true);
        assert_eq!((r, code), (Reason::Cancelled, 143));
        assert!(
            note.starts_with("Cancelled: a client cancelled it"),
            "{note}"
        );
        let (r, ..) = slurm_record_parts("9", Some(&view("TIMEOUT", Some("n1"))), None, true);
        assert_eq!(r, Reason::Timeout);
        let (r, ..) = slurm_record_parts("9", Some(&view("TIMEOUT", Some("n1"))), None, false);
        assert_eq!(r, Reason::Timeout);
        let (r, ..) = slurm_record_parts("9", Some(&view("NODE_FAIL", Some("n1"))), None, false);
        assert_eq!(r, Reason::Lost);
    }

    #[test]
    fn slurm_view_corrects_a_signalled_record() {
        let mut rec = Record::new(corral_record::RecordHead {
            id: "a".into(),
            command: vec!["x".into()],
            cwd: None,
            profile: "default".into(),
            backend: "cgroup1".into(),
            backend_reason: String::new(),
            limits: Default::default(),
        });
        rec.outcome.reason = Reason::Cancelled;
        rec.notes = "Cancelled after 61 s: corral received SIGTERM.".into();
        let m = merge_slurm_view(rec.clone(), "9", Some("TIMEOUT"), false);
        assert_eq!(
            (m.outcome.reason, m.outcome.exit_code),
            (Reason::Timeout, 124)
        );
        assert!(m.notes.starts_with("Timed out: Slurm ended job 9 at its time limit (TIMEOUT). On the node, corral saw: Cancelled after 61 s"), "{}", m.notes);
        // A client's own cancel stays as it is.
        assert_eq!(
            merge_slurm_view(rec.clone(), "9", Some("CANCELLED"), true),
            rec
        );
        let mut signaled = rec.clone();
        signaled.outcome.reason = Reason::Signaled;
        let m = merge_slurm_view(signaled, "9", Some("CANCELLED"), false);
        assert_eq!(
            (m.outcome.reason, m.outcome.exit_code),
            (Reason::Cancelled, 143)
        );
        assert!(m.notes.contains("administrator"), "{}", m.notes);
        rec.outcome.reason = Reason::Exited;
        assert_eq!(
            merge_slurm_view(rec.clone(), "9", Some("FAILED"), false),
            rec
        );
    }
}
