//! The second file-system layer: a Landlock ruleset (Linux 5.13+) that lets the run
//! write only beneath the paths its read-only view leaves writable. Built here, in the
//! parent and in safe code, with the `landlock` crate (maintained by Landlock's author);
//! the child adds the rules for the view's writable paths and private tmpfs mounts as
//! it sees them and calls `landlock_restrict_self` with the ruleset's fd, after
//! `no_new_privs` (`spawn/sys.rs`).
//!
//! Only writes are handled (reads stay as the mounts and the file permissions decide),
//! so the ruleset repeats the view's promise in a second, independent mechanism: a
//! mount the view failed to make read-only, or one that appears later, is still not
//! writable. Rules are bound to inodes, not to names, and Landlock does not look at a
//! directory that a mount covers: a rule on the host's `/tmp` says nothing about the
//! private tmpfs mounted over it. And on a file system without stable inodes (9p
//! without a cache makes a new inode per lookup) a rule on a path opened in the parent
//! may not match the directory the run walks through. So the child adds the rules for
//! the view's writable paths and the private `/tmp` and `/dev/shm` itself, after its
//! mounts, opening each as it sees it (the mount pins that directory, and everything
//! below it is reached through it).

use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use landlock::{
    AccessFs, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, ABI,
};

/// Paths beneath which every run may write: devices (`/dev/null`, terminals; the
/// host's devtmpfs, whose nodes the read-only view keeps read-only anyway).
const DEVICES: &[&str] = &["/dev"];

/// The private tmpfs mounts of the view, whose rules the child adds after mounting.
const PRIVATE: &[&CStr] = &[c"/tmp", c"/dev/shm"];

/// `/proc`, where writing an existing file is allowed (a thread's name in
/// `/proc/self/task/*/comm`, as glibc's `pthread_setname_np` does) but creating or
/// removing is not.
const PROC: &str = "/proc";

/// A ready Landlock ruleset restricting writes, and the ABI it was built for.
#[derive(Debug)]
pub struct WriteRules {
    fd: OwnedFd,
    abi: u32,
    dir_access: u64,
    file_access: u64,
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
    /// A ruleset that allows writing beneath the devices and to existing `/proc` files,
    /// for this kernel's Landlock ABI `abi`; the child adds the view's writable paths
    /// and private mounts.
    pub fn build(abi: u32) -> Result<WriteRules, String> {
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
        for p in DEVICES {
            created = created
                .add_rule(beneath(Path::new(p), all)?)
                .map_err(|e| err(&format!("cannot add {p}"), &e))?;
        }
        created = created
            .add_rule(beneath(Path::new(PROC), proc_rights)?)
            .map_err(|e| err("cannot add /proc", &e))?;
        let fd: Option<OwnedFd> = created.into();
        let fd = fd.ok_or_else(|| "Landlock: the kernel gave no ruleset".to_string())?;
        Ok(WriteRules {
            fd,
            abi,
            dir_access: all.bits(),
            file_access: (all & AccessFs::from_file(level)).bits(),
        })
    }

    /// The Landlock ABI version the rules were built for (the record's `landlock`).
    pub fn abi(&self) -> u32 {
        self.abi
    }

    /// The private tmpfs mounts (`/tmp`, `/dev/shm`) the child adds a rule for once it
    /// has mounted them; one that is not a directory in the run's view (no `/dev/shm`)
    /// is skipped.
    pub fn private(&self) -> &'static [&'static CStr] {
        PRIVATE
    }

    /// The rights (`LANDLOCK_ACCESS_FS_*` bits) beneath a writable directory: every
    /// write.
    pub fn dir_access(&self) -> u64 {
        self.dir_access
    }

    /// The rights for a writable file: the writes a file has (no making or removing).
    pub fn file_access(&self) -> u64 {
        self.file_access
    }

    /// The ruleset's fd, for the child.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
