//! The run options shared by `corral run` (and later `corral submit`), and how they
//! become a [`RunSpec`]: built-in profile < profile files < `--limits-from` < flags.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};
use clap::Args;
use corral_run::{RunSpec, Stdio};
use corral_spec::{check_hide_path, check_rw_path, FsMode};
use corral_spec::{
    check_io_device_path, parse_io_weight_setting, parse_iops_setting, parse_rate_setting,
};
use corral_spec::{
    load_metadata, parse_cpus_setting, parse_duration_setting, parse_grace, parse_pids_setting,
    parse_size_setting, parse_swap, Isolation, LimitsPatch, Network, PidNs, ProfileSet, Syscalls,
    User,
};

/// Options of one run.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Profile to start from: default, notebook, post_process, tool, or one of yours.
    #[arg(short = 'p', long, value_name = "NAME")]
    pub profile: Option<String>,
    /// Memory budget (memory.max), binary units: 512M, 2G (= 2 GiB); "max" for none.
    #[arg(short = 'm', long, value_name = "SIZE", allow_hyphen_values = true)]
    pub memory: Option<String>,
    /// Swap budget (memory.swap.max); default 0.
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    pub swap: Option<String>,
    /// CPU quota in CPUs: 0.5, 1.5 (cpu.max over a 100 ms period); "max" for none.
    #[arg(short = 'c', long, value_name = "FLOAT", allow_hyphen_values = true)]
    pub cpus: Option<String>,
    /// Maximum number of processes and threads (pids.max); "max" for none.
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub pids: Option<String>,
    /// Wall-clock limit: 90s, 30m, 1h30m; "none" for no limit.
    #[arg(short = 't', long, value_name = "DURATION", allow_hyphen_values = true)]
    pub timeout: Option<String>,
    /// CPU-time limit over the whole process tree; "none" for no limit.
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub cpu_time: Option<String>,
    /// Time between SIGTERM to the tree and SIGKILL (default 5s).
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub grace: Option<String>,
    /// Working directory of the command.
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<PathBuf>,
    /// Set an environment variable (repeatable).
    #[arg(long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Start the command with an empty environment (plus --env).
    #[arg(long)]
    pub clear_env: bool,
    /// Write the command's standard output to FILE (default: inherited).
    #[arg(long, value_name = "FILE")]
    pub stdout: Option<PathBuf>,
    /// Write the command's standard error to FILE (default: inherited).
    #[arg(long, value_name = "FILE")]
    pub stderr: Option<PathBuf>,
    /// Cap on each captured file; the rest is dropped and noted.
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    pub output_limit: Option<String>,
    /// JSON or TOML analysis metadata with limit overrides.
    #[arg(long, value_name = "FILE")]
    pub limits_from: Option<PathBuf>,
    /// Refuse to run (exit 125) when any requested limit or isolation layer cannot be
    /// enforced.
    #[arg(long)]
    pub require_isolation: bool,
    /// The syscall filter: "default" (corral's seccomp deny-list) or "off".
    #[arg(long, value_name = "POLICY", allow_hyphen_values = true)]
    pub syscalls: Option<String>,
    /// The network: "none" (default: its own namespace with only loopback) or "host".
    #[arg(long, value_name = "MODE", allow_hyphen_values = true)]
    pub network: Option<String>,
    /// The sandbox's master switch: "default" or "off" (no sandbox: the host's network,
    /// no syscall filter, no setsid / no_new_privs / core-dump limit); an explicit
    /// --network or --syscalls wins over it.
    #[arg(long, value_name = "MODE", allow_hyphen_values = true)]
    pub isolation: Option<String>,
    /// The file-system view: "read-only" (default: the host read-only; writable are the
    /// working directory, each --rw path and a private /tmp and /dev/shm) or "host".
    #[arg(long, value_name = "MODE", allow_hyphen_values = true)]
    pub fs: Option<String>,
    /// Keep PATH writable in the read-only view (repeatable; relative to the working
    /// directory); it must exist.
    #[arg(long, value_name = "PATH")]
    pub rw: Vec<String>,
    /// Cover PATH (absolute; repeatable) with an empty read-only directory (or file).
    #[arg(long, value_name = "PATH")]
    pub hide: Vec<String>,
    /// The pid namespace: "on" (default: the run sees and signals only its own
    /// processes, /proc shows only them) or "off" (the host's).
    #[arg(long, value_name = "MODE", allow_hyphen_values = true)]
    pub pid_ns: Option<String>,
    /// Who the command runs as: "default" (an ordinary user's runs are that user;
    /// root's get a dynamic uid), "dynamic", or a user, optionally with ":GROUP" (names
    /// or numbers; root only; "root" runs with root's uid but no capabilities).
    #[arg(long, value_name = "USER[:GROUP]", allow_hyphen_values = true)]
    pub user: Option<String>,
    /// Read bandwidth on each disk the run uses (the disks under the working directory
    /// and --rw paths, or --io-device): bytes a second, binary units (10M = 10 MiB/s);
    /// "max" for none.
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    pub io_read_bps: Option<String>,
    /// Write bandwidth on each disk the run uses, like --io-read-bps. cgroup v1
    /// throttles only direct I/O, not page-cache writeback.
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    pub io_write_bps: Option<String>,
    /// Read operations a second on each disk the run uses; "max" for none.
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub io_read_iops: Option<String>,
    /// Write operations a second on each disk the run uses; "max" for none.
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub io_write_iops: Option<String>,
    /// Proportional I/O weight, 1-10000 (default 100): the run's share of a contended
    /// disk, where the kernel's I/O scheduler supports weights.
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub io_weight: Option<String>,
    /// Apply the I/O limits to this block device (a disk or partition: its whole disk)
    /// instead of the disks under the working directory and --rw paths (repeatable).
    #[arg(long, value_name = "PATH")]
    pub io_device: Vec<String>,
    /// The largest file the run may write (RLIMIT_FSIZE): a write beyond it fails
    /// (EFBIG, SIGXFSZ); binary units; "max" for none.
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    pub file_size: Option<String>,
    /// The space the run may add under its writable paths (a project quota on ext4 or
    /// XFS with prjquota); beyond it writes fail with EDQUOT; "max" for none.
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    pub disk: Option<String>,
    /// The run's id (1-64 of A-Z a-z 0-9 _ -); generated when absent.
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

