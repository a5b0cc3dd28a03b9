//! Online DPO as a trainer of its own (Guo et al. 2024, "Direct Language Model Alignment from
//! Online AI Feedback"; TRL's `OnlineDPOTrainer`): the pairs are sampled from the policy being
//! trained, round after round, and judged by any `Scorer` (a reward model, a gold oracle, a rule).
//!
//! Round `i` of [`train_online_dpo`]:
//!
//! 1. **prompts**: the next `prompts_per_round` prompts of the stream (epochs over the prompt
//!    list, each epoch in its own seeded order), each cut to its last `max_prompt_length` tokens;
//! 2. **sample** `n = samples_per_prompt ≥ 2` responses `y_{p,1..n}` per prompt `p` from the
//!    current policy (temperature `T`, at most `max_new_tokens`, stopping at EOS);
//! 3. **score** them: `s_{p,k} = scorer(x_p, y_{p,k})`, minus `missing_eos_penalty` for a
//!    response without EOS (as TRL does);
//! 4. **pair** the best against the worst: `y_c = y_{p, argmax_k s}`, `y_r = y_{p, argmin_k s}`,
//!    for each prompt whose samples do not all score the same (TRL samples two and keeps ties,
//!    the first as chosen; a tie carries no preference, so it is left out here);
//! 5. **update**: `epochs` passes over the round's pairs, each pass in `minibatches` shuffled
//!    minibatches, one AdamW step on each with the pair loss of the offline trainer
//!    (`OfflineLoss`; DPO's `−log σ(β·h)` by default, `h` from sequence log-probs summed over
//!    response tokens, for IPO too as in TRL's online trainer; the reference's computed fresh
//!    each round). The learning rate of step `s` of round `i` is the schedule's at
//!    `i·epochs·minibatches + s`;
//! 6. **log** one metrics line (TRL's online-DPO names) and checkpoint when due.
//!
//! One optimizer lives through the whole run, as in TRL: its moments carry over from round to
//! round and are saved in each checkpoint. Every random choice of round `i` (its samples and its
//! minibatch order) is drawn from `(seed, i)`, and the prompt order of epoch `e` from
//! `(seed, e)`, so a checkpoint needs no RNG state and a resumed run repeats the uninterrupted
//! one exactly. The metrics of the update (loss, `rewards/*`, `objective/kl`, …) are means over
//! the round's steps of what each step saw before its update (TRL takes one step per batch of
//! prompts: with `epochs = minibatches = 1`, the default, the two agree).

use std::time::Instant;

use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor};
use rand::seq::SliceRandom;
use rlhf_core::host::to_f32_vec;
use rlhf_core::stats::mean;
use rlhf_core::train::memory;
use rlhf_core::train::metrics::names;
use rlhf_core::train::{
    Checkpoint, LrSchedule, Metrics, OptimizerConfig, Replicas, Run, RunOptions, TrainRng,
    checkpoint::{NewCheckpoint, Part, module_from_bytes, optimizer_from_bytes},
    clip_if_set, eval_due, metric,
};
use rlhf_core::{Error, Result, Scorer};
use rlhf_data::Tokenizer;
use rlhf_models::{CausalLm, Responses, SamplingConfig, encode_prompts, sample_responses};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::cache::LogpSpec;
use crate::online::best_and_worst;
use crate::trainer::{
    DpoConfig, Group, OfflineLoss, SEQUENCE_TEMPERATURE, batch_loss, reference_logps,
    sequence_logps, to_2d,
};

