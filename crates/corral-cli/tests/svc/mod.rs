//! Helpers for the service tests: a real `corral serve` on a temporary socket and
//! ledger with a private cgroup root, for each cgroup backend this host offers, and
//! checks of what the kernel holds under that root. Built on `common` (declared by
//! each service test file next to this module).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use corral_cgroup::layout::{Layout, Membership};
use corral_service::client::Client;
use corral_service::Addr;
use serde_json::Value;

use crate::common::{alive, cgroups_available, PrivateRoot, CGROUP_BACKENDS};

/// Runs `body` once per cgroup backend this host offers; for each other one, skips
/// with its reason, or fails where the step requires it (`corral_testkit`).
pub fn each_backend(test: &str, body: impl Fn(&'static str)) {
    let layout = Layout::detect();
    let mut missing = Vec::new();
    for b in CGROUP_BACKENDS {
        match cgroups_available(b, &layout) {
            Ok(()) => {
                eprintln!("{test}: backend {b}");
                body(b);
            }
            Err(m) => missing.push((b, m)),
        }
    }
    for (b, m) in missing {
        corral_testkit::skip(&format!("{test} ({b})"), &m);
    }
}

/// One service under test and its private cgroup root.
pub struct Svc {
    /// `cgroup2` or `cgroup1`.
    pub backend: &'static str,
    /// The value for `--cgroup-root`.
    pub root_arg: String,
    /// The root's directory in each hierarchy (one for v2).
    pub root_dirs: Vec<PathBuf>,
    /// The root's path as `/proc/PID/cgroup` shows it.
    pub root_rel: String,
    /// Socket, ledger, output and logs.
    pub dir: tempfile::TempDir,
    /// The running service.
    pub child: Option<Child>,
    /// Extra `corral serve` arguments, kept for restarts.
    pub args: Vec<String>,
    /// The service's `CORRAL_LOG` (default `warn`).
    pub log_level: &'static str,
    starts: usize,
}

impl Svc {
    /// Prepares (does not start) a service for `backend`, with a root named after the
    /// test; `args` are extra `corral serve` arguments, separated by spaces.
    pub fn new(backend: &'static str, test: &str, args: &str) -> Svc {
        let name = format!("corral-test-svc-{}-{test}", std::process::id());
        let root = PrivateRoot::new(backend, &Layout::detect(), &name);
        Svc {
            backend,
            root_arg: root.arg,
            root_dirs: root.dirs,
            root_rel: root.rel,
            dir: tempfile::tempdir().unwrap(),
            child: None,
            args: args.split_whitespace().map(str::to_string).collect(),
            log_level: "warn",
            starts: 0,
        }
    }

    /// The socket path.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("corral.sock")
    }

    /// The ledger path.
    pub fn ledger(&self) -> PathBuf {
        // In its own directory, which the service hides from its runs (the clients'
        // working directory, `dir`, stays visible).
        self.dir.path().join("state").join("ledger.db")
    }

    /// A client for the service.
    pub fn client(&self) -> Client {
        Client::new(Addr::Unix(self.socket()))
    }

    /// Starts `corral serve` and waits until it answers `/health`.
    pub fn start(&mut self) {
        assert!(self.child.is_none());
        self.starts += 1;
        let log = self.dir.path().join(format!("serve-{}.log", self.starts));
        let mut c = Command::new(env!("CARGO_BIN_EXE_corral"));
        c.arg("serve")
            .arg("--listen")
            .arg(self.socket())
            .arg("--ledger")
            .arg(self.ledger())
            .args(["--backend", self.backend, "--cgroup-root", &self.root_arg])
            .args(&self.args)
            .env("XDG_CONFIG_HOME", self.dir.path())
            .env("CORRAL_LOG", self.log_level)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let mut child = c.spawn().expect("corral serve starts");
        let t = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                panic!("corral serve exited with {st}: {}", self.log(self.starts));
            }
            if self.client().health().is_ok() {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "corral serve did not answer within 20 s: {}",
                self.log(self.starts)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    /// The stderr of the n-th start.
    pub fn log(&self, n: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("serve-{n}.log"))).unwrap_or_default()
    }

    /// The service's pid.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// Sends a signal to the service.
    pub fn signal(&self, sig: i32) {
        let p = rustix::process::Pid::from_raw(self.pid()).unwrap();
        rustix::process::kill_process(p, rustix::process::Signal::from_named_raw(sig).unwrap())
            .unwrap();
    }

    /// Waits for the service to exit, up to `within`.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let t = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            if t.elapsed() > within {
                let _ = child.kill();
                let _ = child.wait();
                panic!("corral serve did not exit within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `sig` and asserts that the service exits successfully within `within`.
    pub fn stop(&mut self, sig: i32, within: Duration) {
        self.signal(sig);
        let st = self.wait_exit(within);
        assert!(st.success(), "corral serve exited with {st}");
    }

    /// The `/metrics` text.
    pub fn metrics(&self) -> String {
        self.client()
            .request("GET", "/metrics", None)
            .unwrap()
            .text()
            .unwrap()
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Sends raw bytes as a `POST /runs` body: (status, JSON answer).
    pub fn post_raw(&self, body: &[u8]) -> (u16, Value) {
        let r = self.client().request("POST", "/runs", Some(body)).unwrap();
        let status = r.status;
        let text = r.bytes().unwrap();
        (status, serde_json::from_slice(&text).unwrap_or(Value::Null))
    }

    /// `POST /runs` with a JSON body.
    pub fn submit(&self, v: &Value) -> (u16, Value) {
        self.post_raw(v.to_string().as_bytes())
    }

    /// A request: (status, JSON answer or Null).
    pub fn call(&self, method: &str, path: &str) -> (u16, Value) {
        let r = self.client().request(method, path, None).unwrap();
        let status = r.status;
        let text = r.bytes().unwrap();
        (status, serde_json::from_slice(&text).unwrap_or(Value::Null))
    }

    /// The `runs` directories (one per hierarchy).
    pub fn runs_dirs(&self) -> Vec<PathBuf> {
        self.root_dirs.iter().map(|d| d.join("runs")).collect()
    }

    /// The run cgroups under `runs`, in any hierarchy.
    pub fn run_cgroups(&self) -> Vec<PathBuf> {
        let mut v = Vec::new();
        for d in self.runs_dirs() {
            if let Ok(rd) = std::fs::read_dir(&d) {
                for e in rd.flatten() {
                    if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        v.push(e.path());
                    }
                }
            }
        }
        v
    }

    /// The run cgroups in the memory hierarchy (v2: the only one).
    pub fn run_cgroups_memory(&self) -> usize {
        let d = self.memory_dir().join("runs");
        std::fs::read_dir(d)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                    .count()
            })
            .unwrap_or(0)
    }

    /// A probe of the root's cgroup files (can be moved to another thread).
    pub fn probe(&self) -> Probe {
        Probe {
            backend: self.backend,
            root_rel: self.root_rel.clone(),
            root_dirs: self.root_dirs.clone(),
        }
    }

    /// See [`Probe::memory_dir`].
    pub fn memory_dir(&self) -> PathBuf {
        self.probe().memory_dir()
    }

    /// See [`Probe::runs_memory`].
    pub fn runs_memory(&self) -> (u64, u64, Option<u64>) {
        self.probe().runs_memory()
    }

    /// See [`Probe::runs_pids`].
    pub fn runs_pids(&self) -> (u64, u64) {
        self.probe().runs_pids()
    }

    /// The swap `runs` may use together, as the kernel holds it: v2 `memory.swap.max`,
    /// v1 `memory.memsw.limit_in_bytes` − `memory.limit_in_bytes`. `None` where swap
    /// accounting is off (no file) or uncapped.
    pub fn runs_swap_cap(&self) -> Option<u64> {
        let p = self.probe();
        let n = |name: &str| {
            std::fs::read_to_string(p.runs_file("memory", name))
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
        };
        match self.backend {
            "cgroup2" => n("memory.swap.max"),
            _ => Some(n("memory.memsw.limit_in_bytes")? - n("memory.limit_in_bytes")?),
        }
    }

    /// Live processes anywhere under the root's `runs` (by `/proc/PID/cgroup`).
    pub fn procs_in_runs(&self) -> Vec<i32> {
        let prefix = PathBuf::from(&self.root_rel).join("runs");
        let mut v = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let m = Membership::of_pid(pid);
            let inside = m.v2.as_ref().is_some_and(|p| p.starts_with(&prefix))
                || m.v1.values().any(|p| p.starts_with(&prefix));
            if inside && alive(pid) {
                v.push(pid);
            }
        }
        v
    }

    /// The service's resident memory in bytes.
    pub fn rss(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|k| k.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    }

    /// True when nothing of the private root is left in any hierarchy.
    pub fn root_gone(&self) -> bool {
        self.root_dirs.iter().all(|d| !d.exists())
    }
}

