//! KTO (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization"), as
//! TRL's `KTOTrainer` runs it: each example is one response labelled desirable or undesirable on
//! its own, with no pair to compare it with.
//!
//! Notation, for a batch of `n` examples `(x_j, y_j, d_j)`, `d_j ∈ {desirable, undesirable}`:
//!
//! - `r_j = logπ(y_j|x_j) − logπ_ref(y_j|x_j)`, sequence log-probs summed over response tokens;
//! - the **mismatched pairs** `(x_j, y′_j)` with `y′_j = y_{(j−1) mod n}`: the batch's responses
//!   rotated by one, so that each prompt meets another example's response and the mismatched
//!   responses are the batch's own responses, paired with other prompts (TRL's
//!   `(x_1, y_n), (x_2, y_1), …, (x_n, y_{n−1})`);
//! - the reference point `z_ref = max(0, (1/n)·Σ_j [logπ(y′_j|x_j) − logπ_ref(y′_j|x_j)])`, a
//!   batch estimate of `KL(π ‖ π_ref)`, **detached** (no gradient flows through it);
//! - the loss of example `j`:
//!   `L_j = λ_D·(1 − σ(β·(r_j − z_ref)))` when `y_j` is desirable,
//!   `L_j = λ_U·(1 − σ(β·(z_ref − r_j)))` when it is undesirable,
//!   and the batch's loss is `(1/n)·Σ_j L_j`.
//!
//! TRL's `loss_type = "apo_zero_unpaired"` ([`KtoLoss::ApoZeroUnpaired`]; the unpaired APO-zero
//! of D'Oosterlinck et al. 2024, "Anchored Preference Optimization", Eq. 7) is the same loss with
//! `z_ref = 0`: `λ_D·(1 − σ(β·r_j))` for a desirable response and `λ_U·σ(β·r_j)` for an
//! undesirable one, which pushes every desirable response's likelihood up and every undesirable
//! one's down, whatever the policy's drift; it has no mismatched pairs, so a batch may hold one
//! example and the logged `kl` is 0, as TRL logs it.
//!
//! TRL's defaults: `β = 0.1`, `λ_D = λ_U = 1`. The paper's Eq. (8) advises
//! `λ_D·n_D / (λ_U·n_U) ∈ [1, 4/3]` ([`KtoConfig::weight_advice`]).
//!
//! The trainer ([`train_kto`]) forms its batches once per run: a seeded permutation of the
//! examples cut into `batch_size` chunks (for KTO's loss a last chunk of one joins the one before
//! it, since a prompt paired with its own response would make `z_ref` the example's own
//! log-ratio; the unpaired APO-zero keeps it alone). Each
//! batch's mismatched pairs are therefore fixed, and the reference's log-probs of the matched and
//! the mismatched pairs come from the [`RefCache`] like DPO's, or, when the reference follows the
//! policy (TR-DPO's `sync_ref`, TRL's `sync_ref_model`), from the reference as it is, batch by
//! batch. Each epoch visits the batches in its own seeded order. The mismatched pairs are read
//! from the policy without gradients (only their detached mean is used).

use std::sync::atomic::{AtomicU64, Ordering};

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData, activation};
use rand::seq::SliceRandom;
use rlhf_core::host::to_f32_vec;
use rlhf_core::train::memory;
use rlhf_core::train::{
    AfterStep, BatchLoss, FitConfig, LiveReference, LrSchedule, Metrics, OptimizerConfig,
    RunOptions, SyncRef, TrainRng, fit_with, metrics::names,
};
use rlhf_core::{Error, Result};
use rlhf_models::CausalLm;
use serde::{Deserialize, Serialize};

use crate::cache::{LogpSpec, RefCache};
use crate::trainer::{
    Group, SEQUENCE_TEMPERATURE, batch_reference_logps, pair_logps, reference_logps,
};

/// One response to a prompt, labelled on its own.
#[derive(Debug, Clone, PartialEq)]
pub struct KtoExample {
    /// Prompt tokens.
    pub prompt: Vec<u32>,
    /// Response tokens (ending with EOS).
    pub response: Vec<u32>,
    /// Whether the response is desirable (TRL's `label`).
    pub desirable: bool,
}

