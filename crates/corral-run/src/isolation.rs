//! The isolation layers of a run beyond its limits, decided before anything is created:
//! what the record's `isolation` object says and what the child's checklist applies.
//!
//! Always, on every backend: a new session (`setsid`: no controlling terminal), core
//! dumps off (`RLIMIT_CORE` 0) and `no_new_privs`. By default (`--syscalls default`)
//! also the seccomp filter [`crate::spawn::POLICY`], where the kernel can install one;
//! where it cannot, the record lists `syscalls` under `not_enforced` and
//! `--require-isolation` refuses.

use std::sync::OnceLock;

use corral_record::{IsolationEnforced, IsolationGap, IsolationRecord, IsolationRequested};
use corral_spec::{Limits, Syscalls};

use crate::spawn::{self, SyscallFilter};

/// What a run gets: the record's `isolation` object and the filter to install.
#[derive(Debug, Clone)]
pub struct IsolationPlan {
    /// Requested versus applied, for the record.
    pub record: IsolationRecord,
    /// The compiled seccomp filter, when one is applied.
    pub filter: Option<&'static SyscallFilter>,
}

/// Whether this host can install corral's filter: the kernel's answer and the
/// compiled program, probed once per process.
fn default_filter() -> Result<&'static SyscallFilter, String> {
    static KERNEL: OnceLock<Result<(), String>> = OnceLock::new();
    KERNEL
        .get_or_init(|| {
            spawn::seccomp_filter_available().map_err(|e| {
                format!("this kernel cannot install seccomp filters (CONFIG_SECCOMP_FILTER): {e}")
            })
        })
        .clone()?;
    SyscallFilter::corral_default().map_err(|e| format!("cannot build the syscall filter: {e}"))
}

/// The isolation plan for `limits` on this host.
pub fn plan(limits: &Limits) -> IsolationPlan {
    plan_with(limits, default_filter)
}

fn plan_with(
    limits: &Limits,
    filter: impl FnOnce() -> Result<&'static SyscallFilter, String>,
) -> IsolationPlan {
    let mut not_enforced = Vec::new();
    let filter = match limits.syscalls {
        Syscalls::Off => None,
        Syscalls::Default => match filter() {
            Ok(f) => Some(f),
            Err(why) => {
                not_enforced.push(IsolationGap {
                    layer: "syscalls".into(),
                    why,
                });
                None
            }
        },
    };
    IsolationPlan {
        record: IsolationRecord {
            requested: IsolationRequested {
                syscalls: limits.syscalls.as_str().into(),
            },
            enforced: IsolationEnforced {
                syscalls: filter.map(|_| corral_record::SyscallPolicy {
                    policy: spawn::POLICY.into(),
                    version: spawn::POLICY_VERSION,
                }),
                no_new_privs: true,
                new_session: true,
                core_dumps: false,
            },
            not_enforced,
        },
        filter,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_says_what_is_applied() {
        let mut limits = Limits::default();
        let p = plan(&limits);
        let j = serde_json::to_value(&p.record).unwrap();
        assert_eq!(
            j,
            serde_json::json!({
                "requested": {"syscalls": "default"},
                "enforced": {"syscalls": {"policy": "corral-default", "version": 1},
                             "no_new_privs": true, "new_session": true, "core_dumps": false},
                "not_enforced": []
            })
        );
        assert!(p.filter.is_some());

        limits.syscalls = Syscalls::Off;
        let p = plan(&limits);
        assert!(p.filter.is_none());
        assert_eq!(p.record.requested.syscalls, "off");
        assert_eq!(p.record.enforced.syscalls, None);
        assert!(p.record.not_enforced.is_empty());
        assert!(p.record.enforced.no_new_privs && p.record.enforced.new_session);

        let p = plan_with(&Limits::default(), || Err("no seccomp here".into()));
        assert!(p.filter.is_none());
        assert_eq!(p.record.enforced.syscalls, None);
        assert_eq!(
            p.record.not_enforced,
            vec![IsolationGap {
                layer: "syscalls".into(),
                why: "no seccomp here".into()
            }]
        );
    }
}
