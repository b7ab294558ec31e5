//! kill -9 of the service mid-load, then a restart on the same ledger: every accepted
//! run is still in the ledger, the runs that were in flight are `lost` (their processes
//! killed, their cgroups removed), and the queued ones run to completion.

mod common;
mod svc;

use std::time::Duration;

use common::{alive, guard_of};
use serde_json::json;
use svc::{each_backend, eventually, reason, Svc};

#[test]
fn kill_9_then_restart_reaps_and_resumes() {
    each_backend("restart", |b| {
        let mut s = Svc::new(
            b,
            "restart",
            "--budget-memory 1G --budget-cpus 2 --max-running 3",
        );
        s.start();
        let lim = json!({"memory": "64M", "cpus": 0.25, "timeout": "120s"});
        // Three long runs with a background grandchild each (PR_SET_PDEATHSIG reaches
        // only the direct child when the service dies), submitted first and with a
        // higher priority, so they are the ones in flight.
        let mut inflight = Vec::new();
        // Not in the service's own (hidden) directory: in a scratch one the runs may write.
        let scratch = tempfile::tempdir().unwrap();
        let mut lim_rw = lim.clone();
        lim_rw["rw"] = json!([scratch.path()]);
        for i in 0..3 {
            let pidfile = scratch.path().join(format!("grandchild-{i}"));
            let cmd = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
            let (st, v) = s.submit(&json!({"command": ["sh", "-c", cmd], "limits": lim_rw,
                                            "priority": 5}));
            assert_eq!(st, 201, "{v}");
            inflight.push((v["id"].as_str().unwrap().to_string(), pidfile));
        }
        let mut queued = Vec::new();
        for i in 0..12 {
            let (st, v) = s.submit(&json!({"command": ["sh", "-c", format!("echo queued {i}")],
                                            "limits": lim}));
            assert_eq!(st, 201, "{v}");
            assert_eq!(v["state"], "queued", "{v}");
            queued.push(v["id"].as_str().unwrap().to_string());
        }
        let grandchildren: Vec<i32> = inflight
            .iter()
            .map(|(_, f)| {
                eventually(Duration::from_secs(10), || {
                    std::fs::read_to_string(f).ok()?.trim().parse().ok()
                })
                .expect("the in-flight run started its grandchild")
            })
            // Pids of each run's own namespace: the grandchildren's on the host.
            .map(|p| common::host_pid(s.pid(), p).expect("the grandchild on the host"))
            .collect();
        assert_eq!(s.run_cgroups_memory(), 3);
        s.kill9();
        // The service's crash guard ends the runs in flight (PR_SET_PDEATHSIG alone
        // would reach only their main processes) and removes their cgroups.
        let gone = eventually(Duration::from_secs(10), || {
            (grandchildren.iter().all(|p| !alive(*p)) && s.run_cgroups_memory() == 0).then_some(())
        });
        assert!(
            gone.is_some(),
            "the guard did not end the runs of the killed service"
        );

        s.start();
        for p in &grandchildren {
            assert!(!alive(*p), "grandchild {p} survived the restart");
        }
        let client = s.client();
        for (id, _) in &inflight {
            let st = client.status(id).unwrap();
            assert_eq!(st.state.as_str(), "lost");
            let rec = st.record.unwrap();
            assert_eq!(rec.outcome.reason.as_str(), "lost");
            assert!(rec.notes.contains("crash guard"), "{}", rec.notes);
            // It keeps the time it had run (it was running before the kill), not 0.
            assert!(rec.usage.wall_s > 0.0, "{:?}", rec.usage);
            assert!(
                rec.notes.contains("It had run for at most"),
                "{}",
                rec.notes
            );
        }
        for id in &queued {
            let (st, v) = s.call("GET", &format!("/runs/{id}/wait?timeout=60"));
            assert_eq!(st, 200, "{v}");
            assert_eq!(reason(&v), "exited", "{v}");
        }
        let (_, all) = s.call("GET", "/runs");
        assert_eq!(
            all["runs"].as_array().unwrap().len(),
            15,
            "every accepted run is in the ledger"
        );
        assert!(s.run_cgroups().is_empty(), "{:?}", s.run_cgroups());
        assert!(s.procs_in_runs().is_empty());
        let text = s.metrics();
        assert!(text.contains("corral_runs{state=\"lost\"} 3"), "{text}");
        assert!(text.contains("corral_runs{state=\"done\"} 12"), "{text}");
        s.stop(libc::SIGTERM, Duration::from_secs(10));
    });
}

#[test]
fn restart_reaps_what_even_the_guard_missed() {
    each_backend("reap", |b| {
        let mut s = Svc::new(b, "reap", "--budget-memory 1G --budget-cpus 2");
        s.start();
        // Not in the service's own (hidden) directory: in a scratch one the run may write.
        // In its own pid namespace the grandchild would die with the run's init when
        // the service dies: this is about a run whose orphans outlive it (the host's
        // pid namespace), which only the restart can reap.
        let scratch = tempfile::tempdir().unwrap();
        let lim = json!({"memory": "64M", "cpus": 0.25, "timeout": "120s",
                         "rw": [scratch.path()], "pid_ns": "off"});
        let pidfile = scratch.path().join("grandchild");
        let cmd = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
        let (st, v) =
            s.submit(&json!({"command": ["sh", "-c", cmd], "limits": lim, "cwd": s.dir.path()}));
        assert_eq!(st, 201, "{v}");
        let id = v["id"].as_str().unwrap().to_string();
        let grandchild: i32 = eventually(Duration::from_secs(10), || {
            std::fs::read_to_string(&pidfile).ok()?.trim().parse().ok()
        })
        .expect("the run started its grandchild");
        let guard = eventually(Duration::from_secs(10), || guard_of(s.pid()))
            .expect("the service has a crash guard");
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(guard).unwrap(),
            rustix::process::Signal::KILL,
        )
        .unwrap();
        s.kill9();
        // Without service and guard, the grandchild lives on in the run's cgroup...
        std::thread::sleep(Duration::from_millis(300));
        assert!(alive(grandchild), "grandchild died with the service");
        assert_eq!(s.run_cgroups_memory(), 1);
        // ...until the restart reaps it.
        s.start();
        assert!(!alive(grandchild), "grandchild survived the restart");
        let rec = s.client().status(&id).unwrap().record.unwrap();
        assert_eq!(rec.outcome.reason.as_str(), "lost");
        assert!(
            rec.notes
                .contains("killed the 1 process still left in its cgroup"),
            "{}",
            rec.notes
        );
        assert!(s.run_cgroups().is_empty(), "{:?}", s.run_cgroups());
        s.stop(libc::SIGTERM, Duration::from_secs(10));
    });
}
