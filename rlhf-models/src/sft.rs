//! Supervised fine-tuning: the language-modelling loss on response tokens only (the prompt is
//! context, not target), optional packing, AdamW with global-norm clipping, eval loss and
//! perplexity, checkpoints that resume where the run stopped, metrics (TRL's token entropy,
//! accuracy and count among them) and a progress bar.
//!
//! The loss ([`SftLoss`], TRL's `loss_type`) is the mean negative log-likelihood of the target
//! tokens, `−(1/N)·Σ_t log p_t` (`nll`), or Dynamic Fine-Tuning's (Wu et al. 2025, "On the
//! Generalization of SFT: A Reinforcement Learning Perspective with Reward Rectification"; `dft`),
//! each token's term weighted by its own probability, detached: `−(1/N)·Σ_t sg(p_t)·log p_t`.
//! DFT's gradient is `−(1/N)·Σ_t p_t·∇log p_t = −(1/N)·Σ_t ∇p_t`: a token the model finds unlikely
//! weighs little, which the paper reads as SFT's implicit reward `1/p_t` rectified.
//!
//! Resuming is exact: the batch order of epoch `e` is drawn from the run's seed and `e` alone, so
//! a resumed run skips the batches it already trained on and continues with the same ones an
//! uninterrupted run would have used.

use std::borrow::Cow;
use std::sync::{Arc, Mutex, PoisonError};

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData, activation};
use rlhf_core::train::memory;
use rlhf_core::train::{
    BatchLoss, FitConfig, LrSchedule, Metrics, OptimizerConfig, RunOptions, Shard, TrainRng, fit,
    metrics::names, tokens_at_step_end,
};
use rlhf_core::{Error, Result, masked_sum, token_logprobs, token_logprobs_and_entropy};
use rlhf_data::{SequenceBatch, Truncation, collate, length_buckets};
use serde::{Deserialize, Serialize};

use crate::input::TokenInput;
use crate::lm::CausalLm;
use crate::packing::{PackingStrategy, pack, packed_batch};

/// The SFT loss (TRL's `loss_type`; see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SftLoss {
    /// The mean negative log-likelihood of the target tokens.
    #[default]
    Nll,
    /// Dynamic Fine-Tuning: each token's negative log-likelihood weighted by its detached
    /// probability.
    Dft,
}

/// SFT settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SftConfig {
    /// The loss: the negative log-likelihood, or DFT's.
    pub loss_type: SftLoss,
    /// Passes over the data.
    pub epochs: usize,
    /// Stop after this many optimizer steps, within the epochs (transformers' `max_steps`; give
    /// enough `epochs` to reach it). `None`: every epoch to its end.
    pub max_steps: Option<u64>,
    /// Sequences (or packed rows) per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step; the step's loss is the mean over all their target
    /// tokens, as one batch of `batch_size × grad_accum` sequences would give.
    pub grad_accum: usize,
    /// AdamW and clipping.
    pub optimizer: OptimizerConfig,
    /// Learning-rate schedule over all steps.
    pub schedule: LrSchedule,
    /// Longest prompt / response kept.
    pub truncation: Option<(usize, usize)>,
    /// Pack examples into rows of at most this many tokens (TRL's `packing`, with `max_length`
    /// the row length): fewer pad tokens. Off by default.
    pub packing: Option<usize>,
    /// How examples are packed ([`crate::packing`]; TRL's `packing_strategy`): best-fit
    /// decreasing by default, each example attending only to itself.
    pub packing_strategy: PackingStrategy,
    /// Evaluate on the held-out examples every this many steps (0 = only at the end).
    pub eval_every: u64,
    /// Seed of the batch order.
    pub seed: u64,
}

impl Default for SftConfig {
    fn default() -> Self {
        SftConfig {
            loss_type: SftLoss::Nll,
            epochs: 1,
            max_steps: None,
            batch_size: 16,
            grad_accum: 1,
            optimizer: OptimizerConfig {
                lr: 3e-3,
                ..OptimizerConfig::default()
            },
            schedule: LrSchedule::Constant,
            truncation: None,
            packing: None,
            packing_strategy: PackingStrategy::Bfd,
            eval_every: 0,
            seed: 0,
        }
    }
}

/// One tokenized example: prompt ids and response ids (the response ends with EOS).
pub type Example = (Vec<u32>, Vec<u32>);

