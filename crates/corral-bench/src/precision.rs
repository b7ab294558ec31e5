//! Enforcement precision: how late a wall-clock kill lands, and how far a CPU-time
//! limit is overshot, for corral and the peers on the same workload.
//!
//! Wall clock: the workload is `corral-bench __sleeper FIFO 10` (a `sleep 10` that
//! first writes its CLOCK_MONOTONIC start stamp into a FIFO and keeps it open). The
//! harness reads the stamp, then waits for EOF: the kernel closes the FIFO when the
//! workload dies. External lateness = death − (own start + limit). corral's record
//! gives a second view: `usage.wall_s` − limit (corral's clock starts just before
//! clone3 and stops when the cgroup is empty).
//!
//! CPU time: the workload is `corral-bench __spin` (one busy thread). Overshoot =
//! the CPU time the tool (or the kernel) reports − the limit.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use corral_record::{Reason, Record};
use serde_json::json;

use crate::ctx::{find_tool, Ctx, CORRAL_LIMIT_FLAGS};
use crate::procs::{kv_number, wait4_cpu, wait_limited, Lifetime, Stopwatch};
use crate::report::{Report, Row};

const WALL_MS: f64 = 200.0;
const CPU_MS: f64 = 500.0;

struct Series {
    name: String,
    config: String,
    /// Lateness (or overshoot) by the harness' own clock.
    ext: Vec<f64>,
    /// The same as the tool itself reports it.
    own: Vec<f64>,
    own_label: &'static str,
    skipped: Option<String>,
    /// Runs whose workload was ended before it could even report its start.
    not_started: usize,
}

impl Series {
    /// Adds a wall-clock lateness sample, or counts a run whose workload never started.
    fn push_lateness(&mut self, life: Result<Lifetime>) {
        match life {
            Ok(l) => self.ext.push(lateness(&l, WALL_MS)),
            Err(_) => self.not_started += 1,
        }
    }
    fn new(name: &str, config: String, own_label: &'static str) -> Series {
        Series {
            name: name.into(),
            config,
            ext: Vec::new(),
            own: Vec::new(),
            own_label,
            skipped: None,
            not_started: 0,
        }
    }
}

fn lateness(l: &Lifetime, limit_ms: f64) -> f64 {
    (l.died_ns.saturating_sub(l.started_ns)) as f64 / 1e6 - limit_ms
}

fn read_record(p: &PathBuf) -> Result<Record> {
    let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))
}

/// Spawns `cmd` (stdout to `out` when given) and waits; returns exit code and stdout.
fn run_cmd(ctx: &Ctx, mut cmd: Command, out: Option<&PathBuf>) -> Result<(i32, String)> {
    cmd.stdin(Stdio::null()).stderr(Stdio::null());
    match out {
        Some(p) => cmd.stdout(std::fs::File::create(p)?),
        None => cmd.stdout(Stdio::null()),
    };
    let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
    let st = wait_limited(&mut child, ctx.cmd_limit())?;
    let text = out
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .unwrap_or_default();
    Ok((st.code().unwrap_or(-1), text))
}

