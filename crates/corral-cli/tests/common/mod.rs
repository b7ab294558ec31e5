//! Shared helpers for the enforcement tests: which backend can run here, a private
//! cgroup root per test that is removed again, running the real `corral` binary, and
//! checks of what the kernel did.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use corral_cgroup::layout::{Layout, V1_CONTROLLERS};
use serde_json::Value;

/// The path of the `corral` binary under test.
pub fn corral_bin() -> &'static str {
    env!("CARGO_BIN_EXE_corral")
}

/// A backend under test, with a private cgroup root.
pub struct Harness {
    /// `cgroup2`, `cgroup1`, `rlimit` or `systemd`.
    pub backend: &'static str,
    /// systemd: the uid corral runs as on that user's manager (None: root on the
    /// system manager).
    pub user: Option<u32>,
    /// systemd: the manager's `corral.slice` directory (shared with systemd, never
    /// removed by the harness).
    pub slice: Option<PathBuf>,
    /// The value for `--cgroup-root`.
    pub root_arg: String,
    /// The directories that make up the root (one for v2, one per hierarchy for v1).
    pub root_dirs: Vec<PathBuf>,
    tmp: tempfile::TempDir,
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Returns a harness for `backend`, or the reason the test must be skipped here.
pub fn harness(backend: &'static str, test: &str) -> Result<Harness, String> {
    if !is_root() && backend != "rlimit" {
        return Err("needs root to create cgroups".into());
    }
    let layout = Layout::detect();
    let name = format!("corral-test-{}-{test}", std::process::id());
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    match backend {
        "cgroup2" => {
            let m = layout.v2.as_ref().ok_or("no cgroup2 mount")?;
            if let Some(c) = layout.missing_v2_controllers().first() {
                return Err(format!(
                    "cgroup2 at {} lacks the {c} controller (hybrid host; runs in the VM)",
                    m.mount_point.display()
                ));
            }
            let dir = m.mount_point.join(&name);
            Ok(Harness {
                backend,
                user: None,
                slice: None,
                root_arg: dir.display().to_string(),
                root_dirs: vec![dir],
                tmp,
            })
        }
        "cgroup1" => {
            if !layout.v1.contains_key("memory") {
                return Err("no cgroup v1 memory hierarchy".into());
            }
            let mut dirs: Vec<PathBuf> = V1_CONTROLLERS
                .iter()
                .filter_map(|c| layout.v1.get(*c))
                .map(|m| m.mount_point.join(&name))
                .collect();
            dirs.dedup();
            Ok(Harness {
                backend,
                user: None,
                slice: None,
                root_arg: format!("/{name}"),
                root_dirs: dirs,
                tmp,
            })
        }
        "rlimit" => Ok(Harness {
            backend,
            user: None,
            slice: None,
            root_arg: String::new(),
            root_dirs: Vec::new(),
            tmp,
        }),
        "systemd" | "systemd-user" => systemd_harness(backend == "systemd-user", &layout, tmp),
        other => Err(format!("unknown backend {other}")),
    }
}

/// Skips (returns early from) a test whose harness is unavailable, saying why.
#[macro_export]
macro_rules! harness_or_skip {
    ($backend:expr, $name:expr) => {
        match common::harness($backend, $name) {
            Ok(h) => h,
            Err(why) => {
                eprintln!("skipped: {} {}: {why}", $backend, $name);
                return;
            }
        }
    };
}

/// What one `corral run` did.
pub struct Ran {
    /// corral's exit status.
    pub code: i32,
    /// corral's stderr.
    pub stderr: String,
    /// corral's stdout (the command's, since the record goes to a file).
    pub stdout: String,
    /// The result record, if one was written.
    pub record: Option<Value>,
    /// Wall time of the corral process.
    pub elapsed: Duration,
}

impl Ran {
    /// The record (panics with corral's stderr when there is none).
    pub fn rec(&self) -> &Value {
        self.record
            .as_ref()
            .unwrap_or_else(|| panic!("no record; exit {} stderr: {}", self.code, self.stderr))
    }
    /// `outcome.reason`.
    pub fn reason(&self) -> &str {
        self.rec()["outcome"]["reason"].as_str().unwrap()
    }
    /// A number at a JSON pointer such as `/events/oom_kill`.
    pub fn num(&self, ptr: &str) -> f64 {
        self.rec()
            .pointer(ptr)
            .and_then(Value::as_f64)
            .unwrap_or_else(|| panic!("{ptr} missing in {}", self.rec()))
    }
}

impl Harness {
    /// A scratch directory for this test.
    pub fn tmp(&self) -> &Path {
        self.tmp.path()
    }

