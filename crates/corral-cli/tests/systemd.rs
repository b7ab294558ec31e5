//! The systemd backend against a real manager: root on the system manager
//! (`system::*`) and an unprivileged user on its own user manager (`user::*`).
//!
//! They need systemd as PID 1 with cgroup v2, the system bus, and for `user::*` a test
//! user whose manager runs (`CORRAL_VM_TEST_UID`); elsewhere they print `skipped:` and
//! pass. The VM provides all of that:
//!
//! ```text
//! cargo build -p xtask && \
//! CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$PWD/target/debug/xtask vm --systemd --" \
//!     cargo test -p corral-cli --test systemd -- --test-threads=1
//! ```
//!
//! Each test asserts what systemd and the kernel did: the OOM kill, refused forks, the
//! scope unit and its cgroup gone afterwards, no process of the run left.

mod common;

use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{alive, guard_of, Harness};

/// The tests share the manager's `corral.slice` (and the user test restarts the user
/// manager): one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// `systemctl [--user] list-units --all 'corral-*'`, as unit names.
fn units(h: &Harness) -> Vec<String> {
    let mut c = match h.user {
        Some(uid) => {
            let mut c = common::as_user(uid);
            c.args(["systemctl", "--user"]);
            c
        }
        None => Command::new("systemctl"),
    };
    let out = c
        .args([
            "list-units",
            "--all",
            "--plain",
            "--no-legend",
            "corral-*.scope",
        ])
        .output()
        .expect("systemctl runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Processes that sit in one of corral's scopes (of any manager).
fn processes_in_scopes() -> Vec<(i32, String)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        if cg.contains("/corral.slice/corral-") && alive(pid) {
            v.push((pid, cg.trim().to_string()));
        }
    }
    v
}

/// The run's scope, its unit and every process of it are gone.
fn assert_gone(h: &Harness, ran: &common::Ran) {
    h.assert_clean(ran);
    let cg = ran.rec()["cgroup"]
        .as_str()
        .expect("a cgroup in the record");
    assert!(cg.ends_with("/payload"), "{cg}");
    assert!(cg.contains("/corral.slice/corral-"), "{cg}");
    // systemd garbage-collects the inactive unit on its next loop iteration.
    let t = Instant::now();
    let mut left = units(h);
    while !left.is_empty() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
        left = units(h);
    }
    assert_eq!(left, Vec::<String>::new(), "scope units left");
    assert_eq!(
        processes_in_scopes(),
        Vec::new(),
        "processes left in scopes"
    );
}

fn oom(h: &Harness) {
    let ran = common::run_oom(h);
    assert_eq!(ran.rec()["backend"], "systemd");
    assert_eq!(ran.rec()["limits"]["enforced"]["memory_bytes"], 64 << 20);
    assert_gone(h, &ran);
}

fn fork_bomb(h: &Harness) {
    let ran = common::run_fork_bomb(
        h,
        // Forks are slow under TCG: give the bomb time to reach its limit.
        &[
            "--pids",
            "64",
            "--cpus",
            "2",
            "--timeout",
            "10s",
            "--grace",
            "1s",
        ],
        "f() { f | f & }; f; sleep 100",
        Duration::from_millis(6000),
    );
    assert_eq!(ran.rec()["limits"]["enforced"]["pids"], 64);
    let peak = ran.num("/usage/pids_peak");
    assert!(peak <= 64.0, "pids_peak {peak}");
    assert_gone(h, &ran);
}

fn timeout(h: &Harness) {
    let ran = common::run_timeout(h);
    // sleep dies on SIGTERM: the run ends right after the deadline. (Measured from
    // the child's start: corral's own start-up under TCG in the VM is slow and noisy.)
    let wall = ran.num("/usage/wall_s");
    assert!((2.0..2.0 + 3.0).contains(&wall), "wall {wall}");
    assert_gone(h, &ran);
}

fn limits_and_record(h: &Harness) {
    let ran = h.run(
        &common::ENFORCED_LIMITS,
        &[
            "sh",
            "-c",
            "cat /proc/self/cgroup; cat /sys/fs/cgroup/memory.max 2>/dev/null; exit 3",
        ],
    );
    assert_eq!(ran.reason(), "exited", "{}", ran.rec());
    assert_eq!(ran.code, 3);
    let r = ran.rec();
    assert_eq!(r["backend"], "systemd");
    let reason = r["backend_reason"].as_str().unwrap();
    match h.user {
        None => assert!(reason.contains("the system manager"), "{reason}"),
        Some(uid) => assert!(
            reason.contains(&format!("the user manager of uid {uid}")),
            "{reason}"
        ),
    }
    common::assert_limits_enforced(r);
    // The command ran in the scope's payload cgroup, which the record names. Root
    // sees it as the root of its own cgroup namespace, with the payload's limits.
    let cg = r["cgroup"].as_str().unwrap();
    assert!(cg.ends_with("/payload"), "{cg}");
    let mut lines = ran.stdout.lines();
    let own = lines.next().unwrap().strip_prefix("0::").unwrap();
    match h.user {
        None => {
            assert_eq!(own, "/", "{}", ran.stdout);
            assert_eq!(lines.next(), Some("104857600"), "{}", ran.stdout);
        }
        Some(_) => assert!(cg.ends_with(own), "record {cg}, process in {own}"),
    }
    // Only the run's own processes are counted (not the scope's keeper): the shell and
    // its cat, and the pid namespace's init where the run has one.
    let init = if r["isolation"]["enforced"]["pid_ns"] == true {
        1.0
    } else {
        0.0
    };
    assert!(ran.num("/usage/pids_peak") <= 2.0 + init, "{r}");
    assert_gone(h, &ran);
}

