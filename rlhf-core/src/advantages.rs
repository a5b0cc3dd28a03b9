//! Advantage estimators: GAE (PPO with a critic), discounted returns, the group estimators over
//! `n` samples of one prompt (RLOO, GRPO, Dr.GRPO) and REINFORCE++.
//!
//! Per-token inputs are `[batch, seq]` with a response mask of the same shape. Outputs are 0 at
//! masked positions, and nothing at a masked position (reward, value) can change any output.
//!
//! GAE and discounted returns are recursions backwards in time. They run on the host over the
//! `[batch, seq]` values: one device→host→device round trip instead of `seq` small kernel launches,
//! and the code reads exactly like the formula.

use burn::tensor::Tensor;

use crate::host::{tensor_from_f32, to_f32_vec as host};
use serde::{Deserialize, Serialize};

use crate::masked::{whiten, zero_masked};
use crate::{Error, Result};

/// Advantages and returns from [`gae`], both `[batch, seq]`.
#[derive(Debug, Clone)]
pub struct Gae {
    /// `A_t`, 0 at masked positions.
    pub advantages: Tensor<2>,
    /// `R_t = A_t + V_t`, the value target; 0 at masked positions.
    pub returns: Tensor<2>,
}

/// Generalised advantage estimation (Schulman et al. 2016), per token.
///
/// `δ_t = r_t + γ·V_{t+1}·m_{t+1} − V_t`, `A_t = m_t·(δ_t + γλ·m_{t+1}·A_{t+1})`, computed backwards;
/// `V` past the end of the sequence is 0, and `R_t = A_t + V_t` on real tokens.
///
/// - `rewards`, `values`, `mask`: `[batch, seq]`.
/// - `gamma`: discount γ (1.0 in the TL;DR reproduction); `lambda`: λ (0.95).
///
/// With λ = 0, `A_t` is the TD error `δ_t`; with λ = 1 and `V = 0`, it is the discounted return.
pub fn gae(rewards: Tensor<2>, values: Tensor<2>, mask: Tensor<2>, gamma: f32, lambda: f32) -> Gae {
    let device = rewards.device();
    let [batch, seq] = rewards.dims();
    let r = host(rewards);
    let v = host(values);
    let m = host(mask);
    let mut adv = vec![0f32; batch * seq];
    let mut ret = vec![0f32; batch * seq];
    for b in 0..batch {
        let row = b * seq;
        let mut next_value = 0.0; // V_{t+1}·m_{t+1}
        let mut next_adv = 0.0; // m_{t+1}·A_{t+1}
        for t in (0..seq).rev() {
            let i = row + t;
            if m[i] > 0.5 {
                let delta = r[i] + gamma * next_value - v[i];
                adv[i] = delta + gamma * lambda * next_adv;
                ret[i] = adv[i] + v[i];
                next_value = v[i];
                next_adv = adv[i];
            } else {
                next_value = 0.0;
                next_adv = 0.0;
            }
        }
    }
    Gae {
        advantages: tensor_from_f32(adv, [batch, seq], &device),
        returns: tensor_from_f32(ret, [batch, seq], &device),
    }
}

/// Discounted returns `G_t = m_t·(r_t + γ·m_{t+1}·G_{t+1})`, computed backwards.
///
/// `rewards`, `mask`: `[batch, seq]`; returns `[batch, seq]`, 0 at masked positions.
pub fn discounted_returns(rewards: Tensor<2>, mask: Tensor<2>, gamma: f32) -> Tensor<2> {
    let device = rewards.device();
    let [batch, seq] = rewards.dims();
    let r = host(rewards);
    let m = host(mask);
    let mut out = vec![0f32; batch * seq];
    for b in 0..batch {
        let mut next = 0.0;
        for t in (0..seq).rev() {
            let i = b * seq + t;
            next = if m[i] > 0.5 { r[i] + gamma * next } else { 0.0 };
            out[i] = next;
        }
    }
    tensor_from_f32(out, [batch, seq], &device)
}

/// REINFORCE++ advantages: discounted returns of the per-token (KL-penalised) rewards, whitened
/// over every real token of the batch (mean shift and scale). No critic.
///
/// `rewards`, `mask`: `[batch, seq]`; returns `[batch, seq]`.
pub fn reinforce_pp_advantages(rewards: Tensor<2>, mask: Tensor<2>, gamma: f32) -> Tensor<2> {
    let returns = discounted_returns(rewards, mask.clone(), gamma);
    whiten(returns, mask, true)
}

/// The group (critic-free) advantage estimators over `n` samples of one prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupEstimator {
    /// RLOO: `A_i = s_i − mean_{j≠i} s_j` (Ahmadian et al. 2024).
    Rloo,
    /// GRPO: `A_i = (s_i − mean_j s_j) / (std_j s_j + 1e−4)`, with the sample (Bessel) standard
    /// deviation, as TRL's `.std()` (Shao et al. 2024).
    Grpo,
    /// Dr. GRPO: `A_i = s_i − mean_j s_j`, without the division (Liu et al. 2025).
    DrGrpo,
    /// GRPO scaled by the batch: `A_i = (s_i − mean_j s_j) / (std_B + 1e−4)`, the group's mean
    /// subtracted and the sample standard deviation of every score of the batch dividing (TRL's
    /// `scale_rewards = "batch"`, the "group mean, batch std" of Liu et al. 2025, "Tricks or
    /// Traps?").
    GrpoBatch,
}

