//! Step 2–3 of the PPO recipe: the missing-EOS penalty and the per-token rewards
//! `r_t = −β·kl_t` on every response token plus the score on the last real token; and what
//! reshapes the scores before they enter the rewards: DAPO's overlong punishment, ChatGLM-RLHF's
//! variance reduction, GDPO's decoupled normalisation.

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use rlhf_core::zero_masked;

/// Per-token rewards and their KL part, both `[batch, seq]` and 0 at masked positions.
#[derive(Debug, Clone)]
pub struct TokenRewards {
    /// `r_t`: `−β·kl_t` plus, on the last real token, the score.
    pub rewards: Tensor<2>,
    /// `−β·kl_t` alone (logged as `objective/non_score_reward`).
    pub non_score: Tensor<2>,
}

/// A one-hot `[batch, seq]` marking the last position where `mask` is 1 in each row (all zeros for
/// a row with no real token).
///
/// This is where the score goes. Taking `sum(mask) − 1` as the index would be wrong for a mask
/// that does not start at position 0, and reading "the last column" would put the score on a pad
/// token when a response stops early — a bug other implementations have had.
pub fn last_token_one_hot(mask: Tensor<2>) -> Tensor<2> {
    let [batch, seq] = mask.dims();
    let device = mask.device();
    let positions = Tensor::<1, Int>::arange(1..seq as i64 + 1, &device)
        .float()
        .reshape([1, seq])
        .expand([batch, seq]);
    let numbered = zero_masked(positions.clone(), mask.clone()); // t+1 on real tokens, 0 elsewhere
    let last = numbered.max_dim(1); // [batch, 1]
    let is_last: Tensor<2, Bool> = positions.equal(last.expand([batch, seq]));
    zero_masked(is_last.float(), mask)
}

/// Per-token rewards for PPO and REINFORCE++ (`docs/algorithms.md`, "PPO for language models
/// (per token)", step 3).
///
/// - `scores`: `[batch]` sequence-level scores (after [`apply_missing_eos_penalty`] and any
///   normalisation);
/// - `kl`: `[batch, seq]` per-token KL estimates (from `rlhf_core::kl_estimate`);
/// - `mask`: `[batch, seq]` response mask (1 up to and including EOS, 0 after);
/// - `kl_coef`: β.
pub fn per_token_rewards(
    scores: Tensor<1>,
    kl: Tensor<2>,
    mask: Tensor<2>,
    kl_coef: f32,
) -> TokenRewards {
    let [batch, seq] = mask.dims();
    let non_score = zero_masked(kl.mul_scalar(-kl_coef), mask.clone());
    let score_at_end =
        last_token_one_hot(mask).mul(scores.reshape([batch, 1]).expand([batch, seq]));
    TokenRewards {
        rewards: non_score.clone().add(score_at_end),
        non_score,
    }
}

/// TL;DR detail 4: a response with no EOS gets `penalty` instead of its score.
///
/// `scores` and `has_eos` are `[batch]`; scores are host values (they come from a `Scorer`).
pub fn apply_missing_eos_penalty(scores: &mut [f32], has_eos: &[bool], penalty: f32) {
    for (s, &eos) in scores.iter_mut().zip(has_eos) {
        if !eos {
            *s = penalty;
        }
    }
}

/// DAPO's soft overlong punishment of a response of `length` tokens under the limit `max_len`
/// (`L_max`), with `buffer` (`L_cache`) and `penalty` (the value at the limit):
///
/// `R_length = 0` for `|y| ≤ L_max − L_cache`, `−penalty·(|y| − (L_max − L_cache))/L_cache` up
/// to `|y| = L_max`, and `−penalty` beyond (a response the sampler cut at the limit).
/// It is added to the score.
pub fn overlong_penalty(length: usize, max_len: usize, buffer: usize, penalty: f32) -> f32 {
    let free = max_len.saturating_sub(buffer);
    if length <= free {
        return 0.0;
    }
    let excess = (length - free) as f64 / buffer.max(1) as f64;
    -(f64::from(penalty) * excess.min(1.0)) as f32
}

