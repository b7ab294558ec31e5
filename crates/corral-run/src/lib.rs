//! Running one analysis under limits: the library behind `corral run` and the service.
//!
//! One run flows one way, each step in one module:
//!
//! ```text
//! RunSpec ─► Backend::create ─► spawn ─► supervise ─► collect ─► classify ─► Record
//!            (backend)          (spawn)  (supervise)  (Sandbox)  (corral-record)
//! ```
//!
//! * [`backend`]: the [`Backend`] trait and its implementations; each creates a
//!   [`Sandbox`] (a cgroup, a set of v1 groups, a systemd scope, or plain rlimits) and
//!   says which limits it really enforces.
//! * [`spawn`]: exec resolution, and the only unsafe code (in one file, `spawn/sys.rs`):
//!   `clone3(CLONE_INTO_CGROUP | CLONE_PIDFD)` and the child's checklist of setup steps.
//! * [`isolation`]: the layers beyond the limits (syscall filter, new session,
//!   `no_new_privs`, no core dumps, the run's own network namespace), decided before
//!   the start so the record says what was really applied; [`fsview`]: the read-only
//!   view of the host's files, its writable and hidden paths.
//! * [`identity`]: who the command runs as (the caller, a dynamic uid, `--user`), and
//!   [`owner`]: how files it creates in its working directory keep their owner.
//! * [`supervise`]: the event loop of one run (pidfd, timers, inotify/eventfd), the
//!   SIGTERM → grace → kill sequence, and the wait until the tree is gone.
//! * [`mod@run`]: ties it together and builds the [`corral_record::Record`].

#![deny(unsafe_code)]

pub mod backend;
pub mod check;
pub mod disk;
pub mod fsview;
pub mod guard;
pub mod ident;
pub mod identity;
pub mod isolation;
pub mod output;
pub mod owner;
pub mod quota;
pub mod run;
pub mod spawn;
pub mod supervise;
pub mod timeline;

pub use backend::{Backend, BackendKind, Sandbox};
pub use run::{run, run_observed, Cancel, Observer, Progress, RunError, RunSpec, Stdio};
