//! Process helpers: timed spawn+wait with a watchdog, the FIFO that tells when a
//! workload started and died, and readers of `/proc`. The harness' few raw system
//! calls (poll, mkfifo, getrusage, wait4) live here and nowhere else.

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// `CLOCK_MONOTONIC` in nanoseconds (the clock behind `std::time::Instant` on Linux),
/// comparable between processes.
pub fn mono_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// User + system CPU time of this process' reaped children, in ms.
pub fn children_cpu_ms() -> f64 {
    // SAFETY: rusage is plain data that getrusage fills; the pointer is valid. (The
    // harness' only unsafe block: rustix has no getrusage.)
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    let p = rustix::process::Pid::from_raw(pid as i32)
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ESRCH))?;
    Ok(rustix::process::pidfd_open(
        p,
        rustix::process::PidfdFlags::empty(),
    )?)
}

/// Polls `fd` for `events` up to `limit`; true when ready.
pub fn poll_fd(fd: i32, events: i16, limit: Duration) -> std::io::Result<bool> {
    let deadline = Instant::now() + limit;
    loop {
        let mut p = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        return Ok(r > 0);
    }
}

/// Waits for `child` at most `limit` (through its pidfd, no polling loop); kills it
/// when the limit passes.
pub fn wait_limited(child: &mut Child, limit: Duration) -> Result<ExitStatus> {
    let pidfd = pidfd_open(child.id()).context("pidfd_open")?;
    if !poll_fd(pidfd.as_raw_fd(), libc::POLLIN, limit)? {
        let _ = child.kill();
        let _ = child.wait();
        bail!("still running after {limit:?}; killed");
    }
    Ok(child.wait()?)
}

/// Spawns `cmd` with its standard streams on /dev/null and waits for it (at most
/// `limit`); returns the wall time from just before spawn to just after the wait, in
/// milliseconds, and its status.
pub fn time_cmd(cmd: &mut Command, limit: Duration) -> Result<(f64, ExitStatus)> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let t = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
    let st = wait_limited(&mut child, limit)?;
    Ok((t.elapsed().as_secs_f64() * 1e3, st))
}

/// Runs `cmd` once with its output captured (at most `limit`): a probe whose failure
/// becomes the printed reason a peer is skipped.
pub fn probe(cmd: &mut Command, limit: Duration) -> Result<Output> {
    let dir = std::env::temp_dir().join(format!("corral-bench-probe-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (o, e) = (dir.join("out"), dir.join("err"));
    cmd.stdin(Stdio::null())
        .stdout(File::create(&o)?)
        .stderr(File::create(&e)?);
    let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
    let status = wait_limited(&mut child, limit);
    let out = Output {
        status: status?,
        stdout: std::fs::read(&o).unwrap_or_default(),
        stderr: std::fs::read(&e).unwrap_or_default(),
    };
    let _ = std::fs::remove_dir_all(&dir);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(3).collect();
        bail!(
            "{:?} failed ({}): {}",
            cmd.get_program(),
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
        );
    }
    Ok(out)
}

/// Where a `key=value` line printed by a tool (runexec) holds a number, that number
/// (trailing unit letters dropped).
pub fn kv_number(text: &str, key: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim_end_matches(|c: char| c.is_ascii_alphabetic()))
        .and_then(|v| v.parse().ok())
}

/// A FIFO through which the `__sleeper`/`__spin` workload reports the moment it
/// started; the moment its write end closes (EOF) is the moment it died. The workload
/// is the only writer, so EOF comes when the kernel closes its files at exit.
pub struct Stopwatch {
    path: PathBuf,
    fd: OwnedFd,
}

/// When the workload started and died (`CLOCK_MONOTONIC` ns).
#[derive(Debug, Clone, Copy)]
pub struct Lifetime {
    /// The workload's own stamp, taken first thing after exec.
    pub started_ns: u64,
    /// When its end of the FIFO closed.
    pub died_ns: u64,
}

