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
        let prog = argv
            .first()
            .ok_or_else(|| SpawnError::NotFound(String::new()))?;
        let search = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var("PATH").ok())
            .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".to_string());
        let path = resolve(prog, &search, cwd)?;
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
pub(super) fn resolve(prog: &str, search: &str, cwd: Option<&Path>) -> Result<PathBuf, SpawnError> {
    if prog.is_empty() {
        return Err(SpawnError::NotFound(prog.to_string()));
    }
    let check = |p: &Path| -> Result<(), std::io::Error> {
        let md = std::fs::metadata(p)?;
        if md.is_dir() {
            return Err(std::io::Error::from_raw_os_error(libc::EISDIR));
        }
        rustix::fs::access(p, rustix::fs::Access::EXEC_OK).map_err(std::io::Error::from)
    };
    if prog.contains('/') {
        let p = PathBuf::from(prog);
        // A relative path is relative to the child's working directory.
        let abs = match (p.is_relative(), cwd) {
            (true, Some(c)) => c.join(&p),
            _ => p.clone(),
        };
        return match check(&abs) {
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
        match check(&cand) {
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
            source,
        }),
        None => Err(SpawnError::NotFound(prog.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolution() {
        assert!(matches!(
            resolve("definitely-not-a-command-xyz", "/usr/bin:/bin", None),
            Err(SpawnError::NotFound(_))
        ));
        assert_eq!(
            resolve("sh", "/nonexistent:/bin", None).unwrap(),
            PathBuf::from("/bin/sh")
        );
        assert!(matches!(
            resolve("/etc/passwd", "", None),
            Err(SpawnError::NotExecutable { .. })
        ));
        assert!(matches!(
            resolve("/tmp", "", None),
            Err(SpawnError::NotExecutable { .. })
        ));
        assert!(matches!(
            resolve("./nope", "", None),
            Err(SpawnError::NotFound(_))
        ));
    }
}