/// A batch ready for the loss: token ids (pads as collated; [`TokenInput`] replaces them),
/// attention mask and the mask of the tokens that are targets, each `[batch, seq]` row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct LmBatch {
    /// Rows.
    pub batch: usize,
    /// Columns.
    pub seq: usize,
    /// Token ids.
    pub ids: Vec<u32>,
    /// 1 at real tokens.
    pub attention: Vec<u8>,
    /// 1 at tokens the loss predicts (response tokens).
    pub target: Vec<u8>,
    /// Rows packed with examples kept apart ([`crate::packing`]): each token's example number in
    /// its row (from 1; 0 at padding), which the model reads with [`TokenInput::packed`]. Empty
    /// when each row is one sequence.
    pub sequences: Vec<u32>,
}

impl LmBatch {
    /// From a collated prompt/response batch: targets are the response tokens that follow a
    /// real token. A response with an empty prompt (a plain-text record) starts after its row's
    /// padding, and its first token, with nothing of its own before it, is no target, as in a
    /// row without padding (and as TRL, whose batches start each sequence at column 0).
    pub fn from_sequences(b: &SequenceBatch) -> Self {
        let seq = b.seq_len();
        let mut target = b.response_mask.clone();
        for (i, t) in target.iter_mut().enumerate() {
            if i % seq == 0 || b.attention_mask[i - 1] == 0 {
                *t = 0;
            }
        }
        LmBatch {
            batch: b.batch,
            seq,
            ids: b.input_ids.clone(),
            attention: b.attention_mask.clone(),
            target,
            sequences: Vec::new(),
        }
    }

    /// Rows `rows` of the batch (a data-parallel replica's shard), columns unchanged.
    pub fn rows(&self, rows: std::ops::Range<usize>) -> LmBatch {
        let cells = rows.start * self.seq..rows.end * self.seq;
        LmBatch {
            batch: rows.len(),
            seq: self.seq,
            ids: self.ids[cells.clone()].to_vec(),
            attention: self.attention[cells.clone()].to_vec(),
            target: self.target[cells.clone()].to_vec(),
            sequences: if self.sequences.is_empty() {
                Vec::new()
            } else {
                self.sequences[cells].to_vec()
            },
        }
    }

