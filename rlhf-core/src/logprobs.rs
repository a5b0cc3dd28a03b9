//! Token log-probabilities and entropy from logits.
//!
//! The sampling temperature `T` is applied again whenever log-probs are recomputed for training:
//! `logp_t = log_softmax(logits_t / T)[y_t]`. Without it the PPO ratio is not 1 on the first
//! epoch (TL;DR detail 3).
//!
//! On burn-flex in f32 the log-probabilities, their gradient and the detached entropy of
//! [`token_logprobs_and_entropy`] are each one pass per row of logits ([`pass`]); elsewhere, and
//! for [`entropy_from_logits`], they are burn's ops.

#[cfg(feature = "flex")]
pub mod pass;

use burn::tensor::{Int, Tensor, activation};

/// Log-probability of each chosen token under the tempered distribution.
///
/// - `logits`: `[batch, seq, vocab]`, the logits that *predict* `tokens` (already shifted by the
///   caller: `logits[:, t]` is the distribution of `tokens[:, t]`).
/// - `tokens`: `[batch, seq]` token ids.
/// - `temperature`: `T > 0`.
///
/// Returns `[batch, seq]`.
pub fn token_logprobs(logits: Tensor<3>, tokens: Tensor<2, Int>, temperature: f32) -> Tensor<2> {
    #[cfg(feature = "flex")]
    if pass::runs(&logits) {
        return pass::token_logprobs(logits, tokens, temperature);
    }
    let logp = activation::log_softmax(logits.div_scalar(temperature), 2);
    logp.gather(2, tokens.unsqueeze_dim(2)).squeeze_dim(2)
}

/// Entropy `H_t = −Σ_v p_v log p_v` of the tempered distribution at every position.
///
/// `logits`: `[batch, seq, vocab]`; returns `[batch, seq]` in nats.
pub fn entropy_from_logits(logits: Tensor<3>, temperature: f32) -> Tensor<2> {
    entropy(activation::log_softmax(logits.div_scalar(temperature), 2))
}

/// [`token_logprobs`] and [`entropy_from_logits`] from one log-softmax over the vocabulary (the
/// widest tensor of a policy-gradient step; on burn-flex in f32, two passes over the logits): the
/// log-probs keep their gradient, the entropy is computed from the detached distribution, as a
/// diagnostic. On burn-flex a logit of −∞ adds nothing to the entropy; burn's ops give NaN.
///
/// Returns `([batch, seq], [batch, seq])`.
pub fn token_logprobs_and_entropy(
    logits: Tensor<3>,
    tokens: Tensor<2, Int>,
    temperature: f32,
) -> (Tensor<2>, Tensor<2>) {
    #[cfg(feature = "flex")]
    if pass::runs(&logits) {
        let entropy = pass::token_entropy(logits.clone().detach(), temperature);
        return (pass::token_logprobs(logits, tokens, temperature), entropy);
    }
    let logp = activation::log_softmax(logits.div_scalar(temperature), 2);
    let entropy = entropy(logp.clone().detach());
    (
        logp.gather(2, tokens.unsqueeze_dim(2)).squeeze_dim(2),
        entropy,
    )
}

/// `−Σ_v p_v log p_v` from the log-probabilities `[batch, seq, vocab]`.
fn entropy(logp: Tensor<3>) -> Tensor<2> {
    let p = logp.clone().exp();
    p.mul(logp).sum_dim(2).squeeze_dim(2).neg()
}
