//! Throughput: K concurrent streams of short runs (`/bin/true`) for T seconds.
//!
//! Library: K tokio tasks on a 2-worker runtime, each running `corral_run::run` in a
//! loop. Baseline: K threads each spawning `/bin/true` with `std::process::Command`.
//! Service: K client threads submitting `/bin/true` to a private `corral serve` and
//! waiting for each record ([`service_throughput`]).

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

/// The service (issue #5, item 3): starts `corral serve` on a private socket, ledger
/// and cgroup root (budget 2 CPUs, `--max-running K`), then K client threads each
/// submit `/bin/true` (64 MiB, 0.1 CPU) and wait for its record, for T seconds.
/// Returns completed runs per second.
pub fn service_throughput(ctx: &Ctx, k: usize, secs: f64) -> Result<f64, String> {
    use corral_service::client::Client;
    use corral_service::wire::SubmitRequest;
    let root = ctx
        .root_arg
        .as_ref()
        .ok_or("the service needs a cgroup backend (not rlimit)")?;
    let corral = ctx.corral.clone()?;
    let dir = ctx.tmp.join(format!("svc-{k}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let sock = dir.join("corral.sock");
    let mut child = std::process::Command::new(&corral)
        .arg("serve")
        .arg("--listen")
        .arg(&sock)
        .arg("--ledger")
        .arg(dir.join("ledger.db"))
        .args([
            "--backend",
            ctx.kind.as_str(),
            "--cgroup-root",
            &format!("{root}-svc"),
        ])
        .args([
            "--budget-cpus",
            "2",
            "--budget-memory",
            "2G",
            "--max-running",
            &k.to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("starting corral serve: {e}"))?;
    let client = Client::new(corral_service::Addr::Unix(sock.clone()));
    let up = Instant::now();
    while client.health().is_err() {
        if up.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            return Err("corral serve did not come up within 20 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let req: SubmitRequest = serde_json::from_value(json!({
        "command": ["/bin/true"],
        "limits": {"memory": "64M", "cpus": 0.1, "pids": 64},
    }))
    .map_err(|e| e.to_string())?;
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let end = t + Duration::from_secs_f64(secs);
    let hs: Vec<_> = (0..k)
        .map(|_| {
            let (done, failed, req) = (done.clone(), failed.clone(), req.clone());
            let client = Client::new(corral_service::Addr::Unix(sock.clone()));
            std::thread::spawn(move || {
                while Instant::now() < end {
                    let ok = client
                        .submit(&req)
                        .ok()
                        .and_then(|(_, r)| client.wait_done(&r.id).ok())
                        .and_then(|st| st.record)
                        .is_some_and(|r| r.outcome.reason == Reason::Exited);
                    if ok {
                        done.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for h in hs {
        let _ = h.join();
    }
    let elapsed = t.elapsed().as_secs_f64();
    if let Some(p) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
    }
    let _ = crate::procs::wait_limited(&mut child, Duration::from_secs(30));
    let _ = std::fs::remove_dir_all(&dir);
    let failed = failed.load(Ordering::Relaxed);
    if failed > 0 {
        return Err(format!(
            "{failed} runs through the service did not exit cleanly"
        ));
    }
    Ok(done.load(Ordering::Relaxed) as f64 / elapsed)
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
        let svc = service_throughput(ctx, k, secs);
        let svc_row = match svc {
            Ok(v) => {
                let mut r = Row::single(
                    &format!("corral service, K={k}"),
                    format!(
                        "corral serve --max-running {k} --budget-cpus 2 --budget-memory 2G; {k} client \
                         threads × (POST /runs /bin/true with memory 64M, cpus 0.1, pids 64; wait for \
                         the record) for {secs} s, backend {}",
                        ctx.kind.as_str()
                    ),
                    "runs/s",
                    v,
                );
                r.ratio_to(&b, "service/bare");
                r
            }
            Err(why) => Row::skipped(
                &format!("corral service, K={k}"),
                "corral serve".into(),
                why,
            ),
        };
        rows.extend([b, c, svc_row]);
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
