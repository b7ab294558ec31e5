//! When a test that cannot run here may skip, and when it must fail.
//!
//! The same test binaries run on a development host, on a CI host and in the test VMs,
//! so a test that needs root or a kernel feature checks for it and, where it is
//! missing, skips with a printed `skipped: <reason>`. A skip counts as a pass, though:
//! if the VM lost its cgroup controllers, its step would still be green. So each step of
//! `cargo xtask test` declares what it is there to test in `CORRAL_TEST_REQUIRE`
//! (`root,cgroup1` for the host step on a v1/hybrid host, `root,cgroup2` for the VM
//! step, `root,systemd,systemd-user` for the systemd VM step), and:
//!
//! - in CI (`CI` set and not `false`/`0`) and in the VMs (`CORRAL_IN_VM=1`), a test that
//!   lacks a declared [`Feature`] **fails** with its reason;
//! - everywhere else, and for a feature the step did not declare, it prints
//!   `skipped: <test>: <reason>` and passes, as before.
//!
//! ```text
//! CI=true CORRAL_TEST_REQUIRE=cgroup2 cargo test -p corral-cli --test enforcement cgroup2::oom
//! ```
//! fails on a hybrid host (no controllers in its cgroup2 mount); without
//! `CORRAL_TEST_REQUIRE` (or without `CI`) it skips.

use std::fmt;

pub mod slurm;

/// The variable in which a step declares the features its tests must find.
pub const REQUIRE_ENV: &str = "CORRAL_TEST_REQUIRE";

/// Something a test needs from the machine it runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    /// Running as root (to create cgroups).
    Root,
    /// cgroup v1 hierarchies (at least memory) that corral can use.
    Cgroup1,
    /// A cgroup2 mount offering the memory, cpu and pids controllers.
    Cgroup2,
    /// systemd as PID 1 on cgroup v2, with the system bus.
    Systemd,
    /// An unprivileged test user whose systemd user manager runs.
    SystemdUser,
    /// Slurm's daemons and client commands and munge (Debian's `slurm-wlm`, `munge`),
    /// from which a test starts a private single-node Slurm ([`slurm`]).
    Slurm,
}

impl Feature {
    /// Every feature, in the order they are listed.
    pub const ALL: [Feature; 6] = [
        Feature::Root,
        Feature::Cgroup1,
        Feature::Cgroup2,
        Feature::Systemd,
        Feature::SystemdUser,
        Feature::Slurm,
    ];

    /// The name used in `CORRAL_TEST_REQUIRE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Feature::Root => "root",
            Feature::Cgroup1 => "cgroup1",
            Feature::Cgroup2 => "cgroup2",
            Feature::Systemd => "systemd",
            Feature::SystemdUser => "systemd-user",
            Feature::Slurm => "slurm",
        }
    }
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Feature {
    type Err = String;
    fn from_str(s: &str) -> Result<Feature, String> {
        Feature::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Feature::ALL.iter().map(|f| f.as_str()).collect();
                format!(
                    "unknown feature {s:?} in {REQUIRE_ENV}; use {}",
                    names.join(", ")
                )
            })
    }
}

/// Why a test cannot run here: the feature that is missing, and the details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// The missing feature.
    pub feature: Feature,
    /// What exactly is missing (for the skip line or the failure).
    pub why: String,
}

impl Missing {
    /// `feature` is missing because `why`.
    pub fn new(feature: Feature, why: impl Into<String>) -> Missing {
        Missing {
            feature,
            why: why.into(),
        }
    }
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.why)
    }
}

/// What to do about a test that cannot run here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Print `skipped: <this>` and pass.
    Skip(String),
    /// Fail with this message.
    Fail(String),
}

/// The declared features and whether a missing one fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The features the step declared (`CORRAL_TEST_REQUIRE`).
    pub required: Vec<Feature>,
    /// Where a missing declared feature fails: in CI and in the VMs.
    pub enforced: bool,
    /// Why it is enforced (or not), for the messages.
    pub context: &'static str,
}

