//! Parsers and formatters for the units users type: sizes, durations, CPUs, pid counts.

use std::time::Duration;

use crate::{Setting, SpecError};

/// Words that mean "no limit" wherever a limit is accepted.
const UNLIMITED: &[&str] = &["max", "none", "infinity", "unlimited"];

fn is_unlimited(s: &str) -> bool {
    UNLIMITED.iter().any(|w| s.eq_ignore_ascii_case(w))
}

fn invalid(what: &'static str, value: &str, why: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        what,
        value: value.to_string(),
        why: why.into(),
    }
}

/// Parses a size in bytes with binary units, as systemd does: `512M` is 512 MiB, `2G` is
/// 2 GiB, `1.5G` is 1.5 GiB; `2GiB` and `2GB` are accepted and mean the same. A plain
/// number is bytes. Zero is refused: a zero budget would kill every run at once.
pub fn parse_size(what: &'static str, s: &str) -> Result<u64, SpecError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(invalid(what, s, "empty; use a size such as 512M or 2G"));
    }
    if t.starts_with('-') {
        return Err(invalid(what, s, "sizes cannot be negative"));
    }
    let cfg = parse_size::Config::new().with_binary();
    let n = cfg.parse_size(t).map_err(|e| {
        // In corral's words, not the number parser's ("invalid digit found in string").
        let why = match e {
            parse_size::Error::PosOverflow => "too large",
            _ => "not a size",
        };
        invalid(
            what,
            s,
            format!("{why}; use a number with an optional binary unit K, M, G or T (2G = 2 GiB)"),
        )
    })?;
    if n == 0 {
        return Err(invalid(
            what,
            s,
            "must be greater than zero (use \"max\" for no limit)",
        ));
    }
    Ok(n)
}

/// Like [`parse_size()`], but also accepts `max`/`none`/`infinity` for "no limit".
pub fn parse_size_setting(what: &'static str, s: &str) -> Result<Setting<u64>, SpecError> {
    if is_unlimited(s.trim()) {
        return Ok(Setting::Unlimited);
    }
    parse_size(what, s).map(Setting::Value)
}

/// The smallest memory budget: one page of this host. The kernel counts memory in
/// pages and rounds a cgroup's limit down to them, so a smaller budget would be 0.
pub fn min_memory() -> u64 {
    rustix::param::page_size() as u64
}

/// A memory budget as [`parse_size_setting`] parses it, refused below one page
/// ([`min_memory`]).
pub fn parse_memory_setting(s: &str) -> Result<Setting<u64>, SpecError> {
    check_memory(s, parse_size_setting("memory size", s)?)
}

/// Refuses a memory budget below one page.
pub(crate) fn check_memory(s: &str, v: Setting<u64>) -> Result<Setting<u64>, SpecError> {
    let page = min_memory();
    match v {
        Setting::Value(n) if n < page => Err(invalid(
            "memory size",
            s,
            format!(
                "below one page ({page} bytes), the smallest memory the kernel can limit to; \
                 use at least {}K",
                page / 1024
            ),
        )),
        v => Ok(v),
    }
}

/// Parses a duration: `90s`, `30m`, `1h30m`, `250ms`, or a plain number of seconds
/// (`90`, `2.5`), as `timeout(1)` takes it. Zero and negative durations are refused.
pub fn parse_duration(what: &'static str, s: &str) -> Result<Duration, SpecError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(invalid(
            what,
            s,
            "empty; use a duration such as 90s, 30m or 1h30m",
        ));
    }
    if t.starts_with('-') {
        return Err(invalid(what, s, "durations cannot be negative"));
    }
    let d = if t.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let secs: f64 = t
            .parse()
            .map_err(|_| invalid(what, s, "not a number of seconds"))?;
        if !secs.is_finite() || secs > 1e9 {
            return Err(invalid(what, s, "too large"));
        }
        Duration::from_secs_f64(secs)
    } else {
        humantime::parse_duration(t).map_err(|e| {
            invalid(
                what,
                s,
                format!("{e}; use a duration such as 90s, 30m, 1h30m or a number of seconds"),
            )
        })?
    };
    if d.is_zero() {
        return Err(invalid(
            what,
            s,
            "must be greater than zero (use \"none\" for no limit)",
        ));
    }
    if d > Duration::from_secs(100 * 365 * 86400) {
        return Err(invalid(
            what,
            s,
            "longer than a century; use \"none\" for no limit",
        ));
    }
    Ok(d)
}

