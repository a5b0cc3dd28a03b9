//! The on-policy trainer. [`train_ppo`] runs iterations of [`ppo_iteration`], which reads as
//! `docs/algorithms.md` states PPO for language models ("PPO for language models (per token)"):
//!
//! 1. **sample** `n` responses per prompt from the policy, queries left-padded to a fixed length,
//!    at most a fixed number of new tokens at temperature `T`, each row stopping at its first
//!    EOS ([`encode_queries`], `generate`);
//! 2. **cut at EOS**: tokens after the first EOS are masked; a response without EOS gets the
//!    missing-EOS penalty instead of its score;
//! 3. **score** the texts with any [`Scorer`] (a reward model, a gold oracle, a rule), optionally
//!    with variance reduction ([`reduce_score_variance`]) or, for several reward functions,
//!    GDPO's normalisation of each ([`decoupled_scores`]);
//! 4. **experience** ([`make_experience`]): old log-probs of the policy and the reference (the
//!    temperature reapplied), values of the critic, per-token rewards `−β·kl_t` plus the score on
//!    the last real token, and advantages (GAE, RLOO, GRPO, Dr.GRPO or REINFORCE++);
//! 5. **update** ([`ppo_update`]): `E` epochs of shuffled minibatches, each minimising
//!    `L_pg + c_v·L_v` (+ `β·KL` when the KL is a loss term, + `γ_ptx·L_SFT` for PPO-ptx) with
//!    AdamW after clipping the global gradient norm;
//! 6. **metrics** with the names of `rlhf_core::train::metrics`, the adaptive KL controller's
//!    update, and a checkpoint when due.
//!
//! Every random choice of iteration `i` (its prompts, its samples, its minibatch order, its ptx
//! batches) is drawn from `(seed, i)`, so a checkpoint needs no RNG state and a resumed run
//! repeats the uninterrupted one exactly.

use std::time::Instant;

use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::seq::{IndexedRandom, SliceRandom};
use serde_json::json;

use rlhf_core::host::to_f32_vec;
use rlhf_core::stats;
use rlhf_core::train::memory;
use rlhf_core::train::metrics::names;
use rlhf_core::train::{
    AfterStep, Checkpoint, LiveReference, LrSchedule, Metrics, Replicas, Run, RunOptions, Shard,
    TrainRng,
    checkpoint::{NewCheckpoint, Part, module_from_bytes, optimizer_from_bytes},
    clip_if_set, eval_due, metric,
    replicas::sum_gradients,
    with_fresh_param_ids,
};
use rlhf_core::{
    EntropyController, Error, GroupEstimator, KlController, LossAggregation, PolicyLoss,
    PolicyObjective, Result, Scorer, aggregate, batch_normalized, bias_corrected_kl,
    broadcast_to_tokens, clipped_value_loss, entropy_from_logits, gae, group_advantages,
    high_entropy_mask, kl_estimate, masked_mean, off_policy_mask, policy_loss,
    reinforce_pp_advantages, token_logprobs, token_logprobs_and_entropy, truncated_is_weights,
    whiten,
};
use rlhf_data::Tokenizer;
use rlhf_models::sft::Example;
use rlhf_models::{CausalLm, Generation, ScalarModel, TokenInput};

use crate::completions::completion_rows;
use crate::config::{AdvantageEstimator, MultiObjectiveAggregation, PpoConfig};
use crate::rewards::{TokenRewards, decoupled_scores, per_token_rewards, reduce_score_variance};
use crate::rollout::{dynamic_sampling, sample_and_score};

/// What PPO trains: the policy and, for GAE, the separate value model. Both are updated by one
/// optimizer under one global gradient norm, like the TL;DR reproduction's policy-and-value
/// wrapper.
#[derive(Module, Debug)]
pub struct PolicyAndValue {
    /// The policy (initialised from the SFT model).
    pub policy: CausalLm,
    /// The critic (initialised from the reward model, TL;DR detail 6); `None` without one.
    pub value: Option<ScalarModel>,
}

impl PolicyAndValue {
    /// The pair, with the critic's parameters given fresh ids (and autodiff leaves). A critic
    /// cloned from the policy, or from a reward model trained from the SFT model, shares the
    /// policy's parameter ids, and one optimizer would then not train the two independently
    /// (see `rlhf_core::train::with_fresh_param_ids`). [`train_ppo`] does this itself.
    pub fn new(policy: CausalLm, value: Option<ScalarModel>) -> Self {
        PolicyAndValue {
            policy,
            value: value.map(with_fresh_param_ids),
        }
    }
}

/// What the trainer reads besides the models and the configuration.
#[derive(Clone, Copy)]
pub struct PpoInputs<'a> {
    /// The frozen reference policy (the SFT model).
    pub reference: &'a CausalLm,
    /// Scores responses: a reward model, a gold oracle, a rule.
    pub scorer: &'a dyn Scorer,
    /// The policy's tokenizer (its EOS and stop ids end responses).
    pub tokenizer: &'a Tokenizer,
    /// Training prompts, visited in a shuffled order, epoch after epoch.
    pub prompts: &'a [String],
    /// SFT demonstrations for PPO-ptx (read only when `ptx_coef > 0`).
    pub demonstrations: &'a [Example],
    /// Extra metrics (e.g. the gold score of samples on held-out prompts, or
    /// [`crate::held_out_metrics`]), every `eval_every` iterations, after the last, and after
    /// the first when `eval_first`; an error stops the run.
    pub eval: Option<&'a Eval<'a>>,
    /// See `eval`; 0 means only after the last iteration.
    pub eval_every: u64,
    /// Also run `eval` after the first iteration, where a learning curve starts (TRL's
    /// `PPOTrainer` also first samples its completions after update 1, then every
    /// `sample_generations_freq` updates).
    pub eval_first: bool,
}

/// An evaluation of the policy during training ([`PpoInputs::eval`]), given the policy and the
/// KL's reference as it is then (it moves with `sync_ref`).
pub type Eval<'a> = dyn Fn(&CausalLm, &CausalLm) -> Result<EvalLine> + 'a;

/// What an evaluation adds to a metrics line: metrics of fixed names, and named ones (each
/// reward function's, `eval_rewards/{name}/mean`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EvalLine {
    /// Metrics of fixed names.
    pub metrics: Metrics,
    /// Metrics whose names hold a reward function's.
    pub named: Vec<(String, f64)>,
}

impl From<Metrics> for EvalLine {
    fn from(metrics: Metrics) -> Self {
        EvalLine {
            metrics,
            named: Vec::new(),
        }
    }
}

impl<'a> PpoInputs<'a> {
    /// These inputs with `reference` in place of theirs, when one is given (a synced reference
    /// as it is now).
    pub fn with_reference(&self, reference: Option<&'a CausalLm>) -> Self {
        PpoInputs {
            reference: reference.unwrap_or(self.reference),
            ..*self
        }
    }
}

/// Left-pads each prompt's tokens (begun as the tokenizer begins a text: Llama's BOS) to exactly
/// `query_length` (TL;DR detail 2) with the tokenizer's PAD; a longer prompt keeps its start and
/// its last tokens, `query_length` in all ([`Tokenizer::encode_prompt`]). Returns ids and mask,
/// `[prompts, query_length]` row-major. The PAD id may lie outside the model's vocabulary: the
/// models read these ids through `rlhf_models::TokenInput`, which masks them. A prompt without
/// a token is an error: its first response token would have no context (an empty text with BOS
/// before it has one).
pub fn encode_queries(
    tokenizer: &Tokenizer,
    prompts: &[&str],
    query_length: usize,
) -> Result<(Vec<u32>, Vec<u8>)> {
    let mut ids = Vec::with_capacity(prompts.len() * query_length);
    let mut mask = Vec::with_capacity(prompts.len() * query_length);
    for (i, p) in prompts.iter().enumerate() {
        let kept = tokenizer.encode_prompt(p, query_length)?;
        if kept.is_empty() {
            return Err(Error::Config(format!("ppo: prompt {i} is empty")));
        }
        let pad = query_length - kept.len();
        ids.extend(std::iter::repeat_n(tokenizer.pad_id(), pad));
        ids.extend_from_slice(&kept);
        mask.extend(std::iter::repeat_n(0u8, pad));
        mask.extend(std::iter::repeat_n(1u8, kept.len()));
    }
    Ok((ids, mask))
}

/// One rollout batch with everything the update reads, row-major on the host. Per-token arrays
/// are `[batch, response_len]` and 0 at masked positions; `ids`/`attention` are
/// `[batch, query_len + response_len]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Experience {
    /// Episodes (prompts × n).
    pub batch: usize,
    /// Query columns.
    pub query_len: usize,
    /// Response columns.
    pub response_len: usize,
    /// Query and response ids (pads as padded: any id, masked by `attention`).
    pub ids: Vec<u32>,
    /// 1 at real query and response tokens.
    pub attention: Vec<u8>,
    /// Response mask `m_t`: 1 up to and including EOS (with `mask_truncated_completions`, 0 on
    /// every token of a response without EOS).
    pub mask: Vec<f32>,
    /// `log π_old(y_t)` with the temperature reapplied.
    pub logprobs: Vec<f32>,
    /// `log π_sampler(y_t)`: the log-probs recorded while sampling.
    pub sampler_logprobs: Vec<f32>,
    /// `log π_ref(y_t)`, same temperature.
    pub ref_logprobs: Vec<f32>,
    /// `V_old` (empty without a critic).
    pub values: Vec<f32>,
    /// `r_t` (after optional whitening).
    pub rewards: Vec<f32>,
    /// `A_t`.
    pub advantages: Vec<f32>,
    /// `R_t = A_t + V_t` (GAE; empty otherwise).
    pub returns: Vec<f32>,
    /// Sequence scores that entered the reward, `[batch]`.
    pub scores: Vec<f32>,
    /// Whether each response emitted EOS, `[batch]`.
    pub has_eos: Vec<bool>,
}

fn tensor2(v: Vec<f32>, shape: [usize; 2], device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(v, shape), device)
}

