//! `rlhf ppo`, `rlhf grpo`, `rlhf rloo`, `rlhf reinforce-pp`, `rlhf dapo`, `rlhf gspo`,
//! `rlhf cispo`: on-policy RL of a checkpoint on a prompt file against a `--reward` (a reward
//! model, a verifier, or an ensemble). Each command starts from its method's recipe
//! (`PpoConfig::default()`, the TL;DR reproduction; `::grpo()`; `::rloo()`; `::reinforce_pp()`;
//! `::dapo(…)`; `::gspo()`; `::cispo()`), and every field of it is a flag.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args, ValueEnum};
use rlhf_core::train::metrics::names;
use rlhf_core::train::{OptimizerConfig, RunOptions, SchedulePlan, SyncRef};
use rlhf_core::{
    AdaptiveEntropy, KlController, KlEstimator, LossAggregation, PolicyObjective, Scorer,
};
use rlhf_data::{ChatFormat, PromptRecord, ReadOptions, Tokenizer};
use rlhf_models::{CausalLm, ScalarModel, TransformerConfig};
use rlhf_ppo::{
    AdvantageEstimator, HeldOut, MultiObjectiveAggregation, PolicyAndValue, PpoConfig, PpoInputs,
    held_out_metrics, train_ppo,
};
use rlhf_reward::ChatReading;
use serde::{Deserialize, Serialize};

use crate::args::{
    FrozenArgs, LoraArgs, ModelArgs, PromptArgs, Scheduler, TokenFilterArgs, WarmupRatio,
    defaults_from_clap, run_options,
};
use crate::commands::{last_metric, prompts_and_reward};
use crate::data::{Encoder, Prompts, demonstrations, prompts};
use crate::load::Checkpoint;
use crate::reward::Spec;
use crate::{load, output};

/// The on-policy methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// PPO with GAE and a critic (the TL;DR recipe).
    Ppo,
    /// GRPO.
    Grpo,
    /// RLOO.
    Rloo,
    /// REINFORCE++.
    ReinforcePp,
    /// DAPO.
    Dapo,
    /// GSPO.
    Gspo,
    /// CISPO.
    Cispo,
}

impl Method {
    /// The method's recipe, with the learning rate the references use on real checkpoints
    /// (the library's recipes keep the rate tiny test models want): PPO 3e-6 (the TL;DR
    /// reproduction), GRPO, RLOO, DAPO, GSPO and CISPO 1e-6 (TRL's `GRPOTrainer`), REINFORCE++
    /// 5e-7 (OpenRLHF's examples).
    pub fn preset(self) -> PpoConfig {
        let (mut c, lr) = match self {
            Method::Ppo => (PpoConfig::default(), 3e-6),
            Method::Grpo => (PpoConfig::grpo(), 1e-6),
            Method::Rloo => (PpoConfig::rloo(), 1e-6),
            Method::ReinforcePp => (PpoConfig::reinforce_pp(), 5e-7),
            Method::Dapo => (PpoConfig::dapo(PpoConfig::default().response_length), 1e-6),
            Method::Gspo => (PpoConfig::gspo(), 1e-6),
            Method::Cispo => (PpoConfig::cispo(), 1e-6),
        };
        c.optimizer.lr = lr;
        c
    }

    /// The command's name.
    pub fn name(self) -> &'static str {
        match self {
            Method::Ppo => "ppo",
            Method::Grpo => "grpo",
            Method::Rloo => "rloo",
            Method::ReinforcePp => "reinforce-pp",
            Method::Dapo => "dapo",
            Method::Gspo => "gspo",
            Method::Cispo => "cispo",
        }
    }
}

/// How per-token policy losses are aggregated, as TRL's `loss_type` names it (`cispo`, `sapo` and
/// `vespo` also select their surrogates).
#[derive(ValueEnum, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LossType {
    /// Per-response mean, then the batch mean (the GRPO paper).
    Grpo,
    /// Token mean over the batch (DAPO; PPO's).
    Dapo,
    /// Token mean over the micro-batch (BNPO).
    Bnpo,
    /// Token sum over batch × max completion length (Dr. GRPO).
    #[value(name = "dr_grpo", alias = "dr-grpo")]
    DrGrpo,
    /// Each response's token sum, then the batch mean: LUSPO, GSPO's loss scaled by length
    /// (with `rlhf gspo`, or `--importance-sampling-level sequence`).
    Luspo,
    /// CISPO's clipped, detached importance weights, token mean.
    Cispo,
    /// SAPO's soft gate of the token ratio, per-response mean.
    Sapo,
    /// VESPO's detached Gamma weights of the sequence's importance ratio, token mean.
    Vespo,
}

impl LossType {
    /// The loss type that selects `objective` aggregated `how`.
    fn of(objective: PolicyObjective, how: LossAggregation) -> Self {
        match (objective, how) {
            (PolicyObjective::Cispo, _) => LossType::Cispo,
            (PolicyObjective::Sapo, _) => LossType::Sapo,
            (PolicyObjective::Vespo, _) => LossType::Vespo,
            (_, LossAggregation::Grpo) => LossType::Grpo,
            (_, LossAggregation::Dapo) => LossType::Dapo,
            (_, LossAggregation::Bnpo) => LossType::Bnpo,
            (_, LossAggregation::DrGrpo) => LossType::DrGrpo,
            (_, LossAggregation::Luspo) => LossType::Luspo,
        }
    }
}

/// The importance ratio of the clipped surrogate: per token (PPO, GRPO, DAPO) or per sequence
/// (GSPO).
#[derive(ValueEnum, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SamplingLevel {
    /// `ρ_t` per token.
    Token,
    /// GSPO's length-normalised sequence ratio.
    Sequence,
}

/// How a group's centred rewards are scaled into advantages (TRL's `scale_rewards`).
#[derive(ValueEnum, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ScaleRewards {
    /// Divided by the group's standard deviation (GRPO).
    #[value(alias = "true")]
    Group,
    /// Not scaled (Dr. GRPO).
    #[value(alias = "false")]
    None,
    /// Divided by the standard deviation of the whole batch's rewards.
    Batch,
}

/// How several reward functions' scores become one advantage (TRL's
/// `multi_objective_aggregation`).
#[derive(ValueEnum, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// The weighted sum is the score, normalised as `--scale-rewards` says.
    #[value(name = "sum_then_normalize", alias = "sum-then-normalize")]
    SumThenNormalize,
    /// GDPO: each function normalised within its group, then summed and scaled by the batch.
    #[value(name = "normalize_then_sum", alias = "normalize-then-sum")]
    NormalizeThenSum,
}

impl Aggregation {
    fn of(a: MultiObjectiveAggregation) -> Self {
        match a {
            MultiObjectiveAggregation::SumThenNormalize => Aggregation::SumThenNormalize,
            MultiObjectiveAggregation::NormalizeThenSum => Aggregation::NormalizeThenSum,
        }
    }

    fn config(self) -> MultiObjectiveAggregation {
        match self {
            Aggregation::SumThenNormalize => MultiObjectiveAggregation::SumThenNormalize,
            Aggregation::NormalizeThenSum => MultiObjectiveAggregation::NormalizeThenSum,
        }
    }
}

impl ScaleRewards {
    /// The scaling of a group-normalised `advantage` estimator; `None` for the others.
    fn of(advantage: AdvantageEstimator) -> Option<Self> {
        match advantage {
            AdvantageEstimator::Grpo => Some(ScaleRewards::Group),
            AdvantageEstimator::DrGrpo => Some(ScaleRewards::None),
            AdvantageEstimator::GrpoBatch => Some(ScaleRewards::Batch),
            _ => None,
        }
    }

    /// The group-normalised estimator that scales so ([`Self::of`]'s inverse).
    fn estimator(self) -> AdvantageEstimator {
        match self {
            ScaleRewards::Group => AdvantageEstimator::Grpo,
            ScaleRewards::None => AdvantageEstimator::DrGrpo,
            ScaleRewards::Batch => AdvantageEstimator::GrpoBatch,
        }
    }
}

/// The per-token KL estimator.
#[derive(ValueEnum, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Estimator {
    /// `logπ − logπ_ref`.
    K1,
    /// `(logπ − logπ_ref)²/2`.
    K2,
    /// `exp(logπ_ref − logπ) − 1 + logπ − logπ_ref`.
    K3,
}

impl Estimator {
    fn of(k: KlEstimator) -> Self {
        match k {
            KlEstimator::K1 => Estimator::K1,
            KlEstimator::K2 => Estimator::K2,
            KlEstimator::K3 => Estimator::K3,
        }
    }

