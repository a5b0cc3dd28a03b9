//! The policy-gradient surrogates of the on-policy trainers: PPO's clipped ratio (with DAPO's
//! asymmetric "clip-higher"), GSPO's sequence-level ratio, CISPO's clipped, detached importance
//! weight, SAPO's soft gate and VESPO's Gamma weight of the sequence ratio; each a per-token loss,
//! aggregated as [`LossAggregation`] says.
//!
//! Notation, for one batch of `B` responses with response mask `m_{i,t}` and
//! `|y_i| = Σ_t m_{i,t}`:
//! - `ρ_{i,t} = exp(logπ_θ(y_{i,t}) − logπ_old(y_{i,t}))`, the token ratio;
//! - `A_{i,t}`, the advantage; `sg(·)`, stop-gradient;
//! - `w_{i,t}`, an optional detached per-token weight (the truncated importance-sampling
//!   correction of [`truncated_is_weights`]; 1 without it).
//!
//! | objective | per-token loss `ℓ_{i,t}` |
//! | --- | --- |
//! | `ppo` (PPO, GRPO, DAPO) | `max(−A·ρ, −A·clip(ρ, 1−ε_low, 1+ε_high))` |
//! | `gspo` (Zheng et al. 2025) | the same with `s_i = exp((1/|y_i|)·Σ_t m·(logπ_θ − logπ_old))` in place of `ρ` at every token of response `i` |
//! | `cispo` (MiniMax-M1, 2025) | `−sg(clip(ρ, 1−ε_low, 1+ε_high))·A·logπ_θ` |
//! | `sapo` (Gao et al. 2025, Qwen) | `−A·(4/τ)·σ(τ·(ρ − 1))`, `τ = τ_pos` where `A > 0`, `τ_neg` elsewhere |
//! | `vespo` (2026) | `−sg(φ(W_i))·A·logπ_θ`, `φ(W) = e^λ·W^k·e^{−λW}`, `W_i = exp(Σ_t m·(logπ_θ − logπ_old))`; `(k, λ) = (k_pos, λ_pos)` where `A ≥ 0`, `(k_neg, λ_neg)` elsewhere |
//!
//! With INTELLECT-2's two-sided clip (TRL's `delta`), `ppo` and `gspo` cap the ratio of the
//! unclipped term at `δ`: `max(−A·min(ρ, δ), −A·clip(ρ, 1−ε_low, 1+ε_high))`. PPO's clip leaves
//! that term unbounded where `A < 0` and `ρ` is large; the cap bounds it (`δ > 1 + ε_high`, so
//! nothing changes where `A > 0`). CISPO has no unclipped term and ignores `δ`.
//!
//! The loss is `aggregate(w·ℓ)`. PPO's symmetric clip is `ε_low = ε_high = ε`. CISPO clips the
//! weight rather than the objective, so no token loses its gradient: at `ρ = 1` its gradient is
//! PPO's, `−A·∇logπ_θ`. MiniMax-M1 sets no lower bound on the weight (`ε_low ≥ 1` here); TRL's
//! `cispo` caps it above at an absolute `epsilon_high` (5.0 recommended), which is
//! `ε_high = 4` here.
//!
//! SAPO replaces the hard clip by a smooth gate: `∂ℓ/∂ρ = −A·4·σ(1 − σ)` with `σ = σ(τ(ρ − 1))`,
//! which is PPO's `−A` at `ρ = 1` (so SAPO's on-policy gradient is PPO's) and falls off smoothly as
//! `ρ` leaves 1, faster for larger `τ`; the paper takes `τ_neg > τ_pos`, since a negative
//! advantage's update spreads to the many other tokens of the vocabulary. Nothing is clipped, so
//! its clip diagnostics are 0. The ratio is the token's (TRL's `sapo` loss at its default
//! `importance_sampling_level`).
//!
//! VESPO weighs each response's REINFORCE term by a Gamma-shaped function of its whole
//! importance ratio `W_i` (the product of its token ratios, not GSPO's geometric mean), detached:
//! `φ(1) = 1`, so on-policy its gradient is PPO's, and `φ` falls to 0 as `W` grows (at the rate
//! `λ`) and, for `k > 0`, as `W → 0` (at the power `k`), with its peak at `W = k/λ`. As TRL, the
//! log of `W` is held within `[ln 10⁻⁸, 20]` and a non-finite `φ` counts 0. Nothing is clipped, so
//! its clip diagnostics are 0; [`PolicyLoss::weight_mean`] is the mean `φ` over the responses.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::aggregation::{LossAggregation, aggregate};
use crate::masked::{masked_mean, masked_var, zero_masked};

