//! The record's timeline while a run runs: the supervisor reads the sandbox's counters
//! on its timer (the same one that drives an [`crate::Observer`]) and notes the limit
//! events with their time. See [`corral_record::Timeline`] for the bound on its size.

use std::time::{Duration, Instant};

use corral_cgroup::sample::Sample;
use corral_record::{KillCause, Timeline, TimelinePoint};

use crate::backend::Sandbox;

/// The interval of `corral run --timeline` without a value, and of the service's runs.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

/// The shortest interval: reading the counters more often would cost more than it shows.
pub const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// Builds a run's timeline on the supervisor's timer.
#[derive(Debug)]
pub struct Recorder {
    started: Instant,
    interval: Duration,
    next: Instant,
    tl: Timeline,
    last: Sample,
    throttled: bool,
    /// Whether the last reading saw `memory.high` / the limit hit (one event per
    /// episode, not one per reading).
    high_rising: bool,
    max_rising: bool,
}

impl Recorder {
    /// A recorder whose first reading is due one `interval` after `started`.
    pub fn new(interval: Duration, started: Instant) -> Recorder {
        let interval = interval.max(MIN_INTERVAL);
        Recorder {
            started,
            interval,
            next: started + interval,
            tl: Timeline::new(interval.as_secs_f64()),
            last: Sample::default(),
            throttled: false,
            high_rising: false,
            max_rising: false,
        }
    }

    /// When the next reading is due.
    pub fn due(&self) -> Instant {
        self.next
    }

    fn t(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Reads the counters now: one point, and the events their changes show. The next
    /// reading is due an interval from now (doubled when the timeline halved).
    pub fn sample(&mut self, sandbox: &dyn Sandbox) {
        let s = sandbox.sample();
        let t = self.t();
        let point = TimelinePoint {
            t,
            memory_bytes: s.memory_bytes,
            cpu_s: s.cpu_us.map(|us| us as f64 / 1e6),
            processes: sandbox.process_count() as u64,
            io_read_bytes: s.io_read_bytes,
            io_write_bytes: s.io_write_bytes,
            memory_pressure: s.pressure[0],
            cpu_pressure: s.pressure[1],
            io_pressure: s.pressure[2],
        };
        if self
            .tl
            .push_point(point, corral_record::timeline::MAX_POINTS)
        {
            self.interval *= 2;
        }
        self.events(t, &s);
        self.next = Instant::now() + self.interval;
    }

    fn events(&mut self, t: f64, s: &Sample) {
        if let Some(n) = s.cpu_throttled.filter(|&n| n > 0 && !self.throttled) {
            self.throttled = true;
            self.tl.push_event(
                t,
                "cpu_throttled",
                format!("first throttled by the CPU quota ({n} period(s) so far)"),
            );
        }
        let rose = |now: Option<u64>, before: Option<u64>| now.unwrap_or(0) > before.unwrap_or(0);
        let high = rose(s.memory_high, self.last.memory_high);
        if high && !self.high_rising {
            let n = s.memory_high.unwrap_or(0);
            self.tl.push_event(
                t,
                "memory_high",
                format!("over memory.high ({n} time(s) so far)"),
            );
        }
        self.high_rising = high;
        let max = rose(s.memory_max, self.last.memory_max);
        if max && !self.max_rising {
            let n = s.memory_max.unwrap_or(0);
            self.tl.push_event(
                t,
                "memory_max",
                format!("memory limit reached ({n} time(s) so far)"),
            );
        }
        self.max_rising = max;
        self.oom_at(t, s.oom_kill.unwrap_or(0), false);
        let seen = self.last.oom_kill;
        self.last = *s;
        self.last.oom_kill = seen.max(s.oom_kill);
    }

    /// The sandbox reported an OOM (its event fd): noted now, with the kill counter
    /// `count` (which on cgroup v1 can move only after the report).
    pub fn oom(&mut self, count: u64) {
        let t = self.t();
        self.oom_at(t, count, true);
    }

    fn oom_at(&mut self, t: f64, count: u64, reported: bool) {
        let before = self.last.oom_kill.unwrap_or(0);
        // A report before any kill was counted (v1 reports first) is noted once.
        if count > before || (reported && before == 0) {
            let n = count.saturating_sub(before);
            let detail = match n {
                0 => "the kernel's OOM killer acted on the run".to_string(),
                1 => "1 process killed by the kernel's OOM killer".to_string(),
                n => format!("{n} processes killed by the kernel's OOM killer"),
            };
            self.tl.push_event(t, "oom_kill", detail);
            self.last.oom_kill = Some(count.max(before + 1));
        }
    }

    /// corral sends SIGTERM to the run because of `cause`.
    pub fn sigterm(&mut self, cause: &KillCause) {
        let why = match cause {
            KillCause::Timeout => "the time limit passed".to_string(),
            KillCause::CpuTime => "the CPU-time limit was used up".to_string(),
            KillCause::Cancelled(Some(sig)) => format!("corral received signal {sig}"),
            KillCause::Cancelled(None) => "the run was cancelled".to_string(),
            KillCause::Oom => "the OOM killer acted".to_string(),
        };
        let t = self.t();
        self.tl.push_event(t, "sigterm", format!("SIGTERM: {why}"));
    }

    /// corral kills what is left of the run, because of `why`.
    pub fn sigkill(&mut self, why: &str) {
        let t = self.t();
        self.tl.push_event(t, "sigkill", format!("SIGKILL: {why}"));
    }

    /// The finished timeline.
    pub fn finish(self) -> Timeline {
        self.tl
    }
}
