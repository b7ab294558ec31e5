//! Exec resolution: the program is found on `PATH` and every string the child needs is
//! turned into a C string here, in ordinary safe code, before any cgroup exists.

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::SpawnError;

/// A command prepared for exec: all C strings built in advance.
#[derive(Debug)]
pub struct Exec {
    pub(super) path: CString,
    pub(super) argv: Vec<CString>,
    pub(super) envp: Vec<CString>,
    pub(super) cwd: Option<CString>,
    pub(super) display: String,
    pub(super) cwd_display: String,
}

impl Exec {
    /// Prepares `argv` (whose first element is resolved against `PATH` from `env`, or
    /// corral's own `PATH`) with the full environment `env` and an optional `cwd`.
    /// Resolution happens here, before any cgroup exists, so "not found" and "not
    /// executable" leave nothing behind.
    pub fn new(
        argv: &[String],
        env: &[(String, String)],
        cwd: Option<&Path>,
    ) -> Result<Exec, SpawnError> {
        Exec::new_as(argv, env, cwd, None)
    }

    /// [`Exec::new`] for a command that will run as `who`: a `PATH` entry `who` cannot
    /// reach (a directory closed to it on the way, such as `/root` for a dynamic uid's
    /// run and a pyenv shim there) is skipped as a shell running as `who` would skip
    /// it, and a program it cannot reach at all is refused here with the reason.
    pub fn new_as(
        argv: &[String],
        env: &[(String, String)],
        cwd: Option<&Path>,
        who: Option<&super::Identity>,
    ) -> Result<Exec, SpawnError> {
        let prog = argv
            .first()
            .ok_or_else(|| SpawnError::NotFound(String::new()))?;
        let search = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var("PATH").ok())
            .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".to_string());
        let path = resolve(prog, &search, cwd, who)?;
        let cstr =
            |s: &[u8], orig: &str| CString::new(s).map_err(|_| SpawnError::Nul(orig.to_string()));
        Ok(Exec {
            path: cstr(path.as_os_str().as_bytes(), prog)?,
            argv: argv
                .iter()
                .map(|a| cstr(a.as_bytes(), a))
                .collect::<Result<_, _>>()?,
            envp: env
                .iter()
                .map(|(k, v)| {
                    let kv = format!("{k}={v}");
                    cstr(kv.as_bytes(), &kv)
                })
                .collect::<Result<_, _>>()?,
            cwd: cwd
                .map(|c| cstr(c.as_os_str().as_bytes(), &c.display().to_string()))
                .transpose()?,
            display: prog.clone(),
            cwd_display: cwd.map(|c| c.display().to_string()).unwrap_or_default(),
        })
    }

    /// The resolved program path.
    pub fn program(&self) -> &OsStr {
        OsStr::from_bytes(self.path.as_bytes())
    }
}

/// Finds `prog` as a shell would: a name with a `/` is taken as is (relative to `cwd`),
/// any other is searched in `search`; a found file that cannot be executed is reported
/// as such (126) rather than as not found (127).
pub(super) fn resolve(
    prog: &str,
    search: &str,
    cwd: Option<&Path>,
    who: Option<&super::Identity>,
) -> Result<PathBuf, SpawnError> {
    if prog.is_empty() {
        return Err(SpawnError::NotFound(prog.to_string()));
    }
    let check = |p: &Path, who: Option<&super::Identity>| -> Result<(), std::io::Error> {
        let md = std::fs::metadata(p)?;
        if md.is_dir() {
            return Err(std::io::Error::from_raw_os_error(libc::EISDIR));
        }
        rustix::fs::access(p, rustix::fs::Access::EXEC_OK).map_err(std::io::Error::from)?;
        match who {
            Some(who) if !reachable(p, who) => Err(std::io::Error::from_raw_os_error(libc::EACCES)),
            _ => Ok(()),
        }
    };
    if prog.contains('/') {
        let p = PathBuf::from(prog);
        // A relative path is relative to the child's working directory.
        let abs = match (p.is_relative(), cwd) {
            (true, Some(c)) => c.join(&p),
            _ => p.clone(),
        };
        // A path given as such is the caller's choice: the child's exec answers for
        // it (a program in an id-mapped working directory may look closed from here).
        return match check(&abs, None) {
            Ok(()) => Ok(abs),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(SpawnError::NotFound(prog.to_string()))
            }
            Err(source) => Err(SpawnError::NotExecutable {
                path: prog.to_string(),
                source,
            }),
        };
    }
    let mut denied = None;
    for dir in search.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let cand = Path::new(dir).join(prog);
        match check(&cand, who) {
            Ok(()) => return Ok(cand),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {}
            Err(e) => {
                denied.get_or_insert((cand, e));
            }
        }
    }
    match denied {
        Some((p, source)) => Err(SpawnError::NotExecutable {
            path: p.display().to_string(),
            source: annotate(source, who),
        }),
        None => Err(SpawnError::NotFound(prog.to_string())),
    }
}

