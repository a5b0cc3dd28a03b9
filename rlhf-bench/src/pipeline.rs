//! One run of the pipeline: task → SFT → reward model → method → judge (`arith-steps` runs
//! its own verifier study, in [`crate::arith`]; a user's preference file runs the same stages
//! with its own labels and the RM as judge, in [`crate::user`]).
//!
//! The stages shared between runs (tokenizer, SFT models, reward models, the SFT baselines and
//! best-of-n candidates) are cached (see [`crate::cache`] and [`crate::stages`]); what a run
//! measures is described in [`crate::metrics`].

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use rlhf_core::train::fs::write_atomic;
use rlhf_core::{Error, Result};
use rlhf_data::Tokenizer;
use rlhf_data::tasks::{TldrSynth, with_eos};
use rlhf_models::TransformerConfig;
use rlhf_reward::RewardScorer;

use crate::compute::{Workload, flops};
use crate::config::{MethodKind, RewardSource, RunConfig};
use crate::judge::{
    Candidates, add_baseline, add_judged, best_of, best_of_by_gold, candidates, judge_gold,
    kl_per_prompt, proxy_scores, references, sample, sft_baseline,
};
use crate::method::{CurveJudge, MethodInputs, length_slope, optimise};
use crate::metrics::{items, names};
use crate::stages::{
    Prompts, RmInputs, RmStage, Sft, demonstrations, reward_model, sft_model, tokenizer,
};

/// What a run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// Metrics, by name (see [`crate::metrics::names`]). A value that is not finite (not
    /// measured) is left out of the JSON, which has no NaN.
    #[serde(serialize_with = "finite_only")]
    pub metrics: BTreeMap<String, f64>,
    /// Per-prompt values, by name (see [`crate::metrics::items`]); the draws of the intervals.
    #[serde(default)]
    pub items: BTreeMap<String, Vec<f64>>,
    /// The method's learning curve (one entry per iteration: `objective/scores`, `kl`, the
    /// `eval/*` entries every few iterations, cumulative `flops`), empty for methods without one.
    pub curve: Vec<BTreeMap<String, f64>>,
    /// Wall seconds of this call (cached stages cost nothing).
    pub wall_seconds: f64,
}

/// Serialises the finite entries of `map`.
fn finite_only<S: serde::Serializer>(
    map: &BTreeMap<String, f64>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.collect_map(map.iter().filter(|(_, v)| v.is_finite()))
}