    fn config(self) -> KlEstimator {
        match self {
            Estimator::K1 => KlEstimator::K1,
            Estimator::K2 => KlEstimator::K2,
            Estimator::K3 => KlEstimator::K3,
        }
    }
}

/// Options of the on-policy commands. Unset ones take the method's recipe (see
/// `--print-config`).
#[derive(Args, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(default)]
pub struct OnPolicyArgs {
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
    /// Held-out prompts, in the layout of --prompts (a verifier reads its reference there; the
    /// queries hold the longest prompt of both files): the policy samples --num-generations-eval
    /// responses to each at the training settings, and
    /// --reward scores them (`eval_reward`, `eval_reward_std`, `eval_rewards/{name}/*`, with their
    /// KL to the reference `eval_kl`, `eval_completions/mean_length` and `…/clipped_ratio`),
    /// every --eval-steps iterations and after the last
    /// [TRL: --eval_strategy steps with an eval dataset].
    #[arg(long, value_name = "FILE")]
    pub eval_prompts: Option<PathBuf>,
    /// Iterations between held-out evaluations, and one after the last (0: after the last only;
    /// TRL's counts optimizer steps) [TRL: --eval_steps].
    #[arg(long)]
    pub eval_steps: Option<u64>,
    /// Responses sampled per held-out prompt (default: --num-generations)
    /// [TRL: --num_generations_eval].
    #[arg(long)]
    pub num_generations_eval: Option<usize>,
    /// Weights of the terms of a top-level `sum(…)` in `--reward` (or of a single reward), one
    /// each, separated by spaces or commas [TRL: --reward_weights].
    #[arg(long, value_name = "W", num_args = 1.., value_delimiter = ',', allow_negative_numbers = true)]
    pub reward_weights: Option<Vec<f32>>,
    /// The frozen reference (default: `--model`) [TRL: --ref_model].
    #[arg(long = "ref", visible_alias = "ref-model", value_name = "DIR")]
    pub ref_model: Option<PathBuf>,
    /// The KL term's reference follows the policy (TR-DPO's update): every
    /// --ref-model-sync-steps optimizer steps it moves to α·policy + (1 − α)·reference, α being
    /// --ref-model-mixup-alpha; the steps must be a multiple of an iteration's
    /// (--num-ppo-epochs × --num-mini-batches); not with LoRA or β 0 [TRL: --sync_ref_model].
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub sync_ref_model: Option<bool>,
    /// α, the policy's share of the new reference (default 0.6) [TRL: --ref_model_mixup_alpha].
    #[arg(long)]
    pub ref_model_mixup_alpha: Option<f32>,
    /// τ, optimizer steps between the reference's updates (default 512) [TRL:
    /// --ref_model_sync_steps].
    #[arg(long)]
    pub ref_model_sync_steps: Option<u64>,
    /// PPO's critic: a scalar checkpoint, its served normalisation folded into its head
    /// (default: the reward model when `--reward` names one, TL;DR detail 6, else the policy
    /// with a fresh head).
    #[arg(long, value_name = "DIR")]
    pub critic: Option<PathBuf>,
    /// Rollout-and-update iterations.
    #[arg(long)]
    pub iterations: Option<usize>,
    /// Responses sampled per prompt [TRL: --num_generations].
    #[arg(long, visible_alias = "num-generations")]
    pub samples_per_prompt: Option<usize>,
    /// Prompts per rollout batch.
    #[arg(long)]
    pub prompts_per_batch: Option<usize>,
    /// Queries are left-padded (or cut from the left) to this many tokens (default: the longest
    /// prompt, at most 512, with a warning when that cuts one) [TRL: --max_prompt_length; TRL
    /// 1.16's GRPO and RLOO have none and cut no prompt].
    #[arg(long)]
    pub max_prompt_length: Option<usize>,
    /// New tokens sampled per response [TRL: --max_completion_length, --response_length].
    #[arg(long, visible_alias = "response-length")]
    pub max_completion_length: Option<usize>,
    /// Sampling temperature, reapplied when log-probs are recomputed [TRL: --temperature].
    #[arg(long)]
    pub temperature: Option<f32>,
    #[command(flatten)]
    #[serde(flatten)]
    pub filters: TokenFilterArgs,
    /// Score of a response without EOS, instead of the reward's [TRL: --missing_eos_penalty].
    #[arg(long, allow_hyphen_values = true)]
    pub missing_eos_penalty: Option<f32>,
    /// Keep the reward's score for a response without EOS (no penalty).
    #[arg(long)]
    pub no_missing_eos_penalty: bool,
    /// Leave a response cut off at the length limit (no EOS) out of the loss, and its KL out of
    /// the reward; its score still enters its group's baseline [TRL: --mask_truncated_completions].
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub mask_truncated_completions: Option<bool>,
    /// The KL coefficient β [TRL: --beta, --kl_coef].
    #[arg(long, visible_alias = "kl-coef")]
    pub beta: Option<f64>,
    /// Adaptive KL: the target KL per sequence (β then starts at `beta` and adapts).
    #[arg(long)]
    pub kl_target: Option<f64>,
    /// Adaptive KL: the horizon in samples.
    #[arg(long, default_value_t = 10_000.0)]
    pub kl_horizon: f64,
    /// The per-token KL estimator [TRL's PPOTrainer, gone from TRL 1.x: --kl_estimator].
    #[arg(long, value_enum)]
    pub kl_estimator: Option<Estimator>,
    /// The KL in the reward (true: PPO, RLOO, REINFORCE++) or in the loss (false: GRPO).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub kl_in_reward: Option<bool>,
    /// Discount γ [TRL's PPOTrainer, gone from TRL 1.x: --gamma].
    #[arg(long)]
    pub gamma: Option<f32>,
    /// GAE λ [TRL's PPOTrainer, gone from TRL 1.x: --lam].
    #[arg(long)]
    pub lam: Option<f32>,
    /// Whiten per-token rewards [TRL's PPOTrainer, gone from TRL 1.x: --whiten_rewards].
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub whiten_rewards: Option<bool>,
    /// Whiten GAE advantages.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub whiten_advantages: Option<bool>,
    /// Hold each response's score (with DAPO's overlong punishment) in [MIN, MAX], before any
    /// baseline and the KL; the missing-EOS penalty still replaces it (off when unset)
    /// [TRL RLOO: --reward_clip_range].
    #[arg(long, num_args = 2, value_names = ["MIN", "MAX"], allow_negative_numbers = true)]
    pub reward_clip_range: Option<Vec<f32>>,
    /// RLOO: normalise its advantages over the batch, (A − mean)/(std + 1e-4)
    /// [TRL: --normalize_advantages].
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub normalize_advantages: Option<bool>,
    /// Epochs over each rollout batch [TRL: --num_ppo_epochs, --num_iterations].
    #[arg(long, visible_alias = "num-iterations")]
    pub num_ppo_epochs: Option<usize>,
    /// Minibatches per epoch, each one optimizer step: a rollout of --prompts-per-batch ×
    /// --num-generations completions is cut into this many [TRL's PPOTrainer, gone from TRL
    /// 1.x: --num_mini_batches].
    #[arg(long)]
    pub num_mini_batches: Option<usize>,
    /// TRL's count of micro-batches per rollout, a multiple of --gradient-accumulation-steps:
    /// the rollout takes this over the accumulation optimizer steps per epoch, so it sets
    /// --num-mini-batches (TRL's default is the accumulation, one step)
    /// [TRL GRPO, RLOO: --steps_per_generation].
    #[arg(long)]
    pub steps_per_generation: Option<usize>,
    /// Micro-batches per minibatch step: each minibatch's loss and backward pass run on this
    /// many equal parts in turn, their gradients summed into the one step, which holds one
    /// part's activations at a time. The step is the whole minibatch's, except under `bnpo`,
    /// whose token mean is each part's, averaged. Unlike TRL's, it does not enlarge the rollout:
    /// TRL GRPO's `per_device_train_batch_size × num_processes × gradient_accumulation_steps`
    /// completions, one optimizer step, are a minibatch here (`--prompts-per-batch ×
    /// --num-generations / --num-mini-batches`) [TRL: --gradient_accumulation_steps].
    #[arg(long)]
    pub gradient_accumulation_steps: Option<usize>,
    /// Policy clip ε (ε_low of an asymmetric clip). For CISPO it bounds the weight below at
    /// 1 − ε (the recipe's 1 leaves it unbounded), where TRL's `cispo` ignores `--epsilon`
    /// [TRL: --cliprange, --epsilon].
    #[arg(long, visible_alias = "epsilon")]
    pub cliprange: Option<f32>,
    /// Upper clip ε_high, DAPO's clip-higher (default: the same as --cliprange). For CISPO the
    /// weight's cap is 1 + ε_high, so TRL's absolute `--epsilon_high 5.0` for `cispo` is 4 here
    /// [TRL: --epsilon_high].
    #[arg(long)]
    pub epsilon_high: Option<f32>,
    /// INTELLECT-2's two-sided clip: the ratio of PPO's unclipped term is capped at δ, bounding
    /// the loss of a token with a negative advantage whose ratio grew; it must exceed
    /// 1 + ε_high, and cispo has no such term [TRL: --delta].
    #[arg(long)]
    pub delta: Option<f32>,
    /// Only the real tokens of a minibatch whose entropy lies in its top share ρ carry the
    /// policy gradient ("Beyond the 80/20 Rule"; 1: all, 0: the most uncertain; below 1 the run
    /// takes one replica, and refuses several --devices)
    /// [TRL: --top_entropy_quantile].
    #[arg(long)]
    pub top_entropy_quantile: Option<f32>,
    /// Weight the KL loss term of each token by the importance ratio π/π_old (GSPO's sequence
    /// ratio at the sequence level), so that at the token level k3's gradient is the unbiased
    /// reverse-KL gradient
    /// (DeepSeek-V3.2; on in GRPO's recipes; with --kl-in-reward it changes nothing)
    /// [TRL: --use_bias_correction_kl].
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub use_bias_correction_kl: Option<bool>,
    /// The entropy bonus c: the loss gains −c times the policy's mean entropy over the tokens
    /// that carry the policy gradient (0: off; the initial c with --use-adaptive-entropy)
    /// [TRL: --entropy_coef].
    #[arg(long, allow_hyphen_values = true)]
    pub entropy_coef: Option<f32>,
    /// Skywork-OR1's adaptive entropy control: after each optimizer step c rises by
    /// --entropy-coef-delta when the step's mean entropy was at most --entropy-target and falls
    /// by it otherwise, within [--entropy-coef-min, --entropy-coef-max]; a step applies c only
    /// when the last step's entropy was at most the target [TRL: --use_adaptive_entropy].
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub use_adaptive_entropy: Option<bool>,
    /// The mean entropy per token (nats) at or below which adaptive control applies c
    /// (default 0.2) [TRL: --entropy_target].
    #[arg(long)]
    pub entropy_target: Option<f32>,
    /// Adaptive control's change of c per optimizer step (default 0.005)
    /// [TRL: --entropy_coef_delta].
    #[arg(long)]
    pub entropy_coef_delta: Option<f32>,
    /// The least c adaptive control sets (default 0) [TRL: --entropy_coef_min].
    #[arg(long)]
    pub entropy_coef_min: Option<f32>,
    /// The largest c adaptive control sets (default 1) [TRL: --entropy_coef_max].
    #[arg(long)]
    pub entropy_coef_max: Option<f32>,
    /// How per-token losses are aggregated; `cispo`, `sapo` and `vespo` also select their
    /// surrogates, which read the token ratio (VESPO its product over the response), so they are
    /// refused with the sequence-level ratio, `gspo`'s [TRL: --loss_type].
    #[arg(long, value_enum)]
    pub loss_type: Option<LossType>,
    /// Clip the token ratio or GSPO's sequence ratio [TRL: --importance_sampling_level].
    #[arg(long, value_enum)]
    pub importance_sampling_level: Option<SamplingLevel>,
    /// SAPO's gate temperature τ_pos, for tokens with a positive advantage (default 1)
    /// [TRL: --sapo_temperature_pos].
    #[arg(long)]
    pub sapo_temperature_pos: Option<f32>,
    /// SAPO's gate temperature τ_neg, for the other tokens (default 1.05)
    /// [TRL: --sapo_temperature_neg].
    #[arg(long)]
    pub sapo_temperature_neg: Option<f32>,
    /// VESPO's power k for responses with a non-negative advantage (default 2)
    /// [TRL: --vespo_k_pos].
    #[arg(long)]
    pub vespo_k_pos: Option<f32>,
    /// VESPO's rate λ for responses with a non-negative advantage (default 3)
    /// [TRL: --vespo_lambda_pos].
    #[arg(long)]
    pub vespo_lambda_pos: Option<f32>,
    /// VESPO's power k for the other responses (default 3) [TRL: --vespo_k_neg].
    #[arg(long)]
    pub vespo_k_neg: Option<f32>,
    /// VESPO's rate λ for the other responses (default 2) [TRL: --vespo_lambda_neg].
    #[arg(long)]
    pub vespo_lambda_neg: Option<f32>,
    /// DeepSeek-V3.2's off-policy sequence masking: where a response's mean log-ratio of the
    /// sampler against the policy being trained exceeds this δ (≥ 0), its tokens with a negative
    /// advantage leave the policy loss (off when unset) [TRL: --off_policy_mask_threshold].
    #[arg(long)]
    pub off_policy_mask_threshold: Option<f32>,
    /// Group-normalised methods: divide each group's centred rewards by its standard deviation
    /// (`group`, GRPO), by the whole batch's (`batch`), or not at all (`none`, Dr. GRPO)
    /// [TRL: --scale_rewards].
    #[arg(long, value_enum)]
    pub scale_rewards: Option<ScaleRewards>,
    /// Several reward functions (`--reward sum(…)`): sum their weighted scores, then normalise
    /// (`sum_then_normalize`), or normalise each function's scores within its group first, then
    /// sum them and scale by the batch's spread (`normalize_then_sum`, GDPO; GRPO's family, and
    /// `--scale-rewards` has no effect then) [TRL: --multi_objective_aggregation].
    #[arg(long, value_enum)]
    pub multi_objective_aggregation: Option<Aggregation>,
    /// DAPO's dynamic sampling: drop groups of equal scores and sample again, at most this many
    /// rounds per iteration (0: off).
    #[arg(long, value_name = "ROUNDS")]
    pub dynamic_sampling: Option<usize>,
    /// DAPO's soft overlong punishment over the last N tokens before the length limit (0: off).
    #[arg(long, value_name = "N")]
    pub overlong_buffer: Option<usize>,
    /// The overlong punishment at the length limit.
    #[arg(long)]
    pub overlong_penalty: Option<f32>,
    /// Weight each token's loss by min(exp(logπ_old − logπ_sampler), CAP), the truncated
    /// importance-sampling correction for a sampler whose numbers differ from the trainer's
    /// (0: off) [TRL: --vllm_importance_sampling_cap].
    #[arg(long, value_name = "CAP")]
    pub rollout_is_cap: Option<f32>,
    /// Value clip ε_v [TRL's PPOTrainer, gone from TRL 1.x: --cliprange_value].
    #[arg(long)]
    pub cliprange_value: Option<f32>,
    /// Value-loss coefficient [TRL's PPOTrainer, gone from TRL 1.x: --vf_coef].
    #[arg(long)]
    pub vf_coef: Option<f32>,
    /// Peak learning rate (default: ppo 3e-6, grpo and rloo 1e-6, reinforce-pp 5e-7)
    /// [TRL: --learning_rate].
    #[arg(long)]
    pub learning_rate: Option<f64>,
    /// AdamW β₁ [TRL: --adam_beta1].
    #[arg(long)]
    pub adam_beta1: Option<f32>,
    /// AdamW β₂ [TRL: --adam_beta2].
    #[arg(long)]
    pub adam_beta2: Option<f32>,
    /// AdamW ε [TRL: --adam_epsilon].
    #[arg(long)]
    pub adam_epsilon: Option<f32>,
    /// AdamW weight decay [TRL: --weight_decay].
    #[arg(long)]
    pub weight_decay: Option<f32>,
    /// Clip the global gradient norm (0: off) [TRL: --max_grad_norm].
    #[arg(long)]
    pub max_grad_norm: Option<f32>,
    /// Anneal the learning rate linearly to 0 (not read when --lr-scheduler-type,
    /// --warmup-steps or --warmup-ratio is given).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub anneal_lr: Option<bool>,
    /// The schedule's shape over all updates (default, when --warmup-steps or --warmup-ratio is
    /// given: linear) [TRL: --lr_scheduler_type].
    #[arg(long, value_enum)]
    pub lr_scheduler_type: Option<Scheduler>,
    /// Warm-up updates (wins over --warmup-ratio when > 0) [TRL: --warmup_steps].
    #[arg(long)]
    pub warmup_steps: Option<u64>,
    /// Warm-up as a share of all updates, in [0, 1], rounded up [TRL: --warmup_ratio].
    #[arg(long)]
    pub warmup_ratio: Option<WarmupRatio>,
    /// PPO-ptx: coefficient of an SFT loss on `ptx_data` added to the policy loss.
    #[arg(long)]
    pub ptx_coef: Option<f32>,
    /// PPO-ptx: demonstrations per batch.
    #[arg(long)]
    pub ptx_batch_size: Option<usize>,
    /// PPO-ptx: demonstrations (prompt/completion, messages or text).
    #[arg(long, value_name = "FILE")]
    pub ptx_data: Option<PathBuf>,
    /// Subtract each prompt's mean score (needs two samples per prompt or more).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub score_baseline: Option<bool>,
    /// Standardise scores within buckets of this many tokens of response length.
    #[arg(long)]
    pub length_bucket_width: Option<usize>,
    /// Dropout off in every model (TL;DR detail 1).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub disable_dropout: Option<bool>,
    /// PPO: start the critic from the reward model (TL;DR detail 6) when `--reward` names one;
    /// otherwise from the policy with a fresh head.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub value_from_reward_model: Option<bool>,
    /// Seed of every random choice [TRL: --seed].
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Checkpoint every this many iterations (and at the end) [TRL: --save_steps].
    #[arg(long, default_value_t = 10)]
    pub save_steps: u64,
    /// Checkpoints kept [TRL: --save_total_limit].
    #[arg(long, default_value_t = 2)]
    pub save_total_limit: usize,
    /// A progress line every this many iterations when stderr is not a terminal [TRL:
    /// --logging_steps].
    #[arg(long, default_value_t = 1)]
    pub logging_steps: u64,
    /// Write each logged iteration's samples (the prompt as the policy read it, the completion,
    /// its score and advantage) to completions.jsonl in --out [TRL: --log_completions].
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub log_completions: bool,
    /// With --log-completions, this many samples of an iteration (default: all)
    /// [TRL: --num_completions_to_print].
    #[arg(long)]
    pub num_completions_to_print: Option<usize>,
}

