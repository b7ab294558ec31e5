//! The typed limits of one run, and the patches that layers apply to them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::io::{
    check_io_device_path, check_io_weight, parse_io_weight_setting, parse_iops_setting,
    parse_rate_setting,
};
use crate::kind::{LimitKind, LIMIT_KEYS};
use crate::units::{
    check_cpus, check_pids, parse_cpus_setting, parse_duration, parse_duration_setting,
    parse_pids_setting, parse_size_setting,
};
use crate::SpecError;

/// A limit that a layer sets: either a value or explicitly "no limit".
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Setting<T> {
    /// Limit to this value.
    Value(T),
    /// Explicitly unlimited (`max`, `none`): overrides a limit from a lower layer.
    Unlimited,
}

impl<T> Setting<T> {
    /// The value, or `None` for unlimited.
    pub fn into_option(self) -> Option<T> {
        match self {
            Setting::Value(v) => Some(v),
            Setting::Unlimited => None,
        }
    }
}

/// Which syscall filter a run gets (`--syscalls`, profile key `syscalls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Syscalls {
    /// corral's default deny-list (policy `corral-default`).
    #[default]
    Default,
    /// No syscall filter.
    Off,
}

impl Syscalls {
    /// The spelling in flags, profiles and records: `default` or `off`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Syscalls::Default => "default",
            Syscalls::Off => "off",
        }
    }

    /// Parses `default` or `off`.
    pub fn parse(s: &str) -> Result<Syscalls, SpecError> {
        match s.trim() {
            "default" => Ok(Syscalls::Default),
            "off" => Ok(Syscalls::Off),
            _ => Err(SpecError::Invalid {
                what: "syscall policy",
                value: s.to_string(),
                why: "use \"default\" (corral's seccomp filter) or \"off\" (no filter)".into(),
            }),
        }
    }
}

/// The network a run sees (`--network`, profile key `network`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    /// Its own network namespace with only loopback, up: no route to the host's or
    /// anyone's network, not even the host's `127.0.0.1`.
    #[default]
    None,
    /// The host's network namespace, as without corral.
    Host,
}

impl Network {
    /// The spelling in flags, profiles and records: `none` or `host`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Network::None => "none",
            Network::Host => "host",
        }
    }

    /// Parses `none` or `host`.
    pub fn parse(s: &str) -> Result<Network, SpecError> {
        match s.trim() {
            "none" => Ok(Network::None),
            "host" => Ok(Network::Host),
            _ => Err(SpecError::Invalid {
                what: "network",
                value: s.to_string(),
                why: "use \"none\" (its own network namespace, loopback only) or \"host\" (the host's network)".into(),
            }),
        }
    }
}

/// The file-system view of a run (`--fs`, profile key `fs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FsMode {
    /// The host read-only: writable are only the working directory, each `rw` path and
    /// a private `/tmp` and `/dev/shm` that vanish with the run.
    #[default]
    ReadOnly,
    /// The host's files as corral sees them (only `hide` paths are covered).
    Host,
}

impl FsMode {
    /// The spelling in flags, profiles and records: `read-only` or `host`.
    pub const fn as_str(self) -> &'static str {
        match self {
            FsMode::ReadOnly => "read-only",
            FsMode::Host => "host",
        }
    }

    /// Parses `read-only` or `host`.
    pub fn parse(s: &str) -> Result<FsMode, SpecError> {
        match s.trim() {
            "read-only" => Ok(FsMode::ReadOnly),
            "host" => Ok(FsMode::Host),
            _ => Err(SpecError::Invalid {
                what: "file-system view",
                value: s.to_string(),
                why: "use \"read-only\" (the host read-only; the working directory, --rw paths \
                      and a private /tmp writable) or \"host\" (the host's files)"
                    .into(),
            }),
        }
    }
}

/// The pid namespace of a run (`--pid-ns`, profile key `pid_ns`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PidNs {
    /// Its own pid namespace: it sees and signals only its own processes, and `/proc`
    /// shows only them.
    #[default]
    On,
    /// The host's pid namespace, as without corral.
    Off,
}

impl PidNs {
    /// The spelling in flags, profiles and records: `on` or `off`.
    pub const fn as_str(self) -> &'static str {
        match self {
            PidNs::On => "on",
            PidNs::Off => "off",
        }
    }

    /// Parses `on` or `off`.
    pub fn parse(s: &str) -> Result<PidNs, SpecError> {
        match s.trim() {
            "on" => Ok(PidNs::On),
            "off" => Ok(PidNs::Off),
            _ => Err(SpecError::Invalid {
                what: "pid namespace setting",
                value: s.to_string(),
                why: "use \"on\" (its own pid namespace: it sees only its own processes) or \"off\" (the host's)".into(),
            }),
        }
    }
}

