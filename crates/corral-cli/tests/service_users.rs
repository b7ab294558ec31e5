//! A service shared by several users: two ordinary users A and B (created here and
//! removed again, also on failure) talk to one `corral serve` through its socket with
//! the `corral` client, each under their own uid (`setpriv`), and root looks on. A's run
//! executes as A; B can neither see, wait for, read nor cancel it (404, like an unknown
//! id) nor submit as A (403); root sees and cancels everything; the ledger and output
//! are private and the ledger says who submitted and who cancelled. Runs once per
//! cgroup backend this host offers (cgroup1 natively, cgroup2 in the v2 VM).

mod common;
mod svc;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use corral_service::ledger::Ledger;
use serde_json::Value;
use svc::{each_backend, eventually, reason, serial, Svc};

/// An ordinary user made for the test; removed on drop.
struct TestUser {
    name: String,
    uid: u32,
    gid: u32,
}

/// useradd and userdel lock the user database: one at a time in this process.
static USERDB: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl TestUser {
    fn new(tag: &str) -> TestUser {
        TestUser::in_group(tag, None)
    }

    /// A user that is also a member of `group`.
    fn in_group(tag: &str, group: Option<&TestGroup>) -> TestUser {
        let name = format!("corralsu{}{tag}", std::process::id() % 100_000);
        let _lock = USERDB.lock().unwrap_or_else(|e| e.into_inner());
        let _ = Command::new("userdel").arg(&name).output();
        let mut add = Command::new("useradd");
        add.args(["--no-create-home", "--shell", "/usr/sbin/nologin"]);
        if let Some(g) = group {
            add.args(["-G", &g.0]);
        }
        let out = add.arg(&name).output().expect("useradd runs");
        assert!(out.status.success(), "useradd: {out:?}");
        let u = nix::unistd::User::from_name(&name).unwrap().unwrap();
        TestUser {
            name,
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
        }
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _lock = USERDB.lock().unwrap_or_else(|e| e.into_inner());
        let _ = Command::new("userdel").arg(&self.name).output();
    }
}

/// A group made for the test; removed on drop (after its members).
struct TestGroup(String);

impl TestGroup {
    fn new(tag: &str) -> TestGroup {
        let name = format!("corralsg{}{tag}", std::process::id() % 100_000);
        let _lock = USERDB.lock().unwrap_or_else(|e| e.into_inner());
        let _ = Command::new("groupdel").arg(&name).output();
        let out = Command::new("groupadd").arg(&name).output().unwrap();
        assert!(out.status.success(), "groupadd: {out:?}");
        TestGroup(name)
    }
}

impl Drop for TestGroup {
    fn drop(&mut self) {
        let _lock = USERDB.lock().unwrap_or_else(|e| e.into_inner());
        let _ = Command::new("groupdel").arg(&self.0).output();
    }
}