/// The logits `[batch, r, vocab]` that predict the response tokens, and those tokens
/// `[batch, r]`: the logits at column `q − 1 + t` predict response token `t`.
fn response_logits(
    policy: &CausalLm,
    input: &TokenInput,
    query_len: usize,
) -> (Tensor<3>, Tensor<2, Int>) {
    let [_, total] = input.dims();
    let r = total - query_len;
    // the LM head only at the columns that predict a response token, not at the query's others
    let hidden = policy.hidden(input, None).narrow(1, query_len - 1, r);
    (policy.lm_head(hidden), input.ids().narrow(1, query_len, r))
}

/// Log-probs `[batch, r]` of the response tokens. The temperature is reapplied (TL;DR detail
/// 3), so on the first minibatch the ratio to the rollout's log-probs is 1.
fn response_logprobs(
    policy: &CausalLm,
    input: &TokenInput,
    query_len: usize,
    temperature: f32,
) -> Tensor<2> {
    let (logits, responses) = response_logits(policy, input, query_len);
    token_logprobs(logits, responses, temperature)
}

/// The critic's values `[batch, r]` of the states before each response token.
fn response_values(value: &ScalarModel, input: &TokenInput, query_len: usize) -> Tensor<2> {
    let [_, total] = input.dims();
    value
        .per_token(input)
        .narrow(1, query_len - 1, total - query_len)
}

/// Steps 2–5 of the recipe for one sampled batch: rollout log-probs of the policy and the
/// reference, values, per-token rewards and advantages, without gradients.
///
/// - `models`, `reference`: on an inference (non-autodiff) device;
/// - `query_ids`, `query_mask`: `[batch, q]` from [`encode_queries`];
/// - `generation`: the policy's samples (masked after EOS);
/// - `scores`: `[batch]` sequence scores *after* the missing-EOS penalty and any variance
///   reduction;
/// - `decoupled`: with GDPO's normalisation, `[batch]` decoupled rewards
///   ([`decoupled_scores`]), which the group advantages read instead of the rewards' sum;
/// - `kl_coef`: the current β.
///
/// Returns the experience and its metrics (`objective/*`, `val/num_eos`, `completions/*`, and
/// `kl` when the KL is in the reward).
#[allow(clippy::too_many_arguments)]
// One piece, over 80 lines: steps 2–5 of the recipe on one batch, each feeding the next: joined
// ids, old and reference log-probs and values, per-token rewards, advantages by the estimator,
// then the rollout's metrics and the Experience built from those same tensors.
pub fn make_experience(
    models: &PolicyAndValue,
    reference: &CausalLm,
    query_ids: &[u32],
    query_mask: &[u8],
    generation: &Generation,
    scores: &[f32],
    decoupled: Option<&[f32]>,
    cfg: &PpoConfig,
    kl_coef: f32,
) -> Result<(Experience, Metrics)> {
    let device = models.policy.device();
    let (b, r) = (generation.batch, generation.new_len);
    let decoupling = cfg.multi_objective_aggregation == MultiObjectiveAggregation::NormalizeThenSum;
    if decoupled.is_some() != decoupling {
        return Err(Error::Config(format!(
            "ppo: multi_objective_aggregation {:?} with{} decoupled rewards",
            cfg.multi_objective_aggregation,
            if decoupled.is_some() { "" } else { "out" }
        )));
    }
    if b == 0
        || r == 0
        || scores.len() != b
        || decoupled.is_some_and(|d| d.len() != b)
        || !query_ids.len().is_multiple_of(b)
    {
        return Err(Error::Shape(format!(
            "ppo: {b} episodes of {r} tokens with {} scores",
            scores.len()
        )));
    }
    let q = query_ids.len() / b;
    let (ids, attention) = joined(query_ids, query_mask, generation);
    let mask_host: Vec<f32> = generation.mask.iter().map(|&m| f32::from(m)).collect();
    // a response cut off at the length limit leaves the loss when asked, and its KL the reward,
    // as in TRL; its score still enters the rewards and its group's advantages
    let loss_mask = kept_mask(mask_host.clone(), &generation.has_eos, cfg);
    let input = models.policy.input(&ids, &attention, b)?;
    let mask = tensor2(mask_host.clone(), [b, r], &device);

    // old log-probs of the policy and of the reference, the temperature reapplied
    let logprobs = response_logprobs(&models.policy, &input, q, cfg.temperature);
    let ref_logprobs = response_logprobs(reference, &input, q, cfg.temperature);
    let logprobs = rlhf_core::zero_masked(logprobs, mask.clone());
    let ref_logprobs = rlhf_core::zero_masked(ref_logprobs, mask.clone());
    let values = models
        .value
        .as_ref()
        .map(|v| rlhf_core::zero_masked(response_values(v, &input, q), mask.clone()));

    // with mask_truncated_completions the loss's mask also takes a truncated response's KL out of
    // the reward and its tokens out of the advantages' whitening (its score stays, for baselines);
    // per-token rewards: −β·kl_t on every token (when the KL is in the reward), the score on the
    // last real token
    let kept = if cfg.mask_truncated_completions {
        tensor2(loss_mask.clone(), [b, r], &device)
    } else {
        mask.clone()
    };
    let kl = kl_estimate(logprobs.clone(), ref_logprobs.clone(), cfg.kl_estimator);
    let kl = rlhf_core::zero_masked(kl, kept.clone());
    let beta_in_reward = if cfg.kl_in_reward { kl_coef } else { 0.0 };
    let reward_kl = (beta_in_reward != 0.0).then(|| to_f32_vec(kl.clone()));
    let scores_t = Tensor::<1>::from_data(TensorData::new(scores.to_vec(), [b]), &device);
    let TokenRewards { rewards, non_score } =
        per_token_rewards(scores_t, kl, mask.clone(), beta_in_reward);
    let rewards = if cfg.whiten_rewards {
        whiten(rewards, mask.clone(), false)
    } else {
        rewards
    };

    // advantages
    let (advantages, returns) = match cfg.advantage {
        AdvantageEstimator::Gae => {
            let values = values.clone().ok_or_else(|| {
                Error::Config("ppo: GAE needs a value model (PolicyAndValue::value)".into())
            })?;
            let g = gae(rewards.clone(), values, mask.clone(), cfg.gamma, cfg.lam);
            let advantages = if cfg.whiten_advantages {
                whiten(g.advantages, kept.clone(), true)
            } else {
                g.advantages
            };
            (advantages, Some(g.returns))
        }
        AdvantageEstimator::ReinforcePp => (
            reinforce_pp_advantages(rewards.clone(), kept.clone(), cfg.gamma),
            None,
        ),
        _ => {
            // the estimator's, or the batch scaling that ends GDPO's normalisation
            let estimator: GroupEstimator = cfg.group_estimator().expect("a group estimator");
            let sequence_reward = match decoupled {
                Some(d) => Tensor::<1>::from_data(TensorData::new(d.to_vec(), [b]), &device),
                None => rewards.clone().sum_dim(1).reshape([b]),
            };
            let a = group_advantages(sequence_reward, cfg.samples_per_prompt, estimator)?;
            // TRL RLOO's normalize_advantages (validate refuses it with other estimators)
            let a = if cfg.normalize_advantages {
                batch_normalized(a)
            } else {
                a
            };
            (broadcast_to_tokens(a, mask.clone()), None)
        }
    };

    // what to log about the rollout (k1 sums per sequence, whatever estimator shapes the reward)
    let k1_sum = to_f32_vec(
        logprobs
            .clone()
            .sub(ref_logprobs.clone())
            .sum_dim(1)
            .reshape([b]),
    );
    let neg_logp_sum = to_f32_vec(logprobs.clone().neg().sum_dim(1).reshape([b]));
    let logprobs_host = to_f32_vec(logprobs.clone());
    let non_score = to_f32_vec(non_score.sum_dim(1).reshape([b]));
    let mean = |v: &[f32]| v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64;
    let lengths: Vec<f32> = (0..b)
        .map(|row| mask_host[row * r..(row + 1) * r].iter().sum())
        .collect();
    let mut metrics: Metrics = vec![
        (names::OBJECTIVE_KL, mean(&k1_sum)),
        (names::OBJECTIVE_ENTROPY, mean(&neg_logp_sum)),
        (names::OBJECTIVE_SCORES, mean(scores)),
        (names::OBJECTIVE_NON_SCORE_REWARD, mean(&non_score)),
        (
            names::OBJECTIVE_RLHF_REWARD,
            mean(scores) + mean(&non_score),
        ),
        (
            names::VAL_NUM_EOS,
            generation.has_eos.iter().filter(|&&e| e).count() as f64 / b as f64,
        ),
        (names::COMPLETIONS_MEAN_LENGTH, mean(&lengths)),
        (
            names::COMPLETIONS_MIN_LENGTH,
            f64::from(lengths.iter().copied().fold(f32::INFINITY, f32::min)),
        ),
        (
            names::COMPLETIONS_MAX_LENGTH,
            f64::from(lengths.iter().copied().fold(0.0, f32::max)),
        ),
        (
            names::COMPLETIONS_CLIPPED_RATIO,
            generation.has_eos.iter().filter(|&&e| !e).count() as f64 / b as f64,
        ),
    ];
    metrics.extend(terminated_lengths(&lengths, &generation.has_eos));
    metrics.extend(sampler_agreement(
        &logprobs_host,
        &generation.logprobs,
        &mask_host,
        cfg.rollout_is_cap,
    ));
    // the token mean of the reward's per-token KL over the loss's tokens, as TRL's RLOO logs it
    // when β ≠ 0
    if let Some(kl) = reward_kl {
        let kept: f64 = loss_mask.iter().map(|&m| f64::from(m)).sum();
        let sum: f64 = kl
            .iter()
            .zip(&loss_mask)
            .map(|(&k, &m)| f64::from(k * m))
            .sum();
        metrics.push((names::KL_LOSS_TERM, sum / kept.max(1.0)));
    }
    let experience = Experience {
        batch: b,
        query_len: q,
        response_len: r,
        ids,
        attention,
        mask: loss_mask,
        logprobs: logprobs_host,
        sampler_logprobs: generation.logprobs.clone(),
        ref_logprobs: to_f32_vec(ref_logprobs),
        values: values.map(to_f32_vec).unwrap_or_default(),
        rewards: to_f32_vec(rewards),
        advantages: to_f32_vec(advantages),
        returns: returns.map(to_f32_vec).unwrap_or_default(),
        scores: scores.to_vec(),
        has_eos: generation.has_eos.clone(),
    };
    Ok((experience, metrics))
}

