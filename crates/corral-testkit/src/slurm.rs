//! A private single-node Slurm for tests: `munged`, `slurmctld` and `slurmd` in the
//! foreground (`-D`), children of the test, with their own key, socket, ports, state
//! and spool under a temporary directory; nothing of the host's Slurm or munge is
//! read or touched. They are stopped by pid when the [`PrivateSlurm`] is dropped.
//!
//! `proctrack/linuxproc` and `task/none` need no cgroup plugin (Slurm supports cgroup
//! v1 or v2, not a hybrid layout); `JobAcctGatherType=jobacct_gather/linux` counts
//! what jobs use. Without `slurmdbd`, `sacct` does not answer and `scontrol show job`
//! knows a finished job for `MinJobAge`. The node claims 32 CPUs and 64 GB
//! (`SlurmdParameters=config_overrides`) so that a test's many small runs start
//! together on a small machine.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Feature, Missing};

/// The programs a private Slurm needs, all from `PATH` or `/usr/sbin`.
const PROGRAMS: [&str; 9] = [
    "munged",
    "slurmctld",
    "slurmd",
    "sbatch",
    "scontrol",
    "scancel",
    "squeue",
    "sinfo",
    "setpriv",
];

/// A running private Slurm.
pub struct PrivateSlurm {
    /// Its directory (configuration, state, logs).
    pub dir: PathBuf,
    /// Its `slurm.conf`: the value of `SLURM_CONF` for its clients.
    pub conf: PathBuf,
    /// The node's name (this host's short name).
    pub node: String,
    munged: Option<Child>,
    ctld: Option<Child>,
    slurmd: Option<Child>,
    ctld_starts: usize,
}

fn find(prog: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin"])
        .map(|d| Path::new(d).join(prog))
        .find(|p| p.is_file());
    found
}

/// Two free TCP ports (both held while the second is picked, so they differ).
fn free_ports() -> (u16, u16) {
    let bind = || TcpListener::bind("0.0.0.0:0").expect("a free TCP port");
    let (a, b) = (bind(), bind());
    let port = |l: &TcpListener| l.local_addr().expect("a bound port").port();
    (port(&a), port(&b))
}

fn short_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .split('.')
        .next()
        .unwrap_or("localhost")
        .to_string()
}

fn terminate(child: &mut Option<Child>) {
    let Some(mut c) = child.take() else {
        return;
    };
    let _ = Command::new("kill")
        .args(["-TERM", &c.id().to_string()])
        .status();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = c.kill();
    let _ = c.wait();
}

impl PrivateSlurm {
    /// Whether this machine can start one: root, the programs, the `munge` user.
    pub fn available() -> Result<(), Missing> {
        let missing: Vec<&str> = PROGRAMS.into_iter().filter(|p| find(p).is_none()).collect();
        if !missing.is_empty() {
            return Err(Missing::new(
                Feature::Slurm,
                format!(
                    "{} not installed (apt-get install slurm-wlm munge)",
                    missing.join(", ")
                ),
            ));
        }
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        if !passwd.lines().any(|l| l.starts_with("munge:")) {
            return Err(Missing::new(
                Feature::Slurm,
                "no munge user (apt-get install munge)",
            ));
        }
        Ok(())
    }

