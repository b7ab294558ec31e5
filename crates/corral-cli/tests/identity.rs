//! The identity layer: who a run is, what it keeps, and who owns what it writes.
//!
//! Run against every backend this host offers: `cgroup1` natively here, `cgroup2` in
//! the VM, `rlimit` anywhere. As root: a run is a dynamic uid (never 0, never shared by
//! two live runs) without capabilities; `/etc/shadow` is refused by the kernel; the
//! files it writes in its working directory belong to the directory's owner on disk
//! (root, or an ordinary user the test creates), through an id-mapped mount or, on a
//! file system without them (a ramfs here; tmpfs and 9p in the 6.1 VM), through the
//! fallback; it cannot leave a setuid or setgid file; `--user` picks a user. As an
//! ordinary user (`nobody`), corral's runs are that user and `--user` cannot name
//! anyone else.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Harness, PYTHON};

/// The default range's first uid (`CORRAL_UID_RANGE` is not set by the tests).
const RANGE_START: u64 = 70000;

fn user(r: &serde_json::Value) -> &serde_json::Value {
    &r["isolation"]["enforced"]["user"]
}

/// Runs `cmd` with `--cwd dir`.
fn run_in(h: &Harness, dir: &Path, args: &[&str], cmd: &[&str]) -> common::Ran {
    let mut a = vec!["--cwd", dir.to_str().unwrap()];
    a.extend_from_slice(args);
    h.run(&a, cmd)
}

fn dynamic_uid(h: &Harness) {
    let ran = h.run(
        &[],
        &[
            "sh",
            "-c",
            "id -u; id -g; id -G; grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb):' /proc/self/status",
        ],
    );
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let lines: Vec<&str> = ran.stdout.lines().collect();
    let uid: u64 = lines[0].parse().unwrap();
    assert!(uid > RANGE_START, "uid {uid}");
    // gid = the same number, and no other group (the fallback adds the run group).
    assert_eq!(lines[1], lines[0]);
    let u = user(ran.rec());
    assert_eq!(u["uid"], uid, "{u}");
    assert_eq!(u["gid"], uid, "{u}");
    assert_eq!(u["dynamic"], true);
    assert_eq!(u["root"], false);
    assert_eq!(u["name"], format!("corral-{uid}"));
    assert_eq!(ran.rec()["isolation"]["requested"]["user"], "default");
    assert_eq!(ran.rec()["isolation"]["enforced"]["capabilities"], "none");
    for l in &lines[3..] {
        let (k, v) = l.split_once(':').unwrap();
        assert_eq!(
            u64::from_str_radix(v.trim(), 16).unwrap(),
            0,
            "{k} in {}",
            ran.stdout
        );
    }
    assert_eq!(lines.len(), 8, "{}", ran.stdout);
    h.assert_clean(&ran);
}

fn concurrent_runs_differ(h: &Harness) {
    let start = |n| {
        let (mut c, json) = h.command(&[], &["sh", "-c", "id -u; sleep 1"]);
        let _ = n;
        (c.spawn().unwrap(), json)
    };
    let (a, b) = (start(0), start(1));
    let mut uids = Vec::new();
    for (child, json) in [a, b] {
        let t = std::time::Instant::now();
        let out = child.wait_with_output().unwrap();
        let ran = common::finish(out, &json, t.elapsed());
        assert_eq!(ran.code, 0, "{}", ran.stderr);
        uids.push(ran.stdout.trim().to_string());
    }
    assert_ne!(uids[0], uids[1]);
    assert!(uids.iter().all(|u| u != "0"), "{uids:?}");
}

fn shadow_refused(h: &Harness) {
    let ran = h.run(
        &[],
        &[
            PYTHON,
            "-c",
            "try:\n    open('/etc/shadow').read(); print('read')\nexcept OSError as e:\n    print('errno', e.errno)",
        ],
    );
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(ran.stdout.trim(), format!("errno {}", libc::EACCES));
}

/// Writes a file and a directory with a file in `dir`, then checks their owner on
/// the host; returns the run's record.
fn writes_belong_to(h: &Harness, dir: &Path, owner: u32, group: u32) -> common::Ran {
    let ran = run_in(
        h,
        dir,
        &[],
        &[
            "sh",
            "-c",
            "echo hi > f && mkdir d && echo x > d/g && ln -s /etc/passwd l && id -u",
        ],
    );
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    for f in ["f", "d", "d/g", "l"] {
        let m = std::fs::symlink_metadata(dir.join(f)).unwrap();
        assert_eq!(
            (m.uid(), m.gid()),
            (owner, group),
            "{f} in {}",
            dir.display()
        );
    }
    // The symlink's target was not touched.
    assert_eq!(std::fs::metadata("/etc/passwd").unwrap().uid(), 0);
    ran
}

