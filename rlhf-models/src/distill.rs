//! On-policy distillation (Agarwal et al. 2024, "On-Policy Distillation of Language Models", GKD
//! with every sequence the student's own; TRL's `DistillationTrainer`): the student samples
//! responses to prompts and learns, at every position of its own samples, the teacher's
//! next-token distribution over the whole vocabulary.
//!
//! One micro-batch of [`train_distill`]:
//!
//! 1. **prompts**: the next `batch_size` prompts of the epoch, epoch `e`'s in the order drawn from
//!    `(seed, e)`, each cut to `max_prompt_length` tokens (the tokenizer's start, such as BOS,
//!    and the last tokens);
//! 2. **sample** one response per prompt from the student as it stands (temperature `T`, at most
//!    `max_new_tokens`, stopping at EOS), from a stream drawn from `(seed, micro-batch)`;
//! 3. **both distributions** at every response position, at `T`: the student's logits (with
//!    their gradient) and the frozen teacher's, over the student's vocabulary rows;
//! 4. **loss**: the generalised JSD `D_β(p_s ‖ p_t)` ([`rlhf_core::generalized_jsd`]; β = 1 the
//!    reverse KL, TRL's default) summed over the response tokens, EOS included, and divided by
//!    the step's response tokens (TRL's `num_items_in_batch`): `grad_accum` micro-batches give
//!    the step of one batch holding them all.
//!
//! Then one AdamW step after clipping, the metrics line and the checkpoint
//! ([`rlhf_core::train::fit`]). Every random choice is drawn from the seed and the epoch or the
//! micro-batch's number, so a resumed run repeats the uninterrupted one.
//!
//! Held-out prompts, when there are some, are evaluated as TRL evaluates them: the student samples
//! a response to each (from one stream drawn from the seed, the same at every evaluation) and
//! `eval_loss` is the same divergence per response token, every `eval_every` steps and at the end.

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use rand::seq::SliceRandom;
use rlhf_core::train::metrics::names;
use rlhf_core::train::{
    BatchLoss, FitConfig, FitReport, LrSchedule, Metrics, OptimizerConfig, RunOptions, TrainRng,
    fit, memory,
};
use rlhf_core::{
    Error, Result, entropy_from_logits, generalized_jsd, masked_mean, stats::mean, zero_masked,
};
use rlhf_data::{Tokenizer, collate};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::generate::{Responses, SamplingConfig, encode_prompts, sample_responses};
use crate::lm::CausalLm;
use crate::sft::{LmBatch, target_logits};

/// Distillation settings (TRL's `DistillationConfig` where it has the same field; the defaults
/// are for the laptop-scale models of the tests, the `rlhf distill` command's are TRL's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DistillConfig {
    /// Passes over the prompts.
    pub epochs: usize,
    /// Stop after this many optimizer steps, within the epochs (transformers' `max_steps`; give
    /// enough `epochs` to reach it). `None`: every epoch to its end.
    pub max_steps: Option<u64>,
    /// Prompts per micro-batch (one response each).
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Prompts keep their last this many tokens (`None`: whole).
    pub max_prompt_length: Option<usize>,
    /// How the student samples (it ends rows at the tokenizer's EOS and stop ids); its temperature is the
    /// loss's too, as in TRL.
    pub sampling: SamplingConfig,
    /// The divergence: 0 the forward KL `KL(p_t ‖ p_s)`, 1 the reverse KL `KL(p_s ‖ p_t)`, in
    /// between the generalised JSD (TRL: 1).
    pub beta: f64,
    /// AdamW and clipping.
    pub optimizer: OptimizerConfig,
    /// Schedule over all optimizer steps.
    pub schedule: LrSchedule,
    /// Dropout off in the student (TRL's `disable_dropout`).
    pub disable_dropout: bool,
    /// Evaluate on the held-out prompts every this many steps (0 = only at the end).
    pub eval_every: u64,
    /// Seed of the prompt order and of the samples.
    pub seed: u64,
}

