//! Analysis metadata files (`--limits-from`): JSON or TOML with limit overrides.
//!
//! The limits go in a `limits` table (strict: unknown keys are errors), for example
//! `{"profile": "notebook", "limits": {"memory": "4G", "timeout": "20m"}}`. For the
//! Python runtime corral replaces, the legacy top-level keys `memory_limit_mb`,
//! `timeout_seconds`, `cpu_quota` (in CPUs) and `pids_limit` are honoured too. Other
//! top-level keys belong to the analysis and are ignored.

use std::path::Path;

use serde_json::{Map, Value};

use crate::limits::{LimitsPatch, Setting};
use crate::units::{check_cpus, check_pids};
use crate::{SpecError, TomlSyntax};

/// What a metadata file asks for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metadata {
    /// The profile it names, if any.
    pub profile: Option<String>,
    /// Its limit overrides.
    pub limits: LimitsPatch,
}

/// Reads and validates a metadata file. The format is chosen by extension (`.json`,
/// `.toml`); any other name is tried as JSON, then as TOML.
pub fn load_metadata(path: &Path) -> Result<Metadata, SpecError> {
    let src = path.display().to_string();
    let err = |why: String| SpecError::File {
        path: src.clone(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|e| SpecError::Read {
        path: src.clone(),
        source: e.into(),
    })?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let value: Value = match ext {
        "json" => serde_json::from_str(&text).map_err(|e| err(format!("not valid JSON: {e}")))?,
        "toml" => toml_to_json(&text).map_err(|e| err(format!("not valid TOML: {e}")))?,
        _ => match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(_) => toml_to_json(&text)
                .map_err(|e| err(format!("neither valid JSON nor valid TOML: {e}")))?,
        },
    };
    let obj = value
        .as_object()
        .ok_or_else(|| err("must hold an object (a JSON object or TOML table)".into()))?;
    parse_metadata(obj, &src)
}