/// The per-example KTO loss `[n]` (see the module documentation):
/// `L_j = λ_j·σ(−s_j·β·(r_j − z_ref))` with `s_j = +1, λ_j = λ_D` for a desirable example and
/// `s_j = −1, λ_j = λ_U` for an undesirable one (`1 − σ(u) = σ(−u)`).
///
/// - `log_ratios`: `[n]`, `r_j = logπ(y_j|x_j) − logπ_ref(y_j|x_j)`;
/// - `desirable`: `[n]`, 1 for a desirable example, 0 for an undesirable one;
/// - `z_ref`: `[1]`, the batch's reference point ([`kto_reference_point`]);
/// - `beta`: β; `desirable_weight`, `undesirable_weight`: `λ_D`, `λ_U`.
///
/// Each value lies in `[0, λ_j]`, and is `λ_j/2` at `r_j = z_ref`. σ is computed as
/// `exp(log σ(·))`, so that any finite input gives a finite loss and gradient.
pub fn kto_loss(
    log_ratios: Tensor<1>,
    desirable: Tensor<1>,
    z_ref: Tensor<1>,
    beta: f32,
    desirable_weight: f32,
    undesirable_weight: f32,
) -> Tensor<1> {
    let [n] = log_ratios.dims();
    // u_j = β·(r_j − z_ref); s_j = 2·d_j − 1
    let u = log_ratios.sub(z_ref.expand([n])).mul_scalar(beta);
    let sign = desirable.clone().mul_scalar(2.0).sub_scalar(1.0);
    // d·λ_D + (1 − d)·λ_U: each term exact for d ∈ {0, 1} (d·(λ_D − λ_U) + λ_U would cancel in
    // f32, λ_D = 1e-3 beside λ_U = 2.2 coming out 1.2e-4 too large)
    let weight = desirable.clone().mul_scalar(desirable_weight).add(
        desirable
            .clone()
            .neg()
            .add_scalar(1.0)
            .mul_scalar(undesirable_weight),
    );
    activation::log_sigmoid(u.mul(sign).neg()).exp().mul(weight)
}

/// The batch's reference point `z_ref = max(0, mean_j(logπ(y′_j|x_j) − logπ_ref(y′_j|x_j)))`,
/// detached: `[1]` from the mismatched pairs' sequence log-probs under the policy and the
/// reference, each `[n]`.
pub fn kto_reference_point(policy_logps: Tensor<1>, reference_logps: Tensor<1>) -> Tensor<1> {
    policy_logps
        .sub(reference_logps)
        .mean()
        .clamp_min(0.0)
        .detach()
}

/// The fixed batches of a run: `order` (a permutation of the examples) cut into chunks of
/// `batch_size`, a last chunk of one joined to the chunk before it.
pub fn kto_batches(order: &[usize], batch_size: usize) -> Vec<Vec<usize>> {
    let mut batches: Vec<Vec<usize>> = order
        .chunks(batch_size.max(1))
        .map(<[usize]>::to_vec)
        .collect();
    if batches.len() > 1 && batches.last().is_some_and(|b| b.len() == 1) {
        let last = batches.pop().expect("more than one batch");
        batches.last_mut().expect("one left").extend(last);
    }
    batches
}

/// The training batches of a run over `n` examples: a permutation drawn from `seed` cut by
/// [`kto_batches`]. They stay the same in every epoch (only their order changes), so each
/// example keeps its mismatched partner.
pub fn kto_train_batches(n: usize, batch_size: usize, seed: u64) -> Vec<Vec<usize>> {
    kto_train_batches_for(KtoLoss::Kto, n, batch_size, seed)
}

/// [`kto_train_batches`] for `loss` ([`KtoLoss::batches`]).
fn kto_train_batches_for(loss: KtoLoss, n: usize, batch_size: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut TrainRng::seed_from_u64(seed).fork("kto-batches"));
    loss.batches(&order, batch_size)
}

/// For each example (by index, up to the largest in `batches`), the example whose response makes
/// its mismatched pair: in a batch `[b_0, …, b_{m−1}]`, `b_k` takes the response of
/// `b_{(k−1) mod m}` (an index in no batch is its own partner).
pub fn mismatched_partners(batches: &[Vec<usize>]) -> Vec<usize> {
    let n = batches.iter().flatten().max().map_or(0, |&m| m + 1);
    let mut partner: Vec<usize> = (0..n).collect();
    for b in batches {
        for (k, &i) in b.iter().enumerate() {
            partner[i] = b[(k + b.len() - 1) % b.len()];
        }
    }
    partner
}

/// The loss (TRL's `loss_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KtoLoss {
    /// KTO's, with the batch's reference point `z_ref`.
    #[default]
    Kto,
    /// The unpaired APO-zero: `z_ref = 0`, no mismatched pairs.
    ApoZeroUnpaired,
}

