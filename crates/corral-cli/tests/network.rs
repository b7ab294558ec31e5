//! The network layer: each run gets its own network namespace with only loopback, up
//! (`--network none`, the default), or the host's (`--network host`).
//!
//! Run against every backend this host offers: `cgroup1` natively here, `cgroup2` in
//! the VM, `rlimit` anywhere. Each scenario asserts the kernel's answer (a refused
//! connection, the interfaces a run sees), not only what corral wrote. As root, the
//! rlimit scenarios also run corral as an ordinary user (`nobody`), which cannot make
//! a namespace: the layer is then reported not enforced, with its reason.

mod common;

use std::io::ErrorKind;
use std::net::TcpListener;

use common::{Harness, PYTHON};
use serde_json::json;

/// A TCP listener on the host's loopback, on an ephemeral port, that never blocks.
fn host_listener() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").expect("a listener on the host's loopback");
    l.set_nonblocking(true).unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

/// Python that connects to `127.0.0.1:port` and prints `connected` or `errno N`.
fn connect_script(port: u16) -> String {
    format!(
        "import socket\n\
         try:\n    socket.create_connection(('127.0.0.1', {port}), timeout=5); print('connected')\n\
         except OSError as e:\n    print('errno', e.errno)\n"
    )
}

/// True when `l` has a connection waiting (someone reached it).
fn was_reached(l: &TcpListener) -> bool {
    match l.accept() {
        Ok(_) => true,
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(e) => panic!("accept: {e}"),
    }
}

fn assert_isolation(r: &serde_json::Value, requested: &str, enforced: serde_json::Value) {
    let iso = &r["isolation"];
    assert_eq!(iso["requested"]["network"], requested, "{r}");
    assert_eq!(iso["enforced"]["network"], enforced, "{r}");
    assert_eq!(iso["not_enforced"], json!([]), "{r}");
}

fn host_loopback_unreachable(h: &Harness) {
    let (l, port) = host_listener();
    let ran = h.run(
        &["--timeout", "60s"],
        &[PYTHON, "-c", &connect_script(port)],
    );
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    // The run's own loopback has nothing on that port: the kernel refuses.
    assert_eq!(
        ran.stdout.trim(),
        format!("errno {}", libc::ECONNREFUSED),
        "{}",
        ran.stderr
    );
    assert!(!was_reached(&l), "the host's listener was reached");
    assert_isolation(ran.rec(), "none", json!("loopback"));
}

fn own_loopback_works(h: &Harness) {
    // A server process and a client process of the run talk over 127.0.0.1 (as a
    // notebook's kernel and its client do).
    let server = "import socket, sys\n\
        s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n\
        print(s.getsockname()[1], flush=True)\n\
        c, _ = s.accept(); c.sendall(c.recv(16)[::-1]); c.close()\n";
    let client = format!(
        "import socket, subprocess, sys\n\
         srv = subprocess.Popen([sys.executable, '-c', {server:?}], stdout=subprocess.PIPE)\n\
         port = int(srv.stdout.readline())\n\
         c = socket.create_connection(('127.0.0.1', port), timeout=5)\n\
         c.sendall(b'loop'); print(c.recv(16).decode()); srv.wait()\n"
    );
    let ran = h.run(&["--timeout", "60s"], &[PYTHON, "-c", &client]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(ran.stdout.trim(), "pool", "{}", ran.stderr);
    assert_isolation(ran.rec(), "none", json!("loopback"));
}

fn only_loopback(h: &Harness) {
    // /proc/net/dev lists the interfaces of the reader's network namespace; `ip link`
    // asks the kernel over netlink. (/sys/class/net still shows the host's sysfs: see
    // the README.)
    let ran = h.run(&[], &["sh", "-c", "tail -n +3 /proc/net/dev"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let names: Vec<&str> = ran
        .stdout
        .lines()
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(names, ["lo"], "{}", ran.stdout);
    if std::path::Path::new("/usr/sbin/ip").exists() || std::path::Path::new("/sbin/ip").exists() {
        let ran = h.run(&[], &["ip", "-o", "link"]);
        assert_eq!(ran.code, 0, "{}", ran.stderr);
        let lines: Vec<&str> = ran.stdout.lines().collect();
        assert_eq!(lines.len(), 1, "{}", ran.stdout);
        assert!(
            lines[0].starts_with("1: lo: <LOOPBACK,UP"),
            "{}",
            ran.stdout
        );
    }
}

fn host_network(h: &Harness) {
    let (l, port) = host_listener();
    let ran = h.run(
        &["--network", "host", "--timeout", "60s"],
        &[PYTHON, "-c", &connect_script(port)],
    );
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(ran.stdout.trim(), "connected", "{}", ran.stderr);
    assert!(was_reached(&l), "the host's listener saw no connection");
    assert_isolation(ran.rec(), "host", json!("host"));
}

fn bad_value(h: &Harness) {
    let ran = h.run(&["--network", "loopback"], &["true"]);
    assert_eq!(ran.code, 125);
    assert_eq!(
        ran.stderr.trim(),
        "corral: invalid network \"loopback\": use \"none\" (its own network namespace, \
         loopback only) or \"host\" (the host's network)"
    );
    assert_eq!(h.run_cgroups(), Vec::<std::path::PathBuf>::new());
}

/// One test per scenario and backend: `cgroup2::host_loopback_unreachable`, ...
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
                if !rustix::process::geteuid().is_root() && stringify!($name) != "bad_value" {
                    // An ordinary user gets no namespace: see `rlimit_as_ordinary_user`.
                    corral_testkit::skip(
                        &format!("{} {}", stringify!($backend), stringify!($name)),
                        &common::Missing::new(common::Feature::Root, "a network namespace needs root"),
                    );
                    return;
                }
                super::$name(&h);
            } )*
        }
    };
}

