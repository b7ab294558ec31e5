//! All of corral's unsafe code (the crate denies `unsafe_code` everywhere else).
//!
//! Unsafe functions, each callable only in the freshly cloned or forked child, between
//! clone and exec ("the child" below):
//!
//! * [`child_main`]: runs [`CHECKLIST`], then exits;
//! * [`child_fail`]: reports a failed step's stage and errno, then `_exit(127)`;
//! * the steps of [`CHECKLIST`]: [`reset_signals`], [`set_parent_death_signal`],
//!   [`enter_cgroup`], [`enter_mount_namespace`], [`contain`], [`isolate_network`], [`drop_capabilities`],
//!   [`set_rlimits`], [`disable_core_dumps`], [`new_session`], [`setup_stdio`],
//!   [`change_directory`], [`wait_gate`], [`set_no_new_privs`], [`restrict_writes`],
//!   [`install_syscall_filter`], [`exec`].
//!
//! Safe functions with an unsafe block inside, for the parent:
//!
//! * [`clone_into_cgroup`]: `clone3(CLONE_INTO_CGROUP | CLONE_PIDFD)`, the child runs
//!   [`child_main`];
//! * [`fork_child`]: the `fork` fallback, the child runs [`child_main`];
//! * [`clone3_available`]: a clone3 probe that creates nothing;
//! * [`seccomp_filter_available`]: a seccomp probe that installs nothing;
//! * [`fork_single_threaded`]: a plain fork for the single-threaded crash guard;
//! * [`wait4`]: reaps a child with its resource usage;
//! * [`watch_fd`]: registers an owned fd with tokio.
//!
//! The child of a multi-threaded process may only make async-signal-safe calls: no
//! allocation, no locks, no panics. Every step reads only the [`ChildPlan`] the parent
//! laid out and makes raw syscalls; a step returns the errno it failed with, and
//! [`child_main`] reports it with the step's [`Stage`].

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::plan::ChildPlan;
use super::{Stage, CLONE_INTO_CGROUP, CLONE_PIDFD, DROPPED_CAPABILITIES};

/// One step of the child's setup: `Err` carries the errno it failed with.
type Step = unsafe fn(&ChildPlan<'_>) -> Result<(), i32>;

/// What the child does between clone and exec, in this order, each step with the
/// stage a failure reports. Adding a step is one line here and one function below.
const CHECKLIST: &[(Stage, Step)] = &[
    (Stage::Setup, reset_signals),
    (Stage::Setup, set_parent_death_signal),
    (Stage::Cgroup, enter_cgroup),
    (Stage::Setup, enter_mount_namespace),
    (Stage::Setup, contain),
    (Stage::Network, isolate_network),
    (Stage::Setup, drop_capabilities),
    (Stage::Rlimit, set_rlimits),
    (Stage::Rlimit, disable_core_dumps),
    (Stage::Setup, new_session),
    (Stage::Stdio, setup_stdio),
    (Stage::Chdir, change_directory),
    (Stage::Gate, wait_gate),
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

/// `landlock_restrict_self` with the plan's ruleset, if any: from here on the process
/// (and all it starts) may write only beneath the ruleset's paths. After
/// [`set_no_new_privs`], which Landlock requires of a process without `CAP_SYS_ADMIN`.
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
/// `dir`; returns its pid and pidfd, or the error the kernel refused clone3 with.
pub(super) fn clone_into_cgroup(
    plan: &ChildPlan<'_>,
    dir: BorrowedFd<'_>,
) -> std::io::Result<(i32, OwnedFd)> {
    let mut pidfd: libc::c_int = -1;
    let mut args = CloneArgs {
        flags: CLONE_PIDFD | CLONE_INTO_CGROUP,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: dir.as_raw_fd() as u64,
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