/// Online DPO settings (TRL's `OnlineDPOConfig`'s fields where it has the same field; the
/// defaults of the optimizer, the schedule and the seed are this project's for its tiny models,
/// and `rlhf online-dpo` takes TRL's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OnlineDpoConfig {
    /// Rounds of sample → score → pair → update.
    pub rounds: usize,
    /// Prompts per round (TRL: the batch of prompts of a step).
    pub prompts_per_round: usize,
    /// Responses sampled per prompt, at least 2 (TRL: 2).
    pub samples_per_prompt: usize,
    /// Prompts keep their last this many tokens for sampling and log-probs (`None`: whole); the
    /// scorer reads the whole prompt text.
    pub max_prompt_length: Option<usize>,
    /// How to sample (it ends rows at the tokenizer's EOS and stop ids); TRL: 64 new tokens at T = 0.9.
    pub sampling: SamplingConfig,
    /// Subtracted from the score of a response without EOS (≥ 0; `None`: no penalty).
    pub missing_eos_penalty: Option<f32>,
    /// The pair loss (TRL: `sigmoid`, i.e. DPO, or `ipo`, which reads summed log-probs here as
    /// in TRL's online trainer, not the averages of the offline one).
    pub loss: OfflineLoss,
    /// β.
    pub beta: f32,
    /// Passes over a round's pairs.
    pub epochs: usize,
    /// Minibatches (optimizer steps) per pass.
    pub minibatches: usize,
    /// AdamW and clipping.
    pub optimizer: OptimizerConfig,
    /// Schedule over optimizer steps (`rounds · epochs · minibatches` of them).
    pub schedule: LrSchedule,
    /// Dropout off in the policy (TRL's `disable_dropout`).
    pub disable_dropout: bool,
    /// Seed of every random choice.
    pub seed: u64,
}

impl Default for OnlineDpoConfig {
    fn default() -> Self {
        OnlineDpoConfig {
            rounds: 100,
            prompts_per_round: 8,
            samples_per_prompt: 2,
            max_prompt_length: None,
            sampling: SamplingConfig {
                max_new_tokens: 64,
                temperature: 0.9,
                ..SamplingConfig::default()
            },
            missing_eos_penalty: None,
            loss: OfflineLoss::Dpo {
                label_smoothing: 0.0,
            },
            beta: 0.1,
            epochs: 1,
            minibatches: 1,
            optimizer: OptimizerConfig {
                lr: 5e-4,
                ..OptimizerConfig::default()
            },
            schedule: LrSchedule::Constant,
            disable_dropout: true,
            seed: 0,
        }
    }
}

impl OnlineDpoConfig {
    /// The offline trainer's settings whose loss each minibatch takes.
    fn pair_loss(&self) -> DpoConfig {
        DpoConfig {
            loss: self.loss,
            beta: self.beta,
            optimizer: self.optimizer.clone(),
            ..DpoConfig::default()
        }
    }

    /// Optimizer steps per round.
    pub fn steps_per_round(&self) -> u64 {
        (self.epochs * self.minibatches) as u64
    }

    /// Checks the ranges: at least one round, prompt, pass and minibatch (and no more minibatches
    /// than prompts); two samples per prompt or more; at least one new token at a finite
    /// temperature > 0, the sampler's own ranges, and no filter that keeps one token alone (a
    /// top-k of 1, a min-p of 1); a missing-EOS penalty finite and ≥ 0; a prompt length ≥ 1; the
    /// loss's and the optimizer's own ranges (as the offline trainer checks them).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(format!("online dpo: {m}")));
        if self.rounds == 0 || self.prompts_per_round == 0 || self.epochs == 0 {
            return bad("rounds, prompts_per_round and epochs must be ≥ 1".into());
        }
        if self.minibatches == 0 || self.minibatches > self.prompts_per_round {
            return bad(format!(
                "minibatches must be in 1..={} (prompts_per_round), got {}",
                self.prompts_per_round, self.minibatches
            ));
        }
        if self.samples_per_prompt < 2 {
            return bad(format!(
                "samples_per_prompt must be ≥ 2 (a pair is the best and the worst), got {}",
                self.samples_per_prompt
            ));
        }
        let t = self.sampling.temperature;
        // greedy decoding would give a prompt the same sample every time: no pair
        if self.sampling.max_new_tokens == 0 || !t.is_finite() || t <= 0.0 {
            return bad(format!(
                "sampling needs max_new_tokens ≥ 1 and a finite temperature > 0 (the samples of a \
                 prompt must differ), got {} and {t}",
                self.sampling.max_new_tokens
            ));
        }
        if let Some(m) = self.sampling.problem() {
            return bad(m);
        }
        if self.sampling.top_k == Some(1) || self.sampling.min_p == Some(1.0) {
            return bad(
                "sampling keeps more than the most likely token (top_k 1 or min_p 1 would make a \
                 prompt's samples equal; top_k 0 and min_p 0 keep all)"
                    .into(),
            );
        }
        if let Some(p) = self.missing_eos_penalty
            && (!p.is_finite() || p < 0.0)
        {
            return bad(format!(
                "missing_eos_penalty is subtracted from the score and must be finite and ≥ 0, \
                 got {p}"
            ));
        }
        if self.max_prompt_length == Some(0) {
            return bad("max_prompt_length must be ≥ 1".into());
        }
        self.pair_loss().validate()
    }
}