    /// A data-parallel replica's rows of the batch (the batch itself with one replica); `None`
    /// when the shard is empty, or holds no target while the batch has some (it would add
    /// nothing to the mean, and its own mean would be 0/0).
    pub fn shard(&self, shard: Shard<'_>) -> Option<Cow<'_, LmBatch>> {
        let rows = shard.range(self.batch);
        if rows.len() == self.batch {
            return Some(Cow::Borrowed(self));
        }
        let part = self.rows(rows);
        let empty =
            part.batch == 0 || (part.predicted_tokens() == 0 && self.predicted_tokens() > 0);
        (!empty).then_some(Cow::Owned(part))
    }

    /// The first column (≥ 1: column 0 has no predecessor) that is a target in any row, or 1
    /// when no row has one.
    pub fn first_target(&self) -> usize {
        (0..self.batch)
            .filter_map(|r| (1..self.seq).find(|&c| self.target[r * self.seq + c] == 1))
            .min()
            .unwrap_or(1)
    }

    /// Target tokens that have a predecessor (column 0 is never predicted).
    pub fn predicted_tokens(&self) -> u64 {
        self.target
            .iter()
            .enumerate()
            .filter(|(i, m)| i % self.seq != 0 && **m == 1)
            .count() as u64
    }

    /// The model input (see [`TokenInput`]) and the target mask `[batch, seq]`, on `device`.
    pub fn input(&self, model: &CausalLm, device: &Device) -> Result<(TokenInput, Tensor<2>)> {
        let vocab = model.vocab_size();
        let input = if self.sequences.is_empty() {
            TokenInput::new(&self.ids, &self.attention, self.batch, vocab, device)?
        } else {
            TokenInput::packed(&self.ids, &self.sequences, self.batch, vocab, device)?
        };
        model.check_positions(input.longest())?;
        let target: Vec<f32> = self.target.iter().map(|&x| f32::from(x)).collect();
        let target = Tensor::from_data(TensorData::new(target, [self.batch, self.seq]), device);
        Ok((input, target))
    }
}

/// The log-probabilities of a batch's target tokens (see [`target_logprobs`]).
#[derive(Debug, Clone)]
pub struct TargetLogprobs {
    /// `[batch, seq − first]`: column `c` is the log-prob of token `first + c`, read at the
    /// logits of column `first + c − 1`.
    pub logp: Tensor<2>,
    /// `[batch, seq − first]`: 1 where that token is a target, 0 elsewhere.
    pub mask: Tensor<2>,
    /// The first column with a target in any row ([`LmBatch::first_target`]).
    pub first: usize,
}

/// Log-probabilities of the target tokens under `model`, with the target mask: the logits at
/// position `t` predict the token at `t + 1`, and only tokens marked in `batch.target` count.
/// The columns before the batch's first target are context only, so the LM head (for a small
/// model the widest product, and the softmax over the vocabulary) is applied from there on. The
/// reference's sequence log-probs in DPO, the likelihood verifier (both at `temperature` 1) and
/// the sampled KL are read from this; SFT's loss and DPO's policy from
/// [`target_logprobs_with_stats`], the same log-probs.
pub fn target_logprobs(
    model: &CausalLm,
    batch: &LmBatch,
    temperature: f32,
    device: &Device,
) -> Result<TargetLogprobs> {
    Ok(target_logprobs_with(model, batch, temperature, false, device)?.0)
}

/// The logits that predict a batch's target columns, from its first target on: `[batch, seq −
/// first, vocab]` (in f32, as the LM head gives them), the tokens they predict and the target
/// mask (`[batch, seq − first]`), and `first` ([`LmBatch::first_target`]). The LM head is applied
/// only from there on.
pub(crate) struct TargetLogits {
    pub(crate) logits: Tensor<3>,
    pub(crate) tokens: Tensor<2, Int>,
    pub(crate) mask: Tensor<2>,
    pub(crate) first: usize,
}

pub(crate) fn target_logits(
    model: &CausalLm,
    batch: &LmBatch,
    device: &Device,
) -> Result<TargetLogits> {
    let (input, target) = batch.input(model, device)?;
    let first = batch.first_target();
    let width = batch.seq - first;
    let hidden = model.hidden(&input, None).narrow(1, first - 1, width);
    Ok(TargetLogits {
        logits: model.lm_head(hidden),
        tokens: input.ids().narrow(1, first, width),
        mask: target.narrow(1, first, width),
        first,
    })
}

/// [`target_logprobs`] and, with `log_sum_sq`, `log Σ_v p_v²` of the model's tempered
/// distribution at each target position, without gradients (`[batch, seq − first]`): WPO's
/// weight adjustment (Zhou et al. 2024, eq. 2; TRL's `use_weighting`).
pub fn target_logprobs_with(
    model: &CausalLm,
    batch: &LmBatch,
    temperature: f32,
    log_sum_sq: bool,
    device: &Device,
) -> Result<(TargetLogprobs, Option<Tensor<2>>)> {
    let TargetLogits {
        logits,
        tokens,
        mask,
        first,
    } = target_logits(model, batch, device)?;
    let sum_sq = log_sum_sq.then(|| log_sum_sq_of(logits.clone().detach(), temperature));
    let logp = token_logprobs(logits, tokens, temperature);
    Ok((TargetLogprobs { logp, mask, first }, sum_sq))
}

/// `log Σ_v p_v²` of the tempered distribution of `logits` (`[batch, seq, vocab]`), per position.
fn log_sum_sq_of(logits: Tensor<3>, temperature: f32) -> Tensor<2> {
    let logp = activation::log_softmax(logits.div_scalar(temperature), 2);
    logp.mul_scalar(2.0).exp().sum_dim(2).log().squeeze_dim(2)
}

/// Mean negative log-likelihood of the target tokens (see [`target_logprobs`]). Returns `[1]`.
pub fn sft_loss(model: &CausalLm, batch: &LmBatch, device: &Device) -> Result<Tensor<1>> {
    sft_loss_of(SftLoss::Nll, model, batch, device)
}

/// The `loss` of the target tokens (see the module documentation): the mean of `−log p_t`
/// (`nll`) or of `−sg(p_t)·log p_t` (`dft`) over the target tokens. Returns `[1]`.
pub fn sft_loss_of(
    loss: SftLoss,
    model: &CausalLm,
    batch: &LmBatch,
    device: &Device,
) -> Result<Tensor<1>> {
    let t = target_logprobs(model, batch, 1.0, device)?;
    Ok(token_loss(loss, t.logp, t.mask))
}

/// TRL's token metrics at each target position, from the logits without gradients, each
/// `[batch, seq − first]` like [`TargetLogprobs::logp`] (unmasked: sum them over its `mask`).
#[derive(Debug, Clone)]
pub struct TokenStats {
    /// The entropy of the model's next-token distribution, in nats (TRL's `entropy`).
    pub entropy: Tensor<2>,
    /// 1 where the target is the most likely token (the first of equal logits, as `argmax` and
    /// TRL's `is_top1` pick), else 0 (TRL's `mean_token_accuracy`).
    pub top1: Tensor<2>,
    /// The mean over the vocabulary of the logits that predict the target (TRL's DPO
    /// `logits/chosen`, `logits/rejected`), when asked for.
    pub mean_logit: Option<Tensor<2>>,
}

/// [`target_logprobs`] at temperature 1 with [`TokenStats`] from the same logits (the mean
/// logit with `mean_logit`) and, with `log_sum_sq`, WPO's `log Σ_v p_v²`
/// ([`target_logprobs_with`]).
pub fn target_logprobs_with_stats(
    model: &CausalLm,
    batch: &LmBatch,
    log_sum_sq: bool,
    mean_logit: bool,
    device: &Device,
) -> Result<(TargetLogprobs, Option<Tensor<2>>, TokenStats)> {
    let t = target_logits(model, batch, device)?;
    let logits = t.logits.clone().detach();
    let sum_sq = log_sum_sq.then(|| log_sum_sq_of(logits.clone(), 1.0));
    let top1 = logits.clone().argmax(2).squeeze_dim::<2>(2);
    let top1 = top1.equal(t.tokens.clone()).float();
    let mean_logit = mean_logit.then(|| logits.mean_dim(2).squeeze_dim(2));
    let (logp, entropy) = token_logprobs_and_entropy(t.logits, t.tokens, 1.0);
    let logprobs = TargetLogprobs {
        logp,
        mask: t.mask,
        first: t.first,
    };
    let stats = TokenStats {
        entropy,
        top1,
        mean_logit,
    };
    Ok((logprobs, sum_sq, stats))
}

/// [`target_logprobs`] at temperature 1 and, from the same logits without gradients, TRL's
/// token metrics summed over the target tokens (`[2]`): the entropy of the model's next-token
/// distribution (nats), and how many targets are its most likely token ([`TokenStats`]).
/// Divided by the target count, they are `entropy` and `mean_token_accuracy`.
pub fn target_logprobs_and_stats(
    model: &CausalLm,
    batch: &LmBatch,
    device: &Device,
) -> Result<(TargetLogprobs, Tensor<1>)> {
    let (t, _, stats) = target_logprobs_with_stats(model, batch, false, false, device)?;
    let sums = [stats.entropy, stats.top1].map(|x| masked_sum(x, t.mask.clone()));
    Ok((t, Tensor::cat(sums.to_vec(), 0)))
}

/// The `[2]` sums of [`target_logprobs_and_stats`] on the host (one read).
fn stat_sums(stats: Tensor<1>) -> (f64, f64) {
    let v = rlhf_core::host::to_f64_vec(stats);
    (v[0], v[1])
}

/// The mean over `mask` of each token's `loss` term, from the target tokens' log-probs `logp`
/// (`[batch, seq]`, with the gradient): `−log p_t`, or DFT's `−sg(p_t)·log p_t`. Returns `[1]`.
/// A batch without targets (a packed row of one long prompt) gives 0 and no gradient, as TRL's
/// count held at 1 does, not 0/0: its weight in a step is its 0 target tokens.
pub fn token_loss(loss: SftLoss, logp: Tensor<2>, mask: Tensor<2>) -> Tensor<1> {
    let per_token = match loss {
        SftLoss::Nll => logp,
        SftLoss::Dft => logp.clone().mul(logp.detach().exp()),
    };
    let count = mask.clone().sum().clamp_min(1.0);
    masked_sum(per_token, mask).div(count).neg()
}

fn collate_examples(data: &[&Example], truncation: Option<(usize, usize)>) -> LmBatch {
    let t = truncation.map(|(p, r)| Truncation {
        max_prompt: p,
        max_response: r,
    });
    let pairs: Vec<(&[u32], &[u32])> = data
        .iter()
        .map(|(p, r)| (p.as_slice(), r.as_slice()))
        .collect();
    LmBatch::from_sequences(&collate(&pairs, 0, t))
}

/// Mean response-token negative log-likelihood over `data` (no gradients); perplexity is its
/// exponential.
pub fn eval_loss(
    model: &CausalLm,
    data: &[Example],
    batch_size: usize,
    device: &Device,
) -> Result<f64> {
    eval_loss_of(SftLoss::Nll, model, data, batch_size, device)
}

/// The mean response-token `loss` over `data` (no gradients), each token weighing the same.
pub fn eval_loss_of(
    loss: SftLoss,
    model: &CausalLm,
    data: &[Example],
    batch_size: usize,
    device: &Device,
) -> Result<f64> {
    Ok(eval_pass(&[loss], model, data, batch_size, device)?.losses[0])
}

/// What one pass over held-out examples measures, each a mean over all their target tokens
/// (0 without any).
struct EvalPass {
    /// Each loss asked for.
    losses: Vec<f64>,
    /// The model's next-token entropy (see [`target_logprobs_and_stats`]).
    entropy: f64,
    /// The share of targets that are the model's most likely token.
    accuracy: f64,
}

/// [`eval_loss_of`] of each of `losses`, and the token metrics, from one forward pass per batch.
fn eval_pass(
    losses: &[SftLoss],
    model: &CausalLm,
    data: &[Example],
    batch_size: usize,
    device: &Device,
) -> Result<EvalPass> {
    let valid = model.valid();
    let device = device.clone().without_autodiff();
    let mut totals = vec![0.0; losses.len()];
    let (mut entropy, mut correct, mut tokens) = (0.0, 0.0, 0.0);
    for chunk in data.chunks(batch_size.max(1)) {
        let b = collate_examples(&chunk.iter().collect::<Vec<_>>(), None);
        let n = b.predicted_tokens() as f64;
        let (t, stats) = target_logprobs_and_stats(&valid, &b, &device)?;
        for (total, &loss) in totals.iter_mut().zip(losses) {
            let l = token_loss(loss, t.logp.clone(), t.mask.clone());
            *total += f64::from(l.into_scalar::<f32>()) * n;
        }
        let (e, c) = stat_sums(stats);
        (entropy, correct, tokens) = (entropy + e, correct + c, tokens + n);
    }
    let mean = |sum: f64| sum / tokens.max(1.0);
    Ok(EvalPass {
        losses: totals.into_iter().map(mean).collect(),
        entropy: mean(entropy),
        accuracy: mean(correct),
    })
}

/// What a run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SftReport {
    /// Optimizer steps taken (including those before a resume).
    pub steps: u64,
    /// Steps this call took (fewer than `steps` after a resume).
    pub steps_this_run: u64,
    /// Target tokens trained on by this call.
    pub tokens: u64,
    /// Loss of the last step.
    pub final_train_loss: f64,
    /// Eval loss at the end (NaN without eval data).
    pub eval_loss: f64,
}

