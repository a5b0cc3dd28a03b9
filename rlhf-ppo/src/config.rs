//! The PPO configuration: every TL;DR implementation detail as a named field, with the paper's
//! default ("The N+ Implementation Details of RLHF with PPO: A Case Study on TL;DR
//! Summarization", Huang et al. 2024). Numbers in brackets refer to the list in
//! `docs/algorithms.md`, "The TL;DR implementation details".

use rlhf_core::train::{OptimizerConfig, SchedulePlan, SyncRef};
use rlhf_core::{
    AdaptiveEntropy, EntropyController, Error, GroupEstimator, KlController, KlEstimator,
    LossAggregation, PolicyLossConfig, PolicyObjective, Result, SapoTemperatures, VespoShape,
};
use rlhf_models::SamplingConfig;
use serde::{Deserialize, Serialize};

/// How advantages are estimated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AdvantageEstimator {
    /// GAE with a learned critic (PPO proper).
    #[default]
    Gae,
    /// RLOO: leave-one-out baseline over the `n` samples of a prompt.
    Rloo,
    /// GRPO: group-normalised scores.
    Grpo,
    /// Dr. GRPO: group-centred scores.
    DrGrpo,
    /// GRPO with the batch's standard deviation: group-centred scores over the batch's spread
    /// (TRL's `scale_rewards = "batch"`).
    GrpoBatch,
    /// REINFORCE++: whitened discounted returns of the per-token rewards, no critic.
    ReinforcePp,
}

impl AdvantageEstimator {
    /// Whether the estimator trains a value model.
    pub fn needs_critic(self) -> bool {
        self == AdvantageEstimator::Gae
    }

    /// The group estimator behind RLOO, GRPO and Dr.GRPO.
    pub fn group(self) -> Option<GroupEstimator> {
        match self {
            AdvantageEstimator::Rloo => Some(GroupEstimator::Rloo),
            AdvantageEstimator::Grpo => Some(GroupEstimator::Grpo),
            AdvantageEstimator::DrGrpo => Some(GroupEstimator::DrGrpo),
            AdvantageEstimator::GrpoBatch => Some(GroupEstimator::GrpoBatch),
            _ => None,
        }
    }
}

/// How the scores of several reward functions become one advantage per response (TRL's
/// `multi_objective_aggregation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MultiObjectiveAggregation {
    /// The weighted sum of the functions' scores is the score, which the advantage estimator
    /// then normalises.
    #[default]
    SumThenNormalize,
    /// GDPO (Liu et al. 2026): each function's scores normalised within their group, summed
    /// with the weights, then scaled by the batch's spread
    /// ([`rlhf_core::decoupled_group_rewards`]). GRPO's family only; it replaces the
    /// estimator's own scaling, as TRL ignores `scale_rewards` then.
    NormalizeThenSum,
}

