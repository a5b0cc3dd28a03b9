//! The offline trainer: pairs (or K-wise groups) of responses to a prompt, a policy and a frozen
//! reference, one loss of the DPO family or EXO.
//!
//! One step reads like the papers: sequence log-probs of every response under the policy
//! (summed over response tokens only) → the reference's, from the cache (or, with TR-DPO's
//! synced reference, computed for the batch) → the loss → AdamW (→ the reference's update every
//! `τ` steps).

use std::sync::atomic::{AtomicU64, Ordering};

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use rand::seq::SliceRandom;
use rlhf_core::host::{to_f32_vec, to_f64_vec};
use rlhf_core::train::memory;
use rlhf_core::train::{
    AfterStep, BatchLoss, FitConfig, LiveReference, LrSchedule, Metrics, OptimizerConfig,
    RunOptions, SyncRef, TrainRng, fit_with, metrics::names, tokens_at_step_end,
};
use rlhf_core::{Error, Result, zero_masked};
use rlhf_data::{Truncation, collate};
use rlhf_models::{CausalLm, LmBatch, target_logprobs_with, target_logprobs_with_stats};
use serde::{Deserialize, Serialize};

use crate::cache::{LogpSpec, RefCache};
use crate::fdivergence::FDivergence;
use crate::losses::{
    PairLogps, aot_loss, aot_unpaired_loss, apo_down_loss, apo_zero_loss, bco_pair_loss,
    discopop_loss, dpo_loss, dpo_rw_loss, exo_pref_loss, exo_rw_loss, hinge_loss, ipo_loss,
    nca_pair_loss, robust_dpo_loss, sft_loss, simpo_loss, sppo_hard_loss,
};

/// Responses to one prompt: a pair is `[chosen, rejected]`; a K-wise group carries rewards.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// Prompt tokens.
    pub prompt: Vec<u32>,
    /// Response tokens (each ending with EOS).
    pub responses: Vec<Vec<u32>>,
    /// One reward per response (EXO-rw, DPO-rw).
    pub rewards: Option<Vec<f32>>,
}

/// Which offline loss, with its own parameters (β is [`DpoConfig::beta`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OfflineLoss {
    /// DPO; `label_smoothing` > 0 is conservative DPO.
    Dpo {
        /// ε of cDPO.
        label_smoothing: f32,
    },
    /// Robust DPO under label-noise rate `eps`.
    Robust {
        /// Assumed flip rate.
        eps: f32,
    },
    /// IPO on length-averaged log-probs.
    Ipo,
    /// SLiC hinge.
    Hinge,
    /// SimPO, reference-free, with margin `gamma`.
    Simpo {
        /// Target margin γ.
        gamma: f32,
    },
    /// EXO with preference labels (pairs), target mass `1 − eps` on the chosen response.
    ExoPref {
        /// ε of the target.
        eps: f32,
    },
    /// EXO with rewards, any K: `KL(p_θ ‖ p_r)` with `p_r = softmax(r/β_r)`.
    ExoRw {
        /// Reward temperature β_r.
        beta_r: f32,
    },
    /// The forward direction `KL(p_r ‖ p_θ)` up to a constant, for comparison with EXO-rw.
    DpoRw {
        /// Reward temperature β_r.
        beta_r: f32,
    },
    /// DPO on log-ratios averaged over response tokens (TRL's `sigmoid_norm`).
    SigmoidNorm,
    /// NCA, pairwise (TRL's `nca_pair`).
    NcaPair,
    /// BCO, pairwise (TRL's `bco_pair`).
    BcoPair,
    /// SPPO with hard labels (TRL's `sppo_hard`).
    SppoHard,
    /// APO-zero (TRL's `apo_zero`).
    ApoZero,
    /// APO-down (TRL's `apo_down`).
    ApoDown,
    /// DiscoPOP (TRL's `discopop`) with its temperature τ.
    Discopop {
        /// τ (TRL's `discopop_tau`, 0.05).
        tau: f32,
    },
    /// The negative log-likelihood of the chosen responses, a token mean over the batch (TRL's
    /// `sft`; with `sigmoid`, RPO).
    Sft,
    /// AOT, paired (TRL's `aot`): the micro-batch's policy and reference log-odds matched by
    /// rank; `label_smoothing` as cDPO's.
    Aot {
        /// ε, as cDPO's.
        label_smoothing: f32,
    },
    /// AOT, unpaired (TRL's `aot_unpaired`): the micro-batch's chosen and rejected log-ratios
    /// matched by rank.
    AotUnpaired {
        /// ε, as cDPO's.
        label_smoothing: f32,
    },
}

impl OfflineLoss {
    /// The ranges of the loss's own parameters (see [`DpoConfig::validate`]).
    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(format!("offline trainer: {m}")));
        match *self {
            OfflineLoss::Dpo { label_smoothing: e }
            | OfflineLoss::Robust { eps: e }
            | OfflineLoss::Aot { label_smoothing: e }
            | OfflineLoss::AotUnpaired { label_smoothing: e }
                if !(0.0..0.5).contains(&e) =>
            {
                bad(format!("{self:?}: the flip rate must be in [0, 0.5)"))
            }
            OfflineLoss::ExoPref { eps } if !(eps > 0.0 && eps < 1.0) => bad(format!(
                "exo_pref: eps must be in (0, 1), got {eps} (the EXO paper uses 1e-3)"
            )),
            OfflineLoss::ExoRw { beta_r } | OfflineLoss::DpoRw { beta_r }
                if !beta_r.is_finite() || beta_r <= 0.0 =>
            {
                bad(format!("{self:?}: beta_r must be finite and > 0"))
            }
            OfflineLoss::Simpo { gamma } if !gamma.is_finite() => {
                bad(format!("simpo: gamma must be finite, got {gamma}"))
            }
            OfflineLoss::Discopop { tau } if !tau.is_finite() || tau <= 0.0 => {
                bad(format!("discopop: tau must be finite and > 0, got {tau}"))
            }
            _ => Ok(()),
        }
    }

    pub(crate) fn needs_rewards(&self) -> bool {
        matches!(self, OfflineLoss::ExoRw { .. } | OfflineLoss::DpoRw { .. })
    }

    fn needs_reference(&self) -> bool {
        !matches!(self, OfflineLoss::Simpo { .. } | OfflineLoss::Sft)
    }

    /// Whether the loss is built on the difference of the two responses' implicit rewards, so
    /// that an f-divergence other than the reverse KL generalises it (TRL's list: `sigmoid`,
    /// `sigmoid_norm`, `hinge`, `ipo`, `exo_pair`, `robust`, `discopop`, and `sft`, which reads
    /// no reward).
    fn takes_an_f_divergence(&self) -> bool {
        matches!(
            self,
            OfflineLoss::Dpo { .. }
                | OfflineLoss::SigmoidNorm
                | OfflineLoss::Hinge
                | OfflineLoss::Ipo
                | OfflineLoss::ExoPref { .. }
                | OfflineLoss::Robust { .. }
                | OfflineLoss::Discopop { .. }
                | OfflineLoss::Sft
        )
    }
}

