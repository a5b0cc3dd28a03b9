//! `rlhf online-dpo`: online DPO of a checkpoint on a prompt file against a `--reward` (a reward
//! model, a verifier, or an ensemble): rounds of sampling from the policy, scoring, pairing the
//! best response against the worst and one DPO step, TRL's `OnlineDPOTrainer` defaults.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args, ValueEnum};
use rlhf_core::train::OptimizerConfig;
use rlhf_core::train::metrics::names;
use rlhf_dpo::{OfflineLoss, OnlineDpoConfig, OnlineDpoInputs, train_online_dpo};
use rlhf_models::SamplingConfig;
use serde::{Deserialize, Serialize};

use crate::args::{
    FrozenArgs, LoraArgs, ModelArgs, PromptArgs, Scheduler, TokenFilterArgs, WarmupRatio,
    defaults_from_clap, run_options, schedule,
};
use crate::commands::{last_metric, prompts_and_reward};
use crate::data::prompts;
use crate::{load, output};

/// TRL's `OnlineDPOConfig.learning_rate`.
pub const DEFAULT_LR: f64 = 5e-7;

/// The pair loss [TRL: --loss_type].
#[derive(ValueEnum, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum OnlineLoss {
    /// DPO, `−log σ(β·h)`.
    Sigmoid,
    /// IPO, `(h − 1/(2β))²` on log-probs summed over response tokens (as TRL's online trainer).
    Ipo,
}

/// `rlhf online-dpo` options.
#[derive(Args, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(default)]
pub struct OnlineDpoArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub lora: LoraArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub frozen: FrozenArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub input: PromptArgs,
    /// What scores a response: a reward-model DIR (or rm:DIR), exact-match[:FIELD],
    /// regex:PATTERN, length[:SCALE], judge:DIR (an LLM judge), or
    /// sum(…)/mean(…)/min(…)/mean-minus-std:λ(…) of these
    /// [TRL: --reward_model_path, --reward_funcs].
    #[arg(long, value_name = "SPEC")]
    pub reward: Option<String>,
    /// Weights of the terms of a top-level `sum(…)` in `--reward` (or of a single reward), one
    /// each, separated by spaces or commas [TRL: --reward_weights].
    #[arg(long, value_name = "W", num_args = 1.., value_delimiter = ',', allow_negative_numbers = true)]
    pub reward_weights: Option<Vec<f32>>,
    /// The frozen reference (default: `--model`) [TRL: --ref_model].
    #[arg(long = "ref", visible_alias = "ref-model", value_name = "DIR")]
    pub ref_model: Option<PathBuf>,
    /// Rounds of sample → score → pair → update [TRL: --max_steps].
    #[arg(long, visible_alias = "iterations", default_value_t = 100)]
    pub rounds: usize,
    /// Prompts per micro-batch [TRL: --per_device_train_batch_size].
    #[arg(
        long,
        visible_alias = "per-device-train-batch-size",
        default_value_t = 8
    )]
    pub prompts_per_batch: usize,
    /// Micro-batches per round: a round samples `prompts_per_batch` × this many prompts and
    /// steps on all of their pairs at once (the same step as TRL's accumulated one, without its
    /// memory saving) [TRL: --gradient_accumulation_steps].
    #[arg(long, default_value_t = 1)]
    pub gradient_accumulation_steps: usize,
    /// Responses sampled per prompt; the best and the worst make the pair (TRL samples 2).
    #[arg(long, visible_alias = "num-generations", default_value_t = 2)]
    pub samples_per_prompt: usize,
    /// Prompts keep their last this many tokens, for sampling and for the log-probs (default:
    /// whole). TRL 1.16's online DPO has no such option, and no `--max-length` here: its
    /// `max_length` (512 by default) cuts a prompt from the left for the log-probs only.
    #[arg(long)]
    pub max_prompt_length: Option<usize>,
    /// New tokens sampled per response [TRL: --max_new_tokens].
    #[arg(long, visible_alias = "max-new-tokens", default_value_t = 64)]
    pub max_completion_length: usize,
    /// Sampling temperature [TRL: --temperature].
    #[arg(long, default_value_t = 0.9)]
    pub temperature: f32,
    #[command(flatten)]
    #[serde(flatten)]
    pub filters: TokenFilterArgs,
    /// Subtracted from the score of a response without EOS [TRL: --missing_eos_penalty].
    #[arg(long)]
    pub missing_eos_penalty: Option<f32>,
    /// The pair loss [TRL: --loss_type].
    #[arg(long, visible_alias = "loss-type", value_enum, default_value_t = OnlineLoss::Sigmoid)]
    pub loss: OnlineLoss,
    /// β [TRL: --beta; TRL's list of one β per epoch is not taken].
    #[arg(long, default_value_t = 0.1)]
    pub beta: f32,
    /// Passes over a round's pairs (TRL: 1).
    #[arg(long, default_value_t = 1)]
    pub epochs_per_round: usize,
    /// Optimizer steps per pass, each on its share of the round's pairs (TRL: 1).
    #[arg(long, default_value_t = 1)]
    pub num_mini_batches: usize,
    /// Peak learning rate [TRL: --learning_rate].
    #[arg(long)]
    pub learning_rate: Option<f64>,
    /// AdamW β₁ [TRL: --adam_beta1].
    #[arg(long, default_value_t = 0.9)]
    pub adam_beta1: f32,
    /// AdamW β₂ [TRL: --adam_beta2].
    #[arg(long, default_value_t = 0.999)]
    pub adam_beta2: f32,
    /// AdamW ε [TRL: --adam_epsilon].
    #[arg(long, default_value_t = 1e-8)]
    pub adam_epsilon: f32,
    /// AdamW's decoupled weight decay [TRL: --weight_decay].
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f32,
    /// Clip the global gradient norm to this (0: no clipping) [TRL: --max_grad_norm].
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f32,
    /// The schedule's shape over all optimizer steps [TRL: --lr_scheduler_type].
    #[arg(long, value_enum, default_value_t = Scheduler::Linear)]
    pub lr_scheduler_type: Scheduler,
    /// Warm-up steps (wins over `warmup_ratio` when > 0) [TRL: --warmup_steps].
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: u64,
    /// Warm-up as a share of all steps, in [0, 1], rounded up [TRL: --warmup_ratio].
    #[arg(long, default_value_t = WarmupRatio::NONE)]
    pub warmup_ratio: WarmupRatio,
    /// Dropout off in the policy [TRL: --disable_dropout].
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub disable_dropout: bool,
    /// Seed of every random choice [TRL: --seed].
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Checkpoint every this many rounds (and at the end) [TRL: --save_steps].
    #[arg(long, default_value_t = 10)]
    pub save_steps: u64,
    /// Checkpoints kept [TRL: --save_total_limit].
    #[arg(long, default_value_t = 2)]
    pub save_total_limit: usize,
    /// A progress line every this many rounds when stderr is not a terminal [TRL:
    /// --logging_steps].
    #[arg(long, default_value_t = 1)]
    pub logging_steps: u64,
}