/// Like [`parse_duration`], but also accepts `max`/`none`/`infinity` for "no limit".
pub fn parse_duration_setting(what: &'static str, s: &str) -> Result<Setting<Duration>, SpecError> {
    if is_unlimited(s.trim()) {
        return Ok(Setting::Unlimited);
    }
    parse_duration(what, s).map(Setting::Value)
}

/// The largest CPU quota accepted; far beyond any machine corral runs on.
pub const MAX_CPUS: f64 = 4096.0;

/// Parses a CPU quota in CPUs (`0.5`, `1.5`, `2`). It must be at least 0.01 CPU (1 ms
/// of CPU per 100 ms period, the kernel's floor is 1 ms) and finite.
pub fn parse_cpus(s: &str) -> Result<f64, SpecError> {
    let what = "CPU quota";
    let t = s.trim();
    let v: f64 = t.parse().map_err(|_| {
        invalid(
            what,
            s,
            "not a number; give CPUs as a decimal such as 0.5 or 2",
        )
    })?;
    check_cpus(s, v)
}

/// Validates a CPU quota given as a number (e.g. from a TOML or JSON file).
pub fn check_cpus(s: &str, v: f64) -> Result<f64, SpecError> {
    let what = "CPU quota";
    if !v.is_finite() {
        return Err(invalid(what, s, "must be a finite number of CPUs"));
    }
    if v <= 0.0 {
        return Err(invalid(
            what,
            s,
            "must be greater than zero (use \"max\" for no quota)",
        ));
    }
    if v < 0.01 {
        return Err(invalid(what, s, "must be at least 0.01 CPU"));
    }
    if v > MAX_CPUS {
        return Err(invalid(what, s, format!("must be at most {MAX_CPUS} CPUs")));
    }
    Ok(v)
}

/// Like [`parse_cpus`], but also accepts `max`/`none`/`infinity` for "no quota".
pub fn parse_cpus_setting(s: &str) -> Result<Setting<f64>, SpecError> {
    if is_unlimited(s.trim()) {
        return Ok(Setting::Unlimited);
    }
    parse_cpus(s).map(Setting::Value)
}

/// Parses a process limit: a whole number of at least 1.
pub fn parse_pids(s: &str) -> Result<u64, SpecError> {
    let what = "process limit";
    let t = s.trim();
    let v: u64 = t
        .parse()
        .map_err(|_| invalid(what, s, "must be a whole number of processes, such as 256"))?;
    check_pids(s, v)
}

/// Validates a process limit given as a number.
pub fn check_pids(s: &str, v: u64) -> Result<u64, SpecError> {
    if v == 0 {
        return Err(invalid(
            "process limit",
            s,
            "must be at least 1 (use \"max\" for no limit)",
        ));
    }
    if v > (1 << 22) {
        return Err(invalid(
            "process limit",
            s,
            "larger than the kernel's pid_max limit (4194304)",
        ));
    }
    Ok(v)
}

/// Like [`parse_pids`], but also accepts `max`/`none`/`infinity` for "no limit".
pub fn parse_pids_setting(s: &str) -> Result<Setting<u64>, SpecError> {
    if is_unlimited(s.trim()) {
        return Ok(Setting::Unlimited);
    }
    parse_pids(s).map(Setting::Value)
}