defaults_from_clap!(OnPolicyArgs);

impl OnPolicyArgs {
    /// `method`'s recipe, with the clip range of CISPO's surrogate when `--loss-type cispo`
    /// switches to it, and GRPO's when another loss type switches away from it: CISPO's cap of
    /// the weight at `[0, 5]` is no PPO clip, and PPO's `[0.8, 1.2]` would be a tight CISPO cap.
    /// `--cliprange` and `--epsilon-high` still apply on top.
    fn preset(&self, method: Method) -> PpoConfig {
        let mut c = method.preset();
        let from = match (self.loss_type, c.policy_objective) {
            (Some(LossType::Cispo), o) if o != PolicyObjective::Cispo => Some(PpoConfig::cispo()),
            (Some(t), PolicyObjective::Cispo) if t != LossType::Cispo => Some(PpoConfig::grpo()),
            _ => None,
        };
        if let Some(other) = from {
            c.clip_eps = other.clip_eps;
            c.clip_eps_high = other.clip_eps_high;
        }
        c
    }

    /// `--num-mini-batches` from TRL's `--steps-per-generation`, when only that is given: TRL's
    /// steps per generation count micro-batches, so a rollout's optimizer steps are those over
    /// the accumulation (`recipe`'s unless given; `refuse_mixes` refuses what does not divide).
    fn minibatches_from_steps_per_generation(&mut self, recipe: &PpoConfig) {
        let accumulation = self
            .gradient_accumulation_steps
            .unwrap_or(recipe.grad_accum)
            .max(1);
        if let Some(steps) = self.steps_per_generation
            && self.num_mini_batches.is_none()
            && steps.is_multiple_of(accumulation)
        {
            self.num_mini_batches = Some(steps / accumulation);
        }
    }

