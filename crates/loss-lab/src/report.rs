//! Result tables (terminal, Markdown, CSV), `metrics.json` and the per-label plot.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use crate::error::{LabError, Result};
use crate::experiment::{RunResult, SplitScores};

/// Percent with two decimals; `n/a` for a group without labels (NaN).
fn pct(v: f64) -> String {
    if v.is_nan() {
        "n/a".into()
    } else {
        format!("{:.2}", 100.0 * v)
    }
}

fn group(s: &SplitScores, name: &str) -> (f64, f64) {
    let g = s.groups.get(name);
    let value = |v: Option<f64>| v.unwrap_or(f64::NAN);
    g.map(|g| (value(g.micro_f1), value(g.macro_f1))).unwrap_or((f64::NAN, f64::NAN))
}

/// The columns of every table: overall and per group, micro and macro F1, in percent.
pub const COLUMNS: [&str; 8] =
    ["micro-F1", "macro-F1", "head mi", "head ma", "medium mi", "medium ma", "tail mi", "tail ma"];

/// The eight numbers of [`COLUMNS`] for one split.
pub fn row(s: &SplitScores) -> [f64; 8] {
    let (hmi, hma) = group(s, "head");
    let (mmi, mma) = group(s, "medium");
    let (tmi, tma) = group(s, "tail");
    [s.micro_f1, s.macro_f1, hmi, hma, mmi, mma, tmi, tma]
}

/// A Markdown table with a first column `first` and one row per `(name, values)`.
pub fn markdown(first: &str, rows: &[(String, [f64; 8])]) -> String {
    let mut out = format!("| {first} | {} |\n", COLUMNS.join(" | "));
    let _ = writeln!(out, "|---|{}", "---:|".repeat(COLUMNS.len()));
    for (name, v) in rows {
        let cells: Vec<String> = v.iter().map(|&x| pct(x)).collect();
        let _ = writeln!(out, "| {name} | {} |", cells.join(" | "));
    }
    out
}

/// The same rows as CSV, F1 as fractions (empty for a group without labels).
pub fn csv(first: &str, rows: &[(String, [f64; 8])]) -> String {
    let header: Vec<String> =
        COLUMNS.iter().map(|c| c.replace(' ', "_").replace("-F1", "_f1")).collect();
    let mut out = format!("{first},{}\n", header.join(","));
    for (name, v) in rows {
        let cells: Vec<String> =
            v.iter().map(|x| if x.is_nan() { String::new() } else { format!("{x:.6}") }).collect();
        let _ = writeln!(out, "{name},{}", cells.join(","));
    }
    out
}

/// Creates the output directory (and its parents) before any work, so that a bad `--out`
/// fails at once rather than after training.
pub fn prepare_out_dir(dir: &Path) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        return Err(LabError::InvalidConfig {
            what: "--out",
            reason: format!("{} exists and is not a directory", dir.display()),
        });
    }
    std::fs::create_dir_all(dir).map_err(|e| LabError::io(dir, e))
}

/// Writes `text` to `path`, creating its directory.
pub fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| LabError::io(dir, e))?;
    }
    std::fs::write(path, text).map_err(|e| LabError::io(path, e))
}

/// `metrics.json` of one run.
pub fn metrics_json(result: &RunResult) -> Result<String> {
    serde_json::to_string_pretty(result).map_err(|e| LabError::Torch(e.to_string()))
}

/// An SVG scatter plot of each label's test F1 against its training frequency (log scale).
pub fn plot_per_label(path: &Path, class_freq: &[f64], f1: &[f64], title: &str) -> Result<()> {
    let err = |e: String| LabError::Torch(format!("plot {}: {e}", path.display()));
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let max_freq = class_freq.iter().copied().fold(1.0, f64::max) * 1.5;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((1.0..max_freq).log_scale(), 0.0..1.05)
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("training documents with the label (log scale)")
        .y_desc("test F1")
        .draw()
        .map_err(|e| err(e.to_string()))?;
    chart
        .draw_series(
            class_freq
                .iter()
                .zip(f1)
                .map(|(&n, &f)| Circle::new((n.max(1.0), f), 4, BLUE.mix(0.6).filled())),
        )
        .map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))
}
