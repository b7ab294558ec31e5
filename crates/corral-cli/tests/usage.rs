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

/// `corral profiles` shows the sandbox's master switch: `default` in every built-in
/// profile, and a profile with `isolation = "off"` has the host's network and no
/// filter, unless it sets one of them itself.
#[test]
fn profiles_show_the_isolation_switch() {
    let cfg = tempfile::tempdir().unwrap();
    std::fs::create_dir(cfg.path().join("corral")).unwrap();
    std::fs::write(
        cfg.path().join("corral/profiles.toml"),
        "[profiles.open]\nisolation = \"off\"\n\
         [profiles.open_filtered]\nisolation = \"off\"\nsyscalls = \"default\"\n",
    )
    .unwrap();
    let run = |json: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_corral"));
        c.arg("profiles").env("XDG_CONFIG_HOME", cfg.path());
        if json {
            c.arg("--json");
        }
        let out = c.output().expect("corral starts");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let v: serde_json::Value = serde_json::from_str(&run(true)).unwrap();
    let layers = |name: &str| {
        let p = v
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no profile {name}: {v}"));
        (
            p["isolation"].as_str().unwrap().to_string(),
            p["network"].as_str().unwrap().to_string(),
            p["syscalls"].as_str().unwrap().to_string(),
        )
    };
    for builtin in ["default", "notebook", "post_process", "tool"] {
        assert_eq!(
            layers(builtin),
            ("default".into(), "none".into(), "default".into())
        );
    }
    assert_eq!(layers("open"), ("off".into(), "host".into(), "off".into()));
    assert_eq!(
        layers("open_filtered"),
        ("off".into(), "host".into(), "default".into())
    );
    let table = run(false);
    assert!(
        table.lines().next().unwrap().contains(" ISOLATION "),
        "{table}"
    );
    let open = table.lines().find(|l| l.starts_with("open ")).unwrap();
    assert!(open.contains(" off ") && open.contains(" host "), "{table}");

    let (code, stderr) = corral(&["run", "--isolation", "maybe", "--", "true"]);
    assert_eq!(code, 125);
    assert_eq!(
        stderr.trim(),
        "corral: invalid isolation \"maybe\": use \"default\" (the sandbox) or \"off\" \
         (no sandbox: the host's network, no syscall filter)"
    );
}

/// Runs `corral ARGS` with its stdout on a pipe whose reader is already closed, as in
/// `corral ps | head` once head has exited: (exit status, stderr).
fn corral_into_closed_pipe(args: &[&str], envs: &[(&str, &str)]) -> (i32, String) {
    let (rx, tx) = rustix::pipe::pipe().unwrap();
    drop(rx);
    let out = Command::new(env!("CARGO_BIN_EXE_corral"))
        .args(args)
        .envs(envs.iter().copied())
        .stdout(std::process::Stdio::from(tx))
        .output()
        .expect("corral starts");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_closed_pipe_on_stdout_ends_quietly() {
    // No root needed: these print what they know without cgroups.
    for args in [
        &["profiles"][..],
        &["profiles", "--json"],
        &["check"],
        &["--help"],
    ] {
        let (code, stderr) = corral_into_closed_pipe(args, &[]);
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
        // `check` exits with its verdict (0 full, 1 partial, 2 none) when it printed
        // all; a closed pipe is not a failure (125) or a panic (101).
        assert!(
            code == 0 || (args == ["check"] && code <= 2),
            "{args:?}: {code}"
        );
    }
}

#[test]
fn a_memory_budget_below_one_page_is_refused() {
    // Refused while parsing, before any cgroup: the kernel would make it 0 and the
    // run would die at once of an "OOM".
    let (code, stderr) = corral(&["run", "--memory", "1", "--", "true"]);
    assert_eq!(code, 125, "{stderr}");
    assert!(stderr.contains("below one page"), "{stderr}");
}

#[test]
fn the_readmes_first_command_keeps_the_record_apart_from_the_output() {
    let readme = include_str!("../../../README.md");
    let first = readme
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.lines().next())
        .expect("a first sh block");
    assert!(first.contains(" run "), "{first}");
    // `--json -` would interleave the record with what the analysis prints.
    assert!(first.contains("--json record.json"), "{first}");
    assert!(!first.contains("--json -"), "{first}");
}
