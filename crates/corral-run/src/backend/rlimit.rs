//! The rlimit backend: no cgroups at all, only what a process can do to its child.
//!
//! Memory is limited per process with `RLIMIT_AS` (address space: allocations beyond it
//! fail; nothing is killed), processes with `RLIMIT_NPROC` (which counts every process
//! of the *user*, and does not apply to root), CPU time per process with `RLIMIT_CPU`
//! and for the process group by corral's own check; the wall clock by corral's timer.
//! The run is the child's process group: a process that starts its own session
//! escapes it. A CPU quota cannot be enforced. Every record says so.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::Duration;

use corral_record::WaitStatus;
use corral_spec::{LimitKind, Limits};
use rustix::process::{Pid, Signal};

use super::{host_has_swap, Backend, BackendError, BackendKind, Collected, Event, Plan, Sandbox};
use crate::guard::GuardEntry;
use crate::spawn::{ChildSetup, Placement, Rlimit};

/// The rlimit backend.
#[derive(Debug, Default)]
pub struct RlimitBackend;

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

impl Backend for RlimitBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Rlimit
    }

    fn reason(&self) -> String {
        "resource limits (RLIMIT_AS, RLIMIT_CPU, RLIMIT_NPROC) and a process group; no cgroup"
            .into()
    }

    fn plan(&self, limits: &Limits) -> Plan {
        let mut p = Plan::everything(limits);
        p.drop_limit(
            LimitKind::Cpus,
            "a CPU quota needs the cgroup cpu controller",
        );
        if host_has_swap() {
            p.drop_limit(LimitKind::Swap, "swap cannot be limited without cgroups");
        }
        if is_root() {
            p.drop_limit(LimitKind::Pids, "RLIMIT_NPROC does not apply to root");
        }
        p.drop_io("disk bandwidth and weights need a cgroup (io or blkio controller); the rlimit backend has none");
        p
    }

    fn create(&self, _name: &str, limits: &Limits) -> Result<Box<dyn Sandbox>, BackendError> {
        let mut rlimits = Vec::new();
        if let Some(m) = limits.memory {
            rlimits.push(Rlimit {
                resource: libc::RLIMIT_AS,
                soft: m,
                hard: m,
            });
        }
        if let Some(c) = limits.cpu_time {
            // SIGXCPU at the budget, SIGKILL a second later if it is caught.
            let s = c.as_secs_f64().ceil().max(1.0) as u64;
            rlimits.push(Rlimit {
                resource: libc::RLIMIT_CPU,
                soft: s,
                hard: s + 1,
            });
        }
        let mut plan = self.plan(limits);
        if let (Some(n), false) = (limits.pids, is_root()) {
            // RLIMIT_NPROC counts all of the user's processes: allow what runs now plus N.
            let uid = rustix::process::getuid().as_raw();
            let n = user_process_count(uid) + n;
            rlimits.push(Rlimit {
                resource: libc::RLIMIT_NPROC,
                soft: n,
                hard: n,
            });
            plan.enforced.pids = limits.pids;
        }
        Ok(Box::new(SandboxR {
            rlimits,
            plan,
            pgid: None,
            usage: None,
        }))
    }
}

/// One run's rlimits and process group.
#[derive(Debug)]
pub struct SandboxR {
    rlimits: Vec<Rlimit>,
    plan: Plan,
    pgid: Option<i32>,
    usage: Option<crate::spawn::ChildUsage>,
}

/// Reads fields of `/proc/PID/stat` after the command name (field 3 is index 0).
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// The live (non-zombie) processes whose process group is `pgid`.
fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| stat_fields(pid).is_some_and(|f| f[0] != "Z" && f[2].parse() == Ok(pgid)))
        .collect()
}

fn user_process_count(uid: u32) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.parse::<u32>().is_ok())
                })
                .filter(|e| e.metadata().is_ok_and(|m| m.uid() == uid))
                .count() as u64
        })
        .unwrap_or(0)
}

fn ticks_to_duration(t: u64) -> Duration {
    Duration::from_nanos(t.saturating_mul(1_000_000_000) / rustix::param::clock_ticks_per_second())
}

impl Sandbox for SandboxR {
    fn cgroup(&self) -> Option<String> {
        None
    }

    fn guard_entry(&self) -> Option<GuardEntry> {
        self.pgid.map(GuardEntry::ProcessGroup)
    }

    fn plan(&self) -> Plan {
        self.plan.clone()
    }

    fn placement(&self) -> Placement<'_> {
        Placement::default()
    }

    fn child_setup<'a>(&'a self, setup: &mut ChildSetup<'a>) {
        setup.rlimits.extend(self.rlimits.iter().copied());
        // The group killed at the end: setsid makes the child its leader (pgid = pid).
        setup.new_session = true;
    }

    fn after_spawn(&mut self, pid: i32) -> Result<(), BackendError> {
        self.pgid = Some(pid);
        Ok(())
    }

    fn event_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }

    fn on_event(&mut self) -> Event {
        Event::Changed
    }

    fn kernel_kills_group_on_oom(&self) -> bool {
        true
    }

    fn oom_kills(&self) -> u64 {
        0
    }

    /// The CPU time of the group's live members, plus what the main process collected
    /// from the children it reaped.
    fn cpu_usage(&self) -> Option<Duration> {
        let pgid = self.pgid?;
        let mut ticks = 0u64;
        for pid in group_members(pgid) {
            if let Some(f) = stat_fields(pid) {
                let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                // utime, stime (fields 14, 15), cutime, cstime (16, 17).
                ticks += n(11) + n(12) + n(13) + n(14);
            }
        }
        Some(ticks_to_duration(ticks))
    }

    fn process_count(&self) -> usize {
        self.pgid.map_or(0, |g| group_members(g).len())
    }

    fn signal_all(&self, sig: Signal) -> usize {
        match self.pgid.and_then(Pid::from_raw) {
            Some(g) => rustix::process::kill_process_group(g, sig).map_or(0, |_| 1),
            None => 0,
        }
    }

    fn kill_all(&self) -> Result<(), BackendError> {
        self.signal_all(Signal::KILL);
        Ok(())
    }

    fn reap(&mut self, _pidfd: &OwnedFd) -> std::io::Result<WaitStatus> {
        let pid = self.pgid.expect("reap after spawn");
        let (status, usage) = crate::spawn::wait4(pid)?;
        self.usage = Some(usage);
        Ok(if libc::WIFSIGNALED(status) {
            WaitStatus::Signaled(libc::WTERMSIG(status))
        } else {
            WaitStatus::Exited(libc::WEXITSTATUS(status))
        })
    }

    fn collect(&self) -> Collected {
        let u = self.usage.unwrap_or_default();
        Collected {
            cpu_user: Duration::from_micros(u.user_us),
            cpu_system: Duration::from_micros(u.system_us),
            ..Collected::default()
        }
    }

    fn teardown(self: Box<Self>) -> Result<(), BackendError> {
        Ok(())
    }
}
