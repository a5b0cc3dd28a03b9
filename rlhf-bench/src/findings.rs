//! The findings: for each claim of the seed papers, the effect this sweep measured on every
//! seed, its 95% interval over seeds and the verdict it supports (see [`crate::stats`]).
//!
//! Every effect is computed within a seed — a paired difference between two of its points on
//! the same held-out prompts, or a statistic of its points (a slope, the gold score at a
//! matched KL) — and signed so that a positive value goes the claim's way. Comparisons of
//! policies that reached different KLs are made at matched KL: each run's learning curve (gold
//! against KL, from the SFT policy at KL 0) is interpolated at three KL values, a third, two
//! thirds and all of the way across the range that every compared curve measured, and the effect
//! is the mean difference there. Runs that measured no KL in common are not compared.

use std::collections::BTreeMap;

use crate::axis::Axis;
use crate::fits::{interpolate, per_doubling};
use crate::metrics::{curve, items, names};
use crate::stats::{Interval, Verdict, mean, mean_se};
use crate::study::PointRecord;

/// A claim and what this sweep says about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// The axis whose points measure it.
    pub axis: Axis,
    /// The claim.
    pub claim: String,
    /// What the effect measures (positive: the claim's way).
    pub effect: String,
    /// The effect on each seed that has the points.
    pub per_seed: Vec<(u64, f64)>,
    /// Its 95% interval over seeds (with one seed, over that seed's prompts when the effect is
    /// a mean over prompts).
    pub interval: Option<Interval>,
    /// What the interval says.
    pub verdict: Verdict,
    /// The evidence in one sentence, with its numbers.
    pub sentence: String,
}

impl Finding {
    /// The finding's line in the findings table.
    pub fn table_line(&self) -> String {
        let interval = match self.interval {
            Some(i) if i.seeds >= 2 => format!("{} ({} seeds)", i.show(), i.seeds),
            i => show(i.as_ref()),
        };
        format!(
            "| {} | {} | **{}** | {interval} | {} | {} |",
            self.axis,
            self.claim,
            self.verdict.word(),
            self.effect,
            self.sentence
        )
    }
}

/// A seed's points.
pub struct Seed<'a> {
    /// The seed.
    pub seed: u64,
    points: Vec<&'a PointRecord>,
}

impl<'a> Seed<'a> {
    /// The point of `axis` labelled `label`.
    pub fn get(&self, axis: Axis, label: &str) -> Option<&'a PointRecord> {
        self.points
            .iter()
            .copied()
            .find(|p| p.point.axis == axis && p.point.label == label)
    }

    /// The points of `axis`, in the order of their x (then label).
    pub fn axis(&self, axis: Axis) -> Vec<&'a PointRecord> {
        let mut v: Vec<&PointRecord> = self
            .points
            .iter()
            .copied()
            .filter(|p| p.point.axis == axis)
            .collect();
        v.sort_by(|a, b| {
            a.point
                .x
                .total_cmp(&b.point.x)
                .then(a.point.label.cmp(&b.point.label))
        });
        v
    }
}

/// The points of every seed, by seed.
pub fn by_seed(points: &[PointRecord]) -> Vec<Seed<'_>> {
    let mut map: BTreeMap<u64, Vec<&PointRecord>> = BTreeMap::new();
    for p in points {
        map.entry(p.point.config.seed).or_default().push(p);
    }
    map.into_iter()
        .map(|(seed, points)| Seed { seed, points })
        .collect()
}

/// A metric of a point (NaN when absent).
pub(crate) fn metric(p: &PointRecord, name: &str) -> f64 {
    p.result.metrics.get(name).copied().unwrap_or(f64::NAN)
}

/// Per-prompt values of a point (empty when absent).
pub(crate) fn item<'p>(p: &'p PointRecord, name: &str) -> &'p [f64] {
    p.result.items.get(name).map_or(&[], Vec::as_slice)
}

/// Prompt-by-prompt difference `a − b` of two points' per-prompt values (same seed, same
/// prompts); empty when their lengths differ.
pub(crate) fn paired(a: &[f64], b: &[f64]) -> Vec<f64> {
    if a.len() != b.len() {
        return Vec::new();
    }
    a.iter().zip(b).map(|(x, y)| x - y).collect()
}