/// Checks a path for `hide`: absolute, not `/`, no NUL byte.
pub fn check_hide_path(p: &Path) -> Result<(), SpecError> {
    let bad = |why: &str| SpecError::Invalid {
        what: "hidden path",
        value: p.display().to_string(),
        why: why.to_string(),
    };
    if !p.is_absolute() {
        return Err(bad("must be an absolute path"));
    }
    if p.parent().is_none() {
        return Err(bad(
            "hiding / would hide everything; use a directory below it",
        ));
    }
    check_nul(p).map_err(|_| bad("must not contain a NUL byte"))
}

/// Checks a path for `rw`: not empty, not `/`, no NUL byte (relative paths are
/// resolved against the run's working directory when it starts).
pub fn check_rw_path(p: &Path) -> Result<(), SpecError> {
    let bad = |why: &str| SpecError::Invalid {
        what: "writable path",
        value: p.display().to_string(),
        why: why.to_string(),
    };
    if p.as_os_str().is_empty() {
        return Err(bad("must not be empty"));
    }
    if p.is_absolute() && p.parent().is_none() {
        return Err(bad(
            "making / writable undoes the read-only view; pass --fs host for the host's files",
        ));
    }
    check_nul(p).map_err(|_| bad("must not contain a NUL byte"))
}

fn check_nul(p: &Path) -> Result<(), ()> {
    use std::os::unix::ffi::OsStrExt;
    if p.as_os_str().as_bytes().contains(&0) {
        Err(())
    } else {
        Ok(())
    }
}

/// Appends each path of `src` to `dst` that `dst` does not hold yet.
pub fn add_paths(dst: &mut Vec<PathBuf>, src: &[PathBuf]) {
    for p in src {
        if !dst.contains(p) {
            dst.push(p.clone());
        }
    }
}

/// The master switch of the sandbox (`--isolation`, profile key `isolation`): `off`
/// is corral's behaviour before the sandbox in one word.
///
/// Within one layer (a profile, a metadata file, the flags, a submission) it is applied
/// first and that layer's explicit `network` / `syscalls` keys then win over it, like
/// systemd's per-setting options over a preset; a later layer's `isolation` again
/// resets both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// The sandbox: every layer at its default.
    #[default]
    Default,
    /// No sandbox: the host's network, no syscall filter, and none of the always-on
    /// steps (no `setsid`, no `no_new_privs`, core dumps as inherited).
    Off,
}

impl Isolation {
    /// The spelling in flags, profiles and records: `default` or `off`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Isolation::Default => "default",
            Isolation::Off => "off",
        }
    }

    /// Parses `default` or `off`.
    pub fn parse(s: &str) -> Result<Isolation, SpecError> {
        match s.trim() {
            "default" => Ok(Isolation::Default),
            "off" => Ok(Isolation::Off),
            _ => Err(SpecError::Invalid {
                what: "isolation",
                value: s.to_string(),
                why: "use \"default\" (the sandbox) or \"off\" (no sandbox: the host's network, no syscall filter)".into(),
            }),
        }
    }

    /// The network this switch sets.
    pub const fn network(self) -> Network {
        match self {
            Isolation::Default => Network::None,
            Isolation::Off => Network::Host,
        }
    }

    /// The pid namespace setting this switch sets.
    pub const fn pid_ns(self) -> PidNs {
        match self {
            Isolation::Default => PidNs::On,
            Isolation::Off => PidNs::Off,
        }
    }

    /// The syscall filter this switch sets.
    pub const fn syscalls(self) -> Syscalls {
        match self {
            Isolation::Default => Syscalls::Default,
            Isolation::Off => Syscalls::Off,
        }
    }

    /// The file-system view this switch sets.
    pub const fn fs(self) -> FsMode {
        match self {
            Isolation::Default => FsMode::ReadOnly,
            Isolation::Off => FsMode::Host,
        }
    }
}

/// Who a run's command runs as (`--user`, profile key `user`).
///
/// What `Default` means is decided by corral, not here: started by an ordinary user,
/// that user; started by root, a dynamic uid; with `isolation = "off"`, corral's own
/// identity. Names are resolved (and refused when unknown) by `corral-run`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum User {
    /// corral's choice (see above).
    #[default]
    Default,
    /// A dynamic uid from corral's range, never shared by two live runs (root only).
    Dynamic,
    /// A named user (or a number), with an optional group (name or number).
    Named {
        /// The user's name or number.
        user: String,
        /// The primary group's name or number (`None`: the user's own).
        group: Option<String>,
    },
}

impl User {
    /// The spelling in flags, profiles and records: `default`, `dynamic`,
    /// `name[:group]`.
    pub fn as_string(&self) -> String {
        match self {
            User::Default => "default".into(),
            User::Dynamic => "dynamic".into(),
            User::Named { user, group: None } => user.clone(),
            User::Named {
                user,
                group: Some(g),
            } => format!("{user}:{g}"),
        }
    }

