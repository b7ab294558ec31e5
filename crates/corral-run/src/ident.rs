//! Run ids, and cgroup names that say who owns a run.
//!
//! A run's cgroup is named `<id>.<boot>.<pid>.<start>`: the run id, the first 8 hex
//! digits of the kernel's boot id, and the supervising process' pid and start time (in
//! clock ticks since boot, from `/proc/PID/stat`). From the name alone, `corral gc` can
//! tell a leftover of a dead supervisor from a live run of another corral, even after a
//! reboot or when the pid was reused.

use std::time::{SystemTime, UNIX_EPOCH};

/// The supervisor that owns a cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// First 8 hex digits of `/proc/sys/kernel/random/boot_id`.
    pub boot: String,
    /// The supervisor's pid.
    pub pid: i32,
    /// The supervisor's start time in clock ticks since boot.
    pub start: u64,
}

impl Owner {
    /// This process.
    pub fn current() -> Owner {
        let pid = std::process::id() as i32;
        Owner {
            boot: boot_id(),
            pid,
            start: process_start_time(pid).unwrap_or(0),
        }
    }

    /// True when the owner is still running: same boot, and its pid has the same start
    /// time (so a reused pid does not count).
    pub fn is_alive(&self) -> bool {
        self.boot == boot_id() && process_start_time(self.pid) == Some(self.start)
    }
}

/// The kernel's boot id, shortened to 8 hex digits.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().replace('-', "").chars().take(8).collect())
        .unwrap_or_else(|_| "00000000".to_string())
}

/// A process' start time in clock ticks since boot (`/proc/PID/stat` field 22).
pub fn process_start_time(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: parse after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// A new run id: UTC time and 8 random hex digits, e.g. `20261127T130501-3f9a2c1b`.
pub fn new_run_id() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let t = humantime_compact(secs);
    let mut b = [0u8; 4];
    let _ = rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty());
    format!("{t}-{:08x}", u32::from_ne_bytes(b))
}

fn humantime_compact(secs: u64) -> String {
    // Civil date from days since 1970 (Howard Hinnant's algorithm), to avoid a date crate.
    let days = (secs / 86400) as i64;
    let sod = secs % 86400;
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    )
}

/// A caller-chosen run id that is not 1-64 letters, digits, `_` or `-`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid run id {0:?}: use 1-64 letters, digits, '_' or '-'")]
pub struct InvalidId(pub String);

impl From<InvalidId> for String {
    /// The message, for callers that report errors as text (the service's 400 answer).
    fn from(e: InvalidId) -> String {
        e.to_string()
    }
}

/// Checks a caller-chosen run id: 1-64 letters, digits, `_` or `-`.
pub fn validate_id(id: &str) -> Result<(), InvalidId> {
    if !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        Ok(())
    } else {
        Err(InvalidId(id.to_string()))
    }
}

/// The cgroup name of run `id` owned by `owner`.
pub fn cgroup_name(id: &str, owner: &Owner) -> String {
    format!("{id}.{}.{}.{}", owner.boot, owner.pid, owner.start)
}

/// Splits a cgroup name made by [`cgroup_name`] into the run id and its owner.
pub fn parse_cgroup_name(name: &str) -> Option<(String, Owner)> {
    let mut it = name.rsplitn(4, '.');
    let start = it.next()?.parse().ok()?;
    let pid = it.next()?.parse().ok()?;
    let boot = it.next()?.to_string();
    let id = it.next()?.to_string();
    if boot.len() != 8 || validate_id(&id).is_err() {
        return None;
    }
    Some((id, Owner { boot, pid, start }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_roundtrip() {
        let o = Owner::current();
        assert!(o.is_alive());
        assert_eq!(o.boot.len(), 8);
        let id = new_run_id();
        validate_id(&id).unwrap();
        let (id2, o2) = parse_cgroup_name(&cgroup_name(&id, &o)).unwrap();
        assert_eq!((id2, o2), (id, o));
        assert!(parse_cgroup_name("service").is_none());
        assert_eq!(validate_id("a.b"), Err(InvalidId("a.b".into())));
        assert_eq!(
            String::from(InvalidId("a.b".into())),
            "invalid run id \"a.b\": use 1-64 letters, digits, '_' or '-'"
        );
        let dead = Owner {
            start: 1,
            ..Owner::current()
        };
        assert!(!dead.is_alive());
    }

    #[test]
    fn civil_dates() {
        assert_eq!(humantime_compact(0), "19700101T000000");
        assert_eq!(humantime_compact(1_795_784_400), "20261127T130000");
    }
}
