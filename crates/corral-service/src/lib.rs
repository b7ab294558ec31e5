//! `corral serve`: many analyses, one budget.
//!
//! The service accepts runs over an HTTP/JSON API (on a Unix socket or a loopback TCP
//! port), keeps every submission and result record in a SQLite ledger, and starts each
//! run through the same library call as `corral run` ([`corral_run::run()`]) once its
//! memory and CPU reservation fits the service budget. All runs live under one parent
//! cgroup whose own limits are that budget, so even runs that each stay inside their
//! limits cannot starve the host; the service itself sits in a sibling leaf cgroup.
//!
//! * [`wire`]: the JSON bodies (the contract with clients);
//! * [`config`]: flags, defaults and addresses;
//! * [`cgroups`]: the service's cgroup tree (supervisor, runs + budget), reaping;
//! * [`admission`]: reservations, the priority/FIFO queue;
//! * [`ledger`]: SQLite storage, schema migrations;
//! * [`service`]: the core, one concern per file (lifecycle, recovery, retention,
//!   validation, made-up records, queries) and its typed [`service::ServiceError`];
//! * [`http`]: the axum router and `openapi.json`; the only place errors become status
//!   codes;
//! * [`metrics`]: the Prometheus text;
//! * [`slurm`]: the Slurm executor's jobs, commands, parsing and poller;
//! * [`client`]: a small blocking HTTP/1.1 client for the `corral` commands and tests.

pub mod admission;
pub mod cgroups;
pub mod client;
pub mod config;
pub mod http;
pub mod ledger;
pub mod metrics;
pub mod service;
pub mod slurm;
pub mod wire;

use std::error::Error as StdError;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use corral_spec::{format_bytes, ProfileSet};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

pub use config::{Addr, ServeConfig};

use crate::cgroups::{BudgetLimits, ServiceTree};
use crate::config::BudgetError;
use crate::ledger::{Ledger, LedgerError};
use crate::service::{Parts, Service, ServiceError};

/// Which step of setting up the service's cgroup tree failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TreeStage {
    /// Finding or making the service root and its `supervisor` and `runs` groups.
    Prepare,
    /// Checking that no live service owns the tree.
    Owner,
    /// Writing the budget on `runs`.
    Budget,
    /// Setting up the backend under `runs`.
    Backend,
}

/// Why `corral serve` could not start or keep serving. Each message is the one
/// sentence the user reads (exit 125), its cause included; the cause is also kept
/// typed in a field. They are not chained as `source()`, so a printer that walks the
/// chain (`anyhow`'s `{:#}`) does not repeat them.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The budget flags do not make a budget.
    #[error("{0}")]
    Budget(BudgetError),
    /// The disk budget's devices cannot be found (`--budget-io-device`).
    #[error("{0}")]
    IoBudget(String),
    /// `--listen` names a TCP address that is not loopback.
    #[error(
        "refusing to listen on {0}: anyone who can reach the service can run commands as \
         its user; listen on a Unix socket or a loopback address (127.0.0.1:PORT)"
    )]
    NotLoopback(std::net::SocketAddr),
    /// TCP without `--token-file`: no TCP caller could be identified.
    #[error(
        "refusing to listen on {0} without --token-file: a TCP caller can only be told \
         apart by its bearer token (or listen on a Unix socket, where the kernel says who \
         calls)"
    )]
    TcpWithoutTokens(std::net::SocketAddr),
    /// The token file cannot be used.
    #[error("{0}")]
    Tokens(crate::service::auth::TokenError),
    /// Another service answers on the socket.
    #[error("another service is already listening on {}", .0.display())]
    SocketInUse(PathBuf),
    /// A stale socket file cannot be removed.
    #[error("cannot remove the stale socket {}: {err}", path.display())]
    StaleSocket {
        /// The socket file.
        path: PathBuf,
        /// Why.
        err: std::io::Error,
    },
    /// The socket's directory cannot be created.
    #[error("cannot create {}: {err}", path.display())]
    SocketDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        err: std::io::Error,
    },
    /// The ledger cannot be opened.
    #[error("{0}")]
    Ledger(LedgerError),
    /// The profile files cannot be read.
    #[error("{0}")]
    Profiles(corral_spec::SpecError),
    /// The cgroup tree cannot be set up.
    #[error("{err}")]
    Tree {
        /// The step that failed.
        stage: TreeStage,
        /// Why.
        err: Box<dyn StdError + Send + Sync>,
    },
    /// The core failed to start (output directory, recovery).
    #[error("{0}")]
    Service(ServiceError),
    /// The async runtime cannot be built.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    /// The signal handlers cannot be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// The listening socket cannot be bound.
    #[error("cannot listen on {addr}: {err}")]
    Listen {
        /// The address.
        addr: Addr,
        /// Why.
        err: std::io::Error,
    },
}