    /// These options with every unset one taken from `method`'s recipe (what `--print-config`
    /// shows and the run directory records). `max_prompt_length` stays unset: it defaults to the
    /// longest prompt of the data.
    pub fn completed(mut self, method: Method) -> Self {
        let c = self.preset(method);
        self.minibatches_from_steps_per_generation(&c);
        macro_rules! fill {
            ($($opt:ident <- $value:expr),* $(,)?) => {$(
                self.$opt.get_or_insert($value);
            )*};
        }
        fill!(
            iterations <- c.iterations,
            samples_per_prompt <- c.samples_per_prompt,
            prompts_per_batch <- c.prompts_per_batch,
            max_completion_length <- c.response_length,
            temperature <- c.temperature,
            beta <- c.kl.value(),
            kl_estimator <- Estimator::of(c.kl_estimator),
            kl_in_reward <- c.kl_in_reward,
            use_bias_correction_kl <- c.kl_bias_correction,
            gamma <- c.gamma,
            lam <- c.lam,
            whiten_rewards <- c.whiten_rewards,
            whiten_advantages <- c.whiten_advantages,
            normalize_advantages <- c.normalize_advantages,
            num_ppo_epochs <- c.ppo_epochs,
            num_mini_batches <- c.num_minibatches,
            gradient_accumulation_steps <- c.grad_accum,
            cliprange <- c.clip_eps,
            cliprange_value <- c.value_clip,
            vf_coef <- c.vf_coef,
            learning_rate <- c.optimizer.lr,
            adam_beta1 <- c.optimizer.beta1,
            adam_beta2 <- c.optimizer.beta2,
            adam_epsilon <- c.optimizer.eps,
            weight_decay <- c.optimizer.weight_decay,
            max_grad_norm <- c.optimizer.max_grad_norm.unwrap_or(0.0),
            anneal_lr <- c.anneal_lr,
            ptx_coef <- c.ptx_coef,
            ptx_batch_size <- c.ptx_batch_size,
            score_baseline <- c.score_baseline,
            disable_dropout <- c.disable_dropout,
            value_from_reward_model <- c.value_from_reward_model,
            mask_truncated_completions <- c.mask_truncated_completions,
        );
        match (self.missing_eos_penalty, c.missing_eos_penalty) {
            (None, Some(p)) if !self.no_missing_eos_penalty => self.missing_eos_penalty = Some(p),
            (None, None) => self.no_missing_eos_penalty = true,
            _ => {}
        }
        self.length_bucket_width = self.length_bucket_width.or(c.length_bucket_width);
        self.scale_rewards = self.scale_rewards.or(ScaleRewards::of(c.advantage));
        self.complete_controls(&c);
        fill!(
            multi_objective_aggregation <- Aggregation::of(c.multi_objective_aggregation),
            loss_type <- LossType::of(c.policy_objective, c.loss_aggregation),
            importance_sampling_level <- if c.policy_objective == PolicyObjective::Gspo {
                SamplingLevel::Sequence
            } else {
                SamplingLevel::Token
            },
            dynamic_sampling <- c.dynamic_sampling.unwrap_or(0),
            overlong_penalty <- c.overlong_penalty,
            rollout_is_cap <- c.rollout_is_cap.unwrap_or(0.0),
        );
        if self.epsilon_high.is_none() {
            self.epsilon_high = c.clip_eps_high;
        }
        // DAPO's buffer is a fifth of the length limit, whatever limit was asked for
        let buffer = match (method, c.overlong_buffer) {
            (Method::Dapo, Some(_)) => self.max_completion_length.map(|l| (l / 5).max(1)),
            (_, b) => b,
        };
        fill!(overlong_buffer <- buffer.unwrap_or(0));
        self
    }

    /// [`Self::completed`]'s part for the synced reference, the adaptive entropy control and the
    /// settings of SAPO's and VESPO's surrogates.
    fn complete_controls(&mut self, c: &PpoConfig) {
        let (t, v) = (c.sapo_temperatures, c.vespo_shape);
        self.sapo_temperature_pos.get_or_insert(t.positive);
        self.sapo_temperature_neg.get_or_insert(t.negative);
        self.vespo_k_pos.get_or_insert(v.k_pos);
        self.vespo_lambda_pos.get_or_insert(v.lambda_pos);
        self.vespo_k_neg.get_or_insert(v.k_neg);
        self.vespo_lambda_neg.get_or_insert(v.lambda_neg);
        let sync = c.sync_ref.unwrap_or_default();
        self.sync_ref_model.get_or_insert(c.sync_ref.is_some());
        self.ref_model_mixup_alpha.get_or_insert(sync.alpha);
        self.ref_model_sync_steps.get_or_insert(sync.steps);
        let adaptive = c.adaptive_entropy.unwrap_or_default();
        self.use_adaptive_entropy
            .get_or_insert(c.adaptive_entropy.is_some());
        self.entropy_target.get_or_insert(adaptive.target);
        self.entropy_coef_delta.get_or_insert(adaptive.delta);
        self.entropy_coef_min.get_or_insert(adaptive.min);
        self.entropy_coef_max.get_or_insert(adaptive.max);
    }

