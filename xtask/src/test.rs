//! `cargo xtask test`: the whole test suite, as CI runs it.
//!
//! 1. `lint`: `cargo fmt --check` and `cargo clippy --all-targets -D warnings`;
//! 2. `host`: `cargo test --workspace` on this host (cgroup v1 tests run natively here
//!    as root, cgroup v2 tests skip with a reason);
//! 3. `python`: the Python client's tests against the built binary;
//! 4. `vm`: the cgroup v2 tests (enforcement scenarios, `corral check`, the soak) in a
//!    VM booted with `cgroup_no_v1=all`;
//! 5. `systemd`: the systemd backend's tests in a VM with systemd as PID 1 (when that
//!    test target exists).
//!
//! Every step runs even when an earlier one failed; the summary lists them all and the
//! exit status is non-zero if any failed.
//!
//! Each test step declares what it is there to test in `CORRAL_TEST_REQUIRE` (see
//! `corral_testkit`): a test that lacks a declared feature fails instead of skipping
//! in CI (`CI=true`) and in the VMs, so a step whose feature is missing fails.
//! `host`: root and cgroup1 on a host with v1 hierarchies (the cgroup2 tests may skip
//! there), else root and cgroup2; `vm`: root and cgroup2; `systemd`: root, systemd and
//! the test user's manager.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use corral_testkit::{Feature, REQUIRE_ENV};

use crate::run::{run_vm, VmOptions};
use crate::Paths;

const STEPS: &[&str] = &["lint", "host", "python", "vm", "systemd"];

/// Test targets run in the cgroup v2 VM, with their filter arguments.
const VM_TARGETS: &[(&str, &[&str])] = &[
    ("enforcement", &["cgroup2"]),
    ("network", &["cgroup2"]),
    ("pidns", &["cgroup2"]),
    ("fsview", &["cgroup2"]),
    ("identity", &["cgroup2"]),
    ("io", &["cgroup2"]),
    ("live", &["cgroup2"]),
    ("timeline", &["cgroup2"]),
    ("check", &[]),
    ("soak", &["--nocapture"]),
    ("service_api", &[]),
    ("service_restart", &[]),
    ("service_load", &[]),
    ("service_users", &[]),
    ("slurm", &["cgroup2"]),
];

/// Test targets run in the systemd VM.
const SYSTEMD_TARGETS: &[(&str, &[&str])] = &[("systemd", &["--test-threads=1"])];

/// What the VM step must find: it exists to run the cgroup v2 tests (a Slurm that
/// enforces with cgroup v2 among them).
const VM_REQUIRES: &[Feature] = &[Feature::Root, Feature::Cgroup2, Feature::Slurm];

/// What the systemd step must find.
const SYSTEMD_REQUIRES: &[Feature] = &[Feature::Root, Feature::Systemd, Feature::SystemdUser];

/// What the host step must find: the cgroup1 scenarios on a host with v1 hierarchies
/// (legacy or hybrid: its cgroup2 mount has no controllers, so the cgroup2 tests may
/// skip, they run in the VM), else the cgroup2 ones. Decided from the mounts' types,
/// not from the controllers, so lost controllers fail the step instead of hiding.
fn host_requires() -> Vec<Feature> {
    let mut v =
        host_requires_from(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default());
    // The Slurm executor's tests start a private Slurm on the host (.ci/run installs
    // slurm-wlm and munge).
    v.push(Feature::Slurm);
    v
}

/// [`host_requires`] for this `/proc/self/mountinfo` text.
fn host_requires_from(mountinfo: &str) -> Vec<Feature> {
    let v1 = mountinfo.lines().any(|l| {
        l.split_once(" - ")
            .is_some_and(|(_, fs)| fs.split_whitespace().next() == Some("cgroup"))
    });
    let cgroup = if v1 {
        Feature::Cgroup1
    } else {
        Feature::Cgroup2
    };
    vec![Feature::Root, cgroup]
}

/// The value of `CORRAL_TEST_REQUIRE` for `features`.
fn require_value(features: &[Feature]) -> String {
    let names: Vec<&str> = features.iter().map(|f| f.as_str()).collect();
    names.join(",")
}

/// Says what a step requires, and whether a test that lacks it fails (in CI, in the
/// VM) or skips.
fn announce(step: &str, features: &[Feature], in_vm: bool) {
    let policy = corral_testkit::Policy::new(
        Some(&require_value(features)),
        std::env::var("CI").ok().as_deref(),
        in_vm.then_some("1"),
    )
    .expect("known features");
    let verdict = if policy.enforced {
        "fails"
    } else {
        "skips (it fails under CI=true)"
    };
    eprintln!(
        "xtask test: {step} requires {REQUIRE_ENV}={}; {} a test that lacks one {verdict}",
        require_value(features),
        policy.context
    );
}

