//! The plain-language `notes` of a record: what happened, for a scientist.

use std::time::Duration;

use corral_spec::{format_bytes, format_duration};

use crate::{signal_name, Reason, Record};

fn secs(s: f64) -> String {
    format_duration(Duration::from_secs_f64(s.max(0.0)))
}

fn cpus(c: f64) -> String {
    let s = format!("{c:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}-CPU")
}

/// The CPUs this process may run on (its affinity mask), as the runs it starts may.
fn host_cpus() -> Option<usize> {
    std::thread::available_parallelism().ok().map(|n| n.get())
}

/// A quota above the CPUs there are is accepted (the run simply cannot use it all):
/// said, so that nobody reads the quota as what the run had.
fn more_cpus_than_the_host(quota: Option<f64>, host: Option<usize>) -> Option<String> {
    let (q, h) = (quota?, host?);
    (q > h as f64).then(|| {
        format!(
            "The {} quota is more than the {h} CPU{} this host offers: the run could use at most {h}.",
            cpus(q),
            if h == 1 { "" } else { "s" }
        )
    })
}

/// Writes the notes for a finished record: first the outcome, then what else a reader
/// should know (refused forks, throttling, killed leftovers, truncated output, limits
/// that were not enforced).
pub fn compose_notes(r: &Record) -> String {
    let mut out: Vec<String> = Vec::new();
    let req = &r.limits.requested;
    let peak = r.usage.memory_peak_bytes.map(format_bytes);
    let wall = secs(r.usage.wall_s);
    match r.outcome.reason {
        Reason::Exited => {
            let code = r.outcome.process_exit_code.unwrap_or(0);
            let mut s = if code == 0 {
                format!("Finished normally after {wall}")
            } else {
                format!("Exited with code {code} after {wall}")
            };
            if let (Some(p), Some(m)) = (&peak, req.memory_bytes) {
                s.push_str(&format!("; peak memory {p} of {}", format_bytes(m)));
            }
            out.push(s + ".");
        }
        Reason::Signaled => {
            let sig = r.outcome.signal.unwrap_or(0);
            out.push(format!(
                "Ended by {} after {wall}; corral did not send it and no limit was hit.",
                signal_name(sig)
            ));
        }
        Reason::Oom if r.backend == "rlimit" && r.outcome.signal != Some(9) => {
            // Nothing was killed: an allocation beyond RLIMIT_AS failed and the analysis
            // reported it, then failed.
            let m = r
                .limits
                .enforced
                .memory_bytes
                .map(format_bytes)
                .unwrap_or_default();
            let how = match (r.outcome.process_exit_code, r.outcome.signal) {
                (Some(c), _) => format!("exited with code {c}"),
                (_, Some(s)) => format!("ended by {}", signal_name(s)),
                _ => "failed".into(),
            };
            out.push(format!(
                "Out of memory: an allocation beyond its {m} address-space limit (RLIMIT_AS) was refused; the analysis reported it on stderr and {how} after {wall}."
            ));
        }
        Reason::Oom => {
            let own_budget = r.limits.enforced.memory_bytes;
            let mut s = match own_budget {
                // cgroup v2 counts a `max` event in the cgroup whose limit was hit and
                // its ancestors: none in the run's own cgroup means a limit above it
                // (a scheduler's job cgroup it is nested in) made the kernel kill.
                Some(m) if r.backend == "cgroup2" && r.events.memory_max == 0 => format!(
                    "Killed by the kernel's out-of-memory killer before the analysis reached its {} memory budget: a memory limit above the run's cgroup was hit (the job or cgroup corral ran in)",
                    format_bytes(m)
                ),
                Some(m) => format!(
                    "Killed: the analysis used its whole {} memory budget",
                    format_bytes(m)
                ),
                None => "Killed by the kernel's out-of-memory killer: the machine (or the service's shared budget) ran out of memory".to_string(),
            };
            if let Some(p) = &peak {
                s.push_str(&format!("; peak {p}"));
            }
            out.push(s + ".");
        }
        Reason::Timeout => {
            let limit = req.timeout_s.map(secs).unwrap_or_default();
            out.push(format!(
                "Stopped: the analysis ran past its {limit} wall-clock limit."
            ));
        }
        Reason::CpuTime => {
            let limit = req.cpu_time_s.map(secs).unwrap_or_default();
            let used = r.usage.cpu_user_s + r.usage.cpu_system_s;
            out.push(format!(
                "Stopped: the analysis used up its {limit} CPU-time budget ({:.2} s of CPU used).",
                used
            ));
        }
        Reason::Cancelled => {
            let by = match r.outcome.exit_code - 128 {
                s @ (1 | 2 | 15) => format!("corral received {}", signal_name(s)),
                _ => "the run was cancelled".to_string(),
            };
            out.push(format!("Cancelled after {wall}: {by} and ended the run."));
        }
        Reason::SpawnFailed => {
            let err = r.outcome.error.clone().unwrap_or_default();
            out.push(format!("Could not start the command: {err}."));
        }
        Reason::Lost => {
            out.push(
                "Lost: the corral service stopped while this run was in flight; its processes were ended and its cgroup removed.".to_string(),
            );
        }
        Reason::FileSize => {
            let lim = req
                .file_size_bytes
                .map(|b| format!(" of {}", format_bytes(b)))
                .unwrap_or_default();
            let how = match r.outcome.signal {
                Some(_) => "Stopped",
                None => "Failed",
            };
            let what = match r.outcome.signal {
                Some(_) => "SIGXFSZ",
                None => "the write failed with EFBIG, \"File too large\"",
            };
            out.push(format!(
                "{how} after {wall}: it wrote a file past its largest-file limit{lim} ({what})."
            ));
        }
        Reason::Disk => {
            let lim = req
                .disk_bytes
                .map(|b| format!(" {}", format_bytes(b)))
                .unwrap_or_default();
            out.push(format!(
                "Failed after {wall}: it used up its{lim} disk budget; writes beyond it failed with \"Disk quota exceeded\" (EDQUOT)."
            ));
        }
    }
    if r.backend == "rlimit" {
        let failed = match r.outcome.reason {
            // (A reported refusal is an `oom` with its own sentence above.)
            Reason::Exited => r.outcome.process_exit_code != Some(0),
            Reason::Signaled => matches!(r.outcome.signal, Some(6 | 7 | 9 | 11)),
            _ => false,
        };
        if let (true, Some(m)) = (failed, r.limits.enforced.memory_bytes) {
            out.push(format!(
                "It may have hit its {} address-space limit (RLIMIT_AS): allocations beyond it fail with an out-of-memory error, which the rlimit backend recognises only when stderr is captured and ends with such a report (MemoryError, std::bad_alloc, ...).",
                format_bytes(m)
            ));
        }
        out.push(
            "Isolation is weaker without cgroups (rlimit backend): memory is limited per process, and processes that start their own session are not tracked.".to_string(),
        );
    }
    if r.events.oom_kill > 0 && r.outcome.reason != Reason::Oom {
        let n = r.events.oom_kill;
        out.push(format!(
            "{n} process{} of the run {} killed by the out-of-memory killer.",
            if n == 1 { "" } else { "es" },
            if n == 1 { "was" } else { "were" }
        ));
    }
    if r.events.grace_expired {
        out.push(format!(
            "It did not exit within {} of SIGTERM and was killed.",
            secs(r.limits.grace_s)
        ));
    }
    if r.events.pids_max > 0 {
        let n = r.events.pids_max;
        let lim = req
            .pids
            .map(|p| format!(" by the {p}-process limit"))
            .unwrap_or_default();
        out.push(format!(
            "{n} fork{} refused{lim}.",
            if n == 1 { " was" } else { "s were" }
        ));
    }
    if let Some(note) = more_cpus_than_the_host(req.cpus, host_cpus()) {
        out.push(note);
    }
    if let (Some(c), true) = (r.limits.enforced.cpus, r.events.cpu_throttled > 0) {
        let t = r.events.cpu_throttled_us as f64 / 1e6;
        if t >= 0.1 * r.usage.wall_s.max(0.001) {
            out.push(format!(
                "The {} quota held it back for {:.1} s.",
                cpus(c),
                t
            ));
        }
    }
    if r.events.leftover_killed > 0 {
        let n = r.events.leftover_killed;
        out.push(format!(
            "{n} background process{} still running when the main process ended {} killed.",
            if n == 1 { "" } else { "es" },
            if n == 1 { "was" } else { "were" }
        ));
    }
    if let Some(o) = &r.output {
        for (name, c) in [("stdout", &o.stdout), ("stderr", &o.stderr)] {
            if let Some(c) = c {
                if c.dropped_bytes > 0 {
                    out.push(format!(
                        "{name} was cut at {}; {} more were dropped.",
                        format_bytes(c.bytes),
                        format_bytes(c.dropped_bytes)
                    ));
                }
            }
        }
    }
    if !r.limits.not_enforced.is_empty() {
        let list: Vec<String> = r
            .limits
            .not_enforced
            .iter()
            .map(|g| format!("{} ({})", g.limit, g.why))
            .collect();
        out.push(format!(
            "Not enforced on this host with the {} backend: {}.",
            r.backend,
            list.join("; ")
        ));
    }
    if let Some(iso) = r.isolation.as_ref().filter(|i| !i.not_enforced.is_empty()) {
        let list: Vec<String> = iso
            .not_enforced
            .iter()
            .map(|g| format!("{} ({})", g.layer, g.why))
            .collect();
        out.push(format!("Isolation not applied: {}.", list.join("; ")));
    }
    if let Some(u) = r
        .isolation
        .as_ref()
        .and_then(|i| i.enforced.user.as_ref())
        .filter(|u| u.root)
    {
        let caps = r
            .isolation
            .as_ref()
            .and_then(|i| i.enforced.capabilities.as_deref());
        // With the sandbox off, corral's own identity is listed below instead.
        if caps == Some("none") {
            out.push(format!(
                "Ran as root (uid {}): root's access to files, but no capabilities.",
                u.uid
            ));
        }
    }
    if let Some(iso) = r
        .isolation
        .as_ref()
        .filter(|i| i.requested.isolation == "off")
    {
        let e = &iso.enforced;
        let mut off: Vec<&str> = Vec::new();
        if e.network.as_deref() == Some("host") {
            off.push("the host's network");
        }
        if e.syscalls.is_none() {
            off.push("no syscall filter");
        }
        if !e.no_new_privs {
            off.push("no no_new_privs (setuid programs work)");
        }
        if !e.new_session {
            off.push("corral's terminal session");
        }
        if e.core_dumps {
            off.push("core dumps as inherited");
        }
        if e.capabilities.as_deref() == Some("inherited") {
            off.push("corral's own user and capabilities");
        }
        if !e.pid_ns && iso.requested.pid_ns == "off" {
            off.push("the host's processes visible");
        }
        if !off.is_empty() {
            out.push(format!(
                "Not sandboxed (isolation off): {}.",
                off.join(", ")
            ));
        }
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{IsolationGap, IsolationRecord, LimitsRecord, RecordHead};

    /// A record of a run that exited by itself.
    fn exited() -> Record {
        let mut r = Record::new(RecordHead {
            id: "r".into(),
            command: vec!["true".into()],
            cwd: None,
            profile: "default".into(),
            backend: "cgroup1".into(),
            backend_reason: String::new(),
            limits: LimitsRecord::default(),
        });
        r.outcome.reason = Reason::Exited;
        r
    }

    #[test]
    fn a_cpu_quota_above_the_host_is_noted() {
        assert_eq!(
            more_cpus_than_the_host(Some(64.0), Some(2)).as_deref(),
            Some("The 64-CPU quota is more than the 2 CPUs this host offers: the run could use at most 2.")
        );
        assert_eq!(more_cpus_than_the_host(Some(2.0), Some(2)), None);
        assert_eq!(more_cpus_than_the_host(None, Some(2)), None);
        let mut r = exited();
        r.limits.requested.cpus = Some(100_000.0);
        assert!(
            compose_notes(&r).contains("quota is more than the"),
            "{}",
            compose_notes(&r)
        );
    }

    #[test]
    fn an_oom_below_the_own_limit_on_cgroup2_is_an_enclosing_limit() {
        let mut r = exited();
        r.outcome.reason = Reason::Oom;
        r.limits.enforced.memory_bytes = Some(256 << 20);
        r.events.oom_kill = 1;
        r.events.memory_max = 2;
        let own = compose_notes(&r);
        assert!(
            own.starts_with("Killed: the analysis used its whole 256"),
            "{own}"
        );
        r.backend = "cgroup2".into();
        assert_eq!(compose_notes(&r), own);
        r.events.memory_max = 0;
        let above = compose_notes(&r);
        assert!(
            above.starts_with(
                "Killed by the kernel's out-of-memory killer before the analysis reached its 256"
            ) && above.contains("a memory limit above the run's cgroup was hit"),
            "{above}"
        );
    }

    #[test]
    fn isolation_gaps_are_noted() {
        let mut r = exited();
        r.outcome.process_exit_code = Some(0);
        assert!(!compose_notes(&r).contains("Isolation"));
        r.isolation = Some(IsolationRecord::default());
        assert!(!compose_notes(&r).contains("Isolation"));
        r.isolation
            .as_mut()
            .unwrap()
            .not_enforced
            .push(IsolationGap {
                layer: "network".into(),
                why: "no CAP_SYS_ADMIN".into(),
            });
        let n = compose_notes(&r);
        assert!(
            n.ends_with("Isolation not applied: network (no CAP_SYS_ADMIN)."),
            "{n}"
        );
    }

    #[test]
    fn running_as_root_is_noted() {
        let mut r = exited();
        r.outcome.process_exit_code = Some(0);
        let mut iso = IsolationRecord::default();
        iso.enforced.user = Some(crate::UserRecord {
            name: "root".into(),
            root: true,
            files: "run-user".into(),
            ..Default::default()
        });
        iso.enforced.capabilities = Some("none".into());
        r.isolation = Some(iso);
        let n = compose_notes(&r);
        assert!(
            n.ends_with("Ran as root (uid 0): root's access to files, but no capabilities."),
            "{n}"
        );
        r.isolation
            .as_mut()
            .unwrap()
            .enforced
            .user
            .as_mut()
            .unwrap()
            .root = false;
        assert!(!compose_notes(&r).contains("root"));
    }

    #[test]
    fn isolation_off_is_noted() {
        let mut r = exited();
        let mut iso = IsolationRecord::default();
        iso.requested.isolation = "off".into();
        iso.enforced.network = Some("host".into());
        iso.enforced.core_dumps = true;
        r.isolation = Some(iso);
        let n = compose_notes(&r);
        assert!(
            n.ends_with(
                "Not sandboxed (isolation off): the host's network, no syscall filter, \
                 no no_new_privs (setuid programs work), corral's terminal session, \
                 core dumps as inherited."
            ),
            "{n}"
        );
        r.isolation.as_mut().unwrap().requested.isolation = "default".into();
        assert!(!compose_notes(&r).contains("sandboxed"));
    }
}
