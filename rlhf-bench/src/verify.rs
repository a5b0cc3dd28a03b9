//! `rlhf-bench verify`: checks that a report and its CSV hold the stored points' numbers.

use std::path::Path;

use rlhf_core::{Error, Result};

use crate::axis::Axis;
use crate::findings::findings;
use crate::report::{SUMMARY_KEY_COLUMNS, metric_cell, summary_key};
use crate::tables::{axis_metrics, rows};

/// Checks that `report.md` and `summary.csv` under `out` hold the stored points' numbers: every
/// table row and every finding of the report is recomputed from `points/*.json` and must appear
/// verbatim, and every point has its row in the CSV with its metrics. Returns the number of
/// lines checked.
pub fn verify_report(out: &Path) -> Result<usize> {
    verify_report_files(out, &out.join("report.md"), &out.join("summary.csv"))
}

/// [`verify_report`] with the report and the CSV at any path (a committed copy of a report),
/// and the points under `points_root/points/`.
pub fn verify_report_files(
    points_root: &Path,
    report_md: &Path,
    summary_csv: &Path,
) -> Result<usize> {
    let points = crate::study::read_points(points_root)?;
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| Error::io(p, e));
    let md = read(report_md)?;
    let csv = read(summary_csv)?;
    let mut checked = 0;
    for axis in Axis::ALL {
        for row in rows(&points, axis) {
            let line = row.table_line(axis_metrics(axis));
            if !md.lines().any(|l| l == line) {
                return Err(Error::Config(format!(
                    "report.md lacks the {axis} row `{line}`"
                )));
            }
            checked += 1;
        }
    }
    for f in findings(&points) {
        let line = f.table_line();
        if !md.lines().any(|l| l == line) {
            return Err(Error::Config(format!(
                "report.md lacks the finding `{line}`"
            )));
        }
        checked += 1;
    }
    let bad = |e: csv::Error| Error::Config(format!("{}: {e}", summary_csv.display()));
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let header = reader.headers().map_err(bad)?.clone();
    let table: Vec<csv::StringRecord> = reader
        .records()
        .collect::<std::result::Result<_, _>>()
        .map_err(bad)?;
    let keys = SUMMARY_KEY_COLUMNS.len();
    for p in &points {
        let key = summary_key(p);
        let row = table
            .iter()
            .find(|r| r.iter().take(key.len()).eq(key.iter().map(String::as_str)))
            .ok_or_else(|| Error::Config(format!("summary.csv lacks {}", p.point.file_name())))?;
        for (name, cell) in header.iter().zip(row.iter()).skip(keys) {
            let stored = metric_cell(p, name);
            if cell != stored {
                return Err(Error::Config(format!(
                    "summary.csv: {} {name} is {cell}, the point says {stored}",
                    p.point.file_name()
                )));
            }
        }
        checked += 1;
    }
    Ok(checked)
}