impl KtoLoss {
    /// Whether the loss pairs each prompt with another example's response (KTO's `z_ref`).
    pub fn pairs(self) -> bool {
        self == KtoLoss::Kto
    }

    /// The fixed batches of a run for this loss: [`kto_batches`] for KTO (a last chunk of one
    /// joins the one before it, so that no example is its own mismatched pair), plain chunks of
    /// `batch_size` for the unpaired APO-zero.
    pub fn batches(self, order: &[usize], batch_size: usize) -> Vec<Vec<usize>> {
        if self.pairs() {
            kto_batches(order, batch_size)
        } else {
            order
                .chunks(batch_size.max(1))
                .map(<[usize]>::to_vec)
                .collect()
        }
    }
}

/// KTO settings (TRL's `KTOConfig` where it has the same field).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct KtoConfig {
    /// The loss: KTO's, or the unpaired APO-zero.
    pub loss_type: KtoLoss,
    /// β.
    pub beta: f32,
    /// `λ_D`, the weight of desirable examples' losses.
    pub desirable_weight: f32,
    /// `λ_U`, the weight of undesirable examples' losses.
    pub undesirable_weight: f32,
    /// Passes over the data.
    pub epochs: usize,
    /// Stop after this many optimizer steps, within the epochs (transformers' `max_steps`; give
    /// enough `epochs` to reach it). `None`: every epoch to its end.
    pub max_steps: Option<u64>,
    /// Examples per micro-batch (≥ 2 for KTO's loss: `z_ref` is estimated within it).
    pub batch_size: usize,
    /// Micro-batches per optimizer step (each its own `z_ref`, as in TRL).
    pub grad_accum: usize,
    /// AdamW and clipping.
    pub optimizer: OptimizerConfig,
    /// Schedule over optimizer steps.
    pub schedule: LrSchedule,
    /// Eval every this many steps (0 = only at the end).
    pub eval_every: u64,
    /// Longest prompt / response kept.
    pub truncation: Option<(usize, usize)>,
    /// The longest mismatched pair: an example's prompt followed by its partner's response is
    /// cut to this many tokens, as TRL cuts its KL sequences to `max_length`; every prompt must
    /// be shorter. `None`: kept whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<usize>,
    /// Dropout off in the policy (TRL's `disable_dropout`).
    pub disable_dropout: bool,
    /// Seed of the batches and of their order.
    pub seed: u64,
    /// TR-DPO: the reference follows the policy ([`SyncRef`]; TRL's `sync_ref_model`): every
    /// `τ` optimizer steps it moves to `α·π_θ + (1 − α)·π_ref`, and its log-probs are read
    /// batch by batch (the reference cache is not). `None`: frozen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync_ref: Option<SyncRef>,
}

impl Default for KtoConfig {
    fn default() -> Self {
        KtoConfig {
            loss_type: KtoLoss::Kto,
            beta: 0.1,
            desirable_weight: 1.0,
            undesirable_weight: 1.0,
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
            max_length: None,
            disable_dropout: true,
            seed: 0,
            sync_ref: None,
        }
    }
}

