//! `corral serve` and the commands that talk to it: `submit`, `ps`, `wait`, `cancel`,
//! `logs`, `show`.
//!
//! Exit status of the client commands: as `corral run` for `submit --wait` and `wait`
//! (the run's own status); 1 for an unknown run id; 125 when the service cannot be
//! reached or refuses the request.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use corral_record::{Reason, Record};
use corral_service::client::{Client, ClientError};
use corral_service::config::{ExecutorConfig, DEFAULT_LEDGER, DEFAULT_SOCKET, SERVER_ENV};
use corral_service::slurm::SlurmConfig;
use corral_service::wire::{RunState, RunStatus, SubmitRequest};
use corral_service::{Addr, ServeConfig};
use corral_spec::{
    format_bytes, format_duration, load_metadata, parse_cpus, parse_duration, parse_pids,
    parse_size, parse_swap, LimitKind, LimitsPatch, Setting,
};
use corral_spec::{parse_iops_setting, parse_rate_setting};
use serde_json::{Map, Value};

use crate::args::RunArgs;
use crate::backend::ServiceBackendArg;

/// `corral serve`
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Where to listen: a Unix socket path (mode 0666: the kernel says who calls), or a
    /// loopback TCP address 127.0.0.1:PORT (needs --token-file).
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_SOCKET)]
    pub listen: String,
    /// The SQLite ledger of submissions and records; captured output goes to output/
    /// beside it.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_LEDGER)]
    pub ledger: PathBuf,
    /// Backend (auto: cgroup2 where usable, else cgroup1).
    #[arg(long, value_name = "B", default_value = "auto")]
    pub backend: ServiceBackendArg,
    /// Runs at once (default: 2 × CPUs).
    #[arg(long, value_name = "N")]
    pub max_running: Option<usize>,
    /// Memory shared by all runs (default: 75% of RAM).
    #[arg(long, value_name = "SIZE")]
    pub budget_memory: Option<String>,
    /// CPUs shared by all runs (default: all CPUs less one, at least 1).
    #[arg(long, value_name = "N")]
    pub budget_cpus: Option<String>,
    /// Tasks shared by all runs (default: 4096).
    #[arg(long, value_name = "N")]
    pub budget_pids: Option<String>,
    /// Swap shared by all runs ("max" for no cap). A run asking for more swap than
    /// this is refused.
    #[arg(long, value_name = "SIZE", default_value = "0")]
    pub budget_swap: String,
    /// Disk read bandwidth shared by all runs, per disk (10M = 10 MiB/s): a cap on the
    /// runs' parent cgroup, on the --budget-io-device disks (default: the ledger's).
    #[arg(long, value_name = "SIZE")]
    pub budget_io_read_bps: Option<String>,
    /// Disk write bandwidth shared by all runs, per disk, like --budget-io-read-bps.
    #[arg(long, value_name = "SIZE")]
    pub budget_io_write_bps: Option<String>,
    /// Disk read operations a second shared by all runs, per disk.
    #[arg(long, value_name = "N")]
    pub budget_io_read_iops: Option<String>,
    /// Disk write operations a second shared by all runs, per disk.
    #[arg(long, value_name = "N")]
    pub budget_io_write_iops: Option<String>,
    /// A block device the --budget-io-* caps apply to (repeatable; default: the disks
    /// of the ledger's directory).
    #[arg(long, value_name = "PATH")]
    pub budget_io_device: Vec<PathBuf>,
    /// The service's cgroup root (default: the unit's cgroup when started by systemd
    /// in a "supervisor" subgroup, else corral-service under the cgroup mount).
    #[arg(long, value_name = "PATH")]
    pub cgroup_root: Option<PathBuf>,
    /// After SIGTERM, how long running runs may go on before they are cancelled.
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    pub drain_timeout: String,
    /// How long runs' captured stdout/stderr files are kept after they were last
    /// written (the records stay in the ledger); "forever" (or "none") keeps them.
    #[arg(long, value_name = "DURATION", default_value = "7d")]
    pub keep_output: String,
    /// Members of GROUP are admins: they see and cancel every run and may name any
    /// user for a run (root always is an admin).
    #[arg(long, value_name = "GROUP")]
    pub admin_group: Option<String>,
    /// Only members of GROUP (and admins) may submit runs (default: every local user
    /// who can reach the socket).
    #[arg(long, value_name = "GROUP")]
    pub allow_group: Option<String>,
    /// At most N runs of one user at once; that user's other runs wait while other
    /// users' runs start (default: no per-user cap).
    #[arg(long, value_name = "N")]
    pub user_max_running: Option<usize>,
    /// Memory one user's running runs may reserve together; a run larger than this is
    /// refused (default: no per-user cap).
    #[arg(long, value_name = "SIZE")]
    pub user_budget_memory: Option<String>,
    /// CPUs one user's running runs may reserve together; a run asking for more is
    /// refused (default: no per-user cap).
    #[arg(long, value_name = "N")]
    pub user_budget_cpus: Option<String>,
    /// Bearer tokens for a TCP listener: one "USER TOKEN" line per user, the file mode
    /// 0600 (required with a TCP --listen; clients send $CORRAL_TOKEN).
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Where runs execute: "local" (this host, under the budget) or "slurm" (one
    /// Slurm batch job per run, running `corral run` on its node; Slurm decides when
    /// runs start; needs --spool).
    #[arg(long, value_name = "E", default_value = "local", value_parser = ["local", "slurm"])]
    pub executor: String,
    /// The Slurm partition of the runs' jobs (default: Slurm's default partition).
    #[arg(long, value_name = "P")]
    pub slurm_partition: Option<String>,
    /// The Slurm account the runs' jobs are charged to.
    #[arg(long, value_name = "A")]
    pub slurm_account: Option<String>,
    /// With --executor slurm: a directory every node sees at the same path (job
    /// scripts, records, captured output).
    #[arg(long, value_name = "DIR")]
    pub spool: Option<PathBuf>,
}

