//! `corral gc`: reap runs whose supervisor died.

use anyhow::Result;
use clap::Args;
use corral_run::backend::select;
use serde_json::json;

use crate::backend::BackendArg;

/// `corral gc [--backend B] [--cgroup-root PATH] [--json]`
#[derive(Debug, Args)]
pub struct GcArgs {
    /// Backend whose root to clean (auto: the one `corral run` would pick).
    #[arg(long, value_name = "B", default_value = "auto")]
    pub backend: BackendArg,
    /// The cgroup root to clean (as for `corral run`).
    #[arg(long, value_name = "PATH")]
    pub cgroup_root: Option<std::path::PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn main(a: GcArgs) -> Result<u8> {
    let backend = select(a.backend.0, a.cgroup_root.as_deref())?;
    let reaped = backend.reap_leftovers();
    let failed = reaped.iter().filter(|r| r.result.is_err()).count();
    if a.json {
        let v: Vec<_> = reaped
            .iter()
            .map(|r| json!({"cgroup": r.name, "removed": r.result.is_ok(), "error": r.result.as_ref().err().map(ToString::to_string)}))
            .collect();
        outln!("{}", serde_json::to_string_pretty(&json!({"reaped": v}))?)?;
    } else if reaped.is_empty() {
        outln!("nothing to reap")?;
    } else {
        for r in &reaped {
            match &r.result {
                Ok(()) => outln!("reaped {}", r.name)?,
                Err(e) => outln!("could not reap {}: {e}", r.name)?,
            }
        }
    }
    Ok(if failed > 0 { 1 } else { 0 })
}
