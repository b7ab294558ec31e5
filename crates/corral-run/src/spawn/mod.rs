//! Starting the child, in three parts:
//!
//! * `exec` (safe): finds the program and turns argv, envp and the working directory
//!   into C strings, before any cgroup exists, so "not found" and "not executable"
//!   leave nothing behind;
//! * `plan` (safe): lays out everything the child reads (pointers, fd numbers, rlimits)
//!   as plain C data, because the child of a multi-threaded process may only make
//!   async-signal-safe calls: no allocation, no locks, no panics;
//! * `sys` (the only unsafe code in corral; the crate denies `unsafe_code` elsewhere):
//!   the clone, and the child's setup as a checklist of named steps, each failing with
//!   its [`Stage`].
//!
//! With a pid namespace (`--pid-ns on`) the child is born with `clone3(CLONE_NEWPID)`
//! as pid 1 of the new namespace (also where it is not born in a cgroup: v1, rlimit),
//! mounts a fresh `/proc`, and after the gate forks: the command becomes pid 2, and pid
//! 1 stays as a mini-init (`sys::run_init`) that forwards signals, reaps orphans and
//! reports the command's wait status on a pipe ([`Spawned::main_status`]); when it
//! exits the kernel kills whatever is left in the namespace.
//!
//! * `filter` (safe): the seccomp program (policy `corral-default`), compiled in the
//!   parent with `seccompiler`, so the child only hands it to the kernel;
//! * `landlock` (safe): the Landlock ruleset restricting writes, built in the parent
//!   with the `landlock` crate, so the child only hands its fd to the kernel.
//!
//! Every unsafe function, all in `sys`: `child_main` and `child_fail`, and the
//! checklist's steps `reset_signals`, `set_parent_death_signal`, `enter_cgroup`,
//! `enter_mount_namespace`, `contain`, `clone_writable_paths`, `make_read_only`,
//! `build_fs_view`, `isolate_network`, `drop_capabilities`, `set_rlimits`,
//! `disable_core_dumps`, `new_session`, `setup_stdio`, `change_directory`, `wait_gate`,
//! `set_no_new_privs`, `restrict_writes`, `install_syscall_filter` and `exec`, all callable only in the
//! child, plus the pid namespace's `mount_proc`, `start_init` and `run_init`. Safe
//! functions with an unsafe block, also in `sys`: `clone_into_cgroup`,
//! `clone_new_pid_ns` and `fork_child` (start the child), [`clone3_available`], [`seccomp_filter_available`],
//! [`mount_setattr_available`],
//! [`fork_single_threaded`] (the crash guard), [`wait4`] and [`watch_fd`] (registers an
//! owned fd with tokio).
//! The identity layer adds the steps `mount_owned_dirs` (after `contain`) and
//! `set_identity` (after `wait_gate`), and for the parent [`user_namespace`] and
//! [`idmapped_tree`] (an id-mapped copy of the working directory's mount).
//!
//! The child is started with `clone3(CLONE_INTO_CGROUP | CLONE_PIDFD)` so it is born
//! inside its cgroup and never runs outside its limits; where the kernel refuses clone3
//! (ENOSYS, EPERM under seccomp, E2BIG), it falls back to `fork` and the child moves
//! itself into the cgroup (`cgroup.procs`; on v1 each hierarchy's `tasks`) before it
//! execs. Errors in the child reach the parent through a close-on-exec pipe as 5 bytes
//! (the stage, then errno): EOF means exec succeeded.
//!
//! Call [`spawn`] from a thread that outlives the child (a tokio worker, the main
//! thread), never from a short-lived blocking-pool thread: `PR_SET_PDEATHSIG` fires when
//! the creating *thread* exits.

mod exec;
mod filter;
mod landlock;
mod plan;
#[allow(unsafe_code)]
mod sys;

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

pub use exec::Exec;
pub use filter::{SyscallFilter, DENIED as DENIED_SYSCALLS, POLICY, POLICY_VERSION};
pub use landlock::{kernel_abi as landlock_abi, WriteRules};
use plan::ChildPlan;
pub use sys::{
    clone3_available, fork_single_threaded, mount_setattr_available, seccomp_filter_available,
    wait4, watch_fd, ChildUsage,
};
pub use sys::{idmapped_tree, kill_all_of, user_namespace};
pub use sys::{user_namespace_probe, UserNamespaceProbe};

/// The parent-side project-quota calls of `--disk` (see [`crate::quota`]).
pub mod sys_quota {
    pub use super::sys::{get_project, get_project_quota, set_project, set_project_quota};
}

