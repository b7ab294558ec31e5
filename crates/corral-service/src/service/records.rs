//! The records the service writes itself: for runs that never ran under a sandbox
//! (cancelled while queued, lost with a dead service, failed before they could start),
//! and the first sentence of a cancelled run's notes, which only the service can
//! explain (a client's cancel or the drain after a signal).
//!
//! These are pure functions of the run, the backend's plan and the captured files, so
//! they are tested without a service.

use std::path::{Path, PathBuf};
use std::time::Duration;

use corral_record::{
    compose_notes, signal_name, Captured, LimitsRecord, Output, Reason, Record, RecordHead,
};
use corral_run::Backend;
use corral_spec::format_duration;

use crate::service::Job;

/// The exit status recorded for a run that was lost (corral itself failed it).
pub const LOST_EXIT_CODE: i32 = 125;

/// Why a run never ran under a sandbox: what its made-up record says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Never {
    /// Cancelled by a client before it started.
    Cancelled {
        /// When it was admitted, if it was.
        started_at: Option<String>,
    },
    /// corral could not start it (`spawn_failed`, exit 125).
    Failed {
        /// What went wrong (the record's `outcome.error`).
        why: String,
        /// When it was admitted, if it was.
        started_at: Option<String>,
    },
    /// It was in flight when the service died (`lost`, exit 125).
    Lost {
        /// When it was admitted.
        started_at: Option<String>,
        /// The first sentence of its notes: what the restarted service found.
        note: String,
    },
    /// It ended where corral could not record it (a Slurm job killed with corral on
    /// the node): its reason and exit status as the executor saw them.
    Ended {
        /// Why it ended.
        reason: Reason,
        /// corral's exit status for that reason.
        exit_code: i32,
        /// When it was admitted.
        started_at: Option<String>,
        /// Its whole notes: what ended it, and from whose view the record was made.
        note: String,
    },
}

/// Who cancelled a running run, for the first sentence of its notes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelBy {
    /// `POST /runs/{id}/cancel`.
    Api,
    /// The drain after this signal, once the drain timeout passed.
    Drain(i32),
}

/// Replaces the first sentence of a record's notes.
pub fn replace_first_sentence(notes: &str, first: &str) -> String {
    match notes.find(". ") {
        Some(i) => format!("{first} {}", &notes[i + 2..]),
        None => first.to_string(),
    }
}

/// The record of a run that never ran under a sandbox. `output` says where each
/// captured stream of the run would be; files that exist are listed in the record.
pub fn synth(
    backend: &dyn Backend,
    job: &Job,
    output: impl Fn(&str) -> PathBuf,
    never: Never,
) -> Record {
    let plan = backend.plan(&job.limits);
    let mut rec = Record::new(RecordHead {
        id: job.id.clone(),
        command: job.request.command.clone(),
        cwd: job.request.cwd.clone(),
        profile: job.profile.clone(),
        backend: backend.kind().as_str().to_string(),
        backend_reason: backend.reason(),
        limits: LimitsRecord::new(&job.limits, plan.enforced, plan.gaps),
    });
    let captured = |p: &Path| {
        std::fs::metadata(p).ok().map(|m| Captured {
            path: p.display().to_string(),
            bytes: m.len(),
            dropped_bytes: 0,
        })
    };
    rec.output = match (captured(&output("stdout")), captured(&output("stderr"))) {
        (None, None) => None,
        (stdout, stderr) => Some(Output { stdout, stderr }),
    };
    let mut whole = None;
    let (reason, exit_code, error, started_at, first) = match never {
        Never::Cancelled { started_at } => (
            Reason::Cancelled,
            128 + libc::SIGTERM,
            None,
            started_at,
            Some(
                "Cancelled before it started: a client cancelled it through the corral \
                 service while it was waiting for budget."
                    .to_string(),
            ),
        ),
        Never::Failed { why, started_at } => {
            (Reason::SpawnFailed, 125, Some(why), started_at, None)
        }
        Never::Lost { started_at, note } => {
            (Reason::Lost, LOST_EXIT_CODE, None, started_at, Some(note))
        }
        Never::Ended {
            reason,
            exit_code,
            started_at,
            note,
        } => {
            whole = Some(note);
            (reason, exit_code, None, started_at, None)
        }
    };
    rec.outcome.reason = reason;
    rec.outcome.exit_code = exit_code;
    rec.outcome.error = error;
    if let Some(t) = started_at {
        rec.started_at = t;
    }
    rec.notes = compose_notes(&rec);
    if let Some(first) = first {
        rec.notes = replace_first_sentence(&rec.notes, &first);
    }
    if let Some(note) = whole {
        rec.notes = note;
    }
    rec
}