/// The service a client command talks to.
#[derive(Debug, Clone, Args)]
pub struct ServerArg {
    /// The corral service: a Unix socket path or 127.0.0.1:PORT.
    #[arg(long, value_name = "ADDR", env = SERVER_ENV, default_value = DEFAULT_SOCKET)]
    pub server: String,
}

impl ServerArg {
    fn client(&self) -> Result<Client> {
        let addr: Addr = self
            .server
            .parse()
            .map_err(|e| anyhow!("invalid --server {:?}: {e}", self.server))?;
        // A TCP service knows callers by their bearer token only.
        let token = std::env::var("CORRAL_TOKEN").ok().filter(|t| !t.is_empty());
        Ok(Client::new(addr).with_token(token))
    }
}

/// `corral submit [RUN OPTIONS] -- COMMAND...`
#[derive(Debug, Args)]
pub struct SubmitCmd {
    #[command(flatten)]
    pub server: ServerArg,
    /// Wait for the run and exit with its status, like `corral run`.
    #[arg(long)]
    pub wait: bool,
    /// Print JSON: the submission answer, or with --wait the corral.result/v1 record.
    #[arg(long)]
    pub json: bool,
    /// Higher runs first; FIFO within one priority.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        allow_hyphen_values = true
    )]
    pub priority: i64,
    /// Submitting again with the same key returns the existing run.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    #[command(flatten)]
    pub run: RunArgs,
}