/// `precision`.
pub fn precision(ctx: &Ctx) -> Result<Report> {
    let host = crate::host::Host::detect();
    let n = ctx.opts.precision_runs;
    let warm = ctx.opts.warmup.min(3);
    let me = ctx.self_exe.display().to_string();
    let fifo = ctx.tmp.join("stopwatch");
    let rec_path = ctx.tmp.join("record.json");
    let out_path = ctx.tmp.join("stdout");
    let watch_limit = Duration::from_secs(120);
    let sleeper = |p: &PathBuf| {
        vec![
            me.clone(),
            "__sleeper".into(),
            p.display().to_string(),
            "10".into(),
        ]
    };
    let spinner = vec![me.clone(), "__spin".into()];

    // ---- wall clock ----
    let mut lib = Series::new(
        "corral_run::run, timeout 200 ms",
        format!(
            "library, limits.timeout = 200 ms, grace 5 s, memory 1 GiB, pids 512; backend {}",
            ctx.kind.as_str()
        ),
        "record usage.wall_s − 0.2 s",
    );
    let mut cli = Series::new(
        "corral run --timeout 200ms",
        format!(
            "corral run -q {} {} --timeout 200ms --json FILE -- corral-bench __sleeper FIFO 10",
            ctx.corral_flags_text(),
            CORRAL_LIMIT_FLAGS[..8].join(" ")
        ),
        "record usage.wall_s − 0.2 s",
    );
    let mut tmo = Series::new(
        "timeout 0.2",
        "timeout 0.2 corral-bench __sleeper FIFO 10 (GNU coreutils, SIGTERM)".into(),
        "",
    );
    let mut rx = Series::new(
        "runexec --walltimelimit 1",
        "runexec --no-container --walltimelimit 1 --memlimit 1073741824 --output FILE -- \
         corral-bench __sleeper FIFO 10 (whole seconds only; lateness against 1 s)"
            .into(),
        "runexec walltime − 1 s",
    );
    let corral_ok = ctx.corral.clone();
    if let Err(e) = &corral_ok {
        cli.skipped = Some(e.clone());
    }
    let timeout_bin = find_tool("timeout", "coreutils");
    if let Err(e) = &timeout_bin {
        tmo.skipped = Some(e.clone());
    }
    if let Err(e) = &ctx.runexec {
        rx.skipped = Some(e.clone());
    }
    for i in 0..warm + n {
        let keep = i >= warm;
        // corral, library
        {
            let sw = Stopwatch::new(&fifo)?;
            let mut spec = crate::launch::true_spec(&[]);
            spec.command = sleeper(&fifo);
            spec.limits.timeout = Some(Duration::from_millis(WALL_MS as u64));
            let h = sw.watch(watch_limit);
            let backend = ctx.backend.clone();
            let rec = ctx.rt.block_on(ctx.rt.spawn(async move {
                let (_tx, rx) = tokio::sync::watch::channel(None);
                corral_run::run(backend.as_ref(), spec, rx).await
            }))??;
            let life = h.finish();
            if rec.outcome.reason != Reason::Timeout {
                bail!("corral library run did not time out: {}", rec.notes);
            }
            if keep {
                lib.push_lateness(life);
                lib.own.push(rec.usage.wall_s * 1e3 - WALL_MS);
            }
        }
        // corral, CLI
        if let Ok(mut cmd) = ctx.corral_cmd(&CORRAL_LIMIT_FLAGS[..8]) {
            let sw = Stopwatch::new(&fifo)?;
            cmd.args(["--timeout", "200ms", "--json"])
                .arg(&rec_path)
                .arg("--");
            cmd.args(sleeper(&fifo));
            let h = sw.watch(watch_limit);
            let (code, _) = run_cmd(ctx, cmd, None)?;
            let life = h.finish();
            let rec = read_record(&rec_path)?;
            if code != 124 || rec.outcome.reason != Reason::Timeout {
                bail!("corral run did not time out (exit {code}): {}", rec.notes);
            }
            if keep {
                cli.push_lateness(life);
                cli.own.push(rec.usage.wall_s * 1e3 - WALL_MS);
            }
        }
        // timeout(1)
        if let Ok(t) = &timeout_bin {
            let sw = Stopwatch::new(&fifo)?;
            let mut cmd = Command::new(t);
            cmd.arg("0.2").args(sleeper(&fifo));
            let h = sw.watch(watch_limit);
            let (code, _) = run_cmd(ctx, cmd, None)?;
            let life = h.finish();
            if code != 124 {
                bail!("timeout 0.2 exited {code}, not 124");
            }
            if keep {
                tmo.push_lateness(life);
            }
        }
        // runexec
        if let (Ok(r), None) = (&ctx.runexec, &rx.skipped) {
            let sw = Stopwatch::new(&fifo)?;
            let mut cmd = runexec(ctx, r, "--walltimelimit");
            cmd.args(sleeper(&fifo));
            let h = sw.watch(watch_limit);
            let (code, out) = run_cmd(ctx, cmd, Some(&out_path))?;
            match h.finish() {
                Ok(life) => {
                    if keep {
                        rx.ext.push(lateness(&life, 1000.0));
                        if let Some(w) = kv_number(&out, "walltime") {
                            rx.own.push(w * 1e3 - 1000.0);
                        }
                    }
                }
                Err(e) => {
                    rx.skipped = Some(format!(
                        "runexec failed (exit {code}): {e:#}; output: {out}"
                    ));
                }
            }
        }
    }

    // ---- CPU time ----
    let mut clib = Series::new(
        "corral_run::run, cpu_time 500 ms",
        format!("library, limits.cpu_time = 500 ms, no CPU quota (2 CPUs allowed), memory 1 GiB, pids 512; backend {}", ctx.kind.as_str()),
        "wait rusage of the reaped workload − 0.5 s",
    );
    let mut ccli = Series::new(
        "corral run --cpu-time 500ms",
        format!(
            "corral run -q {} {} --cpu-time 500ms --json FILE -- corral-bench __spin",
            ctx.corral_flags_text(),
            CORRAL_LIMIT_FLAGS.join(" ")
        ),
        "",
    );
    let mut crx = Series::new(
        "runexec --timelimit 1",
        "runexec --no-container --timelimit 1 --memlimit 1073741824 --output FILE -- \
         corral-bench __spin (whole seconds only; overshoot against 1 s)"
            .into(),
        "",
    );
    let mut crl = Series::new(
        "prlimit --cpu=1 (RLIMIT_CPU)",
        "prlimit --cpu=1 corral-bench __spin: the kernel's own per-process limit, whole \
         seconds (timeout(1) has no CPU-time limit)"
            .into(),
        "",
    );
    if let Err(e) = &corral_ok {
        ccli.skipped = Some(e.clone());
    }
    if let Err(e) = &ctx.runexec {
        crx.skipped = Some(e.clone());
    }
    let prlimit = find_tool("prlimit", "util-linux");
    if let Err(e) = &prlimit {
        crl.skipped = Some(e.clone());
    }
    for i in 0..warm + n {
        let keep = i >= warm;
        {
            let mut spec = crate::launch::true_spec(&[]);
            spec.command = spinner.clone();
            spec.limits.cpu_time = Some(Duration::from_millis(CPU_MS as u64));
            spec.limits.timeout = Some(Duration::from_secs(60));
            let backend = ctx.backend.clone();
            let before = children_cpu_ms();
            let rec = ctx.rt.block_on(ctx.rt.spawn(async move {
                let (_tx, rx) = tokio::sync::watch::channel(None);
                corral_run::run(backend.as_ref(), spec, rx).await
            }))??;
            let reaped = children_cpu_ms() - before;
            if keep {
                clib.own.push(reaped - CPU_MS);
            }
            if rec.outcome.reason != Reason::CpuTime {
                bail!("corral library run did not hit its CPU time: {}", rec.notes);
            }
            if keep {
                clib.ext
                    .push((rec.usage.cpu_user_s + rec.usage.cpu_system_s) * 1e3 - CPU_MS);
            }
        }
        if let Ok(mut cmd) = ctx.corral_cmd(CORRAL_LIMIT_FLAGS) {
            cmd.args(["--cpu-time", "500ms", "--json"])
                .arg(&rec_path)
                .arg("--");
            cmd.args(&spinner);
            let (code, _) = run_cmd(ctx, cmd, None)?;
            let rec = read_record(&rec_path)?;
            if code != 124 || rec.outcome.reason != Reason::CpuTime {
                bail!(
                    "corral run did not hit its CPU time (exit {code}): {}",
                    rec.notes
                );
            }
            if keep {
                ccli.ext
                    .push((rec.usage.cpu_user_s + rec.usage.cpu_system_s) * 1e3 - CPU_MS);
            }
        }
        if let (Ok(r), None) = (&ctx.runexec, &crx.skipped) {
            let mut cmd = runexec(ctx, r, "--timelimit");
            cmd.args(&spinner);
            let (code, out) = run_cmd(ctx, cmd, Some(&out_path))?;
            match kv_number(&out, "cputime") {
                Some(c) if keep => crx.ext.push(c * 1e3 - 1000.0),
                Some(_) => {}
                None => {
                    crx.skipped = Some(format!("runexec reported no cputime (exit {code}): {out}"))
                }
            }
        }
        if let Ok(p) = &prlimit {
            let mut cmd = Command::new(p);
            cmd.arg("--cpu=1").args(&spinner);
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let child = cmd.spawn()?;
            let (_status, cpu_s) = wait4_cpu(&child, ctx.cmd_limit())?;
            if keep {
                crl.ext.push(cpu_s * 1e3 - 1000.0);
            }
        }
    }

    let mut rows = Vec::new();
    let wall = [lib, cli, tmo, rx];
    for s in &wall {
        rows.extend(series_rows(s, "lateness, external", "ms late"));
    }
    for s in [clib, ccli, crx, crl] {
        rows.extend(series_rows(
            &s,
            "CPU overshoot, tool's own report",
            "ms over",
        ));
    }
    Ok(Report {
        name: "precision".into(),
        host: host.finish(),
        backend: ctx.kind.as_str().into(),
        backend_reason: ctx.backend.reason(),
        settings: json!({"runs": n, "warmup": warm, "wall_limit_ms": WALL_MS, "cpu_limit_ms": CPU_MS}),
        rows,
        notes: vec![
            "Wall clock: external lateness = the workload's death (EOF on its FIFO) − its \
             own start stamp − the limit; it does not include the tool's start-up before the \
             workload exec'd. It is negative when the tool's clock started before the \
             workload could run. corral starts its clock once the command has exec'd (the \
             placement into the cgroup is corral's cost, not the workload's budget). The record's wall_s view ends when the cgroup \
             is empty, so it includes the detection of the death. corral and timeout(1) send \
             SIGTERM at the deadline (the workload dies on it). Targets (issue #5): p99 lateness ≤ 5 ms, CPU overshoot \
             ≤ 10 ms."
                .into(),
            "BenchExec parses limits as whole seconds (so 1 s, the smallest it accepts) and \
             checks them in a thread that sleeps remaining/CPUs + 1 s \
             (runexecutor._TimelimitThread): its lateness and overshoot are about that \
             second by design, not noise. CPU times come from the tools' own reports \
             (corral: the cgroup's cpuacct.usage_user + usage_sys on v1, which are tick-sampled \
             and may differ from cpuacct.usage, which corral's check uses, by ~10 %, or \
             cpu.stat on v2; the library row \"wait rusage\" is the reaped workload's own \
             CPU time from getrusage(RUSAGE_CHILDREN); runexec: its cputime line; prlimit: \
             wait4 rusage)."
                .into(),
        ],
    })
}

