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

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::run::{run_vm, VmOptions};
use crate::Paths;

const STEPS: &[&str] = &["lint", "host", "python", "vm", "systemd"];

/// Test targets run in the cgroup v2 VM, with their filter arguments.
const VM_TARGETS: &[(&str, &[&str])] = &[
    ("enforcement", &["cgroup2"]),
    ("check", &[]),
    ("soak", &["--nocapture"]),
    ("service_api", &[]),
    ("service_restart", &[]),
    ("service_load", &[]),
];

/// Test targets run in the systemd VM.
const SYSTEMD_TARGETS: &[(&str, &[&str])] = &[("systemd", &["--test-threads=1"])];

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
        cargo(&["test", "--workspace", "--no-fail-fast"])
    });
    step("python", &mut || {
        sh(Command::new("clients/python/run-tests.sh")
            .env("CORRAL_BIN", paths.repo.join("target/debug/corral")))
    });
    step("vm", &mut || run_in_vm(false, VM_TARGETS));
    step("systemd", &mut || run_in_vm(true, SYSTEMD_TARGETS));

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

/// Runs the listed test targets in one VM; each runs even if another failed.
fn run_in_vm(systemd: bool, targets: &[(&str, &[&str])]) -> Result<()> {
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
    let mut args: Vec<OsString> = Vec::new();
    if systemd {
        args.push("--systemd".into());
    }
    args.extend(["--timeout", "2400", "--", "sh", "-c"].map(OsString::from));
    args.push(script.into());
    let opts = VmOptions::parse(&args)?.expect("not --help");
    let code = run_vm(&opts)?;
    if code != 0 {
        bail!("the VM run exited {code}");
    }
    Ok(())
}
