//! Files a dynamic-uid run creates in its working directory (and, later, its `--rw`
//! paths) belong to the directory's owner, not to a uid that means nothing after the
//! run. Two ways, chosen per directory:
//!
//! * **`idmapped`** (preferred; Linux 5.12, and a file system that supports it: ext4,
//!   xfs, btrfs, tmpfs from 6.3): the parent makes a user namespace that maps the
//!   directory's owner (and group) to the run's uid (and gid), clones the directory's
//!   mount tree detached (`open_tree`), id-maps it and makes it `nosuid`
//!   (`mount_setattr`); the child moves it over the directory in its own mount
//!   namespace. Inside, the directory is the run's own; on disk, what it creates
//!   belongs to the directory's owner, and nothing ever needs fixing afterwards. The
//!   host's view is unchanged. A run also gets its owner's access to the files of that
//!   owner under the directory: the working directory is the run's room.
//! * **`restored`** (the fallback: tmpfs before 6.3, 9p, NFS, FUSE): for the run's
//!   lifetime the directory's group becomes corral's run group (the first number of
//!   the uid range, a supplementary group of fallback runs) with `g+rwx`; the run
//!   writes as its dynamic uid; afterwards every inode the run's uid owns under the
//!   directory is `lchown`ed to the directory's owner and original group, without
//!   following symlinks or crossing file systems (a `chown` by root also clears
//!   setuid/setgid bits), and the directory's group and mode are restored when the
//!   last run using it ends. Concurrent runs in one directory (any corral process)
//!   share the change through lock files under `/run/corral/dirs`; if corral dies,
//!   the original group and mode stay recorded there and the next run of the
//!   directory restores them.
//!
//! When neither works (a read-only file system, a `chown` refused by NFS root
//! squashing), or the directory is a system directory ([`protected`]: `/` (a mount
//! over it would hide every other mount), `/root`, `/var`, `/home`, `/etc` and `/usr`
//! and what is beneath those two, ...), the directory is left as it is:
//! `not-writable` (the run can write only what its uid could anyway).
//!
//! A directory owned by root: id-mapping makes the run's files root's on disk, so a
//! run must not be able to leave a setuid or setgid file. It has no `CAP_FSETID` (a
//! write clears `S_ISUID`), the mount is `nosuid`, and the seccomp policy refuses
//! `chmod`-family calls and file creation with `S_ISUID`/`S_ISGID` in the mode.

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, FlockOperation, Mode, OFlags};

use crate::spawn;

/// Where the fallback's per-directory lock and state files live.
pub const DIR_LOCK_DIR: &str = "/run/corral/dirs";

/// How deep the fallback's walk follows directories the run created.
const MAX_DEPTH: usize = 256;

/// How the files of one directory get their owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilesMode {
    /// An id-mapped mount.
    Idmapped,
    /// The run group during the run, the owner restored afterwards.
    Restored,
    /// Left as it is.
    NotWritable,
}

impl FilesMode {
    /// The record's spelling (`isolation.enforced.user.files`).
    pub const fn as_str(self) -> &'static str {
        match self {
            FilesMode::Idmapped => "idmapped",
            FilesMode::Restored => "restored",
            FilesMode::NotWritable => "not-writable",
        }
    }
}

/// A directory lent to a run through the fallback.
#[derive(Debug)]
struct Grant {
    path: PathBuf,
    dir: OwnedFd,
    dev: u64,
    owner: u32,
    gid: u32,
    /// The lock files' path without the suffix.
    key: String,
    state: OwnedFd,
    users: OwnedFd,
}

/// The directories of one dynamic-uid run and how each gets its owner. Dropping it
/// (after the run's whole tree is gone) gives the fallback's files back.
#[derive(Debug)]
pub struct OwnedDirs {
    /// The id-mapped trees for the child, with the paths to mount them over.
    pub trees: Vec<(OwnedFd, CString)>,
    /// The mode of each directory, in the order given.
    pub modes: Vec<FilesMode>,
    grants: Vec<Grant>,
    run_uid: u32,
    run_group: u32,
}

impl OwnedDirs {
    /// True when the run needs the run group as a supplementary group.
    pub fn needs_run_group(&self) -> bool {
        !self.grants.is_empty()
    }

    /// The mode recorded for the run: that of its working directory (the first).
    pub fn mode(&self) -> Option<FilesMode> {
        self.modes.first().copied()
    }
}