/// `CLONE_INTO_CGROUP`. `libc::CLONE_INTO_CGROUP` is a `c_int` on glibc targets and
/// overflows to 0, which would silently start the child in corral's own cgroup.
pub const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
/// `CLONE_PIDFD`.
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
    /// Entering the run's own network namespace and bringing its loopback up.
    Network,
    /// Installing the syscall filter.
    Filter,
    /// Restricting writes with Landlock.
    Landlock,
    /// `execve` itself.
    Exec,
    /// Any other step: signals, the parent-death signal, containment (namespaces,
    /// mounts, capabilities), the new session, `no_new_privs`.
    Setup,
    /// Building the file-system view (read-only mounts, writable paths, private
    /// `/tmp`, hidden paths).
    Files,
    /// Becoming the run's user (capabilities, groups, ids), or mounting its
    /// id-mapped working directory.
    User,
    /// Entering a rootless run's user namespace (waiting for its id maps), or dropping
    /// the capabilities the child had in it.
    UserNamespace,
}

impl Stage {
    /// Every stage (the error pipe sends a stage as its index here).
    const ALL: [Stage; 13] = [
        Stage::Cgroup,
        Stage::Rlimit,
        Stage::Stdio,
        Stage::Chdir,
        Stage::Gate,
        Stage::Network,
        Stage::Filter,
        Stage::Landlock,
        Stage::Exec,
        Stage::Setup,
        Stage::Files,
        Stage::User,
        Stage::UserNamespace,
    ];

    fn code(self) -> u8 {
        self as u8
    }

    fn from_code(c: u8) -> Stage {
        Stage::ALL
            .into_iter()
            .find(|s| s.code() == c)
            .unwrap_or(Stage::Setup)
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
    /// Start a new session (`setsid`): no controlling terminal (so no `TIOCSTI` input
    /// into corral's terminal), and a new process group whose id is the child's pid.
    pub new_session: bool,
    /// Core dumps off (`RLIMIT_CORE` 0, soft and hard).
    pub no_core_dumps: bool,
    /// `PR_SET_NO_NEW_PRIVS`: exec can no longer grant privileges (setuid, file
    /// capabilities).
    pub no_new_privs: bool,
    /// The seccomp filter, installed last before exec (built in the parent).
    pub syscall_filter: Option<&'a SyscallFilter>,
    /// Signal to receive when the creating thread dies.
    pub parent_death_signal: Option<i32>,
    /// Block on this fd before exec until a byte arrives (EOF aborts the start).
    pub gate: Option<BorrowedFd<'a>>,
    /// Namespaces that keep the child in its cgroups (root only).
    pub contain: Option<Containment>,
    /// Its own network namespace with only loopback, up (`--network none`). Needs
    /// `CAP_SYS_ADMIN` and `CAP_NET_ADMIN`: see [`crate::isolation`].
    pub new_network: bool,
    /// A private mount namespace even without [`ChildSetup::contain`]: set by each
    /// layer that mounts something (the file system view, the pid namespace's `/proc`).
    pub new_mount_namespace: bool,
    /// Who the command runs as; `None` keeps corral's own identity. Applied after the
    /// gate, with every capability dropped (see [`crate::identity`]).
    pub identity: Option<Identity>,
    /// Detached id-mapped mount trees (see [`idmapped_tree`]) to move over these
    /// absolute paths in the run's mount namespace (set
    /// [`ChildSetup::new_mount_namespace`]): the working directory, `--rw` paths.
    pub owned_trees: Vec<(BorrowedFd<'a>, CString)>,
    /// A Landlock ruleset restricting writes, applied after `no_new_privs`.
    pub write_rules: Option<&'a WriteRules>,
    /// Its own pid namespace (`--pid-ns on`): the child is born its pid 1 with
    /// `clone3(CLONE_NEWPID)`, mounts a fresh `/proc` (in a private mount namespace)
    /// and, after the gate, forks: the command runs as pid 2 while pid 1 stays as a
    /// mini-init that forwards signals, reaps orphans and reports the command's wait
    /// status on [`Spawned::main_status`]. Needs `CAP_SYS_ADMIN` and clone3: see
    /// [`crate::isolation`].
    pub pid_namespace: bool,
    /// The file-system view, built in the run's own mount namespace (set
    /// [`ChildSetup::new_mount_namespace`] with it): see [`crate::fsview`].
    pub fs_view: Option<FsView>,
    /// A rootless run's layers: the child is born in its own user namespace
    /// (`clone3(CLONE_NEWUSER)`), where it has the capabilities the namespaces and
    /// mounts above need. The parent maps the run's own uid and gid to themselves
    /// (`setgroups` denied) before the child goes on, and the child drops every
    /// capability before exec. Needs clone3: see [`crate::isolation`].
    pub user_namespace: bool,
}

/// The mounts of the file-system view, laid out by [`crate::fsview::layout`] and done
/// by the child after [`Containment`], in this order: each [`FsView::writable`] path is
/// cloned as a detached mount tree with its own flags (`open_tree(OPEN_TREE_CLONE |
/// AT_RECURSIVE)`), every mount becomes read-only (`mount_setattr("/", AT_RECURSIVE,
/// MOUNT_ATTR_RDONLY)`, when [`FsView::read_only`]), then [`FsView::steps`] run top to
/// bottom (private tmpfs mounts, mount points in them, the clones attached back with
/// `move_mount`, `HOME`, the hidden paths).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsView {
    /// Make every mount of the namespace read-only.
    pub read_only: bool,
    /// The paths that stay writable, each cloned before the read-only step and attached
    /// back by an [`FsStep::Attach`]. (An id-mapped mount would be set on the detached
    /// clone, before it is attached.)
    pub writable: Vec<CString>,
    /// What follows the read-only step, in order.
    pub steps: Vec<FsStep>,
}

/// One step of the file-system view after the read-only step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsStep {
    /// A fresh tmpfs here (mode 1777, nosuid, nodev): the private `/tmp`, `/dev/shm`.
    PrivateTmpfs(CString),
    /// A directory (0755; one that exists is fine): a mount point in a private tmpfs.
    MakeDir(CString),
    /// An empty file: a mount point in a private tmpfs for a writable file.
    MakeFile(CString),
    /// Attach the clone of [`FsView::writable`]`[i]` back at its path.
    Attach(usize),
    /// `HOME`: a directory (0700) owned by [`ChildSetup::identity`] where set.
    Home(CString),
    /// Cover a directory with an empty read-only tmpfs.
    HideDir(CString),
    /// Cover a file with a read-only bind of `/dev/null`.
    HideFile(CString),
}

