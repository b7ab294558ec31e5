//! `corral gc`: reap runs whose supervisor died: their cgroups, then what they left
//! of `--disk` (project ids and limits, see `corral_run::quota`).

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
    // After the cgroups: their processes no longer write under the quotas.
    let quotas = corral_run::quota::reap_leftovers();
    let failed = reaped.iter().filter(|r| r.result.is_err()).count()
        + quotas.iter().filter(|q| q.result.is_err()).count();
    if a.json {
        let v: Vec<_> = reaped
            .iter()
            .map(|r| json!({"cgroup": r.name, "removed": r.result.is_ok(), "error": r.result.as_ref().err().map(ToString::to_string)}))
            .collect();
        let q: Vec<_> = quotas
            .iter()
            .map(|q| json!({"dir": q.path, "project": q.projid, "restored": q.result.is_ok(), "error": q.result.as_ref().err()}))
            .collect();
        outln!(
            "{}",
            serde_json::to_string_pretty(&json!({"reaped": v, "quotas": q}))?
        )?;
    } else if reaped.is_empty() && quotas.is_empty() {
        outln!("nothing to reap")?;
    } else {
        for r in &reaped {
            match &r.result {
                Ok(()) => outln!("reaped {}", r.name)?,
                Err(e) => outln!("could not reap {}: {e}", r.name)?,
            }
        }
        for q in &quotas {
            match &q.result {
                Ok(()) => outln!(
                    "reaped the project quota {} of {}",
                    q.projid,
                    q.path.display()
                )?,
                Err(e) => outln!(
                    "could not reap the project quota {} of {}: {e}",
                    q.projid,
                    q.path.display()
                )?,
            }
        }
    }
    Ok(if failed > 0 { 1 } else { 0 })
}
