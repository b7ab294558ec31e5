//! Enforcement scenarios, run against every cgroup backend this host offers.
//!
//! Each test asserts what the kernel did (the OOM kill happened, forks were refused,
//! the process tree is gone, the cgroup was removed), not only what corral wrote. They
//! need root and the backend's cgroups; where those are missing they print
//! `skipped: <reason>` and pass. On the hybrid development hosts the `cgroup1_*` tests
//! run natively and the `cgroup2_*` tests run inside the VM (`cargo xtask test`).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{alive, guard_of, Harness, PYTHON};

fn oom(h: &Harness) {
    let ran = common::run_oom(h);
    assert!(ran.notes().contains("64.0 MiB memory budget"));
    h.assert_clean(&ran);
}

fn fork_bomb(h: &Harness) {
    let ran = common::run_fork_bomb(
        h,
        &["--pids", "64", "--timeout", "4s", "--grace", "1s"],
        // The main shell forks the bomb before the limit is full, then `exec`s: it never
        // needs a fork the bomb could starve.
        "(f() { f | f & }; f) 2>/dev/null & exec sleep 100",
        Duration::from_millis(1500),
    );
    if let Some(p) = ran.rec()["usage"]["pids_peak"].as_f64() {
        assert!(p <= 64.0, "pids_peak {p}");
    }
    h.assert_clean(&ran);
}

fn timeout(h: &Harness) {
    let ran = common::run_timeout(h);
    // sleep dies on SIGTERM: the run ends right after the deadline.
    assert!(
        ran.elapsed < Duration::from_secs(2 + 3 + 1),
        "{:?}",
        ran.elapsed
    );
    h.assert_clean(&ran);
}

fn escapee(h: &Harness) {
    let ran = common::run_escapee(
        h,
        "setsid sh -c 'sleep 300 & echo $! > {p}' & sleep 0.5; exit 0",
    );
    assert_eq!(ran.code, 0);
    h.assert_clean(&ran);
}

fn sigterm_ignorer(h: &Harness) {
    let ran = h.run(
        &["--timeout", "1s", "--grace", "1s"],
        &["sh", "-c", "trap '' TERM; sleep 300"],
    );
    assert_eq!(ran.reason(), "timeout", "{}", ran.rec());
    assert!(ran.rec()["events"]["grace_expired"].as_bool().unwrap());
    assert!(ran.elapsed >= Duration::from_secs(2), "{:?}", ran.elapsed);
    // From the start of the command: deadline 1 s + grace 1 s, then SIGKILL ends it
    // within a second (the emulated VM gets more slack for corral's own start-up).
    let wall = ran.num("/usage/wall_s");
    assert!((2.0..3.0).contains(&wall), "wall {wall}");
    assert!(
        ran.elapsed < Duration::from_secs(4) + slack(),
        "{:?}",
        ran.elapsed
    );
    h.assert_clean(&ran);
}

/// Extra time allowed for corral's own start-up in the emulated (TCG) test VM.
fn slack() -> Duration {
    if std::env::var_os("CORRAL_IN_VM").is_some() {
        Duration::from_secs(3)
    } else {
        Duration::ZERO
    }
}

fn cpu_time(h: &Harness) {
    let ran = h.run(
        &["--cpu-time", "1s", "--timeout", "60s"],
        &["sh", "-c", "while :; do :; done"],
    );
    assert_eq!(ran.reason(), "cpu_time", "{}", ran.rec());
    assert_eq!(ran.code, 124);
    let used = ran.num("/usage/cpu_user_s") + ran.num("/usage/cpu_system_s");
    assert!(used >= 0.95, "stopped before the budget was used: {used}");
    h.assert_clean(&ran);
}