/// `corral ps`
#[derive(Debug, Args)]
pub struct PsCmd {
    #[command(flatten)]
    pub server: ServerArg,
    /// Only runs in this state: queued, running, done or lost.
    #[arg(long, value_name = "STATE")]
    pub state: Option<String>,
    /// At most this many (the most recent).
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub limit: usize,
    /// Print the list as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `corral wait ID`, `corral cancel ID`, `corral show ID`
#[derive(Debug, Args)]
pub struct IdCmd {
    #[command(flatten)]
    pub server: ServerArg,
    /// Print JSON (wait and show: the corral.result/v1 record; cancel: the run status).
    #[arg(long)]
    pub json: bool,
    /// The run id.
    pub id: String,
}

/// `corral show ID`, `corral show --record FILE.json`
#[derive(Debug, Args)]
pub struct ShowCmd {
    #[command(flatten)]
    pub server: ServerArg,
    /// Print the corral.result/v1 record as JSON.
    #[arg(long)]
    pub json: bool,
    /// Draw the run's memory and CPU over time (its record's timeline), with its limits
    /// and events, to FILE.svg.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<std::path::PathBuf>,
    /// Read a record file (`corral run --json FILE`) instead of asking the service.
    #[arg(long, value_name = "FILE.json", conflicts_with = "id")]
    pub record: Option<std::path::PathBuf>,
    /// The run id.
    #[arg(required_unless_present = "record")]
    pub id: Option<String>,
}

/// `corral logs ID`
#[derive(Debug, Args)]
pub struct LogsCmd {
    #[command(flatten)]
    pub server: ServerArg,
    /// Show the standard error instead of the standard output.
    #[arg(long)]
    pub stderr: bool,
    /// Keep streaming while the run runs.
    #[arg(short, long)]
    pub follow: bool,
    /// Print {"id", "stream", "bytes", "text"} once the output is read (with --follow:
    /// once the run has ended); text is the output decoded as UTF-8, lossily.
    #[arg(long)]
    pub json: bool,
    /// The run id.
    pub id: String,
}

fn parse_drain(s: &str) -> Result<Duration> {
    if matches!(s.trim(), "0" | "0s") {
        return Ok(Duration::ZERO);
    }
    Ok(parse_duration("drain timeout", s)?)
}

/// `corral serve`.
pub fn serve(a: ServeArgs) -> Result<u8> {
    let listen: Addr = a
        .listen
        .parse()
        .map_err(|e| anyhow!("invalid --listen {:?}: {e}", a.listen))?;
    let mut cfg = ServeConfig::new(listen, a.ledger);
    cfg.backend = a.backend.0;
    cfg.cgroup_root = a.cgroup_root;
    cfg.max_running = a.max_running;
    if cfg.max_running == Some(0) {
        bail!("--max-running must be at least 1");
    }
    cfg.budget_memory = a
        .budget_memory
        .as_deref()
        .map(|s| parse_size("budget memory", s))
        .transpose()?;
    cfg.budget_cpus = a.budget_cpus.as_deref().map(parse_cpus).transpose()?;
    cfg.budget_pids = a.budget_pids.as_deref().map(parse_pids).transpose()?;
    // The same syntax as a run's --swap: "0" allowed, "max" for no cap.
    cfg.budget_swap = match parse_swap(&a.budget_swap).map_err(|e| anyhow!("--budget-swap: {e}"))? {
        Setting::Unlimited => None,
        Setting::Value(v) => Some(v),
    };
    let value = |s: Option<Setting<u64>>| s.and_then(Setting::into_option);
    let rate = |flag: &'static str, s: &Option<String>| {
        s.as_deref()
            .map(|v| parse_rate_setting(flag, v))
            .transpose()
            .map(value)
    };
    let iops = |flag: &'static str, s: &Option<String>| {
        s.as_deref()
            .map(|v| parse_iops_setting(flag, v))
            .transpose()
            .map(value)
    };
    cfg.budget_io = corral_service::config::BudgetIo {
        read_bps: rate("--budget-io-read-bps", &a.budget_io_read_bps)?,
        write_bps: rate("--budget-io-write-bps", &a.budget_io_write_bps)?,
        read_iops: iops("--budget-io-read-iops", &a.budget_io_read_iops)?,
        write_iops: iops("--budget-io-write-iops", &a.budget_io_write_iops)?,
        devices: a.budget_io_device.clone(),
    };
    cfg.drain_timeout = parse_drain(&a.drain_timeout)?;
    cfg.keep_output = match a.keep_output.trim() {
        "forever" | "none" => None,
        s => Some(parse_duration("--keep-output", s)?),
    };
    cfg.admin_group = a.admin_group;
    cfg.allow_group = a.allow_group;
    cfg.user_max_running = a.user_max_running;
    if cfg.user_max_running == Some(0) {
        bail!("--user-max-running must be at least 1");
    }
    cfg.user_budget_memory = a
        .user_budget_memory
        .as_deref()
        .map(|s| parse_size("user budget memory", s))
        .transpose()?;
    cfg.user_budget_cpus = a.user_budget_cpus.as_deref().map(parse_cpus).transpose()?;
    cfg.token_file = a.token_file;
    cfg.executor = executor_config(&a.executor, a.spool, a.slurm_partition, a.slurm_account)?;
    // If the service is killed, its guard ends the runs in flight at once; the restart
    // then records them as lost.
    // The guard starts before the service moves itself into its `supervisor` cgroup, so
    // it does not keep that cgroup busy when the service removes its tree at exit.
    if let Ok(exe) = std::env::current_exe() {
        corral_run::guard::enable(&exe);
        corral_run::guard::start_now();
    }
    corral_service::serve(cfg).map_err(|e| anyhow!(e))?;
    Ok(0)
}

/// `--executor` and its options.
fn executor_config(
    executor: &str,
    spool: Option<PathBuf>,
    partition: Option<String>,
    account: Option<String>,
) -> Result<ExecutorConfig> {
    if executor != "slurm" {
        if spool.is_some() || partition.is_some() || account.is_some() {
            bail!("--spool, --slurm-partition and --slurm-account need --executor slurm");
        }
        return Ok(ExecutorConfig::Local);
    }
    let Some(spool) = spool else {
        bail!("--executor slurm needs --spool DIR, a directory every node sees");
    };
    // The nodes see the spool at the same absolute path.
    let spool =
        std::path::absolute(&spool).with_context(|| format!("--spool {}", spool.display()))?;
    let corral = std::env::current_exe().context("finding corral's own path for the jobs")?;
    Ok(ExecutorConfig::Slurm(SlurmConfig {
        partition,
        account,
        spool,
        corral,
    }))
}

