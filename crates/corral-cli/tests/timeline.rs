//! The record's timeline (`corral run --timeline`) and its picture (`--plot`): a run
//! that grows its memory step by step until the OOM killer ends it has points whose
//! memory rises to the limit and an `oom_kill` event at the end; a timeout run has
//! corral's SIGTERM and SIGKILL at their times; without the flag there is no timeline.

mod common;

use common::{Harness, PYTHON};
use serde_json::Value;

const MIB: f64 = 1024.0 * 1024.0;

/// Grows by 16 MiB (touched) every 0.2 s, far past 256 MiB.
const LEAK: &str = "import time\n\
chunks = []\n\
for i in range(100):\n    \
    chunks.append(b'x' * (16 << 20))\n    \
    time.sleep(0.2)\n";

fn timeline(rec: &Value) -> &Value {
    rec.get("timeline")
        .unwrap_or_else(|| panic!("no timeline in {rec}"))
}

fn events<'a>(tl: &'a Value, kind: &str) -> Vec<&'a Value> {
    tl["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == kind)
        .collect()
}

fn oom_leak_has_a_rising_timeline(h: &Harness, backend: &str) {
    let svg = h.tmp().join("leak.svg");
    let ran = h.run(
        &[
            "--memory",
            "256M",
            "--timeout",
            "90s",
            "--timeline",
            "200ms",
            "--plot",
            svg.to_str().unwrap(),
        ],
        &[PYTHON, "-c", LEAK],
    );
    assert_eq!(ran.reason(), "oom", "{}", ran.rec());
    let rec = ran.rec();
    let tl = timeline(rec);
    assert_eq!(tl["interval_s"], 0.2, "{tl}");
    let points = tl["points"].as_array().unwrap();
    let wall = ran.num("/usage/wall_s");
    let t: Vec<f64> = points.iter().map(|p| p["t"].as_f64().unwrap()).collect();
    assert!(t.windows(2).all(|w| w[1] > w[0]), "{t:?}");
    assert!(*t.last().unwrap() <= wall + 0.01, "{t:?} after {wall}");
    // About 16 steps of 0.2 s to reach 256 MiB: the points follow the growth.
    assert!(points.len() >= 8, "{tl}");
    let mem: Vec<f64> = points
        .iter()
        .filter_map(|p| p["memory_bytes"].as_f64())
        .map(|b| b / MIB)
        .collect();
    assert_eq!(mem.len(), points.len(), "memory in every point: {tl}");
    assert!(mem[0] < 128.0, "{mem:?}");
    let top = mem.iter().cloned().fold(0.0, f64::max);
    assert!((192.0..=260.0).contains(&top), "{mem:?}");
    let rises = mem.windows(2).filter(|w| w[1] > w[0] + 8.0).count();
    assert!(rises >= 4, "memory should rise step by step: {mem:?}");
    for p in points {
        assert!(p["cpu_s"].as_f64().is_some() && p["processes"].as_u64().is_some());
    }
    // PSI on cgroup v2 where the kernel has it; v1 has none.
    let psi = points.iter().any(|p| p.get("memory_pressure").is_some());
    match backend {
        "cgroup1" => assert!(!psi, "{tl}"),
        _ if std::path::Path::new("/proc/pressure/memory").exists() => assert!(psi, "{tl}"),
        _ => {}
    }
    // The OOM kill, near the end.
    let oom = events(tl, "oom_kill");
    assert!(!oom.is_empty(), "{tl}");
    let at = oom[0]["t"].as_f64().unwrap();
    assert!(
        at > 0.6 * wall && at <= wall + 0.01,
        "oom at {at} of {wall}"
    );
    assert!(at > t[0], "after the first point");
    // The picture: SVG with the memory, its limit and the OOM kill named.
    let text = std::fs::read_to_string(&svg).expect("the --plot file");
    assert!(text.starts_with("<svg") && text.trim_end().ends_with("</svg>"));
    for want in [
        "memory limit (256 MiB)",
        "OOM kill (",
        "memory (MiB)",
        "CPU (cores)",
    ] {
        assert!(text.contains(want), "{want:?} not in the picture");
    }
    assert_eq!(text.matches("<svg").count(), 1);
}

fn timeout_has_sigterm_and_sigkill(h: &Harness) {
    // SIGTERM ignored (and inherited by sleep): the grace period runs out.
    let ran = h.run(
        &["--timeout", "1s", "--grace", "1s", "--timeline"],
        &["sh", "-c", "trap '' TERM; sleep 600"],
    );
    assert_eq!(ran.reason(), "timeout", "{}", ran.rec());
    assert_eq!(ran.rec()["events"]["grace_expired"], true);
    let tl = timeline(ran.rec());
    assert_eq!(tl["interval_s"], 1.0);
    let term = events(tl, "sigterm");
    let kill = events(tl, "sigkill");
    assert_eq!((term.len(), kill.len()), (1, 1), "{tl}");
    let (t_term, t_kill) = (
        term[0]["t"].as_f64().unwrap(),
        kill[0]["t"].as_f64().unwrap(),
    );
    assert!((1.0..3.0).contains(&t_term), "SIGTERM at {t_term}");
    assert!(
        t_kill >= t_term + 0.95 && t_kill < t_term + 3.0,
        "{t_term} {t_kill}"
    );
    assert!(
        term[0]["detail"].as_str().unwrap().contains("time limit"),
        "{tl}"
    );
    assert!(!tl["points"].as_array().unwrap().is_empty());
}

fn off_by_default(h: &Harness) {
    let ran = h.run(&["--timeout", "30s"], &["true"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(ran.rec().get("timeline").is_none(), "{}", ran.rec());
    // A bad interval is refused before anything runs.
    let bad = h.run(&["--timeline", "soon"], &["true"]);
    assert_eq!(bad.code, 125, "{}", bad.stderr);
    assert!(bad.stderr.contains("--timeline"), "{}", bad.stderr);
}

macro_rules! timeline_tests {
    ($backend:ident) => {
        mod $backend {
            use super::*;

            #[test]
            fn oom_leak_has_a_rising_timeline() {
                let h = harness_or_skip!(stringify!($backend), "tl-oom");
                super::oom_leak_has_a_rising_timeline(&h, stringify!($backend));
                assert_eq!(h.run_count(), 0, "cgroups left under the root");
            }

            #[test]
            fn timeout_has_sigterm_and_sigkill() {
                let h = harness_or_skip!(stringify!($backend), "tl-timeout");
                super::timeout_has_sigterm_and_sigkill(&h);
            }

            #[test]
            fn off_by_default() {
                let h = harness_or_skip!(stringify!($backend), "tl-off");
                super::off_by_default(&h);
            }
        }
    };
}

timeline_tests!(cgroup2);
timeline_tests!(cgroup1);
