//! Recovery after a restart: what the ledger says was running when the last instance
//! died is recorded as `lost` (with what was found of its cgroup), and what was queued
//! is queued again in its order, if it still fits the budget. Under the Slurm executor
//! a running run with a job is not lost: it is watched again (and collected from the
//! spool if it ended meanwhile); one that never reached Slurm is submitted now.
//!
//! It runs once, in [`Service::new`], before the service listens.

use std::time::SystemTime;

use crate::cgroups::Reaped;
use crate::service::records::Never;
use crate::service::{Job, Service, ServiceError};
use crate::wire::RunState;

/// The first sentence of a lost run's notes: which service recorded it when (`pid`,
/// `now`), and what it found of the run's cgroup (`found`: what reaping did to it, or
/// `None` when it was already gone).
pub fn lost_note(found: Option<&Reaped>, pid: u32, now: &str) -> String {
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
            "; its processes had already been ended and its cgroup removed (by the dead \
             service's crash guard)",
        ),
    }
    if let Some(err) = found.and_then(|r| r.error.as_ref()) {
        note.push_str(&format!(" (cleanup problem: {err})"));
    }
    note.push('.');
    note
}

impl Service {
    /// Recovers from an earlier instance; `reaped` is what
    /// [`crate::cgroups::ServiceTree::reap_strays`] did to the run cgroups it left.
    pub(super) fn recover(&self, reaped: Vec<Reaped>) -> Result<(), ServiceError> {
        let pid = std::process::id();
        let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        // Slurm's jobs, asked once, for runs whose job id was not stored yet.
        let mut slurm_jobs: Option<Vec<crate::slurm::JobView>> = None;
        for row in self.ledger.in_state(RunState::Running)? {
            let job = match Job::from_row(&row) {
                Ok(j) => j,
                Err(why) => {
                    tracing::error!("{why}");
                    continue;
                }
            };
            if self.executor.slurm().is_some() {
                let name = format!("{}{}", crate::slurm::JOB_PREFIX, job.id);
                let job_id = row.slurm_job().map(str::to_string).or_else(|| {
                    slurm_jobs
                        .get_or_insert_with(|| crate::slurm::show_jobs().unwrap_or_default())
                        .iter()
                        .find(|v| v.name == name)
                        .map(|v| v.job_id.clone())
                });
                match &job_id {
                    Some(j) if row.slurm_job().is_none() => {
                        // Found by its name: the last instance died before storing it.
                        let owner = format!("{}{j}", crate::ledger::SLURM_OWNER);
                        self.ledger.set_owner(&job.id, &owner)?;
                    }
                    Some(_) => {}
                    // Admitted, but Slurm never got it: nothing of it ran, so it is
                    // submitted now.
                    None => tracing::warn!(
                        "run {} was admitted but never reached Slurm: submitting it now",
                        job.id
                    ),
                }
                let started = row.started_at.clone().unwrap_or_default();
                self.lock().resume(job, row.priority, job_id, started);
                continue;
            }
            let found = reaped.iter().find(|r| r.id.as_deref() == Some(&job.id));
            let never = Never::Lost {
                started_at: row.started_at.clone(),
                note: lost_note(found, pid, &now),
            };
            let mut rec = self.synth(&job, never);
            // It ran from its start until the last service died or this one reaped it:
            // the record keeps that time, not 0.
            if let Some(ran) = row
                .started_at
                .as_deref()
                .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
                .and_then(|t| SystemTime::now().duration_since(t).ok())
            {
                rec.usage.wall_s = ran.as_secs_f64();
                rec.notes.push_str(&format!(
                    " It had run for at most {} (from its start until it was recorded lost).",
                    corral_spec::format_duration(ran)
                ));
            }
            if let Some(r) = found {
                rec.cgroup = self
                    .tree
                    .runs_dirs()
                    .first()
                    .map(|d| d.join(&r.name).display().to_string());
            }
            self.ledger.finish(&job.id, RunState::Lost, &rec)?;
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
        for row in self.ledger.in_state(RunState::Queued)? {
            let job = match Job::from_row(&row) {
                Ok(j) => j,
                Err(why) => {
                    tracing::error!("{why}");
                    continue;
                }
            };
            // Admission is checked again: the budget may have shrunk since.
            let need = match g
                .adm
                .budget()
                .need(&job.limits)
                .and_then(|n| g.adm.check_user_need(&n).map(|()| n))
            {
                Ok(n) => n,
                Err(why) => {
                    drop(g);
                    let never = Never::Failed {
                        why: format!("it no longer fits the service budget: {why}"),
                        started_at: None,
                    };
                    let rec = self.synth(&job, never);
                    self.ledger.finish(&job.id, RunState::Done, &rec)?;
                    g = self.lock();
                    continue;
                }
            };
            g.enqueue(job, row.priority, need);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_record::{Reason, Record};

    use crate::admission::Budget;
    use crate::service::testing::{budget, insert_into, start};
    use crate::service::LOST_EXIT_CODE;

    fn reaped(id: &str, killed: usize, error: Option<&str>) -> Reaped {
        Reaped {
            name: format!("{id}.1.2.3"),
            id: Some(id.to_string()),
            killed,
            error: error.map(str::to_string),
        }
    }

    #[test]
    fn notes_say_what_was_found() {
        let n = lost_note(None, 7, "2026-01-01T00:00:00Z");
        assert_eq!(
            n,
            "Lost: the corral service stopped while this run was in flight; the restarted \
             service (pid 7) recorded it at 2026-01-01T00:00:00Z; its processes had already \
             been ended and its cgroup removed (by the dead service's crash guard)."
        );
        let r = reaped("a", 0, None);
        assert!(lost_note(Some(&r), 7, "t").ends_with(" and removed its empty cgroup."));
        let r = reaped("a", 1, None);
        assert!(lost_note(Some(&r), 7, "t")
            .ends_with(" and killed the 1 process still left in its cgroup."));
        let r = reaped("a", 3, Some("EBUSY"));
        assert!(lost_note(Some(&r), 7, "t").ends_with(
            " and killed the 3 processes still left in its cgroup (cleanup problem: EBUSY)."
        ));
    }

    fn record(svc: &Service, id: &str) -> (RunState, Option<Record>) {
        let row = svc.ledger.get(id).unwrap().expect("row");
        let rec = row
            .record
            .as_deref()
            .map(|r| serde_json::from_str(r).unwrap());
        (row.state, rec)
    }

    /// A restart over a ledger that says two runs were running and three were queued:
    /// the running ones are lost (one with its cgroup found and reaped), the queued
    /// ones are queued again in order, except one the shrunken budget can no longer
    /// hold, which is done as spawn_failed.
    #[test]
    fn restart_over_a_temporary_ledger() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = crate::ledger::Ledger::open(&dir.path().join("ledger.db")).unwrap();
        for (id, mem) in [("run1", 1 << 20), ("run2", 1 << 20)] {
            insert_into(&ledger, id, 0, mem);
            ledger
                .mark_running(id, "2026-01-01T00:00:00.000Z", "dead.owner")
                .unwrap();
        }
        insert_into(&ledger, "q-low", 0, 1 << 20);
        insert_into(&ledger, "q-big", 5, 1 << 40);
        insert_into(&ledger, "q-high", 9, 1 << 20);
        let t = start(
            dir,
            ledger,
            vec![reaped("run1", 2, None), reaped("stray", 0, None)],
            budget(),
            |_| {},
        )
        .unwrap();
        let svc = &t.svc;

        let (state, rec) = record(svc, "run1");
        let rec = rec.unwrap();
        assert_eq!(state, RunState::Lost);
        assert_eq!(rec.outcome.reason, Reason::Lost);
        assert_eq!(rec.outcome.exit_code, LOST_EXIT_CODE);
        assert_eq!(rec.started_at, "2026-01-01T00:00:00.000Z");
        assert!(
            rec.notes
                .contains("and killed the 2 processes still left in its cgroup."),
            "{}",
            rec.notes
        );
        let runs = t.dir.path().join("runs");
        assert_eq!(
            rec.cgroup.as_deref(),
            Some(runs.join("run1.1.2.3").to_str().unwrap())
        );
        let (state, rec) = record(svc, "run2");
        let rec = rec.unwrap();
        assert_eq!(state, RunState::Lost);
        assert!(rec.notes.contains("crash guard"), "{}", rec.notes);
        assert_eq!(rec.cgroup, None);

        let (state, rec) = record(svc, "q-big");
        let rec = rec.unwrap();
        assert_eq!(state, RunState::Done);
        assert_eq!(rec.outcome.reason, Reason::SpawnFailed);
        assert!(rec
            .outcome
            .error
            .unwrap()
            .starts_with("it no longer fits the service budget: the run's memory limit"));

        let g = svc.lock();
        assert_eq!(g.adm.queued(), 2);
        assert!(g.adm.is_queued("q-low") && g.adm.is_queued("q-high"));
        assert_eq!(g.active.len(), 2);
        drop(g);
        assert_eq!(record(svc, "q-low"), (RunState::Queued, None));
    }

    /// Under the Slurm executor a restart loses no running run: one with a stored job
    /// is watched again, one that never reached Slurm is submitted again; both stay
    /// `running`, admitted without the budget, which /health says does not apply.
    #[test]
    fn slurm_runs_are_resumed_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = crate::ledger::Ledger::open(&dir.path().join("ledger.db")).unwrap();
        for id in ["with-job", "never-sent"] {
            insert_into(&ledger, id, 0, 1 << 40);
            ledger
                .mark_running(id, "2026-01-01T00:00:00.000Z", "dead.owner")
                .unwrap();
        }
        ledger.set_owner("with-job", "slurm:42").unwrap();
        let spool = dir.path().join("spool");
        let cfg = crate::slurm::SlurmConfig {
            partition: None,
            account: None,
            spool: spool.clone(),
            corral: "/nonexistent/corral".into(),
        };
        let t = start(dir, ledger, Vec::new(), budget(), |c| {
            c.executor = crate::config::ExecutorConfig::Slurm(cfg)
        })
        .unwrap();
        let svc = &t.svc;
        assert_eq!(record(svc, "with-job"), (RunState::Running, None));
        assert_eq!(record(svc, "never-sent"), (RunState::Running, None));
        let g = svc.lock();
        let resumed: Vec<(&str, Option<&str>)> = g
            .resumed
            .iter()
            .map(|r| (r.job.id.as_str(), r.job_id.as_deref()))
            .collect();
        assert_eq!(resumed, [("with-job", Some("42")), ("never-sent", None)]);
        assert_eq!(g.adm.running(), 2);
        drop(g);
        assert!(spool.join("jobs").is_dir() && spool.join("output").is_dir());
        assert_eq!(
            svc.output_path("a", "stdout"),
            spool.join("output").join("a.stdout")
        );
        let h = svc.health();
        let x = h.executor.expect("the executor in /health");
        assert_eq!((x.kind.as_str(), x.budget_applies), ("slurm", false));
        let st = crate::service::status_of(&svc.ledger.get("with-job").unwrap().unwrap());
        assert_eq!(st.slurm_job_id.as_deref(), Some("42"));
    }

    #[test]
    fn queued_runs_come_back_in_priority_order() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = crate::ledger::Ledger::open(&dir.path().join("ledger.db")).unwrap();
        for (id, prio) in [("a", 0), ("b", 3), ("c", 0), ("d", 3)] {
            insert_into(&ledger, id, prio, 1 << 20);
        }
        let t = start(
            dir,
            ledger,
            Vec::new(),
            Budget {
                max_running: 1,
                ..budget()
            },
            |_| {},
        )
        .unwrap();
        let mut g = t.svc.lock();
        let mut order = Vec::new();
        while let Some((id, need)) = g.adm.admit_next() {
            g.adm.release(&id, &need);
            order.push(id);
        }
        assert_eq!(order, ["b", "d", "a", "c"]);
    }
}