impl Default for DistillConfig {
    fn default() -> Self {
        DistillConfig {
            epochs: 1,
            max_steps: None,
            batch_size: 8,
            grad_accum: 1,
            max_prompt_length: None,
            sampling: SamplingConfig {
                max_new_tokens: 64,
                temperature: 1.0,
                ..SamplingConfig::default()
            },
            beta: 1.0,
            optimizer: OptimizerConfig {
                lr: 5e-4,
                ..OptimizerConfig::default()
            },
            schedule: LrSchedule::Constant,
            disable_dropout: false,
            eval_every: 0,
            seed: 0,
        }
    }
}

impl DistillConfig {
    /// Checks the ranges: at least one epoch, prompt and micro-batch a step; β in `[0, 1]`; at
    /// least one new token at a finite temperature `> 0` (the loss divides the logits by it);
    /// the sampler's own ranges ([`SamplingConfig::problem`]); a prompt length ≥ 1; and the
    /// optimizer's own ranges.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(format!("distillation: {m}")));
        if self.epochs == 0 || self.batch_size == 0 || self.grad_accum == 0 {
            return bad("epochs, batch_size and grad_accum must be ≥ 1".into());
        }
        if !(0.0..=1.0).contains(&self.beta) {
            return bad(format!(
                "beta chooses the divergence and must be in [0, 1] (0 forward KL, 1 reverse KL), \
                 got {}",
                self.beta
            ));
        }
        let t = self.sampling.temperature;
        if self.sampling.max_new_tokens == 0 || !t.is_finite() || t <= 0.0 {
            return bad(format!(
                "sampling needs max_new_tokens ≥ 1 and a finite temperature > 0 (the loss reads \
                 both models at it), got {} and {t}",
                self.sampling.max_new_tokens
            ));
        }
        if let Some(m) = self.sampling.problem() {
            return bad(m);
        }
        if self.max_prompt_length == Some(0) {
            return bad("max_prompt_length must be ≥ 1".into());
        }
        self.optimizer.validate()
    }
}

/// What the trainer reads besides the student and the configuration.
pub struct DistillInputs<'a> {
    /// The frozen teacher; it reads the student's token ids.
    pub teacher: &'a CausalLm,
    /// The student's tokenizer (its EOS ends responses).
    pub tokenizer: &'a Tokenizer,
    /// Training prompts.
    pub prompts: &'a [String],
    /// Held-out prompts (none: no evaluation).
    pub eval_prompts: &'a [String],
}

/// Trains `student` (on an autodiff `device`) to match the teacher on its own samples for
/// `cfg.epochs` passes over the prompts. A run with an output directory resumes after its newest
/// checkpoint (model and optimizer); `run_options` gives checkpoints (counted in steps), metrics
/// and progress. Data-parallel replicas are refused: each would sample its own share of the
/// batch, and the samples would depend on how the batch is split.
pub fn train_distill(
    student: CausalLm,
    inputs: &DistillInputs,
    cfg: &DistillConfig,
    run_options: &RunOptions,
    device: &Device,
) -> Result<(CausalLm, FitReport)> {
    let Checked {
        vocab,
        prompts,
        eval_prompts,
    } = check(&student, inputs, cfg, run_options, device)?;
    let student = if cfg.disable_dropout {
        student.without_dropout()
    } else {
        student
    };
    let batches: Vec<Vec<usize>> = (0..cfg.epochs)
        .flat_map(|e| epoch_batches(prompts.len(), cfg, e))
        .collect();
    let per_epoch = prompts.len().div_ceil(cfg.batch_size);
    let teacher = inputs.teacher.valid();
    let fit_cfg = FitConfig {
        epochs: cfg.epochs,
        max_steps: cfg.max_steps,
        grad_accum: cfg.grad_accum,
        optimizer: &cfg.optimizer,
        schedule: &cfg.schedule,
        eval_every: cfg.eval_every,
        label: "distill",
    };
    fit(
        student,
        &fit_cfg,
        run_options,
        &|e| {
            (e * per_epoch..(e + 1) * per_epoch)
                .map(|n| vec![n])
                .collect()
        },
        &|model, idx, shard| {
            let n = idx[0];
            let mut rng = TrainRng::seed_from_u64(cfg.seed).fork(&format!("distill-batch-{n}"));
            let rows: Vec<&[u32]> = batches[n].iter().map(|&p| prompts[p].as_slice()).collect();
            let responses = sample_responses(
                // LoRA adapters merged into the sampling copy, as PPO's rollouts sample
                &model.valid().materialize(),
                inputs.tokenizer,
                &rows,
                &cfg.sampling,
                &mut rng,
            )?;
            let mut loss =
                micro_batch_loss(model, &teacher, &rows, &responses, vocab, cfg, shard.device)?;
            if run_options.log_completions.is_some() {
                loss.samples = completion_rows(inputs.tokenizer, &rows, &responses)?;
            }
            Ok(Some(loss))
        },
        &|model| {
            eval_loss(
                model,
                &teacher,
                inputs.tokenizer,
                &eval_prompts,
                vocab,
                cfg,
                device,
            )
        },
    )
}

