//! Training and evaluating reward models.
//!
//! - [`train_reward_model`]: ranked responses per prompt (pairs, or K-wise groups), the
//!   Bradley–Terry loss (with margins) for pairs and Plackett–Luce for K > 2, optional centering;
//! - [`train_step_model`]: binary labels at chosen positions — a PRM's step labels at each step's
//!   last token, or an ORM's correctness label at the response's last token;
//! - [`normalise`]: the bias (and optional gain) from the SFT demonstrations.
//!
//! Both run `rlhf_core::train::fit`: batch order drawn from `(seed, epoch)`, gradient
//! accumulation, global-norm clipping, eval every `eval_every` steps, checkpoints that resume
//! exactly, JSONL metrics and a progress bar.

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use rand::seq::SliceRandom;
use rlhf_core::train::memory;
use rlhf_core::train::{
    BatchLoss, FitConfig, LossOf, LrSchedule, Metrics, OptimizerConfig, RunOptions, TrainRng, fit,
    metrics::names,
};
use rlhf_core::{Error, Result, host::to_f32_vec};
use rlhf_data::{SequenceBatch, Truncation, collate};
use rlhf_models::ScalarModel;
use serde::{Deserialize, Serialize};

use crate::losses::{
    binary_cross_entropy, bradley_terry_loss, centering_penalty, plackett_luce_loss,
};
use crate::model::{Normalisation, last_token_scores};
use crate::step_model::StepModel;
use crate::within_prompt::{
    label_pair_accuracy, label_pairs, prompts_with_pairs, within_prompt_loss,
};

/// Responses to one prompt, best first, with optional extras.
#[derive(Debug, Clone, PartialEq)]
pub struct RankedExample {
    /// Prompt tokens.
    pub prompt: Vec<u32>,
    /// Response tokens (ending with EOS), best first; K ≥ 2.
    pub responses: Vec<Vec<u32>>,
    /// Pairs only: the Bradley–Terry margin (e.g. from the labeller's confidence).
    pub margin: Option<f32>,
    /// Gold scores of the responses, when known (synthetic tasks): eval then also reports
    /// agreement with the gold order, not just with the noisy labels.
    pub gold: Option<Vec<f64>>,
}

/// Binary labels at chosen points of one response.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledExample {
    /// Prompt tokens.
    pub prompt: Vec<u32>,
    /// The response in segments (PRM: one per step, each ending with the step delimiter; ORM:
    /// one segment, the whole response). The label is read at each segment's last token.
    pub segments: Vec<Vec<u32>>,
    /// One label per segment (true = correct).
    pub labels: Vec<bool>,
}

/// Reward-model training settings (defaults: one epoch, as in the TL;DR reproduction).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RmConfig {
    /// Passes over the data.
    pub epochs: usize,
    /// Stop after this many optimizer steps, within the epochs (transformers' `max_steps`; give
    /// enough `epochs` to reach it). `None`: every epoch to its end.
    pub max_steps: Option<u64>,
    /// Examples per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// AdamW and clipping.
    pub optimizer: OptimizerConfig,
    /// Schedule over all optimizer steps.
    pub schedule: LrSchedule,
    /// Centering coefficient η of `η·mean[(Σ_k r_k)²]` over each example's K scores (for pairs,
    /// TRL's `center_rewards_coefficient` term `η·mean[(r_c + r_r)²]`); 0 = off.
    pub center_eta: f32,
    /// Use the examples' margins (pairs only).
    pub use_margin: bool,
    /// Evaluate every this many optimizer steps (0 = only at the end).
    pub eval_every: u64,
    /// Longest prompt / response kept.
    pub truncation: Option<(usize, usize)>,
    /// Seed of the batch order.
    pub seed: u64,
    /// Step (and outcome) models: the loss [`train_step_model`] trains with.
    pub step_loss: StepLoss,
    /// Dropout off in the model (TRL's `disable_dropout`).
    pub disable_dropout: bool,
}

