//! The file-system view of a run (`--fs`, `--rw`, `--hide`): what the parent decides
//! and lays out before anything is created; the child only mounts (see
//! [`crate::spawn::FsView`]).
//!
//! `read-only` (the default): in the run's own mount namespace every mount is
//! read-only; writable are the working directory, each `rw` path, and a private
//! `/tmp` and `/dev/shm` (fresh tmpfs mounts whose pages are charged to the run's
//! memory cgroup, gone with its namespace); `HOME` is `/tmp/home`. `host`: the host's
//! files as corral sees them. In both, each `hide` path is covered by an empty
//! read-only directory (or an empty file).
//!
//! Decisions, each checked here before the run starts (exit 125 with one message):
//! a `rw` path or a `hide` path must exist; a relative `rw` path is relative to the
//! run's working directory (as the command sees it), a `hide` path must be absolute;
//! `--rw /` is refused (that is `--fs host`), and so are `--rw /tmp` and `--rw
//! /dev/shm` in the read-only view (they are the run's private ones there); a writable
//! path (the working directory or a `rw` path) inside a hidden path is refused (it
//! would be hidden, and the service hides its state directory this way). A hidden path
//! inside a writable one is hidden. A working directory of `/` stays read-only (it
//! would make everything writable), and one of `/tmp` or `/dev/shm` is the private one.
//! The kernel's interfaces (`/proc`, `/sys`, `/dev` but `/dev/shm`) are never made
//! writable: a `rw` path there is refused, a working directory there stays read-only.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use corral_record::{FsEnforced, FsRequested};
use corral_spec::{check_hide_path, FsMode, Limits};

use crate::spawn::{FsStep, FsView};

/// `HOME` in the read-only view: a private directory in the private `/tmp`.
pub const HOME: &str = "/tmp/home";

/// The private tmpfs mounts of the read-only view.
const PRIVATE: [&str; 2] = ["/tmp", "/dev/shm"];

/// A path of the view and whether it is a directory (else a file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The path, absolute and with symlinks resolved.
    pub path: PathBuf,
    /// A directory (else a file, covered or attached as a file).
    pub dir: bool,
}

/// The view's paths, resolved and checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ViewPaths {
    /// The paths that stay writable in the read-only view: the working directory
    /// (unless it is `/` or a private one), then each `rw` path.
    pub writable: Vec<Entry>,
    /// The paths to hide.
    pub hide: Vec<Entry>,
    /// The private tmpfs mount points that exist here (`/dev/shm` may not).
    pub private: Vec<PathBuf>,
}

/// A `rw` or `hide` path that cannot be used, in one sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadPath(pub String);

/// Makes each relative `rw` path of `limits` absolute against `cwd`, the run's working
/// directory (what the command sees as `.`).
pub fn absolute_rw(limits: &mut Limits, cwd: &Path) {
    let mut rw = Vec::new();
    let abs: Vec<PathBuf> = limits.rw.iter().map(|p| cwd.join(p)).collect();
    corral_spec::add_paths(&mut rw, &abs);
    limits.rw = rw;
}

fn entry(what: &str, p: &Path) -> Result<Entry, BadPath> {
    let meta = std::fs::metadata(p).map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::NotFound => "no such file or directory".to_string(),
            _ => e.to_string(),
        };
        BadPath(format!("{what} {}: {why}", p.display()))
    })?;
    let path =
        std::fs::canonicalize(p).map_err(|e| BadPath(format!("{what} {}: {e}", p.display())))?;
    Ok(Entry {
        path,
        dir: meta.is_dir(),
    })
}

