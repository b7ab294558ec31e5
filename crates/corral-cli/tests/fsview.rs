//! The file-system layer: by default (`--fs read-only`) a run sees the host read-only;
//! writable are its working directory, each `--rw` path and a private `/tmp` and
//! `/dev/shm` (whose pages count against its memory budget); `--hide` covers a path
//! with an empty read-only directory; `--fs host` writes the host.
//!
//! Run against every backend this host offers: `cgroup1` natively here, `cgroup2` in
//! the VM, `rlimit` anywhere. Each scenario asserts the kernel's answer (the errno from
//! inside the run, what appeared on the host), not only what corral wrote. As root, an
//! extra test runs corral as an ordinary user (`nobody`) on the rlimit backend, which
//! cannot build the view: the layer is then reported not enforced, with its reason.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Harness, PYTHON};
use serde_json::json;

/// A unique name for files the runs try to create on the host.
fn unique(what: &str) -> String {
    format!("corral-fsview-{what}-{}", std::process::id())
}

/// A directory for the test's files outside the host's `/tmp` (which the run's private
/// `/tmp` covers): the target directory's, unless the checkout itself lies under `/tmp`
/// (as a CI clone may), then `/var/tmp`.
fn outside_tmp() -> PathBuf {
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let canon = std::fs::canonicalize(&target).unwrap_or(target.clone());
    if canon.starts_with("/tmp") {
        PathBuf::from("/var/tmp")
    } else {
        target
    }
}