defaults_from_clap!(OnlineDpoArgs);

impl OnlineDpoArgs {
    /// These options with the command's default learning rate filled in (what `--print-config`
    /// shows and the run directory records).
    pub fn completed(mut self) -> Self {
        self.learning_rate.get_or_insert(DEFAULT_LR);
        self
    }

    /// Optimizer steps of the whole run (at most: a round without pairs takes none).
    pub fn total_steps(&self) -> u64 {
        (self.rounds * self.epochs_per_round.max(1) * self.num_mini_batches.max(1)) as u64
    }

    /// The library's configuration, its schedule over `total_steps`.
    pub fn config(&self, total_steps: u64) -> OnlineDpoConfig {
        OnlineDpoConfig {
            rounds: self.rounds,
            prompts_per_round: self.prompts_per_batch * self.gradient_accumulation_steps.max(1),
            samples_per_prompt: self.samples_per_prompt,
            max_prompt_length: self.max_prompt_length,
            sampling: self.filters.apply(SamplingConfig {
                max_new_tokens: self.max_completion_length,
                temperature: self.temperature,
                ..SamplingConfig::default()
            }),
            missing_eos_penalty: self.missing_eos_penalty,
            loss: match self.loss {
                OnlineLoss::Sigmoid => OfflineLoss::Dpo {
                    label_smoothing: 0.0,
                },
                OnlineLoss::Ipo => OfflineLoss::Ipo,
            },
            beta: self.beta,
            epochs: self.epochs_per_round,
            minibatches: self.num_mini_batches,
            optimizer: OptimizerConfig {
                lr: self.learning_rate.unwrap_or(DEFAULT_LR),
                beta1: self.adam_beta1,
                beta2: self.adam_beta2,
                eps: self.adam_epsilon,
                weight_decay: self.weight_decay,
                max_grad_norm: (self.max_grad_norm > 0.0).then_some(self.max_grad_norm),
            },
            schedule: schedule(
                self.lr_scheduler_type,
                self.warmup_steps,
                self.warmup_ratio.get(),
                total_steps,
            ),
            disable_dropout: self.disable_dropout,
            seed: self.seed,
        }
    }
}