/// On-policy trainer settings. `Default` is the TL;DR reproduction's recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PpoConfig {
    /// Rollout-and-update iterations.
    pub iterations: usize,
    /// Seed of every random choice (prompt order, sampling, minibatch order).
    pub seed: u64,
    /// Responses sampled per prompt (`n`), the seed paper's "samples per prompt" axis.
    pub samples_per_prompt: usize,
    /// Prompts per rollout batch.
    pub prompts_per_batch: usize,
    /// [2] Queries are left-padded to this many tokens (longer ones keep their end). The scorer
    /// reads the whole prompt text (a verifier looks its answer up by it), where the
    /// reproduction's reward model reads the cut query: the two differ only for longer prompts.
    pub query_length: usize,
    /// [3] At most this many new tokens are generated; a row stops at its first EOS (the TL;DR
    /// reproduction: 53).
    pub response_length: usize,
    /// [3] Sampling temperature, reapplied when log-probs are recomputed for training.
    pub temperature: f32,
    /// Sampling keeps only the `k` most likely tokens (`None` or 0: all), TRL's `top_k`.
    pub top_k: Option<usize>,
    /// Sampling keeps only the smallest set of most likely tokens whose probability reaches `p`
    /// (`None` or 1: all), TRL's `top_p`. With it, `top_k` or `min_p`, the trainer's log-probs
    /// are still of the whole tempered distribution, as TRL's are, so the rollout is slightly
    /// off-policy: `sampling/sampling_logp_difference/mean` is then the mean `−log Z` of the mass
    /// `Z` each step kept (`sampling/kl`'s k3 estimate understates it).
    pub top_p: Option<f32>,
    /// Sampling keeps only the tokens at least `min_p` times as likely as the most likely one
    /// (`None` or 0: all), TRL's `min_p`.
    pub min_p: Option<f32>,
    /// Sampling penalises the tokens of the prompt and of the response so far (transformers'
    /// `repetition_penalty`; `None` or 1: off), TRL's `repetition_penalty`. The trainer's
    /// log-probs are of the unpenalised distribution, as TRL's are.
    pub repetition_penalty: Option<f32>,
    /// [4] Score given instead of the RM's to a response with no EOS (`None` keeps the RM score).
    pub missing_eos_penalty: Option<f32>,
    /// Each response's score (the scorer's plus DAPO's overlong punishment, which TRL counts as a
    /// reward function) held in `[min, max]`, before any baseline and the KL; the missing-EOS
    /// penalty still replaces it (TRL RLOO's `reward_clip_range`, here for every estimator;
    /// `None`: off).
    pub reward_clip_range: Option<(f32, f32)>,
    /// Leave a response cut off at the length limit (no EOS) out of the loss: its tokens are
    /// masked in the update, its KL leaves the reward and its tokens the whitening of advantages,
    /// while its score still enters the rewards and its group's baseline (TRL's
    /// `mask_truncated_completions`; DAPO's overlong filtering).
    pub mask_truncated_completions: bool,
    /// [1] Turn dropout off in policy, reference, value and reward models.
    pub disable_dropout: bool,
    /// [6] Initialise the value model from the reward model (otherwise from the policy). Read by
    /// whoever builds the critic (`rlhf-bench`'s pipeline does); `train_ppo` trains the critic
    /// it is given.
    pub value_from_reward_model: bool,
    /// [7] The KL coefficient β: fixed 0.05, or the adaptive controller.
    pub kl: KlController,
    /// Which per-token KL estimator enters the reward or the loss (k1 in the TL;DR
    /// reproduction's reward; a loss term needs k3 or k2, see [`Self::validate`]).
    pub kl_estimator: KlEstimator,
    /// Put the KL into the reward (`true`, PPO/REINFORCE++) or into the loss (GRPO; see
    /// [`Self::grpo`]).
    pub kl_in_reward: bool,
    /// DeepSeek-V3.2's bias correction of the KL loss term (TRL's `use_bias_correction_kl`, on
    /// in its GRPO): each token's estimate is weighted by the importance ratio `π/π_old` (GSPO's
    /// sequence ratio at the sequence level), with its gradient, so that at the token level k3's
    /// gradient is the unbiased reverse-KL gradient (`rlhf_core::bias_corrected_kl`), and k1's
    /// too. With the KL in the reward there is no such term, and it changes nothing.
    #[serde(default)]
    pub kl_bias_correction: bool,
    /// The reference follows the policy (TRL's `sync_ref_model`, TR-DPO's update of the KL
    /// term's reference): every `τ` optimizer steps it moves to `α·π_θ + (1 − α)·π_ref`. `τ`
    /// must be a multiple of an iteration's optimizer steps (`ppo_epochs × num_minibatches`),
    /// so that it moves between rollouts, which read the reference's log-probs once. `None`:
    /// frozen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync_ref: Option<SyncRef>,
    /// How advantages are estimated.
    pub advantage: AdvantageEstimator,
    /// How several reward functions' scores are combined: summed, then normalised by
    /// `advantage` (the default), or GDPO's per-function normalisation first.
    pub multi_objective_aggregation: MultiObjectiveAggregation,
    /// [8] Discount γ.
    pub gamma: f32,
    /// [8] GAE λ.
    pub lam: f32,
    /// [8] Whiten GAE advantages (mean shift and scale) over the batch. (REINFORCE++ always
    /// whitens, by definition; RLOO, GRPO and Dr.GRPO are centred per prompt instead, and RLOO's
    /// are normalised over the batch with [`Self::normalize_advantages`].)
    pub whiten_advantages: bool,
    /// RLOO's leave-one-out advantages normalised over the batch, `(A − mean)/(std + 1e−4)`
    /// (TRL RLOO's `normalize_advantages`, off by default as there; `rlhf_core::batch_normalized`).
    /// RLOO only.
    pub normalize_advantages: bool,
    /// [8] Whiten per-token rewards, keeping their mean (`shift_mean = false`); off in the TL;DR
    /// reproduction.
    pub whiten_rewards: bool,
    /// [9] PPO epochs over each rollout batch.
    pub ppo_epochs: usize,
    /// [9] Minibatches per epoch.
    pub num_minibatches: usize,
    /// Micro-batches per minibatch step (TRL's `gradient_accumulation_steps`): a minibatch's loss
    /// and backward pass run on this many equal parts in turn, and their gradients are summed
    /// into its one optimizer step, so the step holds one part's activations at a time. The step
    /// is the whole minibatch's (each part's loss weighted by its share of each mean, as
    /// data-parallel replicas' shards are), except under `bnpo`, whose token mean is each part's
    /// own, averaged over the parts, as in TRL.
    pub grad_accum: usize,
    /// [9] Policy clip ε (`ε_low` of an asymmetric clip).
    pub clip_eps: f32,
    /// `ε_high` of DAPO's asymmetric "clip-higher" (`None`: `clip_eps`, PPO's symmetric clip).
    /// For CISPO, the importance weight is capped at `1 + ε_high`.
    pub clip_eps_high: Option<f32>,
    /// INTELLECT-2's two-sided clip δ: the unclipped term's ratio is capped at δ, bounding the
    /// loss of a token with a negative advantage whose ratio grew (`None`: PPO's clip). Must
    /// exceed `1 + ε_high`; not for CISPO, which has no unclipped term. TRL's `delta`.
    pub delta: Option<f32>,
    /// The share `ρ` of the real tokens of each minibatch that carry the policy gradient: those
    /// whose entropy is at least the `1 − ρ` quantile ("Beyond the 80/20 Rule"; TRL's
    /// `top_entropy_quantile`, `rlhf_core::high_entropy_mask`). The KL term and the critic still
    /// read every token; 1 keeps all, 0 the most uncertain token (and its ties).
    pub top_entropy_quantile: f32,
    /// The entropy bonus `c`: the loss gains `−c·H̄`, with `H̄` the mean entropy of the policy
    /// (at the sampling temperature, with its gradient) over the tokens that carry the policy
    /// gradient (TRL's `entropy_coef`; PPO's `c₂`; 0: off). With `adaptive_entropy`, the initial
    /// coefficient.
    pub entropy_coef: f32,
    /// Skywork-OR1's adaptive entropy control (TRL's `use_adaptive_entropy`): after each optimizer
    /// step `c` rises by `δ` when the step's mean entropy was at most the target and falls by `δ`
    /// otherwise, within `[c_min, c_max]`, and a step applies `c` only when the last one's
    /// entropy was at most the target (see `rlhf_core::entropy_controller`). `None`: `c` fixed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adaptive_entropy: Option<AdaptiveEntropy>,
    /// The policy surrogate: `ppo` (the clipped token ratio), `gspo` (the clipped sequence
    /// ratio), `cispo` (clipped, detached importance weights), `sapo` (the soft gate of the
    /// token ratio), `vespo` (detached Gamma weights of the sequence's importance ratio).
    pub policy_objective: PolicyObjective,
    /// SAPO's gate temperatures `τ_pos` and `τ_neg` (TRL's `sapo_temperature_pos` and
    /// `sapo_temperature_neg`). Read by the `sapo` surrogate.
    pub sapo_temperatures: SapoTemperatures,
    /// VESPO's weight shape `k_pos`, `λ_pos`, `k_neg`, `λ_neg` (TRL's `vespo_k_pos`, …). Read by
    /// the `vespo` surrogate.
    pub vespo_shape: VespoShape,
    /// DeepSeek-V3.2's off-policy sequence masking (TRL's `off_policy_mask_threshold`, the
    /// paper's `δ`): where a response's mean log-ratio of the sampler against the policy being
    /// trained exceeds `δ`, its tokens with a negative advantage (all of them, with one advantage
    /// per response) leave the policy loss (see `rlhf_core::off_policy_mask`). `None`: off.
    pub off_policy_mask_threshold: Option<f32>,
    /// How per-token losses are aggregated (TRL's `loss_type`: `grpo`, `dapo`, `bnpo`,
    /// `dr_grpo`, `luspo`; see `rlhf_core::aggregation`). The TL;DR reproduction's token mean is `dapo`.
    pub loss_aggregation: LossAggregation,
    /// DAPO's dynamic sampling: groups whose `n` scores are all equal (no advantage) are dropped
    /// and prompts sampled again until `prompts_per_batch` groups remain, in at most this many
    /// sampling rounds per iteration (verl's `max_num_gen_batches`); a batch still short then is
    /// filled with dropped groups. `None`: off.
    pub dynamic_sampling: Option<usize>,
    /// DAPO's soft overlong punishment: a response longer than `L_max − buffer` tokens
    /// (`L_max` = `response_length`) loses `overlong_penalty·(|y| − (L_max − buffer))/buffer`
    /// of its score, linearly up to `overlong_penalty` at the limit (`None`: off).
    pub overlong_buffer: Option<usize>,
    /// The overlong punishment at the length limit (verl's `penalty_factor`; 1.0 in DAPO).
    pub overlong_penalty: f32,
    /// The truncated importance-sampling correction for a sampler whose numbers differ from the
    /// trainer's: each token's loss is weighted by `min(exp(logπ_old − logπ_sampler), cap)`
    /// (TRL's `vllm_importance_sampling_correction`, `clip_max` 3). `None`: off, as it should be
    /// here, where the sampler and the trainer share their kernels.
    pub rollout_is_cap: Option<f32>,
    /// [9] Value clip ε_v.
    pub value_clip: f32,
    /// [9] Value-loss coefficient `c_v`.
    pub vf_coef: f32,
    /// [10] AdamW (eps 1e−5, one learning rate for SFT, RM and PPO) and global-norm clipping.
    pub optimizer: OptimizerConfig,
    /// Anneal the learning rate linearly to 0 over all updates (the TL;DR reproduction does).
    pub anneal_lr: bool,
    /// The learning-rate schedule over all updates by transformers' names and rules (TRL's
    /// `lr_scheduler_type`, `warmup_steps`, `warmup_ratio`); when set, `anneal_lr` is not read.
    /// `None`: `anneal_lr` decides.
    pub lr_schedule: Option<SchedulePlan>,
    /// PPO-ptx (InstructGPT, ChatGLM-RLHF): coefficient `γ_ptx` of an SFT loss on demonstration
    /// batches added to the policy loss; 0 turns it off.
    pub ptx_coef: f32,
    /// Demonstrations per PPO-ptx batch (one batch per minibatch update).
    pub ptx_batch_size: usize,
    /// Reward variance reduction: subtract from each score the mean score of its prompt's `n`
    /// samples (needs `n ≥ 2`).
    pub score_baseline: bool,
    /// Reward variance reduction: standardise scores within buckets of responses whose lengths
    /// fall in the same `width`-token bucket (`None`: off).
    pub length_bucket_width: Option<usize>,
}

