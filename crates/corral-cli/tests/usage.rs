//! Usage errors: what the argument parser refuses, and how (no root needed).

use std::process::Command;

/// Runs `corral ARGS` and returns (exit status, stderr).
fn corral(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_corral"))
        .args(args)
        .output()
        .expect("corral starts");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bad_backend_lists_the_choices() {
    for (args, choices) in [
        (
            &["run", "--backend", "bogus", "--", "true"][..],
            "[possible values: auto, cgroup2, systemd, cgroup1, rlimit]",
        ),
        (
            &["gc", "--backend", "bogus"][..],
            "[possible values: auto, cgroup2, systemd, cgroup1, rlimit]",
        ),
        (
            &["serve", "--backend", "systemd"][..],
            "[possible values: auto, cgroup2, cgroup1]",
        ),
    ] {
        let (code, stderr) = corral(args);
        assert_eq!(code, 125, "{args:?}: {stderr}");
        assert!(stderr.contains("invalid value"), "{args:?}: {stderr}");
        assert!(stderr.contains(choices), "{args:?}: {stderr}");
    }
}