/// Wraps whatever error a step of the cgroup tree returns (text or a typed error).
fn tree_err<E>(stage: TreeStage) -> impl Fn(E) -> ServeError
where
    E: Into<Box<dyn StdError + Send + Sync>>,
{
    move |e| ServeError::Tree {
        stage,
        err: e.into(),
    }
}

/// Runs the service until SIGTERM, SIGINT or SIGHUP, then drains it and returns. Errors are
/// one sentence for the user (exit 125).
pub fn serve(cfg: ServeConfig) -> Result<(), ServeError> {
    let budget = cfg.budget().map_err(ServeError::Budget)?;
    if let config::ExecutorConfig::Slurm(_) = &cfg.executor {
        slurm::check_commands().map_err(|e| ServeError::Service(ServiceError::Executor(e)))?;
    }
    if let Addr::Tcp(a) = &cfg.listen {
        if !a.ip().is_loopback() {
            return Err(ServeError::NotLoopback(*a));
        }
        if cfg.token_file.is_none() {
            return Err(ServeError::TcpWithoutTokens(*a));
        }
    }
    let tokens = match &cfg.token_file {
        Some(p) => crate::service::auth::Tokens::load(p).map_err(ServeError::Tokens)?,
        None => Default::default(),
    };
    if let Addr::Unix(p) = &cfg.listen {
        check_socket_free(p)?;
    }
    let ledger = Ledger::open(&cfg.ledger).map_err(ServeError::Ledger)?;
    let tree = Arc::new(
        ServiceTree::prepare(cfg.backend, cfg.cgroup_root.as_deref())
            .map_err(tree_err(TreeStage::Prepare))?,
    );
    let started = (|| {
        tree.check_no_live_owner()
            .map_err(tree_err(TreeStage::Owner))?;
        let reaped = tree.reap_strays();
        // What runs of a dead instance left of `--disk` (their cgroups are gone now).
        for q in corral_run::quota::reap_leftovers() {
            match q.result {
                Ok(()) => tracing::warn!(
                    "restored {} (project quota {}) left by a run of a dead instance",
                    q.path.display(),
                    q.projid
                ),
                Err(e) => tracing::warn!(
                    "cannot reap the project quota {} of {}: {e}",
                    q.projid,
                    q.path.display()
                ),
            }
        }
        tree.apply_budget(&BudgetLimits {
            memory: budget.memory,
            cpus: budget.cpus,
            pids: budget.pids,
            swap: budget.swap,
        })
        .map_err(tree_err(TreeStage::Budget))?;
        if cfg.budget_io.is_set() {
            let set = io_budget_set(&cfg.budget_io, &cfg.ledger).map_err(ServeError::IoBudget)?;
            tree.apply_io_budget(&set)
                .map_err(tree_err(TreeStage::Budget))?;
        }
        let backend = tree.backend().map_err(tree_err(TreeStage::Backend))?;
        let profiles = ProfileSet::load_default().map_err(ServeError::Profiles)?;
        Ok::<_, ServeError>((reaped, backend, profiles))
    })();
    let (reaped, backend, profiles) = match started {
        Ok(v) => v,
        Err(e) => {
            tree.remove();
            return Err(e);
        }
    };
    let parts = Parts {
        ledger,
        tree: tree.clone(),
        backend,
        budget,
        profiles,
        reaped,
        tokens,
    };
    let svc = Service::new(parts, &cfg).map_err(ServeError::Service)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads((budget.max_running + 2).clamp(4, 64))
        .thread_name("corral-serve")
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?;
    let result = rt.block_on(run_server(svc, cfg.listen.clone()));
    rt.shutdown_timeout(Duration::from_secs(2));
    // After a drain no run is left; after an early error none was started.
    tree.remove();
    result
}