/// The samples a micro-batch shows (TRL's `log_completions`): for each row, the prompt as the
/// student read it (cut to `max_prompt_length`), decoded with its special tokens, and the
/// completion as [`Tokenizer::decode_response`] gives it.
fn completion_rows(
    tokenizer: &Tokenizer,
    prompts: &[&[u32]],
    responses: &Responses,
) -> Result<Vec<Map<String, Value>>> {
    prompts
        .iter()
        .zip(&responses.texts)
        .map(|(prompt, completion)| {
            let mut row = Map::new();
            row.insert("prompt".into(), tokenizer.decode(prompt)?.into());
            row.insert("completion".into(), completion.clone().into());
            Ok(row)
        })
        .collect()
}

/// What [`check`] found a run can use.
struct Checked {
    /// The vocabulary rows the divergence is taken over ([`vocab_rows`]).
    vocab: usize,
    /// The training prompts' token ids.
    prompts: Vec<Vec<u32>>,
    /// The held-out prompts' token ids.
    eval_prompts: Vec<Vec<u32>>,
}

/// Refuses, before the first step, what the run could not do: settings out of range, replicas, a
/// teacher without a row for some token of the student's, evaluation without held-out prompts, no
/// training prompts, an empty prompt, a sequence longer than a model's learned positions, and a
/// micro-batch that does not fit in memory.
fn check(
    student: &CausalLm,
    inputs: &DistillInputs,
    cfg: &DistillConfig,
    run_options: &RunOptions,
    device: &Device,
) -> Result<Checked> {
    cfg.validate()?;
    if run_options.replicas.count() > 1 {
        return Err(Error::Config(
            "distillation: data-parallel replicas are not supported (each would sample its own \
             share of the batch)"
                .into(),
        ));
    }
    let vocab = vocab_rows(student, inputs.teacher)?;
    if cfg.eval_every > 0 && inputs.eval_prompts.is_empty() {
        return Err(Error::Config(
            "distillation: eval_every is set but there are no held-out prompts".into(),
        ));
    }
    if inputs.prompts.is_empty() {
        return Err(Error::Config("distillation: no training prompts".into()));
    }
    let encode =
        |texts, label| encode_prompts(inputs.tokenizer, texts, cfg.max_prompt_length, label);
    let prompts = encode(inputs.prompts, "distillation")?;
    let eval_prompts = encode(inputs.eval_prompts, "distillation (held-out prompts)")?;
    let longest = prompts.iter().chain(&eval_prompts).map(Vec::len).max();
    let longest = longest.unwrap_or(0) + cfg.sampling.max_new_tokens;
    student.check_positions(longest)?;
    inputs.teacher.check_positions(longest)?;
    check_memory(student, inputs.teacher, longest, cfg, device)?;
    Ok(Checked {
        vocab,
        prompts,
        eval_prompts,
    })
}

