//! The findings of `arith-steps`, each an effect per seed signed so that positive goes the
//! claim's way (see [`crate::findings`]): process against outcome supervision in-domain (level
//! and slope), out of distribution, each verifier's pick and its weighted vote against majority
//! vote, its pick against its untrained self, and RL against each verifier.

use crate::axis::Axis;
use crate::findings::{Finding, Seed, conclude, item, metric, paired, show, so};
use crate::fits::per_doubling;
use crate::metrics::arith as am;
use crate::stats::mean;
use crate::study::PointRecord;

/// The verifier kinds, as the labels of the `supervision` (`outcome-1000`) and
/// `supervision_rl` (`outcome`) points start.
pub(crate) const KINDS: [&str; 2] = ["outcome", "process"];

/// The `supervision` points of `kind` on a seed, by volume.
pub(crate) fn of_kind<'a>(s: &Seed<'a>, kind: &str) -> Vec<&'a PointRecord> {
    s.axis(Axis::Supervision)
        .into_iter()
        .filter(|p| p.point.label.split('-').next() == Some(kind))
        .collect()
}

/// `(process, outcome)` points of a seed at every volume both kinds have.
fn matched<'a>(s: &Seed<'a>) -> Vec<(&'a PointRecord, &'a PointRecord)> {
    let outcome = of_kind(s, "outcome");
    of_kind(s, "process")
        .into_iter()
        .filter_map(|p| {
            let o = outcome.iter().find(|o| o.point.x == p.point.x)?;
            Some((p, *o))
        })
        .collect()
}

/// Per prompt, the mean over `pairs` of `a − b`'s items `name` (empty when they disagree in
/// length).
fn mean_paired(pairs: &[(&PointRecord, &PointRecord)], name: &str) -> Vec<f64> {
    let diffs: Vec<Vec<f64>> = pairs
        .iter()
        .map(|(a, b)| paired(item(a, name), item(b, name)))
        .collect();
    let n = diffs.first().map_or(0, Vec::len);
    if n == 0 || diffs.iter().any(|d| d.len() != n) {
        return Vec::new();
    }
    (0..n)
        .map(|i| diffs.iter().map(|d| d[i]).sum::<f64>() / diffs.len() as f64)
        .collect()
}

/// Mean over `pairs` of the metric `name`, `a − b`.
fn mean_gap(pairs: &[(&PointRecord, &PointRecord)], name: &str) -> f64 {
    mean(pairs.iter().map(|(a, b)| metric(a, name) - metric(b, name)))
}

