//! All of corral's unsafe code (the crate denies `unsafe_code` everywhere else).
//!
//! Unsafe functions, each callable only in the freshly cloned or forked child, between
//! clone and exec ("the child" below):
//!
//! * [`child_main`]: runs [`CHECKLIST`], then exits;
//! * [`child_fail`]: reports a failed step's stage and errno, then `_exit(127)`;
//! * the steps of [`CHECKLIST`]: [`reset_signals`], [`set_parent_death_signal`],
//!   [`enter_cgroup`], [`enter_mount_namespace`], [`contain`], [`clone_writable_paths`],
//!   [`make_read_only`], [`build_fs_view`], [`mount_owned_dirs`], [`add_write_rules`],
//!   [`isolate_network`],
//!   [`mount_proc`], [`drop_capabilities`], [`set_rlimits`], [`disable_core_dumps`],
//!   [`new_session`], [`setup_stdio`], [`change_directory`], [`wait_gate`],
//!   [`set_identity`], [`start_init`], [`set_no_new_privs`], [`restrict_writes`],
//!   and for a rootless run's user namespace [`wait_user_maps`] and
//!   [`drop_namespace_capabilities`],
//!   [`install_syscall_filter`], [`exec`];
//! * [`run_init`]: the pid namespace's mini-init, which [`start_init`] becomes.
//!
//! Safe functions with an unsafe block inside, for the parent:
//!
//! * [`clone_into_cgroup`]: `clone3(CLONE_INTO_CGROUP | CLONE_PIDFD)`, the child runs
//!   [`child_main`];
//! * [`clone_new_pid_ns`]: `clone3(CLONE_NEWPID | CLONE_PIDFD)` without a cgroup (v1,
//!   rlimit), the child runs [`child_main`];
//! * [`fork_child`]: the `fork` fallback, the child runs [`child_main`];
//! * [`clone3_available`]: a clone3 probe that creates nothing;
//! * [`seccomp_filter_available`]: a seccomp probe that installs nothing;
//! * [`mount_setattr_available`]: a `mount_setattr` probe that changes nothing;
//! * [`fork_single_threaded`]: a plain fork for the single-threaded crash guard;
//! * [`wait4`]: reaps a child with its resource usage;
//! * [`watch_fd`]: registers an owned fd with tokio;
//! * [`user_namespace`]: a user namespace with given id maps, for an id-mapped mount;
//! * [`idmapped_tree`]: a detached, id-mapped copy of a directory's mount;
//! * [`kill_all_of`]: ends every process of a dynamic uid;
//! * [`user_namespace_probe`]: whether this (unprivileged) process can make a user
//!   namespace, and mount a fresh `/proc` in it.
//! * [`get_project`], [`set_project`]: a file's project id and inherit flag
//!   (`FS_IOC_FSGETXATTR` / `FS_IOC_FSSETXATTR`), for `--disk`'s project quota;
//! * [`get_project_quota`], [`set_project_quota`]: a project's usage and block limit
//!   (`quotactl_fd(Q_GETQUOTA / Q_SETQUOTA, PRJQUOTA)`).
//!
//! The child of a multi-threaded process may only make async-signal-safe calls: no
//! allocation, no locks, no panics. Every step reads only the [`ChildPlan`] the parent
//! laid out and makes raw syscalls; a step returns the errno it failed with, and
//! [`child_main`] reports it with the step's [`Stage`].

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::plan::{ChildPlan, FsOpKind};
use super::{Stage, CLONE_INTO_CGROUP, CLONE_PIDFD, DROPPED_CAPABILITIES};

/// One step of the child's setup: `Err` carries the errno it failed with.
type Step = unsafe fn(&ChildPlan<'_>) -> Result<(), i32>;

/// What the child does between clone and exec, in this order, each step with the
/// stage a failure reports. Adding a step is one line here and one function below.
const CHECKLIST: &[(Stage, Step)] = &[
    (Stage::Setup, reset_signals),
    (Stage::Setup, set_parent_death_signal),
    (Stage::UserNamespace, wait_user_maps),
    (Stage::Cgroup, enter_cgroup),
    (Stage::Setup, enter_mount_namespace),
    (Stage::Setup, contain),
    (Stage::Files, clone_writable_paths),
    (Stage::Files, make_read_only),
    (Stage::Files, build_fs_view),
    (Stage::User, mount_owned_dirs),
    (Stage::Landlock, add_write_rules),
    (Stage::Network, isolate_network),
    (Stage::Setup, mount_proc),
    (Stage::Setup, drop_capabilities),
    (Stage::Rlimit, set_rlimits),
    (Stage::Rlimit, disable_core_dumps),
    (Stage::Setup, new_session),
    (Stage::Stdio, setup_stdio),
    (Stage::Chdir, change_directory),
    (Stage::Gate, wait_gate),
    (Stage::User, set_identity),
    (Stage::UserNamespace, drop_namespace_capabilities),
    (Stage::Setup, start_init),
    (Stage::Setup, set_no_new_privs),
    (Stage::Landlock, restrict_writes),
    (Stage::Filter, install_syscall_filter),
    (Stage::Exec, exec),
];

/// The child between clone and exec: the checklist, top to bottom.
///
/// # Safety
/// Must only run in a freshly cloned/forked child, with a `plan` prepared by the
/// parent before the clone. It allocates nothing and never returns.
unsafe fn child_main(plan: &ChildPlan<'_>) -> ! {
    for &(stage, step) in CHECKLIST {
        // SAFETY: we are the child (this function's contract), the step's only one.
        if let Err(errno) = unsafe { step(plan) } {
            // SAFETY: as above.
            unsafe { child_fail(plan, stage, errno) }
        }
    }
    // `exec` returns only with an error; nothing runs after a successful exec.
    // SAFETY: _exit is async-signal-safe and ends the child.
    unsafe { libc::_exit(127) }
}

/// Writes `stage` and `errno` to the error pipe and exits with 127.
///
/// # Safety
/// Only in the child: async-signal-safe calls only.
unsafe fn child_fail(plan: &ChildPlan<'_>, stage: Stage, errno: i32) -> ! {
    let e = errno.to_ne_bytes();
    let buf = [stage.code(), e[0], e[1], e[2], e[3]];
    // SAFETY: `buf` is valid for reads of its length; `err_tx` is the pipe's open
    // write end. A failed write leaves the parent with EOF and status 127.
    unsafe {
        libc::write(plan.err_tx, buf.as_ptr().cast(), buf.len());
        libc::_exit(127)
    }
}

/// The errno of the last failed call (reads errno; allocates nothing).
fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// `Ok` when a libc call returned 0, else the errno.
fn check(ret: libc::c_int) -> Result<(), i32> {
    if ret == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

/// Rust ignores SIGPIPE and tokio may have handlers and masks: gives the command the
/// defaults a shell would. Cannot fail.
///
/// # Safety
/// Only in the child.
unsafe fn reset_signals(_plan: &ChildPlan<'_>) -> Result<(), i32> {
    // SAFETY: an all-zero sigset_t is valid storage for sigemptyset, which fills it;
    // sigprocmask and signal are async-signal-safe and read only that set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    Ok(())
}

/// `PR_SET_PDEATHSIG`; exits at once if the supervisor died before it took effect.
///
/// # Safety
/// Only in the child.
unsafe fn set_parent_death_signal(plan: &ChildPlan<'_>) -> Result<(), i32> {
    if plan.pdeathsig == 0 {
        return Ok(());
    }
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes plain integers.
    check(unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            plan.pdeathsig as libc::c_ulong,
            0,
            0,
            0,
        )
    })?;
    if plan.pid_ns {
        // The parent is outside the child's pid namespace (getppid answers 0): ask the
        // error pipe instead, whose read end closes with the supervisor (POLLERR).
        let mut p = libc::pollfd {
            fd: plan.err_tx,
            events: 0,
            revents: 0,
        };
        // SAFETY: `p` is one valid pollfd for the call; poll is async-signal-safe;
        // _exit ends the child.
        unsafe {
            if libc::poll(&mut p, 1, 0) == 1 && p.revents & (libc::POLLERR | libc::POLLHUP) != 0 {
                libc::_exit(127);
            }
        }
        return Ok(());
    }
    // SAFETY: getppid cannot fail; _exit ends the child.
    unsafe {
        if libc::getppid() != plan.parent_pid {
            libc::_exit(127);
        }
    }
    Ok(())
}