impl KtoConfig {
    /// Checks the ranges: β finite and > 0 (at 0 the loss is a constant); the weights finite,
    /// ≥ 0 and not both 0; for KTO's loss at least two examples per micro-batch (with one, the
    /// mismatched pair would be the example itself — TRL refuses it too), one epoch and one
    /// micro-batch per step; the optimizer's own ranges.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(format!("kto: {m}")));
        if !self.beta.is_finite() || self.beta <= 0.0 {
            return bad(format!("beta must be finite and > 0, got {}", self.beta));
        }
        for (name, w) in [
            ("desirable_weight", self.desirable_weight),
            ("undesirable_weight", self.undesirable_weight),
        ] {
            if !w.is_finite() || w < 0.0 {
                return bad(format!("{name} must be finite and ≥ 0, got {w}"));
            }
        }
        if self.desirable_weight == 0.0 && self.undesirable_weight == 0.0 {
            return bad(
                "desirable_weight and undesirable_weight are both 0: nothing to learn".into(),
            );
        }
        if self.batch_size < 2 && self.loss_type.pairs() {
            return bad(format!(
                "batch_size must be ≥ 2 (z_ref pairs each prompt with another example's \
                 response), got {}",
                self.batch_size
            ));
        }
        if self.batch_size == 0 || self.epochs == 0 || self.grad_accum == 0 {
            return bad("batch_size, epochs and grad_accum must be ≥ 1".into());
        }
        if let Some(sync) = &self.sync_ref {
            sync.validate()?;
        }
        self.optimizer.validate()
    }

    /// How the trainer reads sequence log-probs (the reference cache's key covers it).
    pub fn logp_spec(&self) -> LogpSpec {
        LogpSpec {
            truncation: self.truncation,
            temperature: SEQUENCE_TEMPERATURE,
            ld_alpha: None,
        }
    }

    /// The paper's advice on unbalanced data (its Eq. 8, as TRL checks it): with `n_D` desirable
    /// and `n_U` undesirable examples, `λ_D·n_D / (λ_U·n_U)` should lie in `[1, 4/3]`. `None`
    /// when the counts are equal or either weight is in its range; otherwise the ranges to pick
    /// one weight from.
    pub fn weight_advice(&self, n_desirable: usize, n_undesirable: usize) -> Option<String> {
        let (nd, nu) = (n_desirable.max(1) as f64, n_undesirable.max(1) as f64);
        if nd == nu {
            return None;
        }
        let (wd, wu) = (
            f64::from(self.desirable_weight),
            f64::from(self.undesirable_weight),
        );
        let d_range = (nu * wu / nd, nu * wu / nd * 4.0 / 3.0);
        let u_range = (nd * wd / nu * 3.0 / 4.0, nd * wd / nu);
        let within = |x: f64, (lo, hi): (f64, f64)| lo - 1e-9 <= x && x <= hi + 1e-9;
        if within(wd, d_range) || within(wu, u_range) {
            return None;
        }
        Some(format!(
            "{n_desirable} desirable and {n_undesirable} undesirable examples: the KTO paper \
             advises desirable_weight in [{:.3}, {:.3}] or undesirable_weight in [{:.3}, {:.3}] \
             (one of them, not both)",
            d_range.0, d_range.1, u_range.0, u_range.1
        ))
    }
}

/// Held-out results (NaN where the held-out data has no example of a kind).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KtoEval {
    /// Mean loss over the examples.
    pub loss: f64,
    /// Mean `z_ref` over the batches (weighted by their sizes).
    pub kl: f64,
    /// Mean `β·r` of the desirable examples.
    pub rewards_chosen: f64,
    /// Mean `β·r` of the undesirable examples.
    pub rewards_rejected: f64,
    /// `rewards_chosen − rewards_rejected`.
    pub reward_margin: f64,
    /// Mean `logπ(y|x)` of the desirable examples.
    pub logps_chosen: f64,
    /// Mean `logπ(y|x)` of the undesirable examples.
    pub logps_rejected: f64,
}

/// What a run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KtoReport {
    /// Optimizer steps, including those before a resume.
    pub steps: u64,
    /// Steps this call took.
    pub steps_this_run: u64,
    /// Loss of the last step.
    pub final_train_loss: f64,
    /// Batches the reference model was run on by this call (0 when the cache had everything).
    pub reference_forward_batches: u64,
    /// Eval at the end.
    pub eval: KtoEval,
}

/// A data set ready to train or evaluate on: its fixed batches, each example's mismatched
/// partner (none for the unpaired APO-zero), and the reference's `[logπ_ref(y|x), logπ_ref(y′|x)]`
/// of each example (`[logπ_ref(y|x)]` without partners; empty when the reference follows the
/// policy: then they are read batch by batch, [`Prepared::reference`]).
struct Prepared<'a> {
    examples: &'a [KtoExample],
    batches: Vec<Vec<usize>>,
    partner: Option<Vec<usize>>,
    /// The longest mismatched pair ([`KtoConfig::max_length`]).
    max_length: Option<usize>,
    reference: Vec<Vec<f32>>,
}

impl Prepared<'_> {
    /// Example `i`'s mismatched partner, when the loss has them.
    fn partner(&self, i: usize) -> Option<usize> {
        self.partner.as_ref().map(|p| p[i])
    }

    /// The reference's `[logπ_ref(y|x), logπ_ref(y′|x)]` of each example of the batch `idx`:
    /// prepared, or read now from `live`, the reference as it is (one forward batch, counted in
    /// `batches_run`).
    fn reference(
        &self,
        idx: &[usize],
        live: Option<&CausalLm>,
        spec: &LogpSpec,
        device: &Device,
        batches_run: &AtomicU64,
    ) -> Result<Vec<Vec<f32>>> {
        let Some(reference) = live else {
            return Ok(idx.iter().map(|&i| self.reference[i].clone()).collect());
        };
        let groups: Vec<Group> = idx
            .iter()
            .map(|&i| kl_group(self.examples, i, self.partner(i), self.max_length))
            .collect();
        let groups: Vec<&Group> = groups.iter().collect();
        batches_run.fetch_add(1, Ordering::Relaxed);
        batch_reference_logps(reference, &groups, spec, device)
    }
}