/// Claims `out` for a run of `cfg`: writes `out/config.json` on the first call, and afterwards
/// accepts only the same configuration, so a run started again resumes its own checkpoints and
/// never another configuration's (a different one is refused, naming the directory).
pub fn claim_run_dir(out: &Path, cfg: &RunConfig) -> Result<()> {
    let path = out.join("config.json");
    let json = serde_json::to_string_pretty(cfg).map_err(|e| Error::Record(e.to_string()))?;
    match std::fs::read_to_string(&path) {
        Ok(existing) => {
            let same = serde_json::from_str::<RunConfig>(&existing).is_ok_and(|c| c == *cfg);
            if same {
                Ok(())
            } else {
                Err(Error::Config(format!(
                    "{} holds a run of another configuration (its config.json differs): choose another --out, or delete it to start over",
                    out.display()
                )))
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
            write_atomic(&path, json.as_bytes())
        }
        Err(e) => Err(Error::io(&path, e)),
    }
}

/// Runs `cfg`, caching shared stages under `cache`, writing the method's own files (metrics,
/// checkpoints) under `work` (resumed if present).
// One piece, over 80 lines: the stages in order (task, SFT, the SFT baselines, RM, method,
// judge), each a call into `stages`, `judge` or `method`; what stays here is the glue that hands
// each stage's outputs on to the later ones and records their metrics in `m` and `it`, and the
// judge's three cases (the SFT policy, best-of-n, a trained policy), which read most of them.
pub fn run(cfg: &RunConfig, cache: &Path, work: &Path) -> Result<RunResult> {
    cfg.validate()?;
    match cfg.task.name.as_str() {
        "arith-steps" => return crate::arith::run_arith(cfg, cache, work),
        "preferences" => return crate::user::run_preferences(cfg, cache, work),
        _ => {}
    }
    let start = Instant::now();
    let device = rlhf_core::parse_device(&cfg.device)?.autodiff();
    let task = cfg.task.tldr.task();
    // every stage below is built on these demonstrations
    let cache = &cache.join(cfg.task.tldr.cache_dir());
    let mut m: BTreeMap<String, f64> = BTreeMap::new();
    let mut it: BTreeMap<String, Vec<f64>> = BTreeMap::new();

    // the task: demonstrations and a tokenizer trained on them
    let demos = demonstrations(&task, cfg.task.demos, cfg.seed);
    let tok = tokenizer(cfg, &task, cache)?;
    let sft_data: Vec<(Vec<u32>, Vec<u32>)> = demos
        .iter()
        .map(|(p, d)| Ok((tok.encode(p)?, tok.encode(&with_eos(d))?)))
        .collect::<Result<_>>()?;

    // SFT of the policy (the reference, TL;DR detail 11)
    let sft = sft_model(cfg, &cfg.sft.policy_size, &tok, &sft_data, cache, &device)?;
    m.insert(
        names::PARAMS_POLICY.into(),
        sft.shape.non_embedding_params() as f64,
    );
    m.insert(names::TOKENS_SFT.into(), sft.tokens);
    m.insert(names::FLOPS_SFT.into(), sft.flops);

    // the judge's prompts, their references, and the SFT baselines on them
    let judge_prompts = Prompts::Judge.first(&task, cfg.seed, cfg.task.eval_prompts);
    let refs = references(&task, &judge_prompts, cfg.seed);
    let baseline = sft_baseline(cfg, &task, &tok, &sft, &judge_prompts, &refs, cache)?;

    // the reward model, trained on labelled pairs of SFT samples
    let rm_stage = if cfg.method.kind.needs_rm() {
        let stage = train_rm(cfg, &task, &tok, &sft, &sft_data, cache, &device)?;
        add_rm_metrics(&stage, &mut m, &mut it);
        Some(stage)
    } else {
        None
    };
    let rm = rm_stage
        .as_ref()
        .map(|s| RewardScorer::new(s.rm.clone(), tok.clone(), &device));
    add_baseline(
        &baseline,
        &refs,
        &judge_prompts,
        rm.as_ref(),
        &mut m,
        &mut it,
    )?;
    let length_slope = match (&rm, cfg.method.reward) {
        (Some(rm), RewardSource::RmLength) => {
            let k = baseline.samples.k;
            let proxy = proxy_scores(rm, &judge_prompts, &baseline.samples.texts, k)?;
            let slope = length_slope(&baseline.samples.texts, &proxy, &tok.eos_text());
            m.insert(names::LENGTH_SLOPE.into(), slope.unwrap_or(f64::NAN));
            slope
        }
        _ => None,
    };

    // the method
    let train_prompts = Prompts::RlTrain.first(&task, cfg.seed, cfg.task.train_prompts);
    let mut query_length = 1;
    for p in train_prompts.iter().chain(&judge_prompts) {
        query_length = query_length.max(tok.encode(p)?.len());
    }
    let method_start = Instant::now();
    let mut curve: Vec<BTreeMap<String, f64>> = Vec::new();
    let inputs = MethodInputs {
        sft: &sft.model,
        policy_shape: &sft.shape,
        rm: rm_stage.as_ref(),
        tok: &tok,
        train_prompts: &train_prompts,
        sft_data: &sft_data,
        query_length,
        eval_pairs: &[],
        curve: Some(CurveJudge {
            task: &task,
            prompts: &judge_prompts,
            refs: &refs,
        }),
        length_slope,
    };
    let policy = optimise(cfg, &inputs, work, &device, &mut m, &mut curve)?;
    m.insert(
        names::TIME_METHOD.into(),
        method_start.elapsed().as_secs_f64(),
    );

    // the judge
    let j = &cfg.judge;
    let eos = tok.eos_text();
    match cfg.method.kind {
        MethodKind::Sft => {
            // the policy is the SFT model: its judged samples are the baseline's
            add_judged(
                &baseline.judged,
                None,
                &baseline,
                j.samples,
                &mut m,
                &mut it,
            );
            m.insert(names::KL.into(), 0.0);
        }
        MethodKind::BestOfN => {
            let n = cfg.method.best_of_n;
            let rm = rm.as_ref().expect("best-of-n reads the RM");
            let c = candidates(
                cfg,
                &tok,
                &sft,
                rm,
                &rm_stage.as_ref().expect("an RM").key,
                &judge_prompts,
                cfg.method.best_of_n_max.max(n),
                cache,
            )?;
            let (picks, proxy) = best_of(&c, n);
            let judged = judge_gold(&task, &judge_prompts, &refs, &picks, &eos);
            add_judged(&judged, Some(&proxy), &baseline, picks.k, &mut m, &mut it);
            // what a reward model without error would pick among the same candidates
            let (gold_picks, _) = best_of_by_gold(&c, n, &task, &judge_prompts);
            let by_gold = judge_gold(&task, &judge_prompts, &refs, &gold_picks, &eos);
            m.insert(
                names::GOLD_PICK.into(),
                crate::stats::mean(&by_gold.gold_per_prompt),
            );
            m.insert(
                names::GOLD_PICK_WIN_VS_REFERENCES.into(),
                crate::stats::mean(&by_gold.win_per_prompt),
            );
            // the analytic KL of best-of-n to the sampling policy
            m.insert(
                names::KL.into(),
                (n as f64).ln() - (n as f64 - 1.0) / n as f64,
            );
            let rm_shape = &rm_stage.as_ref().expect("an RM").shape;
            let (tokens, flops) = best_of_n_cost(&c, n, query_length, &sft.shape, rm_shape);
            m.insert(names::TOKENS_METHOD.into(), tokens as f64);
            m.insert(names::FLOPS_METHOD.into(), flops as f64);
        }
        _ => {
            let s = sample(
                &policy,
                &tok,
                &judge_prompts,
                j.samples,
                j.temperature,
                j.max_new_tokens,
                cfg.seed.wrapping_add(12),
            )?;
            let judged = judge_gold(&task, &judge_prompts, &refs, &s, &eos);
            let proxy = match &rm {
                Some(rm) => Some(proxy_scores(rm, &judge_prompts, &s.texts, s.k)?),
                None => None,
            };
            add_judged(&judged, proxy.as_deref(), &baseline, s.k, &mut m, &mut it);
            let kl = kl_per_prompt(
                &policy,
                &sft.model,
                &tok,
                &judge_prompts,
                &s,
                j.temperature,
                &device,
            )?;
            m.insert(names::KL.into(), crate::stats::mean(&kl));
        }
    }
    m.entry(names::FLOPS_METHOD.into()).or_insert(0.0);
    m.entry(names::TOKENS_METHOD.into()).or_insert(0.0);
    m.insert(names::MEMORY_PEAK.into(), peak_memory_bytes());
    Ok(RunResult {
        metrics: m,
        items: it,
        curve,
        wall_seconds: start.elapsed().as_secs_f64(),
    })
}

/// The reward model of `cfg.rm`, trained on labelled pairs of SFT samples: the policy's own
/// (`sft`), or every size's of `rm.sample_from` (one RM for a whole policy-size axis); its
/// backbone is the SFT model of `rm.size`.
fn train_rm(
    cfg: &RunConfig,
    task: &TldrSynth,
    tok: &Tokenizer,
    sft: &Sft,
    sft_data: &[(Vec<u32>, Vec<u32>)],
    cache: &Path,
    device: &Device,
) -> Result<RmStage> {
    let backbone = sft_model(cfg, &cfg.rm.size, tok, sft_data, cache, device)?;
    let others = cfg
        .rm
        .sample_from
        .iter()
        .map(|s| sft_model(cfg, s, tok, sft_data, cache, device))
        .collect::<Result<Vec<_>>>()?;
    let samplers: Vec<&Sft> = if others.is_empty() {
        vec![sft]
    } else {
        others.iter().collect()
    };
    reward_model(
        cfg,
        &RmInputs {
            task,
            tok,
            samplers: &samplers,
            backbone: &backbone,
            sft_data,
        },
        cache,
        device,
    )
}

/// The RM's held-out accuracies, labeller agreement, size and cost, and its per-pair gold
/// agreement.
fn add_rm_metrics(
    stage: &RmStage,
    m: &mut BTreeMap<String, f64>,
    it: &mut BTreeMap<String, Vec<f64>>,
) {
    m.insert(names::RM_ACCURACY.into(), stage.eval_accuracy);
    m.insert(names::RM_GOLD_ACCURACY.into(), stage.eval_gold_accuracy);
    m.insert(
        names::RM_LABELLER_AGREEMENT.into(),
        stage.labeller_agreement,
    );
    m.insert(
        names::PARAMS_RM.into(),
        stage.shape.non_embedding_params() as f64,
    );
    m.insert(names::FLOPS_RM.into(), stage.flops);
    m.insert(names::TOKENS_RM.into(), stage.tokens);
    it.insert(items::RM_GOLD_CORRECT.into(), stage.gold_correct.clone());
}

/// Best-of-`n`'s tokens and FLOPs: the tokens (query and response) of `n` candidates per prompt,
/// measured on all `c.n_max`, each a forward pass of the policy and of the RM.
fn best_of_n_cost(
    c: &Candidates,
    n: usize,
    query_length: usize,
    policy: &TransformerConfig,
    rm: &TransformerConfig,
) -> (u64, u64) {
    let tokens: u64 = c
        .ids
        .iter()
        .map(|r| (query_length + r.len()) as u64)
        .sum::<u64>()
        / c.n_max as u64
        * n as u64;
    let flops =
        flops(policy, Workload::Forward { tokens }) + flops(rm, Workload::Forward { tokens });
    (tokens, flops)
}

/// The process's peak resident memory (Linux `VmHWM`), in bytes; NaN elsewhere.
pub fn peak_memory_bytes() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb * 1024.0)
}
