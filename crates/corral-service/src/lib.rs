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
//! * [`service`]: the core (submit, run, cancel, wait, recovery, drain);
//! * [`http`]: the axum router and `openapi.json`;
//! * [`metrics`]: the Prometheus text;
//! * [`client`]: a small blocking HTTP/1.1 client for the `corral` commands and tests.

pub mod admission;
pub mod cgroups;
pub mod client;
pub mod config;
pub mod http;
pub mod ledger;
pub mod metrics;
pub mod service;
pub mod wire;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use corral_spec::format_bytes;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

pub use config::{Addr, ServeConfig};

use crate::cgroups::{BudgetLimits, ServiceTree, TreeError};
use crate::ledger::Ledger;
use crate::service::Service;

/// Runs the service until SIGTERM, SIGINT or SIGHUP, then drains it and returns. Errors are
/// one sentence for the user (exit 125).
pub fn serve(cfg: ServeConfig) -> Result<(), String> {
    let budget = cfg.budget()?;
    if let Addr::Tcp(a) = &cfg.listen {
        if !a.ip().is_loopback() {
            return Err(format!(
                "refusing to listen on {a}: anyone who can reach the service can run commands \
                 as its user; listen on a Unix socket or a loopback address (127.0.0.1:PORT)"
            ));
        }
    }
    if let Addr::Unix(p) = &cfg.listen {
        check_socket_free(p)?;
    }
    let ledger = Ledger::open(&cfg.ledger).map_err(|e| e.to_string())?;
    let tree =
        ServiceTree::prepare(cfg.backend, cfg.cgroup_root.as_deref()).map_err(|e| e.to_string())?;
    let started = (|| {
        tree.check_no_live_owner()?;
        let reaped = tree.reap_strays();
        tree.apply_budget(&BudgetLimits {
            memory: budget.memory,
            cpus: budget.cpus,
            pids: budget.pids,
            swap: budget.swap,
        })?;
        let backend = tree.backend()?;
        Ok::<_, TreeError>((reaped, backend))
    })();
    let (reaped, backend) = match started {
        Ok(v) => v,
        Err(e) => {
            tree.remove();
            return Err(e.to_string());
        }
    };
    let svc = Service::new(ledger, tree, backend, budget, reaped, &cfg)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads((budget.max_running + 2).clamp(4, 64))
        .thread_name("corral-serve")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let result = rt.block_on(run_server(svc.clone(), cfg.listen.clone()));
    rt.shutdown_timeout(Duration::from_secs(2));
    // After a drain no run is left; after an early error none was started.
    svc.tree().remove();
    result
}

fn check_socket_free(p: &Path) -> Result<(), String> {
    if p.exists() {
        if std::os::unix::net::UnixStream::connect(p).is_ok() {
            return Err(format!(
                "another service is already listening on {}",
                p.display()
            ));
        }
        std::fs::remove_file(p)
            .map_err(|e| format!("cannot remove the stale socket {}: {e}", p.display()))?;
    }
    if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    Ok(())
}

async fn run_server(svc: Arc<Service>, listen: Addr) -> Result<(), String> {
    let app = http::router(svc.clone());
    let sig_err = |e: std::io::Error| format!("cannot install signal handlers: {e}");
    let mut term = signal(SignalKind::terminate()).map_err(sig_err)?;
    let mut int = signal(SignalKind::interrupt()).map_err(sig_err)?;
    let mut hup = signal(SignalKind::hangup()).map_err(sig_err)?;
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let shutdown = async move {
        let _ = stop_rx.wait_for(|v| *v).await;
    };
    let mut server = match &listen {
        Addr::Unix(p) => {
            let l = tokio::net::UnixListener::bind(p)
                .map_err(|e| format!("cannot listen on {}: {e}", p.display()))?;
            // Whoever may connect may run commands as the service: root and its group.
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o660));
            tokio::spawn(async move { axum::serve(l, app).with_graceful_shutdown(shutdown).await })
        }
        Addr::Tcp(a) => {
            let l = tokio::net::TcpListener::bind(a)
                .await
                .map_err(|e| format!("cannot listen on {a}: {e}"))?;
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
