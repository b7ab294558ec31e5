//! `--plot FILE.svg`: a picture of a run's timeline (the record's `timeline`): memory
//! and CPU over time, the limits as lines, and the events marked where they happened.

use std::path::Path;

use anyhow::{bail, Context, Result};
use corral_record::{Record, Timeline};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

const MIB: f64 = 1024.0 * 1024.0;
/// The memory line's colour (also how the tests find it).
pub const MEMORY_COLOR: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
/// The limit lines' colour.
pub const LIMIT_COLOR: RGBColor = RGBColor(0xd6, 0x27, 0x28);
const CPU_COLOR: RGBColor = RGBColor(0x2c, 0xa0, 0x2c);

/// Writes the picture of `rec`'s timeline to `path` (`.svg`).
pub fn write(rec: &Record, path: &Path) -> Result<()> {
    let Some(tl) = &rec.timeline else {
        bail!(
            "run {} has no timeline to plot (corral run --timeline records one; the \
             service records one for every run)",
            rec.id
        );
    };
    check_path(path)?;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    draw(rec, tl, &root).with_context(|| format!("drawing {}", path.display()))
}

/// Refuses a `--plot` file corral cannot draw (checked before a run starts).
pub fn check_path(path: &Path) -> Result<()> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "svg" => Ok(()),
        "png" => bail!("--plot: PNG output is not available in this build of corral: use FILE.svg"),
        _ => bail!("--plot takes a file name ending in .svg"),
    }
}

/// The picture as SVG text.
#[cfg(test)]
pub fn svg(rec: &Record, tl: &Timeline) -> Result<String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, SIZE).into_drawing_area();
        draw(rec, tl, &root)?;
    }
    Ok(out)
}

const SIZE: (u32, u32) = (1000, 720);

fn short_event(kind: &str) -> &str {
    match kind {
        "oom_kill" => "OOM kill",
        "memory_max" => "memory limit hit",
        "memory_high" => "over memory.high",
        "cpu_throttled" => "CPU throttled",
        "sigterm" => "SIGTERM",
        "sigkill" => "SIGKILL",
        k => k,
    }
}

fn event_color(kind: &str) -> RGBColor {
    match kind {
        "oom_kill" | "sigkill" => RGBColor(0x8b, 0x00, 0x00),
        "memory_max" | "memory_high" | "sigterm" => RGBColor(0xff, 0x7f, 0x0e),
        _ => RGBColor(0x94, 0x67, 0xbd),
    }
}

fn draw<DB: DrawingBackend>(
    rec: &Record,
    tl: &Timeline,
    root: &DrawingArea<DB, Shift>,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(err)?;
    // The program by its file name: a reader wants `python`, not a virtualenv's path.
    let mut words = rec.command.clone();
    if let Some(first) = words.first_mut() {
        if let Some(name) = Path::new(first.as_str()).file_name() {
            *first = name.to_string_lossy().into_owned();
        }
    }
    let cmd = words.join(" ");
    let cmd = if cmd.chars().count() > 60 {
        format!("{}…", cmd.chars().take(60).collect::<String>())
    } else {
        cmd
    };
    let title = format!("corral run {}: {} — {}", rec.id, rec.outcome.reason, cmd);
    let root = root.titled(&title, ("sans-serif", 20)).map_err(err)?;
    let (upper, lower) = root.split_vertically(340);

    let t_end = tl
        .points
        .iter()
        .map(|p| p.t)
        .chain(tl.events.iter().map(|e| e.t))
        .fold(rec.usage.wall_s, f64::max)
        .max(1e-3)
        * 1.02;

    // Memory, in MiB, with the limit.
    let limit = rec.limits.enforced.memory_bytes.map(|b| b as f64 / MIB);
    let mem: Vec<(f64, f64)> = tl
        .points
        .iter()
        .filter_map(|p| Some((p.t, p.memory_bytes? as f64 / MIB)))
        .collect();
    let top = mem.iter().map(|p| p.1).chain(limit).fold(1.0, f64::max) * 1.15;
    let memory_limit = limit.map(|l| (l, format!("memory limit ({l:.0} MiB)")));
    let memory = Series {
        y_desc: "memory (MiB)",
        label: "memory in use",
        color: MEMORY_COLOR,
        points: mem,
    };
    panel(&upper, tl, t_end, top, memory, memory_limit, true)?;

    // CPU, in cores (CPU seconds per second between readings), with the limit.
    let cpus = rec.limits.enforced.cpus;
    let mut cpu = Vec::new();
    let mut prev: Option<(f64, f64)> = Some((0.0, 0.0));
    for p in &tl.points {
        if let (Some((t0, c0)), Some(c)) = (prev, p.cpu_s) {
            if p.t > t0 {
                cpu.push((p.t, ((c - c0) / (p.t - t0)).max(0.0)));
            }
        }
        prev = p.cpu_s.map(|c| (p.t, c));
    }
    let top = cpu.iter().map(|p| p.1).chain(cpus).fold(0.1, f64::max) * 1.15;
    let cpu_limit = cpus.map(|c| {
        (
            c,
            format!("CPU limit ({c} CPU{})", if c == 1.0 { "" } else { "s" }),
        )
    });
    let cpu = Series {
        y_desc: "CPU (cores)",
        label: "CPU used",
        color: CPU_COLOR,
        points: cpu,
    };
    panel(&lower, tl, t_end, top, cpu, cpu_limit, false)?;
    root.present().map_err(err)?;
    Ok(())
}

