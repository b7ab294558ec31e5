//! What every subcommand shares: the options, the corral backend under a private
//! cgroup root (removed again at the end), the paths of the binaries and peers.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use corral_cgroup::layout::{join_rel, Layout, V1_CONTROLLERS};
use corral_run::backend::{select, Backend, BackendKind};
use corral_spec::Limits;

/// Options common to all subcommands.
#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    /// Measured repetitions per variant for launch (warm-up runs come on top).
    #[arg(long, default_value_t = 200, global = true)]
    pub runs: usize,
    /// Measured repetitions per variant for precision.
    #[arg(long, default_value_t = 100, global = true)]
    pub precision_runs: usize,
    /// Warm-up repetitions per variant, discarded.
    #[arg(long, default_value_t = 10, global = true)]
    pub warmup: usize,
    /// corral backend: auto, cgroup1, cgroup2 or rlimit.
    #[arg(long, default_value = "auto", global = true)]
    pub backend: String,
    /// Small repetition counts for a smoke test (overrides --runs, --precision-runs,
    /// --warmup, --seconds, --window, --idle-runs).
    #[arg(long, global = true)]
    pub quick: bool,
    /// Where the JSON and markdown results go.
    #[arg(long, default_value = "target/bench", global = true)]
    pub out: PathBuf,
    /// The corral binary (default: `corral` next to this binary).
    #[arg(long, global = true)]
    pub corral: Option<PathBuf>,
    /// BenchExec's runexec (default: target/bench/venv/bin/runexec, then PATH).
    #[arg(long, global = true)]
    pub runexec: Option<PathBuf>,
    /// Launch: measured repetitions of each runexec variant, when fewer than --runs
    /// (under TCG one runexec start takes ~5 s). Its rounds come first, interleaved
    /// with the others as usual.
    #[arg(long, global = true)]
    pub runexec_runs: Option<usize>,
    /// Throughput: seconds per measurement.
    #[arg(long, default_value_t = 5.0, global = true)]
    pub seconds: f64,
    /// Throughput: concurrency levels (comma-separated).
    #[arg(long, default_value = "1,2,4,16", global = true, value_delimiter = ',')]
    pub concurrency: Vec<usize>,
    /// Footprint: the idle window over which CPU time is measured, in seconds.
    #[arg(long, default_value_t = 5.0, global = true)]
    pub window: f64,
    /// Footprint: the larger number of idle runs supervised at once.
    #[arg(long, default_value_t = 100, global = true)]
    pub idle_runs: usize,
    /// Do not start corral's crash guard in library runs (the CLI always starts it).
    #[arg(long, global = true)]
    pub no_guard: bool,
}

impl Opts {
    /// Applies `--quick`.
    pub fn effective(mut self) -> Opts {
        if self.quick {
            self.runs = self.runs.min(20);
            self.precision_runs = self.precision_runs.min(10);
            self.warmup = self.warmup.min(2);
            self.seconds = self.seconds.min(1.0);
            self.window = self.window.min(2.0);
            self.idle_runs = self.idle_runs.min(10);
            self.concurrency.retain(|k| *k <= 4);
        }
        self
    }
}

/// The shared state of one `corral-bench` invocation.
pub struct Ctx {
    /// The options after `--quick`.
    pub opts: Opts,
    /// The backend every library run uses.
    pub backend: Arc<dyn Backend>,
    /// Its kind.
    pub kind: BackendKind,
    /// The `--cgroup-root` value that selects the same private root for `corral run`
    /// (`None` for rlimit).
    pub root_arg: Option<String>,
    root_dirs: Vec<PathBuf>,
    /// This binary (the `__sleeper`/`__spin` workloads).
    pub self_exe: PathBuf,
    /// The corral binary, or why it is missing.
    pub corral: Result<PathBuf, String>,
    /// runexec, or why it is missing.
    pub runexec: Result<PathBuf, String>,
    /// The tokio runtime library runs are awaited on (2 workers, as the service).
    pub rt: tokio::runtime::Runtime,
    /// A scratch directory (FIFOs, records).
    pub tmp: PathBuf,
}

/// The limits every tool gets: memory 1 GiB, no swap, 512 processes, no CPU quota.
pub fn equivalent_limits() -> Limits {
    Limits {
        memory: Some(1 << 30),
        swap: Some(0),
        pids: Some(512),
        cpus: None,
        timeout: None,
        cpu_time: None,
        ..Limits::default()
    }
}

/// The same limits as `corral run` flags.
pub const CORRAL_LIMIT_FLAGS: &[&str] = &[
    "--memory",
    "1G",
    "--swap",
    "0",
    "--pids",
    "512",
    "--cpus",
    "max",
    "--timeout",
    "none",
];