/// Offline preference-optimisation settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DpoConfig {
    /// The loss.
    pub loss: OfflineLoss,
    /// `loss`'s weight when `extra_losses` are added to it (TRL's first `loss_weights` entry).
    pub loss_weight: f32,
    /// Further pair losses added to `loss`, each with its weight: TRL's list of `loss_type`s and
    /// `loss_weights` (RPO is `sigmoid` and `sft`; MPO `sigmoid`, `bco_pair` and `sft` at 0.8,
    /// 0.2 and 1). The logged implicit rewards are `loss`'s.
    pub extra_losses: Vec<(OfflineLoss, f32)>,
    /// β (β_π for the K-wise losses).
    pub beta: f32,
    /// The divergence from the reference (f-DPO; TRL's `f_divergence_type`): the losses on the
    /// difference of implicit rewards read `f'(π/π_ref)` in place of the log-ratio.
    pub f_divergence: FDivergence,
    /// Passes over the data.
    pub epochs: usize,
    /// Stop after this many optimizer steps, within the epochs (transformers' `max_steps`; give
    /// enough `epochs` to reach it). `None`: every epoch to its end.
    pub max_steps: Option<u64>,
    /// Groups per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// AdamW and clipping.
    pub optimizer: OptimizerConfig,
    /// Schedule over optimizer steps.
    pub schedule: LrSchedule,
    /// Eval every this many steps (0 = only at the end).
    pub eval_every: u64,
    /// Longest prompt / response kept.
    pub truncation: Option<(usize, usize)>,
    /// LD-DPO's α (TRL's `ld_alpha`): a response's tokens beyond its group's shortest response
    /// count `α` each in its sequence log-prob, the policy's and the reference's ([`None`]: all
    /// count 1).
    pub ld_alpha: Option<f32>,
    /// WPO (Zhou et al. 2024; TRL's `use_weighting`): each pair's loss is multiplied by its two
    /// responses' `w(y) = exp(mean_t [log π(y_t) − log Σ_v π(v)²])`, without gradients: the
    /// geometric mean of each token's probability over the expected probability of the policy's
    /// own draw, so off-policy pairs count less (not capped, as in TRL 1.16; older TRL capped the
    /// product at 1).
    pub use_weighting: bool,
    /// Seed of the batch order.
    pub seed: u64,
    /// Dropout off in the policy (TRL's `disable_dropout`): the reference's log-probs are
    /// computed without it, so at the first step the policy must match them.
    pub disable_dropout: bool,
    /// TR-DPO: the reference follows the policy ([`SyncRef`]; TRL's `sync_ref_model`), its
    /// log-probs computed batch by batch instead of read from the cache. `None`: frozen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync_ref: Option<SyncRef>,
}

impl Default for DpoConfig {
    fn default() -> Self {
        DpoConfig {
            loss: OfflineLoss::Dpo {
                label_smoothing: 0.0,
            },
            loss_weight: 1.0,
            extra_losses: Vec::new(),
            beta: 0.1,
            f_divergence: FDivergence::ReverseKl,
            epochs: 1,
            max_steps: None,
            batch_size: 8,
            grad_accum: 1,
            optimizer: OptimizerConfig {
                lr: 5e-4,
                ..OptimizerConfig::default()
            },
            schedule: LrSchedule::Constant,
            eval_every: 0,
            truncation: None,
            ld_alpha: None,
            use_weighting: false,
            seed: 0,
            disable_dropout: true,
            sync_ref: None,
        }
    }
}

impl DpoConfig {
    /// Checks the ranges that keep every loss finite and meaningful: β > 0 (at 0 the DPO loss is a
    /// constant and IPO's target `1/(2β)` is infinite); cDPO's smoothing and robust DPO's noise
    /// rate in `[0, ½)` (robust divides by `1 − 2ε`); EXO-pref's ε in `(0, 1)` (its target takes
    /// `log ε`; TRL refuses 0 and the EXO paper suggests 1e−3); β_r > 0 (`p_r = softmax(r/β_r)`);
    /// at least one epoch, group and micro-batch per step; the optimizer's own ranges.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(format!("offline trainer: {m}")));
        if !self.beta.is_finite() || self.beta <= 0.0 {
            return bad(format!("beta must be finite and > 0, got {}", self.beta));
        }
        for (loss, weight) in self.losses() {
            // a bound far above any recipe's (MPO's are ≤ 1), so that the sum stays finite
            if !weight.is_finite() || weight.abs() > 1e4 {
                return bad(format!(
                    "{loss:?}: its weight must be in [-1e4, 1e4], got {weight}"
                ));
            }
            loss.validate()?;
        }
        if let FDivergence::AlphaDivergence { coef } = self.f_divergence
            && !coef.is_finite()
        {
            return bad(format!("the α-divergence's α must be finite, got {coef}"));
        }
        // by the variant, as TRL checks the name: α = 1 computes the reverse KL's log-ratios but is
        // refused on the same losses as any other α
        if self.f_divergence != FDivergence::ReverseKl
            && let Some((loss, _)) = self.losses().find(|(l, _)| !l.takes_an_f_divergence())
        {
            return bad(format!(
                "{:?} holds the policy to the reverse KL only: {loss:?} is not built on the \
                 difference of the two responses' implicit rewards (the f-divergences apply to \
                 sigmoid, cdpo, robust, ipo, hinge, exo_pair, sigmoid_norm, discopop and sft)",
                self.f_divergence
            ));
        }
        if let Some(alpha) = self.ld_alpha
            && !(0.0..=1.0).contains(&alpha)
        {
            return bad(format!("ld_alpha must be in [0, 1], got {alpha}"));
        }
        if self.use_weighting
            && let Some((loss, _)) = self.losses().find(|(l, _)| {
                l.needs_rewards()
                    || matches!(l, OfflineLoss::Aot { .. } | OfflineLoss::AotUnpaired { .. })
            })
        {
            return bad(format!(
                "use_weighting weighs each pair by its two responses: {loss:?} is not a loss of \
                 independent pairs (TRL refuses aot and aot_unpaired; exo_rw and dpo_rw read \
                 K-wise groups)"
            ));
        }
        if !self.extra_losses.is_empty() && self.losses().any(|(l, _)| l.needs_rewards()) {
            return bad(
                "exo_rw and dpo_rw read K-wise rewards and do not mix with other losses".into(),
            );
        }
        if self.epochs == 0 || self.batch_size == 0 || self.grad_accum == 0 {
            return bad("epochs, batch_size and grad_accum must be ≥ 1".into());
        }
        if let Some(sync) = &self.sync_ref {
            sync.validate()?;
            if !self.needs_reference() {
                return bad(format!(
                    "sync_ref_model moves the reference, and {:?} reads none",
                    self.loss
                ));
            }
        }
        self.optimizer.validate()
    }

    /// `loss` and every extra loss, with their weights.
    pub fn losses(&self) -> impl Iterator<Item = (OfflineLoss, f32)> + '_ {
        std::iter::once((self.loss, self.loss_weight)).chain(self.extra_losses.iter().copied())
    }

    /// Whether any of the losses reads the reference's log-probs.
    fn needs_reference(&self) -> bool {
        self.losses().any(|(l, _)| l.needs_reference())
    }

    /// How the trainer reads sequence log-probs (the reference cache's key covers it).
    pub fn logp_spec(&self) -> LogpSpec {
        LogpSpec {
            truncation: self.truncation,
            temperature: SEQUENCE_TEMPERATURE,
            ld_alpha: self.ld_alpha,
        }
    }
}