/// What the trainer reads besides the policy and the configuration.
pub struct OnlineDpoInputs<'a> {
    /// The frozen reference policy.
    pub reference: &'a CausalLm,
    /// Scores responses: a reward model, a gold oracle, a rule.
    pub scorer: &'a dyn Scorer,
    /// The policy's tokenizer (its EOS ends responses).
    pub tokenizer: &'a Tokenizer,
    /// Training prompts, visited in a shuffled order, epoch after epoch.
    pub prompts: &'a [String],
    /// Extra metrics (e.g. the gold score of samples on held-out prompts), every `eval_every`
    /// rounds and after the last.
    pub eval: Option<&'a dyn Fn(&CausalLm) -> Metrics>,
    /// See `eval`; 0 means only after the last round.
    pub eval_every: u64,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct OnlineDpoReport {
    /// Rounds, including those before a resume.
    pub rounds: u64,
    /// Rounds this call ran.
    pub rounds_this_run: u64,
    /// Optimizer steps this call took (a round without pairs takes none).
    pub steps_this_run: u64,
    /// The last round's metrics.
    pub last: Metrics,
}

/// The prompt indices of round `round`: positions `round·k .. (round+1)·k` of the stream that
/// visits all `count` prompts in epoch `e`'s seeded order, epoch after epoch.
fn round_prompts(count: usize, per_round: usize, round: u64, seed: u64) -> Vec<usize> {
    let first = round as usize * per_round;
    let mut cached: Option<(usize, Vec<usize>)> = None;
    (first..first + per_round)
        .map(|k| {
            let epoch = k / count;
            if cached.as_ref().is_none_or(|c| c.0 != epoch) {
                let mut order: Vec<usize> = (0..count).collect();
                order.shuffle(
                    &mut TrainRng::seed_from_u64(seed).fork(&format!("online-dpo-prompts-{epoch}")),
                );
                cached = Some((epoch, order));
            }
            cached.as_ref().expect("just set").1[k % count]
        })
        .collect()
}