/// Resolves and checks the view's paths for a run in `cwd` (absolute) with `limits`
/// (`rw` made absolute by [`absolute_rw`]). `mode` is the view that will be applied
/// (`None`: none, as for an ordinary user: only the paths' existence is checked).
pub fn resolve(limits: &Limits, mode: Option<FsMode>, cwd: &Path) -> Result<ViewPaths, BadPath> {
    let mut writable: Vec<Entry> = Vec::new();
    let mut rw = Vec::new();
    for p in &limits.rw {
        let e = entry("--rw", p)?;
        if e.path.parent().is_none() {
            return Err(BadPath(format!(
                "--rw {} is /: that undoes the read-only view; pass --fs host for the host's files",
                p.display()
            )));
        }
        rw.push((p, e));
    }
    let mut hide: Vec<Entry> = Vec::new();
    for p in &limits.hide {
        check_hide_path(p).map_err(|e| BadPath(e.to_string()))?;
        let e = entry("--hide", p)?;
        if e.path.parent().is_none() {
            return Err(BadPath(format!(
                "--hide {}: that is /, which would hide everything",
                p.display()
            )));
        }
        if !hide.contains(&e) {
            hide.push(e);
        }
    }
    let Some(mode) = mode else {
        return Ok(ViewPaths::default());
    };
    let cwd = std::fs::canonicalize(cwd).unwrap_or_else(|_| cwd.to_path_buf());
    let private: Vec<PathBuf> = match mode {
        FsMode::ReadOnly => PRIVATE
            .iter()
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .collect(),
        FsMode::Host => Vec::new(),
    };
    let is_private = |p: &Path| PRIVATE.iter().any(|t| p == Path::new(t));
    if mode == FsMode::ReadOnly {
        if cwd.parent().is_some() && !is_private(&cwd) && !kernel_interface(&cwd) {
            writable.push(Entry {
                path: cwd.clone(),
                dir: true,
            });
        }
        for (given, e) in rw {
            if kernel_interface(&e.path) {
                return Err(BadPath(format!(
                    "--rw {}: {} is a kernel interface (/proc, /sys, /dev), which stays \
                     read-only in the view",
                    given.display(),
                    e.path.display()
                )));
            }
            if is_private(&e.path) {
                return Err(BadPath(format!(
                    "--rw {}: {} is the run's own private directory in the read-only view; \
                     pass --fs host to share the host's",
                    given.display(),
                    e.path.display()
                )));
            }
            if !writable.contains(&e) {
                writable.push(e);
            }
        }
    }
    // A writable path (or the working directory) under a hidden one would be hidden.
    let check_under = |what: String, p: &Path| match hide.iter().find(|h| p.starts_with(&h.path)) {
        Some(h) => Err(BadPath(format!(
            "{what} is inside the hidden path {}: it would be hidden",
            h.path.display()
        ))),
        None => Ok(()),
    };
    check_under(format!("the working directory {}", cwd.display()), &cwd)?;
    for w in &writable {
        check_under(format!("--rw {}", w.path.display()), &w.path)?;
    }
    Ok(ViewPaths {
        writable,
        hide,
        private,
    })
}

/// Under `/proc`, `/sys` or `/dev` (but not the private `/dev/shm`): the kernel's
/// interfaces (sysctls, cgroup and device files), never made writable by a view.
fn kernel_interface(p: &Path) -> bool {
    ["/proc", "/sys", "/dev"].iter().any(|k| p.starts_with(k)) && !p.starts_with("/dev/shm")
}

fn cstring(p: &Path) -> CString {
    // Paths come from the file system (canonicalize), which holds no NUL bytes.
    CString::new(p.as_os_str().as_bytes()).expect("a path without NUL bytes")
}

/// What covers a path in the view, in mount order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Item {
    /// A private tmpfs.
    Private,
    /// A writable clone attached back (index into the writable paths).
    Attach(usize),
    /// A hidden path (a directory, else a file).
    Hide(bool),
}