/// CPU time of this process' reaped children so far (corral reaps the library
/// workload in this process, so the delta over one run is that workload's CPU time).
fn children_cpu_ms() -> f64 {
    crate::procs::children_cpu_ms()
}

fn series_rows(s: &Series, ext_label: &str, unit: &str) -> Vec<Row> {
    if let Some(why) = &s.skipped {
        return vec![Row::skipped(&s.name, s.config.clone(), why.clone())];
    }
    let config = if s.not_started > 0 {
        format!(
            "{}; {} run(s) ended before the workload could report its start (not in the samples)",
            s.config, s.not_started
        )
    } else {
        s.config.clone()
    };
    let mut v = vec![Row::sampled(
        &format!("{} ({ext_label})", s.name),
        config,
        unit,
        s.ext.clone(),
    )];
    if !s.own_label.is_empty() && !s.own.is_empty() {
        v.push(Row::sampled(
            &format!("{} ({})", s.name, s.own_label),
            s.config.clone(),
            unit,
            s.own.clone(),
        ));
    }
    v
}

/// BenchExec's `runexec` without a container, with a 1 s limit given by `time_flag`
/// (`--walltimelimit` or `--timelimit`) and 1 GiB of memory; the command follows.
fn runexec(ctx: &Ctx, runexec: &Path, time_flag: &str) -> Command {
    let mut cmd = Command::new(runexec);
    cmd.args(["--no-container", time_flag, "1", "--memlimit", "1073741824"])
        .arg("--output")
        .arg(ctx.tmp.join("runexec.log"))
        .arg("--");
    cmd
}
