//! The names of the limits: one enum, so that a misspelt limit does not compile.
//!
//! Each limit has two spellings, both fixed by corral's file formats: its key in a
//! limits table (profiles, metadata, the service's submissions: `memory`, `cpu_time`)
//! and its key in JSON output (records, `corral profiles --json`: `memory_bytes`,
//! `cpu_time_s`). Both come from here.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One limit a run can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LimitKind {
    /// Memory budget ([`crate::Limits::memory`]).
    Memory,
    /// Swap budget ([`crate::Limits::swap`]).
    Swap,
    /// CPU quota ([`crate::Limits::cpus`]).
    Cpus,
    /// Process limit ([`crate::Limits::pids`]).
    Pids,
    /// Wall-clock budget ([`crate::Limits::timeout`]).
    Timeout,
    /// CPU-time budget ([`crate::Limits::cpu_time`]).
    CpuTime,
    /// Time between SIGTERM and SIGKILL ([`crate::Limits::grace`]).
    Grace,
    /// Cap on each captured output file ([`crate::Limits::output_limit`]).
    OutputLimit,
    /// Refuse to run unisolated ([`crate::Limits::require_isolation`]).
    RequireIsolation,
    /// The syscall filter ([`crate::Limits::syscalls`]).
    Syscalls,
    /// The network the run sees ([`crate::Limits::network`]).
    Network,
    /// The sandbox's master switch ([`crate::Limits::isolation`]).
    Isolation,
    /// The pid namespace ([`crate::Limits::pid_ns`]).
    PidNs,
    /// The file-system view ([`crate::Limits::fs`]).
    Fs,
    /// Writable paths in the read-only view ([`crate::Limits::rw`]).
    Rw,
    /// Hidden paths ([`crate::Limits::hide`]).
    Hide,
    /// Who the command runs as ([`crate::Limits::user`]).
    User,
    /// Read bandwidth per device ([`crate::Limits::io_read_bps`]).
    IoReadBps,
    /// Write bandwidth per device ([`crate::Limits::io_write_bps`]).
    IoWriteBps,
    /// Read operations a second per device ([`crate::Limits::io_read_iops`]).
    IoReadIops,
    /// Write operations a second per device ([`crate::Limits::io_write_iops`]).
    IoWriteIops,
    /// Proportional I/O weight ([`crate::Limits::io_weight`]).
    IoWeight,
    /// The devices the I/O limits apply to ([`crate::Limits::io_device`]).
    IoDevice,
    /// The largest file a run may write ([`crate::Limits::file_size`]).
    FileSize,
    /// The space a run may add under its writable paths ([`crate::Limits::disk`]).
    Disk,
}

impl LimitKind {
    /// Every limit, in the order `corral profiles` prints them.
    pub const ALL: [LimitKind; 25] = [
        LimitKind::Memory,
        LimitKind::Swap,
        LimitKind::Cpus,
        LimitKind::Pids,
        LimitKind::Timeout,
        LimitKind::CpuTime,
        LimitKind::Grace,
        LimitKind::OutputLimit,
        LimitKind::RequireIsolation,
        LimitKind::Syscalls,
        LimitKind::Network,
        LimitKind::Isolation,
        LimitKind::PidNs,
        LimitKind::Fs,
        LimitKind::Rw,
        LimitKind::Hide,
        LimitKind::User,
        LimitKind::IoReadBps,
        LimitKind::IoWriteBps,
        LimitKind::IoReadIops,
        LimitKind::IoWriteIops,
        LimitKind::IoWeight,
        LimitKind::IoDevice,
        LimitKind::FileSize,
        LimitKind::Disk,
    ];

    /// The limits a backend enforces (or reports as not enforced): the fields of a
    /// record's `limits.requested` / `limits.enforced`.
    pub const ENFORCEABLE: [LimitKind; 13] = [
        LimitKind::Memory,
        LimitKind::Swap,
        LimitKind::Cpus,
        LimitKind::Pids,
        LimitKind::Timeout,
        LimitKind::CpuTime,
        LimitKind::IoReadBps,
        LimitKind::IoWriteBps,
        LimitKind::IoReadIops,
        LimitKind::IoWriteIops,
        LimitKind::IoWeight,
        LimitKind::FileSize,
        LimitKind::Disk,
    ];

