//! The service's API against a real `corral serve`: bad requests, admission under the
//! budget, graceful shutdown, and the client commands. Each test runs once per cgroup
//! backend this host offers and prints `skipped: ...` for the others (on the hybrid
//! development hosts: cgroup1 natively, cgroup2 in the v2 VM).

mod common;
mod svc;

use std::process::Command;
use std::time::{Duration, Instant};

use common::alive;
use corral_service::http::ROUTES;
use serde_json::{json, Value};
use svc::{each_backend, eventually, reason, serial, Svc};

fn small(cmd: &[&str]) -> Value {
    json!({"command": cmd, "limits": {"memory": "64M", "cpus": 0.25, "timeout": "60s"}})
}

#[test]
fn bad_requests_get_clear_4xx_and_queue_nothing() {
    let _g = serial();
    each_backend("bad_requests", |b| {
        let mut s = Svc::new(
            b,
            "bad",
            "--budget-memory 1G --budget-cpus 1 --max-running 2",
        );
        s.start();
        // The service sits in its own leaf, beside (not inside) the runs' budget.
        let m = corral_cgroup::layout::Membership::of_pid(s.pid());
        let sup = std::path::PathBuf::from(&s.root_rel).join("supervisor");
        let placed = match b {
            "cgroup2" => m.v2.as_deref().is_some_and(|p| p.ends_with(&sup)),
            _ => m.v1.get("memory").is_some_and(|p| p == &sup),
        };
        assert!(placed, "the service is not in {}: {m:?}", sup.display());
        // The runs' swap budget (default 0) is on their parent, where the kernel keeps it.
        assert_eq!(s.runs_swap_cap(), Some(0), "swap budget not applied");
        let cases: Vec<(&str, Vec<u8>, u16, &str)> =
            vec![
            ("malformed", b"{\"command\": [\"true\"".to_vec(), 400, "invalid JSON"),
            ("not an object", b"[1, 2]".to_vec(), 400, "invalid JSON"),
            (
                "unknown field",
                br#"{"command": ["true"], "memory": "1G"}"#.to_vec(),
                400,
                "unknown field `memory`",
            ),
            ("no command", br#"{"command": []}"#.to_vec(), 400, "\"command\""),
            (
                "unknown profile",
                br#"{"command": ["true"], "profile": "nope"}"#.to_vec(),
                400,
                "unknown profile \"nope\"",
            ),
            (
                "bad limit",
                br#"{"command": ["true"], "limits": {"memory": "lots", "cpus": 0.5}}"#.to_vec(),
                400,
                "invalid memory size \"lots\"",
            ),
            (
                "unknown limit",
                br#"{"command": ["true"], "limits": {"memmory": "1G"}}"#.to_vec(),
                400,
                "unknown limit",
            ),
            (
                "bad network",
                br#"{"command": ["true"], "limits": {"network": "lan", "memory": "64M", "cpus": 0.5}}"#
                    .to_vec(),
                400,
                "invalid network \"lan\"",
            ),
            (
                "bad isolation",
                br#"{"command": ["true"], "limits": {"isolation": "none", "memory": "64M", "cpus": 0.5}}"#
                    .to_vec(),
                400,
                "invalid isolation \"none\"",
            ),
            (
                "bad id",
                br#"{"command": ["true"], "id": "a/b", "limits": {"memory": "64M", "cpus": 0.5}}"#
                    .to_vec(),
                400,
                "invalid run id",
            ),
            (
                "relative cwd",
                br#"{"command": ["true"], "cwd": "rel", "limits": {"memory": "64M", "cpus": 0.5}}"#
                    .to_vec(),
                400,
                "absolute path",
            ),
            (
                "over the memory budget",
                br#"{"command": ["true"], "limits": {"memory": "2G", "cpus": 0.5}}"#.to_vec(),
                422,
                "exceeds the service's whole memory budget of 1.0 GiB",
            ),
            (
                "over the CPU budget",
                br#"{"command": ["true"], "limits": {"memory": "64M", "cpus": 2}}"#.to_vec(),
                422,
                "exceeds the service's whole CPU budget of 1",
            ),
            (
                "over the swap budget",
                br#"{"command": ["true"], "limits": {"memory": "64M", "cpus": 0.5, "swap": "1G"}}"#
                    .to_vec(),
                422,
                "exceeds the service's whole swap budget of 0 B",
            ),
            (
                "unlimited memory",
                br#"{"command": ["true"], "limits": {"memory": "max", "cpus": 0.5}}"#.to_vec(),
                422,
                "no memory limit",
            ),
            (
                "unlimited CPU",
                br#"{"command": ["true"], "limits": {"memory": "64M", "cpus": "max"}}"#.to_vec(),
                422,
                "no CPU limit",
            ),
            (
                "unknown user",
                br#"{"command": ["true"], "limits": {"memory": "64M", "cpus": 0.5, "user": "nosuchuser"}}"#
                    .to_vec(),
                422,
                "unknown user \"nosuchuser\" (--user)",
            ),
            (
                "bad user",
                br#"{"command": ["true"], "limits": {"memory": "64M", "cpus": 0.5, "user": "a:"}}"#
                    .to_vec(),
                400,
                "invalid user \"a:\"",
            ),
        ];
        for (what, body, code, msg) in &cases {
            let (st, v) = s.post_raw(body);
            assert_eq!(st, *code, "{what}: {v}");
            let e = v["error"].as_str().unwrap_or_else(|| panic!("{what}: {v}"));
            assert!(e.contains(msg), "{what}: {e:?} should mention {msg:?}");
        }
        // Oversized: 2 MiB of JSON.
        let big = format!(
            "{{\"command\": [\"true\"], \"env\": {{\"X\": \"{}\"}}}}",
            "x".repeat(2 << 20)
        );
        let (st, v) = s.post_raw(big.as_bytes());
        assert_eq!(st, 413, "{v}");
        assert!(
            v["error"].as_str().unwrap().contains("1024 KiB limit"),
            "{v}"
        );
        // Unknown ids.
        for (m, p) in [
            ("GET", "/runs/nope"),
            ("GET", "/runs/nope/wait?timeout=0"),
            ("POST", "/runs/nope/cancel"),
            ("GET", "/runs/nope/output"),
            ("GET", "/runs/..%2F..%2Fetc%2Fpasswd/output"),
        ] {
            let (st, v) = s.call(m, p);
            assert_eq!(st, 404, "{m} {p}: {v}");
            assert!(
                v["error"].as_str().unwrap().contains("no run with id"),
                "{v}"
            );
        }
        // Bad queries and routes.
        for (m, p, code, msg) in [
            ("GET", "/runs?state=sleeping", 400, "unknown state"),
            ("GET", "/runs?colour=red", 400, "invalid query string"),
            ("GET", "/nowhere", 404, "no such endpoint"),
            ("DELETE", "/runs", 405, "not allowed"),
        ] {
            let (st, v) = s.call(m, p);
            assert_eq!(st, code, "{m} {p}: {v}");
            assert!(v["error"].as_str().unwrap().contains(msg), "{m} {p}: {v}");
        }
        // Nothing was queued or run.
        let (st, v) = s.call("GET", "/runs");
        assert_eq!(st, 200);
        assert_eq!(v["runs"].as_array().unwrap().len(), 0, "{v}");
        assert!(s.run_cgroups().is_empty());

        // Ids and idempotency keys.
        let mut r = small(&["true"]);
        r["id"] = json!("fixed-1");
        r["idempotency_key"] = json!("key-1");
        let (st, v) = s.submit(&r);
        assert_eq!(st, 201, "{v}");
        assert_eq!(v["id"], "fixed-1");
        let (st, v) = s.submit(&r);
        assert_eq!(st, 200, "a repeated key returns the run: {v}");
        assert_eq!(v["id"], "fixed-1");
        r["idempotency_key"] = json!("key-2");
        let (st, v) = s.submit(&r);
        assert_eq!(st, 409, "{v}");
        assert!(v["error"].as_str().unwrap().contains("already exists"));
        let (st, v) = s.call("GET", "/runs/fixed-1/wait?timeout=30");
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["state"], "done");
        assert_eq!(reason(&v), "exited");
        assert_eq!(v["record"]["schema"], "corral.result/v1");
        // The service's runs get their own loopback-only network by default.
        assert_eq!(
            v["record"]["isolation"]["enforced"]["network"], "loopback",
            "{v}"
        );
        for k in [
            "id",
            "state",
            "submitted_at",
            "started_at",
            "priority",
            "record",
        ] {
            assert!(v.get(k).is_some(), "{k} missing from {v}");
        }
        let (_, v) = s.call("GET", "/runs");
        assert_eq!(v["runs"].as_array().unwrap().len(), 1, "{v}");

        // Every route of the router answers (none falls through to the 404/405
        // fallbacks), and /openapi.json documents exactly those routes.
        for (m, p) in ROUTES {
            if (*m, *p) == ("post", "/runs") {
                continue; // exercised above
            }
            let path = p.replace("{id}", "fixed-1");
            let (st, v) = s.call(&m.to_uppercase(), &path);
            assert!(
                (200..300).contains(&st),
                "{} {path} answered {st}: {v}",
                m.to_uppercase()
            );
        }
        let (_, doc) = s.call("GET", "/openapi.json");
        let paths = doc["paths"].as_object().unwrap();
        for (m, p) in ROUTES {
            assert!(paths[*p].get(*m).is_some(), "{m} {p} not in openapi.json");
        }
        let text = s.metrics();
        assert!(
            text.contains("corral_runs_finished{reason=\"exited\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(&format!("corral_service_info{{backend=\"{b}\"")),
            "{text}"
        );
        assert!(
            text.contains("corral_launch_latency_seconds_count 1"),
            "{text}"
        );
        assert!(
            text.contains("corral_submissions_total{outcome=\"refused\"}"),
            "{text}"
        );
        // No --budget-io-*: the I/O budget is null, its metrics have no samples (io.rs
        // tests one that is set).
        let (_, health) = s.call("GET", "/health");
        assert!(health["budget"]["io"].is_null(), "{health}");
        assert!(
            text.contains("# TYPE corral_budget_io_write_bps gauge")
                && !text.contains("corral_budget_io_write_bps{"),
            "{text}"
        );

        // A submission's isolation = "off" is the unsandboxed run, recorded as such.
        let mut r = small(&["true"]);
        r["limits"]["isolation"] = json!("off");
        r["id"] = json!("open-1");
        let (st, v) = s.submit(&r);
        assert_eq!(st, 201, "{v}");
        let (st, v) = s.call("GET", "/runs/open-1/wait?timeout=30");
        assert_eq!(st, 200, "{v}");
        assert_eq!(reason(&v), "exited", "{v}");
        let iso = &v["record"]["isolation"];
        // The host's files, but never the service's own directory (ledger, outputs).
        let state = std::fs::canonicalize(s.ledger().parent().unwrap()).unwrap();
        let state = state.display().to_string();
        assert_eq!(
            iso["requested"],
            json!({"isolation": "off", "syscalls": "off", "network": "host", "user": "default",
                   "pid_ns": "off", "fs": {"mode": "host", "rw": [], "hide": [state]}}),
            "{v}"
        );
        assert_eq!(iso["enforced"]["fs"]["hidden"], json!([state]), "{v}");
        // Even on the host's files a run sees it empty: no ledger, no run's output.
        // (Here it is under /tmp, which the default view's private /tmp hides anyway.)
        let mut r = small(&["ls", "-A", &state]);
        r["id"] = json!("peek-1");
        r["limits"]["fs"] = json!("host");
        assert_eq!(s.submit(&r).0, 201);
        let (_, v) = s.call("GET", "/runs/peek-1/wait?timeout=30");
        assert_eq!(reason(&v), "exited", "{v}");
        assert_eq!(v["record"]["outcome"]["exit_code"], 0, "{v}");
        assert_eq!(get_raw(&s, "/runs/peek-1/output"), (200, String::new()));
        assert_eq!(iso["enforced"]["network"], "host", "{v}");
        assert!(iso["enforced"]["syscalls"].is_null(), "{v}");
        s.stop(libc::SIGTERM, Duration::from_secs(10));
        assert!(
            s.root_gone(),
            "the service removes its cgroup tree at a clean exit"
        );
    });
}

#[test]
fn admission_keeps_reservations_inside_the_budget() {
    let _g = serial();
    each_backend("admission", |b| {
        let mut s = Svc::new(
            b,
            "admission",
            "--budget-memory 1G --budget-cpus 2 --max-running 8",
        );
        s.start();
        // A run larger than the whole budget is refused at once.
        let (st, v) =
            s.submit(&json!({"command": ["true"], "limits": {"memory": "2G", "cpus": 0.1}}));
        assert_eq!(st, 422, "{v}");
        let mut ids = Vec::new();
        // The clock starts before the first submission: no run can start earlier.
        let t = Instant::now();
        for _ in 0..5 {
            let (st, v) = s.submit(&json!({"command": ["sleep", "1"],
                "limits": {"memory": "512M", "cpus": 0.1, "timeout": "60s"}}));
            assert_eq!(st, 201, "{v}");
            ids.push(v["id"].as_str().unwrap().to_string());
        }
        let client = s.client();
        let (mut max_api, mut max_cg, mut max_reserved) = (0, 0, 0);
        loop {
            let running = client
                .list(Some(corral_service::wire::RunState::Running), None)
                .unwrap()
                .runs
                .len();
            let cgroups = s.run_cgroups_memory();
            let h = client.health().unwrap();
            max_api = max_api.max(running);
            max_cg = max_cg.max(cgroups);
            max_reserved = max_reserved.max(h.budget.memory_reserved_bytes);
            assert!(running <= 2, "{running} runs running at once (API)");
            assert!(cgroups <= 2, "{cgroups} run cgroups at once");
            assert!(h.budget.memory_reserved_bytes <= 1 << 30);
            let done = client
                .list(Some(corral_service::wire::RunState::Done), None)
                .unwrap();
            if done.runs.len() == 5 {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(60), "runs did not finish");
            std::thread::sleep(Duration::from_millis(30));
        }
        assert_eq!(
            (max_api, max_reserved),
            (2, 1 << 30),
            "the budget was used fully"
        );
        assert!(max_cg >= 1);
        // Five one-second runs two at a time take at least three rounds after the first
        // submission (a lower bound by causality, not a speed assertion).
        assert!(
            t.elapsed() >= Duration::from_millis(2900),
            "{:?}",
            t.elapsed()
        );
        for id in &ids {
            let st = client.status(id).unwrap();
            assert_eq!(st.record.unwrap().outcome.reason.as_str(), "exited");
        }
        s.stop(libc::SIGTERM, Duration::from_secs(10));
    });
}

#[test]
fn graceful_shutdown_drains_then_cancels() {
    let _g = serial();
    each_backend("shutdown", |b| {
        // A run that ends within the drain timeout finishes normally.
        let mut s = Svc::new(
            b,
            "shutdown",
            "--budget-memory 1G --max-running 1 --drain-timeout 20s",
        );
        s.start();
        let (_, v) = s.submit(&small(&["sleep", "1"]));
        let quick = v["id"].as_str().unwrap().to_string();
        assert!(
            eventually(Duration::from_secs(5), || (s.run_cgroups_memory() == 1)
                .then_some(()))
            .is_some()
        );
        let t = Instant::now();
        s.stop(libc::SIGTERM, Duration::from_secs(15));
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert!(!s.socket().exists(), "the socket is removed");

        // A run that outlives the drain timeout is cancelled; a queued one stays queued.
        s.args = [
            "--budget-memory",
            "1G",
            "--max-running",
            "1",
            "--drain-timeout",
            "1s",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        s.start();
        assert_eq!(
            reason(&s.call("GET", &format!("/runs/{quick}")).1),
            "exited"
        );
        // Not in the service's own (hidden) directory: in a scratch one the run may write.
        let scratch = tempfile::tempdir().unwrap();
        let pidfile = scratch.path().join("sleeper.pid");
        let mut req = small(&[
            "sh",
            "-c",
            &format!("echo $$ > {}; exec sleep 60", pidfile.display()),
        ]);
        req["limits"]["rw"] = json!([scratch.path()]);
        let (_, v) = s.submit(&req);
        let sleeper = v["id"].as_str().unwrap().to_string();
        let (st, v) = s.submit(&small(&["sh", "-c", "echo later"]));
        assert_eq!((st, v["state"].as_str()), (201, Some("queued")), "{v}");
        let queued = v["id"].as_str().unwrap().to_string();
        let pid = svc::eventually(Duration::from_secs(5), || {
            std::fs::read_to_string(&pidfile)
                .ok()?
                .trim()
                .parse::<i32>()
                .ok()
        })
        .expect("the sleeper started");
        // The run's own namespace's pid: the sleeper's on the host.
        let pid = common::host_pid(s.pid(), pid).expect("the sleeper on the host");
        let t = Instant::now();
        s.signal(libc::SIGTERM);
        // While draining: no new runs, reads still work.
        eventually(Duration::from_secs(2), || {
            (s.client().health().ok()?.status == "draining").then_some(())
        })
        .expect("the service reports draining");
        let (st, v) = s.submit(&small(&["true"]));
        assert_eq!(st, 503, "{v}");
        assert!(v["error"].as_str().unwrap().contains("shutting down"));
        let st = s.wait_exit(Duration::from_secs(15));
        assert!(st.success(), "{st}");
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(4),
            "{took:?}"
        );
        assert!(!alive(pid), "the sleeper was ended");
        assert!(!s.socket().exists());
        assert!(s.procs_in_runs().is_empty());
        // The ledger says so after a restart, and the queued run then runs.
        s.start();
        let (_, v) = s.call("GET", &format!("/runs/{sleeper}"));
        assert_eq!(reason(&v), "cancelled", "{v}");
        let notes = v["record"]["notes"].as_str().unwrap();
        assert!(
            notes.contains("received SIGTERM") && notes.contains("drain timeout"),
            "{notes}"
        );
        let (st, v) = s.call("GET", &format!("/runs/{queued}/wait?timeout=30"));
        assert_eq!(st, 200, "{v}");
        assert_eq!(reason(&v), "exited");
        s.stop(libc::SIGINT, Duration::from_secs(10));
    });
}

fn corral(s: &Svc, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_corral"))
        .args(args)
        .env("CORRAL_SERVER", s.socket())
        .env("XDG_CONFIG_HOME", s.dir.path())
        .current_dir(s.dir.path())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn client_commands() {
    let _g = serial();
    each_backend("cli", |b| {
        let mut s = Svc::new(b, "cli", "--budget-memory 1G --max-running 2");
        // Unreachable service: 125 with a clear message.
        let (code, _, err) = corral(&s, &["ps"]);
        assert_eq!(code, 125, "{err}");
        assert!(err.contains("cannot reach the corral service at"), "{err}");
        s.start();
        let lim = ["-m", "64M", "-c", "0.25"];
        let mut a = vec!["submit"];
        a.extend(lim);
        a.extend(["--", "sh", "-c", "echo out; echo err >&2; exit 3"]);
        let (code, out, err) = corral(&s, &a);
        assert_eq!(code, 0, "{err}");
        let id = out.lines().last().unwrap().to_string();
        let (code, out, _) = corral(&s, &["wait", &id]);
        assert_eq!(code, 3, "wait exits with the run's status");
        assert!(out.is_empty());
        let (code, out, _) = corral(&s, &["logs", &id]);
        assert_eq!((code, out.as_str()), (0, "out\n"));
        let (_, out, _) = corral(&s, &["logs", "--stderr", &id]);
        assert_eq!(out, "err\n");
        let (_, out, _) = corral(&s, &["logs", "--json", &id]);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            (v["text"].as_str(), v["bytes"].as_u64()),
            (Some("out\n"), Some(4))
        );
        let (code, out, _) = corral(&s, &["show", &id]);
        assert_eq!(code, 0);
        assert!(
            out.contains("exited, exit status 3") && out.contains("Exited with code 3"),
            "{out}"
        );
        let (_, out, _) = corral(&s, &["show", "--json", &id]);
        let rec: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(rec["schema"], "corral.result/v1");
        assert_eq!(rec["cwd"], s.dir.path().display().to_string());
        // Every run of the service keeps a timeline (its last point at least), and
        // `show --plot` draws it; `show --record FILE --plot` draws a record file's.
        assert_eq!(rec["timeline"]["interval_s"], 1.0, "{rec}");
        assert!(!rec["timeline"]["points"].as_array().unwrap().is_empty());
        let svg = s.dir.path().join("run.svg");
        let (code, _, err) = corral(&s, &["show", "--plot", svg.to_str().unwrap(), &id]);
        assert_eq!(code, 0, "{err}");
        assert!(std::fs::read_to_string(&svg).unwrap().starts_with("<svg"));
        let file = s.dir.path().join("run.json");
        std::fs::write(&file, rec.to_string()).unwrap();
        let svg2 = s.dir.path().join("file.svg");
        let (code, _, err) = corral(
            &s,
            &[
                "show",
                "--record",
                file.to_str().unwrap(),
                "--plot",
                svg2.to_str().unwrap(),
            ],
        );
        assert_eq!(code, 0, "{err}");
        assert!(std::fs::read_to_string(&svg2)
            .unwrap()
            .contains("memory (MiB)"));
        // submit --wait: the id (on stderr: stdout is the run's), then the run's status.
        let mut a = vec!["submit", "--wait"];
        a.extend(lim);
        a.extend(["--", "sh", "-c", "exit 7"]);
        let (code, out, err) = corral(&s, &a);
        assert_eq!(code, 7);
        assert_eq!(out.lines().count(), 0, "{out}");
        assert_eq!(
            err.lines().filter(|l| l.contains("submitted run")).count(),
            1,
            "{err}"
        );
        // Follow a running run's output, then cancel one.
        let mut a = vec!["submit"];
        a.extend(lim);
        a.extend([
            "--",
            "sh",
            "-c",
            "for i in 1 2 3; do echo $i; sleep 0.3; done",
        ]);
        let (_, out, _) = corral(&s, &a);
        let follow = out.trim().to_string();
        let (code, out, _) = corral(&s, &["logs", "--follow", &follow]);
        assert_eq!((code, out.as_str()), (0, "1\n2\n3\n"));
        let mut a = vec!["submit"];
        a.extend(lim);
        a.extend(["--", "sleep", "60"]);
        let (_, out, _) = corral(&s, &a);
        let sleeper = out.trim().to_string();
        eventually(Duration::from_secs(5), || {
            (s.run_cgroups_memory() == 1).then_some(())
        });
        let (code, out, _) = corral(&s, &["cancel", &sleeper]);
        assert_eq!(code, 0);
        assert!(out.contains("cancelling"), "{out}");
        let (code, _, err) = corral(&s, &["wait", &sleeper]);
        assert_eq!(code, 143, "{err}");
        assert!(err.contains("a client cancelled it"), "{err}");
        let (code, out, _) = corral(&s, &["ps", "--json"]);
        assert_eq!(code, 0);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["runs"].as_array().unwrap().len(), 4);
        let (_, out, _) = corral(&s, &["ps", "--state", "done"]);
        assert_eq!(out.lines().count(), 5, "{out}");
        // Unknown id: 1.
        for cmd in ["wait", "show", "cancel", "logs"] {
            let (code, _, err) = corral(&s, &[cmd, "no-such-run"]);
            assert_eq!(code, 1, "{cmd}: {err}");
            assert!(err.contains("no run with id \"no-such-run\""), "{err}");
        }
        // Refused by the budget: 125 with the service's message.
        let (code, _, err) = corral(&s, &["submit", "-m", "2G", "-c", "0.5", "--", "true"]);
        assert_eq!(code, 125);
        assert!(
            err.contains("exceeds the service's whole memory budget"),
            "{err}"
        );
        s.stop(libc::SIGTERM, Duration::from_secs(10));
    });
}

