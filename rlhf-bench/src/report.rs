//! The report of a sweep: `summary.csv` (one row per point), `plots/*.svg` (one per axis and the
//! gold-vs-KL frontier) and `report.md` (per axis a table, its plot and a fitted trend, then a
//! findings table that states for each finding of the seed paper whether this run reproduces it).
//!
//! Every number in the report is computed here from the stored points, nothing else.
//!
//! Metric names of a point (`RunResult::metrics`):
//!
//! | name | meaning |
//! | --- | --- |
//! | `gold/mean`, `gold/se` | gold score of the judged samples on the held-out prompts, and its standard error |
//! | `gold/sft`, `gold/gain` | the SFT policy's gold score (same prompts and seed) and the gain over it |
//! | `gold/references` | the references' own gold score |
//! | `judge/win_rate_vs_sft`, `judge/win_rate_vs_references` | gold win rates (ties count half) |
//! | `kl` | `KL(π‖π_ref)` per sequence: sampled estimate, or `log n − (n−1)/n` for best-of-n |
//! | `proxy/mean` | the reward model's (normalised) score of the judged samples |
//! | `rm/accuracy`, `rm/gold_accuracy`, `rm/labeller_agreement` | held-out RM accuracy against labels (`arith-steps`: its outcome or step labels) and the gold order; the labeller's agreement with gold |
//! | `response/length`, `response/eos` | tokens per judged response; share ending with EOS |
//! | `flops/sft`, `flops/rm`, `flops/method` | estimated FLOPs (`6·N` per trained token, `2·N` per forward token) |
//! | `tokens/sft`, `tokens/rm`, `tokens/method` | tokens of the sequences a stage trains on, once per pass (PPO: per PPO epoch; best-of-n: the `n` sampled sequences per prompt); the FLOPs add the forward-only work (sampling, reference, reward model) |
//! | `params/policy`, `params/rm` | non-embedding parameters |
//! | `time/method`, `memory/peak_bytes` | wall seconds of the method stage; peak resident memory so far |
//! | `bon/accuracy`, `bon/random`, `bon/oracle` | `arith-steps`: final-answer accuracy of the verifier's pick among n solutions, of a random pick, and of the best possible pick |
//! | `bon/random_distinct`, `bon/distinct` | `arith-steps`: accuracy of a random pick among the distinct candidate texts (a verifier scores equal texts equally, so this is its baseline); distinct texts per prompt |
//! | `bon/pair_accuracy` | `arith-steps`: share of (right, wrong) candidate pairs of a prompt the verifier orders right (ties half) |
//! | `rm/balanced_accuracy`, `rm/steps` | `arith-steps`: the verifier's held-out balanced accuracy on its own labels; its optimizer steps |
//! | `method/eval_reward_accuracy` | DPO/EXO on a user's preference file: share of held-out pairs whose chosen response the policy's implicit reward ranks first |
//! | `proxy/se`, `proxy/sft`, `proxy/gain`, `proxy/chosen`, `proxy/win_rate_vs_sft`, `proxy/win_rate_vs_chosen` | a user's preference file (no gold): the RM judges — its score's standard error, the SFT policy's score, the gain over it, the held-out chosen responses' score, win rates by the RM |
//! | `data/records`, `data/rejected`, `data/pairs_dropped`, `data/train_pairs`, `data/eval_pairs`, `data/demos` | a user's preference file: records read and rejected, pairs dropped after truncation, the splits' pairs, SFT demonstrations |

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use rlhf_core::train::fs::write_atomic;
use rlhf_core::{Error, Result};

use rlhf_cli::plot::{Series, svg_chart};

use crate::study::{AXES, PointRecord};