/// One panel's measured line.
struct Series {
    y_desc: &'static str,
    label: &'static str,
    color: RGBColor,
    points: Vec<(f64, f64)>,
}

/// One panel: the measured line, its limit as a horizontal line (value, legend), the
/// events (named on the panel with `named`), and the legend.
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    tl: &Timeline,
    t_end: f64,
    top: f64,
    s: Series,
    limit: Option<(f64, String)>,
    named: bool,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..t_end, 0.0..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the command started")
        .y_desc(s.y_desc)
        .draw()
        .map_err(err)?;
    let color = s.color;
    chart
        .draw_series(LineSeries::new(s.points, color.stroke_width(2)))
        .map_err(err)?
        .label(s.label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    if let Some((l, label)) = limit {
        chart
            .draw_series(LineSeries::new(
                vec![(0.0, l), (t_end, l)],
                LIMIT_COLOR.stroke_width(2),
            ))
            .map_err(err)?
            .label(label)
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], LIMIT_COLOR));
    }
    mark_events(&mut chart, tl, top, named)?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}

type Chart<'a, DB> = ChartContext<
    'a,
    DB,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// Each event as a dashed vertical line, named (on the memory panel) at its top.
fn mark_events<DB: DrawingBackend>(
    chart: &mut Chart<'_, DB>,
    tl: &Timeline,
    top: f64,
    named: bool,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let t_end = chart.x_range().end;
    for (i, e) in tl.events.iter().enumerate() {
        let color = event_color(&e.kind);
        chart
            .draw_series(DashedLineSeries::new(
                vec![(e.t, 0.0), (e.t, top)],
                6,
                4,
                color.stroke_width(1),
            ))
            .map_err(err)?;
        if named {
            // Staggered, so events close together stay readable.
            let y = top * (0.97 - 0.07 * (i % 4) as f64);
            let text = format!("{} ({:.1} s)", short_event(&e.kind), e.t);
            // Named on the side with room: left of a line in the right part.
            let h = if e.t > 0.6 * t_end {
                HPos::Right
            } else {
                HPos::Left
            };
            let style = ("sans-serif", 13)
                .into_font()
                .color(&color)
                .pos(Pos::new(h, VPos::Top));
            chart
                .draw_series(std::iter::once(Text::new(
                    format!(" {text} "),
                    (e.t, y),
                    style,
                )))
                .map_err(err)?;
        }
    }
    Ok(())
}