impl Policy {
    /// The policy from `CORRAL_TEST_REQUIRE`, `CI` and `CORRAL_IN_VM`. Panics on an
    /// unknown feature name: a typo must not turn a requirement into a skip.
    pub fn from_env() -> Policy {
        let var = |k: &str| std::env::var(k).ok();
        Policy::new(
            var(REQUIRE_ENV).as_deref(),
            var("CI").as_deref(),
            var("CORRAL_IN_VM").as_deref(),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The policy from the values of `CORRAL_TEST_REQUIRE` (comma- or space-separated
    /// feature names), `CI` and `CORRAL_IN_VM`.
    pub fn new(
        require: Option<&str>,
        ci: Option<&str>,
        in_vm: Option<&str>,
    ) -> Result<Policy, String> {
        let required = require
            .unwrap_or("")
            .split([',', ' '])
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::parse)
            .collect::<Result<Vec<Feature>, String>>()?;
        let set = |v: Option<&str>| {
            v.map(str::trim)
                .is_some_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
        };
        let (enforced, context) = if set(in_vm) {
            (true, "in the test VM")
        } else if set(ci) {
            (true, "in CI")
        } else {
            (false, "outside CI and the VM")
        };
        Ok(Policy {
            required,
            enforced,
            context,
        })
    }

    /// True when a test lacking `f` must fail here.
    pub fn must_have(&self, f: Feature) -> bool {
        self.enforced && self.required.contains(&f)
    }

    /// What to do about `test`, which cannot run because of `missing`.
    pub fn verdict(&self, test: &str, missing: &Missing) -> Verdict {
        let f = missing.feature;
        if self.must_have(f) {
            Verdict::Fail(format!(
                "{test} cannot run: {missing}. This step requires {f} \
                 ({REQUIRE_ENV}={}), and {} a missing requirement fails instead of \
                 skipping",
                self.required_list(),
                self.context
            ))
        } else if self.required.contains(&f) {
            Verdict::Skip(format!(
                "{test}: {missing} ({f} is required by {REQUIRE_ENV}, which fails only \
                 in CI and in the VM)"
            ))
        } else {
            Verdict::Skip(format!("{test}: {missing}"))
        }
    }

    fn required_list(&self) -> String {
        let v: Vec<&str> = self.required.iter().map(|f| f.as_str()).collect();
        v.join(",")
    }
}

/// For a test that cannot run here: prints `skipped: <test>: <reason>` and returns, or
/// panics with the reason where the step requires the missing feature (see
/// [`Policy`]). The failure points at the caller.
#[track_caller]
pub fn skip(test: &str, missing: &Missing) {
    match Policy::from_env().verdict(test, missing) {
        Verdict::Skip(line) => eprintln!("skipped: {line}"),
        Verdict::Fail(msg) => panic!("{msg}"),
    }
}

/// For a test whose control cannot run here (the check outside corral that proves the
/// test's assertion could fail at all: a setuid file that works, a pty): prints
/// `skipped: <test>: <why>` and returns, or panics where the step declared what it
/// requires and the policy is enforced (CI, the VMs): a step's machine must be able to
/// run the controls of the tests it exists for.
#[track_caller]
pub fn skip_control(test: &str, why: &str) {
    let p = Policy::from_env();
    if p.enforced && !p.required.is_empty() {
        panic!(
            "{test} cannot run its control: {why}; {REQUIRE_ENV}={} {} requires it to run",
            p.required_list(),
            p.context
        );
    }
    eprintln!("skipped: {test}: {why}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cgroup2_missing() -> Missing {
        Missing::new(Feature::Cgroup2, "cgroup2 lacks the memory controller")
    }

    #[test]
    fn names_round_trip_and_typos_are_refused() {
        for f in Feature::ALL {
            assert_eq!(f.as_str().parse::<Feature>(), Ok(f));
        }
        let e = Policy::new(Some("root,cgroup3"), None, None).unwrap_err();
        assert!(e.contains("\"cgroup3\""), "{e}");
        assert!(e.contains("systemd-user"), "{e}");
    }

    #[test]
    fn a_declared_feature_fails_in_ci_and_in_the_vm() {
        for (ci, vm) in [(Some("true"), None), (Some("1"), None), (None, Some("1"))] {
            let p = Policy::new(Some("root, cgroup2"), ci, vm).unwrap();
            assert_eq!(p.required, [Feature::Root, Feature::Cgroup2]);
            match p.verdict("cgroup2::oom", &cgroup2_missing()) {
                Verdict::Fail(m) => {
                    assert!(m.contains("cgroup2::oom cannot run"), "{m}");
                    assert!(m.contains("lacks the memory controller"), "{m}");
                    assert!(m.contains("CORRAL_TEST_REQUIRE=root,cgroup2"), "{m}");
                }
                v => panic!("{ci:?} {vm:?}: {v:?}"),
            }
        }
    }

    #[test]
    fn an_undeclared_feature_skips_even_in_ci() {
        let p = Policy::new(Some("root,cgroup1"), Some("true"), None).unwrap();
        assert_eq!(
            p.verdict("cgroup2::oom", &cgroup2_missing()),
            Verdict::Skip("cgroup2::oom: cgroup2 lacks the memory controller".into())
        );
    }

    #[test]
    fn outside_ci_a_declared_feature_still_skips() {
        for ci in [None, Some(""), Some("false"), Some("0")] {
            let p = Policy::new(Some("cgroup2"), ci, None).unwrap();
            assert!(!p.must_have(Feature::Cgroup2));
            match p.verdict("t", &cgroup2_missing()) {
                Verdict::Skip(l) => assert!(l.contains("fails only in CI"), "{l}"),
                v => panic!("{ci:?}: {v:?}"),
            }
        }
        let p = Policy::new(None, Some("true"), None).unwrap();
        assert!(p.required.is_empty());
        assert!(matches!(
            p.verdict("t", &cgroup2_missing()),
            Verdict::Skip(_)
        ));
    }
}