/// System directories a run is never given, whoever owns them: exactly these, and
/// (for the first group) anything beneath them. An id-mapped `/etc` or a lent `/usr`
/// would hand a dynamic uid the host's own files.
const PROTECTED_TREES: [&str; 6] = ["/etc", "/usr", "/boot", "/proc", "/sys", "/dev"];
const PROTECTED_DIRS: [&str; 11] = [
    "/", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/var", "/root", "/run", "/home",
];

/// True for a directory [`prepare`] leaves alone (see `PROTECTED_TREES`).
pub fn protected(dir: &Path) -> bool {
    PROTECTED_DIRS.iter().any(|p| dir == Path::new(p))
        || PROTECTED_TREES.iter().any(|p| dir.starts_with(p))
}

/// Prepares `dirs` (absolute, canonical) for a run as `run_uid` (gid the same), with
/// `run_group` as the fallback's group.
pub fn prepare(dirs: &[PathBuf], run_uid: u32, run_group: u32) -> OwnedDirs {
    let mut out = OwnedDirs {
        trees: Vec::new(),
        modes: Vec::new(),
        grants: Vec::new(),
        run_uid,
        run_group,
    };
    for d in dirs {
        if protected(d) {
            tracing::info!("{}: a system directory, not given to the run", d.display());
            out.modes.push(FilesMode::NotWritable);
            continue;
        }
        let mode = match idmap(d, run_uid) {
            Ok(tree) => {
                out.trees.push(tree);
                FilesMode::Idmapped
            }
            Err(e) => {
                tracing::debug!(
                    "{}: no id-mapped mount ({e}); lending it instead",
                    d.display()
                );
                match lend(d, run_group) {
                    Ok(Some(g)) => {
                        out.grants.push(g);
                        FilesMode::Restored
                    }
                    Ok(None) => FilesMode::NotWritable,
                    Err(e) => {
                        tracing::warn!(
                            "{}: cannot lend the directory to the run: {e}",
                            d.display()
                        );
                        FilesMode::NotWritable
                    }
                }
            }
        };
        out.modes.push(mode);
    }
    out
}

fn c_path(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
}

/// An id-mapped, nosuid copy of `dir`'s mount tree mapping its owner to `run_uid`.
fn idmap(dir: &Path, run_uid: u32) -> std::io::Result<(OwnedFd, CString)> {
    if dir == Path::new("/") {
        return Err(std::io::Error::from_raw_os_error(libc::EBUSY));
    }
    let st = rustix::fs::stat(dir)?;
    let userns = spawn::user_namespace(
        &format!("{} {run_uid} 1\n", st.st_uid),
        &format!("{} {run_uid} 1\n", st.st_gid),
    )?;
    let path = c_path(dir)?;
    let tree = spawn::idmapped_tree(&path, userns.as_fd())?;
    Ok((tree, path))
}

/// True when `dir` (absolute) can be id-mapped here (root only): a probe that mounts
/// nothing.
pub fn idmap_supported(dir: &Path) -> bool {
    !protected(dir) && idmap(dir, 4_000_000).is_ok()
}

/// The fallback: the directory's group becomes `run_group` with `g+rwx` while any run
/// uses it. `None` for `/`.
fn lend(path: &Path, run_group: u32) -> std::io::Result<Option<Grant>> {
    if path == Path::new("/") {
        return Ok(None);
    }
    let dir = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&dir)?;
    std::fs::create_dir_all(DIR_LOCK_DIR)?;
    let key = format!("{DIR_LOCK_DIR}/{}-{}", st.st_dev, st.st_ino);
    let lock = |suffix: &str| {
        rustix::fs::open(
            format!("{key}.{suffix}").as_str(),
            OFlags::RDWR | OFlags::CREATE | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::from_raw_mode(0o600),
        )
    };
    let (state, users) = loop {
        let state = lock("state")?;
        rustix::fs::flock(&state, FlockOperation::LockExclusive)?;
        // The last run of the directory removes its files under this lock: a file
        // locked after that is no longer the one at the path.
        if rustix::fs::fstat(&state)?.st_nlink == 0 {
            continue;
        }
        let users = lock("users")?;
        // Under the state lock no run is restoring the directory, so this cannot block.
        rustix::fs::flock(&users, FlockOperation::LockShared)?;
        break (state, users);
    };
    let result = (|| -> std::io::Result<u32> {
        // Read under the lock: a run giving it back may have changed it meanwhile.
        let st = rustix::fs::fstat(&dir)?;
        let saved = read_state(&state);
        let gid = match saved {
            // Lent already (by a live run, or by one whose corral died).
            Some((gid, _)) if st.st_gid == run_group => gid,
            _ => {
                write_state(&state, Some((st.st_gid, st.st_mode & 0o7777)))?;
                rustix::fs::fchown(&dir, None, Some(rustix::process::Gid::from_raw(run_group)))?;
                rustix::fs::fchmod(&dir, Mode::from_raw_mode((st.st_mode & 0o7777) | 0o070))?;
                st.st_gid
            }
        };
        Ok(gid)
    })();
    let _ = rustix::fs::flock(&state, FlockOperation::Unlock);
    let gid = result?;
    Ok(Some(Grant {
        path: path.to_path_buf(),
        dir,
        dev: st.st_dev,
        owner: st.st_uid,
        gid,
        key,
        state,
        users,
    }))
}

