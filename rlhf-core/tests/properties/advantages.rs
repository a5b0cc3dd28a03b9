//! GAE, discounted returns, the group estimators and REINFORCE++.

use proptest::prelude::*;
use rlhf_core::{
    GroupEstimator, batch_normalized, decoupled_group_rewards, discounted_returns, gae,
    group_advantages, reinforce_pp_advantages,
};

use crate::common::*;

/// GAE from `docs/algorithms.md` ("PPO for language models (per token)", step 4), row by row:
/// `δ_t = r_t + γ·V_{t+1}·m_{t+1} − V_t`, `A_t = δ_t + γλ·A_{t+1}` backwards over the real
/// tokens, `V` past the end = 0, `R = A + V`.
fn gae_ref(
    r: &[f64],
    v: &[f64],
    m: &[bool],
    seq: usize,
    gamma: f64,
    lambda: f64,
) -> (Vec<f64>, Vec<f64>) {
    let mut adv = vec![0.0; r.len()];
    let mut ret = vec![0.0; r.len()];
    for row in 0..r.len() / seq {
        let o = row * seq;
        for t in (0..seq).rev() {
            if !m[o + t] {
                continue;
            }
            let next_real = t + 1 < seq && m[o + t + 1];
            let next_v = if next_real { v[o + t + 1] } else { 0.0 };
            let next_a = if next_real { adv[o + t + 1] } else { 0.0 };
            let delta = r[o + t] + gamma * next_v - v[o + t];
            adv[o + t] = delta + gamma * lambda * next_a;
            ret[o + t] = adv[o + t] + v[o + t];
        }
    }
    (adv, ret)
}