/// Writes "0" (the writer itself) into each `cgroup.procs`/`tasks` of the plan. Into a
/// v1 `tasks` file it moves just this (only) thread, which spares the kernel the global
/// threadgroup rwsem and its RCU grace period (~8-20 ms per run measured on 6.18); into
/// a v2 `cgroup.procs` it moves the process.
///
/// # Safety
/// Only in the child.
unsafe fn enter_cgroup(plan: &ChildPlan<'_>) -> Result<(), i32> {
    for &fd in &plan.procs {
        // SAFETY: the literal is valid for reads of 1 byte; `fd` is open (borrowed by
        // the plan).
        if unsafe { libc::write(fd, c"0".as_ptr().cast(), 1) } < 0 {
            return Err(errno());
        }
    }
    Ok(())
}

/// A new mount namespace (and cgroup namespace, now that the child is in its cgroup,
/// so it is rooted there) whose mounts no longer propagate back to the host, when any
/// layer needs one ([`ChildPlan::unshare_flags`]): the cgroup containment, the file
/// system view, the pid namespace's `/proc`. The layers' own mounts follow.
///
/// # Safety
/// Only in the child.
unsafe fn enter_mount_namespace(plan: &ChildPlan<'_>) -> Result<(), i32> {
    if plan.unshare_flags == 0 {
        return Ok(());
    }
    // SAFETY: unshare takes flags only.
    check(unsafe { libc::unshare(plan.unshare_flags) })?;
    // Keep our mount changes private to this namespace.
    // SAFETY: null source, type and data are allowed for a propagation change; the
    // target is a static C string.
    check(unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        )
    })
}

/// Containment (root only), in the namespace of [`enter_mount_namespace`]: a fresh
/// cgroup2 mount or read-only cgroup file systems.
///
/// # Safety
/// Only in the child.
unsafe fn contain(plan: &ChildPlan<'_>) -> Result<(), i32> {
    let nodev = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    if !plan.cgroup2_mount.is_null() {
        let fs = c"cgroup2".as_ptr();
        // The same cgroup2 superblock cannot be mounted twice on one mount point:
        // detach this namespace's copy of the host mount first.
        // SAFETY: `cgroup2_mount` is a NUL-terminated string of the plan's Containment;
        // `fs` is a static C string.
        check(unsafe {
            libc::umount2(plan.cgroup2_mount, libc::MNT_DETACH);
            libc::mount(
                fs,
                plan.cgroup2_mount,
                fs,
                nodev | libc::MS_RELATIME,
                std::ptr::null(),
            )
        })?;
    }
    for &m in &plan.readonly {
        let flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | nodev;
        // SAFETY: `m` is a NUL-terminated string of the plan's Containment; null
        // source, type and data are allowed for a remount.
        check(unsafe {
            libc::mount(
                std::ptr::null(),
                m,
                std::ptr::null(),
                flags,
                std::ptr::null(),
            )
        })?;
    }
    Ok(())
}

/// A rootless run's user namespace (the child is born in it with `CLONE_NEWUSER`):
/// blocks until the parent has written its `setgroups` ("deny"), `uid_map` and
/// `gid_map` (the run's own uid and gid, mapped to themselves) and sends a byte; EOF
/// (the parent gave up) fails with ECANCELED. Before any step that needs the
/// capabilities the child has in its namespace, or its ids mapped.
///
/// # Safety
/// Only in the child.
unsafe fn wait_user_maps(plan: &ChildPlan<'_>) -> Result<(), i32> {
    if plan.userns_gate < 0 {
        return Ok(());
    }
    // SAFETY: as in wait_gate: the same blocking read of one byte on an open fd.
    unsafe { read_gate(plan.userns_gate) }
}

/// A rootless run's user namespace gave the child every capability in it: they all
/// go before the command runs. Every capability leaves the bounding set (so no exec
/// can regain one), the ambient set is cleared, and `capset` empties the effective,
/// permitted and inheritable sets (exec would, for a non-zero uid, but the mini-init
/// keeps running without exec). After the privileged steps and the gate.
///
/// # Safety
/// Only in the child.
unsafe fn drop_namespace_capabilities(plan: &ChildPlan<'_>) -> Result<(), i32> {
    if !plan.user_ns {
        return Ok(());
    }
    // SAFETY: we are the child (this function's contract).
    unsafe {
        drop_bounding_and_ambient(plan)?;
        clear_capability_sets()
    }
}

/// Empties the bounding set (0..=`cap_last_cap`: no exec can give a capability back)
/// and the ambient set. Needs `CAP_SETPCAP`: before the ids change.
///
/// # Safety
/// Only in the child.
unsafe fn drop_bounding_and_ambient(plan: &ChildPlan<'_>) -> Result<(), i32> {
    for cap in 0..=plan.cap_last_cap {
        // SAFETY: prctl(PR_CAPBSET_DROP) takes plain integers.
        check(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) })?;
    }
    // SAFETY: prctl(PR_CAP_AMBIENT) takes plain integers.
    let r = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    // Kernels before 4.3 have no ambient set (EINVAL): nothing to clear.
    if r != 0 && errno() != libc::EINVAL {
        return Err(errno());
    }
    Ok(())
}

/// Empties the effective, permitted and inheritable sets with `capset`.
///
/// # Safety
/// Only in the child.
unsafe fn clear_capability_sets() -> Result<(), i32> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let none = [CapData::default(); 2];
    // SAFETY: `header` and `none` are the version-3 structures capset reads (two data
    // entries), valid for the call.
    let set = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            none.as_ptr(),
        )
    };
    check(set as libc::c_int)
}

/// Reads one byte from `fd`: `Ok` on a byte, ECANCELED on EOF, else the errno.
///
/// # Safety
/// Only in the child; `fd` must be open.
unsafe fn read_gate(fd: libc::c_int) -> Result<(), i32> {
    loop {
        let mut b = 0u8;
        // SAFETY: `b` is valid for a write of 1 byte; `fd` is open (this function's
        // contract).
        let n = unsafe { libc::read(fd, (&mut b as *mut u8).cast(), 1) };
        match n {
            1 => return Ok(()),
            0 => return Err(libc::ECANCELED),
            _ => match errno() {
                libc::EINTR => continue,
                e => return Err(e),
            },
        }
    }
}

/// Moves each detached, id-mapped mount tree the parent prepared over its directory
/// (the working directory, `--rw` paths), in the run's own mount namespace: the run
/// then sees the directory's owner as itself, and what it creates there belongs to
/// that owner on disk. Needs `CAP_SYS_ADMIN`: before [`drop_capabilities`].
///
/// # Safety
/// Only in the child.
unsafe fn mount_owned_dirs(plan: &ChildPlan<'_>) -> Result<(), i32> {
    for &(tree, target) in &plan.owned_trees {
        // SAFETY: `tree` is an open detached mount fd (borrowed by the plan), the
        // empty path is a static C string and `target` a NUL-terminated string of the
        // plan's ChildSetup; move_mount only reads them.
        let r = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                tree,
                c"".as_ptr(),
                libc::AT_FDCWD,
                target,
                MOVE_MOUNT_F_EMPTY_PATH,
            )
        };
        check(r as libc::c_int)?;
    }
    Ok(())
}

/// `OPEN_TREE_CLONE` of open_tree(2): a detached copy of the mount (tree).
const OPEN_TREE_CLONE: libc::c_uint = 1;
/// `MOVE_MOUNT_F_EMPTY_PATH` of move_mount(2): the source is the fd itself.
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
/// `MOUNT_ATTR_RDONLY` of mount_setattr(2).
const MOUNT_ATTR_RDONLY: u64 = 1;

