//! Crash safety: a guard process that ends a run if its supervisor dies.
//!
//! The child of a run gets `PR_SET_PDEATHSIG(SIGKILL)`, but that reaches only the main
//! process; its children and escapees would live on in the run's cgroup. So each
//! supervising corral process starts one guard: a fork of corral made while it is
//! still single-threaded ([`fork_now`], `corral-guard` in `ps`), or the corral binary
//! re-executed as `corral __guard` ([`get`], [`start_now`]). It runs in its own
//! session (terminal signals do not reach it), outside every run's cgroup. The supervisor registers each run's cgroup with it over
//! a pipe before the run starts and unregisters it after teardown. When the pipe hits
//! EOF without a goodbye, the supervisor is gone: the guard kills every registered run
//! and removes its cgroups, then exits. Whatever even the guard misses, `corral gc`
//! (and the start of every `corral run`) reaps, recognising dead owners by cgroup name.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use corral_cgroup::layout::Layout;
use corral_cgroup::tree::Tree;
use corral_cgroup::v1::{Group1, RUN_CONTROLLERS};
use corral_cgroup::v2::Cgroup2;
use corral_cgroup::CgroupError;

/// What a guard must clean up for one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuardEntry {
    /// A cgroup v2 directory.
    V2(PathBuf),
    /// A cgroup v1 group, by its path relative to each hierarchy's root.
    V1(PathBuf),
    /// A process group (rlimit backend).
    ProcessGroup(i32),
}

impl GuardEntry {
    fn encode(&self) -> Option<String> {
        let s = match self {
            GuardEntry::V2(p) => format!("v2\t{}", p.to_str()?),
            GuardEntry::V1(p) => format!("v1\t{}", p.to_str()?),
            GuardEntry::ProcessGroup(g) => format!("pg\t{g}"),
        };
        (!s.contains('\n')).then_some(s)
    }

    fn decode(line: &str) -> Option<GuardEntry> {
        let (kind, arg) = line.split_once('\t')?;
        match kind {
            "v2" => Some(GuardEntry::V2(arg.into())),
            "v1" => Some(GuardEntry::V1(arg.into())),
            "pg" => arg.parse().ok().map(GuardEntry::ProcessGroup),
            _ => None,
        }
    }
}

/// The supervisor's end of its guard.
pub struct Guard {
    pipe: Mutex<std::fs::File>,
}

static GUARD: OnceLock<Option<Guard>> = OnceLock::new();
static GUARD_BIN: OnceLock<PathBuf> = OnceLock::new();

/// Enables the guard: `corral_bin` is a corral binary that understands `__guard`
/// (the CLI passes its own executable). Without this call runs have no guard (the
/// main process still dies with its supervisor; the rest is left for `corral gc`).
pub fn enable(corral_bin: &Path) {
    let _ = GUARD_BIN.set(corral_bin.to_path_buf());
}

/// The process-wide guard, started on first use; `None` when not enabled or its pipe
/// could not be made (logged).
pub fn get() -> Option<&'static Guard> {
    guard(true)
}

/// Starts the guard as a fork of this process, without an exec: much cheaper than
/// re-executing the corral binary. Only possible while the process is single-threaded
/// (call it first thing, before any runtime or thread exists); otherwise, or if
/// [`enable`] was not called, it does what [`get`] does.
pub fn fork_now() -> Option<&'static Guard> {
    if GUARD_BIN.get().is_none() || GUARD.get().is_some() || !single_threaded() {
        return get();
    }
    GUARD
        .get_or_init(|| match Guard::fork() {
            Ok(g) => Some(g),
            Err(e) => {
                tracing::warn!("cannot fork the crash guard ({e}); starting it by exec");
                GUARD_BIN.get().and_then(|bin| Guard::start(bin, true).ok())
            }
        })
        .as_ref()
}

fn single_threaded() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .map(|n| n.trim() == "1")
        })
        .unwrap_or(false)
}

/// Starts the guard now and waits until its process exists. A supervisor that is about
/// to move itself into another cgroup (the service) calls this first, so the guard
/// stays outside the cgroup tree the supervisor may want to remove later.
pub fn start_now() -> Option<&'static Guard> {
    guard(false)
}

fn guard(background: bool) -> Option<&'static Guard> {
    GUARD
        .get_or_init(|| {
            let bin = GUARD_BIN.get()?;
            match Guard::start(bin, background) {
                Ok(g) => Some(g),
                Err(e) => {
                    tracing::warn!("cannot start the crash guard {}: {e}", bin.display());
                    None
                }
            }
        })
        .as_ref()
}

