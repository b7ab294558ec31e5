//! Property tests of every parser that takes user input: sizes, durations, CPUs, pids,
//! profile files and analysis metadata. Whatever the input, they must not panic, and
//! every rejection must be one clear message naming what was wrong.

use corral_spec::{
    builtin_profiles, parse_cpus, parse_duration, parse_grace, parse_metadata, parse_pids,
    parse_size, parse_swap, ProfileSource, SpecError,
};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

fn clear(e: &SpecError) {
    let msg = e.to_string();
    assert!(!msg.is_empty());
    assert!(!msg.contains('\n'), "one line: {msg:?}");
    match e {
        SpecError::Invalid { why, .. } => assert!(!why.is_empty()),
        SpecError::File { path, why } => assert!(!path.is_empty() && !why.is_empty()),
        SpecError::Read { path, .. } => assert!(!path.is_empty()),
        SpecError::UnknownProfile { known, .. } => assert!(known.contains("default")),
    }
}

/// Strings that look like limits, to reach the parsers' deeper branches.
fn limitish() -> impl Strategy<Value = String> {
    prop_oneof![
        "[-+]?[0-9]{0,12}(\\.[0-9]{0,4})?[ ]?(k|K|m|M|g|G|t|T|ki|Ki|Mi|Gi|B|b|iB|X|%)?[bB]?",
        "[-+]?[0-9]{0,6}(ns|us|ms|s|m|h|d|w|y|min|sec|hours)?([0-9]{1,3}(s|m|h))?",
        "(max|none|infinity|unlimited|MAX|None|inf|nan|NaN|-inf|1e308|1e-3)",
        "\\PC{0,24}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn unit_parsers_never_panic(s in limitish()) {
        for r in [
            parse_size("memory size", &s).map(|_| ()),
            parse_duration("timeout", &s).map(|_| ()),
            parse_cpus(&s).map(|_| ()),
            parse_pids(&s).map(|_| ()),
            parse_grace(&s).map(|_| ()),
            parse_swap(&s).map(|_| ()),
        ] {
            if let Err(e) = r {
                clear(&e);
                prop_assert!(e.to_string().contains(&format!("{s:?}")), "names the input: {e}");
            }
        }
    }

    #[test]
    fn accepted_sizes_are_positive_and_binary(n in 1u64..1_000_000, unit in prop::sample::select(vec!["", "K", "M", "G"])) {
        let v = parse_size("memory size", &format!("{n}{unit}")).unwrap();
        let mult = match unit { "K" => 1u64 << 10, "M" => 1 << 20, "G" => 1 << 30, _ => 1 };
        prop_assert_eq!(v, n * mult);
    }

    #[test]
    fn profile_files_never_panic(text in "\\PC{0,200}") {
        let mut set = builtin_profiles();
        if let Err(e) = set.add_toml(&text, ProfileSource::File("p.toml".into())) {
            clear(&e);
        }
        // A bad file changes nothing.
        prop_assert!(set.get("default").is_ok());
    }

    #[test]
    fn profile_tables_never_panic(
        name in "[a-z_]{1,8}",
        key in prop::sample::select(vec!["memory", "swap", "cpus", "pids", "timeout", "cpu_time", "grace", "output_limit", "require_isolation", "syscalls", "network", "isolation", "inherits", "description", "bogus"]),
        value in limitish(),
        as_number in any::<bool>(),
    ) {
        let v = if as_number { value.clone() } else { format!("{value:?}") };
        let text = format!("[profiles.{name}]\n{key} = {v}\n");
        let mut set = builtin_profiles();
        if let Err(e) = set.add_toml(&text, ProfileSource::File("p.toml".into())) {
            clear(&e);
        }
    }

    #[test]
    fn metadata_never_panics(
        key in prop::sample::select(vec!["memory", "cpus", "pids", "timeout", "cpu_time", "grace", "swap", "output_limit", "require_isolation", "syscalls", "network", "isolation", "nope"]),
        s in limitish(),
        n in any::<f64>(),
        i in any::<i64>(),
        legacy in prop::sample::select(vec!["memory_limit_mb", "timeout_seconds", "cpu_quota", "pids_limit", "profile"]),
    ) {
        for v in [json!(s), json!(n), json!(i), json!(null), json!([1]), json!({"a": 1}), json!(true)] {
            let mut limits = Map::new();
            limits.insert(key.to_string(), v.clone());
            let mut top = Map::new();
            top.insert("limits".into(), Value::Object(limits));
            top.insert(legacy.to_string(), v);
            if let Err(e) = parse_metadata(&top, "meta.json") {
                clear(&e);
                prop_assert!(e.to_string().starts_with("meta.json"), "{e}");
            }
        }
    }
}