impl Default for PpoConfig {
    fn default() -> Self {
        PpoConfig {
            iterations: 100,
            seed: 0,
            samples_per_prompt: 1,
            prompts_per_batch: 64,
            query_length: 512,
            response_length: 53,
            temperature: 0.7,
            top_k: None,
            top_p: None,
            min_p: None,
            repetition_penalty: None,
            missing_eos_penalty: Some(-1.0),
            reward_clip_range: None,
            mask_truncated_completions: false,
            disable_dropout: true,
            value_from_reward_model: true,
            kl: KlController::Fixed { value: 0.05 },
            kl_estimator: KlEstimator::K1,
            kl_in_reward: true,
            kl_bias_correction: false,
            sync_ref: None,
            advantage: AdvantageEstimator::Gae,
            multi_objective_aggregation: MultiObjectiveAggregation::SumThenNormalize,
            gamma: 1.0,
            lam: 0.95,
            whiten_advantages: true,
            normalize_advantages: false,
            whiten_rewards: false,
            ppo_epochs: 4,
            num_minibatches: 1,
            grad_accum: 1,
            clip_eps: 0.2,
            clip_eps_high: None,
            delta: None,
            top_entropy_quantile: 1.0,
            entropy_coef: 0.0,
            adaptive_entropy: None,
            policy_objective: PolicyObjective::Ppo,
            sapo_temperatures: SapoTemperatures::default(),
            vespo_shape: VespoShape::default(),
            off_policy_mask_threshold: None,
            loss_aggregation: LossAggregation::Dapo,
            dynamic_sampling: None,
            overlong_buffer: None,
            overlong_penalty: 1.0,
            rollout_is_cap: None,
            value_clip: 0.2,
            vf_coef: 0.1,
            optimizer: OptimizerConfig::default(),
            anneal_lr: true,
            lr_schedule: None,
            ptx_coef: 0.0,
            ptx_batch_size: 8,
            score_baseline: false,
            length_bucket_width: None,
        }
    }
}

impl PpoConfig {
    /// How the rollout samples (ending rows at the tokenizer's EOS is the rollout's part:
    /// [`SamplingConfig::ending_as`]).
    pub fn sampling(&self) -> SamplingConfig {
        SamplingConfig {
            max_new_tokens: self.response_length,
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            ..SamplingConfig::default()
        }
    }

    /// GRPO as the GRPO paper (Shao et al. 2024) defines it and TRL's `GRPOTrainer` runs it:
    /// group-normalised advantages `(s_i − mean)/(std + 1e−4)` over `G = 8` samples per prompt
    /// (TRL's `num_generations`), no KL in the reward, the k3 estimator in the loss with
    /// β = 0.04 (the paper's; TRL's `beta` now defaults to 0, which `kl` set to 0 gives) and
    /// DeepSeek-V3.2's bias correction of that term (on in TRL), one policy update per rollout
    /// (`num_iterations = 1`), sampling at temperature 1, no missing-EOS penalty, and no critic.
    /// Everything else is the TL;DR default (among it Adam's ε of 1e−5, where TRL's is 1e−8, and
    /// 53 new tokens); sizes are the caller's.
    pub fn grpo() -> Self {
        PpoConfig {
            advantage: AdvantageEstimator::Grpo,
            samples_per_prompt: 8,
            kl_in_reward: false,
            kl_bias_correction: true,
            kl_estimator: KlEstimator::K3,
            kl: KlController::Fixed { value: 0.04 },
            ppo_epochs: 1,
            temperature: 1.0,
            missing_eos_penalty: None,
            ..PpoConfig::default()
        }
    }