/// `eval_loss`: the divergence per response token of the student's samples to the held-out
/// `prompts` (none: no metric), `batch_size` prompts at a time, without gradients, with the
/// samples' `eval_entropy`, `eval_completions/mean_length` and `…/clipped_ratio`, each over all
/// held-out samples as training's are over a step's (TRL averages its eval batches' values). The
/// samples are drawn from one stream of the seed, so every evaluation of a run reads the same
/// draws.
fn eval_loss(
    student: &CausalLm,
    teacher: &CausalLm,
    tokenizer: &Tokenizer,
    prompts: &[Vec<u32>],
    vocab: usize,
    cfg: &DistillConfig,
    device: &Device,
) -> Result<Metrics> {
    if prompts.is_empty() {
        return Ok(Vec::new());
    }
    // LoRA adapters merged, as for the training samples
    let student = student.valid().materialize();
    let inference = device.clone().without_autodiff();
    let mut rng = TrainRng::seed_from_u64(cfg.seed).fork("distill-eval");
    let (mut sum, mut tokens) = (0.0, 0.0);
    // the training metrics of the samples, weighted by their response tokens as a step's are
    let eval_names = [
        (names::ENTROPY, names::EVAL_ENTROPY),
        (
            names::COMPLETIONS_MEAN_LENGTH,
            names::EVAL_COMPLETIONS_MEAN_LENGTH,
        ),
        (
            names::COMPLETIONS_CLIPPED_RATIO,
            names::EVAL_COMPLETIONS_CLIPPED_RATIO,
        ),
    ];
    let mut sums = [0.0; 3];
    for chunk in prompts.chunks(cfg.batch_size) {
        let rows: Vec<&[u32]> = chunk.iter().map(Vec::as_slice).collect();
        let responses = sample_responses(&student, tokenizer, &rows, &cfg.sampling, &mut rng)?;
        let b = micro_batch_loss(&student, teacher, &rows, &responses, vocab, cfg, &inference)?;
        sum += f64::from(b.loss.into_scalar::<f32>()) * b.weight;
        tokens += b.weight;
        for ((name, _), total) in eval_names.iter().zip(&mut sums) {
            *total += rlhf_core::train::metric(&b.metrics, name).unwrap_or(0.0) * b.weight;
        }
    }
    let per_token = |total: f64| total / tokens.max(1.0);
    let mut metrics = vec![(names::EVAL_LOSS, per_token(sum))];
    metrics.extend(
        eval_names
            .iter()
            .zip(sums)
            .map(|((_, e), t)| (*e, per_token(t))),
    );
    Ok(metrics)
}

/// The prompt indices of epoch `epoch`'s micro-batches: every prompt once, in the order drawn
/// from `(seed, epoch)`, `batch_size` at a time (the last may hold fewer).
fn epoch_batches(count: usize, cfg: &DistillConfig, epoch: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..count).collect();
    order.shuffle(&mut TrainRng::seed_from_u64(cfg.seed).fork(&format!("distill-epoch-{epoch}")));
    order
        .chunks(cfg.batch_size)
        .map(<[usize]>::to_vec)
        .collect()
}