#[test]
fn tcp_only_on_loopback() {
    // Refused before anything is created: no root or cgroups needed.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_corral"))
        .args(["serve", "--listen", "0.0.0.0:1"])
        .arg("--ledger")
        .arg(dir.path().join("l.db"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to listen on 0.0.0.0:1"), "{err}");
    assert!(!dir.path().join("l.db").exists(), "nothing was created");
}

/// Raw `GET`: (status, body).
fn get_raw(s: &Svc, path: &str) -> (u16, String) {
    let r = s.client().request("GET", path, None).unwrap();
    let status = r.status;
    (
        status,
        String::from_utf8_lossy(&r.bytes().unwrap()).into_owned(),
    )
}

#[test]
fn old_output_is_pruned_but_records_and_running_runs_stay() {
    let _g = serial();
    each_backend("prune", |b| {
        let mut s = Svc::new(b, "prune", "--budget-memory 1G --keep-output 2s");
        // A file no run accounts for, written an hour ago: removed at start.
        let out_dir = s.ledger().parent().unwrap().join("output");
        std::fs::create_dir_all(&out_dir).unwrap();
        let orphan = out_dir.join("orphan-run.stdout");
        std::fs::write(&orphan, "old").unwrap();
        let touched = Command::new("touch")
            .args(["-d", "1 hour ago"])
            .arg(&orphan)
            .status()
            .unwrap();
        assert!(touched.success());
        s.start();
        eventually(Duration::from_secs(5), || (!orphan.exists()).then_some(()))
            .expect("the orphan file is removed at start");

        let (_, v) = s.submit(&small(&["sh", "-c", "echo hello; echo oops >&2"]));
        let done = v["id"].as_str().unwrap().to_string();
        let (st, v) = s.call("GET", &format!("/runs/{done}/wait?timeout=30"));
        assert_eq!((st, reason(&v)), (200, "exited"), "{v}");
        assert_eq!(
            get_raw(&s, &format!("/runs/{done}/output")),
            (200, "hello\n".to_string())
        );
        // A run that prints once and then stays quiet for longer than --keep-output.
        let (_, v) = s.submit(&small(&["sh", "-c", "echo early; sleep 5; echo late"]));
        let quiet = v["id"].as_str().unwrap().to_string();
        let quiet_out = out_dir.join(format!("{quiet}.stdout"));
        eventually(Duration::from_secs(5), || {
            std::fs::read_to_string(&quiet_out)
                .ok()
                .filter(|t| t == "early\n")
        })
        .expect("the quiet run printed");

        // The finished run's files go within --keep-output plus one pass (1 s): both
        // (the pass removes one after the other).
        let done_out = out_dir.join(format!("{done}.stdout"));
        let done_err = out_dir.join(format!("{done}.stderr"));
        eventually(Duration::from_secs(8), || {
            (!done_out.exists() && !done_err.exists()).then_some(())
        })
        .expect("the finished run's output is removed");
        let (st, body) = get_raw(&s, &format!("/runs/{done}/output?stream=stderr"));
        assert_eq!(st, 410, "{body}");
        assert!(
            body.contains("no longer kept") && body.contains("--keep-output"),
            "{body}"
        );
        let (code, _, err) = corral(&s, &["logs", &done]);
        assert_eq!(code, 125);
        assert!(err.contains("no longer kept"), "{err}");
        // The record stays, and says what was captured.
        let (_, v) = s.call("GET", &format!("/runs/{done}"));
        assert_eq!(reason(&v), "exited");
        assert_eq!(v["record"]["output"]["stdout"]["bytes"], 6, "{v}");

        // Still running, its file older than --keep-output: kept.
        let (_, v) = s.call("GET", &format!("/runs/{quiet}"));
        assert_eq!(v["state"], "running", "{v}");
        assert!(quiet_out.exists(), "a running run's output was removed");
        let (st, v) = s.call("GET", &format!("/runs/{quiet}/wait?timeout=30"));
        assert_eq!((st, reason(&v)), (200, "exited"), "{v}");
        assert_eq!(
            get_raw(&s, &format!("/runs/{quiet}/output")),
            (200, "early\nlate\n".to_string())
        );
        eventually(Duration::from_secs(8), || {
            (!quiet_out.exists()).then_some(())
        })
        .expect("once finished, it goes too");

        let (_, metrics) = get_raw(&s, "/metrics");
        let pruned: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("corral_output_files_pruned_total "))
            .expect("the counter is exported")
            .parse()
            .unwrap();
        assert!(pruned >= 4, "{pruned}");
        s.stop(libc::SIGTERM, Duration::from_secs(10));
    });
}

/// Runs `corral ARGS` against the service with stdout on a pipe whose reader has
/// already gone (`corral ps | head` after head exited): (exit status, stderr).
fn corral_into_closed_pipe(s: &Svc, args: &[&str]) -> (i32, String) {
    let (rx, tx) = rustix::pipe::pipe().unwrap();
    drop(rx);
    let out = Command::new(env!("CARGO_BIN_EXE_corral"))
        .args(args)
        .env("CORRAL_SERVER", s.socket())
        .current_dir(s.dir.path())
        .stdout(std::process::Stdio::from(tx))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn client_commands_as_a_new_user_meets_them() {
    let _g = serial();
    each_backend("cli_edges", |b| {
        let mut s = Svc::new(b, "edges", "--budget-memory 1G --max-running 1");
        // The log goes to a file: no colour codes in it, also at info level.
        s.log_level = "info";
        s.start();
        let lim = ["-m", "64M", "-c", "0.25"];
        // One run running, one queued behind it: `ps` shows both commands.
        let mut ids = Vec::new();
        for secs in ["60", "61"] {
            let mut a = vec!["submit"];
            a.extend(lim);
            a.extend(["--", "sleep", secs]);
            let (code, out, err) = corral(&s, &a);
            assert_eq!(code, 0, "{err}");
            ids.push(out.trim().to_string());
        }
        eventually(Duration::from_secs(10), || {
            (s.run_cgroups_memory() == 1).then_some(())
        });
        let (code, out, err) = corral(&s, &["ps"]);
        assert_eq!(code, 0, "{err}");
        for (id, state, cmd) in [
            (&ids[0], "running", "sleep 60"),
            (&ids[1], "queued", "sleep 61"),
        ] {
            let line = out
                .lines()
                .find(|l| l.starts_with(id.as_str()))
                .unwrap_or_else(|| panic!("{id} not in {out}"));
            assert!(line.contains(state), "{line}");
            assert!(line.ends_with(cmd), "the command is missing: {line:?}");
        }
        // `corral ps | head`: a closed pipe is no error.
        for args in [&["ps"][..], &["ps", "--json"], &["show", &ids[0]]] {
            let (code, err) = corral_into_closed_pipe(&s, args);
            assert_eq!((code, err.as_str()), (0, ""), "{args:?}");
        }
        for id in &ids {
            assert_eq!(corral(&s, &["cancel", id]).0, 0);
            corral(&s, &["wait", id]);
        }
        // The HTTP API as the document says it.
        let mut r = small(&["true"]);
        r["idempotency_key"] = json!("edge-key");
        assert_eq!(s.submit(&r).0, 201);
        assert_eq!(s.submit(&r).0, 200, "the same body again: the same run");
        r["command"] = json!(["false"]);
        let (st, v) = s.submit(&r);
        assert_eq!(st, 409, "the key with another body: {v}");
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .contains("different submission"),
            "{v}"
        );
        let mut r = small(&["true"]);
        r["cwd"] = json!("/nonexistent/corral-test-dir");
        let (st, v) = s.submit(&r);
        assert_eq!(st, 422, "{v}");
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .contains("not an existing directory"),
            "{v}"
        );
        let mut r = small(&["true"]);
        r["limits"] = json!("2G");
        let (st, v) = s.submit(&r);
        assert_eq!(st, 400, "{v}");
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .starts_with("\"limits\" must be an object"),
            "{v}"
        );
        for (q, code) in [
            ("limit=10000", 200),
            ("limit=10001", 400),
            ("limit=0", 400),
            ("state=", 400),
        ] {
            let (st, v) = s.call("GET", &format!("/runs?{q}"));
            assert_eq!(st, code, "{q}: {v}");
        }
        assert_eq!(s.submit(&json!({"command": ["sh", "-c", ""]})).0, 400);
        // submit --wait prints the run's output as `corral run` would: its stdout on
        // stdout, its stderr on stderr, then exits with its status.
        let mut a = vec!["submit", "--wait"];
        a.extend(lim);
        a.extend(["--", "sh", "-c", "echo out; echo err >&2; exit 4"]);
        let (code, out, err) = corral(&s, &a);
        assert_eq!(code, 4, "{err}");
        assert_eq!(out, "out\n");
        assert!(err.contains("err\n"), "{err}");
        assert!(err.contains("corral: submitted run "), "{err}");
        s.stop(libc::SIGTERM, Duration::from_secs(10));
        let log = s.log(1);
        assert!(log.contains("accepted"), "the info lines are there: {log}");
        assert!(!log.contains('\x1b'), "colour codes in a log file: {log:?}");
    });
}