fn err<E: std::error::Error + Send + Sync + 'static>(e: E) -> anyhow::Error {
    anyhow::Error::new(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_record::{LimitsRecord, RecordHead, TimelineEvent, TimelinePoint};

    /// The `points` of the series lines (2 px wide) drawn in `color`, as (x, y) pixels.
    fn polylines(svg: &str, color: RGBColor) -> Vec<Vec<(f64, f64)>> {
        let hex = format!("#{:02X}{:02X}{:02X}", color.0, color.1, color.2);
        svg.split("<polyline")
            .skip(1)
            .map(|el| el.split("/>").next().unwrap_or(""))
            .filter(|el| {
                let up = el.to_uppercase();
                up.contains(&hex) && up.contains("STROKE-WIDTH=\"2\"")
            })
            .filter_map(|el| {
                let pts = el.split("points=\"").nth(1)?.split('"').next()?;
                Some(
                    pts.split_whitespace()
                        .filter_map(|xy| {
                            let (x, y) = xy.split_once(',')?;
                            Some((x.parse().ok()?, y.parse().ok()?))
                        })
                        .collect(),
                )
            })
            .collect()
    }

    fn record() -> Record {
        let limits = corral_spec::Limits {
            memory: Some(256 << 20),
            ..Default::default()
        };
        let mut lr = LimitsRecord::new(&limits, Default::default(), Vec::new());
        lr.enforced.memory_bytes = Some(256 << 20);
        lr.enforced.cpus = Some(1.0);
        let mut rec = Record::new(RecordHead {
            id: "leak".into(),
            command: vec!["python3".into(), "leak.py".into()],
            cwd: None,
            profile: "default".into(),
            backend: "cgroup2".into(),
            backend_reason: String::new(),
            limits: lr,
        });
        let mut tl = Timeline::new(1.0);
        for i in 1..=8u64 {
            let mem = if i == 8 { 256 << 20 } else { i * (32 << 20) };
            tl.points.push(TimelinePoint {
                t: i as f64,
                memory_bytes: Some(mem),
                cpu_s: Some(i as f64 * 0.5),
                processes: 1,
                ..TimelinePoint::default()
            });
        }
        tl.events.push(TimelineEvent {
            t: 8.0,
            kind: "oom_kill".into(),
            detail: "1 process killed by the kernel's OOM killer".into(),
        });
        rec.usage.wall_s = 8.2;
        rec.timeline = Some(tl);
        rec
    }

    #[test]
    fn the_limit_line_is_at_the_limit() {
        let rec = record();
        let svg = svg(&rec, rec.timeline.as_ref().unwrap()).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100]);
        assert!(svg.contains("memory limit (256 MiB)"));
        assert!(svg.contains("OOM kill (8.0 s)"));
        assert!(svg.contains("memory (MiB)") && svg.contains("CPU (cores)"));
        let mem = polylines(&svg, MEMORY_COLOR);
        assert_eq!(mem.len(), 1, "one memory line");
        let limits = polylines(&svg, LIMIT_COLOR);
        // The memory limit and the CPU limit, each horizontal.
        assert_eq!(limits.len(), 2, "{limits:?}");
        let mem_limit = &limits[0];
        assert_eq!(mem_limit[0].1, mem_limit[1].1);
        // The last point is exactly at the limit: it is drawn at the limit line's height,
        // and it is the line's highest point (the smallest y).
        let last = mem[0].last().unwrap();
        assert!(
            (last.1 - mem_limit[0].1).abs() <= 1.0,
            "{last:?} vs {mem_limit:?}"
        );
        assert!(mem[0].iter().all(|p| p.1 >= last.1 - 0.5));
        // Rising: each point above (a smaller y than) the one before.
        assert!(mem[0].windows(2).all(|w| w[1].1 < w[0].1));
    }

    #[test]
    fn no_timeline_is_an_error() {
        let mut rec = record();
        rec.timeline = None;
        let e = write(&rec, Path::new("/nonexistent/x.svg")).unwrap_err();
        assert!(e.to_string().contains("no timeline"), "{e}");
    }
}