/// A run's gold-against-KL curve: the SFT policy at KL 0 (its gold on the curve's prompts),
/// then every evaluation of the learning curve.
pub(crate) fn kl_curve(p: &PointRecord) -> Vec<(f64, f64)> {
    let n = p.point.config.judge.curve_prompts;
    let sft = item(p, items::SFT_GOLD);
    let mut out = Vec::new();
    if !sft.is_empty() {
        let head = &sft[..n.min(sft.len())];
        out.push((0.0, head.iter().sum::<f64>() / head.len() as f64));
    }
    for c in &p.result.curve {
        if let (Some(kl), Some(g)) = (c.get(curve::KL), c.get(curve::GOLD))
            && kl.is_finite()
            && g.is_finite()
        {
            out.push((kl.max(0.0), *g));
        }
    }
    out
}

/// A run's gold-against-FLOPs curve (the method's FLOPs so far), from the SFT policy at 0.
pub(crate) fn flops_curve(p: &PointRecord) -> Vec<(f64, f64)> {
    let mut out = kl_curve(p).into_iter().take(1).collect::<Vec<_>>();
    for c in &p.result.curve {
        if let (Some(f), Some(g)) = (c.get(curve::FLOPS), c.get(curve::GOLD))
            && g.is_finite()
        {
            out.push((*f, *g));
        }
    }
    out
}

/// The KL range a curve measured: from its first point past the SFT policy to its last (points
/// with a non-finite KL or gold, which interpolation skips, do not count).
pub(crate) fn measured_kls(c: &[(f64, f64)]) -> Option<(f64, f64)> {
    let kls = c
        .iter()
        .filter(|(k, g)| k.is_finite() && g.is_finite() && *k > 0.0)
        .map(|p| p.0);
    let lo = kls.clone().fold(f64::INFINITY, f64::min);
    let hi = kls.fold(0.0, f64::max);
    (lo <= hi).then_some((lo, hi))
}

/// The KL values two or more curves are compared at: ⅓, ⅔ and all of the way across the range
/// that every curve measured. A curve is a straight line between its SFT point at KL 0 and its
/// first measured KL, so a KL below that is not one where the curve was measured: a β sweep
/// whose smallest KL is 1.8 says nothing about KL 0.3, where another method's sweep may lie.
/// Empty when the ranges do not overlap.
pub(crate) fn matched_kls<C: AsRef<[(f64, f64)]>>(curves: &[C]) -> Vec<f64> {
    let (mut lo, mut hi) = (0.0, f64::INFINITY);
    for c in curves {
        let Some((a, b)) = measured_kls(c.as_ref()) else {
            return Vec::new();
        };
        (lo, hi) = (f64::max(lo, a), f64::min(hi, b));
    }
    if !(hi.is_finite() && lo <= hi) {
        return Vec::new();
    }
    // the last is `hi` itself: `lo + (hi − lo)·3/3` can round past it, outside a curve
    vec![lo + (hi - lo) / 3.0, lo + 2.0 * (hi - lo) / 3.0, hi]
}

/// Mean over `at` of `a(x) − b(x)` on two curves (None when either misses a value).
pub(crate) fn mean_gap(a: &[(f64, f64)], b: &[(f64, f64)], at: &[f64]) -> Option<f64> {
    if at.is_empty() {
        return None;
    }
    let mut sum = 0.0;
    for &x in at {
        sum += interpolate(a, x)? - interpolate(b, x)?;
    }
    Some(sum / at.len() as f64)
}

/// `a − b` at matched KL: [`mean_gap`] at the [`matched_kls`] of the two curves, with those KLs.
pub(crate) fn gap_at_matched_kl(a: &[(f64, f64)], b: &[(f64, f64)]) -> Option<(f64, Vec<f64>)> {
    let at = matched_kls(&[a, b]);
    Some((mean_gap(a, b, &at)?, at))
}

