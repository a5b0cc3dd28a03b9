//! The method stage: from the SFT policy to the optimised one, by PPO, GRPO, RLOO, REINFORCE++
//! (on-policy, against the RM or the RM's length-only part), DPO or EXO (offline, on the RM's
//! labelled pairs), online DPO (`online.rs`), or nothing (SFT and best-of-n are judged as they
//! are).
//!
//! An on-policy run logs, after its first iteration and every `judge.eval_every` iterations, the
//! gold score, KL, RM score and length of one sample on each of the first `judge.curve_prompts`
//! held-out prompts (the same draws at every evaluation): the learning curve that matched-KL and
//! matched-compute comparisons and the over-optimisation curves are read from. The first point
//! gives a fast-moving run (a large policy) a measured KL low enough to share with a slow one.

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::Device;

use rlhf_core::train::metrics::{names as train_names, read_metrics};
use rlhf_core::train::{Metrics, OptimizerConfig, seeded};
use rlhf_core::{Result, Scorer};
use rlhf_data::Tokenizer;
use rlhf_data::tasks::{GoldScorer, TldrSynth};
use rlhf_dpo::{DpoConfig, Group, OfflineLoss, RefCache, train_offline};
use rlhf_models::{CausalLm, ScalarModel, TransformerConfig};
use rlhf_ppo::{
    AdvantageEstimator, Eval, EvalLine, PolicyAndValue, PpoConfig, PpoInputs, train_ppo,
};
use rlhf_reward::{LengthScorer, RankedExample, RewardModel, RewardScorer};

use crate::cache::quiet_in;
use crate::compute::{Workload, flops, ppo_iteration_flops};
use crate::config::{MethodKind, RewardSource, RunConfig};
use crate::judge::{judge_gold, kl_per_prompt, proxy_scores, sample_to_the_end};
use crate::metrics::{curve, names};
use crate::stages::RmStage;
use crate::stats::mean;

/// What the method stage reads.
pub(crate) struct MethodInputs<'a> {
    /// The SFT policy: the start and the reference.
    pub sft: &'a CausalLm,
    /// Its shape (for the FLOPs).
    pub policy_shape: &'a TransformerConfig,
    /// The reward model and its pairs (every method but `sft` reads it).
    pub rm: Option<&'a RmStage>,
    /// The tokenizer.
    pub tok: &'a Tokenizer,
    /// Prompts of the on-policy methods.
    pub train_prompts: &'a [String],
    /// The SFT demonstrations (PPO's optional SFT term reads them).
    pub sft_data: &'a [(Vec<u32>, Vec<u32>)],
    /// Longest prompt, in tokens.
    pub query_length: usize,
    /// Held-out pairs the offline methods report their reward accuracy on (may be empty).
    pub eval_pairs: &'a [RankedExample],
    /// The learning curve's judge: the gold task and held-out prompts with their references
    /// (`None`: no gold, as on a user's preference file).
    pub curve: Option<CurveJudge<'a>>,
    /// The slope of the RM's score on response length (words), for `RewardSource::RmLength`.
    pub length_slope: Option<f64>,
}

/// What the learning curve's evaluations read.
pub(crate) struct CurveJudge<'a> {
    /// The gold task.
    pub task: &'a TldrSynth,
    /// Held-out prompts (the first `judge.curve_prompts` are used).
    pub prompts: &'a [String],
    /// Their references.
    pub refs: &'a [(String, f64)],
}

/// The method stage: trains the policy from the SFT model as `cfg.method` says (or returns the
/// SFT model for `sft` and `best_of_n`), adding its metrics to `m` and its learning curve to
/// `curve`; checkpoints and metrics go under `work`.
pub(crate) fn optimise(
    cfg: &RunConfig,
    inp: &MethodInputs<'_>,
    work: &Path,
    device: &Device,
    m: &mut BTreeMap<String, f64>,
    curve_out: &mut Vec<BTreeMap<String, f64>>,
) -> Result<CausalLm> {
    match cfg.method.kind {
        MethodKind::Sft | MethodKind::BestOfN => Ok(inp.sft.clone()),
        MethodKind::Dpo | MethodKind::Exo => offline(cfg, inp, work, device, m),
        MethodKind::OnlineDpo => crate::online::online_dpo(cfg, inp, work, device, m, curve_out),
        MethodKind::Ppo | MethodKind::Grpo | MethodKind::Rloo | MethodKind::ReinforcePp => {
            on_policy(cfg, inp, work, device, m, curve_out)
        }
    }
}