/// `struct mount_attr` of mount_setattr(2) (`MOUNT_ATTR_SIZE_VER0`, 32 bytes).
#[repr(C)]
#[derive(Default)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `mkdir` that accepts an existing directory.
///
/// # Safety
/// `path` must be a NUL-terminated string; only in the child.
unsafe fn make_dir(path: *const libc::c_char, mode: libc::mode_t) -> Result<(), i32> {
    // SAFETY: `path` is NUL-terminated (this function's contract).
    if unsafe { libc::mkdir(path, mode) } == 0 {
        return Ok(());
    }
    match errno() {
        libc::EEXIST => Ok(()),
        e => Err(e),
    }
}

/// The file-system view, first part: a detached clone of each path that stays
/// writable (`open_tree(OPEN_TREE_CLONE | AT_RECURSIVE)`), taken before
/// [`make_read_only`], so each clone keeps its mounts' own flags (a mount that was
/// read-only on the host stays so) and is attached back by [`build_fs_view`].
///
/// # Safety
/// Only in the child.
unsafe fn clone_writable_paths(plan: &ChildPlan<'_>) -> Result<(), i32> {
    for (path, tree) in plan.fs_writable.iter().zip(&plan.fs_trees) {
        let flags =
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_RECURSIVE as libc::c_uint;
        // SAFETY: `path` is a NUL-terminated string of the plan's FsView; open_tree
        // only reads it and returns a new fd (close-on-exec).
        let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, *path, flags) };
        if fd < 0 {
            return Err(errno());
        }
        tree.set(fd as libc::c_int);
    }
    Ok(())
}

/// Becomes the run's user, after every privileged step and the gate: drops every
/// capability from the bounding set (so no exec can regain one, setuid-root included),
/// clears the ambient set, then `setgroups`, `setresgid`, `setresuid` (raw system
/// calls: glibc's wrappers would try to signal the parent's other threads). Leaving
/// uid 0 empties the other sets; for `--user root` they are emptied with `capset`. A
/// change of credentials clears the parent-death signal: it is set again.
///
/// # Safety
/// Only in the child.
unsafe fn set_identity(plan: &ChildPlan<'_>) -> Result<(), i32> {
    let Some(id) = &plan.identity else {
        return Ok(());
    };
    // SAFETY: we are the child (this function's contract).
    unsafe { drop_bounding_and_ambient(plan) }?;
    // SAFETY: `groups` is a slice of the plan valid for reads of its length; the id
    // calls take plain integers.
    unsafe {
        check(
            libc::syscall(libc::SYS_setgroups, id.groups.len(), id.groups.as_ptr()) as libc::c_int,
        )?;
        check(libc::syscall(libc::SYS_setresgid, id.gid, id.gid, id.gid) as libc::c_int)?;
        check(libc::syscall(libc::SYS_setresuid, id.uid, id.uid, id.uid) as libc::c_int)?;
    }
    if id.uid == 0 {
        // SAFETY: we are the child (this function's contract).
        unsafe { clear_capability_sets() }?;
    }
    // SAFETY: as in set_parent_death_signal.
    unsafe { set_parent_death_signal(plan) }
}

/// The file-system view, second part: every mount of the run's namespace read-only
/// in one call (`mount_setattr("/", AT_RECURSIVE, MOUNT_ATTR_RDONLY)`, Linux 5.12),
/// cheaper than remounting each mount of `/proc/self/mountinfo`. Only the mount flag
/// changes: the host's mounts (other namespaces) stay as they are.
///
/// # Safety
/// Only in the child.
unsafe fn make_read_only(plan: &ChildPlan<'_>) -> Result<(), i32> {
    if !plan.fs_read_only {
        return Ok(());
    }
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        ..Default::default()
    };
    // SAFETY: the path is a static C string; `attr` is a valid mount_attr of the size
    // passed, only read by the kernel.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c"/".as_ptr(),
            libc::AT_RECURSIVE as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    check(ret as libc::c_int)
}

/// The file-system view, last part: the plan's steps in order (private tmpfs mounts
/// on `/tmp` and `/dev/shm`, mount points in them, the writable clones attached back,
/// `HOME`, the hidden paths). Runs before [`drop_capabilities`].
///
/// # Safety
/// Only in the child.
unsafe fn build_fs_view(plan: &ChildPlan<'_>) -> Result<(), i32> {
    if plan.fs_ops.is_empty() {
        return Ok(());
    }
    // The modes below exactly (mount points 0755, HOME 0700), whatever corral's umask:
    // another identity must be able to reach its working directory in the private /tmp.
    // SAFETY: umask takes and returns a mode only.
    let umask = unsafe { libc::umask(0) };
    // SAFETY: we are the child (this function's contract).
    let result = unsafe { fs_view_steps(plan) };
    // SAFETY: as above; the command gets corral's umask back.
    unsafe { libc::umask(umask) };
    result
}

/// The steps of [`build_fs_view`].
///
/// # Safety
/// Only in the child.
unsafe fn fs_view_steps(plan: &ChildPlan<'_>) -> Result<(), i32> {
    let tmpfs = c"tmpfs".as_ptr();
    let null = std::ptr::null::<libc::c_char>();
    for op in &plan.fs_ops {
        let p = op.path;
        // SAFETY (each arm): `p` is a NUL-terminated string of the plan's FsView
        // (null only for Attach, which uses the writable path); every other pointer
        // is a static C string or null where the call allows it.
        match op.kind {
            // SAFETY: as above; the data is a static C string the kernel only reads.
            FsOpKind::PrivateTmpfs => check(unsafe {
                libc::mount(
                    tmpfs,
                    p,
                    tmpfs,
                    libc::MS_NOSUID | libc::MS_NODEV,
                    c"mode=1777".as_ptr().cast(),
                )
            })?,
            // SAFETY: as above.
            FsOpKind::MakeDir => unsafe { make_dir(p, 0o755) }?,
            FsOpKind::MakeFile => {
                // SAFETY: as above; the fd is closed at once.
                let fd = unsafe {
                    libc::open(
                        p,
                        libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                        0o644,
                    )
                };
                if fd < 0 {
                    return Err(errno());
                }
                // SAFETY: `fd` was opened above and is ours.
                unsafe { libc::close(fd) };
            }
            FsOpKind::Attach => {
                let (Some(&path), Some(tree)) =
                    (plan.fs_writable.get(op.index), plan.fs_trees.get(op.index))
                else {
                    return Err(libc::EINVAL);
                };
                let fd = tree.replace(-1);
                // SAFETY: `fd` is the detached tree open_tree returned for `path` (a
                // NUL-terminated string of the plan); the empty path is a static C
                // string. The fd is closed after, on every path.
                let ret = unsafe {
                    let r = libc::syscall(
                        libc::SYS_move_mount,
                        fd,
                        c"".as_ptr(),
                        libc::AT_FDCWD,
                        path,
                        MOVE_MOUNT_F_EMPTY_PATH,
                    );
                    libc::close(fd);
                    r
                };
                check(ret as libc::c_int)?;
            }
            FsOpKind::Home => {
                // SAFETY: as above.
                unsafe { make_dir(p, 0o700) }?;
                if let Some((uid, gid)) = plan.fs_home_owner {
                    // SAFETY: as above.
                    check(unsafe { libc::chown(p, uid, gid) })?;
                }
            }
            // SAFETY: as above; the data is a static C string the kernel only reads.
            FsOpKind::HideDir => check(unsafe {
                libc::mount(
                    tmpfs,
                    p,
                    tmpfs,
                    libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    c"mode=755".as_ptr().cast(),
                )
            })?,
            FsOpKind::HideFile => {
                let ro = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY;
                // SAFETY: as above; a bind of the device node, then a read-only remount
                // of that bind (null type and data are allowed for both).
                check(unsafe {
                    libc::mount(c"/dev/null".as_ptr(), p, null, libc::MS_BIND, null.cast())
                })?;
                // SAFETY: as above.
                check(unsafe {
                    libc::mount(
                        null,
                        p,
                        null,
                        ro | libc::MS_NOSUID | libc::MS_NOEXEC,
                        null.cast(),
                    )
                })?;
            }
        }
    }
    Ok(())
}