fn two_at_once(h: &Harness) {
    let (mut hog, hog_json) = h.command(
        &["--memory", "64M"],
        &[
            PYTHON,
            "-c",
            "import time; time.sleep(0.5); b = b'x' * (300 << 20)",
        ],
    );
    let (mut calm, calm_json) = h.command(
        &["--memory", "256M"],
        &["sh", "-c", "sleep 2; echo calm-done"],
    );
    let t = Instant::now();
    let hog = hog.spawn().unwrap();
    let calm = calm.spawn().unwrap();
    let hog = common::finish(hog.wait_with_output().unwrap(), &hog_json, t.elapsed());
    let calm = common::finish(calm.wait_with_output().unwrap(), &calm_json, t.elapsed());
    assert_eq!(hog.reason(), "oom", "{}", hog.rec());
    assert_eq!(calm.reason(), "exited", "{}", calm.rec());
    assert_eq!(calm.code, 0);
    assert_eq!(calm.stdout.trim(), "calm-done");
    assert_eq!(calm.num("/events/oom_kill"), 0.0);
    assert_ne!(hog.rec()["id"], calm.rec()["id"]);
    h.assert_clean(&hog);
    h.assert_clean(&calm);
}

fn bad_input(h: &Harness) {
    let meta = h.tmp().join("bad.json");
    std::fs::write(&meta, "{\"limits\": {\"memory\": ").unwrap();
    let meta = meta.display().to_string();
    let cases: &[(&[&str], &[&str], i32, &str)] = &[
        (
            &["--memory", "12X"],
            &["true"],
            125,
            "invalid memory size \"12X\"",
        ),
        (&["--cpus", "0"], &["true"], 125, "invalid CPU quota \"0\""),
        (
            &["--timeout", "-3s"],
            &["true"],
            125,
            "invalid timeout \"-3s\"",
        ),
        (
            &[],
            &["no-such-command-corral"],
            127,
            "command not found: no-such-command-corral",
        ),
        (&["--cwd", "/no/such/dir"], &["true"], 125, "/no/such/dir"),
        (
            &["--profile", "nope"],
            &["true"],
            125,
            "unknown profile \"nope\"",
        ),
        (&["--limits-from", &meta], &["true"], 125, "not valid JSON"),
        (&[], &["/etc/passwd"], 126, "cannot execute"),
        (
            &["--syscalls", "strict"],
            &["true"],
            125,
            "invalid syscall policy \"strict\"",
        ),
    ];
    for (args, cmd, code, msg) in cases {
        let ran = h.run(args, cmd);
        assert_eq!(ran.code, *code, "{args:?} {cmd:?}: {}", ran.stderr);
        let lines: Vec<&str> = ran.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one message for {args:?}: {}", ran.stderr);
        assert!(
            lines[0].contains(msg),
            "{args:?}: {:?} lacks {msg:?}",
            lines[0]
        );
        assert!(h.run_cgroups().is_empty(), "{args:?} left a cgroup");
        let r = ran.record.as_ref().expect("a record or an error file");
        if *code == 125 && r["schema"] == "corral.error/v1" {
            assert_eq!(r["exit_code"], 125);
            assert!(r["error"].as_str().unwrap().contains(msg), "{r}");
        } else {
            assert_eq!(r["outcome"]["reason"], "spawn_failed");
            assert!(r["cgroup"].is_null());
        }
    }
}

fn limits_and_record(h: &Harness) {
    let ran = h.run(&common::ENFORCED_LIMITS, &["sh", "-c", "echo hi; exit 3"]);
    assert_eq!(ran.reason(), "exited");
    assert_eq!(ran.code, 3);
    let r = ran.rec();
    assert_eq!(r["schema"], "corral.result/v1");
    assert_eq!(r["backend"], h.backend);
    assert_eq!(r["limits"]["requested"]["memory_bytes"], 100 << 20);
    common::assert_limits_enforced(r);
    assert_eq!(ran.stdout, "hi\n");
    for k in ["wall_s", "cpu_user_s", "cpu_system_s"] {
        assert!(r["usage"][k].is_f64(), "{k}");
    }
    assert!(ran.notes().starts_with("Exited with code 3"));
    h.assert_clean(&ran);
}

