//! Small helpers shared by the v1 and v2 layers: reading, writing and parsing cgroup files.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::{CgroupError, Result};

/// Reads a whole cgroup file as text.
pub fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Io {
        op: "read",
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `value` to a cgroup file in one `write(2)`, as the kernel expects. The file
/// is opened with `O_TRUNC` as a shell's `>` does: the kernel ignores it on cgroup
/// files, and a plain file standing in for one (in tests) then holds just `value`.
pub fn write(path: &Path, value: &str) -> Result<()> {
    let io = |source| CgroupError::Io {
        op: "write",
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(io)?;
    f.write_all(value.as_bytes()).map_err(io)
}

/// Reads a file holding one unsigned number (or `max`, returned as `None`).
pub fn read_u64(path: &Path) -> Result<Option<u64>> {
    let s = read(path)?;
    let t = s.trim();
    if t == "max" {
        return Ok(None);
    }
    t.parse().map(Some).map_err(|_| CgroupError::Parse {
        path: path.to_path_buf(),
        what: format!("expected a number or \"max\", got {t:?}"),
    })
}

/// Parses a flat keyed file (`key value` per line), such as `memory.events`,
/// `cpu.stat`, `pids.events` or v1's `memory.oom_control`. Non-numeric values are skipped.
pub fn parse_flat_keyed(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let k = it.next()?;
            let v = it.next()?.parse().ok()?;
            Some((k.to_string(), v))
        })
        .collect()
}

/// Reads and parses a flat keyed file.
pub fn read_flat_keyed(path: &Path) -> Result<HashMap<String, u64>> {
    read(path).map(|s| parse_flat_keyed(&s))
}

/// Reads a `cgroup.procs` (or `tasks`) file into pids.
pub fn read_pids(path: &Path) -> Result<Vec<i32>> {
    Ok(read(path)?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect())
}

/// Creates a directory (a cgroup); an existing one is an error unless `exist_ok`.
pub fn mkdir(path: &Path, exist_ok: bool) -> Result<()> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if exist_ok && e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(CgroupError::Io {
            op: "mkdir",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Removes an empty cgroup directory, retrying EBUSY (the kernel may still be tearing
/// down the last task) with a short backoff until `budget` is spent. A missing
/// directory counts as removed.
pub fn rmdir_retry(path: &Path, budget: Duration) -> Result<()> {
    let start = Instant::now();
    let mut delay = Duration::from_micros(200);
    loop {
        match std::fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && start.elapsed() < budget => {
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_millis(50));
            }
            Err(source) => {
                return Err(CgroupError::Io {
                    op: "rmdir",
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_keyed() {
        let m = parse_flat_keyed("low 0\nhigh 3\nmax 12\noom 1\noom_kill 1\nbogus\nx y\n");
        assert_eq!(m["oom_kill"], 1);
        assert_eq!(m["max"], 12);
        assert!(!m.contains_key("x"));
    }
}