/// The batches of one epoch, in the order drawn from `(seed, epoch)`.
fn epoch_batches(train: &[Example], cfg: &SftConfig, epoch: usize) -> Vec<LmBatch> {
    let mut rng = TrainRng::seed_from_u64(cfg.seed).fork(&format!("sft-epoch-{epoch}"));
    match cfg.packing {
        Some(row_len) => {
            let rows = match cfg.packing_strategy {
                // the rows best-fit decreasing makes of the data (which the order of the
                // examples does not change, but for ties), shuffled, as TRL shuffles its packed
                // dataset
                PackingStrategy::Bfd | PackingStrategy::BfdSplit => {
                    let examples: Vec<&Example> = train.iter().collect();
                    let mut rows = pack(&examples, row_len, cfg.packing_strategy);
                    rand::seq::SliceRandom::shuffle(rows.as_mut_slice(), &mut rng);
                    rows
                }
                // the stream of the shuffled examples, cut into rows
                PackingStrategy::Wrapped => {
                    let mut order: Vec<usize> = (0..train.len()).collect();
                    rand::seq::SliceRandom::shuffle(order.as_mut_slice(), &mut rng);
                    let examples: Vec<&Example> = order.iter().map(|&i| &train[i]).collect();
                    pack(&examples, row_len, PackingStrategy::Wrapped)
                }
            };
            rows.chunks(cfg.batch_size.max(1))
                .map(packed_batch)
                .collect()
        }
        None => {
            let lengths: Vec<usize> = train.iter().map(|(p, r)| p.len() + r.len()).collect();
            length_buckets(&lengths, cfg.batch_size, &mut rng)
                .into_iter()
                .map(|idx| {
                    let chunk: Vec<&Example> = idx.iter().map(|&i| &train[i]).collect();
                    collate_examples(&chunk, cfg.truncation)
                })
                .collect()
        }
    }
}

