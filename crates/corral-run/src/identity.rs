//! Who a run's command runs as (`--user`, profile key `user`), decided in the parent
//! before anything is created, and the dynamic uids of root-started runs.
//!
//! * Started by an ordinary user: that user (nothing to change; `--user` may only
//!   name the caller's own identity).
//! * Started by root: a **dynamic uid** from [`UidRange`] (gid = the same number, no
//!   supplementary groups), held by this run alone: a lock file per uid under
//!   `/run/corral/uids`, `flock`ed for the run's lifetime by whichever corral process
//!   (CLI or service) started it, and released by the kernel if that process dies.
//!   Numbers that exist in the passwd or group databases are skipped.
//! * `--user NAME[:GROUP]` (root only): that user with its supplementary groups;
//!   `--user root` keeps root's uid (root's file access) without any capability.
//! * `isolation = "off"` with the default: corral's own identity, as before the sandbox.
//!
//! The child drops every capability and switches to the identity after its last
//! privileged step (`set_identity` in `spawn/sys.rs`).

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use corral_spec::{Isolation, User};

use crate::spawn::Identity;

/// The environment variable that sets the dynamic uid range: `FIRST-LAST`.
pub const UID_RANGE_ENV: &str = "CORRAL_UID_RANGE";

/// Where the per-uid lock files live.
pub const UID_LOCK_DIR: &str = "/run/corral/uids";

/// The range dynamic uids come from, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidRange {
    /// The first uid; also the gid of corral's run group (see [`UidRange::run_group`]),
    /// never given to a run as its uid.
    pub first: u32,
    /// The last uid.
    pub last: u32,
}

impl Default for UidRange {
    /// 70000-79999: above the normal users (1000-60000) and systemd's ranges up to
    /// 65535 (`DynamicUser=` 61184-65519, nobody 65534), below the first
    /// `/etc/subuid` block (100000) and systemd-nspawn's container range (524288+).
    fn default() -> Self {
        UidRange {
            first: 70000,
            last: 79999,
        }
    }
}

impl UidRange {
    /// The range from [`UID_RANGE_ENV`], or the default.
    pub fn from_env() -> Result<UidRange, IdentityError> {
        match std::env::var(UID_RANGE_ENV) {
            Ok(s) => UidRange::parse(&s),
            Err(_) => Ok(UidRange::default()),
        }
    }

    /// Parses `FIRST-LAST` (at least two numbers, none of them 0 or 65535 and up to
    /// 2^31-2).
    pub fn parse(s: &str) -> Result<UidRange, IdentityError> {
        let bad = || IdentityError::BadRange(s.to_string());
        let (a, b) = s.trim().split_once('-').ok_or_else(bad)?;
        let first: u32 = a.trim().parse().map_err(|_| bad())?;
        let last: u32 = b.trim().parse().map_err(|_| bad())?;
        if first == 0 || last <= first || last > i32::MAX as u32 - 1 {
            return Err(bad());
        }
        Ok(UidRange { first, last })
    }

    /// The gid of corral's run group: the range's first number. Dynamic runs whose
    /// directory cannot be id-mapped reach it through this group (see
    /// [`crate::owner`]); no run gets it as its own gid.
    pub fn run_group(&self) -> u32 {
        self.first
    }
}

