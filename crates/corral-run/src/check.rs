//! What this host offers: the facts behind `corral check`.

use std::path::{Path, PathBuf};

use corral_cgroup::layout::{join_rel, Layout, Membership, V1_CONTROLLERS};
use corral_record::{Gap, LimitValues};
use corral_spec::{LimitKind, Limits};
use serde::Serialize;

use crate::backend::{cgroup2, select, BackendKind};

/// A kernel feature and whether this host has it.
#[derive(Debug, Clone, Serialize)]
pub struct Feature {
    /// Its name (`clone3_into_cgroup`, `cgroup.kill`, ...).
    pub name: String,
    /// Whether it is available.
    pub available: bool,
    /// What corral uses it for, or does without it.
    pub note: String,
}

/// A systemd manager and whether corral can reach it.
#[derive(Debug, Clone, Serialize)]
pub struct Manager {
    /// `system` or `user`.
    pub scope: String,
    /// The socket corral would use, if one exists.
    pub socket: Option<String>,
    /// The controllers it delegates (user manager: `user@UID.service/cgroup.controllers`).
    pub delegated_controllers: Option<Vec<String>>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `v2`, `hybrid`, `v1` or `none`.
    pub layout: String,
    /// The cgroup2 mount point.
    pub cgroup2_mount: Option<String>,
    /// Controllers available in the cgroup2 root.
    pub cgroup2_controllers: Vec<String>,
    /// v1 controllers and where they are mounted.
    pub cgroup1_hierarchies: Vec<(String, String)>,
    /// corral's own cgroup (v2 path).
    pub own_cgroup: Option<String>,
    /// The default v2 root and whether corral can write there.
    pub cgroup2_root: Option<(String, bool)>,
    /// Kernel version string.
    pub kernel: String,
    /// Kernel features.
    pub features: Vec<Feature>,
    /// The systemd managers.
    pub systemd: Vec<Manager>,
    /// Every backend, whether it can be set up here, and why not.
    pub backends: Vec<(String, Result<String, String>)>,
    /// The backend `auto` picks.
    pub auto_backend: Option<String>,
    /// What `auto` would enforce of a request with every limit set.
    pub enforceable: Option<LimitValues>,
    /// The limits it would not enforce.
    pub gaps: Vec<Gap>,
    /// One-line remedies for what is missing.
    pub remedies: Vec<String>,
    /// `full`, `partial` or `none`.
    pub isolation: String,
    /// The disk limits here: whether the backend `auto` picks limits disk bandwidth
    /// and weights on the current directory's disk, and whether its file system has
    /// project quotas (`--disk`).
    pub disk: Vec<Feature>,
}

/// The disk limits on the current directory: bandwidth and weights with the backend
/// `auto` picks, and `--disk`'s project quota; what is missing gets a remedy.
fn disk_features(cgroup_root: Option<&Path>, remedies: &mut Vec<String>) -> Vec<Feature> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let mut out = Vec::new();
    let io = Limits {
        io_write_bps: Some(10 << 20),
        io_weight: Some(100),
        ..Limits::default()
    };
    // (enforced at all, the reason it is not or only in part)
    let (bw, weight) = match select(None, cgroup_root) {
        Ok(b) => {
            let plan = b.plan(&io);
            let why = |k: LimitKind| {
                plan.gaps
                    .iter()
                    .find(|g| g.limit == k)
                    .map(|g| g.why.clone())
            };
            (
                (
                    plan.enforced.io_write_bps.is_some(),
                    why(LimitKind::IoWriteBps),
                ),
                why(LimitKind::IoWeight),
            )
        }
        Err(_) => (
            (false, Some("no backend".into())),
            Some("no backend".into()),
        ),
    };
    let disks = crate::disk::disks_of_path(Path::new("/sys"), &cwd);
    let bw_ok = disks.is_ok() && bw.0;
    let note = match (&disks, &bw) {
        (Err(e), _) => e.clone(),
        (Ok(d), (true, partly)) => format!(
            "--io-read-bps/--io-write-bps/--io-*-iops act on disk {}{}",
            d.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            partly
                .as_ref()
                .map(|w| format!(" ({w})"))
                .unwrap_or_default()
        ),
        (Ok(_), (false, w)) => w.clone().unwrap_or_default(),
    };
    out.push(Feature {
        name: "io_bandwidth".into(),
        available: bw_ok,
        note,
    });
    out.push(Feature {
        name: "io_weight".into(),
        available: weight.is_none(),
        note: weight.unwrap_or_else(|| {
            "--io-weight: where the disk's scheduler has weights (BFQ, or iocost on cgroup v2)"
                .into()
        }),
    });
    let quota = crate::quota::probe(&cwd);
    if let Err(why) = &quota {
        remedies.push(format!(
            "--disk is not enforced under {}: {why}",
            cwd.display()
        ));
    }
    out.push(Feature {
        name: "project_quota".into(),
        available: quota.is_ok(),
        note: match quota {
            Ok(()) => format!("--disk: a project quota per run under {}", cwd.display()),
            Err(why) => why,
        },
    });
    out
}

