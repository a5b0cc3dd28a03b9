//! Held-out evaluation during on-policy training (TRL's `eval_dataset` for GRPO and RLOO): the
//! policy samples `n` responses to each held-out prompt, at the training run's sampling
//! settings, and the run's reward scores them, before any penalty (TRL's eval reward is the
//! reward functions' weighted sum); their KL to the reference is estimated as in training. Each
//! evaluation draws the same random numbers, so two evaluations of a run differ by the policy
//! only, and a resumed run evaluates as the uninterrupted one.

use burn::module::Module;
use rlhf_core::stats;
use rlhf_core::train::TrainRng;
use rlhf_core::train::metrics::names;
use rlhf_core::{Result, Scorer};
use rlhf_data::Tokenizer;
use rlhf_models::CausalLm;

use crate::config::PpoConfig;
use crate::rollout::sample_and_score;
use crate::trainer::{EvalLine, part_metrics, response_kl_sum};

/// The held-out prompts and how many responses to sample for each (TRL's
/// `num_generations_eval`).
#[derive(Debug, Clone, Copy)]
pub struct HeldOut<'a> {
    /// The prompts.
    pub prompts: &'a [String],
    /// Responses per prompt.
    pub samples_per_prompt: usize,
}

/// `policy`'s responses to `held_out`, sampled as `cfg` samples in training (its length limit,
/// temperature and token filters; `cfg.prompts_per_batch` prompts at a time) with the random
/// numbers of `cfg.seed`, and scored by `scorer`:
/// - `eval_reward`, the mean score, and `eval_reward_std`, its sample standard deviation;
/// - `eval_rewards/{name}/mean` and `…/std` of each reward function's own scores, as in
///   training;
/// - `eval_kl`, the mean per-token KL estimate of `policy` to `reference` over the responses'
///   tokens (`cfg.kl_estimator`, at the sampling temperature; with `mask_truncated_completions`,
///   the responses without EOS left out): the reward's KL that training logs as `kl`, and the
///   loss term's without the bias correction's ratio, which is 1 on the policy that sampled (as
///   in TRL's evaluation);
/// - `eval_completions/mean_length`, in tokens (up to and including EOS);
/// - `eval_completions/clipped_ratio`, the share of responses that reached the length limit
///   without EOS.
pub fn held_out_metrics(
    (policy, reference): (&CausalLm, &CausalLm),
    (tokenizer, scorer): (&Tokenizer, &dyn Scorer),
    held_out: &HeldOut,
    cfg: &PpoConfig,
) -> Result<EvalLine> {
    // the KL's forward passes take a training rollout's rows at a time
    let rollout_rows = cfg.batch_size();
    let cfg = PpoConfig {
        samples_per_prompt: held_out.samples_per_prompt.max(1),
        ..cfg.clone()
    };
    // LoRA adapters merged, as for the rollouts
    let (policy, reference) = (policy.valid().materialize(), reference.valid());
    let mut rng = TrainRng::seed_from_u64(cfg.seed).fork("held-out");
    let (mut scores, mut lengths, mut clipped) = (Vec::new(), Vec::new(), 0usize);
    let mut parts: Vec<(String, Vec<f32>)> = Vec::new();
    let (mut kl_sum, mut kl_tokens) = (0.0, 0.0);
    for chunk in held_out.prompts.chunks(cfg.prompts_per_batch.max(1)) {
        let prompts: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let rollout = sample_and_score(&policy, (tokenizer, scorer), &prompts, &cfg, &mut rng)?;
        scores.extend(rollout.raw_scores.iter().map(|&s| f64::from(s)));
        lengths.extend(rollout.lengths.iter().map(|&l| l as f64));
        clipped += rollout.generation.has_eos.iter().filter(|&&e| !e).count();
        if parts.is_empty() {
            parts = rollout
                .score_parts
                .iter()
                .map(|(k, _)| (k.clone(), Vec::new()))
                .collect();
        }
        for ((_, to), (_, from)) in parts.iter_mut().zip(&rollout.score_parts) {
            to.extend_from_slice(from);
        }
        let query = (&rollout.query_ids[..], &rollout.query_mask[..]);
        let models = (&policy, &reference);
        let (sum, tokens) =
            response_kl_sum(models, query, &rollout.generation, &cfg, rollout_rows)?;
        (kl_sum, kl_tokens) = (kl_sum + sum, kl_tokens + tokens);
    }
    let n = scores.len().max(1) as f64;
    let metrics = vec![
        (names::EVAL_REWARD, stats::mean(scores.iter().copied())),
        (names::EVAL_REWARD_STD, stats::sample_std(&scores)),
        (names::EVAL_KL, kl_sum / kl_tokens.max(1.0)),
        (names::EVAL_COMPLETIONS_MEAN_LENGTH, stats::mean(lengths)),
        (names::EVAL_COMPLETIONS_CLIPPED_RATIO, clipped as f64 / n),
    ];
    // each reward function's mean and spread, as training logs them, under `eval_`
    let named = part_metrics(&parts)
        .into_iter()
        .map(|(name, value)| (format!("eval_{name}"), value))
        .collect();
    Ok(EvalLine { metrics, named })
}