    /// The method's recipe with every option given here applied; `query_length` is the longest
    /// prompt's token count unless `max_prompt_length` is given.
    // One piece, over 80 lines: a table of overrides on the method's preset, then rules whose
    // order matters: `loss_type` sets the objective that `importance_sampling_level` then reads.
    pub fn config(&self, method: Method, longest_prompt: usize) -> PpoConfig {
        let mut c = self.preset(method);
        macro_rules! set {
            ($($field:ident <- $opt:expr),* $(,)?) => {$(
                if let Some(v) = $opt {
                    c.$field = v;
                }
            )*};
        }
        set!(
            iterations <- self.iterations,
            samples_per_prompt <- self.samples_per_prompt,
            prompts_per_batch <- self.prompts_per_batch,
            response_length <- self.max_completion_length,
            temperature <- self.temperature,
            gamma <- self.gamma,
            lam <- self.lam,
            whiten_rewards <- self.whiten_rewards,
            whiten_advantages <- self.whiten_advantages,
            normalize_advantages <- self.normalize_advantages,
            ppo_epochs <- self.num_ppo_epochs,
            num_minibatches <- self.num_mini_batches,
            grad_accum <- self.gradient_accumulation_steps,
            clip_eps <- self.cliprange,
            value_clip <- self.cliprange_value,
            vf_coef <- self.vf_coef,
            anneal_lr <- self.anneal_lr,
            ptx_coef <- self.ptx_coef,
            ptx_batch_size <- self.ptx_batch_size,
            score_baseline <- self.score_baseline,
            disable_dropout <- self.disable_dropout,
            value_from_reward_model <- self.value_from_reward_model,
            kl_in_reward <- self.kl_in_reward,
            kl_bias_correction <- self.use_bias_correction_kl,
            mask_truncated_completions <- self.mask_truncated_completions,
            delta <- self.delta.map(Some),
            off_policy_mask_threshold <- self.off_policy_mask_threshold.map(Some),
            top_entropy_quantile <- self.top_entropy_quantile,
            entropy_coef <- self.entropy_coef,
        );
        c.seed = self.seed;
        c.query_length = self
            .max_prompt_length
            .unwrap_or_else(|| longest_prompt.clamp(1, 512));
        if self.no_missing_eos_penalty {
            c.missing_eos_penalty = None;
        } else if let Some(p) = self.missing_eos_penalty {
            c.missing_eos_penalty = Some(p);
        }
        if let Some(w) = self.length_bucket_width {
            c.length_bucket_width = Some(w);
        }
        if let Some([lo, hi]) = self.reward_clip_range.as_deref() {
            c.reward_clip_range = Some((*lo, *hi));
        }
        if self.lr_scheduler_type.is_some()
            || self.warmup_steps.is_some()
            || self.warmup_ratio.is_some()
        {
            c.lr_schedule = Some(SchedulePlan {
                shape: self.lr_scheduler_type.unwrap_or(Scheduler::Linear).shape(),
                warmup_steps: self.warmup_steps.unwrap_or(0),
                warmup_ratio: self.warmup_ratio.map_or(0.0, WarmupRatio::get),
            });
        }
        let f = &self.filters;
        c.top_k = f.top_k.or(c.top_k);
        c.top_p = f.top_p.or(c.top_p);
        c.min_p = f.min_p.or(c.min_p);
        c.repetition_penalty = f.repetition_penalty.or(c.repetition_penalty);
        if let Some(e) = self.epsilon_high {
            c.clip_eps_high = Some(e);
        }
        if let Some(t) = self.loss_type {
            c.loss_aggregation = match t {
                LossType::Grpo | LossType::Sapo => LossAggregation::Grpo,
                LossType::Dapo | LossType::Cispo | LossType::Vespo => LossAggregation::Dapo,
                LossType::Bnpo => LossAggregation::Bnpo,
                LossType::DrGrpo => LossAggregation::DrGrpo,
                LossType::Luspo => LossAggregation::Luspo,
            };
            c.policy_objective = match (t, c.policy_objective) {
                (LossType::Cispo, _) => PolicyObjective::Cispo,
                (LossType::Sapo, _) => PolicyObjective::Sapo,
                (LossType::Vespo, _) => PolicyObjective::Vespo,
                (_, PolicyObjective::Cispo | PolicyObjective::Sapo | PolicyObjective::Vespo) => {
                    PolicyObjective::Ppo
                }
                (_, o) => o,
            };
        }
        c.sapo_temperatures.positive = self
            .sapo_temperature_pos
            .unwrap_or(c.sapo_temperatures.positive);
        c.sapo_temperatures.negative = self
            .sapo_temperature_neg
            .unwrap_or(c.sapo_temperatures.negative);
        let v = &mut c.vespo_shape;
        v.k_pos = self.vespo_k_pos.unwrap_or(v.k_pos);
        v.lambda_pos = self.vespo_lambda_pos.unwrap_or(v.lambda_pos);
        v.k_neg = self.vespo_k_neg.unwrap_or(v.k_neg);
        v.lambda_neg = self.vespo_lambda_neg.unwrap_or(v.lambda_neg);
        // the token ratio is the only one CISPO, SAPO and VESPO read
        if let Some(level) = self.importance_sampling_level
            && !matches!(
                c.policy_objective,
                PolicyObjective::Cispo | PolicyObjective::Sapo | PolicyObjective::Vespo
            )
        {
            c.policy_objective = match level {
                SamplingLevel::Token => PolicyObjective::Ppo,
                SamplingLevel::Sequence => PolicyObjective::Gspo,
            };
        }
        if let Some(scale) = self.scale_rewards
            && ScaleRewards::of(c.advantage).is_some()
        {
            c.advantage = scale.estimator();
        }
        if let Some(a) = self.multi_objective_aggregation {
            c.multi_objective_aggregation = a.config();
        }
        if let Some(on) = self.sync_ref_model {
            let d = c.sync_ref.unwrap_or_default();
            c.sync_ref = on.then(|| SyncRef {
                alpha: self.ref_model_mixup_alpha.unwrap_or(d.alpha),
                steps: self.ref_model_sync_steps.unwrap_or(d.steps),
            });
        }
        if let Some(on) = self.use_adaptive_entropy {
            let d = c.adaptive_entropy.unwrap_or_default();
            c.adaptive_entropy = on.then(|| AdaptiveEntropy {
                target: self.entropy_target.unwrap_or(d.target),
                delta: self.entropy_coef_delta.unwrap_or(d.delta),
                min: self.entropy_coef_min.unwrap_or(d.min),
                max: self.entropy_coef_max.unwrap_or(d.max),
            });
        }
        if let Some(rounds) = self.dynamic_sampling {
            c.dynamic_sampling = (rounds > 0).then_some(rounds);
        }
        if let Some(buffer) = self.overlong_buffer {
            c.overlong_buffer = (buffer > 0).then_some(buffer);
        }
        if let Some(p) = self.overlong_penalty {
            c.overlong_penalty = p;
        }
        if let Some(cap) = self.rollout_is_cap {
            c.rollout_is_cap = (cap > 0.0).then_some(cap);
        }
        if let Some(e) = self.kl_estimator {
            c.kl_estimator = e.config();
        }
        let beta = self.beta.unwrap_or(c.kl.value());
        c.kl = match self.kl_target {
            Some(target) => KlController::Adaptive {
                value: beta,
                target,
                horizon: self.kl_horizon,
            },
            None => KlController::Fixed { value: beta },
        };
        c.optimizer = OptimizerConfig {
            lr: self.learning_rate.unwrap_or(c.optimizer.lr),
            beta1: self.adam_beta1.unwrap_or(c.optimizer.beta1),
            beta2: self.adam_beta2.unwrap_or(c.optimizer.beta2),
            eps: self.adam_epsilon.unwrap_or(c.optimizer.eps),
            weight_decay: self.weight_decay.unwrap_or(c.optimizer.weight_decay),
            max_grad_norm: match self.max_grad_norm {
                Some(n) if n > 0.0 => Some(n),
                Some(_) => None,
                None => c.optimizer.max_grad_norm,
            },
        };
        c
    }
}

/// The longest prompt's token count (1 without prompts).
fn longest_prompt(tokenizer: &Tokenizer, texts: &[String]) -> Result<usize> {
    Ok(texts
        .iter()
        .map(|p| Ok(tokenizer.encode_start(p)?.len()))
        .collect::<rlhf_core::Result<Vec<_>>>()?
        .into_iter()
        .max()
        .unwrap_or(1))
}