/// `Σ_k γ^k r_{t+k}` over the contiguous run of real tokens starting at t, written as a sum.
fn discounted_sum_ref(r: &[f64], m: &[bool], seq: usize, gamma: f64) -> Vec<f64> {
    (0..r.len())
        .map(|i| {
            if !m[i] {
                return 0.0;
            }
            let (row, t) = (i / seq, i % seq);
            let mut g = 0.0;
            let mut k = 0;
            while t + k < seq && m[row * seq + t + k] {
                g += gamma.powi(k as i32) * r[row * seq + t + k];
                k += 1;
            }
            g
        })
        .collect()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn gae_matches_reference(p in tokens(3.0, 1), gamma in 0.5f64..=1.0, lambda in 0.0f64..=1.0) {
        let dev = device();
        let s = p.shape();
        let out = gae(t2(&p.a, s, &dev), t2(&p.b, s, &dev), t2(&p.maskf(), s, &dev), gamma as f32, lambda as f32);
        let (adv, ret) = gae_ref(&p.a, &p.b, &p.mask, p.seq, gamma, lambda);
        assert_close(&host(out.advantages), &adv, TOL)?;
        assert_close(&host(out.returns), &ret, TOL)?;
    }

    #[test]
    fn gae_with_lambda_zero_is_the_td_error(p in tokens(3.0, 1), gamma in 0.5f64..=1.0) {
        let dev = device();
        let s = p.shape();
        let out = gae(t2(&p.a, s, &dev), t2(&p.b, s, &dev), t2(&p.maskf(), s, &dev), gamma as f32, 0.0);
        let td: Vec<f64> = (0..p.a.len()).map(|i| {
            if !p.mask[i] { return 0.0; }
            let next = if (i % p.seq) + 1 < p.seq && p.mask[i + 1] { p.b[i + 1] } else { 0.0 };
            p.a[i] + gamma * next - p.b[i]
        }).collect();
        assert_close(&host(out.advantages), &td, TOL)?;
    }

    #[test]
    fn gae_with_lambda_one_and_zero_values_is_the_discounted_return(p in tokens(3.0, 1), gamma in 0.5f64..=1.0) {
        let dev = device();
        let s = p.shape();
        let zeros = vec![0.0; p.a.len()];
        let out = gae(t2(&p.a, s, &dev), t2(&zeros, s, &dev), t2(&p.maskf(), s, &dev), gamma as f32, 1.0);
        let expected = discounted_sum_ref(&p.a, &p.mask, p.seq, gamma);
        assert_close(&host(out.advantages), &expected, TOL)?;
        let direct = discounted_returns(t2(&p.a, s, &dev), t2(&p.maskf(), s, &dev), gamma as f32);
        assert_close(&host(direct), &expected, TOL)?;
    }

    #[test]
    fn masked_rewards_and_values_never_change_gae(p in tokens(3.0, 1), gamma in 0.5f64..=1.0, lambda in 0.0f64..=1.0) {
        let dev = device();
        let s = p.shape();
        let m = t2(&p.maskf(), s, &dev);
        let clean = gae(t2(&p.a, s, &dev), t2(&p.b, s, &dev), m.clone(), gamma as f32, lambda as f32);
        let dirty = gae(t2(&p.corrupt(&p.a), s, &dev), t2(&p.corrupt(&p.b), s, &dev), m.clone(), gamma as f32, lambda as f32);
        prop_assert_eq!(host(clean.advantages), host(dirty.advantages));
        prop_assert_eq!(host(clean.returns), host(dirty.returns));
        let r1 = reinforce_pp_advantages(t2(&p.a, s, &dev), m.clone(), gamma as f32);
        let r2 = reinforce_pp_advantages(t2(&p.corrupt(&p.a), s, &dev), m, gamma as f32);
        prop_assert_eq!(host(r1), host(r2));
    }

    #[test]
    fn reinforce_pp_is_whitened_discounted_return(p in tokens(3.0, 2), gamma in 0.5f64..=1.0) {
        let g = discounted_sum_ref(&p.a, &p.mask, p.seq, gamma);
        let real: Vec<f64> = g.iter().zip(&p.mask).filter(|(_, m)| **m).map(|(x, _)| *x).collect();
        let n = real.len() as f64;
        let mu = real.iter().sum::<f64>() / n;
        let var = real.iter().map(|x| (x - mu).powi(2)).sum::<f64>() / (n - 1.0);
        prop_assume!(var > 1e-2);
        let expected: Vec<f64> = g.iter().zip(&p.mask).map(|(x, &m)| if m { (x - mu) / (var + 1e-8).sqrt() } else { 0.0 }).collect();
        let dev = device();
        let got = reinforce_pp_advantages(t2(&p.a, p.shape(), &dev), t2(&p.maskf(), p.shape(), &dev), gamma as f32);
        assert_close(&host(got), &expected, 1e-3)?;
    }

    #[test]
    fn group_estimators_match_reference(groups in 1usize..=4, n in 2usize..=6, seed in prop::collection::vec(-3.0f64..3.0, 24)) {
        let s: Vec<f64> = seed[..groups * n].to_vec();
        let dev = device();
        let all_mean = s.iter().sum::<f64>() / s.len() as f64;
        let batch_std = (s.iter().map(|x| (x - all_mean).powi(2)).sum::<f64>() / (s.len() as f64 - 1.0)).sqrt();
        for est in [GroupEstimator::Rloo, GroupEstimator::Grpo, GroupEstimator::DrGrpo, GroupEstimator::GrpoBatch] {
            let got = host(group_advantages(t1(&s, &dev), n, est).unwrap());
            let mut expected = Vec::new();
            for g in s.chunks(n) {
                let mean = g.iter().sum::<f64>() / n as f64;
                let std = (g.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n as f64 - 1.0)).sqrt();
                for (i, &si) in g.iter().enumerate() {
                    let others = g.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, x)| x).sum::<f64>() / (n as f64 - 1.0);
                    expected.push(match est {
                        GroupEstimator::Rloo => si - others,
                        GroupEstimator::Grpo => (si - mean) / (std + 1e-4),
                        GroupEstimator::DrGrpo => si - mean,
                        GroupEstimator::GrpoBatch => (si - mean) / (batch_std + 1e-4),
                    });
                }
            }
            // GRPO divides by a std that can be small: compare with a relative tolerance.
            assert_close(&got, &expected, 1e-3)?;
            // every estimator's advantages sum to 0 within each group
            for g in got.chunks(n) {
                prop_assert!(g.iter().sum::<f64>().abs() < 1e-3 * n as f64 * (1.0 + g.iter().map(|x| x.abs()).fold(0.0, f64::max)));
            }
        }
    }
}