fn id_of(out: &Output) -> String {
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice::<Value>(&out.stdout).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Runs `corral CMD --server SOCK ARGS...` as `u` (its uid and gid, no other groups) in
/// `cwd`.
fn corral_as(u: &TestUser, s: &Svc, cwd: &Path, args: &[&str]) -> Output {
    Command::new("setpriv")
        .arg(format!("--reuid={}", u.uid))
        .arg(format!("--regid={}", u.gid))
        .arg("--clear-groups")
        .arg(env!("CARGO_BIN_EXE_corral"))
        .arg(args[0])
        .arg("--server")
        .arg(s.socket())
        .args(&args[1..])
        .current_dir(cwd)
        .env("HOME", cwd)
        .env_remove("CORRAL_SERVER")
        .stdin(Stdio::null())
        .output()
        .expect("setpriv runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn each_user_runs_as_themselves_and_sees_only_their_own() {
    if !nix::unistd::geteuid().is_root() {
        corral_testkit::skip(
            "service_users",
            &common::Missing::new(common::Feature::Root, "creating users needs root"),
        );
        return;
    }
    let _g = serial();
    each_backend("service_users", |b| {
        let (a, bob) = (TestUser::new("a"), TestUser::new("b"));
        let mut s = Svc::new(
            b,
            "users",
            "--budget-memory 1G --budget-cpus 1 --max-running 4",
        );
        // Users must reach the socket in the test's directory (not list it).
        std::fs::set_permissions(s.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let cwd = tempfile::tempdir().unwrap();
        std::fs::set_permissions(cwd.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let cwd = cwd.path();
        s.start();
        assert_eq!(mode(&s.socket()), 0o666, "every local user may connect");
        let lim = ["-m", "64M", "-c", "0.25", "-t", "60s"];

        // A's run executes as A.
        let mut args = vec!["submit", "--wait", "--json"];
        args.extend(lim);
        args.extend(["--", "id", "-u"]);
        let out = corral_as(&a, &s, cwd, &args);
        assert!(out.status.success(), "A's run: {out:?}");
        let rec: Value = serde_json::from_slice(&out.stdout).unwrap();
        let quick = rec["id"].as_str().unwrap().to_string();
        let out = corral_as(&a, &s, cwd, &["logs", &quick]);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(text(&out.stdout).trim(), a.uid.to_string(), "id -u inside");
        let out = corral_as(&a, &s, cwd, &["show", &quick, "--json"]);
        assert!(out.status.success(), "{out:?}");

        // A long run of A's, running.
        let mut args = vec!["submit", "--json"];
        args.extend(lim);
        args.extend(["--", "sleep", "60"]);
        let out = corral_as(&a, &s, cwd, &args);
        assert!(out.status.success(), "{out:?}");
        let long = serde_json::from_slice::<Value>(&out.stdout).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();

        // B: 404 for A's runs on every route, exactly like an unknown id.
        for (cmd, id) in [
            ("show", &quick),
            ("wait", &quick),
            ("logs", &quick),
            ("cancel", &long),
            ("show", &long),
        ] {
            let out = corral_as(&bob, &s, cwd, &[cmd, id.as_str()]);
            assert_eq!(out.status.code(), Some(1), "B {cmd} {id}: {out:?}");
            assert!(
                text(&out.stderr).contains(&format!("no run with id \"{id}\"")),
                "B {cmd}: {}",
                text(&out.stderr)
            );
        }
        let out = corral_as(&bob, &s, cwd, &["show", "no-such-run"]);
        assert_eq!(out.status.code(), Some(1));
        // B submitting as A: 403 with the reason, and nothing stored.
        let mut args = vec!["submit", "--json", "--user", a.name.as_str()];
        args.extend(lim);
        args.extend(["--", "true"]);
        let out = corral_as(&bob, &s, cwd, &args);
        assert_eq!(out.status.code(), Some(125), "{out:?}");
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!(
                "uid {} may not run commands as user \"{}\"",
                bob.uid, a.name
            )),
            "{err}"
        );
        // B's own run, and B's list holds only it.
        let mut args = vec!["submit", "--wait", "--json"];
        args.extend(lim);
        args.extend(["--", "true"]);
        let out = corral_as(&bob, &s, cwd, &args);
        assert!(out.status.success(), "{out:?}");
        let bobs = serde_json::from_slice::<Value>(&out.stdout).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let out = corral_as(&bob, &s, cwd, &["ps", "--json"]);
        assert!(out.status.success(), "{out:?}");
        let list: Value = serde_json::from_slice(&out.stdout).unwrap();
        let ids: Vec<&str> = list["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, [bobs.as_str()], "B sees only its own run");
        assert_eq!(list["runs"][0]["owner"]["uid"], bob.uid);
        assert_eq!(list["runs"][0]["owner"]["name"], bob.name.as_str());
        // `corral ps` names the owner.
        let out = corral_as(&a, &s, cwd, &["ps"]);
        let ps = text(&out.stdout);
        assert!(ps.lines().next().unwrap().contains("OWNER"), "{ps}");
        assert!(
            ps.lines()
                .any(|l| l.starts_with(&quick) && l.contains(&a.name)),
            "{ps}"
        );

        // Root sees everyone's runs and cancels A's.
        let (code, all) = s.call("GET", "/runs");
        assert_eq!(code, 200);
        let owners: Vec<(String, u64)> = all["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["id"].as_str().unwrap().to_string(),
                    r["owner"]["uid"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            owners,
            [
                (quick.clone(), u64::from(a.uid)),
                (long.clone(), u64::from(a.uid)),
                (bobs.clone(), u64::from(bob.uid))
            ]
        );
        let (code, _) = s.call("POST", &format!("/runs/{long}/cancel"));
        assert!(code == 200 || code == 202, "{code}");
        let done = eventually(Duration::from_secs(30), || {
            let (_, st) = s.call("GET", &format!("/runs/{long}"));
            (st["state"] == "done").then_some(st)
        })
        .expect("the cancelled run ends");
        assert_eq!(reason(&done), "cancelled");

        // Files at rest: the ledger and output are the service's or the run user's
        // alone.
        let state = s.ledger().parent().unwrap().to_path_buf();
        assert_eq!(mode(&s.ledger()), 0o600, "the ledger");
        assert_eq!(mode(&state.join("output")), 0o700, "the output directory");
        let out_file = state.join("output").join(format!("{quick}.stdout"));
        let m = std::fs::metadata(&out_file).unwrap();
        assert_eq!(
            (m.uid(), m.mode() & 0o777),
            (a.uid, 0o600),
            "A's output belongs to A, 0600"
        );

        // A kill -9 right after a cancel loses neither the owner nor the cancel: both
        // are in the ledger before the answer.
        let mut args = vec!["submit", "--json"];
        args.extend(lim);
        args.extend(["--", "sleep", "60"]);
        let killed = id_of(&corral_as(&a, &s, cwd, &args));
        eventually(Duration::from_secs(30), || {
            let (_, st) = s.call("GET", &format!("/runs/{killed}"));
            (st["state"] == "running").then_some(())
        })
        .expect("it starts");
        let (code, _) = s.call("POST", &format!("/runs/{killed}/cancel"));
        assert_eq!(code, 202);
        s.kill9();
        s.start();
        let (code, st) = s.call("GET", &format!("/runs/{killed}"));
        assert_eq!(code, 200);
        assert_eq!(st["owner"]["uid"], a.uid, "the owner survives kill -9");
        assert!(st["state"] == "done" || st["state"] == "lost", "{st}");
        let out = corral_as(&bob, &s, cwd, &["show", &killed]);
        assert_eq!(out.status.code(), Some(1), "still A's alone: {out:?}");

        // The ledger says who submitted and who cancelled (read after the service
        // stopped: it holds the ledger's lock).
        s.stop(libc::SIGTERM, Duration::from_secs(30));
        let l = Ledger::open(&s.ledger()).unwrap();
        let row = |id: &str| l.get(id).unwrap().unwrap();
        assert_eq!(row(&quick).submitted_by, Some(a.uid));
        assert_eq!(row(&quick).cancelled_by, None);
        assert_eq!(row(&long).submitted_by, Some(a.uid));
        assert_eq!(row(&long).cancelled_by, Some(0), "root cancelled it");
        assert!(row(&long).cancelled_at.is_some());
        assert_eq!(row(&bobs).submitted_by, Some(bob.uid));
        let killed_row = row(&killed);
        assert_eq!(
            (killed_row.submitted_by, killed_row.cancelled_by),
            (Some(a.uid), Some(0)),
            "after kill -9"
        );
        assert_eq!(
            l.list(None, None, 100).unwrap().len(),
            4,
            "the 403 stored nothing"
        );
    });
}

/// `--allow-group` keeps others from submitting (403); a member of `--admin-group` sees
/// and cancels another user's run and may run a command as another user.
#[test]
fn allow_and_admin_groups() {
    if !nix::unistd::geteuid().is_root() {
        corral_testkit::skip(
            "service_users groups",
            &common::Missing::new(common::Feature::Root, "creating users needs root"),
        );
        return;
    }
    let _g = serial();
    each_backend("service_users_groups", |b| {
        // Groups first: they are removed after their members.
        let (allowed, admins) = (TestGroup::new("al"), TestGroup::new("ad"));
        let a = TestUser::in_group("ga", Some(&allowed));
        let out_user = TestUser::new("go");
        let op = TestUser::in_group("gc", Some(&admins));
        let args = format!(
            "--budget-memory 1G --budget-cpus 1 --max-running 4 --allow-group {} \
             --admin-group {}",
            allowed.0, admins.0
        );
        let mut s = Svc::new(b, "groups", &args);
        std::fs::set_permissions(s.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let cwd = tempfile::tempdir().unwrap();
        std::fs::set_permissions(cwd.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let cwd = cwd.path();
        s.start();
        let lim = ["-m", "64M", "-c", "0.25", "-t", "60s"];
        let submit = |u: &TestUser, extra: &[&str], cmd: &[&str]| {
            let mut args = vec!["submit", "--json"];
            args.extend(extra);
            args.extend(lim);
            args.push("--");
            args.extend(cmd);
            corral_as(u, &s, cwd, &args)
        };

        // Not in the allowed group: 403, nothing stored.
        let out = submit(&out_user, &[], &["true"]);
        assert_eq!(out.status.code(), Some(125), "{out:?}");
        assert!(
            text(&out.stderr).contains(&format!(
                "uid {} may not submit runs to this corral service: only members of group \"{}\"",
                out_user.uid, allowed.0
            )),
            "{}",
            text(&out.stderr)
        );
        // A member submits; the admin sees and cancels the run.
        let long = id_of(&submit(&a, &[], &["sleep", "60"]));
        let out = corral_as(&op, &s, cwd, &["ps", "--json"]);
        assert!(out.status.success(), "{out:?}");
        let list: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            list["runs"][0]["id"],
            long.as_str(),
            "the admin sees A's run"
        );
        let out = corral_as(&op, &s, cwd, &["cancel", &long]);
        assert!(out.status.success(), "the admin cancels A's run: {out:?}");
        let out = corral_as(&op, &s, cwd, &["wait", &long, "--json"]);
        let rec: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(rec["outcome"]["reason"], "cancelled");
        // The admin may run a command as A.
        let mut wait = vec!["--wait", "--user"];
        wait.push(a.name.as_str());
        let as_a = id_of(&submit(&op, &wait, &["id", "-u"]));
        let out = corral_as(&op, &s, cwd, &["logs", &as_a]);
        assert_eq!(text(&out.stdout).trim(), a.uid.to_string(), "{out:?}");
        // A does not see the run the admin submitted for it: it is the admin's.
        let out = corral_as(&a, &s, cwd, &["show", &as_a]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");

        s.stop(libc::SIGTERM, Duration::from_secs(30));
        let l = Ledger::open(&s.ledger()).unwrap();
        let row = l.get(&long).unwrap().unwrap();
        assert_eq!(
            (row.submitted_by, row.cancelled_by),
            (Some(a.uid), Some(op.uid))
        );
        assert_eq!(l.get(&as_a).unwrap().unwrap().submitted_by, Some(op.uid));
        assert_eq!(
            l.list(None, None, 100).unwrap().len(),
            2,
            "the 403 stored nothing"
        );
    });
}

/// With `--user-max-running 1`, a user's second and third runs wait while another
/// user's run starts at once.
#[test]
fn a_user_over_its_cap_waits_while_others_start() {
    if !nix::unistd::geteuid().is_root() {
        corral_testkit::skip(
            "service_users cap",
            &common::Missing::new(common::Feature::Root, "creating users needs root"),
        );
        return;
    }
    let _g = serial();
    each_backend("service_users_cap", |b| {
        let (a, bob) = (TestUser::new("ca"), TestUser::new("cb"));
        let mut s = Svc::new(
            b,
            "cap",
            "--budget-memory 1G --budget-cpus 1 --max-running 4 --user-max-running 1 \
             --user-budget-memory 512M",
        );
        std::fs::set_permissions(s.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let cwd = tempfile::tempdir().unwrap();
        std::fs::set_permissions(cwd.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let cwd = cwd.path();
        s.start();
        let (_, h) = s.call("GET", "/health");
        assert_eq!(h["budget"]["user_max_running"], 1);
        let submit = |u: &TestUser| {
            id_of(&corral_as(
                u,
                &s,
                cwd,
                &[
                    "submit", "--json", "-m", "64M", "-c", "0.1", "-t", "60s", "--", "sleep", "60",
                ],
            ))
        };
        let mine: Vec<String> = (0..3).map(|_| submit(&a)).collect();
        let other = submit(&bob);
        let state = |id: &str| s.call("GET", &format!("/runs/{id}")).1["state"].clone();
        eventually(Duration::from_secs(30), || {
            (state(&other) == "running" && state(&mine[0]) == "running").then_some(())
        })
        .expect("B's run starts although A's runs were queued before it");
        let states: Vec<Value> = mine.iter().map(|id| state(id)).collect();
        assert_eq!(
            states,
            ["running", "queued", "queued"],
            "A runs one at a time"
        );
        // One run cgroup per running run, read from the kernel (`running` is written
        // before the cgroup is made, so it may lag a moment, but never exceeds 2).
        eventually(Duration::from_secs(10), || {
            let n = s.run_cgroups_memory();
            assert!(
                n <= 2,
                "{n} run cgroups with a cap of 1 per user and 2 users"
            );
            (n == 2).then_some(())
        })
        .expect("both running runs have their cgroup");
        // Each user's share in /health and /metrics.
        let (_, h) = s.call("GET", "/health");
        let users: Vec<(u64, u64, u64)> = h["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| {
                (
                    u["uid"].as_u64().unwrap(),
                    u["running"].as_u64().unwrap(),
                    u["queued"].as_u64().unwrap(),
                )
            })
            .collect();
        let mut want = vec![(u64::from(a.uid), 1, 2), (u64::from(bob.uid), 1, 0)];
        want.sort();
        assert_eq!(users, want);
        let m = s.metrics();
        assert!(
            m.contains(&format!("corral_user_queued{{uid=\"{}\"}} 2\n", a.uid)),
            "{m}"
        );
        // A run larger than one user's memory budget could never start: 422.
        let out = corral_as(
            &bob,
            &s,
            cwd,
            &["submit", "-m", "600M", "-c", "0.1", "--", "true"],
        );
        assert_eq!(out.status.code(), Some(125), "{out:?}");
        assert!(
            text(&out.stderr).contains("exceeds the service's memory budget per user of 512 MiB"),
            "{}",
            text(&out.stderr)
        );
        // A's next run starts when its first ends.
        let (code, _) = s.call("POST", &format!("/runs/{}/cancel", mine[0]));
        assert_eq!(code, 202);
        eventually(Duration::from_secs(30), || {
            (state(&mine[1]) == "running").then_some(())
        })
        .expect("A's second run starts after its first");
        assert_eq!(state(&mine[2]), "queued");
        for id in mine.iter().chain([&other]) {
            s.call("POST", &format!("/runs/{id}/cancel"));
        }
        s.stop(libc::SIGTERM, Duration::from_secs(30));
    });
}

/// TCP knows callers only by bearer token: a TCP listener needs `--token-file` (mode
/// 0600); a request without a token or with a wrong one is refused (401); a token's
/// run executes as the token's user and sees only that user's runs.
#[test]
fn tcp_callers_are_their_tokens_user() {
    if !nix::unistd::geteuid().is_root() {
        corral_testkit::skip(
            "service_users tcp",
            &common::Missing::new(common::Feature::Root, "creating users needs root"),
        );
        return;
    }
    let _g = serial();
    each_backend("service_users_tcp", |b| {
        let a = TestUser::new("ta");
        let mut s = Svc::new(b, "tcp", "");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let tokens = s.dir.path().join("tokens");
        let a_token = "a-token-0123456789abcdef";
        let root_token = "root-token-0123456789abcdef";
        std::fs::write(
            &tokens,
            format!("{} {a_token}\nroot {root_token}\n", a.name),
        )
        .unwrap();
        let serve = |extra: &[&std::ffi::OsStr]| {
            let mut c = Command::new(env!("CARGO_BIN_EXE_corral"));
            c.args(["serve", "--listen", &addr, "--ledger"])
                .arg(s.ledger())
                .args(["--backend", b, "--cgroup-root", &s.root_arg])
                .args(["--budget-memory", "1G", "--budget-cpus", "1"])
                .args(extra)
                .env("XDG_CONFIG_HOME", s.dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null());
            c
        };
        // Without a token file, or with one others may read: refused at start.
        let out = serve(&[]).output().unwrap();
        assert_eq!(out.status.code(), Some(125));
        assert!(
            text(&out.stderr).contains(&format!(
                "refusing to listen on {addr} without --token-file"
            )),
            "{}",
            text(&out.stderr)
        );
        std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o644)).unwrap();
        let out = serve(&["--token-file".as_ref(), tokens.as_os_str()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(125));
        assert!(
            text(&out.stderr).contains("has mode 0644"),
            "{}",
            text(&out.stderr)
        );
        assert!(!s.ledger().exists(), "nothing was created");

        std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut c = serve(&["--token-file".as_ref(), tokens.as_os_str()]);
        c.stderr(std::fs::File::create(s.dir.path().join("serve-tcp.log")).unwrap());
        s.child = Some(c.spawn().unwrap());
        let client = |t: Option<&str>| {
            corral_service::client::Client::new(addr.parse().unwrap())
                .with_token(t.map(str::to_string))
        };
        eventually(Duration::from_secs(20), || client(None).health().ok())
            .expect("the service answers /health");
        let call = |t: Option<&str>, method: &str, path: &str, body: Option<&Value>| {
            let body = body.map(|v| v.to_string());
            let r = client(t)
                .request(method, path, body.as_deref().map(str::as_bytes))
                .unwrap();
            let code = r.status;
            (
                code,
                serde_json::from_slice::<Value>(&r.bytes().unwrap()).unwrap_or(Value::Null),
            )
        };
        for t in [None, Some("a-token-0123456789abcdeX"), Some("")] {
            let (code, v) = call(t, "GET", "/runs", None);
            assert_eq!(code, 401, "{t:?}: {v}");
            assert!(
                v["error"]
                    .as_str()
                    .unwrap()
                    .contains("Authorization: Bearer"),
                "{v}"
            );
        }
        let body = serde_json::json!({"command": ["id", "-u"], "cwd": "/",
            "limits": {"memory": "64M", "cpus": 0.25, "timeout": "60s"}});
        let (code, v) = call(None, "POST", "/runs", Some(&body));
        assert_eq!(code, 401, "{v}");
        // A's token: the run is A's.
        let (code, v) = call(Some(a_token), "POST", "/runs", Some(&body));
        assert_eq!(code, 201, "{v}");
        let id = v["id"].as_str().unwrap().to_string();
        let (code, st) = call(
            Some(a_token),
            "GET",
            &format!("/runs/{id}/wait?timeout=60"),
            None,
        );
        assert_eq!(code, 200, "{st}");
        assert_eq!(st["owner"]["uid"], a.uid);
        let r = client(Some(a_token))
            .request("GET", &format!("/runs/{id}/output"), None)
            .unwrap();
        assert_eq!(
            text(&r.bytes().unwrap()).trim(),
            a.uid.to_string(),
            "id -u inside"
        );
        // Root's token sees it; root's own run is not A's to see.
        let (_, rv) = call(Some(root_token), "POST", "/runs", Some(&body));
        let rid = rv["id"].as_str().unwrap().to_string();
        let (code, _) = call(Some(a_token), "GET", &format!("/runs/{rid}"), None);
        assert_eq!(code, 404);
        let (_, all) = call(Some(root_token), "GET", "/runs", None);
        assert_eq!(all["runs"].as_array().unwrap().len(), 2);
        let (_, mine) = call(Some(a_token), "GET", "/runs", None);
        assert_eq!(mine["runs"].as_array().unwrap().len(), 1);
        call(
            Some(root_token),
            "GET",
            &format!("/runs/{rid}/wait?timeout=60"),
            None,
        );
        s.stop(libc::SIGTERM, Duration::from_secs(30));
    });
}

/// 200 runs from three users under one budget: one user floods the queue first, the
/// others' runs still start in turn with it; every cap holds at every moment (run
/// cgroups read from the kernel, each user's running runs from /health).
#[test]
fn three_users_share_one_budget_in_turns() {
    if !nix::unistd::geteuid().is_root() {
        corral_testkit::skip(
            "service_users share",
            &common::Missing::new(common::Feature::Root, "creating users needs root"),
        );
        return;
    }
    let _g = serial();
    each_backend("service_users_share", |b| {
        let users = [
            TestUser::new("sx"),
            TestUser::new("sy"),
            TestUser::new("sz"),
        ];
        let mut s = Svc::new(b, "share", "");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let tokens = s.dir.path().join("tokens");
        let token = |i: usize| format!("share-token-{i}-0123456789abcdef");
        let lines: String = users
            .iter()
            .enumerate()
            .map(|(i, u)| format!("{} {}\n", u.name, token(i)))
            .collect();
        std::fs::write(&tokens, lines).unwrap();
        std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut c = Command::new(env!("CARGO_BIN_EXE_corral"));
        c.args(["serve", "--listen", &addr, "--ledger"])
            .arg(s.ledger())
            .args(["--backend", b, "--cgroup-root", &s.root_arg])
            .args([
                "--budget-memory",
                "1G",
                "--budget-cpus",
                "1",
                "--max-running",
                "3",
            ])
            .args(["--user-max-running", "2", "--token-file"])
            .arg(&tokens)
            .env("XDG_CONFIG_HOME", s.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(s.dir.path().join("serve-share.log")).unwrap());
        s.child = Some(c.spawn().unwrap());
        let client = |i: usize| {
            corral_service::client::Client::new(addr.parse().unwrap()).with_token(Some(token(i)))
        };
        eventually(Duration::from_secs(20), || client(0).health().ok()).expect("it answers");
        let body = serde_json::json!({"command": ["sleep", "0.05"], "cwd": "/",
            "limits": {"memory": "64M", "cpus": 0.25, "timeout": "60s"}})
        .to_string();
        let submit = |i: usize| {
            let r = client(i)
                .request("POST", "/runs", Some(body.as_bytes()))
                .unwrap();
            assert_eq!(r.status, 201);
            let v: Value = serde_json::from_slice(&r.bytes().unwrap()).unwrap();
            (i, v["id"].as_str().unwrap().to_string())
        };
        // X floods the queue first; then Y and Z.
        let mut ids: Vec<(usize, String)> = (0..150).map(|_| submit(0)).collect();
        ids.extend((0..30).map(|_| submit(1)));
        ids.extend((0..20).map(|_| submit(2)));
        // Every cap at every moment until all are done.
        let t = std::time::Instant::now();
        loop {
            let n = s.run_cgroups_memory();
            assert!(n <= 3, "{n} run cgroups under --max-running 3");
            let h = client(0).health().unwrap();
            for u in &h.users {
                assert!(u.running <= 2, "uid {} runs {} (cap 2)", u.uid, u.running);
            }
            assert!(h.running <= 3);
            if h.queued == 0 && h.running == 0 {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(300),
                "the load did not finish"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // The order runs started in: Y's and Z's are interleaved with X's backlog.
        // (user, submitted_at, started_at), RFC 3339 UTC with milliseconds: comparable
        // as text.
        let runs: Vec<(usize, String, String)> = ids
            .iter()
            .map(|(i, id)| {
                let st = client(*i).status(id).unwrap();
                let rec = st.record.expect("done");
                assert_eq!(rec.outcome.reason.as_str(), "exited", "{}", rec.notes);
                (*i, st.submitted_at.clone(), rec.started_at.clone())
            })
            .collect();
        let x_last = runs
            .iter()
            .filter(|r| r.0 == 0)
            .map(|r| &r.2)
            .max()
            .unwrap();
        for (user, name) in [(1, "Y"), (2, "Z")] {
            let first = runs
                .iter()
                .filter(|r| r.0 == user)
                .min_by_key(|r| &r.2)
                .unwrap();
            let last = runs
                .iter()
                .filter(|r| r.0 == user)
                .map(|r| &r.2)
                .max()
                .unwrap();
            // X runs started after this user's first run was submitted and before it
            // started: at most the free slots of that moment, not X's backlog.
            let overtaken = runs
                .iter()
                .filter(|r| r.0 == 0 && r.2 > first.1 && r.2 < first.2)
                .count();
            eprintln!(
                "{name}: {overtaken} of X's runs started between its first submission and start"
            );
            assert!(
                overtaken <= 3,
                "{name}'s first run waited behind {overtaken} of X's"
            );
            assert!(
                last < x_last,
                "{name}'s runs all started before X's backlog ended"
            );
        }
        s.stop(libc::SIGTERM, Duration::from_secs(30));
    });
}
