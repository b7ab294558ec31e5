//! What can go wrong in the core, as types. The HTTP layer alone turns these into
//! status codes (`http::status_for`); the core never names a status.
//!
//! Each message is the whole sentence a client reads in `{"error": ...}`, its cause
//! included; the cause is also kept as the error's source, so a caller can match on it
//! (an SQLite error, an I/O error and its path) instead of parsing text.

use std::path::PathBuf;

use corral_run::run::RunError;

use crate::admission::NeedError;
use crate::ledger::LedgerError;
use crate::service::auth::Forbidden;
use crate::service::retention::OutputGone;
use crate::service::validate::Invalid;

/// An error of the service core.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// No run has this id.
    #[error("no run with id {0:?}")]
    NotFound(String),
    /// The caller may not do this (submit at all, or as another user).
    #[error(transparent)]
    Forbidden(#[from] Forbidden),
    /// A TCP request without a known bearer token.
    #[error(
        "a request over TCP needs \"Authorization: Bearer TOKEN\" with a token of the \
         service's --token-file (the corral client sends $CORRAL_TOKEN)"
    )]
    Unauthenticated,
    /// Another user's run already holds the idempotency key.
    #[error("the idempotency key is already used by another user's run; choose another key")]
    KeyTaken,
    /// The caller's idempotency key was used before with a different submission.
    #[error(
        "the idempotency key was used before with a different submission; use a new key \
         for a new run (or send the same body to get the earlier run)"
    )]
    KeyReused,
    /// The submission's `cwd` is not an existing directory on the service's host: a
    /// well-formed request this host cannot carry out (422, like a budget refusal).
    #[error("\"cwd\" {0:?} is not an existing directory on the service's host")]
    NoCwd(String),
    /// `--admin-group` or `--allow-group` names no group.
    #[error("{flag}: no group {name:?}")]
    UnknownGroup {
        /// The flag.
        flag: &'static str,
        /// The name given.
        name: String,
    },
    /// The submission is malformed or names something invalid.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// The run asks for isolation this host cannot give (`require_isolation`).
    #[error(transparent)]
    Refused(RunError),
    /// The run could never be admitted under the service budget.
    #[error(transparent)]
    OverBudget(#[from] NeedError),
    /// A run with the caller-chosen id exists already.
    #[error("a run with id {0:?} already exists")]
    Conflict(String),
    /// The service is draining after a signal and takes no new runs.
    #[error("the corral service is shutting down and accepts no new runs")]
    Draining,
    /// The captured output was removed after `--keep-output`.
    #[error(transparent)]
    Gone(#[from] OutputGone),
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The blocking task that called the ledger panicked or was cancelled.
    #[error("ledger task failed: {0}")]
    LedgerTask(#[from] tokio::task::JoinError),
    /// A submission could not be serialized for the ledger.
    #[error(transparent)]
    Encode(serde_json::Error),
    /// Five generated run ids in a row were taken.
    #[error("could not generate a unique run id")]
    NoUniqueId,
    /// The output directory beside the ledger cannot be created (at start).
    #[error("cannot create {}: {source}", path.display())]
    OutputDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The executor cannot be used (at start): Slurm's commands are missing, or its
    /// spool cannot be made.
    #[error("--executor slurm: {0}")]
    Executor(String),
}