/// How far the trainer's log-probs of the rollout (`old`, `π_old`) are from those the sampler
/// recorded (`sampler`), over the real tokens of `mask` (all `[batch, r]`, row-major):
/// `sampling/sampling_logp_difference/{mean,max}` of `|Δ|` and `sampling/kl`, the k3 estimate of
/// `KL(π_sampler ‖ π_old)`, `(e^Δ − 1) − Δ` with `Δ = logπ_old − logπ_sampler`, in `f64` (in `f32`
/// the `e^Δ − 1` of a `Δ` near 1e−7 would be rounding). With `cap`, the truncated
/// importance-sampling weights' min, mean and max as well.
fn sampler_agreement(old: &[f32], sampler: &[f32], mask: &[f32], cap: Option<f32>) -> Metrics {
    let deltas: Vec<f64> = old
        .iter()
        .zip(sampler)
        .zip(mask)
        .filter(|(_, m)| **m > 0.5)
        .map(|((&o, &s), _)| f64::from(o) - f64::from(s))
        .collect();
    let n = deltas.len().max(1) as f64;
    let mut metrics = vec![
        (
            names::SAMPLING_LOGP_DIFF_MEAN,
            deltas.iter().map(|d| d.abs()).sum::<f64>() / n,
        ),
        (
            names::SAMPLING_LOGP_DIFF_MAX,
            deltas.iter().fold(0.0, |m: f64, d| m.max(d.abs())),
        ),
        (
            names::SAMPLING_KL,
            deltas.iter().map(|&d| d.exp_m1() - d).sum::<f64>() / n,
        ),
    ];
    if let Some(cap) = cap
        && !deltas.is_empty()
    {
        let w: Vec<f64> = deltas.iter().map(|d| d.exp().min(f64::from(cap))).collect();
        metrics.push((
            names::SAMPLING_IS_RATIO_MIN,
            w.iter().copied().fold(f64::INFINITY, f64::min),
        ));
        metrics.push((names::SAMPLING_IS_RATIO_MEAN, w.iter().sum::<f64>() / n));
        metrics.push((
            names::SAMPLING_IS_RATIO_MAX,
            w.iter().copied().fold(0.0, f64::max),
        ));
    }
    metrics
}

/// Each row's query (`[rows, q]`) followed by its response, ids and attention mask
/// `[rows, q + r]`, row-major.
fn joined(query_ids: &[u32], query_mask: &[u8], generation: &Generation) -> (Vec<u32>, Vec<u8>) {
    let (b, r) = (generation.batch, generation.new_len);
    let q = query_ids.len() / b.max(1);
    let mut ids = Vec::with_capacity(b * (q + r));
    let mut attention = Vec::with_capacity(b * (q + r));
    for row in 0..b {
        ids.extend_from_slice(&query_ids[row * q..(row + 1) * q]);
        ids.extend_from_slice(&generation.tokens[row * r..(row + 1) * r]);
        attention.extend_from_slice(&query_mask[row * q..(row + 1) * q]);
        attention.extend_from_slice(&generation.mask[row * r..(row + 1) * r]);
    }
    (ids, attention)
}

/// The response mask (`[rows, r]`) that the loss and the reward's KL read: `mask`, or with
/// `mask_truncated_completions` every token of a row without EOS set to 0.
fn kept_mask(mask: Vec<f32>, has_eos: &[bool], cfg: &PpoConfig) -> Vec<f32> {
    if cfg.mask_truncated_completions {
        without_truncated(mask, has_eos)
    } else {
        mask
    }
}

/// The per-token KL estimate (`cfg.kl_estimator`, both log-probs at `cfg.temperature`) of
/// `policy` to `reference` on `generation`'s responses to the queries `query_ids`: its sum over
/// the tokens the reward's KL reads ([`kept_mask`]) and their count. The forward passes take
/// `rows_at_once` rows at a time (a rollout's, so that they hold what training's do). No
/// gradients.
pub(crate) fn response_kl_sum(
    (policy, reference): (&CausalLm, &CausalLm),
    (query_ids, query_mask): (&[u32], &[u8]),
    generation: &Generation,
    cfg: &PpoConfig,
    rows_at_once: usize,
) -> Result<(f64, f64)> {
    let (b, r) = (generation.batch, generation.new_len);
    if b == 0 || r == 0 {
        return Ok((0.0, 0.0));
    }
    let q = query_ids.len() / b;
    let (ids, attention) = joined(query_ids, query_mask, generation);
    let mask_host: Vec<f32> = generation.mask.iter().map(|&m| f32::from(m)).collect();
    let kept = kept_mask(mask_host, &generation.has_eos, cfg);
    let (mut sum, count) = (0.0, kept.iter().map(|&m| f64::from(m)).sum());
    let rows_at_once = rows_at_once.max(1);
    for first in (0..b).step_by(rows_at_once) {
        let rows = rows_at_once.min(b - first);
        let cells = |width: usize| first * width..(first + rows) * width;
        let input = policy.input(&ids[cells(q + r)], &attention[cells(q + r)], rows)?;
        let kept = tensor2(kept[cells(r)].to_vec(), [rows, r], &policy.device());
        let logprobs = response_logprobs(policy, &input, q, cfg.temperature);
        let ref_logprobs = response_logprobs(reference, &input, q, cfg.temperature);
        let kl = kl_estimate(logprobs, ref_logprobs, cfg.kl_estimator);
        let per_token = to_f32_vec(rlhf_core::zero_masked(kl, kept));
        sum += per_token.iter().map(|&k| f64::from(k)).sum::<f64>();
    }
    Ok((sum, count))
}

/// `mask` (`[rows, r]`, row-major) with every token of a row without EOS set to 0.
fn without_truncated(mut mask: Vec<f32>, has_eos: &[bool]) -> Vec<f32> {
    let r = mask.len() / has_eos.len().max(1);
    for (row, _) in has_eos.iter().enumerate().filter(|(_, e)| !**e) {
        mask[row * r..(row + 1) * r].fill(0.0);
    }
    mask
}

/// The mean, shortest and longest length of the responses that end with EOS; all 0 when none
/// does (as TRL logs them).
fn terminated_lengths(lengths: &[f32], has_eos: &[bool]) -> Metrics {
    let ended: Vec<f64> = lengths
        .iter()
        .zip(has_eos)
        .filter(|(_, e)| **e)
        .map(|(&l, _)| f64::from(l))
        .collect();
    let (mean, min, max) = if ended.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (
            ended.iter().sum::<f64>() / ended.len() as f64,
            ended.iter().copied().fold(f64::INFINITY, f64::min),
            ended.iter().copied().fold(0.0, f64::max),
        )
    };
    vec![
        (names::COMPLETIONS_MEAN_TERMINATED_LENGTH, mean),
        (names::COMPLETIONS_MIN_TERMINATED_LENGTH, min),
        (names::COMPLETIONS_MAX_TERMINATED_LENGTH, max),
    ]
}

/// `v` as `f64`s.
fn widened(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

/// The share of prompts whose `n` samples (contiguous in `scores`) all scored the same: they give
/// no group advantage.
fn frac_zero_std(scores: &[f32], n: usize) -> f64 {
    let groups: Vec<&[f32]> = scores.chunks(n.max(1)).collect();
    let flat = groups
        .iter()
        .filter(|g| g.iter().all(|&s| s == g[0]))
        .count();
    flat as f64 / groups.len().max(1) as f64
}

/// Some rows of an [`Experience`] as tensors on the training device.
#[derive(Debug, Clone)]
pub struct Minibatch {
    /// Query columns.
    pub query_len: usize,
    /// Query and response ids with their attention mask, `[rows, q + r]`.
    pub input: TokenInput,
    /// `[rows, r]` each.
    pub mask: Tensor<2>,
    /// Old log-probs.
    pub logprobs: Tensor<2>,
    /// The sampler's log-probs.
    pub sampler_logprobs: Tensor<2>,
    /// Reference log-probs.
    pub ref_logprobs: Tensor<2>,
    /// Old values (GAE only).
    pub values: Option<Tensor<2>>,
    /// Advantages.
    pub advantages: Tensor<2>,
    /// Returns (GAE only).
    pub returns: Option<Tensor<2>>,
    /// The part of the optimizer step's minibatch these rows are.
    pub share: Share,
}

/// The part of an optimizer step's minibatch that a shard is (a data-parallel replica's part of
/// one of the minibatch's accumulated micro-batches): each mean over the minibatch is the sum of
/// the shards' means weighted by these shares, so the shards' gradients add up to the whole
/// minibatch's (under `bnpo`, to the mean of its micro-batches' own token means).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Share {
    /// The shard's response tokens over the minibatch's: the weight of a token mean.
    pub tokens: f32,
    /// The shard's responses over the minibatch's: the weight of a mean over responses.
    pub responses: f32,
    /// The shard's response tokens over its micro-batch's, divided by the number of
    /// micro-batches: the weight of `bnpo`'s token mean, which is each micro-batch's own, averaged
    /// over the micro-batches (as TRL's accumulated steps take it).
    pub micro_tokens: f32,
}

impl Share {
    /// The whole minibatch.
    pub const WHOLE: Share = Share {
        tokens: 1.0,
        responses: 1.0,
        micro_tokens: 1.0,
    };

    /// No part of it: a shard without response tokens.
    pub const NONE: Share = Share {
        tokens: 0.0,
        responses: 0.0,
        micro_tokens: 0.0,
    };

    /// The weight of a policy loss aggregated `how` (`rlhf_core::aggregation`): `dapo` is a token
    /// mean over the minibatch, weighted by tokens; `bnpo` a token mean over the micro-batch,
    /// weighted by `micro_tokens` (the shard's share of its micro-batch's tokens over the number
    /// of micro-batches); `grpo` and `luspo` are means over responses and `dr_grpo` a sum over
    /// `B·L_max`, all three weighted by responses.
    pub fn of(&self, how: LossAggregation) -> f32 {
        match how {
            LossAggregation::Dapo => self.tokens,
            LossAggregation::Bnpo => self.micro_tokens,
            LossAggregation::Grpo | LossAggregation::DrGrpo | LossAggregation::Luspo => {
                self.responses
            }
        }
    }
}

