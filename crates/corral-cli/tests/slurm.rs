//! `corral serve --executor slurm` against a real single-node Slurm that the test
//! starts itself (munge, slurmctld and slurmd with their own ports and state under a
//! temporary directory: `corral_testkit::slurm`): twenty mixed runs get the right
//! reasons and usage from `corral run` on the node; endings Slurm caused get records
//! that say so (an administrator's scancel, a time limit an administrator cut, corral
//! killed on the node with no record left); kill -9 of the service mid-load and a
//! restart collect every record; a slurmctld restart mid-load loses nothing; `corral
//! submit` and `corral ps` work unchanged. In the cgroup2 VM, a Slurm that enforces
//! with its cgroup v2 plugin kills a run at its own smaller memory limit, and the record
//! says so (`cgroup2_slurm_enforcing`).
//!
//! Needs root and Slurm (`apt-get install slurm-wlm munge`); skips without them,
//! fails in CI where the host step requires `slurm`.

mod common;
mod svc;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{corral_bin, PYTHON};
use corral_testkit::slurm::PrivateSlurm;
use corral_testkit::{Feature, Missing};
use serde_json::{json, Value};
use svc::{each_backend, eventually, reason, Svc};

/// The runs of one scenario: id → what it is.
type Runs = BTreeMap<String, &'static str>;

fn submit(s: &Svc, runs: &mut Runs, kind: &'static str, command: Value, limits: Value) -> String {
    let (st, v) = s.submit(&json!({"command": command, "limits": limits}));
    assert_eq!(st, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    runs.insert(id.clone(), kind);
    id
}

/// The run's Slurm job id, once the service stored it.
fn job_of(s: &Svc, id: &str) -> String {
    eventually(Duration::from_secs(60), || {
        s.client().status(id).ok()?.slurm_job_id
    })
    .unwrap_or_else(|| panic!("run {id} got no Slurm job: {}", s.log(1)))
}

/// Waits until Slurm shows the job in `state`.
fn job_in_state(slurm: &PrivateSlurm, job: &str, state: &str) {
    let want = format!("JobState={state} ");
    let seen = eventually(Duration::from_secs(60), || {
        slurm.job(job).filter(|l| l.contains(&want))
    });
    assert!(
        seen.is_some(),
        "job {job} never {state}: {:?}",
        slurm.job(job)
    );
}

/// The final status of a run (JSON).
fn done(s: &Svc, id: &str, within_s: u64) -> Value {
    let (st, v) = s.call("GET", &format!("/runs/{id}/wait?timeout={within_s}"));
    assert_eq!(st, 200, "{v}");
    assert!(v["record"].is_object(), "run {id} not done: {v}");
    v
}

/// The pid of the `corral run` that carries `id` on the node.
fn node_corral(id: &str) -> Option<i32> {
    let want = format!("{id}.json");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        let is = args.iter().any(|a| *a == b"--job-file")
            && args.iter().any(|a| a.ends_with(want.as_bytes()));
        is.then_some(pid)
    })
}

