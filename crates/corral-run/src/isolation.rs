//! The isolation layers of a run beside its limits, decided in the parent before
//! anything is created, so that the record's `isolation` object says honestly what the
//! run got, the child's checklist applies exactly that, and `--require-isolation` can
//! refuse before the run starts.
//!
//! Always, on every backend: a new session (`setsid`: no controlling terminal), core
//! dumps off (`RLIMIT_CORE` 0) and `no_new_privs`. By default (`--syscalls default`)
//! also the seccomp filter [`crate::spawn::POLICY`], where the kernel can install one,
//! and (`--network none`) its own network namespace with only loopback, where corral
//! has the capabilities to make one, and (`--pid-ns on`) its own pid namespace, where
//! corral has `CAP_SYS_ADMIN` and the kernel `clone3`: the command runs as pid 2 under
//! corral's mini-init (pid 1) with a fresh `/proc` (see [`crate::spawn`]).
//!
//! `--isolation off` (profile key `isolation = "off"`) is corral's behaviour before the
//! sandbox: the host's network, no seccomp filter, and none of the always-on steps (no
//! `setsid`, no `no_new_privs`, core dumps as inherited), except where something else
//! needs one: the seccomp filter (an explicit `--syscalls default`) keeps
//! `no_new_privs`, and the rlimit backend keeps `setsid` for its group kill.
//!
//! A layer that cannot be applied here does not fail the run: it is recorded in
//! `isolation.not_enforced` with the reason (and the remedy), like a limit a backend
//! cannot enforce.

use std::sync::OnceLock;

use corral_record::{IsolationEnforced, IsolationGap, IsolationRecord, IsolationRequested};
use corral_spec::{FsMode, Isolation, Limits, Network, PidNs, Syscalls};
use rustix::thread::CapabilitySet;

use crate::spawn::{self, SyscallFilter};

pub use crate::spawn::UserNamespaceProbe;

/// What this process may do that the layers need: its effective capabilities, and
/// for an ordinary user whether the host lets it make a user namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Privileges {
    /// `CAP_SYS_ADMIN`: `unshare(CLONE_NEWNET)`.
    pub sys_admin: bool,
    /// `CAP_NET_ADMIN`: bringing the new namespace's loopback up.
    pub net_admin: bool,
    /// The kernel answers `clone3` (5.3+): a pid namespace is made with
    /// `clone3(CLONE_NEWPID)`, never on the `fork` fallback.
    pub clone3: bool,
    /// Without `CAP_SYS_ADMIN`: whether this host lets corral make a user namespace
    /// (and mount a fresh `/proc` in it), through which an ordinary user's run gets
    /// the network, pid and file-system layers ([`user_namespace_probe`]). `None`:
    /// not probed (corral has `CAP_SYS_ADMIN` and needs none).
    pub user_ns: Option<UserNamespaceProbe>,
}

impl Privileges {
    /// This process' effective capabilities (none if they cannot be read), and the
    /// user-namespace probe when it lacks `CAP_SYS_ADMIN`.
    pub fn current() -> Privileges {
        let p = Privileges::capabilities();
        Privileges {
            user_ns: (!p.sys_admin).then(user_namespace_probe),
            ..p
        }
    }

    /// This process' effective capabilities and clone3, without the user-namespace
    /// probe (`user_ns: None`).
    fn capabilities() -> Privileges {
        let eff = rustix::thread::capabilities(None)
            .map(|c| c.effective)
            .unwrap_or(CapabilitySet::empty());
        Privileges {
            sys_admin: eff.contains(CapabilitySet::SYS_ADMIN),
            net_admin: eff.contains(CapabilitySet::NET_ADMIN),
            clone3: spawn::clone3_available(),
            user_ns: None,
        }
    }
}

/// The environment variable that makes [`user_namespace_probe`] answer as a host
/// that forbids unprivileged user namespaces (for tests of that path).
pub const NO_USERNS_ENV: &str = "CORRAL_TEST_NO_USERNS";

/// Whether this (unprivileged) process can make a user namespace with a fresh
/// `/proc`, probed once per process with a throwaway child
/// ([`spawn::user_namespace_probe`], about a millisecond). [`NO_USERNS_ENV`] set to a
/// non-empty value answers `EPERM` without probing.
pub fn user_namespace_probe() -> UserNamespaceProbe {
    static PROBE: OnceLock<UserNamespaceProbe> = OnceLock::new();
    *PROBE.get_or_init(|| {
        if std::env::var_os(NO_USERNS_ENV).is_some_and(|v| !v.is_empty()) {
            return UserNamespaceProbe::Refused(libc::EPERM);
        }
        spawn::user_namespace_probe()
    })
}