/// `loss · share`, leaving the whole minibatch's loss as it is.
fn weighted(loss: Tensor<1>, share: f32) -> Tensor<1> {
    if share == 1.0 {
        loss
    } else {
        loss.mul_scalar(share)
    }
}

/// One of the `count` equal micro-batches that an optimizer step's minibatch is cut into for
/// gradient accumulation ([`PpoConfig::grad_accum`]): its rows, and all the minibatch's.
#[derive(Debug, Clone, Copy)]
pub struct MicroBatch<'r> {
    /// The micro-batch's rows of the experience.
    pub rows: &'r [usize],
    /// The minibatch's rows, the micro-batch's among them.
    pub minibatch: &'r [usize],
    /// How many micro-batches the minibatch is cut into.
    pub count: usize,
}

impl Experience {
    /// The rows `rows` (in that order) as tensors on `device`, for models with `vocab`
    /// embedding rows (see [`TokenInput`]).
    pub fn minibatch(&self, rows: &[usize], vocab: usize, device: &Device) -> Result<Minibatch> {
        let (q, r) = (self.query_len, self.response_len);
        let pick = |v: &[f32], w: usize| -> Vec<f32> {
            rows.iter()
                .flat_map(|&i| v[i * w..(i + 1) * w].iter().copied())
                .collect()
        };
        let n = rows.len();
        let per_token = |v: &[f32]| tensor2(pick(v, r), [n, r], device);
        let ids: Vec<u32> = rows
            .iter()
            .flat_map(|&i| self.ids[i * (q + r)..(i + 1) * (q + r)].iter().copied())
            .collect();
        let attention: Vec<u8> = rows
            .iter()
            .flat_map(|&i| {
                self.attention[i * (q + r)..(i + 1) * (q + r)]
                    .iter()
                    .copied()
            })
            .collect();
        Ok(Minibatch {
            query_len: q,
            input: TokenInput::new(&ids, &attention, n, vocab, device)?,
            mask: per_token(&self.mask),
            logprobs: per_token(&self.logprobs),
            sampler_logprobs: per_token(&self.sampler_logprobs),
            ref_logprobs: per_token(&self.ref_logprobs),
            values: (!self.values.is_empty()).then(|| per_token(&self.values)),
            advantages: per_token(&self.advantages),
            returns: (!self.returns.is_empty()).then(|| per_token(&self.returns)),
            share: Share::WHOLE,
        })
    }

    /// `shard`'s part of the micro-batch `micro`, on the shard's device, with its [`Share`] of
    /// `micro`'s minibatch; `None` when the part holds no response token (it adds nothing to any
    /// mean).
    pub fn shard(
        &self,
        micro: MicroBatch<'_>,
        shard: Shard<'_>,
        vocab: usize,
    ) -> Result<Option<Minibatch>> {
        let Some(part) = shard.of(micro.rows) else {
            return Ok(None);
        };
        let r = self.response_len;
        let tokens = |rows: &[usize]| -> f32 {
            rows.iter()
                .map(|&i| self.mask[i * r..(i + 1) * r].iter().sum::<f32>())
                .sum()
        };
        let mine = tokens(part);
        if mine == 0.0 {
            return Ok(None);
        }
        let mut mb = self.minibatch(part, vocab, shard.device)?;
        mb.share = Share {
            tokens: mine / tokens(micro.minibatch),
            responses: part.len() as f32 / micro.minibatch.len() as f32,
            micro_tokens: mine / tokens(micro.rows) / micro.count as f32,
        };
        Ok(Some(mb))
    }
}

/// The loss of one minibatch, `L = L_pg + c_v·L_v` (+ `β·KL` when the KL is a loss term, aggregated
/// as `L_pg` is, as TRL adds it to the per-token loss before aggregating; − `c·H̄`, the mean
/// entropy over the tokens `L_pg` reads, with an entropy bonus), `β = kl_coef` and
/// `c = entropy_coef` being this step's (the entropy term is built only when `cfg`'s entropy
/// controller is active, so `c` is read only then), and its diagnostics (`policy/*`,
/// `clip_ratio/*`, `val/*`, `loss/*`). `L_pg` is the surrogate of `cfg.policy_objective` (PPO's
/// clip, GSPO, CISPO, SAPO, VESPO) aggregated by `cfg.loss_aggregation`, each token weighted by the
/// truncated importance-sampling correction when it is on, only the high-entropy tokens counted
/// when `cfg.top_entropy_quantile < 1`, and the off-policy sequence mask's drops left out when
/// `cfg.off_policy_mask_threshold` is set (`off_policy_mask/masked_ratio`).
///
/// A shard (a replica's part of one micro-batch of the minibatch) weighs each term by its
/// [`Share`] of that term's mean; the diagnostics are the shard's own.
pub fn minibatch_loss(
    models: &PolicyAndValue,
    mb: &Minibatch,
    cfg: &PpoConfig,
    kl_coef: f32,
    entropy_coef: f32,
) -> (Tensor<1>, Metrics) {
    let (logits, responses) = response_logits(&models.policy, &mb.input, mb.query_len);
    let (logprobs, entropy, bonus_entropy) = logprobs_and_entropy(logits, responses, cfg);
    // only the high-entropy tokens carry the policy gradient (and the entropy bonus)
    let selected = (cfg.top_entropy_quantile < 1.0)
        .then(|| high_entropy_mask(entropy.clone(), mb.mask.clone(), cfg.top_entropy_quantile));
    let kept = off_policy_kept(mb, &logprobs, cfg);
    let pg = policy_loss(
        logprobs.clone(),
        mb.logprobs.clone(),
        mb.advantages.clone(),
        mb.mask.clone(),
        token_weights(mb, [selected.clone(), kept.clone()], cfg),
        &cfg.policy_loss(),
    );
    let mut loss = weighted(pg.loss.clone(), mb.share.of(cfg.loss_aggregation));
    let scalar = |t: Tensor<1>| f64::from(t.into_scalar::<f32>());
    let mut metrics = policy_metrics(pg, entropy, kept, mb.mask.clone());
    if !cfg.kl_in_reward {
        let (kl, token_mean) = kl_loss_term(logprobs, mb, cfg, kl_coef);
        metrics.push((names::KL_LOSS_TERM, scalar(token_mean)));
        metrics.push((names::LOSS_KL, scalar(kl.clone())));
        loss = loss.add(weighted(kl, mb.share.of(cfg.loss_aggregation)));
    }
    // the entropy bonus, TRL's: −c·H̄, H̄ the mean entropy over the real tokens (the high-entropy
    // share when there is one; the off-policy mask's drops are read, as TRL reads them)
    if let Some(h) = bonus_entropy {
        let h = masked_mean(h, selected.unwrap_or_else(|| mb.mask.clone()));
        metrics.push((names::LOSS_ENTROPY, scalar(h.clone())));
        loss = loss.sub(weighted(h.mul_scalar(entropy_coef), mb.share.tokens));
    }
    if let (Some(value), Some(old_values), Some(returns)) = (&models.value, &mb.values, &mb.returns)
    {
        let v = clipped_value_loss(
            response_values(value, &mb.input, mb.query_len),
            old_values.clone(),
            returns.clone(),
            mb.mask.clone(),
            cfg.value_clip,
        );
        metrics.push((names::VAL_LOSS, scalar(v.loss.clone())));
        metrics.push((names::VAL_CLIPFRAC, scalar(v.clipfrac)));
        loss = loss.add(weighted(v.loss.mul_scalar(cfg.vf_coef), mb.share.tokens));
    }
    metrics.push((names::LOSS_TOTAL, loss_total(&metrics, cfg, entropy_coef)));
    (loss, metrics)
}

/// The diagnostics of the policy loss `pg` (`policy/*`, `clip_ratio/*`, `val/ratio*`, and with
/// VESPO `vespo/phi_seq_mean`), the mean `entropy` over the `mask`, and with the off-policy
/// sequence mask the share of tokens it drops (`kept` 0 there).
fn policy_metrics(
    pg: PolicyLoss,
    entropy: Tensor<2>,
    kept: Option<Tensor<2>>,
    mask: Tensor<2>,
) -> Metrics {
    let scalar = |t: Tensor<1>| f64::from(t.into_scalar::<f32>());
    // TRL's nanmin and nanmax over the responses: one without tokens (NaN) is left out
    let rows = |t: Tensor<1>| -> Vec<f64> {
        to_f32_vec(t)
            .into_iter()
            .filter(|v| !v.is_nan())
            .map(f64::from)
            .collect()
    };
    let (low_rows, high_rows) = (rows(pg.clip_low_rows), rows(pg.clip_high_rows));
    let mut metrics: Metrics = vec![
        (names::LOSS_POLICY, scalar(pg.loss)),
        (names::POLICY_APPROXKL, scalar(pg.approxkl)),
        (names::POLICY_CLIPFRAC, scalar(pg.clipfrac)),
        (names::CLIP_RATIO_LOW, scalar(pg.clip_low.clone())),
        (names::CLIP_RATIO_HIGH, scalar(pg.clip_high.clone())),
        // the two bounds clip disjoint sets (A < 0 against A > 0; for CISPO ρ below against above)
        (
            names::CLIP_RATIO_REGION,
            scalar(pg.clip_low.add(pg.clip_high)),
        ),
        (
            names::POLICY_ENTROPY,
            scalar(masked_mean(entropy, mask.clone())),
        ),
        (names::VAL_RATIO_MEAN, scalar(pg.ratio_mean)),
        (names::VAL_RATIO_VAR, scalar(pg.ratio_var)),
    ];
    if !low_rows.is_empty() {
        metrics.push((
            names::CLIP_RATIO_LOW_MIN,
            low_rows.iter().copied().fold(f64::INFINITY, f64::min),
        ));
        metrics.push((
            names::CLIP_RATIO_HIGH_MAX,
            high_rows.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        ));
    }
    if let Some(phi) = pg.weight_mean {
        metrics.push((names::VESPO_PHI_MEAN, scalar(phi)));
    }
    if let Some(kept) = kept {
        let dropped = kept.neg().add_scalar(1.0);
        metrics.push((names::OFF_POLICY_MASKED, scalar(masked_mean(dropped, mask))));
    }
    metrics
}