scenarios!(
    host_loopback_unreachable,
    own_loopback_works,
    only_loopback,
    host_network,
    bad_value,
);

/// corral as an ordinary user (as `nobody` when the test runs as root) on the rlimit
/// backend: no network namespace, reported with its reason; `--require-isolation`
/// refuses; `--network host` is what was asked for and is enforced.
#[test]
fn rlimit_as_ordinary_user() {
    let h = harness_or_skip!("rlimit", "netuser");
    // (The harness's scratch directory opens to that user; the host's user namespaces
    // are made to look forbidden: the rootless tests below cover them.)
    let run = |args: &[&str]| {
        let args = [&["--fs", "host", "--pid-ns", "off"][..], args].concat();
        common::run_as_ordinary_user_without_userns(
            &h,
            &format!("user-{}", args.len()),
            &args,
            &["true"],
        )
    };
    let ran = run(&[]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let iso = &ran.rec()["isolation"];
    assert_eq!(iso["requested"]["network"], "none");
    assert!(iso["enforced"]["network"].is_null(), "{iso}");
    let gaps = iso["not_enforced"].as_array().unwrap();
    assert_eq!(gaps.len(), 1, "{iso}");
    assert_eq!(gaps[0]["layer"], "network");
    let why = gaps[0]["why"].as_str().unwrap();
    assert!(why.contains("CAP_SYS_ADMIN"), "{why}");
    assert!(why.contains("--network host"), "{why}");
    assert!(
        ran.notes().contains("Isolation not applied: network ("),
        "{}",
        ran.notes()
    );

    // Only the network is refused (the limits are ones rlimit enforces).
    let ran = run(&["--require-isolation", "--cpus", "max", "--pids", "max"]);
    assert_eq!(ran.code, 125);
    assert!(
        ran.stderr.contains("refusing to run")
            && ran.stderr.contains("this host cannot apply: network (")
            && !ran.stderr.contains("backend cannot enforce"),
        "{}",
        ran.stderr
    );

    let ran = run(&[
        "--network",
        "host",
        "--require-isolation",
        "--cpus",
        "max",
        "--pids",
        "max",
    ]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_isolation(ran.rec(), "host", json!("host"));
}

/// corral as an ordinary user on a host that allows unprivileged user namespaces: the
/// run gets its own loopback-only network through its own user namespace; the host's
/// listener is unreachable (the kernel refuses the connection).
#[test]
fn rlimit_as_ordinary_user_through_a_user_namespace() {
    let h = harness_or_skip!("rlimit", "netuserns");
    if let Err(why) = common::userns_allowed() {
        corral_testkit::skip_control("rlimit_as_ordinary_user_through_a_user_namespace", &why);
        return;
    }
    let (l, port) = host_listener();
    let ran = common::run_as_ordinary_user(
        &h,
        "netns",
        &["--fs", "host", "--pid-ns", "off", "--timeout", "60s"],
        &[PYTHON, "-c", &connect_script(port)],
    );
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(
        ran.stdout.trim(),
        format!("errno {}", libc::ECONNREFUSED),
        "{}",
        ran.stderr
    );
    assert!(!was_reached(&l), "the host's listener was reached");
    assert_isolation(ran.rec(), "none", json!("loopback"));
    assert_eq!(
        ran.rec()["isolation"]["enforced"]["user_namespace"],
        true,
        "{}",
        ran.rec()
    );
    // --require-isolation is satisfied.
    let ran = common::run_as_ordinary_user(
        &h,
        "netns-req",
        &[
            "--fs",
            "host",
            "--pid-ns",
            "off",
            "--require-isolation",
            "--cpus",
            "max",
            "--pids",
            "max",
        ],
        &["true"],
    );
    assert_eq!(ran.code, 0, "{}", ran.stderr);
}