/// DPO or EXO on the RM's labelled pairs.
fn offline(
    cfg: &RunConfig,
    inp: &MethodInputs<'_>,
    work: &Path,
    device: &Device,
    m: &mut BTreeMap<String, f64>,
) -> Result<CausalLm> {
    let stage = inp.rm.expect("DPO reads the RM's pairs");
    let to_groups = |v: &[RankedExample]| -> Vec<Group> {
        v.iter()
            .map(|e| Group {
                prompt: e.prompt.clone(),
                responses: e.responses.clone(),
                rewards: None,
            })
            .collect()
    };
    let (groups, eval_groups) = (to_groups(&stage.pairs), to_groups(inp.eval_pairs));
    let dcfg = DpoConfig {
        loss: if cfg.method.kind == MethodKind::Dpo {
            OfflineLoss::Dpo {
                label_smoothing: 0.0,
            }
        } else {
            OfflineLoss::ExoPref { eps: 1e-3 }
        },
        beta: cfg.method.dpo_beta,
        epochs: cfg.method.dpo_epochs,
        batch_size: 16,
        optimizer: OptimizerConfig {
            lr: cfg.method.dpo_lr,
            ..OptimizerConfig::default()
        },
        seed: cfg.seed,
        ..DpoConfig::default()
    };
    let tokens: u64 = groups
        .iter()
        .flat_map(|g| {
            g.responses
                .iter()
                .map(|r| (g.prompt.len() + r.len()) as u64)
        })
        .sum();
    let trained = tokens * dcfg.epochs as u64;
    m.insert(names::TOKENS_METHOD.into(), trained as f64);
    // training, and the reference's log-probabilities once
    m.insert(
        names::FLOPS_METHOD.into(),
        (flops(inp.policy_shape, Workload::Train { tokens: trained })
            + flops(inp.policy_shape, Workload::Forward { tokens })) as f64,
    );
    let (policy, report) = train_offline(
        inp.sft.clone(),
        inp.sft,
        &groups,
        &eval_groups,
        &dcfg,
        &RefCache::new(None),
        &quiet_in(work.join("dpo")),
        device,
    )?;
    m.insert(names::STEPS.into(), report.steps as f64);
    if !eval_groups.is_empty() {
        m.insert(
            names::EVAL_REWARD_ACCURACY.into(),
            report.eval.reward_accuracy,
        );
    }
    Ok(policy)
}

/// One point of the learning curve: gold, KL, RM score and length of one sample per curve
/// prompt (seeded alike at every call, so successive points differ by the policy only). A failed
/// evaluation leaves a gap in the curve (gold and KL NaN), not a wrong value, and the run goes
/// on. A signal does not cut it short: it runs inside a trainer's iteration, which stops right
/// after it with the point logged.
pub(crate) fn curve_point(
    cfg: &RunConfig,
    judge: &CurveJudge<'_>,
    inp: &MethodInputs<'_>,
    rm: Option<&RewardScorer>,
    policy: &CausalLm,
    device: &Device,
) -> Metrics {
    let measure = || -> Result<Metrics> {
        let n = cfg.judge.curve_prompts.min(judge.prompts.len());
        let prompts = &judge.prompts[..n];
        let j = &cfg.judge;
        let s = sample_to_the_end(
            policy,
            inp.tok,
            prompts,
            j.temperature,
            j.max_new_tokens,
            cfg.seed.wrapping_add(17),
        )?;
        let judged = judge_gold(
            judge.task,
            prompts,
            &judge.refs[..n],
            &s,
            &inp.tok.eos_text(),
        );
        let kl = kl_per_prompt(policy, inp.sft, inp.tok, prompts, &s, j.temperature, device)?;
        let mut out = vec![
            (curve::GOLD, mean(&judged.gold_per_prompt)),
            (curve::KL, mean(&kl)),
            (curve::LENGTH, mean(&judged.length_per_prompt)),
        ];
        if let Some(rm) = rm {
            out.push((curve::PROXY, mean(&proxy_scores(rm, prompts, &s.texts, 1)?)));
        }
        Ok(out)
    };
    measure().unwrap_or_else(|e| {
        tracing::warn!("learning-curve evaluation failed: {e}");
        vec![(curve::GOLD, f64::NAN), (curve::KL, f64::NAN)]
    })
}

