//! The syscall filter of every run, policy [`POLICY`] version [`POLICY_VERSION`]: a
//! seccomp deny-list built here, in the parent and in safe code, with the `seccompiler`
//! crate (Firecracker's pure-Rust seccomp compiler). The child only hands the finished
//! program to the kernel, last before exec (`spawn/sys.rs`).
//!
//! Denied calls fail with `EPERM`, as in Docker's default profile, isolate and
//! BenchExec; the list is at least the union of theirs (see [`DENIED`] and the README's
//! "The syscall filter"). Two answers seccompiler cannot express (one action per filter,
//! no syscall-number ranges) are a five-instruction prelude after its architecture
//! check, see [`prelude`]:
//!
//! * `clone3` fails with `ENOSYS`: its flags are in memory, where a filter cannot look,
//!   and `ENOSYS` makes glibc fall back to `clone`, whose flags the filter sees (as
//!   Docker does);
//! * x86_64 only: x32 system calls (the same audit architecture, numbers with bit 30
//!   set) kill the process, as seccompiler's own check does for a foreign architecture
//!   (i386 `int 0x80`, arm32): a deny-list keyed by x86_64 numbers would not see them.
//!
//! Version 2 adds: no setuid or setgid bits. `chmod`, `fchmod`, `fchmodat`,
//! `fchmodat2`, and file creation (`open`, `openat`, `creat`, `mknod`, `mknodat`) with
//! `S_ISUID` or `S_ISGID` in the mode fail with `EPERM`, and `openat2` (its mode is in
//! memory, where a filter cannot look) fails with `ENOSYS`, so callers fall back to
//! `openat`. A run id-mapped onto a root-owned directory (see `crate::owner`) could
//! otherwise leave a setuid-root program behind. `mkdir` needs no rule: the kernel
//! drops those bits from a new directory's mode itself.
//!
//! Allowed on purpose: `ptrace`, `process_vm_readv`/`process_vm_writev` (debuggers and
//! profilers such as strace, gdb, py-spy; since Linux 4.8 a tracer cannot bypass the
//! filter, and corral needs 5.4; Docker allows them on such kernels too), the NUMA
//! placement calls `mbind`, `set_mempolicy`, `get_mempolicy`, `move_pages` (Docker
//! gates them on `CAP_SYS_NICE`; OpenMP, MPI and hwloc use them, and they place memory
//! rather than grant anything).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

/// The name of corral's default syscall policy, as the record shows it.
pub const POLICY: &str = "corral-default";
/// The version of [`POLICY`]: raised whenever the list of denied calls changes.
pub const POLICY_VERSION: u32 = 2;

/// The architecture the filter is built for: the one corral is built for.
#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: TargetArch = TargetArch::aarch64;

/// Calls denied whatever their arguments, with the reason (for the docs and tests).
pub const DENIED: &[(&str, i64)] = &[
    // The mount family: mounts and remounts, and the new mount API.
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("move_mount", libc::SYS_move_mount),
    ("open_tree", libc::SYS_open_tree),
    ("open_tree_attr", 467),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("mount_setattr", libc::SYS_mount_setattr),
    // Entering other namespaces.
    ("setns", libc::SYS_setns),
    // The kernel keyring (shared across the host, not namespaced).
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("keyctl", libc::SYS_keyctl),
    // Kernel attack surface without a use in an analysis.
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("kcmp", libc::SYS_kcmp),
    ("fanotify_init", libc::SYS_fanotify_init),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    // Loading code into the kernel, replacing it.
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    // The host's state: clocks, swap, accounting, quotas, names, the console.
    ("reboot", libc::SYS_reboot),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("acct", libc::SYS_acct),
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("adjtimex", libc::SYS_adjtimex),
    ("sethostname", libc::SYS_sethostname),
    ("setdomainname", libc::SYS_setdomainname),
    ("quotactl", libc::SYS_quotactl),
    ("quotactl_fd", libc::SYS_quotactl_fd),
    ("syslog", libc::SYS_syslog),
    ("vhangup", libc::SYS_vhangup),
    ("nfsservctl", libc::SYS_nfsservctl),
    // x86_64 only: port I/O and obsolete calls.
    #[cfg(target_arch = "x86_64")]
    ("iopl", libc::SYS_iopl),
    #[cfg(target_arch = "x86_64")]
    ("ioperm", libc::SYS_ioperm),
    #[cfg(target_arch = "x86_64")]
    ("uselib", libc::SYS_uselib),
    #[cfg(target_arch = "x86_64")]
    ("_sysctl", libc::SYS__sysctl),
    #[cfg(target_arch = "x86_64")]
    ("ustat", libc::SYS_ustat),
    #[cfg(target_arch = "x86_64")]
    ("sysfs", libc::SYS_sysfs),
    #[cfg(target_arch = "x86_64")]
    ("create_module", 174),
    #[cfg(target_arch = "x86_64")]
    ("get_kernel_syms", 177),
    #[cfg(target_arch = "x86_64")]
    ("query_module", 178),
];

