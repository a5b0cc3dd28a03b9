//! [`fit`]: the optimisation loop shared by the offline trainers (reward models, DPO/EXO).
//!
//! Per epoch, the trainer gives batches of example indices (drawn from its seed and the epoch, so
//! a resumed run sees the same batches); `grad_accum` batches make one optimizer step (mean of
//! their gradients), the global gradient norm is clipped, the learning rate follows the schedule;
//! with `max_steps` the run stops at that step, within an epoch if need be (transformers' rule);
//! eval runs every `eval_every` steps and at the end; checkpoints hold the model, the optimizer and
//! the step, and a run started again in the same directory resumes after its newest checkpoint,
//! skipping the batches it already trained on.
//!
//! A step whose loss or gradient norm is NaN or infinite is skipped (the weights and the optimizer
//! state stay as they were), counted in `train/skipped_steps` and reported with its batch; too
//! many in a row stop the run ([`Run::check_finite`]). SIGINT or SIGTERM stop it after the current
//! step, checkpointed ([`Run::interrupted`]).

use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor};
use serde_json::{Map, Value, json};

use super::checkpoint::{Checkpoint, NewCheckpoint, Part, module_from_bytes, optimizer_from_bytes};
use super::grads::{GradAccumulation, clip_if_set};
use super::metrics::names;
use super::optim::OptimizerConfig;
use super::replicas::{Replicas, Shard};
use super::run::{Run, RunOptions};
use super::schedule::LrSchedule;
use crate::{Error, Result};

/// The loop's settings.
#[derive(Debug, Clone)]
pub struct FitConfig<'a> {
    /// Passes over the data.
    pub epochs: usize,
    /// Stop after this many optimizer steps of the whole run, within an epoch if need be
    /// (transformers' `max_steps`). The caller gives enough `epochs`; 0, or more steps than the
    /// epochs hold, is refused. `None`: every epoch to its end.
    pub max_steps: Option<u64>,
    /// Batches per optimizer step.
    pub grad_accum: usize,
    /// AdamW and clipping.
    pub optimizer: &'a OptimizerConfig,
    /// Schedule over optimizer steps.
    pub schedule: &'a LrSchedule,
    /// Eval every this many steps (0 = only at the end).
    pub eval_every: u64,
    /// Progress-bar prefix and checkpoint tag (`rm`, `dpo`, …).
    pub label: &'a str,
}

/// Metrics as `(name, value)`, names from [`names`].
pub type Metrics = Vec<(&'static str, f64)>;

/// The value of the metric `name` in a metrics line, if it is there.
pub fn metric(line: &[(&str, f64)], name: &str) -> Option<f64> {
    line.iter().find(|m| m.0 == name).map(|m| m.1)
}

/// Whether the evaluation is due after step `step` of `total`: every `every` steps (never when
/// 0) and after the last.
pub fn eval_due(step: u64, total: u64, every: u64) -> bool {
    step == total || (every > 0 && step.is_multiple_of(every))
}

/// What a trainer's loss function gives for one (micro-)batch.
#[derive(Debug, Clone)]
pub struct BatchLoss {
    /// The loss `[1]`: a mean over the batch's items.
    pub loss: Tensor<1>,
    /// How many items `loss` is the mean over (examples, pairs, target tokens). Accumulated
    /// micro-batches are weighted by it, so `k` micro-batches give the update of one batch
    /// holding all their items (see [`super::GradAccumulation`]).
    pub weight: f64,
    /// Extra metrics to log (averaged over micro-batches with the same weights; NaN: nothing to
    /// measure here; see `step_gradients`).
    pub metrics: Metrics,
    /// What a trainer that samples sampled for this loss, one JSON object per sample, for
    /// `completions.jsonl` ([`RunOptions::log_completions`]); empty for the others.
    pub samples: Vec<Map<String, Value>>,
}

/// A trainer's loss: `loss_of(model, batch, shard)` is the loss of `shard`'s part of the batch of
/// example indices, or `None` when that part is empty. Replicas call it from their threads.
pub type LossOf<'a, M> = dyn Fn(&M, &[usize], Shard<'_>) -> Result<Option<BatchLoss>> + Sync + 'a;

