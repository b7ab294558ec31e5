//! Fakes for the unit tests of the core: a backend that plans but never creates, a
//! tree that owns no cgroup, and a service over a ledger in a temporary directory.
//! Nothing here needs root.

use std::path::PathBuf;
use std::sync::Arc;

use corral_run::backend::{BackendError, BackendKind, Plan};
use corral_run::{Backend, Sandbox};
use corral_spec::{builtin_profiles, Limits};

use crate::admission::Budget;
use crate::cgroups::{Reaped, TreeUsage};
use crate::config::{Addr, ServeConfig};
use crate::ledger::{Ledger, NewRun};
use crate::service::records::Never;
use crate::service::{Job, Parts, RunsTree, Service, ServiceError};
use crate::wire::{RunState, SubmitRequest};

/// A cgroup1 backend that enforces everything asked and never creates a sandbox.
pub struct FakeBackend;

impl Backend for FakeBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Cgroup1
    }
    fn reason(&self) -> String {
        "a fake backend for unit tests".into()
    }
    fn plan(&self, limits: &Limits) -> Plan {
        Plan::everything(limits)
    }
    fn create(&self, name: &str, _: &Limits) -> Result<Box<dyn Sandbox>, BackendError> {
        panic!("the fake backend never creates a sandbox (asked for {name})")
    }
}

/// A tree whose runs directory is a plain directory.
pub struct FakeTree {
    runs: PathBuf,
}

impl RunsTree for FakeTree {
    fn root_display(&self) -> String {
        "fake".into()
    }
    fn runs_dirs(&self) -> Vec<PathBuf> {
        vec![self.runs.clone()]
    }
    fn usage(&self) -> TreeUsage {
        TreeUsage::default()
    }
}

/// A budget of 1 GiB and 2 CPUs in which nothing starts (`max_running` 0), so runs
/// stay queued and the fake backend is never asked to create one.
pub fn budget() -> Budget {
    Budget {
        memory: 1 << 30,
        cpus: 2.0,
        pids: 100,
        swap: Some(0),
        max_running: 0,
    }
}

/// A service and the temporary directory of its ledger.
pub struct TestService {
    /// The service.
    pub svc: Arc<Service>,
    /// Holds `ledger.db`, `output/` and `runs/`.
    pub dir: tempfile::TempDir,
}

/// Starts a service over `ledger` (in `dir`) as a restart would, after `reaped`.
pub fn start(
    dir: tempfile::TempDir,
    ledger: Ledger,
    reaped: Vec<Reaped>,
    budget: Budget,
    cfg: impl FnOnce(&mut ServeConfig),
) -> Result<TestService, ServiceError> {
    let mut c = ServeConfig::new(
        Addr::Unix(dir.path().join("sock")),
        dir.path().join("ledger.db"),
    );
    cfg(&mut c);
    let parts = Parts {
        ledger,
        tree: Arc::new(FakeTree {
            runs: dir.path().join("runs"),
        }),
        backend: Box::new(FakeBackend),
        budget,
        profiles: builtin_profiles(),
        reaped,
        tokens: Default::default(),
    };
    let svc = Service::new(parts, &c)?;
    Ok(TestService { svc, dir })
}

/// A service over an empty ledger in a new temporary directory.
pub fn test_service(cfg: impl FnOnce(&mut ServeConfig)) -> TestService {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(&dir.path().join("ledger.db")).unwrap();
    start(dir, ledger, Vec::new(), budget(), cfg).unwrap()
}

/// A job with 1 MiB of memory, 0.1 CPUs and no swap.
pub fn job(id: &str) -> Job {
    job_with(id, 1 << 20)
}

fn job_with(id: &str, memory: u64) -> Job {
    Job {
        id: id.into(),
        request: SubmitRequest {
            command: vec!["true".into()],
            ..SubmitRequest::default()
        },
        profile: "default".into(),
        limits: Limits {
            memory: Some(memory),
            cpus: Some(0.1),
            swap: Some(0),
            ..Limits::default()
        },
        submitted_at: "2026-01-01T00:00:00.000Z".into(),
        submitted_by: 0,
    }
}

/// Stores a queued run with `memory` straight into a ledger (as an earlier instance
/// would have).
pub fn insert_into(ledger: &Ledger, id: &str, priority: i64, memory: u64) {
    let j = job_with(id, memory);
    ledger
        .insert(&NewRun {
            id: j.id.clone(),
            idempotency_key: None,
            priority,
            request: serde_json::to_string(&j.request).unwrap(),
            profile: j.profile.clone(),
            limits: serde_json::to_string(&j.limits).unwrap(),
            submitted_at: j.submitted_at.clone(),
            submitted_by: j.submitted_by,
        })
        .unwrap();
}

/// Stores a queued run in the service's ledger (not in its queue).
pub fn insert(svc: &Service, id: &str) {
    insert_into(&svc.ledger, id, 0, 1 << 20);
}

/// Records a run of the service's ledger as done (cancelled while queued).
pub fn finish(svc: &Service, id: &str) {
    let rec = svc.synth(&job(id), Never::Cancelled { started_at: None });
    svc.ledger.finish(id, RunState::Done, &rec).unwrap();
}

/// Runs a future on a current-thread runtime.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}