/// A directory `name` in the test's scratch directory (under `/tmp` on these hosts).
fn scratch(h: &Harness, name: &str) -> PathBuf {
    let d = h.tmp().join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Python that tries each `(label, path)` as a new file and prints `label errno N`
/// or `label written`.
fn create_script(targets: &[(&str, &Path)]) -> String {
    let mut s = String::from("import os\n");
    for (label, p) in targets {
        s += &format!(
            "try:\n    os.close(os.open({p:?}, os.O_CREAT | os.O_WRONLY, 0o644)); print('{label} written')\n\
             except OSError as e:\n    print('{label} errno', e.errno)\n",
            p = p.display().to_string()
        );
    }
    s
}

fn lines(out: &str) -> Vec<&str> {
    out.lines().collect()
}

fn host_is_read_only(h: &Harness) {
    let work = scratch(h, "work");
    let bin = std::fs::canonicalize(common::corral_bin()).unwrap();
    let targets: Vec<(&str, PathBuf)> = vec![
        ("etc", PathBuf::from("/etc").join(unique("etc"))),
        ("usr", PathBuf::from("/usr").join(unique("usr"))),
        ("var_tmp", PathBuf::from("/var/tmp").join(unique("vartmp"))),
    ];
    let t: Vec<(&str, &Path)> = targets.iter().map(|(l, p)| (*l, p.as_path())).collect();
    // The corral binary: its mode cannot change and it cannot be opened for writing
    // (a running binary may answer ETXTBSY before EROFS, so chmod is the probe).
    let script = format!(
        "{}import os\ntry:\n    os.chmod({b:?}, os.stat({b:?}).st_mode & 0o7777); print('bin changed')\n\
         except OSError as e:\n    print('bin errno', e.errno)\n",
        create_script(&t),
        b = bin.display().to_string()
    );
    let ran = h.run(
        &["--cwd", work.to_str().unwrap(), "--timeout", "60s"],
        &[PYTHON, "-c", &script],
    );
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let erofs = libc::EROFS;
    assert_eq!(
        lines(&ran.stdout),
        [
            format!("etc errno {erofs}"),
            format!("usr errno {erofs}"),
            format!("var_tmp errno {erofs}"),
            // A checkout under /tmp (a CI clone) puts the binary where the run's private
            // /tmp covers it: out of reach altogether.
            format!(
                "bin errno {}",
                if bin.starts_with("/tmp") {
                    libc::ENOENT
                } else {
                    erofs
                }
            ),
        ],
        "{}",
        ran.stderr
    );
    for (_, p) in &targets {
        assert!(!p.exists(), "{} appeared on the host", p.display());
    }
    let fs = &ran.rec()["isolation"];
    // (The harness passes its scratch directory as --rw to every run.)
    let tmp = h.tmp().display().to_string();
    assert_eq!(
        fs["requested"]["fs"],
        json!({"mode": "read-only", "rw": [tmp], "hide": []})
    );
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap().display().to_string();
    let mut writable = vec![json!(canon(&work)), json!(canon(h.tmp())), json!("/tmp")];
    if Path::new("/dev/shm").is_dir() {
        writable.push(json!("/dev/shm"));
    }
    assert_eq!(
        fs["enforced"]["fs"],
        json!({"mode": "read-only", "writable": writable, "hidden": [], "private_tmp": true})
    );
    assert_eq!(fs["not_enforced"], json!([]), "{fs}");
    h.assert_clean(&ran);
}

fn working_directory_and_rw_are_writable(h: &Harness) {
    let work = scratch(h, "work");
    // A --rw path outside the working directory and outside /tmp's private view.
    let out = tempfile::tempdir_in(outside_tmp()).unwrap();
    let out_file = out.path().join("result.txt");
    let script = format!(
        "echo here > here.txt && echo data > {} && echo ok",
        out_file.display()
    );
    let ran = h.run(
        &[
            "--cwd",
            work.to_str().unwrap(),
            "--rw",
            out.path().to_str().unwrap(),
        ],
        &["sh", "-c", &script],
    );
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(ran.stdout.trim(), "ok");
    assert_eq!(
        std::fs::read_to_string(work.join("here.txt")).unwrap(),
        "here\n"
    );
    assert_eq!(std::fs::read_to_string(&out_file).unwrap(), "data\n");
    let rw = std::fs::canonicalize(out.path()).unwrap();
    let enforced = &ran.rec()["isolation"]["enforced"]["fs"];
    assert_eq!(
        // The working directory, the harness's scratch directory (--rw), then ours.
        enforced["writable"][2],
        rw.display().to_string(),
        "{enforced}"
    );
    assert_eq!(
        ran.rec()["isolation"]["requested"]["fs"]["rw"],
        json!([h.tmp(), out.path()])
    );
    // A relative --rw path is relative to the working directory.
    std::fs::create_dir_all(work.join("sub")).unwrap();
    let ran = h.run(
        &["--cwd", work.to_str().unwrap(), "--rw", "sub"],
        &["sh", "-c", "echo s > sub/s.txt"],
    );
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(work.join("sub/s.txt").exists());
}

fn private_tmp_and_shm(h: &Harness) {
    let name = unique("tmp");
    let script = format!(
        "echo t > /tmp/{name} && echo s > /dev/shm/{name} && ls /tmp/{name} /dev/shm/{name}"
    );
    let ran = h.run(&[], &["sh", "-c", &script]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(
        lines(&ran.stdout),
        [format!("/dev/shm/{name}"), format!("/tmp/{name}")]
    );
    // Invisible on the host, and gone for the next run.
    assert!(!Path::new("/tmp").join(&name).exists());
    assert!(!Path::new("/dev/shm").join(&name).exists());
    let ran = h.run(
        &[],
        &["sh", "-c", &format!("ls /tmp/{name} /dev/shm/{name}")],
    );
    assert_ne!(ran.code, 0, "{}", ran.stdout);
    assert!(ran.stderr.contains("No such file"), "{}", ran.stderr);
}

/// Filling the private /tmp beyond the memory budget: its pages are the run's, and
/// the kernel's OOM killer ends it.
fn full_tmp_is_oom(h: &Harness) {
    let ran = h.run(
        &["--memory", "64M", "--timeout", "60s"],
        &["dd", "if=/dev/zero", "of=/tmp/fill", "bs=1M", "count=200"],
    );
    assert_eq!(ran.reason(), "oom", "{}", ran.rec());
    assert_eq!(ran.code, 137);
    assert!(ran.num("/events/oom_kill") >= 1.0, "{}", ran.rec());
    h.assert_clean(&ran);
}

fn hidden_paths(h: &Harness) {
    // Outside /tmp, whose host contents the private /tmp hides already.
    let outside = tempfile::tempdir_in(outside_tmp()).unwrap();
    let secret = outside.path().join("secret");
    std::fs::create_dir(&secret).unwrap();
    std::fs::write(secret.join("key"), "s3cret").unwrap();
    let file = outside.path().join("token");
    std::fs::write(&file, "t0ken").unwrap();
    let script = format!(
        "import os\nprint(os.listdir({d:?}))\nprint(repr(open({f:?}).read()))\n\
         try:\n    open({d:?} + '/x', 'w'); print('wrote')\nexcept OSError as e:\n    print('errno', e.errno)\n",
        d = secret.display().to_string(),
        f = file.display().to_string()
    );
    let ran = h.run(
        &[
            "--hide",
            secret.to_str().unwrap(),
            "--hide",
            file.to_str().unwrap(),
        ],
        &[PYTHON, "-c", &script],
    );
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(
        lines(&ran.stdout),
        ["[]", "''", &format!("errno {}", libc::EROFS)]
    );
    let fs = &ran.rec()["isolation"]["enforced"]["fs"];
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap().display().to_string();
    assert_eq!(fs["hidden"], json!([canon(&secret), canon(&file)]), "{fs}");
    // Untouched on the host.
    assert_eq!(
        std::fs::read_to_string(secret.join("key")).unwrap(),
        "s3cret"
    );
    // Under --fs host too.
    let ran = h.run(
        &["--fs", "host", "--hide", secret.to_str().unwrap()],
        &["ls", "-A", secret.to_str().unwrap()],
    );
    assert_eq!((ran.code, ran.stdout.as_str()), (0, ""), "{}", ran.stderr);
}

fn host_fs_writes_the_host(h: &Harness) {
    let target = h.tmp().join(unique("host"));
    let ran = h.run(
        &["--fs", "host"],
        &["sh", "-c", &format!("echo h > {}", target.display())],
    );
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "h\n");
    let iso = &ran.rec()["isolation"];
    assert_eq!(iso["requested"]["fs"]["mode"], "host");
    assert_eq!(
        iso["enforced"]["fs"],
        json!({"mode": "host", "writable": ["/"], "hidden": [], "private_tmp": false})
    );
    // --isolation off is the host's files too.
    let ran = h.run(
        &["--isolation", "off"],
        &["sh", "-c", &format!("echo o > {}", target.display())],
    );
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "o\n");
}