/// The child's mounts for the view `mode` over `paths`: the writable clones, then the
/// steps in path order (a parent before what is below it), so that each mount lands
/// on top of the one it belongs in. A writable path inside a private tmpfs gets its
/// mount point made there first; a hidden path already inside a private tmpfs (or
/// another hidden path) is invisible and needs no mount.
pub fn layout(mode: FsMode, paths: &ViewPaths) -> FsView {
    let read_only = mode == FsMode::ReadOnly;
    let mut items: Vec<(&Path, Item)> = Vec::new();
    if read_only {
        items.extend(paths.private.iter().map(|p| (p.as_path(), Item::Private)));
        items.extend(
            paths
                .writable
                .iter()
                .enumerate()
                .map(|(i, e)| (e.path.as_path(), Item::Attach(i))),
        );
    }
    items.extend(
        paths
            .hide
            .iter()
            .map(|e| (e.path.as_path(), Item::Hide(e.dir))),
    );
    // Stable: at one path a private tmpfs comes first (and covers a hide there).
    items.sort_by(|a, b| a.0.cmp(b.0));
    let mut steps = Vec::new();
    for (n, &(path, item)) in items.iter().enumerate() {
        // The deepest earlier item at or above this path.
        let above = items[..n]
            .iter()
            .filter(|(p, _)| path.starts_with(p))
            .max_by_key(|(p, _)| p.components().count());
        match item {
            Item::Private => {
                steps.push(FsStep::PrivateTmpfs(cstring(path)));
                if path == Path::new("/tmp") {
                    steps.push(FsStep::Home(cstring(Path::new(HOME))));
                }
            }
            Item::Attach(i) => {
                if let Some((top, Item::Private)) = above {
                    // The mount point, in the fresh tmpfs: each directory below its top.
                    let mut dirs: Vec<&Path> =
                        path.ancestors().skip(1).take_while(|a| a != top).collect();
                    dirs.reverse();
                    steps.extend(dirs.into_iter().map(|d| FsStep::MakeDir(cstring(d))));
                    steps.push(if paths.writable[i].dir {
                        FsStep::MakeDir(cstring(path))
                    } else {
                        FsStep::MakeFile(cstring(path))
                    });
                }
                steps.push(FsStep::Attach(i));
            }
            Item::Hide(dir) => match above {
                Some((_, Item::Private | Item::Hide(_))) => {}
                _ if dir => steps.push(FsStep::HideDir(cstring(path))),
                _ => steps.push(FsStep::HideFile(cstring(path))),
            },
        }
    }
    FsView {
        read_only,
        writable: paths.writable.iter().map(|e| cstring(&e.path)).collect(),
        steps,
    }
}

/// The record's `requested.fs` for `limits`.
pub fn requested(limits: &Limits) -> FsRequested {
    let text = |v: &[PathBuf]| v.iter().map(|p| p.display().to_string()).collect();
    FsRequested {
        mode: limits.fs.as_str().into(),
        rw: text(&limits.rw),
        hide: text(&limits.hide),
    }
}

/// The record's `enforced.fs` for the view `mode` over `paths`.
pub fn enforced(mode: FsMode, paths: &ViewPaths) -> FsEnforced {
    let text = |p: &Path| p.display().to_string();
    let writable = match mode {
        FsMode::ReadOnly => paths
            .writable
            .iter()
            .map(|e| text(&e.path))
            .chain(paths.private.iter().map(|p| text(p)))
            .collect(),
        FsMode::Host => vec!["/".to_string()],
    };
    FsEnforced {
        mode: mode.as_str().into(),
        writable,
        hidden: paths.hide.iter().map(|e| text(&e.path)).collect(),
        private_tmp: mode == FsMode::ReadOnly && !paths.private.is_empty(),
    }
}

/// Inherited variables that point into the (now read-only) real home or the host's
/// runtime directory: dropped in the read-only view, so that tools fall back to their
/// defaults under the private `HOME` (Jupyter's runtime directory is under
/// `XDG_DATA_HOME`, pip's and matplotlib's caches under `XDG_CACHE_HOME`).
const DROPPED_ENV: [&str; 5] = [
    "XDG_CONFIG_HOME",
    "XDG_CACHE_HOME",
    "XDG_DATA_HOME",
    "XDG_STATE_HOME",
    "XDG_RUNTIME_DIR",
];