    /// Starts `corral run --backend B --cgroup-root R --json F <args> -- <cmd>`.
    pub fn command(&self, args: &[&str], cmd: &[&str]) -> (Command, PathBuf) {
        let json = self.tmp().join(format!("rec-{}.json", unique()));
        let mut c = self.corral();
        c.arg("run").args(["--backend", self.backend]);
        if !self.root_arg.is_empty() {
            c.args(["--cgroup-root", &self.root_arg]);
        }
        c.arg("--json")
            .arg(&json)
            .args(args)
            .arg("--")
            .args(cmd)
            .env("XDG_CONFIG_HOME", self.tmp())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        (c, json)
    }

    /// Runs corral to completion.
    pub fn run(&self, args: &[&str], cmd: &[&str]) -> Ran {
        let (mut c, json) = self.command(args, cmd);
        let t = Instant::now();
        let out = c.output().expect("corral starts");
        finish(out, &json, t.elapsed())
    }

    /// A `corral` command, run as the test user for a user-manager harness.
    pub fn corral(&self) -> Command {
        match self.user {
            None => Command::new(corral_bin()),
            Some(uid) => {
                let mut c = as_user(uid);
                c.arg(corral_bin());
                c
            }
        }
    }

    /// The run cgroups currently under the root (should be none between runs).
    pub fn run_cgroups(&self) -> Vec<PathBuf> {
        let mut v = Vec::new();
        if let Some(slice) = &self.slice {
            // Only corral's scopes: the slice is systemd's.
            for e in std::fs::read_dir(slice).into_iter().flatten().flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with("corral-") && n.ends_with(".scope") {
                    v.push(e.path());
                }
            }
            return v;
        }
        for d in &self.root_dirs {
            if let Ok(rd) = std::fs::read_dir(d) {
                for e in rd.flatten() {
                    if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        v.push(e.path());
                    }
                }
            }
        }
        v
    }

    /// The number of distinct runs with cgroups under the root (v1: one group per
    /// hierarchy counts once).
    pub fn run_count(&self) -> usize {
        let mut names: Vec<_> = self
            .run_cgroups()
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_owned()))
            .collect();
        names.sort();
        names.dedup();
        names.len()
    }

    /// Asserts that the run's cgroup is gone and nothing else is left under the root.
    pub fn assert_clean(&self, ran: &Ran) {
        if let Some(cg) = ran.rec()["cgroup"].as_str() {
            assert!(!Path::new(cg).exists(), "run cgroup {cg} was not removed");
        }
        assert_eq!(
            self.run_cgroups(),
            Vec::<PathBuf>::new(),
            "cgroups left under the root"
        );
    }
}

