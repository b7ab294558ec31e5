//! What clients read: a run's status, the list, `wait`, `/health` and the metrics
//! snapshot. Nothing here changes a run.

use std::collections::HashMap;
use std::time::Duration;

use corral_record::timeline::Timeline;
use corral_record::Record;
use tokio::sync::watch;

use crate::ledger::Row;
use crate::metrics::Snapshot;
use crate::service::auth::{self, Caller};
use crate::service::{Service, ServiceError};
use crate::wire::SubmitRequest;
use crate::wire::{
    BudgetStatus, ExecutorStatus, Health, RunList, RunOwner, RunState, RunStatus, UserUsage,
};

impl Service {
    /// `GET /runs/{id}`. A run `caller` may not see is answered exactly like one that
    /// does not exist, so ids leak nothing.
    pub async fn status(&self, caller: &Caller, id: &str) -> Result<RunStatus, ServiceError> {
        let i = id.to_string();
        match self.db(move |l| l.get(&i)).await? {
            Some(row) if caller.sees(row.submitted_by) => {
                let mut st = status_of(&row);
                if st.state == RunState::Running {
                    st.live = self.lock().active.get(id).and_then(|a| a.live);
                }
                Ok(st)
            }
            _ => Err(ServiceError::NotFound(id.to_string())),
        }
    }

    /// `GET /runs/{id}/timeline`: a finished run's record's timeline; a running run's
    /// readings so far (memory, CPU, processes about once a second; no events until
    /// its record); an empty one for a queued run or one without readings (Slurm).
    pub async fn timeline(&self, caller: &Caller, id: &str) -> Result<Timeline, ServiceError> {
        let st = self.status(caller, id).await?;
        if !st.state.is_final() {
            if let Some(a) = self.lock().active.get(id) {
                return Ok(a.history.clone());
            }
        }
        // Final, or it finished meanwhile: its record's.
        let st = if st.state.is_final() {
            st
        } else {
            self.status(caller, id).await?
        };
        Ok(st
            .record
            .and_then(|r| r.timeline)
            .unwrap_or_else(|| Timeline::new(1.0)))
    }

    /// `GET /runs`: the caller's runs (an admin's: everyone's).
    pub async fn list(
        &self,
        caller: &Caller,
        state: Option<RunState>,
        limit: usize,
    ) -> Result<RunList, ServiceError> {
        let by = caller.list_filter();
        let rows = self.db(move |l| l.list(state, by, limit)).await?;
        let mut names = HashMap::new();
        Ok(RunList {
            runs: rows
                .iter()
                .map(|r| {
                    let mut st = status_without_owner(r);
                    let uid = r.submitted_by.unwrap_or(0);
                    let name = names.entry(uid).or_insert_with(|| auth::name_of(uid));
                    st.owner = Some(RunOwner {
                        uid,
                        name: name.clone(),
                    });
                    st
                })
                .collect(),
        })
    }

    /// The "done" signal of an active run (`None` when the run is not active here).
    pub fn done_signal(&self, id: &str) -> Option<watch::Receiver<bool>> {
        self.lock().active.get(id).map(|a| a.done.subscribe())
    }

    /// `GET /runs/{id}/wait`: the status once final (true), or after `timeout` (false).
    pub async fn wait(
        &self,
        caller: &Caller,
        id: &str,
        timeout: Duration,
    ) -> Result<(bool, RunStatus), ServiceError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let rx = self.done_signal(id);
            let st = self.status(caller, id).await?;
            if st.state.is_final() {
                return Ok((true, st));
            }
            match rx {
                Some(mut rx) => {
                    let done = tokio::time::timeout_at(deadline, rx.wait_for(|d| *d))
                        .await
                        .is_ok_and(|r| r.is_ok());
                    if !done {
                        let st = self.status(caller, id).await?;
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

    fn users(&self) -> Vec<UserUsage> {
        self.lock()
            .adm
            .by_user()
            .into_iter()
            .map(|(uid, running, queued, need)| UserUsage {
                uid,
                running,
                queued,
                memory_reserved_bytes: need.memory,
                cpus_reserved: need.cpus(),
            })
            .collect()
    }

    fn budget_status(&self) -> BudgetStatus {
        let (b, reserved, caps) = {
            let g = self.lock();
            (*g.adm.budget(), g.adm.reserved(), g.adm.user_caps())
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
            user_max_running: caps.max_running,
            user_memory_bytes: caps.memory,
            user_cpus: caps.cpus,
            io: self.tree.io_budget(),
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
            users: self.users(),
            executor: self.executor.slurm().map(|x| ExecutorStatus {
                kind: "slurm".into(),
                budget_applies: false,
                partition: x.cfg.partition.clone(),
                account: x.cfg.account.clone(),
                spool: x.cfg.spool.display().to_string(),
                note: "Runs execute as Slurm batch jobs: Slurm decides when each starts, so \
                       the service budget does not apply to them."
                    .into(),
            }),
        }
    }

    /// What `GET /metrics` shows.
    pub async fn snapshot(&self) -> Result<Snapshot, ServiceError> {
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
            users: self.users(),
        })
    }
}

/// A ledger row as the API shows it, with its owner (the submitter's uid and name).
pub fn status_of(row: &Row) -> RunStatus {
    let mut st = status_without_owner(row);
    let uid = row.submitted_by.unwrap_or(0);
    st.owner = Some(RunOwner {
        uid,
        name: auth::name_of(uid),
    });
    st
}

fn status_without_owner(row: &Row) -> RunStatus {
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
    let request = serde_json::from_str::<SubmitRequest>(&row.request).ok();
    RunStatus {
        id: row.id.clone(),
        state: row.state,
        submitted_at: row.submitted_at.clone(),
        started_at: row.started_at.clone(),
        priority: row.priority,
        owner: None,
        record,
        slurm_job_id: row.slurm_job().map(str::to_string),
        profile: request
            .as_ref()
            .map(|r| r.profile.clone().unwrap_or_else(|| "default".into())),
        command: request.map(|r| r.command),
        live: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::testing::{block_on, finish, insert, test_service};

    #[test]
    fn status_list_wait_and_health() {
        let t = test_service(|_| {});
        insert(&t.svc, "a");
        insert(&t.svc, "b");
        finish(&t.svc, "b");
        let svc = t.svc.clone();
        let root = Caller::root();
        block_on(async move {
            assert!(matches!(
                svc.status(&root, "zz").await,
                Err(ServiceError::NotFound(_))
            ));
            let ids = |l: RunList| l.runs.into_iter().map(|r| r.id).collect::<Vec<_>>();
            assert_eq!(ids(svc.list(&root, None, 10).await.unwrap()), ["a", "b"]);
            assert_eq!(
                ids(svc.list(&root, Some(RunState::Done), 10).await.unwrap()),
                ["b"]
            );
            let (done, st) = svc.wait(&root, "b", Duration::ZERO).await.unwrap();
            assert!(done && st.record.is_some());
            let (done, st) = svc
                .wait(&root, "a", Duration::from_millis(30))
                .await
                .unwrap();
            assert!(!done && st.state == RunState::Queued);
            // A queued run has no record yet, but says what it will run.
            assert!(st.record.is_none());
            assert_eq!(st.command.as_deref(), Some(&["true".to_string()][..]));
            let h = svc.health();
            assert_eq!((h.status.as_str(), h.backend.as_str()), ("ok", "cgroup1"));
            assert_eq!(h.cgroup_root, "fake");
            let snap = svc.snapshot().await.unwrap();
            assert!(snap.by_state.contains(&("done".to_string(), 1)));
        });
    }
}