/// Reads the service root's cgroup files.
#[derive(Debug, Clone)]
pub struct Probe {
    backend: &'static str,
    root_rel: String,
    root_dirs: Vec<PathBuf>,
}

impl Probe {
    /// The root's directory in the memory hierarchy.
    pub fn memory_dir(&self) -> PathBuf {
        match self.backend {
            "cgroup2" => self.root_dirs[0].clone(),
            _ => Layout::detect().v1["memory"]
                .mount_point
                .join(self.root_rel.trim_start_matches('/')),
        }
    }

    pub fn runs_file(&self, controller: &str, name: &str) -> PathBuf {
        match self.backend {
            "cgroup2" => self.root_dirs[0].join("runs").join(name),
            _ => {
                let l = Layout::detect();
                l.v1[controller]
                    .mount_point
                    .join(self.root_rel.trim_start_matches('/'))
                    .join("runs")
                    .join(name)
            }
        }
    }

    /// `runs`' memory limit, current usage and peak.
    pub fn runs_memory(&self) -> (u64, u64, Option<u64>) {
        let n = |p: PathBuf| {
            std::fs::read_to_string(&p)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
        };
        match self.backend {
            "cgroup2" => (
                n(self.runs_file("memory", "memory.max")).unwrap_or(0),
                n(self.runs_file("memory", "memory.current")).unwrap_or(0),
                n(self.runs_file("memory", "memory.peak")),
            ),
            _ => (
                n(self.runs_file("memory", "memory.limit_in_bytes")).unwrap_or(0),
                n(self.runs_file("memory", "memory.usage_in_bytes")).unwrap_or(0),
                n(self.runs_file("memory", "memory.max_usage_in_bytes")),
            ),
        }
    }