/// `corral check`'s `user_namespace` feature: `Ok` when an ordinary user's runs get
/// their layers through a user namespace on this host, else why not, with the remedy.
/// An ordinary user is told what the probe found; root (which needs none, and may make
/// one whatever the sysctls say) what the sysctls allow ordinary users.
pub fn user_namespace_feature(privs: Privileges) -> Result<(), String> {
    if !privs.sys_admin {
        return match rootless(privs) {
            Ok(true) => Ok(()),
            Ok(false) => Err(PID_NS_PROC_GAP
                .split(", so")
                .next()
                .unwrap_or_default()
                .to_string()),
            Err(why) => Err(why),
        };
    }
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    let off = read("/proc/sys/kernel/unprivileged_userns_clone") == Some(0)
        || read("/proc/sys/user/max_user_namespaces") == Some(0);
    match off {
        true => Err(userns_refused(libc::EPERM)),
        false => Ok(()),
    }
}

/// Why the host refuses an ordinary user a user namespace, with the remedy.
fn userns_refused(errno: i32) -> String {
    let err = std::io::Error::from_raw_os_error(errno);
    format!(
        "an ordinary user gets it through a user namespace, which this host refuses \
         (clone3(CLONE_NEWUSER), or the namespace's capabilities: {err}); allow \
         unprivileged user namespaces with `sysctl kernel.unprivileged_userns_clone=1` \
         (Debian's kernels) and a non-zero `sysctl user.max_user_namespaces` (e.g. 15000), \
         or `sysctl kernel.apparmor_restrict_unprivileged_userns=0` (Ubuntu)"
    )
}

/// How an ordinary user's run gets the namespace layers: `Ok(proc)` through a user
/// namespace (`proc`: a fresh `/proc` can be mounted in it), or why not.
fn rootless(privs: Privileges) -> Result<bool, String> {
    if !privs.clone3 {
        return Err(
            "an ordinary user gets it through a user namespace made with clone3 \
                    (Linux 5.3+), which this kernel (or a seccomp filter around corral) \
                    refuses"
                .into(),
        );
    }
    match privs.user_ns {
        Some(UserNamespaceProbe::Works) => Ok(true),
        Some(UserNamespaceProbe::NoProc(_)) => Ok(false),
        Some(UserNamespaceProbe::Refused(e)) => Err(userns_refused(e)),
        None => Err(userns_refused(libc::EPERM)),
    }
}

/// Whether a process with `privs` can make namespaces and mounts: with
/// `CAP_SYS_ADMIN`, or through a user namespace.
fn can_mount(privs: Privileges) -> bool {
    privs.sys_admin || rootless(privs).is_ok()
}

/// The isolation one run gets: its record, and what the child must do.
#[derive(Debug, Clone)]
pub struct IsolationPlan {
    /// Requested versus applied, for the record's `isolation`.
    pub record: IsolationRecord,
    /// The compiled seccomp filter, when one is applied.
    pub filter: Option<&'static SyscallFilter>,
    /// The child enters its own network namespace with loopback up.
    pub new_network: bool,
    /// The file-system view the child builds (`None`: none, the host's files as they
    /// are; `Some(Host)` only covers the `hide` paths).
    pub fs: Option<FsMode>,
    /// The child is born in its own pid namespace (`clone3(CLONE_NEWPID)`), mounts a
    /// fresh `/proc` and runs the command under corral's mini-init.
    pub pid_ns: bool,
    /// The Landlock ABI to restrict writes with (the read-only view's second layer).
    pub landlock: Option<u32>,
    /// The child is born in its own user namespace (an ordinary user's run), through
    /// which it gets the layers above that need namespaces or mounts.
    pub user_ns: bool,
}

/// The `network` layer cannot be applied: without CAP_SYS_ADMIN and CAP_NET_ADMIN,
/// and (`rootless`) the reason an ordinary user gets no user namespace.
fn network_gap(rootless: Option<&str>) -> String {
    let how = match rootless {
        Some(why) => format!("which corral lacks here, and {why}"),
        None => "which corral lacks here".into(),
    };
    format!(
        "a network namespace needs CAP_SYS_ADMIN and CAP_NET_ADMIN, {how}; so the run \
         shares the host's network; run corral as root (or submit to the corral service) \
         to give each run its own loopback-only network, or pass --network host to ask \
         for the host's network"
    )
}

/// The `fs` layer's read-only view cannot be applied without CAP_SYS_ADMIN or a user
/// namespace (`why`).
fn fs_gap(why: &str) -> String {
    format!(
        "a read-only view of the host's files needs CAP_SYS_ADMIN, which corral lacks \
         here, and {why}; so the run can write wherever its user can; run corral as root \
         (or submit to the corral service) to get the read-only view and a private /tmp, \
         or pass --fs host to ask for the host's files"
    )
}

/// Hidden paths (`--fs host --hide ...`) cannot be covered without CAP_SYS_ADMIN or a
/// user namespace (`why`).
fn hide_gap(why: &str) -> String {
    format!(
        "hiding paths (--hide) needs CAP_SYS_ADMIN, which corral lacks here, and {why}; \
         so they stay visible; run corral as root (or submit to the corral service) to \
         hide them"
    )
}

