//! Captured output files, with an optional cap.
//!
//! Without a cap the child writes straight into the file. With `--output-limit`, the
//! child writes into a pipe and corral copies up to the cap into the file and reads and
//! drops the rest, so a flood neither fills the disk nor blocks the run on a full pipe.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use corral_record::Captured;

/// One output stream being captured.
pub struct OutputFile {
    path: PathBuf,
    copier: Option<std::thread::JoinHandle<std::io::Result<(u64, u64)>>>,
}

/// Opens `path` (created or truncated) and returns the fd the child should write to.
pub fn open(path: &Path, cap: Option<u64>) -> std::io::Result<(OwnedFd, OutputFile)> {
    let file = File::create(path)?;
    let Some(cap) = cap else {
        return Ok((
            file.into(),
            OutputFile {
                path: path.to_path_buf(),
                copier: None,
            },
        ));
    };
    let (rx, tx) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    // A plain thread: it blocks in read() until every writer (the whole tree) is gone.
    let copier = std::thread::Builder::new()
        .name("corral-output".into())
        .spawn(move || copy_capped(File::from(rx), file, cap))?;
    Ok((
        tx,
        OutputFile {
            path: path.to_path_buf(),
            copier: Some(copier),
        },
    ))
}

fn copy_capped(mut rx: File, mut out: File, cap: u64) -> std::io::Result<(u64, u64)> {
    let mut buf = vec![0u8; 64 * 1024];
    let (mut written, mut dropped) = (0u64, 0u64);
    loop {
        let n = match rx.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let keep = (cap - written).min(n as u64) as usize;
        if keep > 0 {
            out.write_all(&buf[..keep])?;
            written += keep as u64;
        }
        dropped += (n - keep) as u64;
    }
    Ok((written, dropped))
}

impl OutputFile {
    /// Waits for the copy to finish (the tree is gone, so the pipe is at EOF) and says
    /// what was kept and dropped.
    pub fn finish(self) -> Captured {
        let (bytes, dropped_bytes) = match self.copier {
            Some(h) => match h.join() {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => {
                    tracing::warn!("copying output to {}: {e}", self.path.display());
                    (file_len(&self.path), 0)
                }
                Err(_) => (file_len(&self.path), 0),
            },
            None => (file_len(&self.path), 0),
        };
        Captured {
            path: self.path.display().to_string(),
            bytes,
            dropped_bytes,
        }
    }
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}
