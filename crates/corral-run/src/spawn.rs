//! Starting the child: the only unsafe code in corral.
//!
//! Everything the child needs (paths, argv, envp, fds, rlimits) is prepared as plain C
//! data before cloning, because the child of a multi-threaded process may only make
//! async-signal-safe calls: no allocation, no locks, no panics. The child is started
//! with `clone3(CLONE_INTO_CGROUP | CLONE_PIDFD)` so it is born inside its cgroup and
//! never runs outside its limits; where the kernel refuses clone3 (ENOSYS, EPERM under
//! seccomp, E2BIG), it falls back to `fork` and the child moves itself into the
//! cgroup (`cgroup.procs`; on v1 each hierarchy's `tasks`) before it execs. Errors in
//! the child reach the parent through a close-on-exec pipe: EOF means exec succeeded.
//!
//! The one other unsafe operation, [`watch_fd`], registers an owned fd with tokio.
//!
//! Call [`spawn`] from a thread that outlives the child (a tokio worker, the main
//! thread), never from a short-lived blocking-pool thread: `PR_SET_PDEATHSIG` fires when
//! the creating *thread* exits.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// `CLONE_INTO_CGROUP`. `libc::CLONE_INTO_CGROUP` is a `c_int` on glibc targets and
/// overflows to 0, which would silently start the child in corral's own cgroup.
pub const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
const CLONE_PIDFD: u64 = 0x1000;

/// The stage in the child at which a start failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Moving itself into its cgroup (`cgroup.procs` or v1 `tasks`).
    Cgroup,
    /// Setting an rlimit.
    Rlimit,
    /// Setting up stdin/stdout/stderr.
    Stdio,
    /// Changing to the working directory.
    Chdir,
    /// Waiting for the parent's go-ahead.
    Gate,
    /// `execve` itself.
    Exec,
    /// Setting the parent-death signal or the process group.
    Setup,
}

impl Stage {
    fn code(self) -> u8 {
        self as u8
    }
    fn from_code(c: u8) -> Stage {
        match c {
            0 => Stage::Cgroup,
            1 => Stage::Rlimit,
            2 => Stage::Stdio,
            3 => Stage::Chdir,
            4 => Stage::Gate,
            5 => Stage::Exec,
            _ => Stage::Setup,
        }
    }
}

