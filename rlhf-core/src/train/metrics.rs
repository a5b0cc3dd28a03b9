//! The metrics sink: one JSON object per line, with metric names that are the same in every
//! trainer and documented here once.
//!
//! A line is `{"step": 12, "objective/kl": 0.31, …}`. Where Hugging Face TRL logs the same
//! quantity, the name is TRL's (the column "TRL" names the trainer that logs it so); a name that
//! TRL does not have is `group/name` in the same style.
//!
//! | name | meaning | TRL |
//! | --- | --- | --- |
//! | `loss`, `eval_loss` | the training loss of a step (mean over its items), and on held-out data | every trainer |
//! | `learning_rate`, `grad_norm` | the step's learning rate, the global gradient norm before clipping | every trainer |
//! | `eval_perplexity` | SFT's `exp` of the held-out NLL, whatever the loss | — |
//! | `eval_accuracy` | RM accuracy on held-out labels (step models: on held-out step labels) | `RewardTrainer` |
//! | `accuracy`, `margin` | a pairwise RM's training step: the share of pairs it orders right (a tie is wrong), the mean `r_c − r_r` | `RewardTrainer` |
//! | `min_reward`, `mean_reward`, `max_reward` | an outcome RM's training step: its scores' minimum, mean and maximum (accumulated micro-batches: the means of theirs) | `RewardTrainer` |
//! | `eval_gold_accuracy` | RM accuracy on the gold order (step models: balanced accuracy) | — |
//! | `eval_pair_accuracy` | step models: share of one prompt's right-versus-wrong pairs ordered as labelled | — |
//! | `rewards/chosen`, `rewards/rejected`, `rewards/margins`, `rewards/accuracies` | implicit rewards `β·(logπ − logπ_ref)` of preference pairs, their margin, the share ordered right | `DPOTrainer` |
//! | `logps/chosen`, `logps/rejected` | sequence log-probs of preference pairs (averaged over tokens for IPO and SimPO) | `DPOTrainer` |
//! | `eval_rewards/accuracies`, `eval_rewards/margins`, `eval_rewards/chosen`, `eval_rewards/rejected`, `eval_logps/chosen`, `eval_logps/rejected` | the same on held-out pairs, means over all of them (TRL averages its eval batches' values) | `DPOTrainer` |
//! | `entropy`, `mean_token_accuracy`, `logits/chosen`, `logits/rejected` and their `eval_` forms | DPO: the policy's mean entropy at every response token, the share of the chosen responses' tokens that are its most likely token, the mean over the vocabulary of the logits that predict the chosen, and the rejected, responses' tokens; token means of a micro-batch (accumulated micro-batches and replicas weighted by their groups, as the loss; TRL averages micro-batches and weighs ranks by tokens), of all held-out response tokens at an evaluation (TRL averages its eval batches' values); `null` without tokens, where TRL logs 0 | `DPOTrainer` |
//! | `num_tokens` | DPO: prompt and response tokens, after truncation, of every response trained on so far (each response row holds its prompt, as TRL's batch); a resumed run counts the steps before the resume (TRL's count starts again at 0); `eval_num_tokens` is not logged | `DPOTrainer` |
//! | `objective/kl` | mean per-sequence KL of the policy to the reference (sum of per-token k1) | `PPOTrainer` |
//! | `objective/entropy` | mean per-sequence `−Σ logπ` of the samples | `PPOTrainer` |
//! | `objective/scores` | mean score from the `Scorer` (after the overlong punishment, the reward clip, the missing-EOS penalty and any variance reduction) | `PPOTrainer` |
//! | `objective/non_score_reward` | mean per-sequence sum of `−β·KL` | `PPOTrainer` |
//! | `objective/rlhf_reward` | `scores + non_score_reward` | `PPOTrainer` |
//! | `policy/approxkl_avg` | `½·mean((logπ_new − logπ_old)²)` | `PPOTrainer` |
//! | `policy/clipfrac_avg` | share of tokens where the policy clip was active | `PPOTrainer` |
//! | `policy/entropy_avg` | mean per-token entropy during the update | `PPOTrainer` |
//! | `loss/policy_avg`, `loss/value_avg` | policy and value losses of the update | `PPOTrainer` |
//! | `val/clipfrac_avg` | value clip fraction | `PPOTrainer` |
//! | `val/ratio`, `val/ratio_var` | mean and variance of the ratio `ρ` | `PPOTrainer` |
//! | `reward_std` | standard deviation of the scores over the batch, after the overlong punishment, the reward clip and the missing-EOS penalty, before any variance reduction (Bessel-corrected; `null` for one response) | `GRPOTrainer` |
//! | `rewards/{name}/mean`, `rewards/{name}/std` | each part of the scorer's scores (`Scorer::score_parts`: the CLI's reward functions, one or several) over the batch, unweighted: mean and standard deviation (Bessel-corrected) | `GRPOTrainer` |
//! | `frac_reward_zero_std` | share of prompts whose `n` samples all scored the same (no group advantage) | `GRPOTrainer` |
//! | `completions/mean_length`, `completions/min_length`, `completions/max_length` | response length in tokens: mean, shortest, longest | `GRPOTrainer` |
//! | `completions/clipped_ratio` | share of responses cut off at the length limit (no EOS) | `GRPOTrainer` |
//! | `completions/mean_terminated_length`, `…/min_terminated_length`, `…/max_terminated_length` | length of the responses that end with EOS: mean, shortest, longest (0 when none does) | `GRPOTrainer` |
//! | `kl` | mean per-token KL estimate of the loss term (when the KL is in the loss; with the bias correction, of `ρ·k`, as TRL logs it), or of the reward's per-token KL over the rollout (when it is in the reward and β ≠ 0: RLOO's, and here PPO's and REINFORCE++'s too; the estimator is `kl_estimator`, k1 by default, RLOO's) | `GRPOTrainer`, `RLOOTrainer` |
//! | `val/num_eos` | share of responses that contain EOS (TRL's `val/num_eos_tokens` is a count) | — |
//! | `objective/ptx_loss` | the SFT loss term of PPO-ptx | — |
//! | `objective/variance_removed` | share of the scores' variance removed by baseline subtraction and length-bucket normalisation | — |
//! | `objective/kl_coef` | β of this iteration | — |
//! | `loss/kl` | `β·KL` as it enters the loss: the per-token estimate aggregated as the policy loss is (`loss_type`) | — |
//! | `loss/entropy` | with an entropy bonus `c`, the mean entropy `H̄` over the tokens the policy loss reads (the loss gains `−c·H̄`) | — |
//! | `entropy_coef` | with an entropy bonus, `c` after each optimizer step (averaged over an iteration's steps; it moves under adaptive entropy control) | `GRPOTrainer` |
//! | `eval_reward`, `eval_reward_std` | the scorer's own scores (no penalty) of samples on held-out prompts, their mean and sample standard deviation | `GRPOTrainer`, `RLOOTrainer` |
//! | `eval_rewards/{name}/mean`, `eval_rewards/{name}/std` | each part of those scores, as `rewards/{name}/*`, over all held-out samples (TRL averages its eval batches' values) | `GRPOTrainer`, `RLOOTrainer` |
//! | `eval_kl` | those samples' per-token KL estimate to the reference (the synced one as it is then), with `kl_estimator`, over the tokens `kl` reads, averaged over all their tokens; logged at β 0 too (TRL's GRPO and RLOO log it only with β ≠ 0, and average their eval batches' token means) | `GRPOTrainer`, `RLOOTrainer` |
//! | `eval_completions/mean_length`, `eval_completions/clipped_ratio` | those samples' length in tokens, and the share cut off at the length limit | `GRPOTrainer`, `RLOOTrainer` |
//! | `loss/total` | the loss the update minimises | — |
//! | `train/skipped_steps` | updates skipped for a non-finite loss or gradient norm: since the run began in a trainer's log, in this iteration in `ppo_iteration`'s own metrics | — |
//! | `time/rollout`, `time/update`, `time/step` | wall seconds | — |
//! | `clip_ratio/low_mean`, `clip_ratio/high_mean` | share of tokens clipped at the lower bound (`A < 0`, ratio below `1 − ε_low`) and at the upper (`A > 0`, ratio above `1 + ε_high`); for GSPO, share of sequences (its ratio is one per sequence); for CISPO, the weight clipped either way | `GRPOTrainer` |
//! | `clip_ratio/region_mean` | the sum of the two: the share clipped at either bound | `GRPOTrainer` |
//! | `clip_ratio/low_min`, `clip_ratio/high_max` | per minibatch, the least share of a response's tokens clipped at the lower bound and the greatest at the upper (responses without tokens left out; data-parallel shards combined by least and greatest), averaged over an iteration's minibatches | `GRPOTrainer` |
//! | `sampling/sampling_logp_difference/mean`, `…/max` | `|logπ_old − logπ_sampler|` over response tokens: the trainer's log-probs of the rollout against those recorded while sampling | `GRPOTrainer` |
//! | `sampling/kl` | per-token `KL(π_sampler ‖ π_old)` of the same, the k3 estimate `(r − 1) − log r` with `r = π_old/π_sampler`, in `f64` | — |
//! | `sampling/importance_sampling_ratio/min`, `…/mean`, `…/max` | the truncated importance-sampling weights, when the correction is on | `GRPOTrainer` |
//! | `train/num_gen_batches` | DAPO's dynamic sampling: sampling rounds in the iteration | verl |
//! | `dynamic_sampling/dropped_groups`, `dynamic_sampling/refilled_groups` | groups dropped for equal scores; of those, put back because the round cap left the batch short | — |
//! | `objective/overlong_penalty` | mean of DAPO's overlong punishment over the responses | — |
//!
//! KTO logs `rewards/chosen`, `rewards/rejected`, `logps/chosen` and `logps/rejected` over the
//! desirable (chosen) and the undesirable (rejected) examples of a batch (`null` when a step's
//! batch holds none of them), their difference as `rewards/margins`, and:
//!
//! | name | meaning | TRL |
//! | --- | --- | --- |
//! | `kl` | the batch's reference point `z_ref = max(0, mean(logπ(y′|x) − logπ_ref(y′|x)))` over its mismatched pairs | `KTOTrainer` |
//! | `eval_kl`, `eval_rewards/chosen`, `eval_rewards/rejected`, `eval_logps/chosen`, `eval_logps/rejected` | the same on held-out examples: means over the held-out examples of each kind (`eval_kl` over the batches, weighted by their sizes), where TRL averages its eval batches' values | `KTOTrainer` |
//!
//! Online DPO logs, once per round, `objective/scores` (over every sample of the round),
//! `objective/kl`, `objective/entropy` (over the responses of the round's pairs, averaged over its
//! steps), `objective/non_score_reward` (`−β` times that KL), `objective/rlhf_reward` (the sum of
//! the two), the `rewards/*` and `logps/*` of its pairs, `completions/mean_length`, and the rows
//! below. TRL's are over every sample of the round: the same with two samples per prompt, no
//! prompt whose samples tie, and one step per round. The KL and the entropy here sum a response's
//! own tokens, up to its EOS; TRL 1.16's also sum the padding after it.
//!
//! | name | meaning | TRL |
//! | --- | --- | --- |
//! | `objective/scores_margin` | mean score of the chosen minus the rejected response of the round's pairs | `OnlineDPOTrainer` |
//! | `val/contain_eos_token` | share of the round's samples that end with EOS | `OnlineDPOTrainer` |
//! | `beta` | β of the round | `OnlineDPOTrainer` |
//! | `online/pair_share` | share of the round's prompts whose samples did not all score the same (the others give no pair) | — |
//!
//! SFT logs, per step, `loss`, `learning_rate`, `grad_norm`, `train/skipped_steps` and the rows
//! below; at each evaluation `eval_loss`, `eval_perplexity`, `eval_entropy` and
//! `eval_mean_token_accuracy` (over all held-out target tokens, 0 without any, where TRL averages
//! its eval batches' values; TRL's `eval_num_tokens`, its training count again, is not logged).
//!
//! | name | meaning | TRL |
//! | --- | --- | --- |
//! | `entropy` | mean entropy (nats) of the model's next-token distribution at the target tokens, from the training step's logits (accumulated micro-batches: weighted by their target tokens, where TRL averages them; `null` in a step without target tokens, where TRL logs 0) | `SFTTrainer` |
//! | `mean_token_accuracy` | share of the target tokens that are the model's most likely next token (the first of equal logits), weighted as `entropy` | `SFTTrainer` |
//! | `num_tokens` | tokens that are not padding, prompts included, of every step so far: a resumed run counts the steps before the resume (TRL's count starts again at 0); with `--assistant-only-loss` a conversation's context counts once per assistant message, as each is an example of its own (TRL counts the conversation once) | `SFTTrainer` |
//!
//! Distillation logs, per step, `loss` (the generalised JSD per response token), `completions/mean_length` and
//! `completions/clipped_ratio` over the student's samples, and `entropy` (accumulated
//! micro-batches: the means of theirs, weighted by their response tokens, where TRL averages
//! them), and:
//!
//! | name | meaning | TRL |
//! | --- | --- | --- |
//! | `entropy` | mean per-token entropy of the student's tempered distribution over its samples' response tokens | `DistillationTrainer` |
//! | `eval_loss`, `eval_entropy`, `eval_completions/mean_length`, `eval_completions/clipped_ratio` | the same of the student's samples of held-out prompts, over all of them (weighted by their response tokens; TRL averages its eval batches' values) | `DistillationTrainer` |

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::{Error, Result};