/// Why a run's identity cannot be what was asked (exit 125, nothing created).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// No such user.
    #[error("unknown user {0:?} (--user): no such user in the passwd database")]
    UnknownUser(String),
    /// No such group.
    #[error("unknown group {0:?} (--user USER:GROUP): no such group in the group database")]
    UnknownGroup(String),
    /// An ordinary user asked for another identity.
    #[error(
        "--user {asked}: only root can run a command as another user (corral runs as uid {uid}; \
         its runs run as that user, so leave --user out or name yourself)"
    )]
    NotRoot {
        /// What was asked.
        asked: String,
        /// corral's uid.
        uid: u32,
    },
    /// `CORRAL_UID_RANGE` does not parse.
    #[error(
        "invalid {UID_RANGE_ENV} {0:?}: use FIRST-LAST, e.g. 70000-79999 (two different \
         uids, not 0, below 2147483647)"
    )]
    BadRange(String),
    /// Every uid of the range is held by a live run (or exists as a user).
    #[error(
        "no free dynamic uid in {first}-{last}: every one is held by a live run or is a \
         user or group of this host (widen {UID_RANGE_ENV})"
    )]
    Exhausted {
        /// The range's first uid.
        first: u32,
        /// Its last uid.
        last: u32,
    },
    /// The lock directory or a lock file cannot be used.
    #[error("cannot allocate a dynamic uid: {path}: {why}")]
    Lock {
        /// The file.
        path: String,
        /// The OS error.
        why: String,
    },
}

/// corral's own identity and whether it may change it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// Real uid.
    pub uid: u32,
    /// Real gid.
    pub gid: u32,
    /// Root with `CAP_SETUID` and `CAP_SETGID`: may run commands as anyone.
    pub root: bool,
}

impl Caller {
    /// This process.
    pub fn current() -> Caller {
        let caps = rustix::thread::capabilities(None)
            .map(|c| c.effective)
            .unwrap_or(rustix::thread::CapabilitySet::empty());
        use rustix::thread::CapabilitySet as C;
        Caller {
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
            root: rustix::process::geteuid().is_root()
                && caps.contains(C::SETUID | C::SETGID | C::SETPCAP),
        }
    }
}

/// A resolved user: name, uid, primary gid, supplementary groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The name (the number when the passwd database has none).
    pub name: String,
    /// The uid.
    pub uid: u32,
    /// The primary gid.
    pub gid: u32,
    /// The supplementary groups.
    pub groups: Vec<u32>,
}

/// Looks users and groups up (the system's databases, or a test's table).
pub trait Directory {
    /// The account of a user name or number, with `group` (name or number) as its
    /// primary group when given.
    fn account(&self, user: &str, group: Option<&str>) -> Result<Account, IdentityError>;
    /// True when `id` exists as a uid or a gid.
    fn id_exists(&self, id: u32) -> bool;
    /// The name of `uid` (the number when it has none).
    fn name_of(&self, uid: u32) -> String;
}

/// The system's passwd and group databases (NSS).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemDirectory;

impl Directory for SystemDirectory {
    fn account(&self, user: &str, group: Option<&str>) -> Result<Account, IdentityError> {
        use nix::unistd::{Gid, Group, Uid, User as Pw};
        let unknown = || IdentityError::UnknownUser(user.to_string());
        let entry = match user.parse::<u32>() {
            Ok(n) => Pw::from_uid(Uid::from_raw(n)).map_err(|_| unknown())?,
            Err(_) => Some(
                Pw::from_name(user)
                    .map_err(|_| unknown())?
                    .ok_or_else(unknown)?,
            ),
        };
        let gid = match group {
            None => None,
            Some(g) => {
                let unknown = || IdentityError::UnknownGroup(g.to_string());
                Some(match g.parse::<u32>() {
                    Ok(n) => n,
                    Err(_) => Group::from_name(g)
                        .map_err(|_| unknown())?
                        .ok_or_else(unknown)?
                        .gid
                        .as_raw(),
                })
            }
        };
        Ok(match entry {
            Some(pw) => {
                let gid = gid.unwrap_or(pw.gid.as_raw());
                let groups = CString::new(pw.name.clone())
                    .ok()
                    .and_then(|n| nix::unistd::getgrouplist(&n, Gid::from_raw(gid)).ok())
                    .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
                    .unwrap_or_else(|| vec![gid]);
                Account {
                    name: pw.name,
                    uid: pw.uid.as_raw(),
                    gid,
                    groups,
                }
            }
            // A bare number without a passwd entry: that uid, its own number as the
            // group unless one is given, no supplementary groups.
            None => {
                let uid: u32 = user.parse().map_err(|_| unknown())?;
                let gid = gid.unwrap_or(uid);
                Account {
                    name: user.to_string(),
                    uid,
                    gid,
                    groups: vec![gid],
                }
            }
        })
    }