/// Every `arith-steps` finding, in report order.
pub(crate) fn findings(seeds: &[Seed<'_>], out: &mut Vec<Finding>) {
    process_in_domain(seeds, out);
    process_scaling(seeds, out);
    process_out_of_distribution(seeds, out);
    against_baselines(seeds, out);
    rl(seeds, out);
}

fn process_in_domain(seeds: &[Seed<'_>], out: &mut Vec<Finding>) {
    let mut prompts = Vec::new();
    let mut levels = (Vec::new(), Vec::new());
    let per_seed: Vec<(u64, f64)> = seeds
        .iter()
        .filter_map(|s| {
            let m = matched(s);
            if m.is_empty() {
                return None;
            }
            levels.0.push(mean(m.iter().map(|x| metric(x.0, am::PICK))));
            levels.1.push(mean(m.iter().map(|x| metric(x.1, am::PICK))));
            prompts.push((s.seed, mean_paired(&m, am::PICK)));
            Some((s.seed, mean_gap(&m, am::PICK)))
        })
        .collect();
    let (p, o) = (mean(&levels.0), mean(&levels.1));
    out.push(conclude(
        Axis::Supervision,
        "process supervision beats outcome supervision in-domain",
        "best-of-n pick accuracy in-domain, process − outcome, mean over volumes",
        per_seed,
        prompts,
        |i| {
            format!(
                "Averaged over the data volumes, the process verifier's best-of-n pick was right on {p:.3} of the in-domain prompts and the outcome verifier's on {o:.3}: a difference of {}; {}.",
                show(i),
                so(i)
            )
        },
    ));
}

/// The slope of pick accuracy per doubling of the labelled solutions, for one kind on a seed.
fn slope(s: &Seed<'_>, kind: &str, name: &str) -> Option<f64> {
    let pts: Vec<(f64, f64)> = of_kind(s, kind)
        .iter()
        .map(|p| (p.point.x, metric(p, name)))
        .collect();
    per_doubling(&pts).map(|l| l.slope)
}

fn process_scaling(seeds: &[Seed<'_>], out: &mut Vec<Finding>) {
    let mut slopes = (Vec::new(), Vec::new());
    let per_seed: Vec<(u64, f64)> = seeds
        .iter()
        .filter_map(|s| {
            let (p, o) = (
                slope(s, "process", am::PICK)?,
                slope(s, "outcome", am::PICK)?,
            );
            slopes.0.push(p);
            slopes.1.push(o);
            Some((s.seed, p - o))
        })
        .collect();
    let (p, o) = (mean(&slopes.0), mean(&slopes.1));
    out.push(conclude(
        Axis::Supervision,
        "process supervision scales better than outcome supervision in-domain",
        "in-domain pick accuracy per doubling of the labelled solutions, process − outcome",
        per_seed,
        Vec::new(),
        |i| {
            format!(
                "Per doubling of the labelled solutions, the in-domain pick accuracy changed by {p:+.3} with process labels and by {o:+.3} with outcome labels: a difference of {}; {}.",
                show(i),
                so(i)
            )
        },
    ));
}

fn process_out_of_distribution(seeds: &[Seed<'_>], out: &mut Vec<Finding>) {
    let mut prompts = Vec::new();
    let mut gaps = (Vec::new(), Vec::new());
    let per_seed: Vec<(u64, f64)> = seeds
        .iter()
        .filter_map(|s| {
            let m = matched(s);
            if m.is_empty() {
                return None;
            }
            let (inside, outside) = (mean_gap(&m, am::PICK), mean_gap(&m, am::PICK_OOD));
            gaps.0.push(inside);
            gaps.1.push(outside);
            // in-domain and OOD prompts are independent draws of one count: the difference of
            // their per-prompt gaps, index by index, has the variance of the difference of means
            prompts.push((
                s.seed,
                paired(&mean_paired(&m, am::PICK), &mean_paired(&m, am::PICK_OOD)),
            ));
            Some((s.seed, inside - outside))
        })
        .collect();
    let (inside, outside) = (mean(&gaps.0), mean(&gaps.1));
    out.push(conclude(
        Axis::Supervision,
        "process supervision's edge over outcome supervision shrinks out of distribution (longer chains): it generalises less well",
        "pick accuracy, process − outcome: in-domain − out of distribution, mean over volumes",
        per_seed,
        prompts,
        |i| {
            format!(
                "The process verifier's pick accuracy minus the outcome verifier's was {inside:+.3} in-domain and {outside:+.3} on longer chains, so process supervision's edge shrank out of distribution by {}; {}.",
                show(i),
                so(i)
            )
        },
    ));
}

/// Each verifier's pick and weighted vote against majority vote, and its pick against its
/// untrained self (what the training added to the SFT model's own likelihood).
fn against_baselines(seeds: &[Seed<'_>], out: &mut Vec<Finding>) {
    for (pick_name, how) in [
        (am::PICK, "best-of-n pick"),
        (am::WEIGHTED_VOTE, "weighted vote"),
    ] {
        for kind in KINDS {
            out.push(one_against(seeds, kind, (pick_name, how), MAJORITY));
        }
    }
    for kind in KINDS {
        out.push(one_against(
            seeds,
            kind,
            (am::PICK, "best-of-n pick"),
            UNTRAINED,
        ));
    }
}

/// A baseline pick: its metric, its name in a claim, and in the effect's description.
struct Baseline {
    metric: &'static str,
    claim: &'static str,
    effect: &'static str,
}

const MAJORITY: Baseline = Baseline {
    metric: am::MAJORITY,
    claim: "majority vote",
    effect: "majority vote's",
};

const UNTRAINED: Baseline = Baseline {
    metric: am::LIKELIHOOD,
    claim: "the untrained verifier's (the SFT model's own likelihood)",
    effect: "the untrained verifier's",
};

/// The `kind` verifier's pick (`pick_name`, read "the verifier's `how`") against a baseline
/// pick over the same candidates, at the largest volume, in-domain.
fn one_against(
    seeds: &[Seed<'_>],
    kind: &str,
    (pick_name, how): (&str, &str),
    baseline: Baseline,
) -> Finding {
    let mut prompts = Vec::new();
    let mut levels = (Vec::new(), Vec::new());
    let per_seed: Vec<(u64, f64)> = seeds
        .iter()
        .filter_map(|s| {
            let largest = *of_kind(s, kind).last()?;
            let (pick, base) = (metric(largest, pick_name), metric(largest, baseline.metric));
            if !pick.is_finite() || !base.is_finite() {
                return None; // points from before the pick was measured
            }
            levels.0.push(pick);
            levels.1.push(base);
            prompts.push((
                s.seed,
                paired(item(largest, pick_name), item(largest, baseline.metric)),
            ));
            Some((s.seed, pick - base))
        })
        .collect();
    let (pick, base) = (mean(&levels.0), mean(&levels.1));
    conclude(
        Axis::Supervision,
        &format!(
            "the {kind} verifier's {how} beats {} in-domain",
            baseline.claim
        ),
        &format!(
            "{how} accuracy at the largest volume − {} pick, in-domain",
            baseline.effect
        ),
        per_seed,
        prompts,
        |i| {
            if levels.0.is_empty() {
                return format!(
                    "The points hold no {how} of the {kind} verifier and {}: not run.",
                    baseline.claim
                );
            }
            format!(
                "At the largest volume the {kind} verifier's {how} was right on {pick:.3} of the in-domain prompts, {} over the same candidates on {base:.3}: a difference of {}; {}.",
                baseline.claim,
                show(i),
                so(i)
            )
        },
    )
}

fn rl(seeds: &[Seed<'_>], out: &mut Vec<Finding>) {
    for kind in KINDS {
        let mut prompts = Vec::new();
        let mut levels = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let per_seed: Vec<(u64, f64)> = seeds
            .iter()
            .filter_map(|s| {
                let p = s.get(Axis::SupervisionRl, kind)?;
                let (before, after) = (metric(p, am::PASS1_BEFORE), metric(p, am::PASS1_AFTER));
                levels.0.push(before);
                levels.1.push(after);
                levels.2.push(metric(p, am::PASS1_BEFORE_OOD));
                levels.3.push(metric(p, am::PASS1_AFTER_OOD));
                prompts.push((
                    s.seed,
                    paired(item(p, am::PASS1_AFTER), item(p, am::PASS1_BEFORE)),
                ));
                Some((s.seed, after - before))
            })
            .collect();
        let (before, after) = (mean(&levels.0), mean(&levels.1));
        let (ood_before, ood_after) = (mean(&levels.2), mean(&levels.3));
        out.push(conclude(
            Axis::SupervisionRl,
            &format!("RL against the {kind} verifier raises pass@1"),
            "in-domain pass@1 (gold final answer), after RL − the SFT policy's",
            per_seed,
            prompts,
            |i| {
                format!(
                    "RL against the {kind} verifier moved in-domain pass@1 from {before:.3} to {after:.3}, a change of {}, and pass@1 on longer chains from {ood_before:.3} to {ood_after:.3}; {}.",
                    show(i),
                    so(i)
                )
            },
        ));
    }
}
