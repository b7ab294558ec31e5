//! Adversarial soak: a randomized mix of hostile workloads, several at once, through the
//! library in one process (as the service runs them). After every run: the reason
//! matches the workload's ground truth, its cgroup is gone and no process of it is
//! alive; at the end, this process' memory has not grown.
//!
//! Short mode (the default, in CI): `CORRAL_SOAK_RUNS` runs (default 200 natively on
//! cgroup1, 50 in the cgroup2 VM), `CORRAL_SOAK_PARALLEL` (default 3) at a time. Long
//! mode: `CORRAL_SOAK_RUNS=10000 cargo test --release -p corral-run --test soak --
//! --nocapture`.
//! `CORRAL_SOAK_SEED` replays a mix. Needs root and a cgroup backend (cgroup2 where it
//! has the memory controller, else cgroup1); skips otherwise, or fails where the step
//! requires what is missing (`corral_testkit`; the VM step requires cgroup2, so there
//! the soak never falls back to cgroup1).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use corral_cgroup::layout::Layout;
use corral_record::Record;
use corral_run::backend::{select, Backend, BackendKind};
use corral_run::{RunSpec, Stdio};
use corral_spec::Limits;
use corral_testkit::{Feature, Missing, Policy};

const PYTHON: &str = "/usr/bin/python3";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Work {
    Normal,
    AnonHog,
    PageCache,
    TmpfsHog,
    ForkBomb,
    CpuHog,
    Escapee,
    TermIgnorer,
    Flood,
    Sleeper,
    Stopped,
    MoveSelf,
}

const ALL: [Work; 12] = [
    Work::Normal,
    Work::AnonHog,
    Work::PageCache,
    Work::TmpfsHog,
    Work::ForkBomb,
    Work::CpuHog,
    Work::Escapee,
    Work::TermIgnorer,
    Work::Flood,
    Work::Sleeper,
    Work::Stopped,
    Work::MoveSelf,
];

struct Case {
    work: Work,
    spec: RunSpec,
    /// Files the workload writes its pids to.
    pidfile: PathBuf,
    /// A file outside the run to remove afterwards (tmpfs hog).
    cleanup: Option<PathBuf>,
}

fn base_limits() -> Limits {
    Limits {
        memory: Some(64 << 20),
        swap: Some(0),
        pids: Some(64),
        timeout: Some(Duration::from_secs(30)),
        grace: Duration::from_millis(500),
        ..Limits::default()
    }
}

