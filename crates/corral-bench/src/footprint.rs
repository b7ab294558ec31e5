//! Footprint: corral's own memory and CPU while it supervises idle runs.
//!
//! Library: a fresh `corral-bench __footprint-lib N` process (a 2-worker tokio
//! runtime, the backend, the crash guard, N runs of `sleep 60`, nothing else) is
//! measured from outside: VmRSS/VmHWM, and CPU time and context switches summed over
//! its threads during an idle window. CLI: one `corral run -- sleep 60` process, the
//! same way. The crash guard (`corral-guard`/`corral __guard`) is a separate process; its RSS is
//! reported on its own row.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use corral_record::Reason;
use serde_json::json;

use crate::ctx::{Ctx, Opts, CORRAL_LIMIT_FLAGS};
use crate::procs::{children, cpu_sample, descendants_named, status_kib, wait_limited};
use crate::report::{Report, Row};

struct Measured {
    rss_kib: u64,
    hwm_kib: u64,
    cpu_ms: f64,
    switches_per_s: f64,
    threads: usize,
    guard_rss_kib: Option<u64>,
}

fn settle() -> Duration {
    if std::env::var_os("CORRAL_IN_VM").is_some() {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(1)
    }
}

fn measure(pid: u32, window: f64) -> Result<Measured> {
    std::thread::sleep(settle());
    let a = cpu_sample(pid);
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(window));
    let b = cpu_sample(pid);
    let secs = t.elapsed().as_secs_f64();
    let guard = children(pid)
        .into_iter()
        .find(|(_, comm)| comm == "corral" || comm == "corral-guard")
        .and_then(|(g, _)| status_kib(g, "VmRSS"));
    Ok(Measured {
        rss_kib: status_kib(pid, "VmRSS").ok_or_else(|| anyhow!("no VmRSS for {pid}"))?,
        hwm_kib: status_kib(pid, "VmHWM").unwrap_or(0),
        cpu_ms: b.cpu_ns.saturating_sub(a.cpu_ns) as f64 / 1e6,
        switches_per_s: b.switches.saturating_sub(a.switches) as f64 / secs,
        threads: b.threads,
        guard_rss_kib: guard,
    })
}

fn rows_for(label: &str, config: &str, m: &Measured, window: f64) -> Vec<Row> {
    let mut v = vec![
        Row::single(
            &format!("{label}: VmRSS"),
            config.into(),
            "KiB",
            m.rss_kib as f64,
        ),
        Row::single(
            &format!("{label}: VmHWM"),
            config.into(),
            "KiB",
            m.hwm_kib as f64,
        ),
        Row::single(
            &format!("{label}: CPU over {window} s idle"),
            format!("{config}; {} threads", m.threads),
            "ms",
            m.cpu_ms,
        ),
        Row::single(
            &format!("{label}: context switches"),
            config.into(),
            "per s",
            m.switches_per_s,
        ),
    ];
    if let Some(g) = m.guard_rss_kib {
        v.push(Row::single(
            &format!("{label}: crash guard VmRSS"),
            "the crash guard (separate process, one per supervisor: forked as corral-guard by corral run, re-executed as corral __guard by library users)".into(),
            "KiB",
            g as f64,
        ));
    }
    v
}

fn library(ctx: &Ctx, n: usize) -> Result<Measured> {
    library_with(ctx, n, None)
}