/// Sequence-level advantages of `scores` grouped by prompt.
///
/// `scores`: `[groups · n]`, prompt-major (the `n` samples of a prompt are contiguous).
/// Returns `[groups · n]`. RLOO and GRPO need `n ≥ 2` (a leave-one-out mean and a sample standard
/// deviation are undefined for one sample); Dr.GRPO accepts `n = 1` and then gives 0.
pub fn group_advantages(
    scores: Tensor<1>,
    n: usize,
    estimator: GroupEstimator,
) -> Result<Tensor<1>> {
    let [len] = scores.dims();
    if n == 0 || len % n != 0 {
        return Err(Error::Shape(format!(
            "{len} scores do not split into groups of n = {n}"
        )));
    }
    if n < 2 && estimator != GroupEstimator::DrGrpo {
        return Err(Error::Config(format!(
            "{estimator:?} needs at least 2 samples per prompt, got n = {n}"
        )));
    }
    let groups = len / n;
    // the batch's spread, of the scores as they are (before the shift below, which is per group)
    let batch_std = (estimator == GroupEstimator::GrpoBatch).then(|| scores.clone().var(0).sqrt());
    // Every formula below is invariant to a shift of the group's scores (the batch's std is taken
    // above); shifting by the group's
    // first score makes a group of equal scores exactly 0 before any mean is taken. (`s − mean`
    // of equal f32 scores is otherwise rounding noise, which GRPO's division by `std + 1e−4`
    // turns into advantages of ~1e−3 where the definition gives 0.)
    let s: Tensor<2> = scores.reshape([groups, n]);
    let s = s.clone().sub(s.narrow(1, 0, 1));
    let mean = s.clone().mean_dim(1);
    let adv = match estimator {
        GroupEstimator::Rloo => {
            let others_mean = s
                .clone()
                .sum_dim(1)
                .sub(s.clone())
                .div_scalar((n - 1) as f32);
            s.sub(others_mean)
        }
        GroupEstimator::Grpo => {
            let std = s.clone().var(1).sqrt();
            s.sub(mean).div(std.add_scalar(1e-4))
        }
        GroupEstimator::DrGrpo => s.sub(mean),
        GroupEstimator::GrpoBatch => {
            let std = batch_std.expect("taken above for this estimator");
            let std = std.add_scalar(1e-4).reshape([1, 1]).expand([groups, n]);
            s.sub(mean).div(std)
        }
    };
    Ok(adv.reshape([len]))
}

/// Sequence-level advantages normalised over the batch (TRL RLOO's `normalize_advantages`):
/// `(A_i − mean_B A)/(std_B A + 1e−4)`, with the sample (Bessel) standard deviation, as TRL's
/// `nanstd`. `advantages`: `[B]`; returns `[B]`. A batch of one has no sample standard deviation
/// and gives 0 (TRL's NaN, which it zeroes).
pub fn batch_normalized(advantages: Tensor<1>) -> Tensor<1> {
    let [len] = advantages.dims();
    if len < 2 {
        return advantages.zeros_like();
    }
    let mean = advantages.clone().mean().expand([len]);
    let std = advantages
        .clone()
        .var(0)
        .sqrt()
        .add_scalar(1e-4)
        .expand([len]);
    advantages.sub(mean).div(std)
}

/// GDPO's decoupled rewards (Liu et al. 2026, "GDPO: Group reward-Decoupled Normalization Policy
/// Optimization for Multi-reward RL Optimization"; TRL's `multi_objective_aggregation =
/// "normalize_then_sum"`): each reward function's scores normalised within their group as GRPO
/// normalises one reward, then summed with the functions' weights,
///
/// `r_i = Σ_k w_k·(s_{k,i} − mean_g s_k)/(std_g s_k + 1e−4)`,
///
/// the standard deviation the sample (Bessel) one, as in [`GroupEstimator::Grpo`]. Each function
/// enters with unit spread per group whatever its scale, so one on a larger scale no longer
/// drowns the others. The advantages are then `r` over the batch's spread
/// ([`GroupEstimator::GrpoBatch`]): `r` has mean 0 in every group, so centring on the group, as
/// that estimator does, or on the batch, as GDPO does, is the same.
///
/// `parts`: `[k, groups · n]`, one row per reward function, prompt-major; `weights`: one per row.
/// Returns `[groups · n]`. Needs `n ≥ 2`.
pub fn decoupled_group_rewards(parts: Tensor<2>, weights: &[f32], n: usize) -> Result<Tensor<1>> {
    let [k, len] = parts.dims();
    if k == 0 || weights.len() != k {
        return Err(Error::Shape(format!(
            "{k} reward functions' scores with {} weights",
            weights.len()
        )));
    }
    let mut sum: Option<Tensor<1>> = None;
    for (i, &w) in weights.iter().enumerate() {
        let part: Tensor<1> = parts.clone().narrow(0, i, 1).reshape([len]);
        let normalised = group_advantages(part, n, GroupEstimator::Grpo)?.mul_scalar(w);
        sum = Some(match sum {
            Some(s) => s.add(normalised),
            None => normalised,
        });
    }
    Ok(sum.expect("at least one reward function"))
}

/// Places one sequence-level value per row on every real token of the row: `out[b, t] = x[b]·m[b, t]`.
///
/// `x`: `[batch]`, `mask`: `[batch, seq]`; returns `[batch, seq]`. This is how RLOO and GRPO
/// advantages enter the per-token PPO loss.
pub fn broadcast_to_tokens(x: Tensor<1>, mask: Tensor<2>) -> Tensor<2> {
    let [batch] = x.dims();
    let per_row: Tensor<2> = x.reshape([batch, 1]);
    zero_masked(per_row.expand(mask.dims()), mask)
}