    /// Starts munge, the controller and the node under `dir` and waits until the node
    /// is idle. Panics with the daemons' logs when they do not come up.
    pub fn start(dir: &Path) -> PrivateSlurm {
        let node = short_hostname();
        let munge = dir.join("munge");
        std::fs::create_dir_all(&munge).unwrap();
        for d in ["state", "spool", "log"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let key = dir.join("munge.key");
        let ok = Command::new("dd")
            .args(["if=/dev/urandom", "bs=1024", "count=1", "status=none"])
            .arg(format!("of={}", key.display()))
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cannot write the munge key");
        let sh = |cmd: &str| {
            let st = Command::new("sh").args(["-c", cmd]).status().unwrap();
            assert!(st.success(), "{cmd}: {st}");
        };
        sh(&format!(
            "chown munge:munge {k} {m} && chmod 400 {k} && chmod 755 {m} {d}",
            k = key.display(),
            m = munge.display(),
            d = dir.display()
        ));
        let munged = Command::new(find("setpriv").unwrap())
            .args(["--reuid=munge", "--regid=munge", "--init-groups"])
            .arg(find("munged").unwrap())
            .arg("-F")
            .arg("-S")
            .arg(munge.join("sock"))
            .arg(format!("--key-file={}", key.display()))
            .arg(format!("--pid-file={}", munge.join("pid").display()))
            .arg(format!("--log-file={}", munge.join("log").display()))
            .arg(format!("--seed-file={}", munge.join("seed").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("log").join("munged.err")).unwrap())
            .spawn()
            .expect("munged starts");
        let t = Instant::now();
        while !munge.join("sock").exists() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "munged did not start: {} {}",
                std::fs::read_to_string(dir.join("log").join("munged.err")).unwrap_or_default(),
                std::fs::read_to_string(munge.join("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let (ctld_port, slurmd_port) = free_ports();
        let conf = dir.join("slurm.conf");
        let d = dir.display();
        std::fs::write(
            &conf,
            format!(
                "ClusterName=corraltest\n\
                 SlurmctldHost={node}\n\
                 AuthType=auth/munge\n\
                 AuthInfo=socket={m}\n\
                 SlurmUser=root\n\
                 SlurmdUser=root\n\
                 StateSaveLocation={d}/state\n\
                 SlurmdSpoolDir={d}/spool\n\
                 SlurmctldPidFile={d}/slurmctld.pid\n\
                 SlurmdPidFile={d}/slurmd.pid\n\
                 SlurmctldPort={ctld_port}\n\
                 SlurmdPort={slurmd_port}\n\
                 ProctrackType=proctrack/linuxproc\n\
                 TaskPlugin=task/none\n\
                 JobAcctGatherType=jobacct_gather/linux\n\
                 JobAcctGatherFrequency=1\n\
                 SelectType=select/cons_tres\n\
                 SelectTypeParameters=CR_Core_Memory\n\
                 AccountingStorageType=accounting_storage/none\n\
                 SlurmdParameters=config_overrides\n\
                 MinJobAge=3600\n\
                 KillWait=5\n\
                 NodeName={node} CPUs=32 RealMemory=64000 State=UNKNOWN\n\
                 PartitionName=main Nodes={node} Default=YES MaxTime=INFINITE State=UP\n",
                m = munge.join("sock").display(),
            ),
        )
        .unwrap();
        let mut s = PrivateSlurm {
            dir: dir.to_path_buf(),
            conf,
            node,
            munged: Some(munged),
            ctld: None,
            slurmd: None,
            ctld_starts: 0,
        };
        s.start_ctld();
        s.slurmd = Some(s.daemon("slurmd", "slurmd.log"));
        let t = Instant::now();
        loop {
            let out = s.client("sinfo").args(["-h", "-o", "%t"]).output().unwrap();
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if state == "idle" {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "the private Slurm's node is not idle ({state:?}): {}",
                s.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        s
    }

    fn daemon(&self, prog: &str, log: &str) -> Child {
        Command::new(find(prog).unwrap())
            .arg("-D")
            .arg("-f")
            .arg(&self.conf)
            .env("SLURM_CONF", &self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("log").join(log)).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("{prog} starts: {e}"))
    }

    fn start_ctld(&mut self) {
        self.ctld_starts += 1;
        let log = format!("slurmctld-{}.log", self.ctld_starts);
        self.ctld = Some(self.daemon("slurmctld", &log));
    }

    /// Stops the controller (SIGTERM, as an administrator would), calls `while_down`,
    /// and starts it again on its saved state; returns once it answers.
    pub fn restart_ctld(&mut self, while_down: impl FnOnce()) {
        terminate(&mut self.ctld);
        while_down();
        self.start_ctld();
        let t = Instant::now();
        while !self
            .client("scontrol")
            .arg("ping")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("UP"))
        {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "slurmctld did not come back: {}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A Slurm client command (`sbatch`, `scontrol`, ...) for this Slurm.
    pub fn client(&self, prog: &str) -> Command {
        let mut c = Command::new(find(prog).unwrap_or_else(|| prog.into()));
        c.env("SLURM_CONF", &self.conf);
        c
    }

    /// `scontrol show job -o ID`'s line, or `None` when Slurm does not know it.
    pub fn job(&self, id: &str) -> Option<String> {
        let out = self
            .client("scontrol")
            .args(["show", "job", "-o", id])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// The daemons' logs, for a failure message.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        if let Ok(rd) = std::fs::read_dir(self.dir.join("log")) {
            for e in rd.flatten() {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                s.push_str(&format!("\n--- {}:\n", e.path().display()));
                for l in tail.into_iter().rev() {
                    s.push_str(l);
                    s.push('\n');
                }
            }
        }
        s
    }
}

impl PrivateSlurm {
    /// The jobs this Slurm still runs or holds.
    fn live_jobs(&self) -> Vec<String> {
        self.client("squeue")
            .args(["-h", "-o", "%i"])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The processes this Slurm started (job steps and what they run): they carry its
    /// `SLURM_CONF` in their environment.
    fn own_processes(&self) -> Vec<u32> {
        let want = format!("SLURM_CONF={}", self.conf.display());
        let me = std::process::id();
        let Ok(rd) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| *pid != me)
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == want.as_bytes()))
            })
            .collect()
    }
}

impl Drop for PrivateSlurm {
    /// Cancels what still runs, stops the daemons by pid, and ends any job process
    /// left behind (a job step outlives slurmd).
    fn drop(&mut self) {
        let jobs = self.live_jobs();
        if !jobs.is_empty() {
            let _ = self.client("scancel").args(&jobs).status();
            let t = Instant::now();
            while !self.live_jobs().is_empty() && t.elapsed() < Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        terminate(&mut self.slurmd);
        terminate(&mut self.ctld);
        terminate(&mut self.munged);
        for pid in self.own_processes() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}