fn case(work: Work, n: usize, dir: &Path, token: &str, escape_to: &Path) -> Case {
    // Each run works in its own directory: the only place a run started by root (a
    // dynamic uid) may write. The page-cache hog's is on a disk (the target directory),
    // not /tmp: a tmpfs would make it a shared-memory hog.
    let dir = match work {
        Work::PageCache => {
            let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("soak-{token}-{n}"));
            std::fs::create_dir_all(&d).unwrap();
            d
        }
        _ => dir.to_path_buf(),
    };
    let pidfile = dir.join(format!("{n}.pids"));
    let p = pidfile.display().to_string();
    let mut limits = base_limits();
    // The pid files' directory and the page-cache workload's disk directory stay
    // writable in the read-only view (a /dev/shm hog fills the run's private /dev/shm).
    limits.rw = vec![
        dir.to_path_buf(),
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
    ];
    let mut stdout = Stdio::Null;
    let mut cleanup = None;
    let sh = |s: String| vec!["sh".to_string(), "-c".to_string(), s];
    let command = match work {
        Work::Normal => sh(format!("echo $$ > {p}; echo analysis done")),
        Work::AnonHog => vec![
            PYTHON.into(),
            "-c".into(),
            format!("import os; open('{p}','w').write(str(os.getpid())); b = b'x' * (300 << 20)"),
        ],
        // On a disk (the target directory), not /tmp: a tmpfs would make this a
        // shared-memory hog.
        Work::PageCache => sh(format!(
            "echo $$ > {p}; dd if=/dev/zero of=pc-{token}-{n} bs=1M count=150 status=none; rm -f pc-{token}-{n}"
        )),
        Work::TmpfsHog => {
            let f = PathBuf::from(format!("/dev/shm/corral-soak-{token}-{n}"));
            cleanup = Some(f.clone());
            sh(format!(
                "echo $$ > {p}; dd if=/dev/zero of={} bs=1M count=200 status=none",
                f.display()
            ))
        }
        Work::ForkBomb => {
            limits.pids = Some(32);
            // About processes, not memory: 32 shells and the kernel's memory for ~2,000
            // refused forks came near 64 MiB once (an OOM instead of the timeout).
            limits.memory = Some(256 << 20);
            // Long enough for the bomb to reach the limit even in the emulated VM.
            limits.timeout = Some(Duration::from_secs(if in_vm() { 8 } else { 2 }));
            // The bomb runs in a subshell started before the limit is full, and the main
            // shell `exec`s: it never needs a fork the bomb could starve.
            sh(format!("echo $$ > {p}; (f() {{ f | f & }}; f) 2>/dev/null & exec sleep 100"))
        }
        Work::CpuHog => {
            limits.cpu_time = Some(Duration::from_millis(500));
            sh(format!("echo $$ > {p}; while :; do :; done"))
        }
        Work::Escapee => sh(format!(
            "setsid sh -c 'sleep 300 & echo $! >> {p}' & sleep 0.2; exit 0"
        )),
        Work::TermIgnorer => {
            limits.timeout = Some(Duration::from_millis(500));
            // `.ready` marks that the trap is in place (a slow start can lose the race
            // against a short deadline; then SIGTERM rightly ends it at once).
            sh(format!("trap '' TERM; echo $$ > {p}; sleep 300 & echo $! >> {p}; touch {p}.ready; wait"))
        }
        Work::Flood => {
            limits.output_limit = Some(1 << 20);
            limits.timeout = Some(Duration::from_secs(120));
            stdout = Stdio::File(dir.join(format!("{n}.out")));
            sh(format!("echo $$ > {p}; head -c {} /dev/zero", flood_bytes()))
        }
        Work::Sleeper => {
            limits.timeout = Some(Duration::from_millis(300));
            sh(format!("echo $$ > {p}; sleep 60"))
        }
        Work::Stopped => {
            limits.timeout = Some(Duration::from_millis(300));
            sh(format!("echo $$ > {p}; sleep 300 & echo $! >> {p}; kill -STOP $!; kill -STOP $$"))
        }
        Work::MoveSelf => {
            limits.timeout = Some(Duration::from_millis(500));
            sh(format!(
                "echo $$ > {p}; sleep 300 & echo $! >> {p}; echo $! > {}/cgroup.procs 2>/dev/null; wait",
                escape_to.display()
            ))
        }
    };
    Case {
        work,
        spec: RunSpec {
            command,
            env: vec![("CORRAL_SOAK".into(), token.into())],
            stdin: Stdio::Null,
            stdout,
            stderr: Stdio::Null,
            profile: "soak".into(),
            limits,
            cwd: Some(dir.clone()),
            ..RunSpec::default()
        },
        pidfile,
        cleanup: cleanup.or_else(|| (work == Work::PageCache).then(|| dir.clone())),
    }
}

fn in_vm() -> bool {
    std::env::var_os("CORRAL_IN_VM").is_some()
}

/// How much a flood writes: 1 GB natively, 50 MB in the (emulated, slow) VM.
fn flood_bytes() -> u64 {
    if in_vm() {
        50_000_000
    } else {
        1_000_000_000
    }
}