/// The loss of a step (or outcome) model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepLoss {
    /// Binary cross-entropy at every label, pooled over the batch's examples.
    #[default]
    Pointwise,
    /// The within-prompt pair loss ([`crate::within_prompt`]): each prompt's solutions labelled
    /// right at a position against those labelled wrong there. `batch_size` then counts prompts,
    /// each with all its solutions, and prompts without such a pair are left out.
    WithinPrompt,
}

impl Default for RmConfig {
    fn default() -> Self {
        RmConfig {
            epochs: 1,
            max_steps: None,
            batch_size: 16,
            grad_accum: 1,
            optimizer: OptimizerConfig {
                lr: 1e-3,
                ..OptimizerConfig::default()
            },
            schedule: LrSchedule::Constant,
            center_eta: 0.0,
            use_margin: false,
            eval_every: 0,
            truncation: None,
            seed: 0,
            step_loss: StepLoss::Pointwise,
            disable_dropout: true,
        }
    }
}

impl RmConfig {
    /// Checks ranges: at least one epoch, example and micro-batch per step; a finite, non-negative
    /// centering coefficient; the optimizer's own ranges.
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 || self.batch_size == 0 || self.grad_accum == 0 {
            return Err(Error::Config(
                "reward model: epochs, batch_size and grad_accum must be ≥ 1".into(),
            ));
        }
        if !self.center_eta.is_finite() || self.center_eta < 0.0 {
            return Err(Error::Config(format!(
                "reward model: center_eta must be finite and ≥ 0, got {}",
                self.center_eta
            )));
        }
        self.optimizer.validate()
    }
}

/// Held-out results of a reward model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RmEval {
    /// Mean loss per example (ranked: the training loss, margins and centering included).
    pub loss: f64,
    /// Ranked: share of adjacent pairs ordered as labelled (pairs of identical responses left
    /// out). Step models: share of labels predicted right (p > ½).
    pub accuracy: f64,
    /// Ranked: share of pairs (first two responses, gold scores differing) ordered as the gold
    /// scorer orders them. Step models: balanced accuracy (mean of the accuracies on correct and
    /// on wrong labels).
    pub gold_accuracy: Option<f64>,
    /// Step models: share of the within-prompt pairs ([`crate::within_prompt`]) ordered as
    /// labelled, ties counting half; `None` for ranked examples and without such a pair.
    pub pair_accuracy: Option<f64>,
}

/// What a training run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RmReport {
    /// Optimizer steps (including those before a resume).
    pub steps: u64,
    /// Steps this call took.
    pub steps_this_run: u64,
    /// Loss of the last step.
    pub final_train_loss: f64,
    /// Eval at the end.
    pub eval: RmEval,
}

fn truncation(cfg: &RmConfig) -> Option<Truncation> {
    cfg.truncation.map(|(p, r)| Truncation {
        max_prompt: p,
        max_response: r,
    })
}

/// All responses of `examples`, example-major, as one collated batch.
fn collate_ranked(examples: &[&RankedExample], t: Option<Truncation>) -> SequenceBatch {
    let pairs: Vec<(&[u32], &[u32])> = examples
        .iter()
        .flat_map(|e| {
            e.responses
                .iter()
                .map(|r| (e.prompt.as_slice(), r.as_slice()))
        })
        .collect();
    collate(&pairs, 0, t)
}

/// The loss of a batch of ranked examples (all with the same K) and its `[batch, K]` scores:
/// Bradley–Terry for pairs (with margins when asked), Plackett–Luce for K > 2, plus the
/// centering term when `center_eta > 0`.
fn ranked_loss(
    model: &ScalarModel,
    examples: &[&RankedExample],
    cfg: &RmConfig,
    device: &Device,
) -> Result<(Tensor<1>, Tensor<2>)> {
    let k = examples[0].responses.len();
    let b = examples.len();
    let scores = last_token_scores(model, &collate_ranked(examples, truncation(cfg)), device)?
        .reshape([b, k]);
    let mut loss = if k == 2 {
        let chosen = scores.clone().narrow(1, 0, 1).reshape([b]);
        let rejected = scores.clone().narrow(1, 1, 1).reshape([b]);
        let margin = cfg.use_margin.then(|| {
            let m: Vec<f32> = examples.iter().map(|e| e.margin.unwrap_or(0.0)).collect();
            Tensor::<1>::from_data(TensorData::new(m, [b]), device)
        });
        bradley_terry_loss(chosen, rejected, margin)
    } else {
        plackett_luce_loss(scores.clone())
    };
    if cfg.center_eta > 0.0 {
        loss = loss.add(centering_penalty(scores.clone(), cfg.center_eta));
    }
    Ok((loss, scores))
}