    /// RLOO with the settings of TRL's `RLOOTrainer` (Ahmadian et al. 2024): the leave-one-out
    /// baseline over `G = 2` samples per prompt (TRL's `num_generations`), the k1 KL in the
    /// reward with β = 0.05, one policy update per rollout, sampling at temperature 1, no
    /// missing-EOS penalty, no critic. The surrogate is PPO's clipped token ratio, averaged over
    /// tokens, where TRL clips the ratio of the whole response and averages over responses. With
    /// one update on the whole rollout (`ppo_epochs = 1`, one minibatch) every ratio is 1 and
    /// the two steps differ only in scale (by the mean response length); with more minibatches
    /// the later ones are off-policy, and the two clip differently.
    pub fn rloo() -> Self {
        PpoConfig {
            advantage: AdvantageEstimator::Rloo,
            samples_per_prompt: 2,
            ppo_epochs: 1,
            temperature: 1.0,
            missing_eos_penalty: None,
            ..PpoConfig::default()
        }
    }

    /// REINFORCE++ (Hu 2025; OpenRLHF's `reinforce`): per-token rewards with the k1 KL at
    /// β = 0.01 (OpenRLHF's `init_kl_coef`), discounted returns whitened over the batch, one
    /// sample per prompt, one policy update per rollout, temperature 1, no missing-EOS penalty,
    /// no critic.
    pub fn reinforce_pp() -> Self {
        PpoConfig {
            advantage: AdvantageEstimator::ReinforcePp,
            kl: KlController::Fixed { value: 0.01 },
            ppo_epochs: 1,
            temperature: 1.0,
            missing_eos_penalty: None,
            ..PpoConfig::default()
        }
    }

    /// DAPO (Yu et al. 2025) with its paper's settings: group-normalised advantages over
    /// `G = 16` samples, the asymmetric clip `ε_low = 0.2`, `ε_high = 0.28`, the token-mean
    /// loss, 16 minibatch updates per rollout (the paper's 512 prompts in minibatches of 32, so
    /// the clip binds), dynamic sampling (at most 10 sampling rounds, verl's
    /// `max_num_gen_batches`), the soft overlong punishment over the last fifth of the length
    /// limit (the paper's 4,096 of 20,480 tokens, here `response_length / 5`, at least 1), no KL
    /// term, no missing-EOS penalty (the overlong punishment replaces it), temperature 1, a
    /// constant learning rate.
    pub fn dapo(response_length: usize) -> Self {
        PpoConfig {
            samples_per_prompt: 16,
            num_minibatches: 16,
            anneal_lr: false,
            clip_eps: 0.2,
            clip_eps_high: Some(0.28),
            loss_aggregation: LossAggregation::Dapo,
            dynamic_sampling: Some(10),
            overlong_buffer: Some((response_length / 5).max(1)),
            overlong_penalty: 1.0,
            kl: KlController::Fixed { value: 0.0 },
            response_length,
            ..PpoConfig::grpo()
        }
    }

    /// GSPO (Zheng et al. 2025) with its paper's settings: GRPO's group-normalised advantages,
    /// the sequence-level ratio clipped at `ε_low = 3e−4`, `ε_high = 4e−4`, the per-response mean
    /// (`grpo` aggregation), no KL term. The ratio differs from 1 only off-policy, so the batch is
    /// split into 4 minibatches (TRL's example: `steps_per_generation = 4`).
    pub fn gspo() -> Self {
        PpoConfig {
            policy_objective: PolicyObjective::Gspo,
            clip_eps: 3e-4,
            clip_eps_high: Some(4e-4),
            loss_aggregation: LossAggregation::Grpo,
            num_minibatches: 4,
            kl: KlController::Fixed { value: 0.0 },
            ..PpoConfig::grpo()
        }
    }

    /// LUSPO (Liu et al. 2026) as TRL runs it (`loss_type = "luspo"` with
    /// `importance_sampling_level = "sequence"`): GSPO with each response's loss scaled by its
    /// length (`luspo` aggregation: the token sum per response, then the mean over responses),
    /// so that GSPO's per-response mean no longer favours short responses.
    pub fn luspo() -> Self {
        PpoConfig {
            loss_aggregation: LossAggregation::Luspo,
            ..PpoConfig::gspo()
        }
    }

    /// CISPO (MiniMax-M1, 2025): GRPO's group advantages over `G = 8` samples (TRL's default),
    /// the REINFORCE-style loss with detached importance weights, not bounded below (MiniMax-M1:
    /// `ε_low = 1` here) and capped above at 5 (TRL's recommended `epsilon_high = 5.0` for its
    /// `cispo` loss, an absolute cap, which is `ε_high = 4` here), the token mean, no KL term,
    /// 4 minibatches so that the weights move off 1.
    pub fn cispo() -> Self {
        PpoConfig {
            policy_objective: PolicyObjective::Cispo,
            clip_eps: 1.0,
            clip_eps_high: Some(4.0),
            loss_aggregation: LossAggregation::Dapo,
            num_minibatches: 4,
            kl: KlController::Fixed { value: 0.0 },
            ..PpoConfig::grpo()
        }
    }

    /// SAPO (Gao et al. 2025, Qwen) with its paper's settings as TRL runs them (`loss_type =
    /// "sapo"`): GRPO's group advantages, the soft gate of the token ratio with `τ_pos = 1`,
    /// `τ_neg = 1.05`, the per-response mean (`grpo` aggregation), no KL term; 4 minibatches, so
    /// that the ratios move off 1 and the gate acts (on-policy its gradient is GRPO's).
    pub fn sapo() -> Self {
        PpoConfig {
            policy_objective: PolicyObjective::Sapo,
            sapo_temperatures: SapoTemperatures::default(),
            loss_aggregation: LossAggregation::Grpo,
            num_minibatches: 4,
            kl: KlController::Fixed { value: 0.0 },
            ..PpoConfig::grpo()
        }
    }