/// Checks a record against the workload's ground truth; `ready` says whether the
/// workload got far enough to install its SIGTERM trap.
fn verify(work: Work, r: &Record, backend: BackendKind, ready: bool) -> Result<(), String> {
    let reason = r.outcome.reason.as_str();
    let want: &[&str] = match work {
        Work::Normal | Work::PageCache | Work::Flood => &["exited"],
        Work::AnonHog | Work::TmpfsHog => &["oom"],
        Work::ForkBomb | Work::TermIgnorer | Work::Sleeper | Work::Stopped => &["timeout"],
        Work::CpuHog => &["cpu_time"],
        Work::Escapee => &["exited"],
        // The move is refused (v2: cgroup namespace; v1: read-only cgroup mounts), the
        // shell waits for its sleeper until the wall clock ends the run.
        Work::MoveSelf => &["timeout"],
    };
    if !want.contains(&reason) {
        return Err(format!(
            "{work:?}: reason {reason}, expected {want:?}: {}",
            r.notes
        ));
    }
    let ev = &r.events;
    match work {
        Work::Normal | Work::PageCache | Work::Flood if r.outcome.exit_code != 0 => {
            return Err(format!("{work:?}: exit {}", r.outcome.exit_code))
        }
        Work::AnonHog | Work::TmpfsHog if ev.oom_kill == 0 || r.outcome.exit_code != 137 => {
            return Err(format!(
                "{work:?}: oom_kill {} exit {}",
                ev.oom_kill, r.outcome.exit_code
            ))
        }
        Work::ForkBomb if ev.pids_max == 0 => return Err("fork bomb: no refused fork".into()),
        // (A stopped process without a handler dies of SIGTERM at once: the kernel
        // wakes it for a fatal signal, so only the ignorer needs the grace to expire.)
        Work::TermIgnorer if ready && !ev.grace_expired => {
            return Err(format!("{work:?}: grace did not expire"))
        }
        Work::Escapee if ev.leftover_killed == 0 => return Err("escapee: not killed".into()),
        Work::Flood => {
            let o = r
                .output
                .as_ref()
                .and_then(|o| o.stdout.as_ref())
                .ok_or("flood: no output")?;
            if o.bytes != 1 << 20 || o.dropped_bytes != flood_bytes() - (1 << 20) {
                return Err(format!(
                    "flood: kept {} dropped {}",
                    o.bytes, o.dropped_bytes
                ));
            }
        }
        _ => {}
    }
    if let (Some(peak), Some(lim)) = (r.usage.memory_peak_bytes, r.limits.enforced.memory_bytes) {
        // v1's max_usage may exceed the limit by a few pages of kernel memory.
        if peak > lim + (1 << 20) {
            return Err(format!(
                "{work:?}: peak {peak} over the limit {lim} ({backend:?})"
            ));
        }
    }
    if let Some(cg) = &r.cgroup {
        if Path::new(cg).exists() {
            return Err(format!("{work:?}: cgroup {cg} left behind"));
        }
    }
    Ok(())
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").and_then(|(_, r)| r.chars().next()))
        .is_some_and(|st| st != 'Z' && st != 'X')
}

/// Processes anywhere on the host that carry this soak's token in their environment.
fn tagged_processes(token: &str) -> Vec<i32> {
    let needle = format!("CORRAL_SOAK={token}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()))
                .unwrap_or(false)
                && alive(*pid)
        })
        .collect()
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// A private root for this soak, and the cgroup a MoveSelf workload tries to escape to.
fn roots(kind: BackendKind, token: &str) -> (PathBuf, PathBuf, Vec<PathBuf>) {
    let layout = Layout::detect();
    match kind {
        BackendKind::Cgroup2 => {
            let m = layout.v2.unwrap().mount_point;
            let root = m.join(format!("corral-soak-{token}"));
            let escape = m.join(format!("corral-soak-{token}-escape"));
            (root.clone(), escape.clone(), vec![root, escape])
        }
        _ => {
            let root = PathBuf::from(format!("/corral-soak-{token}"));
            let escape = layout.v1["memory"]
                .mount_point
                .join(format!("corral-soak-{token}-escape"));
            let mut dirs: Vec<PathBuf> = layout
                .v1
                .values()
                .map(|m| m.mount_point.join(format!("corral-soak-{token}")))
                .collect();
            dirs.push(escape.clone());
            (root, escape, dirs)
        }
    }
}

/// The backend the soak runs on, or what is missing for it. A step that requires
/// cgroup2 gets cgroup2 or the reason it is missing, never the cgroup1 fallback.
fn soak_backend(layout: &Layout) -> Result<BackendKind, Missing> {
    if !rustix::process::geteuid().is_root() {
        return Err(Missing::new(Feature::Root, "needs root to create cgroups"));
    }
    if layout.v2_controllers.iter().any(|c| c == "memory") {
        return Ok(BackendKind::Cgroup2);
    }
    let no_v2 = Missing::new(
        Feature::Cgroup2,
        "the cgroup2 mount has no memory controller",
    );
    if Policy::from_env().must_have(Feature::Cgroup2) {
        return Err(no_v2);
    }
    if layout.v1.contains_key("memory") {
        return Ok(BackendKind::Cgroup1);
    }
    Err(Missing::new(
        Feature::Cgroup1,
        format!("{no_v2}, and there is no cgroup v1 memory hierarchy"),
    ))
}