/// Checks a record made by `corral run` on the node for a run of `kind`.
fn check_kind(slurm: &PrivateSlurm, id: &str, kind: &str, v: &Value) {
    let rec = &v["record"];
    assert_eq!(rec["executor"], "slurm", "{rec}");
    assert!(rec["slurm"]["job_id"].as_str().is_some(), "{rec}");
    let usage = &rec["usage"];
    let cpu = usage["cpu_user_s"].as_f64().unwrap() + usage["cpu_system_s"].as_f64().unwrap();
    let code = rec["outcome"]["exit_code"].as_i64().unwrap();
    match kind {
        "ok" | "exit3" => {
            assert_eq!(reason(v), "exited", "{rec}");
            assert_eq!(code, if kind == "ok" { 0 } else { 3 }, "{rec}");
            assert_eq!(rec["slurm"]["node"], slurm.node.as_str(), "{rec}");
            assert!(usage["wall_s"].as_f64().unwrap() > 0.0, "{rec}");
            assert!(usage["memory_peak_bytes"].as_u64().unwrap() > 0, "{rec}");
            // The exact record of the node's corral: its own cgroup and isolation.
            assert!(rec["cgroup"].as_str().is_some(), "{rec}");
            assert!(rec["isolation"].is_object(), "{rec}");
        }
        "oom" => {
            assert_eq!((reason(v), code), ("oom", 137), "{rec}");
            assert!(rec["events"]["oom_kill"].as_u64().unwrap() >= 1, "{rec}");
            let peak = usage["memory_peak_bytes"].as_u64().unwrap();
            assert!(
                peak > 32 << 20 && peak <= (64 << 20) * 105 / 100,
                "peak {peak}"
            );
        }
        "timeout" => {
            assert_eq!((reason(v), code), ("timeout", 124), "{rec}");
            assert!(usage["wall_s"].as_f64().unwrap() >= 2.0, "{rec}");
        }
        "cpu" => {
            assert_eq!(reason(v), "cpu_time", "{rec}");
            assert!(cpu >= 1.0, "{rec}");
        }
        "cancel-running" => {
            assert_eq!(reason(v), "cancelled", "{rec}");
            let notes = rec["notes"].as_str().unwrap();
            assert!(notes.contains("a client cancelled it"), "{notes}");
            assert_eq!(rec["slurm"]["node"], slurm.node.as_str(), "{rec}");
        }
        "cancel-queued" => {
            assert_eq!((reason(v), code), ("cancelled", 143), "{rec}");
            let notes = rec["notes"].as_str().unwrap();
            assert!(notes.contains("Slurm never started the job"), "{notes}");
            assert_eq!(rec["slurm"]["node"], Value::Null, "{rec}");
            assert_eq!(rec["slurm"]["state"], "CANCELLED", "{rec}");
            assert_eq!(usage["wall_s"].as_f64().unwrap(), 0.0, "{rec}");
        }
        "echo" => {
            assert_eq!((reason(v), code), ("exited", 0), "{rec}");
            let out = s_output(v);
            assert!(out.is_some(), "{rec}");
        }
        other => panic!("unknown kind {other}"),
    }
    let _ = id;
}

/// Removes the cgroups `corral run` left on the node for a run whose corral was
/// killed (this test killed it; a later `corral run` would reap them).
fn remove_node_cgroups(id: &str) {
    let prefix = format!("{id}.");
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let mut dirs: Vec<std::path::PathBuf> = hierarchies
        .flatten()
        .map(|h| h.path().join("corral"))
        .chain([std::path::PathBuf::from("/sys/fs/cgroup/corral")])
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flat_map(|rd| rd.flatten())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    dirs.sort();
    dirs.dedup();
    for d in dirs {
        // Children first (a cgroup2 run has a leaf below its group).
        let mut all = vec![d.clone()];
        let mut i = 0;
        while i < all.len() {
            if let Ok(rd) = std::fs::read_dir(&all[i]) {
                all.extend(rd.flatten().filter(|e| e.path().is_dir()).map(|e| e.path()));
            }
            i += 1;
        }
        for c in all.iter().rev() {
            let gone = eventually(Duration::from_secs(10), || {
                (std::fs::remove_dir(c).is_ok() || !c.exists()).then_some(())
            });
            assert!(gone.is_some(), "cannot remove {}", c.display());
        }
    }
}

fn s_output(v: &Value) -> Option<u64> {
    v["record"]["output"]["stdout"]["bytes"].as_u64()
}

#[test]
fn slurm_executor() {
    if !rustix::process::geteuid().is_root() {
        corral_testkit::skip(
            "slurm_executor",
            &Missing::new(Feature::Root, "needs root (slurmd, munge)"),
        );
        return;
    }
    if let Err(m) = PrivateSlurm::available() {
        corral_testkit::skip("slurm_executor", &m);
        return;
    }
    each_backend("slurm", scenario);
}

