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

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use corral_spec::{LimitKind, Limits};

use crate::backend::Plan;
use crate::spawn::sys_quota as sys;

/// The project ids corral allocates from (`0x434F_0000` + 16 random bits: "CO").
const PROJECT_BASE: u32 = 0x434F_0000;

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
        let dev = f.metadata().map_err(|e| e.to_string())?.dev();
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
        if owns_quota {
            sys::set_project_quota(fd.as_fd(), projid, self.limit)
                .map_err(|e| why_not(path, &e))?;
        }
        let dir = Dir {
            path: path.to_path_buf(),
            fd,
            prev,
            projid,
            owns_quota,
        };
        let set = sys::set_project(dir.fd.as_fd(), projid, true);
        // Pushed before the check: a failure still clears the limit just set.
        self.dirs.push(dir);
        set.map_err(|e| why_not(path, &e))
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
        for d in &self.dirs {
            if let Err(e) = sys::set_project(d.fd.as_fd(), d.prev.0, d.prev.1) {
                tracing::warn!("cannot restore the project id of {}: {e}", d.path.display());
            }
            if d.owns_quota {
                if let Err(e) = sys::set_project_quota(d.fd.as_fd(), d.projid, 0) {
                    tracing::warn!(
                        "cannot remove the project quota {} on {}: {e}",
                        d.projid,
                        d.path.display()
                    );
                }
            }
        }
    }
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
}