/// The part of `struct ifreq` that `SIOCGIFFLAGS`/`SIOCSIFFLAGS` use: the interface
/// name and its flags, padded to the kernel's size of the whole union (40 bytes).
#[repr(C)]
struct IfFlagsRequest {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

const _: () = assert!(std::mem::size_of::<IfFlagsRequest>() == std::mem::size_of::<libc::ifreq>());

/// A new network namespace with its loopback interface up, when the plan asks
/// (`--network none`): the run then reaches nothing outside itself, not even the
/// host's `127.0.0.1`, while its own processes still talk over loopback (a notebook's
/// kernel and its client). Needs `CAP_SYS_ADMIN` (and `CAP_NET_ADMIN` for `lo`),
/// checked by the parent before it asks; runs before [`drop_capabilities`].
///
/// A step rather than `CLONE_NEWNET` in clone3's flags: `lo` must be brought up from
/// inside the namespace anyway, and the fork fallback needs the `unshare` too, so one
/// step serves both paths; the namespace costs the same either way.
///
/// # Safety
/// Only in the child.
unsafe fn isolate_network(plan: &ChildPlan<'_>) -> Result<(), i32> {
    if !plan.new_network {
        return Ok(());
    }
    // SAFETY: unshare takes flags only.
    check(unsafe { libc::unshare(libc::CLONE_NEWNET) })?;
    // SAFETY: socket takes plain integers; the fd is closed below on every path.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(errno());
    }
    let mut req = IfFlagsRequest {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    req.name[..2].copy_from_slice(b"lo");
    // SAFETY: `req` is a valid, NUL-terminated interface request of the kernel's size,
    // valid for reads and writes for each call; `sock` is the socket opened above.
    let ret = unsafe {
        let mut r = libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req as *mut IfFlagsRequest);
        if r == 0 {
            req.flags |= libc::IFF_UP as libc::c_short;
            r = libc::ioctl(sock, libc::SIOCSIFFLAGS, &mut req as *mut IfFlagsRequest);
        }
        r
    };
    let result = check(ret);
    // SAFETY: `sock` is open and owned by this step.
    unsafe { libc::close(sock) };
    result
}

/// A fresh procfs on `/proc` when the child is pid 1 of its own pid namespace, in the
/// mount namespace of [`enter_mount_namespace`]: `/proc` then lists only the run's
/// processes. The host's `/proc` (and its submounts) is detached first, so nothing of
/// it is left underneath. `nosuid,nodev,noexec`, as systemd and Docker mount it. Needs
/// `CAP_SYS_ADMIN`: runs before [`drop_capabilities`]. In a rootless run's user
/// namespace the host's `/proc` is a locked mount: the detach fails (`EINVAL`) and the
/// fresh procfs is mounted over it, which hides it just as well (the kernel allows
/// that mount only where nothing of the host's `/proc` is over-mounted: the parent's
/// probe checked, see [`user_namespace_probe`]).
///
/// # Safety
/// Only in the child.
unsafe fn mount_proc(plan: &ChildPlan<'_>) -> Result<(), i32> {
    if !plan.pid_ns {
        return Ok(());
    }
    // Never outside a private mount namespace: the detach below would take the host's
    // /proc away.
    if plan.unshare_flags & libc::CLONE_NEWNS == 0 {
        return Err(libc::EINVAL);
    }
    let proc_ = c"proc".as_ptr();
    // SAFETY: static C strings; a null data pointer is allowed. A failed detach (no
    // mount on /proc) leaves the directory for the mount below.
    check(unsafe {
        libc::umount2(c"/proc".as_ptr(), libc::MNT_DETACH);
        libc::mount(
            proc_,
            c"/proc".as_ptr(),
            proc_,
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        )
    })
}

/// `struct __user_cap_header_struct` of capget(2)/capset(2).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// One half of `struct __user_cap_data_struct[2]` (capabilities 0-31, 32-63).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit capability sets.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Drops [`DROPPED_CAPABILITIES`] when contained. Last of the privileged steps: the
/// mounts of [`contain`] needed CAP_SYS_ADMIN. Out of the bounding set, exec cannot
/// give them back to root; out of the other sets, this process has lost them already.
///
/// # Safety
/// Only in the child.
unsafe fn drop_capabilities(plan: &ChildPlan<'_>) -> Result<(), i32> {
    if !plan.drop_caps {
        return Ok(());
    }
    for &cap in &DROPPED_CAPABILITIES {
        // SAFETY: prctl(PR_CAPBSET_DROP) takes plain integers.
        check(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) })?;
    }
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: `header` and `data` are the version-3 structures capget writes (two data
    // entries), valid for writes for the call.
    let got = unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut header as *mut CapHeader,
            data.as_mut_ptr(),
        )
    };
    check(got as libc::c_int)?;
    for &cap in &DROPPED_CAPABILITIES {
        let d = &mut data[(cap / 32) as usize];
        let keep = !(1u32 << (cap % 32));
        d.effective &= keep;
        d.permitted &= keep;
        d.inheritable &= keep;
    }
    // SAFETY: as for capget; capset only reads them.
    let set = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    check(set as libc::c_int)
}

/// `setrlimit` for each limit of the plan.
///
/// # Safety
/// Only in the child.
unsafe fn set_rlimits(plan: &ChildPlan<'_>) -> Result<(), i32> {
    for r in &plan.rlimits {
        let lim = libc::rlimit {
            rlim_cur: r.soft,
            rlim_max: r.hard,
        };
        // SAFETY: `lim` is valid for reads for the call.
        check(unsafe { libc::setrlimit(r.resource, &lim) })?;
    }
    Ok(())
}

/// `RLIMIT_CORE` 0 (soft and hard) when the plan asks: no core dumps.
///
/// # Safety
/// Only in the child.
unsafe fn disable_core_dumps(plan: &ChildPlan<'_>) -> Result<(), i32> {
    if !plan.no_core_dumps {
        return Ok(());
    }
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `zero` is valid for reads for the call.
    check(unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) })
}

/// `setsid()` when the plan asks: a new session without a controlling terminal (no
/// `TIOCSTI` into corral's terminal), led by the child, which also makes it the leader
/// of a new process group (pgid = its pid: the rlimit backend's group kill).
///
/// # Safety
/// Only in the child.
unsafe fn new_session(plan: &ChildPlan<'_>) -> Result<(), i32> {
    if !plan.new_session {
        return Ok(());
    }
    // SAFETY: setsid takes no arguments; a freshly cloned child is never a process
    // group leader, so it cannot fail with EPERM.
    if unsafe { libc::setsid() } < 0 {
        return Err(errno());
    }
    Ok(())
}

/// `dup2` of each given source onto fd 0, 1, 2 (sources are ≥ 3, so none clobbers
/// another; the copies are not close-on-exec).
///
/// # Safety
/// Only in the child.
unsafe fn setup_stdio(plan: &ChildPlan<'_>) -> Result<(), i32> {
    for (target, &src) in plan.stdio.iter().enumerate() {
        // SAFETY: dup2 takes fd numbers; `src` is open (owned by the parent's spawn).
        if src >= 0 && unsafe { libc::dup2(src, target as libc::c_int) } < 0 {
            return Err(errno());
        }
    }
    Ok(())
}

/// `chdir` to the plan's working directory, if any.
///
/// # Safety
/// Only in the child.
unsafe fn change_directory(plan: &ChildPlan<'_>) -> Result<(), i32> {
    if plan.cwd.is_null() {
        return Ok(());
    }
    // SAFETY: `cwd` is a NUL-terminated string of the plan's Exec.
    check(unsafe { libc::chdir(plan.cwd) })
}

/// Blocks on the gate until the parent writes a byte; EOF (the parent gave up) fails
/// with ECANCELED.
///
/// # Safety
/// Only in the child.
unsafe fn wait_gate(plan: &ChildPlan<'_>) -> Result<(), i32> {
    if plan.gate < 0 {
        return Ok(());
    }
    let mut b = 0u8;
    loop {
        // SAFETY: `b` is valid for a 1-byte write; `gate` is open (borrowed by the plan).
        let n = unsafe { libc::read(plan.gate, (&mut b as *mut u8).cast(), 1) };
        match n {
            1 => return Ok(()),
            0 => return Err(libc::ECANCELED),
            _ => match errno() {
                libc::EINTR => continue,
                e => return Err(e),
            },
        }
    }
}

