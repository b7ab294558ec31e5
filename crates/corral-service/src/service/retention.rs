//! Output retention: captured output outlives its run for `--keep-output`, then goes;
//! the record stays in the ledger, and asking for the removed output is a 410 that
//! says why.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use corral_spec::format_duration;
use tokio::sync::watch;

use crate::service::{Caller, Service, ServiceError};
use crate::wire::{RunState, RunStatus};

/// A finished run's captured stream that was removed after `--keep-output`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the {stream} of run {id} ({bytes} bytes) is no longer kept: {} (corral serve \
     --keep-output); the run's record is still available",
    kept(.keep)
)]
pub struct OutputGone {
    /// The run.
    pub id: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The size its record gives.
    pub bytes: u64,
    /// The service's `--keep-output` (`None`: for ever, so someone else removed it).
    pub keep: Option<Duration>,
}

fn kept(keep: &Option<Duration>) -> String {
    match keep {
        Some(k) => format!(
            "this service keeps captured output for {} after it was last written",
            format_duration(*k)
        ),
        None => "it was removed from the output directory".to_string(),
    }
}

/// The run id of a captured output file's name (`<id>.stdout`, `<id>.stderr`).
fn run_of(file_name: &str) -> Option<&str> {
    file_name
        .strip_suffix(".stdout")
        .or_else(|| file_name.strip_suffix(".stderr"))
}

/// Whether a captured file last written `age` ago (`None`: unknown) has outlived
/// `keep`. Such a file still stays while its run is queued or running: a quiet run
/// keeps its files however long it runs.
fn outlived(age: Option<Duration>, keep: Duration) -> bool {
    age.is_some_and(|a| a > keep)
}

/// Whether a file that outlived `--keep-output` goes, given its run's state (`None`:
/// no ledger row accounts for it, so it goes too).
fn removable(state: Option<RunState>) -> bool {
    state.is_none_or(|s| s.is_final())
}

impl Service {
    /// How long captured output outlives its run (`--keep-output`; `None`: for ever).
    pub fn keep_output(&self) -> Option<Duration> {
        self.keep_output
    }