fn writable(p: &Path) -> bool {
    rustix::fs::access(p, rustix::fs::Access::WRITE_OK).is_ok()
}

fn kernel_at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    let maj: u32 = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let min: u32 = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    (maj, min) >= (major, minor)
}

/// Examines the host. `cgroup_root` is as for `corral run`.
pub fn examine(cgroup_root: Option<&Path>) -> Report {
    let layout = Layout::detect();
    let kernel = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    let own = Membership::current();
    let mut remedies = Vec::new();

    let v2_root = cgroup2::default_root(&layout);
    let v2_root_info = v2_root.as_ref().map(|r| {
        let existing = r
            .ancestors()
            .find(|p| p.exists())
            .map(Path::to_path_buf)
            .unwrap_or_default();
        (r.display().to_string(), writable(&existing))
    });
    // Probe files on corral's own (non-root) cgroup where there is one.
    let probe_dir: Option<PathBuf> = match (&layout.v2, &own.v2) {
        (Some(m), Some(p)) if p != Path::new("/") => Some(join_rel(m, p)),
        _ => None,
    };
    let has = |f: &str, since: (u32, u32)| match &probe_dir {
        Some(d) => d.join(f).exists(),
        None => kernel_at_least(&kernel, since.0, since.1),
    };
    let v2_ok = layout.v2_controllers.iter().any(|c| c == "memory");
    let feature = |name: &str, available: bool, note: &str| Feature {
        name: name.into(),
        available,
        note: note.into(),
    };
    let clone3 = crate::spawn::clone3_available() && kernel_at_least(&kernel, 5, 7);
    let seccomp = crate::spawn::seccomp_filter_available();
    let privs = crate::isolation::Privileges::current();
    // An ordinary user's way to the namespace layers (root needs none).
    let userns = crate::isolation::user_namespace_feature(privs);
    let rootless = !privs.sys_admin && privs.clone3 && userns.is_ok();
    let netns = privs.sys_admin && privs.net_admin || rootless;
    let caller = crate::identity::Caller::current();
    let range = crate::identity::UidRange::from_env();
    let dynamic = caller.root && range.is_ok();
    let range_text = match &range {
        Ok(r) => format!("{}-{}", r.first, r.last),
        Err(e) => e.to_string(),
    };
    let idmap_here = caller.root
        && std::env::current_dir()
            .ok()
            .and_then(|d| d.canonicalize().ok())
            .is_some_and(|d| crate::owner::idmap_supported(&d));
    let mount_setattr = crate::spawn::mount_setattr_available();
    let fs_view = (privs.sys_admin || rootless) && mount_setattr.is_ok();
    let pidns = privs.sys_admin && privs.clone3
        || rootless && privs.user_ns == Some(crate::isolation::UserNamespaceProbe::Works);
    let features = vec![
        feature("clone3_into_cgroup", clone3, "the child is born in its cgroup; without it corral forks and moves the child before exec"),
        feature("pidfd", kernel_at_least(&kernel, 5, 4), "race-free waiting and signalling (required)"),
        feature("cgroup.kill", v2_ok && has("cgroup.kill", (5, 14)), "kills a v2 tree at once; without it corral freezes and kills each process"),
        feature("memory.oom.group", v2_ok && has("memory.oom.group", (4, 19)), "an OOM kill takes the whole run"),
        feature("memory.peak", v2_ok && has("memory.peak", (5, 19)), "peak memory of a v2 run; without it the record has no peak"),
        feature("pids.peak", v2_ok && has("pids.peak", (6, 1)), "peak process count of a v2 run"),
        feature("seccomp_filter", seccomp.is_ok(), "the syscall filter of every run (--syscalls default); without it the record lists syscalls as not enforced"),
        feature("network_namespace", netns, "each run gets its own network with only loopback; without CAP_SYS_ADMIN and CAP_NET_ADMIN (or, for an ordinary user, a user namespace) runs share the host's network (reported per run)"),
        feature("dynamic_uid", dynamic, &format!("root's runs run as a dynamic uid from {range_text} (CORRAL_UID_RANGE) without capabilities; an ordinary user's runs are that user")),
        feature("idmapped_mount", idmap_here, "files a dynamic uid writes in its working directory belong to the directory's owner at once (probed on this directory; needs root and Linux 5.12, tmpfs 6.3); elsewhere corral gives them back after the run"),
        feature("read_only_view", fs_view, "each run sees the host's files read-only with a private /tmp (--fs read-only); needs CAP_SYS_ADMIN (or, for an ordinary user, a user namespace) and mount_setattr (Linux 5.12), else runs write wherever their user may (reported per run)"),
        feature("user_namespace", userns.is_ok(), &match &userns {
            Ok(()) => "an ordinary user's runs get the network, pid and file-system layers through a user namespace of their own (their uid and gid mapped to themselves)".to_string(),
            Err(why) => format!("an ordinary user's runs get no network, pid or file-system layer: {why}"),
        }),
        feature("pid_namespace", pidns, "each run gets its own pid namespace (it sees only its own processes); without CAP_SYS_ADMIN (or, for an ordinary user, a user namespace with a fresh /proc) and clone3 runs see the host's (reported per run)"),
    ];
    if let Err(e) = &range {
        remedies.push(format!("{e}"));
    }
    if let Err(why) = &userns {
        remedies.push(format!(
            "an ordinary user's runs share the host's files, network and processes: {why}"
        ));
    }
    if !privs.sys_admin && !rootless {
        remedies.push("runs can write wherever their user may: the read-only view of the host's files needs CAP_SYS_ADMIN or a user namespace; run corral as root (or use the corral service)".into());
    } else if let Err(e) = &mount_setattr {
        remedies.push(format!("runs can write wherever their user may: the read-only view needs mount_setattr (Linux 5.12), which this kernel refuses ({e}); upgrade the kernel"));
    }
    if !pidns {
        remedies.push(if privs.sys_admin {
            "runs see the host's processes: a pid namespace per run needs clone3 (Linux 5.3) and a seccomp policy around corral that allows it".into()
        } else {
            "runs see the host's processes: a pid namespace per run needs CAP_SYS_ADMIN or a user namespace with a fresh /proc; run corral as root (or use the corral service)".into()
        });
    }
    if !netns {
        remedies.push("runs share the host's network: a network namespace per run needs CAP_SYS_ADMIN and CAP_NET_ADMIN, or a user namespace; run corral as root (or use the corral service)".into());
    }
    if !clone3 {
        remedies.push(
            "clone3 with CLONE_INTO_CGROUP needs Linux 5.7 and a seccomp policy that allows clone3"
                .into(),
        );
    }

    if let Err(e) = &seccomp {
        remedies.push(format!(
            "this kernel cannot install seccomp filters ({e}): build it with CONFIG_SECCOMP_FILTER"
        ));
    }

    let systemd = vec![
        Manager {
            scope: "system".into(),
            // The systemd backend uses the buses only (see backend/systemd/bus.rs).
            socket: ["/run/dbus/system_bus_socket"]
                .iter()
                .find(|p| Path::new(p).exists())
                .map(|s| s.to_string()),
            delegated_controllers: None,
        },
        {
            let uid = rustix::process::getuid().as_raw();
            let runtime =
                std::env::var("XDG_RUNTIME_DIR").unwrap_or_else(|_| format!("/run/user/{uid}"));
            let socket = [format!("{runtime}/bus")]
                .into_iter()
                .find(|p| Path::new(p).exists());
            let delegated = layout.v2.as_ref().and_then(|m| {
                let p = m.mount_point.join(format!(
                    "user.slice/user-{uid}.slice/user@{uid}.service/cgroup.controllers"
                ));
                std::fs::read_to_string(p)
                    .ok()
                    .map(|s| s.split_whitespace().map(str::to_string).collect())
            });
            Manager {
                scope: "user".into(),
                socket,
                delegated_controllers: delegated,
            }
        },
    ];

    let mut backends = Vec::new();
    for k in BackendKind::ALL {
        let r = match select(Some(k), cgroup_root) {
            Ok(b) => Ok(b.reason()),
            Err(e) => Err(e.to_string()),
        };
        backends.push((k.as_str().to_string(), r));
    }
    if layout.kind() == corral_cgroup::layout::LayoutKind::Hybrid
        && layout.v2_controllers.iter().all(|c| c != "memory")
    {
        remedies.push("cgroup v2 has no controllers here (hybrid layout): boot with systemd.unified_cgroup_hierarchy=1 or cgroup_no_v1=all to use the cgroup2 backend".into());
    }
    if let Some((root, false)) = &v2_root_info {
        if v2_ok {
            remedies.push(format!("{root} is not writable: run as root, pass a writable --cgroup-root, or use the systemd backend with a delegated user manager"));
        }
    }
    if let Some(d) = &systemd[1].delegated_controllers {
        let missing: Vec<&str> = corral_cgroup::v2::REQUIRED_CONTROLLERS
            .iter()
            .copied()
            .filter(|c| !d.iter().any(|x| x == c))
            .collect();
        if !missing.is_empty() {
            remedies.push(format!(
                "the user manager does not delegate {}: add `Delegate=cpu cpuset io memory pids` to user@.service (systemctl edit user@.service) and log in again",
                missing.join(", ")
            ));
        }
    }

    let full = Limits {
        memory: Some(1 << 30),
        swap: Some(0),
        cpus: Some(1.0),
        pids: Some(256),
        timeout: Some(std::time::Duration::from_secs(60)),
        cpu_time: Some(std::time::Duration::from_secs(60)),
        ..Limits::default()
    };
    let (auto_backend, enforceable, gaps) = match select(None, cgroup_root) {
        Ok(b) => {
            let plan = b.plan(&full);
            (
                Some(b.kind().as_str().to_string()),
                Some(plan.enforced),
                plan.gaps,
            )
        }
        Err(_) => (None, None, Vec::new()),
    };
    for g in &gaps {
        if g.limit == LimitKind::Swap {
            remedies.push(
                "swap is not accounted: boot with swapaccount=1 (v1) or enable swap accounting"
                    .into(),
            );
        }
    }
    // The rlimit backend still enforces memory per process, CPU time, processes and
    // the wall clock: partial isolation, not none.
    let isolation = match auto_backend.as_deref() {
        None => "none",
        Some("rlimit") => "partial",
        Some(_) if gaps.is_empty() => "full",
        Some(_) => "partial",
    };
    if matches!(auto_backend.as_deref(), None | Some("rlimit")) {
        remedies.push("no cgroup backend works: run as root on a host with cgroups, or with a systemd user manager that delegates controllers".into());
    }
    let disk = disk_features(cgroup_root, &mut remedies);
    Report {
        disk,
        layout: layout.kind().as_str().to_string(),
        cgroup2_mount: layout
            .v2
            .as_ref()
            .map(|m| m.mount_point.display().to_string()),
        cgroup2_controllers: layout.v2_controllers.clone(),
        cgroup1_hierarchies: V1_CONTROLLERS
            .iter()
            .filter_map(|c| {
                layout
                    .v1
                    .get(*c)
                    .map(|m| (c.to_string(), m.mount_point.display().to_string()))
            })
            .collect(),
        own_cgroup: own.v2.map(|p| p.display().to_string()),
        cgroup2_root: v2_root_info,
        kernel,
        features,
        systemd,
        backends,
        auto_backend,
        enforceable,
        gaps,
        remedies,
        isolation: isolation.to_string(),
    }
}
