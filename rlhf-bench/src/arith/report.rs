//! What the report shows of `arith-steps`: the metrics of the `supervision` and
//! `supervision_rl` axis tables, and each axis's extra text — the baselines, in-domain against
//! out-of-distribution accuracy per volume, and pass@1 before and after RL.

use std::fmt::Write as _;

use super::findings::{KINDS, of_kind};
use crate::axis::Axis;
use crate::findings::{Seed, metric};
use crate::fits::per_doubling;
use crate::markdown::show_level;
use crate::metrics::{arith as am, names};
use crate::study::PointRecord;

/// What the `supervision` table shows: the verifier's pick and its weighted vote, in-domain and
/// out of distribution, the baselines on the same candidates (the untrained verifier's pick
/// among them), the verifier's held-out accuracies and its cost.
pub const TABLE: &[&str] = &[
    am::PICK,
    am::PICK_OOD,
    am::WEIGHTED_VOTE,
    am::WEIGHTED_VOTE_OOD,
    am::MAJORITY,
    am::LIKELIHOOD,
    am::RANDOM,
    am::FIRST,
    am::ORACLE,
    am::PAIR_ACCURACY,
    am::LIKELIHOOD_PAIR_ACCURACY,
    names::RM_ACCURACY,
    am::BALANCED_ACCURACY,
    names::FLOPS_RM,
];

/// What the `supervision_rl` table shows: pass@1 after and before RL, in-domain and out of
/// distribution, the verifier's score of the samples, KL and cost.
pub const RL_TABLE: &[&str] = &[
    am::PASS1_AFTER,
    am::PASS1_BEFORE,
    am::PASS1_AFTER_OOD,
    am::PASS1_BEFORE_OOD,
    am::VERIFIER_AFTER,
    am::VERIFIER_BEFORE,
    names::KL,
    names::FLOPS_METHOD,
];