/// The identity a run's command gets: its uid, primary gid and supplementary groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user id.
    pub uid: u32,
    /// The primary group id.
    pub gid: u32,
    /// Supplementary groups (empty: none).
    pub groups: Vec<u32>,
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
    /// With a pid namespace: the read end of the pipe on which the mini-init (the
    /// process above, pid 1 of the namespace) writes the command's raw wait status (4
    /// bytes) and then how many processes were still in the namespace (4 bytes) when
    /// the command ended. Nothing (EOF or `EAGAIN`: the fd is non-blocking) when the
    /// init was killed first; read it once the init has exited.
    pub main_status: Option<OwnedFd>,
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
            Stage::Network => {
                "cannot give the run its own network namespace (--network host runs it in the host's)"
                    .to_string()
            }
            Stage::Filter => "cannot install the syscall filter".to_string(),
            Stage::Landlock => "cannot restrict writes with Landlock".to_string(),
            Stage::Exec => format!("cannot execute {}", exec.display),
            Stage::Setup => "cannot set up the process".to_string(),
            Stage::User => {
                "cannot give the run its user (its identity, or its id-mapped working directory)"
                    .to_string()
            }
            Stage::UserNamespace => "cannot set up the run's user namespace (rootless \
                                     layers: --isolation off runs without one)"
                .to_string(),
            Stage::Files => "cannot build the run's read-only file-system view (--fs host \
                             runs it on the host's files)"
                .to_string(),
        };
        Err(SpawnError::Child {
            stage,
            what,
            source,
        })
    }
}

/// Maps this process' own uid and gid to themselves (one id each) in the user
/// namespace of its child `pid`, after denying `setgroups` there (which the kernel
/// requires of an unprivileged writer of `gid_map`): the run keeps its ids, so the
/// files it writes are its own.
fn write_id_maps(pid: i32) -> std::io::Result<()> {
    let uid = rustix::process::geteuid().as_raw();
    let gid = rustix::process::getegid().as_raw();
    let proc = format!("/proc/{pid}");
    std::fs::write(format!("{proc}/setgroups"), "deny")?;
    std::fs::write(format!("{proc}/uid_map"), format!("{uid} {uid} 1\n"))?;
    std::fs::write(format!("{proc}/gid_map"), format!("{gid} {gid} 1\n"))
}

