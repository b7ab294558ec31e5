//! Throughput: K concurrent streams of short runs (`/bin/true`) for T seconds.
//!
//! Library: K tokio tasks on a 2-worker runtime, each running `corral_run::run` in a
//! loop. Baseline: K threads each spawning `/bin/true` with `std::process::Command`.
//! The service (`corral serve`) does not exist on this branch yet: its row is a
//! clearly marked hook, [`service_throughput`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use corral_record::Reason;
use serde_json::json;

use crate::ctx::Ctx;
use crate::launch::{bare_true, true_spec};
use crate::report::{Report, Row};

fn bare_rate(k: usize, secs: f64) -> Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let end = t + Duration::from_secs_f64(secs);
    let hs: Vec<_> = (0..k)
        .map(|_| {
            let done = done.clone();
            std::thread::spawn(move || -> Result<()> {
                while Instant::now() < end {
                    bare_true()?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    for h in hs {
        h.join().map_err(|_| anyhow::anyhow!("thread panicked"))??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64())
}

fn corral_rate(ctx: &Ctx, k: usize, secs: f64) -> Result<f64> {
    let backend = ctx.backend.clone();
    ctx.rt.block_on(ctx.rt.spawn(async move {
        let t = Instant::now();
        let end = t + Duration::from_secs_f64(secs);
        let mut hs = Vec::new();
        for _ in 0..k {
            let b = backend.clone();
            hs.push(tokio::spawn(async move {
                let (_tx, rx) = tokio::sync::watch::channel(None);
                let mut n = 0u64;
                while Instant::now() < end {
                    let r =
                        corral_run::run(b.as_ref(), true_spec(&["/bin/true"]), rx.clone()).await?;
                    if r.outcome.reason != Reason::Exited || r.outcome.exit_code != 0 {
                        bail!("a run of /bin/true did not exit 0: {}", r.notes);
                    }
                    n += 1;
                }
                Ok::<u64, anyhow::Error>(n)
            }));
        }
        let mut total = 0;
        for h in hs {
            total += h.await??;
        }
        Ok(total as f64 / t.elapsed().as_secs_f64())
    }))?
}

/// HOOK for the service (issue #5, item 3): once `corral serve` exists, submit K
/// concurrent runs of `true` through its API for T seconds and return runs/s. Until
/// then it says why it cannot run.
pub fn service_throughput(_ctx: &Ctx, _k: usize, _secs: f64) -> Result<f64, String> {
    Err(
        "HOOK: the corral service does not exist on this branch yet \
         (crates/corral-bench/src/throughput.rs: service_throughput)"
            .into(),
    )
}

/// `throughput`.
pub fn throughput(ctx: &Ctx) -> Result<Report> {
    let host = crate::host::Host::detect();
    let secs = ctx.opts.seconds;
    let mut rows = Vec::new();
    // Warm-up: a few runs each way.
    corral_rate(ctx, 1, 0.2)?;
    bare_rate(1, 0.2)?;
    for &k in &ctx.opts.concurrency {
        let bare = bare_rate(k, secs)?;
        let corral = corral_rate(ctx, k, secs)?;
        let b = Row::single(
            &format!("bare, K={k}"),
            format!("{k} threads × Command::new(\"/bin/true\").status() for {secs} s"),
            "runs/s",
            bare,
        );
        let mut c = Row::single(
            &format!("corral_run::run, K={k}"),
            format!(
                "{k} tokio tasks (2 workers) × run(/bin/true, memory 1 GiB, swap 0, pids 512) \
                 for {secs} s, backend {}",
                ctx.kind.as_str()
            ),
            "runs/s",
            corral,
        );
        c.ratio_to(&b, "corral/bare");
        rows.push(b);
        rows.push(c);
        match service_throughput(ctx, k, secs) {
            Ok(v) => rows.push(Row::single(
                &format!("corral service, K={k}"),
                "service".into(),
                "runs/s",
                v,
            )),
            Err(why) => rows.push(Row::skipped(
                &format!("corral service, K={k}"),
                "corral serve".into(),
                why,
            )),
        }
    }
    Ok(Report {
        name: "throughput".into(),
        host: host.finish(),
        backend: ctx.kind.as_str().into(),
        backend_reason: ctx.backend.reason(),
        settings: json!({"seconds": secs, "concurrency": ctx.opts.concurrency}),
        rows,
        notes: vec![
            "One measurement per K (a rate over the whole window, not per-run samples); \
             the bare and corral windows alternate per K on the same host."
                .into(),
        ],
    })
}
