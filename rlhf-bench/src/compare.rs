//! Comparisons that hold one thing fixed: runs that reached different KLs or spent different
//! compute are compared at matched KL and at matched compute (FLOPs of the method stage), as
//! well as at their raw end points, each effect with its interval over seeds.

use crate::axis::Axis;
use crate::findings::{Seed, flops_curve, gain_curve, gap_at_matched_kl, method_curve, metric};
use crate::fits::interpolate;
use crate::metrics::names;
use crate::stats::Interval;
use crate::study::PointRecord;

/// One compared run against the baseline, three ways.
#[derive(Debug, Clone)]
pub struct Comparison {
    /// The compared run (`rm xs`, `grpo`, …).
    pub name: String,
    /// Gold gain − the baseline's at the end points.
    pub raw: Option<Interval>,
    /// Mean gold gain − the baseline's at three matched KLs.
    pub matched_kl: Option<Interval>,
    /// Gold gain − the baseline's at the smaller of the two runs' FLOPs.
    pub matched_compute: Option<Interval>,
    /// The matched KL values, averaged over seeds.
    pub kls: Vec<f64>,
}

impl Comparison {
    /// The comparison's line in its table.
    pub fn table_line(&self) -> String {
        let show = |i: &Option<Interval>| i.map_or_else(|| "—".into(), |i| i.show());
        let kls: Vec<String> = self.kls.iter().map(|k| format!("{k:.2}")).collect();
        let matched_kl = match self.matched_kl {
            Some(_) => format!("{} ({})", show(&self.matched_kl), kls.join(", ")),
            None => "— (no KL measured by both)".into(),
        };
        format!(
            "| {} | {} | {matched_kl} | {} |",
            self.name,
            show(&self.raw),
            show(&self.matched_compute)
        )
    }
}

/// Gold gain over the run's SFT policy at `flops` on its compute curve, which starts at the
/// SFT policy. Offline methods have no curve: only their end point is measured, so they answer
/// only at their own end FLOPs.
fn gain_at_flops(p: &PointRecord, flops: f64) -> Option<f64> {
    let c = flops_curve(p);
    if c.len() <= 1 {
        let end = metric(p, names::FLOPS_METHOD);
        return ((flops - end).abs() <= 1e-9 * end.abs())
            .then(|| metric(p, names::GOLD) - metric(p, names::GOLD_SFT));
    }
    if c.first()?.0 != 0.0 {
        return None;
    }
    let origin = c.first()?.1;
    interpolate(&c, flops).map(|g| g - origin)
}

fn end_flops(p: &PointRecord) -> f64 {
    flops_curve(p)
        .last()
        .map(|x| x.0)
        .filter(|f| *f > 0.0)
        .unwrap_or_else(|| metric(p, names::FLOPS_METHOD))
}

/// Compares `pick(seed)` = (run, baseline run) on every seed, curves as given.
type Picked<'a> = (Vec<(f64, f64)>, Vec<(f64, f64)>, [&'a PointRecord; 2]);

fn compare<'a>(
    seeds: &[Seed<'a>],
    name: &str,
    pick: impl Fn(&Seed<'a>) -> Option<Picked<'a>>,
) -> Comparison {
    let (mut raw, mut kl, mut compute, mut kls) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for s in seeds {
        let Some((a, b, [pa, pb])) = pick(s) else {
            continue;
        };
        raw.push(metric(pa, names::GOLD_GAIN) - metric(pb, names::GOLD_GAIN));
        if let Some((g, at)) = gap_at_matched_kl(&a, &b) {
            kl.push(g);
            kls.push(at);
        }
        let f = end_flops(pa).min(end_flops(pb));
        if let (Some(x), Some(y)) = (gain_at_flops(pa, f), gain_at_flops(pb, f)) {
            compute.push(x - y);
        }
    }
    let mean_kls = (0..3)
        .map(|j| kls.iter().map(|k| k[j]).sum::<f64>() / kls.len().max(1) as f64)
        .filter(|_| !kls.is_empty())
        .collect();
    Comparison {
        name: name.into(),
        raw: Interval::over_seeds(&raw),
        matched_kl: Interval::over_seeds(&kl),
        matched_compute: Interval::over_seeds(&compute),
        kls: mean_kls,
    }
}

/// Every method against PPO: at the end points of the base β, at matched KL over each method's
/// β sweep ([`method_curve`]), at matched compute at the base β (DPO and EXO at their middle β).
pub fn methods_against_ppo(seeds: &[Seed<'_>], base_beta: f64) -> Vec<Comparison> {
    crate::findings::methods(seeds)
        .into_iter()
        .filter(|m| m != "ppo")
        .map(|m| {
            compare(seeds, &m, |s| {
                let base = |method: &str| -> Option<&'_ PointRecord> {
                    let pts: Vec<&PointRecord> = s
                        .axis(Axis::Method)
                        .into_iter()
                        .filter(|p| crate::findings::method_of(&p.point.label).0 == method)
                        .collect();
                    pts.iter()
                        .copied()
                        .find(|p| crate::findings::method_of(&p.point.label).1 == base_beta)
                        .or_else(|| pts.get(pts.len() / 2).copied())
                };
                let (pa, pb) = (base(&m)?, base("ppo")?);
                Some((method_curve(s, &m), method_curve(s, "ppo"), [pa, pb]))
            })
        })
        .collect()
}

/// Every value of a size axis against its smallest, on their learning curves.
pub fn sizes_against_smallest(seeds: &[Seed<'_>], axis: Axis) -> Vec<Comparison> {
    let labels: Vec<String> = seeds
        .first()
        .map(|s| s.axis(axis).iter().map(|p| p.point.label.clone()).collect())
        .unwrap_or_default();
    labels
        .iter()
        .skip(1)
        .map(|label| {
            compare(seeds, &format!("{label} − {}", labels[0]), |s| {
                let (pa, pb) = (s.get(axis, label)?, s.get(axis, &labels[0])?);
                // gains over each run's own SFT policy (the policy-size axis has one per size)
                Some((gain_curve(pa), gain_curve(pb), [pa, pb]))
            })
        })
        .collect()
}