/// Example `i` as a group `[y, y′]` under its prompt, `y′` being its `partner`'s response (`[y]`
/// without one) cut to `max_length` with the prompt ([`mismatched_response`]): what the
/// reference cache stores.
fn kl_group(
    examples: &[KtoExample],
    i: usize,
    partner: Option<usize>,
    max_length: Option<usize>,
) -> Group {
    let prompt = &examples[i].prompt;
    let mut responses = vec![examples[i].response.clone()];
    responses.extend(
        partner.map(|p| mismatched_response(prompt, &examples[p].response, max_length).to_vec()),
    );
    Group {
        prompt: examples[i].prompt.clone(),
        responses,
        rewards: None,
    }
}

/// `examples` in `batches`, with the frozen reference's log-probs (from `cache`, or computed and
/// counted in `batches_run`); without them when `reference` is `None` (it follows the policy).
fn prepare<'a>(
    examples: &'a [KtoExample],
    batches: Vec<Vec<usize>>,
    reference: Option<&CausalLm>,
    cfg: &KtoConfig,
    cache: &RefCache,
    device: &Device,
    batches_run: &mut u64,
) -> Result<Prepared<'a>> {
    let partner = cfg.loss_type.pairs().then(|| mismatched_partners(&batches));
    let Some(reference) = reference.filter(|_| !examples.is_empty()) else {
        return Ok(Prepared {
            examples,
            batches,
            partner,
            max_length: cfg.max_length,
            reference: Vec::new(),
        });
    };
    let groups: Vec<Group> = (0..examples.len())
        .map(|i| kl_group(examples, i, partner.as_ref().map(|p| p[i]), cfg.max_length))
        .collect();
    let (reference, _) = cache.get_or_compute(reference, &groups, &cfg.logp_spec(), || {
        reference_logps(
            reference,
            &groups,
            cfg.batch_size,
            &cfg.logp_spec(),
            device,
            batches_run,
        )
    })?;
    Ok(Prepared {
        examples,
        batches,
        partner,
        max_length: cfg.max_length,
        reference,
    })
}

fn mean_of(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 { f64::NAN } else { sum / n as f64 }
}

/// The loss `[1]` of the batch `idx` and its metrics: `z_ref` from the batch's mismatched pairs
/// (the policy read without gradients; 0 for the unpaired APO-zero), then the mean of
/// [`kto_loss`]; `refs` holds the reference's `[logπ_ref(y|x), logπ_ref(y′|x)]` of each example
/// of the batch (`[logπ_ref(y|x)]` without partners).
fn batch_loss(
    policy: &CausalLm,
    data: &Prepared,
    idx: &[usize],
    refs: &[Vec<f32>],
    cfg: &KtoConfig,
    device: &Device,
) -> Result<(Tensor<1>, Metrics)> {
    let ex = data.examples;
    let n = idx.len();
    let matched: Vec<(&[u32], &[u32])> = idx
        .iter()
        .map(|&i| (ex[i].prompt.as_slice(), ex[i].response.as_slice()))
        .collect();
    let (logps, _) = pair_logps(policy, &matched, cfg.truncation, device)?;

    let column = |c: usize, dev: &Device| {
        let v: Vec<f32> = refs.iter().map(|r| r[c]).collect();
        Tensor::<1>::from_data(TensorData::new(v, [n]), dev)
    };
    let z = match &data.partner {
        Some(partner) => reference_point(policy, ex, idx, partner, &column, cfg, device)?,
        None => 0.0,
    };
    let z_ref = Tensor::<1>::from_data(TensorData::new(vec![z], [1]), device);

    let desirable: Vec<f32> = idx
        .iter()
        .map(|&i| if ex[i].desirable { 1.0 } else { 0.0 })
        .collect();
    let log_ratios = logps.clone().sub(column(0, device));
    let loss = kto_loss(
        log_ratios.clone(),
        Tensor::from_data(TensorData::new(desirable, [n]), device),
        z_ref,
        cfg.beta,
        cfg.desirable_weight,
        cfg.undesirable_weight,
    )
    .mean();

    let (r, lp) = (to_f32_vec(log_ratios), to_f32_vec(logps));
    let beta = f64::from(cfg.beta);
    let of = |want: bool, v: &[f32]| {
        mean_of(
            idx.iter()
                .zip(v)
                .filter(|(i, _)| ex[**i].desirable == want)
                .map(|(_, x)| f64::from(*x)),
        )
    };
    let (chosen, rejected) = (beta * of(true, &r), beta * of(false, &r));
    let metrics = vec![
        (names::KTO_KL, f64::from(z)),
        (names::REWARDS_CHOSEN, chosen),
        (names::REWARDS_REJECTED, rejected),
        (names::REWARDS_MARGINS, chosen - rejected),
        (names::LOGPS_CHOSEN, of(true, &lp)),
        (names::LOGPS_REJECTED, of(false, &lp)),
    ];
    Ok((loss, metrics))
}