/// What a trainer does after each optimizer step besides the step, with state its checkpoints
/// keep (TR-DPO's reference, moved towards the policy every few steps). It runs after the step
/// and before the step's eval and checkpoint, as a callback's `on_step_end` does in
/// transformers' `Trainer`. Its state is shared with the trainer's loss (hence `&self`).
pub trait AfterStep<M> {
    /// After optimizer step `step` (counted from 1 over the whole run, resumed or not) left
    /// `model` as it is (a skipped step too).
    fn after_step(&self, step: u64, model: &M) -> Result<()>;
    /// The state as checkpoint parts, by name.
    fn parts(&self) -> Vec<(String, Part<'static>)>;
    /// Restores the state from the checkpoint `c` (in `dir`) that the run resumes from.
    fn restore(&self, c: &Checkpoint, dir: &std::path::Path) -> Result<()>;
}

/// What the loop did.
#[derive(Debug, Clone, Default)]
pub struct FitReport {
    /// Optimizer steps, including those before a resume.
    pub steps: u64,
    /// Steps this call took.
    pub steps_this_run: u64,
    /// Mean loss of the last step's batches.
    pub final_train_loss: f64,
    /// The last eval's metrics.
    pub eval: Metrics,
}

/// Runs the loop. `batches_of_epoch(e)` gives epoch `e`'s batches of example indices;
/// `loss_of(model, batch, shard)` the loss of `shard`'s part of the batch (the whole batch with one
/// replica), its weight and extra metrics, or `None` when that part is empty; `eval_of(model)` the
/// eval metrics (empty without eval data). The model must live on an autodiff device; with
/// [`RunOptions::replicas`], that device is the first replica's.
pub fn fit<M: Module>(
    model: M,
    cfg: &FitConfig,
    run_options: &RunOptions,
    batches_of_epoch: &dyn Fn(usize) -> Vec<Vec<usize>>,
    loss_of: &LossOf<'_, M>,
    eval_of: &dyn Fn(&M) -> Result<Metrics>,
) -> Result<(M, FitReport)> {
    fit_with(
        model,
        cfg,
        run_options,
        batches_of_epoch,
        loss_of,
        eval_of,
        None,
    )
}

/// [`fit`] with `after_step` run after every optimizer step, its state checkpointed with the
/// model's.
// One piece, over 80 lines: the body is one optimizer step in its order (gradients, clipping,
// the non-finite guard, the update, the hook, the metrics line, eval, the checkpoint), read top
// to bottom.
pub fn fit_with<M: Module>(
    mut model: M,
    cfg: &FitConfig,
    run_options: &RunOptions,
    batches_of_epoch: &dyn Fn(usize) -> Vec<Vec<usize>>,
    loss_of: &LossOf<'_, M>,
    eval_of: &dyn Fn(&M) -> Result<Metrics>,
    after_step: Option<&dyn AfterStep<M>>,
) -> Result<(M, FitReport)> {
    let accum = cfg.grad_accum.max(1);
    let steps_per_epoch: Vec<u64> = (0..cfg.epochs)
        .map(|e| batches_of_epoch(e).len().div_ceil(accum) as u64)
        .collect();
    let all_epochs: u64 = steps_per_epoch.iter().sum();
    let total = match cfg.max_steps {
        Some(max) if max == 0 || max > all_epochs => {
            return Err(Error::Config(format!(
                "{}: max_steps {max} must be at least 1 and at most the {all_epochs} steps of \
                 the {} epochs given",
                cfg.label, cfg.epochs
            )));
        }
        Some(max) => max,
        None => all_epochs,
    };
    if total == 0 {
        return Err(Error::Config(format!("{}: no training batches", cfg.label)));
    }
    let mut optim = cfg.optimizer.build()?;
    let replicas = &run_options.replicas;
    // the first replica's device: where the model lives and the optimizer steps
    let Some(device) = model.devices().into_iter().next() else {
        return Err(Error::Config(format!("{}: no parameters", cfg.label)));
    };
    let (mut run, resume) = Run::start(run_options, total, cfg.label)?;
    let mut report = FitReport::default();
    if let Some(c) = resume {
        let dir = run_options.out_dir.clone().unwrap_or_default();
        let part = |name: &str| c.part(name, &dir);
        model = module_from_bytes(model, part("model")?)?;
        optim = optimizer_from_bytes(optim, part("optimizer")?)?;
        if let Some(hook) = after_step {
            hook.restore(&c, &dir)?;
        }
        report.steps = c.step;
    }
    let mut step = 0u64;
    'epochs: for (epoch, &n_steps) in steps_per_epoch.iter().enumerate() {
        if step + n_steps <= report.steps {
            step += n_steps; // an epoch finished before the resume
            continue;
        }
        for group in batches_of_epoch(epoch).chunks(accum) {
            if step == total {
                break 'epochs; // max_steps reached within the epochs
            }
            step += 1;
            if step <= report.steps {
                continue; // trained on before the resume
            }
            let StepGradients {
                grads,
                loss: loss_value,
                metrics,
                samples,
            } = step_gradients(&model, &device, group, replicas, loss_of)?;
            let (grads, norm) = clip_if_set(&model, grads, cfg.optimizer.max_grad_norm);
            let lr = cfg.schedule.lr_at(cfg.optimizer.lr, step - 1);
            let finite = loss_value.is_finite() && norm.is_finite();
            run.check_finite(step, finite, || {
                let first: Vec<usize> = group.iter().flatten().copied().take(8).collect();
                // the indices the trainer gave for this step (examples, SFT's batch numbers, or
                // DPO's groups numbered across epochs, `epoch·n + i`)
                format!("{} epoch {epoch}, batch indices {first:?}…", cfg.label)
            })?;
            if finite {
                model = optim.step(lr, model, grads);
            }
            if let Some(hook) = after_step {
                hook.after_step(step, &model)?;
            }
            report.steps = step;
            report.steps_this_run += 1;
            report.final_train_loss = loss_value;
            let mut line: Metrics = vec![
                (names::TRAIN_LOSS, loss_value),
                (names::TRAIN_LR, lr),
                (names::TRAIN_GRAD_NORM, f64::from(norm)),
                (names::TRAIN_SKIPPED_STEPS, run.skipped_steps() as f64),
            ];
            line.extend(metrics);
            if eval_due(step, total, cfg.eval_every) {
                let e = eval_of(&model)?;
                line.extend(e.iter().copied());
                report.eval = e;
            }
            run.log(step, &line)?;
            if let Some(n) = run.completions_due(step, total) {
                run.log_completions(step, samples.into_iter().take(n).collect())?;
            }
            run.step_done(step, format!("loss {loss_value:.3}"));
            if run.checkpoint_due(step, total) {
                run.save(|| {
                    let mut c = checkpoint(step, &model, &optim, cfg.label, epoch)?;
                    c.parts
                        .extend(after_step.map(|h| h.parts()).unwrap_or_default());
                    Ok(c)
                })?;
                run.stop_if_interrupted(step)?;
            }
        }
    }
    if report.steps_this_run == 0 {
        report.eval = eval_of(&model)?;
    }
    run.finish();
    Ok((model, report))
}