/// PPO, GRPO, RLOO or REINFORCE++ against the RM (or its length-only part).
fn on_policy(
    cfg: &RunConfig,
    inp: &MethodInputs<'_>,
    work: &Path,
    device: &Device,
    m: &mut BTreeMap<String, f64>,
    curve_out: &mut Vec<BTreeMap<String, f64>>,
) -> Result<CausalLm> {
    let stage = inp.rm.expect("on-policy methods read the RM");
    let mut pcfg = cfg.method.ppo.clone();
    pcfg.seed = cfg.seed;
    pcfg.query_length = inp.query_length;
    pcfg.advantage = advantage_for(cfg.method.kind);
    let rm_scorer = RewardScorer::new(stage.rm.clone(), inp.tok.clone(), device);
    let scorer = method_reward(cfg, stage, inp, device)?;
    let value = initial_critic(&pcfg, &stage.rm, inp.sft, cfg.seed, device);
    let eval = |policy: &CausalLm, _: &CausalLm| -> Result<EvalLine> {
        Ok(inp
            .curve
            .as_ref()
            .map_or_else(Vec::new, |judge| {
                curve_point(cfg, judge, inp, Some(&rm_scorer), policy, device)
            })
            .into())
    };
    let inputs = PpoInputs {
        reference: inp.sft,
        scorer: scorer.as_ref(),
        tokenizer: inp.tok,
        prompts: inp.train_prompts,
        demonstrations: inp.sft_data,
        eval: inp.curve.as_ref().map(|_| &eval as &Eval),
        eval_every: cfg.judge.eval_every as u64,
        eval_first: true,
    };
    let dir = work.join("ppo");
    let (models, report) = train_ppo(
        PolicyAndValue::new(inp.sft.clone(), value),
        &inputs,
        &pcfg,
        &quiet_in(dir.clone()),
        device,
    )?;
    let lines = read_curve(&dir.join("metrics.jsonl"))?;
    let mean_len = lines
        .iter()
        .filter_map(|c| c.get(train_names::COMPLETIONS_MEAN_LENGTH))
        .sum::<f64>()
        / lines.len().max(1) as f64;
    let per_iteration = iteration_flops(&pcfg, inp, stage, mean_len.round() as u64);
    for mut line in lines {
        let step = line.get("step").copied().unwrap_or(0.0);
        line.insert(curve::FLOPS.into(), per_iteration as f64 * step);
        curve_out.push(line);
    }
    m.insert(
        names::FLOPS_METHOD.into(),
        (per_iteration * report.iterations) as f64,
    );
    m.insert(
        names::TOKENS_METHOD.into(),
        (report.iterations
            * pcfg.batch_size() as u64
            * (inp.query_length as u64 + mean_len.round() as u64)
            * pcfg.ppo_epochs as u64) as f64,
    );
    m.insert(names::ITERATIONS.into(), report.iterations as f64);
    m.insert(names::FINAL_KL_COEF.into(), report.final_kl_coef);
    Ok(models.policy)
}

/// The advantage estimator that makes `kind` the method it is.
pub(crate) fn advantage_for(kind: MethodKind) -> AdvantageEstimator {
    match kind {
        MethodKind::Ppo => AdvantageEstimator::Gae,
        MethodKind::Grpo => AdvantageEstimator::Grpo,
        MethodKind::Rloo => AdvantageEstimator::Rloo,
        _ => AdvantageEstimator::ReinforcePp,
    }
}