/// Seeds whose two curves measured no KL in common give no effect at matched KL. When that is
/// every seed that measured both, the claim is untested (inconclusive), not unrun; when it is
/// some, the sentence says how many.
fn no_common_kl<'a>(
    finding: &mut Finding,
    seeds: &[Seed<'a>],
    curves: impl Fn(&Seed<'a>) -> Option<[Vec<(f64, f64)>; 2]>,
    what: &str,
) {
    let measured: Vec<[Vec<(f64, f64)>; 2]> = seeds
        .iter()
        .filter_map(curves)
        .filter(|c| c.iter().all(|c| measured_kls(c).is_some()))
        .collect();
    let disjoint = measured
        .iter()
        .filter(|c| matched_kls(*c).is_empty())
        .count();
    if finding.per_seed.is_empty() && disjoint > 0 && disjoint == measured.len() {
        finding.verdict = Verdict::Inconclusive;
        finding.sentence = format!(
            "On no seed do {what} measure a KL in common, so there is no matched KL to compare them at: inconclusive."
        );
    } else if disjoint > 0 {
        finding.sentence.push_str(&format!(
            " On {disjoint} of {} seeds {what} measured no KL in common; those seeds give no effect.",
            measured.len()
        ));
    }
}

/// The finding from per-seed effects. `items` holds, for the seeds where the effect is a mean
/// over prompts, its per-prompt values: their standard error floors the interval over seeds
/// (see [`crate::stats`]), and with one seed the interval is over them.
pub(crate) fn conclude(
    axis: Axis,
    claim: &str,
    effect: &str,
    per_seed: Vec<(u64, f64)>,
    items: Vec<(u64, Vec<f64>)>,
    sentence: impl Fn(Option<&Interval>) -> String,
) -> Finding {
    let per_seed: Vec<(u64, f64)> = per_seed.into_iter().filter(|x| x.1.is_finite()).collect();
    let items_of = |seed: u64| items.iter().find(|x| x.0 == seed).map(|x| x.1.as_slice());
    let draws: Vec<f64> = per_seed.iter().map(|x| x.1).collect();
    // each seed's prompt-sampling variance, when every seed has its prompts' values
    let within: Option<Vec<f64>> = per_seed
        .iter()
        .map(|(seed, _)| {
            let v = items_of(*seed).filter(|v| v.len() >= 2)?;
            let se = mean_se(v).1;
            se.is_finite().then_some(se * se)
        })
        .collect();
    let interval = match per_seed.as_slice() {
        [] => None,
        [(seed, only)] => items_of(*seed)
            .and_then(Interval::over_items)
            .or(Some(Interval {
                mean: *only,
                lo: f64::NAN,
                hi: f64::NAN,
                seeds: 1,
            })),
        _ => match within {
            Some(within) => Interval::over_seeds_floored(&draws, &within),
            None => Interval::over_seeds(&draws),
        },
    };
    let verdict = if per_seed.is_empty() {
        Verdict::NotRun
    } else {
        Verdict::of(interval.as_ref())
    };
    Finding {
        axis,
        claim: claim.into(),
        effect: effect.into(),
        sentence: sentence(interval.as_ref()),
        per_seed,
        interval,
        verdict,
    }
}

/// `+0.123 [+0.045, +0.201]`, or `+0.123 (one seed)`, or `—`.
pub(crate) fn show(i: Option<&Interval>) -> String {
    match i {
        Some(i) if i.seeds >= 2 => i.show(),
        Some(i) if i.lo.is_finite() => {
            format!("{:+.3} (one seed: an interval over prompts only)", i.mean)
        }
        Some(i) => format!("{:+.3} (one seed, no interval)", i.mean),
        None => "—".into(),
    }
}

/// What a verdict means in a sentence.
pub(crate) fn so(i: Option<&Interval>) -> &'static str {
    match Verdict::of(i) {
        _ if i.is_some_and(|i| i.seeds < 2) => "one seed gives no verdict: inconclusive",
        Verdict::Reproduced => "the interval excludes zero in the claim's direction: reproduced",
        Verdict::Contradicted => "the interval excludes zero against the claim: contradicted",
        Verdict::Inconclusive => "the interval includes zero: inconclusive",
        Verdict::NotRun => "not run",
    }
}

/// Every finding, in report order.
pub fn findings(points: &[PointRecord]) -> Vec<Finding> {
    let seeds = by_seed(points);
    let mut out = Vec::new();
    rm_findings(&seeds, &mut out);
    size_findings(&seeds, &mut out);
    samples_findings(&seeds, &mut out);
    method_findings(&seeds, &mut out);
    kl_findings(&seeds, &mut out);
    best_of_n_finding(&seeds, &mut out);
    length_finding(&seeds, &mut out);
    compute_finding(&seeds, &mut out);
    crate::arith::findings(&seeds, &mut out);
    out
}