/// Trains `model` (on an autodiff device) on `train`, evaluating on `eval` every
/// `cfg.eval_every` steps and at the end. With an output directory in `run`, metrics go to
/// `metrics.jsonl` and checkpoints (model, optimizer, step) to `checkpoints/`; a run started
/// again in the same directory resumes from the newest checkpoint (the loop is
/// `rlhf_core::train::fit`; each of its batches here is one collated or packed batch).
pub fn train_sft(
    model: CausalLm,
    train: &[Example],
    eval: &[Example],
    cfg: &SftConfig,
    run_options: &RunOptions,
    device: &Device,
) -> Result<(CausalLm, SftReport)> {
    if train.is_empty() {
        return Err(Error::Config("SFT: no training examples".into()));
    }
    run_options
        .replicas
        .refuse_with_dropout("SFT", model.dropout())?;
    // each epoch's batches, drawn from (seed, epoch): measured here one epoch at a time, drawn
    // again when training reaches the epoch, and numbered globally
    let plans: Vec<Vec<BatchPlan>> = (0..cfg.epochs)
        .map(|e| {
            epoch_batches(train, cfg, e)
                .iter()
                .map(BatchPlan::of)
                .collect()
        })
        .collect();
    check_memory(&model, plans.iter().flatten(), run_options, device)?;
    let batches = EpochBatches::new(train, cfg, &plans);
    let seen = tokens_seen(&plans, cfg.grad_accum);

    let fit_cfg = FitConfig {
        epochs: cfg.epochs,
        max_steps: cfg.max_steps,
        grad_accum: cfg.grad_accum,
        optimizer: &cfg.optimizer,
        schedule: &cfg.schedule,
        eval_every: cfg.eval_every,
        label: "sft",
    };
    let eval_of = |m: &CausalLm| eval_metrics(m, eval, cfg, device);
    let (model, r) = fit(
        model,
        &fit_cfg,
        run_options,
        &|e| batches.numbers(e).map(|i| vec![i]).collect(),
        &|m, idx, shard| {
            let (epoch, i) = batches.get(idx[0]);
            let Some(batch) = epoch[i].shard(shard) else {
                return Ok(None);
            };
            let (t, stats) = target_logprobs_and_stats(m, &batch, shard.device)?;
            let targets = batch.predicted_tokens() as f64;
            let (entropy, correct) = stat_sums(stats);
            Ok(Some(BatchLoss {
                loss: token_loss(cfg.loss_type, t.logp, t.mask),
                weight: targets,
                // means over the target tokens (NaN without any: left out of the step's mean)
                metrics: vec![
                    (names::ENTROPY, entropy / targets),
                    (names::MEAN_TOKEN_ACCURACY, correct / targets),
                    (names::NUM_TOKENS, seen[idx[0]] as f64),
                ],
                samples: Vec::new(),
            }))
        },
        &eval_of,
    )?;
    let report = SftReport {
        steps: r.steps,
        steps_this_run: r.steps_this_run,
        tokens: tokens_trained(&plans, cfg.grad_accum, r.steps - r.steps_this_run, r.steps),
        final_train_loss: r.final_train_loss,
        eval_loss: r
            .eval
            .iter()
            .find(|m| m.0 == names::EVAL_LOSS)
            .map_or(f64::NAN, |m| m.1),
    };
    Ok((model, report))
}

