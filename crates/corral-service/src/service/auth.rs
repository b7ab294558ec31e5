//! Who is calling and what they may do.
//!
//! The caller's uid and gid come from the kernel (`SO_PEERCRED` of the Unix socket
//! connection, taken by the HTTP layer), never from the request. From them and the
//! service's `--admin-group` and `--allow-group`, [`Access::caller`] makes a [`Caller`]:
//!
//! * an **admin** (root, or a member of `--admin-group`) sees, waits for, reads and
//!   cancels every run, and may name any `user` for a run (default: a dynamic uid);
//! * anyone else may submit (unless `--allow-group` is set and they are not in it),
//!   and their runs execute as themselves: the run's `user` is set to their uid;
//!   naming another user is refused (403). They see only their own runs: another
//!   user's run is answered exactly like a run that does not exist (404).
//!
//! The decisions are pure functions ([`decide`], [`run_user`], [`Caller::sees`]), so
//! they are tested without users or sockets.

use corral_run::identity::{Directory, SystemDirectory};
use corral_spec::User;

/// The caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The uid (from the kernel).
    pub uid: u32,
    /// The gid at connect (from the kernel).
    pub gid: u32,
    /// The pid at connect, when known.
    pub pid: Option<i32>,
    /// Root or a member of `--admin-group`.
    pub admin: bool,
    /// May submit runs (`--allow-group`, if set, names who may).
    pub may_submit: bool,
}

impl Caller {
    /// Root with every right (the service itself, and the unit tests).
    pub fn root() -> Caller {
        Caller {
            uid: 0,
            gid: 0,
            pid: None,
            admin: true,
            may_submit: true,
        }
    }

    /// True when this caller may see the run `submitted_by` submitted (rows from before
    /// submitters were recorded count as root's).
    pub fn sees(&self, submitted_by: Option<u32>) -> bool {
        self.admin || submitted_by.unwrap_or(0) == self.uid
    }

    /// The submitter to list runs of: `None` (everyone's) for an admin.
    pub fn list_filter(&self) -> Option<u32> {
        (!self.admin).then_some(self.uid)
    }
}

/// A group named by a flag, resolved at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// The name as given.
    pub name: String,
    /// Its gid.
    pub gid: u32,
}

impl Group {
    /// Looks a group up by name or number.
    pub fn resolve(name: &str) -> Option<Group> {
        let gid = match name.parse::<u32>() {
            Ok(n) => n,
            Err(_) => nix::unistd::Group::from_name(name).ok()??.gid.as_raw(),
        };
        Some(Group {
            name: name.to_string(),
            gid,
        })
    }
}

/// The service's access rules: `--admin-group` and `--allow-group`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    /// Members are admins (root always is).
    pub admin_group: Option<Group>,
    /// When set, only members (and admins) may submit.
    pub allow_group: Option<Group>,
}

/// Whether `uid` with `groups` is an admin, and whether it may submit.
pub fn decide(uid: u32, groups: &[u32], access: &Access) -> (bool, bool) {
    let member = |g: &Option<Group>| g.as_ref().is_some_and(|g| groups.contains(&g.gid));
    let admin = uid == 0 || member(&access.admin_group);
    let may_submit = admin || access.allow_group.is_none() || member(&access.allow_group);
    (admin, may_submit)
}

impl Access {
    /// The caller behind a connection's peer credentials. Its groups are its gid at
    /// connect and the supplementary groups of its account.
    pub fn caller(&self, uid: u32, gid: u32, pid: Option<i32>) -> Caller {
        let mut groups = vec![gid];
        if self.admin_group.is_some() || self.allow_group.is_some() {
            if let Ok(a) = SystemDirectory.account(&uid.to_string(), None) {
                groups.extend(a.groups);
            }
        }
        let (admin, may_submit) = decide(uid, &groups, self);
        Caller {
            uid,
            gid,
            pid,
            admin,
            may_submit,
        }
    }
}

