//! DeepSeek-V3.2's off-policy sequence masking (TRL's `off_policy_mask_threshold`): a response
//! that the policy has drifted far from since it was sampled, and whose advantage is negative, is
//! left out of the policy loss. Pushing such a response's probability further down is where
//! off-policy updates do the most harm; responses with a non-negative advantage are always kept.
//!
//! For response `i` with mask `m_{i,t}` and `|y_i| = Σ_t m_{i,t}`, the drift is the mean
//! log-ratio of the sampler against the policy being trained, a sampled estimate of
//! `KL(π_sampler ‖ π_θ)`:
//!
//! `D_i = (1/max(|y_i|, 1))·Σ_t m_{i,t}·(logπ_sampler(y_{i,t}) − logπ_θ(y_{i,t}))`,
//!
//! and token `(i, t)` is kept when `A_{i,t} ≥ 0` or `D_i ≤ δ` (a real token whose difference is
//! NaN counts 0 in the sum, as TRL's `nan_to_num`). `π_θ`'s log-probs are read as they
//! are at each minibatch, so the drift includes the updates made since the rollout (and any
//! difference between the sampler's numbers and the trainer's). The mask multiplies each token's
//! loss before the aggregation, which still divides by every real token, as TRL multiplies it.

use burn::tensor::Tensor;

use crate::masked::{masked_mean_dim, zero_masked};

/// The `[batch, seq]` 0/1 selection of the module documentation: 1 at real tokens that are kept,
/// 0 at dropped and at masked ones. `advantages`, `logprobs` (the policy being trained),
/// `sampler_logprobs` and `mask` are `[batch, seq]`; the selection is a constant (no gradient),
/// and what padded positions hold never reaches it.
pub fn off_policy_mask(
    advantages: Tensor<2>,
    logprobs: Tensor<2>,
    sampler_logprobs: Tensor<2>,
    mask: Tensor<2>,
    threshold: f32,
) -> Tensor<2> {
    let [batch, seq] = logprobs.dims();
    let difference = sampler_logprobs.sub(logprobs.detach());
    // a token the sampler could not score (NaN) is no evidence of drift, as TRL counts it
    let difference = difference.clone().mask_fill(difference.is_nan(), 0.0);
    // a row without real tokens gets NaN here, and only its own (masked) positions read it
    let drift = masked_mean_dim(difference, mask.clone(), 1).expand([batch, seq]);
    let keep = advantages
        .detach()
        .greater_equal_elem(0.0)
        .bool_or(drift.lower_equal_elem(threshold));
    zero_masked(keep.float(), mask)
}