/// `eval_loss` (the training loss, as TRL's), `eval_perplexity` (`exp` of the NLL, whatever the
/// loss), `eval_entropy` and `eval_mean_token_accuracy` of `model` on `eval`; nothing without
/// eval data.
fn eval_metrics(
    model: &CausalLm,
    eval: &[Example],
    cfg: &SftConfig,
    device: &Device,
) -> Result<Metrics> {
    if eval.is_empty() {
        return Ok(Vec::new());
    }
    // one pass: the likelihood, and the training loss when it is another
    let pass = eval_pass(
        &[SftLoss::Nll, cfg.loss_type],
        model,
        eval,
        cfg.batch_size,
        device,
    )?;
    let (nll, loss) = (pass.losses[0], pass.losses[1]);
    Ok(vec![
        (names::EVAL_LOSS, loss),
        (names::EVAL_PERPLEXITY, nll.exp()),
        (names::EVAL_ENTROPY, pass.entropy),
        (names::EVAL_MEAN_TOKEN_ACCURACY, pass.accuracy),
    ])
}

/// What a run reads of a batch before training draws it again: its shape and its target tokens.
struct BatchPlan {
    rows: u64,
    seq: u64,
    predicted_tokens: u64,
    /// Its tokens that are not padding.
    tokens: u64,
}

