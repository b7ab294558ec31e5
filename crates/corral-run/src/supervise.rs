//! The event loop of one run.
//!
//! The supervisor waits on the main process' pidfd, the wall-clock deadline, a CPU-time
//! check that is re-armed from the cgroup's own CPU counter, the sandbox's event fd
//! (inotify on `cgroup.events`/`memory.events`, or v1's OOM eventfd) and a cancel
//! signal. Nothing is polled at a fixed rate. When the run must end it sends SIGTERM to
//! every process, waits up to the grace period for the tree to empty, then kills what
//! is left at once. It returns only when no process of the run remains.
//!
//! With a pid namespace the supervised process is the namespace's mini-init, which
//! exits as soon as the command (pid 2) has ended; the command's own wait status and
//! how many processes it left behind come from the init's status pipe (see
//! [`crate::spawn::Spawned::main_status`]), so exit codes, signals and leftovers are
//! recorded as without the namespace. An init that corral killed wrote nothing: its own
//! status (SIGKILL) is then the run's, as for a command killed without the namespace.
//! The SIGTERM that ends such a run goes to the init alone, which passes it on to every
//! process of its namespace (`kill(-1)`): each gets it once, as with `signal_all`.

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use corral_record::{KillCause, WaitStatus};
use corral_spec::Limits;
use rustix::process::Signal;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::watch;
use tokio::time::sleep_until;

use crate::backend::{online_cpus, Event, Sandbox};
use crate::spawn::watch_fd;
use crate::timeline::Recorder;

/// A request to end a run early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cancel {
    /// The signal corral received, if that is why (SIGINT, SIGTERM, SIGHUP).
    pub signal: Option<i32>,
}

/// What the supervisor observed.
#[derive(Debug, Clone)]
pub struct Supervised {
    /// How the main process ended.
    pub status: WaitStatus,
    /// Why corral ended the run, if it did.
    pub kill: Option<KillCause>,
    /// The OOM-kill counter when corral decided to end the run.
    pub oom_at_kill: u64,
    /// SIGTERM did not end the tree within the grace period.
    pub grace_expired: bool,
    /// Processes left after the main process exited by itself, killed by corral.
    pub leftover_killed: u64,
    /// When the last process of the run was gone.
    pub ended: Instant,
}

/// What a run uses at one moment, read from its sandbox's counters (the cgroup's
/// files: no process is looked at).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Time since the command started.
    pub elapsed: Duration,
    /// CPU time of the whole run so far, where the backend can tell.
    pub cpu: Option<Duration>,
    /// Memory charged to the run now, where the backend can tell.
    pub memory_bytes: Option<u64>,
    /// Peak memory so far, where the backend can tell.
    pub memory_peak_bytes: Option<u64>,
    /// Processes in the run now.
    pub processes: usize,
}

/// Reads a run's [`Progress`] on a timer while it runs (for a live display, or a
/// service's status of a running run).
pub struct Observer {
    /// How often (the first reading comes one period after the start).
    pub every: Duration,
    /// Called with each reading, on the supervisor's task: keep it short.
    pub on_tick: Box<dyn FnMut(&Progress) + Send>,
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer")
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}

/// Reads the sandbox's counters now.
pub fn progress(sandbox: &dyn Sandbox, started: Instant) -> Progress {
    let (memory_bytes, memory_peak_bytes) = sandbox.memory_now();
    Progress {
        elapsed: started.elapsed(),
        cpu: sandbox.cpu_usage(),
        memory_bytes,
        memory_peak_bytes,
        processes: sandbox.process_count(),
    }
}

/// How long corral waits for a killed tree to vanish before killing again; a process in
/// uninterruptible sleep (D state, e.g. on NFS) can take a while.
const EMPTY_WAIT: Duration = Duration::from_secs(10);