/// The log-ratio `logπ_θ − logπ_old` is held within `±20` before `exp` (a ratio of `4.9e8`, far
/// beyond any clip), so that extreme inputs give a finite loss; within that range the formulas
/// are exact.
pub const LOG_RATIO_LIMIT: f32 = 20.0;

/// Which surrogate (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PolicyObjective {
    /// PPO's clipped token ratio (GRPO, DAPO).
    #[default]
    Ppo,
    /// GSPO's clipped, length-normalised sequence ratio.
    Gspo,
    /// CISPO's clipped, detached importance weight on a REINFORCE-style loss.
    Cispo,
    /// SAPO's soft, temperature-controlled gate of the token ratio.
    Sapo,
    /// VESPO's detached Gamma weight of the sequence's importance ratio on a REINFORCE-style
    /// loss.
    Vespo,
}

/// The shape of VESPO's weight `φ(W) = e^λ·W^k·e^{−λW}` (TRL's `vespo_k_pos`, `vespo_lambda_pos`,
/// `vespo_k_neg` and `vespo_lambda_neg`, whose defaults these are): `(k_pos, λ_pos)` for
/// responses with a non-negative advantage, `(k_neg, λ_neg)` for the others.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VespoShape {
    /// `k_pos`, the power that lowers the weight of a small ratio.
    pub k_pos: f32,
    /// `λ_pos`, the rate that lowers the weight of a large ratio.
    pub lambda_pos: f32,
    /// `k_neg`.
    pub k_neg: f32,
    /// `λ_neg`.
    pub lambda_neg: f32,
}

impl Default for VespoShape {
    fn default() -> Self {
        VespoShape {
            k_pos: 2.0,
            lambda_pos: 3.0,
            k_neg: 3.0,
            lambda_neg: 2.0,
        }
    }
}

impl VespoShape {
    /// Why this shape is no weighting, if it is not: each `k` must be finite and ≥ 0 and each `λ`
    /// finite and ≥ `10⁻⁴` (TRL takes any `k` and raises a smaller `λ` to `10⁻⁴`).
    pub fn problem(&self) -> Option<String> {
        let k_fine = |k: f32| k.is_finite() && k >= 0.0;
        let lambda_fine = |l: f32| l.is_finite() && l >= 1e-4;
        (!k_fine(self.k_pos)
            || !k_fine(self.k_neg)
            || !lambda_fine(self.lambda_pos)
            || !lambda_fine(self.lambda_neg))
        .then(|| {
            format!(
                "the vespo shape needs finite k ≥ 0 and λ ≥ 1e-4, got k_pos {}, λ_pos {}, k_neg \
                 {}, λ_neg {}",
                self.k_pos, self.lambda_pos, self.k_neg, self.lambda_neg
            )
        })
    }
}

/// SAPO's gate temperatures (TRL's `sapo_temperature_pos` and `sapo_temperature_neg`, whose
/// defaults these are): `τ_pos` for tokens with a positive advantage, `τ_neg` for the others.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SapoTemperatures {
    /// `τ_pos`.
    pub positive: f32,
    /// `τ_neg`.
    pub negative: f32,
}

impl Default for SapoTemperatures {
    fn default() -> Self {
        SapoTemperatures {
            positive: 1.0,
            negative: 1.05,
        }
    }
}

impl SapoTemperatures {
    /// Why these temperatures cannot gate a ratio, if they cannot: each must be finite and > 0.
    pub fn problem(&self) -> Option<String> {
        let fine = |t: f32| t.is_finite() && t > 0.0;
        (!fine(self.positive) || !fine(self.negative)).then(|| {
            format!(
                "the sapo temperatures must be finite and > 0, got τ_pos {} and τ_neg {}",
                self.positive, self.negative
            )
        })
    }
}