    /// VESPO as TRL runs it (`loss_type = "vespo"`): GRPO's group advantages, the detached Gamma
    /// weight of each response's importance ratio with TRL's shape (`k_pos = 2`, `λ_pos = 3`,
    /// `k_neg = 3`, `λ_neg = 2`) on a REINFORCE-style loss, the token mean (`dapo`, TRL's for
    /// `vespo`), no KL term; 4 minibatches, so that the ratios move off 1 and the weight acts
    /// (on-policy its gradient is GRPO's).
    pub fn vespo() -> Self {
        PpoConfig {
            policy_objective: PolicyObjective::Vespo,
            vespo_shape: VespoShape::default(),
            loss_aggregation: LossAggregation::Dapo,
            num_minibatches: 4,
            kl: KlController::Fixed { value: 0.0 },
            ..PpoConfig::grpo()
        }
    }

    /// The policy loss's settings.
    pub fn policy_loss(&self) -> PolicyLossConfig {
        PolicyLossConfig {
            objective: self.policy_objective,
            clip_low: self.clip_eps,
            clip_high: self.clip_eps_high.unwrap_or(self.clip_eps),
            delta: self.delta,
            aggregation: self.loss_aggregation,
            max_len: self.response_length,
            sapo: self.sapo_temperatures,
            vespo: self.vespo_shape,
        }
    }

    /// The group estimator the advantages take: `advantage`'s, or with GDPO's normalisation
    /// the batch-scaled one that ends it (the scores it reads are then the decoupled rewards).
    pub fn group_estimator(&self) -> Option<GroupEstimator> {
        match self.multi_objective_aggregation {
            MultiObjectiveAggregation::SumThenNormalize => self.advantage.group(),
            MultiObjectiveAggregation::NormalizeThenSum => Some(GroupEstimator::GrpoBatch),
        }
    }

    /// Episodes (sampled responses) per rollout batch.
    pub fn batch_size(&self) -> usize {
        self.prompts_per_batch * self.samples_per_prompt
    }