impl Guard {
    /// Makes the pipe at once and starts the guard process, on a helper thread when
    /// `background` (so a run does not wait for the guard's exec: registrations queue in
    /// the pipe, and the guard reads them whenever it is up, even if the supervisor is
    /// gone by then).
    fn start(bin: &Path, background: bool) -> std::io::Result<Guard> {
        let (rx, tx) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let bin = bin.to_path_buf();
        let spawn = move || {
            let spawned = Command::new(&bin)
                .arg("__guard")
                .stdin(Stdio::from(rx))
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn();
            match spawned {
                // The guard outlives us on purpose: it exits by itself on EOF, and init
                // reaps it if we die first.
                Ok(child) => std::mem::forget(child),
                Err(e) => tracing::warn!("cannot start the crash guard {}: {e}", bin.display()),
            }
        };
        if background {
            std::thread::Builder::new()
                .name("corral-guard-spawn".into())
                .spawn(spawn)?;
        } else {
            spawn();
        }
        Ok(Guard {
            pipe: Mutex::new(std::fs::File::from(tx)),
        })
    }

    fn fork() -> std::io::Result<Guard> {
        let (rx, tx) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let null = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")?;
        match crate::spawn::fork_single_threaded()? {
            0 => {
                // `ps` and tests know it as corral-guard (an exec'd guard shows
                // `corral __guard`).
                let _ = rustix::thread::set_name(c"corral-guard");
                // The guard: keep no end of the supervisor's stdin or stdout (a caller
                // reading them waits for EOF), nor the pipe's write end.
                let _ = rustix::stdio::dup2_stdin(&null);
                let _ = rustix::stdio::dup2_stdout(&null);
                drop(null);
                drop(tx);
                guard_loop(std::io::BufReader::new(std::fs::File::from(rx)))
            }
            _child => {
                drop(rx);
                Ok(Guard {
                    pipe: Mutex::new(std::fs::File::from(tx)),
                })
            }
        }
    }

    fn send(&self, line: &str) {
        let mut p = self.pipe.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = p.write_all(line.as_bytes()) {
            tracing::warn!("crash guard: {e}");
        }
    }

    /// Registers a run before its child starts.
    pub fn register(&self, e: &GuardEntry) {
        match e.encode() {
            Some(s) => self.send(&format!("+{s}\n")),
            None => tracing::warn!("crash guard: cannot register {e:?}"),
        }
    }

    /// Unregisters a run after its teardown.
    pub fn unregister(&self, e: &GuardEntry) {
        if let Some(s) = e.encode() {
            self.send(&format!("-{s}\n"));
        }
    }
}

/// The guard process: `corral __guard`. Reads registrations from stdin until EOF, then
/// ends and removes whatever is still registered.
pub fn guard_main() -> ! {
    guard_loop(std::io::stdin().lock())
}

/// The guard's work: read registrations until EOF, then end what is left and exit.
fn guard_loop(input: impl BufRead) -> ! {
    // SIGINT from the terminal must not take the guard down with its supervisor.
    let _ = rustix::process::setsid();
    let mut live: Vec<GuardEntry> = Vec::new();
    for line in input.lines() {
        let Ok(line) = line else { break };
        if let Some(rest) = line.strip_prefix('+') {
            if let Some(e) = GuardEntry::decode(rest) {
                live.push(e);
            }
        } else if let Some(rest) = line.strip_prefix('-') {
            if let Some(e) = GuardEntry::decode(rest) {
                live.retain(|x| *x != e);
            }
        }
    }
    for e in &live {
        if let Err(err) = end(e) {
            eprintln!("corral guard: cleaning up {e:?}: {err}");
        }
    }
    std::process::exit(0)
}

/// How long [`end`] waits for a killed tree to empty.
const END_WAIT: Duration = Duration::from_secs(5);

/// Kills everything in `e` and removes its cgroups, bounded in time.
pub fn end(e: &GuardEntry) -> Result<(), CgroupError> {
    match e {
        GuardEntry::V2(p) => Cgroup2::at(p).end_tree(END_WAIT).map(drop),
        GuardEntry::V1(rel) => Group1::open(&Layout::detect(), rel, RUN_CONTROLLERS)
            .end_tree(END_WAIT)
            .map(drop),
        GuardEntry::ProcessGroup(pgid) => {
            if let Some(p) = rustix::process::Pid::from_raw(*pgid) {
                let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_roundtrip() {
        for e in [
            GuardEntry::V2("/sys/fs/cgroup/corral/x.a.1.2".into()),
            GuardEntry::V1("corral/x.a.1.2".into()),
            GuardEntry::ProcessGroup(42),
        ] {
            assert_eq!(GuardEntry::decode(&e.encode().unwrap()), Some(e));
        }
        assert!(GuardEntry::V2("/a\nb".into()).encode().is_none());
    }
}