/// Scores `[batch, K]` of ranked examples without gradients, in chunks.
pub fn score_ranked(
    model: &ScalarModel,
    examples: &[RankedExample],
    batch_size: usize,
    device: &Device,
) -> Result<Vec<Vec<f32>>> {
    scores_cut(model, examples, batch_size, None, device)
}

/// [`score_ranked`] with the sequences cut to `t` as they are collated.
fn scores_cut(
    model: &ScalarModel,
    examples: &[RankedExample],
    batch_size: usize,
    t: Option<Truncation>,
    device: &Device,
) -> Result<Vec<Vec<f32>>> {
    let valid = model.valid();
    let device = device.clone().without_autodiff();
    let mut out = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(batch_size.max(1)) {
        let refs: Vec<&RankedExample> = chunk.iter().collect();
        let flat = to_f32_vec(last_token_scores(
            &valid,
            &collate_ranked(&refs, t),
            &device,
        )?);
        let mut at = 0;
        for e in chunk {
            out.push(flat[at..at + e.responses.len()].to_vec());
            at += e.responses.len();
        }
    }
    Ok(out)
}

/// Loss, label accuracy and gold-order accuracy of a reward model on held-out ranked examples,
/// read as training reads them: cut to `cfg.truncation`, and the loss is the training loss
/// (Bradley–Terry with the margins when `cfg.use_margin`, Plackett–Luce for K > 2, plus the
/// centering term), in `f64`.
pub fn evaluate_ranked(
    model: &ScalarModel,
    examples: &[RankedExample],
    cfg: &RmConfig,
    device: &Device,
) -> Result<RmEval> {
    let scores = scores_cut(model, examples, cfg.batch_size, truncation(cfg), device)?;
    // a response as the model reads it: its start, cut to the truncation
    fn head(r: &[u32], n: usize) -> &[u32] {
        &r[..r.len().min(n)]
    }
    let n = cfg
        .truncation
        .map_or(usize::MAX, |(_, max_response)| max_response);
    let (mut loss, mut right, mut pairs) = (0.0, 0usize, 0usize);
    let (mut gold_right, mut gold_pairs) = (0usize, 0usize);
    for (e, s) in examples.iter().zip(&scores) {
        let s: Vec<f64> = s.iter().map(|&x| f64::from(x)).collect();
        let margin = match (cfg.use_margin, s.len()) {
            (true, 2) => f64::from(e.margin.unwrap_or(0.0)),
            _ => 0.0,
        };
        // Plackett–Luce (= Bradley–Terry at K = 2, where the margin lowers the first score)
        for i in 0..s.len() - 1 {
            let first = s[i] - margin;
            let rest = std::iter::once(first).chain(s[i + 1..].iter().copied());
            let m = rest.clone().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + rest.map(|x| (x - m).exp()).sum::<f64>().ln();
            loss -= first - lse;
            // identical responses cannot be ordered by any model: they are left out
            if head(&e.responses[i], n) != head(&e.responses[i + 1], n) {
                right += usize::from(s[i] > s[i + 1]);
                pairs += 1;
            }
        }
        loss += f64::from(cfg.center_eta) * s.iter().sum::<f64>().powi(2);
        if let Some(g) = &e.gold
            && (g[0] - g[1]).abs() > 1e-12
            && head(&e.responses[0], n) != head(&e.responses[1], n)
        {
            gold_pairs += 1;
            gold_right += usize::from((s[0] > s[1]) == (g[0] > g[1]));
        }
    }
    Ok(RmEval {
        loss: loss / examples.len().max(1) as f64,
        accuracy: right as f64 / pairs.max(1) as f64,
        gold_accuracy: (gold_pairs > 0).then(|| gold_right as f64 / gold_pairs as f64),
        pair_accuracy: None,
    })
}