/// Why a caller may not do what it asked (a 403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Forbidden {
    /// `--allow-group` is set and the caller is not in it.
    #[error(
        "uid {uid} may not submit runs to this corral service: only members of group \
         {group:?} may (corral serve --allow-group)"
    )]
    NotAllowed {
        /// The caller.
        uid: u32,
        /// The group.
        group: String,
    },
    /// A non-admin named another user for the run.
    #[error(
        "uid {uid} may not run commands as user {asked:?}: runs execute as their \
         submitter; only root and members of the service's --admin-group may name \
         another user"
    )]
    OtherUser {
        /// The caller.
        uid: u32,
        /// The `user` it asked for.
        asked: String,
    },
    /// The caller's identity could not be read from the connection.
    #[error("the corral service cannot tell who is calling (no peer credentials)")]
    Unknown,
}

/// Who a run submitted by `caller` executes as, given the `user` its request asked
/// for (`None`: it named none) and the profile's resolved `user`. An admin gets what it
/// asked for (or the profile's); anyone else runs as itself, and may name only
/// itself (by name or number, with one of its own groups).
pub fn run_user(
    caller: &Caller,
    asked: Option<&User>,
    resolved: &User,
    dir: &dyn Directory,
) -> Result<User, Forbidden> {
    if caller.admin {
        return Ok(resolved.clone());
    }
    let refuse = |u: &User| Forbidden::OtherUser {
        uid: caller.uid,
        asked: u.as_string(),
    };
    let mut group = None;
    match asked {
        None | Some(User::Default) => {}
        Some(u @ User::Dynamic) => return Err(refuse(u)),
        Some(u @ User::Named { user, group: g }) => {
            let acct = dir.account(user, g.as_deref()).map_err(|_| refuse(u))?;
            if acct.uid != caller.uid {
                return Err(refuse(u));
            }
            if g.is_some() {
                let own = dir
                    .account(&caller.uid.to_string(), None)
                    .map(|a| a.groups)
                    .unwrap_or_default();
                if acct.gid != caller.gid && !own.contains(&acct.gid) {
                    return Err(refuse(u));
                }
                group = Some(acct.gid.to_string());
            }
        }
    }
    Ok(User::Named {
        user: caller.uid.to_string(),
        group,
    })
}

/// The name of `uid` (the number when it has none).
pub fn name_of(uid: u32) -> String {
    SystemDirectory.name_of(uid)
}

/// The bearer tokens of the TCP listener (`--token-file`): token → (uid, gid).
#[derive(Debug, Clone, Default)]
pub struct Tokens(Vec<(String, u32, u32)>);

/// Why the token file cannot be used (the service refuses to start).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// It cannot be read.
    #[error("cannot read the token file {}: {source}", path.display())]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Others may read it.
    #[error(
        "the token file {} has mode {mode:04o}: it must not be readable or writable by \
         group or others (chmod 600)",
        path.display()
    )]
    Mode {
        /// The file.
        path: std::path::PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// A line is not `USER TOKEN`, or names no user, or its token is weak or repeated.
    #[error("the token file {}, line {line}: {why}", path.display())]
    Line {
        /// The file.
        path: std::path::PathBuf,
        /// The line number (from 1).
        line: usize,
        /// What is wrong.
        why: String,
    },
}

/// The shortest token accepted.
pub const MIN_TOKEN_LEN: usize = 16;