/// Sequence log-probs are read from the untempered distribution (the DPO objective's `π(y|x)`).
pub const SEQUENCE_TEMPERATURE: f32 = 1.0;

/// Held-out results: mean loss, the share of pairs whose implicit reward ranks the chosen
/// response first, the mean implicit-reward margin, rewards and log-probs, and TRL's token
/// metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DpoEval {
    /// Mean loss.
    pub loss: f64,
    /// `mean[β·h > 0]` over pairs (first two responses).
    pub reward_accuracy: f64,
    /// `mean[β·h]`.
    pub reward_margin: f64,
    /// The mean implicit reward of the chosen responses, and of the rejected ones.
    pub rewards: (f64, f64),
    /// The mean sequence log-prob of the chosen responses, and of the rejected ones.
    pub logps: (f64, f64),
    /// TRL's `eval_entropy`: the policy's mean entropy at the responses' tokens.
    #[serde(default)]
    pub entropy: f64,
    /// TRL's `eval_mean_token_accuracy`: the share of the chosen responses' tokens that are the
    /// policy's most likely token.
    #[serde(default)]
    pub mean_token_accuracy: f64,
    /// TRL's `eval_logits/chosen` and `eval_logits/rejected`: the mean over the vocabulary of the
    /// logits that predict the chosen responses' tokens, and the rejected ones'.
    #[serde(default)]
    pub logits: (f64, f64),
}

/// What a run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DpoReport {
    /// Optimizer steps, including those before a resume.
    pub steps: u64,
    /// Steps this call took.
    pub steps_this_run: u64,
    /// Loss of the last step.
    pub final_train_loss: f64,
    /// Batches the reference model was run on by this call (0 when the cache had everything;
    /// with a synced reference, every training and held-out batch).
    pub reference_forward_batches: u64,
    /// Eval at the end.
    pub eval: DpoEval,
}

/// Sequence log-probs of every response of `groups` (group-major), summed over response tokens,
/// and the number of response tokens, each `[Σ K]`.
pub fn sequence_logps(
    model: &CausalLm,
    groups: &[&Group],
    truncation: Option<(usize, usize)>,
    device: &Device,
) -> Result<(Tensor<1>, Tensor<1>)> {
    sequence_logps_ld(model, groups, truncation, None, device)
}

/// [`sequence_logps`], with LD-DPO's weighting when `ld_alpha` is given (Liu et al. 2024,
/// "Length Desensitization in Direct Preference Optimization"; TRL's `ld_alpha`): the tokens a
/// response has beyond the shortest response of its group (beyond the shared length) count `α`
/// each, the others 1. The token counts stay the responses' whole lengths.
pub fn sequence_logps_ld(
    model: &CausalLm,
    groups: &[&Group],
    truncation: Option<(usize, usize)>,
    ld_alpha: Option<f32>,
    device: &Device,
) -> Result<(Tensor<1>, Tensor<1>)> {
    let s = ld_sums(model, groups, truncation, ld_alpha, false, false, device)?;
    Ok((s.weighted, s.lengths))
}

/// WPO's weight of every response of `groups` (group-major), `[Σ K]`, without gradients: `w(y) =
/// exp(mean_t [log π(y_t) − log Σ_v π(v)²])` ([`DpoConfig::use_weighting`]).
pub fn wpo_weights(
    model: &CausalLm,
    groups: &[&Group],
    truncation: Option<(usize, usize)>,
    device: &Device,
) -> Result<Tensor<1>> {
    let s = ld_sums(model, groups, truncation, None, true, false, device)?;
    Ok(s.wpo.expect("ld_sums gives the weights when asked"))
}

/// A batch's sequence log-probs, each `[Σ K]`: LD-DPO's weighted sums, the plain sums (the same
/// tensor without `ld_alpha`), the token counts and, when asked, each response's WPO weight and
/// TRL's token metrics summed over its tokens, `[Σ K, 3]`: entropy, top-1 hits and mean logits
/// ([`rlhf_models::TokenStats`]).
struct LdSums {
    weighted: Tensor<1>,
    plain: Tensor<1>,
    lengths: Tensor<1>,
    wpo: Option<Tensor<1>>,
    stats: Option<Tensor<2>>,
}

