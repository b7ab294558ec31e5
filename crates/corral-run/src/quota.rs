//! `--disk`: the space a run may add under its writable directories, as a project
//! quota (ext4 with the `project` feature mounted with `prjquota`, or XFS with
//! `prjquota`).
//!
//! Each writable directory (the working directory, each `rw` directory) gets a project
//! id of its own per file system, allocated for the run (one no file carries yet), with
//! the inherit flag: every file and directory the run creates below it carries that id,
//! and the kernel refuses writes past the project's hard limit with `EDQUOT`. Files that
//! existed before keep their own project, so only what the run adds is counted. At the
//! end corral reads the project's usage (the record's `disk_added_bytes`), removes the
//! limit and gives the directories their old project id and flag back.
//!
//! A run whose corral dies (kill -9, a crash) cannot do that itself: each run with a
//! quota keeps a state file under [`QUOTA_STATE_DIR`] (`/run/corral/quotas`), written
//! before any directory or limit is changed and `flock`ed by the corral process for the
//! run's lifetime (the kernel releases the lock when that process, and every process
//! that inherited the descriptor, is gone). [`reap_leftovers`] (`corral gc`, the start
//! of each `corral run`, the service's start) takes the files whose lock is free,
//! gives each directory its old project id and flag back (if it still has the run's)
//! and removes the limit.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use corral_spec::{LimitKind, Limits};

use crate::backend::Plan;
use crate::spawn::sys_quota as sys;

/// The project ids corral allocates from (`0x434F_0000` + 16 random bits: "CO").
const PROJECT_BASE: u32 = 0x434F_0000;

/// Where each run with a project quota records what it changed, for [`reap_leftovers`].
pub const QUOTA_STATE_DIR: &str = "/run/corral/quotas";

/// What a run changed on one directory, as its state file records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Entry {
    path: PathBuf,
    dev: u64,
    ino: u64,
    projid: u32,
    prev_projid: u32,
    prev_inherit: bool,
    owns_quota: bool,
}

/// A run's state file, locked while the run lasts; removed when everything is
/// restored.
struct StateFile {
    path: PathBuf,
    file: std::fs::File,
}

impl StateFile {
    /// A new state file in `dir`, locked.
    fn create(dir: &Path) -> std::io::Result<StateFile> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::create_dir_all(dir)?;
        loop {
            let mut b = [0u8; 4];
            let _ = rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty());
            let path = dir.join(format!(
                "{}-{:08x}",
                std::process::id(),
                u32::from_ne_bytes(b)
            ));
            let file = match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
            {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            };
            rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)?;
            // A sweep may have taken the empty file before the lock and removed it.
            if file.metadata()?.nlink() == 0 {
                continue;
            }
            return Ok(StateFile { path, file });
        }
    }

    fn write(&self, entries: &[Entry]) -> std::io::Result<()> {
        let text = serde_json::to_vec(entries).map_err(std::io::Error::other)?;
        rustix::fs::ftruncate(&self.file, 0)?;
        rustix::io::pwrite(&self.file, &text, 0)?;
        Ok(())
    }
}

fn read_entries(file: &std::fs::File) -> Vec<Entry> {
    let mut text = Vec::new();
    let _ = std::io::Read::read_to_end(&mut &*file, &mut text);
    serde_json::from_slice(&text).unwrap_or_default()
}

/// One writable directory under a project quota.
struct Dir {
    path: PathBuf,
    fd: OwnedFd,
    prev: (u32, bool),
    projid: u32,
    /// The first directory of its file system: it reads and clears the quota.
    owns_quota: bool,
}

/// A run's project quotas, removed when dropped.
pub struct Quota {
    dirs: Vec<Dir>,
    limit: u64,
    /// The record for a sweep after a crash (`None`: not needed yet, or it could not
    /// be made: logged).
    state: Option<StateFile>,
    /// Whether the state file was made (or tried) already.
    state_tried: bool,
    /// The thread that samples the usage for its peak, and its stop flag.
    sampler: Option<(
        std::sync::Arc<std::sync::atomic::AtomicBool>,
        std::thread::JoinHandle<u64>,
    )>,
}

/// How often the usage is sampled for its peak.
const SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// What the run added, read at its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskUsage {
    /// Bytes the run's files use (summed over file systems).
    pub used: u64,
    /// The most they used at once, sampled every 200 ms and at the end.
    pub peak: u64,
    /// True when a project was at its limit: writes had failed with `EDQUOT`.
    pub full: bool,
}

