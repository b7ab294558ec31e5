//! The rlimit backend: no cgroups, only rlimits and a process group. These tests run on
//! any Linux host, as any user.

mod common;

use std::time::Duration;

use common::{alive, read_pid, PYTHON};

#[test]
fn memory_hog_fails_with_a_clear_note() {
    let h = harness_or_skip!("rlimit", "memory");
    let ran = h.run(
        &["--memory", "64M"],
        &[PYTHON, "-c", "b = b'x' * (300 << 20)"],
    );
    assert_ne!(ran.code, 0);
    assert_eq!(ran.rec()["backend"], "rlimit");
    assert_eq!(ran.rec()["limits"]["enforced"]["memory_bytes"], 64 << 20);
    let notes = ran.notes();
    assert!(notes.contains("64.0 MiB address-space limit"), "{notes}");
    assert!(notes.contains("Isolation is weaker"), "{notes}");
}

#[test]
fn timeout_ends_the_process_group() {
    let h = harness_or_skip!("rlimit", "timeout");
    let pidfile = h.tmp().join("child.pid");
    let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
    let (mut c, json) = h.command(
        &["--timeout", "1s", "--grace", "1s"],
        &["sh", "-c", &script],
    );
    let t = std::time::Instant::now();
    let child = c.spawn().expect("corral starts");
    let pid = read_pid(&pidfile, Duration::from_secs(1)).unwrap();
    // A pid of the run's own namespace (as root): the member's host pid, while it runs.
    let pid = common::host_pid(child.id() as i32, pid).expect("the member on the host");
    let ran = common::finish(child.wait_with_output().unwrap(), &json, t.elapsed());
    assert_eq!(ran.reason(), "timeout", "{}", ran.rec());
    assert_eq!(ran.code, 124);
    assert!(!alive(pid), "the group member {pid} outlived the run");
    assert!(ran.elapsed < Duration::from_secs(3));
}

#[test]
fn cpu_quota_is_reported_not_enforced() {
    let h = harness_or_skip!("rlimit", "quota");
    let ran = h.run(&["--cpus", "0.5"], &["true"]);
    assert_eq!(ran.code, 0);
    let r = ran.rec();
    assert_eq!(r["limits"]["requested"]["cpus"], 0.5);
    assert!(r["limits"]["enforced"]["cpus"].is_null());
    let gaps = r["limits"]["not_enforced"].as_array().unwrap();
    assert!(gaps.iter().any(|g| g["limit"] == "cpus"), "{gaps:?}");
}

#[test]
fn cpu_time_limit_applies() {
    let h = harness_or_skip!("rlimit", "cputime");
    let ran = h.run(
        &["--cpu-time", "1s", "--cpus", "max", "--timeout", "30s"],
        &["sh", "-c", "while :; do :; done"],
    );
    assert_eq!(ran.reason(), "cpu_time", "{}", ran.rec());
    assert_eq!(ran.code, 124);
}

#[test]
fn require_isolation_refuses() {
    let h = harness_or_skip!("rlimit", "require");
    let ran = h.run(&["--require-isolation", "--cpus", "0.5"], &["true"]);
    assert_eq!(ran.code, 125);
    assert!(ran.stderr.contains("refusing to run"), "{}", ran.stderr);
    assert!(ran.stderr.contains("cpus"), "{}", ran.stderr);
    assert_eq!(ran.rec()["schema"], "corral.error/v1");
    assert!(ran.rec()["error"]
        .as_str()
        .unwrap()
        .contains("refusing to run"));
    // Nothing requested that it cannot do: it runs.
    let ran = h.run(
        &[
            "--require-isolation",
            "--cpus",
            "max",
            "--pids",
            "max",
            "--memory",
            "1G",
        ],
        &["true"],
    );
    assert_eq!(ran.code, 0, "{}", ran.stderr);
}

#[test]
fn sandbox_denials() {
    let h = harness_or_skip!("rlimit", "sandbox_denials");
    common::run_sandbox_denials(&h);
}

#[test]
fn isolation_off() {
    let h = harness_or_skip!("rlimit", "isolation_off");
    common::run_isolation_off(&h);
}

#[test]
fn isolation_precedence() {
    let h = harness_or_skip!("rlimit", "isolation_precedence");
    common::run_isolation_precedence(&h);
}

#[test]
fn sandbox_off() {
    let h = harness_or_skip!("rlimit", "sandbox_off");
    common::run_sandbox_off(&h);
}

#[test]
fn sandbox_setuid() {
    let h = harness_or_skip!("rlimit", "sandbox_setuid");
    if !rustix::process::geteuid().is_root() {
        corral_testkit::skip(
            "rlimit sandbox_setuid",
            &common::Missing::new(common::Feature::Root, "needs root to make a setuid file"),
        );
        return;
    }
    common::run_sandbox_setuid(&h);
}

#[test]
fn sandbox_tiocsti() {
    let h = harness_or_skip!("rlimit", "sandbox_tiocsti");
    common::run_sandbox_tiocsti(&h);
}

#[test]
fn a_cpu_quota_above_the_hosts_cpus_is_accepted_with_a_note() {
    let h = harness_or_skip!("rlimit", "manycpus");
    let ran = h.run(&["--cpus", "4096"], &["true"]);
    assert_eq!(ran.code, 0);
    assert_eq!(ran.rec()["limits"]["requested"]["cpus"], 4096.0);
    let notes = ran.notes();
    assert!(notes.contains("quota is more than the"), "{notes}");
}

#[test]
fn a_refused_allocation_reported_on_captured_stderr_is_a_memory_limit_ending() {
    let h = harness_or_skip!("rlimit", "asoom");
    let err = h.tmp().join("stderr");
    let err_arg = err.display().to_string();
    let ran = h.run(
        &["--memory", "64M", "--stderr", &err_arg],
        &[PYTHON, "-c", "b = b'x' * (300 << 20)"],
    );
    let r = ran.rec();
    assert_eq!(r["outcome"]["reason"], "oom", "{r:#}");
    // Nothing was killed: the interpreter exited 1 by itself, and corral says so.
    assert_eq!(r["outcome"]["process_exit_code"], 1, "{r:#}");
    assert_eq!(ran.code, 1);
    let notes = ran.notes();
    assert!(
        notes.contains("64.0 MiB address-space limit (RLIMIT_AS) was refused"),
        "{notes}"
    );
    assert!(std::fs::read_to_string(&err)
        .unwrap()
        .contains("MemoryError"));
    // A plain failure is not one, nor is an out-of-memory report that was handled.
    let ran = h.run(
        &["--memory", "64M", "--stderr", &err_arg],
        &["sh", "-c", "echo boom >&2; exit 1"],
    );
    assert_eq!(ran.rec()["outcome"]["reason"], "exited");
    let ran = h.run(
        &["--memory", "64M", "--stderr", &err_arg],
        &[PYTHON, "-c", "import sys\ntry:\n b = b'x' * (300 << 20)\nexcept MemoryError:\n print('MemoryError, coping', file=sys.stderr)"],
    );
    assert_eq!(ran.rec()["outcome"]["reason"], "exited");
    assert_eq!(ran.code, 0);
}