impl Tokens {
    /// Reads `--token-file`: one `USER TOKEN` per line (a user name or uid, then its
    /// token, at least [`MIN_TOKEN_LEN`] characters); blank lines and `#` comments are
    /// skipped. The file must not be accessible to group or others.
    pub fn load(path: &std::path::Path) -> Result<Tokens, TokenError> {
        use std::os::unix::fs::PermissionsExt;
        let read = |source| TokenError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mode = std::fs::metadata(path).map_err(read)?.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(TokenError::Mode {
                path: path.to_path_buf(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        Tokens::parse(path, &text, &SystemDirectory)
    }

    /// Parses the text of a token file.
    pub fn parse(
        path: &std::path::Path,
        text: &str,
        dir: &dyn Directory,
    ) -> Result<Tokens, TokenError> {
        let mut out: Vec<(String, u32, u32)> = Vec::new();
        for (n, l) in text.lines().enumerate() {
            let l = l.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let bad = |why: String| TokenError::Line {
                path: path.to_path_buf(),
                line: n + 1,
                why,
            };
            let mut f = l.split_whitespace();
            let (Some(user), Some(token), None) = (f.next(), f.next(), f.next()) else {
                return Err(bad("expected \"USER TOKEN\"".into()));
            };
            let acct = dir.account(user, None).map_err(|e| bad(format!("{e}")))?;
            if token.len() < MIN_TOKEN_LEN {
                return Err(bad(format!(
                    "the token of {user} is shorter than {MIN_TOKEN_LEN} characters"
                )));
            }
            if out.iter().any(|(t, _, _)| t == token) {
                return Err(bad("this token is given twice".into()));
            }
            out.push((token.to_string(), acct.uid, acct.gid));
        }
        Ok(Tokens(out))
    }

    /// The uid and gid of a bearer token. Every token is compared in full, so the time
    /// taken says nothing about how much of a guess was right.
    pub fn lookup(&self, token: &str) -> Option<(u32, u32)> {
        let mut found = None;
        for (t, uid, gid) in &self.0 {
            let same = t.len() == token.len()
                && t.bytes()
                    .zip(token.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0;
            if same {
                found = Some((*uid, *gid));
            }
        }
        found
    }

    /// True when no token is configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_run::identity::{Account, IdentityError};

    struct Dir;
    impl Directory for Dir {
        fn account(&self, user: &str, group: Option<&str>) -> Result<Account, IdentityError> {
            let (name, uid) = match user {
                "alice" | "1001" => ("alice", 1001),
                "bob" | "1002" => ("bob", 1002),
                _ => return Err(IdentityError::UnknownUser(user.into())),
            };
            let gid = match group {
                None => uid,
                Some("staff" | "50") => 50,
                Some("wheel" | "10") => 10,
                Some(g) => return Err(IdentityError::UnknownGroup(g.into())),
            };
            Ok(Account {
                name: name.into(),
                uid,
                gid,
                groups: if uid == 1001 {
                    vec![uid, 50]
                } else {
                    vec![uid]
                },
            })
        }
        fn id_exists(&self, _: u32) -> bool {
            true
        }
        fn name_of(&self, uid: u32) -> String {
            uid.to_string()
        }
    }

    fn user(uid: u32) -> Caller {
        Caller {
            uid,
            gid: uid,
            pid: None,
            admin: false,
            may_submit: true,
        }
    }

    fn named(u: &str, g: Option<&str>) -> User {
        User::Named {
            user: u.into(),
            group: g.map(str::to_string),
        }
    }

    #[test]
    fn admins_and_submitters() {
        let g = |name: &str, gid| {
            Some(Group {
                name: name.into(),
                gid,
            })
        };
        let open = Access::default();
        assert_eq!(decide(0, &[0], &open), (true, true), "root is an admin");
        assert_eq!(decide(1001, &[1001], &open), (false, true));
        let strict = Access {
            admin_group: g("ops", 20),
            allow_group: g("analysts", 30),
        };
        assert_eq!(decide(0, &[0], &strict), (true, true));
        assert_eq!(decide(1001, &[1001, 20], &strict), (true, true));
        assert_eq!(decide(1002, &[1002, 30], &strict), (false, true));
        assert_eq!(decide(1003, &[1003], &strict), (false, false));
    }

    #[test]
    fn who_sees_what() {
        let a = user(1001);
        assert!(a.sees(Some(1001)));
        assert!(!a.sees(Some(1002)));
        assert!(!a.sees(None), "rows from before submitters count as root's");
        assert_eq!(a.list_filter(), Some(1001));
        let root = Caller::root();
        assert!(root.sees(Some(1001)) && root.sees(None));
        assert_eq!(root.list_filter(), None);
    }

    #[test]
    fn runs_execute_as_their_submitter() {
        let a = user(1001);
        let own = named("1001", None);
        // Whatever the profile says, an ordinary user's run is its own uid.
        for resolved in [User::Default, User::Dynamic, named("bob", None)] {
            assert_eq!(run_user(&a, None, &resolved, &Dir), Ok(own.clone()));
        }
        assert_eq!(
            run_user(&a, Some(&User::Default), &User::Default, &Dir),
            Ok(own.clone())
        );
        // Naming oneself, by name or number, is fine; with one of one's groups too.
        for asked in [named("alice", None), named("1001", None)] {
            assert_eq!(run_user(&a, Some(&asked), &asked, &Dir), Ok(own.clone()));
        }
        let staff = named("alice", Some("staff"));
        assert_eq!(
            run_user(&a, Some(&staff), &staff, &Dir),
            Ok(named("1001", Some("50")))
        );
        // Anyone else, a group one is not in, a dynamic uid, an unknown user: 403.
        for asked in [
            named("bob", None),
            named("alice", Some("wheel")),
            User::Dynamic,
            named("nobody-here", None),
        ] {
            let e = run_user(&a, Some(&asked), &asked, &Dir).unwrap_err();
            assert_eq!(
                e,
                Forbidden::OtherUser {
                    uid: 1001,
                    asked: asked.as_string()
                }
            );
        }
        let e = run_user(&a, Some(&named("bob", None)), &User::Default, &Dir).unwrap_err();
        assert_eq!(
            e.to_string(),
            "uid 1001 may not run commands as user \"bob\": runs execute as their \
             submitter; only root and members of the service's --admin-group may name \
             another user"
        );
        // An admin gets what it (or the profile) asked for.
        let root = Caller::root();
        assert_eq!(
            run_user(&root, Some(&named("bob", None)), &named("bob", None), &Dir),
            Ok(named("bob", None))
        );
        assert_eq!(
            run_user(&root, None, &User::Default, &Dir),
            Ok(User::Default)
        );
    }

    #[test]
    fn token_files() {
        let p = std::path::Path::new("/etc/corral/tokens");
        let t = Tokens::parse(
            p,
            "# operators\nalice 0123456789abcdef\n\n1002   fedcba9876543210xyz\n",
            &Dir,
        )
        .unwrap();
        assert_eq!(t.lookup("0123456789abcdef"), Some((1001, 1001)));
        assert_eq!(t.lookup("fedcba9876543210xyz"), Some((1002, 1002)));
        assert_eq!(t.lookup("0123456789abcdeX"), None);
        assert_eq!(t.lookup(""), None);
        let err = |text: &str| Tokens::parse(p, text, &Dir).unwrap_err().to_string();
        assert_eq!(
            err("alice"),
            "the token file /etc/corral/tokens, line 1: expected \"USER TOKEN\""
        );
        assert!(err("nobody-here 0123456789abcdef").contains("line 1: "));
        assert_eq!(
            err("alice short"),
            "the token file /etc/corral/tokens, line 1: the token of alice is shorter than \
             16 characters"
        );
        assert!(err("alice 0123456789abcdef\nbob 0123456789abcdef")
            .ends_with("line 2: this token is given twice"));
    }

    #[test]
    fn token_file_modes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokens");
        std::fs::write(&p, "root 0123456789abcdef\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Tokens::load(&p).unwrap_err();
        assert!(matches!(e, TokenError::Mode { mode: 0o644, .. }), "{e}");
        assert!(
            e.to_string().ends_with(
                "has mode 0644: it must not be readable or writable by group or others (chmod 600)"
            ),
            "{e}"
        );
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let t = Tokens::load(&p).unwrap();
        assert_eq!(t.lookup("0123456789abcdef"), Some((0, 0)));
        assert!(matches!(
            Tokens::load(&dir.path().join("none")),
            Err(TokenError::Read { .. })
        ));
    }
}
