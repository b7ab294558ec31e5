//! `corral profiles`.

use anyhow::Result;
use clap::Args;
use std::time::Duration;

use corral_spec::{format_bytes, format_duration, LimitKind, ProfileSet};
use serde_json::json;

/// `corral profiles [--json]`
#[derive(Debug, Args)]
pub struct ProfilesArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn main(a: ProfilesArgs) -> Result<u8> {
    let set = ProfileSet::load_default()?;
    let profiles = set.all();
    if a.json {
        let v: Vec<_> = profiles
            .iter()
            .map(|p| {
                let l = &p.limits;
                let mut v = json!({
                    "name": p.name,
                    "description": p.description,
                    "sources": p.sources.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                });
                for k in LimitKind::ALL {
                    let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
                    v[k.as_str()] = match k {
                        LimitKind::Memory => json!(l.memory),
                        LimitKind::Swap => json!(l.swap),
                        LimitKind::Cpus => json!(l.cpus),
                        LimitKind::Pids => json!(l.pids),
                        LimitKind::Timeout => json!(secs(l.timeout)),
                        LimitKind::CpuTime => json!(secs(l.cpu_time)),
                        LimitKind::Grace => json!(l.grace.as_secs_f64()),
                        LimitKind::OutputLimit => json!(l.output_limit),
                        LimitKind::RequireIsolation => json!(l.require_isolation),
                        LimitKind::Syscalls => json!(l.syscalls.as_str()),
                        LimitKind::Network => json!(l.network.as_str()),
                        LimitKind::Isolation => json!(l.isolation.as_str()),
                        LimitKind::Fs => json!(l.fs.as_str()),
                        LimitKind::Rw => json!(l.rw),
                        LimitKind::Hide => json!(l.hide),
                        LimitKind::PidNs => json!(l.pid_ns.as_str()),
                        LimitKind::User => json!(l.user.as_string()),
                        LimitKind::IoReadBps => json!(l.io_read_bps),
                        LimitKind::IoWriteBps => json!(l.io_write_bps),
                        LimitKind::IoReadIops => json!(l.io_read_iops),
                        LimitKind::IoWriteIops => json!(l.io_write_iops),
                        LimitKind::IoWeight => json!(l.io_weight),
                        LimitKind::IoDevice => json!(l.io_device),
                        LimitKind::FileSize => json!(l.file_size),
                        LimitKind::Disk => json!(l.disk),
                    };
                }
                v
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(0);
    }
    let none = || "-".to_string();
    outln!(
        "{:<14} {:>9} {:>5} {:>6} {:>9} {:>9} {:>6} {:>9} {:>8} {:>7} {:>6}  DESCRIPTION",
        "PROFILE",
        "MEMORY",
        "CPUS",
        "PIDS",
        "TIMEOUT",
        "CPU-TIME",
        "GRACE",
        "ISOLATION",
        "SYSCALLS",
        "NETWORK",
        "PID-NS"
    )?;
    for p in &profiles {
        let l = &p.limits;
        outln!(
            "{:<14} {:>9} {:>5} {:>6} {:>9} {:>9} {:>6} {:>9} {:>8} {:>7} {:>6}  {}",
            p.name,
            l.memory.map(format_bytes).unwrap_or_else(none),
            l.cpus.map(|c| format!("{c}")).unwrap_or_else(none),
            l.pids.map(|c| c.to_string()).unwrap_or_else(none),
            l.timeout.map(format_duration).unwrap_or_else(none),
            l.cpu_time.map(format_duration).unwrap_or_else(none),
            format_duration(l.grace),
            l.isolation.as_str(),
            l.syscalls.as_str(),
            l.network.as_str(),
            l.pid_ns.as_str(),
            p.description
        )?;
    }
    if !set.files().is_empty() {
        let files: Vec<String> = set
            .files()
            .iter()
            .map(|f| f.display().to_string())
            .collect();
        outln!("\nloaded on top of the built-ins: {}", files.join(", "))?;
    }
    Ok(0)
}