/// PPO-ptx's demonstrations (none when `ptx_coef` is 0), tokenised as SFT tokenises them (a
/// demonstration longer than the query length and four response lengths cut, its prompt to the
/// query length), their completions then cut to four times the response length.
fn ptx_demonstrations(
    args: &OnPolicyArgs,
    cfg: &PpoConfig,
    ckpt: &Checkpoint,
    opts: &ReadOptions,
) -> Result<Vec<(Vec<u32>, Vec<u32>)>> {
    match (&args.ptx_data, cfg.ptx_coef > 0.0) {
        (Some(file), true) => {
            let enc = Encoder {
                tokenizer: &ckpt.tokenizer,
                format: &ckpt.format,
                max_prompt: cfg.query_length,
                max_length: cfg.query_length + cfg.response_length.max(1) * 4,
                chat_reading: ChatReading::TurnEnd,
            };
            let cap = cfg.response_length.max(1) * 4;
            Ok(demonstrations(file, opts, &enc)?
                .into_iter()
                .map(|(prompt, mut completion)| {
                    completion.truncate(cap);
                    (prompt, completion)
                })
                .collect())
        }
        (None, true) => bail!("--ptx-coef > 0 needs --ptx-data FILE"),
        _ => Ok(Vec::new()),
    }
}

/// The critic, when the advantage needs one: `--critic`, else the reward model when `--reward`
/// names exactly one and `value_from_reward_model` asks for it (loaded again, in f32: it
/// trains), else the policy with a fresh value head.
fn critic(
    args: &OnPolicyArgs,
    cfg: &PpoConfig,
    spec: &Spec,
    start: &CausalLm,
    tokenizer: &Tokenizer,
    device: &Device,
) -> Result<Option<ScalarModel>> {
    // the critic reads the policy's token ids
    let from = |dir: &Path| -> Result<ScalarModel> {
        let rm = load::reward_model(dir, device, args.seed)?;
        if !load::reward_tokenizer(dir, &rm.config, tokenizer)?.same_ids(tokenizer) {
            bail!(
                "{}: its tokenizer is not the policy's, and the critic reads the policy's token \
                 ids: start the critic from a model of the policy's tokenizer (--critic DIR), or \
                 from the policy (--value-from-reward-model false)",
                dir.display()
            );
        }
        Ok(rm.to_value_model())
    };
    Ok(if !cfg.advantage.needs_critic() {
        None
    } else if let Some(dir) = &args.critic {
        Some(from(dir)?)
    } else if cfg.value_from_reward_model && spec.models().len() == 1 {
        tracing::info!("critic: the reward model (TL;DR detail 6)");
        Some(from(spec.models()[0])?)
    } else {
        tracing::info!("critic: the policy with a fresh value head");
        Some(load::fresh_scalar(start.clone(), args.seed))
    })
}

/// The policy and its critic, made from the starting model, then the reference, which takes it
/// (see [`load::reference`]).
fn models(
    args: &OnPolicyArgs,
    cfg: &PpoConfig,
    spec: &Spec,
    start: CausalLm,
    config: &TransformerConfig,
    tokenizer: &Tokenizer,
    device: &Device,
) -> Result<(PolicyAndValue, CausalLm)> {
    let critic = critic(args, cfg, spec, &start, tokenizer, device)?;
    let policy = load::policy(start.clone(), config, &args.lora, args.seed)?;
    let reference = load::reference(
        args.ref_model.as_deref(),
        start,
        config,
        args.frozen.frozen_dtype,
        &args.lora,
        device,
    )?;
    Ok((PolicyAndValue::new(policy, critic), reference))
}

/// Checkpoints, metrics and progress in `out`, on the replicas that the models' dropout allows
/// as they will train (off unless --disable-dropout false).
fn run_options_on_replicas(
    args: &OnPolicyArgs,
    out: &Path,
    cfg: &PpoConfig,
    policy: &CausalLm,
    critic: Option<&ScalarModel>,
) -> Result<RunOptions> {
    let dropout = if cfg.disable_dropout {
        0.0
    } else {
        let critic = critic.map_or(0.0, |c| c.backbone.dropout());
        policy.dropout().max(critic)
    };
    Ok(RunOptions {
        replicas: args
            .model
            .replicas(dropout > 0.0 || cfg.top_entropy_quantile < 1.0)?,
        log_completions: args
            .log_completions
            .then(|| args.num_completions_to_print.unwrap_or(usize::MAX)),
        ..run_options(
            out,
            args.save_steps,
            args.save_total_limit,
            args.logging_steps,
        )
    })
}

/// Refuses options that do not mix with `method` or with each other. `args` are completed
/// ([`OnPolicyArgs::completed`]), so `gspo`'s recipe holds the sequence-level ratio.
fn refuse_mixes(method: Method, args: &OnPolicyArgs) -> Result<()> {
    if let Some(range) = &args.reward_clip_range
        && range.len() != 2
    {
        bail!("reward_clip_range is two numbers, MIN and MAX; got {range:?}");
    }
    if let Some(t @ (LossType::Cispo | LossType::Sapo | LossType::Vespo)) = args.loss_type
        && args.importance_sampling_level == Some(SamplingLevel::Sequence)
    {
        bail!(
            "--loss-type {} reads the token ratio: it has no sequence-level one (give \
             --importance-sampling-level token, which `gspo`'s recipe does not hold)",
            t.to_possible_value()
                .map_or_else(String::new, |v| v.get_name().to_owned())
        );
    }
    refuse_steps_per_generation(args)?;
    let recipe = method.preset().advantage;
    if args.scale_rewards.is_some() && ScaleRewards::of(recipe).is_none() {
        bail!(
            "--scale-rewards scales group-normalised advantages (grpo, dapo, gspo, cispo); `{}` \
             uses {recipe:?}",
            method.name()
        );
    }
    Ok(())
}

/// Refuses a `--steps-per-generation` (TRL's count of micro-batches per rollout) of 0, one that
/// `--gradient-accumulation-steps` does not divide, and one that `--num-mini-batches` contradicts.
fn refuse_steps_per_generation(args: &OnPolicyArgs) -> Result<()> {
    let Some(steps) = args.steps_per_generation else {
        return Ok(());
    };
    let accumulation = args.gradient_accumulation_steps.unwrap_or(1).max(1);
    if steps == 0 || !steps.is_multiple_of(accumulation) {
        bail!(
            "--steps-per-generation {steps} counts micro-batches, as TRL's: it must be a multiple \
             (≥ 1) of --gradient-accumulation-steps {accumulation}"
        );
    }
    if let Some(minibatches) = args.num_mini_batches
        && steps != minibatches * accumulation
    {
        bail!(
            "--steps-per-generation {steps} counts micro-batches, as TRL's: it must be \
             --num-mini-batches × --gradient-accumulation-steps ({minibatches} × {accumulation}); \
             give one of --steps-per-generation and --num-mini-batches"
        );
    }
    Ok(())
}

/// Warns when prompts are cut without being asked (the longest has more than 512 tokens and
/// `--max-prompt-length` is not given; TRL cuts none), and, as TRL does, when LUSPO's length
/// scaling reads the token ratio (its paper scales GSPO's sequence-level loss).
fn warn_on(cfg: &PpoConfig, longest: usize, max_prompt_length: Option<usize>) {
    if max_prompt_length.is_none() && longest > cfg.query_length {
        tracing::warn!(
            "the longest prompt has {longest} tokens: prompts keep their last {} (give \
             --max-prompt-length to choose)",
            cfg.query_length
        );
    }
    if cfg.loss_aggregation == LossAggregation::Luspo
        && cfg.policy_objective != PolicyObjective::Gspo
    {
        tracing::warn!(
            "--loss-type luspo scales GSPO's sequence-level loss by length, as its paper runs it; \
             here it sums the token ratio's losses (give --importance-sampling-level sequence, or \
             use `rlhf gspo`)"
        );
    }
}

/// Refuses a reward that `cfg` cannot read: GDPO's normalisation needs a weighted sum.
fn refuse_reward_mix(cfg: &PpoConfig, spec: &Spec) -> Result<()> {
    if cfg.multi_objective_aggregation == MultiObjectiveAggregation::NormalizeThenSum
        && !spec.is_weighted_sum()
    {
        bail!(
            "--multi-objective-aggregation normalize_then_sum normalises each term of a weighted \
             sum of rewards; --reward combines its terms otherwise: use sum(…)"
        );
    }
    Ok(())
}

