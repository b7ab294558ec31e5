//! kill -9 of the service mid-load, then a restart on the same ledger: every accepted
//! run is still in the ledger, the runs that were in flight are `lost` (their processes
//! killed, their cgroups removed), and the queued ones run to completion.

mod svc;

use std::time::Duration;

use serde_json::json;
use svc::{alive, each_backend, eventually, reason, Svc};

#[test]
fn kill_9_then_restart_reaps_and_resumes() {
    each_backend("restart", |b| {
        let mut s = Svc::new(
            b,
            "restart",
            &[
                "--budget-memory",
                "1G",
                "--budget-cpus",
                "2",
                "--max-running",
                "3",
            ],
        );
        s.start();
        let lim = json!({"memory": "64M", "cpus": 0.25, "timeout": "120s"});
        // Three long runs with a background grandchild each (PR_SET_PDEATHSIG reaches
        // only the direct child when the service dies), submitted first and with a
        // higher priority, so they are the ones in flight.
        let mut inflight = Vec::new();
        for i in 0..3 {
            let pidfile = s.dir.path().join(format!("grandchild-{i}"));
            let cmd = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
            let (st, v) = s.submit(&json!({"command": ["sh", "-c", cmd], "limits": lim,
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
            .collect();
        assert_eq!(s.run_cgroups_memory(), 3);
        s.kill9();
        // The grandchildren outlive the service: only the restart can end them.
        std::thread::sleep(Duration::from_millis(200));
        for p in &grandchildren {
            assert!(alive(*p), "grandchild {p} died with the service");
        }
        assert_eq!(
            s.run_cgroups_memory(),
            3,
            "the dead service's run cgroups remain"
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
            assert!(
                rec.notes
                    .contains("killed the 1 process still left in its cgroup"),
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
        let text = client
            .request("GET", "/metrics", None)
            .unwrap()
            .text()
            .unwrap();
        assert!(text.contains("corral_runs{state=\"lost\"} 3"), "{text}");
        assert!(text.contains("corral_runs{state=\"done\"} 12"), "{text}");
        s.signal(libc::SIGTERM);
        assert!(s.wait_exit(Duration::from_secs(10)).success());
    });
}