fn read_state(state: &OwnedFd) -> Option<(u32, u32)> {
    let mut buf = [0u8; 64];
    let n = rustix::io::pread(state, &mut buf, 0).ok()?;
    let s = std::str::from_utf8(&buf[..n]).ok()?;
    let (g, m) = s.trim().split_once(' ')?;
    Some((g.parse().ok()?, u32::from_str_radix(m, 8).ok()?))
}

fn write_state(state: &OwnedFd, v: Option<(u32, u32)>) -> std::io::Result<()> {
    rustix::fs::ftruncate(state, 0)?;
    if let Some((g, m)) = v {
        rustix::io::pwrite(state, format!("{g} {m:o}\n").as_bytes(), 0)?;
    }
    Ok(())
}

impl Drop for OwnedDirs {
    fn drop(&mut self) {
        // Innermost first (the grants are parents first): a directory inside another
        // gives its files to its own owner before the outer walk, which then finds
        // them no longer the run's.
        for g in self.grants.drain(..).rev() {
            if let Err(e) = give_back(
                g.dir.as_fd(),
                g.dev,
                self.run_uid,
                self.run_group,
                (g.owner, g.gid),
                0,
            ) {
                tracing::warn!(
                    "{}: giving the run's files back to uid {}: {e}",
                    g.path.display(),
                    g.owner
                );
            }
            if let Err(e) = unlend(&g) {
                tracing::warn!("{}: restoring its group and mode: {e}", g.path.display());
            }
        }
    }
}