/// The reward the policy is trained on, as `method.reward` says: the RM's score, the RM's
/// length-only part (its slope on length), or the gold score.
fn method_reward<'a>(
    cfg: &RunConfig,
    stage: &RmStage,
    inp: &MethodInputs<'a>,
    device: &Device,
) -> Result<Box<dyn Scorer + 'a>> {
    Ok(match cfg.method.reward {
        RewardSource::Rm => Box::new(RewardScorer::new(stage.rm.clone(), inp.tok.clone(), device)),
        RewardSource::RmLength => {
            let slope = inp.length_slope.ok_or_else(|| {
                rlhf_core::Error::Config(
                    "the length-only reward needs the RM's length slope".into(),
                )
            })?;
            Box::new(LengthScorer::new(slope as f32, inp.tok.eos_text()))
        }
        RewardSource::Gold => {
            let judge = inp.curve.as_ref().ok_or_else(|| {
                rlhf_core::Error::Config("the gold reward needs a task with a gold scorer".into())
            })?;
            Box::new(GoldScorer(judge.task))
        }
    })
}

/// The critic, when the estimator needs one. TL;DR detail 6: it starts from the reward model
/// `rm` (or, switched off, from the SFT policy with a fresh head seeded by `seed + 8`).
pub(crate) fn initial_critic(
    pcfg: &PpoConfig,
    rm: &RewardModel,
    sft: &CausalLm,
    seed: u64,
    device: &Device,
) -> Option<ScalarModel> {
    pcfg.advantage.needs_critic().then(|| {
        if pcfg.value_from_reward_model {
            rm.to_value_model()
        } else {
            seeded(device, seed.wrapping_add(8), || {
                ScalarModel::from_backbone(sft.clone())
            })
        }
    })
}

/// The critic's shape, when the estimator needs one: the reward model's, or (switched off, see
/// [`initial_critic`]) the policy's.
pub(crate) fn critic_shape<'a>(
    pcfg: &PpoConfig,
    rm: &'a TransformerConfig,
    policy: &'a TransformerConfig,
) -> Option<&'a TransformerConfig> {
    let shape = if pcfg.value_from_reward_model {
        rm
    } else {
        policy
    };
    pcfg.advantage.needs_critic().then_some(shape)
}

/// The numeric fields of each line of a run's `metrics.jsonl`: the learning curve.
pub(crate) fn read_curve(path: &Path) -> Result<Vec<BTreeMap<String, f64>>> {
    Ok(read_metrics(path)?
        .into_iter()
        .map(|line| {
            line.into_iter()
                .filter_map(|(k, v)| v.as_f64().map(|v| (k, v)))
                .collect()
        })
        .collect())
}

/// FLOPs of one iteration of `pcfg` with responses of `response_len` tokens: sampling, the
/// reference, RM and critic forwards, and the epochs of updates (the critic has the RM's shape
/// when it starts from the RM, the policy's when not).
fn iteration_flops(
    pcfg: &PpoConfig,
    inp: &MethodInputs<'_>,
    stage: &RmStage,
    response_len: u64,
) -> u64 {
    let critic = critic_shape(pcfg, &stage.shape, inp.policy_shape);
    ppo_iteration_flops(
        inp.policy_shape,
        &stage.shape,
        critic,
        pcfg.batch_size() as u64,
        inp.query_length as u64,
        response_len,
        pcfg.ppo_epochs as u64,
    )
}

/// The least-squares slope of the RM's score on response length in words (the EOS text
/// removed) over `texts` of `prompts` (`k` each) scored `proxy`: the length-only part of the RM.
pub(crate) fn length_slope(texts: &[String], proxy: &[f64], eos_text: &str) -> Option<f64> {
    let pts: Vec<(f64, f64)> = texts
        .iter()
        .zip(proxy)
        .map(|(t, p)| {
            let body = t.strip_suffix(eos_text).unwrap_or(t);
            (body.split_whitespace().count() as f64, *p)
        })
        .collect();
    crate::fits::line(&pts).map(|l| l.slope)
}
