//! The live line of `corral run` and `corral wait`: under a
//! pseudo-terminal (`script(1)` from bsdutils) stderr gets one line redrawn about once a
//! second with elapsed / timeout, memory now and peak / limit, CPU % and processes,
//! erased before the summary line; in a pipe and with `-q` there is none.

mod common;
mod svc;

use std::process::Command;

use common::{Harness, PYTHON};
use serde_json::json;
use svc::{each_backend, serial, Svc};

/// A run of about 2.5 s that holds 64 MiB and exits 3.
const HOLD: &str = "import time; b = bytearray(64 << 20); time.sleep(2.5); raise SystemExit(3)";

fn quote(s: &std::ffi::OsStr) -> String {
    format!("'{}'", s.to_str().unwrap().replace('\'', r"'\''"))
}

/// Runs `c` with its stdin, stdout and stderr on a pseudo-terminal; returns what the
/// terminal received.
fn under_pty(c: &Command) -> (i32, String) {
    let mut line = quote(c.get_program());
    for a in c.get_args() {
        line += " ";
        line += &quote(a);
    }
    let mut s = Command::new("script");
    s.args(["-qfec", &line, "/dev/null"]);
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => s.env(k, v),
            None => s.env_remove(k),
        };
    }
    s.env("TERM", "xterm");
    if let Some(d) = c.get_current_dir() {
        s.current_dir(d);
    }
    let out = s.output().expect("script(1) runs (bsdutils)");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The size in bytes of `<number> <unit>` at the start of `s`.
fn size_at(s: &str) -> u64 {
    let mut it = s.split_whitespace();
    let n: f64 = it.next().unwrap().parse().unwrap();
    let unit = match it.next().unwrap().trim_end_matches([')', ',']) {
        "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        u => panic!("unit {u}"),
    };
    (n * unit as f64) as u64
}

fn shows_the_line_on_a_terminal(h: &Harness) {
    let (c, _) = h.command(
        &["--memory", "256M", "--timeout", "1m"],
        &[PYTHON, "-c", HOLD],
    );
    let (code, tty) = under_pty(&c);
    assert_eq!(code, 3, "{tty:?}");
    let draws = draws(&tty);
    assert!(!draws.is_empty(), "no live line in {tty:?}");
    for d in &draws {
        assert!(d.contains(" / 1:00  mem "), "{d:?}");
        assert!(d.contains(" / 256 MiB  cpu "), "{d:?}");
        assert!(d.contains("% ") && d.contains(" process"), "{d:?}");
    }
    // Once the 64 MiB are touched, the peak shows them (within the limit).
    let peak = draws
        .iter()
        .filter_map(|d| d.split("(peak ").nth(1).map(size_at))
        .max()
        .unwrap();
    assert!(
        (64 << 20..256 << 20).contains(&peak),
        "peak {peak} in {draws:?}"
    );
    // Erased before the summary, which is the last line as without the live line.
    let last = tty.rsplit("\r\x1b[2K").next().unwrap();
    assert!(
        last.starts_with("corral: Exited with code 3 after"),
        "{tty:?}"
    );
    assert!(last.trim_end().lines().count() == 1, "{last:?}");
}

fn no_line_in_a_pipe_or_with_quiet(h: &Harness) {
    let args = ["--memory", "256M", "--timeout", "1m"];
    let ran = h.run(&args, &[PYTHON, "-c", HOLD]);
    assert_eq!(ran.code, 3);
    assert!(
        !ran.stderr.contains('\x1b') && !ran.stderr.contains("mem "),
        "{:?}",
        ran.stderr
    );
    assert!(
        ran.stderr.starts_with("corral: Exited with code 3"),
        "{:?}",
        ran.stderr
    );
    let (c, _) = h.command(
        &["-q", "--memory", "256M", "--timeout", "1m"],
        &[PYTHON, "-c", HOLD],
    );
    let (code, tty) = under_pty(&c);
    assert_eq!(code, 3);
    assert!(!tty.contains("corral:") && !tty.contains('\x1b'), "{tty:?}");
}

macro_rules! live_tests {
    ($backend:ident) => {
        mod $backend {
            use super::*;

            #[test]
            fn shows_the_line_on_a_terminal() {
                let h = harness_or_skip!(stringify!($backend), "live-tty");
                super::shows_the_line_on_a_terminal(&h);
                assert_eq!(h.run_count(), 0, "cgroups left under the root");
            }

            #[test]
            fn no_line_in_a_pipe_or_with_quiet() {
                let h = harness_or_skip!(stringify!($backend), "live-pipe");
                super::no_line_in_a_pipe_or_with_quiet(&h);
            }
        }
    };
}

live_tests!(cgroup2);
live_tests!(cgroup1);

/// The draws of the live line in what a terminal received (each starts by erasing).
fn draws(tty: &str) -> Vec<&str> {
    tty.split("\r\x1b[2K")
        .skip(1)
        .filter(|d| d.starts_with("corral: 0:0"))
        .collect()
}

#[test]
fn corral_wait_shows_the_services_reading_on_a_terminal() {
    let _g = serial();
    each_backend("live_wait", |b| {
        let mut s = Svc::new(b, "livewait", "--budget-memory 1G --budget-cpus 1");
        s.start();
        let wait = |id: &str| {
            let mut c = Command::new(common::corral_bin());
            c.args(["wait", id])
                .env("CORRAL_SERVER", s.socket())
                .env("XDG_CONFIG_HOME", s.dir.path())
                .current_dir(s.dir.path());
            c
        };
        let hold = json!({"command": [PYTHON, "-c", HOLD],
                          "limits": {"memory": "256M", "timeout": "60s"}});
        let (code, st) = s.submit(&hold);
        assert_eq!(code, 201, "{st}");
        let id = st["id"].as_str().unwrap().to_string();
        let (code, tty) = under_pty(&wait(&id));
        assert_eq!(code, 3, "{tty:?}");
        let d = draws(&tty);
        assert!(!d.is_empty(), "no live line in {tty:?}");
        for d in &d {
            assert!(
                d.contains(" / 1:00  mem ") && d.contains(" / 256 MiB  cpu "),
                "{d:?}"
            );
            assert!(d.contains(" process"), "{d:?}");
        }
        let last = tty.rsplit("\r\x1b[2K").next().unwrap();
        assert!(
            last.starts_with(&format!("corral: {id}: Exited with code 3")),
            "{tty:?}"
        );
        // In a pipe: only the summary.
        let (_, st) = s.submit(&hold);
        let id = st["id"].as_str().unwrap().to_string();
        let out = wait(&id).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{err}");
        assert!(!err.contains('\x1b') && !err.contains("mem "), "{err:?}");
        s.stop(libc::SIGTERM, std::time::Duration::from_secs(30));
    });
}