    fn name_of(&self, uid: u32) -> String {
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| uid.to_string())
    }

    fn id_exists(&self, id: u32) -> bool {
        use nix::unistd::{Gid, Group, Uid, User as Pw};
        // An error (a broken NSS module) counts as taken: never hand out a number we
        // cannot check.
        !matches!(Pw::from_uid(Uid::from_raw(id)), Ok(None))
            || !matches!(Group::from_gid(Gid::from_raw(id)), Ok(None))
    }
}

/// Who the run will be, decided before anything is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// corral's own identity (an ordinary user's runs; `isolation = "off"`).
    Own,
    /// A dynamic uid from the range (root only).
    Dynamic,
    /// A named account (root only).
    Named(Account),
}

/// Decides who a run with `user` (under the master switch `isolation`) runs as, for
/// `caller`; an unknown user or group, or another identity asked by an ordinary user,
/// is an error.
pub fn decide(
    user: &User,
    isolation: Isolation,
    caller: Caller,
    dir: &dyn Directory,
) -> Result<Decision, IdentityError> {
    match user {
        User::Default if isolation == Isolation::Off || !caller.root => Ok(Decision::Own),
        User::Default | User::Dynamic if caller.root => Ok(Decision::Dynamic),
        User::Dynamic => Err(IdentityError::NotRoot {
            asked: "dynamic".into(),
            uid: caller.uid,
        }),
        User::Named { user: u, group } => {
            let acct = dir.account(u, group.as_deref())?;
            if caller.root {
                Ok(Decision::Named(acct))
            } else if acct.uid == caller.uid && (group.is_none() || acct.gid == caller.gid) {
                Ok(Decision::Own)
            } else {
                Err(IdentityError::NotRoot {
                    asked: user.as_string(),
                    uid: caller.uid,
                })
            }
        }
        User::Default => unreachable!("handled above"),
    }
}

/// A dynamic uid held by one run: the lock is released when this is dropped (or by
/// the kernel when the process dies).
#[derive(Debug)]
pub struct UidLease {
    /// The uid (and gid).
    pub uid: u32,
    _lock: OwnedFd,
}

/// Takes a free uid of `range` (a random starting point, then upwards and around, so
/// a uid just given back is rarely reused at once), skipping numbers `dir` knows and
/// the run group; its lock file lives in `lock_dir`.
pub fn allocate(
    range: UidRange,
    lock_dir: &Path,
    dir: &dyn Directory,
) -> Result<UidLease, IdentityError> {
    use rustix::fs::{flock, open, FlockOperation, Mode, OFlags};
    let lock_err = |p: &Path, e: std::io::Error| IdentityError::Lock {
        path: p.display().to_string(),
        why: e.to_string(),
    };
    std::fs::create_dir_all(lock_dir).map_err(|e| lock_err(lock_dir, e))?;
    let n = range.last - range.first; // candidates: first+1 ..= last
    let mut b = [0u8; 4];
    let _ = rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty());
    let start = u32::from_ne_bytes(b) % n;
    for i in 0..n {
        let uid = range.first + 1 + (start + i) % n;
        let path = lock_dir.join(uid.to_string());
        let fd = open(
            &path,
            OFlags::RDWR | OFlags::CREATE | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| lock_err(&path, e.into()))?;
        match flock(&fd, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => continue,
            Err(e) => return Err(lock_err(&path, e.into())),
        }
        // Checked under the lock, so two corrals never both pass this number.
        if dir.id_exists(uid) {
            continue;
        }
        return Ok(UidLease { uid, _lock: fd });
    }
    Err(IdentityError::Exhausted {
        first: range.first,
        last: range.last,
    })
}

