//! The report of a sweep: `summary.csv` (one row per point), `plots/*.svg` and `report.md`
//! (see [`crate::markdown`]), all computed from the stored points.

use std::fmt::Write as _;
use std::path::Path;

use rlhf_core::train::fs::write_atomic;
use rlhf_core::{Error, Result};

use crate::findings::by_seed;
use crate::markdown::{base_beta, base_beta_labels, report};
use crate::plots::{compute_plot, every_axis, frontier_plot, over_optimisation_plot};
use crate::study::PointRecord;

/// `summary.csv`: one row per point, one column per metric.
pub fn summary_csv(points: &[PointRecord]) -> String {
    let keys: Vec<String> = {
        let mut k: Vec<String> = points
            .iter()
            .flat_map(|p| p.result.metrics.keys().cloned())
            .collect();
        k.sort();
        k.dedup();
        k
    };
    let mut csv = format!("axis,value,x,seed,wall_seconds,{}\n", keys.join(","));
    for p in points {
        let _ = write!(
            csv,
            "{},{},{},{},{:.3}",
            p.point.axis, p.point.label, p.point.x, p.point.config.seed, p.result.wall_seconds
        );
        for k in &keys {
            let _ = write!(
                csv,
                ",{}",
                p.result
                    .metrics
                    .get(k)
                    .map_or(String::new(), |v| format!("{v}"))
            );
        }
        csv.push('\n');
    }
    csv
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
    write_atomic(&out.join("summary.csv"), summary_csv(points).as_bytes())?;
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