/// The private root's name: `corral-bench-<pid>`.
pub fn root_name() -> String {
    format!("corral-bench-{}", std::process::id())
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Finds `name` on PATH, or says it is missing.
pub fn find_tool(name: &str, hint: &str) -> Result<PathBuf, String> {
    which(name).ok_or_else(|| format!("{name} not found on PATH ({hint})"))
}

impl Ctx {
    /// Sets up the backend under a private root `corral-bench-<pid>`.
    pub fn new(opts: Opts) -> Result<Ctx> {
        let opts = opts.effective();
        let layout = Layout::cached();
        let want: Option<BackendKind> = match opts.backend.as_str() {
            "auto" => None,
            s => Some(s.parse()?),
        };
        let kind = want.unwrap_or_else(|| {
            if layout.missing_v2_controllers().is_empty() {
                BackendKind::Cgroup2
            } else if layout.v1.contains_key("memory") {
                BackendKind::Cgroup1
            } else {
                BackendKind::Rlimit
            }
        });
        let name = root_name();
        let (root, root_arg, root_dirs) = match kind {
            BackendKind::Cgroup2 => {
                let m = layout
                    .v2
                    .as_ref()
                    .ok_or_else(|| anyhow!("no cgroup2 mount"))?;
                let dir = m.mount_point.join(&name);
                (
                    Some(dir.clone()),
                    Some(dir.display().to_string()),
                    vec![dir],
                )
            }
            BackendKind::Cgroup1 => {
                let rel = PathBuf::from(&name);
                let mut dirs: Vec<PathBuf> = V1_CONTROLLERS
                    .iter()
                    .filter_map(|c| layout.v1.get(*c))
                    .map(|m| join_rel(m, &rel))
                    .collect();
                dirs.sort();
                dirs.dedup();
                let arg = format!("/{name}");
                (Some(PathBuf::from(&arg)), Some(arg), dirs)
            }
            _ => (None, None, Vec::new()),
        };
        let backend: Arc<dyn Backend> = Arc::from(
            select(Some(kind), root.as_deref()).context("setting up the corral backend")?,
        );
        let self_exe = std::env::current_exe()?;
        let corral = match &opts.corral {
            Some(p) if p.is_file() => Ok(p.clone()),
            Some(p) => Err(format!("--corral {} does not exist", p.display())),
            None => {
                let p = self_exe.with_file_name("corral");
                if p.is_file() {
                    Ok(p)
                } else {
                    Err(format!(
                        "no corral binary at {} (cargo build --release -p corral-cli)",
                        p.display()
                    ))
                }
            }
        };
        let tmp = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&tmp)?;
        // In the test VM the repository (and so target/release/corral) is a 9p share
        // without page cache, while /bin/true and the peers come from the cached host
        // root: loading corral from there would cost ~1 s per start. Run a copy from
        // the guest's tmpfs instead, like an installed binary.
        let corral = match corral {
            Ok(c) if std::env::var_os("CORRAL_IN_VM").is_some() => {
                let copy = tmp.join("corral");
                std::fs::copy(&c, &copy)
                    .with_context(|| format!("copying {} to {}", c.display(), copy.display()))?;
                Ok(copy)
            }
            other => other,
        };
        let self_exe = if std::env::var_os("CORRAL_IN_VM").is_some() {
            let copy = tmp.join("corral-bench");
            std::fs::copy(&self_exe, &copy)?;
            copy
        } else {
            self_exe
        };
        if let (Ok(c), false) = (&corral, opts.no_guard) {
            corral_run::guard::enable(c);
        }
        let runexec = match &opts.runexec {
            Some(p) if p.is_file() => Ok(p.clone()),
            Some(p) => Err(format!("--runexec {} does not exist", p.display())),
            None => {
                let venv = PathBuf::from("target/bench/venv/bin/runexec");
                if venv.is_file() {
                    Ok(std::fs::canonicalize(venv)?)
                } else {
                    find_tool("runexec", "run bench/prepare-peers.sh")
                }
            }
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        Ok(Ctx {
            opts,
            backend,
            kind,
            root_arg,
            root_dirs,
            self_exe,
            corral,
            runexec,
            rt,
            tmp,
        })
    }

    /// `corral run --backend K [--cgroup-root R] -q` followed by `args`, for the CLI.
    pub fn corral_cmd(&self, args: &[&str]) -> Result<std::process::Command, String> {
        let bin = self.corral.clone()?;
        let mut c = std::process::Command::new(bin);
        c.args(["run", "-q", "--backend", self.kind.as_str()]);
        if let Some(r) = &self.root_arg {
            c.args(["--cgroup-root", r]);
        }
        c.args(args);
        Ok(c)
    }

    /// The `--cgroup-root` flags as text, for the configuration column.
    pub fn corral_flags_text(&self) -> String {
        match &self.root_arg {
            Some(r) => format!("--backend {} --cgroup-root {r}", self.kind.as_str()),
            None => format!("--backend {}", self.kind.as_str()),
        }
    }

    /// A watchdog limit for one external command.
    pub fn cmd_limit(&self) -> Duration {
        Duration::from_secs(300)
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.tmp);
        // Our private root only; run cgroups inside it were removed by each run.
        for d in self.root_dirs.iter().rev() {
            if d.exists() {
                if let Err(e) = std::fs::remove_dir(d) {
                    eprintln!("corral-bench: cannot remove {}: {e}", d.display());
                }
            }
        }
    }
}
