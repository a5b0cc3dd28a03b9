//! The clipped PPO losses for language models, per token (Schulman et al. 2017; the TL;DR
//! reproduction's formulation), with their diagnostics.

use burn::tensor::Tensor;

use crate::masked::{masked_mean, masked_var};

/// The clipped surrogate policy loss and what to log about it. Every field is shape `[1]`;
/// the diagnostics are detached from the graph.
#[derive(Debug, Clone)]
pub struct PolicyLoss {
    /// `L_pg = masked_mean( max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)) )`.
    pub loss: Tensor<1>,
    /// `½·masked_mean((logπ_new − logπ_old)²)`.
    pub approxkl: Tensor<1>,
    /// Share of real tokens where the clipped term was the larger one (the clip was active).
    pub clipfrac: Tensor<1>,
    /// Masked mean of the ratio `ρ`.
    pub ratio_mean: Tensor<1>,
    /// Masked (unbiased) variance of `ρ`.
    pub ratio_var: Tensor<1>,
}

/// PPO's clipped policy loss.
///
/// - `logprobs`: `[batch, seq]` log-probs of the sampled tokens under the policy being trained
///   (carries the gradient);
/// - `old_logprobs`: `[batch, seq]` the same under the policy that sampled them (detached);
/// - `advantages`: `[batch, seq]` (detached);
/// - `mask`: `[batch, seq]` response mask;
/// - `clip_eps`: ε (0.2).
///
/// `ρ = exp(logπ_new − logπ_old)`, `L = masked_mean( max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)) )`.
///
/// The old log-probs and the advantages are constants of the surrogate: they are detached here,
/// so no gradient reaches whatever computed them (a critic's values inside the advantages, say).
pub fn clipped_policy_loss(
    logprobs: Tensor<2>,
    old_logprobs: Tensor<2>,
    advantages: Tensor<2>,
    mask: Tensor<2>,
    clip_eps: f32,
) -> PolicyLoss {
    let (old_logprobs, advantages) = (old_logprobs.detach(), advantages.detach());
    let log_ratio = logprobs.sub(old_logprobs);
    let ratio = log_ratio.clone().exp();
    let unclipped = advantages.clone().neg().mul(ratio.clone());
    let clipped = advantages
        .neg()
        .mul(ratio.clone().clamp(1.0 - clip_eps, 1.0 + clip_eps));
    let clip_active = clipped.clone().greater(unclipped.clone()).float();
    let loss = masked_mean(unclipped.max_pair(clipped), mask.clone());

    let ratio = ratio.detach();
    PolicyLoss {
        loss,
        approxkl: masked_mean(log_ratio.detach().square(), mask.clone()).mul_scalar(0.5),
        clipfrac: masked_mean(clip_active, mask.clone()),
        ratio_mean: masked_mean(ratio.clone(), mask.clone()),
        ratio_var: masked_var(ratio, mask, true),
    }
}

/// The clipped value loss and its clip fraction, both `[1]`.
#[derive(Debug, Clone)]
pub struct ValueLoss {
    /// `L_v = ½·masked_mean( max((V_new − R)², (V_clip − R)²) )`.
    pub loss: Tensor<1>,
    /// Share of real tokens where the clip moved the value and the clipped error was the larger
    /// one (detached).
    pub clipfrac: Tensor<1>,
}

/// PPO's clipped value loss.
///
/// - `values`: `[batch, seq]` predictions of the critic being trained (carries the gradient);
/// - `old_values`: `[batch, seq]` the critic's predictions at rollout time;
/// - `returns`: `[batch, seq]` targets `R_t`;
/// - `mask`: `[batch, seq]`; `clip_range`: ε_v (0.2).
///
/// `V_clip = V_old + clip(V_new − V_old, −ε_v, ε_v)`, `L_v = ½·masked_mean(max((V_new − R)², (V_clip − R)²))`.
pub fn clipped_value_loss(
    values: Tensor<2>,
    old_values: Tensor<2>,
    returns: Tensor<2>,
    mask: Tensor<2>,
    clip_range: f32,
) -> ValueLoss {
    let change = values.clone().sub(old_values.clone());
    let clipped_values = old_values.add(change.clone().clamp(-clip_range, clip_range));
    let unclipped_err = values.sub(returns.clone()).square();
    let clipped_err = clipped_values.sub(returns).square();
    // Where the clip did not move the value the two errors are equal in exact arithmetic, but
    // `V_old + (V_new − V_old)` can round away from `V_new`; counting only tokens whose change
    // exceeded the clip range keeps rounding noise out of the clip fraction.
    let clip_active = clipped_err
        .clone()
        .greater(unclipped_err.clone())
        .bool_and(change.abs().greater_elem(clip_range))
        .float();
    ValueLoss {
        loss: masked_mean(unclipped_err.max_pair(clipped_err), mask.clone()).mul_scalar(0.5),
        clipfrac: masked_mean(clip_active, mask),
    }
}
