//! How the service is configured, and the addresses it listens on.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use corral_run::backend::{online_cpus, BackendKind};

use crate::admission::Budget;

/// The default Unix socket.
pub const DEFAULT_SOCKET: &str = "/run/corral/corral.sock";
/// The default ledger.
pub const DEFAULT_LEDGER: &str = "/var/lib/corral/ledger.db";
/// The environment variable the client commands read the server address from.
pub const SERVER_ENV: &str = "CORRAL_SERVER";
/// The cap on captured output when a run sets no `output_limit`.
pub const DEFAULT_OUTPUT_LIMIT: u64 = 64 << 20;
/// The largest request body accepted.
pub const MAX_BODY: usize = 1 << 20;
/// The default `--drain-timeout`.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(30);
/// The default `--keep-output`: a week.
pub const DEFAULT_KEEP_OUTPUT: Duration = Duration::from_secs(7 * 24 * 3600);
/// The default `--budget-pids`.
pub const DEFAULT_BUDGET_PIDS: u64 = 4096;

/// Where the service listens, or where a client connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addr {
    /// A Unix socket path.
    Unix(PathBuf),
    /// A TCP address (the service accepts loopback addresses only).
    Tcp(SocketAddr),
}

/// Why an address does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    /// Nothing was given.
    #[error("empty address")]
    Empty,
    /// `localhost:PORT` with a port that is not a number from 0 to 65535.
    #[error("invalid port in {0:?}")]
    Port(String),
    /// `tcp://…` or `http://…` without a usable host and port.
    #[error("invalid TCP address {0:?}; use 127.0.0.1:PORT")]
    Tcp(String),
}

impl std::str::FromStr for Addr {
    type Err = AddrError;
    /// `127.0.0.1:PORT`, `[::1]:PORT`, `localhost:PORT`, `tcp://…` or `http://…` are
    /// TCP; `unix:PATH` or anything else is a socket path.
    fn from_str(s: &str) -> Result<Addr, AddrError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(AddrError::Empty);
        }
        if let Some(p) = s.strip_prefix("unix:") {
            return Ok(Addr::Unix(PathBuf::from(p.trim_start_matches("//"))));
        }
        let hostport = s
            .strip_prefix("tcp://")
            .or_else(|| s.strip_prefix("http://"))
            .unwrap_or(s)
            .trim_end_matches('/');
        if let Ok(a) = hostport.parse::<SocketAddr>() {
            return Ok(Addr::Tcp(a));
        }
        if let Some(port) = hostport.strip_prefix("localhost:") {
            let port: u16 = port.parse().map_err(|_| AddrError::Port(s.to_string()))?;
            return Ok(Addr::Tcp(SocketAddr::from(([127, 0, 0, 1], port))));
        }
        if hostport != s {
            return Err(AddrError::Tcp(s.to_string()));
        }
        Ok(Addr::Unix(PathBuf::from(s)))
    }
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Addr::Unix(p) => write!(f, "{}", p.display()),
            Addr::Tcp(a) => write!(f, "{a}"),
        }
    }
}

/// Why the budget flags cannot make a budget.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    /// No `--budget-memory` and no `MemTotal` to take 75% of.
    #[error("cannot read MemTotal from /proc/meminfo; give --budget-memory")]
    NoMemTotal,
    /// `--budget-memory` below 1 MiB.
    #[error("--budget-memory must be at least 1M")]
    MemoryTooSmall,
    /// `--budget-cpus` below 0.01 (or not a number).
    #[error("--budget-cpus must be at least 0.01")]
    CpusTooSmall,
    /// `--budget-pids 0`.
    #[error("--budget-pids must be at least 1")]
    PidsTooSmall,
}

/// Everything `corral serve` is told.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Where to listen.
    pub listen: Addr,
    /// The ledger file; captured output goes to `output/` beside it.
    pub ledger: PathBuf,
    /// The backend (`None`: cgroup2 where usable, else cgroup1).
    pub backend: Option<BackendKind>,
    /// The service's cgroup root.
    pub cgroup_root: Option<PathBuf>,
    /// Runs at once (default 2 × CPUs).
    pub max_running: Option<usize>,
    /// The runs' shared memory (default 75% of RAM).
    pub budget_memory: Option<u64>,
    /// The runs' shared CPUs (default all CPUs less one, at least 1).
    pub budget_cpus: Option<f64>,
    /// The runs' shared task limit (default 4096).
    pub budget_pids: Option<u64>,
    /// The runs' shared swap (default 0; `None`: no cap).
    pub budget_swap: Option<u64>,
    /// How long running runs may go on after SIGTERM before they are cancelled.
    pub drain_timeout: Duration,
    /// The output cap for runs that set none.
    pub output_limit: u64,
    /// How long captured output outlives its finished run (`None`: for ever).
    pub keep_output: Option<Duration>,
    /// Members of this group (name or gid) are admins: they see and cancel every run
    /// and may name any user for a run. Root always is one.
    pub admin_group: Option<String>,
    /// When set, only members of this group (and admins) may submit runs.
    pub allow_group: Option<String>,
    /// At most this many runs of one user at once (`None`: no per-user cap).
    pub user_max_running: Option<usize>,
    /// The memory one user's running runs may reserve together.
    pub user_budget_memory: Option<u64>,
    /// The CPUs one user's running runs may reserve together.
    pub user_budget_cpus: Option<f64>,
    /// The bearer tokens of a TCP listener (`USER TOKEN` lines, mode 0600).
    pub token_file: Option<PathBuf>,
    /// Where runs execute (default: on this host).
    pub executor: ExecutorConfig,
    /// The runs' shared disk bandwidth (`--budget-io-*`): a cap on `runs`, like pids.
    pub budget_io: BudgetIo,
}