/// Turns a client error into an exit status: 1 for an unknown run, else 125.
fn fail(e: ClientError) -> Result<u8> {
    if e.status() == Some(404) {
        eprintln!("corral: {e}");
        return Ok(1);
    }
    Err(anyhow!(e))
}

fn patch_json(p: &LimitsPatch) -> Map<String, Value> {
    fn set<T>(
        m: &mut Map<String, Value>,
        k: LimitKind,
        s: &Option<Setting<T>>,
        f: impl Fn(&T) -> Value,
    ) {
        if let Some(s) = s {
            let v = match s {
                Setting::Value(v) => f(v),
                Setting::Unlimited => Value::from("max"),
            };
            m.insert(k.key().to_string(), v);
        }
    }
    let secs = |d: &Duration| Value::from(d.as_secs_f64().to_string());
    let mut m = Map::new();
    set(&mut m, LimitKind::Memory, &p.memory, |v| Value::from(*v));
    set(&mut m, LimitKind::Swap, &p.swap, |v| {
        Value::from(v.to_string())
    });
    set(&mut m, LimitKind::Cpus, &p.cpus, |v| Value::from(*v));
    set(&mut m, LimitKind::Pids, &p.pids, |v| Value::from(*v));
    set(&mut m, LimitKind::Timeout, &p.timeout, secs);
    set(&mut m, LimitKind::CpuTime, &p.cpu_time, secs);
    set(&mut m, LimitKind::OutputLimit, &p.output_limit, |v| {
        Value::from(*v)
    });
    if let Some(g) = p.grace {
        m.insert(LimitKind::Grace.key().into(), secs(&g));
    }
    if let Some(r) = p.require_isolation {
        m.insert(LimitKind::RequireIsolation.key().into(), Value::from(r));
    }
    if let Some(s) = p.syscalls {
        m.insert(LimitKind::Syscalls.key().into(), Value::from(s.as_str()));
    }
    if let Some(n) = p.network {
        m.insert(LimitKind::Network.key().into(), Value::from(n.as_str()));
    }
    if let Some(i) = p.isolation {
        m.insert(LimitKind::Isolation.key().into(), Value::from(i.as_str()));
    }
    if let Some(n) = p.pid_ns {
        m.insert(LimitKind::PidNs.key().into(), Value::from(n.as_str()));
    }
    if let Some(f) = p.fs {
        m.insert(LimitKind::Fs.key().into(), Value::from(f.as_str()));
    }
    let paths = |v: &[std::path::PathBuf]| {
        Value::from(
            v.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>(),
        )
    };
    if !p.rw.is_empty() {
        m.insert(LimitKind::Rw.key().into(), paths(&p.rw));
    }
    if !p.hide.is_empty() {
        m.insert(LimitKind::Hide.key().into(), paths(&p.hide));
    }
    if let Some(u) = &p.user {
        m.insert(LimitKind::User.key().into(), Value::from(u.as_string()));
    }
    let num = |v: &u64| Value::from(*v);
    set(&mut m, LimitKind::IoReadBps, &p.io_read_bps, num);
    set(&mut m, LimitKind::IoWriteBps, &p.io_write_bps, num);
    set(&mut m, LimitKind::IoReadIops, &p.io_read_iops, num);
    set(&mut m, LimitKind::IoWriteIops, &p.io_write_iops, num);
    set(&mut m, LimitKind::IoWeight, &p.io_weight, num);
    set(&mut m, LimitKind::FileSize, &p.file_size, num);
    set(&mut m, LimitKind::Disk, &p.disk, num);
    if !p.io_device.is_empty() {
        m.insert(LimitKind::IoDevice.key().into(), paths(&p.io_device));
    }
    m
}

