//! `corral run`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use corral_record::Reason;
use corral_run::backend::select;
use corral_run::Cancel;
use tokio::signal::unix::{signal, SignalKind};

use crate::args::RunArgs;
use crate::backend::{reap_quietly, BackendArg};

/// `corral run [OPTIONS] -- COMMAND [ARGS...]`
#[derive(Debug, Args)]
pub struct RunCmd {
    #[command(flatten)]
    pub run: RunArgs,
    /// Write the result record (corral.result/v1 JSON) to FILE, or "-" for stdout.
    #[arg(long, value_name = "FILE|-")]
    pub json: Option<String>,
    /// Where corral creates its cgroups (default: a "corral" cgroup beside corral's own,
    /// else /sys/fs/cgroup/corral).
    #[arg(long, value_name = "PATH")]
    pub cgroup_root: Option<PathBuf>,
    /// Backend (auto: the strongest this host offers).
    #[arg(long, value_name = "B", default_value = "auto")]
    pub backend: BackendArg,
    /// Do not print the summary line to stderr.
    #[arg(short, long)]
    pub quiet: bool,
    /// Keep a timeline in the record: memory, CPU, processes, I/O and pressure read
    /// every INTERVAL (default 1s), and the limit events with their time.
    #[arg(long, value_name = "INTERVAL", num_args = 0..=1, default_missing_value = "1s")]
    pub timeline: Option<String>,
    /// Draw the run's memory and CPU over time, with its limits and events, to FILE.svg
    /// (implies --timeline).
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// The run exactly as a corral service resolved it (JSON: id, profile, limits,
    /// environment, output files), in place of the profile, --limits-from and limit
    /// flags: what the Slurm executor's batch jobs run.
    #[arg(long, value_name = "FILE", hide = true)]
    pub job_file: Option<PathBuf>,
}

/// Runs `corral run`; when corral itself fails (exit 125) and `--json FILE` was given,
/// the file gets `{"schema": "corral.error/v1", "error": ..., "exit_code": 125}` so a
/// caller that does not read corral's stderr still learns why.
pub fn main(cmd: RunCmd) -> Result<u8> {
    let json = cmd.json.clone();
    let res = run(cmd);
    if let (Err(e), Some(dest)) = (&res, &json) {
        write_error_file(dest, &format!("{e:#}"));
    }
    res
}

/// Writes the `corral.error/v1` file for a `corral run` that failed before or instead of
/// running (`-` means stdout, which carries no error document).
pub fn write_error_file(dest: &str, error: &str) {
    if dest != "-" {
        let v = serde_json::json!({
            "schema": "corral.error/v1",
            "error": error,
            "exit_code": crate::EXIT_CORRAL_FAILED,
        });
        let _ = std::fs::write(dest, v.to_string() + "\n");
    }
}

/// The `--json` destination of a `corral run` command line that the argument parser
/// rejected, so that its error still reaches a caller that reads only that file.
pub fn json_dest_of(args: &[String]) -> Option<&str> {
    if args.get(1).map(String::as_str) != Some("run") {
        return None;
    }
    let mut it = args[2..].iter().take_while(|a| *a != "--");
    while let Some(a) = it.next() {
        if a == "--json" {
            return it.next().map(String::as_str);
        }
        if let Some(v) = a.strip_prefix("--json=") {
            return Some(v);
        }
    }
    None
}

fn run(cmd: RunCmd) -> Result<u8> {
    let mut spec = match &cmd.job_file {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading the job file {}", p.display()))?;
            let jf: corral_service::slurm::JobFile = serde_json::from_str(&text)
                .with_context(|| format!("reading the job file {}", p.display()))?;
            jf.into_spec(cmd.run.command.clone())
        }
        None => cmd.run.to_spec()?,
    };
    spec.timeline = match (&cmd.timeline, &cmd.plot) {
        (Some(every), _) => Some(corral_spec::parse_duration("--timeline", every)?),
        (None, Some(_)) => Some(corral_run::timeline::DEFAULT_INTERVAL),
        (None, None) => spec.timeline,
    };
    if let Some(p) = &cmd.plot {
        crate::plot::check_path(p)?;
    }
    let kind = cmd.backend.0;
    // On a terminal, the run's usage live on one line of stderr.
    let live = crate::live::wanted(cmd.quiet).then(|| {
        let l = crate::live::LiveLine::new(spec.limits.timeout, spec.limits.memory);
        std::sync::Arc::new(std::sync::Mutex::new(l))
    });
    // The crash guard is forked while corral is still single-threaded (no exec of a
    // second corral), before the runtime exists.
    if let Ok(exe) = std::env::current_exe() {
        corral_run::guard::enable(&exe);
        corral_run::guard::fork_now();
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let record = rt.block_on(async {
        let backend = select(kind, cmd.cgroup_root.as_deref())?;
        // Reap what crashed corrals left behind.
        reap_quietly(backend.as_ref());
        let (tx, rx) = tokio::sync::watch::channel(None);
        // SIGINT, SIGTERM and SIGHUP end the run the same clean way as a limit.
        for (kind, num) in [
            (SignalKind::interrupt(), libc_sig::INT),
            (SignalKind::terminate(), libc_sig::TERM),
            (SignalKind::hangup(), libc_sig::HUP),
        ] {
            let mut s = signal(kind).context("installing signal handlers")?;
            let tx = tx.clone();
            tokio::spawn(async move {
                if s.recv().await.is_some() {
                    let _ = tx.send(Some(Cancel { signal: Some(num) }));
                }
            });
        }
        let observer = live.as_ref().map(crate::live::observer);
        let rec = corral_run::run_observed(backend.as_ref(), spec, rx, observer).await;
        if let Some(l) = &live {
            l.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
        Ok::<_, anyhow::Error>(rec?)
    })?;
    if let Some(dest) = &cmd.json {
        let text = record.to_json() + "\n";
        if dest == "-" {
            match std::io::stdout().write_all(text.as_bytes()) {
                // `corral run --json - ... | head`: the reader has what it wanted, and
                // the exit status stays the command's.
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
                _ => {}
            }
        } else {
            std::fs::write(dest, text).with_context(|| format!("writing the record to {dest}"))?;
        }
    }
    if let Some(p) = &cmd.plot {
        // The run's exit status stays the command's: a picture that cannot be drawn
        // is said, not made corral's failure.
        if let Err(e) = crate::plot::write(&record, p) {
            eprintln!("corral: {e:#}");
        }
    }
    let clean = record.outcome.reason == Reason::Exited && record.outcome.exit_code == 0;
    if !cmd.quiet && !clean {
        eprintln!("corral: {}", record.notes);
    }
    Ok(record.outcome.exit_code.clamp(0, 255) as u8)
}

mod libc_sig {
    pub const HUP: i32 = 1;
    pub const INT: i32 = 2;
    pub const TERM: i32 = 15;
}