    /// Checks ranges and combinations: group estimators need `n ≥ 2` (Dr.GRPO excepted), the
    /// batch must split into minibatches, the probabilities and coefficients must make sense, the
    /// KL controller must not divide by zero, and a KL loss term must not use k1 (unless the
    /// token-level bias correction weighs it).
    // One piece, over 80 lines: a flat list of refusals, each a condition with its own message
    // (sizes and limits first, then ranges and combinations such as GSPO's estimator or k1 as a
    // loss term); the KL controller and the optimizer are checked by their own `validate`.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(format!("ppo: {m}")));
        if self.samples_per_prompt == 0 || self.prompts_per_batch == 0 {
            return bad("samples_per_prompt and prompts_per_batch must be ≥ 1".into());
        }
        // far beyond any real run; they keep every product of sizes in range (a damaged config
        // once overflowed `batch_size`)
        for (name, value, limit) in [
            ("prompts_per_batch", self.prompts_per_batch, 1usize << 20),
            ("samples_per_prompt", self.samples_per_prompt, 1 << 12),
            ("query_length", self.query_length, 1 << 20),
            ("response_length", self.response_length, 1 << 20),
            ("ppo_epochs", self.ppo_epochs, 1 << 10),
            ("iterations", self.iterations, 1 << 24),
        ] {
            if value > limit {
                return bad(format!("{name} {value} is above the supported {limit}"));
            }
        }
        // with one sample a group's advantage is 0 for every estimator (Dr. GRPO's too, as TRL
        // refuses): only the KL would train
        if self.advantage.group().is_some() && self.samples_per_prompt < 2 {
            return bad(format!("{:?} needs samples_per_prompt ≥ 2", self.advantage));
        }
        if self.num_minibatches == 0 || !self.batch_size().is_multiple_of(self.num_minibatches) {
            return bad(format!(
                "a batch of {} episodes does not split into {} minibatches",
                self.batch_size(),
                self.num_minibatches
            ));
        }
        let minibatch = self.batch_size() / self.num_minibatches;
        if self.grad_accum == 0 {
            return bad("grad_accum (--gradient-accumulation-steps) must be ≥ 1".into());
        }
        if !minibatch.is_multiple_of(self.grad_accum) {
            return bad(format!(
                "a minibatch of {minibatch} episodes (--prompts-per-batch × --num-generations / \
                 --num-mini-batches) does not split into {} equal micro-batches \
                 (--gradient-accumulation-steps)",
                self.grad_accum
            ));
        }
        if self.temperature.is_nan() || self.temperature <= 0.0 {
            return bad(format!("temperature must be > 0, got {}", self.temperature));
        }
        if !(0.0..=1.0).contains(&self.gamma) || !(0.0..=1.0).contains(&self.lam) {
            return bad(format!(
                "gamma and lam must be in [0, 1], got {} and {}",
                self.gamma, self.lam
            ));
        }
        if self.clip_eps.is_nan()
            || self.value_clip.is_nan()
            || self.clip_eps <= 0.0
            || self.value_clip <= 0.0
        {
            return bad("clip_eps and value_clip must be > 0".into());
        }
        if self.ppo_epochs == 0 || self.response_length == 0 || self.query_length == 0 {
            return bad("ppo_epochs, query_length and response_length must be ≥ 1".into());
        }
        if self.clip_eps_high.is_some_and(|e| e.is_nan() || e <= 0.0) {
            return bad("clip_eps_high must be > 0".into());
        }
        if self.delta.is_some()
            && matches!(
                self.policy_objective,
                PolicyObjective::Cispo | PolicyObjective::Sapo | PolicyObjective::Vespo
            )
        {
            return bad(format!(
                "delta caps PPO's unclipped term, which {} does not have: leave delta unset",
                match self.policy_objective {
                    PolicyObjective::Cispo => "cispo (its weight is capped at 1 + ε_high)",
                    PolicyObjective::Sapo => "sapo (its soft gate replaces the clip)",
                    _ => "vespo (its Gamma weight replaces the clip)",
                }
            ));
        }
        let high = 1.0 + self.clip_eps_high.unwrap_or(self.clip_eps);
        if let Some(d) = self.delta
            && !(d.is_finite() && d > high)
        {
            return bad(format!(
                "delta caps the unclipped ratio and must exceed 1 + ε_high = {high}, got {d}"
            ));
        }
        // the settings of a surrogate are checked where it reads them (TRL takes them unused)
        let shape = match self.policy_objective {
            PolicyObjective::Sapo => self.sapo_temperatures.problem(),
            PolicyObjective::Vespo => self.vespo_shape.problem(),
            _ => None,
        };
        if let Some(m) = shape {
            return bad(m);
        }
        if self.policy_objective == PolicyObjective::Vespo && self.rollout_is_cap.is_some() {
            return bad(
                "vespo folds the sampler's importance ratio into its sequence weight (as TRL \
                 does), which is not implemented: leave rollout_is_cap unset"
                    .into(),
            );
        }
        if self
            .off_policy_mask_threshold
            .is_some_and(|d| !d.is_finite() || d < 0.0)
        {
            return bad(format!(
                "off_policy_mask_threshold bounds a mean log-ratio and must be finite and ≥ 0, \
                 got {:?}",
                self.off_policy_mask_threshold
            ));
        }
        if !(0.0..=1.0).contains(&self.top_entropy_quantile) {
            return bad(format!(
                "top_entropy_quantile is the share of tokens kept and must be in [0, 1], got {}",
                self.top_entropy_quantile
            ));
        }
        if self.top_entropy_quantile < 1.0 && self.grad_accum > 1 {
            return bad(
                "--top-entropy-quantile cuts each minibatch at the quantile of its tokens' \
                 entropies, and with accumulation each micro-batch would cut at the quantile of \
                 its own tokens: use one micro-batch (--gradient-accumulation-steps 1)"
                    .into(),
            );
        }
        self.entropy_controller().validate()?;
        if self.multi_objective_aggregation == MultiObjectiveAggregation::NormalizeThenSum
            && let Some(m) = self.decoupling_problem()
        {
            return bad(m);
        }
        if let Some(m) = self.sync_problem()? {
            return bad(m);
        }
        if self.normalize_advantages && self.advantage != AdvantageEstimator::Rloo {
            return bad(format!(
                "normalize_advantages (--normalize-advantages) normalises RLOO's advantages over \
                 the batch (TRL's RLOO option) and is not for {:?}: GAE's whitening is \
                 whiten_advantages, the GRPO family's scaling scale_rewards",
                self.advantage
            ));
        }
        if self.dynamic_sampling == Some(0) {
            return bad("dynamic_sampling needs at least 1 sampling round".into());
        }
        if let Some(plan) = &self.lr_schedule {
            plan.validate()?;
        }
        if let Some((lo, hi)) = self.reward_clip_range
            && (lo.is_nan() || hi.is_nan() || lo > hi)
        {
            return bad(format!(
                "reward_clip_range is (min, max) with min ≤ max, neither NaN; got ({lo}, {hi})"
            ));
        }
        if self.policy_objective == PolicyObjective::Gspo
            && matches!(
                self.advantage,
                AdvantageEstimator::Gae | AdvantageEstimator::ReinforcePp
            )
        {
            return bad(format!(
                "gspo clips a sequence-level ratio and needs one advantage per response (a group \
                 estimator: rloo, grpo, grpo_batch, dr_grpo), not {:?}'s per-token advantages",
                self.advantage
            ));
        }
        if self.overlong_buffer.is_some() && self.missing_eos_penalty.is_some() {
            return bad(
                "overlong_buffer punishes responses that reach the length limit, which the \
                 missing-EOS penalty already replaces the score of: turn one off \
                 (missing_eos_penalty = None)"
                    .into(),
            );
        }
        if let Some(m) = self.sampling().problem() {
            return bad(m);
        }
        if self.dynamic_sampling.is_some() && self.samples_per_prompt < 2 {
            return bad(
                "dynamic_sampling drops groups of equal scores: it needs samples_per_prompt ≥ 2"
                    .into(),
            );
        }
        if self
            .overlong_buffer
            .is_some_and(|b| b == 0 || b > self.response_length)
            || !self.overlong_penalty.is_finite()
            || self.overlong_penalty < 0.0
        {
            return bad(format!(
                "overlong_buffer must be in 1..={} (response_length) and overlong_penalty finite and ≥ 0",
                self.response_length
            ));
        }
        if self.rollout_is_cap.is_some_and(|c| c.is_nan() || c <= 0.0) {
            return bad("rollout_is_cap must be > 0".into());
        }
        if self.score_baseline && self.samples_per_prompt < 2 {
            return bad("score_baseline needs samples_per_prompt ≥ 2".into());
        }
        if self.length_bucket_width == Some(0) {
            return bad("length_bucket_width must be ≥ 1".into());
        }
        if !self.ptx_coef.is_finite() || self.ptx_coef < 0.0 || self.ptx_batch_size == 0 {
            return bad("ptx_coef must be finite and ≥ 0, ptx_batch_size ≥ 1".into());
        }
        self.kl.validate()?;
        // β·mean(logπ − logπ_ref) at samples of π has zero expected gradient: as a loss term the
        // k1 estimator would silently switch the KL regulariser off, unless the token-level bias
        // correction weighs it by π/π_old (then E_old[∇(ρ·k1)] = ∇KL(π ‖ π_ref))
        let corrected = self.kl_bias_correction && self.policy_objective != PolicyObjective::Gspo;
        if !self.kl_in_reward
            && self.kl_estimator == KlEstimator::K1
            && self.kl_active()
            && !corrected
        {
            return bad(
                "the KL as a loss term (kl_in_reward = false) with the k1 estimator has zero \
                 expected gradient; use k3 (GRPO) or k2, weigh it by the importance ratio \
                 (use_bias_correction_kl, at the token level), or put the KL in the reward"
                    .into(),
            );
        }
        self.optimizer.validate()
    }
}

impl PpoConfig {
    /// The entropy coefficient's controller at the start of a run.
    pub fn entropy_controller(&self) -> EntropyController {
        EntropyController::new(self.entropy_coef, self.adaptive_entropy)
    }

    /// Whether the KL term is on: β above 0, or adaptive.
    fn kl_active(&self) -> bool {
        self.kl.value() > 0.0 || matches!(self.kl, KlController::Adaptive { .. })
    }

    /// Why the reference cannot follow the policy with these settings, if it cannot.
    fn sync_problem(&self) -> Result<Option<String>> {
        let Some(sync) = &self.sync_ref else {
            return Ok(None);
        };
        sync.validate()?;
        let per_iteration = (self.ppo_epochs * self.num_minibatches) as u64;
        Ok(if !self.kl_active() {
            Some(
                "sync_ref_model moves the reference of the KL term, and β is 0: there is no \
                 reference to move (TRL refuses it too)"
                    .into(),
            )
        } else if !sync.steps.is_multiple_of(per_iteration) {
            Some(format!(
                "sync_ref_model: ref_model_sync_steps {} counts optimizer steps and must be a \
                 multiple of an iteration's {per_iteration} (ppo_epochs × num_minibatches), so \
                 that the reference moves between rollouts, which read it once",
                sync.steps
            ))
        } else {
            None
        })
    }

