//! Writing a group's limits and reading back what the kernel holds.
//!
//! One writer per hierarchy kind, [`crate::v2::Cgroup2::write_limits`] and
//! [`crate::v1::Group1::write_limits`], used by every caller that limits a group (a
//! run's sandbox, the service's budget). Each writes memory, swap, CPU and pids limits
//! to whichever of the group's files exist, then reads them back: the read-back values,
//! not the requested ones, are what the group enforces.
//!
//! Swap on v1 is not a file of its own: `memory.memsw.limit_in_bytes` caps memory +
//! swap together, so it is written as [`memsw_limit`] of the two.

use corral_spec::LimitKind;

use crate::CgroupError;

/// The limits to write on one group. `None` means unlimited (`max`, or `-1` on v1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimitSet {
    /// Memory in bytes (`memory.max`; v1 `memory.limit_in_bytes`).
    pub memory: Option<u64>,
    /// Swap in bytes (`memory.swap.max`; on v1 part of `memory.memsw.limit_in_bytes`).
    pub swap: Option<u64>,
    /// CPU quota in µs per [`LimitSet::cpu_period_us`] (`cpu.max`; v1
    /// `cpu.cfs_quota_us`).
    pub cpu_quota_us: Option<u64>,
    /// The CPU quota's period in µs (`cpu.max`; v1 `cpu.cfs_period_us`).
    pub cpu_period_us: u64,
    /// Tasks (`pids.max`).
    pub pids: Option<u64>,
}

/// One limit as the group holds it after [`LimitSet`] was written.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Held<T> {
    /// The group has no file for this limit (its controller is missing, or swap is
    /// not accounted): nothing was written, nothing is enforced.
    Absent,
    /// Written, then read back: the value, or `None` when the group is unlimited (or
    /// the file could not be read back).
    Read(Option<T>),
}

impl<T> Held<T> {
    /// The limit the group enforces: `None` when absent or unlimited.
    pub fn limit(self) -> Option<T> {
        match self {
            Held::Absent => None,
            Held::Read(v) => v,
        }
    }

    /// True when the group has no file for this limit.
    pub fn is_absent(&self) -> bool {
        matches!(self, Held::Absent)
    }
}

/// What a group enforces after [`LimitSet`] was written, read back from its files.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Enforced {
    /// Memory in bytes.
    pub memory: Held<u64>,
    /// Swap in bytes (on v1: memory + swap read back, minus memory read back).
    pub swap: Held<u64>,
    /// The CPU quota in CPUs (quota / period).
    pub cpus: Held<f64>,
    /// Tasks.
    pub pids: Held<u64>,
}

impl Default for Enforced {
    fn default() -> Self {
        Enforced {
            memory: Held::Absent,
            swap: Held::Absent,
            cpus: Held::Absent,
            pids: Held::Absent,
        }
    }
}

/// A limit the kernel refused (or whose file could not be written).
#[derive(Debug, thiserror::Error)]
#[error("cannot set the {} limit: {source}", noun(*.limit))]
pub struct LimitError {
    /// Which limit ([`LimitKind::Memory`], [`LimitKind::Swap`], [`LimitKind::Cpus`] or
    /// [`LimitKind::Pids`]). On v1 a refused memory + swap limit is `Memory`.
    pub limit: LimitKind,
    /// The write that failed, with its path and errno.
    #[source]
    pub source: CgroupError,
}

impl LimitError {
    pub(crate) fn at(limit: LimitKind) -> impl Fn(CgroupError) -> LimitError {
        move |source| LimitError { limit, source }
    }

    /// The limit in words, as messages name it: `memory`, `swap`, `CPU`, `process`.
    pub fn noun(&self) -> &'static str {
        noun(self.limit)
    }
}

fn noun(limit: LimitKind) -> &'static str {
    match limit {
        LimitKind::Memory => "memory",
        LimitKind::Swap => "swap",
        LimitKind::Cpus => "CPU",
        LimitKind::Pids => "process",
        other => other.key(),
    }
}

/// v1's memory + swap limit for a memory and a swap limit: their sum (saturating),
/// or unlimited when either is. Without a memory limit there is nothing to add swap
/// to: memory + swap alone cannot say how much of it may be swap.
pub fn memsw_limit(memory: Option<u64>, swap: Option<u64>) -> Option<u64> {
    match (memory, swap) {
        (Some(m), Some(s)) => Some(m.saturating_add(s)),
        _ => None,
    }
}

/// Which v1 memory file to write first so that the kernel's rule memsw >= memory
/// holds after each write: memory first unless the new memory limit is above the
/// current memory + swap limit (`None`: unlimited).
pub fn memsw_first(new_memory: Option<u64>, current_memsw: Option<u64>) -> bool {
    match (new_memory, current_memsw) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(m), Some(sw)) => m > sw,
    }
}

/// A CPU quota read back as CPUs.
pub(crate) fn cpus_of(quota_us: Option<u64>, period_us: u64) -> Option<f64> {
    quota_us.map(|q| q as f64 / period_us as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memsw_is_memory_plus_swap_or_unlimited() {
        assert_eq!(memsw_limit(Some(100), Some(0)), Some(100));
        assert_eq!(memsw_limit(Some(100), Some(50)), Some(150));
        assert_eq!(memsw_limit(Some(u64::MAX - 1), Some(10)), Some(u64::MAX));
        assert_eq!(memsw_limit(None, Some(50)), None);
        assert_eq!(memsw_limit(Some(100), None), None);
        assert_eq!(memsw_limit(None, None), None);
    }

    #[test]
    fn memsw_order() {
        // Lowering, or anything under an unlimited memsw: memory first.
        assert!(!memsw_first(Some(50), Some(100)));
        assert!(!memsw_first(Some(100), Some(100)));
        assert!(!memsw_first(Some(100), None));
        assert!(!memsw_first(None, None));
        // Raising memory above the current memsw (or to unlimited): memsw first.
        assert!(memsw_first(Some(200), Some(100)));
        assert!(memsw_first(None, Some(100)));
    }

    #[test]
    fn errors_name_the_limit() {
        let e = LimitError {
            limit: LimitKind::Pids,
            source: CgroupError::Unsupported("x".into()),
        };
        assert_eq!(e.to_string(), "cannot set the process limit: x");
        assert_eq!(e.noun(), "process");
        assert_eq!(Held::Read(Some(3)).limit(), Some(3));
        assert_eq!(Held::<u64>::Absent.limit(), None);
    }
}