/// The loss of one micro-batch (steps 3–4 of the module doc): `Σ D_β` over its response tokens
/// divided by their count, weighted by that count, with the student's entropy and the samples'
/// lengths as metrics.
fn micro_batch_loss(
    student: &CausalLm,
    teacher: &CausalLm,
    prompts: &[&[u32]],
    responses: &Responses,
    vocab: usize,
    cfg: &DistillConfig,
    device: &Device,
) -> Result<BatchLoss> {
    let pairs: Vec<(&[u32], &[u32])> = prompts
        .iter()
        .zip(&responses.tokens)
        .map(|(p, r)| (*p, r.as_slice()))
        .collect();
    let batch = LmBatch::from_sequences(&collate(&pairs, 0, None));
    let t = cfg.sampling.temperature;
    let (student_logits, mask) = response_logits(student, &batch, vocab, device)?;
    let (teacher_logits, _) = response_logits(teacher, &batch, vocab, &teacher.device())?;
    // a constant beside the student's logits, on their device without autodiff
    let teacher_logits = teacher_logits.to_device(&device.clone().without_autodiff());
    let divergence = generalized_jsd(student_logits.clone(), teacher_logits, cfg.beta, t);
    let tokens = batch.predicted_tokens() as f64;
    let loss = zero_masked(divergence, mask.clone())
        .sum()
        .div_scalar(tokens.max(1.0));
    let entropy = masked_mean(entropy_from_logits(student_logits.detach(), t), mask);
    let lengths = responses.tokens.iter().map(|r| r.len() as f64);
    let clipped = responses.has_eos.iter().map(|&e| f64::from(u8::from(!e)));
    Ok(BatchLoss {
        loss,
        weight: tokens,
        metrics: vec![
            (names::ENTROPY, f64::from(entropy.into_scalar::<f32>())),
            (names::COMPLETIONS_MEAN_LENGTH, mean(lengths)),
            (names::COMPLETIONS_CLIPPED_RATIO, mean(clipped)),
        ],
        samples: Vec::new(),
    })
}

/// `model`'s logits at the batch's response positions ([`target_logits`]), over its first `vocab`
/// rows, and the response mask.
fn response_logits(
    model: &CausalLm,
    batch: &LmBatch,
    vocab: usize,
    device: &Device,
) -> Result<(Tensor<3>, Tensor<2>)> {
    let t = target_logits(model, batch, device)?;
    let logits = if model.vocab_size() > vocab {
        t.logits.narrow(2, 0, vocab)
    } else {
        t.logits
    };
    Ok((logits, t.mask))
}

/// The vocabulary rows the divergence is taken over: the student's. The teacher must have a row
/// for every token the student can sample; checkpoints of one family often pad their embeddings
/// past the tokenizer to different counts (Qwen2.5-0.5B has 151,936 rows, 7B 152,064), so a
/// teacher with more rows is read over the student's, its distribution renormalised over them
/// (rows past the tokenizer's tokens hold next to no mass in a trained model); TRL refuses any
/// difference. A teacher with fewer rows than the student is refused.
fn vocab_rows(student: &CausalLm, teacher: &CausalLm) -> Result<usize> {
    let (vs, vt) = (student.vocab_size(), teacher.vocab_size());
    if vt < vs {
        return Err(Error::Config(format!(
            "distillation: the teacher has {vt} embedding rows and the student {vs}; the \
             teacher needs a row for every token the student can sample (at least as many rows, \
             and the same tokenizer)"
        )));
    }
    Ok(vs)
}