/// Sequences and label positions of labelled examples: each example is prompt ⊕ segments, and its
/// labels sit at the columns of the segments' last tokens.
fn collate_labelled(examples: &[&LabelledExample]) -> (SequenceBatch, Vec<Vec<usize>>, Vec<f32>) {
    let rows: Vec<(&[u32], &[Vec<u32>])> = examples
        .iter()
        .map(|e| (e.prompt.as_slice(), e.segments.as_slice()))
        .collect();
    let (batch, positions) = collate_segments(&rows);
    let s = positions.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let labels = examples
        .iter()
        .flat_map(|e| (0..s).map(|j| e.labels.get(j).map_or(0.0, |&l| f32::from(u8::from(l)))))
        .collect();
    (batch, positions, labels)
}

/// Sequences of `(prompt, segments)` rows and the columns of each segment's last token.
fn collate_segments(rows: &[(&[u32], &[Vec<u32>])]) -> (SequenceBatch, Vec<Vec<usize>>) {
    let responses: Vec<Vec<u32>> = rows.iter().map(|(_, s)| s.concat()).collect();
    let pairs: Vec<(&[u32], &[u32])> = rows
        .iter()
        .zip(&responses)
        .map(|((p, _), r)| (*p, r.as_slice()))
        .collect();
    let batch = collate(&pairs, 0, None);
    let positions = rows
        .iter()
        .map(|(_, segments)| {
            let mut col = batch.prompt_len; // responses start right after the left-padded prompts
            segments
                .iter()
                .map(|seg| {
                    col += seg.len();
                    col - 1
                })
                .collect()
        })
        .collect();
    (batch, positions)
}

/// The logits of `model` at the last token of each segment of each `(prompt, segments)` row,
/// computed `batch_size` rows at a time without gradients: what a verifier scores solutions
/// with. An empty segment list gives no logits; an empty segment is an error.
pub fn segment_logits<M: StepModel>(
    model: &M,
    rows: &[(&[u32], &[Vec<u32>])],
    batch_size: usize,
    device: &Device,
) -> Result<Vec<Vec<f32>>> {
    if let Some(i) = rows.iter().position(|(_, s)| s.iter().any(Vec::is_empty)) {
        return Err(Error::Config(format!(
            "segment logits: row {i} has an empty segment (a segment's logit is read at its last token)"
        )));
    }
    let valid = model.valid();
    let device = device.clone().without_autodiff();
    // rows without segments have no logits and are not run
    let scored: Vec<usize> = (0..rows.len()).filter(|&i| !rows[i].1.is_empty()).collect();
    let mut out = vec![Vec::new(); rows.len()];
    for chunk in scored.chunks(batch_size.max(1)) {
        let refs: Vec<(&[u32], &[Vec<u32>])> = chunk.iter().map(|&i| rows[i]).collect();
        let (batch, positions) = collate_segments(&refs);
        let (logits, _) = valid.step_logits(&batch, &positions, &device)?;
        let s = logits.dims()[1];
        let flat = to_f32_vec(logits);
        for (j, (&i, row)) in chunk.iter().zip(&positions).enumerate() {
            out[i] = flat[j * s..j * s + row.len()].to_vec();
        }
    }
    Ok(out)
}

/// Binary cross-entropy over every label of the batch (`[1]`), with the logits, labels and
/// mask it was computed from, each `[batch, steps]`.
fn labelled_loss<M: StepModel>(
    model: &M,
    examples: &[&LabelledExample],
    device: &Device,
) -> Result<(Tensor<1>, Tensor<2>, Tensor<2>, Tensor<2>)> {
    let (batch, positions, labels) = collate_labelled(examples);
    let (logits, mask) = model.step_logits(&batch, &positions, device)?;
    let labels = Tensor::<2>::from_data(TensorData::new(labels, mask.dims()), device);
    let loss = binary_cross_entropy(logits.clone(), labels.clone(), mask.clone());
    Ok((loss, logits, labels, mask))
}