/// Why a start failed.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The program was not found on `PATH` (exit 127).
    #[error("command not found: {0}")]
    NotFound(String),
    /// The program exists but cannot be executed (exit 126).
    #[error("{path}: cannot execute: {source}")]
    NotExecutable {
        /// The program.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The child failed before exec.
    #[error("{what}: {source}")]
    Child {
        /// Which stage failed.
        stage: Stage,
        /// A description of the stage's target.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// `clone3`/`fork` or the error pipe failed in the parent.
    #[error("cannot start a process: {0}")]
    Os(std::io::Error),
    /// A string held a NUL byte.
    #[error("argument or environment entry contains a NUL byte: {0:?}")]
    Nul(String),
}

impl SpawnError {
    /// The exit status a shell would use: 127 not found, 126 not executable, 125 else.
    pub fn exit_code(&self) -> i32 {
        match self {
            SpawnError::NotFound(_) => 127,
            SpawnError::NotExecutable { .. } => 126,
            SpawnError::Child {
                stage: Stage::Exec,
                source,
                ..
            } => match source.raw_os_error() {
                Some(libc::ENOENT) => 127,
                _ => 126,
            },
            _ => 125,
        }
    }
}

/// A command prepared for exec: all C strings built in advance.
#[derive(Debug)]
pub struct Exec {
    path: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    cwd: Option<CString>,
    display: String,
    cwd_display: String,
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

fn resolve(prog: &str, search: &str, cwd: Option<&Path>) -> Result<PathBuf, SpawnError> {
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

/// Where the child goes.
#[derive(Debug, Default)]
pub struct Placement<'a> {
    /// A cgroup2 directory fd for `CLONE_INTO_CGROUP`.
    pub cgroup_dir: Option<BorrowedFd<'a>>,
    /// Files the child writes `0` (itself) into before exec: each v1 hierarchy's
    /// `tasks` (the child is single-threaded), or the clone3 fallback for `cgroup_dir`.
    pub procs: Vec<BorrowedFd<'a>>,
    /// The fallback `cgroup.procs` of `cgroup_dir`, used only when clone3 is refused.
    pub fallback_procs: Option<BorrowedFd<'a>>,
}

/// One resource limit to set in the child (`RLIMIT_*`, soft, hard).
#[derive(Debug, Clone, Copy)]
pub struct Rlimit {
    /// The `libc::RLIMIT_*` resource.
    pub resource: libc::__rlimit_resource_t,
    /// The soft limit.
    pub soft: u64,
    /// The hard limit.
    pub hard: u64,
}

/// Keeps a root-run analysis from leaving its cgroups: a private mount namespace in
/// which the cgroup file systems are either a fresh cgroup2 mount rooted at the run's
/// own cgroup (with a cgroup namespace, so the kernel also refuses moves outside it) or
/// read-only (v1 hierarchies). Analyses still see their limits where runtimes look for
/// them (`/sys/fs/cgroup/memory.max`, `/proc/self/cgroup`).
///
/// The child then drops [`DROPPED_CAPABILITIES`] from its bounding, permitted,
/// effective and inheritable sets before exec: without them root could remount the
/// cgroup file systems read-write, `setns` into the host's cgroup and mount
/// namespaces, reach the host's mounts through `/proc/1/root`, or load a module.
#[derive(Debug, Default, Clone)]
pub struct Containment {
    /// Enter a new cgroup namespace rooted at the child's cgroup.
    pub cgroup_namespace: bool,
    /// Mount a fresh cgroup2 file system here (after the namespace is entered).
    pub cgroup2_mount: Option<CString>,
    /// Remount these mount points read-only.
    pub readonly: Vec<CString>,
}

/// Capabilities a contained (root-run) analysis runs without: `CAP_SYS_MODULE` (16),
/// `CAP_SYS_PTRACE` (19: `/proc/<host pid>/root` and `/ns/*` of processes with more
/// capabilities) and `CAP_SYS_ADMIN` (21: mount, remount, setns). Docker's default set
/// lacks all three too.
pub const DROPPED_CAPABILITIES: [u32; 3] = [16, 19, 21];

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

/// What the child does between clone and exec.
#[derive(Debug, Default)]
pub struct ChildSetup<'a> {
    /// Standard input; `None` inherits corral's.
    pub stdin: Option<BorrowedFd<'a>>,
    /// Standard output; `None` inherits corral's.
    pub stdout: Option<BorrowedFd<'a>>,
    /// Standard error; `None` inherits corral's.
    pub stderr: Option<BorrowedFd<'a>>,
    /// Resource limits.
    pub rlimits: Vec<Rlimit>,
    /// Start a new process group (`setpgid(0, 0)`).
    pub new_process_group: bool,
    /// Signal to receive when the creating thread dies.
    pub parent_death_signal: Option<i32>,
    /// Block on this fd before exec until a byte arrives (EOF aborts the start).
    pub gate: Option<BorrowedFd<'a>>,
    /// Namespaces that keep the child in its cgroups (root only).
    pub contain: Option<Containment>,
}

/// A started child that has not yet been confirmed to exec.
#[derive(Debug)]
pub struct Spawned {
    /// Its pid.
    pub pid: i32,
    /// A pidfd for it: readable when it exits; signals through it cannot hit a reused pid.
    pub pidfd: OwnedFd,
    /// True when it was placed with `CLONE_INTO_CGROUP`.
    pub clone_into_cgroup: bool,
    err_rx: OwnedFd,
}

impl Spawned {
    /// Waits until the child has exec'd (or failed). Call after releasing any gate.
    /// On failure the child has exited and is reaped here.
    pub fn confirm(self, exec: &Exec) -> Result<(i32, OwnedFd, bool), SpawnError> {
        let mut buf = [0u8; 5];
        let mut got = 0;
        while got < buf.len() {
            match rustix::io::read(&self.err_rx, &mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(SpawnError::Os(e.into())),
            }
        }
        if got == 0 {
            return Ok((self.pid, self.pidfd, self.clone_into_cgroup));
        }
        // The child failed and _exit()ed: reap it so no zombie is left.
        let _ = rustix::process::waitid(
            rustix::process::WaitId::PidFd(self.pidfd.as_fd()),
            rustix::process::WaitIdOptions::EXITED,
        );
        let stage = Stage::from_code(buf[0]);
        let errno = i32::from_ne_bytes([buf[1], buf[2], buf[3], buf[4]]);
        let source = std::io::Error::from_raw_os_error(errno);
        let what = match stage {
            Stage::Cgroup => "cannot place the process in its cgroup".to_string(),
            Stage::Rlimit => "cannot set a resource limit".to_string(),
            Stage::Stdio => "cannot set up stdin/stdout/stderr".to_string(),
            Stage::Chdir => format!("cannot change to working directory {}", exec.cwd_display),
            Stage::Gate => "the supervisor did not release the start".to_string(),
            Stage::Exec => format!("cannot execute {}", exec.display),
            Stage::Setup => "cannot set up the process".to_string(),
        };
        Err(SpawnError::Child {
            stage,
            what,
            source,
        })
    }
}

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

/// Raw pointers the child uses; built before cloning.
struct ChildPlan {
    path: *const libc::c_char,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    cwd: *const libc::c_char,
    stdio: [RawFd; 3],
    procs: Vec<RawFd>,
    rlimits: Vec<Rlimit>,
    new_pgrp: bool,
    pdeathsig: i32,
    parent_pid: i32,
    gate: RawFd,
    err_tx: RawFd,
    unshare_flags: libc::c_int,
    cgroup2_mount: *const libc::c_char,
    readonly: Vec<*const libc::c_char>,
    drop_caps: bool,
}

/// Moves an fd to a number ≥ 3 (close-on-exec) so that dup2 onto 0/1/2 in the child
/// cannot clobber another source fd.
fn high_fd(fd: BorrowedFd<'_>) -> Result<OwnedFd, SpawnError> {
    rustix::io::fcntl_dupfd_cloexec(fd, 3).map_err(|e| SpawnError::Os(e.into()))
}

/// Starts the child described by `exec`, `setup` and `placement`.
pub fn spawn(
    exec: &Exec,
    setup: &ChildSetup<'_>,
    placement: &Placement<'_>,
) -> Result<Spawned, SpawnError> {
    let os = |e: rustix::io::Errno| SpawnError::Os(e.into());
    let (err_rx, err_tx) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(os)?;
    let stdio: Vec<Option<OwnedFd>> = [setup.stdin, setup.stdout, setup.stderr]
        .iter()
        .map(|f| f.map(high_fd).transpose())
        .collect::<Result<_, _>>()?;
    let raw = |o: &Option<OwnedFd>| o.as_ref().map_or(-1, |f| f.as_raw_fd());
    let mut argv: Vec<*const libc::c_char> = exec.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = exec.envp.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    let mut plan = ChildPlan {
        path: exec.path.as_ptr(),
        argv,
        envp,
        cwd: exec.cwd.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
        stdio: [raw(&stdio[0]), raw(&stdio[1]), raw(&stdio[2])],
        procs: placement.procs.iter().map(|f| f.as_raw_fd()).collect(),
        rlimits: setup.rlimits.clone(),
        new_pgrp: setup.new_process_group,
        pdeathsig: setup.parent_death_signal.unwrap_or(0),
        parent_pid: std::process::id() as i32,
        gate: setup.gate.map_or(-1, |g| g.as_raw_fd()),
        err_tx: err_tx.as_raw_fd(),
        unshare_flags: match &setup.contain {
            Some(c) if c.cgroup_namespace => libc::CLONE_NEWNS | libc::CLONE_NEWCGROUP,
            Some(_) => libc::CLONE_NEWNS,
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
        drop_caps: setup.contain.is_some(),
    };

    let mut pidfd: libc::c_int = -1;
    let mut into_cgroup = false;
    let mut pid: libc::pid_t = -1;
    if let Some(dir) = placement.cgroup_dir {
        let mut args = CloneArgs {
            flags: CLONE_PIDFD | CLONE_INTO_CGROUP,
            pidfd: &mut pidfd as *mut libc::c_int as u64,
            exit_signal: libc::SIGCHLD as u64,
            cgroup: dir.as_raw_fd() as u64,
            ..Default::default()
        };
        // SAFETY: clone3 without CLONE_VM duplicates the process like fork: the child
        // gets a copy of this stack and continues from here with only this thread. It
        // runs `child_main`, which makes only async-signal-safe syscalls on memory
        // prepared above and never returns. `args` is a valid, fully initialised
        // clone_args of the size passed.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &mut args as *mut CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            )
        };
        if ret == 0 {
            // SAFETY: we are the child of clone3; see child_main's contract.
            unsafe { child_main(&plan) }
        }
        if ret > 0 {
            pid = ret as libc::pid_t;
            into_cgroup = true;
        } else {
            let err = std::io::Error::last_os_error();
            tracing::debug!("clone3(CLONE_INTO_CGROUP) refused ({err}); falling back to fork");
            match placement.fallback_procs {
                Some(p) => plan.procs.push(p.as_raw_fd()),
                None => return Err(SpawnError::Os(err)),
            }
        }
    }
    if pid < 0 {
        // SAFETY: fork in a multi-threaded process: the child runs only
        // async-signal-safe code (child_main) and never returns.
        let ret = unsafe { libc::fork() };
        if ret == 0 {
            // SAFETY: we are the forked child; see child_main's contract.
            unsafe { child_main(&plan) }
        }
        if ret < 0 {
            return Err(SpawnError::Os(std::io::Error::last_os_error()));
        }
        pid = ret;
        let p = rustix::process::Pid::from_raw(pid).expect("fork returned a positive pid");
        // The child cannot be reaped before we wait for it, so this pidfd is its own.
        let fd =
            rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).map_err(os)?;
        pidfd = fd.as_raw_fd();
        std::mem::forget(fd);
    }
    drop(err_tx);
    drop(stdio);
    // SAFETY: the kernel returned this pidfd to us (clone3) or pidfd_open did; nothing
    // else owns it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok(Spawned {
        pid,
        pidfd,
        clone_into_cgroup: into_cgroup,
        err_rx,
    })
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

