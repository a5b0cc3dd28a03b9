//! The report's plots (SVG): one per axis (its headline metric with 95% intervals over seeds;
//! best-of-n also the gold score's own pick), the gold-against-KL frontier per method,
//! over-optimisation (gold and proxy against KL along training) and compute (gold gain against
//! the method's FLOPs along training).

use std::collections::BTreeMap;
use std::path::Path;

use rlhf_cli::plot::{Series, svg_chart};
use rlhf_core::Result;
use rlhf_core::train::fs::write_atomic;

use crate::axis::Axis;
use crate::findings::{Seed, flops_curve, frontier, kl_curve, methods};
use crate::metrics::{curve, names};
use crate::study::PointRecord;
use crate::tables::{Row, axis_metrics, rows};

/// Writes `plots/AXIS.svg` for an axis's rows; returns its file name.
pub fn axis_plot(plots: &Path, axis: Axis, r: &[Row]) -> Result<String> {
    let head = axis_metrics(axis)[0];
    let points_of = |rows: &[Row], metric: &str| -> Vec<(f64, f64, f64)> {
        rows.iter()
            .map(|x| {
                let c = x.cells.get(metric);
                (
                    x.x,
                    c.map_or(f64::NAN, |c| c.mean),
                    c.and_then(|c| c.interval)
                        .map_or(f64::NAN, |i| (i.hi - i.lo) / 2.0),
                )
            })
            .collect()
    };
    let points = |rows: &[Row]| points_of(rows, head);
    let (series, ticks): (Vec<Series>, Vec<(f64, String)>) = if matches!(axis, Axis::Supervision) {
        let mut kinds: BTreeMap<String, Vec<Row>> = BTreeMap::new();
        for row in r {
            let kind = row.label.split('-').next().unwrap_or_default().to_string();
            kinds.entry(kind).or_default().push(row.clone());
        }
        let mut ticks: Vec<(f64, String)> = Vec::new();
        for row in r {
            if !ticks.iter().any(|t| t.0 == row.x) {
                ticks.push((row.x, row.x.to_string()));
            }
        }
        (
            kinds
                .iter()
                .map(|(k, kr)| (format!("{k} verifier"), points(kr)))
                .collect(),
            ticks,
        )
    } else {
        let mut series = vec![(head.to_string(), points(r))];
        if axis == Axis::BestOfN {
            // also the gold score's own pick among the same candidates (a reward model without
            // error), when the points have it
            let gold_pick = points_of(r, names::GOLD_PICK);
            if gold_pick.iter().any(|p| !p.1.is_nan()) {
                series[0].0 = format!("{head}: picked by the RM");
                series.push((
                    format!("{}: picked by the gold score", names::GOLD_PICK),
                    gold_pick,
                ));
            }
        }
        (series, r.iter().map(|x| (x.x, x.label.clone())).collect())
    };
    let svg = svg_chart(
        &format!("{axis}: {head} (95% intervals over seeds)"),
        axis.name(),
        head,
        &series,
        Some(&ticks),
        axis.is_numeric(),
    )?;
    let name = format!("{axis}.svg");
    write_atomic(&plots.join(&name), svg.as_bytes())?;
    Ok(name)
}

/// Mean over seeds of curves sampled at the same steps (seeds missing a step are skipped).
fn mean_curves(curves: &[Vec<(f64, f64)>]) -> Vec<(f64, f64, f64)> {
    let len = curves.iter().map(Vec::len).min().unwrap_or(0);
    (0..len)
        .map(|i| {
            let n = curves.len() as f64;
            let x = curves.iter().map(|c| c[i].0).sum::<f64>() / n;
            let y = curves.iter().map(|c| c[i].1).sum::<f64>() / n;
            (x, y, f64::NAN)
        })
        .collect()
}