fn rm_findings(seeds: &[Seed<'_>], out: &mut Vec<Finding>) {
    let per_seed: Vec<(u64, f64)> = seeds
        .iter()
        .filter_map(|s| {
            let pts: Vec<(f64, f64)> = s
                .axis(Axis::RmVolume)
                .iter()
                .map(|p| (p.point.x, metric(p, names::RM_GOLD_ACCURACY)))
                .collect();
            per_doubling(&pts).map(|l| (s.seed, l.slope))
        })
        .collect();
    out.push(conclude(
        Axis::RmVolume,
        "more comparison data makes the RM more accurate",
        "held-out gold-order accuracy per doubling of the pairs",
        per_seed,
        Vec::new(),
        |i| {
            format!(
                "The RM's held-out gold-order accuracy changed by {} per doubling of its comparison pairs; {}.",
                show(i),
                so(i)
            )
        },
    ));
    let mut pairs = Vec::new();
    let per_seed: Vec<(u64, f64)> = seeds
        .iter()
        .filter_map(|s| {
            let many = s.get(Axis::RmDiversity, "1-per-prompt")?;
            let few = s.get(Axis::RmDiversity, "4-per-prompt")?;
            pairs.push((
                s.seed,
                paired(
                    item(many, items::RM_GOLD_CORRECT),
                    item(few, items::RM_GOLD_CORRECT),
                ),
            ));
            Some((
                s.seed,
                metric(many, names::RM_GOLD_ACCURACY) - metric(few, names::RM_GOLD_ACCURACY),
            ))
        })
        .collect();
    out.push(conclude(
        Axis::RmDiversity,
        "at a fixed pair budget, more prompts beat more responses per prompt",
        "gold-order accuracy, 1 pair per prompt − 4 pairs per prompt",
        per_seed,
        pairs,
        |i| {
            format!(
                "With the same number of pairs, one pair on each of four times as many prompts changed the RM's gold-order accuracy by {} against four pairs per prompt; {}.",
                show(i),
                so(i)
            )
        },
    ));
}

/// The gold gain of a point over its own SFT policy at the curve's KL values.
pub(crate) fn gain_curve(p: &PointRecord) -> Vec<(f64, f64)> {
    let c = kl_curve(p);
    // the origin is the SFT policy, at KL 0; without it there is no gain to measure
    let Some(&(0.0, origin)) = c.first() else {
        return Vec::new();
    };
    c.into_iter().map(|(k, g)| (k, g - origin)).collect()
}

/// The first and the last point of a size axis on one seed, when it has two or more.
fn smallest_and_largest<'a>(
    s: &Seed<'a>,
    axis: Axis,
) -> Option<(&'a PointRecord, &'a PointRecord)> {
    let pts = s.axis(axis);
    (pts.len() >= 2).then(|| (pts[0], pts[pts.len() - 1]))
}