/// Whether this kernel has `mount_setattr` (the read-only view's one call), probed
/// once per process.
fn mount_setattr() -> Result<(), String> {
    static KERNEL: OnceLock<Result<(), String>> = OnceLock::new();
    KERNEL
        .get_or_init(|| {
            spawn::mount_setattr_available().map_err(|e| {
                format!(
                    "a read-only view of the host's files needs mount_setattr (Linux 5.12), \
                     which this kernel refuses ({e}), so the run can write wherever its user \
                     can; upgrade the kernel, or pass --fs host to ask for the host's files"
                )
            })
        })
        .clone()
}

/// The `fs` layer for `limits`, for a process with `privs` on a kernel where
/// `mount_setattr` says whether the read-only step is possible: the view the child
/// builds, or the gap that says why none is.
fn plan_fs(
    limits: &Limits,
    privs: Privileges,
    mount_setattr: impl FnOnce() -> Result<(), String>,
) -> (Option<FsMode>, Option<IsolationGap>) {
    let gap = |why: String| {
        Some(IsolationGap {
            layer: "fs".into(),
            why,
        })
    };
    let why_not = || rootless(privs).err().unwrap_or_default();
    match limits.fs {
        FsMode::Host if limits.hide.is_empty() => (Some(FsMode::Host), None),
        FsMode::Host if can_mount(privs) => (Some(FsMode::Host), None),
        FsMode::Host => (None, gap(hide_gap(&why_not()))),
        FsMode::ReadOnly if !can_mount(privs) => (None, gap(fs_gap(&why_not()))),
        FsMode::ReadOnly => match mount_setattr() {
            Ok(()) => (Some(FsMode::ReadOnly), None),
            Err(why) => (None, gap(why)),
        },
    }
}
/// The `pid_ns` layer cannot be applied without CAP_SYS_ADMIN or a user namespace
/// (`why`).
fn pid_ns_gap(why: &str) -> String {
    format!(
        "a pid namespace needs CAP_SYS_ADMIN, which corral lacks here, and {why}; so the \
         run sees and may signal the host's processes; run corral as root (or submit to \
         the corral service) to give each run its own pid namespace, or pass --pid-ns off \
         to ask for the host's"
    )
}

/// An ordinary user's pid namespace needs a fresh `/proc` in its user namespace,
/// which the kernel refuses where parts of the host's `/proc` are over-mounted.
const PID_NS_PROC_GAP: &str = "a pid namespace of an ordinary user's run (through a user \
     namespace) needs a fresh /proc mounted in it, which the kernel refuses here (parts of \
     the host's /proc are hidden by over-mounts, as in many containers), so the run sees \
     and may signal the host's processes; run corral as root (or submit to the corral \
     service) to give each run its own pid namespace, or pass --pid-ns off to ask for the \
     host's";

/// The `pid_ns` layer cannot be applied without clone3 (the fork fallback cannot make
/// the child pid 1 of a new namespace).
const PID_NS_CLONE3_GAP: &str = "a pid namespace needs clone3 (Linux 5.3+), which this \
     kernel (or a seccomp filter around corral) refuses, so the run sees and may signal \
     the host's processes; run corral on a kernel that allows clone3 to give each run its \
     own pid namespace, or pass --pid-ns off to ask for the host's";

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

/// Whether `limits` ask for a layer that needs a namespace or a mount (an ordinary
/// user's run then needs a user namespace; otherwise corral does not even probe).
fn wants_namespaces(limits: &Limits) -> bool {
    limits.network == Network::None
        || limits.pid_ns == PidNs::On
        || limits.fs == FsMode::ReadOnly
        || !limits.hide.is_empty()
}

/// The isolation plan for `limits` on this host, for this process.
pub fn plan(limits: &Limits) -> IsolationPlan {
    let privs = match wants_namespaces(limits) {
        true => Privileges::current(),
        // No layer needs one: spare the probe's clone.
        false => Privileges {
            user_ns: None,
            ..Privileges::capabilities()
        },
    };
    let mut p = plan_with(limits, privs, default_filter);
    plan_landlock(&mut p, landlock_abi);
    p
}

/// This kernel's Landlock ABI, probed once per process.
fn landlock_abi() -> Result<u32, String> {
    static KERNEL: OnceLock<Result<u32, String>> = OnceLock::new();
    KERNEL.get_or_init(spawn::landlock_abi).clone()
}