/// Ends every process of a dynamic uid when dropped: a run on the rlimit backend may
/// leave processes that started their own session; they must not outlive the run's
/// hold on the uid (the next run with it could signal them, and they could still write
/// files the fallback is giving back).
#[derive(Debug)]
pub struct Reaper(pub Option<u32>);

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(uid) = self.0 {
            if let Err(e) = crate::spawn::kill_all_of(uid) {
                tracing::warn!("cannot end the leftover processes of uid {uid}: {e}");
            }
        }
    }
}

/// The identity a run's child switches to, and its record.
#[derive(Debug)]
pub struct IdentityPlan {
    /// What the child does (`None`: keeps corral's identity).
    pub identity: Option<Identity>,
    /// The dynamic uid's lease, held until the run (and its file owner restoration)
    /// is over.
    pub lease: Option<UidLease>,
    /// For the record: `isolation.enforced.user`, without `files` yet.
    pub record: corral_record::UserRecord,
    /// For the record: `isolation.enforced.capabilities`.
    pub capabilities: String,
}

/// Decides and, for a dynamic uid, allocates the identity of a run.
pub fn plan(user: &User, isolation: Isolation) -> Result<IdentityPlan, IdentityError> {
    let caller = Caller::current();
    let dir = SystemDirectory;
    let decision = decide(user, isolation, caller, &dir)?;
    plan_for(decision, caller, &dir, || {
        allocate(UidRange::from_env()?, Path::new(UID_LOCK_DIR), &dir)
    })
}

fn plan_for(
    decision: Decision,
    caller: Caller,
    dir: &dyn Directory,
    alloc: impl FnOnce() -> Result<UidLease, IdentityError>,
) -> Result<IdentityPlan, IdentityError> {
    let name_of = |uid: u32| dir.name_of(uid);
    Ok(match decision {
        Decision::Own => IdentityPlan {
            identity: None,
            lease: None,
            record: corral_record::UserRecord {
                name: name_of(caller.uid),
                uid: caller.uid,
                gid: caller.gid,
                dynamic: false,
                root: caller.uid == 0,
                files: "run-user".into(),
            },
            // Root keeps its capabilities only with the sandbox off; an ordinary
            // user has none to keep.
            capabilities: if caller.uid == 0 {
                "inherited".into()
            } else {
                "none".into()
            },
        },
        Decision::Dynamic => {
            let lease = alloc()?;
            let uid = lease.uid;
            IdentityPlan {
                identity: Some(Identity {
                    uid,
                    gid: uid,
                    groups: Vec::new(),
                }),
                lease: Some(lease),
                record: corral_record::UserRecord {
                    name: format!("corral-{uid}"),
                    uid,
                    gid: uid,
                    dynamic: true,
                    root: false,
                    files: "run-user".into(),
                },
                capabilities: "none".into(),
            }
        }
        Decision::Named(a) => IdentityPlan {
            identity: Some(Identity {
                uid: a.uid,
                gid: a.gid,
                groups: a.groups.clone(),
            }),
            lease: None,
            record: corral_record::UserRecord {
                name: a.name,
                uid: a.uid,
                gid: a.gid,
                dynamic: false,
                root: a.uid == 0,
                files: "run-user".into(),
            },
            capabilities: "none".into(),
        },
    })
}