/// Why `dir`'s file system has no usable project quota, from the errno.
fn why_not(dir: &Path, e: &std::io::Error) -> String {
    let remedy = "ext4: `tune2fs -O quota,project` (or mkfs.ext4 -O quota,project) and mount with -o prjquota; XFS: mount with -o prjquota";
    match e.raw_os_error() {
        Some(libc::ENOTTY) | Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) => format!(
            "the file system of {} has no project ids ({remedy})",
            dir.display()
        ),
        Some(libc::ESRCH) | Some(libc::ENOENT) | Some(libc::ENOSYS) => format!(
            "project quotas are not enabled on the file system of {} ({remedy})",
            dir.display()
        ),
        Some(libc::EPERM) | Some(libc::EACCES) => format!(
            "setting a project quota on {} needs root (CAP_SYS_ADMIN)",
            dir.display()
        ),
        _ => format!("cannot set a project quota on {}: {e}", dir.display()),
    }
}

/// Whether the file system of `dir` has project quotas corral can use (for `corral
/// check`): `Err` says why not and how to fix it.
pub fn probe(dir: &Path) -> Result<(), String> {
    let f = std::fs::File::open(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    sys::get_project(f.as_fd()).map_err(|e| why_not(dir, &e))?;
    sys::get_project_quota(f.as_fd(), 0).map_err(|e| why_not(dir, &e))?;
    Ok(())
}

fn random_id() -> u32 {
    let mut b = [0u8; 2];
    let _ = rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty());
    PROJECT_BASE | u32::from(u16::from_ne_bytes(b)).max(1)
}

/// Sets up the quota for `limits.disk` on `cwd` and the `rw` directories (absolute).
/// A directory whose file system has no project quota is left out, with a gap in
/// `plan` naming it; when none has one, `disk` is not enforced (with the reason) and
/// the result is `None`.
pub fn start(limits: &Limits, cwd: &Path, plan: &mut Plan) -> Option<Quota> {
    let limit = limits.disk?;
    let mut paths = vec![cwd.to_path_buf()];
    for p in &limits.rw {
        if p.is_dir() && !paths.contains(p) {
            paths.push(p.clone());
        }
    }
    let mut q = Quota {
        dirs: Vec::new(),
        limit,
        state: None,
        state_tried: false,
        sampler: None,
    };
    let mut fs_ids: Vec<(u64, u32)> = Vec::new();
    let mut missed = Vec::new();
    for p in paths {
        if let Err(why) = q.add(&p, &mut fs_ids) {
            missed.push(why);
        }
    }
    if fs_ids.is_empty() {
        plan.drop_limit(LimitKind::Disk, missed.join("; "));
        return None;
    }
    if !missed.is_empty() {
        plan.gaps.push(corral_record::Gap {
            limit: LimitKind::Disk,
            why: format!("not limited there: {}", missed.join("; ")),
        });
    }
    q.start_sampler();
    Some(q)
}

impl Quota {
    fn add(&mut self, path: &Path, fs_ids: &mut Vec<(u64, u32)>) -> Result<(), String> {
        let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let meta = f.metadata().map_err(|e| e.to_string())?;
        let (dev, ino) = (meta.dev(), meta.ino());
        let fd: OwnedFd = f.into();
        let prev = sys::get_project(fd.as_fd()).map_err(|e| why_not(path, &e))?;
        let (projid, owns_quota) = match fs_ids.iter().find(|(d, _)| *d == dev) {
            Some((_, id)) => (*id, false),
            None => {
                let id = self.allocate(fd.as_fd(), path)?;
                fs_ids.push((dev, id));
                (id, true)
            }
        };
        // Recorded before anything changes: a crash after a change is undone by a
        // sweep, and dropping restores what was changed of it even after a failure.
        self.dirs.push(Dir {
            path: path.to_path_buf(),
            fd,
            prev,
            projid,
            owns_quota,
        });
        self.record(dev, ino);
        let fd = self.dirs.last().map(|d| d.fd.as_fd()).expect("just pushed");
        if owns_quota {
            sys::set_project_quota(fd, projid, self.limit).map_err(|e| why_not(path, &e))?;
        }
        sys::set_project(fd, projid, true).map_err(|e| why_not(path, &e))
    }