/// Landlock, the read-only view's second layer: where the view is read-only, writes
/// are also restricted to its writable paths with a Landlock ruleset, if the kernel
/// (`abi`) has Landlock; else a `landlock` gap (the view itself still holds).
fn plan_landlock(p: &mut IsolationPlan, abi: impl FnOnce() -> Result<u32, String>) {
    if p.fs != Some(FsMode::ReadOnly) {
        return;
    }
    match abi() {
        Ok(abi) => {
            p.landlock = Some(abi);
            p.record.enforced.landlock = Some(abi);
        }
        Err(why) => p.record.not_enforced.push(IsolationGap {
            layer: "landlock".into(),
            why: format!(
                "{why}: writes are kept to the working directory, the --rw paths and the \
                 private /tmp by the read-only mounts alone, without Landlock's second check"
            ),
        }),
    }
}

/// The isolation plan for `limits`, for a process with `privs`, where `filter` says
/// whether the seccomp filter can be installed.
fn plan_with(
    limits: &Limits,
    privs: Privileges,
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
    // An ordinary user's way to the layers below: a user namespace, where the host
    // allows one (`Err`: why not).
    let rootless = (!privs.sys_admin).then(|| rootless(privs));
    let (network, new_network) = match limits.network {
        Network::Host => (Some("host".to_string()), false),
        Network::None if privs.sys_admin && privs.net_admin => (Some("loopback".to_string()), true),
        Network::None if matches!(rootless, Some(Ok(_))) => (Some("loopback".to_string()), true),
        Network::None => {
            let why = match &rootless {
                Some(Err(why)) => network_gap(Some(why)),
                _ => network_gap(None),
            };
            not_enforced.push(IsolationGap {
                layer: "network".into(),
                why,
            });
            (None, false)
        }
    };
    let pid_ns = match limits.pid_ns {
        PidNs::Off => false,
        PidNs::On if privs.sys_admin && privs.clone3 => true,
        PidNs::On if matches!(rootless, Some(Ok(true))) => true,
        PidNs::On => {
            not_enforced.push(IsolationGap {
                layer: "pid_ns".into(),
                why: match &rootless {
                    None => PID_NS_CLONE3_GAP.into(),
                    Some(Ok(_)) => PID_NS_PROC_GAP.into(),
                    Some(Err(why)) => pid_ns_gap(why),
                },
            });
            false
        }
    };
    let (fs, fs_gap) = plan_fs(limits, privs, mount_setattr);
    not_enforced.extend(fs_gap);
    let always = limits.isolation == Isolation::Default;
    // The user namespace, when an ordinary user's run gets a layer through it.
    let mounts = match fs {
        Some(FsMode::ReadOnly) => true,
        Some(FsMode::Host) => !limits.hide.is_empty(),
        None => false,
    };
    let user_ns = !privs.sys_admin && (new_network || pid_ns || mounts);
    IsolationPlan {
        record: IsolationRecord {
            requested: IsolationRequested {
                isolation: limits.isolation.as_str().into(),
                syscalls: limits.syscalls.as_str().into(),
                network: limits.network.as_str().into(),
                user: limits.user.as_string(),
                fs: Some(crate::fsview::requested(limits)),
                pid_ns: limits.pid_ns.as_str().into(),
            },
            enforced: IsolationEnforced {
                syscalls: filter.map(|_| corral_record::SyscallPolicy {
                    policy: spawn::POLICY.into(),
                    version: spawn::POLICY_VERSION,
                }),
                // Without CAP_SYS_ADMIN the kernel installs a filter only under
                // no_new_privs, and corral drops that capability in the child.
                no_new_privs: always || filter.is_some(),
                new_session: always,
                core_dumps: !always,
                network,
                // Filled in by the run once its identity is decided and allocated
                // (`crate::identity`).
                user: None,
                capabilities: None,
                // The paths as given; `run` fills in the resolved ones.
                fs: fs.map(|mode| {
                    let entry = |p: &std::path::PathBuf| crate::fsview::Entry {
                        path: p.clone(),
                        dir: true,
                    };
                    let paths = crate::fsview::ViewPaths {
                        writable: limits.rw.iter().map(entry).collect(),
                        hide: limits.hide.iter().map(entry).collect(),
                        private: ["/tmp", "/dev/shm"].map(Into::into).to_vec(),
                    };
                    crate::fsview::enforced(mode, &paths)
                }),
                pid_ns,
                // Decided by `plan_landlock`, after the view.
                landlock: None,
                user_namespace: user_ns,
            },
            not_enforced,
        },
        filter,
        new_network,
        fs,
        pid_ns,
        landlock: None,
        user_ns,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: Privileges = Privileges {
        sys_admin: true,
        net_admin: true,
        clone3: true,
        user_ns: None,
    };
    /// An ordinary user on a host that forbids unprivileged user namespaces.
    const USER: Privileges = Privileges {
        sys_admin: false,
        net_admin: false,
        clone3: true,
        user_ns: Some(UserNamespaceProbe::Refused(libc::EPERM)),
    };
    /// An ordinary user on a host that allows them.
    const USER_NS: Privileges = Privileges {
        user_ns: Some(UserNamespaceProbe::Works),
        ..USER
    };

    #[test]
    fn the_record_says_what_is_applied() {
        let mut limits = Limits::default();
        let p = plan_with(&limits, ROOT, default_filter);
        let j = serde_json::to_value(&p.record).unwrap();
        assert_eq!(
            j,
            serde_json::json!({
                "requested": {"isolation": "default", "syscalls": "default", "network": "none",
                              "user": "default",
                              "pid_ns": "on",
                              "fs": {"mode": "read-only", "rw": [], "hide": []}},
                "enforced": {"syscalls": {"policy": "corral-default", "version": 2},
                             "no_new_privs": true, "new_session": true, "core_dumps": false,
                             "network": "loopback", "pid_ns": true, "landlock": null,
                             "fs": {"mode": "read-only", "writable": ["/tmp", "/dev/shm"],
                                    "hidden": [], "private_tmp": true}},
                "not_enforced": []
            })
        );
        assert!(p.filter.is_some());

        limits.syscalls = Syscalls::Off;
        let p = plan_with(&limits, ROOT, default_filter);
        assert!(p.filter.is_none());
        assert_eq!(p.record.requested.syscalls, "off");
        assert_eq!(p.record.enforced.syscalls, None);
        assert!(p.record.not_enforced.is_empty());
        assert!(p.record.enforced.no_new_privs && p.record.enforced.new_session);

        let p = plan_with(&Limits::default(), ROOT, || Err("no seccomp here".into()));
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

    #[test]
    fn isolation_off_is_the_unsandboxed_run_and_says_so() {
        let off = Limits {
            isolation: Isolation::Off,
            network: Network::Host,
            syscalls: Syscalls::Off,
            fs: FsMode::Host,
            pid_ns: PidNs::Off,
            ..Limits::default()
        };
        for privs in [ROOT, USER] {
            let p = plan_with(&off, privs, default_filter);
            let j = serde_json::to_value(&p.record).unwrap();
            assert_eq!(
                j,
                serde_json::json!({
                    "requested": {"isolation": "off", "syscalls": "off", "network": "host",
                                  "user": "default",
                                  "pid_ns": "off",
                                  "fs": {"mode": "host", "rw": [], "hide": []}},
                    "enforced": {"syscalls": null, "no_new_privs": false, "new_session": false,
                                 "core_dumps": true, "network": "host", "pid_ns": false, "landlock": null,
                                 "fs": {"mode": "host", "writable": ["/"], "hidden": [],
                                        "private_tmp": false}},
                    "not_enforced": []
                })
            );
            assert!(p.filter.is_none() && !p.new_network && !p.pid_ns);
            assert_eq!(p.fs, Some(FsMode::Host));
        }
        // An explicit filter under the switch keeps no_new_privs (the kernel's condition).
        let p = plan_with(
            &Limits {
                syscalls: Syscalls::Default,
                ..off
            },
            ROOT,
            default_filter,
        );
        assert!(p.filter.is_some());
        assert!(p.record.enforced.no_new_privs && !p.record.enforced.new_session);
    }

    #[test]
    fn root_gets_a_loopback_only_namespace_by_default() {
        let p = plan_with(&Limits::default(), ROOT, default_filter);
        assert!(p.new_network);
        assert_eq!(p.record.requested.network, "none");
        assert_eq!(p.record.enforced.network.as_deref(), Some("loopback"));
        assert!(p.record.not_enforced.is_empty());
    }

    #[test]
    fn host_network_is_what_was_asked_for_anyone() {
        let host = Limits {
            network: Network::Host,
            fs: FsMode::Host,
            // (An ordinary user's pid namespace gap is not this test's.)
            pid_ns: PidNs::Off,
            ..Limits::default()
        };
        for privs in [ROOT, USER] {
            let p = plan_with(&host, privs, default_filter);
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
                clone3: true,
                user_ns: None,
            },
        ] {
            let p = plan_with(&Limits::default(), privs, default_filter);
            assert!(!p.new_network);
            assert_eq!(p.record.requested.network, "none");
            assert_eq!(p.record.enforced.network, None);
            // The network's gap, and the pid namespace's where CAP_SYS_ADMIN is missing
            // (the fs layer's own gap is tested below).
            let layers: Vec<&str> = p
                .record
                .not_enforced
                .iter()
                .map(|g| g.layer.as_str())
                .filter(|l| *l != "fs")
                .collect();
            let want: &[&str] = if privs.sys_admin {
                &["network"]
            } else {
                &["network", "pid_ns"]
            };
            assert_eq!(layers, want);
            let gap = &p.record.not_enforced[0];
            assert_eq!(gap.layer, "network");
            assert!(gap.why.contains("CAP_SYS_ADMIN"), "{}", gap.why);
            assert!(gap.why.contains("--network host"), "{}", gap.why);
        }
    }

    #[test]
    fn both_gaps_are_listed_in_order() {
        let p = plan_with(&Limits::default(), USER, || Err("no seccomp here".into()));
        let layers: Vec<&str> = p
            .record
            .not_enforced
            .iter()
            .map(|g| g.layer.as_str())
            .collect();
        assert_eq!(layers, ["syscalls", "network", "pid_ns", "fs"]);
    }

    #[test]
    fn landlock_backs_the_read_only_view_where_the_kernel_has_it() {
        let mut p = plan_with(&Limits::default(), ROOT, default_filter);
        plan_landlock(&mut p, || Ok(4));
        assert_eq!(p.landlock, Some(4));
        assert_eq!(p.record.enforced.landlock, Some(4));
        assert!(p.record.not_enforced.is_empty());
        // No Landlock: a gap that says the view itself still holds.
        let mut p = plan_with(&Limits::default(), ROOT, default_filter);
        plan_landlock(&mut p, || Err("this kernel has no Landlock".into()));
        assert_eq!((p.landlock, p.record.enforced.landlock), (None, None));
        assert_eq!(p.record.not_enforced.len(), 1);
        assert_eq!(p.record.not_enforced[0].layer, "landlock");
        assert!(p.record.not_enforced[0]
            .why
            .contains("read-only mounts alone"));
        // Without the read-only view (--fs host, or no view for an ordinary user)
        // there is nothing for Landlock to repeat: not asked, not a gap.
        let host = Limits {
            fs: FsMode::Host,
            ..Limits::default()
        };
        for (limits, privs) in [(host, ROOT), (Limits::default(), USER)] {
            let mut p = plan_with(&limits, privs, default_filter);
            let gaps = p.record.not_enforced.len();
            plan_landlock(&mut p, || Ok(4));
            assert_eq!((p.landlock, p.record.not_enforced.len()), (None, gaps));
        }
    }

    #[test]
    fn root_gets_a_pid_namespace_by_default() {
        let p = plan_with(&Limits::default(), ROOT, default_filter);
        assert!(p.pid_ns);
        assert_eq!(p.record.requested.pid_ns, "on");
        assert!(p.record.enforced.pid_ns);
        assert!(p.record.not_enforced.is_empty());
        // --pid-ns off is what was asked for, for anyone.
        let off = Limits {
            pid_ns: PidNs::Off,
            ..Limits::default()
        };
        for privs in [ROOT, USER] {
            let p = plan_with(&off, privs, default_filter);
            assert!(!p.pid_ns);
            assert_eq!(p.record.requested.pid_ns, "off");
            assert!(!p.record.enforced.pid_ns);
            assert!(p.record.not_enforced.iter().all(|g| g.layer != "pid_ns"));
        }
    }

    #[test]
    fn an_ordinary_user_is_told_the_pids_are_not_isolated_and_why() {
        let p = plan_with(&Limits::default(), USER, default_filter);
        assert!(!p.pid_ns);
        assert!(!p.record.enforced.pid_ns);
        let gaps: Vec<&IsolationGap> = p
            .record
            .not_enforced
            .iter()
            .filter(|g| g.layer == "pid_ns")
            .collect();
        assert_eq!(gaps.len(), 1);
        assert!(gaps[0].why.contains("CAP_SYS_ADMIN"), "{}", gaps[0].why);
        assert!(gaps[0].why.contains("user namespaces"), "{}", gaps[0].why);
        assert!(gaps[0].why.contains("--pid-ns off"), "{}", gaps[0].why);
    }

    #[test]
    fn without_clone3_root_is_told_the_kernel_refuses_it() {
        let no_clone3 = Privileges {
            clone3: false,
            ..ROOT
        };
        let p = plan_with(&Limits::default(), no_clone3, default_filter);
        assert!(!p.pid_ns);
        assert!(p.new_network, "the other layers do not depend on clone3");
        assert_eq!(p.record.not_enforced.len(), 1);
        let gap = &p.record.not_enforced[0];
        assert_eq!(gap.layer, "pid_ns");
        assert!(gap.why.contains("clone3"), "{}", gap.why);
        assert!(gap.why.contains("--pid-ns off"), "{}", gap.why);
    }

    #[test]
    fn isolation_off_turns_the_pid_namespace_off_unless_asked() {
        let mut l = Limits::default();
        corral_spec::LimitsPatch {
            isolation: Some(Isolation::Off),
            ..Default::default()
        }
        .apply(&mut l);
        assert_eq!(l.pid_ns, PidNs::Off);
        assert!(!plan_with(&l, ROOT, default_filter).pid_ns);
        corral_spec::LimitsPatch {
            isolation: Some(Isolation::Off),
            pid_ns: Some(PidNs::On),
            ..Default::default()
        }
        .apply(&mut l);
        let p = plan_with(&l, ROOT, default_filter);
        assert!(p.pid_ns && p.record.enforced.pid_ns);
        assert_eq!(p.record.requested.isolation, "off");
    }

    #[test]
    fn the_record_object_has_its_documented_shape() {
        let p = plan_with(&Limits::default(), USER, default_filter);
        let v = serde_json::to_value(&p.record).unwrap();
        assert_eq!(v["requested"]["network"], "none");
        assert!(v["enforced"]["network"].is_null());
        assert_eq!(v["not_enforced"][0]["layer"], "network");
    }

    #[test]
    fn root_gets_the_read_only_view_where_the_kernel_has_mount_setattr() {
        let ok = || Ok(());
        let (fs, gap) = plan_fs(&Limits::default(), ROOT, ok);
        assert_eq!((fs, gap), (Some(FsMode::ReadOnly), None));
        let p = plan_with(&Limits::default(), ROOT, default_filter);
        assert_eq!(p.fs, Some(FsMode::ReadOnly));
        let e = p.record.enforced.fs.unwrap();
        assert_eq!((e.mode.as_str(), e.private_tmp), ("read-only", true));
        // An old kernel: the gap says which call is missing and what to do.
        let (fs, gap) = plan_fs(&Limits::default(), ROOT, || {
            Err("needs mount_setattr (Linux 5.12) ... pass --fs host".into())
        });
        assert_eq!(fs, None);
        let gap = gap.unwrap();
        assert_eq!(gap.layer, "fs");
        assert!(gap.why.contains("mount_setattr"), "{}", gap.why);
        // The real probe's sentence.
        if let Err(why) = mount_setattr() {
            assert!(
                why.contains("Linux 5.12") && why.contains("--fs host"),
                "{why}"
            );
        }
    }

    #[test]
    fn an_ordinary_user_is_told_the_files_are_not_read_only_and_why() {
        let p = plan_with(&Limits::default(), USER, default_filter);
        assert_eq!(p.fs, None);
        assert!(p.record.enforced.fs.is_none());
        assert_eq!(p.record.requested.fs.as_ref().unwrap().mode, "read-only");
        let gap = p
            .record
            .not_enforced
            .iter()
            .find(|g| g.layer == "fs")
            .unwrap();
        assert!(gap.why.contains("CAP_SYS_ADMIN"), "{}", gap.why);
        assert!(gap.why.contains("user namespaces"), "{}", gap.why);
        assert!(gap.why.contains("--fs host"), "{}", gap.why);
        // The probe is not consulted without the capability.
        let (fs, _) = plan_fs(&Limits::default(), USER, || panic!("probed"));
        assert_eq!(fs, None);
    }

    #[test]
    fn the_host_view_needs_nothing_unless_it_hides() {
        let host = Limits {
            fs: FsMode::Host,
            ..Limits::default()
        };
        for privs in [ROOT, USER] {
            let (fs, gap) = plan_fs(&host, privs, || panic!("probed"));
            assert_eq!((fs, gap), (Some(FsMode::Host), None));
        }
        let hiding = Limits {
            hide: vec!["/home".into()],
            ..host
        };
        assert_eq!(
            plan_fs(&hiding, ROOT, || panic!("probed")),
            (Some(FsMode::Host), None)
        );
        let (fs, gap) = plan_fs(&hiding, USER, || panic!("probed"));
        assert_eq!(fs, None);
        assert!(gap
            .unwrap()
            .why
            .starts_with("hiding paths (--hide) needs CAP_SYS_ADMIN"));
        // The record lists what was asked, as given.
        let p = plan_with(&hiding, ROOT, default_filter);
        let r = p.record.requested.fs.unwrap();
        assert_eq!(
            (r.mode.as_str(), r.hide),
            ("host", vec!["/home".to_string()])
        );
        assert_eq!(p.record.enforced.fs.unwrap().hidden, ["/home"]);
    }

    #[test]
    fn an_ordinary_user_gets_the_layers_through_a_user_namespace() {
        let p = plan_with(&Limits::default(), USER_NS, default_filter);
        assert!(p.user_ns && p.new_network && p.pid_ns, "{p:?}");
        assert_eq!(p.fs, Some(FsMode::ReadOnly));
        let e = &p.record.enforced;
        assert_eq!(e.network.as_deref(), Some("loopback"));
        assert!(e.pid_ns && e.user_namespace && e.fs.is_some());
        assert!(
            p.record.not_enforced.is_empty(),
            "{:?}",
            p.record.not_enforced
        );
        let j = serde_json::to_value(&p.record).unwrap();
        assert_eq!(j["enforced"]["user_namespace"], true);
        // Root never needs one: the field is absent from its record.
        let p = plan_with(&Limits::default(), ROOT, default_filter);
        assert!(!p.user_ns);
        let j = serde_json::to_value(&p.record).unwrap();
        assert!(j["enforced"].get("user_namespace").is_none(), "{j}");
        // No layer that needs one: no user namespace.
        let none = Limits {
            network: Network::Host,
            fs: FsMode::Host,
            pid_ns: PidNs::Off,
            ..Limits::default()
        };
        assert!(!plan_with(&none, USER_NS, default_filter).user_ns);
        // Hiding paths alone needs one.
        let hide = Limits {
            hide: vec!["/home".into()],
            ..none.clone()
        };
        let p = plan_with(&hide, USER_NS, default_filter);
        assert!(p.user_ns && p.record.not_enforced.is_empty());
        // Each layer alone.
        for (limits, what) in [
            (
                Limits {
                    network: Network::None,
                    ..none.clone()
                },
                "network",
            ),
            (
                Limits {
                    pid_ns: PidNs::On,
                    ..none.clone()
                },
                "pid_ns",
            ),
            (
                Limits {
                    fs: FsMode::ReadOnly,
                    ..none.clone()
                },
                "fs",
            ),
        ] {
            let p = plan_with(&limits, USER_NS, default_filter);
            assert!(p.user_ns && p.record.not_enforced.is_empty(), "{what}");
        }
    }

    #[test]
    fn where_user_namespaces_are_forbidden_the_gaps_name_the_sysctl() {
        for probe in [
            UserNamespaceProbe::Refused(libc::EPERM),
            UserNamespaceProbe::Refused(libc::ENOSPC),
        ] {
            let privs = Privileges {
                user_ns: Some(probe),
                ..USER
            };
            let p = plan_with(&Limits::default(), privs, default_filter);
            assert!(!p.user_ns && !p.new_network && !p.pid_ns && p.fs.is_none());
            assert!(!p.record.enforced.user_namespace);
            let layers: Vec<&str> = p
                .record
                .not_enforced
                .iter()
                .map(|g| g.layer.as_str())
                .collect();
            assert_eq!(layers, ["network", "pid_ns", "fs"]);
            for g in &p.record.not_enforced {
                assert!(
                    g.why.contains("kernel.unprivileged_userns_clone=1"),
                    "{}",
                    g.why
                );
                assert!(g.why.contains("user.max_user_namespaces"), "{}", g.why);
                assert!(g.why.contains("CAP_SYS_ADMIN"), "{}", g.why);
            }
        }
        // Without clone3 an ordinary user gets none either, and is told why.
        let p = plan_with(
            &Limits::default(),
            Privileges {
                clone3: false,
                ..USER_NS
            },
            default_filter,
        );
        assert!(!p.user_ns && !p.new_network);
        assert!(
            p.record.not_enforced[0].why.contains("clone3"),
            "{:?}",
            p.record.not_enforced
        );
    }

    #[test]
    fn without_a_fresh_proc_an_ordinary_user_gets_all_but_the_pid_namespace() {
        let privs = Privileges {
            user_ns: Some(UserNamespaceProbe::NoProc(libc::EPERM)),
            ..USER
        };
        let p = plan_with(&Limits::default(), privs, default_filter);
        assert!(p.user_ns && p.new_network && !p.pid_ns);
        assert_eq!(p.fs, Some(FsMode::ReadOnly));
        assert_eq!(p.record.not_enforced.len(), 1);
        let gap = &p.record.not_enforced[0];
        assert_eq!(gap.layer, "pid_ns");
        assert!(
            gap.why.contains("over-mounts") && gap.why.contains("--pid-ns off"),
            "{}",
            gap.why
        );
    }

    #[test]
    fn the_probe_answers_once_and_the_test_switch_says_no() {
        // This process' answer (whatever the host): stable across calls.
        assert_eq!(user_namespace_probe(), user_namespace_probe());
        if std::env::var_os(NO_USERNS_ENV).is_some() {
            assert_eq!(
                user_namespace_probe(),
                UserNamespaceProbe::Refused(libc::EPERM)
            );
        }
    }

    #[test]
    fn only_a_namespace_layer_needs_the_probe() {
        assert!(wants_namespaces(&Limits::default()));
        let none = Limits {
            network: Network::Host,
            fs: FsMode::Host,
            pid_ns: PidNs::Off,
            ..Limits::default()
        };
        assert!(!wants_namespaces(&none));
        assert!(wants_namespaces(&Limits {
            hide: vec!["/home".into()],
            ..none
        }));
    }

    #[test]
    fn check_reports_the_user_namespace_feature_with_its_remedy() {
        assert_eq!(user_namespace_feature(USER_NS), Ok(()));
        let why = user_namespace_feature(USER).unwrap_err();
        assert!(why.contains("kernel.unprivileged_userns_clone=1"), "{why}");
        let why = user_namespace_feature(Privileges {
            user_ns: Some(UserNamespaceProbe::NoProc(libc::EPERM)),
            ..USER
        })
        .unwrap_err();
        assert!(why.contains("over-mounts"), "{why}");
    }
}