/// Loss (binary cross-entropy, whichever loss trained the model), accuracy, balanced accuracy
/// and within-prompt pair accuracy of a step (or outcome) model on held-out examples.
pub fn evaluate_labelled<M: StepModel>(
    model: &M,
    examples: &[LabelledExample],
    batch_size: usize,
    device: &Device,
) -> Result<RmEval> {
    check_labelled(examples, "eval")?;
    let valid = model.valid();
    let device = device.clone().without_autodiff();
    let (mut loss, mut n) = (0.0, 0.0);
    let (mut tp, mut pos, mut tn, mut neg) = (0.0, 0.0, 0.0, 0.0);
    // each example's logits at its labels, for the pairs, which may span chunks
    let mut per_example: Vec<Vec<f32>> = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(batch_size.max(1)) {
        let refs: Vec<&LabelledExample> = chunk.iter().collect();
        let (l, logits, labels, mask) = labelled_loss(&valid, &refs, &device)?;
        let count: f64 = to_f32_vec(mask.clone()).iter().map(|&x| f64::from(x)).sum();
        loss += f64::from(l.into_scalar::<f32>()) * count;
        n += count;
        let s = logits.dims()[1];
        let (z, y, m) = (to_f32_vec(logits), to_f32_vec(labels), to_f32_vec(mask));
        for (row, e) in chunk.iter().enumerate() {
            per_example.push(z[row * s..row * s + e.labels.len()].to_vec());
        }
        for i in 0..z.len() {
            if m[i] == 0.0 {
                continue;
            }
            if y[i] == 1.0 {
                pos += 1.0;
                tp += f64::from(u8::from(z[i] > 0.0));
            } else {
                neg += 1.0;
                tn += f64::from(u8::from(z[i] <= 0.0));
            }
        }
    }
    let balanced = match (pos > 0.0, neg > 0.0) {
        (true, true) => Some(0.5 * (tp / pos + tn / neg)),
        _ => None,
    };
    let refs: Vec<&LabelledExample> = examples.iter().collect();
    Ok(RmEval {
        loss: loss / n.max(1.0),
        accuracy: (tp + tn) / (pos + neg).max(1.0),
        gold_accuracy: balanced,
        pair_accuracy: label_pair_accuracy(&per_example, &label_pairs(&refs)),
    })
}

fn eval_metrics(e: &RmEval) -> Metrics {
    let mut m = vec![
        (names::EVAL_LOSS, e.loss),
        (names::EVAL_ACCURACY, e.accuracy),
    ];
    if let Some(g) = e.gold_accuracy {
        m.push((names::EVAL_GOLD_ACCURACY, g));
    }
    if let Some(p) = e.pair_accuracy {
        m.push((names::EVAL_PAIR_ACCURACY, p));
    }
    m
}

/// Runs [`fit`] with `cfg` and turns its report into an [`RmReport`] (eval recomputed once at the
/// end, so the report holds the final numbers in full precision).
fn run_fit<M: StepModel>(
    model: M,
    cfg: &RmConfig,
    run_options: &RunOptions,
    label: &str,
    n_train: usize,
    loss_of: &LossOf<'_, M>,
    eval_of: &dyn Fn(&M) -> Result<Option<RmEval>>,
) -> Result<(M, RmReport)> {
    cfg.validate()?;
    if n_train == 0 {
        return Err(Error::Config(format!("{label}: no training examples")));
    }
    let model = if cfg.disable_dropout {
        model.without_dropout()
    } else {
        model
    };
    run_options
        .replicas
        .refuse_with_dropout(label, model.dropout())?;
    let fit_cfg = FitConfig {
        epochs: cfg.epochs,
        max_steps: cfg.max_steps,
        grad_accum: cfg.grad_accum,
        optimizer: &cfg.optimizer,
        schedule: &cfg.schedule,
        eval_every: cfg.eval_every,
        label,
    };
    let (model, r) = fit(
        model,
        &fit_cfg,
        run_options,
        &|epoch| shuffled_batches(n_train, cfg.batch_size, cfg.seed, label, epoch),
        loss_of,
        &|m| Ok(eval_of(m)?.as_ref().map(eval_metrics).unwrap_or_default()),
    )?;
    let eval = eval_of(&model)?.unwrap_or_default();
    Ok((
        model,
        RmReport {
            steps: r.steps,
            steps_this_run: r.steps_this_run,
            final_train_loss: r.final_train_loss,
            eval,
        },
    ))
}