/// Supervises the run until its whole tree is gone.
#[allow(clippy::too_many_arguments)]
pub async fn supervise(
    sandbox: &mut dyn Sandbox,
    pidfd: OwnedFd,
    main_status: Option<OwnedFd>,
    limits: &Limits,
    started: Instant,
    mut cancel: watch::Receiver<Option<Cancel>>,
    mut observer: Option<&mut Observer>,
    mut timeline: Option<&mut Recorder>,
) -> std::io::Result<Supervised> {
    let main = watch_fd(pidfd, Interest::READABLE)?;
    // A duplicate shares the open file (and its queue) with the sandbox's own fd.
    let events = match sandbox.event_fd() {
        Some(fd) => Some(watch_fd(fd.try_clone_to_owned()?, Interest::READABLE)?),
        None => None,
    };
    let far = started + Duration::from_secs(100 * 365 * 86400);
    let deadline = limits.timeout.map_or(far, |t| started + t);
    // The tree can burn at most this many CPUs; the first CPU check is due when even
    // at full speed the budget cannot have been used up earlier.
    let allowed_cpus = limits
        .cpus
        .unwrap_or(f64::INFINITY)
        .min(online_cpus())
        .max(0.01);
    let mut cpu_check = limits
        .cpu_time
        .map_or(far, |b| started + b.div_f64(allowed_cpus));

    let mut tick = observer.as_ref().map_or(far, |o| started + o.every);

    let cause: Option<KillCause> = loop {
        tokio::select! {
            biased;
            _ = main.readable() => break None,
            Some(c) = wait_cancel(&mut cancel) => break Some(KillCause::Cancelled(c.signal)),
            _ = sleep_until(deadline.into()) => break Some(KillCause::Timeout),
            _ = sleep_until(cpu_check.into()) => {
                let budget = limits.cpu_time.expect("armed only with a CPU-time limit");
                match sandbox.cpu_usage() {
                    Some(used) if used >= budget => break Some(KillCause::CpuTime),
                    Some(used) => {
                        let left = (budget - used).div_f64(allowed_cpus);
                        cpu_check = Instant::now() + left.max(Duration::from_millis(1));
                    }
                    None => cpu_check = far,
                }
            }
            r = readable(&events) => {
                if let Some(mut guard) = r {
                    guard.clear_ready();
                }
                let event = sandbox.on_event();
                if event == Event::Oom {
                    if let Some(r) = timeline.as_deref_mut() {
                        r.oom(sandbox.oom_kills());
                    }
                }
                if event == Event::Oom && !sandbox.kernel_kills_group_on_oom() {
                    break Some(KillCause::Oom);
                }
            }
            // One timer for the live observer and the timeline, whichever is due first.
            _ = sleep_until(timeline.as_ref().map_or(tick, |r| r.due().min(tick)).into()) => {
                let now = Instant::now();
                if let Some(o) = observer.as_deref_mut().filter(|_| now >= tick) {
                    (o.on_tick)(&progress(sandbox, started));
                    // The next one a period from now: a late tick is not caught up on.
                    tick = Instant::now() + o.every;
                }
                if let Some(r) = timeline.as_deref_mut().filter(|r| now >= r.due()) {
                    r.sample(sandbox);
                }
            }
        }
    };

    // A main process that exited just as a limit fired ended by itself.
    let cause = cause.filter(|_| !has_exited(main.get_ref()));
    // The timeline's last point: the run as it ended (or as corral is about to end it).
    if let Some(r) = timeline.as_deref_mut() {
        r.sample(sandbox);
    }
    let oom_at_kill = sandbox.oom_kills();
    let mut reported: Option<Option<(i32, u32)>> = None;
    let mut grace_expired = false;
    let mut leftover_killed = 0;
    match cause {
        Some(KillCause::Oom) => {
            if let Some(r) = timeline.as_deref_mut() {
                r.sigkill("the rest of the run after the OOM kill");
            }
            kill(sandbox)
        }
        Some(c) => {
            if let Some(r) = timeline.as_deref_mut() {
                r.sigterm(&c);
            }
            match &main_status {
                // A pid namespace's init passes SIGTERM on to every process of the
                // namespace: signalled directly too, each would get it twice (once
                // forwarded), and a handler could run twice.
                Some(_) => {
                    let _ = rustix::process::pidfd_send_signal(main.get_ref(), Signal::TERM);
                }
                None => {
                    sandbox.signal_all(Signal::TERM);
                }
            }
            let grace_end = Instant::now() + limits.grace;
            if !wait_empty(sandbox, &events, &main, grace_end).await {
                grace_expired = true;
                if let Some(r) = timeline.as_deref_mut() {
                    r.sigkill(&format!("still running {:?} after SIGTERM", limits.grace));
                }
                kill(sandbox);
            }
        }
        None => {
            main.readable().await?.retain_ready();
            // A mini-init counted what was left in its namespace before it exited,
            // which the kernel then killed with it.
            let in_ns = reported.get_or_insert_with(|| read_main_status(&main_status));
            let in_ns = in_ns.map_or(0, |(_, left)| left as usize);
            leftover_killed = in_ns as u64;
            let left = sandbox.process_count();
            if left > 0 {
                leftover_killed = (in_ns + left) as u64;
                if let Some(r) = timeline {
                    r.sigkill(&format!("{left} process(es) left behind by the command"));
                }
                kill(sandbox);
            }
        }
    }
    let mut tries = 0;
    while !wait_empty(sandbox, &events, &main, Instant::now() + EMPTY_WAIT).await {
        tries += 1;
        tracing::warn!("run still has processes {EMPTY_WAIT:?} after being killed; killing again");
        kill(sandbox);
        if tries >= 3 {
            return Err(std::io::Error::other(
                "processes of the run survived repeated kills (stuck in uninterruptible sleep?)",
            ));
        }
    }
    let ended = Instant::now();
    main.readable().await?.retain_ready();
    drop(events);
    let pidfd = main.into_inner();
    let status = sandbox.reap(&pidfd)?;
    let status = match reported.unwrap_or_else(|| read_main_status(&main_status)) {
        Some((raw, _)) => raw_wait_status(raw),
        None => status,
    };
    Ok(Supervised {
        status,
        kill: cause,
        oom_at_kill,
        grace_expired,
        leftover_killed,
        ended,
    })
}