fn check_socket_free(p: &Path) -> Result<(), ServeError> {
    if p.exists() {
        if std::os::unix::net::UnixStream::connect(p).is_ok() {
            return Err(ServeError::SocketInUse(p.to_path_buf()));
        }
        std::fs::remove_file(p).map_err(|err| ServeError::StaleSocket {
            path: p.to_path_buf(),
            err,
        })?;
    }
    if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|err| ServeError::SocketDir {
            path: dir.to_path_buf(),
            err,
        })?;
    }
    Ok(())
}

async fn run_server(svc: Arc<Service>, listen: Addr) -> Result<(), ServeError> {
    let app = http::router(svc.clone());
    let mut term = signal(SignalKind::terminate()).map_err(ServeError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ServeError::Signals)?;
    let mut hup = signal(SignalKind::hangup()).map_err(ServeError::Signals)?;
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let shutdown = async move {
        let _ = stop_rx.wait_for(|v| *v).await;
    };
    let mut server = match &listen {
        Addr::Unix(p) => {
            let l = tokio::net::UnixListener::bind(p).map_err(|err| ServeError::Listen {
                addr: listen.clone(),
                err,
            })?;
            // Every local user may connect: the kernel tells who each caller is
            // (SO_PEERCRED), their runs execute as them and they see only their own.
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o666));
            let app = app.into_make_service_with_connect_info::<http::Peer>();
            tokio::spawn(async move { axum::serve(l, app).with_graceful_shutdown(shutdown).await })
        }
        Addr::Tcp(a) => {
            let l = tokio::net::TcpListener::bind(a)
                .await
                .map_err(|err| ServeError::Listen {
                    addr: listen.clone(),
                    err,
                })?;
            let app = app.into_make_service_with_connect_info::<http::Peer>();
            tokio::spawn(async move { axum::serve(l, app).with_graceful_shutdown(shutdown).await })
        }
    };
    svc.pump();
    if let Some(keep) = svc.keep_output() {
        // At start, then often enough that nothing stays much longer than asked.
        let every = (keep / 2).clamp(Duration::from_secs(1), Duration::from_secs(3600));
        let s = svc.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let s = s.clone();
                let _ = tokio::task::spawn_blocking(move || s.prune_outputs()).await;
            }
        });
    }
    let h = svc.health();
    eprintln!(
        "corral serve: listening on {listen} (pid {}); backend {} at {}; budget {}, {} CPUs, \
         {} tasks, swap {}, {} runs at once; ledger {}; {} queued",
        h.pid,
        h.backend,
        h.cgroup_root,
        format_bytes(h.budget.memory_bytes),
        h.budget.cpus,
        h.budget.pids,
        h.budget
            .swap_bytes
            .map_or_else(|| "uncapped".to_string(), format_bytes),
        h.budget.max_running,
        h.ledger,
        h.queued
    );
    if let Some(x) = &h.executor {
        eprintln!(
            "corral serve: executor {} (partition {}, spool {}): {}",
            x.kind,
            x.partition.as_deref().unwrap_or("default"),
            x.spool,
            x.note
        );
    }
    let sig = tokio::select! {
        _ = term.recv() => libc::SIGTERM,
        _ = int.recv() => libc::SIGINT,
        _ = hup.recv() => libc::SIGHUP,
    };
    eprintln!(
        "corral serve: {} received: draining ({} running, {} queued stay queued)",
        corral_record::signal_name(sig),
        svc.health().running,
        svc.health().queued
    );
    let hurry = async {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = hup.recv() => {}
        }
    };
    svc.drain(sig, hurry).await;
    let _ = stop_tx.send(true);
    if tokio::time::timeout(Duration::from_secs(2), &mut server)
        .await
        .is_err()
    {
        server.abort();
    }
    if let Addr::Unix(p) = &listen {
        let _ = std::fs::remove_file(p);
    }
    eprintln!("corral serve: stopped");
    Ok(())
}