fn scenario(b: &'static str) {
    let t0 = Instant::now();
    let sdir = tempfile::tempdir().unwrap();
    let mut slurm = PrivateSlurm::start(sdir.path());
    // The service and the client commands find this Slurm through SLURM_CONF (the one
    // test of this file: nothing else reads the environment meanwhile).
    std::env::set_var("SLURM_CONF", &slurm.conf);
    let spool = tempfile::tempdir().unwrap();
    let mut s = Svc::new(
        b,
        "slurm",
        &format!(
            "--executor slurm --spool {} --slurm-partition main",
            spool.path().display()
        ),
    );
    s.start();
    let (_, h) = s.call("GET", "/health");
    assert_eq!(h["executor"]["kind"], "slurm", "{h}");
    assert_eq!(h["executor"]["budget_applies"], false, "{h}");
    assert!(h["executor"]["note"]
        .as_str()
        .unwrap()
        .contains("does not apply"));

    let lim = json!({"memory": "64M", "cpus": 0.5, "timeout": "120s"});
    let mut runs = Runs::new();

    // Slurm's own limit, first (its time limit is checked every 30 s or so): an
    // administrator cuts two running jobs' time limit to one minute. In the first,
    // corral on the node sees SIGTERM and writes its record; the record says Slurm's
    // TIMEOUT. The second's command ignores SIGTERM and its grace outlasts Slurm's
    // KillWait: Slurm kills corral too, usually before it can write a record, and the
    // record is made from Slurm's view of the job.
    let cut = submit(
        &s,
        &mut Runs::new(),
        "cut",
        json!(["sleep", "600"]),
        json!({"memory": "64M", "cpus": 0.5, "timeout": "20m"}),
    );
    let hard = submit(
        &s,
        &mut Runs::new(),
        "cut",
        json!(["sh", "-c", "trap '' TERM; sleep 600"]),
        json!({"memory": "64M", "cpus": 0.5, "timeout": "20m", "grace": "60s"}),
    );
    let (cut_job, hard_job) = (job_of(&s, &cut), job_of(&s, &hard));
    for job in [&cut_job, &hard_job] {
        job_in_state(&slurm, job, "RUNNING");
        let st = slurm
            .client("scontrol")
            .args(["update", &format!("JobId={job}"), "TimeLimit=1"])
            .status()
            .unwrap();
        assert!(st.success());
    }

    // Twenty mixed runs.
    for i in 0..4 {
        submit(
            &s,
            &mut runs,
            "ok",
            json!(["sh", "-c", format!("echo out-{i}")]),
            lim.clone(),
        );
        submit(
            &s,
            &mut runs,
            "exit3",
            json!(["sh", "-c", "exit 3"]),
            lim.clone(),
        );
    }
    for _ in 0..3 {
        submit(
            &s,
            &mut runs,
            "oom",
            json!([
                PYTHON,
                "-c",
                "import time; b = b'x' * (300 << 20); time.sleep(5)"
            ]),
            lim.clone(),
        );
        submit(
            &s,
            &mut runs,
            "timeout",
            json!(["sleep", "600"]),
            json!({"memory": "64M", "cpus": 0.5, "timeout": "2s", "grace": "2s"}),
        );
    }
    for _ in 0..2 {
        submit(
            &s,
            &mut runs,
            "cpu",
            json!(["sh", "-c", "while :; do :; done"]),
            json!({"memory": "64M", "cpus": 1, "timeout": "60s", "cpu_time": "1s"}),
        );
    }
    let mut running = Vec::new();
    for _ in 0..2 {
        running.push(submit(
            &s,
            &mut runs,
            "cancel-running",
            json!(["sleep", "600"]),
            lim.clone(),
        ));
    }
    for id in &running {
        job_in_state(&slurm, &job_of(&s, id), "RUNNING");
    }
    // Two runs that need the whole node: Slurm holds them pending while anything runs
    // (the job whose limit was cut runs for a minute). Submitted last, so they hold
    // nothing else up.
    let mut queued = Vec::new();
    for _ in 0..2 {
        queued.push(submit(
            &s,
            &mut runs,
            "cancel-queued",
            json!(["sleep", "600"]),
            json!({"memory": "64M", "cpus": 32, "timeout": "120s"}),
        ));
    }
    for id in &queued {
        job_in_state(&slurm, &job_of(&s, id), "PENDING");
        let (st, v) = s.call("POST", &format!("/runs/{id}/cancel"));
        assert!(st == 200 || st == 202, "{st} {v}");
    }
    for id in &running {
        let (st, v) = s.call("POST", &format!("/runs/{id}/cancel"));
        assert!(st == 200 || st == 202, "{st} {v}");
    }
    assert_eq!(runs.len(), 20);
    for (id, kind) in &runs {
        let v = done(&s, id, 120);
        check_kind(&slurm, id, kind, &v);
    }
    // Their output is where `corral logs` reads it.
    let (id0, _) = runs.iter().find(|(_, k)| **k == "ok").unwrap();
    let text = s
        .client()
        .output(id0, "stdout", false)
        .unwrap()
        .text()
        .unwrap();
    assert!(text.starts_with("out-"), "{text:?}");
    eprintln!("slurm: twenty mixed runs done after {:?}", t0.elapsed());

    // An administrator's scancel of a running job: corral on the node writes its
    // record; the record says Slurm cancelled it.
    let admin = submit(
        &s,
        &mut Runs::new(),
        "admin",
        json!(["sleep", "600"]),
        lim.clone(),
    );
    let admin_job = job_of(&s, &admin);
    job_in_state(&slurm, &admin_job, "RUNNING");
    assert!(slurm
        .client("scancel")
        .arg(&admin_job)
        .status()
        .unwrap()
        .success());
    // corral killed on the node (as a node's crash would): no record is left, so the
    // record is made from Slurm's view of the job, and says so.
    let killed = submit(
        &s,
        &mut Runs::new(),
        "killed",
        json!(["sleep", "600"]),
        lim.clone(),
    );
    let killed_job = job_of(&s, &killed);
    job_in_state(&slurm, &killed_job, "RUNNING");
    let pid = eventually(Duration::from_secs(10), || node_corral(&killed))
        .expect("corral run of the job on the node");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let v = done(&s, &admin, 60);
    let rec = &v["record"];
    assert_eq!(reason(&v), "cancelled", "{rec}");
    assert_eq!(rec["slurm"]["state"], "CANCELLED", "{rec}");
    let notes = rec["notes"].as_str().unwrap();
    assert!(
        notes.starts_with(&format!("Cancelled: Slurm cancelled job {admin_job}")),
        "{notes}"
    );
    assert!(notes.contains("administrator"), "{notes}");
    let v = done(&s, &killed, 60);
    let rec = &v["record"];
    assert_eq!(reason(&v), "lost", "{rec}");
    let notes = rec["notes"].as_str().unwrap();
    // Mostly Slurm's SIGKILL after KillWait ends corral with the run (no record: one
    // made from Slurm's view); sometimes the run's processes die first and corral
    // records their end just before (its record, with Slurm's reason). Either way the
    // record says Slurm's time limit ended it.
    assert!(
        notes.contains("made from Slurm's view of the job")
            || notes.contains("On the node, corral saw:"),
        "{notes}"
    );
    assert!(notes.contains("wrote none"), "{notes}");
    assert_eq!(rec["slurm"]["job_id"], killed_job.as_str(), "{rec}");
    assert!(rec["usage"]["wall_s"].as_f64().unwrap() >= 0.0);

    // kill -9 of the service mid-load; some jobs end while it is down; the restart
    // collects every record.
    let mut load = Runs::new();
    for i in 0..6 {
        submit(
            &s,
            &mut load,
            "echo",
            json!(["sh", "-c", format!("sleep {}; echo load-{i}", i % 3)]),
            lim.clone(),
        );
    }
    s.kill9();
    std::thread::sleep(Duration::from_secs(4));
    s.start();
    for id in load.keys() {
        let v = done(&s, id, 120);
        check_kind(&slurm, id, "echo", &v);
    }
    eprintln!(
        "slurm: restart collected every record after {:?}",
        t0.elapsed()
    );

    // slurmctld restarted mid-load, with submissions while it is down: nothing is lost.
    let mut load2 = Runs::new();
    for i in 0..4 {
        submit(
            &s,
            &mut load2,
            "echo",
            json!(["sh", "-c", format!("sleep 2; echo ctld-{i}")]),
            lim.clone(),
        );
    }
    slurm.restart_ctld(|| {
        for i in 0..3 {
            submit(
                &s,
                &mut load2,
                "echo",
                json!(["sh", "-c", format!("echo down-{i}")]),
                lim.clone(),
            );
        }
        std::thread::sleep(Duration::from_secs(2));
    });
    for id in load2.keys() {
        let v = done(&s, id, 180);
        check_kind(&slurm, id, "echo", &v);
    }
    eprintln!(
        "slurm: slurmctld restart lost nothing after {:?}",
        t0.elapsed()
    );

    // `corral submit --wait` and `corral ps`, unchanged.
    let work = tempfile::tempdir().unwrap();
    let out = Command::new(corral_bin())
        .args(["submit", "--server"])
        .arg(s.socket())
        .args([
            "--wait",
            "--memory",
            "64M",
            "--cpus",
            "0.5",
            "--",
            "sh",
            "-c",
            "echo cli; exit 3",
        ])
        .current_dir(work.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let ps = Command::new(corral_bin())
        .args(["ps", "--server"])
        .arg(s.socket())
        .output()
        .unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout);
    assert!(ps.lines().next().unwrap().contains("SLURM JOB"), "{ps}");
    assert!(ps.contains(&format!(" {admin_job} ")), "{ps}");
    let show = Command::new(corral_bin())
        .args(["show", "--server"])
        .arg(s.socket())
        .arg(&killed)
        .output()
        .unwrap();
    let show = String::from_utf8_lossy(&show.stdout);
    assert!(
        show.contains(&format!("slurm:     job {killed_job} (")),
        "{show}"
    );

    // The Python client with server=, unchanged.
    let py = format!(
        "import sys; sys.path.insert(0, {src:?}); import corral\n\
         r = corral.isolated_run(['sh', '-c', 'echo from-python; exit 4'], cwd={cwd:?}, \
         memory_limit_mb=64, cpu_quota=0.5, timeout_seconds=60, server={sock:?})\n\
         print(r.reason, r.returncode, r.stdout.strip())",
        src = concat!(env!("CARGO_MANIFEST_DIR"), "/../../clients/python/src"),
        cwd = work.path().display().to_string(),
        sock = s.socket().display().to_string(),
    );
    let out = Command::new(PYTHON).args(["-c", &py]).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "exited 4 from-python",
        "{out:?}"
    );

    // Last, the job whose time limit was cut: Slurm's TIMEOUT, said by the record.
    let v = done(&s, &cut, 180);
    let rec = &v["record"];
    let notes = assert_slurm_timeout(&v, &cut_job);
    assert!(notes.contains("On the node, corral saw:"), "{notes}");
    assert!(rec["isolation"].is_object(), "the node's own record: {rec}");
    let v = done(&s, &hard, 120);
    let notes = assert_slurm_timeout(&v, &hard_job);
    assert!(
        notes.contains("made from Slurm's view of the job"),
        "{notes}"
    );
    assert!(
        rec["usage"]["wall_s"].as_f64().unwrap() >= 50.0,
        "Slurm's run time: {rec}"
    );

    // Every accepted run has its record.
    let (_, all) = s.call("GET", "/runs");
    let all = all["runs"].as_array().unwrap();
    assert_eq!(all.len(), 20 + 4 + 6 + 7 + 2, "{all:?}");
    for r in all {
        assert!(r["record"].is_object(), "{r}");
        assert!(r["slurm_job_id"].as_str().is_some(), "{r}");
    }
    s.stop(libc::SIGTERM, Duration::from_secs(20));
    for id in [&killed, &hard] {
        remove_node_cgroups(id);
    }
    eprintln!("slurm: done after {:?}", t0.elapsed());
}