/// The directories whose new files must belong to their owner: the working directory
/// (and later each `--rw` path), made absolute.
pub fn owned_dirs(cwd: Option<&Path>) -> Vec<PathBuf> {
    let cwd = cwd
        .map(Path::to_path_buf)
        .or_else(|| std::env::current_dir().ok());
    cwd.and_then(|c| c.canonicalize().ok())
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table of users: `alice` 1000:1000 in groups 1000 and 27, `root` 0:0; numbers
    /// in `taken` exist.
    struct Table {
        taken: Vec<u32>,
    }

    impl Directory for Table {
        fn account(&self, user: &str, group: Option<&str>) -> Result<Account, IdentityError> {
            let (name, uid, mut gid, groups) = match user {
                "alice" | "1000" => ("alice", 1000, 1000, vec![1000, 27]),
                "root" | "0" => ("root", 0, 0, vec![0]),
                _ => return Err(IdentityError::UnknownUser(user.into())),
            };
            if let Some(g) = group {
                gid = match g {
                    "staff" | "50" => 50,
                    "alice" => 1000,
                    _ => return Err(IdentityError::UnknownGroup(g.into())),
                };
            }
            Ok(Account {
                name: name.into(),
                uid,
                gid,
                groups,
            })
        }
        fn id_exists(&self, id: u32) -> bool {
            self.taken.contains(&id)
        }
        fn name_of(&self, uid: u32) -> String {
            match uid {
                0 => "root".into(),
                1000 => "alice".into(),
                n => n.to_string(),
            }
        }
    }

    const ROOT: Caller = Caller {
        uid: 0,
        gid: 0,
        root: true,
    };
    const ALICE: Caller = Caller {
        uid: 1000,
        gid: 1000,
        root: false,
    };

    fn named(u: &str) -> User {
        User::parse(u).unwrap()
    }

    #[test]
    fn who_runs() {
        let t = Table { taken: vec![] };
        let d = |u: &User, i: Isolation, c: Caller| decide(u, i, c, &t);
        // Root's runs get a dynamic uid by default; an ordinary user's are its own.
        assert_eq!(
            d(&User::Default, Isolation::Default, ROOT),
            Ok(Decision::Dynamic)
        );
        assert_eq!(
            d(&User::Default, Isolation::Default, ALICE),
            Ok(Decision::Own)
        );
        // The sandbox off: corral's own identity, root included.
        assert_eq!(d(&User::Default, Isolation::Off, ROOT), Ok(Decision::Own));
        // An explicit user wins over the switch.
        assert_eq!(
            d(&User::Dynamic, Isolation::Off, ROOT),
            Ok(Decision::Dynamic)
        );
        match d(&named("alice:staff"), Isolation::Default, ROOT).unwrap() {
            Decision::Named(a) => assert_eq!((a.uid, a.gid), (1000, 50)),
            other => panic!("{other:?}"),
        }
        match d(&named("root"), Isolation::Default, ROOT).unwrap() {
            Decision::Named(a) => assert_eq!(a.uid, 0),
            other => panic!("{other:?}"),
        }
        // Naming yourself is fine; anyone else needs root.
        assert_eq!(
            d(&named("alice"), Isolation::Default, ALICE),
            Ok(Decision::Own)
        );
        assert_eq!(
            d(&named("1000:alice"), Isolation::Default, ALICE),
            Ok(Decision::Own)
        );
        for asked in ["root", "alice:staff", "dynamic"] {
            let e = d(&named(asked), Isolation::Default, ALICE).unwrap_err();
            assert_eq!(
                e,
                IdentityError::NotRoot {
                    asked: asked.into(),
                    uid: 1000
                }
            );
            assert!(e.to_string().contains("only root can"), "{e}");
        }
        // Unknown names are errors for anyone, with the name.
        for c in [ROOT, ALICE] {
            let e = d(&named("nosuchuser"), Isolation::Default, c).unwrap_err();
            assert_eq!(
                e.to_string(),
                "unknown user \"nosuchuser\" (--user): no such user in the passwd database"
            );
            let e = d(&named("alice:nogroup"), Isolation::Default, c).unwrap_err();
            assert_eq!(e, IdentityError::UnknownGroup("nogroup".into()));
        }
    }

    #[test]
    fn the_plan_records_who_and_what_capabilities() {
        let t = Table { taken: vec![] };
        let p = plan_for(Decision::Own, ALICE, &t, || unreachable!()).unwrap();
        assert!(p.identity.is_none() && p.lease.is_none());
        assert_eq!((p.record.uid, p.record.dynamic), (1000, false));
        assert_eq!(p.record.name, "alice");
        assert_eq!(p.capabilities, "none");
        let p = plan_for(Decision::Own, ROOT, &t, || unreachable!()).unwrap();
        assert!(p.record.root);
        assert_eq!(p.capabilities, "inherited");
        let dir = tempfile::tempdir().unwrap();
        let range = UidRange {
            first: 70000,
            last: 70001,
        };
        let p = plan_for(Decision::Dynamic, ROOT, &t, || {
            allocate(range, dir.path(), &t)
        })
        .unwrap();
        assert_eq!(
            p.identity,
            Some(Identity {
                uid: 70001,
                gid: 70001,
                groups: vec![]
            })
        );
        assert!(p.record.dynamic && !p.record.root);
        assert_eq!(p.capabilities, "none");
        let a = t.account("root", None).unwrap();
        let p = plan_for(Decision::Named(a), ROOT, &t, || unreachable!()).unwrap();
        assert!(p.record.root);
        assert_eq!(p.capabilities, "none");
        assert_eq!(p.identity.unwrap().uid, 0);
    }

    #[test]
    fn ranges() {
        assert_eq!(UidRange::parse("70000-79999"), Ok(UidRange::default()));
        assert_eq!(UidRange::parse(" 5-6 "), Ok(UidRange { first: 5, last: 6 }));
        for bad in ["", "5", "0-10", "10-10", "10-5", "a-b", "1-4294967295"] {
            let e = UidRange::parse(bad).unwrap_err();
            assert!(e.to_string().contains("CORRAL_UID_RANGE"), "{e}");
        }
        assert_eq!(UidRange::default().run_group(), 70000);
    }

    #[test]
    fn uids_are_never_shared_and_run_out_clearly() {
        let dir = tempfile::tempdir().unwrap();
        // 10 candidates (70001-70010), of which 70003 is a user.
        let range = UidRange {
            first: 70000,
            last: 70010,
        };
        let t = Table { taken: vec![70003] };
        let leases: Vec<UidLease> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..9)
                .map(|_| s.spawn(|| allocate(range, dir.path(), &t).unwrap()))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut uids: Vec<u32> = leases.iter().map(|l| l.uid).collect();
        uids.sort();
        assert_eq!(
            uids,
            [70001, 70002, 70004, 70005, 70006, 70007, 70008, 70009, 70010]
        );
        let e = allocate(range, dir.path(), &t).unwrap_err();
        assert_eq!(
            e,
            IdentityError::Exhausted {
                first: 70000,
                last: 70010
            }
        );
        assert!(e.to_string().contains("widen CORRAL_UID_RANGE"), "{e}");
        // A lease given back is free again.
        let freed = leases[4].uid;
        drop(leases);
        let l = allocate(
            UidRange {
                first: freed - 1,
                last: freed,
            },
            dir.path(),
            &t,
        )
        .unwrap();
        assert_eq!(l.uid, freed);
    }

    #[test]
    fn the_system_directory_knows_root_and_nobody() {
        let d = SystemDirectory;
        let root = d.account("root", None).unwrap();
        assert_eq!((root.uid, root.gid, root.name.as_str()), (0, 0, "root"));
        assert!(d.id_exists(0));
        let e = d.account("corral-no-such-user", None).unwrap_err();
        assert_eq!(e, IdentityError::UnknownUser("corral-no-such-user".into()));
        let e = d.account("root", Some("corral-no-such-group")).unwrap_err();
        assert_eq!(
            e,
            IdentityError::UnknownGroup("corral-no-such-group".into())
        );
        // A number without an entry is that uid.
        let n = d.account("4000000", None).unwrap();
        assert_eq!((n.uid, n.gid), (4_000_000, 4_000_000));
    }
}
