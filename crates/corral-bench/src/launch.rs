//! Launch overhead: `/bin/true` through corral against a bare spawn, sequentially.
//!
//! `launch-lib`: `corral_run::run()` in this process against `std::process::Command`
//! spawn+wait, interleaved run by run so both see the same noise.
//! `launch-cli`: the whole `corral run -- true` process (sandboxed, and with
//! `--isolation off`: the sandbox's start cost) against `true` and the peers (cgexec,
//! systemd-run, runexec), each with the same limits, interleaved round by round.

use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Result};
use corral_record::Reason;
use corral_run::{RunSpec, Stdio as RunStdio};
use serde_json::json;

use crate::ctx::{equivalent_limits, Ctx, CORRAL_LIMIT_FLAGS};
use crate::peers::{self, Peer};
use crate::report::{Report, Row};

/// The spec of one library run of `cmd` with the equivalent limits, all streams on
/// /dev/null.
pub fn true_spec(cmd: &[&str]) -> RunSpec {
    RunSpec {
        command: cmd.iter().map(|s| s.to_string()).collect(),
        stdin: RunStdio::Null,
        stdout: RunStdio::Null,
        stderr: RunStdio::Null,
        profile: "bench".into(),
        limits: equivalent_limits(),
        ..RunSpec::default()
    }
}

/// A bare `std::process::Command` spawn+wait of `/bin/true`, in milliseconds.
pub fn bare_true() -> Result<f64> {
    let t = Instant::now();
    let st = Command::new("/bin/true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    if !st.success() {
        bail!("/bin/true failed: {st}");
    }
    Ok(ms)
}

/// `launch-lib`.
pub fn launch_lib(ctx: &Ctx) -> Result<Report> {
    let host = crate::host::Host::detect();
    let n = ctx.opts.runs;
    let warm = ctx.opts.warmup;
    let backend = ctx.backend.clone();
    let guard = ctx.corral.is_ok() && !ctx.opts.no_guard;
    type Samples = (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>);
    let task = async move {
        let (_tx, rx) = tokio::sync::watch::channel(None);
        let (mut bare, mut total, mut inside, mut outside) = (vec![], vec![], vec![], vec![]);
        for i in 0..warm + n {
            let mut corral_ms = 0.0;
            let mut rec = None;
            let mut bare_ms = 0.0;
            for step in 0..2 {
                // Alternate which goes first.
                if (i + step) % 2 == 0 {
                    bare_ms = bare_true()?;
                } else {
                    let t = Instant::now();
                    let r =
                        corral_run::run(backend.as_ref(), true_spec(&["/bin/true"]), rx.clone())
                            .await?;
                    corral_ms = t.elapsed().as_secs_f64() * 1e3;
                    if r.outcome.reason != Reason::Exited || r.outcome.exit_code != 0 {
                        bail!("corral run of /bin/true did not exit 0: {}", r.notes);
                    }
                    rec = Some(r);
                }
            }
            if i >= warm {
                let wall = rec.expect("ran").usage.wall_s * 1e3;
                bare.push(bare_ms);
                total.push(corral_ms);
                inside.push(wall);
                outside.push(corral_ms - wall);
            }
        }
        Ok::<Samples, anyhow::Error>((bare, total, inside, outside))
    };
    // Awaited on a worker thread, as the service would.
    let (bare, total, inside, outside) = ctx.rt.block_on(ctx.rt.spawn(task))??;
    let limits = "memory 1 GiB, swap 0, pids 512, no CPU quota, no timeout";
    let base = Row::sampled(
        "bare spawn+wait",
        "std::process::Command::new(\"/bin/true\").status() (stdio /dev/null)".into(),
        "ms",
        bare,
    );
    let mut lib = Row::sampled(
        "corral_run::run",
        format!(
            "/bin/true, {limits}, stdio /dev/null, backend {}, crash guard {}",
            ctx.kind.as_str(),
            if guard { "on" } else { "off" }
        ),
        "ms",
        total,
    );
    lib.ratio_to(&base, "corral/bare");
    let mut inner = Row::sampled(
        "… of which exec→tree gone",
        "record usage.wall_s: from the exec of the command to populated 0".into(),
        "ms",
        inside,
    );
    inner.ratio_to(&base, "/bare");
    let mut outer = Row::sampled(
        "… of which setup, placement, teardown",
        "total − usage.wall_s: cgroup create, limits, read-back, placement of the child, collect, rmdir, record".into(),
        "ms",
        outside,
    );
    outer.ratio_to(&base, "/bare");
    Ok(Report {
        name: "launch-lib".into(),
        host: host.finish(),
        backend: ctx.kind.as_str().into(),
        backend_reason: ctx.backend.reason(),
        settings: json!({"runs": n, "warmup": warm, "limits": limits, "guard": guard,
                         "runtime": "tokio multi-thread, 2 workers; runs awaited in a spawned task"}),
        rows: vec![base, lib, inner, outer],
        notes: vec![format!(
            "Target (issue #5): corral_run::run ≤ 2× the bare spawn (median). Runs alternate \
             bare/corral, {warm} warm-up pairs discarded."
        )],
    })
}

