//! What every subcommand produces: rows of a markdown table on stdout, and the same
//! data (with the raw samples) as JSON in `<out>/<name>.json` (markdown in
//! `<out>/<name>.md`).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::host::Host;
use crate::stats::Summary;

/// A ratio between two rows' medians, with what it divides.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    /// The value.
    pub value: f64,
    /// What was divided, e.g. `corral/bare (median)`.
    pub what: String,
}

/// One measured (or skipped) variant.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Short name shown in the table, e.g. `corral run`.
    pub variant: String,
    /// Exactly what ran, with its limits.
    pub config: String,
    /// The unit of the samples (`ms`, `runs/s`, `KiB`, ...).
    pub unit: String,
    /// Statistics over the samples, when there are several.
    pub summary: Option<Summary>,
    /// A single value (throughput, RSS), when there is one.
    pub value: Option<f64>,
    /// Ratio against the baseline or against corral.
    pub ratio: Option<Ratio>,
    /// Why the variant did not run (never silently).
    pub skipped: Option<String>,
    /// The raw samples, in the order measured.
    pub samples: Vec<f64>,
}

impl Row {
    /// A row with samples.
    pub fn sampled(variant: &str, config: String, unit: &str, samples: Vec<f64>) -> Row {
        Row {
            variant: variant.into(),
            config,
            unit: unit.into(),
            summary: Summary::of(&samples),
            value: None,
            ratio: None,
            skipped: None,
            samples,
        }
    }

    /// A row with one value.
    pub fn single(variant: &str, config: String, unit: &str, value: f64) -> Row {
        Row {
            variant: variant.into(),
            config,
            unit: unit.into(),
            summary: None,
            value: Some(value),
            ratio: None,
            skipped: None,
            samples: Vec::new(),
        }
    }

    /// A variant that could not run, and why.
    pub fn skipped(variant: &str, config: String, why: String) -> Row {
        eprintln!("corral-bench: skipping {variant}: {why}");
        Row {
            variant: variant.into(),
            config,
            unit: String::new(),
            summary: None,
            value: None,
            ratio: None,
            skipped: Some(why),
            samples: Vec::new(),
        }
    }

    /// The median (or the single value).
    pub fn center(&self) -> Option<f64> {
        self.summary.as_ref().map(|s| s.median).or(self.value)
    }

    /// Sets the ratio of this row's median to `base`'s (`num/den` naming).
    pub fn ratio_to(&mut self, base: &Row, what: &str) {
        if let (Some(a), Some(b)) = (self.center(), base.center()) {
            if b != 0.0 {
                self.ratio = Some(Ratio {
                    value: a / b,
                    what: what.into(),
                });
            }
        }
    }
}

/// The result of one subcommand.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The subcommand.
    pub name: String,
    /// Where and when it ran.
    pub host: Host,
    /// The corral backend measured (`cgroup1`, `cgroup2`, `rlimit`).
    pub backend: String,
    /// The backend's own account of why it was chosen.
    pub backend_reason: String,
    /// The settings of this subcommand (repetitions, limits, ...).
    pub settings: serde_json::Value,
    /// The measured variants.
    pub rows: Vec<Row>,
    /// Remarks printed under the table.
    pub notes: Vec<String>,
}

fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

impl Report {
    /// The report as markdown: a heading line, the table, the notes.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "#### {} — {}, backend {}, {} ({}, kernel {}, {} CPUs, load {} → {})\n",
            self.name,
            self.host.place,
            self.backend,
            self.host.date,
            self.host.hostname,
            self.host.kernel,
            self.host.cpus,
            self.host.load_before,
            self.host.load_after,
        );
        let _ = writeln!(
            s,
            "| variant | unit | n | median | p99 | mean | ratio | configuration |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
        for r in &self.rows {
            if let Some(why) = &r.skipped {
                let _ = writeln!(
                    s,
                    "| {} | | | skipped | | | | {}: **{}** |",
                    r.variant,
                    md_escape(&r.config),
                    plain(why)
                );
                continue;
            }
            let (n, med, p99, mean) = match (&r.summary, r.value) {
                (Some(x), _) => (x.n.to_string(), num(x.median), num(x.p99), num(x.mean)),
                (None, Some(v)) => ("1".into(), num(v), String::new(), String::new()),
                _ => ("0".into(), "–".into(), String::new(), String::new()),
            };
            let ratio = r
                .ratio
                .as_ref()
                .map(|x| format!("{:.2}× ({})", x.value, x.what))
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "| {} | {} | {n} | {med} | {p99} | {mean} | {ratio} | {} |",
                r.variant,
                r.unit,
                md_escape(&r.config)
            );
        }
        for n in &self.notes {
            let _ = writeln!(s, "\n{n}");
        }
        s
    }

    /// Prints the markdown and writes `<dir>/<name>.json` and `<dir>/<name>.md`.
    pub fn emit(&self, dir: &Path) -> Result<()> {
        let md = self.markdown();
        println!("{md}");
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = serde_json::to_string_pretty(self)? + "\n";
        let jp = dir.join(format!("{}.json", self.name));
        std::fs::write(&jp, json).with_context(|| format!("writing {}", jp.display()))?;
        std::fs::write(dir.join(format!("{}.md", self.name)), md)?;
        eprintln!("corral-bench: wrote {}", jp.display());
        Ok(())
    }
}

fn md_escape(s: &str) -> String {
    format!("`{}`", s.replace('|', "\\|").replace('`', "'"))
}

fn plain(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}