/// Trains and writes the policy.
pub fn run(args: &OnlineDpoArgs, toml: &str) -> Result<()> {
    let (dir, out) = args.model.model_and_out()?;
    let (prompt_file, spec) = prompts_and_reward(
        args.input.prompts.as_deref(),
        args.reward.as_deref(),
        args.reward_weights.as_deref(),
    )?;
    let cfg = args.config(args.total_steps());
    cfg.validate()?;
    if args.model.devices.len() > 1 {
        bail!(
            "online-dpo: --devices with more than one replica is not supported (its generation \
             and judging run on one device); use sft, rm, dpo or the on-policy commands"
        );
    }
    let device = args.model.training_device()?;
    let ckpt = load::checkpoint(dir, &device, args.input.template())?;
    let policy = load::policy(ckpt.model.clone(), &ckpt.config, &args.lora, args.seed)?;
    let reference = load::reference(
        args.ref_model.as_deref(),
        ckpt.model,
        &ckpt.config,
        args.frozen.frozen_dtype,
        &args.lora,
        &device,
    )?;
    let opts = args.input.read_options();
    let prompts = prompts(prompt_file, &opts, &ckpt.format)?;
    let inference = device.clone().without_autodiff();
    let scorer = spec.build(
        &ckpt.tokenizer,
        &prompts,
        &inference,
        (
            args.frozen.frozen_dtype,
            args.input.template.chat_template_kwargs.as_deref(),
        ),
    )?;
    tracing::info!(
        "online-dpo: {} prompts, {} per round × {} samples, {} rounds, {} new tokens at \
         temperature {}, loss {}, β {}, reward {}",
        prompts.texts.len(),
        cfg.prompts_per_round,
        cfg.samples_per_prompt,
        cfg.rounds,
        cfg.sampling.max_new_tokens,
        cfg.sampling.temperature,
        format!("{:?}", args.loss).to_lowercase(),
        cfg.beta,
        scorer.name()
    );
    output::claim(out, "online-dpo", toml)?;
    let inputs = OnlineDpoInputs {
        reference: &reference,
        scorer: scorer.as_ref(),
        tokenizer: &ckpt.tokenizer,
        prompts: &prompts.texts,
        eval: None,
        eval_every: 0,
    };
    let run = run_options(
        out,
        args.save_steps,
        args.save_total_limit,
        args.logging_steps,
    );
    let (policy, report) =
        train_online_dpo(policy, &inputs, &cfg, &run, &device).context("rlhf online-dpo")?;
    output::save_causal(out, &policy, &ckpt.config, &ckpt.tokenizer, dir, &args.lora)?;
    tracing::info!(
        "online-dpo: {} rounds ({} this run, {} steps); last: scores {:.4}, margin {:.4}, KL {:.4}",
        report.rounds,
        report.rounds_this_run,
        report.steps_this_run,
        last_metric(&report.last, names::OBJECTIVE_SCORES),
        last_metric(&report.last, names::REWARDS_MARGINS),
        last_metric(&report.last, names::OBJECTIVE_KL)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Wrapped {
        #[command(flatten)]
        args: OnlineDpoArgs,
    }

    /// TRL's batch flags, spelt as TRL spells them: a round samples the prompts of all its
    /// micro-batches.
    #[test]
    fn a_round_holds_every_micro_batch_of_prompts() {
        let flags = crate::options::normalise_args(
            [
                "rlhf",
                "--per_device_train_batch_size",
                "4",
                "--gradient_accumulation_steps",
                "3",
            ]
            .map(Into::into),
        );
        let w = Wrapped::try_parse_from(flags).unwrap();
        let c = w.args.completed().config(10);
        assert_eq!(c.prompts_per_round, 12);
    }
}