/// Gives the directory back when no other run uses it.
fn unlend(g: &Grant) -> std::io::Result<()> {
    rustix::fs::flock(&g.state, FlockOperation::LockExclusive)?;
    let result = (|| {
        rustix::fs::flock(&g.users, FlockOperation::Unlock)?;
        match rustix::fs::flock(&g.users, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            // Another run still has it.
            Err(rustix::io::Errno::WOULDBLOCK) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        if let Some((gid, mode)) = read_state(&g.state) {
            rustix::fs::fchown(&g.dir, None, Some(rustix::process::Gid::from_raw(gid)))?;
            rustix::fs::fchmod(&g.dir, Mode::from_raw_mode(mode))?;
            write_state(&g.state, None)?;
        }
        // Nobody uses the directory: its lock files go (a run waiting for the state
        // lock sees the unlinked file and opens a new one).
        let _ = std::fs::remove_file(format!("{}.users", g.key));
        let _ = std::fs::remove_file(format!("{}.state", g.key));
        Ok(())
    })();
    let _ = rustix::fs::flock(&g.state, FlockOperation::Unlock);
    result
}

/// `lchown`s to `to` every inode under `dir` that `run_uid` owns, on `dev` only,
/// never following a symlink; descends into directories the run could write: its
/// own, world-writable ones, and ones writable by `run_group`.
fn give_back(
    dir: BorrowedFd<'_>,
    dev: u64,
    run_uid: u32,
    run_group: u32,
    to: (u32, u32),
    depth: usize,
) -> std::io::Result<()> {
    let (uid, gid) = (
        rustix::process::Uid::from_raw(to.0),
        rustix::process::Gid::from_raw(to.1),
    );
    let entries = rustix::fs::Dir::read_from(dir)?;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => return Err(e.into()),
        };
        if st.st_dev != dev {
            continue;
        }
        let mine = st.st_uid == run_uid;
        if mine {
            rustix::fs::chownat(dir, name, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)?;
        }
        let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
        let writable =
            st.st_mode & 0o002 != 0 || (st.st_gid == run_group && st.st_mode & 0o020 != 0);
        if is_dir && (mine || writable) {
            if depth >= MAX_DEPTH {
                tracing::warn!("not following the run's directories deeper than {MAX_DEPTH}");
                continue;
            }
            let sub = match rustix::fs::openat(
                dir,
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(f) => f,
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => return Err(e.into()),
            };
            // The same directory that was checked (nothing replaced it meanwhile).
            let now = rustix::fs::fstat(&sub)?;
            if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) {
                continue;
            }
            give_back(sub.as_fd(), dev, run_uid, run_group, to, depth + 1)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn root() -> bool {
        rustix::process::geteuid().is_root()
    }

    #[test]
    fn system_directories_are_never_given() {
        for p in [
            "/",
            "/etc",
            "/etc/ssl",
            "/usr/local/src",
            "/root",
            "/var",
            "/home",
            "/proc/1",
        ] {
            assert!(protected(Path::new(p)), "{p}");
        }
        for p in [
            "/root/project",
            "/var/tmp",
            "/home/ana",
            "/tmp/x",
            "/srv/data",
            "/usrx",
        ] {
            assert!(!protected(Path::new(p)), "{p}");
        }
        let o = prepare(&[PathBuf::from("/etc")], 4_000_000, 4_000_001);
        assert_eq!(o.mode(), Some(FilesMode::NotWritable));
        assert!(o.trees.is_empty() && !o.needs_run_group());
    }

    #[test]
    fn the_walk_gives_back_only_the_runs_inodes() {
        if !root() {
            eprintln!("skipped: needs root to chown");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let run = 4_000_123u32;
        let p = t.path();
        let own = |path: &Path, uid: u32| {
            std::os::unix::fs::lchown(path, Some(uid), Some(uid)).unwrap();
        };
        std::fs::create_dir_all(p.join("a/b")).unwrap();
        std::fs::write(p.join("a/b/f"), "x").unwrap();
        std::fs::write(p.join("other"), "x").unwrap();
        std::fs::create_dir(p.join("closed")).unwrap();
        std::fs::write(p.join("closed/g"), "x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", p.join("link")).unwrap();
        for f in ["a", "a/b", "a/b/f", "link", "closed/g"] {
            own(&p.join(f), run);
        }
        own(&p.join("other"), 4_000_999);
        let dir = rustix::fs::open(p, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let dev = std::fs::metadata(p).unwrap().dev();
        give_back(dir.as_fd(), dev, run, 70000, (0, 0), 0).unwrap();
        for f in ["a", "a/b", "a/b/f", "link"] {
            let m = std::fs::symlink_metadata(p.join(f)).unwrap();
            assert_eq!((m.uid(), m.gid()), (0, 0), "{f}");
        }
        // The symlink's target is untouched; another uid's file is left alone; a
        // directory the run could not write is not entered.
        assert_eq!(std::fs::metadata("/etc/passwd").unwrap().uid(), 0);
        assert_eq!(std::fs::metadata(p.join("other")).unwrap().uid(), 4_000_999);
        assert_eq!(std::fs::metadata(p.join("closed/g")).unwrap().uid(), run);
    }

    #[test]
    fn lending_is_shared_and_restored_by_the_last_run() {
        if !root() {
            eprintln!("skipped: needs root to chown");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let p = t.path().canonicalize().unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o750)).unwrap();
        let group = 4_000_000;
        let a = lend(&p, group).unwrap().unwrap();
        let b = lend(&p, group).unwrap().unwrap();
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!((m.gid(), m.mode() & 0o7777), (group, 0o770));
        // Both remember the real group.
        assert_eq!((a.gid, b.gid), (0, 0));
        unlend(&a).unwrap();
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(m.gid(), group, "still lent to the other run");
        unlend(&b).unwrap();
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!((m.gid(), m.mode() & 0o7777), (0, 0o750));
        // Its lock files are gone with the last run, and it can be lent again.
        assert!(!Path::new(&format!("{}.state", b.key)).exists());
        let c = lend(&p, group).unwrap().unwrap();
        unlend(&c).unwrap();
        assert!(!Path::new(&format!("{}.users", c.key)).exists());
        assert!(lend(Path::new("/"), group).unwrap().is_none());
    }

    #[test]
    fn concurrent_lending_always_ends_restored() {
        if !root() {
            eprintln!("skipped: needs root to chown");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let p = t.path().canonicalize().unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o711)).unwrap();
        let group = 4_000_001;
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..20 {
                        let g = lend(&p, group).unwrap().unwrap();
                        let m = std::fs::metadata(&p).unwrap();
                        assert_eq!((m.gid(), m.mode() & 0o7777), (group, 0o771));
                        assert_eq!(g.gid, 0);
                        unlend(&g).unwrap();
                    }
                });
            }
        });
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!((m.gid(), m.mode() & 0o7777), (0, 0o711));
    }
}
