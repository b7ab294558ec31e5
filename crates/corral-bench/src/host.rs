//! Where and when a benchmark ran.

use serde::Serialize;

/// The facts about the host printed with every table.
#[derive(Debug, Clone, Serialize)]
pub struct Host {
    /// `native` or `VM (TCG, plain|systemd)`.
    pub place: String,
    /// The host name.
    pub hostname: String,
    /// `uname -r`.
    pub kernel: String,
    /// `PRETTY_NAME` from `/etc/os-release`.
    pub os: String,
    /// The CPU model.
    pub cpu_model: String,
    /// CPUs this process may use.
    pub cpus: usize,
    /// The cgroup layout (`unified`, `hybrid`, `legacy`).
    pub cgroup_layout: String,
    /// When the measurement started (UTC).
    pub date: String,
    /// The 1-minute load average when it started.
    pub load_before: String,
    /// The 1-minute load average when it ended.
    pub load_after: String,
    /// corral's version.
    pub corral_version: String,
}

fn read(p: &str) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// The 1-minute load average.
pub fn loadavg() -> String {
    read("/proc/loadavg")
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .to_string()
}

impl Host {
    /// Collects the facts now.
    pub fn detect() -> Host {
        let place = match std::env::var("CORRAL_IN_VM") {
            Ok(v) if v == "1" => format!(
                "VM (TCG, {})",
                std::env::var("CORRAL_VM_MODE").unwrap_or_else(|_| "plain".into())
            ),
            _ => "native".into(),
        };
        let os = read("/etc/os-release")
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_default();
        let cpu_model = read("/proc/cpuinfo")
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|v| v.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default();
        Host {
            place,
            hostname: read("/proc/sys/kernel/hostname").trim().to_string(),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            os,
            cpu_model,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cgroup_layout: corral_cgroup::layout::Layout::cached()
                .kind()
                .as_str()
                .to_string(),
            date: corral_record::rfc3339(std::time::SystemTime::now()),
            load_before: loadavg(),
            load_after: String::new(),
            corral_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

impl Host {
    /// The same facts with the load average at the end filled in.
    pub fn finish(mut self) -> Host {
        self.load_after = loadavg();
        self
    }
}