/// Refuses, before the first step, a run whose batches of `rows` sequences of `seq` tokens would
/// not fit in memory.
fn check_memory<M: StepModel>(
    model: &M,
    label: &str,
    (rows, seq): (usize, usize),
    run_options: &RunOptions,
    device: &Device,
) -> Result<()> {
    let shape = model.shape();
    let checkpointing = memory::checkpointing(device, model);
    memory::check_batch_fits(
        label,
        memory::Params::of(model),
        run_options.replicas.count() as u64,
        &memory::Batch {
            rows: rows as u64,
            seq: seq as u64,
            activations: &|r, s| shape.activation_bytes(r, s, checkpointing),
            rows_knob: "batch_size (× the K responses of an example), with grad_accum",
            seq_knob: "truncation",
        },
    )
}

/// The longest prompt + response among `(prompt, response)` lengths, after the configured
/// truncation.
fn longest(lengths: impl Iterator<Item = (usize, usize)>, cfg: &RmConfig) -> usize {
    let (max_p, max_r) = cfg.truncation.unwrap_or((usize::MAX, usize::MAX));
    lengths
        .map(|(p, r)| p.min(max_p) + r.min(max_r))
        .max()
        .unwrap_or(0)
}

/// Shuffled batches of `n` indices for one epoch.
fn shuffled_batches(
    n: usize,
    batch_size: usize,
    seed: u64,
    label: &str,
    epoch: usize,
) -> Vec<Vec<usize>> {
    let mut rng = TrainRng::seed_from_u64(seed).fork(&format!("{label}-epoch-{epoch}"));
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng);
    order
        .chunks(batch_size.max(1))
        .map(<[usize]>::to_vec)
        .collect()
}

/// Trains an outcome reward model on ranked examples (all with the same K). The model must live
/// on an autodiff device.
pub fn train_reward_model(
    model: ScalarModel,
    train: &[RankedExample],
    eval: &[RankedExample],
    cfg: &RmConfig,
    run_options: &RunOptions,
    device: &Device,
) -> Result<(ScalarModel, RmReport)> {
    let k = train.first().map_or(2, |e| e.responses.len());
    if let Some((i, e)) = train
        .iter()
        .chain(eval)
        .enumerate()
        .find(|(_, e)| e.responses.len() != k || k < 2)
    {
        return Err(Error::Config(format!(
            "reward model: example {i} has {} responses; every example needs the same K ≥ 2 (here {k})",
            e.responses.len()
        )));
    }
    let (rows, seq) = (
        cfg.batch_size * k,
        longest(
            train
                .iter()
                .flat_map(|e| e.responses.iter().map(|r| (e.prompt.len(), r.len()))),
            cfg,
        ),
    );
    check_memory(&model, "rm", (rows, seq), run_options, device)?;
    run_fit(
        model,
        cfg,
        run_options,
        "rm",
        train.len(),
        &|m, batch, shard| {
            let Some(idx) = shard.of(batch) else {
                return Ok(None);
            };
            let refs: Vec<&RankedExample> = idx.iter().map(|&i| &train[i]).collect();
            let (loss, scores) = ranked_loss(m, &refs, cfg, shard.device)?;
            Ok(Some(BatchLoss {
                loss,
                weight: refs.len() as f64,
                metrics: step_metrics(&to_f32_vec(scores.detach()), refs[0].responses.len()),
                samples: Vec::new(),
            }))
        },
        &|m| {
            (!eval.is_empty())
                .then(|| evaluate_ranked(m, eval, cfg, device))
                .transpose()
        },
    )
}