    /// Writes the state file with every directory so far (the last one's `dev` and
    /// `ino` given, the others' read from their descriptors).
    fn record(&mut self, dev: u64, ino: u64) {
        // Made with the first directory that gets a quota (an ordinary user's run,
        // refused one, needs none).
        if !self.state_tried {
            self.state_tried = true;
            self.state = StateFile::create(Path::new(QUOTA_STATE_DIR))
                .inspect_err(|e| {
                    tracing::warn!(
                        "cannot record the project quota in {QUOTA_STATE_DIR} ({e}): if corral dies during the run, the quota stays"
                    )
                })
                .ok();
        }
        let Some(state) = &self.state else { return };
        let n = self.dirs.len();
        let entries: Vec<Entry> = self
            .dirs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let (dev, ino) = if i + 1 == n {
                    (dev, ino)
                } else {
                    rustix::fs::fstat(&d.fd).map_or((0, 0), |st| (st.st_dev, st.st_ino))
                };
                Entry {
                    path: d.path.clone(),
                    dev,
                    ino,
                    projid: d.projid,
                    prev_projid: d.prev.0,
                    prev_inherit: d.prev.1,
                    owns_quota: d.owns_quota,
                }
            })
            .collect();
        if let Err(e) = state.write(&entries) {
            tracing::warn!("cannot write {}: {e}", state.path.display());
        }
    }

    /// A project id that no file on this file system is charged to and that has no
    /// limit: one no other run (or anyone else) uses.
    fn allocate(&self, fd: std::os::fd::BorrowedFd<'_>, path: &Path) -> Result<u32, String> {
        for _ in 0..32 {
            let id = random_id();
            let (used, lim) = sys::get_project_quota(fd, id).map_err(|e| why_not(path, &e))?;
            if used == 0 && lim == 0 {
                return Ok(id);
            }
        }
        Err(format!(
            "no free project id for {} (32 random ids in use)",
            path.display()
        ))
    }

    /// The usage summed over the run's projects (one per file system).
    fn projects(&self) -> Vec<(OwnedFd, u32)> {
        self.dirs
            .iter()
            .filter(|d| d.owns_quota)
            .filter_map(|d| Some((d.fd.try_clone().ok()?, d.projid)))
            .collect()
    }

    /// Starts sampling the usage for its peak.
    fn start_sampler(&mut self) {
        let projects = self.projects();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let spawned = std::thread::Builder::new()
            .name("corral-quota".into())
            .spawn(move || {
                let mut peak = 0u64;
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    let now: u64 = projects
                        .iter()
                        .filter_map(|(fd, id)| sys::get_project_quota(fd.as_fd(), *id).ok())
                        .map(|(used, _)| used)
                        .sum();
                    peak = peak.max(now);
                    std::thread::park_timeout(SAMPLE_EVERY);
                }
                peak
            });
        if let Ok(h) = spawned {
            self.sampler = Some((stop, h));
        }
    }

    /// Reads what the run added and removes the quota.
    pub fn finish(mut self) -> DiskUsage {
        let sampled = match self.sampler.take() {
            Some((stop, h)) => {
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                h.thread().unpark();
                h.join().unwrap_or(0)
            }
            None => 0,
        };
        let mut u = DiskUsage {
            used: 0,
            peak: 0,
            full: false,
        };
        for d in self.dirs.iter().filter(|d| d.owns_quota) {
            if let Ok((used, _)) = sys::get_project_quota(d.fd.as_fd(), d.projid) {
                u.used += used;
                // A write that would pass the limit fails: usage stops within a block
                // group's allocation of it.
                let slack = (self.limit / 20).clamp(64 << 10, 1 << 20);
                u.full |= used.saturating_add(slack) >= self.limit;
            }
        }
        u.peak = sampled.max(u.used);
        u
    }
}

impl Drop for Quota {
    fn drop(&mut self) {
        if let Some((stop, h)) = self.sampler.take() {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            h.thread().unpark();
            let _ = h.join();
        }
        let mut restored = true;
        for d in &self.dirs {
            if let Err(e) = sys::set_project(d.fd.as_fd(), d.prev.0, d.prev.1) {
                tracing::warn!("cannot restore the project id of {}: {e}", d.path.display());
                restored = false;
            }
            if d.owns_quota {
                if let Err(e) = sys::set_project_quota(d.fd.as_fd(), d.projid, 0) {
                    tracing::warn!(
                        "cannot remove the project quota {} on {}: {e}",
                        d.projid,
                        d.path.display()
                    );
                    restored = false;
                }
            }
        }
        // Kept when something is left: `corral gc` tries again once the lock is free.
        if let Some(state) = self.state.take().filter(|_| restored) {
            let _ = std::fs::remove_file(&state.path);
        }
    }
}