fn cpu_quota(h: &Harness) {
    // 3 s of wall at half a CPU is 1.5 s of CPU, within 10 %. The quota is a ceiling:
    // more is a failure at once; less can only come from other load on a 2-core host,
    // so that alone is retried (up to three runs).
    let mut seen = Vec::new();
    for _ in 0..3 {
        let ran = h.run(
            &["--cpus", "0.5", "--timeout", "3s", "--grace", "1s"],
            &["sh", "-c", "while :; do :; done"],
        );
        assert_eq!(ran.reason(), "timeout", "{}", ran.rec());
        assert!(ran.num("/events/cpu_throttled") > 0.0, "{}", ran.rec());
        assert_eq!(ran.rec()["limits"]["enforced"]["cpus"], 0.5);
        h.assert_clean(&ran);
        if std::env::var_os("CORRAL_IN_VM").is_some() {
            eprintln!("cpu_quota: accuracy not asserted: guest CPU time is distorted under TCG");
            return;
        }
        let used = ran.num("/usage/cpu_user_s") + ran.num("/usage/cpu_system_s");
        assert!(
            used <= 1.65,
            "used {used} s of CPU: more than the 0.5-CPU quota allows"
        );
        if used >= 1.35 {
            return;
        }
        seen.push(used);
    }
    panic!("CPU use below 1.5 s - 10 % in every attempt: {seen:?}");
}

fn output_cap(h: &Harness) {
    let out = h.tmp().join("flood.out");
    let err = h.tmp().join("flood.err");
    let ran = h.run(
        &[
            "--output-limit",
            "1M",
            "--stdout",
            out.to_str().unwrap(),
            "--stderr",
            err.to_str().unwrap(),
            "--timeout",
            "60s",
        ],
        &["sh", "-c", "head -c 50000000 /dev/zero; echo oops >&2"],
    );
    assert_eq!(ran.reason(), "exited", "{}", ran.rec());
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 1 << 20);
    assert_eq!(std::fs::read_to_string(&err).unwrap(), "oops\n");
    let o = &ran.rec()["output"];
    assert_eq!(o["stdout"]["bytes"], 1 << 20);
    assert_eq!(o["stdout"]["dropped_bytes"], 50_000_000 - (1 << 20));
    assert_eq!(o["stderr"]["dropped_bytes"], 0);
    assert!(ran.notes().contains("stdout was cut at 1.0 MiB"));
    h.assert_clean(&ran);
}

fn environment_and_metadata(h: &Harness) {
    let meta = h.tmp().join("analysis.toml");
    std::fs::write(
        &meta,
        "title = \"qc\"\nprofile = \"tool\"\n[limits]\nmemory = \"300M\"\npids = 40\n",
    )
    .unwrap();
    let ran = h.run(
        &[
            "--limits-from",
            meta.to_str().unwrap(),
            "--pids",
            "50",
            "--cwd",
            h.tmp().to_str().unwrap(),
            "--clear-env",
            "--env",
            "PATH=/usr/bin:/bin",
            "--env",
            "ANALYSIS=qc",
        ],
        &["sh", "-c", "pwd; env | sort"],
    );
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let r = ran.rec();
    assert_eq!(r["profile"], "tool");
    // metadata over the profile, flags over the metadata
    assert_eq!(r["limits"]["requested"]["memory_bytes"], 300 << 20);
    assert_eq!(r["limits"]["requested"]["pids"], 50);
    assert_eq!(r["limits"]["requested"]["cpus"], 0.5);
    let mut lines = ran.stdout.lines();
    assert_eq!(lines.next(), Some(h.tmp().to_str().unwrap()));
    let env: Vec<&str> = lines
        .filter(|l| !l.starts_with("PWD=") && !l.starts_with("SHLVL=") && !l.starts_with('_'))
        .collect();
    assert_eq!(env, vec!["ANALYSIS=qc", "PATH=/usr/bin:/bin"]);
}

