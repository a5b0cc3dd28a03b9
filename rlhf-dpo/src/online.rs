//! Iterative (online) DPO/EXO: sample `n` responses per prompt from the current policy, score
//! them with any `Scorer`, keep the best and the worst of each prompt as a pair, and take one
//! offline pass on those pairs with the same trainer. Repeating rounds is the online use the
//! scaling study compares with the offline one at equal compute.
//!
//! Each round here is a fresh offline run (its own optimizer); [`crate::train_online_dpo`] is the
//! trainer of many rounds with one optimizer, checkpoints and exact resume.

use burn::module::Module;
use burn::tensor::Device;
use rand::Rng;
use rlhf_core::train::RunOptions;
use rlhf_core::{Error, Result, Scorer};
use rlhf_data::Tokenizer;
use rlhf_models::{CausalLm, SamplingConfig, sample_texts};
use serde::{Deserialize, Serialize};

use crate::cache::RefCache;
use crate::trainer::{DpoConfig, DpoReport, Group, train_offline};

/// One round's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OnlineConfig {
    /// Responses sampled per prompt (at least 2).
    pub samples_per_prompt: usize,
    /// How to sample (it ends rows at the tokenizer's EOS and stop ids).
    pub sampling: SamplingConfig,
    /// The offline trainer's settings for the pass over the round's pairs.
    pub dpo: DpoConfig,
}

/// What a round did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OnlineReport {
    /// Mean score of all samples of the round (before the update).
    pub mean_score: f64,
    /// Pairs built (prompts whose best and worst sample differ in score).
    pub pairs: usize,
    /// Response tokens sampled.
    pub sampled_tokens: u64,
    /// The trainer's report.
    pub train: DpoReport,
}

/// For each prompt (its `n` samples consecutive in `scores` and `responses`), the rows of its
/// best and its worst sample ([`rlhf_core::best_and_worst`]: the first of equal maxima and of
/// equal minima). `None` when all its samples score the same (no preference to learn) or either
/// response is empty or missing; a trailing group of fewer than `n` is left out. Errors when
/// `n < 2` or on a score that is not finite.
pub fn best_and_worst(
    scores: &[f32],
    responses: &[Vec<u32>],
    n: usize,
) -> Result<Vec<Option<(usize, usize)>>> {
    let whole = scores.len() - scores.len() % n.max(1);
    let answered = |k: usize| responses.get(k).is_some_and(|r| !r.is_empty());
    Ok(rlhf_core::best_and_worst(&scores[..whole], n)?
        .into_iter()
        .enumerate()
        .map(|(i, pair)| {
            let (best, worst) = pair?;
            let (best, worst) = (i * n + best, i * n + worst);
            (answered(best) && answered(worst)).then_some((best, worst))
        })
        .collect())
}

/// One round on `prompts`: sample, score, pair best against worst, train. The reference stays
/// frozen; `policy` lives on an autodiff `device`.
#[allow(clippy::too_many_arguments)]
pub fn online_round(
    policy: CausalLm,
    reference: &CausalLm,
    prompts: &[String],
    tokenizer: &Tokenizer,
    scorer: &dyn Scorer,
    cfg: &OnlineConfig,
    rng: &mut impl Rng,
    device: &Device,
) -> Result<(CausalLm, OnlineReport)> {
    let n = cfg.samples_per_prompt;
    if n < 2 {
        return Err(Error::Config(
            "online round: samples_per_prompt must be ≥ 2".into(),
        ));
    }
    // each prompt n times, consecutively
    let repeated: Vec<&str> = prompts
        .iter()
        .flat_map(|p| std::iter::repeat_n(p.as_str(), n))
        .collect();
    // LoRA adapters merged into the sampling copy, as PPO's rollouts sample
    let sampler = policy.valid().materialize();
    let (responses, texts) = sample_texts(&sampler, tokenizer, &repeated, &cfg.sampling, rng)?;
    let text_refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let scores = rlhf_core::score_each(scorer, &repeated, &text_refs)?;
    let mut report = OnlineReport {
        mean_score: scores.iter().map(|&s| f64::from(s)).sum::<f64>() / scores.len() as f64,
        sampled_tokens: responses.iter().map(|r| r.len() as u64).sum(),
        ..OnlineReport::default()
    };
    let mut groups = Vec::new();
    for (i, pair) in best_and_worst(&scores, &responses, n)?
        .into_iter()
        .enumerate()
    {
        if let Some((best, worst)) = pair {
            groups.push(Group {
                prompt: tokenizer.encode_start(&prompts[i])?,
                responses: vec![responses[best].clone(), responses[worst].clone()],
                rewards: Some(vec![scores[best], scores[worst]]),
            });
        }
    }
    report.pairs = groups.len();
    if groups.is_empty() {
        return Ok((policy, report));
    }
    let quiet = RunOptions::quiet();
    let (policy, train) = train_offline(
        policy,
        reference,
        &groups,
        &[],
        &cfg.dpo,
        &RefCache::new(None),
        &quiet,
        device,
    )?;
    report.train = train;
    Ok((policy, report))
}