/// The start of another example's `response` that follows `prompt` in a mismatched pair: the
/// pair cut to `max_length` tokens, as TRL cuts its KL sequences (its own examples already fit).
fn mismatched_response<'a>(
    prompt: &[u32],
    response: &'a [u32],
    max_length: Option<usize>,
) -> &'a [u32] {
    let room = max_length.map_or(usize::MAX, |m| m.saturating_sub(prompt.len()));
    &response[..response.len().min(room)]
}

/// The batch `idx`'s `z_ref`: its mismatched pairs (each example's prompt with its `partner`'s
/// response) under the policy, read without gradients, against the reference's (`column(1)`).
fn reference_point(
    policy: &CausalLm,
    ex: &[KtoExample],
    idx: &[usize],
    partner: &[usize],
    column: &dyn Fn(usize, &Device) -> Tensor<1>,
    cfg: &KtoConfig,
    device: &Device,
) -> Result<f32> {
    let inference = device.clone().without_autodiff();
    let mismatched: Vec<(&[u32], &[u32])> = idx
        .iter()
        .map(|&i| {
            let response =
                mismatched_response(&ex[i].prompt, &ex[partner[i]].response, cfg.max_length);
            (ex[i].prompt.as_slice(), response)
        })
        .collect();
    let (kl_logps, _) = pair_logps(&policy.valid(), &mismatched, cfg.truncation, &inference)?;
    Ok(to_f32_vec(kto_reference_point(kl_logps, column(1, &inference)))[0])
}

/// The batch metrics that held-out evaluation pools over the examples of one kind, and whether
/// that kind is the desirable one.
const KIND_METRICS: [(&str, bool); 4] = [
    (names::REWARDS_CHOSEN, true),
    (names::REWARDS_REJECTED, false),
    (names::LOGPS_CHOSEN, true),
    (names::LOGPS_REJECTED, false),
];

/// Loss, `z_ref` and rewards of `policy` on prepared held-out data, against its prepared
/// reference log-probs or, with `live`, the reference as it is now (its forward batches counted
/// in `batches_run`).
fn evaluate_prepared(
    policy: &CausalLm,
    data: &Prepared,
    live: Option<&CausalLm>,
    cfg: &KtoConfig,
    device: &Device,
    batches_run: &AtomicU64,
) -> Result<KtoEval> {
    let valid = policy.valid();
    let device = device.clone().without_autodiff();
    let (mut loss, mut kl, mut n) = (0.0, 0.0, 0.0);
    // (sum, count) of each kind's rewards and log-probs, in the order of `KIND_METRICS`
    let mut kinds = [(0.0, 0.0); 4];
    for b in &data.batches {
        let refs = data.reference(b, live, &cfg.logp_spec(), &device, batches_run)?;
        let (l, m) = batch_loss(&valid, data, b, &refs, cfg, &device)?;
        let get = |name: &str| m.iter().find(|x| x.0 == name).map_or(f64::NAN, |x| x.1);
        let w = b.len() as f64;
        loss += f64::from(l.into_scalar::<f32>()) * w;
        kl += get(names::KTO_KL) * w;
        n += w;
        let nd = b.iter().filter(|&&i| data.examples[i].desirable).count() as f64;
        for ((name, desirable), (sum, count)) in KIND_METRICS.iter().zip(&mut kinds) {
            let of_kind = if *desirable { nd } else { w - nd };
            if of_kind > 0.0 {
                (*sum, *count) = (*sum + get(name) * of_kind, *count + of_kind);
            }
        }
    }
    let [rc, rr, lc, lr] = kinds.map(|(s, c)| if c > 0.0 { s / c } else { f64::NAN });
    Ok(KtoEval {
        loss: loss / n.max(1.0),
        kl: kl / n.max(1.0),
        rewards_chosen: rc,
        rewards_rejected: rr,
        reward_margin: rc - rr,
        logps_chosen: lc,
        logps_rejected: lr,
    })
}