impl Stopwatch {
    /// Creates the FIFO `path` and opens its read end (non-blocking open, so this does
    /// not wait for the writer).
    pub fn new(path: &Path) -> Result<Stopwatch> {
        let _ = std::fs::remove_file(path);
        let c = CString::new(path.as_os_str().as_bytes())?;
        // SAFETY: a valid C string.
        if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
            return Err(std::io::Error::last_os_error()).context("mkfifo");
        }
        // SAFETY: a valid C string; the fd returned is ours.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("opening the FIFO");
        }
        Ok(Stopwatch {
            path: path.to_path_buf(),
            // SAFETY: just opened.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Waits (on a thread of its own, so the caller can supervise meanwhile) for the
    /// start stamp and then for EOF, each at most `limit`. Call [`Watch::finish`] once
    /// the workload is known to be dead.
    pub fn watch(self, limit: Duration) -> Watch {
        let (tx, rx) = std::sync::mpsc::channel();
        let path = self.path.clone();
        std::thread::spawn(move || {
            let _ = tx.send(self.read_until_eof(limit));
        });
        Watch { rx, path }
    }

    fn read_until_eof(self, limit: Duration) -> Result<Lifetime> {
        let fd = self.fd.as_raw_fd();
        let mut f = File::from(self.fd.try_clone()?);
        let mut buf = Vec::new();
        let mut started = None;
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if !poll_fd(fd, libc::POLLIN, left)? {
                bail!("the workload did not report/die within {limit:?}");
            }
            let mut chunk = [0u8; 64];
            match f.read(&mut chunk) {
                Ok(0) => {
                    let died = mono_ns();
                    let started_ns = started.ok_or_else(|| {
                        anyhow!("the workload was ended before it reported its start")
                    })?;
                    return Ok(Lifetime {
                        started_ns,
                        died_ns: died,
                    });
                }
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if started.is_none() {
                        if let Some(i) = buf.iter().position(|b| *b == b'\n') {
                            started = std::str::from_utf8(&buf[..i])?.trim().parse().ok();
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// A running [`Stopwatch`].
pub struct Watch {
    rx: std::sync::mpsc::Receiver<Result<Lifetime>>,
    path: PathBuf,
}

impl Watch {
    /// The workload's lifetime. Call after the tool returned (the workload is dead):
    /// when it died before it even opened the FIFO (killed before it started), a
    /// writer is opened and closed here so the reader sees EOF and says so.
    pub fn finish(self) -> Result<Lifetime> {
        match self.rx.recv_timeout(Duration::from_secs(5)) {
            Ok(r) => r,
            Err(_) => {
                let _ = std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(&self.path);
                self.rx
                    .recv()
                    .map_err(|_| anyhow!("stopwatch thread died"))?
            }
        }
    }
}

impl Drop for Stopwatch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The workload side: opens the FIFO for writing, writes the start stamp, and keeps
/// the fd open (not close-on-exec is irrelevant: the workload does not exec).
pub fn report_start(fifo: &Path) -> Result<File> {
    use std::io::Write;
    let stamp = mono_ns();
    let mut f = std::fs::OpenOptions::new().write(true).open(fifo)?;
    writeln!(f, "{stamp}")?;
    Ok(f)
}

/// One field of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`).
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU time and context switches of every thread of a process, summed.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuSample {
    /// Time on CPU in nanoseconds (`schedstat`; clock ticks × 10 ms where absent).
    pub cpu_ns: u64,
    /// Voluntary + involuntary context switches (≈ wakeups).
    pub switches: u64,
    /// Number of threads.
    pub threads: usize,
}

/// Samples [`CpuSample`] of `pid`.
pub fn cpu_sample(pid: u32) -> CpuSample {
    let mut s = CpuSample::default();
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return s;
    };
    for t in rd.flatten() {
        let p = t.path();
        s.threads += 1;
        match std::fs::read_to_string(p.join("schedstat")) {
            Ok(v) => {
                s.cpu_ns += v
                    .split_whitespace()
                    .next()
                    .and_then(|x| x.parse::<u64>().ok())
                    .unwrap_or(0)
            }
            Err(_) => {
                if let Ok(st) = std::fs::read_to_string(p.join("stat")) {
                    let f: Vec<&str> = st
                        .rsplit_once(") ")
                        .map_or(vec![], |(_, r)| r.split_whitespace().collect());
                    // utime, stime are fields 14, 15 (index 11, 12 after the comm).
                    let ticks: u64 = f
                        .get(11..13)
                        .map_or(0, |x| x.iter().filter_map(|v| v.parse::<u64>().ok()).sum());
                    s.cpu_ns += ticks * 10_000_000;
                }
            }
        }
        if let Ok(st) = std::fs::read_to_string(p.join("status")) {
            for l in st.lines() {
                if let Some(v) = l
                    .strip_prefix("voluntary_ctxt_switches:")
                    .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
                {
                    s.switches += v.trim().parse::<u64>().unwrap_or(0);
                }
            }
        }
    }
    s
}

/// The children of `pid` (over all its threads), each with its `comm`.
pub fn children(pid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in rd.flatten() {
        let list = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        for c in list
            .split_whitespace()
            .filter_map(|x| x.parse::<u32>().ok())
        {
            let comm = std::fs::read_to_string(format!("/proc/{c}/comm"))
                .unwrap_or_default()
                .trim()
                .to_string();
            out.push((c, comm));
        }
    }
    out
}

/// How many children and grandchildren of `pid` are named `comm` (with a pid
/// namespace a run's command is the child of its `corral-init`).
pub fn descendants_named(pid: u32, comm: &str) -> usize {
    children(pid)
        .into_iter()
        .map(|(c, n)| {
            usize::from(n == comm) + children(c).iter().filter(|(_, g)| g == comm).count()
        })
        .sum()
}

/// Resource usage of a child reaped with `wait4` (for RLIMIT_CPU runs).
pub fn wait4_cpu(child: &Child, limit: Duration) -> Result<(libc::c_int, f64)> {
    let pidfd = pidfd_open(child.id())?;
    if !poll_fd(pidfd.as_raw_fd(), libc::POLLIN, limit)? {
        // SAFETY: plain kill of our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    }
    let mut status = 0;
    // SAFETY: rusage is plain data that wait4 fills.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; pointers are valid.
    let r = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
    if r < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok((status, tv(ru.ru_utime) + tv(ru.ru_stime)))
}
