//! Parsers for the disk limits: bandwidth (`10M` a second), I/O operations a second,
//! the proportional I/O weight, and block-device paths.

use std::path::Path;

use crate::units::parse_size_setting;
use crate::{Setting, SpecError};

/// The smallest and largest I/O weight, as cgroup v2's `io.weight` and systemd's
/// `IOWeight=` take them.
pub const IO_WEIGHT_RANGE: (u64, u64) = (1, 10_000);

fn is_unlimited(s: &str) -> bool {
    ["max", "none", "infinity", "unlimited"]
        .iter()
        .any(|w| s.eq_ignore_ascii_case(w))
}

/// Parses a bandwidth in bytes a second with binary units (`10M` = 10 MiB/s; a
/// trailing `/s` is allowed), or `max`/`none` for no limit.
pub fn parse_rate_setting(what: &'static str, s: &str) -> Result<Setting<u64>, SpecError> {
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    parse_size_setting(what, t).map_err(|e| match e {
        SpecError::Invalid { what, why, .. } => SpecError::Invalid {
            what,
            value: s.to_string(),
            why,
        },
        other => other,
    })
}

/// Parses a count of I/O operations a second (a whole number of at least 1), or
/// `max`/`none` for no limit.
pub fn parse_iops_setting(what: &'static str, s: &str) -> Result<Setting<u64>, SpecError> {
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    if is_unlimited(t) {
        return Ok(Setting::Unlimited);
    }
    match t.parse::<u64>() {
        Ok(0) => Err(SpecError::Invalid {
            what,
            value: s.to_string(),
            why: "must be at least 1 (use \"max\" for no limit)".into(),
        }),
        Ok(n) => Ok(Setting::Value(n)),
        Err(_) => Err(SpecError::Invalid {
            what,
            value: s.to_string(),
            why: "must be a whole number of operations a second, such as 500".into(),
        }),
    }
}

/// Checks an I/O weight given as a number: 1 to 10000.
pub fn check_io_weight(s: &str, v: u64) -> Result<u64, SpecError> {
    let (lo, hi) = IO_WEIGHT_RANGE;
    if !(lo..=hi).contains(&v) {
        return Err(SpecError::Invalid {
            what: "I/O weight",
            value: s.to_string(),
            why: format!("out of range: must be {lo} to {hi} (the kernel's default is 100)"),
        });
    }
    Ok(v)
}

/// Parses an I/O weight, 1 to 10000 (relative: 200 gets twice the share of 100 on a
/// contended device), or `none`/`max`/`default` for the kernel's default.
pub fn parse_io_weight_setting(s: &str) -> Result<Setting<u64>, SpecError> {
    let t = s.trim();
    if is_unlimited(t) || t.eq_ignore_ascii_case("default") {
        return Ok(Setting::Unlimited);
    }
    let v: u64 = t.parse().map_err(|_| SpecError::Invalid {
        what: "I/O weight",
        value: s.to_string(),
        why: "must be a whole number from 1 to 10000, such as 100".into(),
    })?;
    check_io_weight(s, v).map(Setting::Value)
}

/// Checks a path for `io_device`: absolute, no NUL byte. Whether it is a block device
/// is checked when the run starts, on the host that runs it.
pub fn check_io_device_path(p: &Path) -> Result<(), SpecError> {
    use std::os::unix::ffi::OsStrExt;
    let bad = |why: &str| SpecError::Invalid {
        what: "I/O device",
        value: p.display().to_string(),
        why: why.to_string(),
    };
    if !p.is_absolute() {
        return Err(bad(
            "must be the absolute path of a block device, such as /dev/sda",
        ));
    }
    if p.as_os_str().as_bytes().contains(&0) {
        return Err(bad("must not contain a NUL byte"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_iops_and_weights() {
        assert_eq!(
            parse_rate_setting("x", "10M").unwrap(),
            Setting::Value(10 << 20)
        );
        assert_eq!(
            parse_rate_setting("x", "10M/s").unwrap(),
            Setting::Value(10 << 20)
        );
        assert_eq!(parse_rate_setting("x", "max").unwrap(), Setting::Unlimited);
        let e = parse_rate_setting("I/O write bandwidth", "fast").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("invalid I/O write bandwidth \"fast\""),
            "{e}"
        );
        assert_eq!(parse_iops_setting("x", "500").unwrap(), Setting::Value(500));
        assert!(parse_iops_setting("x", "0").is_err());
        assert!(parse_iops_setting("x", "1.5").is_err());
        assert_eq!(parse_io_weight_setting("100").unwrap(), Setting::Value(100));
        assert_eq!(
            parse_io_weight_setting("default").unwrap(),
            Setting::Unlimited
        );
        for bad in ["0", "10001", "-3"] {
            let e = parse_io_weight_setting(bad).unwrap_err().to_string();
            assert!(e.contains("invalid I/O weight"), "{e}");
        }
        assert_eq!(
            parse_io_weight_setting("20000").unwrap_err().to_string(),
            "invalid I/O weight \"20000\": out of range: must be 1 to 10000 (the kernel's default is 100)"
        );
        assert!(check_io_device_path(Path::new("sda")).is_err());
        assert!(check_io_device_path(Path::new("/dev/sda")).is_ok());
    }
}