/// The signals the mini-init passes on to the command: every signal whose default
/// action a pid namespace's init would otherwise lose (the kernel drops signals an init
/// has no handler for), except those the kernel itself sends to faults.
const FORWARDED: [libc::c_int; 12] = [
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGALRM,
    libc::SIGTERM,
    libc::SIGCONT,
    libc::SIGTSTP,
    libc::SIGTTIN,
    libc::SIGTTOU,
    libc::SIGWINCH,
];

/// The handler the mini-init installs for [`FORWARDED`]: never runs (the signals stay
/// blocked and are taken with `sigwaitinfo`), but without a handler the kernel would
/// discard them before they reach a pid namespace's init.
extern "C" fn ignore_signal(_sig: libc::c_int) {}

/// In a new pid namespace the child is its pid 1, which the kernel treats as an init:
/// it must reap orphans, and signals it has no handler for never reach it. So the child
/// forks here: the new process (pid 2) continues the checklist and becomes the command;
/// the child becomes [`run_init`]. The signals the init waits for are blocked before
/// the fork, so none is lost before it waits; the command gets the mask back.
///
/// A raw `clone(SIGCHLD)` rather than glibc's `fork`, whose atfork handlers take locks
/// another thread of the parent may have held at the clone.
///
/// # Safety
/// Only in the child.
unsafe fn start_init(plan: &ChildPlan<'_>) -> Result<(), i32> {
    if !plan.pid_ns {
        return Ok(());
    }
    // SAFETY: all-zero sigset_t values are valid storage that sigemptyset fills;
    // sigaddset, sigprocmask and the raw clone are async-signal-safe. clone without
    // CLONE_VM or a new stack duplicates this single-threaded process like fork: the
    // new process continues on its copy of this stack.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in FORWARDED {
            libc::sigaddset(&mut set, s);
        }
        libc::sigaddset(&mut set, libc::SIGCHLD);
        libc::sigprocmask(libc::SIG_BLOCK, &set, &mut old);
        let pid = libc::syscall(
            libc::SYS_clone,
            libc::SIGCHLD as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        );
        if pid == 0 {
            libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            return Ok(());
        }
        if pid < 0 {
            let e = errno();
            libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            return Err(e);
        }
        run_init(plan, pid as libc::pid_t, &set)
    }
}

/// Closes every fd but `keep` (`close_range`, Linux 5.9; else one by one up to the
/// fd limit).
///
/// # Safety
/// Only in the child.
unsafe fn close_all_but(keep: libc::c_int) {
    let keep = keep as libc::c_uint;
    // SAFETY: close_range and close take plain integers; nothing in this process uses
    // the closed fds afterwards.
    unsafe {
        let low = if keep == 0 {
            0
        } else {
            libc::syscall(
                libc::SYS_close_range,
                0 as libc::c_uint,
                keep - 1,
                0 as libc::c_uint,
            )
        };
        let high = libc::syscall(
            libc::SYS_close_range,
            keep + 1,
            libc::c_uint::MAX,
            0 as libc::c_uint,
        );
        if low != 0 || high != 0 {
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
            let top = lim.rlim_cur.min(1 << 20) as libc::c_int;
            for fd in 0..top {
                if fd != keep as libc::c_int {
                    libc::close(fd);
                }
            }
        }
    }
}

/// How many processes besides the caller (pid 1) its pid namespace has: the numbered
/// entries of its own `/proc` ([`mount_proc`]).
///
/// # Safety
/// Only in the child.
unsafe fn count_others() -> u32 {
    // SAFETY: a static C string; the fd is closed below.
    let fd = unsafe {
        libc::open(
            c"/proc".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return 0;
    }
    let mut buf = [0u8; 4096];
    let mut n = 0u32;
    loop {
        // SAFETY: `buf` is valid for writes of its length; the kernel fills it with
        // whole `linux_dirent64` records.
        let got = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                fd,
                buf.as_mut_ptr(),
                buf.len() as libc::c_uint,
            )
        };
        if got <= 0 {
            break;
        }
        let got = got as usize;
        let mut off = 0;
        // linux_dirent64: d_ino (8), d_off (8), d_reclen (2), d_type (1), d_name.
        while off + 19 < got {
            let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
            if reclen == 0 {
                break;
            }
            let name = &buf[off + 19..(off + reclen).min(got)];
            let len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
            let name = &name[..len];
            if !name.is_empty() && name.iter().all(u8::is_ascii_digit) && name != b"1" {
                n += 1;
            }
            off += reclen;
        }
    }
    // SAFETY: `fd` is open and owned here.
    unsafe { libc::close(fd) };
    n
}

/// The mini-init, pid 1 of the run's pid namespace, `main` (pid 2) being the command.
/// It closes every fd except the status pipe (so the error pipe reports the command's
/// exec and captured output sees EOF when the command ends), then waits for signals:
/// SIGTERM goes on to every process of the namespace (the supervisor ends a run with a
/// pid namespace by sending SIGTERM to its init alone, so each process gets it once),
/// each other signal of [`FORWARDED`] to `main`; on SIGCHLD it reaps every child. When `main`
/// has ended it writes `main`'s raw wait status (4 bytes) and the number of processes
/// still in the namespace (4 bytes) to the status pipe and exits, and the kernel kills
/// those processes. Async-signal-safe calls only.
///
/// # Safety
/// Only in the child, from [`start_init`] with `waited` blocked.
unsafe fn run_init(plan: &ChildPlan<'_>, main: libc::pid_t, waited: &libc::sigset_t) -> ! {
    // SAFETY: all the calls below are async-signal-safe and read only values on this
    // stack and the plan: the name is a static C string; `sa` and `info` are valid
    // all-zero C structs that the calls fill or read; `st` and `buf` are valid for the
    // writes and reads of their lengths.
    unsafe {
        libc::prctl(
            libc::PR_SET_NAME,
            c"corral-init".as_ptr() as libc::c_ulong,
            0,
            0,
            0,
        );
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = ignore_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigemptyset(&mut sa.sa_mask);
        for s in FORWARDED {
            libc::sigaction(s, &sa, std::ptr::null_mut());
        }
        close_all_but(plan.status_tx);
        loop {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let sig = libc::sigwaitinfo(waited, &mut info);
            if sig < 0 {
                continue;
            }
            if sig == libc::SIGTERM {
                // The run is being ended: every process of the namespace gets it once,
                // as corral's own signal to the whole tree would give it (kill(-1)
                // from pid 1 reaches all of its namespace but itself).
                libc::kill(-1, sig);
                continue;
            }
            if sig != libc::SIGCHLD {
                libc::kill(main, sig);
                continue;
            }
            let mut main_status = None;
            loop {
                let mut st: libc::c_int = 0;
                let r = libc::waitpid(-1, &mut st, libc::WNOHANG);
                if r <= 0 {
                    break;
                }
                if r == main {
                    main_status = Some(st);
                }
            }
            if let Some(st) = main_status {
                let left = count_others();
                let s = st.to_ne_bytes();
                let l = left.to_ne_bytes();
                let buf = [s[0], s[1], s[2], s[3], l[0], l[1], l[2], l[3]];
                libc::write(plan.status_tx, buf.as_ptr().cast(), buf.len());
                let code = if libc::WIFEXITED(st) {
                    libc::WEXITSTATUS(st)
                } else {
                    128 + libc::WTERMSIG(st)
                };
                libc::_exit(code);
            }
        }
    }
}

/// `PR_SET_NO_NEW_PRIVS` when the plan asks: exec can no longer grant privileges
/// (setuid and setgid bits, file capabilities), and the filter may be installed without
/// `CAP_SYS_ADMIN`.
///
/// # Safety
/// Only in the child.
unsafe fn set_no_new_privs(plan: &ChildPlan<'_>) -> Result<(), i32> {
    if !plan.no_new_privs {
        return Ok(());
    }
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS) takes plain integers.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })
}

