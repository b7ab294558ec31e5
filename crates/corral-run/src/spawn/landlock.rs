//! The second file-system layer: a Landlock ruleset (Linux 5.13+) that lets the run
//! write only beneath the paths its read-only view leaves writable. Built here, in the
//! parent and in safe code, with the `landlock` crate (maintained by Landlock's author);
//! the child only calls `landlock_restrict_self` with its fd, after `no_new_privs`
//! (`spawn/sys.rs`).
//!
//! Only writes are handled (reads stay as the mounts and the file permissions decide),
//! so the ruleset repeats the view's promise in a second, independent mechanism: a
//! mount the view failed to make read-only, or one that appears later, is still not
//! writable. Rules are bound to inodes, not to names: a rule on the host's `/tmp`
//! covers the private tmpfs mounted over it in the run's namespace (Landlock walks up
//! through mount points), and a rule on the working directory covers an id-mapped
//! mount of it.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use landlock::{
    AccessFs, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, ABI,
};

/// Paths beneath which every run may write, whatever its view: devices (`/dev/null`,
/// terminals, the private `/dev/shm` mounted over `/dev/shm`) and the private `/tmp`.
const DEVICES_AND_TMP: &[&str] = &["/dev", "/tmp"];

/// `/proc`, where writing an existing file is allowed (a thread's name in
/// `/proc/self/task/*/comm`, as glibc's `pthread_setname_np` does) but creating or
/// removing is not.
const PROC: &str = "/proc";

/// A ready Landlock ruleset restricting writes, and the ABI it was built for.
#[derive(Debug)]
pub struct WriteRules {
    fd: OwnedFd,
    abi: u32,
    paths: Vec<PathBuf>,
}

/// The ABI version of this kernel's Landlock (`Err` with the reason when it has none).
pub fn kernel_abi() -> Result<u32, String> {
    super::sys::landlock_abi().map_err(|e| match e.raw_os_error() {
        Some(libc::ENOSYS) => "this kernel has no Landlock (Linux 5.13+ with CONFIG_SECURITY_LANDLOCK)".to_string(),
        Some(libc::EOPNOTSUPP) => {
            "Landlock is built into this kernel but not enabled: add landlock to the lsm= boot parameter".to_string()
        }
        _ => format!("cannot query Landlock: {e}"),
    })
}

impl WriteRules {
    /// A ruleset that allows writing beneath each of `writable` (and the devices, the
    /// private `/tmp` and existing `/proc` files), for this kernel's Landlock ABI `abi`.
    pub fn build(writable: &[PathBuf], abi: u32) -> Result<WriteRules, String> {
        let level = ABI::from(abi as i32);
        let all = AccessFs::from_write(level);
        let proc_rights: BitFlags<AccessFs> = all & (AccessFs::WriteFile | AccessFs::Truncate);
        let err = |what: &str, e: &dyn std::fmt::Display| format!("Landlock: {what}: {e}");
        let beneath = |p: &Path, rights: BitFlags<AccessFs>| {
            PathFd::new(p)
                .map(|fd| PathBeneath::new(fd, rights))
                .map_err(|e| err(&format!("cannot open {}", p.display()), &e))
        };
        let mut created = Ruleset::default()
            .set_compatibility(CompatLevel::HardRequirement)
            .handle_access(all)
            .and_then(|r| r.create())
            .map_err(|e| err("cannot create the ruleset", &e))?;
        let mut paths: Vec<PathBuf> = DEVICES_AND_TMP.iter().map(PathBuf::from).collect();
        paths.extend(writable.iter().cloned());
        for p in &paths {
            created = created
                .add_rule(beneath(p, all)?)
                .map_err(|e| err(&format!("cannot add {}", p.display()), &e))?;
        }
        created = created
            .add_rule(beneath(Path::new(PROC), proc_rights)?)
            .map_err(|e| err("cannot add /proc", &e))?;
        let fd: Option<OwnedFd> = created.into();
        let fd = fd.ok_or_else(|| "Landlock: the kernel gave no ruleset".to_string())?;
        Ok(WriteRules { fd, abi, paths })
    }

    /// The Landlock ABI version the rules were built for (the record's `landlock`).
    pub fn abi(&self) -> u32 {
        self.abi
    }

    /// The paths beneath which writing is allowed (besides existing `/proc` files).
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// The ruleset's fd, for the child.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