/// The KL as a loss term, `β·k` aggregated as the policy loss is (TRL adds it to the per-token
/// loss before aggregating), and the token mean of `k` (TRL's logged `kl`); with the bias
/// correction, `k` is weighted by the importance ratio first, as TRL weighs it.
fn kl_loss_term(
    logprobs: Tensor<2>,
    mb: &Minibatch,
    cfg: &PpoConfig,
    kl_coef: f32,
) -> (Tensor<1>, Tensor<1>) {
    // padded positions zeroed first, as `make_experience` zeroes them: whatever a pad holds
    // never reaches the estimate or its gradient
    let logprobs = rlhf_core::zero_masked(logprobs, mb.mask.clone());
    let mut per_token = kl_estimate(logprobs.clone(), mb.ref_logprobs.clone(), cfg.kl_estimator);
    if cfg.kl_bias_correction {
        let log_ratio = rlhf_core::zero_masked(logprobs.sub(mb.logprobs.clone()), mb.mask.clone());
        let sequence_level = cfg.policy_objective == PolicyObjective::Gspo;
        per_token = bias_corrected_kl(per_token, log_ratio, mb.mask.clone(), sequence_level);
    }
    let kl = aggregate(
        per_token.clone(),
        mb.mask.clone(),
        cfg.loss_aggregation,
        cfg.response_length,
    );
    (
        kl.mul_scalar(kl_coef),
        masked_mean(per_token, mb.mask.clone()),
    )
}

/// The response tokens' log-probs and the policy's entropy at each response position (`logits`
/// `[batch, r, vocab]`, at the sampling temperature), detached; with an entropy bonus, the same
/// entropy with its gradient too, computed once for both.
fn logprobs_and_entropy(
    logits: Tensor<3>,
    responses: Tensor<2, Int>,
    cfg: &PpoConfig,
) -> (Tensor<2>, Tensor<2>, Option<Tensor<2>>) {
    let t = cfg.temperature;
    if !cfg.entropy_controller().active() {
        let (logprobs, entropy) = token_logprobs_and_entropy(logits, responses, t);
        return (logprobs, entropy, None);
    }
    let entropy = entropy_from_logits(logits.clone(), t);
    let logprobs = token_logprobs(logits, responses, t);
    (logprobs, entropy.clone().detach(), Some(entropy))
}

/// DeepSeek-V3.2's off-policy sequence mask of `mb`, when `cfg` sets its threshold: the drift is
/// read between the sampler's log-probs and the policy's `logprobs` as they stand at this
/// minibatch.
fn off_policy_kept(mb: &Minibatch, logprobs: &Tensor<2>, cfg: &PpoConfig) -> Option<Tensor<2>> {
    cfg.off_policy_mask_threshold.map(|delta| {
        off_policy_mask(
            mb.advantages.clone(),
            logprobs.clone(),
            mb.sampler_logprobs.clone(),
            mb.mask.clone(),
            delta,
        )
    })
}

/// The weight of each token's policy loss, when one is on: the truncated importance-sampling
/// correction, times each 0/1 selection in `selections` that is on (the high-entropy share, the
/// off-policy sequence mask).
fn token_weights(
    mb: &Minibatch,
    selections: [Option<Tensor<2>>; 2],
    cfg: &PpoConfig,
) -> Option<Tensor<2>> {
    let correction = cfg.rollout_is_cap.map(|cap| {
        truncated_is_weights(
            mb.logprobs.clone(),
            mb.sampler_logprobs.clone(),
            mb.mask.clone(),
            cap,
        )
    });
    selections
        .into_iter()
        .flatten()
        .fold(correction, |w, s| Some(w.map_or(s.clone(), |w| w.mul(s))))
}

/// `loss/total`, the loss that is minimised, from the terms' metrics: the policy loss, `β·KL`
/// when the KL is a loss term, `−c·H̄` with an entropy bonus (`c = entropy_coef`), `c_v·L_v`
/// with a critic, and `γ_ptx·L_SFT` with PPO-ptx.
fn loss_total(metrics: &Metrics, cfg: &PpoConfig, entropy_coef: f32) -> f64 {
    metrics
        .iter()
        .map(|m| match m.0 {
            names::LOSS_POLICY | names::LOSS_KL => m.1,
            names::LOSS_ENTROPY => -f64::from(entropy_coef) * m.1,
            names::VAL_LOSS => f64::from(cfg.vf_coef) * m.1,
            names::OBJECTIVE_PTX_LOSS => f64::from(cfg.ptx_coef) * m.1,
            _ => 0.0,
        })
        .sum()
}

/// What one update did: every minibatch's metrics in order, and the updates skipped for a
/// non-finite loss or gradient norm.
#[derive(Debug, Clone, Default)]
pub struct UpdateStats {
    /// One entry per minibatch step (epoch-major).
    pub minibatches: Vec<Metrics>,
    /// Steps skipped (non-finite loss or gradient norm).
    pub skipped: u64,
}