/// The namespace flags of `unshare(2)` (`CLONE_NEWTIME` too; `clone(2)` uses that bit
/// for the exit signal, so [`CLONE_NAMESPACES`] leaves it out).
const UNSHARE_NAMESPACES: [u64; 8] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    0x80, // CLONE_NEWTIME
];
/// The namespace flags `clone(2)` can carry.
const CLONE_NAMESPACES: [u64; 7] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
];

/// `ioctl` requests denied: pushing input into a terminal (`TIOCSTI`, the bubblewrap
/// CVE-2017-5226 escape) and the Linux console's `TIOCLINUX` (which can do the same).
const DENIED_IOCTLS: [u64; 2] = [libc::TIOCSTI, 0x541C];

/// The `personality(2)` values allowed (Docker's list): `PER_LINUX`, `PER_LINUX32`,
/// `UNAME26`, both, and the query `0xffffffff`. Anything else (turning off address space
/// randomisation, `READ_IMPLIES_EXEC`, `MMAP_PAGE_ZERO`, ...) is denied.
const ALLOWED_PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// `AF_VSOCK`: sockets to the hypervisor and other VMs (isolate denies them).
const AF_VSOCK: u64 = 40;

/// `S_ISUID` and `S_ISGID`.
const SETID_BITS: [u64; 2] = [libc::S_ISUID as u64, libc::S_ISGID as u64];

/// `fchmodat2` (Linux 6.6).
const SYS_FCHMODAT2: i64 = 452;

/// Calls whose mode argument may not carry [`SETID_BITS`]: (name, number, index of
/// the mode argument).
pub const NO_SETID_MODE: &[(&str, i64, u8)] = &[
    ("fchmod", libc::SYS_fchmod, 1),
    ("fchmodat", libc::SYS_fchmodat, 2),
    ("fchmodat2", SYS_FCHMODAT2, 2),
    ("openat", libc::SYS_openat, 3),
    ("mknodat", libc::SYS_mknodat, 2),
    #[cfg(target_arch = "x86_64")]
    ("chmod", libc::SYS_chmod, 1),
    #[cfg(target_arch = "x86_64")]
    ("open", libc::SYS_open, 2),
    #[cfg(target_arch = "x86_64")]
    ("creat", libc::SYS_creat, 1),
    #[cfg(target_arch = "x86_64")]
    ("mknod", libc::SYS_mknod, 1),
];

/// A compiled seccomp program, ready to install.
#[derive(Debug)]
pub struct SyscallFilter {
    prog: BpfProgram,
}

impl SyscallFilter {
    /// corral's default filter, compiled once per process.
    pub fn corral_default() -> Result<&'static SyscallFilter, String> {
        static FILTER: OnceLock<Result<SyscallFilter, String>> = OnceLock::new();
        FILTER
            .get_or_init(|| build().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The instructions (for the child's `sock_fprog`).
    pub(super) fn instructions(&self) -> &[sock_filter] {
        &self.prog
    }
}

/// seccompiler's builder results.
type R<T> = Result<T, seccompiler::BackendError>;

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> R<SeccompCondition> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
}

/// One rule per flag: the call is denied when argument `arg` has any of `flags` set.
fn any_flag(arg: u8, flags: &[u64]) -> R<Vec<SeccompRule>> {
    flags
        .iter()
        .map(|&f| SeccompRule::new(vec![cond(arg, SeccompCmpOp::MaskedEq(f), f)?]))
        .collect()
}

fn build() -> R<SyscallFilter> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for &(_, nr) in DENIED {
        rules.insert(nr, Vec::new());
    }
    rules.insert(libc::SYS_unshare, any_flag(0, &UNSHARE_NAMESPACES)?);
    // clone's flags are its first argument on x86_64 and aarch64 alike.
    rules.insert(libc::SYS_clone, any_flag(0, &CLONE_NAMESPACES)?);
    let ioctls = DENIED_IOCTLS
        .iter()
        .map(|&r| SeccompRule::new(vec![cond(1, SeccompCmpOp::Eq, r)?]))
        .collect::<R<_>>()?;
    rules.insert(libc::SYS_ioctl, ioctls);
    let personality = ALLOWED_PERSONALITIES
        .iter()
        .map(|&p| cond(0, SeccompCmpOp::Ne, p))
        .collect::<R<_>>()?;
    rules.insert(libc::SYS_personality, vec![SeccompRule::new(personality)?]);
    for &(_, nr, arg) in NO_SETID_MODE {
        rules.insert(nr, any_flag(arg, &SETID_BITS)?);
    }
    rules.insert(
        libc::SYS_socket,
        vec![SeccompRule::new(vec![cond(
            0,
            SeccompCmpOp::Eq,
            AF_VSOCK,
        )?])?],
    );
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        ARCH,
    )?;
    let mut prog: BpfProgram = filter.try_into()?;
    // seccompiler's program starts with its architecture check (load the arch, jump
    // over the kill when it matches, kill): the prelude goes right after it.
    prog.splice(ARCH_CHECK_LEN..ARCH_CHECK_LEN, prelude());
    Ok(SyscallFilter { prog })
}

