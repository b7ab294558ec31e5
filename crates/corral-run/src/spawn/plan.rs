//! The child's plan: everything the child between clone and exec reads, laid out as
//! plain C data (pointers, fd numbers, integers) by ordinary safe code in the parent.
//! The child may not allocate, so nothing in it is built after the clone.

use std::cell::Cell;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use super::{ChildSetup, Exec, FsStep, Placement, Rlimit};

/// `struct sock_fprog` of seccomp(2): a program of `len` instructions. The filter it
/// points to is borrowed by the plan's [`ChildSetup`] for `'p`.
#[repr(C)]
pub(super) struct SockFprog {
    pub(super) len: libc::c_ushort,
    pub(super) filter: *const seccompiler::sock_filter,
}

/// The run's identity as the child's raw calls take it.
pub(super) struct PlannedIdentity {
    pub(super) uid: libc::uid_t,
    pub(super) gid: libc::gid_t,
    pub(super) groups: Vec<libc::gid_t>,
}

/// The highest capability number this kernel knows (40 on 5.9+), read once.
fn cap_last_cap() -> u32 {
    static LAST: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *LAST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(40)
    })
}

/// What one [`FsStep`] does, for the child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FsOpKind {
    /// See [`FsStep::PrivateTmpfs`].
    PrivateTmpfs,
    /// See [`FsStep::MakeDir`].
    MakeDir,
    /// See [`FsStep::MakeFile`].
    MakeFile,
    /// See [`FsStep::Attach`].
    Attach,
    /// See [`FsStep::Home`].
    Home,
    /// See [`FsStep::HideDir`].
    HideDir,
    /// See [`FsStep::HideFile`].
    HideFile,
}

/// One [`FsStep`] as C data: its kind, its path (NUL-terminated, owned by the
/// [`ChildSetup`]'s view) and, for [`FsOpKind::Attach`], the index of the clone.
#[derive(Debug, Clone, Copy)]
pub(super) struct FsOp {
    pub(super) kind: FsOpKind,
    pub(super) path: *const libc::c_char,
    pub(super) index: usize,
}

