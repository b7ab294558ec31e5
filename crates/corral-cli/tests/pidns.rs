//! The pid namespace layer: each run gets its own pid namespace (`--pid-ns on`, the
//! default), where its command is pid 2 under corral's mini-init (pid 1) and `/proc`
//! shows only the run's processes, or the host's (`--pid-ns off`).
//!
//! Run against every backend this host offers: `cgroup1` natively here, `cgroup2` in
//! the VM, `rlimit` anywhere. Each scenario asserts the kernel's answer (`ESRCH` for a
//! host process, the pids `/proc` lists, a daemon really gone), and that the run is
//! classified as without the namespace (exit codes, signals, timeouts). As root, the
//! rlimit scenarios also run corral as an ordinary user (`nobody`), which cannot make a
//! pid namespace: the layer is then reported not enforced, with its reason.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Harness, PYTHON};
use serde_json::json;

fn assert_pid_ns(r: &serde_json::Value, requested: &str, enforced: bool) {
    let iso = &r["isolation"];
    assert_eq!(iso["requested"]["pid_ns"], requested, "{r}");
    assert_eq!(iso["enforced"]["pid_ns"], enforced, "{r}");
    assert_eq!(iso["not_enforced"], json!([]), "{r}");
}

/// A host process the test started (a `sleep`), killed when dropped.
struct HostSleeper(std::process::Child);

impl HostSleeper {
    fn start() -> HostSleeper {
        HostSleeper(
            Command::new("sleep")
                .arg("60")
                .spawn()
                .expect("sleep starts"),
        )
    }
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for HostSleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Python that prints the errno of `kill(pid, 0)` (`0` when it succeeded).
fn kill0_script(pid: u32) -> String {
    format!(
        "import os\n\
         try:\n    os.kill({pid}, 0); print(0)\n\
         except OSError as e:\n    print(e.errno)\n"
    )
}

fn host_process_unreachable(h: &Harness) {
    let sleeper = HostSleeper::start();
    let ran = h.run(&[], &[PYTHON, "-c", &kill0_script(sleeper.pid())]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    // The host's pid does not exist in the run's namespace.
    assert_eq!(ran.stdout.trim(), libc::ESRCH.to_string(), "{}", ran.stderr);
    assert!(common::alive(sleeper.pid() as i32));
    assert_pid_ns(ran.rec(), "on", true);
}

fn proc_lists_only_the_run(h: &Harness) {
    let script = "import os\n\
        print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))\n\
        print(open('/proc/1/comm').read().strip())\n\
        print(os.getpid(), os.getppid())\n";
    let ran = h.run(&[], &[PYTHON, "-c", script]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let lines: Vec<&str> = ran.stdout.lines().collect();
    // pid 1 is corral's init, pid 2 the command; nothing of the host.
    assert_eq!(lines, ["[1, 2]", "corral-init", "2 1"], "{}", ran.stderr);
    assert_pid_ns(ran.rec(), "on", true);
}

fn daemon_is_killed_with_the_run(h: &Harness) {
    // A classic daemon: double fork and setsid, so it leaves the run's session and
    // process group; its argument makes it findable on the host.
    let token = format!("300.{}{}", std::process::id(), h.backend.len());
    let started = h.tmp().join("daemon.started");
    let script = format!(
        "(setsid sh -c 'sleep {token} & echo $! > {f}' &); \
         while [ ! -s {f} ]; do sleep 0.05; done; exit 0",
        f = started.display()
    );
    let ran = h.run(&["--timeout", "60s"], &["sh", "-c", &script]);
    assert_eq!(ran.reason(), "exited", "{}", ran.rec());
    assert_eq!(ran.code, 0);
    assert!(started.exists(), "the daemon never started");
    assert!(ran.num("/events/leftover_killed") >= 1.0, "{}", ran.rec());
    let t = std::time::Instant::now();
    while host_processes_with_arg(&token) > 0 && t.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        host_processes_with_arg(&token),
        0,
        "the daemon outlived its run"
    );
    assert_eq!(h.run_cgroups(), Vec::<std::path::PathBuf>::new());
}

/// The live host processes one of whose arguments is `arg`.
fn host_processes_with_arg(arg: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            cmd.split(|&b| b == 0).any(|a| a == arg.as_bytes()) && common::alive(pid)
        })
        .count()
}