/// `struct landlock_path_beneath_attr` (packed, as the kernel declares it).
#[repr(C, packed)]
struct LandlockPathBeneath {
    allowed_access: u64,
    parent_fd: i32,
}

/// `LANDLOCK_RULE_PATH_BENEATH`.
const LANDLOCK_RULE_PATH_BENEATH: libc::c_int = 1;

/// Adds the rules for the view's writable paths and private tmpfs mounts to the
/// plan's Landlock ruleset, opening each as the run will see it: after every mount of
/// the view (and the id-mapped working directory), and before [`set_identity`], since
/// the run's own user may not be able to reach them by path (a working directory
/// under `/root`).
///
/// # Safety
/// Only in the child.
unsafe fn add_write_rules(plan: &ChildPlan<'_>) -> Result<(), i32> {
    if plan.landlock < 0 {
        return Ok(());
    }
    // The private tmpfs mounts exist only now, in this namespace, and the writable
    // paths are rules on the directories as the run sees them (see spawn/landlock.rs).
    let private = plan.landlock_private.iter().map(|d| (d.as_ptr(), true));
    let writable = plan.fs_writable.iter().map(|&p| (p, false));
    for (path, optional) in private.chain(writable) {
        // SAFETY: `path` is a NUL-terminated string (static, or of the plan's view);
        // open takes flags only.
        let fd = unsafe { libc::open(path, libc::O_PATH | libc::O_CLOEXEC) };
        if fd < 0 {
            match errno() {
                // A private mount this view lacks (a host without /dev/shm).
                libc::ENOENT if optional => continue,
                e => return Err(e),
            }
        }
        // SAFETY: an all-zero stat is valid storage for fstat, which fills it; `fd` is
        // the O_PATH fd opened above (fstat works on those).
        let is_dir = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            libc::fstat(fd, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFDIR
        };
        let attr = LandlockPathBeneath {
            allowed_access: if is_dir {
                plan.landlock_dir_access
            } else {
                plan.landlock_file_access
            },
            parent_fd: fd,
        };
        // SAFETY: `attr` is a valid, packed `struct landlock_path_beneath_attr` for
        // reads during the call; the ruleset fd is open (borrowed by the plan); `fd` is
        // the O_PATH fd opened above, closed right after.
        let ret = unsafe {
            let r = libc::syscall(
                libc::SYS_landlock_add_rule,
                plan.landlock,
                LANDLOCK_RULE_PATH_BENEATH,
                &attr as *const LandlockPathBeneath,
                0u32,
            );
            libc::close(fd);
            r
        };
        check(ret as libc::c_int)?;
    }
    Ok(())
}

/// `landlock_restrict_self` with the plan's ruleset, if any (its rules added by
/// [`add_write_rules`]): from here on the process (and all it starts) may write only
/// beneath the ruleset's paths. After [`set_no_new_privs`], which Landlock requires of
/// a process without `CAP_SYS_ADMIN`.
///
/// # Safety
/// Only in the child.
unsafe fn restrict_writes(plan: &ChildPlan<'_>) -> Result<(), i32> {
    if plan.landlock < 0 {
        return Ok(());
    }
    // SAFETY: landlock_restrict_self takes an fd (open: borrowed by the plan) and flags.
    let ret = unsafe { libc::syscall(libc::SYS_landlock_restrict_self, plan.landlock, 0u32) };
    check(ret as libc::c_int)
}

/// Installs the plan's seccomp program, if any: the last step before exec, so that
/// none of corral's own steps meets it.
///
/// # Safety
/// Only in the child.
unsafe fn install_syscall_filter(plan: &ChildPlan<'_>) -> Result<(), i32> {
    if plan.filter.filter.is_null() {
        return Ok(());
    }
    // SAFETY: `plan.filter` is a valid `struct sock_fprog` whose `filter` points to
    // `len` instructions owned by the plan's SyscallFilter; the kernel only reads it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &plan.filter as *const super::plan::SockFprog,
        )
    };
    check(ret as libc::c_int)
}

/// `execve`: returns only with the errno it failed with.
///
/// # Safety
/// Only in the child.
unsafe fn exec(plan: &ChildPlan<'_>) -> Result<(), i32> {
    // SAFETY: `path` is NUL-terminated and `argv`/`envp` are NULL-terminated arrays of
    // NUL-terminated strings, all owned by the plan's Exec and the plan.
    unsafe { libc::execve(plan.path, plan.argv.as_ptr(), plan.envp.as_ptr()) };
    Err(errno())
}

/// `struct clone_args` of clone3(2).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Starts the child with `clone3(CLONE_INTO_CGROUP | CLONE_PIDFD)` into the cgroup
/// `dir` (with `CLONE_NEWPID` when the plan asks for a pid namespace); returns its pid
/// and pidfd, or the error the kernel refused clone3 with.
pub(super) fn clone_into_cgroup(
    plan: &ChildPlan<'_>,
    dir: BorrowedFd<'_>,
) -> std::io::Result<(i32, OwnedFd)> {
    clone3_child(plan, Some(dir))
}

/// Starts the child with `clone3(CLONE_NEWPID | CLONE_PIDFD)`, pid 1 of a new pid
/// namespace, where there is no cgroup to be born in (v1 joins its groups from the
/// child, the rlimit backend has none); returns its pid (in corral's namespace) and
/// pidfd, or the error the kernel refused clone3 with.
pub(super) fn clone_new_pid_ns(plan: &ChildPlan<'_>) -> std::io::Result<(i32, OwnedFd)> {
    debug_assert!(plan.pid_ns || plan.user_ns);
    clone3_child(plan, None)
}

/// `clone3` with `CLONE_PIDFD`, `CLONE_INTO_CGROUP` for `dir` and `CLONE_NEWPID` when
/// the plan asks; the child runs [`child_main`].
fn clone3_child(
    plan: &ChildPlan<'_>,
    dir: Option<BorrowedFd<'_>>,
) -> std::io::Result<(i32, OwnedFd)> {
    let mut pidfd: libc::c_int = -1;
    let mut flags = CLONE_PIDFD;
    if dir.is_some() {
        flags |= CLONE_INTO_CGROUP;
    }
    if plan.pid_ns {
        flags |= libc::CLONE_NEWPID as u64;
    }
    if plan.user_ns {
        flags |= libc::CLONE_NEWUSER as u64;
    }
    let mut args = CloneArgs {
        flags,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: dir.map_or(0, |d| d.as_raw_fd() as u64),
        ..Default::default()
    };
    // SAFETY: clone3 without CLONE_VM duplicates the process like fork: the child gets
    // a copy of this stack and continues from here with only this thread. It runs
    // `child_main`, which makes only async-signal-safe syscalls on memory prepared
    // above and never returns. `args` is a valid, fully initialised clone_args of the
    // size passed, and `pidfd` is valid for the kernel's write.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if ret == 0 {
        // SAFETY: we are the child of clone3; see child_main's contract.
        unsafe { child_main(plan) }
    }
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned this pidfd to us with the child; nothing else owns it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok((ret as i32, pidfd))
}

/// Starts the child with `fork` (the clone3 fallback); returns its pid.
pub(super) fn fork_child(plan: &ChildPlan<'_>) -> std::io::Result<i32> {
    // SAFETY: fork in a multi-threaded process: the child runs only async-signal-safe
    // code (child_main) and never returns.
    let ret = unsafe { libc::fork() };
    if ret == 0 {
        // SAFETY: we are the forked child; see child_main's contract.
        unsafe { child_main(plan) }
    }
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(ret)
}

/// `MOUNT_ATTR_NOSUID` of mount_setattr(2).
const MOUNT_ATTR_NOSUID: u64 = 0x2;
/// `MOUNT_ATTR_IDMAP` of mount_setattr(2) (Linux 5.12).
const MOUNT_ATTR_IDMAP: u64 = 0x10_0000;