/// Moves an fd to a number ≥ 3 (close-on-exec) so that dup2 onto 0/1/2 in the child
/// cannot clobber another source fd.
fn high_fd(fd: BorrowedFd<'_>) -> Result<OwnedFd, SpawnError> {
    rustix::io::fcntl_dupfd_cloexec(fd, 3).map_err(|e| SpawnError::Os(e.into()))
}

/// Starts the child described by `exec`, `setup` and `placement`: born in its cgroup
/// with `clone3(CLONE_INTO_CGROUP)` where the placement has a v2 directory and the
/// kernel allows it, else forked and moving itself in.
pub fn spawn(
    exec: &Exec,
    setup: &ChildSetup<'_>,
    placement: &Placement<'_>,
) -> Result<Spawned, SpawnError> {
    let os = |e: rustix::io::Errno| SpawnError::Os(e.into());
    let (err_rx, err_tx) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(os)?;
    let stdio = [
        setup.stdin.map(high_fd).transpose()?,
        setup.stdout.map(high_fd).transpose()?,
        setup.stderr.map(high_fd).transpose()?,
    ];
    let status = match setup.pid_namespace {
        true => {
            // Non-blocking: read once the init has exited, so whatever it wrote is
            // there, while a sibling child that has not exec'd yet may still hold a
            // copy of the write end.
            let flags = rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK;
            let (rx, tx) = rustix::pipe::pipe_with(flags).map_err(os)?;
            Some((rx, high_fd(tx.as_fd())?))
        }
        false => None,
    };
    // A user namespace's child waits on this pipe until its id maps are written.
    let maps_gate = match setup.user_namespace {
        true => Some(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(os)?),
        false => None,
    };
    let mut plan = ChildPlan::new(exec, setup, placement, &stdio, err_tx.as_fd());
    if let Some((_, tx)) = &status {
        plan.report_main_status(tx.as_fd());
    }
    if let Some((rx, _)) = &maps_gate {
        plan.wait_for_maps(rx.as_fd());
    }

    let mut born = None;
    if let Some(dir) = placement.cgroup_dir {
        match sys::clone_into_cgroup(&plan, dir) {
            Ok((pid, pidfd)) => born = Some((pid, pidfd)),
            Err(err) => {
                tracing::debug!("clone3(CLONE_INTO_CGROUP) refused ({err}); falling back to fork");
                match placement.fallback_procs {
                    Some(p) => plan.also_enter(p),
                    None => return Err(SpawnError::Os(err)),
                }
            }
        }
    }
    let clone_into_cgroup = born.is_some();
    if born.is_none() && setup.pid_namespace {
        // Only clone3 makes the child pid 1 of a new namespace; the parent asked for
        // one only where the kernel answers clone3 (isolation::plan), so a refusal
        // here fails the start rather than run the command outside its namespace.
        let (pid, pidfd) = sys::clone_new_pid_ns(&plan).map_err(|e| {
            SpawnError::Os(std::io::Error::new(
                e.kind(),
                format!(
                    "clone3(CLONE_NEWPID) for the run's own pid namespace: {e} \
                     (--pid-ns off runs it in the host's)"
                ),
            ))
        })?;
        born = Some((pid, pidfd));
    }
    if born.is_none() && setup.user_namespace {
        // The same for a user namespace: the fork fallback cannot make one whose maps
        // the parent writes before the child goes on.
        let (pid, pidfd) = sys::clone_new_pid_ns(&plan).map_err(|e| {
            SpawnError::Os(std::io::Error::new(
                e.kind(),
                format!(
                    "clone3(CLONE_NEWUSER) for the run's own user namespace: {e} \
                     (--isolation off runs it without one)"
                ),
            ))
        })?;
        born = Some((pid, pidfd));
    }
    let (pid, pidfd) = match born {
        Some(b) => b,
        None => {
            let pid = sys::fork_child(&plan).map_err(SpawnError::Os)?;
            let p = rustix::process::Pid::from_raw(pid).expect("fork returned a positive pid");
            // The child cannot be reaped before we wait for it, so this pidfd is its own.
            let fd =
                rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).map_err(os)?;
            (pid, fd)
        }
    };
    drop(plan);
    if let Some((rx, tx)) = maps_gate {
        drop(rx);
        // The child is ours and not reaped until waited for: its pid is its own.
        if let Err(e) = write_id_maps(pid).and_then(|()| {
            rustix::io::write(&tx, b"m")
                .map(drop)
                .map_err(std::io::Error::from)
        }) {
            let _ = rustix::process::pidfd_send_signal(&pidfd, rustix::process::Signal::KILL);
            let _ = rustix::process::waitid(
                rustix::process::WaitId::PidFd(pidfd.as_fd()),
                rustix::process::WaitIdOptions::EXITED,
            );
            return Err(SpawnError::Os(std::io::Error::new(
                e.kind(),
                format!("cannot write the id maps of the run's user namespace: {e}"),
            )));
        }
    }
    drop(err_tx);
    drop(stdio);
    Ok(Spawned {
        pid,
        pidfd,
        clone_into_cgroup,
        main_status: status.map(|(rx, _tx)| rx),
        err_rx,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    #[test]
    fn stage_codes_roundtrip() {
        for (i, s) in Stage::ALL.into_iter().enumerate() {
            assert_eq!(s.code() as usize, i);
            assert_eq!(Stage::from_code(s.code()), s);
        }
    }

    fn true_exec() -> Exec {
        Exec::new(
            &["true".into()],
            &[("PATH".into(), "/usr/bin:/bin".into())],
            None,
        )
        .unwrap()
    }

    /// Waits for the confirmed child and returns its exit status.
    fn exit_status(pidfd: &OwnedFd) -> Option<i32> {
        rustix::process::waitid(
            rustix::process::WaitId::PidFd(pidfd.as_fd()),
            rustix::process::WaitIdOptions::EXITED,
        )
        .unwrap()
        .unwrap()
        .exit_status()
    }

    fn failed_stage(e: &SpawnError) -> Option<(Stage, Option<i32>)> {
        match e {
            SpawnError::Child { stage, source, .. } => Some((*stage, source.raw_os_error())),
            _ => None,
        }
    }

    #[test]
    fn spawn_without_cgroup_and_exec_errors() {
        let exec = true_exec();
        let s = spawn(&exec, &ChildSetup::default(), &Placement::default()).unwrap();
        let (_pid, pidfd, into) = s.confirm(&exec).unwrap();
        assert!(!into);
        assert_eq!(exit_status(&pidfd), Some(0));

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

    #[test]
    fn a_failed_step_reports_its_stage() {
        let exec = true_exec();
        // A soft limit above the hard one.
        let setup = ChildSetup {
            rlimits: vec![Rlimit {
                resource: libc::RLIMIT_NOFILE,
                soft: 10,
                hard: 5,
            }],
            ..Default::default()
        };
        let e = spawn(&exec, &setup, &Placement::default())
            .unwrap()
            .confirm(&exec)
            .unwrap_err();
        assert_eq!(failed_stage(&e), Some((Stage::Rlimit, Some(libc::EINVAL))));
        assert!(
            e.to_string().starts_with("cannot set a resource limit: "),
            "{e}"
        );
    }

    /// Runs `sh -c script` (or `python3 -c`) with every "always" step and the default
    /// filter; returns the wait status.
    fn run_sandboxed(prog: &str, script: &str) -> rustix::process::WaitIdStatus {
        let exec = Exec::new(
            &[prog.into(), "-c".into(), script.into()],
            &[("PATH".into(), "/usr/bin:/bin".into())],
            None,
        )
        .unwrap();
        let setup = ChildSetup {
            new_session: true,
            no_core_dumps: true,
            no_new_privs: true,
            syscall_filter: Some(SyscallFilter::corral_default().unwrap()),
            ..Default::default()
        };
        let (_pid, pidfd, _) = spawn(&exec, &setup, &Placement::default())
            .unwrap()
            .confirm(&exec)
            .unwrap();
        rustix::process::waitid(
            rustix::process::WaitId::PidFd(pidfd.as_fd()),
            rustix::process::WaitIdOptions::EXITED,
        )
        .unwrap()
        .unwrap()
    }

    #[test]
    fn the_always_steps_and_the_filter_are_applied() {
        // A new session led by the shell, no core dumps, no_new_privs, filter mode.
        let st = run_sandboxed(
            "sh",
            "[ \"$(cut -d' ' -f6 /proc/$$/stat)\" = \"$$\" ] && [ \"$(ulimit -c)\" = 0 ] \
             && grep -q '^NoNewPrivs:.1' /proc/self/status && grep -q '^Seccomp:.2' /proc/self/status",
        );
        assert_eq!(st.exit_status(), Some(0));
        // keyctl and bpf are denied with EPERM; clone3 answers ENOSYS (glibc falls back
        // to clone); unshare of a user namespace is denied; fork and threads work.
        let checks = "import ctypes, os\n\
             libc = ctypes.CDLL(None, use_errno=True)\n\
             def err(*a):\n    assert libc.syscall(*a) == -1\n    return ctypes.get_errno()\n\
             assert err(250, 0, 0, 0, 0, 0) == 1, 'keyctl'\n\
             assert err(321, 0, 0, 0) == 1, 'bpf'\n\
             assert err(435, None, 0) == 38, 'clone3'\n\
             assert err(272, 0x10000000) == 1, 'unshare'\n\
             pid = os.fork()\n\
             if pid == 0: os._exit(0)\n\
             assert os.waitpid(pid, 0)[1] == 0, 'fork'\n\
             import threading\n\
             t = threading.Thread(target=print); t.start(); t.join()\n";
        if cfg!(target_arch = "x86_64") {
            let st = run_sandboxed("python3", checks);
            assert_eq!(st.exit_status(), Some(0), "{st:?}");
            // An x32 system call (getpid | 0x40000000) kills the process.
            let st = run_sandboxed(
                "python3",
                "import ctypes; ctypes.CDLL(None).syscall(0x40000027)",
            );
            assert_eq!(st.terminating_signal(), Some(libc::SIGSYS), "{st:?}");
        }
    }

    #[test]
    fn a_network_namespace_step_runs_or_fails_with_its_own_stage() {
        let exec = true_exec();
        let setup = ChildSetup {
            new_network: true,
            ..Default::default()
        };
        let r = spawn(&exec, &setup, &Placement::default())
            .unwrap()
            .confirm(&exec);
        let privs = crate::isolation::Privileges::current();
        if privs.sys_admin && privs.net_admin {
            let (_pid, pidfd, _) = r.unwrap();
            assert_eq!(exit_status(&pidfd), Some(0));
        } else {
            // The parent never asks without the capabilities (isolation::plan); if it
            // did, the failure would name the step.
            let e = r.unwrap_err();
            assert_eq!(failed_stage(&e), Some((Stage::Network, Some(libc::EPERM))));
            assert!(e.to_string().contains("network namespace"), "{e}");
            assert_eq!(e.exit_code(), 125);
        }
    }

    /// Reads what a mini-init wrote on its status pipe: the raw wait status and the
    /// number of processes left, or `None` on EOF.
    fn read_main_status(fd: &OwnedFd) -> Option<(i32, u32)> {
        let mut buf = [0u8; 8];
        let mut got = 0;
        while got < 8 {
            match rustix::io::read(fd, &mut buf[got..]).unwrap() {
                0 => break,
                n => got += n,
            }
        }
        (got == 8).then(|| {
            (
                i32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]),
                u32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]),
            )
        })
    }

    #[test]
    fn a_pid_namespace_runs_the_command_as_pid_2_under_the_init() {
        let privs = crate::isolation::Privileges::current();
        if !(privs.sys_admin && privs.clone3) {
            // The parent never asks without them (isolation::plan).
            return;
        }
        let exec = Exec::new(
            &[
                "sh".into(),
                "-c".into(),
                "[ $$ = 2 ] && [ \"$(cat /proc/1/comm)\" = corral-init ] \
                 && [ \"$(ls /proc | grep -c '^[0-9]*$')\" -le 6 ] && (sleep 30 &) && exit 5"
                    .into(),
            ],
            &[("PATH".into(), "/usr/bin:/bin".into())],
            None,
        )
        .unwrap();
        let setup = ChildSetup {
            pid_namespace: true,
            ..Default::default()
        };
        let mut s = spawn(&exec, &setup, &Placement::default()).unwrap();
        let status = s.main_status.take().expect("a status pipe");
        let (_pid, pidfd, _) = s.confirm(&exec).unwrap();
        // The init exits with the command's code; the pipe has its raw status and the
        // orphaned sleep it left behind (killed with the namespace).
        assert_eq!(exit_status(&pidfd), Some(5));
        assert_eq!(read_main_status(&status), Some((5 << 8, 1)));

        // An exec failure of the command (pid 2) still reaches the error pipe.
        use std::os::unix::fs::PermissionsExt;
        let f = std::env::temp_dir().join(format!("corral-pidns-noexec-{}", std::process::id()));
        std::fs::write(&f, b"\x7fnot a program").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
        let exec = Exec::new(&[f.display().to_string()], &[], None).unwrap();
        let mut s = spawn(&exec, &setup, &Placement::default()).unwrap();
        let status = s.main_status.take().unwrap();
        let e = s.confirm(&exec).unwrap_err();
        let _ = std::fs::remove_file(&f);
        assert!(
            matches!(
                failed_stage(&e),
                Some((Stage::Exec, Some(libc::ENOEXEC | libc::ETXTBSY)))
            ),
            "{e}"
        );
        assert_eq!(read_main_status(&status), Some((127 << 8, 0)));
    }

    #[test]
    fn landlock_rules_leave_only_the_views_writable_paths_writable() {
        let abi = match crate::spawn::landlock_abi() {
            Ok(abi) => abi,
            Err(why) => {
                corral_testkit::skip_control("landlock", &why);
                return;
            }
        };
        let privs = crate::isolation::Privileges::current();
        if !privs.sys_admin {
            // The view (whose writable paths the rules follow) needs root.
            return;
        }
        let base = PathBuf::from(format!("/var/tmp/corral-landlock-{}", std::process::id()));
        let (open, shut) = (base.join("open"), base.join("shut"));
        std::fs::create_dir_all(&open).unwrap();
        std::fs::create_dir_all(&shut).unwrap();
        let rules = WriteRules::build(abi).unwrap();
        assert_eq!(rules.abi(), abi);
        // A view without its read-only step: only Landlock keeps `shut` unwritable
        // (EACCES, where the read-only mounts would answer EROFS).
        let view = FsView {
            read_only: false,
            writable: vec![CString::new(open.as_os_str().as_encoded_bytes()).unwrap()],
            steps: vec![
                FsStep::PrivateTmpfs(CString::new("/tmp").unwrap()),
                FsStep::Attach(0),
            ],
        };
        let script = format!(
            "echo a > {o}/f && echo c > /dev/null && echo d > /tmp/x \\
             && ! echo b 2>/dev/null > {s}/f && ! mkdir {s}/d 2>/dev/null \\
             && python3 -c 'import os,errno\ntry: os.open(\"{s}/g\", os.O_CREAT|os.O_WRONLY)\nexcept OSError as e: raise SystemExit(0 if e.errno == errno.EACCES else 7)\nraise SystemExit(8)'",
            o = open.display(),
            s = shut.display()
        );
        let exec = Exec::new(
            &["sh".into(), "-c".into(), script],
            &[("PATH".into(), "/usr/bin:/bin".into())],
            Some(Path::new("/")),
        )
        .unwrap();
        let setup = ChildSetup {
            new_mount_namespace: true,
            fs_view: Some(view),
            no_new_privs: true,
            write_rules: Some(&rules),
            ..Default::default()
        };
        let (_pid, pidfd, _) = spawn(&exec, &setup, &Placement::default())
            .unwrap()
            .confirm(&exec)
            .unwrap();
        let status = exit_status(&pidfd);
        let wrote_open = open.join("f").exists();
        let wrote_shut = ["f", "d", "g"].iter().any(|n| shut.join(n).exists());
        std::fs::remove_dir_all(&base).unwrap();
        assert_eq!(status, Some(0));
        assert!(wrote_open && !wrote_shut);
    }

    #[test]
    fn the_file_system_view_runs_or_fails_with_its_own_stage() {
        let privs = crate::isolation::Privileges::current();
        if !privs.sys_admin || crate::spawn::mount_setattr_available().is_err() {
            // The parent never asks without them (isolation::plan_fs).
            return;
        }
        let run = |view: FsView, script: &str| {
            let exec = Exec::new(
                &["sh".into(), "-c".into(), script.into()],
                &[("PATH".into(), "/usr/bin:/bin".into())],
                Some(Path::new("/")),
            )
            .unwrap();
            let setup = ChildSetup {
                new_mount_namespace: true,
                fs_view: Some(view),
                ..Default::default()
            };
            spawn(&exec, &setup, &Placement::default())
                .unwrap()
                .confirm(&exec)
        };
        let tmpfs = |p: &str| FsStep::PrivateTmpfs(CString::new(p).unwrap());
        let view = FsView {
            read_only: true,
            writable: Vec::new(),
            steps: vec![tmpfs("/tmp")],
        };
        // /etc is read-only (sh's own error ends in 1), the private /tmp is writable.
        let (_pid, pidfd, _) = run(
            view.clone(),
            "touch /etc/corral-unit-x 2>/dev/null && exit 3; touch /tmp/x || exit 4",
        )
        .unwrap();
        assert_eq!(exit_status(&pidfd), Some(0));
        assert!(!Path::new("/etc/corral-unit-x").exists());
        // A writable path that vanished between the parent's check and the child.
        let gone = FsView {
            writable: vec![CString::new("/nonexistent-corral-dir").unwrap()],
            ..view
        };
        let e = run(gone, "true").unwrap_err();
        assert_eq!(failed_stage(&e), Some((Stage::Files, Some(libc::ENOENT))));
        assert!(e.to_string().contains("file-system view"), "{e}");
        assert_eq!(e.exit_code(), 125);
    }

    #[test]
    fn user_namespaces_are_made_concurrently() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: writing another process' id maps needs root");
            return;
        }
        // Each helper is released by a byte, not by EOF: a helper cloned by another
        // thread holds copies of the others' pipes (this deadlocked once).
        std::thread::scope(|s| {
            for _ in 0..6 {
                s.spawn(|| {
                    for _ in 0..5 {
                        let ns = user_namespace("0 4000000 1\n", "0 4000000 1\n").unwrap();
                        assert!(rustix::fs::fstat(&ns).is_ok());
                    }
                });
            }
        });
    }

    #[test]
    fn a_released_gate_lets_the_child_exec() {
        let exec = true_exec();
        let (rx, tx) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        let setup = ChildSetup {
            gate: Some(rx.as_fd()),
            ..Default::default()
        };
        let s = spawn(&exec, &setup, &Placement::default()).unwrap();
        rustix::io::write(&tx, b"g").unwrap();
        let (_pid, pidfd, _) = s.confirm(&exec).unwrap();
        assert_eq!(exit_status(&pidfd), Some(0));
    }

    #[test]
    fn an_exec_failure_is_not_executable() {
        use std::os::unix::fs::PermissionsExt;
        let f = std::env::temp_dir().join(format!("corral-noexec-{}", std::process::id()));
        std::fs::write(&f, b"\x7fnot a program").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
        let exec = Exec::new(&[f.display().to_string()], &[], None).unwrap();
        // A child forked by a parallel test may hold the file's write fd for a moment.
        let mut tries = 0;
        let e = loop {
            let e = spawn(&exec, &ChildSetup::default(), &Placement::default())
                .unwrap()
                .confirm(&exec)
                .unwrap_err();
            tries += 1;
            match failed_stage(&e) {
                Some((_, Some(libc::ETXTBSY))) if tries < 20 => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                _ => break e,
            }
        };
        let _ = std::fs::remove_file(&f);
        assert_eq!(failed_stage(&e), Some((Stage::Exec, Some(libc::ENOEXEC))));
        assert_eq!(e.exit_code(), 126);
        assert!(
            e.to_string()
                .starts_with(&format!("cannot execute {}", f.display())),
            "{e}"
        );
    }

    #[test]
    fn a_user_namespace_keeps_the_ids_and_ends_without_capabilities() {
        let privs = crate::isolation::Privileges::current();
        if !privs.clone3
            || (!privs.sys_admin
                && crate::isolation::user_namespace_probe()
                    != crate::spawn::UserNamespaceProbe::Works)
        {
            return;
        }
        let (uid, gid) = (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        );
        let script = format!(
            "[ \"$(id -u):$(id -g)\" = {uid}:{gid} ] || exit 3; \
             grep -q '^ *{uid} *{uid} *1$' /proc/self/uid_map || exit 4; \
             grep -q deny /proc/self/setgroups || exit 5; \
             for c in CapEff CapPrm CapBnd CapAmb; do \
               grep -q \"^$c:.0000000000000000$\" /proc/self/status || exit 6; done; \
             [ $$ = 2 ] || exit 7"
        );
        let exec = Exec::new(
            &["sh".into(), "-c".into(), script],
            &[("PATH".into(), "/usr/bin:/bin".into())],
            None,
        )
        .unwrap();
        let setup = ChildSetup {
            user_namespace: true,
            pid_namespace: true,
            new_mount_namespace: true,
            new_network: true,
            ..Default::default()
        };
        let mut s = spawn(&exec, &setup, &Placement::default()).unwrap();
        let status = s.main_status.take().unwrap();
        let (_pid, pidfd, _) = s.confirm(&exec).unwrap();
        assert_eq!(exit_status(&pidfd), Some(0));
        assert_eq!(read_main_status(&status), Some((0, 0)));
    }
}