    /// Removes captured output last written more than `--keep-output` ago, unless its
    /// run is still queued or running (a quiet run keeps its files however long it
    /// runs). Files no ledger row accounts for go too. The records stay in the ledger.
    /// Returns how many files were removed.
    pub fn prune_outputs(&self) -> usize {
        let Some(keep) = self.keep_output else {
            return 0;
        };
        let entries = match std::fs::read_dir(&self.output_dir) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("cannot list {}: {e}", self.output_dir.display());
                return 0;
            }
        };
        let now = SystemTime::now();
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(run_of) else {
                continue;
            };
            let age = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok());
            if !outlived(age, keep) {
                continue;
            }
            let state = match self.ledger.get(id) {
                Ok(row) => row.map(|r| r.state),
                Err(e) => {
                    tracing::warn!("pruning output: cannot look up run {id}: {e}");
                    continue;
                }
            };
            if !removable(state) {
                continue;
            }
            match std::fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!("cannot remove {}: {e}", entry.path().display()),
            }
        }
        if removed > 0 {
            self.metrics
                .outputs_pruned
                .fetch_add(removed as u64, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(
                "removed {removed} output file(s) older than {} (--keep-output)",
                format_duration(keep)
            );
        }
        removed
    }

    /// Why a finished run's captured `stream` cannot be shown any more: it was captured
    /// (the record says so) and its file is gone, removed after `--keep-output`.
    pub fn output_gone(&self, status: &RunStatus, stream: &str) -> Option<OutputGone> {
        let out = status.record.as_ref()?.output.as_ref()?;
        let captured = match stream {
            "stdout" => out.stdout.as_ref(),
            _ => out.stderr.as_ref(),
        }?;
        if !status.state.is_final() || self.output_path(&status.id, stream).exists() {
            return None;
        }
        Some(OutputGone {
            id: status.id.clone(),
            stream: stream.to_string(),
            bytes: captured.bytes,
            keep: self.keep_output,
        })
    }

    /// `GET /runs/{id}/output`: the file of a run's captured `stream` (`stdout` or
    /// `stderr`) and, while the run is active here, its "done" signal for `follow`.
    pub async fn output(
        &self,
        caller: &Caller,
        id: &str,
        stream: &str,
    ) -> Result<(PathBuf, Option<watch::Receiver<bool>>), ServiceError> {
        // Subscribed before the status is read, so the end of the run cannot slip
        // between the two.
        let done = self.done_signal(id);
        // NotFound for an unknown id (and the id is checked before it becomes a file
        // name).
        let status = self.status(caller, id).await?;
        if let Some(gone) = self.output_gone(&status, stream) {
            return Err(gone.into());
        }
        Ok((self.output_path(id, stream), done))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::testing::{finish, insert, test_service};

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn decisions() {
        assert_eq!(run_of("r1.stdout"), Some("r1"));
        assert_eq!(run_of("r1.stderr"), Some("r1"));
        assert_eq!(run_of("ledger.db"), None);
        assert!(!outlived(None, HOUR), "an unknown age is kept");
        assert!(!outlived(Some(HOUR), HOUR));
        assert!(outlived(Some(2 * HOUR), HOUR));
        assert!(removable(None), "no ledger row accounts for it");
        assert!(removable(Some(RunState::Done)) && removable(Some(RunState::Lost)));
        assert!(!removable(Some(RunState::Running)) && !removable(Some(RunState::Queued)));
    }

    #[test]
    fn gone_message() {
        let g = OutputGone {
            id: "r1".into(),
            stream: "stdout".into(),
            bytes: 12,
            keep: Some(HOUR),
        };
        assert_eq!(
            g.to_string(),
            "the stdout of run r1 (12 bytes) is no longer kept: this service keeps captured \
             output for 1 h after it was last written (corral serve --keep-output); the \
             run's record is still available"
        );
        let g = OutputGone { keep: None, ..g };
        assert!(g
            .to_string()
            .contains("no longer kept: it was removed from the output directory (corral"));
    }

    /// Old files of finished runs and of no run go; new files, and old files of runs
    /// that are still queued or running, stay.
    #[test]
    fn prune_on_a_temporary_ledger() {
        let t = test_service(|c| c.keep_output = Some(HOUR));
        let svc = &t.svc;
        insert(svc, "done1");
        finish(svc, "done1");
        insert(svc, "queued1");
        let old = SystemTime::now() - 2 * HOUR;
        let write = |name: &str, age: Option<SystemTime>| {
            let p = svc.output_dir.join(name);
            std::fs::write(&p, b"x").unwrap();
            if let Some(t) = age {
                std::fs::File::options()
                    .write(true)
                    .open(&p)
                    .unwrap()
                    .set_modified(t)
                    .unwrap();
            }
            p
        };
        let gone = [
            write("done1.stdout", Some(old)),
            write("done1.stderr", Some(old)),
            write("stray.stdout", Some(old)),
        ];
        let kept = [
            write("queued1.stdout", Some(old)),
            write("done1.extra", Some(old)),
            write("new.stdout", None),
        ];
        assert_eq!(svc.prune_outputs(), 3);
        for p in gone {
            assert!(!p.exists(), "{} should be gone", p.display());
        }
        for p in kept {
            assert!(p.exists(), "{} should be kept", p.display());
        }
        assert_eq!(
            svc.metrics
                .outputs_pruned
                .load(std::sync::atomic::Ordering::Relaxed),
            3
        );
        assert_eq!(svc.prune_outputs(), 0);
    }

    #[test]
    fn nothing_is_pruned_without_keep_output() {
        let t = test_service(|c| c.keep_output = None);
        let p = t.svc.output_dir.join("x.stdout");
        std::fs::write(&p, b"x").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(SystemTime::now() - 1000 * HOUR)
            .unwrap();
        assert_eq!(t.svc.prune_outputs(), 0);
        assert!(p.exists());
    }
}