/// Refuses, before the first step, a run whose micro-batches would not fit in memory: the student
/// is trained on a micro-batch of prompts and responses of at most `longest` tokens, the teacher
/// is held, and the divergence holds about eight `[rows, max_new_tokens, vocab]` f32 tensors
/// besides the student's logits (both models' logits and log-softmax, their exponentials, the
/// differences and, for the JSD, the mixture; with the backward's), which dominate for a large
/// vocabulary.
fn check_memory(
    student: &CausalLm,
    teacher: &CausalLm,
    longest: usize,
    cfg: &DistillConfig,
    device: &Device,
) -> Result<()> {
    let shape = student.shape();
    let checkpointing = memory::checkpointing(device, student);
    let vocab = student.vocab_size() as u64;
    let response = cfg.sampling.max_new_tokens as u64;
    memory::check_batch_fits(
        "distillation",
        memory::Params::of(student).holding(memory::bytes_not_in(teacher, student)),
        1,
        &memory::Batch {
            rows: cfg.batch_size as u64,
            seq: longest as u64,
            activations: &|r, s| {
                shape.activation_bytes(r, s, checkpointing) + 8 * r * response.min(s) * vocab * 4
            },
            rows_knob: "batch_size (with grad_accum for the same step)",
            seq_knob: "max_prompt_length and max_new_tokens",
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_prompt_once_an_epoch_in_a_seeded_order() {
        let cfg = DistillConfig {
            batch_size: 3,
            seed: 7,
            ..DistillConfig::default()
        };
        let e0 = epoch_batches(8, &cfg, 0);
        assert_eq!(e0.iter().map(Vec::len).collect::<Vec<_>>(), vec![3, 3, 2]);
        let mut all: Vec<usize> = e0.concat();
        all.sort_unstable();
        assert_eq!(all, (0..8).collect::<Vec<_>>());
        assert_eq!(e0, epoch_batches(8, &cfg, 0), "the same seed and epoch");
        assert_ne!(
            e0,
            epoch_batches(8, &cfg, 1),
            "another epoch, another order"
        );
    }

    /// A teacher padded past the student's rows is read over the student's (a step runs, its
    /// loss finite); one with fewer rows, which could not read every sampled token, is refused.
    #[test]
    fn a_teacher_needs_a_row_for_every_token_the_student_can_sample() {
        let device = rlhf_core::device_from_env().unwrap().autodiff();
        let tok = Tokenizer::train_bpe(
            ["alice owns the red car", "bob sold the old bike"].into_iter(),
            40,
        )
        .unwrap();
        let model = |vocab: usize, seed: u64| {
            let mut c = crate::TransformerConfig::preset("tiny-1m").unwrap();
            c.vocab_size = vocab;
            c.hidden_size = 16;
            c.intermediate_size = 32;
            c.num_hidden_layers = 1;
            c.num_attention_heads = 2;
            c.num_key_value_heads = 2;
            rlhf_core::train::seeded(&device, seed, || CausalLm::init(&c, &device).unwrap())
        };
        let rows = tok.vocab_size();
        let prompts = vec!["alice owns".to_string(), "bob sold".to_string()];
        let cfg = DistillConfig {
            batch_size: 2,
            sampling: SamplingConfig {
                max_new_tokens: 4,
                ..DistillConfig::default().sampling
            },
            ..DistillConfig::default()
        };
        let run = |student: CausalLm, teacher: &CausalLm| {
            let inputs = DistillInputs {
                teacher,
                tokenizer: &tok,
                prompts: &prompts,
                eval_prompts: &prompts,
            };
            train_distill(student, &inputs, &cfg, &RunOptions::quiet(), &device)
        };
        let (_, report) = run(model(rows, 1), &model(rows + 8, 2)).unwrap();
        assert!(report.final_train_loss.is_finite() && report.steps == 1);
        let eval = report.eval.iter().find(|m| m.0 == names::EVAL_LOSS);
        assert!(
            eval.is_some_and(|m| m.1.is_finite() && m.1 > 0.0),
            "{:?}",
            report.eval
        );
        let err = run(model(rows + 8, 1), &model(rows, 2)).unwrap_err();
        assert!(err.to_string().contains("a row for every token"), "{err}");
    }

    #[test]
    fn out_of_range_settings_are_refused() {
        let with = |f: &dyn Fn(&mut DistillConfig)| {
            let mut c = DistillConfig::default();
            f(&mut c);
            c.validate()
        };
        assert!(with(&|_| ()).is_ok());
        assert!(with(&|c| c.beta = 0.0).is_ok());
        assert!(with(&|c| c.beta = 1.5).is_err());
        assert!(with(&|c| c.beta = -0.1).is_err());
        assert!(with(&|c| c.beta = f64::NAN).is_err());
        assert!(with(&|c| c.sampling.temperature = 0.0).is_err());
        assert!(with(&|c| c.sampling.max_new_tokens = 0).is_err());
        assert!(with(&|c| c.sampling.top_p = Some(0.0)).is_err());
        assert!(with(&|c| c.batch_size = 0).is_err());
        assert!(with(&|c| c.max_prompt_length = Some(0)).is_err());
    }
}