/// `spec`'s scorer; a verifier reads the reference answers of the training and the held-out
/// prompts' records, keyed by the prompt's text, so a held-out prompt that repeats an earlier
/// one (of either file) with other fields is refused: one record would replace the other.
fn scorer(
    spec: &Spec,
    args: &OnPolicyArgs,
    tokenizer: &Tokenizer,
    [train, held_out]: [&Prompts; 2],
    device: &Device,
) -> Result<Box<dyn Scorer>> {
    let mut seen: std::collections::HashMap<&str, &PromptRecord> = train
        .texts
        .iter()
        .map(String::as_str)
        .zip(&train.records)
        .collect();
    for (i, (text, record)) in held_out.texts.iter().zip(&held_out.records).enumerate() {
        if seen
            .get(text.as_str())
            .is_some_and(|r| r.extra != record.extra)
        {
            bail!(
                "--eval-prompts record {} repeats an earlier prompt with other fields (a reward \
                 keys a prompt's fields, such as a verifier's answer, by its text): {text:?}",
                i + 1
            );
        }
        seen.insert(text, record);
    }
    let scored = Prompts {
        texts: [&train.texts[..], &held_out.texts].concat(),
        records: [&train.records[..], &held_out.records].concat(),
    };
    spec.build(
        tokenizer,
        &scored,
        device,
        (
            args.frozen.frozen_dtype,
            args.input.template.chat_template_kwargs.as_deref(),
        ),
    )
}

/// What the run is about to do, in one line.
fn log_start(method: Method, prompts: usize, cfg: &PpoConfig, reward: &str) {
    tracing::info!(
        "{}: {prompts} prompts, {} per batch × {} samples, {} iterations, queries of {} tokens, \
         {} new tokens at temperature {}, reward {reward}",
        method.name(),
        cfg.prompts_per_batch,
        cfg.samples_per_prompt,
        cfg.iterations,
        cfg.query_length,
        cfg.response_length,
        cfg.temperature,
    );
}

/// The held-out prompts of `--eval-prompts` (none without it); `--eval-steps` or
/// `--num-generations-eval` without them, a file without prompts and 0 samples are refused.
fn held_out_prompts(
    args: &OnPolicyArgs,
    opts: &ReadOptions,
    format: &ChatFormat,
) -> Result<Prompts> {
    if args.num_generations_eval == Some(0) {
        bail!("--num-generations-eval must be ≥ 1");
    }
    match &args.eval_prompts {
        Some(file) => {
            let held_out = prompts(file, opts, format)?;
            if held_out.texts.is_empty() {
                bail!("--eval-prompts {}: no prompts", file.display());
            }
            Ok(held_out)
        }
        None if args.eval_steps.is_some_and(|s| s > 0) || args.num_generations_eval.is_some() => {
            bail!(
                "--eval-steps and --num-generations-eval evaluate on held-out prompts: give them \
                 with --eval-prompts"
            )
        }
        None => Ok(Prompts {
            texts: Vec::new(),
            records: Vec::new(),
        }),
    }
}

