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

#[test]
fn a_usage_error_of_run_still_fills_its_json_error_file() {
    let dir = std::env::temp_dir().join(format!("corral-usage-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("err.json");
    let (code, _) = corral(&[
        "run",
        "--json",
        file.to_str().unwrap(),
        "--backend",
        "bogus",
        "--",
        "true",
    ]);
    assert_eq!(code, 125);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("error file written")).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(v["schema"], "corral.error/v1");
    assert_eq!(v["exit_code"], 125);
    let err = v["error"].as_str().unwrap();
    assert!(err.contains("invalid value 'bogus'"), "{err}");
    assert!(
        err.contains("possible values: auto, cgroup2, systemd, cgroup1, rlimit"),
        "{err}"
    );
}