/// Why a TOML text did not become JSON.
#[derive(Debug, thiserror::Error)]
enum TomlToJson {
    /// The text is not TOML.
    #[error("{0}")]
    Syntax(#[from] TomlSyntax),
    /// A value JSON cannot hold.
    #[error("{0}")]
    Convert(#[from] serde_json::Error),
}

fn toml_to_json(text: &str) -> Result<Value, TomlToJson> {
    let v: toml::Value = toml::from_str(text).map_err(|e| TomlSyntax::new(text, &e))?;
    Ok(serde_json::to_value(v)?)
}

/// Parses metadata that is already an object.
pub fn parse_metadata(obj: &Map<String, Value>, src: &str) -> Result<Metadata, SpecError> {
    let err = |why: String| SpecError::File {
        path: src.to_string(),
        why,
    };
    let mut md = Metadata::default();
    match obj.get("profile") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => md.profile = Some(s.clone()),
        Some(_) => return Err(err("\"profile\" must be a string".into())),
    }
    // Legacy keys of the Python runtime first, so that a `limits` table wins.
    if let Some(v) = obj.get("memory_limit_mb") {
        let mb = v.as_u64().filter(|m| *m > 0).ok_or_else(|| {
            err(format!(
                "\"memory_limit_mb\" must be a positive whole number, not {v}"
            ))
        })?;
        md.limits.memory = Some(Setting::Value(mb.saturating_mul(1 << 20)));
    }
    if let Some(v) = obj.get("timeout_seconds") {
        let s = v
            .as_f64()
            .filter(|s| s.is_finite() && *s > 0.0 && *s < 1e9)
            .ok_or_else(|| {
                err(format!(
                    "\"timeout_seconds\" must be a positive number, not {v}"
                ))
            })?;
        md.limits.timeout = Some(Setting::Value(std::time::Duration::from_secs_f64(s)));
    }
    if let Some(v) = obj.get("cpu_quota") {
        let f = v.as_f64().unwrap_or(f64::NAN);
        let c = check_cpus(&v.to_string(), f).map_err(|e| err(format!("\"cpu_quota\": {e}")))?;
        md.limits.cpus = Some(Setting::Value(c));
    }
    if let Some(v) = obj.get("pids_limit") {
        let n = v
            .as_u64()
            .ok_or_else(|| err(format!("\"pids_limit\" must be a whole number, not {v}")))?;
        let n = check_pids(&v.to_string(), n).map_err(|e| err(format!("\"pids_limit\": {e}")))?;
        md.limits.pids = Some(Setting::Value(n));
    }
    if let Some(v) = obj.get("limits") {
        let table = v
            .as_object()
            .ok_or_else(|| err("\"limits\" must be an object/table".into()))?;
        let patch = LimitsPatch::from_table(table, src)?;
        merge(&mut md.limits, patch);
    }
    Ok(md)
}

fn merge(dst: &mut LimitsPatch, src: LimitsPatch) {
    macro_rules! take {
        ($($f:ident),*) => { $( if src.$f.is_some() { dst.$f = src.$f; } )* };
    }
    take!(
        memory,
        swap,
        cpus,
        pids,
        timeout,
        cpu_time,
        grace,
        output_limit,
        require_isolation,
        syscalls,
        network,
        pid_ns,
        fs
    );
    crate::limits::add_paths(&mut dst.rw, &src.rw);
    crate::limits::add_paths(&mut dst.hide, &src.hide);
    // The switch resets the layers a lower patch set (src's own keys, taken above,
    // still win: see Isolation).
    if let Some(i) = src.isolation {
        dst.isolation = Some(i);
        if src.network.is_none() {
            dst.network = None;
        }
        if src.syscalls.is_none() {
            dst.syscalls = None;
        }
        if src.pid_ns.is_none() {
            dst.pid_ns = None;
        }
        if src.fs.is_none() {
            dst.fs = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Duration;

    fn file(ext: &str, text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(ext).tempfile().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn json_and_toml() {
        let f = file(
            ".json",
            r#"{"title": "x", "profile": "notebook", "limits": {"memory": "4G"}}"#,
        );
        let md = load_metadata(f.path()).unwrap();
        assert_eq!(md.profile.as_deref(), Some("notebook"));
        assert_eq!(md.limits.memory, Some(Setting::Value(4 << 30)));
        let f = file(".toml", "[limits]\ntimeout = \"20m\"\n");
        let md = load_metadata(f.path()).unwrap();
        assert_eq!(
            md.limits.timeout,
            Some(Setting::Value(Duration::from_secs(1200)))
        );
        let f = file(".meta", "[limits]\npids = 7\n");
        assert_eq!(
            load_metadata(f.path()).unwrap().limits.pids,
            Some(Setting::Value(7))
        );
    }

    #[test]
    fn isolation_keys_survive_the_merge() {
        let f = file(
            ".toml",
            "[limits]\nsyscalls = \"off\"\nnetwork = \"host\"\nrequire_isolation = true\n",
        );
        let md = load_metadata(f.path()).unwrap();
        assert_eq!(md.limits.syscalls, Some(crate::Syscalls::Off));
        assert_eq!(md.limits.network, Some(crate::Network::Host));
        assert_eq!(md.limits.require_isolation, Some(true));
    }

    #[test]
    fn fs_lists_add_up_over_the_profile() {
        let f = file(
            ".toml",
            "[limits]\nfs = \"host\"\nrw = [\"out\"]\nhide = [\"/home\"]\n",
        );
        let md = load_metadata(f.path()).unwrap();
        assert_eq!(md.limits.fs, Some(crate::FsMode::Host));
        let mut l = crate::Limits {
            rw: vec!["/data".into()],
            hide: vec!["/home".into(), "/root".into()],
            ..crate::Limits::default()
        };
        md.limits.apply(&mut l);
        assert_eq!(l.fs, crate::FsMode::Host);
        assert_eq!(l.rw, [Path::new("/data"), Path::new("out")]);
        assert_eq!(l.hide, [Path::new("/home"), Path::new("/root")]);
    }

    #[test]
    fn legacy_keys() {
        let f = file(
            ".json",
            r#"{"memory_limit_mb": 1024, "timeout_seconds": 300, "cpu_quota": 0.5}"#,
        );
        let md = load_metadata(f.path()).unwrap();
        assert_eq!(md.limits.memory, Some(Setting::Value(1 << 30)));
        assert_eq!(
            md.limits.timeout,
            Some(Setting::Value(Duration::from_secs(300)))
        );
        assert_eq!(md.limits.cpus, Some(Setting::Value(0.5)));
    }

    #[test]
    fn malformed() {
        for (ext, text) in [
            (".json", "{not json"),
            (".toml", "= ="),
            (".json", "[1,2]"),
            (".json", r#"{"limits": {"memory": "12X"}}"#),
            (".json", r#"{"limits": {"bogus": 1}}"#),
            (".json", r#"{"limits": 3}"#),
            (".json", r#"{"memory_limit_mb": -5}"#),
            (".json", r#"{"profile": 5}"#),
        ] {
            let f = file(ext, text);
            let e = load_metadata(f.path()).unwrap_err().to_string();
            assert!(e.starts_with(&f.path().display().to_string()), "{e}");
        }
        assert!(load_metadata(Path::new("/nonexistent/x.json")).is_err());
    }
}