/// `GET /ui`: one self-contained HTML page that loads nothing from elsewhere (no
/// external `src`/`href`, a Content-Security-Policy that allows only the service itself)
/// and reads the API routes it draws from; the runs it lists carry their profile; a
/// run's timeline so far.
#[test]
fn ui_page_is_self_contained_and_uses_the_api() {
    let _g = serial();
    each_backend("ui", |b| {
        let mut s = Svc::new(b, "ui", "--budget-memory 1G --budget-cpus 1");
        s.start();
        let r = s.client().request("GET", "/ui", None).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
        let csp = r
            .header("content-security-policy")
            .unwrap_or("")
            .to_string();
        assert!(csp.contains("default-src 'none'"), "{csp}");
        assert!(csp.contains("connect-src 'self'"), "{csp}");
        let html = String::from_utf8(r.bytes().unwrap()).unwrap();
        assert_eq!(html, corral_service::http::UI_PAGE);
        assert!(html.starts_with("<!DOCTYPE html>"), "{}", &html[..40]);
        assert!(html.trim_end().ends_with("</html>"));
        // Nothing external: no script, stylesheet, image or link loaded from a URL, and
        // the only absolute URL is SVG's namespace name (never fetched).
        let lower = html.to_lowercase();
        for attr in ["src=", "href=", "<link", "@import", "url("] {
            assert!(!lower.contains(attr), "the page loads something: {attr}");
        }
        let urls: Vec<&str> = lower
            .match_indices("http")
            .map(|(i, _)| &lower[i..(i + 40).min(lower.len())])
            .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
            .collect();
        assert!(
            urls.iter()
                .all(|u| u.starts_with("http://www.w3.org/2000/svg")),
            "{urls:?}"
        );
        // The routes it uses, as the router declares them, and the bearer token.
        for used in [
            "\"/runs?limit=200&timeline=false\"",
            "\"/runs/\" + encodeURIComponent(",
            "path + \"/timeline\"",
        ] {
            assert!(html.contains(used), "{used} not used");
        }
        assert!(ROUTES.contains(&("get", "/runs")) && ROUTES.contains(&("get", "/runs/{id}")));
        assert!(html.contains("\"Bearer \" + token"));
        assert!(html.contains("sessionStorage"));
        // The page shows each run's profile, also before it has a record.
        let (st, v) = s.submit(&json!({"command": ["true"], "profile": "tool",
            "limits": {"memory": "64M", "cpus": 0.25}}));
        assert_eq!(st, 201, "{v}");
        let id = v["id"].as_str().unwrap().to_string();
        let (_, st) = s.call("GET", &format!("/runs/{id}"));
        assert_eq!(st["profile"], "tool", "{st}");
        let (_, v) = s.call("GET", &format!("/runs/{id}/wait"));
        assert_eq!(v["record"]["profile"], "tool", "{v}");
        let (_, v) = s.call("GET", "/runs");
        assert_eq!(v["runs"][0]["profile"], "tool", "{v}");
        s.submit(&small(&["true"]));
        let (_, v) = s.call("GET", "/runs?limit=1");
        assert_eq!(v["runs"][0]["profile"], "default", "{v}");
        // The page's light list: the records without their timelines.
        let (_, v) = s.call("GET", "/runs");
        assert!(v["runs"][0]["record"]["timeline"].is_object(), "{v}");
        let (st, v) = s.call("GET", "/runs?timeline=false");
        assert_eq!(st, 200, "{v}");
        let first = &v["runs"][0]["record"];
        assert!(first.is_object() && first.get("timeline").is_none(), "{v}");
        assert_eq!(s.call("GET", "/runs?timeline=no").0, 400);
        // GET /runs/{id}/timeline: a finished run's is its record's; a running run's
        // grows with the service's readings (about one a second); unknown ids are 404.
        let (st, tl) = s.call("GET", &format!("/runs/{id}/timeline"));
        let (_, v) = s.call("GET", &format!("/runs/{id}"));
        assert_eq!((st, &tl), (200, &v["record"]["timeline"]), "{tl}");
        assert_eq!(s.call("GET", "/runs/nope/timeline").0, 404);
        let (_, v) = s.submit(&small(&["sleep", "60"]));
        let long = v["id"].as_str().unwrap().to_string();
        let points = |v: &Value| v["points"].as_array().map_or(0, Vec::len);
        let tl = eventually(Duration::from_secs(20), || {
            let (_, tl) = s.call("GET", &format!("/runs/{long}/timeline"));
            (points(&tl) >= 3).then_some(tl)
        })
        .expect("three readings of a running run within 20 s");
        let p = tl["points"].as_array().unwrap();
        assert!(
            p.windows(2)
                .all(|w| w[0]["t"].as_f64() < w[1]["t"].as_f64()),
            "{tl}"
        );
        assert!(p.iter().all(|x| x["processes"].as_u64() >= Some(1)), "{tl}");
        assert!(
            p.iter().all(|x| x["memory_bytes"].as_u64() > Some(0)),
            "{tl}"
        );
        s.call("POST", &format!("/runs/{long}/cancel"));
        s.stop(libc::SIGTERM, Duration::from_secs(10));
    });
}