fn contained(h: &Harness) {
    // A root-run analysis tries to move itself out of its cgroup: straight through the
    // cgroup files, through pid 1's view of them, after remounting them read-write,
    // and after entering pid 1's cgroup and mount namespaces.
    let script = match h.backend {
        "cgroup2" => {
            "cat /proc/self/cgroup; cat /sys/fs/cgroup/memory.max; \
             grep ^CapBnd /proc/self/status; \
             echo $$ > /proc/1/root/sys/fs/cgroup/cgroup.procs && echo escaped; \
             nsenter -t 1 -m -C sh -c 'echo $PPID > /sys/fs/cgroup/cgroup.procs' && echo escaped; \
             grep -q '^0::/$' /proc/self/cgroup && echo still-inside"
        }
        _ => {
            "grep ^CapBnd /proc/self/status; \
             echo $$ > /sys/fs/cgroup/memory/cgroup.procs && echo escaped; \
             echo $$ > /proc/1/root/sys/fs/cgroup/memory/cgroup.procs && echo escaped; \
             mount -o remount,bind,rw /sys/fs/cgroup/memory && echo escaped; \
             echo $$ > /sys/fs/cgroup/memory/cgroup.procs && echo escaped; \
             grep memory /proc/self/cgroup"
        }
    };
    // The host's pid namespace, so that pid 1 is the host's init (in the run's own,
    // /proc/1 is the run's init, whose view of the cgroups is the run's own).
    let ran = h.run(
        &["--memory", "100M", "--pid-ns", "off"],
        &["sh", "-c", script],
    );
    assert_eq!(ran.reason(), "exited", "{}", ran.rec());
    assert!(!ran.stdout.contains("escaped"), "{}", ran.stdout);
    common::assert_capabilities_dropped(&ran.stdout);
    if h.backend == "cgroup2" {
        let mut l = ran.stdout.lines();
        assert_eq!(l.next(), Some("0::/"), "{}", ran.stdout);
        assert_eq!(l.next(), Some("104857600"), "{}", ran.stdout);
        assert!(ran.stdout.contains("still-inside"));
    } else {
        let name = std::path::Path::new(ran.rec()["cgroup"].as_str().unwrap())
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        assert!(ran.stdout.contains(&name), "{}", ran.stdout);
    }
    h.assert_clean(&ran);
}

fn sandbox_denials(h: &Harness) {
    let ran = common::run_sandbox_denials(h);
    h.assert_clean(&ran);
}

fn sandbox_off(h: &Harness) {
    let ran = common::run_sandbox_off(h);
    h.assert_clean(&ran);
}

fn isolation_off(h: &Harness) {
    let ran = common::run_isolation_off(h);
    h.assert_clean(&ran);
}

fn isolation_precedence(h: &Harness) {
    common::run_isolation_precedence(h);
}

fn sandbox_setuid(h: &Harness) {
    let ran = common::run_sandbox_setuid(h);
    if ran.record.is_some() {
        h.assert_clean(&ran);
    }
}

fn sandbox_tiocsti(h: &Harness) {
    common::run_sandbox_tiocsti(h);
    assert_eq!(h.run_count(), 0);
}

fn signals(h: &Harness) {
    for (sig, code) in [
        (rustix::process::Signal::TERM, 143),
        (rustix::process::Signal::INT, 130),
        (rustix::process::Signal::HUP, 129),
    ] {
        let (mut child, pids, json) = start_tree(h);
        let corral = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        rustix::process::kill_process(corral, sig).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(code), "{sig:?}");
        let live = wait_dead(&pids, Duration::from_secs(1));
        assert!(
            live.is_empty(),
            "{sig:?}: processes outlived the run: {live:?}"
        );
        assert_eq!(h.run_count(), 0, "{sig:?}: cgroup left");
        let rec: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(rec["outcome"]["reason"], "cancelled", "{rec}");
        assert_eq!(rec["outcome"]["exit_code"], code);
    }
}