/// The `supervision` and `supervision_rl` axes' extra text.
pub(crate) fn report_section(md: &mut String, seeds: &[Seed<'_>], axis: Axis) {
    match axis {
        Axis::Supervision => supervision(md, seeds),
        Axis::SupervisionRl => supervision_rl(md, seeds),
        _ => {}
    }
}

/// The `supervision` axis's text: the baselines, the pick accuracy per volume of labelled
/// solutions, and its trend per doubling of them.
fn supervision(md: &mut String, seeds: &[Seed<'_>]) {
    // the baselines depend on the seed's candidates only: any point of the seed has them
    let first: Vec<_> = seeds
        .iter()
        .filter_map(|s| s.axis(Axis::Supervision).first().copied())
        .collect();
    if first.is_empty() {
        return;
    }
    baselines(md, &first);
    pick_by_volume(md, seeds);
    trends(md, seeds);
}

/// The baselines on the SFT policy's candidates, in-domain and out of distribution, from one
/// point of each seed.
fn baselines(md: &mut String, first: &[&PointRecord]) {
    let level = |name: &str| show_level(&first.iter().map(|p| metric(p, name)).collect::<Vec<_>>());
    let _ = writeln!(
        md,
        "\nThe baselines on the SFT policy's candidates ({} per held-out prompt; the same for every verifier of a seed), share of prompts whose pick has the right final answer:\n\n| pick | in-domain | out of distribution (longer chains) |\n| --- | --- | --- |",
        first[0].point.config.method.best_of_n
    );
    for (what, inside, outside) in [
        (
            "best-of-1 (the SFT policy's pass@1)",
            am::FIRST,
            am::FIRST_OOD,
        ),
        ("random pick", am::RANDOM, am::RANDOM_OOD),
        (
            "majority vote (self-consistency)",
            am::MAJORITY,
            am::MAJORITY_OOD,
        ),
        (
            "the untrained verifier (the SFT model's own likelihood)",
            am::LIKELIHOOD,
            am::LIKELIHOOD_OOD,
        ),
        ("oracle (any candidate right)", am::ORACLE, am::ORACLE_OOD),
    ] {
        let _ = writeln!(md, "| {what} | {} | {} |", level(inside), level(outside));
    }
}

/// Each verifier's pick accuracy per volume of labelled solutions, in-domain and out of
/// distribution.
fn pick_by_volume(md: &mut String, seeds: &[Seed<'_>]) {
    let _ = writeln!(
        md,
        "\nEach verifier's pick accuracy per volume of labelled solutions, in-domain and out of distribution:\n\n| solutions | outcome, in-domain | process, in-domain | outcome, OOD | process, OOD |\n| --- | --- | --- | --- | --- |"
    );
    let mut volumes: Vec<f64> = seeds
        .iter()
        .flat_map(|s| s.axis(Axis::Supervision).into_iter().map(|p| p.point.x))
        .collect();
    volumes.sort_by(f64::total_cmp);
    volumes.dedup();
    for v in volumes {
        let at = |kind: &str, name: &str| {
            let vals: Vec<f64> = seeds
                .iter()
                .filter_map(|s| of_kind(s, kind).into_iter().find(|p| p.point.x == v))
                .map(|p| metric(p, name))
                .collect();
            if vals.is_empty() {
                "–".to_string()
            } else {
                show_level(&vals)
            }
        };
        let _ = writeln!(
            md,
            "| {v} | {} | {} | {} | {} |",
            at("outcome", am::PICK),
            at("process", am::PICK),
            at("outcome", am::PICK_OOD),
            at("process", am::PICK_OOD)
        );
    }
    md.push('\n');
}

/// Per kind of verifier, in-domain and out of distribution: the change of pick accuracy per
/// doubling of the labelled solutions.
fn trends(md: &mut String, seeds: &[Seed<'_>]) {
    for kind in KINDS {
        for (name, place) in [
            (am::PICK, "in-domain"),
            (am::PICK_OOD, "out of distribution"),
        ] {
            let slopes: Vec<f64> = seeds
                .iter()
                .filter_map(|s| {
                    let pts: Vec<(f64, f64)> = of_kind(s, kind)
                        .iter()
                        .map(|p| (p.point.x, metric(p, name)))
                        .collect();
                    per_doubling(&pts).map(|l| l.slope)
                })
                .collect();
            if !slopes.is_empty() {
                let _ = writeln!(
                    md,
                    "Trend, {kind} verifier, {place}: pick accuracy changes by {} per doubling of the labelled solutions (least squares on log2, per seed).\n",
                    show_level(&slopes)
                );
            }
        }
    }
}

fn supervision_rl(md: &mut String, seeds: &[Seed<'_>]) {
    let _ = writeln!(
        md,
        "\npass@1 (the gold final answer) of the SFT policy and of the policy after RL against each verifier, on the held-out prompts of the candidates; the gain is paired within seeds:\n\n| verifier | in-domain before | after | gain | OOD before | after | gain |\n| --- | --- | --- | --- | --- | --- | --- |"
    );
    for kind in KINDS {
        let pts: Vec<_> = seeds
            .iter()
            .filter_map(|s| s.get(Axis::SupervisionRl, kind))
            .collect();
        if pts.is_empty() {
            continue;
        }
        let v = |name: &str| pts.iter().map(|p| metric(p, name)).collect::<Vec<f64>>();
        let gain = |a: &str, b: &str| {
            let (a, b) = (v(a), v(b));
            show_level(&a.iter().zip(&b).map(|(x, y)| x - y).collect::<Vec<_>>())
        };
        let _ = writeln!(
            md,
            "| {kind} | {} | {} | {} | {} | {} | {} |",
            show_level(&v(am::PASS1_BEFORE)),
            show_level(&v(am::PASS1_AFTER)),
            gain(am::PASS1_AFTER, am::PASS1_BEFORE),
            show_level(&v(am::PASS1_BEFORE_OOD)),
            show_level(&v(am::PASS1_AFTER_OOD)),
            gain(am::PASS1_AFTER_OOD, am::PASS1_BEFORE_OOD)
        );
    }
}