/// [`library`], each run keeping a timeline read every `timeline` seconds.
fn library_with(ctx: &Ctx, n: usize, timeline: Option<f64>) -> Result<Measured> {
    let mut cmd = Command::new(&ctx.self_exe);
    cmd.args(["--backend", ctx.kind.as_str()]);
    if let Ok(c) = &ctx.corral {
        cmd.arg("--corral").arg(c);
    }
    if ctx.opts.no_guard {
        cmd.arg("--no-guard");
    }
    cmd.arg("__footprint-lib").arg(n.to_string());
    if let Some(s) = timeline {
        cmd.arg("--timeline").arg(s.to_string());
    }
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut child = cmd.spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
    if line.trim() != "ready" {
        let _ = child.kill();
        let _ = child.wait();
        bail!("__footprint-lib {n} did not get ready: {line:?}");
    }
    let m = measure(child.id(), ctx.opts.window);
    drop(child.stdin.take());
    let st = wait_limited(&mut child, ctx.cmd_limit())?;
    let m = m?;
    if !st.success() {
        bail!("__footprint-lib {n} failed: {st}");
    }
    Ok(m)
}

/// `corral run -q -- sleep 60`; with `live`, without `-q` on a pseudo-terminal
/// (`script(1)`), so it draws its live line once a second.
fn cli(ctx: &Ctx, live: bool) -> Result<Measured> {
    let mut cmd = ctx.corral_cmd(CORRAL_LIMIT_FLAGS).map_err(|e| anyhow!(e))?;
    cmd.args(["--", "/bin/sleep", "60"]);
    if live {
        let quote =
            |s: &std::ffi::OsStr| format!("'{}'", s.to_string_lossy().replace('\'', r"'\''"));
        let mut line = quote(cmd.get_program());
        for a in cmd.get_args().filter(|a| *a != "-q") {
            line = line + " " + &quote(a);
        }
        cmd = Command::new("script");
        cmd.args(["-qfec", &line, "/dev/null"]).env("TERM", "xterm");
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::null());
    let mut child = cmd.spawn()?;
    let t = Instant::now();
    let mut pid = child.id();
    while live && pid == child.id() {
        match children(child.id())
            .into_iter()
            .find(|(_, c)| c == "corral")
        {
            Some((p, _)) => pid = p,
            None if t.elapsed() > Duration::from_secs(120) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("script(1) did not start corral");
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    while descendants_named(pid, "sleep") == 0 {
        if t.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            bail!("corral run -- sleep 60 did not start sleep");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let m = measure(pid, ctx.opts.window);
    // SIGTERM to our own child: corral ends the run (cancelled) and exits 143.
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
    }
    let st = wait_limited(&mut child, ctx.cmd_limit())?;
    let m = m?;
    if st.code() != Some(143) {
        bail!("corral run did not end with 143 after SIGTERM: {st}");
    }
    Ok(m)
}

/// `footprint`.
pub fn footprint(ctx: &Ctx) -> Result<Report> {
    let host = crate::host::Host::detect();
    let w = ctx.opts.window;
    let big = ctx.opts.idle_runs;
    let lib_cfg = |n: usize| {
        format!(
            "one process, tokio 2 workers, {n} × run(/bin/sleep 60, memory 1 GiB, swap 0, pids 512), backend {}",
            ctx.kind.as_str()
        )
    };
    let mut rows = Vec::new();
    let one = library(ctx, 1).context("library, 1 run")?;
    rows.extend(rows_for("library, 1 run", &lib_cfg(1), &one, w));
    let many = library(ctx, big).with_context(|| format!("library, {big} runs"))?;
    rows.extend(rows_for(
        &format!("library, {big} runs"),
        &lib_cfg(big),
        &many,
        w,
    ));
    if big > 1 {
        rows.push(Row::single(
            "library: RSS per extra run",
            format!("(RSS with {big} − RSS with 1) / {}", big - 1),
            "KiB",
            (many.rss_kib as f64 - one.rss_kib as f64) / (big - 1) as f64,
        ));
    }
    // The same idle runs, each keeping a timeline read once a second (the service's
    // setting): what the supervisor pays for the readings.
    match library_with(ctx, big, Some(1.0)) {
        Ok(m) => {
            let base = many.cpu_ms / w;
            let with = m.cpu_ms / w;
            rows.extend(rows_for(
                &format!("library, {big} runs, timeline 1 s"),
                &format!("{}, each keeping a timeline read every 1 s", lib_cfg(big)),
                &m,
                w,
            ));
            rows.push(Row::single(
                &format!("library: timeline's CPU for {big} runs"),
                format!(
                    "(CPU with timelines − CPU without) / window, in % of one CPU ({big} runs, 1 s)"
                ),
                "%",
                (with - base) / 10.0,
            ));
        }
        Err(e) => rows.push(Row::skipped(
            &format!("library, {big} runs, timeline 1 s"),
            lib_cfg(big),
            format!("{e:#}"),
        )),
    }
    match cli(ctx, false) {
        Ok(m) => rows.extend(rows_for(
            "corral run, 1 run",
            &format!(
                "corral run -q {} {} -- /bin/sleep 60",
                ctx.corral_flags_text(),
                CORRAL_LIMIT_FLAGS.join(" ")
            ),
            &m,
            w,
        )),
        Err(e) => rows.push(Row::skipped(
            "corral run, 1 run",
            "corral run -- sleep 60".into(),
            format!("{e:#}"),
        )),
    }
    match cli(ctx, true) {
        Ok(m) => rows.extend(rows_for(
            "corral run, live line",
            &format!(
                "corral run {} {} -- /bin/sleep 60 on a pseudo-terminal (script -qfec): the \
                 live line read from the cgroup and redrawn once a second",
                ctx.corral_flags_text(),
                CORRAL_LIMIT_FLAGS.join(" ")
            ),
            &m,
            w,
        )),
        Err(e) => rows.push(Row::skipped(
            "corral run, live line",
            "corral run -- sleep 60 under script(1)".into(),
            format!("{e:#}"),
        )),
    }
    Ok(Report {
        name: "footprint".into(),
        host: host.finish(),
        backend: ctx.kind.as_str().into(),
        backend_reason: ctx.backend.reason(),
        settings: json!({"window_s": w, "idle_runs": [1, big], "settle_s": settle().as_secs_f64()}),
        rows,
        notes: vec![format!(
            "Measured from outside after the runs were up and a settle time: VmRSS/VmHWM \
             from /proc/PID/status; CPU = Σ over threads of /proc/PID/task/*/schedstat \
             during a {w} s window; context switches (voluntary + involuntary) per second \
             over the same window show whether anything wakes up (no polling: ~0). Target \
             (issue #5): ≤ 10 MiB RSS, ~0 CPU."
        )],
    })
}

/// The measured process of the library footprint: N idle runs, "ready" on stdout
/// once every `sleep` is up, cancel and exit on EOF of stdin.
pub fn footprint_child(opts: Opts, n: usize, timeline: Option<f64>) -> Result<()> {
    let ctx = Ctx::new(opts)?;
    let (tx, rx) = tokio::sync::watch::channel(None);
    let mut handles = Vec::new();
    for _ in 0..n {
        let b = ctx.backend.clone();
        let rx = rx.clone();
        let mut spec = crate::launch::true_spec(&["/bin/sleep", "60"]);
        spec.limits.timeout = Some(Duration::from_secs(300));
        spec.timeline = timeline.map(Duration::from_secs_f64);
        handles.push(
            ctx.rt
                .spawn(async move { corral_run::run(b.as_ref(), spec, rx).await }),
        );
    }
    let me = std::process::id();
    let t = Instant::now();
    while descendants_named(me, "sleep") < n {
        if t.elapsed() > Duration::from_secs(300) {
            bail!("only some of {n} runs started");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("ready");
    let mut sink = String::new();
    while std::io::stdin().read_line(&mut sink)? > 0 {}
    let _ = tx.send(Some(corral_run::Cancel { signal: None }));
    for h in handles {
        let r = ctx.rt.block_on(h)??;
        if r.outcome.reason != Reason::Cancelled {
            bail!("an idle run ended as {:?}: {}", r.outcome.reason, r.notes);
        }
    }
    Ok(())
}