/// Weighted sums of named values, for means over a round's steps.
#[derive(Default)]
struct Means(Vec<(&'static str, f64)>, f64);

impl Means {
    fn add(&mut self, metrics: &[(&'static str, f64)], weight: f64) {
        for &(k, v) in metrics {
            match self.0.iter_mut().find(|m| m.0 == k) {
                Some(m) => m.1 += v * weight,
                None => self.0.push((k, v * weight)),
            }
        }
        self.1 += weight;
    }

    fn get(&self) -> Metrics {
        let w = if self.1 > 0.0 { self.1 } else { 1.0 };
        self.0.iter().map(|&(k, v)| (k, v / w)).collect()
    }
}

/// Trains `policy` (on an autodiff `device`) with online DPO for `cfg.rounds` rounds. A run with
/// an output directory resumes after its newest checkpoint (model and optimizer); `run_options`
/// gives checkpoints (counted in rounds), metrics and progress.
// One piece, over 80 lines: each round in the module doc's order, its steps already calls
// (sample, checked_scores, best_and_worst, update_on_pairs); what stays is the one metrics line
// they fill in order, the round's timers around them, the log and the checkpoint.
pub fn train_online_dpo(
    policy: CausalLm,
    inputs: &OnlineDpoInputs,
    cfg: &OnlineDpoConfig,
    run_options: &RunOptions,
    device: &Device,
) -> Result<(CausalLm, OnlineDpoReport)> {
    let Started {
        mut policy,
        mut optim,
        mut run,
        mut report,
        prompt_ids,
    } = start(policy, inputs, cfg, run_options, device)?;
    let tok = inputs.tokenizer;
    let total = cfg.rounds as u64;
    let n = cfg.samples_per_prompt;
    for round in report.rounds..total {
        let started = Instant::now();
        let done = round + 1;
        let mut rng = TrainRng::seed_from_u64(cfg.seed).fork(&format!("online-dpo-round-{round}"));

        // 1–2. the round's prompts, each sampled n times (consecutive rows)
        let picked = round_prompts(inputs.prompts.len(), cfg.prompts_per_round, round, cfg.seed);
        let episodes: Vec<usize> = picked
            .iter()
            .flat_map(|&p| std::iter::repeat_n(p, n))
            .collect();
        let ids: Vec<&[u32]> = episodes.iter().map(|&p| prompt_ids[p].as_slice()).collect();
        let Responses {
            tokens: responses,
            texts,
            has_eos,
        } = sample_responses(
            // LoRA adapters merged into the sampling copy, as PPO's rollouts sample
            &policy.valid().materialize(),
            tok,
            &ids,
            &cfg.sampling,
            &mut rng,
        )?;

        // 3. scores, the missing-EOS penalty subtracted
        let scores = checked_scores(
            inputs.scorer,
            inputs.prompts,
            &episodes,
            &texts,
            &has_eos,
            cfg.missing_eos_penalty,
            done,
        )?;

        // 4. best against worst
        let chosen_pairs: Vec<(usize, usize)> = best_and_worst(&scores, &responses, n)?
            .into_iter()
            .flatten()
            .collect();
        let groups = pair_groups(&chosen_pairs, &scores, &responses, &episodes, &prompt_ids);
        let score_mean = mean(scores.iter().map(|&s| f64::from(s)));
        let mut line = rollout_metrics(
            score_mean,
            &scores,
            &has_eos,
            &responses,
            &chosen_pairs,
            picked.len(),
            cfg.beta,
        );
        let rollout_time = started.elapsed().as_secs_f64();

        // 5. the update: epochs × minibatches AdamW steps on the round's pairs; the RLHF reward
        // is the mean score plus −β·(mean sequence KL)
        let update_started = Instant::now();
        if !groups.is_empty() {
            let update = update_on_pairs(
                policy,
                &mut optim,
                &mut run,
                &groups,
                inputs.reference,
                cfg,
                round,
                &mut rng,
                device,
            )?;
            policy = update.policy;
            report.steps_this_run += update.steps;
            line.push((names::TRAIN_LR, update.first_lr));
            let kl = metric(&update.means, names::OBJECTIVE_KL).unwrap_or(0.0);
            let non_score = -f64::from(cfg.beta) * kl;
            line.extend(update.means);
            line.push((names::OBJECTIVE_NON_SCORE_REWARD, non_score));
            line.push((names::OBJECTIVE_RLHF_REWARD, score_mean + non_score));
        }
        let (update_time, step_time) = (update_started.elapsed(), started.elapsed());
        line.push((names::TRAIN_SKIPPED_STEPS, run.skipped_steps() as f64));
        line.extend(eval_if_due(inputs, &policy, done, total));
        line.push((names::TIME_ROLLOUT, rollout_time));
        line.push((names::TIME_UPDATE, update_time.as_secs_f64()));
        line.push((names::TIME_STEP, step_time.as_secs_f64()));

        // 6. log and checkpoint
        run.log(done, &line)?;
        run.step_done(done, format!("score {score_mean:.3}"));
        report.rounds = done;
        report.rounds_this_run += 1;
        report.last = line;
        checkpoint_if_due(&run, done, total, &policy, &optim)?;
    }
    run.finish();
    Ok((policy, report))
}

/// What a run starts a round from: the models and the run, resumed when there is a checkpoint.
struct Started {
    policy: CausalLm,
    optim: ModuleOptimizer,
    run: Run,
    report: OnlineDpoReport,
    /// Each prompt's ids, left-truncated to `max_prompt_length`.
    prompt_ids: Vec<Vec<u32>>,
}

/// The setup: the refusals (configuration, inputs, replicas, memory), the prompts encoded,
/// dropout switched off when asked, then the run started and resumed after its newest
/// checkpoint.
fn start(
    policy: CausalLm,
    inputs: &OnlineDpoInputs,
    cfg: &OnlineDpoConfig,
    run_options: &RunOptions,
    device: &Device,
) -> Result<Started> {
    cfg.validate()?;
    check_inputs(&policy, inputs)?;
    let prompt_ids = encode_prompts(
        inputs.tokenizer,
        inputs.prompts,
        cfg.max_prompt_length,
        "online dpo",
    )?;
    if run_options.replicas.count() > 1 {
        return Err(Error::Config(
            "online dpo: data-parallel replicas are not supported (its generation and judging \
             run on one device)"
                .into(),
        ));
    }
    let mut policy = if cfg.disable_dropout {
        policy.without_dropout()
    } else {
        policy
    };
    check_memory(
        &policy,
        inputs.reference,
        &prompt_ids,
        cfg,
        &run_options.replicas,
        device,
    )?;
    let mut optim = cfg.optimizer.build()?;
    let (run, resume) = Run::start(run_options, cfg.rounds as u64, "online-dpo")?;
    let mut report = OnlineDpoReport::default();
    if let Some(c) = resume {
        (policy, optim) = restore(&c, run_options, policy, optim)?;
        report.rounds = c.step;
    }
    Ok(Started {
        policy,
        optim,
        run,
        report,
        prompt_ids,
    })
}

/// Refuses a run without prompts, or with a reference that reads other token ids than the
/// policy.
fn check_inputs(policy: &CausalLm, inputs: &OnlineDpoInputs) -> Result<()> {
    if inputs.prompts.is_empty() {
        return Err(Error::Config("online dpo: no training prompts".into()));
    }
    let (vp, vr) = (policy.vocab_size(), inputs.reference.vocab_size());
    if vp != vr {
        return Err(Error::Config(format!(
            "online dpo: the reference has {vr} embedding rows and the policy {vp}; they must \
             share the tokenizer"
        )));
    }
    Ok(())
}

/// Refuses, before the first round, a run whose minibatches would not fit in memory: the policy
/// is trained on both responses of a minibatch's pairs, the `reference` is held.
fn check_memory(
    policy: &CausalLm,
    reference: &CausalLm,
    prompt_ids: &[Vec<u32>],
    cfg: &OnlineDpoConfig,
    replicas: &Replicas,
    device: &Device,
) -> Result<()> {
    let shape = policy.shape();
    let longest = prompt_ids.iter().map(Vec::len).max().unwrap_or(0);
    let checkpointing = memory::checkpointing(device, policy);
    memory::check_batch_fits(
        "online DPO",
        memory::Params::of(policy).holding(memory::bytes_not_in(reference, policy)),
        replicas.count() as u64,
        &memory::Batch {
            rows: 2 * cfg.prompts_per_round.div_ceil(cfg.minibatches) as u64,
            seq: (longest + cfg.sampling.max_new_tokens) as u64,
            activations: &|r, s| shape.activation_bytes(r, s, checkpointing),
            rows_knob: "minibatches (more minibatches, fewer pairs each)",
            seq_knob: "max_prompt_length and max_new_tokens",
        },
    )
}

/// The policy and the optimizer as checkpoint `c` (of the run in `run_options`' output
/// directory) saved them.
fn restore(
    c: &Checkpoint,
    run_options: &RunOptions,
    policy: CausalLm,
    optim: ModuleOptimizer,
) -> Result<(CausalLm, ModuleOptimizer)> {
    let dir = run_options.out_dir.clone().unwrap_or_default();
    let part = |name: &str| c.part(name, &dir);
    let policy = module_from_bytes(policy, part("model")?)?;
    let optim = optimizer_from_bytes(optim, part("optimizer")?)?;
    Ok((policy, optim))
}

/// Step 3: the scorer's score of each response (`texts[i]`, sampled for prompt `episodes[i]`),
/// minus `missing_eos_penalty` for one without EOS. A scorer that gives another count of scores,
/// or a non-finite one, is an error (`done` names the round).
fn checked_scores(
    scorer: &dyn Scorer,
    prompts: &[String],
    episodes: &[usize],
    texts: &[String],
    has_eos: &[bool],
    missing_eos_penalty: Option<f32>,
    done: u64,
) -> Result<Vec<f32>> {
    let prompt_texts: Vec<&str> = episodes.iter().map(|&p| prompts[p].as_str()).collect();
    let text_refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let mut scores = rlhf_core::score_each(scorer, &prompt_texts, &text_refs)?;
    if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
        return Err(Error::Config(format!(
            "online dpo: the scorer {} gave the non-finite score {} to response {i} of round \
             {done} (prompt {})",
            scorer.name(),
            scores[i],
            episodes[i]
        )));
    }
    if let Some(penalty) = missing_eos_penalty {
        for (s, eos) in scores.iter_mut().zip(has_eos) {
            if !eos {
                *s -= penalty;
            }
        }
    }
    Ok(scores)
}

/// The [`Group`]s of the pair loss for the `(best row, worst row)` pairs: the prompt's ids (row
/// `k` was sampled for prompt `episodes[k]`), the best and the worst response, their scores.
fn pair_groups(
    pairs: &[(usize, usize)],
    scores: &[f32],
    responses: &[Vec<u32>],
    episodes: &[usize],
    prompt_ids: &[Vec<u32>],
) -> Vec<Group> {
    pairs
        .iter()
        .map(|&(best, worst)| Group {
            prompt: prompt_ids[episodes[best]].clone(),
            responses: vec![responses[best].clone(), responses[worst].clone()],
            rewards: Some(vec![scores[best], scores[worst]]),
        })
        .collect()
}

/// The round's rollout metrics (TRL's names): the mean score (`score_mean`), the share of
/// responses with EOS, their mean length, the share of the `prompts` that gave a pair, β, and,
/// when there are pairs, the mean score margin of best over worst.
fn rollout_metrics(
    score_mean: f64,
    scores: &[f32],
    has_eos: &[bool],
    responses: &[Vec<u32>],
    pairs: &[(usize, usize)],
    prompts: usize,
    beta: f32,
) -> Metrics {
    let mut line: Metrics = vec![
        (names::OBJECTIVE_SCORES, score_mean),
        (
            names::VAL_CONTAIN_EOS_TOKEN,
            mean(has_eos.iter().map(|&e| f64::from(u8::from(e)))),
        ),
        (
            names::COMPLETIONS_MEAN_LENGTH,
            mean(responses.iter().map(|r| r.len() as f64)),
        ),
        (
            names::ONLINE_PAIR_SHARE,
            pairs.len() as f64 / prompts as f64,
        ),
        (names::BETA, f64::from(beta)),
    ];
    if !pairs.is_empty() {
        line.push((
            names::OBJECTIVE_SCORES_MARGIN,
            mean(pairs.iter().map(|&(b, w)| f64::from(scores[b] - scores[w]))),
        ));
    }
    line
}

/// What a round's update did.
struct PairUpdate {
    /// The policy after the update.
    policy: CausalLm,
    /// The learning rate of the round's first step.
    first_lr: f64,
    /// Each metric's mean over the round's steps, weighted by their pairs.
    means: Metrics,
    /// Steps taken, skipped ones included.
    steps: u64,
}

/// The response lengths `batch_loss` divides IPO's log-probs by, for the online update: TRL's
/// online trainer builds IPO's `h` from summed log-probs, where its offline trainer (and
/// `batch_loss`) averages them, so under IPO every response counts as one token here.
fn summed_for_ipo<const D: usize>(loss: OfflineLoss, lengths: Tensor<D>) -> Tensor<D> {
    if matches!(loss, OfflineLoss::Ipo) {
        lengths.ones_like()
    } else {
        lengths
    }
}

/// The sequence KL to the reference and the entropy estimate of a minibatch's responses, from
/// their sequence log-probs under the policy before the step and under the reference.
fn kl_and_entropy(logps: Tensor<1>, ref_rows: &[Vec<f32>]) -> Metrics {
    let lp = to_f32_vec(logps);
    let lr_ref: Vec<f32> = ref_rows.concat();
    vec![
        (
            names::OBJECTIVE_KL,
            mean(lp.iter().zip(&lr_ref).map(|(a, r)| f64::from(a - r))),
        ),
        (
            names::OBJECTIVE_ENTROPY,
            mean(lp.iter().map(|a| -f64::from(*a))),
        ),
    ]
}

/// How online DPO reads sequence log-probs: whole responses, from the untempered distribution,
/// every token counted once.
const WHOLE: LogpSpec = LogpSpec {
    truncation: None,
    temperature: SEQUENCE_TEMPERATURE,
    ld_alpha: None,
};

/// Step 5 of round `round`: `epochs` passes over `groups` (the round's pairs, at least one), each
/// in `minibatches` shuffled minibatches (order drawn from `rng`), one AdamW step on each with
/// the pair loss after clipping the gradient norm; the `reference`'s log-probs are computed once,
/// before the first step. Each step's finiteness goes to `run`, and a non-finite step is skipped.
#[allow(clippy::too_many_arguments)]
fn update_on_pairs(
    mut policy: CausalLm,
    optim: &mut ModuleOptimizer,
    run: &mut Run,
    groups: &[Group],
    reference: &CausalLm,
    cfg: &OnlineDpoConfig,
    round: u64,
    rng: &mut TrainRng,
    device: &Device,
) -> Result<PairUpdate> {
    let pair_cfg = cfg.pair_loss();
    let steps_per_round = cfg.steps_per_round();
    // the learning rate of the round's step `s`
    let step_lr = |s: u64| {
        cfg.schedule
            .lr_at(cfg.optimizer.lr, round * steps_per_round + s)
    };
    let inference = device.clone().without_autodiff();
    let done = round + 1;
    let mut batches = 0;
    let per_mb = groups.len().div_ceil(cfg.minibatches);
    let refs = reference_logps(reference, groups, per_mb, &WHOLE, &inference, &mut batches)?;
    let mut means = Means::default();
    let mut step = 0u64;
    for _ in 0..cfg.epochs {
        let mut order: Vec<usize> = (0..groups.len()).collect();
        order.shuffle(rng);
        for (k, mb) in near_equal_chunks(&order, cfg.minibatches).enumerate() {
            let lr = step_lr(step);
            let g: Vec<&Group> = mb.iter().map(|&i| &groups[i]).collect();
            let b = g.len();
            let (logps, lengths) = sequence_logps(&policy, &g, None, device)?;
            let ref_rows: Vec<Vec<f32>> = mb.iter().map(|&i| refs[i].clone()).collect();
            let rewards = pair_cfg.loss.needs_rewards().then(|| {
                let r: Vec<Vec<f32>> = mb
                    .iter()
                    .map(|&i| groups[i].rewards.clone().unwrap_or_default())
                    .collect();
                to_2d(&r, device)
            });
            let sums = logps.clone().reshape([b, 2]);
            let (loss, mut metrics) = batch_loss(
                &pair_cfg,
                sums.clone(),
                sums,
                summed_for_ipo(pair_cfg.loss, lengths).reshape([b, 2]),
                to_2d(&ref_rows, device),
                rewards,
                None,
            );
            let loss_value = f64::from(loss.clone().into_scalar::<f32>());
            metrics.extend(kl_and_entropy(logps, &ref_rows));
            let grads = GradientsParams::from_grads(loss.backward(), &policy);
            let (grads, norm) = clip_if_set(&policy, grads, cfg.optimizer.max_grad_norm);
            let finite = loss_value.is_finite() && norm.is_finite();
            run.check_finite(done, finite, || {
                format!("online-dpo round {done}, minibatch {k}")
            })?;
            if finite {
                policy = optim.step(lr, policy, grads);
            }
            metrics.push((names::TRAIN_LOSS, loss_value));
            metrics.push((names::TRAIN_GRAD_NORM, f64::from(norm)));
            means.add(&metrics, b as f64);
            step += 1;
        }
    }
    Ok(PairUpdate {
        policy,
        first_lr: step_lr(0),
        means: means.get(),
        steps: step,
    })
}

/// The caller's eval of `policy` after round `done` of `total`: every `eval_every` rounds and
/// after the last; nothing otherwise.
fn eval_if_due(inputs: &OnlineDpoInputs, policy: &CausalLm, done: u64, total: u64) -> Metrics {
    match inputs.eval {
        Some(eval) if eval_due(done, total, inputs.eval_every) => eval(policy),
        _ => Vec::new(),
    }
}

/// Saves a checkpoint after round `done` when one is due (model and optimizer), then stops the
/// run if it was interrupted.
fn checkpoint_if_due(
    run: &Run,
    done: u64,
    total: u64,
    policy: &CausalLm,
    optim: &ModuleOptimizer,
) -> Result<()> {
    if !run.checkpoint_due(done, total) {
        return Ok(());
    }
    run.save(|| {
        Ok(NewCheckpoint {
            step: done,
            parts: vec![
                ("model".to_string(), Part::module(policy.clone())),
                ("optimizer".to_string(), Part::optimizer(optim)),
            ],
            state: json!({ "trainer": "online-dpo" }),
        })
    })?;
    run.stop_if_interrupted(done)
}

/// `items` cut into `min(parts, len)` consecutive chunks whose sizes differ by at most one, so a
/// round takes one step per minibatch whenever it has at least that many pairs.
fn near_equal_chunks(items: &[usize], parts: usize) -> impl Iterator<Item = &[usize]> {
    let parts = parts.clamp(1, items.len().max(1));
    let (size, extra) = (items.len() / parts, items.len() % parts);
    (0..parts).scan(0, move |start, k| {
        let len = size + usize::from(k < extra);
        let chunk = &items[*start..*start + len];
        *start += len;
        Some(chunk)
    })
}

#[cfg(test)]
mod tests {
    use super::{OnlineDpoConfig, SamplingConfig, near_equal_chunks};

    /// Sampling that would make a prompt's samples equal is refused, as greedy decoding is; a
    /// top-k of 2 or more (0 keeps every token, as in TRL) and a nucleus in (0, 1] are taken.
    #[test]
    fn sampling_that_gives_no_pair_is_refused() {
        let with = |top_k, top_p| OnlineDpoConfig {
            sampling: SamplingConfig {
                top_k,
                top_p,
                ..OnlineDpoConfig::default().sampling
            },
            ..OnlineDpoConfig::default()
        };
        for (k, p) in [(Some(1), None), (None, Some(0.0)), (None, Some(1.5))] {
            assert!(with(k, p).validate().is_err(), "{k:?} {p:?}");
        }
        for (k, p) in [
            (Some(2), None),
            (Some(0), None),
            (None, Some(0.9)),
            (Some(40), Some(1.0)),
        ] {
            assert!(with(k, p).validate().is_ok(), "{k:?} {p:?}");
        }
    }

    #[test]
    fn a_round_takes_one_step_per_minibatch() {
        let items: Vec<usize> = (0..8).collect();
        let sizes: Vec<usize> = near_equal_chunks(&items, 5).map(<[usize]>::len).collect();
        assert_eq!(sizes, vec![2, 2, 2, 1, 1]);
        let all: Vec<usize> = near_equal_chunks(&items, 5).flatten().copied().collect();
        assert_eq!(all, items);
        assert_eq!(near_equal_chunks(&items[..3], 5).count(), 3);
        assert_eq!(near_equal_chunks(&[], 4).count(), 1);
    }
}
