//! The clipped PPO losses for language models, per token (Schulman et al. 2017; the TL;DR
//! reproduction's formulation), with their diagnostics.

use burn::tensor::Tensor;

use crate::masked::masked_mean;
use crate::policy_loss::{PolicyLoss, PolicyLossConfig, policy_loss};

/// PPO's clipped policy loss: [`policy_loss`] with the symmetric clip and the token mean.
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
/// The old log-probs and the advantages are constants of the surrogate: they are detached, so no
/// gradient reaches whatever computed them (a critic's values inside the advantages, say).
pub fn clipped_policy_loss(
    logprobs: Tensor<2>,
    old_logprobs: Tensor<2>,
    advantages: Tensor<2>,
    mask: Tensor<2>,
    clip_eps: f32,
) -> PolicyLoss {
    policy_loss(
        logprobs,
        old_logprobs,
        advantages,
        mask,
        None,
        &PolicyLossConfig::ppo(clip_eps),
    )
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