impl UpdateStats {
    /// The mean of each metric over the minibatches.
    pub fn mean(&self) -> Metrics {
        let mut sums: Vec<(&'static str, f64, f64)> = Vec::new();
        for m in &self.minibatches {
            for &(k, v) in m {
                match sums.iter_mut().find(|s| s.0 == k) {
                    Some(s) => {
                        s.1 += v;
                        s.2 += 1.0;
                    }
                    None => sums.push((k, v, 1.0)),
                }
            }
        }
        sums.into_iter().map(|(k, s, n)| (k, s / n)).collect()
    }
}

/// Step 5: `ppo_epochs` passes over `experience` in `num_minibatches` shuffled minibatches, one
/// AdamW step each after clipping the global gradient norm, each minibatch's loss and backward
/// pass run on its `grad_accum` micro-batches in turn (their gradients summed). With
/// `ptx_coef > 0`, each step adds `γ_ptx · L_SFT` on `ptx_batch_size` demonstrations drawn with
/// `rng`.
///
/// `models` live on the autodiff `device`, the first of the data-parallel `replicas` (each takes a
/// shard of every minibatch); `lr` is this update's learning rate (the schedule is the caller's).
/// A step whose loss or gradient norm is not finite is skipped and counted. A minibatch with no
/// response token in the loss (every response cut off, with `mask_truncated_completions`) steps
/// on the ptx term alone, or, without one, takes no step and logs nothing, where TRL's loss of 0
/// still lets AdamW's momentum and weight decay move the weights.
///
/// Each step applies the entropy coefficient `entropy` gives, then tells it the step's mean
/// entropy (adaptive entropy control), a skipped step's too; a step without response tokens
/// measures none.
#[allow(clippy::too_many_arguments)]
pub fn ppo_update(
    mut models: PolicyAndValue,
    optim: &mut ModuleOptimizer,
    experience: &Experience,
    cfg: &PpoConfig,
    kl_coef: f32,
    entropy: &mut EntropyController,
    lr: &dyn Fn(u64) -> f64,
    demonstrations: &[Example],
    rng: &mut TrainRng,
    device: &Device,
    replicas: &Replicas,
) -> Result<(PolicyAndValue, UpdateStats)> {
    let size = experience.batch / cfg.num_minibatches;
    if size == 0 || !experience.batch.is_multiple_of(cfg.num_minibatches) {
        return Err(Error::Config(format!(
            "ppo: {} episodes do not split into {} minibatches",
            experience.batch, cfg.num_minibatches
        )));
    }
    if cfg.grad_accum == 0 || !size.is_multiple_of(cfg.grad_accum) {
        return Err(Error::Config(format!(
            "ppo: minibatches of {size} episodes do not split into {} micro-batches (grad_accum)",
            cfg.grad_accum
        )));
    }
    let mut stats = UpdateStats::default();
    let mut step = 0u64;
    for _epoch in 0..cfg.ppo_epochs {
        let mut order: Vec<usize> = (0..experience.batch).collect();
        order.shuffle(rng);
        for rows in order.chunks(size) {
            // PPO-ptx's demonstrations, drawn before the replicas split the minibatch
            let ptx_batch: Option<Vec<&Example>> =
                (cfg.ptx_coef > 0.0 && !demonstrations.is_empty()).then(|| {
                    (0..cfg.ptx_batch_size)
                        .map(|_| demonstrations.choose(rng).expect("non-empty"))
                        .collect()
                });
            let coefs = (kl_coef, entropy.applied() as f32);
            let step_inputs = (experience, rows, ptx_batch.as_deref());
            let Some((grads, mut metrics)) =
                minibatch_gradients(&models, step_inputs, cfg, coefs, (device, replicas))?
            else {
                // no response token of the minibatch is in the loss (every response cut off, with
                // mask_truncated_completions) and no ptx term: nothing to step on, nothing wrong
                step += 1;
                continue;
            };
            let loss_value = metrics
                .iter()
                .find(|m| m.0 == names::LOSS_TOTAL)
                .map_or(f64::NAN, |m| m.1);
            let (grads, norm) = clip_if_set(&models, grads, cfg.optimizer.max_grad_norm);
            metrics.push((names::TRAIN_GRAD_NORM, f64::from(norm)));
            if loss_value.is_finite() && norm.is_finite() {
                models = optim.step(lr(step), models, grads);
            } else {
                stats.skipped += 1;
            }
            step += 1;
            // adaptive entropy control: the step's entropy over the tokens the bonus read sets
            // the coefficient of the next
            if let Some(h) = metrics.iter().find(|m| m.0 == names::LOSS_ENTROPY) {
                entropy.update(h.1);
            }
            if entropy.active() {
                metrics.push((names::ENTROPY_COEF, entropy.coef()));
            }
            stats.minibatches.push(metrics);
        }
    }
    Ok((models, stats))
}

/// The gradients of the minibatch `rows` of `experience` (with PPO-ptx's term on `ptx` when
/// given) and its metrics, `None` when nothing in it is differentiated: its `grad_accum`
/// micro-batches in turn (gradient accumulation), each cut into the `replicas`' shards, each
/// shard's loss weighted by its share of the minibatch's means and the first replica's shard of
/// the first micro-batch adding the ptx term. The gradients are summed on `device` as they come,
/// so the step holds one micro-batch's activations at a time.
fn minibatch_gradients(
    models: &PolicyAndValue,
    (experience, rows, ptx): (&Experience, &[usize], Option<&[&Example]>),
    cfg: &PpoConfig,
    coefs: (f32, f32),
    (device, replicas): (&Device, &Replicas),
) -> Result<Option<(GradientsParams, Metrics)>> {
    let mut summed: Option<GradientsParams> = None;
    let mut shares = Vec::new();
    for (j, part) in rows.chunks(rows.len() / cfg.grad_accum).enumerate() {
        let micro = MicroBatch {
            rows: part,
            minibatch: rows,
            count: cfg.grad_accum,
        };
        let shards = replicas.run(models, device, &|m, shard| {
            let ptx = ptx.filter(|_| j == 0 && shard.index == 0);
            shard_gradients(m, experience, micro, shard, ptx, cfg, coefs)
        })?;
        let (grads, parts): (Vec<_>, Vec<_>) = shards
            .into_iter()
            .flatten()
            .map(|(grads, metrics, share)| (grads, (metrics, share)))
            .unzip();
        if !grads.is_empty() {
            let sum = summed.into_iter().chain(grads).collect();
            summed = Some(sum_gradients(models, device, sum));
        }
        shares.extend(parts);
    }
    Ok(summed.map(|grads| (grads, combine_shards(shares, cfg, coefs.1))))
}

/// One replica's part of a micro-batch of a minibatch step: the gradients of its shard's weighted
/// loss (with PPO-ptx's term on `ptx` when given), its metrics and its [`Share`]; `None` when
/// there is nothing to differentiate.
fn shard_gradients(
    models: &PolicyAndValue,
    experience: &Experience,
    micro: MicroBatch<'_>,
    shard: Shard<'_>,
    ptx: Option<&[&Example]>,
    cfg: &PpoConfig,
    (kl_coef, entropy_coef): (f32, f32),
) -> Result<Option<(GradientsParams, Metrics, Share)>> {
    let mb = experience.shard(micro, shard, models.policy.vocab_size())?;
    let (mut loss, mut metrics, share) = match &mb {
        Some(mb) => {
            let (loss, metrics) = minibatch_loss(models, mb, cfg, kl_coef, entropy_coef);
            (Some(loss), metrics, mb.share)
        }
        None => (None, Vec::new(), Share::NONE),
    };
    if let Some(picked) = ptx {
        let ptx = ptx_loss(&models.policy, picked, shard.device)?;
        metrics.push((
            names::OBJECTIVE_PTX_LOSS,
            f64::from(ptx.clone().into_scalar::<f32>()),
        ));
        let ptx = ptx.mul_scalar(cfg.ptx_coef);
        loss = Some(match loss {
            Some(loss) => loss.add(ptx),
            None => ptx,
        });
    }
    Ok(loss.map(|loss| {
        let grads = GradientsParams::from_grads(loss.backward(), models);
        (grads, metrics, share)
    }))
}

/// The minibatch's metrics from its shards' (the replicas' parts of its micro-batches): each
/// shard's weighted by its share of that metric's mean (`loss/policy` and `loss/kl` by the
/// policy loss's share, GSPO's per-sequence clip ratios and `vespo/phi_seq_mean` by responses,
/// `clip_ratio/low_min` and `/high_max` the least and the greatest over the shards, PPO-ptx's
/// loss as it is (only the first replica's shard of the first micro-batch computes it), the
/// others by tokens), and `loss/total`, the loss that is minimised, ptx included, made of
/// those. The shares are fractions of the whole minibatch, so a shard without response
/// tokens (left out) still counts in a mean over responses, as its rows count 0 in TRL's.
fn combine_shards(shards: Vec<(Metrics, Share)>, cfg: &PpoConfig, entropy_coef: f32) -> Metrics {
    let mut sums: Vec<(&'static str, f64)> = Vec::new();
    for (metrics, share) in shards {
        for (k, v) in metrics {
            // the least and the greatest over the responses: over the shards' too
            let extreme: Option<fn(f64, f64) -> f64> = match k {
                names::CLIP_RATIO_LOW_MIN => Some(f64::min),
                names::CLIP_RATIO_HIGH_MAX => Some(f64::max),
                _ => None,
            };
            if let Some(pick) = extreme {
                match sums.iter_mut().find(|s| s.0 == k) {
                    Some(s) => s.1 = pick(s.1, v),
                    None => sums.push((k, v)),
                }
                continue;
            }
            let w = f64::from(match k {
                names::LOSS_POLICY | names::LOSS_KL => share.of(cfg.loss_aggregation),
                names::CLIP_RATIO_LOW | names::CLIP_RATIO_HIGH | names::CLIP_RATIO_REGION
                    if cfg.policy_objective == PolicyObjective::Gspo =>
                {
                    share.responses
                }
                // a mean over the responses
                names::VESPO_PHI_MEAN => share.responses,
                names::OBJECTIVE_PTX_LOSS => 1.0,
                _ => share.tokens,
            });
            match sums.iter_mut().find(|s| s.0 == k) {
                Some(s) => s.1 += v * w,
                None => sums.push((k, v * w)),
            }
        }
    }
    // each weight is a share of the whole minibatch: the weighted sum is the minibatch's mean
    let mut metrics: Metrics = sums;
    let total = loss_total(&metrics, cfg, entropy_coef);
    match metrics.iter_mut().find(|m| m.0 == names::LOSS_TOTAL) {
        Some(m) => m.1 = total,
        None => metrics.push((names::LOSS_TOTAL, total)),
    }
    metrics
}

/// The SFT loss on a batch of demonstrations (PPO-ptx).
fn ptx_loss(policy: &CausalLm, demos: &[&Example], device: &Device) -> Result<Tensor<1>> {
    let pairs: Vec<(&[u32], &[u32])> = demos
        .iter()
        .map(|(p, r)| (p.as_slice(), r.as_slice()))
        .collect();
    let batch = rlhf_models::LmBatch::from_sequences(&rlhf_data::collate(&pairs, 0, None));
    rlhf_models::sft_loss(policy, &batch, device)
}

/// The prompts of iteration `it`: `prompts_per_batch` consecutive entries of the endless stream
/// of shuffled epochs over `count` prompts (epoch `e` shuffled from `(seed, e)`).
fn prompt_indices(count: usize, per_batch: usize, it: u64, seed: u64) -> Vec<usize> {
    let first = it as usize * per_batch;
    let mut cached: Option<(usize, Vec<usize>)> = None;
    (first..first + per_batch)
        .map(|k| {
            let epoch = k / count;
            if cached.as_ref().is_none_or(|c| c.0 != epoch) {
                let mut order: Vec<usize> = (0..count).collect();
                order.shuffle(
                    &mut TrainRng::seed_from_u64(seed).fork(&format!("ppo-prompts-{epoch}")),
                );
                cached = Some((epoch, order));
            }
            cached.as_ref().expect("just set").1[k % count]
        })
        .collect()
}

/// What one iteration produced.
pub struct Iteration {
    /// The models after the update.
    pub models: PolicyAndValue,
    /// The rollout.
    pub experience: Experience,
    /// The update's per-minibatch metrics.
    pub update: UpdateStats,
    /// Rollout metrics and the update's means.
    pub metrics: Metrics,
    /// `rewards/{name}/mean` and `rewards/{name}/std` of each named part of the scores (several
    /// reward functions), as TRL logs them.
    pub score_parts: Vec<(String, f64)>,
}

/// One full iteration (steps 1–5) on `prompts` (each sampled `n` times).
#[allow(clippy::too_many_arguments)]
// One piece, over 80 lines: one iteration, steps 1–5 in order, each already a call
// (sample_and_score, dynamic_sampling, make_experience, ppo_update); what is left is the timing
// and the metrics that join them.
pub fn ppo_iteration(
    models: PolicyAndValue,
    optim: &mut ModuleOptimizer,
    inputs: &PpoInputs,
    prompts: &[&str],
    cfg: &PpoConfig,
    kl_coef: f32,
    entropy: &mut EntropyController,
    lr: &dyn Fn(u64) -> f64,
    rng: &mut TrainRng,
    device: &Device,
    replicas: &Replicas,
) -> Result<Iteration> {
    let start = Instant::now();
    // LoRA adapters are merged into the sampling copy: a decode step then runs one product per
    // weight instead of composing `W + (α/r)·A·B` again for every token
    let inference = PolicyAndValue {
        policy: models.policy.valid().materialize(),
        value: models.value.as_ref().map(|v| v.valid()),
    };

    // 1–3. sample n responses per prompt (left-padded queries, at most `response_length` new
    // tokens at temperature T), cut at EOS, score (no EOS ⇒ the penalty; DAPO's overlong
    // punishment); with dynamic sampling, groups of equal scores are replaced by new prompts'
    let mut sample = |prompts: &[&str], rng: &mut TrainRng| {
        let reward = (inputs.tokenizer, inputs.scorer);
        sample_and_score(&inference.policy, reward, prompts, cfg, rng)
    };
    let first = sample(prompts, rng)?;
    let (rollout, dynamic) = match cfg.dynamic_sampling {
        Some(max_rounds) => {
            let (r, d) = dynamic_sampling(
                first,
                cfg.samples_per_prompt,
                prompts.len(),
                max_rounds,
                inputs.prompts,
                rng,
                &mut sample,
            )?;
            (r, Some(d))
        }
        None => (first, None),
    };
    let score_parts = part_metrics(&rollout.score_parts);
    let mut scores = rollout.scores.clone();
    let removed = reduce_score_variance(&mut scores, &rollout.lengths, cfg);
    let decoupled = match cfg.multi_objective_aggregation {
        MultiObjectiveAggregation::SumThenNormalize => None,
        MultiObjectiveAggregation::NormalizeThenSum => Some(decoupled_scores(
            &scores,
            &rollout.score_parts,
            rollout.score_weights.as_deref(),
            cfg.samples_per_prompt,
            &inference.policy.device(),
        )?),
    };
    let (query_ids, query_mask, generation) =
        (&rollout.query_ids, &rollout.query_mask, &rollout.generation);

    // 4. log-probs, values, rewards, advantages
    let reference = inputs.reference.valid();
    let (experience, mut metrics) = make_experience(
        &inference,
        &reference,
        query_ids,
        query_mask,
        generation,
        &scores,
        decoupled.as_deref(),
        cfg,
        kl_coef,
    )?;
    // the rewards' spread as the scorer and the penalties gave them (TRL's reward functions),
    // held in the reward clip (TRL's spread is of the unclipped sum), before any variance
    // reduction
    metrics.push((
        names::REWARD_STD,
        stats::sample_std(&widened(&rollout.scores)),
    ));
    metrics.push((
        names::FRAC_REWARD_ZERO_STD,
        frac_zero_std(&rollout.scores, cfg.samples_per_prompt),
    ));
    if let Some(share) = removed {
        metrics.push((names::OBJECTIVE_VARIANCE_REMOVED, share));
    }
    if cfg.overlong_buffer.is_some() {
        let penalties = rollout.overlong.iter().map(|&p| f64::from(p));
        metrics.push((names::OBJECTIVE_OVERLONG, stats::mean(penalties)));
    }
    if let Some(d) = dynamic {
        metrics.extend(d.metrics());
    }
    let rollout_seconds = start.elapsed().as_secs_f64();

    // 5. epochs of minibatch updates
    let update_start = Instant::now();
    let (models, update) = ppo_update(
        models,
        optim,
        &experience,
        cfg,
        kl_coef,
        entropy,
        lr,
        inputs.demonstrations,
        rng,
        device,
        replicas,
    )?;
    metrics.extend(update.mean());
    metrics.push((names::TRAIN_SKIPPED_STEPS, update.skipped as f64));
    metrics.push((names::TIME_ROLLOUT, rollout_seconds));
    metrics.push((names::TIME_UPDATE, update_start.elapsed().as_secs_f64()));
    metrics.push((names::TIME_STEP, start.elapsed().as_secs_f64()));
    Ok(Iteration {
        models,
        experience,
        update,
        metrics,
        score_parts,
    })
}

/// The mean and the standard deviation (Bessel-corrected, as TRL's `nanstd`) of each named part
/// of the scores, as `rewards/{name}/mean` and `rewards/{name}/std`.
pub(crate) fn part_metrics(parts: &[(String, Vec<f32>)]) -> Vec<(String, f64)> {
    parts
        .iter()
        .flat_map(|(name, values)| {
            let values = widened(values);
            [
                (format!("rewards/{name}/mean"), stats::mean(&values)),
                (format!("rewards/{name}/std"), stats::sample_std(&values)),
            ]
        })
        .collect()
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct PpoReport {
    /// Iterations done, including those before a resume.
    pub iterations: u64,
    /// Iterations this call ran.
    pub iterations_this_run: u64,
    /// Episodes (sampled responses) per iteration.
    pub episodes_per_iteration: u64,
    /// The last iteration's metrics (with the last eval's of fixed names, when there is one;
    /// `rewards/{name}/*` and `eval_rewards/{name}/*` are in `metrics.jsonl` only).
    pub last: Metrics,
    /// β after the last iteration.
    pub final_kl_coef: f64,
}

impl PpoReport {
    /// Records iteration `done`, run in this call, and its metrics line.
    fn record(&mut self, done: u64, line: Metrics) {
        self.iterations = done;
        self.iterations_this_run += 1;
        self.last = line;
    }
}

/// Trains `models` (on the autodiff `device`) for `cfg.iterations` iterations of
/// [`ppo_iteration`]. With an output directory in `run_options`, metrics go to `metrics.jsonl`
/// (one line per iteration) and checkpoints (models, optimizer, the KL and entropy controllers,
/// iteration) to `checkpoints/`; a run started again in the same directory resumes after its
/// newest checkpoint.
pub fn train_ppo(
    models: PolicyAndValue,
    inputs: &PpoInputs,
    cfg: &PpoConfig,
    run_options: &RunOptions,
    device: &Device,
) -> Result<(PolicyAndValue, PpoReport)> {
    cfg.validate()?;
    check_inputs(&models, inputs, cfg)?;
    let replicas = &run_options.replicas;
    let mut models = prepare_models(models, cfg, replicas)?;
    // TR-DPO's update of the KL's reference, when it follows the policy
    let live = cfg
        .sync_ref
        .map(|sync| LiveReference::new(inputs.reference, &models.policy, sync))
        .transpose()?;
    check_memory(&models, inputs.reference, cfg, replicas, device)?;
    let total = cfg.iterations as u64;
    let mut optim = cfg.optimizer.build()?;
    let mut ctl = Controllers::of(cfg);
    let (mut run, resume) = Run::start(run_options, total, "ppo")?;
    let mut report = PpoReport {
        episodes_per_iteration: cfg.batch_size() as u64,
        ..PpoReport::default()
    };
    if let Some(c) = resume {
        (models, optim, ctl) = restore(&c, run_options, models, optim, (live.as_ref(), ctl))?;
        report.iterations = c.step;
    }
    let updates_per_iteration = (cfg.ppo_epochs * cfg.num_minibatches) as u64;
    let schedule = lr_schedule(cfg, total * updates_per_iteration);
    for it in report.iterations..total {
        // 1–5. sample, score, experience and update on the iteration's prompts
        let mut rng = TrainRng::seed_from_u64(cfg.seed).fork(&format!("ppo-iteration-{it}"));
        let prompts = iteration_prompts(inputs.prompts, cfg, it);
        let lr = |s: u64| schedule.lr_at(cfg.optimizer.lr, it * updates_per_iteration + s);
        let beta = ctl.kl.value() as f32;
        let reference = live.as_ref().map(LiveReference::current);
        let inputs_now = inputs.with_reference(reference.as_ref());
        let step = ppo_iteration(
            models,
            &mut optim,
            &inputs_now,
            &prompts,
            cfg,
            beta,
            &mut ctl.entropy,
            &lr,
            &mut rng,
            device,
            replicas,
        )?;
        models = step.models;
        let done = it + 1;
        check_finite_steps(&mut run, done, &step.update)?;
        if let Some(l) = &live {
            // its steps are a multiple of an iteration's: it moves between rollouts only
            l.after_step(done * updates_per_iteration, &models.policy)?;
        }

        // 6. the metrics line, the KL controller's update, eval, log and checkpoint
        let mut line = iteration_line(step.metrics, run.skipped_steps(), beta, lr(0));
        let kl_now = metric(&line, names::OBJECTIVE_KL).unwrap_or(0.0);
        ctl.kl.update(kl_now, cfg.batch_size());
        let evaluated = (&models.policy, live.as_ref());
        let named = evaluate(&mut line, inputs, evaluated, (done, total))?;
        run.log(done, &logged(&line, step.score_parts.iter().chain(&named)))?;
        log_samples(&mut run, &step.experience, inputs.tokenizer, done, total)?;
        let score = metric(&line, names::OBJECTIVE_SCORES).unwrap_or(f64::NAN);
        run.step_done(done, format!("score {score:.3} kl {kl_now:.2}"));
        report.record(done, line);
        let extra = live.as_ref().map(|l| l.parts()).unwrap_or_default();
        checkpoint_if_due(&run, done, total, (&models, &optim, &ctl), extra)?;
    }
    report.final_kl_coef = ctl.kl.value();
    run.finish();
    Ok((models, report))
}

/// The prompts of iteration `it`.
fn iteration_prompts<'p>(prompts: &'p [String], cfg: &PpoConfig, it: u64) -> Vec<&'p str> {
    let picked = prompt_indices(prompts.len(), cfg.prompts_per_batch, it, cfg.seed);
    picked.iter().map(|&i| prompts[i].as_str()).collect()
}

/// The learning rate over the run's `updates`: `cfg.lr_schedule`'s when set, otherwise annealed
/// linearly to 0 when `cfg.anneal_lr`.
fn lr_schedule(cfg: &PpoConfig, updates: u64) -> LrSchedule {
    if let Some(plan) = &cfg.lr_schedule {
        plan.over(updates)
    } else if cfg.anneal_lr {
        LrSchedule::Linear {
            warmup: 0,
            total: updates,
        }
    } else {
        LrSchedule::Constant
    }
}

/// Refuses a run without prompts, a critic where the estimator needs none or none where it needs
/// one, and a reference or critic that reads other token ids than the policy.
fn check_inputs(models: &PolicyAndValue, inputs: &PpoInputs, cfg: &PpoConfig) -> Result<()> {
    if inputs.prompts.is_empty() {
        return Err(Error::Config("ppo: no training prompts".into()));
    }
    if cfg.advantage.needs_critic() != models.value.is_some() {
        return Err(Error::Config(format!(
            "ppo: the {:?} estimator {} a value model",
            cfg.advantage,
            if cfg.advantage.needs_critic() {
                "needs"
            } else {
                "does not use"
            }
        )));
    }
    // the reference and the critic read the policy's token ids
    let vocab = models.policy.vocab_size();
    for (what, v) in std::iter::once(("reference", inputs.reference.vocab_size())).chain(
        models
            .value
            .iter()
            .map(|c| ("critic", c.backbone.vocab_size())),
    ) {
        if v != vocab {
            return Err(Error::Config(format!(
                "ppo: the {what} has {v} embedding rows and the policy {vocab}; they must share \
                 the tokenizer"
            )));
        }
    }
    Ok(())
}

/// The models as the run trains them: the critic with its own parameter ids, dropout off when
/// `cfg.disable_dropout` says so; refused when dropout is left on with data-parallel `replicas`,
/// or a share of high-entropy tokens is asked for with them ([`check_replicas`]).
fn prepare_models(
    models: PolicyAndValue,
    cfg: &PpoConfig,
    replicas: &Replicas,
) -> Result<PolicyAndValue> {
    // the critic gets its own parameter ids (see `PolicyAndValue::new`); TL;DR detail 1
    let models = PolicyAndValue::new(models.policy, models.value);
    let models = if cfg.disable_dropout {
        PolicyAndValue {
            policy: models.policy.without_dropout(),
            value: models.value.map(ScalarModel::without_dropout),
        }
    } else {
        models
    };
    let dropout = models.value.as_ref().map_or(0.0, |v| v.backbone.dropout());
    replicas.refuse_with_dropout("ppo", models.policy.dropout().max(dropout))?;
    check_replicas(cfg, replicas)?;
    Ok(models)
}

/// Writes the samples of iteration `done` (of `total`) to `completions.jsonl` when the run logs
/// them and the iteration is due.
fn log_samples(
    run: &mut Run,
    exp: &Experience,
    tokenizer: &Tokenizer,
    done: u64,
    total: u64,
) -> Result<()> {
    match run.completions_due(done, total) {
        Some(n) => run.log_completions(done, completion_rows(exp, tokenizer, n)?),
        None => Ok(()),
    }
}

/// Refused: a share of high-entropy tokens with data-parallel `replicas` (each would cut its own
/// shard at its own quantile, where TRL gathers every process's entropies first).
fn check_replicas(cfg: &PpoConfig, replicas: &Replicas) -> Result<()> {
    if cfg.top_entropy_quantile < 1.0 && replicas.count() > 1 {
        return Err(Error::Config(
            "top_entropy_quantile cuts each minibatch at the quantile of its tokens' entropies, \
             which data-parallel replicas would each take over their own shard: train on one \
             device"
                .into(),
        ));
    }
    Ok(())
}

/// Refuses, before the first rollout, a run whose minibatches would not fit in memory: the
/// policy and the critic are trained, the `reference` is held (the scorer is the caller's).
fn check_memory(
    models: &PolicyAndValue,
    reference: &CausalLm,
    cfg: &PpoConfig,
    replicas: &Replicas,
    device: &Device,
) -> Result<()> {
    let policy_params = memory::Params::of(&models.policy);
    let value_params = models
        .value
        .as_ref()
        .map_or_else(Default::default, memory::Params::of);
    let (rows, seq) = (
        (cfg.batch_size() / cfg.num_minibatches / cfg.grad_accum.max(1)) as u64,
        (cfg.query_length + cfg.response_length) as u64,
    );
    let (policy_shape, value_shape) = (
        models.policy.shape(),
        models.value.as_ref().map(ScalarModel::shape),
    );
    let policy_checkpointing = memory::checkpointing(device, &models.policy);
    // an entropy bonus holds a log-softmax of its own over the response positions, and its
    // product with the probabilities, for the gradient
    let bonus_bytes = |r: u64| {
        let cells = r * cfg.response_length as u64 * models.policy.vocab_size() as u64;
        if cfg.entropy_controller().active() {
            2 * 4 * cells
        } else {
            0
        }
    };
    let value_checkpointing = models
        .value
        .as_ref()
        .is_some_and(|v| memory::checkpointing(device, v));
    memory::check_batch_fits(
        "PPO",
        memory::Params {
            trained: policy_params.trained + value_params.trained,
            frozen_bytes: policy_params.frozen_bytes
                + value_params.frozen_bytes
                + memory::bytes_not_in(reference, &models.policy)
                // the rollout reads the reference on the first device only
                + cfg.sync_ref.map_or(0, |_| LiveReference::held_bytes(reference, 1)),
            // the policy is what the run writes (a critic, when written, after it)
            exported: policy_params.exported,
            adapted: policy_params.adapted + value_params.adapted,
        },
        replicas.count() as u64,
        &memory::Batch {
            rows,
            seq,
            activations: &|r, s| {
                policy_shape.activation_bytes(r, s, policy_checkpointing)
                    + value_shape.map_or(0, |v| v.activation_bytes(r, s, value_checkpointing))
                    + bonus_bytes(r)
            },
            rows_knob: "grad_accum, --gradient-accumulation-steps (the same step in more, \
                        smaller micro-batches), or num_minibatches, --num-mini-batches (more, \
                        smaller steps)",
            seq_knob: "query_length and response_length",
        },
    )
}

/// The models, the optimizer, the KL and the entropy controllers (and a synced reference, into
/// `live`) as checkpoint `c` (of the run in `run_options`' output directory) saved them; the
/// entropy controller carries on from the saved state into `ctl`'s settings, and starts afresh
/// from a checkpoint that holds none.
fn restore(
    c: &Checkpoint,
    run_options: &RunOptions,
    models: PolicyAndValue,
    optim: ModuleOptimizer,
    (live, ctl): (Option<&LiveReference<CausalLm>>, Controllers),
) -> Result<(PolicyAndValue, ModuleOptimizer, Controllers)> {
    let dir = run_options.out_dir.clone().unwrap_or_default();
    if let Some(l) = live {
        l.restore(c, &dir)?;
    }
    let part = |name: &str| c.part(name, &dir);
    let models = module_from_bytes(models, part("models")?)?;
    let optim = optimizer_from_bytes(optim, part("optimizer")?)?;
    let bad = |what: &str, e: serde_json::Error| Error::Checkpoint {
        path: dir.clone(),
        message: format!("bad {what} state: {e}"),
    };
    let kl = serde_json::from_value(c.state["kl"].clone()).map_err(|e| bad("KL controller", e))?;
    let entropy = match c.state.get("entropy") {
        Some(saved) => ctl.entropy.resume_from(
            &serde_json::from_value(saved.clone()).map_err(|e| bad("entropy controller", e))?,
        ),
        None => ctl.entropy,
    };
    Ok((models, optim, Controllers { kl, entropy }))
}

/// Counts in `run` every minibatch step of iteration `done` whose loss or gradient norm was not
/// finite (the update skipped it); too many in a row stop the run.
fn check_finite_steps(run: &mut Run, done: u64, update: &UpdateStats) -> Result<()> {
    for (k, m) in update.minibatches.iter().enumerate() {
        let finite = [names::LOSS_TOTAL, names::TRAIN_GRAD_NORM]
            .iter()
            .all(|n| m.iter().find(|x| x.0 == *n).is_none_or(|x| x.1.is_finite()));
        run.check_finite(done, finite, || {
            format!("ppo iteration {done}, minibatch {k}")
        })?;
    }
    Ok(())
}

/// The iteration's metrics line: `metrics` with the run's count of skipped steps (`skipped`,
/// resumes included) in place of the update's, then β and the learning rate of the first step.
fn iteration_line(mut metrics: Metrics, skipped: u64, beta: f32, lr: f64) -> Metrics {
    for m in metrics
        .iter_mut()
        .filter(|m| m.0 == names::TRAIN_SKIPPED_STEPS)
    {
        m.1 = skipped as f64;
    }
    metrics.push((names::TRAIN_KL_COEF, f64::from(beta)));
    metrics.push((names::TRAIN_LR, lr));
    metrics
}

/// The caller's eval of `policy` after iteration `done` of `total`, beside the KL's reference
/// (the `live` one when it follows the policy): every `eval_every` iterations, after the last,
/// and after the first when `eval_first`; nothing otherwise. Its metrics of fixed names join
/// `line`; the named ones are returned.
fn evaluate(
    line: &mut Metrics,
    inputs: &PpoInputs,
    (policy, live): (&CausalLm, Option<&LiveReference<CausalLm>>),
    (done, total): (u64, u64),
) -> Result<Vec<(String, f64)>> {
    let Some(eval) = inputs.eval else {
        return Ok(Vec::new());
    };
    if !eval_is_due(done, total, inputs.eval_every, inputs.eval_first) {
        return Ok(Vec::new());
    }
    let evaluated = match live {
        Some(l) => eval(policy, &l.current())?,
        None => eval(policy, inputs.reference)?,
    };
    line.extend(evaluated.metrics);
    Ok(evaluated.named)
}

/// A metrics line as the log takes it: `line`, then the metrics whose names are built (a
/// reward function's).
fn logged<'a>(
    line: &'a Metrics,
    named: impl Iterator<Item = &'a (String, f64)>,
) -> Vec<(&'a str, f64)> {
    let named = named.map(|(k, v)| (k.as_str(), *v));
    line.iter().copied().chain(named).collect()
}