/// A new user namespace whose `uid_map` and `gid_map` are the given lines (written by
/// this process, which must be root in its own namespace): a helper process is cloned
/// into it, blocks on a pipe while the maps are written and its namespace is opened,
/// and exits on the byte that follows, to be reaped here. The namespace lives on in the returned fd.
pub fn user_namespace(uid_map: &str, gid_map: &str) -> std::io::Result<OwnedFd> {
    let (rx, tx) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let mut pidfd: libc::c_int = -1;
    let mut args = CloneArgs {
        flags: CLONE_PIDFD | libc::CLONE_NEWUSER as u64,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    let (rx_raw, tx_raw) = (rx.as_raw_fd(), tx.as_raw_fd());
    // SAFETY: clone3 without CLONE_VM duplicates the process like fork. The child only
    // makes async-signal-safe calls (read on the pipe, _exit) on memory that exists
    // before the clone, and never returns. `args` is a valid, fully initialised
    // clone_args of the size passed, and `pidfd` is valid for the kernel's write.
    let ret = unsafe {
        let r = libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        );
        if r == 0 {
            // Released by a byte, not by EOF: a child another thread cloned meanwhile
            // may hold a copy of the write end.
            libc::close(tx_raw);
            let mut b = 0u8;
            while libc::read(rx_raw, (&mut b as *mut u8).cast(), 1) < 0
                && *libc::__errno_location() == libc::EINTR
            {}
            libc::_exit(0);
        }
        r
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned this pidfd to us with the child; nothing else owns it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    drop(rx);
    // The child is ours and not reaped until below: its pid cannot be reused meanwhile.
    let proc = format!("/proc/{ret}");
    let result = (|| {
        std::fs::write(format!("{proc}/uid_map"), uid_map)?;
        std::fs::write(format!("{proc}/gid_map"), gid_map)?;
        Ok(std::fs::File::open(format!("{proc}/ns/user"))?.into())
    })();
    if rustix::io::write(&tx, b"x") != Ok(1) {
        let _ = rustix::process::pidfd_send_signal(&pidfd, rustix::process::Signal::KILL);
    }
    drop(tx);
    let _ = rustix::process::waitid(
        rustix::process::WaitId::PidFd(pidfd.as_fd()),
        rustix::process::WaitIdOptions::EXITED,
    );
    result
}

/// A detached copy of the mount tree at `path` (recursive), id-mapped through `userns`
/// and `nosuid`, for `mount_owned_dirs` to move over `path` in a run's namespace.
/// Fails with `EINVAL` (or `EPERM`/`EOPNOTSUPP`) where a file system of the tree cannot
/// be id-mapped (tmpfs before Linux 6.3, 9p, NFS), `ENOSYS` before Linux 5.12.
pub fn idmapped_tree(path: &std::ffi::CStr, userns: BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    // SAFETY: `path` is NUL-terminated and only read; open_tree returns a new fd.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_RECURSIVE as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: open_tree returned this fd to us; nothing else owns it.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP | MOUNT_ATTR_NOSUID,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: `attr` is a valid mount_attr of the size passed, only read; the empty
    // path is a static C string.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(tree)
}

/// Sends SIGKILL to every process of `uid` (a dynamic uid whose run is over): a helper
/// cloned from this process becomes `uid` and calls `kill(-1, SIGKILL)`, which reaches
/// exactly the processes that uid may signal, its own (never the caller). Returns once
/// the helper is reaped.
pub fn kill_all_of(uid: u32) -> std::io::Result<()> {
    let mut pidfd: libc::c_int = -1;
    let mut args = CloneArgs {
        flags: CLONE_PIDFD,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    // SAFETY: clone3 without CLONE_VM duplicates the process like fork. The child only
    // makes raw, async-signal-safe system calls with plain integers (setresgid,
    // setresuid, kill, _exit) and never returns. `args` is a valid, fully initialised
    // clone_args of the size passed, and `pidfd` is valid for the kernel's write.
    let ret = unsafe {
        let r = libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        );
        if r == 0 {
            // Raw calls: only this thread exists, and glibc's wrappers would signal the
            // parent's others.
            let ok = libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>())
                == 0
                && libc::syscall(libc::SYS_setresgid, uid, uid, uid) == 0
                && libc::syscall(libc::SYS_setresuid, uid, uid, uid) == 0;
            if ok {
                libc::kill(-1, libc::SIGKILL);
            }
            libc::_exit(if ok { 0 } else { 1 });
        }
        r
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned this pidfd to us with the child; nothing else owns it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    rustix::process::waitid(
        rustix::process::WaitId::PidFd(pidfd.as_fd()),
        rustix::process::WaitIdOptions::EXITED,
    )?;
    Ok(())
}

/// What [`user_namespace_probe`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserNamespaceProbe {
    /// The kernel refused `clone3(CLONE_NEWUSER)` with this errno (`EPERM`: a sysctl
    /// or an LSM forbids it; `ENOSPC`: `user.max_user_namespaces` is 0 or reached;
    /// `EINVAL`/`ENOSYS`: no user namespaces or no clone3), or the child had not the
    /// capabilities in it to make a mount namespace (an LSM policy).
    Refused(i32),
    /// A user namespace (with a pid and a mount namespace) was made, but a fresh
    /// `/proc` could not be mounted in it (this errno: `EPERM` where parts of the
    /// host's `/proc` are hidden by over-mounts, as in many containers).
    NoProc(i32),
    /// Both work.
    Works,
}

/// Whether this process can make a user namespace as a rootless run's child does:
/// a throwaway child is cloned with `CLONE_NEWUSER | CLONE_NEWPID`, enters a new mount
/// namespace and mounts a fresh `/proc` there, then exits; it touches nothing outside
/// its own namespaces. About a millisecond; call once per process.
pub fn user_namespace_probe() -> UserNamespaceProbe {
    let mut pidfd: libc::c_int = -1;
    let mut args = CloneArgs {
        flags: CLONE_PIDFD | libc::CLONE_NEWUSER as u64 | libc::CLONE_NEWPID as u64,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    // SAFETY: clone3 without CLONE_VM duplicates the process like fork. The child only
    // makes raw, async-signal-safe system calls on static C strings (unshare, mount,
    // _exit) and never returns; its mounts are in its own mount namespace. `args` is a
    // valid, fully initialised clone_args of the size passed, and `pidfd` is valid for
    // the kernel's write.
    let ret = unsafe {
        let r = libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        );
        if r == 0 {
            let proc_ = c"proc".as_ptr();
            let errno = || (*libc::__errno_location()).clamp(1, 127);
            // Without the namespace's capabilities (an LSM policy such as Ubuntu's
            // apparmor_restrict_unprivileged_userns lets the clone through but not
            // this): 128 + errno. A refused /proc: the errno.
            let code = if libc::unshare(libc::CLONE_NEWNS) != 0
                || libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
            {
                128 + errno()
            } else if libc::mount(
                proc_,
                c"/proc".as_ptr(),
                proc_,
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                std::ptr::null(),
            ) != 0
            {
                errno()
            } else {
                0
            };
            libc::_exit(code);
        }
        r
    };
    if ret < 0 {
        let e = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        return UserNamespaceProbe::Refused(e);
    }
    // SAFETY: the kernel returned this pidfd to us with the child; nothing else owns it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let status = rustix::process::waitid(
        rustix::process::WaitId::PidFd(pidfd.as_fd()),
        rustix::process::WaitIdOptions::EXITED,
    );
    match status.ok().flatten().and_then(|st| st.exit_status()) {
        Some(0) => UserNamespaceProbe::Works,
        Some(code) if code > 128 => UserNamespaceProbe::Refused(code - 128),
        Some(code) => UserNamespaceProbe::NoProc(code),
        None => UserNamespaceProbe::Refused(libc::EPERM),
    }
}

/// Registers an owned fd (a pidfd, an inotify fd, an eventfd) with tokio's reactor.
pub fn watch_fd(
    fd: OwnedFd,
    interest: tokio::io::Interest,
) -> std::io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is a valid open fd that stays open, referring to the same file
    // description, until the AsyncFd that owns it is dropped or gives it back.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, interest) }.map_err(|e| e.into())
}

