//! `corral check` tells the truth about the host it runs on.

use std::process::Command;

use corral_cgroup::layout::Layout;
use serde_json::Value;

fn check() -> (i32, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_corral"))
        .args(["check", "--json"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).expect("check prints JSON");
    (out.status.code().unwrap(), v)
}

#[test]
fn check_matches_the_host() {
    let (code, r) = check();
    let layout = Layout::detect();
    assert_eq!(r["layout"], layout.kind().as_str());
    let v2_mem = layout.v2_controllers.iter().any(|c| c == "memory");
    let root = rustix::process::geteuid().is_root();
    let expected = if root && v2_mem {
        "cgroup2"
    } else if root && layout.v1.contains_key("memory") {
        "cgroup1"
    } else if r["backends"]
        .as_array()
        .unwrap()
        .iter()
        .any(|b| b[0] == "systemd" && b[1].get("Ok").is_some())
    {
        "systemd"
    } else {
        "rlimit"
    };
    assert_eq!(r["auto_backend"], expected, "{r:#}");
    let iso = r["isolation"].as_str().unwrap();
    assert_eq!(
        code,
        match iso {
            "full" => 0,
            "partial" => 1,
            _ => 2,
        }
    );
    // An ordinary user's runs get the namespace layers through a user namespace.
    let userns = r["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "user_namespace")
        .expect("the user_namespace feature");
    let rootless = !root && userns["available"] == true;
    // A network namespace per run needs root's capabilities (or a user namespace).
    let netns = r["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "network_namespace")
        .expect("the network_namespace feature");
    assert_eq!(netns["available"], root || rootless, "{netns}");
    // So does the read-only view (and mount_setattr: every kernel here is >= 5.12).
    let view = r["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "read_only_view")
        .expect("the read_only_view feature");
    assert_eq!(view["available"], root || rootless, "{view}");
    // So does a pid namespace (and clone3, which this kernel has).
    let pidns = r["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "pid_namespace")
        .expect("the pid_namespace feature");
    assert_eq!(pidns["available"], root || rootless, "{pidns}");
    for c in &layout.v2_controllers {
        assert!(r["cgroup2_controllers"]
            .as_array()
            .unwrap()
            .contains(&Value::from(c.as_str())));
    }
    for (c, _) in layout.v1.iter().filter(|(c, _)| c.as_str() != "systemd") {
        assert!(
            r["cgroup1_hierarchies"]
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h[0] == c.as_str()),
            "{c} missing"
        );
    }
    if layout.kind().as_str() == "hybrid" && !v2_mem {
        assert!(r["remedies"]
            .to_string()
            .contains("unified_cgroup_hierarchy"));
    }
    if std::env::var_os("CORRAL_IN_VM").is_some() {
        // The test VM boots with cgroup_no_v1=all: pure v2 with every controller.
        assert_eq!(r["layout"], "v2");
        assert_eq!(r["auto_backend"], "cgroup2");
        assert_eq!(code, 0);
        for f in r["features"].as_array().unwrap() {
            // Probed on the current directory: the repository's 9p share there, which
            // cannot be id-mapped (the fallback serves it; tests/identity.rs).
            if f["name"] == "idmapped_mount" {
                continue;
            }
            assert_eq!(f["available"], true, "{f}");
        }
    }
}

/// `corral check` as an ordinary user (`nobody` when the test runs as root): the
/// `user_namespace` feature says whether its runs get the namespace layers, and where
/// the host forbids it (here: `CORRAL_TEST_NO_USERNS`) the remedy names the sysctls.
#[test]
fn check_tells_an_ordinary_user_about_user_namespaces() {
    let root = rustix::process::geteuid().is_root();
    let check_as = |no_userns: bool| {
        let mut c = if root {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
            c.arg(env!("CARGO_BIN_EXE_corral"));
            c
        } else {
            Command::new(env!("CARGO_BIN_EXE_corral"))
        };
        c.args(["check", "--json"]).current_dir("/");
        if no_userns {
            c.env("CORRAL_TEST_NO_USERNS", "1");
        }
        let out = c.output().unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).expect("check prints JSON");
        v
    };
    let feature = |r: &Value, name: &str| {
        r["features"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .cloned()
            .unwrap()
    };
    let r = check_as(true);
    let f = feature(&r, "user_namespace");
    assert_eq!(f["available"], false, "{f}");
    for text in [f["note"].to_string(), r["remedies"].to_string()] {
        assert!(
            text.contains("kernel.unprivileged_userns_clone=1")
                && text.contains("user.max_user_namespaces"),
            "{text}"
        );
    }
    assert_eq!(feature(&r, "network_namespace")["available"], false);
    assert_eq!(feature(&r, "pid_namespace")["available"], false);
    // Asked of unshare(1): whether this host lets the user make one.
    let mut c = if root {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "unshare",
        ]);
        c
    } else {
        Command::new("unshare")
    };
    let allowed = c
        .args([
            "--user",
            "--map-root-user",
            "--pid",
            "--fork",
            "--mount-proc",
            "true",
        ])
        .current_dir("/")
        .output()
        .is_ok_and(|o| o.status.success());
    let r = check_as(false);
    for name in [
        "user_namespace",
        "network_namespace",
        "pid_namespace",
        "read_only_view",
    ] {
        assert_eq!(feature(&r, name)["available"], allowed, "{name}: {r:#}");
    }
}

#[test]
fn a_host_with_only_the_rlimit_backend_is_partial_not_none() {
    // An ordinary user without a systemd user manager has only the rlimit backend,
    // which still enforces memory per process, CPU time, processes and a wall clock.
    if !rustix::process::geteuid().is_root() {
        corral_testkit::skip(
            "rlimit_is_partial",
            &corral_testkit::Missing {
                feature: corral_testkit::Feature::Root,
                why: "needs root to run corral as nobody".into(),
            },
        );
        return;
    }
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_corral"))
        .args(["check", "--json"])
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .current_dir("/")
        .output()
        .expect("setpriv starts");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    if r["auto_backend"] != "rlimit" {
        eprintln!(
            "nobody has the {} backend here: not an rlimit host",
            r["auto_backend"]
        );
        return;
    }
    assert_eq!(r["isolation"], "partial", "{r:#}");
    assert_eq!(out.status.code(), Some(1), "{r:#}");
}