/// `source`, with the reason spelled out when the run's user `who` could not reach a
/// program corral could.
fn annotate(source: std::io::Error, who: Option<&super::Identity>) -> std::io::Error {
    match who {
        Some(who) if source.raw_os_error() == Some(libc::EACCES) => std::io::Error::other(format!(
            "{source}: the run's user (uid {}) cannot reach it (a directory on the way, such \
             as /root, is closed to other users); install it where other users can read it, \
             or choose the run's user with --user",
            who.uid
        )),
        _ => source,
    }
}

/// Whether `who` may execute `p` by its permission bits: search permission on every
/// directory on the way to it (and to the file it resolves to, through symlinks), and
/// execute permission on that file. ACLs and capabilities are not considered (a run
/// has none); a directory corral will id-map for the run may look closed here.
fn reachable(p: &Path, who: &super::Identity) -> bool {
    use std::os::unix::fs::MetadataExt;
    let allows = |md: &std::fs::Metadata, bit: u32| {
        let mode = md.mode();
        let shift = if md.uid() == who.uid {
            6
        } else if md.gid() == who.gid || who.groups.contains(&md.gid()) {
            3
        } else {
            0
        };
        // A run has no capabilities: not even root's uid bypasses the bits.
        mode >> shift & bit != 0
    };
    let dirs_open = |p: &Path| {
        p.ancestors()
            .skip(1)
            .filter(|d| !d.as_os_str().is_empty())
            .all(|d| std::fs::metadata(d).is_ok_and(|md| allows(&md, 0o1)))
    };
    let Ok(real) = p.canonicalize() else {
        return false;
    };
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        real.clone()
    };
    dirs_open(&abs) && dirs_open(&real) && std::fs::metadata(&real).is_ok_and(|md| allows(&md, 0o1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_entry_the_runs_user_cannot_reach_is_skipped() {
        use std::os::unix::fs::PermissionsExt;
        let nobody = super::super::Identity {
            uid: 65534,
            gid: 65534,
            groups: Vec::new(),
        };
        let closed = std::env::temp_dir().join(format!("corral-closed-{}", std::process::id()));
        std::fs::create_dir_all(&closed).unwrap();
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
        let sh = closed.join("sh");
        std::fs::write(&sh, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&sh, std::fs::Permissions::from_mode(0o755)).unwrap();
        let search = format!("{}:/bin", closed.display());
        // corral itself may run it; the run's user finds the next one, as its shell would.
        let mine = resolve("sh", &search, None, None);
        let theirs = resolve("sh", &search, None, Some(&nobody));
        let only_closed = resolve("sh", &closed.display().to_string(), None, Some(&nobody));
        std::fs::remove_dir_all(&closed).unwrap();
        assert_eq!(mine.unwrap(), sh);
        assert_eq!(theirs.unwrap(), PathBuf::from("/bin/sh"));
        let e = only_closed.unwrap_err();
        assert!(matches!(e, SpawnError::NotExecutable { .. }), "{e}");
        assert!(e.to_string().contains("uid 65534) cannot reach it"), "{e}");
    }

    #[test]
    fn resolution() {
        assert!(matches!(
            resolve("definitely-not-a-command-xyz", "/usr/bin:/bin", None, None),
            Err(SpawnError::NotFound(_))
        ));
        assert_eq!(
            resolve("sh", "/nonexistent:/bin", None, None).unwrap(),
            PathBuf::from("/bin/sh")
        );
        assert!(matches!(
            resolve("/etc/passwd", "", None, None),
            Err(SpawnError::NotExecutable { .. })
        ));
        assert!(matches!(
            resolve("/tmp", "", None, None),
            Err(SpawnError::NotExecutable { .. })
        ));
        assert!(matches!(
            resolve("./nope", "", None, None),
            Err(SpawnError::NotFound(_))
        ));
    }
}