/// What a mini-init wrote on its status pipe: the command's raw wait status and the
/// number of processes left in the namespace, or `None` (no pipe, or the init was
/// killed before the command ended). Called once the init has exited, so the
/// non-blocking read finds whatever it wrote.
fn read_main_status(pipe: &Option<OwnedFd>) -> Option<(i32, u32)> {
    let fd = pipe.as_ref()?;
    let mut buf = [0u8; 8];
    let mut got = 0;
    while got < buf.len() {
        match rustix::io::read(fd, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => break,
        }
    }
    if got < 4 {
        return None;
    }
    let raw = i32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let left = if got == 8 {
        u32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]])
    } else {
        0
    };
    Some((raw, left))
}

/// A raw `wait` status as the record's [`WaitStatus`].
fn raw_wait_status(raw: i32) -> WaitStatus {
    if libc::WIFSIGNALED(raw) {
        WaitStatus::Signaled(libc::WTERMSIG(raw))
    } else {
        WaitStatus::Exited(libc::WEXITSTATUS(raw))
    }
}

fn kill(sandbox: &dyn Sandbox) {
    if let Err(e) = sandbox.kill_all() {
        tracing::warn!("kill: {e}");
    }
}

async fn wait_cancel(rx: &mut watch::Receiver<Option<Cancel>>) -> Option<Cancel> {
    loop {
        if let Some(c) = *rx.borrow_and_update() {
            return Some(c);
        }
        if rx.changed().await.is_err() {
            // The sender is gone: nobody can cancel any more.
            std::future::pending::<()>().await;
        }
    }
}

async fn readable(
    fd: &Option<AsyncFd<OwnedFd>>,
) -> Option<tokio::io::unix::AsyncFdReadyGuard<'_, OwnedFd>> {
    match fd {
        Some(f) => f.readable().await.ok(),
        None => std::future::pending().await,
    }
}

fn has_exited(pidfd: &OwnedFd) -> bool {
    use rustix::process::{waitid, WaitId, WaitIdOptions};
    matches!(
        waitid(
            WaitId::PidFd(pidfd.as_fd()),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT,
        ),
        Ok(Some(_))
    )
}

/// Waits until the sandbox has no process, or `until`. Uses the event fd where the
/// backend has one that reports exits (cgroup2's `cgroup.events` signals `populated
/// 0`); otherwise it wakes when the main process exits (usually the last one) and
/// checks with a backoff from 1 ms to 20 ms, which only runs while a tree of several
/// processes is being torn down.
async fn wait_empty(
    sandbox: &mut dyn Sandbox,
    events: &Option<AsyncFd<OwnedFd>>,
    main: &AsyncFd<OwnedFd>,
    until: Instant,
) -> bool {
    let mut backoff = Duration::from_millis(1);
    let mut main_gone = has_exited(main.get_ref());
    loop {
        if sandbox.process_count() == 0 {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        match events.as_ref().filter(|_| sandbox.notifies_empty()) {
            Some(fd) => {
                tokio::select! {
                    r = fd.readable() => {
                        if let Ok(mut g) = r {
                            g.clear_ready();
                        }
                        sandbox.on_event();
                    }
                    _ = sleep_until(until.into()) => {}
                }
            }
            None => {
                let nap = backoff.min(until.saturating_duration_since(Instant::now()));
                tokio::select! {
                    r = main.readable(), if !main_gone => {
                        if let Ok(mut g) = r {
                            g.retain_ready();
                        }
                        main_gone = true;
                    }
                    _ = tokio::time::sleep(nap) => {
                        backoff = (backoff * 2).min(Duration::from_millis(20));
                    }
                }
            }
        }
    }
}