/// `plots/frontier.svg`: gold against KL per method, the β sweep's end points averaged over
/// seeds, from the SFT policy at KL 0.
pub fn frontier_plot(plots: &Path, seeds: &[Seed<'_>]) -> Result<Option<String>> {
    let series: Vec<Series> = methods(seeds)
        .into_iter()
        .map(|m| {
            let curves: Vec<Vec<(f64, f64)>> = seeds
                .iter()
                .map(|s| {
                    let mut f = frontier(s, &m);
                    f.sort_by(|a, b| a.0.total_cmp(&b.0));
                    f
                })
                .collect();
            (m, mean_curves(&curves))
        })
        .filter(|s| !s.1.is_empty())
        .collect();
    if series.is_empty() {
        return Ok(None);
    }
    let svg = svg_chart(
        "gold score against KL to the SFT policy, per method (β sweep, mean over seeds)",
        "KL(π‖π_ref) per sequence",
        "gold/mean",
        &series,
        None,
        false,
    )?;
    write_atomic(&plots.join("frontier.svg"), svg.as_bytes())?;
    Ok(Some("frontier.svg".into()))
}

/// `plots/over_optimisation.svg`: gold and the RM's score along training against KL, one pair
/// of lines per β of the `kl_budget` axis (mean over seeds).
pub fn over_optimisation_plot(plots: &Path, points: &[PointRecord]) -> Result<Option<String>> {
    let mut by_beta: BTreeMap<String, Vec<&PointRecord>> = BTreeMap::new();
    for p in points.iter().filter(|p| p.point.axis == Axis::KlBudget) {
        by_beta.entry(p.point.label.clone()).or_default().push(p);
    }
    let mut series: Vec<Series> = Vec::new();
    for (beta, ps) in &by_beta {
        let gold: Vec<Vec<(f64, f64)>> = ps.iter().map(|p| kl_curve(p)).collect();
        let proxy: Vec<Vec<(f64, f64)>> = ps
            .iter()
            .map(|p| {
                p.result
                    .curve
                    .iter()
                    .filter_map(|c| Some((*c.get(curve::KL)?, *c.get(curve::PROXY)?)))
                    .collect()
            })
            .collect();
        series.push((format!("gold, β = {beta}"), mean_curves(&gold)));
        series.push((format!("proxy, β = {beta}"), mean_curves(&proxy)));
    }
    series.retain(|s| !s.1.is_empty());
    if series.is_empty() {
        return Ok(None);
    }
    let svg = svg_chart(
        "over-optimisation: gold and proxy along PPO training, per β (mean over seeds)",
        "KL(π‖π_ref) per sequence",
        "score",
        &series,
        None,
        false,
    )?;
    write_atomic(&plots.join("over_optimisation.svg"), svg.as_bytes())?;
    Ok(Some("over_optimisation.svg".into()))
}

/// `plots/compute.svg`: gold gain against the method's FLOPs along training, one line per
/// on-policy method at the base β (mean over seeds).
pub fn compute_plot(plots: &Path, seeds: &[Seed<'_>], labels: &[String]) -> Result<Option<String>> {
    let mut series: Vec<Series> = Vec::new();
    for label in labels {
        let curves: Vec<Vec<(f64, f64)>> = seeds
            .iter()
            .filter_map(|s| s.get(Axis::Method, label))
            .map(|p| {
                let c = flops_curve(p);
                let o = c.first().map_or(0.0, |x| x.1);
                c.into_iter()
                    .filter(|x| x.0 > 0.0)
                    .map(|(f, g)| (f, g - o))
                    .collect()
            })
            .collect();
        let mean = mean_curves(&curves);
        if mean.len() >= 2 {
            series.push((label.clone(), mean));
        }
    }
    if series.is_empty() {
        return Ok(None);
    }
    let svg = svg_chart(
        "gold gain against the RL stage's FLOPs (mean over seeds)",
        "FLOPs of the method so far",
        "gold gain over SFT",
        &series,
        None,
        true,
    )?;
    write_atomic(&plots.join("compute.svg"), svg.as_bytes())?;
    Ok(Some("compute.svg".into()))
}

/// Every axis's plot that has points, as (axis, file name).
pub fn every_axis(plots: &Path, points: &[PointRecord]) -> Result<Vec<(Axis, String)>> {
    let mut out = Vec::new();
    for axis in Axis::ALL {
        let r = rows(points, axis);
        if !r.is_empty() {
            out.push((axis, axis_plot(plots, axis, &r)?));
        }
    }
    Ok(out)
}