    /// Why GDPO's normalisation cannot run with these settings, if it cannot: it is GRPO's
    /// (TRL's `GRPOTrainer`), and it normalises each reward function's own scores, so nothing
    /// may change the summed score after the scorer (a penalty, a reduction, a KL in the reward)
    /// or compare groups by it (dynamic sampling).
    fn decoupling_problem(&self) -> Option<String> {
        if !matches!(
            self.advantage,
            AdvantageEstimator::Grpo | AdvantageEstimator::GrpoBatch | AdvantageEstimator::DrGrpo
        ) {
            return Some(format!(
                "multi_objective_aggregation normalize_then_sum is GRPO's (GDPO); it replaces \
                 the group normalisation of grpo, grpo_batch or dr_grpo, not {:?}'s",
                self.advantage
            ));
        }
        let on_the_sum = [
            ("missing_eos_penalty", self.missing_eos_penalty.is_some()),
            ("overlong_buffer", self.overlong_buffer.is_some()),
            ("score_baseline", self.score_baseline),
            ("length_bucket_width", self.length_bucket_width.is_some()),
            ("whiten_rewards", self.whiten_rewards),
            ("kl_in_reward", self.kl_in_reward && self.kl_active()),
            ("dynamic_sampling", self.dynamic_sampling.is_some()),
            ("reward_clip_range", self.reward_clip_range.is_some()),
        ];
        let (name, _) = on_the_sum.into_iter().find(|(_, on)| *on)?;
        Some(format!(
            "multi_objective_aggregation normalize_then_sum normalises each reward function's own \
             scores, and {name} works on their sum: turn it off (a rule such as a format or \
             length reward can be a reward function of its own)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GDPO's normalisation is GRPO's family's, and refuses what works on the summed score.
    #[test]
    fn normalize_then_sum_needs_a_grpo_estimator_and_nothing_on_the_sum() {
        let gdpo = PpoConfig {
            multi_objective_aggregation: MultiObjectiveAggregation::NormalizeThenSum,
            ..PpoConfig::grpo()
        };
        gdpo.validate().unwrap();
        assert_eq!(gdpo.group_estimator(), Some(GroupEstimator::GrpoBatch));
        assert_eq!(
            PpoConfig::grpo().group_estimator(),
            Some(GroupEstimator::Grpo)
        );
        let refused = |c: PpoConfig, what: &str| {
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(what), "{what}: {err}");
        };
        refused(
            PpoConfig {
                advantage: AdvantageEstimator::Rloo,
                ..gdpo.clone()
            },
            "GRPO's",
        );
        refused(
            PpoConfig {
                multi_objective_aggregation: MultiObjectiveAggregation::NormalizeThenSum,
                ..PpoConfig::default()
            },
            "GRPO's",
        );
        refused(
            PpoConfig {
                missing_eos_penalty: Some(-1.0),
                ..gdpo.clone()
            },
            "missing_eos_penalty",
        );
        refused(
            PpoConfig {
                kl_in_reward: true,
                kl_estimator: KlEstimator::K1,
                ..gdpo.clone()
            },
            "kl_in_reward",
        );
        refused(
            PpoConfig {
                dynamic_sampling: Some(3),
                ..gdpo.clone()
            },
            "dynamic_sampling",
        );
        refused(
            PpoConfig {
                reward_clip_range: Some((0.0, 1.0)),
                ..gdpo.clone()
            },
            "reward_clip_range",
        );
        // with β 0 the KL in the reward is nothing
        PpoConfig {
            kl_in_reward: true,
            kl: KlController::Fixed { value: 0.0 },
            ..gdpo
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn defaults_are_the_tldr_recipe_and_round_trip_through_json() {
        let c = PpoConfig::default();
        c.validate().unwrap();
        assert_eq!(
            (c.gamma, c.lam, c.ppo_epochs, c.clip_eps, c.vf_coef),
            (1.0, 0.95, 4, 0.2, 0.1)
        );
        assert_eq!(
            (c.temperature, c.missing_eos_penalty, c.kl.value()),
            (0.7, Some(-1.0), 0.05)
        );
        assert!(
            c.whiten_advantages
                && !c.whiten_rewards
                && c.disable_dropout
                && c.value_from_reward_model
        );
        assert_eq!(c.optimizer.eps, 1e-5);
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<PpoConfig>(&json).unwrap(), c);
        // a partial config takes the defaults for the rest; an unknown key is an error
        let partial: PpoConfig =
            serde_json::from_str(r#"{"samples_per_prompt": 4, "advantage": "grpo"}"#).unwrap();
        assert_eq!(
            (partial.samples_per_prompt, partial.advantage, partial.lam),
            (4, AdvantageEstimator::Grpo, 0.95)
        );
        assert!(serde_json::from_str::<PpoConfig>(r#"{"sample_per_prompt": 4}"#).is_err());
    }

    #[test]
    fn the_method_recipes_validate_and_say_what_they_are() {
        let g = PpoConfig::grpo();
        g.validate().unwrap();
        assert_eq!(
            (g.advantage, g.kl_in_reward, g.kl_estimator, g.kl.value()),
            (AdvantageEstimator::Grpo, false, KlEstimator::K3, 0.04)
        );
        let r = PpoConfig::rloo();
        r.validate().unwrap();
        assert_eq!(
            (r.advantage, r.samples_per_prompt, r.kl_in_reward),
            (AdvantageEstimator::Rloo, 2, true)
        );
        let p = PpoConfig::reinforce_pp();
        p.validate().unwrap();
        assert!(!p.advantage.needs_critic() && p.kl_in_reward);
        let d = PpoConfig::dapo(40);
        d.validate().unwrap();
        assert_eq!(d.num_minibatches, 16);
        let l = d.policy_loss();
        assert_eq!(
            (l.clip_low, l.clip_high, l.aggregation, d.kl.value()),
            (0.2, 0.28, LossAggregation::Dapo, 0.0)
        );
        assert_eq!((d.dynamic_sampling, d.overlong_buffer), (Some(10), Some(8)));
        let g = PpoConfig::gspo();
        g.validate().unwrap();
        assert_eq!(
            (g.policy_objective, g.loss_aggregation),
            (PolicyObjective::Gspo, LossAggregation::Grpo)
        );
        let l = PpoConfig::luspo();
        l.validate().unwrap();
        assert_eq!(
            (l.policy_objective, l.loss_aggregation, l.clip_eps),
            (PolicyObjective::Gspo, LossAggregation::Luspo, g.clip_eps)
        );
        let c = PpoConfig::cispo();
        c.validate().unwrap();
        assert_eq!(
            (c.policy_loss().clip_low, c.policy_loss().clip_high),
            (1.0, 4.0)
        );
        for (recipe, objective, aggregation) in [
            (
                PpoConfig::sapo(),
                PolicyObjective::Sapo,
                LossAggregation::Grpo,
            ),
            (
                PpoConfig::vespo(),
                PolicyObjective::Vespo,
                LossAggregation::Dapo,
            ),
        ] {
            recipe.validate().unwrap();
            assert_eq!(
                (
                    recipe.policy_objective,
                    recipe.loss_aggregation,
                    recipe.num_minibatches,
                    recipe.kl.value()
                ),
                (objective, aggregation, 4, 0.0)
            );
        }
        let l = PpoConfig::sapo().policy_loss();
        assert_eq!((l.sapo.positive, l.sapo.negative), (1.0, 1.05));
        let v = PpoConfig::vespo().policy_loss().vespo;
        assert_eq!(
            (v.k_pos, v.lambda_pos, v.k_neg, v.lambda_neg),
            (2.0, 3.0, 3.0, 2.0)
        );
        // a surrogate's settings are checked where it reads them
        let cold = SapoTemperatures {
            positive: 0.0,
            negative: 1.0,
        };
        let sapo_cold = PpoConfig {
            sapo_temperatures: cold,
            ..PpoConfig::sapo()
        };
        assert!(sapo_cold.validate().is_err());
        let grpo_cold = PpoConfig {
            sapo_temperatures: cold,
            ..PpoConfig::grpo()
        };
        grpo_cold.validate().unwrap();
        let flat = PpoConfig {
            vespo_shape: VespoShape {
                lambda_neg: 0.0,
                ..VespoShape::default()
            },
            ..PpoConfig::vespo()
        };
        assert!(flat.validate().is_err());
        let capped = PpoConfig {
            rollout_is_cap: Some(3.0),
            ..PpoConfig::vespo()
        };
        assert!(capped.validate().is_err());
        for objective in [PolicyObjective::Sapo, PolicyObjective::Vespo] {
            let delta = PpoConfig {
                policy_objective: objective,
                delta: Some(1.1),
                ..PpoConfig::grpo()
            };
            let err = delta.validate().unwrap_err().to_string();
            assert!(err.contains("does not have"), "{err}");
        }
    }

    #[test]
    fn inconsistent_settings_are_refused() {
        let grpo1 = PpoConfig {
            advantage: AdvantageEstimator::Grpo,
            ..PpoConfig::default()
        };
        assert!(grpo1.validate().is_err());
        // Dr. GRPO's advantage of one sample is 0 too (TRL refuses it as well)
        let dr = PpoConfig {
            advantage: AdvantageEstimator::DrGrpo,
            ..PpoConfig::default()
        };
        assert!(dr.validate().is_err());
        assert!(
            PpoConfig {
                samples_per_prompt: 2,
                ..dr
            }
            .validate()
            .is_ok()
        );
        let split = PpoConfig {
            prompts_per_batch: 6,
            num_minibatches: 4,
            ..PpoConfig::default()
        };
        assert!(split.validate().is_err());
        // 64 episodes in 2 minibatches of 32: 4 micro-batches of 8, not 3 or 0; and no
        // top-entropy cut of each micro-batch
        let accumulated = |grad_accum: usize, top_entropy_quantile: f32| PpoConfig {
            num_minibatches: 2,
            grad_accum,
            top_entropy_quantile,
            ..PpoConfig::default()
        };
        assert!(accumulated(4, 1.0).validate().is_ok());
        for (k, rho) in [(3, 1.0), (0, 1.0), (4, 0.2)] {
            let e = accumulated(k, rho).validate().unwrap_err().to_string();
            assert!(
                e.contains("--gradient-accumulation-steps"),
                "{k}, {rho}: {e}"
            );
        }
        assert!(accumulated(1, 0.2).validate().is_ok());
        assert!(
            PpoConfig {
                temperature: 0.0,
                ..PpoConfig::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            AdvantageEstimator::Gae.needs_critic()
                && !AdvantageEstimator::ReinforcePp.needs_critic()
        );
        // the two-sided cap must lie above the clip, and CISPO has no term to cap
        let with = |c: PpoConfig| c.validate().is_ok();
        let grpo = PpoConfig::grpo();
        for (delta, ok) in [(1.1, false), (1.2, false), (1.25, true), (f32::NAN, false)] {
            let c = PpoConfig {
                delta: Some(delta),
                ..grpo.clone()
            };
            assert_eq!(with(c), ok, "δ {delta}");
        }
        assert!(!with(PpoConfig {
            delta: Some(6.0),
            ..PpoConfig::cispo()
        }));
        // a reward clip range is (min, max), min ≤ max, neither NaN
        for (range, ok) in [
            ((-1.0, 1.0), true),
            ((0.5, 0.5), true),
            ((1.0, -1.0), false),
            ((f32::NAN, 1.0), false),
            ((0.0, f32::NAN), false),
            ((f32::NEG_INFINITY, 0.0), true),
        ] {
            let c = PpoConfig {
                reward_clip_range: Some(range),
                ..PpoConfig::rloo()
            };
            assert_eq!(with(c), ok, "reward_clip_range {range:?}");
        }
        for (rho, ok) in [
            (-0.1, false),
            (0.0, true),
            (0.2, true),
            (1.0, true),
            (1.5, false),
        ] {
            let c = PpoConfig {
                top_entropy_quantile: rho,
                ..grpo.clone()
            };
            assert_eq!(with(c), ok, "ρ {rho}");
        }
        // the sampler's own settings are checked too
        for bad in [
            PpoConfig {
                min_p: Some(1.5),
                ..grpo.clone()
            },
            PpoConfig {
                repetition_penalty: Some(0.0),
                ..grpo.clone()
            },
        ] {
            assert!(!with(bad));
        }
    }
}