impl BatchPlan {
    fn of(batch: &LmBatch) -> Self {
        BatchPlan {
            rows: batch.batch as u64,
            seq: batch.seq as u64,
            predicted_tokens: batch.predicted_tokens(),
            tokens: batch.attention.iter().map(|&a| u64::from(a)).sum(),
        }
    }
}

/// Every epoch's batches, numbered globally in epoch order, and drawn one epoch at a time when a
/// step first reads that epoch ([`epoch_batches`] gives the same ones for the same epoch), so
/// that a run holds one epoch's batches beside the data, not all of them.
struct EpochBatches<'a> {
    train: &'a [Example],
    cfg: &'a SftConfig,
    /// The number of each epoch's first batch.
    starts: Vec<usize>,
    /// The end of the last epoch's numbers.
    end: usize,
    current: Mutex<Option<(usize, Arc<Vec<LmBatch>>)>>,
}

impl<'a> EpochBatches<'a> {
    /// The batches of `train` under `cfg`, whose epochs hold as many as `plans` says.
    fn new(train: &'a [Example], cfg: &'a SftConfig, plans: &[Vec<BatchPlan>]) -> Self {
        let mut starts = Vec::with_capacity(plans.len());
        let mut end = 0;
        for plan in plans {
            starts.push(end);
            end += plan.len();
        }
        EpochBatches {
            train,
            cfg,
            starts,
            end,
            current: Mutex::new(None),
        }
    }

    /// The numbers of epoch `epoch`'s batches.
    fn numbers(&self, epoch: usize) -> std::ops::Range<usize> {
        let next = self.starts.get(epoch + 1).copied().unwrap_or(self.end);
        self.starts[epoch]..next
    }

    /// Batch `number`: its epoch's batches and its place among them.
    fn get(&self, number: usize) -> (Arc<Vec<LmBatch>>, usize) {
        // the last epoch that starts at or before it
        let epoch = self.starts.partition_point(|&start| start <= number) - 1;
        (self.of_epoch(epoch), number - self.starts[epoch])
    }

    /// Epoch `epoch`'s batches (the replicas of a step share them).
    fn of_epoch(&self, epoch: usize) -> Arc<Vec<LmBatch>> {
        // a poisoned lock only means another replica's loss panicked: the batches are whole
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        match &*current {
            Some((e, batches)) if *e == epoch => Arc::clone(batches),
            _ => {
                // the last epoch's batches go before this one's are drawn
                *current = None;
                let batches = Arc::new(epoch_batches(self.train, self.cfg, epoch));
                *current = Some((epoch, Arc::clone(&batches)));
                batches
            }
        }
    }
}

/// The target tokens of steps `first_done + 1 ..= last` (each step is `grad_accum` batches of its
/// epoch, the last one possibly fewer).
fn tokens_trained(epochs: &[Vec<BatchPlan>], grad_accum: usize, first_done: u64, last: u64) -> u64 {
    epochs
        .iter()
        .flat_map(|e| e.chunks(grad_accum.max(1)))
        .zip(1u64..)
        .filter(|(_, step)| *step > first_done && *step <= last)
        .flat_map(|(group, _)| group)
        .map(|b| b.predicted_tokens)
        .sum()
}

/// TRL's `num_tokens` after each batch's step, by batch number: the tokens that are not padding
/// (prompts included) of every step up to and including that batch's.
fn tokens_seen(epochs: &[Vec<BatchPlan>], grad_accum: usize) -> Vec<u64> {
    let tokens: Vec<Vec<u64>> = epochs
        .iter()
        .map(|e| e.iter().map(|b| b.tokens).collect())
        .collect();
    tokens_at_step_end(&tokens, grad_accum).concat()
}