/// Says in the first sentence of a cancelled run's notes who cancelled it; other
/// records are returned as they are.
pub fn explain_cancel(mut rec: Record, by: Option<CancelBy>, drain_timeout: Duration) -> Record {
    if rec.outcome.reason != Reason::Cancelled {
        return rec;
    }
    let wall = format_duration(Duration::from_secs_f64(rec.usage.wall_s.max(0.0)));
    let first = match by {
        Some(CancelBy::Api) => format!(
            "Cancelled after {wall}: a client cancelled it through the corral service \
             (POST /runs/{}/cancel).",
            rec.id
        ),
        Some(CancelBy::Drain(sig)) => format!(
            "Cancelled after {wall}: the corral service received {} and the run did not \
             finish within its {} drain timeout.",
            signal_name(sig),
            format_duration(drain_timeout)
        ),
        None => return rec,
    };
    rec.notes = replace_first_sentence(&rec.notes, &first);
    rec
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::testing::{job, FakeBackend};

    #[test]
    fn first_sentence() {
        assert_eq!(
            replace_first_sentence("Cancelled after 1.5 s: x and ended the run. More.", "New."),
            "New. More."
        );
        assert_eq!(replace_first_sentence("Only one.", "New."), "New.");
    }

    #[test]
    fn a_run_cancelled_while_queued() {
        let dir = tempfile::tempdir().unwrap();
        let j = job("q1");
        let rec = synth(
            &FakeBackend,
            &j,
            |s| dir.path().join(format!("q1.{s}")),
            Never::Cancelled { started_at: None },
        );
        assert_eq!(rec.id, "q1");
        assert_eq!(rec.outcome.reason, Reason::Cancelled);
        assert_eq!(rec.outcome.exit_code, 128 + libc::SIGTERM);
        assert_eq!(rec.outcome.error, None);
        assert_eq!(rec.backend, "cgroup1");
        assert_eq!(rec.limits.requested.memory_bytes, j.limits.memory);
        assert_eq!(rec.limits.enforced.memory_bytes, j.limits.memory);
        assert!(rec.output.is_none(), "nothing was captured");
        assert!(
            rec.notes
                .starts_with("Cancelled before it started: a client cancelled it"),
            "{}",
            rec.notes
        );
        assert!(rec.started_at <= rec.finished_at);
    }

    #[test]
    fn a_run_that_failed_to_start_lists_what_it_wrote() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f1.stderr"), b"boom\n").unwrap();
        let rec = synth(
            &FakeBackend,
            &job("f1"),
            |s| dir.path().join(format!("f1.{s}")),
            Never::Failed {
                why: "corral could not run it: no".into(),
                started_at: Some("2026-01-01T00:00:00.000Z".into()),
            },
        );
        assert_eq!(rec.outcome.reason, Reason::SpawnFailed);
        assert_eq!(rec.outcome.exit_code, 125);
        assert_eq!(
            rec.outcome.error.as_deref(),
            Some("corral could not run it: no")
        );
        assert_eq!(rec.started_at, "2026-01-01T00:00:00.000Z");
        let out = rec.output.expect("stderr exists");
        assert!(out.stdout.is_none());
        assert_eq!(out.stderr.unwrap().bytes, 5);
    }

    #[test]
    fn a_lost_run_says_what_the_restart_found() {
        let rec = synth(
            &FakeBackend,
            &job("l1"),
            |s| PathBuf::from(format!("/nonexistent/l1.{s}")),
            Never::Lost {
                started_at: None,
                note: "Lost: found it.".into(),
            },
        );
        assert_eq!(rec.outcome.reason, Reason::Lost);
        assert_eq!(rec.outcome.exit_code, LOST_EXIT_CODE);
        assert!(rec.notes.starts_with("Lost: found it."), "{}", rec.notes);
    }

    #[test]
    fn cancel_explained_by_who_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        let mut rec = synth(
            &FakeBackend,
            &job("c1"),
            |s| dir.path().join(format!("c1.{s}")),
            Never::Cancelled { started_at: None },
        );
        rec.usage.wall_s = 2.0;
        let api = explain_cancel(rec.clone(), Some(CancelBy::Api), Duration::from_secs(30));
        assert!(
            api.notes.starts_with(
                "Cancelled after 2.0 s: a client cancelled it through the corral service \
                 (POST /runs/c1/cancel)."
            ),
            "{}",
            api.notes
        );
        let drain = explain_cancel(
            rec.clone(),
            Some(CancelBy::Drain(libc::SIGTERM)),
            Duration::from_secs(30),
        );
        assert!(
            drain.notes.starts_with(
                "Cancelled after 2.0 s: the corral service received SIGTERM and the run did \
                 not finish within its 30.0 s drain timeout."
            ),
            "{}",
            drain.notes
        );
        assert_eq!(explain_cancel(rec.clone(), None, Duration::ZERO), rec);
        let mut other = rec.clone();
        other.outcome.reason = Reason::Exited;
        assert_eq!(
            explain_cancel(other.clone(), Some(CancelBy::Api), Duration::ZERO),
            other
        );
    }
}
