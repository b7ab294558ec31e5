//! The live line of `corral run` and `corral wait` on a terminal: one line on stderr,
//! redrawn about once a second with what the run uses (elapsed / timeout, memory now and
//! peak / limit, CPU %, processes), and erased before the summary line. Only when
//! stderr is a terminal and the caller did not ask for quiet: never in a pipe or a file.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_run::{Observer, Progress};
use corral_service::client::{Client, ClientError};
use corral_service::wire::RunStatus;
use corral_spec::format_bytes;

/// How often the line is redrawn.
pub const EVERY: Duration = Duration::from_secs(1);

/// Whether to show the line: stderr is a terminal, not `--quiet`, and `TERM` is not
/// `dumb` (which cannot erase a line).
pub fn wanted(quiet: bool) -> bool {
    !quiet
        && std::io::stderr().is_terminal()
        && std::env::var_os("TERM").is_none_or(|t| t != "dumb")
}

/// The line's state: the limits it shows and the previous reading (for CPU %).
#[derive(Debug, Default)]
pub struct LiveLine {
    timeout: Option<Duration>,
    memory_limit: Option<u64>,
    last: Option<Progress>,
    drawn: bool,
}

impl LiveLine {
    /// A line for a run with these limits.
    pub fn new(timeout: Option<Duration>, memory_limit: Option<u64>) -> LiveLine {
        LiveLine {
            timeout,
            memory_limit,
            ..LiveLine::default()
        }
    }

    /// The text for reading `p` (the CPU % over the time since the previous one).
    pub fn render(&mut self, p: &Progress) -> String {
        let mut s = format!("corral: {}", clock(p.elapsed));
        if let Some(t) = self.timeout {
            s += &format!(" / {}", clock(t));
        }
        match (p.memory_bytes, p.memory_peak_bytes) {
            (Some(now), Some(peak)) => {
                s += &format!("  mem {} (peak {})", format_bytes(now), format_bytes(peak))
            }
            (Some(now), None) => s += &format!("  mem {}", format_bytes(now)),
            _ => s += "  mem ?",
        }
        if let Some(m) = self.memory_limit {
            s += &format!(" / {}", format_bytes(m));
        }
        let cpu = match (self.last, p.cpu) {
            (
                Some(Progress {
                    elapsed: e0,
                    cpu: Some(c0),
                    ..
                }),
                Some(c1),
            ) if p.elapsed > e0 => {
                Some(c1.saturating_sub(c0).as_secs_f64() / (p.elapsed - e0).as_secs_f64())
            }
            (None, Some(c1)) if !p.elapsed.is_zero() => {
                Some(c1.as_secs_f64() / p.elapsed.as_secs_f64())
            }
            _ => None,
        };
        match cpu {
            Some(f) => s += &format!("  cpu {:.0}%", f * 100.0),
            None => s += "  cpu ?",
        }
        s += &format!(
            "  {} process{}",
            p.processes,
            if p.processes == 1 { "" } else { "es" }
        );
        self.last = Some(*p);
        s
    }

    /// Redraws the line on stderr with reading `p`.
    pub fn draw(&mut self, p: &Progress) {
        let text = self.render(p);
        let mut err = std::io::stderr().lock();
        // Back to column 0, erase the line, write (no newline: the next draw replaces it).
        let _ = write!(err, "\r\x1b[2K{text}");
        let _ = err.flush();
        self.drawn = true;
    }

    /// Erases the line, if one was drawn, so the summary line takes its place.
    pub fn clear(&mut self) {
        if std::mem::take(&mut self.drawn) {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
    }
}

/// A shared line, and the observer that draws it on the supervisor's timer.
pub fn observer(line: &Arc<Mutex<LiveLine>>) -> Observer {
    let line = line.clone();
    Observer {
        every: EVERY,
        on_tick: Box::new(move |p| {
            if let Ok(mut l) = line.lock() {
                l.draw(p);
            }
        }),
    }
}

/// `corral wait` on a terminal: waits in steps of about a second, drawing the
/// service's reading of the run (`live` in its status) after each, until it is final;
/// the line is erased before returning.
pub fn wait_showing(client: &Client, id: &str) -> Result<RunStatus, ClientError> {
    let mut line: Option<LiveLine> = None;
    let res = loop {
        match client.wait(id, EVERY.as_secs_f64()) {
            Ok((true, st)) => break Ok(st),
            Ok((false, st)) => {
                if let Some(u) = st.live {
                    let l = line.get_or_insert_with(|| {
                        LiveLine::new(
                            u.timeout_s.map(Duration::from_secs_f64),
                            u.memory_limit_bytes,
                        )
                    });
                    l.draw(&Progress {
                        elapsed: Duration::from_secs_f64(u.elapsed_s),
                        cpu: u.cpu_s.map(Duration::from_secs_f64),
                        memory_bytes: u.memory_bytes,
                        memory_peak_bytes: u.memory_peak_bytes,
                        processes: u.processes as usize,
                    });
                }
            }
            Err(e) => break Err(e),
        }
    };
    if let Some(l) = &mut line {
        l.clear();
    }
    res
}

/// `m:ss`, or `h:mm:ss` from an hour on.
fn clock(d: Duration) -> String {
    let t = d.as_secs();
    let (h, m, s) = (t / 3600, (t % 3600) / 60, t % 60);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m}:{s:02}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, cpu_ms: u64, mem: u64, peak: u64, procs: usize) -> Progress {
        Progress {
            elapsed: Duration::from_secs(secs),
            cpu: Some(Duration::from_millis(cpu_ms)),
            memory_bytes: Some(mem),
            memory_peak_bytes: Some(peak),
            processes: procs,
        }
    }

    #[test]
    fn the_line_shows_time_memory_cpu_and_processes() {
        let mut l = LiveLine::new(Some(Duration::from_secs(1800)), Some(2 << 30));
        assert_eq!(
            l.render(&at(12, 6000, 300 << 20, 400 << 20, 3)),
            "corral: 0:12 / 30:00  mem 300 MiB (peak 400 MiB) / 2.0 GiB  cpu 50%  3 processes"
        );
        // CPU % over the last interval: 1.5 s of CPU in 1 s of wall time.
        assert_eq!(
            l.render(&at(13, 7500, 1 << 20, 400 << 20, 1)),
            "corral: 0:13 / 30:00  mem 1.0 MiB (peak 400 MiB) / 2.0 GiB  cpu 150%  1 process"
        );
        let mut l = LiveLine::new(None, None);
        let p = Progress {
            elapsed: Duration::from_secs(3725),
            cpu: None,
            memory_bytes: None,
            memory_peak_bytes: None,
            processes: 2,
        };
        assert_eq!(l.render(&p), "corral: 1:02:05  mem ?  cpu ?  2 processes");
    }
}