/// Parses `test [--skip STEP]... [--only STEP]...` and runs the steps.
pub fn run_tests(args: &[OsString]) -> Result<u8> {
    let mut only: Vec<String> = Vec::new();
    let mut skip: Vec<String> = Vec::new();
    let mut it = args.iter().map(|a| a.to_string_lossy().into_owned());
    while let Some(a) = it.next() {
        match a.as_str() {
            "--only" | "--skip" => {
                let step = it
                    .next()
                    .with_context(|| format!("{a} needs a step name"))?;
                if !STEPS.contains(&step.as_str()) {
                    bail!("unknown step {step:?}; steps: {}", STEPS.join(", "));
                }
                if a == "--only" {
                    only.push(step)
                } else {
                    skip.push(step)
                }
            }
            "-h" | "--help" => {
                println!(
                    "usage: cargo xtask test [--only STEP]... [--skip STEP]...\nsteps: {}",
                    STEPS.join(", ")
                );
                return Ok(0);
            }
            other => bail!("unknown argument {other:?}"),
        }
    }
    let wanted =
        |s: &str| (only.is_empty() || only.iter().any(|o| o == s)) && !skip.iter().any(|k| k == s);
    let paths = Paths::discover()?;
    std::env::set_current_dir(&paths.repo)?;
    let mut results: Vec<(String, Result<()>, f64)> = Vec::new();
    let mut step = |name: &str, f: &mut dyn FnMut() -> Result<()>| {
        if !wanted(name) {
            return;
        }
        eprintln!("\n===== xtask test: {name} =====");
        let t = Instant::now();
        let r = f();
        if let Err(e) = &r {
            eprintln!("xtask test: {name} FAILED: {e:#}");
        }
        results.push((name.to_string(), r, t.elapsed().as_secs_f64()));
    };
    step("lint", &mut || {
        cargo(&["fmt", "--all", "--", "--check"])?;
        cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])?;
        // Broken or ambiguous intra-doc links fail too: the API docs must build clean.
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        sh(Command::new(cargo)
            .args(["doc", "--workspace", "--no-deps", "-q"])
            .env("RUSTDOCFLAGS", "-D warnings"))
    });
    // --no-fail-fast: one failing test binary must not hide the others' results.
    step("host", &mut || {
        let requires = host_requires();
        announce("host", &requires, false);
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        sh(Command::new(cargo)
            .args(["test", "--workspace", "--no-fail-fast"])
            .env(REQUIRE_ENV, require_value(&requires)))
    });
    // The Python tests need what the host step needs; in CI a skip fails them too.
    step("python", &mut || {
        sh(Command::new("clients/python/run-tests.sh")
            .env("CORRAL_BIN", paths.repo.join("target/debug/corral"))
            .env(REQUIRE_ENV, require_value(&host_requires())))
    });
    step("vm", &mut || run_in_vm(false, VM_TARGETS, VM_REQUIRES));
    step("systemd", &mut || {
        run_in_vm(true, SYSTEMD_TARGETS, SYSTEMD_REQUIRES)
    });

    eprintln!("\n===== xtask test: summary =====");
    let mut failed = false;
    for (name, r, secs) in &results {
        match r {
            Ok(()) => eprintln!("  {name:<8} ok      {secs:>6.1} s"),
            Err(e) => {
                failed = true;
                eprintln!("  {name:<8} FAILED  {secs:>6.1} s  {e:#}");
            }
        }
    }
    Ok(if failed { 1 } else { 0 })
}

fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    sh(Command::new(cargo).args(args))
}

fn sh(cmd: &mut Command) -> Result<()> {
    let st = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed: {st}");
    }
    Ok(())
}

/// The test executables cargo builds, by target name.
fn test_binaries() -> Result<Vec<(String, PathBuf)>> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["test", "--workspace", "--no-run", "--message-format=json"])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the tests failed");
    }
    let mut v = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" || msg["profile"]["test"] != true {
            continue;
        }
        if let (Some(name), Some(exe)) =
            (msg["target"]["name"].as_str(), msg["executable"].as_str())
        {
            v.push((name.to_string(), PathBuf::from(exe)));
        }
    }
    Ok(v)
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Runs the listed test targets in one VM, which must offer `requires` (in the VM a
/// missing requirement fails the test); each target runs even if another failed.
fn run_in_vm(systemd: bool, targets: &[(&str, &[&str])], requires: &[Feature]) -> Result<()> {
    let bins = test_binaries()?;
    let mut script = String::from("rc=0\n");
    let mut any = false;
    for (name, args) in targets {
        let Some((_, exe)) = bins.iter().find(|(n, _)| n == name) else {
            eprintln!("xtask test: no test target {name:?} (yet); not run in the VM");
            continue;
        };
        any = true;
        let mut line = shell_quote(&exe.display().to_string());
        for a in *args {
            line.push(' ');
            line.push_str(&shell_quote(a));
        }
        script.push_str(&format!(
            "echo '--- {name}' >&2\n{line} || {{ echo '--- {name} FAILED' >&2; rc=1; }}\n"
        ));
    }
    if !any {
        return Ok(());
    }
    script.push_str("exit $rc\n");
    let step = if systemd { "systemd" } else { "vm" };
    announce(step, requires, true);
    let mut args: Vec<OsString> = Vec::new();
    if systemd {
        args.push("--systemd".into());
    }
    args.push("--env".into());
    args.push(format!("{REQUIRE_ENV}={}", require_value(requires)).into());
    args.extend(["--timeout", "2400", "--", "sh", "-c"].map(OsString::from));
    args.push(script.into());
    let opts = VmOptions::parse(&args)?.expect("not --help");
    let code = run_vm(&opts)?;
    if code != 0 {
        bail!("the VM run exited {code}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_step_requires_cgroup1_where_v1_hierarchies_are_mounted() {
        let hybrid = "\
30 25 0:26 / /sys/fs/cgroup/unified rw,nosuid shared:6 - cgroup2 cgroup2 rw,nsdelegate
31 25 0:27 / /sys/fs/cgroup/memory rw,nosuid shared:7 - cgroup cgroup rw,memory
";
        assert_eq!(
            host_requires_from(hybrid),
            [Feature::Root, Feature::Cgroup1]
        );
        let unified = "30 25 0:26 / /sys/fs/cgroup rw shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            host_requires_from(unified),
            [Feature::Root, Feature::Cgroup2]
        );
        assert_eq!(require_value(VM_REQUIRES), "root,cgroup2,slurm");
        assert_eq!(require_value(SYSTEMD_REQUIRES), "root,systemd,systemd-user");
    }
}
