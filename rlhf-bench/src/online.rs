//! The `online_dpo` method: DPO on the policy's own samples, judged as the RM's pairs are. Each
//! round samples two responses to each of its prompts, the simulated labeller (its temperature
//! calibrated to `rm.labeller_agreement` on the RM's pairs) prefers one, and the policy takes DPO
//! steps on the round's pairs. The rounds together ask the labeller for `rm.pairs` judgements,
//! the RM's and the offline methods' label budget, so the method differs from offline DPO by
//! where its pairs come from (the current policy, not the SFT policy) and from PPO by having no
//! reward model between the labeller and the policy.

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::Device;

use rlhf_core::train::metrics::names as train_names;
use rlhf_core::train::{Metrics, OptimizerConfig};
use rlhf_core::{Error, Result};
use rlhf_data::tasks::{Labeller, LabellerScorer};
use rlhf_dpo::{OfflineLoss, OnlineDpoConfig, OnlineDpoInputs, train_online_dpo};
use rlhf_models::{CausalLm, SamplingConfig};
use rlhf_reward::RewardScorer;

use crate::cache::quiet_in;
use crate::compute::{Workload, flops};
use crate::config::RunConfig;
use crate::method::{MethodInputs, curve_point, read_curve};
use crate::metrics::{curve, names};
use crate::stages::RmStage;

/// Pairs per optimizer step, as the offline methods' batch.
const PAIRS_PER_STEP: usize = 16;

/// Online DPO from the SFT policy (the reference too) for `method.online_rounds` rounds, adding
/// its metrics to `m` and its learning curve (an evaluation after every round) to `curve_out`.
pub(crate) fn online_dpo(
    cfg: &RunConfig,
    inp: &MethodInputs<'_>,
    work: &Path,
    device: &Device,
    m: &mut BTreeMap<String, f64>,
    curve_out: &mut Vec<BTreeMap<String, f64>>,
) -> Result<CausalLm> {
    let stage = inp
        .rm
        .expect("online DPO's labeller is calibrated on the RM's pairs");
    let judge = inp
        .curve
        .as_ref()
        .ok_or_else(|| Error::Config("online_dpo needs a task with a gold score".into()))?;
    let scorer = LabellerScorer::new(judge.task, labeller(cfg, stage)?, cfg.seed.wrapping_add(23));
    let ocfg = online_config(cfg);
    let rm_scorer = RewardScorer::new(stage.rm.clone(), inp.tok.clone(), device);
    let eval = |policy: &CausalLm| -> Metrics {
        curve_point(cfg, judge, inp, Some(&rm_scorer), policy, device)
    };
    let inputs = OnlineDpoInputs {
        reference: inp.sft,
        scorer: &scorer,
        tokenizer: inp.tok,
        prompts: inp.train_prompts,
        eval: Some(&eval),
        eval_every: 1,
    };
    let dir = work.join("online-dpo");
    let (policy, report) = train_online_dpo(
        inp.sft.clone(),
        &inputs,
        &ocfg,
        &quiet_in(dir.clone()),
        device,
    )?;
    let (total_flops, total_tokens) = add_compute(
        read_curve(&dir.join("metrics.jsonl"))?,
        &ocfg,
        inp,
        curve_out,
    );
    m.insert(names::FLOPS_METHOD.into(), total_flops);
    m.insert(names::TOKENS_METHOD.into(), total_tokens);
    m.insert(names::ITERATIONS.into(), report.rounds as f64);
    // the optimizer steps of rounds before a resume are not known here: the count is of a run
    // that began at the start
    if report.rounds_this_run == report.rounds {
        m.insert(names::STEPS.into(), report.steps_this_run as f64);
    }
    Ok(policy)
}

/// The labeller of the RM's pairs: calibrated to `rm.labeller_agreement` on their gold scores.
fn labeller(cfg: &RunConfig, stage: &RmStage) -> Result<Labeller> {
    let gold_pairs: Vec<(f64, f64)> = stage
        .pairs
        .iter()
        .filter_map(|p| p.gold.as_ref().map(|g| (g[0], g[1])))
        .collect();
    Labeller::calibrate(&gold_pairs, cfg.rm.labeller_agreement).ok_or_else(|| {
        Error::Config("online_dpo: the labeller cannot reach the requested agreement".into())
    })
}

/// The rounds: `rm.pairs` labels over `method.online_rounds` rounds of two samples per prompt
/// at the RM's pairs' temperature, DPO steps of [`PAIRS_PER_STEP`] pairs at `method.dpo_beta` and
/// `method.dpo_lr`.
fn online_config(cfg: &RunConfig) -> OnlineDpoConfig {
    let rounds = cfg.method.online_rounds.max(1);
    let prompts_per_round = cfg.rm.pairs.div_ceil(rounds);
    OnlineDpoConfig {
        rounds,
        prompts_per_round,
        samples_per_prompt: 2,
        max_prompt_length: None,
        sampling: SamplingConfig {
            max_new_tokens: cfg.judge.max_new_tokens,
            temperature: 1.0,
            ..SamplingConfig::default()
        },
        missing_eos_penalty: None,
        loss: OfflineLoss::Dpo {
            label_smoothing: 0.0,
        },
        beta: cfg.method.dpo_beta,
        epochs: 1,
        minibatches: prompts_per_round.div_ceil(PAIRS_PER_STEP),
        optimizer: OptimizerConfig {
            lr: cfg.method.dpo_lr,
            ..OptimizerConfig::default()
        },
        seed: cfg.seed,
        ..OnlineDpoConfig::default()
    }
}

/// Adds each round's cumulative FLOPs to its line of the learning curve and moves the lines to
/// `curve_out`: sampling the round's responses, then the reference's forward and one update on
/// its pairs. Returns the FLOPs and the trained tokens of all rounds.
fn add_compute(
    lines: Vec<BTreeMap<String, f64>>,
    ocfg: &OnlineDpoConfig,
    inp: &MethodInputs<'_>,
    curve_out: &mut Vec<BTreeMap<String, f64>>,
) -> (f64, f64) {
    let episodes = (ocfg.prompts_per_round * ocfg.samples_per_prompt) as u64;
    let (mut total_flops, mut total_tokens) = (0.0, 0.0);
    for mut line in lines {
        let at = |key: &str, default: f64| line.get(key).copied().unwrap_or(default);
        let response = at(train_names::COMPLETIONS_MEAN_LENGTH, 0.0).round() as u64;
        let sequence = inp.query_length as u64 + response;
        let sampled = episodes * sequence;
        // two responses per pair; the pair share is of the round's prompts
        let trained =
            (at(train_names::ONLINE_PAIR_SHARE, 1.0) * ocfg.prompts_per_round as f64 * 2.0).round()
                as u64
                * sequence;
        let forward = flops(
            inp.policy_shape,
            Workload::Forward {
                tokens: sampled + trained,
            },
        );
        let train = flops(inp.policy_shape, Workload::Train { tokens: trained });
        total_flops += (forward + train) as f64;
        total_tokens += trained as f64;
        line.insert(curve::FLOPS.into(), total_flops);
        curve_out.push(line);
    }
    (total_flops, total_tokens)
}