/// Trains and writes the policy.
pub fn run(method: Method, args: &OnPolicyArgs, toml: &str) -> Result<()> {
    let (dir, out) = args.model.model_and_out()?;
    let (prompt_file, spec) = prompts_and_reward(
        args.input.prompts.as_deref(),
        args.reward.as_deref(),
        args.reward_weights.as_deref(),
    )?;
    let device = args.model.training_device()?;
    let ckpt = load::checkpoint(dir, &device, args.input.template())?;
    let opts = args.input.read_options();
    let prompts = prompts(prompt_file, &opts, &ckpt.format)?;
    let held_out = held_out_prompts(args, &opts, &ckpt.format)?;
    // the queries hold the longest prompt, held-out ones included, whole
    let all = [&prompts.texts[..], &held_out.texts].concat();
    let longest = longest_prompt(&ckpt.tokenizer, &all)?;
    refuse_mixes(method, args)?;
    let cfg = args.config(method, longest);
    cfg.validate()?;
    warn_on(&cfg, longest, args.max_prompt_length);
    refuse_reward_mix(&cfg, &spec)?;
    let inference = device.clone().without_autodiff();
    let scorer = scorer(
        &spec,
        args,
        &ckpt.tokenizer,
        [&prompts, &held_out],
        &inference,
    )?;
    let demonstrations = ptx_demonstrations(args, &cfg, &ckpt, &opts)?;
    let (models, reference) = models(
        args,
        &cfg,
        &spec,
        ckpt.model,
        &ckpt.config,
        &ckpt.tokenizer,
        &device,
    )?;
    log_start(method, prompts.texts.len(), &cfg, &scorer.name());
    output::claim(out, method.name(), toml)?;
    let eval_set = HeldOut {
        prompts: &held_out.texts,
        samples_per_prompt: args.num_generations_eval.unwrap_or(cfg.samples_per_prompt),
    };
    let reward = (&ckpt.tokenizer, scorer.as_ref());
    let eval = |policy: &CausalLm, reference: &CausalLm| {
        held_out_metrics((policy, reference), reward, &eval_set, &cfg)
    };
    let inputs = PpoInputs {
        reference: &reference,
        scorer: scorer.as_ref(),
        tokenizer: &ckpt.tokenizer,
        prompts: &prompts.texts,
        demonstrations: &demonstrations,
        eval: (!held_out.texts.is_empty()).then_some(&eval as _),
        eval_every: args.eval_steps.unwrap_or(0),
        eval_first: false,
    };
    let run = run_options_on_replicas(args, out, &cfg, &models.policy, models.value.as_ref())?;
    let (models, report) = train_ppo(models, &inputs, &cfg, &run, &device)
        .with_context(|| format!("rlhf {}", method.name()))?;
    output::save_causal(
        out,
        &models.policy,
        &ckpt.config,
        &ckpt.tokenizer,
        dir,
        &args.lora,
    )?;
    tracing::info!(
        "{}: {} iterations ({} this run); last: scores {:.4}, KL {:.4}, length {:.1}",
        method.name(),
        report.iterations,
        report.iterations_this_run,
        last_metric(&report.last, names::OBJECTIVE_SCORES),
        last_metric(&report.last, names::OBJECTIVE_KL),
        last_metric(&report.last, names::COMPLETIONS_MEAN_LENGTH)
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
        args: OnPolicyArgs,
    }

    fn config(method: Method, flags: &[&str]) -> PpoConfig {
        let w =
            Wrapped::try_parse_from(std::iter::once("rlhf").chain(flags.iter().copied())).unwrap();
        w.args.completed(method).config(method, 8)
    }

    #[test]
    fn a_loss_type_that_switches_the_surrogate_brings_its_clip_range() {
        let c = config(Method::Grpo, &["--loss-type", "cispo"]);
        assert_eq!(
            (c.policy_objective, c.clip_eps, c.clip_eps_high),
            (PolicyObjective::Cispo, 1.0, Some(4.0))
        );
        let c = config(Method::Cispo, &["--loss-type", "dapo"]);
        assert_eq!(
            (c.policy_objective, c.clip_eps, c.clip_eps_high),
            (PolicyObjective::Ppo, 0.2, None)
        );
        let c = config(
            Method::Grpo,
            &["--loss-type", "cispo", "--cliprange", "0.5"],
        );
        assert_eq!((c.clip_eps, c.clip_eps_high), (0.5, Some(4.0)));
        let c = config(Method::Dapo, &["--max-completion-length", "100"]);
        assert_eq!(c.overlong_buffer, Some(20));
    }

    /// `--lr-scheduler-type`, `--warmup-steps` and `--warmup-ratio` give a schedule by
    /// transformers' names (linear when only a warm-up is given), which `anneal_lr` then does not
    /// decide; without them the recipe's `anneal_lr` does.
    #[test]
    fn a_schedule_by_transformers_names_replaces_anneal_lr() {
        use rlhf_core::train::ScheduleShape;
        assert_eq!(config(Method::Grpo, &[]).lr_schedule, None);
        let c = config(
            Method::Grpo,
            &["--lr-scheduler-type", "cosine", "--warmup-ratio", "0.1"],
        );
        assert_eq!(
            c.lr_schedule,
            Some(SchedulePlan {
                shape: ScheduleShape::Cosine,
                warmup_steps: 0,
                warmup_ratio: 0.1
            })
        );
        let c = config(Method::Ppo, &["--warmup-steps", "3"]);
        assert_eq!(
            c.lr_schedule.map(|p| (p.shape, p.warmup_steps)),
            Some((ScheduleShape::Linear, 3))
        );
        for bad in ["2", "-0.1", "NaN"] {
            let flag = format!("--warmup-ratio={bad}");
            let err = match Wrapped::try_parse_from(["rlhf", flag.as_str()]) {
                Ok(_) => panic!("--warmup-ratio {bad} was taken"),
                Err(e) => e.to_string(),
            };
            assert!(err.contains("in [0, 1]"), "{bad}: {err}");
        }
    }

    /// TRL's `--num_iterations` is the epochs over a rollout, and its `--steps_per_generation`
    /// the micro-batches of one: the minibatches (optimizer steps) are those over the
    /// accumulation. A count the accumulation does not divide, or one that disagrees with
    /// `--num-mini-batches`, is refused.
    #[test]
    fn trls_grpo_names_reach_the_epochs_and_minibatches() {
        let parse = |flags: &[&str]| {
            let all = std::iter::once("rlhf").chain(flags.iter().copied());
            Wrapped::try_parse_from(all)
                .unwrap()
                .args
                .completed(Method::Grpo)
        };
        for (flags, epochs, minibatches) in [
            (
                &["--num-iterations", "3", "--steps-per-generation", "4"][..],
                3,
                4,
            ),
            (
                &[
                    "--steps-per-generation",
                    "4",
                    "--gradient-accumulation-steps",
                    "2",
                ],
                1,
                2,
            ),
            (
                &[
                    "--steps-per-generation",
                    "2",
                    "--gradient-accumulation-steps",
                    "2",
                ],
                1,
                1,
            ),
        ] {
            let args = parse(flags);
            refuse_mixes(Method::Grpo, &args).unwrap();
            let c = args.config(Method::Grpo, 8);
            assert_eq!(
                (c.ppo_epochs, c.num_minibatches),
                (epochs, minibatches),
                "{flags:?}"
            );
        }
        let spg = "--steps-per-generation";
        for (flags, says) in [
            (
                &[spg, "3", "--gradient-accumulation-steps", "2"][..],
                "a multiple (≥ 1) of --gradient-accumulation-steps 2",
            ),
            (&[spg, "0"], "a multiple (≥ 1)"),
            (&[spg, "4", "--num-mini-batches", "2"], "give one of"),
        ] {
            let err = refuse_mixes(Method::Grpo, &parse(flags)).unwrap_err();
            assert!(err.to_string().contains(says), "{flags:?}: {err}");
        }
    }

    /// `--reward-clip-range MIN MAX` takes two numbers, negative ones too; a config file's list
    /// of another length is refused.
    #[test]
    fn the_reward_clip_range_takes_a_min_and_a_max() {
        let c = config(Method::Rloo, &["--reward-clip-range", "-1.5", "2"]);
        assert_eq!(c.reward_clip_range, Some((-1.5, 2.0)));
        assert_eq!(config(Method::Rloo, &[]).reward_clip_range, None);
        assert!(Wrapped::try_parse_from(["rlhf", "--reward-clip-range", "1"]).is_err());
        let mut args = Wrapped::try_parse_from(["rlhf"]).unwrap().args;
        args.reward_clip_range = Some(vec![1.0]);
        let err = refuse_mixes(Method::Rloo, &args).unwrap_err().to_string();
        assert!(err.contains("two numbers"), "{err}");
    }

    /// `--loss-type luspo` is the per-response token sum; with `gspo`'s sequence ratio it is
    /// `PpoConfig::luspo()`, and with GRPO's token ratio it keeps that ratio.
    #[test]
    fn the_luspo_loss_type_scales_gspo_by_length() {
        let c = config(Method::Gspo, &["--loss-type", "luspo"]);
        let want = PpoConfig::luspo();
        assert_eq!(
            (
                c.policy_objective,
                c.loss_aggregation,
                c.clip_eps,
                c.clip_eps_high
            ),
            (
                want.policy_objective,
                want.loss_aggregation,
                want.clip_eps,
                want.clip_eps_high
            )
        );
        let c = config(Method::Grpo, &["--loss-type", "luspo"]);
        assert_eq!(
            (c.policy_objective, c.loss_aggregation),
            (PolicyObjective::Ppo, LossAggregation::Luspo)
        );
    }

    /// `--loss-type sapo` is SAPO's gate with the per-response mean, at TRL's temperatures unless
    /// given, and `--loss-type vespo` VESPO's weight with the token mean, at TRL's shape unless
    /// given; the token ratio is all they read.
    #[test]
    fn the_sapo_and_vespo_loss_types_select_their_surrogates() {
        let c = config(Method::Grpo, &["--loss-type", "sapo"]);
        assert_eq!(
            (c.policy_objective, c.loss_aggregation, c.sapo_temperatures),
            (
                PolicyObjective::Sapo,
                LossAggregation::Grpo,
                rlhf_core::SapoTemperatures::default()
            )
        );
        let c = config(
            Method::Gspo,
            &[
                "--loss-type",
                "sapo",
                "--importance-sampling-level",
                "token",
                "--sapo-temperature-neg",
                "2",
            ],
        );
        assert_eq!(c.policy_objective, PolicyObjective::Sapo);
        assert_eq!(c.sapo_temperatures.negative, 2.0);
        let c = config(
            Method::Cispo,
            &["--loss-type", "vespo", "--vespo-lambda-neg", "5"],
        );
        assert_eq!(
            (c.policy_objective, c.loss_aggregation),
            (PolicyObjective::Vespo, LossAggregation::Dapo)
        );
        assert_eq!(
            c.vespo_shape,
            rlhf_core::VespoShape {
                lambda_neg: 5.0,
                ..rlhf_core::VespoShape::default()
            }
        );
        let w = Wrapped::try_parse_from([
            "rlhf",
            "--loss-type",
            "sapo",
            "--importance-sampling-level",
            "sequence",
        ])
        .unwrap();
        let err = refuse_mixes(Method::Grpo, &w.args).unwrap_err().to_string();
        assert!(
            err.contains("--loss-type sapo reads the token ratio"),
            "{err}"
        );
        // `gspo`'s recipe is the sequence-level ratio: refused unless the token level is given
        for (flags, refused) in [
            (&["--loss-type", "vespo"][..], true),
            (
                &[
                    "--loss-type",
                    "vespo",
                    "--importance-sampling-level",
                    "token",
                ],
                false,
            ),
        ] {
            let w = Wrapped::try_parse_from(std::iter::once("rlhf").chain(flags.iter().copied()))
                .unwrap();
            let args = w.args.completed(Method::Gspo);
            assert_eq!(
                refuse_mixes(Method::Gspo, &args).is_err(),
                refused,
                "{flags:?}"
            );
        }
    }

    /// `--scale-rewards` picks the group-normalised estimator of each of TRL's settings, bare
    /// booleans included (`true` is GRPO's group scaling, `false` Dr. GRPO's none).
    #[test]
    fn scale_rewards_picks_the_group_estimator() {
        for (value, want) in [
            ("group", AdvantageEstimator::Grpo),
            ("true", AdvantageEstimator::Grpo),
            ("batch", AdvantageEstimator::GrpoBatch),
            ("none", AdvantageEstimator::DrGrpo),
            ("false", AdvantageEstimator::DrGrpo),
        ] {
            for method in [Method::Grpo, Method::Dapo, Method::Gspo] {
                let c = config(method, &["--scale-rewards", value]);
                assert_eq!(
                    c.advantage,
                    want,
                    "{} --scale-rewards {value}",
                    method.name()
                );
            }
        }
        assert_eq!(
            config(Method::Grpo, &[]).advantage,
            AdvantageEstimator::Grpo
        );
    }

    /// `--use-adaptive-entropy` turns the controller on with TRL's defaults, each of its four
    /// numbers has a flag, and without it they change nothing.
    #[test]
    fn adaptive_entropy_flags_set_the_controller() {
        assert_eq!(config(Method::Grpo, &[]).adaptive_entropy, None);
        assert_eq!(
            config(Method::Grpo, &["--entropy-target", "3"]).adaptive_entropy,
            None
        );
        assert_eq!(
            config(Method::Grpo, &["--use-adaptive-entropy"]).adaptive_entropy,
            Some(AdaptiveEntropy::default())
        );
        let c = config(
            Method::Ppo,
            &[
                "--use-adaptive-entropy",
                "--entropy-coef",
                "0.1",
                "--entropy-target",
                "3",
                "--entropy-coef-delta",
                "0.01",
                "--entropy-coef-min",
                "0.05",
                "--entropy-coef-max",
                "0.5",
            ],
        );
        assert_eq!(c.entropy_coef, 0.1);
        assert_eq!(
            c.adaptive_entropy,
            Some(AdaptiveEntropy {
                target: 3.0,
                delta: 0.01,
                min: 0.05,
                max: 0.5,
            })
        );
        assert!(c.validate().is_ok());
    }
}