/// Starts a run of a small process tree (two children and a setsid escapee) that writes
/// its pids to a file, and returns corral's child handle and the pids.
// The caller waits for the child it gets back; the lint cannot see through the tuple.
#[allow(clippy::zombie_processes)]
fn start_tree(h: &Harness) -> (std::process::Child, Vec<i32>, std::path::PathBuf) {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let pids = h.tmp().join(format!("tree-{n}.pids"));
    let script = format!(
        "sleep 300 & echo $! >> {p}; sleep 300 & echo $! >> {p}; \
         setsid sh -c 'sleep 300 & echo $! >> {p}; wait' & echo $$ >> {p}; wait",
        p = pids.display()
    );
    let (mut c, json) = h.command(&["--timeout", "120s"], &["sh", "-c", &script]);
    let child = c.spawn().unwrap();
    let t = Instant::now();
    loop {
        let text = std::fs::read_to_string(&pids).unwrap_or_default();
        let v: Vec<i32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        if v.len() >= 4 {
            // The run wrote its own namespace's pids: their host pids, while it runs.
            let corral = child.id() as i32;
            let v = v
                .iter()
                .map(|&p| common::host_pid(corral, p).expect("a pid of the run on the host"))
                .collect();
            return (child, v, json);
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the tree did not start: {text:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_dead(pids: &[i32], within: Duration) -> Vec<i32> {
    let t = Instant::now();
    loop {
        let live: Vec<i32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        if live.is_empty() || t.elapsed() > within {
            return live;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kill9(pid: i32) {
    let p = rustix::process::Pid::from_raw(pid).unwrap();
    rustix::process::kill_process(p, rustix::process::Signal::KILL).unwrap();
}

fn crash_guard(h: &Harness) {
    let (mut child, pids, _) = start_tree(h);
    assert_eq!(h.run_count(), 1);
    kill9(child.id() as i32);
    let _ = child.wait();
    let live = wait_dead(&pids, Duration::from_secs(10));
    assert!(
        live.is_empty(),
        "processes outlived their killed corral: {live:?}"
    );
    let t = Instant::now();
    while !h.run_cgroups().is_empty() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        h.run_cgroups(),
        Vec::<std::path::PathBuf>::new(),
        "the guard left cgroups"
    );
}

fn crash_gc(h: &Harness) {
    let (mut child, pids, _) = start_tree(h);
    let corral = child.id() as i32;
    // The guard is started off the launch path: give a loaded host a moment.
    let t = Instant::now();
    let guard = loop {
        if let Some(g) = guard_of(corral) {
            break g;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "corral has no guard process"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    kill9(guard);
    kill9(corral);
    let _ = child.wait();
    // With the guard gone too, the run's cgroup holds the orphans until gc.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(h.run_count(), 1);
    let out = Command::new(common::corral_bin())
        .args(["gc", "--backend", h.backend, "--cgroup-root", &h.root_arg])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("reaped"));
    let live = wait_dead(&pids, Duration::from_secs(5));
    assert!(live.is_empty(), "gc left processes: {live:?}");
    assert_eq!(
        h.run_cgroups(),
        Vec::<std::path::PathBuf>::new(),
        "gc left cgroups"
    );
    // A second gc finds nothing, and a live run of another corral is never reaped.
    let (mut child, pids, _) = start_tree(h);
    let out = Command::new(common::corral_bin())
        .args(["gc", "--backend", h.backend, "--cgroup-root", &h.root_arg])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "nothing to reap"
    );
    assert!(pids.iter().all(|p| alive(*p)));
    kill9(child.id() as i32);
    let _ = child.wait();
    assert!(wait_dead(&pids, Duration::from_secs(10)).is_empty());
}

/// The CPU accuracy test runs alone: on 2 cores a parallel fork bomb would take the
/// CPU its quota allows. Every other scenario shares the lock.
static CPU: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn exclusive(name: &str) -> bool {
    name == "cpu_quota"
}

/// One test per scenario and cgroup backend: `cgroup2::oom`, `cgroup1::oom`, ...
macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        scenarios!(@backend cgroup2, $($name),*);
        scenarios!(@backend cgroup1, $($name),*);
    };
    (@backend $backend:ident, $($name:ident),*) => {
        mod $backend {
            use super::*;
            $( #[test] fn $name() {
                let h = harness_or_skip!(stringify!($backend), stringify!($name));
                let _g = if exclusive(stringify!($name)) { (None, Some(CPU.write().unwrap_or_else(|e| e.into_inner()))) } else { (Some(CPU.read().unwrap_or_else(|e| e.into_inner())), None) };
                super::$name(&h);
            } )*
        }
    };
}

scenarios!(
    oom,
    fork_bomb,
    timeout,
    escapee,
    sigterm_ignorer,
    cpu_time,
    two_at_once,
    bad_input,
    limits_and_record,
    cpu_quota,
    crash_guard,
    crash_gc,
    output_cap,
    environment_and_metadata,
    contained,
    signals,
    sandbox_denials,
    sandbox_off,
    isolation_off,
    isolation_precedence,
    sandbox_setuid,
    sandbox_tiocsti,
);