    /// `runs`' pids limit and current count.
    pub fn runs_pids(&self) -> (u64, u64) {
        let n = |p: PathBuf| {
            std::fs::read_to_string(&p)
                .unwrap_or_default()
                .trim()
                .parse::<u64>()
                .unwrap_or(0)
        };
        (
            n(self.runs_file("pids", "pids.max")),
            n(self.runs_file("pids", "pids.current")),
        )
    }
}

impl Drop for Svc {
    /// Stops the service if still running and removes the private root; processes
    /// left under it are ours (created in our private root) and are killed first.
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for _ in 0..100 {
            let pids = self.procs_in_runs();
            if pids.is_empty() {
                break;
            }
            for p in pids {
                if let Some(p) = rustix::process::Pid::from_raw(p) {
                    let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for root in &self.root_dirs {
            remove_tree(root);
        }
    }
}

fn remove_tree(d: &Path) {
    if !d.exists() {
        return;
    }
    if let Ok(rd) = std::fs::read_dir(d) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_tree(&e.path());
            }
        }
    }
    for _ in 0..50 {
        if std::fs::remove_dir(d).is_ok() || !d.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `f` until it returns `Some`, up to `within`.
pub fn eventually<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if t.elapsed() > within {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `record.outcome.reason` of a status.
pub fn reason(st: &Value) -> &str {
    st["record"]["outcome"]["reason"].as_str().unwrap_or("-")
}

/// A lock that keeps the tests of one file from running at once (they time things and
/// share two CPUs).
pub static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes [`SERIAL`], surviving a poisoned lock.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}