/// Slurm enforcing with cgroup v2 (`proctrack/cgroup`, `task/cgroup`,
/// `ConstrainRAMSpace=yes`: only on a pure cgroup v2 machine without systemd as PID 1,
/// the test VM): corral's run is nested in the job's cgroup and keeps its own exact
/// limit, and when Slurm's smaller memory limit (an administrator lowered a pending
/// job's memory below corral's) is the one the run hits, the record says `oom` and
/// that Slurm did it.
#[test]
fn cgroup2_slurm_enforcing() {
    let test = "cgroup2_slurm_enforcing";
    if !rustix::process::geteuid().is_root() {
        corral_testkit::skip(
            test,
            &Missing::new(Feature::Root, "needs root (slurmd, munge)"),
        );
        return;
    }
    let layout = corral_cgroup::layout::Layout::detect();
    if let Err(m) = common::cgroups_available("cgroup2", &layout) {
        corral_testkit::skip(test, &m);
        return;
    }
    if std::fs::read_link("/proc/1/exe").is_ok_and(|p| p.ends_with("systemd")) {
        corral_testkit::skip(
            test,
            // Not a missing feature of the steps that run this file (the host step,
            // the plain VM): only a systemd machine, where the cgroups are systemd's.
            &Missing::new(
                Feature::Systemd,
                "PID 1 is systemd: a cgroup-enforcing Slurm would need its delegation, \
                 which this test does not set up (it runs in the plain cgroup2 VM)",
            ),
        );
        return;
    }
    if let Err(m) = PrivateSlurm::available() {
        corral_testkit::skip(test, &m);
        return;
    }
    let sdir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let slurm = PrivateSlurm::start_cgroup2(sdir.path());
    eprintln!("{test}: Slurm (cgroup v2) up after {:?}", t0.elapsed());
    std::env::set_var("SLURM_CONF", &slurm.conf);
    let spool = tempfile::tempdir().unwrap();
    let mut s = Svc::new(
        "cgroup2",
        "slurm-cg2",
        &format!(
            "--executor slurm --spool {} --slurm-partition main",
            spool.path().display()
        ),
    );
    s.start();
    let scontrol = |args: &[&str]| {
        let st = slurm.client("scontrol").args(args).status().unwrap();
        assert!(st.success(), "scontrol {args:?}: {}", slurm.logs());
    };
    // Both jobs wait in a partition that is down while the administrator lowers the
    // first one's memory (Slurm's --mem) below corral's limit.
    scontrol(&["update", "PartitionName=main", "State=DOWN"]);
    let hog = [
        PYTHON,
        "-c",
        "import time; b = b'x' * (200 << 20); time.sleep(3)",
    ];
    let mut runs = Runs::new();
    // Slurm's limit (96 MiB) below corral's (256 MiB): Slurm's is the one hit.
    let by_slurm = submit(
        &s,
        &mut runs,
        "slurm-oom",
        json!(hog),
        json!({"memory": "256M", "timeout": "120s"}),
    );
    // corral's own limit (96 MiB) below Slurm's (96 + 64 MiB): corral's is hit.
    let by_corral = submit(
        &s,
        &mut runs,
        "oom",
        json!(hog),
        json!({"memory": "96M", "timeout": "120s"}),
    );
    let slurm_job = job_of(&s, &by_slurm);
    job_in_state(&slurm, &slurm_job, "PENDING");
    job_in_state(&slurm, &job_of(&s, &by_corral), "PENDING");
    scontrol(&["update", &format!("JobId={slurm_job}"), "MinMemoryNode=96"]);
    scontrol(&["update", "PartitionName=main", "State=UP"]);

    let v = done(&s, &by_slurm, 120);
    let rec = &v["record"];
    assert_eq!(rec["slurm"]["state"], "OUT_OF_MEMORY", "{rec}");
    assert_eq!(
        (reason(&v), rec["outcome"]["exit_code"].as_i64()),
        ("oom", Some(137)),
        "{rec}"
    );
    let notes = rec["notes"].as_str().unwrap();
    assert!(
        notes.starts_with(&format!("Out of memory: Slurm ended job {slurm_job}")),
        "{notes}"
    );
    eprintln!("{test}: Slurm's OOM: {notes} (cgroup {})", rec["cgroup"]);
    // corral's own sentence says its limit was not the one hit.
    assert!(
        notes.contains("On the node, corral saw: Killed by the kernel's out-of-memory killer before the analysis reached its 256"),
        "{notes}"
    );
    // The kernel killed in corral's run; corral's own limit stayed what it asked and
    // was never reached.
    assert!(rec["events"]["oom_kill"].as_u64().unwrap() >= 1, "{rec}");
    assert_eq!(rec["events"]["memory_max"], 0, "{rec}");
    assert_eq!(
        rec["limits"]["enforced"]["memory_bytes"],
        256 << 20,
        "{rec}"
    );
    let peak = rec["usage"]["memory_peak_bytes"].as_u64().unwrap();
    assert!(peak <= 96 << 20, "peak {peak} above Slurm's limit: {rec}");
    // corral's cgroup is nested in the job's.
    let cg = rec["cgroup"].as_str().unwrap();
    assert!(
        cg.contains(&format!("_slurmstepd.scope/job_{slurm_job}/")),
        "{cg}"
    );

    let v = done(&s, &by_corral, 120);
    let rec = &v["record"];
    assert_eq!(
        (reason(&v), rec["outcome"]["exit_code"].as_i64()),
        ("oom", Some(137)),
        "{rec}"
    );
    assert!(rec["events"]["oom_kill"].as_u64().unwrap() >= 1, "{rec}");
    assert!(rec["events"]["memory_max"].as_u64().unwrap() >= 1, "{rec}");
    let notes = rec["notes"].as_str().unwrap();
    assert!(!notes.contains("Slurm ended"), "{notes}");
    assert!(notes.contains("used its whole 96"), "{notes}");
    assert_eq!(rec["limits"]["enforced"]["memory_bytes"], 96 << 20, "{rec}");
    assert!(
        rec["cgroup"]
            .as_str()
            .unwrap()
            .contains("_slurmstepd.scope/job_"),
        "{rec}"
    );
    eprintln!("{test}: done after {:?}", t0.elapsed());
}

/// A run Slurm ended at its time limit: reason `timeout` (124), Slurm's state in the
/// record, and notes that say first that Slurm did it; returns the notes.
fn assert_slurm_timeout(v: &Value, job: &str) -> String {
    let rec = &v["record"];
    assert_eq!(
        (reason(v), rec["outcome"]["exit_code"].as_i64()),
        ("timeout", Some(124)),
        "{rec}"
    );
    assert_eq!(rec["slurm"]["state"], "TIMEOUT", "{rec}");
    let notes = rec["notes"].as_str().unwrap().to_string();
    assert!(
        notes.starts_with(&format!(
            "Timed out: Slurm ended job {job} at its time limit"
        )),
        "{notes}"
    );
    notes
}