/// The settings of [`policy_loss`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PolicyLossConfig {
    /// The surrogate.
    pub objective: PolicyObjective,
    /// `ε_low`: the ratio is clipped below at `1 − ε_low` (≥ 1 means no lower bound).
    pub clip_low: f32,
    /// `ε_high`: the ratio is clipped above at `1 + ε_high`.
    pub clip_high: f32,
    /// `δ`: the unclipped term's ratio is capped at `δ` (two-sided clipping; `None`: PPO's
    /// clip). Read by `ppo` and `gspo`.
    pub delta: Option<f32>,
    /// How per-token losses are aggregated.
    pub aggregation: LossAggregation,
    /// `L_max` of the `dr_grpo` aggregation.
    pub max_len: usize,
    /// SAPO's gate temperatures. Read by `sapo`.
    pub sapo: SapoTemperatures,
    /// VESPO's weight shape. Read by `vespo`.
    pub vespo: VespoShape,
}

impl PolicyLossConfig {
    /// PPO's symmetric clip `ε` with the token mean: the TL;DR reproduction's policy loss.
    pub fn ppo(clip_eps: f32) -> Self {
        PolicyLossConfig {
            objective: PolicyObjective::Ppo,
            clip_low: clip_eps,
            clip_high: clip_eps,
            delta: None,
            aggregation: LossAggregation::Dapo,
            max_len: 1,
            sapo: SapoTemperatures::default(),
            vespo: VespoShape::default(),
        }
    }
}

/// The policy loss and what to log about it. Every field is shape `[1]`; the diagnostics are
/// detached from the graph and are token means over the mask.
#[derive(Debug, Clone)]
pub struct PolicyLoss {
    /// The aggregated surrogate loss.
    pub loss: Tensor<1>,
    /// `½·masked_mean((logπ_new − logπ_old)²)`.
    pub approxkl: Tensor<1>,
    /// Share of real tokens where the clip was active (for `ppo` and `gspo`: the clipped term
    /// was the larger one; for `cispo`: the weight was clipped; 0 for `sapo` and `vespo`, which
    /// have no clip).
    pub clipfrac: Tensor<1>,
    /// Share of real tokens clipped at the lower bound (for `ppo`/`gspo`: `A < 0` and the ratio
    /// below `1 − ε_low`; for `cispo`: `ρ < 1 − ε_low`). For `gspo`, whose ratio is one per
    /// sequence, the mean over sequences of each one's share, as TRL counts it.
    pub clip_low: Tensor<1>,
    /// Share of real tokens clipped at the upper bound (for `ppo`/`gspo`: `A > 0` and the ratio
    /// above `1 + ε_high`; for `cispo`: `ρ > 1 + ε_high`); per sequence for `gspo`, as
    /// `clip_low`.
    pub clip_high: Tensor<1>,
    /// Each response's share of its real tokens clipped at the lower bound, `[batch]`; NaN for a
    /// response without real tokens (TRL's `masked_seq_mean`, whose least value over the
    /// responses, NaN left out, TRL logs as `clip_ratio/low_min`).
    pub clip_low_rows: Tensor<1>,
    /// The same at the upper bound (TRL logs the greatest as `clip_ratio/high_max`).
    pub clip_high_rows: Tensor<1>,
    /// Masked mean of the ratio that enters the objective (`ρ`, `s_i` at every token for GSPO,
    /// `W_i` at every token for VESPO).
    pub ratio_mean: Tensor<1>,
    /// Masked (unbiased) variance of that ratio.
    pub ratio_var: Tensor<1>,
    /// For `vespo`, the mean over the responses of each one's mean `φ` over its tokens: with one
    /// advantage per response, TRL's `vespo/phi_seq_mean`, the mean `φ(W_i)` over the responses
    /// (a response without tokens has `W = 1` and counts `φ(1) = 1`, as in TRL); with per-token
    /// advantages TRL's is the token mean instead.
    pub weight_mean: Option<Tensor<1>>,
}