/// What TRL's reward trainer logs of a training step, from its scores (`k` per example, best
/// first): the scores' range and mean and, for pairs, the share ordered right (a tie is wrong) and
/// the mean margin.
fn step_metrics(scores: &[f32], k: usize) -> Metrics {
    let n = scores.len().max(1) as f64;
    let all = || scores.iter().map(|&s| f64::from(s));
    let mut out = vec![
        (names::MIN_REWARD, all().fold(f64::INFINITY, f64::min)),
        (names::MEAN_REWARD, all().sum::<f64>() / n),
        (names::MAX_REWARD, all().fold(f64::NEG_INFINITY, f64::max)),
    ];
    if k == 2 {
        let pairs = scores.len() / 2;
        let (right, margin) = scores.chunks_exact(2).fold((0.0, 0.0), |(r, m), p| {
            (
                r + f64::from(u8::from(p[0] > p[1])),
                m + f64::from(p[0] - p[1]),
            )
        });
        out.push((names::ACCURACY, right / pairs.max(1) as f64));
        out.push((names::MARGIN, margin / pairs.max(1) as f64));
    }
    out
}

/// Refuses `which` examples (train, eval) whose segments and labels differ in number, or that
/// have no segment or an empty one.
fn check_labelled(examples: &[LabelledExample], which: &str) -> Result<()> {
    if let Some((i, e)) = examples.iter().enumerate().find(|(_, e)| {
        e.segments.len() != e.labels.len()
            || e.segments.is_empty()
            || e.segments.iter().any(Vec::is_empty)
    }) {
        return Err(Error::Config(format!(
            "step model: {which} example {i} has {} segments and {} labels (need as many, at least one, none empty)",
            e.segments.len(),
            e.labels.len()
        )));
    }
    Ok(())
}

/// Trains a step model — a PRM on step labels, or an ORM on correctness labels — with the loss of
/// `cfg.step_loss` at each segment's last token: binary cross-entropy, or the within-prompt pair
/// loss. The model must live on an autodiff device.
pub fn train_step_model<M: StepModel>(
    model: M,
    train: &[LabelledExample],
    eval: &[LabelledExample],
    cfg: &RmConfig,
    run_options: &RunOptions,
    device: &Device,
) -> Result<(M, RmReport)> {
    check_labelled(train, "train")?;
    check_labelled(eval, "eval")?;
    let seq = longest(
        train
            .iter()
            .map(|e| (e.prompt.len(), e.segments.iter().map(Vec::len).sum())),
        cfg,
    );
    let eval_of = |m: &M, rows: usize| {
        (!eval.is_empty())
            .then(|| evaluate_labelled(m, eval, rows, device))
            .transpose()
    };
    match cfg.step_loss {
        StepLoss::Pointwise => {
            check_memory(&model, "prm", (cfg.batch_size, seq), run_options, device)?;
            run_fit(
                model,
                cfg,
                run_options,
                "prm",
                train.len(),
                &|m, batch, shard| {
                    let Some(idx) = shard.of(batch) else {
                        return Ok(None);
                    };
                    let refs: Vec<&LabelledExample> = idx.iter().map(|&i| &train[i]).collect();
                    Ok(Some(BatchLoss {
                        loss: labelled_loss(m, &refs, shard.device)?.0,
                        // the loss is a mean over every label of the batch
                        weight: refs.iter().map(|e| e.labels.len()).sum::<usize>() as f64,
                        metrics: Vec::new(),
                        samples: Vec::new(),
                    }))
                },
                &|m| eval_of(m, cfg.batch_size),
            )
        }
        StepLoss::WithinPrompt => {
            fit_within_prompt(model, train, cfg, seq, run_options, device, &eval_of)
        }
    }
}