/// The environment of a run in the read-only view: `HOME` is [`HOME`] and `TMPDIR`
/// `/tmp` (an inherited one may point somewhere read-only now), and `DROPPED_ENV`
/// are unset, unless the caller set them (`explicit`), or cleared the environment
/// (then it is exactly what was given).
pub fn adjust_env(env: &mut Vec<(String, String)>, explicit: &[(String, String)], clear: bool) {
    if clear {
        return;
    }
    let given = |k: &str| explicit.iter().any(|(ek, _)| ek == k);
    env.retain(|(k, _)| given(k) || !DROPPED_ENV.contains(&k.as_str()));
    for (k, v) in [("HOME", HOME), ("TMPDIR", "/tmp")] {
        if given(k) {
            continue;
        }
        env.retain(|(ek, _)| ek != k);
        env.push((k.to_string(), v.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(p: &str) -> Entry {
        Entry {
            path: p.into(),
            dir: true,
        }
    }

    fn c(p: &str) -> CString {
        CString::new(p).unwrap()
    }

    #[test]
    fn the_layout_mounts_parents_first_and_makes_mount_points_in_private_tmpfs() {
        let paths = ViewPaths {
            writable: vec![
                dir("/tmp/work/run"),
                dir("/data/out"),
                Entry {
                    path: "/tmp/notes.txt".into(),
                    dir: false,
                },
            ],
            hide: vec![
                dir("/home"),
                dir("/data/out/secret"),
                dir("/tmp/old"),
                Entry {
                    path: "/etc/shadow".into(),
                    dir: false,
                },
            ],
            private: vec!["/tmp".into(), "/dev/shm".into()],
        };
        let v = layout(FsMode::ReadOnly, &paths);
        assert!(v.read_only);
        assert_eq!(
            v.writable,
            [c("/tmp/work/run"), c("/data/out"), c("/tmp/notes.txt")]
        );
        use FsStep::*;
        assert_eq!(
            v.steps,
            [
                Attach(1),
                HideDir(c("/data/out/secret")),
                PrivateTmpfs(c("/dev/shm")),
                HideFile(c("/etc/shadow")),
                HideDir(c("/home")),
                PrivateTmpfs(c("/tmp")),
                Home(c("/tmp/home")),
                MakeFile(c("/tmp/notes.txt")),
                Attach(2),
                // /tmp/old is inside the private /tmp already: nothing to cover.
                MakeDir(c("/tmp/work")),
                MakeDir(c("/tmp/work/run")),
                Attach(0),
            ]
        );
        let e = enforced(FsMode::ReadOnly, &paths);
        assert_eq!(
            e.writable,
            [
                "/tmp/work/run",
                "/data/out",
                "/tmp/notes.txt",
                "/tmp",
                "/dev/shm"
            ]
        );
        assert_eq!(e.hidden.len(), 4);
        assert!(e.private_tmp);
    }

    #[test]
    fn the_host_view_only_hides() {
        let paths = ViewPaths {
            writable: Vec::new(),
            hide: vec![dir("/var/lib/corral"), dir("/var/lib/corral/output")],
            private: Vec::new(),
        };
        let v = layout(FsMode::Host, &paths);
        assert!(!v.read_only && v.writable.is_empty());
        assert_eq!(v.steps, [FsStep::HideDir(c("/var/lib/corral"))]);
        let e = enforced(FsMode::Host, &paths);
        assert_eq!((e.writable, e.private_tmp), (vec!["/".to_string()], false));
    }

    fn limits(rw: &[&Path], hide: &[&Path]) -> Limits {
        Limits {
            rw: rw.iter().map(|p| p.to_path_buf()).collect(),
            hide: hide.iter().map(|p| p.to_path_buf()).collect(),
            ..Limits::default()
        }
    }

    #[test]
    fn paths_are_checked_before_the_run() {
        let t = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(t.path()).unwrap();
        let (work, out, secret) = (base.join("work"), base.join("out"), base.join("secret"));
        for d in [&work, &out, &secret] {
            std::fs::create_dir(d).unwrap();
        }
        let ro = Some(FsMode::ReadOnly);
        let mut l = limits(&[Path::new("../out"), &out], &[&secret]);
        absolute_rw(&mut l, &work);
        let p = resolve(&l, ro, &work).unwrap();
        assert_eq!(
            p.writable,
            [dir(work.to_str().unwrap()), dir(out.to_str().unwrap())]
        );
        assert_eq!(p.hide, [dir(secret.to_str().unwrap())]);

        let err =
            |l: &Limits, mode: Option<FsMode>, cwd: &Path| resolve(l, mode, cwd).unwrap_err().0;
        let missing = base.join("nope");
        // Missing paths are refused whether or not the view can be applied.
        for mode in [ro, Some(FsMode::Host), None] {
            let e = err(&limits(&[&missing], &[]), mode, &work);
            assert_eq!(
                e,
                format!("--rw {}: no such file or directory", missing.display())
            );
            let e = err(&limits(&[], &[&missing]), mode, &work);
            assert_eq!(
                e,
                format!("--hide {}: no such file or directory", missing.display())
            );
        }
        let e = err(&limits(&[Path::new("/")], &[]), ro, &work);
        assert!(
            e.starts_with("--rw / is /: that undoes the read-only view"),
            "{e}"
        );
        let e = err(&limits(&[], &[Path::new("rel")]), ro, &work);
        assert!(e.contains("must be an absolute path"), "{e}");
        let e = err(&limits(&[Path::new("/tmp")], &[]), ro, &work);
        assert!(e.contains("the run's own private directory"), "{e}");
        let e = err(&limits(&[Path::new("/proc/sys")], &[]), ro, &work);
        assert!(e.contains("is a kernel interface"), "{e}");
        assert!(resolve(&limits(&[], &[]), ro, Path::new("/sys"))
            .unwrap()
            .writable
            .is_empty());
        // A writable path (or the working directory) under a hidden one.
        let e = err(&limits(&[&secret.join(".")], &[&base]), ro, &work);
        assert!(e.contains("is inside the hidden path"), "{e}");
        let e = err(&limits(&[], &[&base]), Some(FsMode::Host), &work);
        assert_eq!(
            e,
            format!(
                "the working directory {} is inside the hidden path {}: it would be hidden",
                work.display(),
                base.display()
            )
        );
        // `/` as the working directory stays read-only; /tmp is the private one.
        assert!(resolve(&limits(&[], &[]), ro, Path::new("/"))
            .unwrap()
            .writable
            .is_empty());
        assert!(resolve(&limits(&[], &[]), ro, Path::new("/tmp"))
            .unwrap()
            .writable
            .is_empty());
    }

    #[test]
    fn home_and_tmpdir_unless_the_caller_set_them() {
        let inherited = vec![
            ("HOME".to_string(), "/root".to_string()),
            ("TMPDIR".to_string(), "/var/tmp/me".to_string()),
            ("PATH".to_string(), "/bin".to_string()),
            (
                "XDG_DATA_HOME".to_string(),
                "/root/.local/share".to_string(),
            ),
        ];
        let mut env = inherited.clone();
        adjust_env(&mut env, &[], false);
        assert_eq!(
            env[1..],
            [
                ("HOME".to_string(), HOME.to_string()),
                ("TMPDIR".to_string(), "/tmp".to_string())
            ]
        );
        let explicit = vec![
            ("HOME".to_string(), "/data/h".to_string()),
            ("XDG_DATA_HOME".to_string(), "/data/x".to_string()),
        ];
        let mut env = inherited.clone();
        env[0].1 = "/data/h".into();
        env[3].1 = "/data/x".into();
        adjust_env(&mut env, &explicit, false);
        assert!(env.contains(&("HOME".to_string(), "/data/h".to_string())));
        assert!(env.contains(&("XDG_DATA_HOME".to_string(), "/data/x".to_string())));
        assert!(env.contains(&("TMPDIR".to_string(), "/tmp".to_string())));
        let mut env = explicit.clone();
        adjust_env(&mut env, &explicit, true);
        assert_eq!(env, explicit);
    }
}