/// `--executor`: where the service's runs execute.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ExecutorConfig {
    /// On this host, under the service's budget.
    #[default]
    Local,
    /// As Slurm batch jobs (the service's budget does not apply).
    Slurm(crate::slurm::SlurmConfig),
}

/// The runs' shared disk bandwidth and operation rates, per disk: written on the
/// `runs` cgroup (`io.max`; v1 `blkio.throttle.*`), so all runs together stay under
/// them, as `pids.max` caps their tasks. Not reserved per run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BudgetIo {
    /// Read bytes a second.
    pub read_bps: Option<u64>,
    /// Written bytes a second.
    pub write_bps: Option<u64>,
    /// Read operations a second.
    pub read_iops: Option<u64>,
    /// Write operations a second.
    pub write_iops: Option<u64>,
    /// The block devices (their disks) the caps apply to; empty: the disks of the
    /// ledger's directory.
    pub devices: Vec<PathBuf>,
}

impl BudgetIo {
    /// True when any cap is set.
    pub fn is_set(&self) -> bool {
        self.read_bps.is_some()
            || self.write_bps.is_some()
            || self.read_iops.is_some()
            || self.write_iops.is_some()
    }
}

impl ServeConfig {
    /// A configuration with every default.
    pub fn new(listen: Addr, ledger: PathBuf) -> ServeConfig {
        ServeConfig {
            listen,
            ledger,
            backend: None,
            cgroup_root: None,
            max_running: None,
            budget_memory: None,
            budget_cpus: None,
            budget_pids: None,
            budget_swap: Some(0),
            drain_timeout: DEFAULT_DRAIN,
            output_limit: DEFAULT_OUTPUT_LIMIT,
            keep_output: Some(DEFAULT_KEEP_OUTPUT),
            admin_group: None,
            allow_group: None,
            user_max_running: None,
            user_budget_memory: None,
            user_budget_cpus: None,
            token_file: None,
            executor: ExecutorConfig::Local,
            budget_io: BudgetIo::default(),
        }
    }

    /// The budget with defaults filled in, checked.
    pub fn budget(&self) -> Result<Budget, BudgetError> {
        let cpus = online_cpus();
        let memory = match self.budget_memory {
            Some(m) => m,
            None => mem_total()
                .map(|t| t / 4 * 3)
                .ok_or(BudgetError::NoMemTotal)?,
        };
        let b = Budget {
            memory,
            cpus: self.budget_cpus.unwrap_or((cpus - 1.0).max(1.0)),
            pids: self.budget_pids.unwrap_or(DEFAULT_BUDGET_PIDS),
            swap: self.budget_swap,
            max_running: self.max_running.unwrap_or((2.0 * cpus) as usize).max(1),
        };
        if b.memory < (1 << 20) {
            return Err(BudgetError::MemoryTooSmall);
        }
        if !(b.cpus.is_finite() && b.cpus >= 0.01) {
            return Err(BudgetError::CpusTooSmall);
        }
        if b.pids < 1 {
            return Err(BudgetError::PidsTooSmall);
        }
        Ok(b)
    }
}

/// `MemTotal` in bytes.
pub fn mem_total() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            "127.0.0.1:8080".parse::<Addr>().unwrap(),
            Addr::Tcp("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(
            "http://localhost:9/".parse::<Addr>().unwrap(),
            Addr::Tcp("127.0.0.1:9".parse().unwrap())
        );
        assert_eq!(
            "/run/corral/corral.sock".parse::<Addr>().unwrap(),
            Addr::Unix("/run/corral/corral.sock".into())
        );
        assert_eq!(
            "unix:rel.sock".parse::<Addr>().unwrap(),
            Addr::Unix("rel.sock".into())
        );
        assert!("tcp://nohost".parse::<Addr>().is_err());
        assert_eq!(
            "tcp://nohost".parse::<Addr>().unwrap_err().to_string(),
            "invalid TCP address \"tcp://nohost\"; use 127.0.0.1:PORT"
        );
        assert_eq!(
            "localhost:99999".parse::<Addr>().unwrap_err(),
            AddrError::Port("localhost:99999".into())
        );
        assert_eq!(" ".parse::<Addr>().unwrap_err(), AddrError::Empty);
    }

    #[test]
    fn budget_defaults() {
        let c = ServeConfig::new(Addr::Unix("s".into()), "l".into());
        let b = c.budget().unwrap();
        assert!(b.memory > 0 && b.cpus >= 1.0 && b.pids == 4096 && b.max_running >= 2);
        let mut c = c;
        c.budget_cpus = Some(0.0);
        assert!(c.budget().is_err());
        assert_eq!(c.budget().unwrap_err(), BudgetError::CpusTooSmall);
        c.budget_cpus = None;
        c.budget_memory = Some(1000);
        assert_eq!(
            c.budget().unwrap_err().to_string(),
            "--budget-memory must be at least 1M"
        );
    }
}