/// Loss, `z_ref` and rewards of `policy` against `reference` on held-out `examples`, in
/// micro-batches of `cfg.batch_size` in the given order (the batches `z_ref` is estimated on).
pub fn evaluate_kto(
    policy: &CausalLm,
    reference: &CausalLm,
    examples: &[KtoExample],
    cfg: &KtoConfig,
    device: &Device,
) -> Result<KtoEval> {
    cfg.validate()?;
    check(examples, "held-out", cfg)?;
    let order: Vec<usize> = (0..examples.len()).collect();
    let mut batches = 0;
    let data = prepare(
        examples,
        cfg.loss_type.batches(&order, cfg.batch_size),
        Some(reference),
        cfg,
        &RefCache::new(None),
        device,
        &mut batches,
    )?;
    evaluate_prepared(policy, &data, None, cfg, device, &AtomicU64::new(0))
}

/// Refuses examples the loss cannot read: an empty response (its log-ratio would be 0 whatever
/// the policy), an empty prompt (the response's first token would have no context), or, for
/// KTO's loss, a data set of one example (it has no other response to pair its prompt with).
fn check(examples: &[KtoExample], what: &str, cfg: &KtoConfig) -> Result<()> {
    if examples.len() == 1 && cfg.loss_type.pairs() {
        return Err(Error::Config(format!(
            "kto: the {what} data holds one example; z_ref needs at least two"
        )));
    }
    if let Some(i) = examples.iter().position(|e| e.response.is_empty()) {
        return Err(Error::Config(format!(
            "kto: {what} example {i} has an empty response"
        )));
    }
    if let Some(i) = examples.iter().position(|e| e.prompt.is_empty()) {
        return Err(Error::Config(format!(
            "kto: {what} example {i} has an empty prompt; its response's first token would have \
             no context"
        )));
    }
    // a mismatched pair keeps at least one token of its partner's response
    if let Some(max) = cfg.max_length.filter(|_| cfg.loss_type.pairs())
        && let Some(i) = examples.iter().position(|e| e.prompt.len() >= max)
    {
        return Err(Error::Config(format!(
            "kto: {what} example {i} has a prompt of {} tokens, which leaves no room in \
             max_length {max} for a mismatched pair's response",
            examples[i].prompt.len()
        )));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
/// Trains `policy` (on an autodiff device) with KTO (or the unpaired APO-zero) against
/// `reference` on `train`, evaluating on `eval`. The reference's log-probs of the matched pairs
/// and, for KTO, of the mismatched ones come from `cache`, or with `cfg.sync_ref` (TR-DPO) from
/// the reference as it follows the policy, batch by batch; `run_options` gives checkpoints,
/// resume, metrics and progress.
// One piece, over 80 lines: the setup around the shared `fit_with` loop in order: refusals, the
// memory check, the reference log-probs of train and eval prepared once (or none, for a live
// reference), then `fit_with` with KTO's batch order, loss and eval closures (which borrow the
// prepared data) and the live reference's hook, and the report.
pub fn train_kto(
    policy: CausalLm,
    reference: &CausalLm,
    train: &[KtoExample],
    eval: &[KtoExample],
    cfg: &KtoConfig,
    cache: &RefCache,
    run_options: &RunOptions,
    device: &Device,
) -> Result<(CausalLm, KtoReport)> {
    cfg.validate()?;
    if train.is_empty() {
        return Err(Error::Config("kto: no training examples".into()));
    }
    check(train, "training", cfg)?;
    check(eval, "held-out", cfg)?;
    if run_options.replicas.count() > 1 {
        // TRL gathers the estimate across processes; here it would be each shard's own
        return Err(Error::Config(match cfg.loss_type {
            KtoLoss::Kto => "kto: data-parallel replicas are not supported: the KL reference \
                             point z₀ is estimated from the whole micro-batch"
                .into(),
            KtoLoss::ApoZeroUnpaired => "kto: data-parallel replicas are not supported by this \
                                         trainer, whose batches are read whole (TRL runs \
                                         apo_zero_unpaired data-parallel)"
                .into(),
        }));
    }
    let policy = if cfg.disable_dropout {
        policy.without_dropout()
    } else {
        policy
    };
    // a reference that follows the policy (TR-DPO), refused before the memory check
    let live = cfg
        .sync_ref
        .map(|sync| LiveReference::new(reference, &policy, sync))
        .transpose()?;
    let following = cfg
        .sync_ref
        .map_or(0, |_| LiveReference::held_bytes(reference, 1));
    // refuse, before the first step, a run whose batches would not fit in memory: the policy is
    // trained on a micro-batch (plus, for KTO, one more forward, without gradients, on its
    // mismatched pairs, each a prompt joined with another example's response); the reference is
    // held
    let longest = |f: fn(&KtoExample) -> usize| train.iter().map(f).max().unwrap_or(0);
    let seq = (longest(|e| e.prompt.len()) + longest(|e| e.response.len())) as u64;
    let shape = policy.shape();
    let checkpointing = memory::checkpointing(device, &policy);
    memory::check_batch_fits(
        "KTO",
        memory::Params::of(&policy).holding(memory::bytes_not_in(reference, &policy) + following),
        run_options.replicas.count() as u64,
        &memory::Batch {
            // for KTO the last batch may hold one more example (a last chunk of one joins it)
            rows: cfg.batch_size as u64 + 1,
            seq,
            activations: &|r, s| shape.activation_bytes(r, s, checkpointing),
            rows_knob: "batch_size, with grad_accum",
            seq_knob: "truncation",
        },
    )?;
    let mut report = KtoReport::default();
    let mut batches_run = 0u64;
    let frozen = live.is_none().then_some(reference);
    let train_data = prepare(
        train,
        kto_train_batches_for(cfg.loss_type, train.len(), cfg.batch_size, cfg.seed),
        frozen,
        cfg,
        cache,
        device,
        &mut batches_run,
    )?;
    let eval_order: Vec<usize> = (0..eval.len()).collect();
    let eval_data = prepare(
        eval,
        cfg.loss_type.batches(&eval_order, cfg.batch_size),
        frozen,
        cfg,
        cache,
        device,
        &mut batches_run,
    )?;
    report.reference_forward_batches = batches_run;
    // the live reference's forward batches
    let live_batches = AtomicU64::new(0);
    let now = || live.as_ref().map(LiveReference::current);
    let fit_cfg = FitConfig {
        epochs: cfg.epochs,
        max_steps: cfg.max_steps,
        grad_accum: cfg.grad_accum,
        optimizer: &cfg.optimizer,
        schedule: &cfg.schedule,
        eval_every: cfg.eval_every,
        label: "kto",
    };
    let eval_metrics = |m: &CausalLm| -> Result<Metrics> {
        if eval.is_empty() {
            return Ok(Vec::new());
        }
        let e = evaluate_prepared(m, &eval_data, now().as_ref(), cfg, device, &live_batches)?;
        Ok(vec![
            (names::EVAL_LOSS, e.loss),
            (names::EVAL_KTO_KL, e.kl),
            (names::EVAL_REWARDS_CHOSEN, e.rewards_chosen),
            (names::EVAL_REWARDS_REJECTED, e.rewards_rejected),
            (names::EVAL_REWARD_MARGIN, e.reward_margin),
            (names::EVAL_LOGPS_CHOSEN, e.logps_chosen),
            (names::EVAL_LOGPS_REJECTED, e.logps_rejected),
        ])
    };
    let (policy, r) = fit_with(
        policy,
        &fit_cfg,
        run_options,
        &|epoch| {
            let mut batches = train_data.batches.clone();
            batches.shuffle(
                &mut TrainRng::seed_from_u64(cfg.seed).fork(&format!("kto-epoch-{epoch}")),
            );
            batches
        },
        &|m, idx, _whole| {
            let spec = cfg.logp_spec();
            let refs = train_data.reference(idx, now().as_ref(), &spec, device, &live_batches)?;
            let (loss, metrics) = batch_loss(m, &train_data, idx, &refs, cfg, device)?;
            Ok(Some(BatchLoss {
                loss,
                weight: idx.len() as f64,
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
        let at_end = now();
        report.eval = evaluate_prepared(
            &policy,
            &eval_data,
            at_end.as_ref(),
            cfg,
            device,
            &live_batches,
        )?;
    }
    report.reference_forward_batches += live_batches.load(Ordering::Relaxed);
    Ok((policy, report))
}
