//! Shared helpers for the enforcement, systemd and service tests: which backend can
//! run here (and, through `corral_testkit`, whether a test that cannot may skip), a
//! private cgroup root per test that is removed again, running the real `corral`
//! binary, and checks of what the kernel did.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use corral_cgroup::layout::{Layout, LayoutKind, V1_CONTROLLERS};
pub use corral_testkit::{Feature, Missing};
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

/// The cgroup backends whose cgroups the tests create themselves.
pub const CGROUP_BACKENDS: [&str; 2] = ["cgroup2", "cgroup1"];

/// Whether the tests can create `backend`'s cgroups here (`cgroup2` or `cgroup1`):
/// root, and the hierarchy with its controllers; else what is missing.
pub fn cgroups_available(backend: &str, layout: &Layout) -> Result<(), Missing> {
    if !is_root() {
        return Err(Missing::new(Feature::Root, "needs root to create cgroups"));
    }
    match backend {
        "cgroup2" => {
            let m = layout
                .v2
                .as_ref()
                .ok_or_else(|| Missing::new(Feature::Cgroup2, "no cgroup2 mount"))?;
            let lacking = layout.missing_v2_controllers();
            if lacking.is_empty() {
                return Ok(());
            }
            let hint = match layout.kind() {
                LayoutKind::Hybrid => " (a hybrid host: these run in the v2 VM)",
                _ => "",
            };
            Err(Missing::new(
                Feature::Cgroup2,
                format!(
                    "cgroup2 at {} lacks the {} controller(s){hint}",
                    m.mount_point.display(),
                    lacking.join(", ")
                ),
            ))
        }
        "cgroup1" if layout.v1.contains_key("memory") => Ok(()),
        "cgroup1" => Err(Missing::new(
            Feature::Cgroup1,
            "no cgroup v1 memory hierarchy",
        )),
        other => panic!("{other} is not a cgroup backend"),
    }
}

/// A test's private cgroup root, named `corral-test-...` after the test.
#[derive(Debug, Clone)]
pub struct PrivateRoot {
    /// The value for `--cgroup-root`.
    pub arg: String,
    /// Its directory in each hierarchy (one for v2).
    pub dirs: Vec<PathBuf>,
    /// Its path as `/proc/PID/cgroup` shows it.
    pub rel: String,
}

impl PrivateRoot {
    /// The root `name` for `backend` (`cgroup2` or `cgroup1`; checked with
    /// [`cgroups_available`]). Nothing is created.
    pub fn new(backend: &str, layout: &Layout, name: &str) -> PrivateRoot {
        let rel = format!("/{name}");
        match backend {
            "cgroup2" => {
                let dir = layout
                    .v2
                    .as_ref()
                    .expect("a cgroup2 mount")
                    .mount_point
                    .join(name);
                PrivateRoot {
                    arg: dir.display().to_string(),
                    dirs: vec![dir],
                    rel,
                }
            }
            _ => {
                let mut dirs: Vec<PathBuf> = V1_CONTROLLERS
                    .iter()
                    .filter_map(|c| layout.v1.get(*c))
                    .map(|m| m.mount_point.join(name))
                    .collect();
                dirs.dedup();
                PrivateRoot {
                    arg: rel.clone(),
                    dirs,
                    rel,
                }
            }
        }
    }
}

/// Returns a harness for `backend`, or what this host lacks for it.
pub fn harness(backend: &'static str, test: &str) -> Result<Harness, Missing> {
    let layout = Layout::detect();
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let plain = |root_arg: String, root_dirs: Vec<PathBuf>, tmp| Harness {
        backend,
        user: None,
        slice: None,
        root_arg,
        root_dirs,
        tmp,
    };
    match backend {
        "cgroup2" | "cgroup1" => {
            cgroups_available(backend, &layout)?;
            let name = format!("corral-test-{}-{test}", std::process::id());
            let root = PrivateRoot::new(backend, &layout, &name);
            Ok(plain(root.arg, root.dirs, tmp))
        }
        "rlimit" => Ok(plain(String::new(), Vec::new(), tmp)),
        "systemd" | "systemd-user" => systemd_harness(backend == "systemd-user", &layout, tmp),
        other => panic!("unknown backend {other}"),
    }
}

