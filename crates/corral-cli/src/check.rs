//! `corral check`: what isolation this host offers, and how to get more.

use anyhow::Result;
use clap::Args;
use corral_run::check::examine;

/// `corral check [--json]`
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// The cgroup root to examine (as for `corral run`).
    #[arg(long, value_name = "PATH")]
    pub cgroup_root: Option<std::path::PathBuf>,
}

/// Exit 0 with full isolation, 1 partial, 2 none.
pub fn main(a: CheckArgs) -> Result<u8> {
    let r = examine(a.cgroup_root.as_deref());
    let code = match r.isolation.as_str() {
        "full" => 0,
        "partial" => 1,
        _ => 2,
    };
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&r)?)?;
        return Ok(code);
    }
    let yes = |b: bool| if b { "yes" } else { "no" };
    outln!("kernel          {}", r.kernel)?;
    outln!("cgroup layout   {}", r.layout)?;
    if let Some(m) = &r.cgroup2_mount {
        let c = if r.cgroup2_controllers.is_empty() {
            "none".to_string()
        } else {
            r.cgroup2_controllers.join(" ")
        };
        outln!("cgroup2         {m} (controllers: {c})")?;
    }
    for (c, m) in &r.cgroup1_hierarchies {
        outln!("cgroup1 {c:<8}{m}")?;
    }
    if let Some(o) = &r.own_cgroup {
        outln!("own cgroup      {o}")?;
    }
    if let Some((root, w)) = &r.cgroup2_root {
        outln!("cgroup2 root    {root} (writable: {})", yes(*w))?;
    }
    outln!("features")?;
    for f in &r.features {
        outln!("  {:<20} {:<4} {}", f.name, yes(f.available), f.note)?;
    }
    outln!("disk limits")?;
    for f in &r.disk {
        outln!("  {:<20} {:<4} {}", f.name, yes(f.available), f.note)?;
    }
    outln!("systemd")?;
    for m in &r.systemd {
        let d = m
            .delegated_controllers
            .as_ref()
            .map(|d| format!(", delegates: {}", d.join(" ")))
            .unwrap_or_default();
        outln!(
            "  {:<6} {}{d}",
            m.scope,
            m.socket.as_deref().unwrap_or("not reachable")
        )?;
    }
    outln!("backends")?;
    for (name, res) in &r.backends {
        match res {
            Ok(why) => outln!("  {name:<8} ok: {why}")?,
            Err(e) => outln!("  {name:<8} no: {e}")?,
        }
    }
    outln!(
        "auto picks      {}",
        r.auto_backend.as_deref().unwrap_or("nothing")
    )?;
    if r.gaps.is_empty() {
        outln!("enforces        memory, swap, CPU quota, processes, wall clock, CPU time")?;
    } else {
        for g in &r.gaps {
            outln!("not enforced    {}: {}", g.limit, g.why)?;
        }
    }
    for rem in &r.remedies {
        outln!("remedy          {rem}")?;
    }
    outln!("isolation       {}", r.isolation)?;
    Ok(code)
}
