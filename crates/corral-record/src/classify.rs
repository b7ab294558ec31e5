//! Deciding why a run ended, from everything known after the tree is gone.

use crate::Reason;

/// How the main process ended, from `waitid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitStatus {
    /// It called `exit` with this code.
    Exited(i32),
    /// It died of this signal.
    Signaled(i32),
}

/// Why corral itself started ending a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillCause {
    /// The wall-clock limit passed.
    Timeout,
    /// The CPU-time budget was used up.
    CpuTime,
    /// corral was told to stop: a signal to corral (`Some(signal)`) or a cancel request.
    Cancelled(Option<i32>),
    /// The kernel reported an OOM in the run and the backend cannot make the kernel kill
    /// the whole group (cgroup v1), so corral ended the rest of the tree.
    Oom,
}

/// What is known at the end of a run, gathered after `populated 0`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evidence {
    /// The main process' status; `None` when it never started.
    pub status: Option<WaitStatus>,
    /// The exit code (125, 126, 127) and message of a failed start.
    pub spawn_error: Option<(i32, String)>,
    /// What made corral end the run, if it did.
    pub kill: Option<KillCause>,
    /// The run's OOM-kill counter at the moment corral decided to end the run.
    pub oom_kills_at_kill: u64,
    /// The run's OOM-kill counter at the end.
    pub oom_kills: u64,
    /// True when the main process died of `SIGXCPU` from a CPU-time rlimit that corral
    /// set (rlimit backend).
    pub cpu_rlimit_hit: bool,
    /// True when corral set a largest-file limit (`RLIMIT_FSIZE`): a `SIGXFSZ` death is
    /// then that limit.
    pub file_size_limit: bool,
    /// True when the run's disk quota was used up at the end (usage at its limit).
    pub disk_full: bool,
    /// True when a file the run wrote ended exactly at its largest-file limit: a
    /// write past it failed with `EFBIG` (a writer that ignores `SIGXFSZ`, as Python
    /// does).
    pub file_at_limit: bool,
    /// True when the run had an address-space limit (`RLIMIT_AS`, rlimit backend) and
    /// its captured stderr ends with an out-of-memory report
    /// ([`reports_out_of_memory`]): an allocation was refused, and the program said so.
    pub memory_rlimit_reported: bool,
}

/// How language runtimes report a refused allocation before they exit non-zero (or
/// abort): Python, C++, R, Java, Go, Rust, Julia, NumPy and glibc's `strerror(ENOMEM)`.
/// Matched in the last lines of the run's captured stderr only.
pub const OUT_OF_MEMORY_REPORTS: &[&str] = &[
    "MemoryError",
    "std::bad_alloc",
    "cannot allocate vector of size",
    "java.lang.OutOfMemoryError",
    "fatal error: runtime: out of memory",
    "memory allocation of ",
    "OutOfMemoryError()",
    "numpy.core._exceptions._ArrayMemoryError",
    "Unable to allocate",
    "Cannot allocate memory",
];

/// The out-of-memory report in the tail of a run's stderr (its last 20 lines), if any.
pub fn reports_out_of_memory(stderr_tail: &str) -> Option<&'static str> {
    let lines: Vec<&str> = stderr_tail.lines().collect();
    let tail = &lines[lines.len().saturating_sub(20)..];
    OUT_OF_MEMORY_REPORTS
        .iter()
        .copied()
        .find(|m| tail.iter().any(|l| l.contains(m)))
}

/// The decision: the reason and corral's exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Why the run ended.
    pub reason: Reason,
    /// corral's exit status, `timeout(1)`-style.
    pub exit_code: i32,
    /// The signal the main process died of.
    pub signal: Option<i32>,
    /// The main process' own exit code.
    pub process_exit_code: Option<i32>,
}

