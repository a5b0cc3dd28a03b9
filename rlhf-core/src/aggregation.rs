//! How per-token losses become the one number an optimizer step minimises ("loss aggregation",
//! named as TRL's `GRPOTrainer` names its `loss_type`).
//!
//! With per-token losses `ℓ_{i,t}`, the response mask `m_{i,t}`, `B` responses in the batch,
//! `|y_i| = Σ_t m_{i,t}` and `L_max` the longest response the sampler may produce:
//!
//! | name | `L =` | from |
//! | --- | --- | --- |
//! | `grpo` | `(1/B)·Σ_i (1/max(|y_i|, 1))·Σ_t m_{i,t}·ℓ_{i,t}` | the GRPO paper: each response weighs the same |
//! | `dapo` | `Σ_{i,t} m·ℓ / max(Σ_{i,t} m, 1)` over the optimizer step's batch | DAPO: each token weighs the same |
//! | `bnpo` | `Σ_{i,t} m·ℓ / max(Σ_{i,t} m, 1)` over the micro-batch | BNPO, TRL's per-batch normalisation |
//! | `dr_grpo` | `Σ_{i,t} m·ℓ / (B·L_max)` | Dr. GRPO: a constant, so length carries no bias |
//! | `luspo` | `(1/B)·Σ_i Σ_t m_{i,t}·ℓ_{i,t}` | LUSPO: GSPO's per-response loss scaled by the response's length |
//!
//! `dapo` and `bnpo` differ only under gradient accumulation (several micro-batches per
//! optimizer step, the on-policy trainer's `grad_accum`): there `bnpo` is the mean of the
//! micro-batches' token means. With every response `L_max` tokens long, the first four coincide
//! and `luspo` is `L_max` times them.
//!
//! LUSPO (Liu et al. 2026) pairs `luspo` with GSPO's sequence ratio: there `ℓ_{i,t}` is one number
//! per response, so response `i` weighs `|y_i|` times its per-response loss, which undoes the bias
//! of `grpo`'s per-response mean towards short responses.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::masked::zero_masked;

/// Which aggregation (see the module documentation for the formulas).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LossAggregation {
    /// Per-response mean, then the mean over responses.
    Grpo,
    /// Token mean over the optimizer step's batch (PPO's `masked_mean`; the default).
    #[default]
    Dapo,
    /// Token mean over the micro-batch.
    Bnpo,
    /// Token sum over `B·L_max`.
    DrGrpo,
    /// Each response's token sum, then the mean over responses.
    Luspo,
}

/// Aggregates `per_token` losses `[batch, seq]` over the response `mask` (`[batch, seq]`, 1 on
/// real tokens) into shape `[1]`. `max_len` is `L_max` of `dr_grpo` (the sampler's token limit).
///
/// Masked positions never reach the result, whatever they hold; an empty mask gives 0 (every
/// normaliser is floored at 1, as TRL's are).
pub fn aggregate(
    per_token: Tensor<2>,
    mask: Tensor<2>,
    how: LossAggregation,
    max_len: usize,
) -> Tensor<1> {
    let [batch, _] = per_token.dims();
    let summed = zero_masked(per_token, mask.clone());
    match how {
        LossAggregation::Grpo => {
            let lengths = mask.sum_dim(1).clamp_min(1.0);
            summed.sum_dim(1).div(lengths).mean().reshape([1])
        }
        LossAggregation::Dapo | LossAggregation::Bnpo => {
            summed.sum().div(mask.sum().clamp_min(1.0))
        }
        LossAggregation::DrGrpo => summed
            .sum()
            .div_scalar((batch.max(1) * max_len.max(1)) as f32),
        LossAggregation::Luspo => summed.sum().div_scalar(batch.max(1) as f32),
    }
}
