//! The peers corral is compared with, each configured with the same limits where it
//! supports them, and skipped with a printed reason where it cannot run here.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Result};
use corral_run::BackendKind;

use crate::ctx::{find_tool, Ctx};
use crate::procs::{probe, time_cmd};

/// One command line (program and arguments); `{n}` in any word is replaced by the
/// repetition number.
pub type Argv = Vec<String>;

/// A tool invocation measured as a whole: one or more commands run one after the
/// other and timed together, with optional set-up and tear-down outside the timing.
pub struct Peer {
    /// Short name for the table.
    pub name: String,
    /// Exactly what runs, with its limits.
    pub config: String,
    steps: Result<Vec<Argv>, String>,
    setup: Vec<Argv>,
    teardown: Vec<Argv>,
    /// Directories removed (untimed) after every repetition and at tear-down, where
    /// they still exist: what `cgdelete` leaves behind (see [`launch_peers`]).
    leftovers: Vec<String>,
    counter: usize,
    torn_down: bool,
    /// Measured repetitions at most (`None`: as many as the others).
    pub max_runs: Option<usize>,
}

/// Removes the leftovers: with `Some(n)` the per-repetition ones (patterns with
/// `{n}`), with `None` the fixed ones.
fn remove_leftovers(dirs: &[String], n: Option<usize>) {
    for d in dirs.iter().filter(|d| d.contains("{n}") == n.is_some()) {
        let n = n.unwrap_or(0);
        let d = d.replace("{n}", &n.to_string());
        if Path::new(&d).exists() {
            if let Err(e) = std::fs::remove_dir(&d) {
                eprintln!("corral-bench: cannot remove {d}: {e}");
            }
        }
    }
}