proptest! {
    #![proptest_config(config())]

    /// TRL RLOO's `normalize_advantages`: `(A − mean)/(sample std + 1e−4)` over the batch, with
    /// mean 0 and, where the spread is far above 1e−4, a sample standard deviation of 1.
    #[test]
    fn batch_normalized_advantages_match_reference(a in prop::collection::vec(-5.0f64..5.0, 2..24)) {
        let n = a.len() as f64;
        let mean = a.iter().sum::<f64>() / n;
        let std = (a.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
        let expected: Vec<f64> = a.iter().map(|x| (x - mean) / (std + 1e-4)).collect();
        let got = host(batch_normalized(t1(&a, &device())));
        assert_close(&got, &expected, 1e-4)?;
        prop_assert!(got.iter().sum::<f64>().abs() < 1e-3 * n);
        if std > 0.1 {
            let spread = (got.iter().map(|x| x * x).sum::<f64>() / (n - 1.0)).sqrt();
            prop_assert!((spread - 1.0).abs() < 2e-3, "{spread}");
        }
    }
}

/// A batch of one has no sample standard deviation: its normalised advantage is 0 (TRL's NaN,
/// zeroed).
#[test]
fn a_batch_of_one_normalises_to_zero() {
    assert_eq!(host(batch_normalized(t1(&[3.0], &device()))), vec![0.0]);
}

#[test]
fn group_estimators_refuse_what_is_undefined() {
    let dev = device();
    assert!(group_advantages(t1(&[1.0, 2.0, 3.0], &dev), 2, GroupEstimator::Rloo).is_err());
    assert!(group_advantages(t1(&[1.0, 2.0], &dev), 1, GroupEstimator::Grpo).is_err());
    let dr = host(group_advantages(t1(&[1.0, 2.0], &dev), 1, GroupEstimator::DrGrpo).unwrap());
    assert_eq!(dr, vec![0.0, 0.0]);
}

#[test]
fn score_lands_on_the_last_real_token_of_a_right_padded_response() {
    // Rewards: only the last real token has the score; GAE (λ=1, γ=1, V=0) spreads it backwards
    // over the response and never onto padding.
    let dev = device();
    let m = mask_f(&right_padded(2, 4, &[2, 4]));
    let r = [0.0, 5.0, 0.0, 0.0, 0.0, 0.0, 0.0, 7.0];
    let out = gae(
        t2(&r, [2, 4], &dev),
        t2(&[0.0; 8], [2, 4], &dev),
        t2(&m, [2, 4], &dev),
        1.0,
        1.0,
    );
    assert_eq!(
        host(out.advantages),
        vec![5.0, 5.0, 0.0, 0.0, 7.0, 7.0, 7.0, 7.0]
    );
}

proptest! {
    #![proptest_config(config())]

    /// Where the papers say the group estimators coincide, they do: RLOO's leave-one-out
    /// baseline is Dr.GRPO's group mean rescaled, `A_RLOO = n/(n−1)·A_DrGRPO`; GRPO is Dr.GRPO
    /// divided by the group's standard deviation (+1e−4); a group of equal scores gets no
    /// advantage from any of them.
    #[test]
    fn rloo_grpo_and_dr_grpo_reduce_to_each_other(groups in 1usize..=4, n in 2usize..=6, seed in prop::collection::vec(-3.0f64..3.0, 24), flat in -2.0f64..2.0) {
        let dev = device();
        let s: Vec<f64> = seed[..groups * n].to_vec();
        let adv = |est| host(group_advantages(t1(&s, &dev), n, est).unwrap());
        let (rloo, grpo, dr) = (adv(GroupEstimator::Rloo), adv(GroupEstimator::Grpo), adv(GroupEstimator::DrGrpo));
        let scale = n as f64 / (n as f64 - 1.0);
        assert_close(&rloo, &dr.iter().map(|a| a * scale).collect::<Vec<_>>(), 1e-4)?;
        for g in 0..groups {
            let row = &s[g * n..(g + 1) * n];
            let mean = row.iter().sum::<f64>() / n as f64;
            let std = (row.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n as f64 - 1.0)).sqrt();
            let expected: Vec<f64> = dr[g * n..(g + 1) * n].iter().map(|a| a / (std + 1e-4)).collect();
            assert_close(&grpo[g * n..(g + 1) * n], &expected, 1e-3)?;
        }
        // one group: the batch's std is the group's, so GRPO and its batch scaling agree
        if groups == 1 {
            assert_close(&adv(GroupEstimator::GrpoBatch), &grpo, 1e-4)?;
        }
        let equal = vec![flat; groups * n];
        for est in [GroupEstimator::Rloo, GroupEstimator::Grpo, GroupEstimator::DrGrpo, GroupEstimator::GrpoBatch] {
            let a = host(group_advantages(t1(&equal, &dev), n, est).unwrap());
            prop_assert!(a.iter().all(|x| x.abs() < 1e-5), "{:?}: {:?}", est, a);
        }
    }
}

/// The mean and the sample (Bessel) standard deviation, as TRL's `nanmean` and `nanstd`.
fn mean_std(v: &[f64]) -> (f64, f64) {
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len() as f64 - 1.0);
    (mean, var.sqrt())
}

/// GDPO's advantages as TRL's `GRPOTrainer` computes them with `multi_objective_aggregation =
/// "normalize_then_sum"`: each reward function normalised within each group, `(s − mean_g)/(std_g
/// + 1e−4)`, summed with the weights, then `(r − mean_B r)/(std_B r + 1e−4)` over the batch.
fn gdpo_ref(parts: &[Vec<f64>], weights: &[f64], n: usize) -> Vec<f64> {
    let len = parts[0].len();
    let mut r = vec![0.0; len];
    for (part, w) in parts.iter().zip(weights) {
        for (g, group) in part.chunks(n).enumerate() {
            let (mean, std) = mean_std(group);
            for (i, x) in group.iter().enumerate() {
                r[g * n + i] += w * (x - mean) / (std + 1e-4);
            }
        }
    }
    let (mean, std) = mean_std(&r);
    r.iter().map(|x| (x - mean) / (std + 1e-4)).collect()
}