/// Decides the reason. Rules, in order:
/// 1. a failed start is `spawn_failed` (125, 126 or 127);
/// 2. an OOM kill counted before corral decided to end the run wins over corral's own
///    cause (the memory budget was hit first), if the main process was killed;
/// 3. otherwise, when corral ended the run, its cause (`timeout`/`cpu_time` exit 124,
///    `cancelled` 128+signal, `oom` 137);
/// 4. a main process killed by SIGKILL, or failing (non-zero exit) after the OOM
///    counter moved, is `oom` (137): on cgroup v2 `memory.oom.group` kills the whole run
///    anyway; on v1 the kernel kills one process and a shell above it exits with 137
///    before corral ends the rest. A main process that exits 0 despite an OOM kill
///    below it handled it: `exited`;
/// 5. a CPU-rlimit `SIGXCPU` is `cpu_time` (124); a `SIGXFSZ` under a largest-file
///    limit is `file_size` (128+25);
/// 6. a main process that failed (non-zero exit, or a signal other than one corral
///    sent) with its disk quota used up is `disk`, with its own status; one that
///    exited non-zero with a file at its largest-file limit is `file_size` (`EFBIG`),
///    with its own exit code; one that failed (non-zero exit, or `SIGABRT` as C++'s
///    uncaught `std::bad_alloc` ends) after reporting that memory ran out, under an
///    address-space limit, is `oom` with its own status: nothing was killed, an
///    allocation was refused ([`Evidence::memory_rlimit_reported`]);
/// 7. any other signal is `signaled` (128+N); an exit is `exited` with its code.
pub fn classify(e: &Evidence) -> Verdict {
    let (signal, process_exit_code) = match e.status {
        Some(WaitStatus::Signaled(s)) => (Some(s), None),
        Some(WaitStatus::Exited(c)) => (None, Some(c)),
        None => (None, None),
    };
    let v = |reason, exit_code| Verdict {
        reason,
        exit_code,
        signal,
        process_exit_code,
    };
    if let Some((code, _)) = &e.spawn_error {
        return v(Reason::SpawnFailed, *code);
    }
    let killed = signal.is_some();
    if let Some(cause) = e.kill {
        if e.oom_kills_at_kill > 0 && killed {
            return v(Reason::Oom, 137);
        }
        return match cause {
            KillCause::Timeout => v(Reason::Timeout, 124),
            KillCause::CpuTime => v(Reason::CpuTime, 124),
            KillCause::Cancelled(sig) => v(Reason::Cancelled, 128 + sig.unwrap_or(15)),
            KillCause::Oom => v(Reason::Oom, 137),
        };
    }
    match e.status {
        Some(WaitStatus::Signaled(9)) if e.oom_kills > 0 => v(Reason::Oom, 137),
        Some(WaitStatus::Exited(c)) if c != 0 && e.oom_kills > 0 => v(Reason::Oom, 137),
        Some(WaitStatus::Signaled(24)) if e.cpu_rlimit_hit => v(Reason::CpuTime, 124),
        Some(WaitStatus::Signaled(25)) if e.file_size_limit => v(Reason::FileSize, 128 + 25),
        Some(WaitStatus::Signaled(s)) if e.disk_full => v(Reason::Disk, 128 + s),
        Some(WaitStatus::Exited(c)) if c != 0 && e.disk_full => v(Reason::Disk, c),
        Some(WaitStatus::Exited(c)) if c != 0 && e.file_at_limit => v(Reason::FileSize, c),
        Some(WaitStatus::Exited(c)) if c != 0 && e.memory_rlimit_reported => v(Reason::Oom, c),
        Some(WaitStatus::Signaled(6)) if e.memory_rlimit_reported => v(Reason::Oom, 128 + 6),
        Some(WaitStatus::Signaled(s)) => v(Reason::Signaled, 128 + s),
        Some(WaitStatus::Exited(c)) => v(Reason::Exited, c),
        None => v(Reason::SpawnFailed, 125),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(status: WaitStatus) -> Evidence {
        Evidence {
            status: Some(status),
            ..Default::default()
        }
    }

    #[test]
    fn plain_exit_and_signal() {
        let v = classify(&ev(WaitStatus::Exited(3)));
        assert_eq!((v.reason, v.exit_code), (Reason::Exited, 3));
        let v = classify(&ev(WaitStatus::Signaled(11)));
        assert_eq!(
            (v.reason, v.exit_code, v.signal),
            (Reason::Signaled, 139, Some(11))
        );
    }

    #[test]
    fn oom_needs_the_counter() {
        let mut e = ev(WaitStatus::Signaled(9));
        assert_eq!(classify(&e).reason, Reason::Signaled);
        e.oom_kills = 1;
        let v = classify(&e);
        assert_eq!((v.reason, v.exit_code), (Reason::Oom, 137));
        // A child was OOM-killed and the main process failed because of it (a shell
        // exits 137): oom; the main process handled it and exited 0: exited.
        let mut e = ev(WaitStatus::Exited(137));
        e.oom_kills = 1;
        assert_eq!(
            (classify(&e).reason, classify(&e).process_exit_code),
            (Reason::Oom, Some(137))
        );
        e.status = Some(WaitStatus::Exited(0));
        assert_eq!(classify(&e).reason, Reason::Exited);
    }

    #[test]
    fn corral_causes_and_races() {
        let mut e = ev(WaitStatus::Signaled(15));
        e.kill = Some(KillCause::Timeout);
        assert_eq!(classify(&e).exit_code, 124);
        // The OOM came after corral's kill (a dying process allocating): still timeout.
        e.oom_kills = 1;
        assert_eq!(classify(&e).reason, Reason::Timeout);
        // The OOM came first: it is the reason.
        e.oom_kills_at_kill = 1;
        e.status = Some(WaitStatus::Signaled(9));
        assert_eq!(classify(&e).reason, Reason::Oom);
        let mut e = ev(WaitStatus::Exited(0));
        e.kill = Some(KillCause::CpuTime);
        assert_eq!(classify(&e).reason, Reason::CpuTime);
        e.kill = Some(KillCause::Cancelled(Some(2)));
        assert_eq!(classify(&e).exit_code, 130);
    }

    #[test]
    fn file_size_and_disk() {
        let mut e = ev(WaitStatus::Signaled(25));
        assert_eq!(classify(&e).reason, Reason::Signaled);
        e.file_size_limit = true;
        let v = classify(&e);
        assert_eq!((v.reason, v.exit_code), (Reason::FileSize, 153));
        let mut e = ev(WaitStatus::Exited(1));
        e.disk_full = true;
        let v = classify(&e);
        assert_eq!((v.reason, v.exit_code), (Reason::Disk, 1));
        // A command that coped with the full quota exited by itself.
        e.status = Some(WaitStatus::Exited(0));
        assert_eq!(classify(&e).reason, Reason::Exited);
        // EFBIG: a writer that ignores SIGXFSZ fails with a file at the limit.
        let mut e = ev(WaitStatus::Exited(1));
        e.file_at_limit = true;
        let v = classify(&e);
        assert_eq!((v.reason, v.exit_code), (Reason::FileSize, 1));
    }

    #[test]
    fn spawn_failure() {
        let e = Evidence {
            spawn_error: Some((127, "not found".into())),
            ..Default::default()
        };
        assert_eq!(classify(&e).exit_code, 127);
        assert_eq!(classify(&e).reason, Reason::SpawnFailed);
    }

    #[test]
    fn a_reported_refused_allocation_under_an_address_space_limit_is_oom() {
        let mut e = ev(WaitStatus::Exited(1));
        assert_eq!(classify(&e).reason, Reason::Exited);
        e.memory_rlimit_reported = true;
        let v = classify(&e);
        assert_eq!(
            (v.reason, v.exit_code, v.process_exit_code),
            (Reason::Oom, 1, Some(1))
        );
        let mut e = ev(WaitStatus::Signaled(6));
        e.memory_rlimit_reported = true;
        assert_eq!(classify(&e).reason, Reason::Oom);
        // Exiting 0 after catching it is handling it.
        let mut e = ev(WaitStatus::Exited(0));
        e.memory_rlimit_reported = true;
        assert_eq!(classify(&e).reason, Reason::Exited);
        let py = "Traceback (most recent call last):\n  File \"<string>\", line 1\nMemoryError\n";
        assert_eq!(reports_out_of_memory(py), Some("MemoryError"));
        assert_eq!(reports_out_of_memory("boom\n"), None);
        let old = format!("MemoryError\n{}", "later line\n".repeat(30));
        assert_eq!(
            reports_out_of_memory(&old),
            None,
            "only the last lines count"
        );
    }
}