#[allow(clippy::too_many_arguments)]
fn ld_sums(
    model: &CausalLm,
    groups: &[&Group],
    truncation: Option<(usize, usize)>,
    ld_alpha: Option<f32>,
    wpo: bool,
    stats: bool,
    device: &Device,
) -> Result<LdSums> {
    let pairs: Vec<(&[u32], &[u32])> = groups
        .iter()
        .flat_map(|g| {
            g.responses
                .iter()
                .map(|r| (g.prompt.as_slice(), r.as_slice()))
        })
        .collect();
    let (t, log_sum_sq, token_stats) = token_logps(model, &pairs, truncation, wpo, stats, device)?;
    let [n, width] = t.mask.dims();
    let stats = token_stats.map(|st| {
        let mean_logit = st.mean_logit.expect("asked for");
        let sums = [st.entropy, st.top1, mean_logit]
            .map(|x| zero_masked(x, t.mask.clone()).sum_dim(1))
            .to_vec();
        Tensor::cat(sums, 1)
    });
    let lengths = t.mask.clone().sum_dim(1);
    let logp = zero_masked(t.logp, t.mask.clone());
    let plain = logp.clone().sum_dim(1).reshape([n]);
    // WPO's eq. 2: the mean over response tokens of log π(y_t) − log Σ_v π(v)², exponentiated
    let wpo = log_sum_sq.map(|lss| {
        zero_masked(logp.clone().detach().sub(lss), t.mask.clone())
            .sum_dim(1)
            .div(lengths.clone().clamp_min(1.0))
            .exp()
            .reshape([n])
    });
    let weighted = match ld_alpha {
        None => plain.clone(),
        Some(alpha) => {
            // a response token's place among its response's tokens, from 1, against the shortest
            // response of its group
            let k = n / groups.len().max(1);
            let shared = lengths
                .clone()
                .reshape([groups.len(), k])
                .min_dim(1)
                .expand([groups.len(), k])
                .reshape([n, 1])
                .expand([n, width]);
            let place = t.mask.clone().cumsum(1);
            let in_shared = place.lower_equal(shared).float();
            let weights = in_shared
                .mul_scalar(1.0 - alpha)
                .add_scalar(alpha)
                .mul(t.mask);
            logp.mul(weights).sum_dim(1).reshape([n])
        }
    };
    Ok(LdSums {
        weighted,
        plain,
        lengths: lengths.reshape([n]),
        wpo,
        stats,
    })
}

/// Sequence log-probs `logπ(y|x)` of `(prompt, response)` token pairs, summed over response
/// tokens, and the number of response tokens, each `[pairs]`. The batch is padded (prompts on
/// the left, responses on the right); padded positions are masked out of both sums.
pub fn pair_logps(
    model: &CausalLm,
    pairs: &[(&[u32], &[u32])],
    truncation: Option<(usize, usize)>,
    device: &Device,
) -> Result<(Tensor<1>, Tensor<1>)> {
    let (t, _, _) = token_logps(model, pairs, truncation, false, false, device)?;
    let n = pairs.len();
    Ok((
        zero_masked(t.logp, t.mask.clone()).sum_dim(1).reshape([n]),
        t.mask.sum_dim(1).reshape([n]),
    ))
}

/// The response tokens' log-probs of `(prompt, response)` token pairs and their mask, each
/// `[pairs, width]`, the batch padded as [`pair_logps`] pads it; with `log_sum_sq`, WPO's
/// `log Σ_v π(v)²` at each of them too, and with `stats` TRL's token metrics (both without
/// gradients).
fn token_logps(
    model: &CausalLm,
    pairs: &[(&[u32], &[u32])],
    truncation: Option<(usize, usize)>,
    log_sum_sq: bool,
    stats: bool,
    device: &Device,
) -> Result<(
    rlhf_models::TargetLogprobs,
    Option<Tensor<2>>,
    Option<rlhf_models::TokenStats>,
)> {
    let t = truncation.map(|(p, r)| Truncation {
        max_prompt: p,
        max_response: r,
    });
    let batch = LmBatch::from_sequences(&collate(pairs, 0, t));
    if stats {
        // TRL's stats are of the untempered distribution, which the log-probs read too
        const _: () = assert!(SEQUENCE_TEMPERATURE == 1.0);
        let (t, lss, st) = target_logprobs_with_stats(model, &batch, log_sum_sq, true, device)?;
        return Ok((t, lss, Some(st)));
    }
    let (t, lss) = target_logprobs_with(model, &batch, SEQUENCE_TEMPERATURE, log_sum_sq, device)?;
    Ok((t, lss, None))
}

/// The reference's sequence log-probs of every group (no gradients), `batch_size` groups at a
/// time, read as `spec` says; counts batches.
pub(crate) fn reference_logps(
    reference: &CausalLm,
    groups: &[Group],
    batch_size: usize,
    spec: &LogpSpec,
    device: &Device,
    batches: &mut u64,
) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(groups.len());
    for chunk in groups.chunks(batch_size.max(1)) {
        let refs: Vec<&Group> = chunk.iter().collect();
        out.extend(batch_reference_logps(reference, &refs, spec, device)?);
        *batches += 1;
    }
    Ok(out)
}

/// The reference's sequence log-probs of one batch of groups (no gradients), one row per group.
pub(crate) fn batch_reference_logps(
    reference: &CausalLm,
    groups: &[&Group],
    spec: &LogpSpec,
    device: &Device,
) -> Result<Vec<Vec<f32>>> {
    let device = device.clone().without_autodiff();
    let reference = reference.valid().to_device(&device);
    let (t, ld) = (spec.truncation, spec.ld_alpha);
    let flat = to_f32_vec(sequence_logps_ld(&reference, groups, t, ld, &device)?.0);
    let mut at = 0;
    Ok(groups
        .iter()
        .map(|g| {
            at += g.responses.len();
            flat[at - g.responses.len()..at].to_vec()
        })
        .collect())
}

/// The loss `[1]` of a batch and its pair metrics, from policy log-probs (LD-DPO's weighted sums
/// and the plain sums, the same without `ld_alpha`), token counts and reference log-probs, each
/// `[B, K]` (sums over response tokens): `cfg.loss` and each of
/// `cfg.extra_losses` ([`one_loss`]), their batch means weighted and summed. With WPO's `wpo`
/// weights `[B, K]`, each example's loss is first multiplied by the product of its responses'
/// weights, as TRL multiplies each loss's per-sequence values. The implicit rewards
/// `β·(logπ − logπ_ref)` that are logged are `cfg.loss`'s, of the log-probs it reads.
pub(crate) fn batch_loss(
    cfg: &DpoConfig,
    policy: Tensor<2>,
    plain: Tensor<2>,
    lengths: Tensor<2>,
    reference: Tensor<2>,
    rewards: Option<Tensor<2>>,
    wpo: Option<Tensor<2>>,
) -> (Tensor<1>, Metrics) {
    let sums = Sums {
        policy,
        plain,
        lengths,
        reference,
        rewards,
    };
    let [b, _] = sums.policy.dims();
    let weighted = |per_example: Tensor<1>| match &wpo {
        Some(w) => per_example.mul(w.clone().prod_dim(1).reshape([b])),
        None => per_example,
    };
    // TRL's sum of the losses' batch means, each times its weight (×1 is exact)
    let (first, pair) = one_loss(cfg.loss, cfg, &sums);
    let mut total = weighted(first).mean().mul_scalar(cfg.loss_weight);
    for &(loss, weight) in &cfg.extra_losses {
        let per_example = one_loss(loss, cfg, &sums).0;
        total = total.add(weighted(per_example).mean().mul_scalar(weight));
    }
    let (rc, rr) = pair.implicit_rewards(cfg.beta);
    let scalar = |t: Tensor<1>| f64::from(t.mean().into_scalar::<f32>());
    let metrics = vec![
        (names::REWARDS_CHOSEN, scalar(rc.clone())),
        (names::REWARDS_REJECTED, scalar(rr.clone())),
        (names::REWARDS_MARGINS, scalar(rc.clone().sub(rr.clone()))),
        (names::REWARDS_ACCURACIES, scalar(rc.greater(rr).float())),
        (names::LOGPS_CHOSEN, scalar(pair.chosen.clone())),
        (names::LOGPS_REJECTED, scalar(pair.rejected.clone())),
    ];
    (total, metrics)
}