/// `decoupled_group_rewards` then the batch-scaled group estimator, as the trainer runs them.
fn gdpo(parts: &[Vec<f64>], weights: &[f64], n: usize) -> Vec<f64> {
    let dev = device();
    let flat: Vec<f64> = parts.concat();
    let w: Vec<f32> = weights.iter().map(|&w| w as f32).collect();
    let r = decoupled_group_rewards(t2(&flat, [parts.len(), parts[0].len()], &dev), &w, n).unwrap();
    host(group_advantages(r, n, GroupEstimator::GrpoBatch).unwrap())
}

proptest! {
    #![proptest_config(config())]

    /// GDPO's normalisation against TRL's formula, for one to three reward functions with
    /// weights of either sign.
    #[test]
    fn gdpo_matches_trls_normalize_then_sum(
        k in 1usize..=3,
        groups in 1usize..=4,
        n in 2usize..=6,
        values in prop::collection::vec(-3.0f64..3.0, 72),
        weights in prop::collection::vec(-2.0f64..2.0, 3),
    ) {
        let len = groups * n;
        let parts: Vec<Vec<f64>> = (0..k).map(|i| values[i * 24..i * 24 + len].to_vec()).collect();
        let got = gdpo(&parts, &weights[..k], n);
        assert_close(&got, &gdpo_ref(&parts, &weights[..k], n), 1e-3)?;
        prop_assert!(got.iter().all(|a| a.is_finite()));
    }

    /// What GDPO is for: a reward function's scale and offset do not change the advantages, so
    /// one on a larger scale does not drown the others (up to the `1e−4` beside each group's
    /// standard deviation: the rewards here are whole numbers, as accuracy and format rewards
    /// are, so a group that is not constant has a spread of at least `1/√6`).
    #[test]
    fn gdpo_ignores_each_reward_functions_scale_and_offset(
        groups in 1usize..=4,
        n in 2usize..=6,
        values in prop::collection::vec(0u8..=3, 48),
        weights in prop::collection::vec(0.1f64..2.0, 2),
        scale in 1.0f64..1000.0,
        offset in -100.0f64..100.0,
    ) {
        let len = groups * n;
        let part = |i: usize| values[i * 24..i * 24 + len].iter().map(|&v| f64::from(v)).collect::<Vec<f64>>();
        let parts = vec![part(0), part(1)];
        let stretched = vec![parts[0].iter().map(|x| x * scale + offset).collect(), parts[1].clone()];
        assert_close(&gdpo(&stretched, &weights, n), &gdpo(&parts, &weights, n), 1e-3)?;
    }
}

/// Where the `1e−4` goes: beside each group's standard deviation. A group `[0, 1e−4]` has a
/// spread of `1e−4/√2`, so each function's normalised scores are `∓(1e−4/2)/(1e−4/√2 + 1e−4)
/// = ∓0.2929` (without the `1e−4`, `∓0.7071`); two such groups of one function give the batch
/// the same values twice, whose spread is `0.3381`.
#[test]
fn gdpo_puts_its_epsilon_beside_each_spread() {
    let parts = vec![vec![0.0, 1e-4, 0.0, 1e-4]];
    let got = gdpo(&parts, &[1.0], 2);
    let group = 0.5e-4 / (1e-4 / 2f64.sqrt() + 1e-4);
    assert!((group - 0.2929).abs() < 1e-4);
    let r = [-group, group, -group, group];
    assert_close(&got, &gdpo_ref(&parts, &[1.0], 2), 1e-3).unwrap();
    let spread = (r.iter().map(|x| x * x).sum::<f64>() / 3.0).sqrt();
    let want: Vec<f64> = r.iter().map(|x| x / (spread + 1e-4)).collect();
    assert_close(&got, &want, 1e-3).unwrap();
}

#[test]
fn gdpo_needs_one_weight_per_reward_function() {
    let dev = device();
    let parts = t2(&[1.0, 2.0, 3.0, 4.0], [2, 2], &dev);
    assert!(decoupled_group_rewards(parts.clone(), &[1.0], 2).is_err());
    assert!(decoupled_group_rewards(parts.clone(), &[1.0, 1.0], 1).is_err());
    assert!(decoupled_group_rewards(parts, &[1.0, 1.0], 2).is_ok());
}