/// The checkpoint after `step`: the model, the optimizer's state, and the epoch.
fn checkpoint<'a, M: Module + 'a>(
    step: u64,
    model: &M,
    optim: &'a ModuleOptimizer,
    label: &str,
    epoch: usize,
) -> Result<NewCheckpoint<'a>> {
    Ok(NewCheckpoint {
        step,
        parts: vec![
            ("model".to_string(), Part::module(model.clone())),
            ("optimizer".to_string(), Part::optimizer(optim)),
        ],
        state: json!({ "trainer": label, "epoch": epoch }),
    })
}

/// One optimizer step's gradients, before clipping: the weighted mean over the step's
/// micro-batches, each cut into the replicas' shards; the mean loss; the extra metrics' means; and
/// the samples, in micro-batch order.
struct StepGradients {
    grads: GradientsParams,
    loss: f64,
    metrics: Metrics,
    samples: Vec<Map<String, Value>>,
}

/// The gradients of the micro-batches `group` (see [`StepGradients`]). Each replica's shard of a
/// micro-batch counts as a micro-batch of its own, weighted by its items. A metric's mean is over
/// the shards that report it: a shard reports NaN for what it has nothing to measure (KTO's chosen
/// rewards in a batch without a desirable example), and is left out of that metric's mean. When
/// every shard that reports a metric weighs nothing (a step without SFT targets), its mean is
/// their plain mean (SFT's `num_tokens` counts such a step too).
fn step_gradients<M: Module>(
    model: &M,
    device: &Device,
    group: &[Vec<usize>],
    replicas: &Replicas,
    loss_of: &LossOf<'_, M>,
) -> Result<StepGradients> {
    let mut acc = GradAccumulation::new();
    let (mut loss_sum, mut weight_sum) = (0.0, 0.0);
    // per metric: the weighted sum and weight, and the plain sum and count of its values
    let mut extra_sum: Vec<(&'static str, f64, f64, f64, f64)> = Vec::new();
    let mut samples = Vec::new();
    // one micro-batch on one replica needs no weighting (and keeps its gradient exact)
    let weighted = group.len() > 1 || replicas.count() > 1;
    for idx in group {
        let shards = replicas.run(model, device, &|m, shard| {
            let Some(BatchLoss {
                loss,
                weight,
                metrics,
                samples,
            }) = loss_of(m, idx, shard)?
            else {
                return Ok(None);
            };
            let value = f64::from(loss.clone().into_scalar::<f32>());
            let (loss, w) = if weighted {
                (loss.mul_scalar(weight as f32), weight)
            } else {
                (loss, 1.0)
            };
            let grads = GradientsParams::from_grads(loss.backward(), m);
            Ok(Some((grads, w, value, weight, metrics, samples)))
        })?;
        for (grads, w, value, weight, metrics, shard_samples) in shards.into_iter().flatten() {
            samples.extend(shard_samples);
            loss_sum += value * weight;
            weight_sum += weight;
            for (k, v) in metrics {
                let (sum, w, plain, n) = if v.is_nan() {
                    (0.0, 0.0, 0.0, 0.0)
                } else {
                    (v * weight, weight, v, 1.0)
                };
                match extra_sum.iter_mut().find(|s| s.0 == k) {
                    Some(s) => {
                        s.1 += sum;
                        s.2 += w;
                        s.3 += plain;
                        s.4 += n;
                    }
                    None => extra_sum.push((k, sum, w, plain, n)),
                }
            }
            acc.add(model, grads.to_device(device, model), w);
        }
    }
    let n = if weight_sum > 0.0 { weight_sum } else { 1.0 };
    Ok(StepGradients {
        grads: acc.take_mean(model),
        loss: loss_sum / n,
        metrics: extra_sum
            .into_iter()
            .map(|(k, sum, w, plain, n)| {
                let mean = match (w > 0.0, n > 0.0) {
                    (true, _) => sum / w,
                    (false, true) => plain / n,
                    (false, false) => f64::NAN,
                };
                (k, mean)
            })
            .collect(),
        samples,
    })
}

/// TRL's `num_tokens` as [`fit`] forms steps: from each epoch's batches' token counts, each
/// batch's running total to the end of its step (a step is `grad_accum` batches of its epoch, the
/// last one possibly fewer), epoch by epoch.
pub fn tokens_at_step_end(epochs: &[Vec<u64>], grad_accum: usize) -> Vec<Vec<u64>> {
    let mut total = 0;
    let mut out = Vec::with_capacity(epochs.len());
    for batches in epochs {
        let mut ends = Vec::with_capacity(batches.len());
        for step in batches.chunks(grad_accum.max(1)) {
            total += step.iter().sum::<u64>();
            ends.extend(std::iter::repeat_n(total, step.len()));
        }
        out.push(ends);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn num_tokens_counts_the_steps_so_far() {
        let epochs = vec![vec![3, 4, 5], vec![1, 2, 6]];
        let flat = |accum| tokens_at_step_end(&epochs, accum).concat();
        assert_eq!(flat(1), vec![3, 7, 12, 13, 15, 21]);
        assert_eq!(flat(2), vec![7, 7, 12, 15, 15, 21]);
        assert_eq!(flat(4), vec![12, 12, 12, 21, 21, 21]);
    }

    #[test]
    fn the_eval_is_due_every_n_steps_and_after_the_last() {
        let due = |every| {
            (1..=10)
                .filter(|&s| eval_due(s, 10, every))
                .collect::<Vec<u64>>()
        };
        assert_eq!(due(0), [10]);
        assert_eq!(due(3), [3, 6, 9, 10]);
        assert_eq!(due(5), [5, 10]);
        let line = [("a", 1.0), ("b", 2.0)];
        assert_eq!((metric(&line, "b"), metric(&line, "c")), (Some(2.0), None));
    }
}