/// Refuses, before the first step, a run whose largest batch would not fit in memory.
fn check_memory<'b>(
    model: &CausalLm,
    batches: impl Iterator<Item = &'b BatchPlan>,
    run_options: &RunOptions,
    device: &Device,
) -> Result<()> {
    let shape = model.shape();
    let checkpointing = memory::checkpointing(device, model);
    let (rows, seq) = batches
        .map(|b| (b.rows, b.seq))
        .max_by_key(|&(r, s)| shape.activation_bytes(r, s, checkpointing))
        .unwrap_or((1, 1));
    memory::check_batch_fits(
        "SFT",
        memory::Params::of(model),
        run_options.replicas.count() as u64,
        &memory::Batch {
            rows,
            seq,
            activations: &|r, s| shape.activation_bytes(r, s, checkpointing),
            rows_knob: "batch_size, with grad_accum",
            seq_knob: "truncation, or packing's row length",
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch without target tokens has loss 0 under either loss, not NaN, which would skip
    /// the whole optimizer step it is accumulated into.
    #[test]
    fn a_batch_without_targets_has_loss_zero() {
        let device = Device::flex();
        let logp = Tensor::<2>::from_data(TensorData::new(vec![-1.0f32, -2.0], [1, 2]), &device);
        let none = Tensor::<2>::zeros([1, 2], &device);
        for loss in [SftLoss::Nll, SftLoss::Dft] {
            let value = token_loss(loss, logp.clone(), none.clone()).into_scalar::<f32>();
            assert_eq!(value, 0.0, "{loss:?}");
        }
    }

    /// Batch numbers read every epoch's batches in epoch order, as the batches of all epochs
    /// drawn at once, padded and packed; the epochs' batches differ, and reading one epoch's
    /// holds that epoch alone.
    #[test]
    fn batch_numbers_read_each_epoch_as_drawn_holding_one_epoch() {
        let train: Vec<Example> = (0..7)
            .map(|i| (vec![1; 1 + i % 3], vec![2 + i as u32; 1 + i]))
            .collect();
        for packing in [None, Some(8)] {
            let cfg = SftConfig {
                epochs: 3,
                batch_size: 2,
                packing,
                seed: 3,
                ..SftConfig::default()
            };
            let all: Vec<Vec<LmBatch>> = (0..3).map(|e| epoch_batches(&train, &cfg, e)).collect();
            assert_ne!(
                all[0], all[1],
                "{packing:?}: the epochs must differ to be told apart"
            );
            let plans: Vec<Vec<BatchPlan>> = all
                .iter()
                .map(|e| e.iter().map(BatchPlan::of).collect())
                .collect();
            let batches = EpochBatches::new(&train, &cfg, &plans);
            let flat: Vec<&LmBatch> = all.iter().flatten().collect();
            let mut next = 0;
            for e in 0..3 {
                for number in batches.numbers(e) {
                    assert_eq!(number, next);
                    next += 1;
                    let (epoch, i) = batches.get(number);
                    assert_eq!(&epoch[i], flat[number], "{packing:?}: batch {number}");
                    let held = batches.current.lock().unwrap().as_ref().map(|c| c.0);
                    assert_eq!(held, Some(e));
                }
            }
            assert_eq!(next, flat.len());
        }
    }

    /// `num_tokens` after each batch is the tokens of every step up to its own, whole steps of
    /// `grad_accum` batches of one epoch (an epoch's last step may hold fewer).
    /// A response after an empty prompt, left-padded in a batch with a longer prompt, does not
    /// have its first token predicted from the padding before it; every other response token
    /// stays a target.
    #[test]
    fn a_response_after_padding_starts_without_a_target() {
        let pairs: Vec<(&[u32], &[u32])> = vec![(&[1, 2], &[3, 4]), (&[], &[5, 6, 7])];
        let b = LmBatch::from_sequences(&collate(&pairs, 0, None));
        assert_eq!(b.seq, 5);
        assert_eq!(&b.attention[5..], &[0, 0, 1, 1, 1]);
        assert_eq!(&b.target[..5], &[0, 0, 1, 1, 0]);
        assert_eq!(&b.target[5..], &[0, 0, 0, 1, 1]);
        assert_eq!(b.predicted_tokens(), 4);
    }
}