/// Forks this process. Returns 0 in the child and the child's pid in the parent. The
/// caller must be single-threaded (checked by the caller), so the child is a complete
/// copy in which any code may run, not only async-signal-safe calls.
pub fn fork_single_threaded() -> std::io::Result<i32> {
    // SAFETY: in a single-threaded process no lock can be held by another thread at
    // the fork, so the child may allocate and run ordinary code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(pid)
}

/// True when the kernel has `clone3` (5.3+). The probe passes no arguments: a kernel
/// with clone3 answers EINVAL, one without ENOSYS. CLONE_INTO_CGROUP needs 5.7.
pub fn clone3_available() -> bool {
    // SAFETY: clone3 with a null pointer and size 0 is rejected before anything is
    // read or any process is created.
    let r = unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<CloneArgs>(), 0usize) };
    r == -1 && std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS)
}

/// `Ok` when this kernel can install seccomp filters (`SECCOMP_GET_ACTION_AVAIL` for
/// `SECCOMP_RET_ERRNO`, Linux 4.14), else the error it answered (`EINVAL` without
/// `CONFIG_SECCOMP_FILTER`, `ENOSYS` without seccomp at all).
pub fn seccomp_filter_available() -> std::io::Result<()> {
    let action: u32 = libc::SECCOMP_RET_ERRNO;
    // SAFETY: the kernel reads one u32 at the valid pointer `&action`; the call only
    // answers whether the action is supported and changes nothing.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_GET_ACTION_AVAIL,
            0,
            &action as *const u32,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `Ok` when this kernel has `mount_setattr` (Linux 5.12), which the read-only view
/// needs, else the error it answered (`ENOSYS`; `EPERM` under a seccomp filter that
/// denies it). The probe passes flags no kernel accepts: one with the call answers
/// `EINVAL` before it looks at anything else.
pub fn mount_setattr_available() -> std::io::Result<()> {
    // SAFETY: with invalid flags the kernel returns EINVAL before it reads the path or
    // the attribute pointer (both null here) or changes anything.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            -1,
            std::ptr::null::<libc::c_char>(),
            u32::MAX,
            std::ptr::null::<MountAttr>(),
            0usize,
        )
    };
    let e = std::io::Error::last_os_error();
    if r == -1 && e.raw_os_error() == Some(libc::EINVAL) {
        Ok(())
    } else {
        Err(e)
    }
}

/// This kernel's Landlock ABI version (`landlock_create_ruleset` with
/// `LANDLOCK_CREATE_RULESET_VERSION`), or the error it answered (`ENOSYS`: no Landlock;
/// `EOPNOTSUPP`: built in but not enabled at boot).
pub(super) fn landlock_abi() -> std::io::Result<u32> {
    const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1;
    // SAFETY: with a null attribute pointer, size 0 and the VERSION flag the call only
    // returns the ABI version; it reads no memory and creates no ruleset.
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r as u32)
    }
}

/// CPU times and peak RSS of a reaped child (and the descendants it reaped), from
/// `wait4`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChildUsage {
    /// User CPU time in microseconds.
    pub user_us: u64,
    /// System CPU time in microseconds.
    pub system_us: u64,
    /// Peak resident set size of the largest process, in bytes.
    pub max_rss: u64,
}

/// Reaps `pid` with `wait4`, returning its raw wait status and its resource usage. Only
/// for a child of this process whose exit was already observed (its pidfd readable), so
/// the call does not block for long and the pid cannot have been reused.
pub fn wait4(pid: i32) -> std::io::Result<(i32, ChildUsage)> {
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `status` and `ru` are valid for writes for the duration of the call.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Ok((
        status,
        ChildUsage {
            user_us: us(ru.ru_utime),
            system_us: us(ru.ru_stime),
            max_rss: ru.ru_maxrss as u64 * 1024,
        },
    ))
}

/// `struct fsxattr` of `<linux/fs.h>`.
#[repr(C)]
#[derive(Default)]
struct FsXattr {
    xflags: u32,
    extsize: u32,
    nextents: u32,
    projid: u32,
    cowextsize: u32,
    pad: [u8; 8],
}

/// `_IOR('X', 31, struct fsxattr)`.
const FS_IOC_FSGETXATTR: libc::c_ulong = 0x801c_581f;
/// `_IOW('X', 32, struct fsxattr)`.
const FS_IOC_FSSETXATTR: libc::c_ulong = 0x401c_5820;
/// New files in a directory with this flag get the directory's project id.
const FS_XFLAG_PROJINHERIT: u32 = 0x0000_0200;
/// `PRJQUOTA` of `<linux/quota.h>`.
const PRJQUOTA: libc::c_int = 2;

fn get_fsxattr(fd: BorrowedFd<'_>) -> std::io::Result<FsXattr> {
    let mut x = FsXattr::default();
    // SAFETY: FS_IOC_FSGETXATTR writes one `struct fsxattr`, which `x` is (repr(C),
    // 28 bytes as the ioctl number encodes); `fd` is open for the call's duration.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_FSGETXATTR, &mut x as *mut FsXattr) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(x)
}

/// A file's project id and whether its inherit flag is set.
pub fn get_project(fd: BorrowedFd<'_>) -> std::io::Result<(u32, bool)> {
    let x = get_fsxattr(fd)?;
    Ok((x.projid, x.xflags & FS_XFLAG_PROJINHERIT != 0))
}

/// Sets a file's project id and inherit flag (root; ext4 with the `project` feature,
/// or XFS).
pub fn set_project(fd: BorrowedFd<'_>, projid: u32, inherit: bool) -> std::io::Result<()> {
    let mut x = get_fsxattr(fd)?;
    x.projid = projid;
    if inherit {
        x.xflags |= FS_XFLAG_PROJINHERIT;
    } else {
        x.xflags &= !FS_XFLAG_PROJINHERIT;
    }
    // SAFETY: FS_IOC_FSSETXATTR reads one `struct fsxattr` from the pointer, which
    // points at `x` (repr(C), the size the ioctl number encodes); `fd` is open.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_FSSETXATTR, &x as *const FsXattr) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn quotactl_fd(
    fd: BorrowedFd<'_>,
    cmd: libc::c_int,
    id: u32,
    q: &mut libc::dqblk,
) -> std::io::Result<()> {
    // SAFETY: quotactl_fd(2) with Q_GETQUOTA / Q_SETQUOTA reads or writes one
    // `struct if_dqblk`, which `libc::dqblk` is; `fd` is open for the call's duration.
    let r = unsafe {
        libc::syscall(
            libc::SYS_quotactl_fd,
            fd.as_raw_fd(),
            libc::QCMD(cmd, PRJQUOTA),
            id as libc::c_int,
            q as *mut libc::dqblk,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn empty_dqblk() -> libc::dqblk {
    libc::dqblk {
        dqb_bhardlimit: 0,
        dqb_bsoftlimit: 0,
        dqb_curspace: 0,
        dqb_ihardlimit: 0,
        dqb_isoftlimit: 0,
        dqb_curinodes: 0,
        dqb_btime: 0,
        dqb_itime: 0,
        dqb_valid: 0,
    }
}

/// A project's space in use and its hard block limit, both in bytes (0: no limit), on
/// the file system of `fd`.
pub fn get_project_quota(fd: BorrowedFd<'_>, projid: u32) -> std::io::Result<(u64, u64)> {
    let mut q = empty_dqblk();
    quotactl_fd(fd, libc::Q_GETQUOTA, projid, &mut q)?;
    Ok((q.dqb_curspace, q.dqb_bhardlimit.saturating_mul(1024)))
}

/// Sets a project's hard (and soft) block limit in bytes, rounded up to the quota's
/// 1 KiB blocks; 0 removes the limit.
pub fn set_project_quota(fd: BorrowedFd<'_>, projid: u32, bytes: u64) -> std::io::Result<()> {
    let mut q = empty_dqblk();
    let blocks = bytes.div_ceil(1024);
    q.dqb_bhardlimit = blocks;
    q.dqb_bsoftlimit = blocks;
    q.dqb_valid = libc::QIF_BLIMITS;
    quotactl_fd(fd, libc::Q_SETQUOTA, projid, &mut q)
}