/// The policy loss of `cfg.objective`, aggregated by `cfg.aggregation`.
///
/// - `logprobs`: `[batch, seq]` log-probs of the sampled tokens under the policy being trained
///   (carries the gradient);
/// - `old_logprobs`: `[batch, seq]` the same under the policy that sampled them;
/// - `advantages`: `[batch, seq]`;
/// - `mask`: `[batch, seq]` response mask;
/// - `weights`: optional `[batch, seq]` per-token weights `w` (e.g. [`truncated_is_weights`]).
///
/// The old log-probs, the advantages and the weights are constants of the surrogate: they are
/// detached here, so no gradient reaches whatever computed them. Masked positions never reach a
/// result, whatever they hold.
pub fn policy_loss(
    logprobs: Tensor<2>,
    old_logprobs: Tensor<2>,
    advantages: Tensor<2>,
    mask: Tensor<2>,
    weights: Option<Tensor<2>>,
    cfg: &PolicyLossConfig,
) -> PolicyLoss {
    let old_logprobs = old_logprobs.detach();
    // zeroed where masked, so that no NaN there reaches a gradient through a product
    let advantages = zero_masked(advantages.detach(), mask.clone());
    // the log-ratio at masked positions is 0, so padding never reaches a sequence ratio; beyond
    // ±LOG_RATIO_LIMIT it is held there (as verl does), so that `exp` stays finite
    let log_ratio = zero_masked(logprobs.clone().sub(old_logprobs), mask.clone())
        .clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT);
    let (low, high) = (1.0 - cfg.clip_low, 1.0 + cfg.clip_high);
    let mut weight_mean = None;
    let (per_token, ratio, clipped, clip_low, clip_high) = match cfg.objective {
        PolicyObjective::Ppo | PolicyObjective::Gspo => {
            let ratio = if cfg.objective == PolicyObjective::Gspo {
                sequence_ratio(log_ratio.clone(), mask.clone())
            } else {
                log_ratio.clone().exp()
            };
            let (per_token, active, clip_low, clip_high) =
                clipped_surrogate(ratio.clone(), advantages, cfg);
            (per_token, ratio, active, clip_low, clip_high)
        }
        PolicyObjective::Cispo => {
            let ratio = log_ratio.clone().exp();
            let weight = ratio.clone().clamp(low, high).detach();
            let per_token = reinforce(weight, advantages, logprobs, mask.clone());
            let r = ratio.clone().detach();
            let clip_low = r.clone().lower_elem(low).float();
            let clip_high = r.greater_elem(high).float();
            let active = clip_low.clone().add(clip_high.clone());
            (per_token, ratio, active, clip_low, clip_high)
        }
        PolicyObjective::Sapo => {
            let ratio = log_ratio.clone().exp();
            let per_token = soft_gate(ratio.clone(), advantages, cfg.sapo);
            let none = ratio.zeros_like();
            (per_token, ratio, none.clone(), none.clone(), none)
        }
        PolicyObjective::Vespo => {
            let ratio = sequence_product_ratio(log_ratio.clone(), mask.clone());
            let phi = gamma_weights(ratio.clone(), advantages.clone(), cfg.vespo);
            weight_mean = Some(response_mean(phi.clone(), mask.clone()));
            let per_token = reinforce(phi, advantages, logprobs, mask.clone());
            let none = ratio.zeros_like();
            (per_token, ratio, none.clone(), none.clone(), none)
        }
    };
    let per_token = match weights {
        Some(w) => per_token.mul(zero_masked(w.detach(), mask.clone())),
        None => per_token,
    };
    let loss = aggregate(per_token, mask.clone(), cfg.aggregation, cfg.max_len);
    let ratio = ratio.detach();
    // GSPO clips one ratio per sequence, and TRL counts its clipped shares per sequence
    let clip_share = |flags: Tensor<2>| match cfg.objective {
        PolicyObjective::Gspo => sequence_share(flags, mask.clone()),
        _ => masked_mean(flags, mask.clone()),
    };
    PolicyLoss {
        loss,
        approxkl: masked_mean(log_ratio.detach().square(), mask.clone()).mul_scalar(0.5),
        clipfrac: masked_mean(clipped, mask.clone()),
        clip_low_rows: row_shares(clip_low.clone(), mask.clone()),
        clip_high_rows: row_shares(clip_high.clone(), mask.clone()),
        clip_low: clip_share(clip_low),
        clip_high: clip_share(clip_high),
        ratio_mean: masked_mean(ratio.clone(), mask.clone()),
        ratio_var: masked_var(ratio, mask, true),
        weight_mean,
    }
}