fn files_belong_to_the_owner(h: &Harness) {
    // The test's own directory (a root-owned tempdir).
    let dir = h.tmp().join("root-owned");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let ran = writes_belong_to(h, &dir, 0, 0);
    let files = user(ran.rec())["files"].as_str().unwrap().to_string();
    assert!(
        ["idmapped", "restored"].contains(&files.as_str()),
        "{files}"
    );
    // The fallback gives the directory its group and mode back.
    let m = std::fs::metadata(&dir).unwrap();
    assert_eq!((m.gid(), m.mode() & 0o7777), (0, 0o700));

    // A directory of an ordinary user the test creates (and removes).
    let u = TestUser::new();
    let dir = h.tmp().join("user-owned");
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(u.uid), Some(u.gid)).unwrap();
    std::fs::set_permissions(h.tmp(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let ran = writes_belong_to(h, &dir, u.uid, u.gid);
    assert_eq!(user(ran.rec())["files"], files.as_str());
    assert_ne!(ran.stdout.trim(), u.uid.to_string());
    h.assert_clean(&ran);
}

/// A file system without id-mapped mounts (a ramfs): the fallback. The run writes as
/// its uid through corral's run group; afterwards everything belongs to the owner, and
/// the directory has its group and mode back.
fn fallback_restores_the_owner(h: &Harness) {
    let m = RamFs::new(h.tmp());
    std::fs::set_permissions(&m.0, std::fs::Permissions::from_mode(0o750)).unwrap();
    let ran = writes_belong_to(h, &m.0, 0, 0);
    assert_eq!(user(ran.rec())["files"], "restored");
    let meta = std::fs::metadata(&m.0).unwrap();
    assert_eq!((meta.gid(), meta.mode() & 0o7777), (0, 0o750));
}

/// The run cannot leave a setuid or setgid file in a root-owned working directory:
/// the seccomp policy refuses the bits in chmod and at creation; a copy of a setuid
/// program loses the bit.
fn no_setid_files(h: &Harness) {
    let dir = h.tmp().join("setid");
    std::fs::create_dir(&dir).unwrap();
    let script = "import os, shutil, stat\n\
        out = []\n\
        shutil.copy('/usr/bin/id', 'a'); shutil.copy('/usr/bin/id', 'b')\n\
        for f, m in [('a', 0o4755), ('b', 0o2755)]:\n\
        \x20   for call in (lambda: os.chmod(f, m), lambda: os.chmod(os.open(f, os.O_RDONLY), m)):\n\
        \x20       try: call(); out.append('changed')\n\
        \x20       except OSError as e: out.append(e.errno)\n\
        for m in (0o4755, 0o2755):\n\
        \x20   try: os.open('c%o' % m, os.O_CREAT | os.O_WRONLY, m); out.append('created')\n\
        \x20   except OSError as e: out.append(e.errno)\n\
        try: os.mknod('n', stat.S_IFREG | 0o4755); out.append('made')\n\
        except OSError as e: out.append(e.errno)\n\
        print(out)\n";
    let ran = run_in(h, &dir, &[], &[PYTHON, "-c", script]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let eperm = libc::EPERM;
    assert_eq!(
        ran.stdout.trim(),
        format!("[{eperm}, {eperm}, {eperm}, {eperm}, {eperm}, {eperm}, {eperm}]")
    );
    // A setuid-root program copied in by the run (the host made it setuid first).
    let suid = dir.join("suid");
    std::fs::copy("/usr/bin/id", &suid).unwrap();
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let ran = run_in(
        h,
        &dir,
        &[],
        &["sh", "-c", "cp -p suid copy; echo >> suid; true"],
    );
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let idmapped = user(ran.rec())["files"] == "idmapped";
    for e in std::fs::read_dir(&dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        if e.file_name() == "suid" && !idmapped {
            // The fallback's run cannot write root's file at all: nothing to clear.
            continue;
        }
        assert_eq!(
            m.mode() & 0o6000,
            0,
            "{} is setuid/setgid: {:o}",
            e.path().display(),
            m.mode()
        );
    }
}

fn setuid_gains_nothing(h: &Harness) {
    // A setuid-root `id` where the mount honours setuid (/var/tmp; the VM's /tmp is
    // nosuid), run by its path from inside the run.
    let d = tempfile::Builder::new()
        .prefix("corral-test-suid")
        .tempdir_in("/var/tmp")
        .unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let id = d.path().join("id");
    std::fs::copy("/usr/bin/id", &id).unwrap();
    std::fs::set_permissions(&id, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let ran = h.run(&[], &[id.to_str().unwrap(), "-u"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(ran.stdout.trim(), user(ran.rec())["uid"].to_string());
    assert_ne!(ran.stdout.trim(), "0");
    let ran = h.run(
        &[],
        &[
            "sh",
            "-c",
            &format!("{} -u; grep CapEff /proc/self/status", id.display()),
        ],
    );
    assert!(!ran.stdout.starts_with("0\n"), "{}", ran.stdout);
    assert!(
        ran.stdout.contains("CapEff:\t0000000000000000"),
        "{}",
        ran.stdout
    );
}

fn named_user(h: &Harness) {
    let ran = h.run(&["--user", "nobody"], &["sh", "-c", "id -u; id -g"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    assert_eq!(
        ran.stdout,
        format!("{}\n{}\n", nobody.uid, nobody.gid),
        "{}",
        ran.stderr
    );
    let u = user(ran.rec());
    assert_eq!(u["name"], "nobody");
    assert_eq!(u["dynamic"], false);
    assert_eq!(u["files"], "run-user");
    assert_eq!(ran.rec()["isolation"]["requested"]["user"], "nobody");

    // A group by number.
    let ran = h.run(&["--user", "nobody:0"], &["id", "-g"]);
    assert_eq!(ran.stdout.trim(), "0", "{}", ran.stderr);

    // root: root's uid, no capabilities at all, and the record says so.
    let ran = h.run(
        &["--user", "root"],
        &[
            "sh",
            "-c",
            "id -u; grep -E '^Cap(Eff|Prm|Bnd):' /proc/self/status",
        ],
    );
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(
        ran.stdout,
        "0\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\nCapBnd:\t0000000000000000\n"
    );
    assert_eq!(user(ran.rec())["root"], true);
    assert_eq!(ran.rec()["isolation"]["enforced"]["capabilities"], "none");
    assert!(
        ran.notes()
            .contains("Ran as root (uid 0): root's access to files, but no capabilities."),
        "{}",
        ran.notes()
    );
    // `--user dynamic` is what root gets by default.
    let ran = h.run(&["--user", "dynamic"], &["id", "-u"]);
    assert!(ran.stdout.trim().parse::<u64>().unwrap() > RANGE_START);
}

fn unknown_user(h: &Harness) {
    for (arg, msg) in [
        (
            "nosuchuser",
            "corral: unknown user \"nosuchuser\" (--user): no such user in the passwd database",
        ),
        (
            "nobody:nosuchgroup",
            "corral: unknown group \"nosuchgroup\" (--user USER:GROUP): no such group in the group database",
        ),
        (
            "a b",
            "corral: invalid user \"a b\": use \"default\", \"dynamic\" (a fresh uid for the run) or USER[:GROUP] (names or numbers)",
        ),
    ] {
        let ran = h.run(&["--user", arg], &["true"]);
        assert_eq!(ran.code, 125, "{arg}");
        assert_eq!(ran.stderr.trim(), msg);
        assert_eq!(h.run_cgroups(), Vec::<PathBuf>::new());
    }
}

/// One test per scenario and backend: `cgroup2::dynamic_uid`, ...
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
                if !rustix::process::geteuid().is_root() {
                    // An ordinary user's runs are its own: see `ordinary_user`.
                    corral_testkit::skip(
                        &format!("{} {}", stringify!($backend), stringify!($name)),
                        &common::Missing::new(common::Feature::Root, "dynamic uids need root"),
                    );
                    return;
                }
                super::$name(&h);
            } )*
        }
    };
}

scenarios!(
    dynamic_uid,
    concurrent_runs_differ,
    shadow_refused,
    files_belong_to_the_owner,
    fallback_restores_the_owner,
    no_setid_files,
    setuid_gains_nothing,
    named_user,
    unknown_user,
);

/// The rlimit backend cannot contain a process that starts its own session, but a
/// dynamic uid's leftovers do not outlive the run: corral ends every process of the uid
/// before giving it back.
#[test]
fn rlimit_leftovers_of_a_dynamic_uid_end() {
    let h = harness_or_skip!("rlimit", "leftovers");
    if !rustix::process::geteuid().is_root() {
        corral_testkit::skip(
            "rlimit leftovers",
            &common::Missing::new(common::Feature::Root, "dynamic uids need root"),
        );
        return;
    }
    // The host's pid namespace: in the run's own, the init's end would take the
    // escapee with it; this is about the uid's processes the rlimit backend cannot track.
    let ran = h.run(
        &["--pid-ns", "off"],
        &["sh", "-c", "setsid sleep 300 & echo $! > escapee.pid"],
    );
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let pid = common::read_pid(
        &h.tmp().join("escapee.pid"),
        std::time::Duration::from_secs(1),
    )
    .expect("the escapee wrote its pid");
    assert!(!common::alive(pid), "the escapee {pid} outlived its run");
}

/// corral run by an ordinary user (`nobody` when the test runs as root) on the rlimit
/// backend: the run is that user; `--user` naming itself is fine, anyone else is
/// refused with the reason.
#[test]
fn ordinary_user() {
    let h = harness_or_skip!("rlimit", "identuser");
    let root = rustix::process::geteuid().is_root();
    if root {
        std::fs::set_permissions(h.tmp(), std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let me = if root {
        65534
    } else {
        rustix::process::getuid().as_raw()
    };
    let run = |args: &[&str]| {
        let json = h.tmp().join(format!("user-{}.json", args.len()));
        let mut c = if root {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
            c.arg(common::corral_bin());
            c
        } else {
            Command::new(common::corral_bin())
        };
        c.args(["run", "--backend", "rlimit", "--json"])
            .arg(&json)
            .args(args)
            .args(["--", "id", "-u"])
            .env("XDG_CONFIG_HOME", h.tmp())
            .current_dir(h.tmp());
        let t = std::time::Instant::now();
        common::finish(c.output().expect("corral starts"), &json, t.elapsed())
    };
    let ran = run(&[]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(ran.stdout.trim(), me.to_string());
    let u = user(ran.rec());
    assert_eq!(
        (&u["uid"], &u["dynamic"]),
        (&me.into(), &false.into()),
        "{u}"
    );
    assert_eq!(ran.rec()["isolation"]["enforced"]["capabilities"], "none");

    let ran = run(&["--user", &me.to_string()]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(ran.stdout.trim(), me.to_string());

    for other in ["root", "dynamic"] {
        let ran = run(&["--user", other]);
        assert_eq!(ran.code, 125, "{other}");
        assert_eq!(
            ran.stderr.trim(),
            format!(
                "corral: --user {other}: only root can run a command as another user (corral \
                 runs as uid {me}; its runs run as that user, so leave --user out or name \
                 yourself)"
            )
        );
    }
}

/// An ordinary user created for one test and removed again (also when it fails).
struct TestUser {
    name: String,
    uid: u32,
    gid: u32,
}

impl TestUser {
    fn new() -> TestUser {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("corraltest{}x{n}", std::process::id() % 100_000);
        let _lock = USERDB.lock().unwrap_or_else(|e| e.into_inner());
        let _ = Command::new("userdel").arg(&name).output();
        let out = Command::new("useradd")
            .args(["--no-create-home", "--shell", "/usr/sbin/nologin", &name])
            .output()
            .expect("useradd runs");
        assert!(out.status.success(), "useradd: {out:?}");
        let u = nix::unistd::User::from_name(&name).unwrap().unwrap();
        TestUser {
            name,
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
        }
    }
}

/// useradd and userdel lock the user database: one at a time in this process.
static USERDB: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Drop for TestUser {
    fn drop(&mut self) {
        let _lock = USERDB.lock().unwrap_or_else(|e| e.into_inner());
        let _ = Command::new("userdel").arg(&self.name).output();
    }
}

/// A ramfs (no id-mapped mounts) mounted in a directory, unmounted again.
struct RamFs(PathBuf);

impl RamFs {
    fn new(parent: &Path) -> RamFs {
        let p = parent.join("ramfs");
        std::fs::create_dir(&p).unwrap();
        let st = Command::new("mount")
            .args(["-t", "ramfs", "corral-test", p.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(st.success(), "mount ramfs");
        RamFs(p)
    }
}

impl Drop for RamFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// corral as an ordinary user, its run in its own user namespace (where the host
/// allows one): the run keeps the user's uid and gid (mapped to themselves), has no
/// capabilities at all (effective, permitted, bounding, ambient), and cannot set
/// supplementary groups (`setgroups` is denied in the namespace).
#[test]
fn ordinary_user_in_a_user_namespace() {
    let h = harness_or_skip!("rlimit", "identuserns");
    if let Err(why) = common::userns_allowed() {
        corral_testkit::skip_control("ordinary_user_in_a_user_namespace", &why);
        return;
    }
    let (uid, gid) = if rustix::process::geteuid().is_root() {
        (65534, 65534)
    } else {
        (
            rustix::process::getuid().as_raw(),
            rustix::process::getgid().as_raw(),
        )
    };
    let ran = common::run_as_ordinary_user(
        &h,
        "ident",
        &[],
        &[
            "sh",
            "-c",
            "id -u; id -g; cat /proc/self/setgroups; \
             grep -E '^Cap(Eff|Prm|Bnd|Amb|Inh):' /proc/self/status | cut -f2 | sort -u",
        ],
    );
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let out: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(
        out,
        [
            uid.to_string().as_str(),
            gid.to_string().as_str(),
            "deny",
            "0000000000000000"
        ],
        "{}",
        ran.stdout
    );
    let iso = &ran.rec()["isolation"];
    assert_eq!(iso["enforced"]["user_namespace"], true, "{iso}");
    assert_eq!(iso["enforced"]["user"]["uid"], uid, "{iso}");
    assert_eq!(iso["enforced"]["capabilities"], "none", "{iso}");
}