/// Whether the eval runs after iteration `done` of `total` (see [`evaluate`]).
fn eval_is_due(done: u64, total: u64, every: u64, first: bool) -> bool {
    (first && done == 1) || eval_due(done, total, every)
}

/// The controllers of the loss's coefficients, whose state a checkpoint holds: β's and the
/// entropy bonus's.
struct Controllers {
    kl: KlController,
    entropy: EntropyController,
}

impl Controllers {
    /// The controllers at the start of a run.
    fn of(cfg: &PpoConfig) -> Self {
        Controllers {
            kl: cfg.kl.clone(),
            entropy: cfg.entropy_controller(),
        }
    }
}

/// Saves a checkpoint after iteration `done` when one is due (models, optimizer, the KL and the
/// entropy controllers, and the `extra` parts: a synced reference), then stops the run if it was
/// interrupted.
fn checkpoint_if_due(
    run: &Run,
    done: u64,
    total: u64,
    (models, optim, ctl): (&PolicyAndValue, &ModuleOptimizer, &Controllers),
    extra: Vec<(String, Part<'static>)>,
) -> Result<()> {
    if !run.checkpoint_due(done, total) {
        return Ok(());
    }
    run.save(|| {
        Ok(NewCheckpoint {
            step: done,
            parts: [
                ("models".to_string(), Part::module(models.clone())),
                ("optimizer".to_string(), Part::optimizer(optim)),
            ]
            .into_iter()
            .chain(extra)
            .collect(),
            state: json!({ "trainer": "ppo", "kl": ctl.kl, "entropy": ctl.entropy }),
        })
    })?;
    run.stop_if_interrupted(done)
}

#[cfg(test)]
mod tests {
    use super::eval_is_due;

    fn due(total: u64, every: u64, first: bool) -> Vec<u64> {
        (1..=total)
            .filter(|&d| eval_is_due(d, total, every, first))
            .collect()
    }

    #[test]
    fn the_eval_runs_every_k_iterations_after_the_last_and_after_the_first_when_asked() {
        assert_eq!(due(7, 2, false), [2, 4, 6, 7]);
        assert_eq!(due(7, 2, true), [1, 2, 4, 6, 7]);
        assert_eq!(due(5, 0, false), [5]);
        assert_eq!(due(5, 0, true), [1, 5]);
        assert_eq!(due(1, 3, true), [1]);
    }
}