/// [`train_step_model`] with the within-prompt loss: the batch items are prompts, each with all
/// its solutions; prompts without a pair are left out, as they would add nothing.
fn fit_within_prompt<M: StepModel>(
    model: M,
    train: &[LabelledExample],
    cfg: &RmConfig,
    seq: usize,
    run_options: &RunOptions,
    device: &Device,
    eval_of: &dyn Fn(&M, usize) -> Result<Option<RmEval>>,
) -> Result<(M, RmReport)> {
    let groups: Vec<Vec<&LabelledExample>> = prompts_with_pairs(train)
        .into_iter()
        .map(|g| g.into_iter().map(|i| &train[i]).collect())
        .collect();
    if groups.is_empty() {
        return Err(Error::Config(
            "step model: no prompt has a solution labelled right and one labelled wrong at the \
             same position, which the within-prompt loss needs"
                .into(),
        ));
    }
    let widest = groups.iter().map(Vec::len).max().unwrap_or(1);
    let rows = cfg.batch_size * widest;
    check_memory(&model, "prm", (rows, seq), run_options, device)?;
    run_fit(
        model,
        cfg,
        run_options,
        "prm",
        groups.len(),
        &|m, batch, shard| {
            let Some(idx) = shard.of(batch) else {
                return Ok(None);
            };
            let refs: Vec<&LabelledExample> = idx
                .iter()
                .flat_map(|&g| groups[g].iter().copied())
                .collect();
            let pairs = label_pairs(&refs);
            let (sequences, positions, _) = collate_labelled(&refs);
            let (logits, _) = m.step_logits(&sequences, &positions, shard.device)?;
            Ok(Some(BatchLoss {
                loss: within_prompt_loss(logits, &pairs, shard.device),
                // the loss is a mean over the batch's pairs
                weight: pairs.len() as f64,
                metrics: Vec::new(),
                samples: Vec::new(),
            }))
        },
        // as many rows a forward pass as a training batch
        &|m| eval_of(m, rows),
    )
}

/// The normalisation of an outcome RM from SFT demonstrations `(prompt, response)` token pairs:
/// `bias` = mean raw score, `gain` = 1/std when `with_gain`.
pub fn normalise(
    model: &ScalarModel,
    demonstrations: &[(Vec<u32>, Vec<u32>)],
    with_gain: bool,
    batch_size: usize,
    device: &Device,
) -> Result<Normalisation> {
    let valid = model.valid();
    let device = device.clone().without_autodiff();
    let mut scores = Vec::with_capacity(demonstrations.len());
    for chunk in demonstrations.chunks(batch_size.max(1)) {
        let pairs: Vec<(&[u32], &[u32])> = chunk
            .iter()
            .map(|(p, r)| (p.as_slice(), r.as_slice()))
            .collect();
        scores.extend(to_f32_vec(last_token_scores(
            &valid,
            &collate(&pairs, 0, None),
            &device,
        )?));
    }
    Normalisation::from_scores(&scores, with_gain)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pairs `[2, 1]`, `[0, 0]`, `[−1, 3]`: one of three ordered right (a tie is wrong), mean
    /// margin (1 + 0 − 4)/3, scores from −1 to 3 with mean 5/6; K-wise groups have no pair
    /// metrics.
    #[test]
    fn step_metrics_are_trls_reward_trainer_metrics() {
        let m = step_metrics(&[2.0, 1.0, 0.0, 0.0, -1.0, 3.0], 2);
        let get = |name: &str| m.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
        assert_eq!(get(names::ACCURACY), Some(1.0 / 3.0));
        assert_eq!(get(names::MARGIN), Some(-1.0));
        assert_eq!(get(names::MIN_REWARD), Some(-1.0));
        assert_eq!(get(names::MAX_REWARD), Some(3.0));
        assert!((get(names::MEAN_REWARD).unwrap() - 5.0 / 6.0).abs() < 1e-12);
        let kwise = step_metrics(&[2.0, 1.0, 0.0], 3);
        assert!(
            kwise
                .iter()
                .all(|(n, _)| *n != names::ACCURACY && *n != names::MARGIN)
        );
    }
}