    /// Parses `default`, `dynamic` or `USER[:GROUP]` (names or numbers).
    pub fn parse(s: &str) -> Result<User, SpecError> {
        let t = s.trim();
        let bad = |why: &str| SpecError::Invalid {
            what: "user",
            value: s.to_string(),
            why: why.into(),
        };
        let valid = |n: &str| {
            !n.is_empty()
                && n.len() <= 256
                && n.bytes()
                    .all(|b| b.is_ascii_graphic() && b != b':' && b != b'/')
        };
        match t {
            "default" => Ok(User::Default),
            "dynamic" => Ok(User::Dynamic),
            _ => {
                let (user, group) = match t.split_once(':') {
                    Some((u, g)) => (u, Some(g)),
                    None => (t, None),
                };
                if !valid(user) || group.is_some_and(|g| !valid(g)) {
                    return Err(bad(
                        "use \"default\", \"dynamic\" (a fresh uid for the run) or USER[:GROUP] (names or numbers)",
                    ));
                }
                Ok(User::Named {
                    user: user.into(),
                    group: group.map(Into::into),
                })
            }
        }
    }
}

impl From<User> for String {
    fn from(u: User) -> String {
        u.as_string()
    }
}

impl TryFrom<String> for User {
    type Error = SpecError;
    fn try_from(s: String) -> Result<User, SpecError> {
        User::parse(&s)
    }
}

/// The effective limits of one run, after all layers are merged. `None` means unlimited.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Memory budget in bytes (`memory.max`).
    pub memory: Option<u64>,
    /// Swap budget in bytes (`memory.swap.max`); 0 forbids swapping.
    pub swap: Option<u64>,
    /// CPU quota in CPUs (`cpu.max` over a 100 ms period).
    pub cpus: Option<f64>,
    /// Maximum number of tasks in the run (`pids.max`).
    pub pids: Option<u64>,
    /// Wall-clock budget.
    pub timeout: Option<Duration>,
    /// CPU-time budget over the whole process tree.
    pub cpu_time: Option<Duration>,
    /// Time between SIGTERM and SIGKILL when corral ends a run.
    pub grace: Duration,
    /// Cap on each captured output file.
    pub output_limit: Option<u64>,
    /// Refuse to run when any requested limit cannot be enforced.
    pub require_isolation: bool,
    /// The syscall filter (absent in limits stored before it existed: the default).
    #[serde(default)]
    pub syscalls: Syscalls,
    /// The network the run sees (absent in limits stored before it existed: the
    /// default, its own loopback-only namespace).
    #[serde(default)]
    pub network: Network,
    /// The sandbox's master switch as last set (absent in limits stored before it
    /// existed: the default). `network` and `syscalls` already hold its effect.
    #[serde(default)]
    pub isolation: Isolation,
    /// The pid namespace (absent in limits stored before it existed: the default, its
    /// own namespace).
    #[serde(default)]
    pub pid_ns: PidNs,
    /// The file-system view (absent in limits stored before it existed: the default,
    /// read-only).
    #[serde(default)]
    pub fs: FsMode,
    /// Paths writable in the read-only view besides the working directory (relative
    /// ones are resolved against the run's working directory when it starts).
    #[serde(default)]
    pub rw: Vec<PathBuf>,
    /// Absolute paths covered by an empty read-only directory (or an empty file).
    #[serde(default)]
    pub hide: Vec<PathBuf>,
    /// Who the command runs as (absent in limits stored before it existed: the
    /// default).
    #[serde(default)]
    pub user: User,
    /// Read bandwidth in bytes a second on each device the I/O limits apply to.
    #[serde(default)]
    pub io_read_bps: Option<u64>,
    /// Write bandwidth in bytes a second on each device the I/O limits apply to.
    #[serde(default)]
    pub io_write_bps: Option<u64>,
    /// Read operations a second on each device the I/O limits apply to.
    #[serde(default)]
    pub io_read_iops: Option<u64>,
    /// Write operations a second on each device the I/O limits apply to.
    #[serde(default)]
    pub io_write_iops: Option<u64>,
    /// Proportional I/O weight, 1 to 10000 (`None`: the kernel's default, 100).
    #[serde(default)]
    pub io_weight: Option<u64>,
    /// The devices (block devices, or files on them) the I/O limits apply to; empty:
    /// the disks under the working directory and the `rw` paths.
    #[serde(default)]
    pub io_device: Vec<PathBuf>,
    /// The largest file the run may write, in bytes (`RLIMIT_FSIZE`).
    #[serde(default)]
    pub file_size: Option<u64>,
    /// The space the run may add under its writable paths, in bytes (a project quota).
    #[serde(default)]
    pub disk: Option<u64>,
}

impl Default for Limits {
    /// No limits at all except swap 0 and a 5 s grace: the base every profile patches.
    fn default() -> Self {
        Limits {
            memory: None,
            swap: Some(0),
            cpus: None,
            pids: None,
            timeout: None,
            cpu_time: None,
            grace: Duration::from_secs(5),
            output_limit: None,
            require_isolation: false,
            syscalls: Syscalls::Default,
            network: Network::None,
            isolation: Isolation::Default,
            pid_ns: PidNs::On,
            fs: FsMode::ReadOnly,
            rw: Vec::new(),
            hide: Vec::new(),
            user: User::Default,
            io_read_bps: None,
            io_write_bps: None,
            io_read_iops: None,
            io_write_iops: None,
            io_weight: None,
            io_device: Vec::new(),
            file_size: None,
            disk: None,
        }
    }
}