/// The submission for `corral submit`: the profile name and the limits as given
/// (metadata file, then flags) go to the service, which resolves them against its own
/// profiles.
fn submit_request(c: &SubmitCmd) -> Result<SubmitRequest> {
    let a = &c.run;
    if a.command.is_empty() || a.command[0].is_empty() {
        bail!("no command given; use: corral submit [OPTIONS] -- COMMAND [ARGS...]");
    }
    let metadata = a.limits_from.as_deref().map(load_metadata).transpose()?;
    let mut limits = metadata
        .as_ref()
        .map(|m| patch_json(&m.limits))
        .unwrap_or_default();
    let flags: [(LimitKind, &Option<String>); 21] = [
        (LimitKind::Memory, &a.memory),
        (LimitKind::Swap, &a.swap),
        (LimitKind::Cpus, &a.cpus),
        (LimitKind::Pids, &a.pids),
        (LimitKind::Timeout, &a.timeout),
        (LimitKind::CpuTime, &a.cpu_time),
        (LimitKind::Grace, &a.grace),
        (LimitKind::OutputLimit, &a.output_limit),
        (LimitKind::Syscalls, &a.syscalls),
        (LimitKind::Network, &a.network),
        (LimitKind::Isolation, &a.isolation),
        (LimitKind::Fs, &a.fs),
        (LimitKind::PidNs, &a.pid_ns),
        (LimitKind::User, &a.user),
        (LimitKind::IoReadBps, &a.io_read_bps),
        (LimitKind::IoWriteBps, &a.io_write_bps),
        (LimitKind::IoReadIops, &a.io_read_iops),
        (LimitKind::IoWriteIops, &a.io_write_iops),
        (LimitKind::IoWeight, &a.io_weight),
        (LimitKind::FileSize, &a.file_size),
        (LimitKind::Disk, &a.disk),
    ];
    let mut given = Map::new();
    for (k, v) in flags {
        if let Some(v) = v {
            given.insert(k.key().to_string(), Value::from(v.clone()));
        }
    }
    if a.require_isolation {
        given.insert(LimitKind::RequireIsolation.key().into(), Value::from(true));
    }
    // The lists add up: the metadata's paths, then the flags'.
    for (k, flag) in [
        (LimitKind::Rw, &a.rw),
        (LimitKind::Hide, &a.hide),
        (LimitKind::IoDevice, &a.io_device),
    ] {
        if !flag.is_empty() {
            let mut all = match limits.remove(k.key()) {
                Some(Value::Array(v)) => v,
                _ => Vec::new(),
            };
            all.extend(flag.iter().map(|p| Value::from(p.clone())));
            given.insert(k.key().into(), Value::from(all));
        }
    }
    // The same parsers as the service: a typo is reported here, precisely.
    LimitsPatch::from_table(&given, "the command line")?;
    // --isolation resets the metadata's network and syscalls keys (one layer below the
    // flags), as for `corral run`; the flags' own keys still win over it.
    if given.contains_key(LimitKind::Isolation.key()) {
        limits.remove(LimitKind::Network.key());
        limits.remove(LimitKind::Syscalls.key());
        limits.remove(LimitKind::Fs.key());
        limits.remove(LimitKind::PidNs.key());
        limits.remove(LimitKind::User.key());
    }
    limits.extend(given);
    let env = a
        .env
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(anyhow!("invalid --env {kv:?}: use NAME=VALUE")),
        })
        .collect::<Result<_>>()?;
    let here = std::env::current_dir().context("finding the current directory")?;
    let cwd = match &a.cwd {
        Some(p) => here.join(p),
        None => here,
    };
    Ok(SubmitRequest {
        command: a.command.clone(),
        cwd: Some(cwd.display().to_string()),
        env,
        clear_env: a.clear_env,
        profile: a
            .profile
            .clone()
            .or_else(|| metadata.and_then(|m| m.profile)),
        limits: (!limits.is_empty()).then_some(limits),
        id: a.id.clone(),
        idempotency_key: c.idempotency_key.clone(),
        priority: c.priority,
    })
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

fn record_of(st: &RunStatus) -> Result<&Record> {
    st.record
        .as_ref()
        .ok_or_else(|| anyhow!("run {} is {} but has no record", st.id, st.state))
}

fn exit_of(rec: &Record) -> u8 {
    rec.outcome.exit_code.clamp(0, 255) as u8
}

fn clean(rec: &Record) -> bool {
    rec.outcome.reason == Reason::Exited && rec.outcome.exit_code == 0
}