fn exit_code_is_the_commands(h: &Harness) {
    let ran = h.run(&[], &["sh", "-c", "exit 3"]);
    assert_eq!(ran.code, 3, "{}", ran.stderr);
    let o = &ran.rec()["outcome"];
    assert_eq!(o["reason"], "exited", "{o}");
    assert_eq!(o["exit_code"], 3);
    assert_eq!(o["process_exit_code"], 3);
    assert!(o["signal"].is_null(), "{o}");
    assert_pid_ns(ran.rec(), "on", true);
}

fn signal_is_the_commands(h: &Harness) {
    let ran = h.run(&[], &["sh", "-c", "kill -KILL $$"]);
    assert_eq!(ran.code, 137, "{}", ran.stderr);
    let o = &ran.rec()["outcome"];
    assert_eq!(o["signal"], 9, "{o}");
    assert!(o["process_exit_code"].is_null(), "{o}");
    assert_eq!(ran.rec()["events"]["leftover_killed"], 0);
}

fn timeout_sigterm_reaches_the_command(h: &Harness) {
    // Python must have installed its handler before the deadline, also in the slow
    // emulated VM.
    let (timeout, limit) = if std::env::var_os("CORRAL_IN_VM").is_some() {
        ("5s", 8.0)
    } else {
        ("1s", 3.0)
    };
    // A command that handles SIGTERM, and a child of it that does too: each gets it
    // exactly once (the init passes it to the whole namespace; corral sends it to the
    // init alone), and the run ends within the grace, by itself.
    let handles = "import os, signal, sys, time\n\
        def bye(*_):\n    print('term', flush=True); sys.exit(0)\n\
        signal.signal(signal.SIGTERM, bye)\n\
        r, w = os.pipe()\n\
        if os.fork() == 0:\n    \
            signal.signal(signal.SIGTERM, lambda *_: (print('child-term', flush=True), os._exit(0)))\n    \
            os.write(w, b'x'); time.sleep(300)\n\
        os.read(r, 1)\n\
        print('ready', flush=True); time.sleep(300)\n";
    let ran = h.run(
        &["--timeout", timeout, "--grace", "20s"],
        &[PYTHON, "-c", handles],
    );
    assert_eq!(ran.reason(), "timeout", "{}", ran.rec());
    assert_eq!(ran.code, 124);
    // Each handler printed once. (Two processes print at about the same time: Python
    // may write a line and its newline apart, so count words rather than lines.)
    let out = ran.stdout.replace("child-term", "CHILD");
    assert_eq!(
        (
            out.matches("CHILD").count(),
            out.matches("term").count(),
            out.matches("ready").count()
        ),
        (1, 1, 1),
        "{}\n{}",
        ran.stdout,
        ran.stderr
    );
    assert_eq!(ran.rec()["outcome"]["process_exit_code"], 0);
    assert_eq!(ran.rec()["events"]["grace_expired"], false);
    let wall = ran.num("/usage/wall_s");
    assert!(wall < limit, "the grace was waited out: wall {wall}");

    // One that does not: SIGTERM's default action ends it at once, not after the grace.
    let ran = h.run(
        &["--timeout", timeout, "--grace", "20s"],
        &[PYTHON, "-c", "import time; time.sleep(300)"],
    );
    assert_eq!(ran.reason(), "timeout", "{}", ran.rec());
    assert_eq!(ran.code, 124);
    assert_eq!(ran.rec()["outcome"]["signal"], libc::SIGTERM);
    assert_eq!(ran.rec()["events"]["grace_expired"], false);
    let wall = ran.num("/usage/wall_s");
    assert!(wall < limit, "the grace was waited out: wall {wall}");
}