/// One layer's changes to [`Limits`]: every field it leaves `None` is inherited.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LimitsPatch {
    /// See [`Limits::memory`].
    pub memory: Option<Setting<u64>>,
    /// See [`Limits::swap`].
    pub swap: Option<Setting<u64>>,
    /// See [`Limits::cpus`].
    pub cpus: Option<Setting<f64>>,
    /// See [`Limits::pids`].
    pub pids: Option<Setting<u64>>,
    /// See [`Limits::timeout`].
    pub timeout: Option<Setting<Duration>>,
    /// See [`Limits::cpu_time`].
    pub cpu_time: Option<Setting<Duration>>,
    /// See [`Limits::grace`].
    pub grace: Option<Duration>,
    /// See [`Limits::output_limit`].
    pub output_limit: Option<Setting<u64>>,
    /// See [`Limits::require_isolation`].
    pub require_isolation: Option<bool>,
    /// See [`Limits::syscalls`].
    pub syscalls: Option<Syscalls>,
    /// See [`Limits::network`].
    pub network: Option<Network>,
    /// See [`Isolation`]: applied before this patch's `network` and `syscalls`.
    pub isolation: Option<Isolation>,
    /// See [`Limits::pid_ns`].
    pub pid_ns: Option<PidNs>,
    /// See [`Limits::fs`].
    pub fs: Option<FsMode>,
    /// Added to [`Limits::rw`] (lists add up across layers, deduplicated).
    pub rw: Vec<PathBuf>,
    /// Added to [`Limits::hide`] (lists add up across layers, deduplicated).
    pub hide: Vec<PathBuf>,
    /// See [`Limits::user`].
    pub user: Option<User>,
    /// See [`Limits::io_read_bps`].
    pub io_read_bps: Option<Setting<u64>>,
    /// See [`Limits::io_write_bps`].
    pub io_write_bps: Option<Setting<u64>>,
    /// See [`Limits::io_read_iops`].
    pub io_read_iops: Option<Setting<u64>>,
    /// See [`Limits::io_write_iops`].
    pub io_write_iops: Option<Setting<u64>>,
    /// See [`Limits::io_weight`].
    pub io_weight: Option<Setting<u64>>,
    /// Added to [`Limits::io_device`] (lists add up across layers, deduplicated).
    pub io_device: Vec<PathBuf>,
    /// See [`Limits::file_size`].
    pub file_size: Option<Setting<u64>>,
    /// See [`Limits::disk`].
    pub disk: Option<Setting<u64>>,
}

impl LimitsPatch {
    /// Applies this patch on top of `base`.
    pub fn apply(&self, base: &mut Limits) {
        fn set<T: Copy>(dst: &mut Option<T>, src: &Option<Setting<T>>) {
            if let Some(s) = src {
                *dst = s.into_option();
            }
        }
        set(&mut base.memory, &self.memory);
        set(&mut base.swap, &self.swap);
        set(&mut base.cpus, &self.cpus);
        set(&mut base.pids, &self.pids);
        set(&mut base.timeout, &self.timeout);
        set(&mut base.cpu_time, &self.cpu_time);
        set(&mut base.output_limit, &self.output_limit);
        set(&mut base.io_read_bps, &self.io_read_bps);
        set(&mut base.io_write_bps, &self.io_write_bps);
        set(&mut base.io_read_iops, &self.io_read_iops);
        set(&mut base.io_write_iops, &self.io_write_iops);
        set(&mut base.io_weight, &self.io_weight);
        set(&mut base.file_size, &self.file_size);
        set(&mut base.disk, &self.disk);
        add_paths(&mut base.io_device, &self.io_device);
        if let Some(g) = self.grace {
            base.grace = g;
        }
        if let Some(r) = self.require_isolation {
            base.require_isolation = r;
        }
        if let Some(i) = self.isolation {
            base.isolation = i;
            base.network = i.network();
            base.syscalls = i.syscalls();
            base.pid_ns = i.pid_ns();
            base.fs = i.fs();
            // `default` is read with the switch: with `off`, corral's own identity.
            base.user = User::Default;
        }
        if let Some(f) = self.fs {
            base.fs = f;
        }
        add_paths(&mut base.rw, &self.rw);
        add_paths(&mut base.hide, &self.hide);
        if let Some(s) = self.syscalls {
            base.syscalls = s;
        }
        if let Some(n) = self.network {
            base.network = n;
        }
        if let Some(p) = self.pid_ns {
            base.pid_ns = p;
        }
        if let Some(u) = &self.user {
            base.user = u.clone();
        }
    }