/// The length of seccompiler's architecture check at the start of every program.
const ARCH_CHECK_LEN: usize = 3;

// Classic BPF opcodes (linux/bpf_common.h), for the prelude only.
/// `BPF_LD | BPF_W | BPF_ABS` (0x00 | 0x00 | 0x20).
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JEQ_K: u16 = 0x05 | 0x10;
const BPF_JMP_JGE_K: u16 = 0x05 | 0x30;
const BPF_RET_K: u16 = 0x06;
/// `SECCOMP_RET_ERRNO`.
const RET_ERRNO: u32 = 0x0005_0000;
/// The x32 ABI's bit in the syscall number (`__X32_SYSCALL_BIT`).
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

/// If the syscall number equals (or, `ge`, is at least) `k`, return `ret`; else go on.
fn jump_return(ge: bool, k: u32, ret: u32) -> [sock_filter; 2] {
    let code = if ge { BPF_JMP_JGE_K } else { BPF_JMP_JEQ_K };
    [
        sock_filter {
            code,
            jt: 0,
            jf: 1,
            k,
        },
        stmt(BPF_RET_K, ret),
    ]
}

/// What seccompiler cannot express: load the syscall number (offset 0 of
/// `seccomp_data`); x86_64: an x32 call kills the process; `clone3` and `openat2`
/// fail with `ENOSYS`. Every jump is forward and within the prelude, so seccompiler's own
/// relative jumps after it are untouched.
fn prelude() -> Vec<sock_filter> {
    let mut p = vec![stmt(BPF_LD_W_ABS, 0)];
    #[cfg(target_arch = "x86_64")]
    p.extend(jump_return(
        true,
        X32_SYSCALL_BIT,
        libc::SECCOMP_RET_KILL_PROCESS,
    ));
    p.extend(jump_return(
        false,
        libc::SYS_clone3 as u32,
        RET_ERRNO | libc::ENOSYS as u32,
    ));
    p.extend(jump_return(
        false,
        libc::SYS_openat2 as u32,
        RET_ERRNO | libc::ENOSYS as u32,
    ));
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_filter_compiles_with_the_prelude_after_the_arch_check() {
        let f = SyscallFilter::corral_default().unwrap();
        let p = f.instructions();
        assert!(p.len() < 4096, "{}", p.len());
        // seccompiler's check: load the arch (offset 4), skip the kill if it matches.
        assert_eq!((p[0].code, p[0].k), (BPF_LD_W_ABS, 4));
        assert_eq!((p[1].code, p[1].jt, p[1].jf), (BPF_JMP_JEQ_K, 1, 0));
        assert_eq!(
            (p[2].code, p[2].k),
            (BPF_RET_K, libc::SECCOMP_RET_KILL_PROCESS)
        );
        let pre = prelude();
        assert_eq!(&p[3..3 + pre.len()], &pre[..]);
        // Then seccompiler's own syscall-number load.
        assert_eq!(
            (p[3 + pre.len()].code, p[3 + pre.len()].k),
            (BPF_LD_W_ABS, 0)
        );
        let names: Vec<&str> = DENIED.iter().map(|d| d.0).collect();
        for must in [
            "mount",
            "keyctl",
            "bpf",
            "setns",
            "kexec_load",
            "userfaultfd",
        ] {
            assert!(names.contains(&must), "{must}");
        }
        let mut nrs: Vec<i64> = DENIED.iter().map(|d| d.1).collect();
        nrs.sort();
        nrs.dedup();
        assert_eq!(nrs.len(), DENIED.len(), "a syscall listed twice");
    }
}
