//! Per-token estimators of `KL(π ‖ π_ref)` from samples drawn from `π`.
//!
//! With `lr = logπ − logπ_ref` at each sampled token (John Schulman's "Approximating KL
//! divergence"):
//! - `k1 = lr` — unbiased, can be negative;
//! - `k2 = lr² / 2` — biased, low variance, ≥ 0;
//! - `k3 = exp(−lr) − 1 + lr` — unbiased, ≥ 0.
//!
//! All three are exactly 0 where the two log-probs are equal. k3's exponent is held within
//! `±LOG_RATIO_LIMIT` (as the policy loss's log-ratio is), so that extreme inputs give a finite
//! value and gradient; within that range it is exact.
//!
//! As a loss term, an estimate can be weighted by the importance ratio of the policy being
//! trained to the one that sampled ([`bias_corrected_kl`]).

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::policy_loss::LOG_RATIO_LIMIT;

/// Which KL estimator to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum KlEstimator {
    /// `lr` (the TL;DR reproduction's per-token penalty).
    #[default]
    K1,
    /// `lr² / 2`.
    K2,
    /// `exp(−lr) − 1 + lr`.
    K3,
}

/// Per-token KL estimate. `logprobs`, `ref_logprobs`: `[batch, seq]`; returns `[batch, seq]`.
pub fn kl_estimate(
    logprobs: Tensor<2>,
    ref_logprobs: Tensor<2>,
    estimator: KlEstimator,
) -> Tensor<2> {
    let lr = logprobs.sub(ref_logprobs);
    match estimator {
        KlEstimator::K1 => lr,
        KlEstimator::K2 => lr.square().div_scalar(2.0),
        // ≥ 0 in exact arithmetic; near lr = 0, `e^−lr − 1` cancels in f32 and the sum can round
        // to a tiny negative number (−1e−8 on wgpu), so it is held at 0
        KlEstimator::K3 => lr
            .clone()
            .clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
            .neg()
            .exp()
            .sub_scalar(1.0)
            .add(lr)
            .clamp_min(0.0),
    }
}

/// DeepSeek-V3.2's bias correction of a KL loss term (TRL's `use_bias_correction_kl`): each
/// token's estimate `per_token` times the importance ratio `ρ = exp(logπ − logπ_old)` of the
/// policy being trained to the one that sampled, with its gradient. `log_ratio` is
/// `logπ − logπ_old` (held within `±LOG_RATIO_LIMIT`); with `sequence_level`, `ρ` is GSPO's
/// sequence ratio, the exponential of the mean log-ratio over the row's real tokens (`mask`),
/// repeated along the row. All `[batch, seq]`.
///
/// At `π = π_old` the value is unchanged, and at the token level the k3 term's gradient becomes
/// `(logπ − logπ_ref)·∇logπ`, the unbiased gradient of the reverse KL (the uncorrected k3 term's is
/// `(1 − π_ref/π)·∇logπ`); at the sequence level a token's gradient reads its row's mean estimate,
/// and that property does not hold.
pub fn bias_corrected_kl(
    per_token: Tensor<2>,
    log_ratio: Tensor<2>,
    mask: Tensor<2>,
    sequence_level: bool,
) -> Tensor<2> {
    let log_ratio = log_ratio.clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT);
    let ratio = if sequence_level {
        crate::policy_loss::sequence_ratio(log_ratio, mask)
    } else {
        log_ratio.exp()
    };
    per_token.mul(ratio)
}