/// Formats a byte count for people: `2.0 GiB`, `512 MiB`, `300 B`.
pub fn format_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if v >= 100.0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Formats a duration for people: `2.0 s`, `30 min`, `1 h 30 min`, `250 ms`.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 1.0 {
        return format!("{} ms", d.as_millis());
    }
    if s < 60.0 {
        return format!("{s:.1} s");
    }
    let total = d.as_secs();
    let (h, m, sec) = (total / 3600, (total % 3600) / 60, total % 60);
    match (h, m, sec) {
        (0, m, 0) => format!("{m} min"),
        (0, m, s) => format!("{m} min {s} s"),
        (h, 0, 0) => format!("{h} h"),
        (h, m, _) => format!("{h} h {m} min"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_memory_budget_below_one_page_is_refused_in_corrals_words() {
        let page = min_memory();
        let e = parse_memory_setting("1").unwrap_err().to_string();
        assert!(e.contains("below one page"), "{e}");
        assert!(parse_memory_setting(&format!("{}", page - 1)).is_err());
        assert_eq!(
            parse_memory_setting(&format!("{page}")).unwrap(),
            Setting::Value(page)
        );
        assert_eq!(parse_memory_setting("max").unwrap(), Setting::Unlimited);
        // The same through a limits table (profiles, metadata, the service's body).
        let t = serde_json::json!({"memory": 1});
        let e = crate::LimitsPatch::from_table(t.as_object().unwrap(), "limits")
            .unwrap_err()
            .to_string();
        assert!(e.contains("below one page"), "{e}");
        // Not the number parser's words.
        let e = parse_size("memory size", "lots").unwrap_err().to_string();
        assert!(!e.contains("invalid digit"), "{e}");
        assert!(e.contains("not a size"), "{e}");
    }

    #[test]
    fn sizes_are_binary() {
        assert_eq!(parse_size("m", "2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("m", "2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("m", "2GB").unwrap(), 2 << 30);
        assert_eq!(parse_size("m", "512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("m", "64m").unwrap(), 64 << 20);
        assert_eq!(parse_size("m", "1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("m", "4096").unwrap(), 4096);
        assert!(matches!(
            parse_size_setting("m", "max").unwrap(),
            Setting::Unlimited
        ));
    }

    #[test]
    fn bad_sizes_are_explained() {
        for s in ["12X", "", "-1G", "0", "G", "1.2.3M", "abc"] {
            let e = parse_size("memory size", s).unwrap_err().to_string();
            assert!(e.starts_with("invalid memory size"), "{s}: {e}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("t", "90s").unwrap(), Duration::from_secs(90));
        assert_eq!(
            parse_duration("t", "1h30m").unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!(parse_duration("t", "90").unwrap(), Duration::from_secs(90));
        assert_eq!(
            parse_duration("t", "2.5").unwrap(),
            Duration::from_millis(2500)
        );
        assert_eq!(
            parse_duration("t", "250ms").unwrap(),
            Duration::from_millis(250)
        );
        for s in ["-3s", "0", "0s", "", "3 parsecs", "1e400", "."] {
            assert!(parse_duration("timeout", s).is_err(), "{s}");
        }
    }

    #[test]
    fn cpus_and_pids() {
        assert_eq!(parse_cpus("0.5").unwrap(), 0.5);
        for s in ["0", "-1", "nan", "inf", "x", "0.001", "100000"] {
            assert!(parse_cpus(s).is_err(), "{s}");
        }
        assert_eq!(parse_pids("64").unwrap(), 64);
        for s in ["0", "-1", "1.5", "x", ""] {
            assert!(parse_pids(s).is_err(), "{s}");
        }
    }

    #[test]
    fn formatting() {
        assert_eq!(format_bytes(2 << 30), "2.0 GiB");
        assert_eq!(format_bytes(512 << 20), "512 MiB");
        assert_eq!(format_bytes(64 << 20), "64.0 MiB");
        assert_eq!(format_bytes(10), "10 B");
        assert_eq!(format_duration(Duration::from_secs(1800)), "30 min");
        assert_eq!(format_duration(Duration::from_secs(2)), "2.0 s");
        assert_eq!(format_duration(Duration::from_secs(5400)), "1 h 30 min");
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(s in "\\PC*") {
            let _ = parse_size("s", &s);
            let _ = parse_duration("d", &s);
            let _ = parse_cpus(&s);
            let _ = parse_pids(&s);
        }

        #[test]
        fn size_roundtrip(n in 1u64..(1u64 << 50)) {
            proptest::prop_assert_eq!(parse_size("s", &n.to_string()).unwrap(), n);
        }
    }
}