/// Metric names, as constants, so that a typo is a compile error.
pub mod names {
    #![allow(missing_docs)]
    pub const OBJECTIVE_KL: &str = "objective/kl";
    pub const OBJECTIVE_ENTROPY: &str = "objective/entropy";
    pub const OBJECTIVE_SCORES: &str = "objective/scores";
    pub const OBJECTIVE_NON_SCORE_REWARD: &str = "objective/non_score_reward";
    pub const OBJECTIVE_RLHF_REWARD: &str = "objective/rlhf_reward";
    pub const OBJECTIVE_PTX_LOSS: &str = "objective/ptx_loss";
    pub const OBJECTIVE_VARIANCE_REMOVED: &str = "objective/variance_removed";
    pub const POLICY_APPROXKL: &str = "policy/approxkl_avg";
    pub const POLICY_CLIPFRAC: &str = "policy/clipfrac_avg";
    pub const POLICY_ENTROPY: &str = "policy/entropy_avg";
    pub const VAL_LOSS: &str = "loss/value_avg";
    pub const VAL_CLIPFRAC: &str = "val/clipfrac_avg";
    pub const VAL_RATIO_MEAN: &str = "val/ratio";
    pub const VAL_RATIO_VAR: &str = "val/ratio_var";
    pub const VAL_NUM_EOS: &str = "val/num_eos";
    pub const REWARD_STD: &str = "reward_std";
    pub const FRAC_REWARD_ZERO_STD: &str = "frac_reward_zero_std";
    pub const COMPLETIONS_MEAN_LENGTH: &str = "completions/mean_length";
    pub const COMPLETIONS_MIN_LENGTH: &str = "completions/min_length";
    pub const COMPLETIONS_MAX_LENGTH: &str = "completions/max_length";
    pub const COMPLETIONS_CLIPPED_RATIO: &str = "completions/clipped_ratio";
    pub const COMPLETIONS_MEAN_TERMINATED_LENGTH: &str = "completions/mean_terminated_length";
    pub const COMPLETIONS_MIN_TERMINATED_LENGTH: &str = "completions/min_terminated_length";
    pub const COMPLETIONS_MAX_TERMINATED_LENGTH: &str = "completions/max_terminated_length";
    pub const KL_LOSS_TERM: &str = "kl";
    pub const LOSS_POLICY: &str = "loss/policy_avg";
    pub const LOSS_KL: &str = "loss/kl";
    pub const LOSS_ENTROPY: &str = "loss/entropy";
    pub const LOSS_TOTAL: &str = "loss/total";
    pub const TRAIN_LOSS: &str = "loss";
    pub const TRAIN_LR: &str = "learning_rate";
    pub const TRAIN_GRAD_NORM: &str = "grad_norm";
    pub const TRAIN_KL_COEF: &str = "objective/kl_coef";
    pub const ENTROPY_COEF: &str = "entropy_coef";
    pub const TRAIN_SKIPPED_STEPS: &str = "train/skipped_steps";
    pub const CLIP_RATIO_LOW: &str = "clip_ratio/low_mean";
    pub const CLIP_RATIO_HIGH: &str = "clip_ratio/high_mean";
    pub const CLIP_RATIO_REGION: &str = "clip_ratio/region_mean";
    pub const CLIP_RATIO_LOW_MIN: &str = "clip_ratio/low_min";
    pub const CLIP_RATIO_HIGH_MAX: &str = "clip_ratio/high_max";
    pub const OFF_POLICY_MASKED: &str = "off_policy_mask/masked_ratio";
    pub const VESPO_PHI_MEAN: &str = "vespo/phi_seq_mean";
    pub const SAMPLING_LOGP_DIFF_MEAN: &str = "sampling/sampling_logp_difference/mean";
    pub const SAMPLING_LOGP_DIFF_MAX: &str = "sampling/sampling_logp_difference/max";
    pub const SAMPLING_KL: &str = "sampling/kl";
    pub const SAMPLING_IS_RATIO_MIN: &str = "sampling/importance_sampling_ratio/min";
    pub const SAMPLING_IS_RATIO_MEAN: &str = "sampling/importance_sampling_ratio/mean";
    pub const SAMPLING_IS_RATIO_MAX: &str = "sampling/importance_sampling_ratio/max";
    pub const DYNAMIC_SAMPLING_ROUNDS: &str = "train/num_gen_batches";
    pub const DYNAMIC_SAMPLING_DROPPED: &str = "dynamic_sampling/dropped_groups";
    pub const DYNAMIC_SAMPLING_REFILLED: &str = "dynamic_sampling/refilled_groups";
    pub const OBJECTIVE_OVERLONG: &str = "objective/overlong_penalty";
    pub const EVAL_LOSS: &str = "eval_loss";
    pub const EVAL_REWARD: &str = "eval_reward";
    pub const EVAL_REWARD_STD: &str = "eval_reward_std";
    pub const EVAL_KL: &str = "eval_kl";
    pub const EVAL_COMPLETIONS_MEAN_LENGTH: &str = "eval_completions/mean_length";
    pub const EVAL_COMPLETIONS_CLIPPED_RATIO: &str = "eval_completions/clipped_ratio";
    pub const EVAL_PERPLEXITY: &str = "eval_perplexity";
    pub const EVAL_ACCURACY: &str = "eval_accuracy";
    pub const ACCURACY: &str = "accuracy";
    pub const MARGIN: &str = "margin";
    pub const MIN_REWARD: &str = "min_reward";
    pub const MEAN_REWARD: &str = "mean_reward";
    pub const MAX_REWARD: &str = "max_reward";
    pub const EVAL_GOLD_ACCURACY: &str = "eval_gold_accuracy";
    pub const EVAL_PAIR_ACCURACY: &str = "eval_pair_accuracy";
    pub const REWARDS_CHOSEN: &str = "rewards/chosen";
    pub const REWARDS_REJECTED: &str = "rewards/rejected";
    pub const REWARDS_MARGINS: &str = "rewards/margins";
    pub const REWARDS_ACCURACIES: &str = "rewards/accuracies";
    pub const LOGPS_CHOSEN: &str = "logps/chosen";
    pub const LOGPS_REJECTED: &str = "logps/rejected";
    pub const EVAL_REWARD_ACCURACY: &str = "eval_rewards/accuracies";
    pub const EVAL_REWARD_MARGIN: &str = "eval_rewards/margins";
    pub const TIME_ROLLOUT: &str = "time/rollout";
    pub const TIME_UPDATE: &str = "time/update";
    pub const TIME_STEP: &str = "time/step";