fn home_is_private_and_writable(h: &Harness) {
    // (The harness sets XDG_CONFIG_HOME for corral: it points into the read-only host.)
    let script = "echo \"$HOME $TMPDIR ${XDG_CONFIG_HOME-unset}\"; stat -c '%a' \"$HOME\"; \
                  mkdir -p \"$HOME/.cache/pip\" && echo cache > \"$HOME/.cache/pip/x\" && echo ok";
    let ran = h.run(&[], &["sh", "-c", script]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(lines(&ran.stdout), ["/tmp/home /tmp unset", "700", "ok"]);
    assert!(!Path::new("/tmp/home/.cache/pip/x").exists());
    // An explicit HOME wins.
    let ran = h.run(&["--env", "HOME=/nonexistent"], &["sh", "-c", "echo $HOME"]);
    assert_eq!(ran.stdout.trim(), "/nonexistent");
    // matplotlib writes its cache under HOME: it imports unchanged where installed.
    let has_mpl = Command::new(PYTHON)
        .args(["-c", "import matplotlib"])
        .status()
        .is_ok_and(|s| s.success());
    if has_mpl {
        let ran = h.run(
            &["--timeout", "120s"],
            &[
                PYTHON,
                "-c",
                "import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt; \
                 plt.plot([1, 2]); plt.savefig('/tmp/p.png'); print('plotted')",
            ],
        );
        assert_eq!(ran.stdout.trim(), "plotted", "{}", ran.stderr);
    }
}

fn bad_paths_leave_nothing(h: &Harness) {
    let missing = h.tmp().join("no-such-dir");
    let ran = h.run(&["--rw", missing.to_str().unwrap()], &["true"]);
    assert_eq!(ran.code, 125);
    // One line (the rlimit backend adds its standing notes to the same sentence list).
    assert_eq!(ran.stderr.lines().count(), 1, "{}", ran.stderr);
    assert!(
        ran.stderr.starts_with(&format!(
            "corral: Could not start the command: --rw {}: no such file or directory.",
            missing.display()
        )),
        "{}",
        ran.stderr
    );
    assert_eq!(ran.reason(), "spawn_failed");
    assert_eq!(h.run_cgroups(), Vec::<PathBuf>::new());
    let ran = h.run(&["--hide", "relative/dir"], &["true"]);
    assert_eq!(ran.code, 125);
    assert_eq!(
        ran.stderr.trim(),
        "corral: invalid hidden path \"relative/dir\": must be an absolute path"
    );
    // A writable path inside a hidden one.
    let outer = scratch(h, "outer");
    let inner = scratch(h, "outer/inner");
    let ran = h.run(
        &[
            "--hide",
            outer.to_str().unwrap(),
            "--rw",
            inner.to_str().unwrap(),
        ],
        &["true"],
    );
    assert_eq!(ran.code, 125, "{}", ran.stderr);
    assert!(
        ran.stderr.contains("is inside the hidden path"),
        "{}",
        ran.stderr
    );
    assert_eq!(h.run_cgroups(), Vec::<PathBuf>::new());
}

/// One test per scenario and backend: `cgroup2::host_is_read_only`, ...
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
                    // An ordinary user gets no view: see `rlimit_as_ordinary_user`.
                    corral_testkit::skip(
                        &format!("{} {}", stringify!($backend), stringify!($name)),
                        &common::Missing::new(common::Feature::Root, "the read-only view needs root"),
                    );
                    return;
                }
                if stringify!($name) == "full_tmp_is_oom" && stringify!($backend) == "rlimit" {
                    // No memory cgroup: the rlimit backend cannot charge tmpfs pages.
                    return;
                }
                super::$name(&h);
            } )*
        }
    };
}

