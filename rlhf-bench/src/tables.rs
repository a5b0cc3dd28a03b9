//! The axis tables of the report: one row per value of an axis, one cell per metric, each the
//! mean over seeds with its 95% interval (see [`crate::stats`]).

use std::collections::BTreeMap;

use crate::axis::Axis;
use crate::metrics::names;
use crate::stats::Interval;
use crate::study::PointRecord;

/// One metric at one value of an axis, over seeds.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    /// Mean over seeds.
    pub mean: f64,
    /// Its 95% interval (two or more seeds).
    pub interval: Option<Interval>,
}

/// One value of an axis: its label, x and the cells of every metric.
#[derive(Debug, Clone)]
pub struct Row {
    /// Label.
    pub label: String,
    /// x.
    pub x: f64,
    /// Metric → cell.
    pub cells: BTreeMap<String, Cell>,
}

impl Row {
    /// The row's line in its axis's table of `metrics`.
    pub fn table_line(&self, metrics: &[&str]) -> String {
        let cells: Vec<String> = metrics.iter().map(|m| fmt(self.cells.get(*m))).collect();
        format!("| {} | {} |", self.label, cells.join(" | "))
    }

    /// The mean of `metric` (NaN when absent).
    pub fn mean(&self, metric: &str) -> f64 {
        self.cells.get(metric).map_or(f64::NAN, |c| c.mean)
    }
}

/// The rows of `axis` in the order of their x (then label).
pub fn rows(points: &[PointRecord], axis: Axis) -> Vec<Row> {
    let mut by_label: BTreeMap<String, (f64, Vec<&PointRecord>)> = BTreeMap::new();
    for p in points.iter().filter(|p| p.point.axis == axis) {
        by_label
            .entry(p.point.label.clone())
            .or_insert((p.point.x, Vec::new()))
            .1
            .push(p);
    }
    let mut rows: Vec<Row> = by_label
        .into_iter()
        .map(|(label, (x, ps))| {
            let mut values: BTreeMap<String, Vec<f64>> = BTreeMap::new();
            for p in &ps {
                for (k, v) in &p.result.metrics {
                    values.entry(k.clone()).or_default().push(*v);
                }
                values
                    .entry("time/wall".into())
                    .or_default()
                    .push(p.result.wall_seconds);
            }
            let cells = values
                .into_iter()
                .map(|(k, v)| {
                    let mean = v.iter().sum::<f64>() / v.len() as f64;
                    (
                        k,
                        Cell {
                            mean,
                            interval: Interval::over_seeds(&v),
                        },
                    )
                })
                .collect();
            Row { label, x, cells }
        })
        .collect();
    rows.sort_by(|a, b| a.x.total_cmp(&b.x).then(a.label.cmp(&b.label)));
    rows
}

/// What each axis tabulates: its headline metric first.
pub fn axis_metrics(axis: Axis) -> &'static [&'static str] {
    match axis {
        Axis::RmVolume | Axis::RmDiversity => &[
            names::RM_GOLD_ACCURACY,
            names::RM_ACCURACY,
            names::RM_LABELLER_AGREEMENT,
            names::FLOPS_RM,
        ],
        Axis::BestOfN => &[
            names::GOLD,
            names::GOLD_SE,
            names::GOLD_GAIN,
            names::WIN_VS_REFERENCES,
            names::GOLD_PICK,
            names::GOLD_PICK_WIN_VS_REFERENCES,
            names::PROXY,
            names::KL,
            names::FLOPS_METHOD,
        ],
        Axis::KlBudget => &[
            names::GOLD,
            names::GOLD_SE,
            names::GOLD_GAIN,
            names::PROXY,
            names::KL,
            names::LENGTH,
            names::WIN_VS_REFERENCES,
        ],
        Axis::LengthControl => &[
            names::GOLD_GAIN,
            names::GOLD,
            names::GOLD_SE,
            names::KL,
            names::LENGTH,
            names::LENGTH_SFT,
            names::LENGTH_SLOPE,
        ],
        Axis::RmSize => &[
            names::GOLD_GAIN,
            names::GOLD,
            names::GOLD_SE,
            names::RM_GOLD_ACCURACY,
            names::KL,
            names::PROXY,
            names::PARAMS_RM,
            names::FLOPS_METHOD,
        ],
        Axis::PolicySize => &[
            names::GOLD_GAIN,
            names::GOLD,
            names::GOLD_SE,
            names::GOLD_SFT,
            names::SFT_WIN_VS_REFERENCES,
            names::WIN_VS_REFERENCES,
            names::KL,
            names::PARAMS_POLICY,
            names::FLOPS_METHOD,
        ],
        Axis::Supervision => crate::arith::TABLE,
        Axis::SupervisionRl => crate::arith::RL_TABLE,
        Axis::SamplesPerPrompt | Axis::Method => &[
            names::GOLD_GAIN,
            names::GOLD,
            names::GOLD_SE,
            names::WIN_VS_REFERENCES,
            names::WIN_VS_SFT,
            names::KL,
            names::PROXY,
            names::FLOPS_METHOD,
            names::TIME_METHOD,
        ],
    }
}

/// `0.612 [0.598, 0.626]` with two or more seeds, `0.612` with one, large values in `e`
/// notation, `–` when absent.
pub fn fmt(c: Option<&Cell>) -> String {
    match c {
        None => "–".into(),
        Some(c) if c.mean.abs() >= 1e5 => format!("{:.3e}", c.mean),
        Some(Cell {
            mean,
            interval: Some(i),
        }) => format!("{mean:.3} [{:.3}, {:.3}]", i.lo, i.hi),
        Some(c) => format!("{:.3}", c.mean),
    }
}