fn host_pid_ns(h: &Harness) {
    let sleeper = HostSleeper::start();
    let script = format!(
        "import os\nprint(os.getpid() != 2, os.path.exists('/proc/{}'))\n{}",
        sleeper.pid(),
        kill0_script(sleeper.pid())
    );
    let ran = h.run(&["--pid-ns", "off"], &[PYTHON, "-c", &script]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    // Visible, and signalled unless the run's (dynamic) user is not the sleeper's:
    // as root the run is a dynamic uid, which may not signal root's process (EPERM).
    let errno = if rustix::process::geteuid().is_root() {
        libc::EPERM
    } else {
        0
    };
    assert_eq!(
        ran.stdout,
        format!("True True\n{errno}\n"),
        "{}",
        ran.stderr
    );
    assert_pid_ns(ran.rec(), "off", false);
}

fn bad_value(h: &Harness) {
    let ran = h.run(&["--pid-ns", "maybe"], &["true"]);
    assert_eq!(ran.code, 125);
    assert_eq!(
        ran.stderr.trim(),
        "corral: invalid pid namespace setting \"maybe\": use \"on\" (its own pid \
         namespace: it sees only its own processes) or \"off\" (the host's)"
    );
    assert_eq!(h.run_cgroups(), Vec::<std::path::PathBuf>::new());
}

/// One test per scenario and backend: `cgroup2::host_process_unreachable`, ...
macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        scenarios!(@backend cgroup2, $($name),*);
        scenarios!(@backend cgroup1, $($name),*);
        scenarios!(@backend rlimit, $($name),*);
    };
    (@backend $backend:ident, $($name:ident),*) => {
        mod $backend {
            use super::*;
            $( #[test] fn $name() {
                let h = harness_or_skip!(stringify!($backend), stringify!($name));
                if !rustix::process::geteuid().is_root()
                    && !["bad_value", "host_pid_ns"].contains(&stringify!($name))
                {
                    // An ordinary user gets no namespace: see `rlimit_as_ordinary_user`.
                    corral_testkit::skip(
                        &format!("{} {}", stringify!($backend), stringify!($name)),
                        &common::Missing::new(common::Feature::Root, "a pid namespace needs root"),
                    );
                    return;
                }
                super::$name(&h);
            } )*
        }
    };
}

scenarios!(
    host_process_unreachable,
    proc_lists_only_the_run,
    daemon_is_killed_with_the_run,
    exit_code_is_the_commands,
    signal_is_the_commands,
    timeout_sigterm_reaches_the_command,
    host_pid_ns,
    bad_value,
);