/// `launch-cli`.
pub fn launch_cli(ctx: &Ctx) -> Result<Report> {
    let host = crate::host::Host::detect();
    let n = ctx.opts.runs;
    let warm = ctx.opts.warmup;
    let mut variants: Vec<Peer> = Vec::new();
    variants.push(Peer::cmd(
        "true",
        "/bin/true".into(),
        Ok(Command::new("/bin/true")),
    ));
    let mut corral_args: Vec<&str> = CORRAL_LIMIT_FLAGS.to_vec();
    corral_args.extend(["--", "/bin/true"]);
    variants.push(Peer::cmd(
        "corral run",
        format!(
            "corral run -q {} {}",
            ctx.corral_flags_text(),
            corral_args.join(" ")
        ),
        ctx.corral_cmd(&corral_args),
    ));
    // The sandbox's start cost: the same run with every sandbox layer off.
    let mut off_args = vec!["--isolation", "off"];
    off_args.extend(&corral_args);
    variants.push(Peer::cmd(
        "corral run --isolation off",
        format!(
            "corral run -q {} {} (no sandbox: host network, no seccomp filter, no setsid/no_new_privs/core limit)",
            ctx.corral_flags_text(),
            off_args.join(" ")
        ),
        ctx.corral_cmd(&off_args),
    ));
    if ctx.kind != corral_run::BackendKind::Rlimit {
        let mut rl = vec!["run", "-q", "--backend", "rlimit"];
        rl.extend(&corral_args);
        variants.push(Peer::cmd(
            "corral run --backend rlimit",
            format!(
                "corral {} (no cgroup; after the exit this backend scans /proc for the process group)",
                rl.join(" ")
            ),
            ctx.corral.clone().map(|c| {
                let mut cmd = Command::new(c);
                cmd.args(&rl);
                cmd
            }),
        ));
    }
    variants.extend(peers::launch_peers(ctx));

    // Probe each (a failing peer is skipped with its error), then interleave.
    let mut live: Vec<(Peer, Vec<f64>)> = Vec::new();
    let mut rows_skipped = Vec::new();
    for mut v in variants {
        match v.probe(ctx) {
            Ok(()) => live.push((v, Vec::new())),
            Err(why) => rows_skipped.push(Row::skipped(&v.name, v.config.clone(), why)),
        }
    }
    let k = live.len();
    for i in 0..warm + n {
        for j in 0..k {
            let idx = (i + j) % k;
            let (v, samples) = &mut live[idx];
            if v.max_runs.is_some_and(|m| i >= warm + m) {
                continue;
            }
            let ms = v.time_once(ctx)?;
            if i >= warm {
                samples.push(ms);
            }
        }
    }
    let mut rows: Vec<Row> = Vec::new();
    for (mut v, samples) in live {
        v.teardown();
        rows.push(Row::sampled(&v.name, v.config.clone(), "ms", samples));
    }
    let bare = rows.iter().position(|r| r.variant == "true");
    let corral = rows.iter().position(|r| r.variant == "corral run");
    for i in 0..rows.len() {
        let (name, r) = (rows[i].variant.clone(), rows[i].clone());
        let mut r = r;
        if name.starts_with("corral run") {
            if let Some(b) = bare {
                r.ratio_to(&rows[b].clone(), "/true");
            }
        } else if name != "true" {
            if let Some(c) = corral {
                r.ratio_to(&rows[c].clone(), "peer/corral");
            }
        }
        rows[i] = r;
    }
    rows.extend(rows_skipped);
    let mut notes = vec![format!(
        "Every variant is a whole process started with std::process::Command (stdio \
         /dev/null) and waited for; rounds rotate the order; {warm} warm-up rounds \
         discarded. Target (issue #5): corral run ≥ 10× faster than systemd-run and runexec \
         (ratio peer/corral ≥ 10)."
    )];
    notes.extend(peers::launch_notes());
    Ok(Report {
        name: "launch-cli".into(),
        host: host.finish(),
        backend: ctx.kind.as_str().into(),
        backend_reason: ctx.backend.reason(),
        settings: json!({"runs": n, "warmup": warm}),
        rows,
        notes,
    })
}