/// Returns a test's harness, or returns early from the test where it cannot run here
/// (printing `skipped: ...`, or failing where the step requires the missing feature:
/// see `corral_testkit`).
#[macro_export]
macro_rules! harness_or_skip {
    ($backend:expr, $name:expr) => {
        match common::harness($backend, $name) {
            Ok(h) => h,
            Err(missing) => {
                corral_testkit::skip(&format!("{} {}", $backend, $name), &missing);
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
    /// The record's `notes`.
    pub fn notes(&self) -> &str {
        self.rec()["notes"].as_str().expect("notes are a string")
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
        // The scratch directory is under /tmp, which the read-only view replaces with a
        // private one: each run gets it as a `--rw` path (its scripts, pid files).
        c.arg("--json")
            .arg(&json)
            .arg("--rw")
            .arg(self.tmp())
            .args(args)
            .arg("--")
            .args(cmd)
            .env("XDG_CONFIG_HOME", self.tmp())
            // The run's working directory is the test's: writable by its (dynamic) user.
            .current_dir(self.tmp())
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

/// The host pid of the process that a run's command knows as `ns_pid` (a pid it
/// wrote, `$$` or `$!`): the descendant of `ancestor` (the corral process, or the
/// service) whose innermost pid (`NSpid:` in `/proc/PID/status`) is `ns_pid`. Runs
/// without a pid namespace (`--pid-ns off`, an ordinary user) see host pids: those are
/// returned as they are. `None` when no such process is alive, so call it while the
/// run is.
pub fn host_pid(ancestor: i32, ns_pid: i32) -> Option<i32> {
    // Without a namespace the pid is the host's (an orphan's parent is then no longer
    // the run's, so it is not checked). The small pids of a namespace are kernel
    // threads on the host (parent 0 or kthreadd): never a run's.
    host_pid_in_ns(ancestor, ns_pid).or_else(|| {
        let s = std::fs::read_to_string(format!("/proc/{ns_pid}/status")).ok()?;
        let field = |name: &str| -> Vec<i32> {
            s.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| {
                    v.split_whitespace()
                        .filter_map(|x| x.parse().ok())
                        .collect()
                })
                .unwrap_or_default()
        };
        let kernel_thread = matches!(field("PPid:").first(), Some(0) | Some(2) | None);
        (field("NSpid:").len() == 1 && !kernel_thread).then_some(ns_pid)
    })
}

/// The host pid of the descendant of `ancestor` that a pid namespace below this one
/// knows as `ns_pid` (the last entry of its `NSpid:`), if one is alive.
pub fn host_pid_in_ns(ancestor: i32, ns_pid: i32) -> Option<i32> {
    let status = |pid: i32| std::fs::read_to_string(format!("/proc/{pid}/status")).ok();
    let field = |s: &str, name: &str| -> Vec<i32> {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| {
                v.split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let descends = |mut pid: i32| {
        for _ in 0..64 {
            if pid == ancestor {
                return true;
            }
            match status(pid).map(|s| field(&s, "PPid:")) {
                Some(p) if !p.is_empty() && p[0] > 1 => pid = p[0],
                _ => return false,
            }
        }
        false
    };
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|&pid| {
            status(pid).is_some_and(|s| {
                let ns = field(&s, "NSpid:");
                ns.len() > 1 && ns.last() == Some(&ns_pid) && descends(pid)
            })
        })
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

fn systemd_harness(
    user: bool,
    layout: &Layout,
    tmp: tempfile::TempDir,
) -> Result<Harness, Missing> {
    if !is_root() {
        return Err(Missing::new(
            Feature::Root,
            "needs root (for the system manager, and to run as the test user)",
        ));
    }
    let systemd = |why: String| Missing::new(Feature::Systemd, why);
    if !Path::new("/run/systemd/system").exists() {
        return Err(systemd(
            "no systemd manager here: PID 1 is not systemd (the VM runs these: \
             cargo xtask vm --systemd)"
                .into(),
        ));
    }
    let m = layout
        .v2
        .as_ref()
        .ok_or_else(|| systemd("no cgroup2 mount".into()))?;
    if layout.kind() != LayoutKind::Unified {
        return Err(systemd(format!(
            "systemd runs a {} cgroup layout here; the systemd backend needs cgroup v2",
            layout.kind().as_str()
        )));
    }
    let (uid, slice, socket) = if user {
        let uid = test_uid().ok_or_else(|| {
            Missing::new(
                Feature::SystemdUser,
                "no test user with a running user manager (CORRAL_VM_TEST_UID)",
            )
        })?;
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
        let feature = if user {
            Feature::SystemdUser
        } else {
            Feature::Systemd
        };
        return Err(Missing::new(
            feature,
            format!("no D-Bus socket at {}", socket.display()),
        ));
    }
    if uid.is_some() {
        // The user writes its records and reads its scripts here.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod of the test's directory");
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

// Scenarios the enforcement and systemd tests share: the run and the checks that hold
// for every backend. Each test adds its backend's own checks after these.

/// A memory hog under `--memory 64M`; asserts the OOM kill (reason `oom`, exit 137,
/// `events.oom_kill` ≥ 1, a peak at the limit).
pub fn run_oom(h: &Harness) -> Ran {
    let ran = h.run(
        &["--memory", "64M", "--timeout", "60s"],
        &[
            PYTHON,
            "-c",
            "import time; b = b'x' * (300 << 20); time.sleep(5)",
        ],
    );
    assert_eq!(ran.reason(), "oom", "{}", ran.rec());
    assert_eq!(ran.code, 137);
    assert!(ran.num("/events/oom_kill") >= 1.0);
    let peak = ran.num("/usage/memory_peak_bytes");
    assert!(
        peak <= (64 << 20) as f64 * 1.05 && peak > (32 << 20) as f64,
        "peak {peak}"
    );
    ran
}

/// Starts a fork bomb run (`args` with `--pids 64`), checks after `settle` that the
/// host still forks while the bomb is at its limit, and asserts what the run hit: the
/// timeout, refused forks, the note.
pub fn run_fork_bomb(h: &Harness, args: &[&str], bomb: &str, settle: Duration) -> Ran {
    let (mut c, json) = h.command(args, &["sh", "-c", bomb]);
    let t = Instant::now();
    let child = c.spawn().unwrap();
    std::thread::sleep(settle);
    assert!(Command::new("true").status().unwrap().success());
    let ran = finish(child.wait_with_output().unwrap(), &json, t.elapsed());
    assert_eq!(ran.reason(), "timeout", "{}", ran.rec());
    assert!(ran.num("/events/pids_max") > 0.0, "{}", ran.rec());
    assert!(ran.notes().contains("64-process limit"));
    ran
}

/// `sleep 600` under `--timeout 2s --grace 3s`: asserts it timed out (124) after the
/// deadline and that SIGTERM sufficed.
pub fn run_timeout(h: &Harness) -> Ran {
    let ran = h.run(&["--timeout", "2s", "--grace", "3s"], &["sleep", "600"]);
    assert_eq!(ran.reason(), "timeout", "{}", ran.rec());
    assert_eq!(ran.code, 124);
    assert!(ran.elapsed >= Duration::from_secs(2));
    assert!(!ran.rec()["events"]["grace_expired"].as_bool().unwrap());
    ran
}

/// Limits that every backend under test enforces in full.
pub const ENFORCED_LIMITS: [&str; 8] = [
    "--memory",
    "100M",
    "--cpus",
    "0.5",
    "--pids",
    "32",
    "--timeout",
    "30s",
];

/// Asserts that the record enforces all of [`ENFORCED_LIMITS`].
pub fn assert_limits_enforced(r: &Value) {
    assert_eq!(r["limits"]["enforced"]["memory_bytes"], 100 << 20);
    assert_eq!(r["limits"]["enforced"]["cpus"], 0.5);
    assert_eq!(r["limits"]["enforced"]["pids"], 32);
    assert_eq!(r["limits"]["not_enforced"], serde_json::json!([]));
}

/// Runs `script`, which leaves a `setsid` escapee whose pid it writes to
/// `escapee.pid` in the test's directory (`{p}` in the script), and asserts that the
/// run exited by itself and corral killed the escapee.
pub fn run_escapee(h: &Harness, script: &str) -> Ran {
    let pidfile = h.tmp().join("escapee.pid");
    let script = script.replace("{p}", &pidfile.display().to_string());
    let (mut c, json) = h.command(&["--timeout", "60s"], &["sh", "-c", &script]);
    let t = Instant::now();
    let child = c.spawn().expect("corral starts");
    // Generous: the start takes longer in the emulated VM; the pid is read as soon as
    // it is there.
    let pid = read_pid(&pidfile, Duration::from_secs(10)).expect("the escapee wrote its pid");
    // In its own pid namespace the run wrote that namespace's pid: the escapee's host
    // pid is found while the run still has it. (None: it was killed already, with the
    // init, as soon as the main process ended; `leftover_killed` says so.)
    let in_ns = host_pid_in_ns(child.id() as i32, pid);
    let ran = finish(child.wait_with_output().unwrap(), &json, t.elapsed());
    let pid = match ran.rec()["isolation"]["enforced"]["pid_ns"] == true {
        true => in_ns,
        false => Some(pid),
    };
    assert_eq!(ran.reason(), "exited", "{}", ran.rec());
    if let Some(pid) = pid {
        assert!(!alive(pid), "the escaped sleep {pid} outlived its run");
    }
    assert!(ran.num("/events/leftover_killed") >= 1.0, "{}", ran.rec());
    ran
}

// The sandbox's "always" layers and its syscall filter, shared by every backend's tests.

/// A Python script that makes each denied call directly (no wrapper program that
/// might fail for its own reasons) and prints `name errno-name` per call.
fn denied_calls_script() -> String {
    format!(
        "import ctypes, errno\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         def show(name, ret):\n    \
             print(name, 'ok' if ret != -1 else errno.errorcode[ctypes.get_errno()])\n\
         show('mount', libc.mount(b'none', b'/mnt', b'tmpfs', 0, None))\n\
         show('unshare-user', libc.unshare(0x10000000))\n\
         show('keyctl', libc.syscall({keyctl}, 0, 0, 0, 0, 0))\n\
         show('bpf', libc.syscall({bpf}, 0, 0, 0))\n",
        keyctl = libc::SYS_keyctl,
        bpf = libc::SYS_bpf,
    )
}

/// The default sandbox: `mount`, `unshare -U`, `keyctl` and `bpf` fail with EPERM
/// (through the commands and directly), the process has `no_new_privs` and a filter,
/// core dumps are off, and the record says so.
pub fn run_sandbox_denials(h: &Harness) -> Ran {
    let script = h.tmp().join("denied.py");
    std::fs::write(&script, denied_calls_script()).unwrap();
    let shell = format!(
        "grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status; echo core=$(ulimit -c); \
         mount -t tmpfs none /mnt && echo mount-worked; \
         unshare -U true && echo unshare-worked; \
         {PYTHON} {}",
        script.display()
    );
    let ran = h.run(&["--timeout", "60s"], &["sh", "-c", &shell]);
    assert_eq!(ran.reason(), "exited", "{}", ran.rec());
    let out = &ran.stdout;
    for line in [
        "NoNewPrivs:\t1",
        "Seccomp:\t2",
        "core=0",
        "mount EPERM",
        "unshare-user EPERM",
        "keyctl EPERM",
        "bpf EPERM",
    ] {
        assert!(out.lines().any(|l| l == line), "{line:?} not in {out}");
    }
    assert!(!out.contains("worked"), "{out}");
    assert!(
        ran.stderr
            .contains("unshare failed: Operation not permitted"),
        "{}",
        ran.stderr
    );
    // The network layer beside them: root's runs get their own loopback-only
    // namespace; an ordinary user's share the host's network, listed as not enforced.
    let root = rustix::process::geteuid().is_root();
    let iso = &ran.rec()["isolation"];
    let tmp = h.tmp().display().to_string();
    assert_eq!(
        iso["requested"],
        serde_json::json!({"isolation": "default", "syscalls": "default", "network": "none",
                           "user": "default",
                           "pid_ns": "on",
                           "fs": {"mode": "read-only", "rw": [tmp], "hide": []}})
    );
    // The identity layer: root's runs get a dynamic uid, an ordinary user's are its
    // own; neither keeps a capability (see identity.rs).
    let mut enforced = iso["enforced"].clone();
    let user = enforced.as_object_mut().unwrap().remove("user").unwrap();
    assert_eq!(user["dynamic"], root, "{user}");
    assert_ne!(user["uid"], 0, "{user}");
    assert_eq!(
        enforced.as_object_mut().unwrap().remove("capabilities"),
        Some(serde_json::json!("none"))
    );
    // The file-system view (tests/fsview.rs) beside them, for root.
    let fs = root.then(|| {
        // The working directory and the scratch directory, the private ones.
        let canon = |p: &Path| std::fs::canonicalize(p).unwrap().display().to_string();
        // The harness runs corral in the scratch directory: the two are one path.
        let mut writable = vec![canon(h.tmp()), "/tmp".to_string()];
        if Path::new("/dev/shm").is_dir() {
            writable.push("/dev/shm".to_string());
        }
        serde_json::json!({"mode": "read-only", "writable": writable, "hidden": [],
                           "private_tmp": true})
    });
    // Landlock backs the read-only view with this kernel's ABI (root: the view).
    let landlock = iso["enforced"]["landlock"].clone();
    assert_eq!(landlock.as_u64().is_some_and(|abi| abi >= 1), root, "{iso}");
    assert_eq!(
        enforced,
        serde_json::json!({"syscalls": {"policy": "corral-default", "version": 2},
                           "no_new_privs": true, "new_session": true, "core_dumps": false,
                           "network": if root { Some("loopback") } else { None },
                           "pid_ns": root,
                           "fs": fs,
                           "landlock": landlock})
    );
    let gaps: Vec<&str> = iso["not_enforced"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["layer"].as_str().unwrap())
        .collect();
    let want: &[&str] = if root {
        &[]
    } else {
        &["network", "pid_ns", "fs"]
    };
    assert_eq!(gaps, want, "{iso}");
    ran
}

/// `--syscalls off`: no filter (`Seccomp: 0`), `no_new_privs` still set, and the
/// record says the filter was not asked for.
pub fn run_sandbox_off(h: &Harness) -> Ran {
    let ran = h.run(
        &["--syscalls", "off"],
        &[
            "sh",
            "-c",
            "grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status",
        ],
    );
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(ran.stdout, "NoNewPrivs:\t1\nSeccomp:\t0\n");
    let iso = &ran.rec()["isolation"];
    assert_eq!(iso["requested"]["syscalls"], "off");
    assert!(iso["enforced"]["syscalls"].is_null(), "{iso}");
    assert_eq!(iso["enforced"]["no_new_privs"], true);
    assert_eq!(iso["not_enforced"], serde_json::json!([]));
    ran
}

/// `--isolation off`: today's unsandboxed run in one word. No filter (`Seccomp: 0`), no
/// `no_new_privs`, core dumps as inherited (the test's own limit), no new session
/// (except on the rlimit backend, whose group kill needs one), the host's network (a
/// listener on the host's loopback is reached), and the record and notes say so.
pub fn run_isolation_off(h: &Harness) -> Ran {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a host listener");
    let port = l.local_addr().unwrap().port();
    let shell = format!(
        "grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status; echo core=$(grep 'Max core' /proc/$$/limits | tr -s ' ' | cut -d' ' -f5); \
         echo leader=$(test \"$(cut -d' ' -f6 /proc/$$/stat)\" = $$ && echo yes || echo no); \
         {PYTHON} -c \"import socket; socket.create_connection(('127.0.0.1', {port}), \
         timeout=5); print('connected')\""
    );
    // corral starts with a soft core limit of 2 MiB where the hard limit allows it: the
    // run inherits it (the sandbox would make it 0).
    use std::os::unix::process::CommandExt;
    let core = rustix::process::getrlimit(rustix::process::Resource::Core);
    let want = 2u64 << 20;
    let soft = if core.maximum.is_none_or(|m| m >= want) {
        Some(want)
    } else {
        core.current
    };
    let (mut c, json) = h.command(
        &["--isolation", "off", "--timeout", "60s"],
        &["sh", "-c", &shell],
    );
    // SAFETY: setrlimit is async-signal-safe and touches nothing else of the process.
    unsafe {
        c.pre_exec(move || {
            let l = rustix::process::Rlimit {
                current: soft,
                maximum: core.maximum,
            };
            rustix::process::setrlimit(rustix::process::Resource::Core, l)?;
            Ok(())
        });
    }
    let t = Instant::now();
    let ran = finish(c.output().expect("corral starts"), &json, t.elapsed());
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let rlimit = h.backend == "rlimit";
    let core = soft.map_or("unlimited".to_string(), |c| c.to_string());
    let leader = if rlimit { "yes" } else { "no" };
    assert_eq!(
        ran.stdout,
        format!("NoNewPrivs:\t0\nSeccomp:\t0\ncore={core}\nleader={leader}\nconnected\n"),
        "{}",
        ran.stderr
    );
    l.set_nonblocking(true).unwrap();
    assert!(l.accept().is_ok(), "the host's listener saw no connection");
    let iso = &ran.rec()["isolation"];
    let tmp = h.tmp().display().to_string();
    assert_eq!(
        iso["requested"],
        serde_json::json!({"isolation": "off", "syscalls": "off", "network": "host",
                           "user": "default",
                           "pid_ns": "off",
                           "fs": {"mode": "host", "rw": [tmp], "hide": []}})
    );
    // corral's own identity, as before the sandbox.
    let mut enforced = iso["enforced"].clone();
    let user = enforced.as_object_mut().unwrap().remove("user").unwrap();
    let me = rustix::process::getuid().as_raw();
    assert_eq!(
        (&user["uid"], &user["dynamic"]),
        (&serde_json::json!(me), &serde_json::json!(false))
    );
    let caps = enforced
        .as_object_mut()
        .unwrap()
        .remove("capabilities")
        .unwrap();
    assert_eq!(caps, if me == 0 { "inherited" } else { "none" });
    assert_eq!(
        enforced,
        serde_json::json!({"syscalls": null, "no_new_privs": false, "new_session": rlimit,
                           "core_dumps": true, "network": "host", "pid_ns": false,
                           "landlock": null,
                           "fs": {"mode": "host", "writable": ["/"], "hidden": [],
                                  "private_tmp": false}})
    );
    assert_eq!(iso["not_enforced"], serde_json::json!([]));
    assert!(
        ran.notes()
            .contains("Not sandboxed (isolation off): the host's network, no syscall filter"),
        "{}",
        ran.notes()
    );
    ran
}

/// An explicit layer flag wins over `--isolation off` (in either order): `--syscalls
/// default` brings the filter back (with the `no_new_privs` it needs), `--network none`
/// the loopback-only namespace. A bad value is exit 125 with one line, and no run.
pub fn run_isolation_precedence(h: &Harness) {
    let status = "grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status";
    let ran = h.run(
        &["--syscalls", "default", "--isolation", "off"],
        &["sh", "-c", status],
    );
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(ran.stdout, "NoNewPrivs:\t1\nSeccomp:\t2\n");
    let iso = &ran.rec()["isolation"];
    let tmp = h.tmp().display().to_string();
    assert_eq!(
        iso["requested"],
        serde_json::json!({"isolation": "off", "syscalls": "default", "network": "host",
                           "user": "default",
                           "pid_ns": "off",
                           "fs": {"mode": "host", "rw": [tmp], "hide": []}})
    );
    assert_eq!(iso["enforced"]["no_new_privs"], true);
    assert_eq!(iso["enforced"]["network"], "host");
    let notes = ran.notes();
    assert!(
        notes.contains("Not sandboxed (isolation off): the host's network")
            && !notes.contains("no syscall filter")
            && !notes.contains("no_new_privs"),
        "{notes}"
    );

    if rustix::process::geteuid().is_root() {
        let ran = h.run(
            &["--isolation", "off", "--network", "none"],
            &[
                "sh",
                "-c",
                "tail -n +3 /proc/net/dev | cut -d: -f1; grep Seccomp: /proc/self/status",
            ],
        );
        assert_eq!(ran.code, 0, "{}", ran.stderr);
        assert_eq!(
            ran.stdout.split_whitespace().collect::<Vec<_>>(),
            ["lo", "Seccomp:", "0"]
        );
        let iso = &ran.rec()["isolation"];
        assert_eq!(iso["requested"]["network"], "none");
        assert_eq!(iso["enforced"]["network"], "loopback");
    }

    let ran = h.run(&["--isolation", "none"], &["true"]);
    assert_eq!(ran.code, 125);
    assert_eq!(
        ran.stderr.trim(),
        "corral: invalid isolation \"none\": use \"default\" (the sandbox) or \"off\" (no \
         sandbox: the host's network, no syscall filter)"
    );
    let r = ran.rec();
    assert_eq!(r["schema"], "corral.error/v1", "{r}");
    assert_eq!(r["exit_code"], 125);
    assert!(h.run_cgroups().is_empty());
}

/// A setuid-root copy of `id` gives euid 0 to an unprivileged caller outside corral,
/// and nothing inside a run (`no_new_privs`, no capability in the bounding set), which
/// runs unprivileged (root's runs as a dynamic uid).
pub fn run_sandbox_setuid(h: &Harness) -> Ran {
    use std::os::unix::fs::PermissionsExt;
    /// A setuid-root copy of `id` in `dir`, and what it says run as nobody outside
    /// corral (the control: "0" where the mount honours setuid).
    fn setuid_id(dir: &Path) -> (String, std::process::Output) {
        let d = dir.join("suid");
        std::fs::create_dir(&d).unwrap();
        for d in [dir, d.as_path()] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let id = d.join("id");
        std::fs::copy("/usr/bin/id", &id).unwrap();
        std::fs::set_permissions(&id, std::fs::Permissions::from_mode(0o4755)).unwrap();
        let id = id.display().to_string();
        let out = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                &id,
                "-u",
            ])
            .output()
            .unwrap();
        (id, out)
    }
    let works = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).trim() == "0";
    // The test VM's /tmp is nosuid; /var/tmp (its overlay root) is not.
    let (mut id, mut outside) = setuid_id(h.tmp());
    let _var_tmp;
    if !works(&outside) {
        _var_tmp = tempfile::Builder::new()
            .prefix("corral-test-suid")
            .tempdir_in("/var/tmp")
            .unwrap();
        (id, outside) = setuid_id(_var_tmp.path());
    }
    let as_nobody = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        &id,
        "-u",
    ];
    if !works(&outside) {
        // Without a working control the check below would prove nothing.
        corral_testkit::skip_control(
            &format!("{} sandbox_setuid", h.backend),
            &format!(
                "a setuid file in {} or /var/tmp gives no privilege even outside corral \
                 (nosuid mounts?): {outside:?}",
                h.tmp().display()
            ),
        );
        return Ran {
            code: 0,
            stderr: String::new(),
            stdout: String::new(),
            record: None,
            elapsed: Duration::ZERO,
        };
    }
    let _ = as_nobody;
    // The run is already unprivileged (a dynamic uid when corral is root: see
    // identity.rs): the setuid-root program leaves it as it is.
    let ran = h.run(&[], &[&id, "-u"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let uid = ran.rec()["isolation"]["enforced"]["user"]["uid"].to_string();
    assert_eq!(ran.stdout.trim(), uid);
    assert_ne!(uid, "0");
    ran
}

/// Under a terminal (corral run by `script`): the run has no controlling terminal
/// (`/dev/tty` is ENXIO) and `TIOCSTI` on the terminal it inherited as stdin is EPERM,
/// so it cannot push input into the shell that started corral.
pub fn run_sandbox_tiocsti(h: &Harness) {
    let probe = h.tmp().join("tiocsti.py");
    std::fs::write(
        &probe,
        "import errno, fcntl, os, termios\n\
         print('isatty', os.isatty(0))\n\
         try:\n    os.open('/dev/tty', os.O_RDWR); print('tty opened')\n\
         except OSError as e:\n    print('tty', errno.errorcode[e.errno])\n\
         try:\n    fcntl.ioctl(0, termios.TIOCSTI, b'x'); print('tiocsti worked')\n\
         except OSError as e:\n    print('tiocsti', errno.errorcode[e.errno])\n",
    )
    .unwrap();
    let pty = Command::new("script")
        .args(["-qec", "true", "/dev/null"])
        .stdin(Stdio::null())
        .output();
    if !pty.as_ref().is_ok_and(|o| o.status.success()) {
        corral_testkit::skip_control(
            &format!("{} sandbox_tiocsti", h.backend),
            &format!("script(1) cannot open a pty here: {pty:?}"),
        );
        return;
    }
    let json = h.tmp().join("tiocsti.json");
    let mut line = format!("{} run --backend {}", corral_bin(), h.backend);
    if !h.root_arg.is_empty() {
        line += &format!(" --cgroup-root {}", h.root_arg);
    }
    // The probe is in the scratch directory under /tmp: see Harness::command.
    line += &format!(
        " --json {} --rw {} -- {PYTHON} {}",
        json.display(),
        h.tmp().display(),
        probe.display()
    );
    let out = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .env("XDG_CONFIG_HOME", h.tmp())
        .stdin(Stdio::null())
        .output()
        .expect("script(1) starts");
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    assert!(out.status.success(), "{text}");
    for l in ["isatty True", "tty ENXIO", "tiocsti EPERM"] {
        assert!(text.lines().any(|x| x == l), "{l:?} not in {text:?}");
    }
}

/// `corral run --backend B [--cgroup-root R] --json <tmp>/<name>.json ARGS -- CMD` (the
/// harness' backend and root; a cgroup root must have been given to the user) as an
/// ordinary user: `nobody` (65534) when the test runs as root (the harness' directory is made
/// world-writable for it), else the test's own user. Returns what it did.
pub fn run_as_ordinary_user(h: &Harness, name: &str, args: &[&str], cmd: &[&str]) -> Ran {
    ordinary_user_run(h, name, args, cmd, &[])
}

/// [`run_as_ordinary_user`] as on a host that forbids unprivileged user namespaces
/// (`CORRAL_TEST_NO_USERNS=1`): each layer's gap, its reason and `--require-isolation`.
pub fn run_as_ordinary_user_without_userns(
    h: &Harness,
    name: &str,
    args: &[&str],
    cmd: &[&str],
) -> Ran {
    ordinary_user_run(h, name, args, cmd, &[("CORRAL_TEST_NO_USERNS", "1")])
}

fn ordinary_user_run(
    h: &Harness,
    name: &str,
    args: &[&str],
    cmd: &[&str],
    env: &[(&str, &str)],
) -> Ran {
    let json = h.tmp().join(format!("{name}.json"));
    let mut c = if is_root() {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(h.tmp(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
        c.arg(corral_bin());
        c
    } else {
        Command::new(corral_bin())
    };
    c.args(["run", "--backend", h.backend]);
    if !h.root_arg.is_empty() {
        c.args(["--cgroup-root", &h.root_arg]);
    }
    c.arg("--json")
        .arg(&json)
        .args(args)
        .arg("--")
        .args(cmd)
        .env("XDG_CONFIG_HOME", h.tmp())
        .envs(env.iter().copied())
        .current_dir(h.tmp());
    let t = Instant::now();
    finish(c.output().expect("corral starts"), &json, t.elapsed())
}

/// Whether the user of [`run_as_ordinary_user`] may make a user namespace with its
/// own pid namespace and a fresh `/proc` on this host: asked of `unshare(1)`, not of
/// corral. `Err` says why not (a test of the rootless layers then skips, through
/// `corral_testkit::skip_control`).
pub fn userns_allowed() -> Result<(), String> {
    let mut c = if is_root() {
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
    c.args([
        "--user",
        "--map-root-user",
        "--pid",
        "--fork",
        "--mount-proc",
        "true",
    ]);
    c.current_dir("/");
    match c.output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "this host refuses an ordinary user a user namespace (unshare: {})",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("unshare: {e}")),
    }
}