/// A batch's sequence log-probs: the policy's and the reference's sums over response tokens
/// (LD-DPO's weighted sums when `ld_alpha` is set), the policy's plain sums (which `sft` and
/// SimPO read, as TRL's `sft` ignores `ld_alpha`), the token counts, each `[B, K]`, and the
/// rewards of the K-wise losses.
struct Sums {
    policy: Tensor<2>,
    plain: Tensor<2>,
    lengths: Tensor<2>,
    reference: Tensor<2>,
    rewards: Option<Tensor<2>>,
}

/// One loss's value per example `[B]`, and the pair of log-probs it read (whose implicit rewards
/// are logged).
///
/// Each loss reads the log-probs its paper defines: IPO and `sigmoid_norm` the averages over
/// response tokens (as TRL does), SimPO the policy's averages with no reference, the rest the
/// sums. `sft` is the chosen responses' negative log-likelihood, a token mean over the batch, and
/// the AOT losses match the batch's values by rank, so both depend on which examples share it.
fn one_loss(loss: OfflineLoss, cfg: &DpoConfig, sums: &Sums) -> (Tensor<1>, PairLogps) {
    let beta = cfg.beta;
    let [b, _] = sums.policy.dims();
    let averaged = |t: Tensor<2>| t.div(sums.lengths.clone().clamp_min(1.0));
    let by_length = matches!(loss, OfflineLoss::Ipo | OfflineLoss::SigmoidNorm);
    // SimPO and `sft` read the policy's plain sums against no reference
    let (policy, reference) = match loss {
        _ if by_length => (
            averaged(sums.policy.clone()),
            averaged(sums.reference.clone()),
        ),
        OfflineLoss::Simpo { .. } => (averaged(sums.plain.clone()), sums.plain.zeros_like()),
        OfflineLoss::Sft => (sums.plain.clone(), sums.plain.zeros_like()),
        _ => (sums.policy.clone(), sums.reference.clone()),
    };
    let col = |t: &Tensor<2>, i: usize| t.clone().narrow(1, i, 1).reshape([b]);
    let pair = PairLogps {
        chosen: col(&policy, 0),
        rejected: col(&policy, 1),
        ref_chosen: col(&reference, 0),
        ref_rejected: col(&reference, 1),
    };
    // the difference of the two responses' implicit rewards over β: of the log-ratios under
    // DPO's reverse KL, of f'(π/π_ref) under another f-divergence (f-DPO), where IPO and
    // sigmoid_norm average each response's score over its tokens as TRL does
    let h = || {
        if cfg.f_divergence.is_reverse_kl() {
            return pair.logits();
        }
        let scores = cfg
            .f_divergence
            .scores(sums.policy.clone().sub(sums.reference.clone()));
        let scores = if by_length { averaged(scores) } else { scores };
        col(&scores, 0).sub(col(&scores, 1))
    };
    let rewards = || sums.rewards.clone().expect("checked before training");
    let per_example = match loss {
        OfflineLoss::Dpo { label_smoothing } => dpo_loss(h(), beta, label_smoothing),
        OfflineLoss::Robust { eps } => robust_dpo_loss(h(), beta, eps),
        OfflineLoss::Hinge => hinge_loss(h(), beta),
        OfflineLoss::ExoPref { eps } => exo_pref_loss(h(), beta, eps),
        OfflineLoss::Ipo => ipo_loss(h(), beta),
        OfflineLoss::SigmoidNorm => dpo_loss(h(), beta, 0.0),
        OfflineLoss::NcaPair => nca_pair_loss(pair.chosen_ratio(), pair.rejected_ratio(), beta),
        OfflineLoss::BcoPair => bco_pair_loss(pair.chosen_ratio(), pair.rejected_ratio(), beta),
        OfflineLoss::SppoHard => sppo_hard_loss(pair.chosen_ratio(), pair.rejected_ratio(), beta),
        OfflineLoss::ApoZero => apo_zero_loss(pair.chosen_ratio(), pair.rejected_ratio(), beta),
        OfflineLoss::ApoDown => apo_down_loss(pair.chosen_ratio(), pair.rejected_ratio(), beta),
        OfflineLoss::Discopop { tau } => discopop_loss(h(), beta, tau),
        OfflineLoss::Simpo { gamma } => {
            simpo_loss(pair.chosen.clone(), pair.rejected.clone(), beta, gamma)
        }
        OfflineLoss::ExoRw { beta_r } => exo_rw_loss(
            policy.clone().sub(reference.clone()),
            rewards(),
            beta,
            beta_r,
        ),
        OfflineLoss::DpoRw { beta_r } => dpo_rw_loss(
            policy.clone().sub(reference.clone()),
            rewards(),
            beta,
            beta_r,
        ),
        OfflineLoss::Sft => sft_loss(pair.chosen.clone(), col(&sums.lengths, 0)),
        OfflineLoss::Aot { label_smoothing } => aot_loss(
            pair.chosen.clone().sub(pair.rejected.clone()),
            pair.ref_chosen.clone().sub(pair.ref_rejected.clone()),
            beta,
            label_smoothing,
        ),
        OfflineLoss::AotUnpaired { label_smoothing } => aot_unpaired_loss(
            pair.chosen_ratio(),
            pair.rejected_ratio(),
            beta,
            label_smoothing,
        ),
    };
    (per_example, pair)
}

pub(crate) fn to_2d(rows: &[Vec<f32>], device: &Device) -> Tensor<2> {
    let k = rows.first().map_or(0, Vec::len);
    Tensor::from_data(TensorData::new(rows.concat(), [rows.len(), k]), device)
}

