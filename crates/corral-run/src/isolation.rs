//! The isolation layers of a run beside its limits (for now: the network), decided in
//! the parent before anything is created, so that the record says honestly what the
//! run got and `--require-isolation` can refuse before it starts.
//!
//! A layer that cannot be applied here does not fail the run: it is recorded in
//! `isolation.not_enforced` with the reason and the remedy, like a limit a backend
//! cannot enforce.

use corral_record::{IsolationEnforced, IsolationGap, IsolationRecord, IsolationRequested};
use corral_spec::{Limits, Network};
use rustix::thread::CapabilitySet;

/// What this process may do that the layers need: its effective capabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Privileges {
    /// `CAP_SYS_ADMIN`: `unshare(CLONE_NEWNET)`.
    pub sys_admin: bool,
    /// `CAP_NET_ADMIN`: bringing the new namespace's loopback up.
    pub net_admin: bool,
}

impl Privileges {
    /// This process' effective capabilities (none if they cannot be read).
    pub fn current() -> Privileges {
        let eff = rustix::thread::capabilities(None)
            .map(|c| c.effective)
            .unwrap_or(CapabilitySet::empty());
        Privileges {
            sys_admin: eff.contains(CapabilitySet::SYS_ADMIN),
            net_admin: eff.contains(CapabilitySet::NET_ADMIN),
        }
    }
}

/// The isolation one run gets: its record, and what the child must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsolationPlan {
    /// Requested versus applied, for the record's `isolation`.
    pub record: IsolationRecord,
    /// The child enters its own network namespace with loopback up.
    pub new_network: bool,
}

/// The `network` layer cannot be applied without these capabilities (rootless runs get
/// a network namespace only once corral uses user namespaces).
const NETWORK_GAP: &str = "a network namespace needs CAP_SYS_ADMIN and CAP_NET_ADMIN, \
     which corral lacks here (run by an ordinary user: rootless runs get one only once \
     corral uses user namespaces), so the run shares the host's network; run corral as \
     root (or submit to the corral service) to give each run its own loopback-only \
     network, or pass --network host to ask for the host's network";

/// The isolation plan for `limits` on this host, for this process.
pub fn plan(limits: &Limits) -> IsolationPlan {
    plan_with(limits, Privileges::current())
}

/// The isolation plan for `limits`, for a process with `privs`.
fn plan_with(limits: &Limits, privs: Privileges) -> IsolationPlan {
    let mut not_enforced = Vec::new();
    let (network, new_network) = match limits.network {
        Network::Host => (Some("host".to_string()), false),
        Network::None if privs.sys_admin && privs.net_admin => (Some("loopback".to_string()), true),
        Network::None => {
            not_enforced.push(IsolationGap {
                layer: "network".into(),
                why: NETWORK_GAP.into(),
            });
            (None, false)
        }
    };
    IsolationPlan {
        record: IsolationRecord {
            requested: IsolationRequested {
                network: limits.network.as_str().to_string(),
            },
            enforced: IsolationEnforced { network },
            not_enforced,
        },
        new_network,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: Privileges = Privileges {
        sys_admin: true,
        net_admin: true,
    };
    const USER: Privileges = Privileges {
        sys_admin: false,
        net_admin: false,
    };

    #[test]
    fn root_gets_a_loopback_only_namespace_by_default() {
        let p = plan_with(&Limits::default(), ROOT);
        assert!(p.new_network);
        assert_eq!(p.record.requested.network, "none");
        assert_eq!(p.record.enforced.network.as_deref(), Some("loopback"));
        assert!(p.record.not_enforced.is_empty());
    }

    #[test]
    fn host_network_is_what_was_asked_for_anyone() {
        let host = Limits {
            network: Network::Host,
            ..Limits::default()
        };
        for privs in [ROOT, USER] {
            let p = plan_with(&host, privs);
            assert!(!p.new_network);
            assert_eq!(p.record.requested.network, "host");
            assert_eq!(p.record.enforced.network.as_deref(), Some("host"));
            assert!(p.record.not_enforced.is_empty());
        }
    }

    #[test]
    fn an_ordinary_user_is_told_the_network_is_not_isolated_and_why() {
        for privs in [
            USER,
            Privileges {
                sys_admin: true,
                net_admin: false,
            },
        ] {
            let p = plan_with(&Limits::default(), privs);
            assert!(!p.new_network);
            assert_eq!(p.record.requested.network, "none");
            assert_eq!(p.record.enforced.network, None);
            assert_eq!(p.record.not_enforced.len(), 1);
            let gap = &p.record.not_enforced[0];
            assert_eq!(gap.layer, "network");
            assert!(gap.why.contains("CAP_SYS_ADMIN"), "{}", gap.why);
            assert!(gap.why.contains("--network host"), "{}", gap.why);
        }
    }

    #[test]
    fn the_record_object_has_its_documented_shape() {
        let p = plan_with(&Limits::default(), USER);
        let v = serde_json::to_value(&p.record).unwrap();
        assert_eq!(v["requested"]["network"], "none");
        assert!(v["enforced"]["network"].is_null());
        assert_eq!(v["not_enforced"][0]["layer"], "network");
    }
}