/// Mean and sample standard deviation over seeds of one metric at one value of an axis.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    /// Mean over seeds.
    pub mean: f64,
    /// Sample standard deviation over seeds (NaN for one seed).
    pub sd: f64,
    /// Seeds.
    pub n: usize,
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
pub fn rows(points: &[PointRecord], axis: &str) -> Vec<Row> {
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
                    let n = v.len();
                    let mean = v.iter().sum::<f64>() / n as f64;
                    let sd = if n > 1 {
                        (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
                    } else {
                        f64::NAN
                    };
                    (k, Cell { mean, sd, n })
                })
                .collect();
            Row { label, x, cells }
        })
        .collect();
    rows.sort_by(|a, b| a.x.total_cmp(&b.x).then(a.label.cmp(&b.label)));
    rows
}

/// Least-squares line `y = a + b·log2(x)` over the rows' means; returns (b, R²).
pub fn log2_fit(rows: &[Row], metric: &str) -> Option<(f64, f64)> {
    let pts: Vec<(f64, f64)> = rows
        .iter()
        .filter(|r| r.x > 0.0 && r.mean(metric).is_finite())
        .map(|r| (r.x.log2(), r.mean(metric)))
        .collect();
    if pts.len() < 2 {
        return None;
    }
    let n = pts.len() as f64;
    let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
    let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let syy: f64 = pts.iter().map(|p| (p.1 - my).powi(2)).sum();
    if sxx == 0.0 {
        return None;
    }
    let b = sxy / sxx;
    let r2 = if syy > 0.0 {
        (sxy * sxy) / (sxx * syy)
    } else {
        1.0
    };
    Some((b, r2))
}

/// What each axis plots and tabulates: the headline metric, then the others in its table.
/// Gao et al. (2022)'s functional forms of reward over-optimisation, fitted by least squares
/// through the origin on `(KL, gold gain)` points, with `d = √KL`: best-of-n
/// `gain = d·(α − β·d)`, RL `gain = d·(α − β·ln d)`. Returns `(α, β, R²)`; `None` with fewer
/// than two points at positive KL or a singular system.
pub fn gao_fit(points: &[(f64, f64)], rl: bool) -> Option<(f64, f64, f64)> {
    let rows: Vec<(f64, f64, f64)> = points
        .iter()
        .filter(|(kl, y)| kl.is_finite() && *kl >= 0.0 && y.is_finite())
        .map(|&(kl, y)| {
            let d = kl.sqrt();
            // d·ln d → 0 as d → 0
            let g = if rl {
                d * d.max(f64::MIN_POSITIVE).ln()
            } else {
                d * d
            };
            (d, -g, y)
        })
        .collect();
    if rows.iter().filter(|r| r.0 > 0.0).count() < 2 {
        return None;
    }
    let (mut s11, mut s12, mut s22, mut s1y, mut s2y) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for &(x1, x2, y) in &rows {
        s11 += x1 * x1;
        s12 += x1 * x2;
        s22 += x2 * x2;
        s1y += x1 * y;
        s2y += x2 * y;
    }
    let det = s11 * s22 - s12 * s12;
    if det.abs() <= 1e-12 * (s11 * s22).max(f64::MIN_POSITIVE) {
        return None;
    }
    let alpha = (s22 * s1y - s12 * s2y) / det;
    let beta = (s11 * s2y - s12 * s1y) / det;
    let mean = rows.iter().map(|r| r.2).sum::<f64>() / rows.len() as f64;
    let ss_tot: f64 = rows.iter().map(|r| (r.2 - mean).powi(2)).sum();
    let ss_res: f64 = rows
        .iter()
        .map(|r| (r.2 - alpha * r.0 - beta * r.1).powi(2))
        .sum();
    let r2 = if ss_tot > 0.0 {
        1.0 - ss_res / ss_tot
    } else {
        f64::NAN
    };
    Some((alpha, beta, r2))
}

/// The KL at which a [`gao_fit`] peaks (`None` when β ≤ 0: no peak, the gain keeps rising).
pub fn gao_peak_kl(alpha: f64, beta: f64, rl: bool) -> Option<f64> {
    (beta > 0.0).then(|| {
        let d = if rl {
            (alpha / beta - 1.0).exp()
        } else {
            alpha / (2.0 * beta)
        };
        d * d
    })
}