impl RunArgs {
    /// Merges profile, metadata and flags into a run spec; every bad value is one
    /// precise error.
    pub fn to_spec(&self) -> Result<RunSpec> {
        let profiles = ProfileSet::load_default()?;
        let metadata = match &self.limits_from {
            Some(p) => Some(load_metadata(p)?),
            None => None,
        };
        let name = self
            .profile
            .clone()
            .or_else(|| metadata.as_ref().and_then(|m| m.profile.clone()))
            .unwrap_or_else(|| "default".to_string());
        let mut limits = profiles.get(&name)?.limits;
        if let Some(md) = &metadata {
            md.limits.apply(&mut limits);
        }
        self.flags_patch()?.apply(&mut limits);
        let env = self
            .env
            .iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
                _ => Err(anyhow!("invalid --env {kv:?}: use NAME=VALUE")),
            })
            .collect::<Result<Vec<_>>>()?;
        if self.command.is_empty() || self.command[0].is_empty() {
            bail!("no command given; use: corral run [OPTIONS] -- COMMAND [ARGS...]");
        }
        let file = |p: &Option<PathBuf>| p.clone().map_or(Stdio::Inherit, Stdio::File);
        Ok(RunSpec {
            id: self.id.clone(),
            command: self.command.clone(),
            cwd: self.cwd.clone(),
            env,
            clear_env: self.clear_env,
            stdin: Stdio::Inherit,
            stdout: file(&self.stdout),
            stderr: file(&self.stderr),
            profile: name,
            limits,
            timeline: None,
        })
    }

    fn flags_patch(&self) -> Result<LimitsPatch> {
        Ok(LimitsPatch {
            memory: self
                .memory
                .as_deref()
                .map(corral_spec::parse_memory_setting)
                .transpose()?,
            swap: self.swap.as_deref().map(parse_swap).transpose()?,
            cpus: self.cpus.as_deref().map(parse_cpus_setting).transpose()?,
            pids: self.pids.as_deref().map(parse_pids_setting).transpose()?,
            timeout: self
                .timeout
                .as_deref()
                .map(|s| parse_duration_setting("timeout", s))
                .transpose()?,
            cpu_time: self
                .cpu_time
                .as_deref()
                .map(|s| parse_duration_setting("CPU-time limit", s))
                .transpose()?,
            grace: self.grace.as_deref().map(parse_grace).transpose()?,
            output_limit: self
                .output_limit
                .as_deref()
                .map(|s| parse_size_setting("output limit", s))
                .transpose()?,
            require_isolation: self.require_isolation.then_some(true),
            syscalls: self.syscalls.as_deref().map(Syscalls::parse).transpose()?,
            network: self.network.as_deref().map(Network::parse).transpose()?,
            isolation: self
                .isolation
                .as_deref()
                .map(Isolation::parse)
                .transpose()?,
            fs: self.fs.as_deref().map(FsMode::parse).transpose()?,
            rw: self
                .rw
                .iter()
                .map(|p| {
                    let p = PathBuf::from(p);
                    check_rw_path(&p).map(|()| p)
                })
                .collect::<Result<_, _>>()?,
            hide: self
                .hide
                .iter()
                .map(|p| {
                    let p = PathBuf::from(p);
                    check_hide_path(&p).map(|()| p)
                })
                .collect::<Result<_, _>>()?,
            pid_ns: self.pid_ns.as_deref().map(PidNs::parse).transpose()?,
            user: self.user.as_deref().map(User::parse).transpose()?,
            io_read_bps: self
                .io_read_bps
                .as_deref()
                .map(|s| parse_rate_setting("I/O read bandwidth", s))
                .transpose()?,
            io_write_bps: self
                .io_write_bps
                .as_deref()
                .map(|s| parse_rate_setting("I/O write bandwidth", s))
                .transpose()?,
            io_read_iops: self
                .io_read_iops
                .as_deref()
                .map(|s| parse_iops_setting("I/O read rate", s))
                .transpose()?,
            io_write_iops: self
                .io_write_iops
                .as_deref()
                .map(|s| parse_iops_setting("I/O write rate", s))
                .transpose()?,
            io_weight: self
                .io_weight
                .as_deref()
                .map(parse_io_weight_setting)
                .transpose()?,
            io_device: self
                .io_device
                .iter()
                .map(|p| {
                    let p = PathBuf::from(p);
                    check_io_device_path(&p).map(|()| p)
                })
                .collect::<Result<_, _>>()?,
            file_size: self
                .file_size
                .as_deref()
                .map(|s| parse_size_setting("file size limit", s))
                .transpose()?,
            disk: self
                .disk
                .as_deref()
                .map(|s| parse_size_setting("disk budget", s))
                .transpose()?,
        })
    }
}