/// A file in another live run's working directory cannot be written: each run's view
/// leaves only its own paths writable.
fn another_runs_directory_is_out_of_reach(h: &Harness) {
    use std::os::unix::fs::PermissionsExt;
    // Outside /tmp (whose private copy would hide it anyway) and outside the harness's
    // `--rw` scratch directory: under the target directory.
    let base = tempfile::Builder::new()
        .prefix("corral-other-run")
        .tempdir_in(outside_tmp())
        .unwrap();
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (a, b) = (base.path().join("a"), base.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let data = a.join("data.csv");
    std::fs::write(&data, "mine\n").unwrap();
    // Run A works in `a` while run B tries to write A's file.
    let (mut ca, json_a) = h.command(
        &["--cwd", a.to_str().unwrap(), "--timeout", "60s"],
        &["sh", "-c", "echo up > started; sleep 3"],
    );
    let t = std::time::Instant::now();
    let child_a = ca.spawn().expect("corral starts");
    let started = a.join("started");
    let deadline = t + std::time::Duration::from_secs(20);
    while !started.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(started.exists(), "run A did not start");
    let script = format!(
        "try:\n    open({p:?}, 'w').write('theirs'); print('written')\n\
         except OSError as e:\n    print('errno', e.errno)\n",
        p = data.display().to_string()
    );
    let ran = h.run(&["--cwd", b.to_str().unwrap()], &[PYTHON, "-c", &script]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(
        ran.stdout.trim(),
        format!("errno {}", libc::EROFS),
        "{}",
        ran.stderr
    );
    assert_eq!(std::fs::read_to_string(&data).unwrap(), "mine\n");
    let ran_a = common::finish(child_a.wait_with_output().unwrap(), &json_a, t.elapsed());
    assert_eq!(ran_a.reason(), "exited", "{}", ran_a.rec());
}

scenarios!(
    host_is_read_only,
    another_runs_directory_is_out_of_reach,
    working_directory_and_rw_are_writable,
    private_tmp_and_shm,
    full_tmp_is_oom,
    hidden_paths,
    host_fs_writes_the_host,
    home_is_private_and_writable,
    bad_paths_leave_nothing,
);

/// corral as an ordinary user (as `nobody` when the test runs as root) on the rlimit
/// backend: no read-only view, reported with its reason; `--require-isolation`
/// refuses with the `fs` gap; `--fs host` is what was asked for and is enforced.
#[test]
fn rlimit_as_ordinary_user() {
    let h = harness_or_skip!("rlimit", "fsuser");
    // (The harness's scratch directory opens to that user; the host's user namespaces
    // are made to look forbidden: the rootless tests below cover them.)
    let run = |args: &[&str]| {
        let args = [&["--network", "host", "--pid-ns", "off"][..], args].concat();
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
    assert_eq!(iso["requested"]["fs"]["mode"], "read-only");
    assert!(iso["enforced"]["fs"].is_null(), "{iso}");
    let gaps = iso["not_enforced"].as_array().unwrap();
    assert_eq!(gaps.len(), 1, "{iso}");
    assert_eq!(gaps[0]["layer"], "fs");
    let why = gaps[0]["why"].as_str().unwrap();
    assert!(why.contains("CAP_SYS_ADMIN"), "{why}");
    assert!(why.contains("--fs host"), "{why}");
    assert!(
        ran.notes().contains("Isolation not applied: fs ("),
        "{}",
        ran.notes()
    );

    let ran = run(&["--require-isolation", "--cpus", "max", "--pids", "max"]);
    assert_eq!(ran.code, 125);
    assert!(
        ran.stderr.contains("refusing to run")
            && ran.stderr.contains("this host cannot apply: fs (")
            && !ran.stderr.contains("backend cannot enforce"),
        "{}",
        ran.stderr
    );

    let ran = run(&[
        "--fs",
        "host",
        "--require-isolation",
        "--cpus",
        "max",
        "--pids",
        "max",
    ]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let iso = &ran.rec()["isolation"];
    assert_eq!(iso["enforced"]["fs"]["mode"], "host");
    assert_eq!(iso["not_enforced"], json!([]));
}

/// corral as an ordinary user on a host that allows unprivileged user namespaces: the
/// run gets the read-only view through its own user namespace. `/etc` answers EROFS,
/// the working directory is writable (the file is the user's own), `/tmp` is private
/// (what the run writes there is not in the host's `/tmp`), a `--hide` path is empty,
/// and Landlock backs the view where the kernel has it.
#[test]
fn rlimit_as_ordinary_user_through_a_user_namespace() {
    let h = harness_or_skip!("rlimit", "fsuserns");
    if let Err(why) = common::userns_allowed() {
        corral_testkit::skip_control("rlimit_as_ordinary_user_through_a_user_namespace", &why);
        return;
    }
    let me: u32 = if rustix::process::geteuid().is_root() {
        65534
    } else {
        rustix::process::getuid().as_raw()
    };
    let tmp_name = format!("corral-rootless-{}", std::process::id());
    let hidden = h.tmp().join("hidden");
    std::fs::create_dir_all(hidden.join("secret")).unwrap();
    let script = format!(
        "import os, errno\n\
         def err(f):\n    try:\n        f(); return 'ok'\n    except OSError as e:\n        return errno.errorcode[e.errno]\n\
         print(err(lambda: os.close(os.open('/etc/corral-rootless-x', os.O_CREAT|os.O_WRONLY))))\n\
         open('mine', 'w').write('x'); print('cwd ok')\n\
         open('/tmp/{tmp_name}', 'w').write('x'); print('tmp ok')\n\
         print(os.listdir('{hidden}'))\n\
         print(os.environ['HOME'], os.access(os.environ['HOME'], os.W_OK))\n",
        hidden = hidden.display()
    );
    let ran = common::run_as_ordinary_user(
        &h,
        "fsview",
        &[
            "--network",
            "host",
            "--pid-ns",
            "off",
            "--hide",
            &hidden.display().to_string(),
        ],
        &[PYTHON, "-c", &script],
    );
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let out: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(
        out[..4],
        ["EROFS", "cwd ok", "tmp ok", "[]"],
        "{}",
        ran.stdout
    );
    assert!(out[4].ends_with(" True"), "{}", ran.stdout);
    assert!(!Path::new("/etc/corral-rootless-x").exists());
    // The run's /tmp was its own: nothing of it is in the host's.
    assert!(!Path::new("/tmp").join(&tmp_name).exists());
    // The file in the working directory is the user's own.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(h.tmp().join("mine")).unwrap().uid(), me);
    let iso = &ran.rec()["isolation"];
    assert_eq!(iso["enforced"]["fs"]["mode"], "read-only", "{iso}");
    assert_eq!(iso["enforced"]["fs"]["private_tmp"], true, "{iso}");
    assert_eq!(iso["enforced"]["user_namespace"], true, "{iso}");
    let landlock_gap = iso["not_enforced"]
        .as_array()
        .unwrap()
        .iter()
        .all(|g| g["layer"] == "landlock");
    assert!(landlock_gap, "{iso}");
    assert_eq!(
        iso["enforced"]["landlock"].is_null(),
        !iso["not_enforced"].as_array().unwrap().is_empty(),
        "{iso}"
    );
}