/// Raw pointers and fd numbers the child uses. Built before cloning; every pointer
/// points into the [`Exec`], the [`ChildSetup`] or the vectors here, and every fd is
/// borrowed for `'p`, so the plan cannot outlive what it points to.
pub(super) struct ChildPlan<'p> {
    /// The program (NUL-terminated).
    pub(super) path: *const libc::c_char,
    /// `argv`, NULL-terminated.
    pub(super) argv: Vec<*const libc::c_char>,
    /// `envp`, NULL-terminated.
    pub(super) envp: Vec<*const libc::c_char>,
    /// The working directory, or null to stay.
    pub(super) cwd: *const libc::c_char,
    /// Sources for fds 0, 1, 2 (each ≥ 3), or -1 to inherit.
    pub(super) stdio: [RawFd; 3],
    /// `cgroup.procs` / `tasks` files to write `0` into.
    pub(super) procs: Vec<RawFd>,
    /// Resource limits to set.
    pub(super) rlimits: Vec<Rlimit>,
    /// `setsid()`.
    pub(super) new_session: bool,
    /// `RLIMIT_CORE` 0.
    pub(super) no_core_dumps: bool,
    /// `PR_SET_NO_NEW_PRIVS`.
    pub(super) no_new_privs: bool,
    /// The seccomp program (`filter` null: none).
    pub(super) filter: SockFprog,
    /// The parent-death signal, or 0.
    pub(super) pdeathsig: i32,
    /// This process' pid: the child checks it is still its parent.
    pub(super) parent_pid: i32,
    /// The gate to wait on, or -1.
    pub(super) gate: RawFd,
    /// The write end of the error pipe.
    pub(super) err_tx: RawFd,
    /// `unshare` flags for the mount (and cgroup) namespace (0: none).
    pub(super) unshare_flags: libc::c_int,
    /// Where to mount a fresh cgroup2, or null.
    pub(super) cgroup2_mount: *const libc::c_char,
    /// Mount points to remount read-only.
    pub(super) readonly: Vec<*const libc::c_char>,
    /// Drop [`super::DROPPED_CAPABILITIES`].
    pub(super) drop_caps: bool,
    /// A new network namespace with loopback up.
    pub(super) new_network: bool,
    /// The identity to switch to, if any.
    pub(super) identity: Option<PlannedIdentity>,
    /// The highest capability number (`/proc/sys/kernel/cap_last_cap`).
    pub(super) cap_last_cap: u32,
    /// Detached mount trees and the paths to move them over.
    pub(super) owned_trees: Vec<(RawFd, *const libc::c_char)>,
    /// The file-system view: make every mount read-only.
    pub(super) fs_read_only: bool,
    /// The file-system view: the paths cloned before the read-only step.
    pub(super) fs_writable: Vec<*const libc::c_char>,
    /// The clones' mount fds, one per `fs_writable` path: written by the child (into
    /// its own copy of this memory), allocated here.
    pub(super) fs_trees: Vec<Cell<RawFd>>,
    /// The file-system view's steps after the read-only step.
    pub(super) fs_ops: Vec<FsOp>,
    /// The owner (uid, gid) of `HOME`, when not the child's own.
    pub(super) fs_home_owner: Option<(u32, u32)>,
    /// The Landlock ruleset to restrict writes with, or -1.
    pub(super) landlock: RawFd,
    /// Directories (the private tmpfs mounts) the child adds to the ruleset, besides
    /// `fs_writable`.
    pub(super) landlock_private: &'static [&'static std::ffi::CStr],
    /// The rights of a rule for a writable directory.
    pub(super) landlock_dir_access: u64,
    /// The rights of a rule for a writable file.
    pub(super) landlock_file_access: u64,
    /// Born pid 1 of a new pid namespace: mount a fresh `/proc` and run the mini-init.
    pub(super) pid_ns: bool,
    /// The write end of the main-status pipe the mini-init reports on, or -1.
    pub(super) status_tx: RawFd,
    /// Born in a new user namespace (`CLONE_NEWUSER`): a rootless run's layers.
    pub(super) user_ns: bool,
    /// The read end of the pipe the child waits on until its id maps are written, or
    /// -1 (no user namespace).
    pub(super) userns_gate: RawFd,
    _borrows: PhantomData<&'p ()>,
}

