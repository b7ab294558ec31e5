//! A run's resource timeline: readings of its counters on a timer, and the limit
//! events with their time (the record's `timeline` field, present only when asked for).
//!
//! The timeline stays bounded: when it holds [`MAX_POINTS`] points it keeps every other
//! one and the interval doubles, so a run of any length fits in about that many points.

use serde::{Deserialize, Serialize};

/// The most points a timeline holds before it halves its resolution.
pub const MAX_POINTS: usize = 2000;

/// The most events a timeline holds; later ones are counted in a last
/// `events_dropped` event.
pub const MAX_EVENTS: usize = 500;

/// One reading of the run's counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TimelinePoint {
    /// Seconds since the command started.
    pub t: f64,
    /// Memory charged to the run now, in bytes.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub memory_bytes: Option<u64>,
    /// CPU time the run used so far, in seconds.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cpu_s: Option<f64>,
    /// Processes in the run now.
    pub processes: u64,
    /// Bytes read from block devices so far.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub io_read_bytes: Option<u64>,
    /// Bytes written to block devices so far.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub io_write_bytes: Option<u64>,
    /// `memory.pressure`'s `some avg10`: the share of the last 10 s in which some of the
    /// run's tasks waited for memory, in percent (cgroup v2 with PSI only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub memory_pressure: Option<f64>,
    /// `cpu.pressure`'s `some avg10`, in percent (cgroup v2 with PSI only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cpu_pressure: Option<f64>,
    /// `io.pressure`'s `some avg10`, in percent (cgroup v2 with PSI only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub io_pressure: Option<f64>,
}

/// Something the kernel or corral did to the run, and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineEvent {
    /// Seconds since the command started.
    pub t: f64,
    /// `cpu_throttled` (the first period throttled by the CPU quota), `memory_high`,
    /// `memory_max` (the memory limit was hit: cgroup v2 `memory.events`, v1
    /// `memory.failcnt`), `oom_kill`, `sigterm`, `sigkill`, `events_dropped`.
    pub kind: String,
    /// What it was, in words.
    pub detail: String,
}

/// The readings of a run over time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timeline {
    /// The interval between points now, in seconds (doubled at each halving).
    pub interval_s: f64,
    /// The readings, oldest first.
    pub points: Vec<TimelinePoint>,
    /// The events, oldest first.
    pub events: Vec<TimelineEvent>,
    /// Events not kept beyond [`MAX_EVENTS`].
    #[serde(skip)]
    dropped_events: u64,
}

impl Timeline {
    /// An empty timeline sampled every `interval_s` seconds.
    pub fn new(interval_s: f64) -> Timeline {
        Timeline {
            interval_s,
            ..Timeline::default()
        }
    }

    /// Adds a point; when the timeline then holds more than `max` points it keeps every
    /// other one (the first and the newest stay) and doubles its interval. Returns
    /// true when it halved.
    pub fn push_point(&mut self, p: TimelinePoint, max: usize) -> bool {
        self.points.push(p);
        if self.points.len() <= max.max(2) {
            return false;
        }
        // Keep even indices counted back from the newest, so the newest stays.
        let last = self.points.len() - 1;
        let mut i = 0;
        self.points.retain(|_| {
            let keep = (last - i).is_multiple_of(2);
            i += 1;
            keep
        });
        self.interval_s *= 2.0;
        true
    }

    /// Adds an event (at most [`MAX_EVENTS`]; the rest are counted in a last
    /// `events_dropped` event).
    pub fn push_event(&mut self, t: f64, kind: &str, detail: impl Into<String>) {
        if self.events.len() + 1 < MAX_EVENTS {
            self.events.push(TimelineEvent {
                t,
                kind: kind.into(),
                detail: detail.into(),
            });
            return;
        }
        self.dropped_events += 1;
        let detail = format!("{} more events not kept", self.dropped_events);
        match self.events.last_mut() {
            Some(e) if e.kind == "events_dropped" => {
                e.t = t;
                e.detail = detail;
            }
            _ => self.events.push(TimelineEvent {
                t,
                kind: "events_dropped".into(),
                detail,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t: f64) -> TimelinePoint {
        TimelinePoint {
            t,
            ..TimelinePoint::default()
        }
    }

    #[test]
    fn halving_keeps_the_size_bounded_and_the_spacing_even() {
        let mut tl = Timeline::new(1.0);
        // Sample as the supervisor does: the next one an interval later.
        let mut t = 1.0;
        let mut halvings = 0;
        for _ in 0..20_000 {
            if tl.push_point(at(t), MAX_POINTS) {
                halvings += 1;
            }
            assert!(tl.points.len() <= MAX_POINTS);
            t += tl.interval_s;
        }
        assert!(halvings >= 3, "{halvings}");
        assert_eq!(tl.interval_s, f64::powi(2.0, halvings));
        assert!(tl.points.len() > MAX_POINTS / 2, "{}", tl.points.len());
        // The newest stays, and the points are evenly spaced at (about) the interval.
        assert_eq!(tl.points.last().unwrap().t, t - tl.interval_s);
        let gaps: Vec<f64> = tl.points.windows(2).map(|w| w[1].t - w[0].t).collect();
        let max_gap = gaps.iter().cloned().fold(0.0, f64::max);
        assert!(max_gap <= tl.interval_s, "{max_gap} > {}", tl.interval_s);
        // A run of 20 000 s still covers its whole length.
        assert!(tl.points[0].t <= tl.interval_s, "{}", tl.points[0].t);
    }

    #[test]
    fn small_timelines_are_not_halved() {
        let mut tl = Timeline::new(0.5);
        for i in 0..10 {
            assert!(!tl.push_point(at(i as f64), 10));
        }
        assert!(tl.push_point(at(10.0), 10));
        assert_eq!(tl.points.len(), 6);
        assert_eq!(tl.interval_s, 1.0);
        let ts: Vec<f64> = tl.points.iter().map(|p| p.t).collect();
        assert_eq!(ts, vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
    }

    #[test]
    fn events_are_bounded() {
        let mut tl = Timeline::new(1.0);
        for i in 0..(MAX_EVENTS + 10) {
            tl.push_event(i as f64, "memory_max", "hit");
        }
        assert_eq!(tl.events.len(), MAX_EVENTS);
        let last = tl.events.last().unwrap();
        assert_eq!(last.kind, "events_dropped");
        assert_eq!(last.detail, "11 more events not kept");
    }

    #[test]
    fn serializes_as_plain_lists() {
        let mut tl = Timeline::new(1.0);
        tl.push_point(
            TimelinePoint {
                t: 1.0,
                memory_bytes: Some(5),
                processes: 1,
                ..TimelinePoint::default()
            },
            MAX_POINTS,
        );
        tl.push_event(1.5, "oom_kill", "1 process killed");
        let v = serde_json::to_value(&tl).unwrap();
        assert_eq!(v["interval_s"], 1.0);
        assert_eq!(v["points"][0]["memory_bytes"], 5);
        assert!(v["points"][0].get("cpu_pressure").is_none());
        assert_eq!(v["events"][0]["kind"], "oom_kill");
        let back: Timeline = serde_json::from_value(v).unwrap();
        assert_eq!(back, tl);
    }
}