/// Collects a finished corral process.
pub fn finish(out: std::process::Output, json: &Path, elapsed: Duration) -> Ran {
    let record = std::fs::read_to_string(json)
        .ok()
        .map(|s| serde_json::from_str(&s).expect("the record is JSON"));
    Ran {
        code: out.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        record,
        elapsed,
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

impl Drop for Harness {
    /// Removes the private root; if a failed test left run cgroups, kills their
    /// processes first (they are ours: created under our private root).
    fn drop(&mut self) {
        for cg in self.run_cgroups() {
            if self.slice.is_some() {
                // A scope left by a failed test: end its processes; systemd then
                // removes it.
                kill_cgroup(&cg);
                continue;
            }
            kill_cgroup(&cg);
            let _ = std::fs::remove_dir(&cg);
        }
        for d in &self.root_dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}

fn kill_cgroup(cg: &Path) {
    let _ = std::fs::write(cg.join("cgroup.kill"), "1");
    for _ in 0..100 {
        let procs = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap_or_default();
        if procs.trim().is_empty() {
            return;
        }
        for p in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            // A pid from our own private test cgroup.
            if let Some(p) = rustix::process::Pid::from_raw(p) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// True while `pid` is a live (not zombie) process.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let state = s.rsplit_once(") ").and_then(|(_, r)| r.chars().next());
            !matches!(state, Some('Z') | Some('X') | None)
        }
        Err(_) => false,
    }
}

/// Waits until `path` holds a pid, up to `within`.
pub fn read_pid(path: &Path, within: Duration) -> Option<i32> {
    let t = Instant::now();
    while t.elapsed() < within {
        if let Ok(s) = std::fs::read_to_string(path) {
            if let Ok(p) = s.trim().parse() {
                return Some(p);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// The Python interpreter the tests use for memory hogs.
pub const PYTHON: &str = "/usr/bin/python3";

/// A command that runs as `uid` (its own groups, its manager's runtime directory).
pub fn as_user(uid: u32) -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        format!("--reuid={uid}"),
        format!("--regid={uid}"),
        "--init-groups".to_string(),
        "env".to_string(),
        format!("XDG_RUNTIME_DIR=/run/user/{uid}"),
        format!("DBUS_SESSION_BUS_ADDRESS=unix:path=/run/user/{uid}/bus"),
    ]);
    c
}

/// The uid of the unprivileged test user, if this machine has one with a running
/// manager (the VM: `CORRAL_VM_TEST_UID`).
pub fn test_uid() -> Option<u32> {
    std::env::var("CORRAL_VM_TEST_UID").ok()?.parse().ok()
}

fn systemd_harness(user: bool, layout: &Layout, tmp: tempfile::TempDir) -> Result<Harness, String> {
    if !Path::new("/run/systemd/system").exists() {
        return Err(
            "no systemd manager here: PID 1 is not systemd (the VM runs these: \
                    cargo xtask vm --systemd)"
                .into(),
        );
    }
    let m = layout.v2.as_ref().ok_or("no cgroup2 mount")?;
    if layout.kind() != corral_cgroup::layout::LayoutKind::Unified {
        return Err(format!(
            "systemd runs a {} cgroup layout here; the systemd backend needs cgroup v2",
            layout.kind().as_str()
        ));
    }
    let (uid, slice, socket) = if user {
        let uid =
            test_uid().ok_or("no test user with a running user manager (CORRAL_VM_TEST_UID)")?;
        let mgr = m
            .mount_point
            .join(format!("user.slice/user-{uid}.slice/user@{uid}.service"));
        (
            Some(uid),
            mgr.join("corral.slice"),
            PathBuf::from(format!("/run/user/{uid}/bus")),
        )
    } else {
        (
            None,
            m.mount_point.join("corral.slice"),
            PathBuf::from("/run/dbus/system_bus_socket"),
        )
    };
    if !socket.exists() {
        return Err(format!("no D-Bus socket at {}", socket.display()));
    }
    if uid.is_some() {
        // The user writes its records and reads its scripts here.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777))
            .map_err(|e| e.to_string())?;
    }
    Ok(Harness {
        backend: "systemd",
        user: uid,
        slice: Some(slice),
        root_arg: String::new(),
        root_dirs: Vec::new(),
        tmp,
    })
}

/// The crash guard of a supervisor (`corral run` or `corral serve`): its child named
/// `corral-guard` (forked) or running `corral __guard` (exec'd).
pub fn guard_of(parent: i32) -> Option<i32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(") ")
            .and_then(|(_, r)| r.split(' ').nth(1)?.parse::<i32>().ok());
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if ppid == Some(parent)
            && (String::from_utf8_lossy(&cmd).contains("__guard")
                || std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "corral-guard"))
        {
            return Some(pid);
        }
    }
    None
}

/// Asserts that the `CapBnd:` line a contained run printed (from `/proc/self/status`)
/// lacks every capability corral drops for root-run analyses.
pub fn assert_capabilities_dropped(stdout: &str) {
    let bounding = stdout
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .expect("CapBnd printed");
    for cap in corral_run::spawn::DROPPED_CAPABILITIES {
        assert_eq!(
            bounding & (1 << cap),
            0,
            "capability {cap} kept: {bounding:x}"
        );
    }
}