/// PPO's clipped surrogate of `ratio` (the token's, or GSPO's sequence ratio at every token),
/// each `[batch, seq]`: the per-token loss `max(−A·min(ρ, δ), −A·clip(ρ, 1−ε_low, 1+ε_high))`
/// (no `δ` cap without one), where the clipped term was the larger one, and the tokens clipped at
/// the lower and at the upper bound (the clip's side of the advantage's sign).
fn clipped_surrogate(
    ratio: Tensor<2>,
    advantages: Tensor<2>,
    cfg: &PolicyLossConfig,
) -> (Tensor<2>, Tensor<2>, Tensor<2>, Tensor<2>) {
    let (low, high) = (1.0 - cfg.clip_low, 1.0 + cfg.clip_high);
    let capped = match cfg.delta {
        Some(delta) => ratio.clone().clamp_max(delta),
        None => ratio.clone(),
    };
    let unclipped = advantages.clone().neg().mul(capped);
    let clipped = advantages.clone().neg().mul(ratio.clone().clamp(low, high));
    let active = clipped.clone().greater(unclipped.clone()).float();
    let r = ratio.detach();
    let clip_low = r
        .clone()
        .lower_elem(low)
        .bool_and(advantages.clone().lower_elem(0.0))
        .float();
    let clip_high = r
        .greater_elem(high)
        .bool_and(advantages.greater_elem(0.0))
        .float();
    (unclipped.max_pair(clipped), active, clip_low, clip_high)
}

/// The REINFORCE-style per-token loss `−w·A·logπ_θ` of CISPO and VESPO, with the detached
/// `weight` `w`; `[batch, seq]` each, `logprobs` zeroed where masked.
fn reinforce(
    weight: Tensor<2>,
    advantages: Tensor<2>,
    logprobs: Tensor<2>,
    mask: Tensor<2>,
) -> Tensor<2> {
    weight
        .mul(advantages)
        .mul(zero_masked(logprobs, mask))
        .neg()
}

/// SAPO's per-token loss `−A·(4/τ)·σ(τ·(ρ − 1))` of the token `ratio` and the `advantages`, each
/// `[batch, seq]`, with `τ = τ_pos` where `A > 0` and `τ_neg` elsewhere.
fn soft_gate(ratio: Tensor<2>, advantages: Tensor<2>, t: SapoTemperatures) -> Tensor<2> {
    let positive = advantages.clone().greater_elem(0.0).float();
    // τ = τ_neg + (τ_pos − τ_neg)·[A > 0]
    let tau = positive
        .mul_scalar(t.positive - t.negative)
        .add_scalar(t.negative);
    let gate = burn::tensor::activation::sigmoid(ratio.sub_scalar(1.0).mul(tau.clone()))
        .mul_scalar(4.0)
        .div(tau);
    gate.mul(advantages).neg()
}

/// The mean over the rows of `x` `[batch, seq]` of each row's mean over its real tokens; a row
/// without one counts its first position's value.
fn response_mean(x: Tensor<2>, mask: Tensor<2>) -> Tensor<1> {
    let [batch, _] = x.dims();
    let lengths = mask.clone().sum_dim(1);
    let means = zero_masked(x.clone(), mask)
        .sum_dim(1)
        .div(lengths.clone().clamp_min(1.0));
    let empty = lengths.lower_elem(0.5);
    means
        .mask_where(empty, x.slice([0..batch, 0..1]))
        .mean()
        .reshape([1])
}

