//! The report of a sweep: `summary.csv` (one row per point), `plots/*.svg` and `report.md`
//! (see [`crate::markdown`]), all computed from the stored points.

use std::path::Path;

use rlhf_core::train::fs::write_atomic;
use rlhf_core::{Error, Result};

use crate::findings::by_seed;
use crate::markdown::{base_beta, base_beta_labels, report};
use crate::plots::{compute_plot, every_axis, frontier_plot, over_optimisation_plot};
use crate::study::PointRecord;

/// The columns of `summary.csv` before the metrics: what identifies a point, and its wall time.
pub const SUMMARY_KEY_COLUMNS: [&str; 5] = ["axis", "value", "x", "seed", "wall_seconds"];

/// `summary.csv`: one row per point, the [`SUMMARY_KEY_COLUMNS`], then one column per metric (a
/// metric a point does not have is an empty cell).
pub fn summary_csv(points: &[PointRecord]) -> Result<String> {
    let mut keys: Vec<&String> = points
        .iter()
        .flat_map(|p| p.result.metrics.keys())
        .collect();
    keys.sort();
    keys.dedup();
    let mut csv = csv::Writer::from_writer(Vec::new());
    let bad = |e: csv::Error| Error::Record(format!("summary.csv: {e}"));
    let header = SUMMARY_KEY_COLUMNS
        .into_iter()
        .chain(keys.iter().map(|k| k.as_str()));
    csv.write_record(header).map_err(bad)?;
    for p in points {
        let mut row = summary_key(p);
        row.push(format!("{:.3}", p.result.wall_seconds));
        row.extend(keys.iter().map(|k| metric_cell(p, k)));
        csv.write_record(&row).map_err(bad)?;
    }
    let bytes = csv
        .into_inner()
        .map_err(|e| Error::Record(format!("summary.csv: {e}")))?;
    String::from_utf8(bytes).map_err(|e| Error::Record(format!("summary.csv: {e}")))
}

/// The cells that identify `p`'s row in `summary.csv`: axis, value, x and seed.
pub fn summary_key(p: &PointRecord) -> Vec<String> {
    vec![
        p.point.axis.to_string(),
        p.point.label.to_string(),
        p.point.x.to_string(),
        p.point.config.seed.to_string(),
    ]
}

/// `p`'s cell of the metric `name` in `summary.csv`: the value as stored, or empty.
pub fn metric_cell(p: &PointRecord, name: &str) -> String {
    p.result
        .metrics
        .get(name)
        .map_or(String::new(), |v| format!("{v}"))
}

/// Writes `summary.csv`, `plots/*.svg` and `report.md` for the points stored under `out`.
pub fn write_report(out: &Path, points: &[PointRecord], title: &str) -> Result<()> {
    if points.is_empty() {
        return Err(Error::Config(format!(
            "no points under {}",
            out.join("points").display()
        )));
    }
    let plots = out.join("plots");
    std::fs::create_dir_all(&plots).map_err(|e| Error::io(&plots, e))?;
    write_atomic(&out.join("summary.csv"), summary_csv(points)?.as_bytes())?;
    let axis_plots = every_axis(&plots, points)?;
    let seeds = by_seed(points);
    let labels = base_beta_labels(points, base_beta(points));
    let study_plots = [
        (
            "Gold score against KL, per method",
            frontier_plot(&plots, &seeds)?,
        ),
        (
            "Over-optimisation along training",
            over_optimisation_plot(&plots, points)?,
        ),
        (
            "Gold gain against the RL stage's compute",
            compute_plot(&plots, &seeds, &labels)?,
        ),
    ];
    let md = report(points, title, &axis_plots, &study_plots);
    write_atomic(&out.join("report.md"), md.as_bytes())
}