fn size_findings(seeds: &[Seed<'_>], out: &mut Vec<Finding>) {
    for (axis, claim, larger_better) in [
        (
            Axis::RmSize,
            "larger reward models give modest policy gains",
            true,
        ),
        (
            Axis::PolicySize,
            "larger policies gain less from RLHF with a fixed RM",
            false,
        ),
    ] {
        // the gain curves of the largest and the smallest size
        let curves =
            |(small, large): (&PointRecord, &PointRecord)| [gain_curve(large), gain_curve(small)];
        let ends = |s: &Seed<'_>| smallest_and_largest(s, axis).map(curves);
        let mut raw: Vec<f64> = Vec::new();
        let per_seed: Vec<(u64, f64)> = seeds
            .iter()
            .filter_map(|s| {
                let (small, large) = smallest_and_largest(s, axis)?;
                let [large_gain, small_gain] = curves((small, large));
                let (gap, _) = gap_at_matched_kl(&large_gain, &small_gain)?;
                raw.push(metric(large, names::GOLD_GAIN) - metric(small, names::GOLD_GAIN));
                Some((s.seed, if larger_better { gap } else { -gap }))
            })
            .collect();
        let raw_mean = mean(&raw);
        let effect = if larger_better {
            "gold gain at matched KL, largest − smallest"
        } else {
            "gold gain at matched KL, smallest − largest"
        };
        let mut finding = conclude(axis, claim, effect, per_seed, Vec::new(), |i| {
            format!(
                "At matched KL the {} {} changed the gold gain by {} (raw end points, which differ in KL: {raw_mean:+.3}, largest − smallest); {}.",
                if larger_better { "largest" } else { "smallest" },
                if axis == Axis::RmSize {
                    "reward model, against the smallest,"
                } else {
                    "policy, against the largest, with one RM trained on every size's samples,"
                },
                show(i),
                so(i)
            )
        });
        no_common_kl(
            &mut finding,
            seeds,
            ends,
            "the largest and the smallest size",
        );
        out.push(finding);
    }
}

fn samples_findings(seeds: &[Seed<'_>], out: &mut Vec<Finding>) {
    let gold = |p: &PointRecord| metric(p, names::GOLD);
    let mut prompts = Vec::new();
    let rise: Vec<(u64, f64)> = seeds
        .iter()
        .filter_map(|s| {
            let pts = s.axis(Axis::SamplesPerPrompt);
            if pts.len() < 2 {
                return None;
            }
            let (first, last) = (pts[0], pts[pts.len() - 1]);
            prompts.push((
                s.seed,
                paired(item(last, items::GOLD), item(first, items::GOLD)),
            ));
            Some((s.seed, gold(last) - gold(first)))
        })
        .collect();
    out.push(conclude(
        Axis::SamplesPerPrompt,
        "more samples per prompt raise the gold score",
        "gold, most samples per prompt − one",
        rise,
        prompts,
        |i| {
            format!(
                "At equal episodes per iteration, the most samples per prompt changed the gold score by {} against one; {}.",
                show(i),
                so(i)
            )
        },
    ));
    let plateau: Vec<(u64, f64)> = seeds
        .iter()
        .filter_map(|s| {
            let g: Vec<f64> = s
                .axis(Axis::SamplesPerPrompt)
                .iter()
                .map(|p| gold(p))
                .collect();
            (g.len() >= 3).then(|| (s.seed, (g[1] - g[0]) - (g[g.len() - 1] - g[g.len() - 2])))
        })
        .collect();
    out.push(conclude(
        Axis::SamplesPerPrompt,
        "the gain from more samples per prompt plateaus quickly",
        "first doubling's gold change − last doubling's",
        plateau,
        Vec::new(),
        |i| {
            format!(
                "The first doubling of samples per prompt moved gold by more than the last by {}; {}.",
                show(i),
                so(i)
            )
        },
    ));
}

/// The method and β of a `method` axis label (`ppo-0.05`).
pub(crate) fn method_of(label: &str) -> (&str, f64) {
    match label.rsplit_once('-') {
        Some((m, b)) => (m, b.parse().unwrap_or(f64::NAN)),
        None => (label, f64::NAN),
    }
}

/// A method's frontier on one seed: the SFT policy at KL 0 and each β's end point (KL, gold).
pub(crate) fn frontier(s: &Seed<'_>, method: &str) -> Vec<(f64, f64)> {
    let pts: Vec<&PointRecord> = s
        .axis(Axis::Method)
        .into_iter()
        .filter(|p| method_of(&p.point.label).0 == method)
        .collect();
    let mut out: Vec<(f64, f64)> = pts
        .first()
        .map(|p| (0.0, metric(p, names::GOLD_SFT)))
        .into_iter()
        .collect();
    out.extend(
        pts.iter()
            .map(|p| (metric(p, names::KL), metric(p, names::GOLD))),
    );
    out
}

/// A method's gold gain against KL on one seed, for comparisons at matched KL: the SFT policy at
/// (0, 0), then every measurement of each β's run. An on-policy run is measured along its
/// learning curve (gain over the SFT policy on the curve's prompts) and at its end; an offline
/// run, which has no curve, at its end only. So a β sweep whose end points lie far from the SFT
/// policy still has measured points at small KL, as in Gao et al.'s curves along training.
pub(crate) fn method_curve(s: &Seed<'_>, method: &str) -> Vec<(f64, f64)> {
    let mut out = vec![(0.0, 0.0)];
    for p in s
        .axis(Axis::Method)
        .into_iter()
        .filter(|p| method_of(&p.point.label).0 == method)
    {
        out.extend(gain_curve(p).into_iter().skip(1));
        out.push((metric(p, names::KL), metric(p, names::GOLD_GAIN)));
    }
    out
}

/// The methods on the `method` axis, in axis order.
pub(crate) fn methods(seeds: &[Seed<'_>]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in seeds {
        for p in s.axis(Axis::Method) {
            let m = method_of(&p.point.label).0.to_string();
            if !out.contains(&m) {
                out.push(m);
            }
        }
    }
    out
}

fn method_findings(seeds: &[Seed<'_>], out: &mut Vec<Finding>) {
    for m in methods(seeds).into_iter().filter(|m| m != "ppo") {
        let curves = |s: &Seed<'_>| Some([method_curve(s, &m), method_curve(s, "ppo")]);
        let per_seed: Vec<(u64, f64)> = seeds
            .iter()
            .filter_map(|s| {
                let [a, b] = curves(s)?;
                gap_at_matched_kl(&a, &b).map(|(g, _)| (s.seed, g))
            })
            .collect();
        let mut finding = conclude(
            Axis::Method,
            &format!("(comparison) {m} reaches a higher gold score than PPO at matched KL"),
            &format!("gold gain at matched KL over each method's β sweep, {m} − ppo"),
            per_seed,
            Vec::new(),
            |i| {
                format!(
                    "Over the KL range both β sweeps measured (the on-policy runs along training, the offline runs at their ends), {m} differed from PPO by {} in gold gain at matched KL; {}.",
                    show(i),
                    so(i)
                )
            },
        );
        no_common_kl(
            &mut finding,
            seeds,
            curves,
            &format!("the β sweeps of {m} and PPO"),
        );
        out.push(finding);
    }
}

/// The `kl_budget` points of a seed as (β, point), by β.
fn kl_points<'a>(s: &Seed<'a>) -> Vec<(f64, &'a PointRecord)> {
    s.axis(Axis::KlBudget)
        .into_iter()
        .map(|p| (p.point.x, p))
        .collect()
}

/// The `kl_budget` points at β = 0 and at the study's base β (the β of every other axis's PPO
/// run).
fn kl_pair<'a>(s: &Seed<'a>) -> Option<(&'a PointRecord, &'a PointRecord)> {
    let pts = kl_points(s);
    let zero = pts.iter().find(|(b, _)| *b == 0.0)?.1;
    // the base β is the one of the axes' plain PPO runs (length control's RM point, or an RM
    // size point); without them there is no base to compare with
    let with_base = s
        .get(Axis::LengthControl, "rm")
        .or_else(|| s.axis(Axis::RmSize).first().copied())?;
    let beta = with_base.point.config.method.ppo.kl.value();
    let base = pts.iter().find(|(b, _)| *b == beta).map(|x| x.1)?;
    Some((zero, base))
}

fn kl_findings(seeds: &[Seed<'_>], out: &mut Vec<Finding>) {
    let pair = kl_pair;
    let mut prompts = Vec::new();
    let proxy: Vec<(u64, f64)> = seeds
        .iter()
        .filter_map(|s| {
            let (zero, base) = pair(s)?;
            prompts.push((
                s.seed,
                paired(item(zero, items::PROXY), item(base, items::PROXY)),
            ));
            Some((
                s.seed,
                metric(zero, names::PROXY) - metric(base, names::PROXY),
            ))
        })
        .collect();
    out.push(conclude(
        Axis::KlBudget,
        "over-optimisation, part 1: without a KL penalty the proxy reward keeps rising",
        "RM score, β = 0 − the base β",
        proxy,
        prompts,
        |i| {
            format!(
                "Dropping the KL penalty (β = 0, the largest KL) changed the RM's score by {} against the base β; {}.",
                show(i),
                so(i)
            )
        },
    ));
    let mut prompts = Vec::new();
    let gold: Vec<(u64, f64)> = seeds
        .iter()
        .filter_map(|s| {
            let (zero, base) = pair(s)?;
            prompts.push((
                s.seed,
                paired(item(base, items::GOLD), item(zero, items::GOLD)),
            ));
            Some((
                s.seed,
                metric(base, names::GOLD) - metric(zero, names::GOLD),
            ))
        })
        .collect();
    out.push(conclude(
        Axis::KlBudget,
        "over-optimisation, part 2: past a KL budget the gold score falls",
        "gold, the base β − β = 0",
        gold,
        prompts,
        |i| {
            format!(
                "The base β's gold score exceeded β = 0's by {}; {}.",
                show(i),
                so(i)
            )
        },
    ));
}

fn best_of_n_finding(seeds: &[Seed<'_>], out: &mut Vec<Finding>) {
    let mut prompts = Vec::new();
    let per_seed: Vec<(u64, f64)> = seeds
        .iter()
        .filter_map(|s| {
            let pts = s.axis(Axis::BestOfN);
            if pts.len() < 2 {
                return None;
            }
            let (first, last) = (pts[0], pts[pts.len() - 1]);
            prompts.push((
                s.seed,
                paired(item(last, items::GOLD), item(first, items::GOLD)),
            ));
            Some((
                s.seed,
                metric(last, names::GOLD) - metric(first, names::GOLD),
            ))
        })
        .collect();
    out.push(conclude(
        Axis::BestOfN,
        "best-of-n reranking by the RM raises the gold score",
        "gold, largest n − n = 1",
        per_seed,
        prompts,
        |i| {
            format!(
                "Reranking the SFT policy's samples by the RM changed the gold score by {} from n = 1 to the largest n; {}.",
                show(i),
                so(i)
            )
        },
    ));
}

fn length_finding(seeds: &[Seed<'_>], out: &mut Vec<Finding>) {
    let (mut rm_gains, mut len_gains) = (Vec::new(), Vec::new());
    let mut directions = (0usize, 0usize);
    let mut prompts = Vec::new();
    // a seed counts only when the control moved length the way the RM moved it: otherwise its
    // gain is not "the RM's length part" and says nothing about the claim
    let per_seed: Vec<(u64, f64)> = seeds
        .iter()
        .filter_map(|s| {
            let rm = s.get(Axis::LengthControl, "rm")?;
            let len = s.get(Axis::LengthControl, "length-only")?;
            let (g_rm, g_len) = (metric(rm, names::GOLD_GAIN), metric(len, names::GOLD_GAIN));
            let moved = |p: &PointRecord| metric(p, names::LENGTH) - metric(p, names::LENGTH_SFT);
            let (by_rm, by_len) = (moved(rm), moved(len));
            directions.1 += 1;
            let same_way = by_rm != 0.0 && by_len != 0.0 && by_rm.signum() == by_len.signum();
            if !same_way {
                return None;
            }
            directions.0 += 1;
            rm_gains.push(g_rm);
            len_gains.push(g_len);
            prompts.push((
                s.seed,
                paired(item(len, items::GOLD), item(len, items::SFT_GOLD)),
            ));
            Some((s.seed, g_len))
        })
        .collect();
    // the share as a ratio of means over the seeds kept (a ratio per seed blows up when the RM's
    // own gain is near zero)
    let share = (mean(&rm_gains).abs() > 1e-9).then(|| mean(&len_gains) / mean(&rm_gains));
    let mut finding = conclude(
        Axis::LengthControl,
        "part of RLHF's gain is length alone (A Long Way to Go)",
        "gold gain of PPO against the RM's length-only part, on seeds where it moved length the RM's way",
        per_seed,
        prompts,
        |i| {
            format!(
                "The length-only control moved response length the RM's way on {} of {} seeds; on those, PPO against it changed gold by {} over SFT, {} of the RM's own gain; {}.",
                directions.0,
                directions.1,
                show(i),
                share.map_or_else(|| "—".into(), |x| format!("{:.0}%", 100.0 * x)),
                if i.is_none() && directions.1 > 0 {
                    "no seed left to judge: inconclusive"
                } else {
                    so(i)
                }
            )
        },
    );
    // run, but on no seed the control a test of the claim
    if finding.interval.is_none() && directions.1 > 0 {
        finding.verdict = Verdict::Inconclusive;
    }
    out.push(finding);
}

/// Gold gain per doubling of the method's FLOPs along a run's learning curve (every evaluation
/// of the run, not the SFT point at zero FLOPs).
pub(crate) fn compute_slope(p: &PointRecord) -> Option<f64> {
    let c: Vec<(f64, f64)> = flops_curve(p).into_iter().filter(|x| x.0 > 0.0).collect();
    per_doubling(&c).map(|l| l.slope)
}

fn compute_finding(seeds: &[Seed<'_>], out: &mut Vec<Finding>) {
    // pretraining's analogue: the SFT models' gold per doubling of their training FLOPs, across
    // the policy sizes; RLHF's: the base PPO run's gold per doubling of its FLOPs
    let slopes: Vec<(u64, f64, f64)> = seeds
        .iter()
        .filter_map(|s| {
            let sizes: Vec<(f64, f64)> = s
                .axis(Axis::PolicySize)
                .iter()
                .map(|p| (metric(p, names::FLOPS_SFT), metric(p, names::GOLD_SFT)))
                .collect();
            let sft = per_doubling(&sizes)?.slope;
            let rl = compute_slope(s.get(Axis::LengthControl, "rm")?)?;
            Some((s.seed, sft, rl))
        })
        .collect();
    // the claim compares two gains: where larger SFT models did not score higher, there is no
    // pretraining gain to compare RLHF's with, and the difference tests nothing
    let pretraining = Interval::over_seeds(&slopes.iter().map(|x| x.1).collect::<Vec<_>>());
    let no_pretraining_gain = pretraining
        .as_ref()
        .is_some_and(|i| i.lo.is_nan() || i.lo <= 0.0);
    let per_seed = slopes
        .iter()
        .map(|&(seed, sft, rl)| (seed, sft - rl))
        .collect();
    let mut finding = conclude(
        Axis::Method,
        "RLHF scales less efficiently than pretraining",
        "gold per doubling of compute: SFT across sizes − PPO along training",
        per_seed,
        Vec::new(),
        |i| {
            let outcome = if no_pretraining_gain {
                format!(
                    "but SFT gold per doubling across sizes was {}, not above zero: larger models did not score higher, so there is no pretraining gain to compare with, and the claim is not tested: inconclusive",
                    show(pretraining.as_ref())
                )
            } else {
                so(i).to_string()
            };
            format!(
                "A doubling of SFT compute (across model sizes) bought more gold than a doubling of PPO's compute (along its run) by {}; {outcome}.",
                show(i)
            )
        },
    );
    if no_pretraining_gain {
        finding.verdict = Verdict::Inconclusive;
    }
    out.push(finding);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matched_kls_lie_where_every_curve_was_measured() {
        let a = vec![(0.0, 0.0), (1.0, 1.0), (3.0, 2.0)];
        let b = vec![(0.0, 0.0), (1.5, 0.5), (2.4, 1.1)];
        // measured: a on [1, 3], b on [1.5, 2.4]; both on [1.5, 2.4]
        let at = matched_kls(&[a.clone(), b.clone()]);
        let want = [1.8, 2.1, 2.4];
        assert!(
            at.iter().zip(want).all(|(x, w)| (x - w).abs() < 1e-12),
            "{at:?}"
        );
        // a at 1.8, 2.1, 2.4 = 1.4, 1.55, 1.7; b = 0.7, 0.9, 1.1
        let gap = mean_gap(&a, &b, &at).unwrap();
        assert!((gap - (1.4 + 1.55 + 1.7 - 0.7 - 0.9 - 1.1) / 3.0).abs() < 1e-12);
        // a curve with no point past the SFT policy has no measured range
        assert_eq!(matched_kls(&[a, vec![(0.0, 0.0)]]), Vec::<f64>::new());
        // the last KL is the range's end exactly: lo + (hi − lo)·3/3 rounds past 3.15 here
        let (lo, hi) = (std::hint::black_box(0.95), std::hint::black_box(3.15));
        assert!(lo + (hi - lo) * 3.0 / 3.0 > hi);
        let c = vec![(0.0, 0.0), (lo, 1.0), (hi, 2.0)];
        assert_eq!(matched_kls(std::slice::from_ref(&c)).last(), Some(&3.15));
        assert!(mean_gap(&c, &c, &matched_kls(&[c.clone(), c.clone()])).is_some());
        // a point without a gold score is not a measurement
        let nan = vec![(0.0, 0.0), (1.0, 1.0), (2.0, 1.5), (5.0, f64::NAN)];
        assert_eq!(measured_kls(&nan), Some((1.0, 2.0)));
    }

    #[test]
    fn sweeps_whose_kls_do_not_overlap_are_not_compared() {
        // an offline sweep near the SFT policy against an on-policy one far from it: a straight
        // line from the SFT point would put the second below the first at KL 0.2 without a
        // measurement there
        let offline = vec![(0.0, 0.0), (0.1, 0.15), (0.25, 0.2)];
        let on_policy = vec![(0.0, 0.0), (1.8, 0.25), (2.5, 0.3)];
        assert_eq!(
            matched_kls(&[offline.clone(), on_policy.clone()]),
            Vec::<f64>::new()
        );
        let wider = vec![(0.0, 0.0), (0.1, 0.15), (2.0, 0.3)];
        assert_eq!(matched_kls(&[wider, on_policy]).len(), 3);
    }

    #[test]
    fn method_labels_split_at_the_last_dash() {
        assert_eq!(method_of("reinforce_pp-0.05"), ("reinforce_pp", 0.05));
        assert_eq!(method_of("dpo-1"), ("dpo", 1.0));
    }
}