/// The report's sentence on a [`gao_fit`] of `rows` (their mean KL and gold gain).
fn gao_sentence(rows: &[Row], rl: bool) -> Option<String> {
    let pts: Vec<(f64, f64)> = rows
        .iter()
        .map(|r| (r.mean("kl"), r.mean("gold/gain")))
        .collect();
    let (a, b, r2) = gao_fit(&pts, rl)?;
    let form = if rl {
        "d·(α − β·ln d)"
    } else {
        "d·(α − β·d)"
    };
    let peak = match gao_peak_kl(a, b, rl) {
        Some(kl) => format!("the fitted gain peaks at KL {kl:.2}"),
        None => "the fitted gain does not peak (β ≤ 0)".into(),
    };
    let positive = pts.iter().filter(|p| p.0 > 0.0 && p.1.is_finite()).count();
    let quality = if positive > 2 {
        format!("R² = {r2:.2} over {positive} points at KL > 0")
    } else {
        "two points at KL > 0 determine both coefficients, so this fits the form without testing it"
            .into()
    };
    Some(format!(
        "Gao et al. fit: gold gain = {form}, d = √KL: α = {a:.3}, β = {b:.3} ({quality}); {peak}."
    ))
}

fn axis_metrics(axis: &str) -> (&'static str, &'static [&'static str]) {
    match axis {
        "rm_volume" | "rm_diversity" => (
            "rm/gold_accuracy",
            &[
                "rm/gold_accuracy",
                "rm/accuracy",
                "rm/labeller_agreement",
                "gold/mean",
                "flops/rm",
            ],
        ),
        "best_of_n" => (
            "gold/mean",
            &["gold/mean", "gold/gain", "proxy/mean", "kl", "flops/method"],
        ),
        "kl_budget" => (
            "gold/mean",
            &[
                "gold/mean",
                "gold/gain",
                "proxy/mean",
                "kl",
                "response/length",
            ],
        ),
        "length_control" => (
            "gold/gain",
            &["gold/gain", "gold/mean", "kl", "response/length"],
        ),
        "supervision" => (
            "bon/accuracy",
            &[
                "bon/accuracy",
                "bon/random",
                "bon/random_distinct",
                "bon/oracle",
                "bon/pair_accuracy",
                "rm/accuracy",
                "rm/balanced_accuracy",
                "flops/rm",
            ],
        ),
        _ => (
            "gold/gain",
            &[
                "gold/gain",
                "gold/mean",
                "judge/win_rate_vs_sft",
                "kl",
                "proxy/mean",
                "flops/method",
                "time/method",
            ],
        ),
    }
}

fn fmt(c: Option<&Cell>) -> String {
    match c {
        None => "–".into(),
        Some(c) if c.mean.abs() >= 1e5 => format!("{:.3e}", c.mean),
        Some(c) if c.n > 1 => format!("{:.3} ± {:.3}", c.mean, c.sd),
        Some(c) => format!("{:.3}", c.mean),
    }
}

/// A finding of the seed paper and what this run says about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// The axis.
    pub axis: &'static str,
    /// The seed paper's claim.
    pub claim: &'static str,
    /// `yes`, `no`, `not run`.
    pub verdict: String,
    /// The effect measured, in words and numbers.
    pub effect: String,
    /// The effect as one number, signed so that a positive value goes the finding's way (NaN
    /// when not run).
    pub size: f64,
    /// What [`Self::size`] measures.
    pub size_name: &'static str,
}

/// A finding over every seed, and how the seeds taken one at a time agree.
#[derive(Debug, Clone, PartialEq)]
pub struct SeededFinding {
    /// The finding on the means over seeds.
    pub finding: Finding,
    /// Seeds whose own points give the verdict `yes`, and the seeds.
    pub agreeing: (usize, usize),
    /// Mean and sample standard deviation of the effect size over seeds (NaN sd for one seed).
    pub size: (f64, f64),
}