/// corral as an ordinary user (as `nobody` when the test runs as root) on the rlimit
/// backend: no pid namespace, reported with its reason; `--require-isolation` refuses;
/// `--pid-ns off` is what was asked for and is enforced.
#[test]
fn rlimit_as_ordinary_user() {
    let h = harness_or_skip!("rlimit", "pidnsuser");
    // (The harness's scratch directory opens to that user; the host's user namespaces
    // are made to look forbidden: the rootless tests below cover them.)
    let run = |args: &[&str]| {
        let args = [&["--fs", "host"][..], args].concat();
        common::run_as_ordinary_user_without_userns(
            &h,
            &format!("user-{}", args.len()),
            &args,
            &["sh", "-c", "echo $$"],
        )
    };
    let ran = run(&["--network", "host"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    // The host's pid namespace: the shell's pid is a host pid, not 2.
    assert_ne!(ran.stdout.trim(), "2", "{}", ran.stdout);
    let iso = &ran.rec()["isolation"];
    assert_eq!(iso["requested"]["pid_ns"], "on");
    assert_eq!(iso["enforced"]["pid_ns"], false, "{iso}");
    let gaps = iso["not_enforced"].as_array().unwrap();
    assert_eq!(gaps.len(), 1, "{iso}");
    assert_eq!(gaps[0]["layer"], "pid_ns");
    let why = gaps[0]["why"].as_str().unwrap();
    assert!(why.contains("CAP_SYS_ADMIN"), "{why}");
    assert!(why.contains("user namespaces"), "{why}");
    assert!(why.contains("--pid-ns off"), "{why}");
    assert!(
        ran.notes().contains("Isolation not applied: pid_ns ("),
        "{}",
        ran.notes()
    );

    // Only the pid namespace is refused (the limits are ones rlimit enforces).
    let ran = run(&[
        "--network",
        "host",
        "--require-isolation",
        "--cpus",
        "max",
        "--pids",
        "max",
    ]);
    assert_eq!(ran.code, 125);
    assert!(
        ran.stderr.contains("refusing to run")
            && ran.stderr.contains("this host cannot apply: pid_ns (")
            && !ran.stderr.contains("network (")
            && !ran.stderr.contains("backend cannot enforce"),
        "{}",
        ran.stderr
    );
    assert!(ran.stdout.is_empty(), "the command ran: {}", ran.stdout);

    let ran = run(&[
        "--network",
        "host",
        "--pid-ns",
        "off",
        "--require-isolation",
        "--cpus",
        "max",
        "--pids",
        "max",
    ]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_pid_ns(ran.rec(), "off", false);
}

/// corral as an ordinary user on a host that allows unprivileged user namespaces: the
/// run gets its own pid namespace through its own user namespace; the command is pid
/// 2 and a host process (this test) is out of its reach: `kill(pid, 0)` answers ESRCH.
#[test]
fn rlimit_as_ordinary_user_through_a_user_namespace() {
    let h = harness_or_skip!("rlimit", "pidnsuserns");
    if let Err(why) = common::userns_allowed() {
        corral_testkit::skip_control("rlimit_as_ordinary_user_through_a_user_namespace", &why);
        return;
    }
    let me = std::process::id();
    let script = format!(
        "import os, errno\n\
         print(os.getpid())\n\
         try:\n    os.kill({me}, 0); print('reached')\n\
         except OSError as e:\n    print(errno.errorcode[e.errno])\n\
         print(len([p for p in os.listdir('/proc') if p.isdigit()]))\n"
    );
    let ran = common::run_as_ordinary_user(
        &h,
        "pidns",
        &["--fs", "host", "--network", "host"],
        &[PYTHON, "-c", &script],
    );
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let out: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(out[..2], ["2", "ESRCH"], "{}", ran.stdout);
    // Its /proc lists the init and the command only.
    assert!(out[2].parse::<u32>().unwrap() <= 2, "{}", ran.stdout);
    assert_pid_ns(ran.rec(), "on", true);
    assert_eq!(ran.rec()["isolation"]["enforced"]["user_namespace"], true);
}

/// An ordinary user where parts of the host's `/proc` are over-mounted (as in many
/// containers; here a tmpfs over `/proc/bus` in a private mount namespace the test
/// makes as root): the kernel refuses a fresh `/proc` in a user namespace, so the run
/// gets its network and file-system layers through one but not the pid namespace,
/// which is reported with the reason (the shell's pid is a host pid).
#[test]
fn rlimit_as_ordinary_user_with_an_over_mounted_proc() {
    let h = harness_or_skip!("rlimit", "pidnsproc");
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: over-mounting /proc needs root");
        return;
    }
    if let Err(why) = common::userns_allowed() {
        corral_testkit::skip_control("rlimit_as_ordinary_user_with_an_over_mounted_proc", &why);
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(h.tmp(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let json = h.tmp().join("overmount.json");
    let over = if std::path::Path::new("/proc/bus").is_dir() {
        "/proc/bus"
    } else {
        "/proc/sys"
    };
    let script = format!(
        "mount --make-rprivate / && mount -t tmpfs none {over} && exec setpriv --reuid=65534 \
         --regid=65534 --clear-groups {} run --backend rlimit --json {} -- sh -c 'echo $$'",
        common::corral_bin(),
        json.display()
    );
    let t = std::time::Instant::now();
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .env("XDG_CONFIG_HOME", h.tmp())
        .current_dir(h.tmp())
        .output()
        .unwrap();
    let ran = common::finish(out, &json, t.elapsed());
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_ne!(ran.stdout.trim(), "2", "{}", ran.stdout);
    let iso = &ran.rec()["isolation"];
    assert_eq!(iso["enforced"]["pid_ns"], false, "{iso}");
    assert_eq!(iso["enforced"]["user_namespace"], true, "{iso}");
    assert_eq!(iso["enforced"]["network"], "loopback", "{iso}");
    assert_eq!(iso["enforced"]["fs"]["mode"], "read-only", "{iso}");
    let gaps = iso["not_enforced"].as_array().unwrap();
    assert_eq!(gaps.len(), 1, "{iso}");
    assert_eq!(gaps[0]["layer"], "pid_ns");
    let why = gaps[0]["why"].as_str().unwrap();
    assert!(
        why.contains("over-mounts") && why.contains("--pid-ns off"),
        "{why}"
    );
}

/// An ordinary user with delegated cgroup v1 directories (the test makes a private
/// root in each hierarchy and gives it to `nobody`): the run is in its cgroups with
/// its memory limit, and gets the pid namespace, the network and the read-only view
/// through its user namespace, with its uid unchanged and no capabilities.
#[test]
fn cgroup1_delegated_to_an_ordinary_user() {
    let h = harness_or_skip!("cgroup1", "delegated");
    if let Err(why) = common::userns_allowed() {
        corral_testkit::skip_control("cgroup1_delegated_to_an_ordinary_user", &why);
        return;
    }
    for d in &h.root_dirs {
        std::fs::create_dir_all(d).unwrap();
        let chown = Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(d)
            .status()
            .unwrap();
        assert!(chown.success());
    }
    let me = std::process::id();
    let script = format!(
        "import os, errno\n\
         print(os.getpid(), os.getuid())\n\
         try:\n    os.kill({me}, 0); print('reached')\n\
         except OSError as e:\n    print(errno.errorcode[e.errno])\n\
         try:\n    open('/etc/corral-delegated-x', 'w'); print('wrote')\n\
         except OSError as e:\n    print(errno.errorcode[e.errno])\n\
         print(open('/proc/self/status').read().split('CapBnd:')[1].split()[0])\n\
         print([l for l in open('/proc/self/cgroup') if ':memory:' in l][0].strip())\n"
    );
    let ran = common::run_as_ordinary_user(
        &h,
        "delegated",
        &["--memory", "100M"],
        &[PYTHON, "-c", &script],
    );
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let out: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(
        out[..4],
        ["2 65534", "ESRCH", "EROFS", "0000000000000000"],
        "{}",
        ran.stdout
    );
    let r = ran.rec();
    assert_eq!(r["backend"], "cgroup1", "{r}");
    let cg = r["cgroup"].as_str().unwrap();
    assert!(
        out[4].ends_with(cg.rsplit('/').next().unwrap()),
        "{}",
        out[4]
    );
    assert_eq!(r["limits"]["enforced"]["memory_bytes"], 104857600u64, "{r}");
    let iso = &r["isolation"];
    assert_eq!(iso["enforced"]["user_namespace"], true, "{iso}");
    assert_eq!(iso["enforced"]["pid_ns"], true, "{iso}");
    assert_eq!(iso["enforced"]["network"], "loopback", "{iso}");
    assert_eq!(iso["enforced"]["fs"]["mode"], "read-only", "{iso}");
    assert_eq!(iso["enforced"]["user"]["uid"], 65534, "{iso}");
    assert!(!std::path::Path::new("/etc/corral-delegated-x").exists());
}