/// VESPO's sequence ratio `W_i = exp(clamp(Σ_t m_{i,t}·Δ_{i,t}, ln 10⁻⁸, 20))` of the (masked)
/// log-ratios `Δ` `[batch, seq]`, repeated at every position of row `i`: `[batch, seq]`.
fn sequence_product_ratio(log_ratio: Tensor<2>, mask: Tensor<2>) -> Tensor<2> {
    let [batch, seq] = log_ratio.dims();
    zero_masked(log_ratio, mask)
        .sum_dim(1)
        .clamp(1e-8f32.ln(), LOG_RATIO_LIMIT)
        .exp()
        .expand([batch, seq])
}

/// VESPO's weight `φ(W) = exp(λ + k·ln W − λ·W)` of the sequence `ratio` `W` `[batch, seq]`, with
/// `(k, λ)` by the sign of the `advantages` (`_pos` where `A ≥ 0`), detached; a non-finite
/// weight counts 0.
fn gamma_weights(ratio: Tensor<2>, advantages: Tensor<2>, shape: VespoShape) -> Tensor<2> {
    let ratio = ratio.detach();
    let nonneg = advantages.greater_equal_elem(0.0).float();
    let by_sign = |pos: f32, neg: f32| nonneg.clone().mul_scalar(pos - neg).add_scalar(neg);
    let (k, lambda) = (
        by_sign(shape.k_pos, shape.k_neg),
        by_sign(shape.lambda_pos, shape.lambda_neg),
    );
    let log_phi = lambda
        .clone()
        .add(k.mul(ratio.clone().log()))
        .sub(lambda.mul(ratio));
    let phi = log_phi.exp();
    let bad = phi.clone().is_nan().bool_or(phi.clone().is_inf());
    phi.mask_fill(bad, 0.0)
}

/// Each row's share of its real tokens where `flags` `[batch, seq]` is 1, `[batch]`: NaN (0/0)
/// for a row without real tokens.
fn row_shares(flags: Tensor<2>, mask: Tensor<2>) -> Tensor<1> {
    let [batch, _] = flags.dims();
    zero_masked(flags, mask.clone())
        .sum_dim(1)
        .div(mask.sum_dim(1))
        .reshape([batch])
}

/// The mean over every row (an empty one counting 0) of the row's share of real tokens where
/// `flags` `[batch, seq]` is 1: with one flag per sequence, the share of sequences flagged.
fn sequence_share(flags: Tensor<2>, mask: Tensor<2>) -> Tensor<1> {
    let lengths = mask.clone().sum_dim(1).clamp_min(1.0);
    zero_masked(flags, mask)
        .sum_dim(1)
        .div(lengths)
        .mean()
        .reshape([1])
}

/// GSPO's sequence ratio `s_i = exp((1/max(|y_i|, 1))·Σ_t m_{i,t}·Δ_{i,t})` of the (masked)
/// log-ratios `Δ` `[batch, seq]`, repeated at every position of row `i`: `[batch, seq]`.
pub fn sequence_ratio(log_ratio: Tensor<2>, mask: Tensor<2>) -> Tensor<2> {
    let [batch, seq] = log_ratio.dims();
    let lengths = mask.clone().sum_dim(1).clamp_min(1.0);
    zero_masked(log_ratio, mask)
        .sum_dim(1)
        .div(lengths)
        .exp()
        .expand([batch, seq])
}

/// The truncated importance-sampling correction for a sampler whose numbers differ from the
/// trainer's (another engine, other kernels): `w_t = min(exp(logπ_old(y_t) − logπ_sampler(y_t)), C)`,
/// detached, 0 at masked positions. `[batch, seq]` in and out; `cap` is `C` (TRL's
/// `token_truncate` mode with `vllm_importance_sampling_clip_max`, 3 by default).
///
/// `old_logprobs` are the trainer's own log-probs of the rollout (`π_old` as the trainer computes
/// it), `sampler_logprobs` the ones recorded while sampling.
pub fn truncated_is_weights(
    old_logprobs: Tensor<2>,
    sampler_logprobs: Tensor<2>,
    mask: Tensor<2>,
    cap: f32,
) -> Tensor<2> {
    let log_w = zero_masked(old_logprobs.sub(sampler_logprobs), mask.clone());
    zero_masked(log_w.exp().clamp_max(cap), mask).detach()
}