/// The caps of `--budget-io-*` on their disks: the `--budget-io-device` ones, else
/// the disks of the ledger's directory.
fn io_budget_set(
    b: &config::BudgetIo,
    ledger: &std::path::Path,
) -> Result<corral_cgroup::io::IoSet, String> {
    let sys = std::path::Path::new("/sys");
    let mut disks = Vec::new();
    if b.devices.is_empty() {
        let dir = ledger
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        disks = corral_run::disk::disks_of_path(sys, dir)
            .map_err(|e| format!("--budget-io-*: {e}; name the disks with --budget-io-device"))?;
    }
    for d in &b.devices {
        disks.extend(corral_run::disk::disks_of_device(sys, d).map_err(|e| e.to_string())?);
    }
    disks.sort();
    disks.dedup();
    Ok(corral_cgroup::io::IoSet {
        devices: disks,
        read_bps: b.read_bps,
        write_bps: b.write_bps,
        read_iops: b.read_iops,
        write_iops: b.write_iops,
        weight: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error;

    #[test]
    fn socket_checks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a").join("s.sock");
        check_socket_free(&p).unwrap();
        assert!(
            p.parent().unwrap().is_dir(),
            "the socket's directory is made"
        );
        let l = std::os::unix::net::UnixListener::bind(&p).unwrap();
        let e = check_socket_free(&p).unwrap_err();
        assert!(matches!(&e, ServeError::SocketInUse(q) if q == &p), "{e}");
        assert_eq!(
            e.to_string(),
            format!("another service is already listening on {}", p.display())
        );
        drop(l);
        // A socket nobody listens on is stale and removed.
        check_socket_free(&p).unwrap();
        assert!(!p.exists());
    }

    /// Each message already holds its cause, so the chain stops at the top: `corral`
    /// prints errors with `{:#}`, which would repeat a chained cause.
    #[test]
    fn serve_errors_carry_their_cause_once() {
        let io = || std::io::Error::from_raw_os_error(libc::EACCES);
        let e = ServeError::SocketDir {
            path: "/x".into(),
            err: io(),
        };
        assert_eq!(
            e.to_string(),
            format!(
                "cannot create /x: {}",
                std::io::Error::from_raw_os_error(13)
            )
        );
        assert!(e.source().is_none());
        let e = ServeError::Tree {
            stage: TreeStage::Budget,
            err: "cannot write memory.limit_in_bytes".into(),
        };
        assert_eq!(e.to_string(), "cannot write memory.limit_in_bytes");
        assert!(e.source().is_none());
        let e = ServeError::NotLoopback("0.0.0.0:80".parse().unwrap());
        assert!(e
            .to_string()
            .starts_with("refusing to listen on 0.0.0.0:80: anyone who can reach"));
        let mut cfg = ServeConfig::new(Addr::Unix("s".into()), "l".into());
        cfg.budget_pids = Some(0);
        assert!(matches!(
            serve(cfg),
            Err(ServeError::Budget(BudgetError::PidsTooSmall))
        ));
    }
}