/// Root in a system scope cannot climb out of its payload cgroup: a cgroup namespace
/// rooted there, and no CAP_SYS_ADMIN or CAP_SYS_PTRACE to remount, `setns` into pid
/// 1's namespaces or reach the host's mounts through `/proc/1/root`.
fn contained(h: &Harness) {
    let script = "grep ^CapBnd /proc/self/status; \
        echo $$ > /sys/fs/cgroup/cgroup.procs && echo moved-within; \
        echo $$ > /proc/1/root/sys/fs/cgroup/cgroup.procs && echo escaped; \
        nsenter -t 1 -m -C sh -c 'echo $PPID > /sys/fs/cgroup/cgroup.procs' && echo escaped; \
        cat /proc/self/cgroup";
    // The host's pid namespace, so that pid 1 is the host's init (in the run's own,
    // /proc/1/root is the run's own view, where the write is a move within).
    let ran = h.run(
        &["--memory", "100M", "--pid-ns", "off"],
        &["sh", "-c", script],
    );
    assert_eq!(ran.reason(), "exited", "{}", ran.rec());
    assert!(!ran.stdout.contains("escaped"), "{}", ran.stdout);
    common::assert_capabilities_dropped(&ran.stdout);
    assert_eq!(ran.stdout.lines().last(), Some("0::/"), "{}", ran.stdout);
    assert_gone(h, &ran);
}

fn escapee(h: &Harness) {
    // The main process exits as soon as the escapee has written its pid.
    let ran = common::run_escapee(
        h,
        "setsid sh -c 'sleep 300 & echo $! > {p}' & while [ ! -s {p} ]; do sleep 0.1; done; exit 0",
    );
    assert_gone(h, &ran);
}