    /// True when the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == LimitsPatch::default()
    }

    /// Parses a limits table (from TOML or JSON). Unknown keys are refused so that a
    /// typo such as `memmory` is an error and not a silently missing limit.
    pub fn from_table(table: &Map<String, Value>, source: &str) -> Result<Self, SpecError> {
        let mut p = LimitsPatch::default();
        for (k, v) in table {
            let err = |why: String| SpecError::File {
                path: source.to_string(),
                why: format!("key {k:?}: {why}"),
            };
            let Some(kind) = LimitKind::from_key(k) else {
                return Err(err(format!(
                    "unknown limit; known limits: {}",
                    LIMIT_KEYS.join(", ")
                )));
            };
            let bad = |e: SpecError| err(e.to_string());
            match kind {
                LimitKind::Memory => {
                    let m = size_value("memory size", v).map_err(bad)?;
                    p.memory = Some(crate::units::check_memory(&text(v), m).map_err(bad)?)
                }
                LimitKind::Swap => p.swap = Some(swap_value(v).map_err(bad)?),
                LimitKind::OutputLimit => {
                    p.output_limit = Some(size_value("output limit", v).map_err(bad)?)
                }
                LimitKind::Cpus => p.cpus = Some(cpus_value(v).map_err(bad)?),
                LimitKind::Pids => p.pids = Some(pids_value(v).map_err(bad)?),
                LimitKind::Timeout => p.timeout = Some(duration_value("timeout", v).map_err(bad)?),
                LimitKind::CpuTime => {
                    p.cpu_time = Some(duration_value("CPU-time limit", v).map_err(bad)?)
                }
                LimitKind::Grace => p.grace = Some(grace_value(v).map_err(bad)?),
                LimitKind::RequireIsolation => match v {
                    Value::Bool(b) => p.require_isolation = Some(*b),
                    _ => return Err(err("must be true or false".into())),
                },
                LimitKind::Syscalls => p.syscalls = Some(Syscalls::parse(&text(v)).map_err(bad)?),
                LimitKind::Network => p.network = Some(Network::parse(&text(v)).map_err(bad)?),
                LimitKind::Isolation => {
                    p.isolation = Some(Isolation::parse(&text(v)).map_err(bad)?)
                }
                LimitKind::PidNs => p.pid_ns = Some(PidNs::parse(&text(v)).map_err(bad)?),
                LimitKind::Fs => p.fs = Some(FsMode::parse(&text(v)).map_err(bad)?),
                LimitKind::Rw => {
                    for path in path_list(v).map_err(err)? {
                        check_rw_path(&path).map_err(bad)?;
                        add_paths(&mut p.rw, &[path]);
                    }
                }
                LimitKind::Hide => {
                    for path in path_list(v).map_err(err)? {
                        check_hide_path(&path).map_err(bad)?;
                        add_paths(&mut p.hide, &[path]);
                    }
                }
                LimitKind::User => p.user = Some(User::parse(&text(v)).map_err(bad)?),
                LimitKind::IoReadBps => {
                    p.io_read_bps = Some(rate_value("I/O read bandwidth", v).map_err(bad)?)
                }
                LimitKind::IoWriteBps => {
                    p.io_write_bps = Some(rate_value("I/O write bandwidth", v).map_err(bad)?)
                }
                LimitKind::IoReadIops => {
                    p.io_read_iops =
                        Some(parse_iops_setting("I/O read rate", &text(v)).map_err(bad)?)
                }
                LimitKind::IoWriteIops => {
                    p.io_write_iops =
                        Some(parse_iops_setting("I/O write rate", &text(v)).map_err(bad)?)
                }
                LimitKind::IoWeight => p.io_weight = Some(weight_value(v).map_err(bad)?),
                LimitKind::IoDevice => {
                    for path in path_list(v).map_err(err)? {
                        check_io_device_path(&path).map_err(bad)?;
                        add_paths(&mut p.io_device, &[path]);
                    }
                }
                LimitKind::FileSize => {
                    p.file_size = Some(size_value("file size limit", v).map_err(bad)?)
                }
                LimitKind::Disk => p.disk = Some(size_value("disk budget", v).map_err(bad)?),
            }
        }
        Ok(p)
    }
}

