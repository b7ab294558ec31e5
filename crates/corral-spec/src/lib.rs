//! What a corral run asks for.
//!
//! This crate is the only place where user input about limits is parsed and validated:
//! sizes (`2G` is 2 GiB, as in systemd), durations (`1h30m`), CPU quotas, pid counts,
//! profiles (built-in, then `/etc/corral/profiles.toml`, then the user's) and analysis
//! metadata files. Everything downstream works with the typed [`Limits`].
//!
//! Layers are merged in one direction: built-in profile < profile file < metadata
//! (`--limits-from`) < command-line flags. Each layer is a [`LimitsPatch`]; a field that
//! a layer leaves out keeps the value of the layer below.

mod io;
mod kind;
mod limits;
mod metadata;
mod profile;
mod units;

pub use io::{
    check_io_device_path, check_io_weight, parse_io_weight_setting, parse_iops_setting,
    parse_rate_setting, IO_WEIGHT_RANGE,
};
pub use kind::{LimitKind, LIMIT_KEYS};
pub use limits::{
    add_paths, check_hide_path, check_rw_path, parse_grace, parse_swap, FsMode, Isolation, Limits,
    LimitsPatch, Network, PidNs, Setting, Syscalls, User,
};
pub use metadata::{load_metadata, parse_metadata, Metadata};
pub use profile::{builtin_profiles, Profile, ProfileSet, ProfileSource};
pub use units::{
    format_bytes, format_duration, parse_cpus, parse_cpus_setting, parse_duration,
    parse_duration_setting, parse_pids, parse_pids_setting, parse_size, parse_size_setting,
};
pub use units::{min_memory, parse_memory_setting};

/// A TOML syntax error, located: displayed as one line, `line L, column C: what`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TomlSyntax {
    /// Line and column (1-based), when the parser knows them.
    at: Option<(usize, usize)>,
    /// What is wrong, on one line.
    msg: String,
}

impl TomlSyntax {
    /// Locates a TOML parse error in `text`.
    pub(crate) fn new(text: &str, e: &toml::de::Error) -> TomlSyntax {
        let msg = e.message().trim().replace('\n', " ");
        let at = e.span().map(|span| {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            (line, col)
        });
        TomlSyntax { at, msg }
    }
}

impl std::fmt::Display for TomlSyntax {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.at {
            Some((line, col)) => write!(f, "line {line}, column {col}: {}", self.msg),
            None => f.write_str(&self.msg),
        }
    }
}

impl std::error::Error for TomlSyntax {}

/// A precise, user-facing error about a limit, a profile or a metadata file.
#[derive(Debug, thiserror::Error, Clone)]
pub enum SpecError {
    /// A value that does not parse or is out of range.
    #[error("invalid {what} {value:?}: {why}")]
    Invalid {
        /// Which setting (e.g. "memory size").
        what: &'static str,
        /// The text as given.
        value: String,
        /// Why it was refused, with the accepted form.
        why: String,
    },
    /// A profile name that no layer defines.
    #[error("unknown profile {name:?}; known profiles: {known}")]
    UnknownProfile {
        /// The requested name.
        name: String,
        /// Comma-separated list of the profiles that exist.
        known: String,
    },
    /// A profile or metadata file that cannot be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error (shared, so that the error stays cheap to clone).
        #[source]
        source: std::sync::Arc<std::io::Error>,
    },
    /// A profile or metadata file that cannot be parsed.
    #[error("{path}: {why}")]
    File {
        /// The file.
        path: String,
        /// What is wrong with it.
        why: String,
    },
}