impl SeededFinding {
    /// The finding's line in the findings table.
    pub fn table_line(&self) -> String {
        let f = &self.finding;
        let agree = match f.verdict.as_str() {
            "yes" | "no" => format!("{} of {}", self.agreeing.0, self.agreeing.1),
            _ => "—".into(),
        };
        let (m, sd) = self.size;
        let size = if !m.is_finite() {
            "—".to_string()
        } else if sd.is_finite() {
            format!("{m:+.3} ± {sd:.3} ({})", f.size_name)
        } else {
            format!("{m:+.3} ({})", f.size_name)
        };
        format!(
            "| {} | {} | {} | {agree} | {size} | {} |",
            f.axis, f.claim, f.verdict, f.effect
        )
    }
}

/// [`findings`] on every seed's points together (the verdict and the effect), then on each
/// seed's alone: how many seeds reproduce the finding, and the effect size's mean and spread.
pub fn seeded_findings(points: &[PointRecord]) -> Vec<SeededFinding> {
    let mut seeds: Vec<u64> = points.iter().map(|p| p.point.config.seed).collect();
    seeds.sort_unstable();
    seeds.dedup();
    let per_seed: Vec<Vec<Finding>> = seeds
        .iter()
        .map(|s| {
            let mine: Vec<PointRecord> = points
                .iter()
                .filter(|p| p.point.config.seed == *s)
                .cloned()
                .collect();
            findings(&mine)
        })
        .collect();
    findings(points)
        .into_iter()
        .map(|finding| {
            let own: Vec<&Finding> = per_seed
                .iter()
                .filter_map(|fs| fs.iter().find(|f| f.axis == finding.axis))
                .collect();
            let agree = own.iter().filter(|f| f.verdict == "yes").count();
            let sizes: Vec<f64> = own.iter().map(|f| f.size).collect();
            let n = sizes.len() as f64;
            let mean = sizes.iter().sum::<f64>() / n;
            let sd = if sizes.len() >= 2 {
                (sizes.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
            } else {
                f64::NAN
            };
            SeededFinding {
                finding,
                agreeing: (agree, seeds.len()),
                size: (mean, sd),
            }
        })
        .collect()
}

/// The findings table, computed from the rows of each axis.
pub fn findings(points: &[PointRecord]) -> Vec<Finding> {
    let mut out = Vec::new();
    let yes = |b: bool| if b { "yes" } else { "no" }.to_string();
    let mut push = |axis, claim, verdict: String, effect: String, size: f64, size_name| {
        out.push(Finding {
            axis,
            claim,
            verdict,
            effect,
            size,
            size_name,
        })
    };
    let first_last = |rows: &[Row], m: &str| {
        (
            rows.first().map_or(f64::NAN, |r| r.mean(m)),
            rows.last().map_or(f64::NAN, |r| r.mean(m)),
        )
    };
    let r = rows(points, "rm_volume");
    if r.len() >= 2 {
        let (a, b) = first_last(&r, "rm/gold_accuracy");
        let fit = log2_fit(&r, "rm/gold_accuracy");
        push(
            "rm_volume",
            "more comparison data makes the RM more accurate",
            yes(b > a && fit.is_some_and(|f| f.0 > 0.0)),
            format!(
                "gold-order accuracy {a:.3} at {} pairs → {b:.3} at {}; {:+.3} per doubling",
                r[0].label,
                r[r.len() - 1].label,
                fit.map_or(f64::NAN, |f| f.0)
            ),
            fit.map_or(f64::NAN, |f| f.0),
            "accuracy per doubling",
        );
    } else {
        push(
            "rm_volume",
            "more comparison data makes the RM more accurate",
            "not run".into(),
            String::new(),
            f64::NAN,
            "",
        );
    }
    let r = rows(points, "rm_diversity");
    if r.len() == 2 {
        let (many, few) = (r[0].mean("rm/gold_accuracy"), r[1].mean("rm/gold_accuracy"));
        push(
            "rm_diversity",
            "at a fixed budget, more prompts beat more responses per prompt",
            yes(many > few),
            format!(
                "gold-order accuracy {many:.3} ({}) vs {few:.3} ({})",
                r[0].label, r[1].label
            ),
            many - few,
            "accuracy, more prompts − fewer",
        );
    }
    for (axis, claim, larger_better) in [
        (
            "rm_size",
            "larger reward models give modest policy gains",
            true,
        ),
        (
            "policy_size",
            "larger policies gain less from RLHF with a fixed RM",
            false,
        ),
    ] {
        let r = rows(points, axis);
        if r.len() >= 2 {
            let (a, b) = first_last(&r, "gold/gain");
            push(
                axis,
                claim,
                yes(if larger_better { b > a } else { b < a }),
                format!(
                    "gold gain {a:+.3} ({}) → {b:+.3} ({})",
                    r[0].label,
                    r[r.len() - 1].label
                ),
                if larger_better { b - a } else { a - b },
                if larger_better {
                    "gain, largest − smallest"
                } else {
                    "gain, smallest − largest"
                },
            );
        }
    }
    let r = rows(points, "samples_per_prompt");
    if r.len() >= 3 {
        let g: Vec<f64> = r.iter().map(|x| x.mean("gold/gain")).collect();
        let first_step = g[1] - g[0];
        let last_step = g[g.len() - 1] - g[g.len() - 2];
        push(
            "samples_per_prompt",
            "gains rise with samples per prompt, then plateau",
            yes(g[g.len() - 1] > g[0] && last_step < first_step),
            format!(
                "gold gain by n: {}",
                r.iter()
                    .zip(&g)
                    .map(|(x, v)| format!("{}: {v:+.3}", x.label))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            g[g.len() - 1] - g[0],
            "gain, largest n − n = 1",
        );
    }
    let r = rows(points, "method");
    if !r.is_empty() {
        let best = r
            .iter()
            .max_by(|a, b| a.mean("gold/mean").total_cmp(&b.mean("gold/mean")))
            .expect("non-empty");
        push(
            "method",
            "the methods differ in gold score at a given KL (frontier per method)",
            "reported".into(),
            format!(
                "highest gold: {} ({:.3} at KL {:.2}); see the frontier plot",
                best.label,
                best.mean("gold/mean"),
                best.mean("kl")
            ),
            best.mean("gold/mean")
                - r.iter()
                    .map(|x| x.mean("gold/mean"))
                    .fold(f64::INFINITY, f64::min),
            "gold, best method − worst",
        );
    }
    let r = rows(points, "kl_budget");
    if r.len() >= 3 {
        // x is β: the KL grows as β shrinks
        let mut by_kl = r.clone();
        by_kl.sort_by(|a, b| a.mean("kl").total_cmp(&b.mean("kl")));
        let proxy_rises = by_kl
            .windows(2)
            .all(|w| w[1].mean("proxy/mean") >= w[0].mean("proxy/mean"));
        let peak = by_kl
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.mean("gold/mean").total_cmp(&b.1.mean("gold/mean")))
            .map_or(0, |x| x.0);
        push(
            "kl_budget",
            "over-optimisation: the proxy keeps rising with KL while gold peaks and falls",
            yes(proxy_rises && peak + 1 < by_kl.len()),
            format!(
                "by KL: {}",
                by_kl
                    .iter()
                    .map(|x| format!(
                        "β {} → KL {:.2}, proxy {:.3}, gold {:.3}",
                        x.label,
                        x.mean("kl"),
                        x.mean("proxy/mean"),
                        x.mean("gold/mean")
                    ))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            by_kl[peak].mean("gold/mean") - by_kl[by_kl.len() - 1].mean("gold/mean"),
            "gold, peak − at the largest KL",
        );
    }
    let r = rows(points, "best_of_n");
    if r.len() >= 2 {
        let (a, b) = first_last(&r, "gold/mean");
        push(
            "best_of_n",
            "best-of-n reranking by the RM raises the gold score",
            yes(b > a),
            format!(
                "gold {a:.3} (n = {}) → {b:.3} (n = {})",
                r[0].label,
                r[r.len() - 1].label
            ),
            b - a,
            "gold, largest n − n = 1",
        );
    }
    let r = rows(points, "length_control");
    if r.len() == 2 {
        let (rm, len) = (r[0].mean("gold/gain"), r[1].mean("gold/gain"));
        push(
            "length_control",
            "part of RLHF's gain is length alone (A Long Way to Go)",
            yes(len > 0.0),
            if rm > 0.05 {
                format!(
                    "gold gain with the RM {rm:+.3}, with a length-only reward {len:+.3}: length alone gives {:.0}% of the RM's gain",
                    100.0 * len / rm
                )
            } else {
                format!(
                    "gold gain with the RM {rm:+.3} (too small to apportion), with a length-only reward {len:+.3}"
                )
            },
            len,
            "gold gain of the length-only reward",
        );
    }
    let claim = "process supervision scales better than outcome supervision in-domain";
    let kinds = by_kind(&rows(points, "supervision"));
    let n = points
        .iter()
        .find(|p| p.point.axis == "supervision")
        .map_or(0, |p| p.point.config.method.best_of_n);
    match (kinds.get("outcome"), kinds.get("process")) {
        (Some(o), Some(p)) if o.len() >= 2 && p.len() >= 2 => {
            let m = "bon/accuracy";
            let slope = |r: &[Row]| log2_fit(r, m).map_or(f64::NAN, |f| f.0);
            let (so, sp) = (slope(o), slope(p));
            let (o0, o1, p0, p1) = (
                o[0].mean(m),
                o[o.len() - 1].mean(m),
                p[0].mean(m),
                p[p.len() - 1].mean(m),
            );
            let ahead = p
                .iter()
                .filter(|pr| o.iter().any(|or| or.x == pr.x && pr.mean(m) >= or.mean(m)))
                .count();
            push(
                "supervision",
                claim,
                yes(sp > so && p1 >= o1),
                format!(
                    "best-of-{n} final-answer accuracy from {} to {} labelled solutions: outcome RM {o0:.3} → {o1:.3} ({so:+.3} per doubling), process RM {p0:.3} → {p1:.3} ({sp:+.3} per doubling); process ≥ outcome at {ahead} of {} volumes; a random pick {:.3}, a random pick among the distinct solutions {:.3}",
                    o[0].x,
                    o[o.len() - 1].x,
                    p.len(),
                    o[0].mean("bon/random"),
                    o[0].mean("bon/random_distinct")
                ),
                sp - so,
                "accuracy per doubling, process − outcome",
            );
        }
        _ => push(
            "supervision",
            claim,
            "not run".into(),
            "needs outcome and process verifiers at two or more volumes".into(),
            f64::NAN,
            "",
        ),
    }
    out
}

/// The rows of the `supervision` axis by verifier kind (the label's prefix, `outcome-750` →
/// `outcome`), each in the order of its x.
fn by_kind(rows: &[Row]) -> BTreeMap<String, Vec<Row>> {
    let mut out: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    for r in rows {
        let kind = r.label.split('-').next().unwrap_or_default().to_string();
        out.entry(kind).or_default().push(r.clone());
    }
    out
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
    // summary.csv
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
    write_atomic(&out.join("summary.csv"), csv.as_bytes())?;

    let seeds: std::collections::BTreeSet<u64> =
        points.iter().map(|p| p.point.config.seed).collect();
    let revisions: std::collections::BTreeSet<&str> =
        points.iter().map(|p| p.git_revision.as_str()).collect();
    let mut md = String::new();
    let _ = writeln!(md, "# {title}\n");
    let _ = writeln!(
        md,
        "{} points, seeds {:?}, code revision {}. Device `{}`. Every number below is read from `points/*.json` (also in `summary.csv`); ± is the standard deviation over seeds (shown with two or more seeds).\n",
        points.len(),
        seeds,
        revisions.into_iter().collect::<Vec<_>>().join(", "),
        points[0].point.config.device
    );
    // a run shared by several axes is stored once per axis: count it once
    let mut unique: Vec<&PointRecord> = Vec::new();
    for p in points {
        if !unique.iter().any(|u| u.point.config == p.point.config) {
            unique.push(p);
        }
    }
    let total: f64 = unique.iter().map(|p| p.result.wall_seconds).sum();
    let _ = writeln!(
        md,
        "Wall time of the {} distinct runs: {total:.0} s (cached stages are paid once, by the first run that needs them).\n",
        unique.len()
    );
    let _ = writeln!(
        md,
        "## Findings\n\nVerdicts and effects are computed on the means over seeds; then on each seed alone: how many seeds reproduce the finding, and the effect size's mean ± standard deviation over seeds (positive goes the finding's way).\n\n| axis | the seed paper's finding | reproduced here | seeds reproducing it | effect size over seeds | effect |\n| --- | --- | --- | --- | --- | --- |"
    );
    for f in seeded_findings(points) {
        let _ = writeln!(md, "{}", f.table_line());
    }
    md.push('\n');
    for axis in AXES {
        let r = rows(points, axis);
        if r.is_empty() {
            continue;
        }
        let (head, metrics) = axis_metrics(axis);
        let _ = writeln!(md, "## {axis}\n");
        let _ = writeln!(md, "| value | {} |", metrics.join(" | "));
        let _ = writeln!(md, "|---|{}", "---|".repeat(metrics.len()));
        for row in &r {
            let _ = writeln!(md, "{}", row.table_line(metrics));
        }
        let numeric = matches!(
            *axis,
            "rm_volume" | "samples_per_prompt" | "best_of_n" | "kl_budget"
        );
        if *axis == "supervision" {
            for (kind, kr) in by_kind(&r) {
                if let Some((slope, r2)) = log2_fit(&kr, head) {
                    let _ = writeln!(
                        md,
                        "\nTrend, {kind} RM: `{head}` changes by {slope:+.4} per doubling of the labelled solutions (least squares on log2, R² = {r2:.2})."
                    );
                }
            }
        }
        if matches!(*axis, "best_of_n" | "kl_budget")
            && let Some(line) = gao_sentence(&r, *axis == "kl_budget")
        {
            let _ = writeln!(md, "\n{line}");
        }
        if numeric && let Some((slope, r2)) = log2_fit(&r, head) {
            let _ = writeln!(
                md,
                "\nTrend: `{head}` changes by {slope:+.4} per doubling of {axis} (least squares on log2, R² = {r2:.2})."
            );
        }
        let flops: Vec<f64> = r.iter().map(|x| x.mean("flops/method")).collect();
        let spread = flops.iter().copied().fold(0.0, f64::max)
            / flops.iter().copied().fold(f64::INFINITY, f64::min);
        // against compute only where compute varies (equal episodes per iteration keep it flat)
        if *axis == "samples_per_prompt"
            && spread >= 1.5
            && let Some((slope, r2)) = log2_fit_by(&r, head, "flops/method")
        {
            let _ = writeln!(
                md,
                "Against compute: `{head}` changes by {slope:+.4} per doubling of the method's FLOPs (R² = {r2:.2})."
            );
        }
        let points_of = |rows: &[Row]| -> Vec<(f64, f64, f64)> {
            rows.iter()
                .map(|x| {
                    let c = x.cells.get(head);
                    (
                        x.x,
                        c.map_or(f64::NAN, |c| c.mean),
                        c.map_or(f64::NAN, |c| c.sd),
                    )
                })
                .collect()
        };
        let (series, ticks): (Vec<Series>, Vec<(f64, String)>) = if *axis == "supervision" {
            let kinds = by_kind(&r);
            let mut ticks: Vec<(f64, String)> = Vec::new();
            for row in &r {
                if !ticks.iter().any(|t| t.0 == row.x) {
                    ticks.push((row.x, row.x.to_string()));
                }
            }
            (
                kinds
                    .iter()
                    .map(|(k, kr)| (format!("{k} RM"), points_of(kr)))
                    .collect(),
                ticks,
            )
        } else {
            (
                vec![(head.to_string(), points_of(&r))],
                r.iter().map(|x| (x.x, x.label.clone())).collect(),
            )
        };
        let svg = svg_chart(
            &format!("{axis}: {head}"),
            if *axis == "supervision" {
                "labelled solutions"
            } else {
                axis
            },
            head,
            &series,
            Some(&ticks),
            (numeric || *axis == "supervision") && *axis != "kl_budget",
        )?;
        write_atomic(&plots.join(format!("{axis}.svg")), svg.as_bytes())?;
        let _ = writeln!(md, "\n![{axis}](plots/{axis}.svg)\n");
    }
    // the frontier: gold against KL for every on-policy and offline point, by method
    let mut series: BTreeMap<String, Vec<(f64, f64, f64)>> = BTreeMap::new();
    for p in points {
        let (Some(kl), Some(gold)) = (
            p.result.metrics.get("kl"),
            p.result.metrics.get("gold/mean"),
        ) else {
            continue;
        };
        let name = match p.point.axis.as_str() {
            "best_of_n" => "best-of-n".to_string(),
            "kl_budget" => "ppo (β sweep)".to_string(),
            "method" => p.point.label.clone(),
            _ => continue,
        };
        series.entry(name).or_default().push((*kl, *gold, f64::NAN));
    }
    if !series.is_empty() {
        let series: Vec<Series> = series
            .into_iter()
            .map(|(k, mut v)| {
                v.sort_by(|a, b| a.0.total_cmp(&b.0));
                (k, v)
            })
            .collect();
        let svg = svg_chart(
            "gold score against KL to the reference",
            "KL(π‖π_ref) per sequence",
            "gold/mean",
            &series,
            None,
            false,
        )?;
        write_atomic(&plots.join("frontier.svg"), svg.as_bytes())?;
        let _ = writeln!(
            md,
            "## Gold score against KL, per method\n\n![frontier](plots/frontier.svg)\n"
        );
    }
    write_atomic(&out.join("report.md"), md.as_bytes())
}

/// Least squares of `metric` on log2 of another metric's means.
fn log2_fit_by(rows: &[Row], metric: &str, x_metric: &str) -> Option<(f64, f64)> {
    let shifted: Vec<Row> = rows
        .iter()
        .map(|r| Row {
            label: r.label.clone(),
            x: r.mean(x_metric),
            cells: r.cells.clone(),
        })
        .collect();
    log2_fit(&shifted, metric)
}

/// Checks that `report.md` and `summary.csv` under `out` hold the stored points' numbers: every
/// table row of the report is recomputed from `points/*.json` and must appear verbatim, and every
/// point has its row in the CSV with its metrics. Returns the number of lines checked.
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
    for axis in AXES {
        let (_, metrics) = axis_metrics(axis);
        for row in rows(&points, axis) {
            let line = row.table_line(metrics);
            if !md.lines().any(|l| l == line) {
                return Err(Error::Config(format!(
                    "report.md lacks the {axis} row `{line}`"
                )));
            }
            checked += 1;
        }
    }
    for f in seeded_findings(&points) {
        let line = f.table_line();
        if !md.lines().any(|l| l == line) {
            return Err(Error::Config(format!(
                "report.md lacks the finding `{line}`"
            )));
        }
        checked += 1;
    }
    let header: Vec<&str> = csv.lines().next().unwrap_or("").split(',').collect();
    for p in &points {
        let prefix = format!(
            "{},{},{},{},",
            p.point.axis, p.point.label, p.point.x, p.point.config.seed
        );
        let row = csv
            .lines()
            .find(|l| l.starts_with(&prefix))
            .ok_or_else(|| Error::Config(format!("summary.csv lacks {}", p.point.file_name())))?;
        for (name, cell) in header.iter().zip(row.split(',')).skip(5) {
            let stored = p
                .result
                .metrics
                .get(*name)
                .map_or(String::new(), |v| format!("{v}"));
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