    /// The key in JSON output, unit included (`memory_bytes`, `cpu_time_s`): a record's
    /// `limits.enforced` field, a `not_enforced` entry's `limit`, a key of
    /// `corral profiles --json`.
    pub const fn as_str(self) -> &'static str {
        match self {
            LimitKind::Memory => "memory_bytes",
            LimitKind::Swap => "swap_bytes",
            LimitKind::Cpus => "cpus",
            LimitKind::Pids => "pids",
            LimitKind::Timeout => "timeout_s",
            LimitKind::CpuTime => "cpu_time_s",
            LimitKind::Grace => "grace_s",
            LimitKind::OutputLimit => "output_limit_bytes",
            LimitKind::RequireIsolation => "require_isolation",
            LimitKind::Syscalls => "syscalls",
            LimitKind::Network => "network",
            LimitKind::Isolation => "isolation",
            LimitKind::PidNs => "pid_ns",
            LimitKind::Fs => "fs",
            LimitKind::Rw => "rw",
            LimitKind::Hide => "hide",
            LimitKind::User => "user",
            LimitKind::IoReadBps => "io_read_bps",
            LimitKind::IoWriteBps => "io_write_bps",
            LimitKind::IoReadIops => "io_read_iops",
            LimitKind::IoWriteIops => "io_write_iops",
            LimitKind::IoWeight => "io_weight",
            LimitKind::IoDevice => "io_device",
            LimitKind::FileSize => "file_size_bytes",
            LimitKind::Disk => "disk_bytes",
        }
    }

    /// The key in a limits table (`memory`, `cpu_time`): profiles, metadata files,
    /// the service's submissions. The command-line flag is this with `-` for `_`.
    pub const fn key(self) -> &'static str {
        match self {
            LimitKind::Memory => "memory",
            LimitKind::Swap => "swap",
            LimitKind::Cpus => "cpus",
            LimitKind::Pids => "pids",
            LimitKind::Timeout => "timeout",
            LimitKind::CpuTime => "cpu_time",
            LimitKind::Grace => "grace",
            LimitKind::OutputLimit => "output_limit",
            LimitKind::RequireIsolation => "require_isolation",
            LimitKind::Syscalls => "syscalls",
            LimitKind::Network => "network",
            LimitKind::Isolation => "isolation",
            LimitKind::PidNs => "pid_ns",
            LimitKind::Fs => "fs",
            LimitKind::Rw => "rw",
            LimitKind::Hide => "hide",
            LimitKind::User => "user",
            LimitKind::IoReadBps => "io_read_bps",
            LimitKind::IoWriteBps => "io_write_bps",
            LimitKind::IoReadIops => "io_read_iops",
            LimitKind::IoWriteIops => "io_write_iops",
            LimitKind::IoWeight => "io_weight",
            LimitKind::IoDevice => "io_device",
            LimitKind::FileSize => "file_size",
            LimitKind::Disk => "disk",
        }
    }

    /// The limit whose table key is `key`.
    pub fn from_key(key: &str) -> Option<LimitKind> {
        LimitKind::ALL.into_iter().find(|k| k.key() == key)
    }

    /// The limit whose JSON output key is `s`.
    pub fn from_output_key(s: &str) -> Option<LimitKind> {
        LimitKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// The table keys of [`LimitKind::ALL`], in that order.
pub const LIMIT_KEYS: [&str; LimitKind::ALL.len()] = {
    let mut keys = [""; LimitKind::ALL.len()];
    let mut i = 0;
    while i < keys.len() {
        keys[i] = LimitKind::ALL[i].key();
        i += 1;
    }
    keys
};

impl fmt::Display for LimitKind {
    /// The JSON output key ([`LimitKind::as_str`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for LimitKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for LimitKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        LimitKind::from_output_key(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown limit {s:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_are_fixed() {
        let out: Vec<&str> = LimitKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            out,
            [
                "memory_bytes",
                "swap_bytes",
                "cpus",
                "pids",
                "timeout_s",
                "cpu_time_s",
                "grace_s",
                "output_limit_bytes",
                "require_isolation",
                "syscalls",
                "network",
                "isolation",
                "pid_ns",
                "fs",
                "rw",
                "hide",
                "user",
                "io_read_bps",
                "io_write_bps",
                "io_read_iops",
                "io_write_iops",
                "io_weight",
                "io_device",
                "file_size_bytes",
                "disk_bytes"
            ]
        );
        assert_eq!(
            LIMIT_KEYS,
            [
                "memory",
                "swap",
                "cpus",
                "pids",
                "timeout",
                "cpu_time",
                "grace",
                "output_limit",
                "require_isolation",
                "syscalls",
                "network",
                "isolation",
                "pid_ns",
                "fs",
                "rw",
                "hide",
                "user",
                "io_read_bps",
                "io_write_bps",
                "io_read_iops",
                "io_write_iops",
                "io_weight",
                "io_device",
                "file_size",
                "disk"
            ]
        );
        for k in LimitKind::ALL {
            assert_eq!(LimitKind::from_key(k.key()), Some(k));
            assert_eq!(LimitKind::from_output_key(k.as_str()), Some(k));
            let j = serde_json::to_string(&k).unwrap();
            assert_eq!(j, format!("\"{}\"", k.as_str()));
            assert_eq!(serde_json::from_str::<LimitKind>(&j).unwrap(), k);
        }
        assert_eq!(LimitKind::from_key("memmory"), None);
        assert!(serde_json::from_str::<LimitKind>("\"memory\"").is_err());
    }
}