/// Reward variance reduction (ChatGLM-RLHF), applied to the scores in place before they enter
/// the reward, each step only when `cfg` turns it on:
///
/// 1. `score_baseline`: subtract from each score the mean score of its prompt's
///    `samples_per_prompt` samples (the scores are prompt-major), so each prompt's scores have
///    mean 0;
/// 2. `length_bucket_width = w`: responses whose lengths share `⌊len / w⌋` form a bucket; scores
///    are standardised within their bucket (`(s − mean) / (std + 1e−6)`; a bucket of one gets 0).
///
/// Returns the share of the variance removed, `1 − var(after) / var(before)`, when a step ran
/// (`None` when both are off; 0 for scores without variance).
pub fn reduce_score_variance(
    scores: &mut [f32],
    lengths: &[usize],
    cfg: &crate::PpoConfig,
) -> Option<f64> {
    if !cfg.score_baseline && cfg.length_bucket_width.is_none() {
        return None;
    }
    // mean and variance in f64: two nearly equal scores have a spread near f32's rounding
    let moments = |s: &[f32]| {
        let n = s.len().max(1) as f64;
        let mean = s.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        let var = s
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / n;
        (mean, var)
    };
    let (_, before) = moments(scores);
    if cfg.score_baseline {
        for group in scores.chunks_mut(cfg.samples_per_prompt.max(1)) {
            let mean = group.iter().sum::<f32>() / group.len() as f32;
            group.iter_mut().for_each(|s| *s -= mean);
        }
    }
    if let Some(width) = cfg.length_bucket_width {
        let mut buckets: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
        for (i, &len) in lengths.iter().enumerate().take(scores.len()) {
            buckets.entry(len / width.max(1)).or_default().push(i);
        }
        for members in buckets.values() {
            let values: Vec<f32> = members.iter().map(|&i| scores[i]).collect();
            let (mean, var) = moments(&values);
            let std = var.sqrt();
            for &i in members {
                scores[i] = if members.len() < 2 {
                    0.0
                } else {
                    ((f64::from(scores[i]) - mean) / (std + 1e-6)) as f32
                };
            }
        }
    }
    let (_, after) = moments(scores);
    Some(if before > 0.0 {
        1.0 - after / before
    } else {
        0.0
    })
}