/// The loss of a batch of groups, its pair metrics and the sums of TRL's token metrics.
fn loss_of_groups(
    policy: &CausalLm,
    groups: &[&Group],
    ref_logps: &[&Vec<f32>],
    cfg: &DpoConfig,
    device: &Device,
) -> Result<(Tensor<1>, Metrics, TokenSums)> {
    let (b, k) = (groups.len(), groups[0].responses.len());
    let s = ld_sums(
        policy,
        groups,
        cfg.truncation,
        cfg.ld_alpha,
        cfg.use_weighting,
        true,
        device,
    )?;
    let rows: Vec<Vec<f32>> = ref_logps.iter().map(|r| (*r).clone()).collect();
    let rewards = cfg.loss.needs_rewards().then(|| {
        let r: Vec<Vec<f32>> = groups
            .iter()
            .map(|g| g.rewards.clone().unwrap_or_default())
            .collect();
        to_2d(&r, device)
    });
    let (loss, metrics) = batch_loss(
        cfg,
        s.weighted.reshape([b, k]),
        s.plain.reshape([b, k]),
        s.lengths.clone().reshape([b, k]),
        to_2d(&rows, device),
        rewards,
        s.wpo.map(|w| w.reshape([b, k])),
    );
    let stats = s.stats.expect("ld_sums gives the stats when asked");
    Ok((loss, metrics, TokenSums::of(stats, s.lengths, k)))
}

/// TRL's token metrics of responses, as sums `[entropy, top-1 hits, mean logits, tokens]` over
/// all responses, over the chosen (a group's first) and over the rejected (its second).
#[derive(Debug, Clone, Copy, Default)]
struct TokenSums {
    all: [f64; 4],
    chosen: [f64; 4],
    rejected: [f64; 4],
}

impl TokenSums {
    /// The sums of a batch, from each response's sums ([`LdSums`]'s stats, `[Σ K, 3]`) and token
    /// counts (`[Σ K]`), `K` responses a group, read from the device at once.
    fn of(stats: Tensor<2>, lengths: Tensor<1>, k: usize) -> Self {
        let [n, _] = stats.dims();
        let rows = to_f64_vec(Tensor::cat(vec![stats, lengths.reshape([n, 1])], 1));
        let mut sums = TokenSums::default();
        for (r, row) in rows.chunks(4).enumerate() {
            add_into(&mut sums.all, row);
            match r % k {
                0 => add_into(&mut sums.chosen, row),
                1 => add_into(&mut sums.rejected, row),
                _ => {}
            }
        }
        sums
    }

    fn add(&mut self, other: &TokenSums) {
        add_into(&mut self.all, &other.all);
        add_into(&mut self.chosen, &other.chosen);
        add_into(&mut self.rejected, &other.rejected);
    }

    /// The token means: the entropy over every response's tokens; over the chosen responses'
    /// tokens, the share that are the policy's most likely token; the mean logit over the chosen
    /// and over the rejected responses' tokens. A mean over no tokens is NaN.
    fn means(&self) -> [f64; 4] {
        let (a, c, r) = (&self.all, &self.chosen, &self.rejected);
        [a[0] / a[3], c[1] / c[3], c[2] / c[3], r[2] / r[3]]
    }
}

fn add_into(to: &mut [f64; 4], from: &[f64]) {
    to.iter_mut().zip(from).for_each(|(t, x)| *t += x);
}

/// The metric names of [`TokenSums::means`] in training and in evaluation.
const TOKEN_METRICS: [&str; 4] = [
    names::ENTROPY,
    names::MEAN_TOKEN_ACCURACY,
    names::LOGITS_CHOSEN,
    names::LOGITS_REJECTED,
];

/// Loss and implicit-reward metrics of `policy` on held-out groups, means over the groups (batches
/// of `cfg.batch_size` weighted by their groups), and TRL's token metrics, means over all their
/// response tokens.
pub fn evaluate(
    policy: &CausalLm,
    groups: &[Group],
    ref_logps: &[Vec<f32>],
    cfg: &DpoConfig,
    device: &Device,
) -> Result<DpoEval> {
    let valid = policy.valid();
    let device = device.clone().without_autodiff();
    // the batches' metrics, weighted by their groups, in the order of `pooled`
    let pooled = [
        names::REWARDS_ACCURACIES,
        names::REWARDS_MARGINS,
        names::REWARDS_CHOSEN,
        names::REWARDS_REJECTED,
        names::LOGPS_CHOSEN,
        names::LOGPS_REJECTED,
    ];
    let (mut loss, mut sums, mut n) = (0.0, [0.0; 6], 0.0);
    let mut tokens = TokenSums::default();
    for (chunk, refs) in groups
        .chunks(cfg.batch_size.max(1))
        .zip(ref_logps.chunks(cfg.batch_size.max(1)))
    {
        let g: Vec<&Group> = chunk.iter().collect();
        let r: Vec<&Vec<f32>> = refs.iter().collect();
        let (l, m, t) = loss_of_groups(&valid, &g, &r, cfg, &device)?;
        tokens.add(&t);
        let w = chunk.len() as f64;
        loss += f64::from(l.into_scalar::<f32>()) * w;
        for (name, sum) in pooled.iter().zip(&mut sums) {
            *sum += m.iter().find(|x| x.0 == *name).map_or(0.0, |x| x.1) * w;
        }
        n += w;
    }
    let n = n.max(1.0);
    let [
        accuracy,
        margin,
        chosen,
        rejected,
        logp_chosen,
        logp_rejected,
    ] = sums.map(|s| s / n);
    let [entropy, mean_token_accuracy, logits_chosen, logits_rejected] = tokens.means();
    Ok(DpoEval {
        loss: loss / n,
        reward_accuracy: accuracy,
        reward_margin: margin,
        rewards: (chosen, rejected),
        logps: (logp_chosen, logp_rejected),
        entropy,
        mean_token_accuracy,
        logits: (logits_chosen, logits_rejected),
    })
}

/// Refuses groups the loss cannot read: an empty prompt, responses of another count than the
/// first group's (or fewer than two), no rewards where the loss needs them, and K > 2 for a loss
/// of pairs.
fn check(groups: &[Group], cfg: &DpoConfig) -> Result<()> {
    let k = groups.first().map_or(2, |g| g.responses.len());
    for (i, g) in groups.iter().enumerate() {
        if g.prompt.is_empty() {
            return Err(Error::Config(format!(
                "offline trainer: group {i} has an empty prompt; its responses' first tokens \
                 would have no context"
            )));
        }
        if g.responses.len() != k || k < 2 {
            return Err(Error::Config(format!(
                "offline trainer: group {i} has {} responses; all need the same K ≥ 2 (here {k})",
                g.responses.len()
            )));
        }
        if cfg.loss.needs_rewards() && g.rewards.as_ref().is_none_or(|r| r.len() != k) {
            return Err(Error::Config(format!(
                "offline trainer: {:?} needs one reward per response; group {i} has none or the wrong count",
                cfg.loss
            )));
        }
    }
    if k > 2 && !cfg.loss.needs_rewards() {
        return Err(Error::Config(format!(
            "{:?} takes pairs; K = {k} groups need exo_rw or dpo_rw",
            cfg.loss
        )));
    }
    Ok(())
}