    // KTO (TRL's `KTOTrainer`)
    pub const KTO_KL: &str = "kl";
    pub const EVAL_KTO_KL: &str = "eval_kl";
    pub const EVAL_REWARDS_CHOSEN: &str = "eval_rewards/chosen";
    pub const EVAL_REWARDS_REJECTED: &str = "eval_rewards/rejected";
    pub const EVAL_LOGPS_CHOSEN: &str = "eval_logps/chosen";
    pub const EVAL_LOGPS_REJECTED: &str = "eval_logps/rejected";

    // online DPO (TRL's `OnlineDPOTrainer`)
    pub const OBJECTIVE_SCORES_MARGIN: &str = "objective/scores_margin";
    pub const VAL_CONTAIN_EOS_TOKEN: &str = "val/contain_eos_token";
    pub const BETA: &str = "beta";
    pub const ONLINE_PAIR_SHARE: &str = "online/pair_share";

    // SFT, DPO and distillation (TRL's `SFTTrainer`, `DPOTrainer`, `DistillationTrainer`)
    pub const ENTROPY: &str = "entropy";
    pub const EVAL_ENTROPY: &str = "eval_entropy";
    // SFT and DPO (TRL's `SFTTrainer`, `DPOTrainer`)
    pub const MEAN_TOKEN_ACCURACY: &str = "mean_token_accuracy";
    pub const EVAL_MEAN_TOKEN_ACCURACY: &str = "eval_mean_token_accuracy";
    pub const NUM_TOKENS: &str = "num_tokens";
    // DPO (TRL's `DPOTrainer`): the mean over the vocabulary of the logits that predict the
    // chosen, or the rejected, responses' tokens
    pub const LOGITS_CHOSEN: &str = "logits/chosen";
    pub const LOGITS_REJECTED: &str = "logits/rejected";
    pub const EVAL_LOGITS_CHOSEN: &str = "eval_logits/chosen";
    pub const EVAL_LOGITS_REJECTED: &str = "eval_logits/rejected";
}