/// `corral submit`.
pub fn submit(c: SubmitCmd) -> Result<u8> {
    if !c.wait && (c.run.stdout.is_some() || c.run.stderr.is_some()) {
        bail!(
            "the service captures the output itself: read it with `corral logs ID`, or use \
             --wait to have --stdout/--stderr FILE written when the run ends"
        );
    }
    let req = submit_request(&c)?;
    let client = c.server.client()?;
    let (code, resp) = match client.submit(&req) {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    if !c.wait {
        if c.json {
            print_json(&resp)?;
        } else {
            if code == 200 {
                eprintln!(
                    "corral: the idempotency key was used before: run {} is {}",
                    resp.id, resp.state
                );
            }
            outln!("{}", resp.id)?;
        }
        return Ok(0);
    }
    // Standard output is the run's own, as with `corral run`: the id goes to stderr.
    if !c.json {
        eprintln!("corral: submitted run {}", resp.id);
    }
    let st = match client.wait_done(&resp.id) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let rec = record_of(&st)?;
    for (file, stream) in [(&c.run.stdout, "stdout"), (&c.run.stderr, "stderr")] {
        let mut body = match client.output(&resp.id, stream, false) {
            Ok(b) => b,
            // Nothing captured (a run that never started): nothing to print.
            Err(e) if file.is_none() && e.status() == Some(404) => continue,
            Err(e) => return Err(anyhow!(e)),
        };
        match file {
            Some(path) => {
                let mut f = std::fs::File::create(path)
                    .with_context(|| format!("creating {}", path.display()))?;
                std::io::copy(&mut body, &mut f)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            // Without a file the output is printed, as `corral run` lets it through
            // (with --json, stdout is the record's: the run's stdout goes nowhere).
            None if stream == "stdout" && c.json => {}
            None if stream == "stdout" => copy_out(&mut body, &mut std::io::stdout().lock())?,
            None => copy_out(&mut body, &mut std::io::stderr().lock())?,
        }
    }
    if c.json {
        print_json(rec)?;
    } else if !clean(rec) {
        eprintln!("corral: {}", rec.notes);
    }
    Ok(exit_of(rec))
}

fn short(s: &Option<String>) -> String {
    // 2026-11-27T13:05:01.123Z -> 2026-11-27 13:05:01
    s.as_deref()
        .map(|t| t.get(..19).unwrap_or(t).replace('T', " "))
        .unwrap_or_else(|| "-".into())
}

fn shell_words(cmd: &[String]) -> String {
    cmd.iter()
        .map(|a| {
            if !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `corral ps`.
pub fn ps(c: PsCmd) -> Result<u8> {
    let state = c
        .state
        .as_deref()
        .map(|s| s.parse::<RunState>())
        .transpose()
        .map_err(|e| anyhow!(e))?;
    let list = match c.server.client()?.list(state, Some(c.limit)) {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    if c.json {
        print_json(&list)?;
        return Ok(0);
    }
    let mut out = std::io::stdout().lock();
    // A SLURM JOB column when some run was handed to Slurm.
    let jobs = list.runs.iter().any(|r| r.slurm_job_id.is_some());
    let job_col = |r: Option<&str>| {
        if jobs {
            format!("{:<10} ", r.unwrap_or("-"))
        } else {
            String::new()
        }
    };
    writeln!(
        out,
        "{:<28} {:<8} {:<12} {:>4}  {:<19}  {:<12} {:>4}  {}COMMAND",
        "ID",
        "STATE",
        "OWNER",
        "PRIO",
        "SUBMITTED",
        "REASON",
        "EXIT",
        job_col(Some("SLURM JOB"))
    )?;
    for r in &list.runs {
        let (reason, exit) = match &r.record {
            Some(rec) => (
                rec.outcome.reason.as_str().to_string(),
                rec.outcome.exit_code.to_string(),
            ),
            None => ("-".into(), "-".into()),
        };
        // Queued and running runs have no record yet: their submitted command.
        let cmd = r
            .record
            .as_ref()
            .map(|rec| shell_words(&rec.command))
            .or_else(|| r.command.as_deref().map(shell_words))
            .unwrap_or_default();
        let owner = r.owner.as_ref().map_or("-", |o| o.name.as_str());
        writeln!(
            out,
            "{:<28} {:<8} {:<12} {:>4}  {:<19}  {:<12} {:>4}  {}{}",
            r.id,
            r.state.as_str(),
            owner,
            r.priority,
            short(&Some(r.submitted_at.clone())),
            reason,
            exit,
            job_col(r.slurm_job_id.as_deref()),
            cmd
        )?;
    }
    Ok(0)
}

/// `corral wait ID`.
pub fn wait(c: IdCmd) -> Result<u8> {
    let client = c.server.client()?;
    let waited = match crate::live::wanted(false) {
        true => crate::live::wait_showing(&client, &c.id),
        false => client.wait_done(&c.id),
    };
    let st = match waited {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let rec = record_of(&st)?;
    if c.json {
        print_json(rec)?;
    } else if clean(rec) {
        outln!("{}: {}", rec.id, rec.notes)?;
    } else {
        eprintln!("corral: {}: {}", rec.id, rec.notes);
    }
    Ok(exit_of(rec))
}

/// `corral cancel ID`.
pub fn cancel(c: IdCmd) -> Result<u8> {
    let (code, st) = match c.server.client()?.cancel(&c.id) {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    if c.json {
        print_json(&st)?;
        return Ok(0);
    }
    let reason = st.record.as_ref().map(|r| r.outcome.reason);
    match (code, reason) {
        (202, _) => outln!(
            "{}: cancelling (SIGTERM, then SIGKILL after its grace period)",
            st.id
        )?,
        (_, Some(Reason::Cancelled)) => outln!("{}: cancelled", st.id)?,
        (_, Some(r)) => outln!("{}: already finished ({r}); nothing to cancel", st.id)?,
        _ => outln!("{}: {}", st.id, st.state)?,
    }
    Ok(0)
}

/// Copies a run's output to `out`; a reader that went away (`| head`) ends it quietly.
fn copy_out(body: &mut impl Read, out: &mut impl Write) -> Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = body.read(&mut buf).context("reading the output")?;
        if n == 0 {
            return Ok(());
        }
        match out.write_all(&buf[..n]).and_then(|_| out.flush()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

/// `corral logs ID`.
pub fn logs(c: LogsCmd) -> Result<u8> {
    let mut client = c.server.client()?;
    if c.follow {
        client.read_timeout = None;
    }
    let stream = if c.stderr { "stderr" } else { "stdout" };
    let mut body = match client.output(&c.id, stream, c.follow) {
        Ok(b) => b,
        Err(e) => return fail(e),
    };
    if c.json {
        let mut all = Vec::new();
        body.read_to_end(&mut all).context("reading the output")?;
        print_json(&serde_json::json!({
            "id": c.id,
            "stream": stream,
            "bytes": all.len(),
            "text": String::from_utf8_lossy(&all),
        }))?;
        return Ok(0);
    }
    // `corral logs ID | head` closes the pipe early.
    copy_out(&mut body, &mut std::io::stdout().lock())?;
    Ok(0)
}

/// `corral show`: a run of the service, or a record file; `--plot` draws its timeline.
pub fn show_cmd(c: ShowCmd) -> Result<u8> {
    let Some(id) = c.id else {
        let path = c.record.expect("clap requires an id or --record");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let rec: corral_record::Record = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a corral.result/v1 record", path.display()))?;
        match &c.plot {
            Some(p) => crate::plot::write(&rec, p)?,
            None => print_json(&rec)?,
        }
        return Ok(0);
    };
    if let Some(p) = &c.plot {
        crate::plot::check_path(p)?;
        let st = match c.server.client()?.status(&id) {
            Ok(s) => s,
            Err(e) => return fail(e),
        };
        let Some(rec) = &st.record else {
            eprintln!(
                "corral: run {id} is {}: it has no result record yet",
                st.state
            );
            return Ok(1);
        };
        crate::plot::write(rec, p)?;
    }
    show(IdCmd {
        server: c.server,
        json: c.json,
        id,
    })
}

/// `corral show ID`.
pub fn show(c: IdCmd) -> Result<u8> {
    let st = match c.server.client()?.status(&c.id) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    if c.json {
        return match &st.record {
            Some(rec) => {
                print_json(rec)?;
                Ok(0)
            }
            None => {
                eprintln!(
                    "corral: run {} is {}: it has no result record yet",
                    st.id, st.state
                );
                Ok(1)
            }
        };
    }
    let mut o = std::io::stdout().lock();
    let Some(r) = &st.record else {
        writeln!(o, "run {}: {}", st.id, st.state)?;
        writeln!(o, "  priority:  {}", st.priority)?;
        writeln!(o, "  submitted: {}", short(&Some(st.submitted_at.clone())))?;
        writeln!(o, "  started:   {}", short(&st.started_at))?;
        if let Some(job) = &st.slurm_job_id {
            writeln!(o, "  slurm:     job {job}")?;
        }
        return Ok(0);
    };
    writeln!(
        o,
        "run {}: {} ({}, exit status {})",
        st.id, st.state, r.outcome.reason, r.outcome.exit_code
    )?;
    writeln!(o, "  command:   {}", shell_words(&r.command))?;
    if let Some(cwd) = &r.cwd {
        writeln!(o, "  cwd:       {cwd}")?;
    }
    writeln!(
        o,
        "  times:     submitted {}, started {}, finished {}",
        short(&Some(st.submitted_at.clone())),
        short(&st.started_at),
        short(&Some(r.finished_at.clone()))
    )?;
    let l = &r.limits.requested;
    let mut lim = Vec::new();
    if let Some(m) = l.memory_bytes {
        lim.push(format!("memory {}", format_bytes(m)));
    }
    if let Some(c) = l.cpus {
        lim.push(format!("{c} CPUs"));
    }
    if let Some(p) = l.pids {
        lim.push(format!("{p} tasks"));
    }
    if let Some(t) = l.timeout_s {
        lim.push(format!(
            "timeout {}",
            format_duration(Duration::from_secs_f64(t))
        ));
    }
    if let Some(t) = l.cpu_time_s {
        lim.push(format!(
            "CPU time {}",
            format_duration(Duration::from_secs_f64(t))
        ));
    }
    writeln!(o, "  profile:   {}; limits: {}", r.profile, lim.join(", "))?;
    let u = &r.usage;
    let mut use_ = vec![
        format!(
            "wall {}",
            format_duration(Duration::from_secs_f64(u.wall_s))
        ),
        format!("CPU {:.2} s", u.cpu_user_s + u.cpu_system_s),
    ];
    if let Some(p) = u.memory_peak_bytes {
        use_.push(format!("peak memory {}", format_bytes(p)));
    }
    if let Some(p) = u.pids_peak {
        use_.push(format!("peak tasks {p}"));
    }
    writeln!(o, "  usage:     {}", use_.join(", "))?;
    writeln!(
        o,
        "  backend:   {} ({})",
        r.backend,
        r.cgroup.as_deref().unwrap_or("-")
    )?;
    if let Some(j) = &r.slurm {
        writeln!(
            o,
            "  slurm:     job {} ({}) on {}",
            j.job_id,
            j.state.as_deref().unwrap_or("state unknown"),
            j.node.as_deref().unwrap_or("no node")
        )?;
    }
    if let Some(out) = &r.output {
        for (name, c) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
            if let Some(c) = c {
                writeln!(o, "  {name}:    {} ({})", c.path, format_bytes(c.bytes))?;
            }
        }
    }
    writeln!(o, "  notes:     {}", r.notes)?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_spec::LIMIT_KEYS;

    /// The submission serializer writes every limit under its table key, in a form the
    /// service's parser reads back to the same patch.
    #[test]
    fn patch_json_round_trips() {
        let p = LimitsPatch {
            memory: Some(Setting::Value(64 << 20)),
            swap: Some(Setting::Value(0)),
            cpus: Some(Setting::Value(0.5)),
            pids: Some(Setting::Unlimited),
            timeout: Some(Setting::Value(Duration::from_secs(1800))),
            cpu_time: Some(Setting::Unlimited),
            grace: Some(Duration::from_secs(2)),
            output_limit: Some(Setting::Value(1 << 20)),
            require_isolation: Some(true),
            syscalls: Some(corral_spec::Syscalls::Off),
            network: Some(corral_spec::Network::Host),
            isolation: Some(corral_spec::Isolation::Off),
            fs: Some(corral_spec::FsMode::Host),
            rw: vec!["out".into(), "/data".into()],
            hide: vec!["/home".into()],
            pid_ns: Some(corral_spec::PidNs::Off),
            user: Some(corral_spec::User::parse("nobody:nogroup").unwrap()),
            io_read_bps: Some(Setting::Value(20 << 20)),
            io_write_bps: Some(Setting::Unlimited),
            io_read_iops: Some(Setting::Value(500)),
            io_write_iops: Some(Setting::Value(200)),
            io_weight: Some(Setting::Value(300)),
            io_device: vec!["/dev/vda".into()],
            file_size: Some(Setting::Value(1 << 20)),
            disk: Some(Setting::Value(50 << 20)),
        };
        let m = patch_json(&p);
        let mut keys: Vec<&str> = m.keys().map(String::as_str).collect();
        let mut want = LIMIT_KEYS.to_vec();
        keys.sort_unstable();
        want.sort_unstable();
        assert_eq!(keys, want);
        assert_eq!(LimitsPatch::from_table(&m, "test").unwrap(), p);
        assert!(patch_json(&LimitsPatch::default()).is_empty());
    }

    /// `corral submit --isolation off` resets the metadata's network and syscalls
    /// keys, as `corral run` does; the flags' own keys still win.
    #[test]
    fn submit_isolation_resets_the_metadata_layers() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            c: SubmitCmd,
        }
        let dir = tempfile::tempdir().unwrap();
        let meta = dir.path().join("m.json");
        std::fs::write(
            &meta,
            r#"{"limits": {"network": "none", "syscalls": "off", "pids": 8}}"#,
        )
        .unwrap();
        let meta = meta.display().to_string();
        let t = T::parse_from([
            "t",
            "--limits-from",
            &meta,
            "--isolation",
            "off",
            "--syscalls",
            "default",
            "--",
            "true",
        ]);
        let req = submit_request(&t.c).unwrap();
        let limits = Value::Object(req.limits.unwrap());
        assert_eq!(
            limits,
            serde_json::json!({"pids": 8, "isolation": "off", "syscalls": "default"})
        );
        let t = T::parse_from(["t", "--isolation", "sometimes", "--", "true"]);
        let e = submit_request(&t.c).unwrap_err().to_string();
        assert!(e.contains("invalid isolation \"sometimes\""), "{e}");
    }
}
