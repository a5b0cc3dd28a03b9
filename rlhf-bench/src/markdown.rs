//! `report.md`: the findings table with intervals and verdicts, the calibration table, then per
//! axis its table, plot and the comparisons or fits it supports. Every number is computed here
//! from the stored points.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::axis::Axis;
use crate::compare::{Comparison, methods_against_ppo, sizes_against_smallest};
use crate::config::RewardSource;
use crate::findings::{Seed, by_seed, compute_slope, findings, kl_curve, metric};
use crate::fits::{GAO_MIN_POINTS, gao_fit, peak};
use crate::metrics::names;
use crate::stats::Interval;
use crate::study::PointRecord;
use crate::tables::{Row, axis_metrics, rows};

/// The header of the findings table.
pub const FINDINGS_HEADER: &str = "| axis | claim | verdict | effect [95% interval] | effect measured (positive: the claim's way) | what the evidence says |\n| --- | --- | --- | --- | --- | --- |";

/// The header of a comparison table.
const COMPARISON_HEADER: &str = "| compared | gold gain, raw end points | gold gain at matched KL (KL values) | gold gain at matched compute |\n| --- | --- | --- | --- |";

fn show(i: Option<Interval>) -> String {
    i.map_or_else(|| "—".into(), |i| i.show())
}

/// `0.312 [0.290, 0.334]` for a value per seed.
pub(crate) fn show_level(v: &[f64]) -> String {
    let mean = crate::stats::mean(v);
    match Interval::over_seeds(v) {
        Some(i) => format!("{mean:.3} [{:.3}, {:.3}]", i.lo, i.hi),
        None => format!("{mean:.3}"),
    }
}

