//! Request validation: from the body of `POST /runs` to a request and its effective
//! limits, or the one sentence that says what is wrong (a 400).
//!
//! Everything here is a pure function of the body, the profiles and the default output
//! cap: nothing is stored and no cgroup is needed, so it is tested on its own. Whether
//! the limits fit the budget or the backend is decided after (admission, isolation).

use corral_run::ident::validate_id;
use corral_spec::{Limits, LimitsPatch, ProfileSet, SpecError};

use crate::wire::SubmitRequest;

/// Why a submission is refused before anything is stored.
#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    /// The body is not JSON of a [`SubmitRequest`] (or has unknown fields).
    #[error("invalid JSON body: {0}")]
    Json(#[source] serde_json::Error),
    /// `command` is empty or starts with an empty string.
    #[error("\"command\" must hold the command and its arguments, e.g. [\"python3\", \"x.py\"]")]
    NoCommand,
    /// An argument after the program is empty: refused, so that the API's document
    /// (OpenAPI 3.0, which cannot single out the first element) and the server agree.
    #[error(
        "\"command\" must not contain empty arguments (argument {0} is \"\"); the \
         service's API takes non-empty strings only"
    )]
    EmptyArgument(usize),
    /// An argument holds a NUL byte (it could not reach `execve`).
    #[error("\"command\" must not contain NUL bytes")]
    NulInCommand,
    /// `cwd` is relative or holds a NUL byte.
    #[error("\"cwd\" must be an absolute path, got {0:?}")]
    Cwd(String),
    /// A field of the body has the wrong JSON type.
    #[error("{0}")]
    Shape(String),
    /// An environment variable's name or value cannot be passed to the run.
    #[error(
        "invalid environment variable {0:?}: names must be non-empty without '=' and \
         neither may contain NUL"
    )]
    Env(String),
    /// The caller-chosen id is not 1-64 of `[A-Za-z0-9_-]`.
    #[error("{0}")]
    Id(String),
    /// The idempotency key is empty or too long.
    #[error("\"idempotency_key\" must be 1-256 characters")]
    IdempotencyKey,
    /// The profile does not exist.
    #[error(transparent)]
    Profile(SpecError),
    /// A limit override does not parse.
    #[error(transparent)]
    Limits(SpecError),
}

/// A valid submission: the request, its profile's name and its effective limits.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The request as sent.
    pub request: SubmitRequest,
    /// The profile the limits start from.
    pub profile: String,
    /// The profile's limits with the request's overrides and the output cap.
    pub limits: Limits,
}

/// Parses and checks the body of `POST /runs`. `output_limit` is the cap for runs
/// that set none (`--output-limit` of the service).
pub fn parse(body: &[u8], profiles: &ProfileSet, output_limit: u64) -> Result<Resolved, Invalid> {
    // Wrong types are said in corral's words first; the typed parse then catches the
    // rest (syntax, unknown fields).
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        check_shape(&v)?;
    }
    let request: SubmitRequest = serde_json::from_slice(body).map_err(Invalid::Json)?;
    let (profile, limits) = resolve(&request, profiles, output_limit)?;
    Ok(Resolved {
        request,
        profile,
        limits,
    })
}

/// Says which field of the body has the wrong type, and what it must be.
fn check_shape(v: &serde_json::Value) -> Result<(), Invalid> {
    use serde_json::Value;
    let Some(obj) = v.as_object() else {
        return Err(Invalid::Shape(format!(
            "invalid JSON body: it must be an object such as {{\"command\": [\"python3\", \"x.py\"]}}, not {}",
            kind(v)
        )));
    };
    let must = |field: &str, what: &str, ok: bool| {
        if ok {
            Ok(())
        } else {
            Err(Invalid::Shape(format!(
                "{field:?} must be {what}, not {}",
                kind(&obj[field])
            )))
        }
    };
    for (k, v) in obj {
        let null = v.is_null();
        match k.as_str() {
            "command" => must(
                k,
                "a list of strings",
                v.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
            )?,
            "cwd" | "profile" | "id" | "idempotency_key" => {
                must(k, "a string or null", null || v.is_string())?
            }
            "env" => must(
                k,
                "an object of strings, e.g. {\"LANG\": \"C.UTF-8\"}",
                v.as_object()
                    .is_some_and(|m| m.values().all(Value::is_string)),
            )?,
            "clear_env" => must(k, "true or false", v.is_boolean())?,
            "limits" => must(
                k,
                "an object of limits or null, e.g. {\"memory\": \"2G\", \"cpus\": 1}",
                null || v.is_object(),
            )?,
            "priority" => must(k, "a whole number", v.is_i64())?,
            _ => {}
        }
    }
    Ok(())
}

/// A JSON value's kind and, when short, the value itself.
fn kind(v: &serde_json::Value) -> String {
    let text = v.to_string();
    let name = match v {
        serde_json::Value::Null => return "null".into(),
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    };
    if text.len() <= 40 {
        format!("{name} ({text})")
    } else {
        name.to_string()
    }
}

