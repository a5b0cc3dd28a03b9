//! The simulated labeller and the judge.
//!
//! The labeller prefers `a` over `b` with probability `σ((g(a) − g(b)) / τ)`. Its temperature `τ`
//! is not hand-picked: [`Labeller::calibrate`] finds the `τ` at which its expected agreement with
//! the gold order on pairs of SFT-like samples equals a target (about 73%, the agreement of the
//! TL;DR data's human labellers).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::tasks::Task;

/// A Bradley–Terry labeller over gold scores.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Labeller {
    /// The temperature `τ > 0`.
    pub tau: f64,
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

impl Labeller {
    /// `P(a ≻ b)` given the two gold scores.
    pub fn prob_prefers_first(&self, gold_a: f64, gold_b: f64) -> f64 {
        sigmoid((gold_a - gold_b) / self.tau)
    }

    /// Draws a label: `true` when `a` is preferred.
    pub fn prefers_first(&self, gold_a: f64, gold_b: f64, rng: &mut impl Rng) -> bool {
        rng.random_bool(self.prob_prefers_first(gold_a, gold_b).clamp(0.0, 1.0))
    }

    /// Expected agreement with the gold order over `pairs` of gold scores, ties left out:
    /// `mean σ(|g(a) − g(b)| / τ)`.
    pub fn expected_agreement(&self, pairs: &[(f64, f64)]) -> Option<f64> {
        let diffs: Vec<f64> = pairs
            .iter()
            .map(|(a, b)| (a - b).abs())
            .filter(|d| *d > 1e-12)
            .collect();
        if diffs.is_empty() {
            return None;
        }
        Some(diffs.iter().map(|d| sigmoid(d / self.tau)).sum::<f64>() / diffs.len() as f64)
    }

    /// The labeller whose expected agreement on `pairs` (gold scores of two SFT-like samples of
    /// one prompt) is `target`, found by bisection on `log τ` (agreement falls as `τ` grows).
    /// `None` when no pair differs or the target is outside `(0.5, 1)`.
    pub fn calibrate(pairs: &[(f64, f64)], target: f64) -> Option<Labeller> {
        if !(target > 0.5 && target < 1.0) {
            return None;
        }
        let agreement = |log_tau: f64| Labeller { tau: log_tau.exp() }.expected_agreement(pairs);
        let (mut lo, mut hi) = (-20.0f64, 20.0f64); // agreement(lo) ≈ 1, agreement(hi) ≈ 0.5
        agreement(lo)?;
        for _ in 0..200 {
            let mid = 0.5 * (lo + hi);
            if agreement(mid)? > target {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Some(Labeller {
            tau: (0.5 * (lo + hi)).exp(),
        })
    }
}

/// The labeller as a [`rlhf_base::Scorer`], for a trainer that pairs the best and the worst of two
/// samples of a prompt (online DPO): a response scores `g/τ + G`, `g` its gold score and `G` a
/// standard Gumbel draw. The difference of two independent Gumbel draws is logistic, so of two
/// responses the first scores higher with probability `σ((g_a − g_b)/τ)`: the labeller's
/// preference ([`Labeller::prob_prefers_first`]). A call's draws follow a stream seeded by the
/// seed and the call's texts, so a resumed run, whose rounds hold the same texts, draws them again,
/// and another call (another round) draws afresh.
pub struct LabellerScorer<'a> {
    task: &'a dyn Task,
    labeller: Labeller,
    seed: u64,
}

impl<'a> LabellerScorer<'a> {
    /// The labeller's judgements of `task`'s responses, seeded by `seed`.
    pub fn new(task: &'a dyn Task, labeller: Labeller, seed: u64) -> Self {
        LabellerScorer {
            task,
            labeller,
            seed,
        }
    }
}

impl rlhf_base::Scorer for LabellerScorer<'_> {
    fn score(&self, prompts: &[&str], responses: &[&str]) -> rlhf_base::Result<Vec<f32>> {
        rlhf_base::check_pairs(prompts, responses)?;
        let mut tag = self.seed.to_le_bytes().to_vec();
        for (p, r) in prompts.iter().zip(responses) {
            for text in [p, r] {
                tag.extend_from_slice(text.as_bytes());
                tag.push(0);
            }
        }
        let mut rng = ChaCha8Rng::seed_from_u64(rlhf_base::seed::seed_of(&tag));
        Ok(prompts
            .iter()
            .zip(responses)
            .map(|(p, r)| {
                // a standard Gumbel draw, u in (0, 1)
                let u: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
                let gumbel = -(-u.ln()).ln();
                (self.task.gold(p, r).total / self.labeller.tau + gumbel) as f32
            })
            .collect())
    }

    fn name(&self) -> String {
        format!("labeller:{}", self.task.name())
    }
}

