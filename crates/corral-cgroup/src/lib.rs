//! corral's cgroup file layer.
//!
//! A cgroup is a directory of small text files; this crate reads and writes them, and
//! nothing more: it knows no run, no policy and no process spawning. [`v2`] handles the
//! unified hierarchy (one tree, controllers enabled per subtree); [`v1`] handles the
//! legacy layout, where each controller (memory, cpu, cpuacct, pids, freezer, blkio) has
//! its own hierarchy and a run's group is one directory in each. [`layout`] finds what a
//! host has mounted. [`limits`] is the one place where limits are written to a group
//! (one writer per hierarchy kind) and read back. [`tree`] ends a tree of either kind:
//! kill, wait until empty, rmdir.
//!
//! Errors carry the file they concern, because a cgroup error without a path is useless.

pub mod io;
pub mod layout;
pub mod limits;
pub mod sample;
pub mod tree;
pub mod util;
pub mod v1;
pub mod v2;

use std::path::PathBuf;

/// An error touching a cgroup file, with the path it concerns.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A read, write, mkdir or rmdir that failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was attempted ("write", "mkdir", ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file whose content did not parse.
    #[error("unexpected content in {path}: {what}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        what: String,
    },
    /// The host lacks what was needed (a mount, a controller, a file).
    #[error("{0}")]
    Unsupported(String),
    /// A bounded wait or retry gave up.
    #[error("{0}")]
    Timeout(String),
}

impl CgroupError {
    /// The OS error number, if this is an I/O error.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            CgroupError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, CgroupError>;
