//! `corral-bench`: corral's benchmark harness (issue #5).
//!
//! Every figure is a ratio against a baseline measured in the same run on the same
//! host, reported as median and p99 (and mean) over many repetitions with warm-up
//! runs discarded. Each subcommand prints markdown table rows and writes
//! `<out>/<name>.json` (with the raw samples) and `<out>/<name>.md`. See
//! `docs/BENCHMARKS.md` for what each measures and the one command that runs them all
//! (`bench/run-all.sh`).

mod ctx;
mod footprint;
mod host;
mod launch;
mod peers;
mod precision;
mod procs;
mod report;
mod stats;
mod throughput;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

use crate::ctx::{Ctx, Opts};
use crate::report::Report;

/// corral's benchmark harness: launch overhead, throughput, enforcement precision and
/// footprint, each against a baseline measured in the same run.
#[derive(Debug, Parser)]
#[command(name = "corral-bench", version, about)]
struct Cli {
    #[command(flatten)]
    opts: Opts,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// N sequential runs of /bin/true through corral_run::run vs Command spawn+wait.
    LaunchLib,
    /// `corral run -- true` vs `true`, cgexec, systemd-run --scope, runexec.
    LaunchCli,
    /// K concurrent streams of /bin/true for T seconds: runs/s, corral vs bare.
    Throughput,
    /// Wall-clock kill lateness and CPU-time overshoot, corral vs timeout(1), runexec, RLIMIT_CPU.
    Precision,
    /// corral's RSS and CPU while supervising 1 and N idle runs (library and CLI).
    Footprint,
    /// All of the above, in that order.
    All,
    /// Workload: `sleep SECS` that reports its start through FIFO.
    #[command(name = "__sleeper", hide = true)]
    Sleeper { fifo: PathBuf, secs: f64 },
    /// Workload: one busy thread (stops by itself after 120 s).
    #[command(name = "__spin", hide = true)]
    Spin,
    /// The measured process of `footprint`.
    #[command(name = "__footprint-lib", hide = true)]
    FootprintLib {
        n: usize,
        /// Each run keeps a timeline read every this many seconds.
        #[arg(long)]
        timeline: Option<f64>,
    },
}

type Bench = fn(&Ctx) -> anyhow::Result<Report>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Sleeper { fifo, secs } => procs::report_start(&fifo).map(|_f| {
            std::thread::sleep(Duration::from_secs_f64(secs));
        }),
        Cmd::Spin => {
            let end = Instant::now() + Duration::from_secs(120);
            let mut x = 0u64;
            while Instant::now() < end {
                for i in 0..10_000u64 {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
                }
            }
            Ok(())
        }
        Cmd::FootprintLib { n, timeline } => footprint::footprint_child(cli.opts, n, timeline),
        cmd => return benches(cmd, cli.opts),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("corral-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn benches(cmd: Cmd, opts: Opts) -> ExitCode {
    let all: [(&str, Bench); 5] = [
        ("launch-lib", launch::launch_lib),
        ("launch-cli", launch::launch_cli),
        ("throughput", throughput::throughput),
        ("precision", precision::precision),
        ("footprint", footprint::footprint),
    ];
    let pick: Vec<(&str, Bench)> = match cmd {
        Cmd::LaunchLib => vec![all[0]],
        Cmd::LaunchCli => vec![all[1]],
        Cmd::Throughput => vec![all[2]],
        Cmd::Precision => vec![all[3]],
        Cmd::Footprint => vec![all[4]],
        _ => all.to_vec(),
    };
    let ctx = match Ctx::new(opts) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("corral-bench: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "corral-bench: backend {} ({})",
        ctx.kind.as_str(),
        ctx.backend.reason()
    );
    let mut failed = 0;
    for (name, f) in pick {
        eprintln!("corral-bench: {name} ...");
        let t = Instant::now();
        match f(&ctx).and_then(|r| r.emit(&ctx.opts.out)) {
            Ok(()) => eprintln!(
                "corral-bench: {name} done in {:.1} s",
                t.elapsed().as_secs_f64()
            ),
            Err(e) => {
                failed += 1;
                eprintln!("corral-bench: {name} FAILED: {e:#}");
            }
        }
    }
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