/// GDPO's decoupled rewards of a rollout (`multi_objective_aggregation = normalize_then_sum`,
/// [`rlhf_core::decoupled_group_rewards`]): each reward function's scores (the scorer's parts)
/// normalised within their prompt's `n` samples and summed with their weights. A scorer of one
/// part is its own scores, weighted 1; a scorer whose parts it combines otherwise than by a
/// weighted sum (a mean, a minimum) is refused.
pub fn decoupled_scores(
    scores: &[f32],
    parts: &[(String, Vec<f32>)],
    weights: Option<&[f32]>,
    n: usize,
    device: &Device,
) -> rlhf_core::Result<Vec<f32>> {
    let (values, weights): (Vec<f32>, Vec<f32>) = match (parts, weights) {
        ([], None) => (scores.to_vec(), vec![1.0]),
        (parts, Some(w)) if !parts.is_empty() => (
            parts.iter().flat_map(|(_, v)| v.iter().copied()).collect(),
            w.to_vec(),
        ),
        _ => {
            return Err(rlhf_core::Error::Config(
                "multi_objective_aggregation normalize_then_sum normalises each reward function \
                 of a weighted sum, and the scorer combines its parts otherwise (a mean, a \
                 minimum): use sum(…) with --reward-weights"
                    .into(),
            ));
        }
    };
    let k = weights.len();
    let parts = Tensor::<2>::from_data(TensorData::new(values, [k, scores.len()]), device);
    let r = rlhf_core::decoupled_group_rewards(parts, &weights, n)?;
    Ok(rlhf_core::host::to_f32_vec(r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;
    use proptest::prelude::*;

    fn dev() -> burn::tensor::Device {
        rlhf_core::device_from_env().unwrap()
    }

    /// GDPO reads a weighted sum's parts; a scorer of one part is its own scores, weighted 1
    /// (GRPO's normalisation, then the batch's); a combination that is not a weighted sum is
    /// refused.
    #[test]
    fn decoupled_scores_read_the_parts_of_a_weighted_sum() {
        let d = dev();
        let scores = [1.0, 3.0, 0.0, 0.0];
        let one = decoupled_scores(&scores, &[], None, 2, &d).unwrap();
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-3);
        // (1 − 2)/(√2 + 1e−4) and its opposite; an equal group gives 0
        let s = 1.0 / (2f32.sqrt() + 1e-4);
        assert!(close(&one, &[-s, s, 0.0, 0.0]), "{one:?}");
        let parts = vec![
            ("a".to_string(), vec![1.0, 3.0, 5.0, 5.0]),
            ("b".to_string(), vec![0.0, 1.0, 1.0, 0.0]),
        ];
        let two = decoupled_scores(&scores, &parts, Some(&[1.0, -2.0]), 2, &d).unwrap();
        assert!(
            close(&two, &[-s + 2.0 * s, s - 2.0 * s, -2.0 * s, 2.0 * s]),
            "{two:?}"
        );
        let err = decoupled_scores(&scores, &parts, None, 2, &d).unwrap_err();
        assert!(err.to_string().contains("weighted sum"), "{err}");
    }
    use rlhf_core::host::to_f32_vec as host;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Reference: r[b,t] = −β·kl[b,t]·m[b,t], plus s[b] at the last t with m[b,t] = 1.
        #[test]
        fn rewards_put_the_score_on_the_last_real_token(
            rows in prop::collection::vec((0usize..7, -3.0f32..3.0), 1..5),
            kl in prop::collection::vec(-2.0f32..2.0, 35),
            junk in prop::collection::vec(-100.0f32..100.0, 35),
            beta in 0.0f32..0.5,
        ) {
            let seq = 7;
            let batch = rows.len();
            let mask: Vec<f32> = rows.iter().flat_map(|(len, _)| (0..seq).map(move |t| if t < *len { 1.0 } else { 0.0 })).collect();
            let kl: Vec<f32> = (0..batch * seq).map(|i| if mask[i] > 0.0 { kl[i] } else { junk[i] }).collect();
            let scores: Vec<f32> = rows.iter().map(|r| r.1).collect();
            let d = dev();
            let out = per_token_rewards(
                Tensor::from_data(TensorData::new(scores.clone(), [batch]), &d),
                Tensor::from_data(TensorData::new(kl.clone(), [batch, seq]), &d),
                Tensor::from_data(TensorData::new(mask.clone(), [batch, seq]), &d),
                beta,
            );
            let got = host(out.rewards);
            for (b, (len, s)) in rows.iter().enumerate() {
                for t in 0..seq {
                    let i = b * seq + t;
                    let mut expected = if t < *len { -beta * kl[i] } else { 0.0 };
                    if *len > 0 && t == len - 1 { expected += s; }
                    prop_assert!((got[i] - expected).abs() < 1e-5, "row {} t {}: {} vs {}", b, t, got[i], expected);
                }
            }
            let total_score: f32 = got.iter().sum::<f32>() - host(out.non_score).iter().sum::<f32>();
            let expected_total: f32 = rows.iter().filter(|r| r.0 > 0).map(|r| r.1).sum();
            prop_assert!((total_score - expected_total).abs() < 1e-4);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Baseline subtraction leaves each prompt's scores with mean 0 and keeps their
        /// differences; length buckets leave each bucket (of two or more) with mean 0 and std 1;
        /// the variance removed is reported.
        #[test]
        fn variance_reduction_centres_prompts_and_buckets(
            groups in prop::collection::vec(prop::collection::vec((-3.0f32..3.0, 1usize..20), 4), 1..6),
            width in 1usize..8,
        ) {
            let scores: Vec<f32> = groups.iter().flatten().map(|x| x.0).collect();
            let lengths: Vec<usize> = groups.iter().flatten().map(|x| x.1).collect();
            let cfg = crate::PpoConfig { samples_per_prompt: 4, score_baseline: true, ..Default::default() };
            let mut s = scores.clone();
            let removed = reduce_score_variance(&mut s, &lengths, &cfg).unwrap();
            for (g, orig) in s.chunks(4).zip(scores.chunks(4)) {
                prop_assert!(g.iter().sum::<f32>().abs() < 1e-4);
                prop_assert!(((g[0] - g[1]) - (orig[0] - orig[1])).abs() < 1e-4);
            }
            prop_assert!((-1e-6..=1.0 + 1e-6).contains(&removed));

            let cfg = crate::PpoConfig { length_bucket_width: Some(width), ..Default::default() };
            let mut s = scores.clone();
            reduce_score_variance(&mut s, &lengths, &cfg).unwrap();
            let mut buckets: std::collections::BTreeMap<usize, Vec<f32>> = Default::default();
            for (i, &l) in lengths.iter().enumerate() {
                buckets.entry(l / width).or_default().push(s[i]);
            }
            for b in buckets.values() {
                let n = b.len() as f64;
                let mean = b.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
                prop_assert!(mean.abs() < 1e-4);
                let var = b.iter().map(|&x| (f64::from(x) - mean).powi(2)).sum::<f64>() / n;
                prop_assert!(b.len() == 1 || var < 1.0 + 1e-3);
            }
        }
    }

    #[test]
    fn variance_reduction_is_off_by_default() {
        let mut s = vec![1.0, 2.0];
        assert_eq!(
            reduce_score_variance(&mut s, &[1, 2], &crate::PpoConfig::default()),
            None
        );
        assert_eq!(s, vec![1.0, 2.0]);
    }

    #[test]
    fn a_mask_that_starts_late_still_gets_its_score_at_its_end() {
        let d = dev();
        let mask = Tensor::<2>::from_data(TensorData::new(vec![0f32, 1., 1., 0.], [1, 4]), &d);
        assert_eq!(host(last_token_one_hot(mask)), vec![0., 0., 1., 0.]);
    }

    #[test]
    fn missing_eos_gets_the_penalty() {
        let mut s = vec![2f32, 3.];
        apply_missing_eos_penalty(&mut s, &[true, false], -1.0);
        assert_eq!(s, vec![2., -1.]);
    }
}

#[cfg(test)]
mod overlong_tests {
    use super::overlong_penalty;

    /// `R_length` in f64 from DAPO's equation: 0 before the buffer, linear inside it, −1·penalty
    /// at and beyond the limit.
    fn reference(length: usize, max_len: usize, buffer: usize, penalty: f64) -> f64 {
        let (l, lmax, c) = (length as f64, max_len as f64, buffer as f64);
        if l <= lmax - c {
            0.0
        } else if l <= lmax {
            penalty * ((lmax - c) - l) / c
        } else {
            -penalty
        }
    }

    #[test]
    fn overlong_penalty_matches_dapo_equation_at_every_length() {
        for (max_len, buffer, penalty) in [(20, 5, 1.0), (53, 13, 0.5), (8, 8, 2.0), (10, 1, 1.0)] {
            for length in 0..=max_len + 3 {
                let got = f64::from(overlong_penalty(length, max_len, buffer, penalty as f32));
                let want = reference(length, max_len, buffer, penalty);
                assert!(
                    (got - want).abs() < 1e-6,
                    "len {length} of {max_len}, buffer {buffer}: {got} vs {want}"
                );
                assert!(got <= 0.0 && got >= -penalty - 1e-6);
            }
        }
    }
}