/// Appends metric lines to a JSONL file. Each line is written with one `write` call and flushed,
/// so a crash loses at most the line being written; a resumed run calls [`MetricsSink::truncate_after`]
/// to drop lines past its checkpoint, so the file reads as if the run had never stopped.
#[derive(Debug)]
pub struct MetricsSink {
    path: PathBuf,
    file: File,
}

impl MetricsSink {
    /// Opens (creating if needed) `path` for appending.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok(MetricsSink { path, file })
    }

    /// The file written to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line `{"step": step, name: value, …}`. Non-finite values are written as `null`
    /// (JSON has no NaN), so the line stays valid JSON.
    pub fn log(&mut self, step: u64, metrics: &[(&str, f64)]) -> Result<()> {
        let mut obj = Map::new();
        for (name, value) in metrics {
            let v = serde_json::Number::from_f64(*value)
                .map(Value::Number)
                .unwrap_or(Value::Null);
            obj.insert((*name).to_string(), v);
        }
        self.log_object(step, obj)
    }

    /// Appends one line: the fields of `obj` (any JSON values: the completions a trainer shows,
    /// say) and `step`, keys in serde_json's sorted order, with the same guarantees as
    /// [`MetricsSink::log`].
    pub fn log_object(&mut self, step: u64, obj: Map<String, Value>) -> Result<()> {
        let mut line = Map::new();
        line.insert("step".into(), Value::from(step));
        line.extend(obj);
        let mut line = Value::Object(line).to_string();
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .map_err(|e| Error::io(&self.path, e))?;
        self.file.flush().map_err(|e| Error::io(&self.path, e))
    }

    /// Drops every line whose `step` is greater than `step` (and any torn last line), rewriting the
    /// file atomically. Called when resuming from the checkpoint of `step`.
    pub fn truncate_after(&mut self, step: u64) -> Result<()> {
        let text = std::fs::read_to_string(&self.path).map_err(|e| Error::io(&self.path, e))?;
        let mut kept = String::new();
        for line in text.lines() {
            let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if obj
                .get("step")
                .and_then(Value::as_u64)
                .is_some_and(|s| s <= step)
            {
                kept.push_str(line);
                kept.push('\n');
            }
        }
        super::fs::write_atomic(&self.path, kept.as_bytes())?;
        *self = MetricsSink::open(self.path.clone())?;
        Ok(())
    }
}

/// Reads a metrics file back: one map per line.
pub fn read_metrics(path: &Path) -> Result<Vec<Map<String, Value>>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| match serde_json::from_str::<Value>(l) {
            Ok(Value::Object(m)) => Ok(m),
            _ => Err(Error::Data {
                file: path.to_path_buf(),
                line: i + 1,
                field: "-".into(),
                message: "expected one JSON object per line".into(),
            }),
        })
        .collect()
}