/// What a sweep did for one directory of a dead run.
#[derive(Debug)]
pub struct ReapedQuota {
    /// The directory.
    pub path: PathBuf,
    /// The run's project id there.
    pub projid: u32,
    /// Whether its old project id (and flag) are back and the limit is gone;
    /// otherwise why not.
    pub result: Result<(), String>,
}

/// Restores what runs whose corral died left of their project quotas (see the
/// module's documentation); files of live runs (locked) are not touched.
pub fn reap_leftovers() -> Vec<ReapedQuota> {
    reap_in(Path::new(QUOTA_STATE_DIR))
}

fn reap_in(dir: &Path) -> Vec<ReapedQuota> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let path = e.path();
        let Ok(file) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        else {
            continue;
        };
        // Held: the run (or its corral) is alive.
        if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
            continue;
        }
        // Removed by its run meanwhile.
        if file.metadata().map_or(true, |m| m.nlink() == 0) {
            continue;
        }
        let before = out.len();
        for entry in read_entries(&file) {
            out.push(ReapedQuota {
                path: entry.path.clone(),
                projid: entry.projid,
                result: restore(&entry),
            });
        }
        if out[before..].iter().all(|r| r.result.is_ok()) {
            let _ = std::fs::remove_file(&path);
        }
    }
    out
}

/// Gives one directory of a dead run its project back and removes the run's limit.
fn restore(e: &Entry) -> Result<(), String> {
    let same = |f: &std::fs::File| {
        f.metadata()
            .is_ok_and(|m| m.dev() == e.dev && m.ino() == e.ino)
    };
    let dir = std::fs::File::open(&e.path).ok().filter(same);
    if let Some(d) = &dir {
        // Only if it still carries the run's project (not someone else's since).
        let now = sys::get_project(d.as_fd()).map_err(|err| format!("{err}"))?;
        if now.0 == e.projid {
            sys::set_project(d.as_fd(), e.prev_projid, e.prev_inherit)
                .map_err(|err| format!("restoring the project id: {err}"))?;
        }
    }
    if e.owns_quota {
        // The limit lives on the file system: any directory of it will do, the
        // nearest existing ancestor if the directory itself is gone.
        let fs = dir.or_else(|| {
            e.path.ancestors().skip(1).find_map(|a| {
                std::fs::File::open(a)
                    .ok()
                    .filter(|f| f.metadata().is_ok_and(|m| m.dev() == e.dev))
            })
        });
        let Some(fs) = fs else {
            return Err("neither the directory nor its file system is there".into());
        };
        sys::set_project_quota(fs.as_fd(), e.projid, 0)
            .map_err(|err| format!("removing the limit: {err}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_in_corrals_range_and_unsupported_file_systems_say_how_to_fix_it() {
        let id = random_id();
        assert_eq!(id & 0xFFFF_0000, PROJECT_BASE);
        assert_ne!(id, PROJECT_BASE);
        let e = std::io::Error::from_raw_os_error(libc::ESRCH);
        assert!(why_not(Path::new("/x"), &e).contains("mount with -o prjquota"));
        // No --disk: nothing to do, nothing dropped.
        let mut plan = Plan::everything(&Limits::default());
        assert!(start(&Limits::default(), Path::new("/"), &mut plan).is_none());
        assert!(plan.gaps.is_empty());
    }

    #[test]
    fn a_sweep_takes_only_the_files_of_dead_runs() {
        let dir = tempfile::tempdir().unwrap();
        let live = StateFile::create(dir.path()).unwrap();
        let entry = Entry {
            path: dir.path().join("gone"),
            dev: 1,
            ino: 2,
            projid: PROJECT_BASE | 7,
            prev_projid: 0,
            prev_inherit: false,
            owns_quota: false,
        };
        live.write(std::slice::from_ref(&entry)).unwrap();
        // A dead run's file: written, then its lock released.
        let dead = StateFile::create(dir.path()).unwrap();
        dead.write(&[]).unwrap();
        let dead_path = dead.path.clone();
        drop(dead);
        assert!(reap_in(dir.path()).is_empty());
        assert!(!dead_path.exists(), "the dead run's file is removed");
        assert!(live.path.exists(), "the live run's file is kept");
        assert_eq!(read_entries(&live.file), vec![entry.clone()]);
        // Once its lock is free, its directory (gone: nothing to restore, no limit of
        // its own) is done with and the file removed.
        let path = live.path.clone();
        drop(live);
        let r = reap_in(dir.path());
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].path.clone(), r[0].projid), (entry.path, entry.projid));
        assert!(r[0].result.is_ok(), "{r:?}");
        assert!(!path.exists());
    }
}