/// Writes `stage` and the current errno to the error pipe and exits with 127.
///
/// # Safety
/// Only async-signal-safe calls; called in the child only.
unsafe fn child_fail(plan: &ChildPlan, stage: Stage) -> ! {
    let errno = *libc::__errno_location();
    let e = errno.to_ne_bytes();
    let buf = [stage.code(), e[0], e[1], e[2], e[3]];
    libc::write(plan.err_tx, buf.as_ptr().cast(), buf.len());
    libc::_exit(127)
}

/// The child between clone and exec.
///
/// # Safety
/// Must only run in a freshly cloned/forked child. It uses raw syscalls on the data in
/// `plan` (prepared by the parent) and allocates nothing.
unsafe fn child_main(plan: &ChildPlan) -> ! {
    // Rust ignores SIGPIPE and tokio may have handlers and masks: give the command the
    // defaults a shell would.
    let mut set: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut set);
    libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    libc::signal(libc::SIGPIPE, libc::SIG_DFL);

    if plan.pdeathsig != 0 {
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            plan.pdeathsig as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            child_fail(plan, Stage::Setup);
        }
        // The supervisor may have died before prctl took effect.
        if libc::getppid() != plan.parent_pid {
            libc::_exit(127);
        }
    }
    // "0" is the writer itself. Into a v1 `tasks` file it moves just this (only) thread,
    // which spares the kernel the global threadgroup rwsem and its RCU grace period
    // (~8-20 ms per run measured on 6.18); into a v2 `cgroup.procs` it moves the process.
    for &fd in &plan.procs {
        if libc::write(fd, c"0".as_ptr().cast(), 1) < 0 {
            child_fail(plan, Stage::Cgroup);
        }
    }
    if plan.unshare_flags != 0 {
        // Now that the child is in its cgroup, a new cgroup namespace is rooted there.
        if libc::unshare(plan.unshare_flags) != 0 {
            child_fail(plan, Stage::Setup);
        }
        // Keep our mount changes private to this namespace.
        let root = c"/".as_ptr();
        if libc::mount(
            std::ptr::null(),
            root,
            std::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        ) != 0
        {
            child_fail(plan, Stage::Setup);
        }
        let nodev = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        if !plan.cgroup2_mount.is_null() {
            // The same cgroup2 superblock cannot be mounted twice on one mount point:
            // detach this namespace's copy of the host mount first.
            libc::umount2(plan.cgroup2_mount, libc::MNT_DETACH);
            let fs = c"cgroup2".as_ptr();
            if libc::mount(
                fs,
                plan.cgroup2_mount,
                fs,
                nodev | libc::MS_RELATIME,
                std::ptr::null(),
            ) != 0
            {
                child_fail(plan, Stage::Setup);
            }
        }
        for &m in &plan.readonly {
            let flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | nodev;
            if libc::mount(
                std::ptr::null(),
                m,
                std::ptr::null(),
                flags,
                std::ptr::null(),
            ) != 0
            {
                child_fail(plan, Stage::Setup);
            }
        }
    }
    if plan.drop_caps {
        // Last of the privileged steps: the mounts above needed CAP_SYS_ADMIN. Out of
        // the bounding set, exec cannot give them back to root; out of the other
        // sets, this process has lost them already.
        for &cap in &DROPPED_CAPABILITIES {
            if libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0 {
                child_fail(plan, Stage::Setup);
            }
        }
        let mut header = CapHeader {
            version: CAPABILITY_VERSION_3,
            pid: 0,
        };
        let mut data = [CapData::default(); 2];
        if libc::syscall(
            libc::SYS_capget,
            &mut header as *mut CapHeader,
            data.as_mut_ptr(),
        ) != 0
        {
            child_fail(plan, Stage::Setup);
        }
        for &cap in &DROPPED_CAPABILITIES {
            let d = &mut data[(cap / 32) as usize];
            let keep = !(1u32 << (cap % 32));
            d.effective &= keep;
            d.permitted &= keep;
            d.inheritable &= keep;
        }
        if libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        ) != 0
        {
            child_fail(plan, Stage::Setup);
        }
    }
    for r in &plan.rlimits {
        let lim = libc::rlimit {
            rlim_cur: r.soft,
            rlim_max: r.hard,
        };
        if libc::setrlimit(r.resource, &lim) != 0 {
            child_fail(plan, Stage::Rlimit);
        }
    }
    if plan.new_pgrp && libc::setpgid(0, 0) != 0 {
        child_fail(plan, Stage::Setup);
    }
    for (target, &src) in plan.stdio.iter().enumerate() {
        if src >= 0 && libc::dup2(src, target as libc::c_int) < 0 {
            child_fail(plan, Stage::Stdio);
        }
    }
    if !plan.cwd.is_null() && libc::chdir(plan.cwd) != 0 {
        child_fail(plan, Stage::Chdir);
    }
    if plan.gate >= 0 {
        let mut b = 0u8;
        loop {
            let n = libc::read(plan.gate, (&mut b as *mut u8).cast(), 1);
            if n == 1 {
                break;
            }
            if n < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            if n == 0 {
                *libc::__errno_location() = libc::ECANCELED;
            }
            child_fail(plan, Stage::Gate);
        }
    }
    libc::execve(plan.path, plan.argv.as_ptr(), plan.envp.as_ptr());
    child_fail(plan, Stage::Exec)
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

    #[test]
    fn spawn_without_cgroup_and_exec_errors() {
        let exec = Exec::new(
            &["true".into()],
            &[("PATH".into(), "/usr/bin:/bin".into())],
            None,
        )
        .unwrap();
        let s = spawn(&exec, &ChildSetup::default(), &Placement::default()).unwrap();
        let (_pid, pidfd, into) = s.confirm(&exec).unwrap();
        assert!(!into);
        let st = rustix::process::waitid(
            rustix::process::WaitId::PidFd(pidfd.as_fd()),
            rustix::process::WaitIdOptions::EXITED,
        )
        .unwrap()
        .unwrap();
        assert_eq!(st.exit_status(), Some(0));

        let exec = Exec::new(&["true".into()], &[], Some(Path::new("/nonexistent-dir"))).unwrap();
        let e = spawn(&exec, &ChildSetup::default(), &Placement::default())
            .unwrap()
            .confirm(&exec)
            .unwrap_err();
        assert!(
            matches!(
                e,
                SpawnError::Child {
                    stage: Stage::Chdir,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("/nonexistent-dir"), "{e}");
    }
}