/// The reference's sequence log-probs of every group, as [`train_offline`] reads them with `cfg`:
/// from `cache` when it holds them, else computed (counting the reference's batches in
/// `batches`) and stored there. Called ahead of training, it fills the cache.
pub fn cached_reference_logps(
    reference: &CausalLm,
    groups: &[Group],
    cfg: &DpoConfig,
    cache: &RefCache,
    device: &Device,
    batches: &mut u64,
) -> Result<Vec<Vec<f32>>> {
    let (logps, _) = cache.get_or_compute(reference, groups, &cfg.logp_spec(), || {
        reference_logps(
            reference,
            groups,
            cfg.batch_size,
            &cfg.logp_spec(),
            device,
            batches,
        )
    })?;
    Ok(logps)
}

/// Trains `policy` (on an autodiff device) against the frozen `reference` on `train`, evaluating
/// on `eval`. Reference log-probs come from `cache` (computed once per reference and data, then
/// reused across epochs and runs), or with `cfg.sync_ref` (TR-DPO) from the reference as it
/// follows the policy, batch by batch; `run_options` gives checkpoints, resume, metrics,
/// progress.
#[allow(clippy::too_many_arguments)]
// One piece, over 80 lines: the setup around the shared `fit` loop in order: refusals, the
// memory check, the reference log-probs (cached, zeros for reference-free losses, or the live
// reference's, batch by batch), then `fit`
// with DPO's batch order, loss and eval closures that borrow them, and the report.
pub fn train_offline(
    policy: CausalLm,
    reference: &CausalLm,
    train: &[Group],
    eval: &[Group],
    cfg: &DpoConfig,
    cache: &RefCache,
    run_options: &RunOptions,
    device: &Device,
) -> Result<(CausalLm, DpoReport)> {
    cfg.validate()?;
    check(train, cfg)?;
    check(eval, cfg)?;
    if train.is_empty() {
        return Err(Error::Config("offline trainer: no training groups".into()));
    }
    let policy = if cfg.disable_dropout {
        policy.without_dropout()
    } else {
        policy
    };
    run_options
        .replicas
        .refuse_with_dropout("offline trainer", policy.dropout())?;
    // a reference that follows the policy (TR-DPO), refused before the memory check
    let live = cfg
        .sync_ref
        .map(|sync| LiveReference::new(reference, &policy, sync))
        .transpose()?;
    // refuse, before the first step, a run whose batches would not fit in memory: the policy is
    // trained on every response of a batch of groups; the reference is held for its log-probs
    let k_responses = train[0].responses.len() as u64;
    let seq = train
        .iter()
        .flat_map(|g| g.responses.iter().map(|r| g.prompt.len() + r.len()))
        .max()
        .unwrap_or(0) as u64;
    let shape = policy.shape();
    let checkpointing = memory::checkpointing(device, &policy);
    let replicas = run_options.replicas.count() as u64;
    let following = cfg
        .sync_ref
        .map_or(0, |_| LiveReference::held_bytes(reference, replicas));
    memory::check_batch_fits(
        "offline preference training",
        memory::Params::of(&policy).holding(memory::bytes_not_in(reference, &policy) + following),
        run_options.replicas.count() as u64,
        &memory::Batch {
            rows: cfg.batch_size as u64 * k_responses,
            seq,
            activations: &|r, s| shape.activation_bytes(r, s, checkpointing),
            rows_knob: "batch_size (× the K responses of a group), with grad_accum",
            seq_knob: "truncation",
        },
    )?;
    let mut report = DpoReport::default();
    let mut batches = 0u64;
    let spec = cfg.logp_spec();
    // the live reference's forward passes, counted from the replicas' threads
    let live_batches = AtomicU64::new(0);
    let (ref_train, ref_eval) = if live.is_some() {
        // the live reference's, batch by batch
        (Vec::new(), Vec::new())
    } else if cfg.needs_reference() {
        (
            cached_reference_logps(reference, train, cfg, cache, device, &mut batches)?,
            cached_reference_logps(reference, eval, cfg, cache, device, &mut batches)?,
        )
    } else {
        let zeros = |g: &[Group]| g.iter().map(|x| vec![0.0; x.responses.len()]).collect();
        (zeros(train), zeros(eval))
    };
    report.reference_forward_batches = batches;
    let fit_cfg = FitConfig {
        epochs: cfg.epochs,
        max_steps: cfg.max_steps,
        grad_accum: cfg.grad_accum,
        optimizer: &cfg.optimizer,
        schedule: &cfg.schedule,
        eval_every: cfg.eval_every,
        label: "dpo",
    };
    // the reference's log-probs of the held-out groups: cached, or the live reference's now
    let held_out_refs = || -> Result<Vec<Vec<f32>>> {
        match &live {
            Some(l) => {
                let mut n = 0;
                let refs =
                    reference_logps(&l.current(), eval, cfg.batch_size, &spec, device, &mut n);
                live_batches.fetch_add(n, Ordering::Relaxed);
                refs
            }
            None => Ok(ref_eval.clone()),
        }
    };
    let eval_metrics = |m: &CausalLm| -> Result<Metrics> {
        if eval.is_empty() {
            return Ok(Vec::new());
        }
        let e = evaluate(m, eval, &held_out_refs()?, cfg, device)?;
        Ok(vec![
            (names::EVAL_LOSS, e.loss),
            (names::EVAL_REWARD_ACCURACY, e.reward_accuracy),
            (names::EVAL_REWARD_MARGIN, e.reward_margin),
            (names::EVAL_REWARDS_CHOSEN, e.rewards.0),
            (names::EVAL_REWARDS_REJECTED, e.rewards.1),
            (names::EVAL_LOGPS_CHOSEN, e.logps.0),
            (names::EVAL_LOGPS_REJECTED, e.logps.1),
            (names::EVAL_ENTROPY, e.entropy),
            (names::EVAL_MEAN_TOKEN_ACCURACY, e.mean_token_accuracy),
            (names::EVAL_LOGITS_CHOSEN, e.logits.0),
            (names::EVAL_LOGITS_REJECTED, e.logits.1),
        ])
    };
    let batches_of_epoch = |epoch| epoch_batches(train.len(), epoch, cfg);
    let seen = tokens_seen(train, cfg, &batches_of_epoch);
    let (policy, r) = fit_with(
        policy,
        &fit_cfg,
        run_options,
        &batches_of_epoch,
        &|m, batch, shard| {
            let Some(idx) = shard.of(batch) else {
                return Ok(None);
            };
            let seen = seen[idx[0]];
            let idx: Vec<usize> = idx.iter().map(|&i| i % train.len()).collect();
            let groups: Vec<&Group> = idx.iter().map(|&i| &train[i]).collect();
            let live_refs;
            let refs: Vec<&Vec<f32>> = match &live {
                Some(l) => {
                    let on = l.on(&shard.device.clone().without_autodiff());
                    live_refs = batch_reference_logps(&on, &groups, &spec, shard.device)?;
                    live_batches.fetch_add(1, Ordering::Relaxed);
                    live_refs.iter().collect()
                }
                None => idx.iter().map(|&i| &ref_train[i]).collect(),
            };
            let (loss, mut metrics, tokens) = loss_of_groups(m, &groups, &refs, cfg, shard.device)?;
            metrics.extend(TOKEN_METRICS.into_iter().zip(tokens.means()));
            metrics.push((names::NUM_TOKENS, seen as f64));
            Ok(Some(BatchLoss {
                loss,
                weight: groups.len() as f64,
                metrics,
                samples: Vec::new(),
            }))
        },
        &eval_metrics,
        live.as_ref().map(|l| l as &dyn AfterStep<CausalLm>),
    )?;
    report.steps = r.steps;
    report.steps_this_run = r.steps_this_run;
    report.final_train_loss = r.final_train_loss;
    if !eval.is_empty() {
        report.eval = evaluate(&policy, eval, &held_out_refs()?, cfg, device)?;
    }
    report.reference_forward_batches += live_batches.load(Ordering::Relaxed);
    Ok((policy, report))
}