fn argv(c: &Command) -> Argv {
    std::iter::once(c.get_program())
        .chain(c.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect()
}

fn words(s: &[&str]) -> Argv {
    s.iter().map(|w| w.to_string()).collect()
}

fn command(a: &Argv, n: usize) -> Command {
    let a: Vec<String> = a.iter().map(|w| w.replace("{n}", &n.to_string())).collect();
    let mut c = Command::new(&a[0]);
    c.args(&a[1..]);
    c
}

impl Peer {
    /// A single command.
    pub fn cmd(name: &str, config: String, c: Result<Command, String>) -> Peer {
        Peer::steps(name, config, c.map(|c| vec![argv(&c)]))
    }

    /// Steps run one after the other, or why the peer cannot run here.
    fn steps(name: &str, config: String, steps: Result<Vec<Argv>, String>) -> Peer {
        Peer {
            name: name.into(),
            config,
            steps,
            setup: Vec::new(),
            teardown: Vec::new(),
            leftovers: Vec::new(),
            counter: 0,
            torn_down: true,
            max_runs: None,
        }
    }

    /// Runs the set-up and one probe run with output captured; the error is the
    /// reason the peer is skipped.
    pub fn probe(&mut self, ctx: &Ctx) -> Result<(), String> {
        let steps = self.steps.clone()?;
        for s in &self.setup {
            probe(&mut command(s, 0), ctx.cmd_limit()).map_err(|e| format!("set-up: {e:#}"))?;
        }
        self.torn_down = false;
        for s in &steps {
            if let Err(e) = probe(&mut command(s, usize::MAX), ctx.cmd_limit()) {
                remove_leftovers(&self.leftovers, Some(usize::MAX));
                self.teardown();
                return Err(format!("{e:#}"));
            }
        }
        remove_leftovers(&self.leftovers, Some(usize::MAX));
        Ok(())
    }

    /// One timed repetition: every step, spawned and waited for, in milliseconds.
    pub fn time_once(&mut self, ctx: &Ctx) -> Result<f64> {
        let steps = self.steps.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
        self.counter += 1;
        let t = Instant::now();
        for s in steps {
            let (_, st) = time_cmd(&mut command(s, self.counter), ctx.cmd_limit())?;
            if !st.success() {
                remove_leftovers(&self.leftovers, Some(self.counter));
                bail!("{}: {:?} failed: {st}", self.name, s);
            }
        }
        let ms = t.elapsed().as_secs_f64() * 1e3;
        remove_leftovers(&self.leftovers, Some(self.counter));
        Ok(ms)
    }

    /// Runs the tear-down (once).
    pub fn teardown(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        for s in &self.teardown {
            if let Err(e) = probe(&mut command(s, 0), std::time::Duration::from_secs(60)) {
                eprintln!("corral-bench: {} tear-down: {e:#}", self.name);
            }
        }
        remove_leftovers(&self.leftovers, None);
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// The cgroup-tools controller list and limit settings for this backend.
fn cgexec_settings(ctx: &Ctx) -> Result<(String, Vec<String>, Vec<std::path::PathBuf>), String> {
    let layout = corral_cgroup::layout::Layout::cached();
    let mounts: Vec<std::path::PathBuf> = match ctx.kind {
        BackendKind::Cgroup1 => ["memory", "pids", "cpu"]
            .iter()
            .filter_map(|c| layout.v1.get(*c))
            .map(|m| m.mount_point.clone())
            .collect(),
        _ => layout.v2.iter().map(|m| m.mount_point.clone()).collect(),
    };
    let (ctrl, sets) = match ctx.kind {
        BackendKind::Cgroup1 => {
            let mut r = vec!["memory.limit_in_bytes=1073741824".to_string()];
            let memsw = layout
                .v1
                .get("memory")
                .is_some_and(|m| m.mount_point.join("memory.memsw.limit_in_bytes").exists());
            if memsw {
                r.push("memory.memsw.limit_in_bytes=1073741824".into());
            }
            r.push("pids.max=512".into());
            Ok(("memory,pids,cpu".to_string(), r))
        }
        BackendKind::Cgroup2 => Ok((
            "memory,pids,cpu".to_string(),
            vec![
                "memory.max=1073741824".into(),
                "memory.swap.max=0".into(),
                "pids.max=512".into(),
            ],
        )),
        _ => Err("the rlimit backend has no cgroup to compare with".to_string()),
    }?;
    Ok((ctrl, sets, mounts))
}

/// The launch peers: cgexec (a pre-made group, and create+set+exec+delete per run),
/// systemd-run --scope, runexec without and with its container.
pub fn launch_peers(ctx: &Ctx) -> Vec<Peer> {
    let mut out = Vec::new();
    let group = format!("{}-cgexec", crate::ctx::root_name());
    let tools = find_tool(
        "cgexec",
        "apt-get install cgroup-tools, or bench/prepare-peers.sh",
    )
    .and_then(|_| cgexec_settings(ctx));
    match tools {
        Ok((ctrl, sets, mounts)) => {
            let dirs = |name: &str| -> Vec<String> {
                mounts
                    .iter()
                    .map(|m| m.join(name).display().to_string())
                    .collect()
            };
            let mut cgset = words(&["cgset"]);
            for s in &sets {
                cgset.push("-r".into());
                cgset.push(s.clone());
            }
            let spec = format!("{ctrl}:{group}");
            let mut pre_set = cgset.clone();
            pre_set.push(group.clone());
            out.push(Peer {
                name: "cgexec (group made once)".into(),
                config: format!(
                    "cgcreate -g {spec}; {} (once, untimed); timed: cgexec -g {spec} /bin/true; \
                     no cpu quota",
                    pre_set.join(" ")
                ),
                steps: Ok(vec![words(&["cgexec", "-g", &spec, "/bin/true"])]),
                setup: vec![words(&["cgcreate", "-g", &spec]), pre_set],
                teardown: vec![words(&["cgdelete", "-g", &spec])],
                leftovers: dirs(&group),
                counter: 0,
                torn_down: true,
                max_runs: None,
            });
            let spec_n = format!("{ctrl}:{group}-{{n}}");
            let mut set_n = cgset;
            set_n.push(format!("{group}-{{n}}"));
            out.push(Peer {
                name: "cgcreate+cgset+cgexec+cgdelete".into(),
                config: format!(
                    "per run, timed together: cgcreate -g {spec_n}; {}; cgexec -g {spec_n} \
                     /bin/true; cgdelete -g {spec_n} (4 processes, like corral's per-run \
                     cgroup); untimed: rmdir of what cgdelete left (libcgroup 2.0.2 removes only \
                     the first hierarchy's group when given several controllers)",
                    set_n.join(" ")
                ),
                steps: Ok(vec![
                    words(&["cgcreate", "-g", &spec_n]),
                    set_n,
                    words(&["cgexec", "-g", &spec_n, "/bin/true"]),
                    words(&["cgdelete", "-g", &spec_n]),
                ]),
                setup: Vec::new(),
                teardown: Vec::new(),
                leftovers: dirs(&format!("{group}-{{n}}")),
                counter: 0,
                torn_down: true,
                max_runs: None,
            });
        }
        Err(why) => out.push(Peer::cmd("cgexec", "cgroup-tools".into(), Err(why))),
    }

    let sd = words(&[
        "systemd-run",
        "--scope",
        "--quiet",
        "-p",
        "MemoryMax=1G",
        "-p",
        "MemorySwapMax=0",
        "-p",
        "TasksMax=512",
        "/bin/true",
    ]);
    let sd_ok = if !Path::new("/run/systemd/system").is_dir() {
        Err(
            "systemd is not the init system here (no /run/systemd/system); measured in \
             `cargo xtask vm --systemd`"
                .to_string(),
        )
    } else {
        find_tool("systemd-run", "systemd").map(|_| ())
    };
    out.push(Peer::steps(
        "systemd-run --scope",
        sd.join(" "),
        sd_ok.map(|_| vec![sd.clone()]),
    ));

    // On cgroup v2 BenchExec puts each run into a systemd scope of its own, which it
    // asks the *user* manager for (through pystemd), root included: with systemd as
    // PID 1 the harness starts root's user manager (untimed, once) and points runexec
    // at its bus, as BenchExec's installation guide has users do.
    let user_manager = Path::new("/run/systemd/system").is_dir()
        && ctx.kind == BackendKind::Cgroup2
        && rustix::process::geteuid().is_root();
    let (env_prefix, setup): (Vec<String>, Vec<Argv>) = if user_manager {
        (
            words(&[
                "env",
                "XDG_RUNTIME_DIR=/run/user/0",
                "DBUS_SESSION_BUS_ADDRESS=unix:path=/run/user/0/bus",
            ]),
            vec![words(&["systemctl", "start", "user@0.service"])],
        )
    } else {
        (Vec::new(), Vec::new())
    };

    for (name, mode) in [
        ("runexec --no-container", vec!["--no-container"]),
        (
            "runexec (container)",
            vec!["--container", "--read-only-dir", "/"],
        ),
    ] {
        let cmd = ctx.runexec.clone().map(|r| {
            let mut a = env_prefix.clone();
            a.push(r.display().to_string());
            a.extend(mode.iter().map(|s| s.to_string()));
            a.extend(words(&[
                "--quiet",
                "--memlimit",
                "1073741824",
                "--output",
                "/dev/null",
                "--",
                "/bin/true",
            ]));
            a
        });
        let config = match &cmd {
            Ok(a) => format!(
                "{}{} (no pids limit: BenchExec has none)",
                if setup.is_empty() {
                    ""
                } else {
                    "systemctl start user@0.service (once, untimed); timed: "
                },
                a.join(" ")
            ),
            Err(_) => "runexec".into(),
        };
        out.push(Peer {
            name: name.into(),
            config,
            steps: cmd.map(|a| vec![a]),
            setup: setup.clone(),
            teardown: Vec::new(),
            leftovers: Vec::new(),
            counter: 0,
            torn_down: true,
            max_runs: ctx.opts.runexec_runs,
        });
    }
    out
}

/// What the launch table must say about the peers' configuration.
pub fn launch_notes() -> Vec<String> {
    vec![
        "Limits: corral memory 1 GiB, swap 0, pids 512, no CPU quota, no timeout; \
         cgexec the same values written with cgset; systemd-run MemoryMax=1G \
         MemorySwapMax=0 TasksMax=512; runexec --memlimit 1 GiB (BenchExec has no \
         process limit). runexec's container needs `--read-only-dir /` here: its default \
         overlay of / fails on this host's root file system."
            .into(),
    ]
}