/// The judge: the share of comparisons a policy's responses win against paired baseline responses
/// (references, or the SFT policy's) by gold score, ties counted as half a win.
pub fn win_rate(policy: &[f64], baseline: &[f64]) -> f64 {
    let n = policy.len().min(baseline.len());
    if n == 0 {
        return 0.0;
    }
    let wins: f64 = policy
        .iter()
        .zip(baseline)
        .map(|(p, b)| {
            if (p - b).abs() <= 1e-12 {
                0.5
            } else if p > b {
                1.0
            } else {
                0.0
            }
        })
        .sum();
    wins / n as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::Split;
    use crate::tasks::{ChaCha8Rng, Task, TldrSynth, with_eos};
    use rand::SeedableRng;

    fn sft_like_pairs(task: &dyn Task, split: Split, n: u64, seed: u64) -> Vec<(f64, f64)> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|i| {
                let p = task.prompt(split, i);
                let a = task.demonstrate(&p, &mut rng);
                let b = task.demonstrate(&p, &mut rng);
                (
                    task.gold(&p, &with_eos(&a)).total,
                    task.gold(&p, &with_eos(&b)).total,
                )
            })
            .collect()
    }

    /// Of two responses, the labeller's scorer ranks the first higher as often as the labeller
    /// prefers it: within 0.02 of `σ((g_a − g_b)/τ)` over 4,000 draws of each of three pairs, each
    /// in a call of other texts; a call repeated draws the same.
    #[test]
    fn the_scorer_ranks_two_responses_as_the_labeller_prefers_them() {
        use rlhf_base::Scorer;
        let task = TldrSynth::default();
        let labeller = Labeller { tau: 0.4 };
        let scorer = LabellerScorer::new(&task, labeller, 3);
        let p = task.prompt(Split::Train, 0);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let (a, b) = (
            with_eos(&task.demonstrate(&p, &mut rng)),
            with_eos(&task.reference(&p)),
        );
        let mut checked = 0;
        for (x, y) in [(&a, &b), (&b, &a), (&a, &a)] {
            let (gx, gy) = (task.gold(&p, x).total, task.gold(&p, y).total);
            let draws = 4000;
            let mut first = 0;
            for i in 0..draws {
                // a call of other texts (another round) draws afresh; the same call, again
                let other = i.to_string();
                let s = scorer.score(&[&p, &p, &p], &[x, y, &other]).unwrap();
                assert_eq!(s, scorer.score(&[&p, &p, &p], &[x, y, &other]).unwrap());
                first += usize::from(s[0] > s[1]);
            }
            let expected = labeller.prob_prefers_first(gx, gy);
            let seen = first as f64 / draws as f64;
            assert!(
                (seen - expected).abs() < 0.02,
                "{gx} vs {gy}: {seen} against {expected}"
            );
            checked += usize::from((gx - gy).abs() > 0.1);
        }
        assert_eq!(checked, 2, "the pairs differ in gold");
    }

    #[test]
    fn calibrated_labeller_agrees_with_gold_within_two_points_on_10k_fresh_pairs() {
        let task = TldrSynth::default();
        let target = 0.73;
        let labeller =
            Labeller::calibrate(&sft_like_pairs(&task, Split::Train, 2000, 1), target).unwrap();
        // fresh prompts and samples from another split
        let pairs = sft_like_pairs(&task, Split::Eval, 10_000, 2);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (mut agree, mut counted) = (0usize, 0usize);
        for (a, b) in &pairs {
            if (a - b).abs() > 1e-12 {
                counted += 1;
                agree += usize::from(labeller.prefers_first(*a, *b, &mut rng) == (a > b));
            }
        }
        let rate = agree as f64 / counted as f64;
        assert!(counted > 3000, "too few differing pairs: {counted}");
        assert!(
            (rate - target).abs() < 0.02,
            "agreement {rate:.4} (τ = {:.4})",
            labeller.tau
        );
    }

    #[test]
    fn agreement_falls_with_temperature_and_the_judge_splits_ties() {
        let pairs = [(1.0, 0.0), (0.2, 0.5), (0.3, 0.3)];
        let cold = Labeller { tau: 0.01 }.expected_agreement(&pairs).unwrap();
        let hot = Labeller { tau: 100.0 }.expected_agreement(&pairs).unwrap();
        assert!(cold > 0.99 && (hot - 0.5).abs() < 0.01);
        assert!(Labeller::calibrate(&[(1.0, 1.0)], 0.7).is_none());
        assert_eq!(win_rate(&[1.0, 0.0, 0.5], &[0.0, 1.0, 0.5]), 0.5);
        assert_eq!(win_rate(&[2.0, 2.0], &[1.0, 1.0]), 1.0);
    }
}