/// A killed corral (and its guard): `corral gc` finds the scope of the dead owner,
/// kills what is left in it and systemd removes it.
fn crash_gc(h: &Harness) {
    let pids = h.tmp().join("tree.pids");
    let script = format!(
        "sleep 300 & echo $! >> {p}; setsid sh -c 'sleep 300 & echo $! >> {p}; wait' & wait",
        p = pids.display()
    );
    // In its own pid namespace the tree would die with the run's init when corral is
    // killed: this is about orphans that outlive corral (the host's pid namespace).
    let (mut c, _json) = h.command(
        &["--timeout", "120s", "--pid-ns", "off"],
        &["sh", "-c", &script],
    );
    let mut child = c.spawn().unwrap();
    let t = Instant::now();
    let tree: Vec<i32> = loop {
        let text = std::fs::read_to_string(&pids).unwrap_or_default();
        let v: Vec<i32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        if v.len() >= 2 {
            break v;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the tree did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let corral = child.id() as i32;
    for p in guard_of(corral).into_iter().chain([corral]) {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(p).unwrap(),
            rustix::process::Signal::KILL,
        );
    }
    let _ = child.wait();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        h.run_cgroups().len(),
        1,
        "the orphaned tree keeps its scope"
    );
    let out = h
        .corral()
        .args(["gc", "--backend", "systemd"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("reaped"), "{stdout}");
    let t = Instant::now();
    while tree.iter().any(|p| alive(*p)) && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(tree.iter().all(|p| !alive(*p)), "gc left processes");
    let t = Instant::now();
    while !(h.run_cgroups().is_empty() && units(h).is_empty())
        && t.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(h.run_cgroups(), Vec::<std::path::PathBuf>::new());
    assert_eq!(units(h), Vec::<String>::new());
}

/// Restricts what the system manager delegates to `user@UID.service` to memory and
/// pids, and restores it when dropped.
struct Delegation {
    uid: u32,
    dropin: std::path::PathBuf,
}

fn controllers(uid: u32) -> Vec<String> {
    std::fs::read_to_string(format!(
        "/sys/fs/cgroup/user.slice/user-{uid}.slice/user@{uid}.service/cgroup.controllers"
    ))
    .unwrap_or_default()
    .split_whitespace()
    .map(str::to_string)
    .collect()
}

fn restart_user_manager(uid: u32, want_cpu: bool) {
    let ok = |c: &mut Command| c.status().map(|s| s.success()).unwrap_or(false);
    assert!(ok(Command::new("systemctl").arg("daemon-reload")));
    assert!(ok(Command::new("systemctl")
        .arg("restart")
        .arg(format!("user@{uid}.service"))));
    let t = Instant::now();
    loop {
        let has_cpu = controllers(uid).iter().any(|c| c == "cpu");
        let running = common::as_user(uid)
            .args(["systemctl", "--user", "is-system-running"])
            .output()
            .map(|o| {
                let s = String::from_utf8_lossy(&o.stdout);
                s.starts_with("running") || s.starts_with("degraded")
            })
            .unwrap_or(false);
        if running && has_cpu == want_cpu {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "user@{uid}.service: running {running}, controllers {:?}",
            controllers(uid)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Delegation {
    fn restrict(uid: u32) -> Delegation {
        let dir = std::path::PathBuf::from(format!("/run/systemd/system/user@{uid}.service.d"));
        std::fs::create_dir_all(&dir).unwrap();
        let dropin = dir.join("zz-corral-test-delegate.conf");
        // An empty Delegate= resets the list user@.service sets; then only these two.
        std::fs::write(&dropin, "[Service]\nDelegate=\nDelegate=memory pids\n").unwrap();
        let d = Delegation { uid, dropin };
        restart_user_manager(uid, false);
        d
    }
}

impl Drop for Delegation {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.dropin);
        restart_user_manager(self.uid, true);
    }
}

/// A limit whose controller the user manager does not delegate is reported as not
/// enforced (never silently dropped), and `--require-isolation` refuses it.
fn not_delegated(h: &Harness) {
    let uid = h.user.expect("user manager only");
    let _restore = Delegation::restrict(uid);
    assert_eq!(controllers(uid), vec!["memory", "pids"]);
    let ran = h.run(
        &["--cpus", "0.5", "--memory", "100M", "--pids", "32"],
        &["true"],
    );
    assert_eq!(ran.reason(), "exited", "{}", ran.rec());
    assert_eq!(ran.code, 0);
    let r = ran.rec();
    let gaps = r["limits"]["not_enforced"].as_array().unwrap();
    assert_eq!(gaps.len(), 1, "{r}");
    assert_eq!(gaps[0]["limit"], "cpus");
    let why = gaps[0]["why"].as_str().unwrap();
    assert!(
        why.contains("does not delegate the cpu controller"),
        "{why}"
    );
    assert!(why.contains("Delegate="), "{why}");
    assert!(r["limits"]["enforced"]["cpus"].is_null());
    assert_eq!(r["limits"]["enforced"]["memory_bytes"], 100 << 20);
    assert_eq!(r["limits"]["enforced"]["pids"], 32);
    let notes = r["notes"].as_str().unwrap();
    assert!(
        notes.contains("Not enforced on this host with the systemd backend: cpus ("),
        "{notes}"
    );
    assert_gone(h, &ran);

    let ran = h.run(&["--cpus", "0.5", "--require-isolation"], &["true"]);
    assert_eq!(ran.code, 125, "{}", ran.stderr);
    assert!(ran.stderr.contains("refusing to run"), "{}", ran.stderr);
    assert!(ran.stderr.contains("cpus"), "{}", ran.stderr);
    assert!(h.run_cgroups().is_empty());
}

/// corral started inside the user's own manager tree (as from a desktop terminal, or a
/// `systemd-run --user` service) shares a user-owned ancestor with the payload, so it
/// places the child itself with clone3 instead of asking the manager to attach it.
fn direct_placement(h: &Harness) {
    let uid = h.user.expect("user manager only");
    let json = h.tmp().join("direct.json");
    let out = common::as_user(uid)
        .args([
            "systemd-run",
            "--user",
            "--wait",
            "--pipe",
            "--quiet",
            "--collect",
            "-E",
            "CORRAL_LOG=corral_run=debug",
            common::corral_bin(),
            "run",
            "--backend",
            "systemd",
            "--json",
            json.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "cat /proc/self/cgroup",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout} {stderr}");
    assert!(stderr.contains("corral places the child"), "{stderr}");
    let ran = common::finish(out.clone(), &json, Duration::ZERO);
    assert_eq!(ran.reason(), "exited", "{}", ran.rec());
    let cg = ran.rec()["cgroup"].as_str().unwrap();
    let own = stdout.trim().strip_prefix("0::").unwrap().to_string();
    assert!(cg.ends_with(&own), "record {cg}, process in {own}");
    assert_gone(h, &ran);
}

macro_rules! scenarios {
    ($module:ident, $backend:expr, $($name:ident),* $(,)?) => {
        mod $module {
            use super::*;
            $( #[test] fn $name() {
                let h = harness_or_skip!($backend, stringify!($name));
                let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
                super::$name(&h);
            } )*
        }
    };
}

scenarios!(
    system,
    "systemd",
    oom,
    fork_bomb,
    timeout,
    limits_and_record,
    contained,
    escapee,
    crash_gc
);
scenarios!(
    user,
    "systemd-user",
    oom,
    fork_bomb,
    timeout,
    limits_and_record,
    escapee,
    crash_gc,
    direct_placement,
    not_delegated
);