/// Checks a request and works out its profile name and effective limits.
pub fn resolve(
    req: &SubmitRequest,
    profiles: &ProfileSet,
    output_limit: u64,
) -> Result<(String, Limits), Invalid> {
    if req.command.is_empty() || req.command[0].is_empty() {
        return Err(Invalid::NoCommand);
    }
    if let Some(i) = req.command.iter().position(String::is_empty) {
        return Err(Invalid::EmptyArgument(i));
    }
    if req.command.iter().any(|a| a.contains('\0')) {
        return Err(Invalid::NulInCommand);
    }
    if let Some(cwd) = &req.cwd {
        if !cwd.starts_with('/') || cwd.contains('\0') {
            return Err(Invalid::Cwd(cwd.clone()));
        }
    }
    for (k, v) in &req.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(Invalid::Env(k.clone()));
        }
    }
    if let Some(id) = &req.id {
        validate_id(id).map_err(|e| Invalid::Id(e.to_string()))?;
    }
    if let Some(k) = &req.idempotency_key {
        if k.is_empty() || k.len() > 256 {
            return Err(Invalid::IdempotencyKey);
        }
    }
    let name = req.profile.clone().unwrap_or_else(|| "default".into());
    let mut limits = profiles.get(&name).map_err(Invalid::Profile)?.limits;
    if let Some(table) = &req.limits {
        LimitsPatch::from_table(table, "limits")
            .map_err(Invalid::Limits)?
            .apply(&mut limits);
    }
    if limits.output_limit.is_none() {
        limits.output_limit = Some(output_limit);
    }
    Ok((name, limits))
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_spec::builtin_profiles;

    fn check(body: &str) -> Result<Resolved, Invalid> {
        parse(body.as_bytes(), &builtin_profiles(), 1000)
    }

    fn refused(body: &str) -> String {
        match check(body) {
            Ok(r) => panic!("{body} was accepted: {r:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_valid_request_gets_its_profile_limits_and_the_output_cap() {
        let r =
            check(r#"{"command": ["true"], "limits": {"memory": "64M", "cpus": 0.5}}"#).unwrap();
        assert_eq!(r.profile, "default");
        assert_eq!(r.limits.memory, Some(64 << 20));
        assert_eq!(r.limits.cpus, Some(0.5));
        assert_eq!(
            r.limits.output_limit,
            Some(1000),
            "the service's cap fills in"
        );
        let r = check(r#"{"command": ["true"], "limits": {"output_limit": "1K"}}"#).unwrap();
        assert_eq!(r.limits.output_limit, Some(1024), "the run's own cap wins");
    }

    #[test]
    fn each_refusal_is_one_sentence() {
        assert!(refused("{").starts_with("invalid JSON body: "));
        assert!(refused(r#"{"command": ["x"], "memory": "1G"}"#).contains("unknown field `memory`"));
        assert_eq!(
            refused(r#"{"command": []}"#),
            "\"command\" must hold the command and its arguments, e.g. [\"python3\", \"x.py\"]"
        );
        assert_eq!(
            refused(r#"{"command": [""]}"#),
            refused(r#"{"command": []}"#)
        );
        assert!(refused(r#"{"command": ["sh", "-c", ""]}"#).contains("argument 2 is \"\""));
        assert_eq!(
            refused(r#"{"command": ["a\u0000b"]}"#),
            "\"command\" must not contain NUL bytes"
        );
        assert_eq!(
            refused(r#"{"command": ["true"], "cwd": "rel"}"#),
            "\"cwd\" must be an absolute path, got \"rel\""
        );
        assert_eq!(
            refused(r#"{"command": ["true"], "env": {"A=B": "1"}}"#),
            "invalid environment variable \"A=B\": names must be non-empty without '=' and \
             neither may contain NUL"
        );
        assert!(matches!(
            check(r#"{"command": ["true"], "env": {"": "1"}}"#),
            Err(Invalid::Env(_))
        ));
        assert!(matches!(
            check(r#"{"command": ["true"], "id": "no spaces"}"#),
            Err(Invalid::Id(_))
        ));
        assert_eq!(
            refused(r#"{"command": ["true"], "idempotency_key": ""}"#),
            "\"idempotency_key\" must be 1-256 characters"
        );
        let long = "k".repeat(257);
        assert!(matches!(
            check(&format!(
                r#"{{"command": ["true"], "idempotency_key": "{long}"}}"#
            )),
            Err(Invalid::IdempotencyKey)
        ));
        assert!(refused(r#"{"command": ["true"], "profile": "nope"}"#)
            .starts_with("unknown profile \"nope\""));
        assert!(matches!(
            check(r#"{"command": ["true"], "limits": {"memory": "lots"}}"#),
            Err(Invalid::Limits(_))
        ));
        // Wrong types in corral's words, naming the field (not "expected a map at line 1").
        assert_eq!(
            refused(r#"{"command": ["true"], "limits": "x"}"#),
            "\"limits\" must be an object of limits or null, e.g. {\"memory\": \"2G\", \"cpus\": 1}, \
             not a string (\"x\")"
        );
        assert_eq!(
            refused(r#"{"command": ["true"], "priority": "high"}"#),
            "\"priority\" must be a whole number, not a string (\"high\")"
        );
        assert_eq!(
            refused("[1, 2]"),
            "invalid JSON body: it must be an object such as {\"command\": [\"python3\", \"x.py\"]}, not a list ([1,2])"
        );
        let e = refused(r#"{"command": ["true"], "limits": {"memory": null}}"#);
        assert!(!e.contains("invalid digit"), "{e}");
    }
}