/// A list of paths: an array of strings, or one string.
fn path_list(v: &Value) -> Result<Vec<PathBuf>, String> {
    match v {
        Value::String(s) => Ok(vec![PathBuf::from(s)]),
        Value::Array(a) => a
            .iter()
            .map(|e| match e {
                Value::String(s) => Ok(PathBuf::from(s)),
                other => Err(format!("must be a list of paths, not {other}")),
            })
            .collect(),
        other => Err(format!("must be a list of paths, not {other}")),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn size_value(what: &'static str, v: &Value) -> Result<Setting<u64>, SpecError> {
    match v {
        Value::Number(n) if n.as_u64().is_some() => {
            crate::units::parse_size(what, &n.to_string()).map(Setting::Value)
        }
        Value::String(s) => parse_size_setting(what, s),
        other => parse_size_setting(what, &text(other)),
    }
}

fn rate_value(what: &'static str, v: &Value) -> Result<Setting<u64>, SpecError> {
    match v {
        Value::Number(n) if n.as_u64().is_some() => {
            crate::units::parse_size(what, &n.to_string()).map(Setting::Value)
        }
        other => parse_rate_setting(what, &text(other)),
    }
}

fn weight_value(v: &Value) -> Result<Setting<u64>, SpecError> {
    match v {
        Value::Number(n) => match n.as_u64() {
            Some(u) => check_io_weight(&n.to_string(), u).map(Setting::Value),
            None => parse_io_weight_setting(&n.to_string()),
        },
        other => parse_io_weight_setting(&text(other)),
    }
}

fn swap_value(v: &Value) -> Result<Setting<u64>, SpecError> {
    let t = text(v);
    if t.trim() == "0" {
        return Ok(Setting::Value(0));
    }
    size_value("swap size", v)
}

fn cpus_value(v: &Value) -> Result<Setting<f64>, SpecError> {
    match v {
        Value::Number(n) => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            check_cpus(&n.to_string(), f).map(Setting::Value)
        }
        other => parse_cpus_setting(&text(other)),
    }
}

fn pids_value(v: &Value) -> Result<Setting<u64>, SpecError> {
    match v {
        Value::Number(n) => match n.as_u64() {
            Some(u) => check_pids(&n.to_string(), u).map(Setting::Value),
            None => parse_pids_setting(&n.to_string()),
        },
        other => parse_pids_setting(&text(other)),
    }
}

fn duration_value(what: &'static str, v: &Value) -> Result<Setting<Duration>, SpecError> {
    parse_duration_setting(what, &text(v))
}

fn grace_value(v: &Value) -> Result<Duration, SpecError> {
    let t = text(v);
    if t.trim() == "0" || t.trim() == "0s" {
        return Ok(Duration::ZERO);
    }
    parse_duration("grace period", &t)
}

/// Parses a grace period: like a duration, but `0` is allowed (SIGKILL at once).
pub fn parse_grace(s: &str) -> Result<Duration, SpecError> {
    grace_value(&Value::String(s.to_string()))
}

/// Parses a swap size: like a size, but `0` is allowed (no swapping).
pub fn parse_swap(s: &str) -> Result<Setting<u64>, SpecError> {
    swap_value(&Value::String(s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn patch_layers() {
        let mut l = Limits::default();
        let t = json!({"memory": "2G", "timeout": "30m", "cpus": 1, "pids": 256});
        LimitsPatch::from_table(t.as_object().unwrap(), "x")
            .unwrap()
            .apply(&mut l);
        assert_eq!(l.memory, Some(2 << 30));
        assert_eq!(l.cpus, Some(1.0));
        let t = json!({"memory": "max", "grace": 0});
        LimitsPatch::from_table(t.as_object().unwrap(), "x")
            .unwrap()
            .apply(&mut l);
        assert_eq!(l.memory, None);
        assert_eq!(l.grace, Duration::ZERO);
        assert_eq!(l.timeout, Some(Duration::from_secs(1800)));
    }

    #[test]
    fn unknown_and_bad_keys() {
        let t = json!({"memmory": "2G"});
        let e = LimitsPatch::from_table(t.as_object().unwrap(), "f.toml").unwrap_err();
        assert!(e.to_string().contains("unknown limit"), "{e}");
        let t = json!({"cpus": 0});
        assert!(LimitsPatch::from_table(t.as_object().unwrap(), "f").is_err());
        let t = json!({"pids": -4});
        assert!(LimitsPatch::from_table(t.as_object().unwrap(), "f").is_err());
        let t = json!({"require_isolation": "yes"});
        assert!(LimitsPatch::from_table(t.as_object().unwrap(), "f").is_err());
        assert_eq!(parse_swap("0").unwrap(), Setting::Value(0));
        let t = json!({"syscalls": "strict"});
        let e = LimitsPatch::from_table(t.as_object().unwrap(), "f").unwrap_err();
        assert!(
            e.to_string().contains("invalid syscall policy \"strict\""),
            "{e}"
        );
        let t = json!({"syscalls": "off"});
        let mut l = Limits::default();
        assert_eq!(l.syscalls, Syscalls::Default);
        LimitsPatch::from_table(t.as_object().unwrap(), "f")
            .unwrap()
            .apply(&mut l);
        assert_eq!(l.syscalls, Syscalls::Off);
    }

    #[test]
    fn isolation_off_is_host_network_and_no_filter_unless_the_layer_says_otherwise() {
        let patch = |v: Value| LimitsPatch::from_table(v.as_object().unwrap(), "f").unwrap();
        let mut l = Limits::default();
        assert_eq!(l.isolation, Isolation::Default);
        patch(json!({"isolation": "off"})).apply(&mut l);
        assert_eq!(
            (l.isolation, l.network, l.syscalls),
            (Isolation::Off, Network::Host, Syscalls::Off)
        );
        // An explicit layer key in the same layer wins over the master switch.
        let mut l = Limits::default();
        patch(json!({"network": "none", "isolation": "off"})).apply(&mut l);
        assert_eq!(
            (l.isolation, l.network, l.syscalls),
            (Isolation::Off, Network::None, Syscalls::Off)
        );
        // A later layer's switch resets an earlier layer's keys.
        let mut l = Limits::default();
        patch(json!({"syscalls": "off"})).apply(&mut l);
        patch(json!({"isolation": "default"})).apply(&mut l);
        assert_eq!(l.syscalls, Syscalls::Default);
        let e = LimitsPatch::from_table(json!({"isolation": "none"}).as_object().unwrap(), "f")
            .unwrap_err();
        assert!(e.to_string().contains("invalid isolation \"none\""), "{e}");
        // Limits stored before the key existed get the default.
        let mut v = serde_json::to_value(Limits::default()).unwrap();
        v.as_object_mut().unwrap().remove("isolation");
        let back: Limits = serde_json::from_value(v).unwrap();
        assert_eq!(back.isolation, Isolation::Default);
    }

    #[test]
    fn user_setting() {
        let patch = |v: Value| LimitsPatch::from_table(v.as_object().unwrap(), "f");
        let mut l = Limits::default();
        assert_eq!(l.user, User::Default);
        patch(json!({"user": "nobody:nogroup"}))
            .unwrap()
            .apply(&mut l);
        assert_eq!(
            l.user,
            User::Named {
                user: "nobody".into(),
                group: Some("nogroup".into())
            }
        );
        assert_eq!(l.user.as_string(), "nobody:nogroup");
        patch(json!({"user": 65534})).unwrap().apply(&mut l);
        assert_eq!(l.user.as_string(), "65534");
        patch(json!({"user": "dynamic"})).unwrap().apply(&mut l);
        assert_eq!(l.user, User::Dynamic);
        // The master switch resets it to corral's choice.
        patch(json!({"isolation": "off"})).unwrap().apply(&mut l);
        assert_eq!(l.user, User::Default);
        for bad in ["", "a:", ":g", "a b", "a:b:c", "../x"] {
            let e = patch(json!({ "user": bad })).unwrap_err();
            assert!(e.to_string().contains("invalid user"), "{bad}: {e}");
        }
        // A record of the limits round-trips, and old limits get the default.
        l.user = User::parse("root").unwrap();
        let v = serde_json::to_value(&l).unwrap();
        assert_eq!(v["user"], "root");
        assert_eq!(serde_json::from_value::<Limits>(v.clone()).unwrap(), l);
        let mut v = v;
        v.as_object_mut().unwrap().remove("user");
        assert_eq!(
            serde_json::from_value::<Limits>(v).unwrap().user,
            User::Default
        );
    }

    #[test]
    fn network_setting() {
        let mut l = Limits::default();
        assert_eq!(l.network, Network::None);
        let t = json!({"network": "host"});
        LimitsPatch::from_table(t.as_object().unwrap(), "f")
            .unwrap()
            .apply(&mut l);
        assert_eq!(l.network, Network::Host);
        let t = json!({"network": "loopback"});
        let e = LimitsPatch::from_table(t.as_object().unwrap(), "f").unwrap_err();
        assert!(
            e.to_string().contains("invalid network \"loopback\""),
            "{e}"
        );
        assert_eq!(Network::parse("none").unwrap().as_str(), "none");
        // Limits stored before the key existed get the default.
        let mut v = serde_json::to_value(Limits::default()).unwrap();
        v.as_object_mut().unwrap().remove("network");
        let back: Limits = serde_json::from_value(v).unwrap();
        assert_eq!(back.network, Network::None);
    }

    #[test]
    fn fs_lists_add_up_across_layers_and_the_switch_sets_the_mode() {
        let patch = |v: Value| LimitsPatch::from_table(v.as_object().unwrap(), "f").unwrap();
        let mut l = Limits::default();
        assert_eq!((l.fs, l.rw.len(), l.hide.len()), (FsMode::ReadOnly, 0, 0));
        patch(json!({"rw": ["/data/out", "scratch"], "hide": "/home"})).apply(&mut l);
        patch(json!({"rw": ["/data/out", "/srv/x"], "hide": ["/root", "/home"]})).apply(&mut l);
        let paths = |v: &[PathBuf]| {
            v.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(paths(&l.rw), ["/data/out", "scratch", "/srv/x"]);
        assert_eq!(paths(&l.hide), ["/home", "/root"]);
        // The switch sets the mode, not the lists; a layer's own `fs` wins over it.
        patch(json!({"isolation": "off"})).apply(&mut l);
        assert_eq!((l.fs, l.rw.len(), l.hide.len()), (FsMode::Host, 3, 2));
        patch(json!({"isolation": "off", "fs": "read-only"})).apply(&mut l);
        assert_eq!(l.fs, FsMode::ReadOnly);
        patch(json!({"fs": "host"})).apply(&mut l);
        assert_eq!(l.fs, FsMode::Host);
        // Bad values, each one precise message.
        for (v, msg) in [
            (
                json!({"fs": "readonly"}),
                "invalid file-system view \"readonly\"",
            ),
            (
                json!({"hide": ["home"]}),
                "invalid hidden path \"home\": must be an absolute path",
            ),
            (
                json!({"hide": "/"}),
                "invalid hidden path \"/\": hiding / would hide everything",
            ),
            (
                json!({"rw": "/"}),
                "invalid writable path \"/\": making / writable",
            ),
            (
                json!({"rw": [3]}),
                "key \"rw\": must be a list of paths, not 3",
            ),
            (
                json!({"rw": ""}),
                "invalid writable path \"\": must not be empty",
            ),
        ] {
            let e = LimitsPatch::from_table(v.as_object().unwrap(), "f").unwrap_err();
            assert!(e.to_string().contains(msg), "{e}");
        }
        // Limits stored before the keys existed get the defaults.
        let mut v = serde_json::to_value(Limits::default()).unwrap();
        for k in ["fs", "rw", "hide"] {
            v.as_object_mut().unwrap().remove(k);
        }
        let back: Limits = serde_json::from_value(v).unwrap();
        assert_eq!(back, Limits::default());
        assert_eq!(serde_json::to_value(FsMode::ReadOnly).unwrap(), "read-only");
    }

    #[test]
    fn pid_ns_setting() {
        let mut l = Limits::default();
        assert_eq!(l.pid_ns, PidNs::On);
        let t = json!({"pid_ns": "off"});
        LimitsPatch::from_table(t.as_object().unwrap(), "f")
            .unwrap()
            .apply(&mut l);
        assert_eq!(l.pid_ns, PidNs::Off);
        let t = json!({"pid_ns": "yes"});
        let e = LimitsPatch::from_table(t.as_object().unwrap(), "f").unwrap_err();
        assert!(
            e.to_string()
                .contains("invalid pid namespace setting \"yes\": use \"on\""),
            "{e}"
        );
        assert_eq!(PidNs::parse(" on ").unwrap().as_str(), "on");
        // The switch turns it off; an explicit key in the same layer wins.
        let t = json!({"isolation": "off"});
        let mut l = Limits::default();
        LimitsPatch::from_table(t.as_object().unwrap(), "f")
            .unwrap()
            .apply(&mut l);
        assert_eq!(l.pid_ns, PidNs::Off);
        let t = json!({"pid_ns": "on", "isolation": "off"});
        LimitsPatch::from_table(t.as_object().unwrap(), "f")
            .unwrap()
            .apply(&mut l);
        assert_eq!(l.pid_ns, PidNs::On);
        // Limits stored before the key existed get the default.
        let mut v = serde_json::to_value(Limits::default()).unwrap();
        v.as_object_mut().unwrap().remove("pid_ns");
        let back: Limits = serde_json::from_value(v).unwrap();
        assert_eq!(back.pid_ns, PidNs::On);
    }

    #[test]
    fn io_and_space_keys() {
        let patch = |v: Value| LimitsPatch::from_table(v.as_object().unwrap(), "f");
        let mut l = Limits::default();
        patch(
            json!({"io_read_bps": "20M", "io_write_bps": "10M/s", "io_read_iops": 500,
                     "io_write_iops": "200", "io_weight": 300, "io_device": "/dev/vda",
                     "file_size": "1M", "disk": "50M"}),
        )
        .unwrap()
        .apply(&mut l);
        assert_eq!(
            (
                l.io_read_bps,
                l.io_write_bps,
                l.io_read_iops,
                l.io_write_iops
            ),
            (Some(20 << 20), Some(10 << 20), Some(500), Some(200))
        );
        assert_eq!(
            (l.io_weight, l.file_size, l.disk),
            (Some(300), Some(1 << 20), Some(50 << 20))
        );
        assert_eq!(l.io_device, [PathBuf::from("/dev/vda")]);
        patch(json!({"io_write_bps": "max", "io_device": ["/dev/vdb"]}))
            .unwrap()
            .apply(&mut l);
        assert_eq!(l.io_write_bps, None);
        assert_eq!(l.io_device.len(), 2);
        for (v, msg) in [
            (
                json!({"io_weight": 0}),
                "invalid I/O weight \"0\": out of range",
            ),
            (
                json!({"io_weight": "10001"}),
                "invalid I/O weight \"10001\": out of range",
            ),
            (
                json!({"io_device": "sda"}),
                "invalid I/O device \"sda\": must be the absolute path of a block device",
            ),
            (
                json!({"io_write_bps": "fast"}),
                "invalid I/O write bandwidth \"fast\"",
            ),
            (json!({"file_size": "0"}), "invalid file size limit \"0\""),
        ] {
            let e = patch(v).unwrap_err();
            assert!(e.to_string().contains(msg), "{e}");
        }
        // Limits stored before the keys existed get the defaults.
        let mut v = serde_json::to_value(Limits::default()).unwrap();
        for k in ["io_read_bps", "io_weight", "io_device", "file_size", "disk"] {
            v.as_object_mut().unwrap().remove(k);
        }
        assert_eq!(
            serde_json::from_value::<Limits>(v).unwrap(),
            Limits::default()
        );
    }
}