#[test]
fn soak() {
    let layout = Layout::detect();
    let kind = match soak_backend(&layout) {
        Ok(k) => k,
        Err(missing) => {
            corral_testkit::skip("soak", &missing);
            return;
        }
    };
    let in_vm = std::env::var_os("CORRAL_IN_VM").is_some();
    let runs: usize = std::env::var("CORRAL_SOAK_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if in_vm { 50 } else { 200 });
    let seed: u64 = std::env::var("CORRAL_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    let token = format!("{}", std::process::id());
    eprintln!("soak: {runs} runs on {kind:?}, seed {seed} (CORRAL_SOAK_SEED={seed} replays it)");
    let (root, escape_to, cleanup_dirs) = roots(kind, &token);
    std::fs::create_dir_all(&escape_to).unwrap();
    let tmp = tempfile::tempdir().unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let backend: Arc<dyn Backend> = Arc::from(select(Some(kind), Some(&root)).expect("backend"));
    let works: Vec<Work> = ALL.to_vec();
    let mut rng = Rng(seed);
    let cases: Vec<Case> = (0..runs)
        .map(|n| {
            case(
                works[(rng.next() % works.len() as u64) as usize],
                n,
                tmp.path(),
                &token,
                &escape_to,
            )
        })
        .collect();

    let t = Instant::now();
    let mut rss_after_warmup = 0;
    let mut failures = Vec::new();
    let mut counts = std::collections::BTreeMap::new();
    let parallel: usize = std::env::var("CORRAL_SOAK_PARALLEL")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(3);
    for (i, chunk) in cases.chunks(parallel).enumerate() {
        let results: Vec<(Work, Result<Record, String>)> = rt.block_on(async {
            let mut handles = Vec::new();
            for c in chunk {
                let b = backend.clone();
                let spec = c.spec.clone();
                let work = c.work;
                handles.push(tokio::spawn(async move {
                    let (_tx, rx) = tokio::sync::watch::channel(None);
                    (
                        work,
                        corral_run::run(b.as_ref(), spec, rx)
                            .await
                            .map_err(|e| e.to_string()),
                    )
                }));
            }
            let mut out = Vec::new();
            for h in handles {
                out.push(h.await.unwrap());
            }
            out
        });
        for (c, (work, res)) in chunk.iter().zip(results) {
            *counts.entry(format!("{work:?}")).or_insert(0) += 1;
            let ready = c.pidfile.with_extension("pids.ready").exists();
            // In its own pid namespace the run wrote that namespace's pids, which mean
            // nothing on the host: its processes are checked by their tag below.
            let in_pid_ns = res
                .as_ref()
                .ok()
                .and_then(|r| r.isolation.as_ref())
                .is_some_and(|i| i.enforced.pid_ns);
            let check = res.and_then(|r| verify(work, &r, kind, ready));
            if let Err(e) = check {
                failures.push(e);
            }
            let pids: Vec<i32> = std::fs::read_to_string(&c.pidfile)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            let live: Vec<i32> = match in_pid_ns {
                false => pids.into_iter().filter(|p| alive(*p)).collect(),
                // Every run of the chunk has ended: nothing of this soak may be left.
                true => tagged_processes(&token),
            };
            if !live.is_empty() {
                failures.push(format!("{work:?}: processes {live:?} outlived the run"));
            }
            if let Some(f) = &c.cleanup {
                let _ = if f.is_dir() {
                    std::fs::remove_dir_all(f)
                } else {
                    std::fs::remove_file(f)
                };
            }
        }
        if i == 6 {
            rss_after_warmup = rss_kib();
        }
    }
    let rss_end = rss_kib();
    let stray = tagged_processes(&token);
    let run_dir = match kind {
        BackendKind::Cgroup2 => root.clone(),
        _ => layout.v1["memory"]
            .mount_point
            .join(root.strip_prefix("/").unwrap()),
    };
    let left: Vec<String> = std::fs::read_dir(run_dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    for d in cleanup_dirs.iter().rev() {
        let _ = std::fs::remove_dir(d);
    }
    eprintln!(
        "soak: {runs} runs in {:.1} s; mix {counts:?}; RSS {rss_after_warmup} KiB after warm-up, {rss_end} KiB at the end",
        t.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        stray.is_empty(),
        "processes of the soak still alive: {stray:?}"
    );
    assert!(left.is_empty(), "run cgroups left: {left:?}");
    assert!(
        rss_end <= rss_after_warmup + 4096,
        "memory grew from {rss_after_warmup} KiB to {rss_end} KiB"
    );
}