/// Epoch `epoch`'s batches of the `n` training groups, shuffled from the seed and the epoch, group
/// `i` numbered `epoch·n + i` so that the numbers of a run's batches are distinct. The trainer
/// reads group `number mod n`; a non-finite step's error prints the numbers.
fn epoch_batches(n: usize, epoch: usize, cfg: &DpoConfig) -> Vec<Vec<usize>> {
    let mut rng = TrainRng::seed_from_u64(cfg.seed).fork(&format!("dpo-epoch-{epoch}"));
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng);
    order
        .chunks(cfg.batch_size.max(1))
        .map(|c| c.iter().map(|&i| epoch * n + i).collect())
        .collect()
}

/// TRL's `num_tokens` at the end of each step, by the numbers of the step's groups
/// ([`epoch_batches`]): the prompt and response tokens (after truncation) of every response
/// trained on so far, each response counted with its prompt as TRL's batch holds it.
fn tokens_seen(
    train: &[Group],
    cfg: &DpoConfig,
    batches_of_epoch: &dyn Fn(usize) -> Vec<Vec<usize>>,
) -> Vec<u64> {
    let n = train.len();
    let (max_prompt, max_response) = cfg.truncation.unwrap_or((usize::MAX, usize::MAX));
    let tokens = |g: &Group| -> u64 {
        let prompt = g.prompt.len().min(max_prompt);
        g.responses
            .iter()
            .map(|r| (prompt + r.len().min(max_response)) as u64)
            .sum()
    };
    let epochs: Vec<Vec<Vec<usize>>> = (0..cfg.epochs).map(batches_of_epoch).collect();
    let counts: Vec<Vec<u64>> = epochs
        .iter()
        .map(|e| {
            e.iter()
                .map(|b| b.iter().map(|&i| tokens(&train[i % n])).sum())
                .collect()
        })
        .collect();
    let mut seen = vec![0; n * cfg.epochs];
    for (batches, ends) in epochs
        .iter()
        .zip(tokens_at_step_end(&counts, cfg.grad_accum))
    {
        for (batch, end) in batches.iter().zip(ends) {
            batch.iter().for_each(|&i| seen[i] = end);
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use burn::optim::GradientsParams;

    use super::*;

    /// WPO's weights carry no gradient: the weighted loss's gradient is the one with the same
    /// weights fed in as constants.
    #[test]
    fn wpo_weights_carry_no_gradient() {
        let device = rlhf_core::device_from_env().unwrap().autodiff();
        let mut c = rlhf_models::TransformerConfig::preset("tiny-1m").unwrap();
        (c.vocab_size, c.hidden_size, c.intermediate_size) = (32, 16, 32);
        (
            c.num_hidden_layers,
            c.num_attention_heads,
            c.num_key_value_heads,
        ) = (1, 2, 2);
        let policy = rlhf_core::train::seeded(&device, 3, || CausalLm::init(&c, &device).unwrap());
        let groups: Vec<Group> = (0..4u32)
            .map(|i| Group {
                prompt: vec![i + 1, 3],
                responses: vec![vec![i + 4, 5, 6], vec![7, i + 8]],
                rewards: None,
            })
            .collect();
        let refs: Vec<&Group> = groups.iter().collect();
        let zeros = vec![0.0f32, 0.0];
        let ref_rows: Vec<&Vec<f32>> = groups.iter().map(|_| &zeros).collect();
        let cfg = DpoConfig {
            use_weighting: true,
            ..DpoConfig::default()
        };
        let (weighted, _, _) = loss_of_groups(&policy, &refs, &ref_rows, &cfg, &device).unwrap();
        let s = ld_sums(&policy, &refs, None, None, true, false, &device).unwrap();
        let constant = s.wpo.unwrap().detach().reshape([4, 2]);
        let (as_constants, _) = batch_loss(
            &cfg,
            s.weighted.reshape([4, 2]),
            s.plain.reshape([4, 2]),
            s.lengths.reshape([4, 2]),
            to_2d(&vec![vec![0.0, 0.0]; 4], &device),
            None,
            Some(constant),
        );
        let grads = |loss: Tensor<1>| {
            let g = GradientsParams::from_grads(loss.backward(), &policy);
            let (_, norm) = rlhf_core::train::clip_if_set(&policy, g, None);
            f64::from(norm)
        };
        let (a, b) = (grads(weighted), grads(as_constants));
        assert!(a > 0.0 && (a - b).abs() <= 1e-6 * a, "{a} against {b}");
    }
}