impl<'p> ChildPlan<'p> {
    /// Lays out `exec`, `setup` and `placement` for the child; `stdio` are the moved
    /// (≥ 3) copies of the standard streams and `err_tx` the error pipe's write end.
    pub(super) fn new(
        exec: &'p Exec,
        setup: &'p ChildSetup<'_>,
        placement: &'p Placement<'_>,
        stdio: &'p [Option<OwnedFd>; 3],
        err_tx: BorrowedFd<'p>,
    ) -> ChildPlan<'p> {
        let raw = |o: &Option<OwnedFd>| o.as_ref().map_or(-1, |f| f.as_raw_fd());
        let nul_terminated = |v: &'p [std::ffi::CString]| {
            let mut p: Vec<*const libc::c_char> = v.iter().map(|a| a.as_ptr()).collect();
            p.push(std::ptr::null());
            p
        };
        ChildPlan {
            path: exec.path.as_ptr(),
            argv: nul_terminated(&exec.argv),
            envp: nul_terminated(&exec.envp),
            cwd: exec.cwd.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            stdio: [raw(&stdio[0]), raw(&stdio[1]), raw(&stdio[2])],
            procs: placement.procs.iter().map(|f| f.as_raw_fd()).collect(),
            rlimits: setup.rlimits.clone(),
            new_session: setup.new_session,
            no_core_dumps: setup.no_core_dumps,
            no_new_privs: setup.no_new_privs,
            filter: match setup.syscall_filter {
                Some(f) => SockFprog {
                    len: f.instructions().len() as libc::c_ushort,
                    filter: f.instructions().as_ptr(),
                },
                None => SockFprog {
                    len: 0,
                    filter: std::ptr::null(),
                },
            },
            pdeathsig: setup.parent_death_signal.unwrap_or(0),
            parent_pid: std::process::id() as i32,
            gate: setup.gate.map_or(-1, |g| g.as_raw_fd()),
            err_tx: err_tx.as_raw_fd(),
            unshare_flags: match &setup.contain {
                Some(c) if c.cgroup_namespace => libc::CLONE_NEWNS | libc::CLONE_NEWCGROUP,
                Some(_) => libc::CLONE_NEWNS,
                None if setup.new_mount_namespace || setup.pid_namespace => libc::CLONE_NEWNS,
                None => 0,
            },
            cgroup2_mount: setup
                .contain
                .as_ref()
                .and_then(|c| c.cgroup2_mount.as_ref())
                .map_or(std::ptr::null(), |m| m.as_ptr()),
            readonly: setup
                .contain
                .as_ref()
                .map(|c| c.readonly.iter().map(|m| m.as_ptr()).collect())
                .unwrap_or_default(),
            // The file-system view needs CAP_SYS_ADMIN gone too: with it, root could
            // remount the view read-write.
            drop_caps: setup.contain.is_some() || setup.fs_view.is_some(),
            new_network: setup.new_network,
            identity: setup.identity.as_ref().map(|i| PlannedIdentity {
                uid: i.uid,
                gid: i.gid,
                groups: i.groups.clone(),
            }),
            cap_last_cap: cap_last_cap(),
            owned_trees: setup
                .owned_trees
                .iter()
                .map(|(fd, p)| (fd.as_raw_fd(), p.as_ptr()))
                .collect(),
            fs_read_only: setup.fs_view.as_ref().is_some_and(|v| v.read_only),
            fs_writable: setup
                .fs_view
                .iter()
                .flat_map(|v| v.writable.iter().map(|p| p.as_ptr()))
                .collect(),
            fs_trees: setup
                .fs_view
                .iter()
                .flat_map(|v| v.writable.iter().map(|_| Cell::new(-1)))
                .collect(),
            fs_ops: setup
                .fs_view
                .iter()
                .flat_map(|v| v.steps.iter().map(fs_op))
                .collect(),
            fs_home_owner: setup.identity.as_ref().map(|i| (i.uid, i.gid)),
            landlock: setup.write_rules.map_or(-1, |r| r.fd().as_raw_fd()),
            landlock_private: setup.write_rules.map_or(&[], |r| r.private()),
            landlock_dir_access: setup.write_rules.map_or(0, |r| r.dir_access()),
            landlock_file_access: setup.write_rules.map_or(0, |r| r.file_access()),
            pid_ns: setup.pid_namespace,
            status_tx: -1,
            user_ns: setup.user_namespace,
            userns_gate: -1,
            _borrows: PhantomData,
        }
    }

    /// The pipe on which the mini-init reports the command's wait status.
    pub(super) fn report_main_status(&mut self, tx: BorrowedFd<'p>) {
        self.status_tx = tx.as_raw_fd();
    }

    /// The pipe the child waits on until its user namespace's id maps are written.
    pub(super) fn wait_for_maps(&mut self, rx: BorrowedFd<'p>) {
        self.userns_gate = rx.as_raw_fd();
    }

    /// Adds a file the child writes itself into (the clone3 fallback's `cgroup.procs`).
    pub(super) fn also_enter(&mut self, procs: BorrowedFd<'p>) {
        self.procs.push(procs.as_raw_fd());
    }
}

/// One view step as the child's C data.
fn fs_op(step: &FsStep) -> FsOp {
    let op = |kind, path: &std::ffi::CString| FsOp {
        kind,
        path: path.as_ptr(),
        index: 0,
    };
    match step {
        FsStep::PrivateTmpfs(p) => op(FsOpKind::PrivateTmpfs, p),
        FsStep::MakeDir(p) => op(FsOpKind::MakeDir, p),
        FsStep::MakeFile(p) => op(FsOpKind::MakeFile, p),
        FsStep::Attach(i) => FsOp {
            kind: FsOpKind::Attach,
            path: std::ptr::null(),
            index: *i,
        },
        FsStep::Home(p) => op(FsOpKind::Home, p),
        FsStep::HideDir(p) => op(FsOpKind::HideDir, p),
        FsStep::HideFile(p) => op(FsOpKind::HideFile, p),
    }
}