/// The calibration table (per policy size: the SFT baselines and PPO's win rate against the
/// references) and whether the study's calibration targets are met.
fn calibration(md: &mut String, seeds: &[Seed<'_>], points: &[PointRecord]) {
    let labels: Vec<String> = rows(points, Axis::PolicySize)
        .iter()
        .map(|r| r.label.clone())
        .collect();
    // the demonstrator of the policy-size points (a preset's points share it); none, no table
    let Some(sized) = points.iter().find(|p| p.point.axis == Axis::PolicySize) else {
        return;
    };
    let t = &sized.point.config.task.tldr;
    let _ = writeln!(
        md,
        "## Calibration\n\nPer policy size, on each seed's held-out prompts: the SFT policy's gold win rate against the references (one demonstration per prompt, with the demonstrator's noise: each salient fact dropped with probability {}, a distractor added with {}, a filler clause with {}) at the judge's temperature and at the cold one (sharpening alone), and PPO's at the base β against the RM trained on every size's samples; the gain is PPO's win rate minus SFT's, in points, paired within seeds. Intervals: 95% over seeds.\n\n| policy size | non-embedding parameters | SFT gold | SFT win rate vs references | cold SFT win rate | PPO win rate | PPO gain (points) |\n| --- | --- | --- | --- | --- | --- | --- |",
        t.drop_fact, t.add_distractor, t.add_filler
    );
    let mut params = Vec::new();
    let mut smallest_win = f64::NAN;
    for (i, label) in labels.iter().enumerate() {
        let pts: Vec<&PointRecord> = seeds
            .iter()
            .filter_map(|s| s.get(Axis::PolicySize, label))
            .collect();
        let v = |name: &str| -> Vec<f64> { pts.iter().map(|p| metric(p, name)).collect() };
        let gain: Vec<f64> = pts.iter().map(|p| gain_points(p)).collect();
        let p = v(names::PARAMS_POLICY).first().copied().unwrap_or(f64::NAN);
        params.push(p);
        let sft_win = v(names::SFT_WIN_VS_REFERENCES);
        if i == 0 {
            smallest_win = crate::stats::mean(&sft_win);
        }
        let _ = writeln!(
            md,
            "| {label} | {p:.0} | {} | {} | {} | {} | {} |",
            show_level(&v(names::GOLD_SFT)),
            show_level(&sft_win),
            show_level(&v(names::SFT_COLD_WIN_VS_REFERENCES)),
            show_level(&v(names::WIN_VS_REFERENCES)),
            show_level(&gain)
        );
    }
    let span = params.iter().copied().fold(0.0, f64::max)
        / params.iter().copied().fold(f64::INFINITY, f64::min);
    let met = |ok: bool| if ok { "met" } else { "missed" };
    let _ = writeln!(
        md,
        "\nTargets (`docs/tasks.md`): the smallest SFT policy's win rate against the references lies in 15–40%: {:.1}%, {}; the sizes span ≥ 30× in non-embedding parameters: {span:.1}×, {}.",
        100.0 * smallest_win,
        met((0.15..=0.40).contains(&smallest_win)),
        met(span >= 30.0)
    );
    if let Some((name, mean, gains)) = best_rlhf_point(seeds, points) {
        let _ = writeln!(
            md,
            "The best RLHF point of the base policy size ({name}) adds {} points of win rate against the references over SFT (target ≥ 10: {}; chosen as the best of many points, so its interval is optimistic).",
            show_level(&gains),
            met(mean >= 10.0)
        );
    }
    reward_model_costs(md, seeds, points);
    md.push('\n');
}

/// What the reward model costs, per seed that ran both sides: PPO against the gold score beside
/// PPO against the RM (same settings), and at the largest n, best-of-n by the gold score beside
/// best-of-n by the RM among the same candidates.
fn reward_model_costs(md: &mut String, seeds: &[Seed<'_>], points: &[PointRecord]) {
    // per seed that ran both: PPO against the gold score and against the RM, same settings
    let (gold, rm): (Vec<f64>, Vec<f64>) = seeds
        .iter()
        .filter_map(|s| {
            let gold = s.get(Axis::LengthControl, "gold")?;
            Some((
                gain_points(gold),
                gain_points(s.get(Axis::LengthControl, "rm")?),
            ))
        })
        .unzip();
    if !gold.is_empty() {
        let (gold, rm, over_rm) = beside_the_rm(&gold, &rm);
        let _ = writeln!(
            md,
            "What the reward model costs: PPO against the gold score itself (length_control gold: the base β and iterations) adds {gold} points of win rate against the references over SFT, and PPO against the RM at the same settings {rm}: a difference of {over_rm}."
        );
    }
    // per seed: at the largest n, the RM's best-of-n and the gold score's own pick among the
    // same candidates
    if let Some(largest) = rows(points, Axis::BestOfN).last() {
        let (by_gold, by_rm): (Vec<f64>, Vec<f64>) = seeds
            .iter()
            .filter_map(|s| {
                let p = s.get(Axis::BestOfN, &largest.label)?;
                let sft = metric(p, names::SFT_WIN_VS_REFERENCES);
                let gold = metric(p, names::GOLD_PICK_WIN_VS_REFERENCES);
                (!gold.is_nan()).then(|| (100.0 * (gold - sft), gain_points(p)))
            })
            .unzip();
        if !by_gold.is_empty() {
            let (gold, rm, over_rm) = beside_the_rm(&by_gold, &by_rm);
            let n = &largest.label;
            let _ = writeln!(
                md,
                "What the SFT policy's samples hold that the RM does not find: among the same candidates, best-of-{n} by the gold score itself (a reward model without error) adds {gold} points of win rate against the references over SFT, and best-of-{n} by the RM {rm}: a difference of {over_rm}."
            );
        }
    }
}

/// Gains with the gold score as the reward and with the RM, paired by seed: each shown with its
/// interval, and their difference.
fn beside_the_rm(gold: &[f64], rm: &[f64]) -> (String, String, String) {
    let over_rm: Vec<f64> = gold.iter().zip(rm).map(|(g, r)| g - r).collect();
    (show_level(gold), show_level(rm), show_level(&over_rm))
}

/// A point's gain in win rate against the references over its SFT policy, in points.
fn gain_points(p: &PointRecord) -> f64 {
    100.0 * (metric(p, names::WIN_VS_REFERENCES) - metric(p, names::SFT_WIN_VS_REFERENCES))
}

/// The RLHF point of the base policy size (that of the `length_control` RM run) with the
/// largest mean gain over its SFT policy, over every axis's `tldr-synth` points with KL > 0
/// that learn from preferences (not from the gold score): its `axis label`, mean gain and gain
/// per seed, in points.
fn best_rlhf_point(seeds: &[Seed<'_>], points: &[PointRecord]) -> Option<(String, f64, Vec<f64>)> {
    let base = seeds
        .first()
        .and_then(|s| s.get(Axis::LengthControl, "rm"))
        .map(|p| p.point.config.sft.policy_size.clone());
    let mut best: Option<(String, f64, Vec<f64>)> = None;
    for axis in Axis::ALL {
        for r in rows(points, axis) {
            let trained: Vec<&PointRecord> = seeds
                .iter()
                .filter_map(|s| s.get(axis, &r.label))
                .filter(|p| {
                    Some(&p.point.config.sft.policy_size) == base.as_ref()
                        && metric(p, names::KL) > 0.0
                        && p.point.config.task.name == "tldr-synth"
                        && p.point.config.method.reward != RewardSource::Gold
                })
                .collect();
            if trained.is_empty() {
                continue;
            }
            let gains: Vec<f64> = trained.iter().map(|p| gain_points(p)).collect();
            let mean = gains.iter().sum::<f64>() / gains.len() as f64;
            if best.as_ref().is_none_or(|b| mean > b.1) {
                best = Some((format!("{axis} {}", r.label), mean, gains));
            }
        }
    }
    best
}

fn comparisons(md: &mut String, title: &str, c: &[Comparison]) {
    if c.is_empty() {
        return;
    }
    let _ = writeln!(md, "\n{title}\n\n{COMPARISON_HEADER}");
    for x in c {
        let _ = writeln!(md, "{}", x.table_line());
    }
}

/// The over-optimisation section: a Gao fit over the β sweep, and per RM size the KL at which
/// gold peaks along training.
fn over_optimisation(md: &mut String, seeds: &[Seed<'_>], points: &[PointRecord]) {
    let r = rows(points, Axis::KlBudget);
    let pts: Vec<(f64, f64)> = r
        .iter()
        .map(|x| (x.mean(names::KL), x.mean(names::GOLD_GAIN)))
        .collect();
    match gao_fit(&pts, true) {
        Some(f) => {
            let peak = match f.peak_kl {
                Some(k) if f.peak_inside() => {
                    format!("peaks at KL {k:.2}, inside the measured range")
                }
                Some(k) => format!(
                    "would peak at KL {k:.2}, outside the measured range (KL {:.2} to {:.2}): no peak is measured",
                    f.kl_range.0, f.kl_range.1
                ),
                None => "does not peak (β ≤ 0)".into(),
            };
            let _ = writeln!(
                md,
                "\nGao et al.'s RL form fitted to the β sweep's mean end points, gold gain = d·(α − β·ln d) with d = √KL: α = {:.3}, β = {:.3}, R² = {:.2} over {} points; the fitted gain {peak}.",
                f.alpha, f.beta, f.r2, f.n
            );
        }
        None => {
            let _ = writeln!(
                md,
                "\nNo Gao fit: it needs {GAO_MIN_POINTS} or more points at KL > 0 for its two parameters, and the β sweep has {}.",
                pts.iter().filter(|p| p.0 > 0.0).count()
            );
        }
    }
    let labels: BTreeSet<String> = points
        .iter()
        .filter(|p| p.point.axis == Axis::RmSize)
        .map(|p| p.point.label.clone())
        .collect();
    if labels.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "\nThe gold peak along training, per RM size (gold against KL on the learning curve; a peak counts when it lies past KL 0 and a later evaluation lies below it by more than twice the standard error of one evaluation, estimated from the run's final `gold/se` scaled to the evaluation's prompts and samples):\n\n| RM size | seeds with a peak | KL of the peak [95% interval] |\n| --- | --- | --- |"
    );
    for label in labels {
        let peaks: Vec<(f64, bool)> = seeds
            .iter()
            .filter_map(|s| s.get(Axis::RmSize, &label))
            .filter_map(|p| peak(&kl_curve(p), 2.0 * curve_se(p)))
            .collect();
        let inside: Vec<f64> = peaks.iter().filter(|p| p.1).map(|p| p.0).collect();
        let kl = if inside.is_empty() {
            "no peak in the measured range".to_string()
        } else if inside.len() < peaks.len() {
            format!(
                "{} on the seeds that peak; the others rise to the end",
                show_level(&inside)
            )
        } else {
            show_level(&inside)
        };
        let _ = writeln!(
            md,
            "| {label} | {} of {} | {kl} |",
            inside.len(),
            peaks.len()
        );
    }
}

/// The compute section: gold gain per doubling of the RL stage's FLOPs along each on-policy
/// method's learning curve at the base β.
fn compute(md: &mut String, seeds: &[Seed<'_>], labels: &[String]) {
    if labels.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "\nGold gain per doubling of the RL stage's FLOPs, fitted on each run's learning curve (every evaluation of the run, not the SFT point), at the base β:\n\n| method | gold gain per doubling of FLOPs [95% interval] |\n| --- | --- |"
    );
    for label in labels {
        let v: Vec<f64> = seeds
            .iter()
            .filter_map(|s| compute_slope(s.get(Axis::Method, label)?))
            .collect();
        let _ = writeln!(md, "| {label} | {} |", show(Interval::over_seeds(&v)));
    }
}

/// The on-policy `method` labels at `beta`.
pub(crate) fn base_beta_labels(points: &[PointRecord], beta: f64) -> Vec<String> {
    rows(points, Axis::Method)
        .into_iter()
        .filter(|r| {
            let (m, b) = crate::findings::method_of(&r.label);
            b == beta && !matches!(m, "dpo" | "exo" | "online_dpo")
        })
        .map(|r| r.label)
        .collect()
}

/// The base β of the study (of the `length_control` RM run, which every other axis's base PPO
/// run shares), 0.05 when it was not run.
pub(crate) fn base_beta(points: &[PointRecord]) -> f64 {
    points
        .iter()
        .find(|p| p.point.axis == Axis::LengthControl && p.point.label == "rm")
        .map_or(0.05, |p| p.point.config.method.ppo.kl.value())
}

/// `report.md` for `points`, with plots already written under `plots/` (`axis_plots` and the
/// three study-wide ones when present).
pub fn report(
    points: &[PointRecord],
    title: &str,
    axis_plots: &[(Axis, String)],
    study_plots: &[(&str, Option<String>)],
) -> String {
    let seeds = by_seed(points);
    let mut md = String::new();
    preamble(&mut md, points, title);
    findings_section(&mut md, points);
    calibration(&mut md, &seeds, points);
    let beta = base_beta(points);
    let base_labels = base_beta_labels(points, beta);
    for (axis, plot) in axis_plots {
        let r = rows(points, *axis);
        axis_table(&mut md, *axis, &r);
        match axis {
            Axis::Method => {
                comparisons(
                    &mut md,
                    &format!(
                        "Against PPO: raw end points and matched compute at β = {beta} (DPO and EXO at their middle β), matched KL over each method's β sweep (gold gain over SFT: the on-policy runs along their learning curves and at their ends, DPO and EXO at their ends), at KLs that both sweeps measured:"
                    ),
                    &methods_against_ppo(&seeds, beta),
                );
                compute(&mut md, &seeds, &base_labels);
            }
            Axis::RmSize | Axis::PolicySize => comparisons(
                &mut md,
                "Against the smallest, on the learning curves (gold gain over each run's SFT policy):",
                &sizes_against_smallest(&seeds, *axis),
            ),
            Axis::KlBudget => over_optimisation(&mut md, &seeds, points),
            Axis::BestOfN => best_of_n_fit(&mut md, &r),
            Axis::Supervision | Axis::SupervisionRl => {
                crate::arith::report_section(&mut md, &seeds, *axis);
            }
            _ => {}
        }
        let _ = writeln!(md, "\n![{axis}](plots/{plot})\n");
    }
    for (title, plot) in study_plots {
        if let Some(plot) = plot {
            let _ = writeln!(md, "## {title}\n\n![{title}](plots/{plot})\n");
        }
    }
    md
}

/// The report's title, what it was computed from (points, seeds, code revisions, device) and
/// the wall time of its distinct runs.
fn preamble(md: &mut String, points: &[PointRecord], title: &str) {
    let seed_list: BTreeSet<u64> = points.iter().map(|p| p.point.config.seed).collect();
    let revisions: BTreeSet<&str> = points.iter().map(|p| p.git_revision.as_str()).collect();
    let _ = writeln!(md, "# {title}\n");
    let _ = writeln!(
        md,
        "{} points, seeds {:?}, code revision {}. Device `{}`. Every number below is computed from `points/*.json` (also in `summary.csv`); `[a, b]` is a 95% interval over seeds (Student's t; each seed draws its own prompts and trains its own models; where an effect is a mean over prompts, the seeds' spread is floored by the prompts' own sampling variance), shown with two or more seeds.\n",
        points.len(),
        seed_list,
        revisions.into_iter().collect::<Vec<_>>().join(", "),
        points
            .first()
            .map_or("", |p| p.point.config.device.as_str())
    );
    let mut unique: Vec<&PointRecord> = Vec::new();
    for p in points {
        if !unique.iter().any(|u| u.point.config == p.point.config) {
            unique.push(p);
        }
    }
    let total: f64 = unique.iter().map(|p| p.result.wall_seconds).sum();
    let _ = writeln!(
        md,
        "Wall time of the {} distinct runs: {total:.0} s of compute (cached stages are paid once, by the first run that needs them; seeds run side by side).\n",
        unique.len()
    );
}

/// The findings table: each claim's verdict and effect.
fn findings_section(md: &mut String, points: &[PointRecord]) {
    let _ = writeln!(
        md,
        "## Findings\n\nA claim is **reproduced** when its effect's 95% interval over seeds lies above zero, **contradicted** when it lies below, **inconclusive** otherwise (and always with one seed).\n\n{FINDINGS_HEADER}"
    );
    for f in findings(points) {
        let _ = writeln!(md, "{}", f.table_line());
    }
    md.push('\n');
}

/// An axis's heading and its table: a row per value, a column per metric of the axis.
fn axis_table(md: &mut String, axis: Axis, rows: &[Row]) {
    let metrics = axis_metrics(axis);
    let _ = writeln!(md, "## {axis}\n");
    let _ = writeln!(md, "| value | {} |", metrics.join(" | "));
    let _ = writeln!(md, "|---|{}", "---|".repeat(metrics.len()));
    for row in rows {
        let _ = writeln!(md, "{}", row.table_line(metrics));
    }
}

/// The best-of-n section: Gao et al.'s best-of-n form fitted to the sweep's mean end points.
fn best_of_n_fit(md: &mut String, rows: &[Row]) {
    let pts: Vec<(f64, f64)> = rows
        .iter()
        .map(|x| (x.mean(names::KL), x.mean(names::GOLD_GAIN)))
        .collect();
    let _ = match gao_fit(&pts, false) {
        Some(f) => writeln!(
            md,
            "\nGao et al.'s best-of-n form, gold gain = d·(α − β·d): α = {:.3}, β = {:.3}, R² = {:.2} over {} points; peak at KL {} ({}).",
            f.alpha,
            f.beta,
            f.r2,
            f.n,
            f.peak_kl.map_or("—".into(), |k| format!("{k:.2}")),
            if f.peak_inside() {
                "inside the measured range"
            } else {
                "outside the measured range"
            }
        ),
        None => writeln!(
            md,
            "\nNo Gao fit: it needs {GAO_MIN_POINTS} or more values of n > 1 for its two parameters, and this sweep has {}.",
            pts.iter().filter(|p| p.0 > 0.0).count()
        ),
    };
}

/// The standard error of one learning-curve evaluation of `p` (one sample on each of
/// `judge.curve_prompts` prompts), from the final judgement's `gold/se` over
/// `task.eval_prompts × judge.samples` samples, treating samples as independent; 0.05 when the
/// point has no `gold/se`.
fn curve_se(p: &PointRecord) -> f64 {
    let c = &p.point.config;
    let se = metric(p, names::GOLD_SE);
    let judged = (c.task.eval_prompts * c.judge.samples) as f64;
    let curve = c.judge.curve_prompts.min(c.task.eval_prompts).max(1) as f64;
    if se.is_finite() && se > 0.0 {
        se * (judged / curve).sqrt()
    } else {
        0.05
    }
}
