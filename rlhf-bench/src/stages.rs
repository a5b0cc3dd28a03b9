//! The shared stages of a `tldr-synth` run, each cached (see [`crate::cache`]): the prompts of a
//! seed, the tokenizer, the SFT models and the reward models with their labelled pairs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use burn::module::Module;
use burn::tensor::Device;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use rlhf_core::train::{LrSchedule, OptimizerConfig, RunOptions, seeded, try_seeded};
use rlhf_core::{Error, Result};
use rlhf_data::tasks::{Labeller, Task, TldrSynth};
use rlhf_data::{Split, Tokenizer};
use rlhf_models::{
    CausalLm, SamplingConfig, SftConfig, TransformerConfig, load_pretrained, sample_texts,
    save_pretrained, train_sft,
};
use rlhf_reward::{
    RankedExample, RewardModel, RewardSettings, RmConfig, normalise, score_ranked,
    train_reward_model,
};

use crate::cache::{
    cached_dir, finish_stage_run, read_json, stage_run, stop_if_interrupted, write_json,
};
use crate::compute::{Workload, flops};
use crate::config::{RunConfig, model_shape};

/// What a seed's prompts are for. Every use draws from its own range of the task's prompt
/// indices, and every seed from its own ranges, so the seeds of a sweep are independent draws of
/// prompts as well as of training (the premise of the intervals in [`crate::stats`]).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Prompts {
    /// SFT demonstrations.
    Demos,
    /// Prompts of the on-policy methods.
    RlTrain,
    /// Prompts of the RM's comparison pairs.
    RmPairs,
    /// Held-out prompts the judge samples on.
    Judge,
    /// Held-out prompts of the RM's evaluation pairs.
    RmEval,
    /// Held-out prompts of the out-of-distribution test (`arith-steps`: longer chains).
    Ood,
}

impl Prompts {
    /// Prompt `i` of this use for `seed`.
    pub(crate) fn get(self, task: &dyn Task, seed: u64, i: u64) -> String {
        let (split, offset) = match self {
            Prompts::Demos => (Split::Train, 0),
            Prompts::RlTrain => (Split::Train, 1 << 24),
            Prompts::RmPairs => (Split::Train, 2 << 24),
            Prompts::Judge => (Split::Eval, 0),
            Prompts::RmEval => (Split::Eval, 1 << 24),
            Prompts::Ood => (Split::Test, 0),
        };
        task.prompt(split, (seed << 32) + offset + i)
    }

    /// Prompts `0..n` of this use for `seed`.
    pub(crate) fn first(self, task: &dyn Task, seed: u64, n: usize) -> Vec<String> {
        (0..n as u64).map(|i| self.get(task, seed, i)).collect()
    }
}

/// `count` demonstrations of `seed`: its prompts and the demonstrator's noisy summaries.
pub(crate) fn demonstrations(task: &TldrSynth, count: usize, seed: u64) -> Vec<(String, String)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Prompts::Demos
        .first(task, seed, count)
        .into_iter()
        .map(|p| {
            let d = task.demonstrate(&p, &mut rng);
            (p, d)
        })
        .collect()
}

/// The tokenizer: BPE on the demonstrations of seed 0, shared by every seed and size. It is
/// loaded once per process, so that the points a process runs share what it has encoded (every
/// point encodes its demonstrations and prompts; see `Tokenizer::encode`).
pub(crate) fn tokenizer(cfg: &RunConfig, task: &TldrSynth, cache: &Path) -> Result<Tokenizer> {
    static LOADED: Mutex<BTreeMap<PathBuf, Tokenizer>> = Mutex::new(BTreeMap::new());
    let dir = cache.join(format!(
        "tokenizer-{}-{}",
        cfg.task.demos, cfg.task.vocab_size
    ));
    let mut loaded = LOADED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(tok) = loaded.get(&dir) {
        return Ok(tok.clone());
    }
    cached_dir(&dir, |tmp| {
        let demos = demonstrations(task, cfg.task.demos, 0);
        let tok = Tokenizer::train_bpe(
            demos.iter().flat_map(|(p, d)| [p.as_str(), d.as_str()]),
            cfg.task.vocab_size,
        )?;
        tok.save(&tmp.join("tokenizer.json"))
    })?;
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json"), None)?;
    loaded.insert(dir, tok.clone());
    Ok(tok)
}

/// An SFT model and where it is cached (the key of every stage built on it).
pub(crate) struct Sft {
    /// Its size's name.
    pub size: String,
    /// Its shape.
    pub shape: TransformerConfig,
    /// The model.
    pub model: CausalLm,
    /// Its cache directory's name.
    pub key: String,
    /// FLOPs and tokens of its training.
    pub flops: f64,
    /// Tokens of its training (every pass).
    pub tokens: f64,
}

/// What decides the SFT models of every size: demonstrations, epochs (each size's own besides the
/// default), batch, learning rate, seed. A stage built on SFT models of several sizes is keyed
/// by it.
pub(crate) fn sft_budget(cfg: &RunConfig, demos: usize) -> String {
    let s = &cfg.sft;
    let by_size: String = s
        .epochs_by_size
        .iter()
        .map(|(size, e)| format!("-{size}{e}"))
        .collect();
    budget_with_epochs(cfg, demos, &format!("{}{by_size}", s.epochs))
}

/// What decides the SFT model of `size`: its size, demonstrations, its epochs, batch, learning
/// rate, seed.
fn sft_key(cfg: &RunConfig, size: &str, demos: usize) -> String {
    let epochs = cfg.sft.epochs_of(size).to_string();
    format!("sft-{size}-{}", budget_with_epochs(cfg, demos, &epochs))
}

/// The SFT budget's text with `epochs` in place of the epochs.
fn budget_with_epochs(cfg: &RunConfig, demos: usize, epochs: &str) -> String {
    let s = &cfg.sft;
    format!(
        "d{demos}-e{epochs}-b{}-lr{}-s{}",
        s.batch_size, s.lr, cfg.seed
    )
}

/// The SFT model of `size` on `data` (trained once per size, budget and seed).
pub(crate) fn sft_model(
    cfg: &RunConfig,
    size: &str,
    tok: &Tokenizer,
    data: &[(Vec<u32>, Vec<u32>)],
    cache: &Path,
    device: &Device,
) -> Result<Sft> {
    let key = sft_key(cfg, size, data.len());
    let dir = cache.join(&key);
    let epochs = cfg.sft.epochs_of(size);
    cached_dir(&dir, |tmp| {
        let s = &cfg.sft;
        let shape = model_shape(size, tok.vocab_size())?;
        let init = try_seeded(device, cfg.seed.wrapping_add(1), || {
            CausalLm::init(&shape, device)
        })?;
        let steps = (data.len().div_ceil(s.batch_size) * epochs) as u64;
        let sft_cfg = SftConfig {
            epochs,
            batch_size: s.batch_size,
            optimizer: OptimizerConfig {
                lr: s.lr,
                ..OptimizerConfig::default()
            },
            schedule: LrSchedule::Linear {
                warmup: (steps / 30).max(1),
                total: steps,
            },
            seed: cfg.seed.wrapping_add(2),
            ..SftConfig::default()
        };
        let (model, _) = train_sft(init, data, &[], &sft_cfg, &stage_run(tmp), device)?;
        save_pretrained(&model, &shape, tmp)?;
        finish_stage_run(tmp)
    })?;
    let (shape, model) = load_pretrained(&dir, device)?;
    let tokens: u64 = data
        .iter()
        .map(|(p, r)| (p.len() + r.len()) as u64)
        .sum::<u64>()
        * epochs as u64;
    Ok(Sft {
        size: size.to_string(),
        flops: flops(&shape, Workload::Train { tokens }) as f64,
        tokens: tokens as f64,
        shape,
        model,
        key,
    })
}

/// A labelled comparison: tokenized prompt, chosen and rejected responses, their gold scores.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredPair {
    prompt: Vec<u32>,
    chosen: Vec<u32>,
    rejected: Vec<u32>,
    gold: [f64; 2],
}

impl StoredPair {
    fn ranked(&self) -> RankedExample {
        RankedExample {
            prompt: self.prompt.clone(),
            responses: vec![self.chosen.clone(), self.rejected.clone()],
            margin: None,
            gold: Some(self.gold.to_vec()),
        }
    }
}

/// The reward model and its data.
pub struct RmStage {
    /// Its cache directory's name (the key of the stages built on it).
    pub key: String,
    /// The trained, normalised RM.
    pub rm: RewardModel,
    /// Its shape.
    pub shape: TransformerConfig,
    /// The labelled training pairs (DPO and EXO train on them too).
    pub pairs: Vec<RankedExample>,
    /// Held-out accuracy against the labels.
    pub eval_accuracy: f64,
    /// Held-out accuracy against the gold order.
    pub eval_gold_accuracy: f64,
    /// Per held-out pair whose gold scores differ: 1 when the RM orders it as the gold does, 0
    /// when not, ½ on a tie.
    pub gold_correct: Vec<f64>,
    /// The labeller's agreement with gold on the training pairs.
    pub labeller_agreement: f64,
    /// FLOPs of sampling the pairs and training.
    pub flops: f64,
    /// Tokens of the training pairs' sequences (the prompt once per response), times epochs.
    pub tokens: f64,
}

#[derive(Serialize, Deserialize)]
struct RmSummary {
    eval_accuracy: f64,
    eval_gold_accuracy: f64,
    gold_correct: Vec<f64>,
    labeller_agreement: f64,
    flops: f64,
}

/// A prompt, two sampled responses and their gold scores.
type SampledPair = (String, Vec<u32>, Vec<u32>, f64, f64);

/// Samples `per_prompt` pairs on each of `prompts` from `policy` (T = 1), with gold scores.
fn sample_pairs(
    policy: &CausalLm,
    tok: &Tokenizer,
    task: &TldrSynth,
    prompts: &[String],
    per_prompt: usize,
    max_new_tokens: usize,
    seed: u64,
) -> Result<Vec<SampledPair>> {
    let valid = policy.valid();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let cfg = SamplingConfig {
        max_new_tokens,
        temperature: 1.0,
        ..Default::default()
    };
    let mut out = Vec::new();
    for chunk in prompts.chunks((256 / (2 * per_prompt)).max(1)) {
        stop_if_interrupted()?;
        let many: Vec<&str> = chunk
            .iter()
            .flat_map(|p| std::iter::repeat_n(p.as_str(), 2 * per_prompt))
            .collect();
        let (ids, texts) = sample_texts(&valid, tok, &many, &cfg, &mut rng)?;
        for (i, pair) in ids.chunks(2).zip(texts.chunks(2)).enumerate() {
            let p = many[2 * i];
            out.push((
                p.to_string(),
                pair.0[0].clone(),
                pair.0[1].clone(),
                task.gold(p, &pair.1[0]).total,
                task.gold(p, &pair.1[1]).total,
            ));
        }
    }
    Ok(out)
}

/// Pairs sampled from each of `policies` in turn (prompt `i` from policy `i mod k`), so a
/// pooled RM sees every policy's samples on disjoint prompts.
fn sample_pooled(
    policies: &[&CausalLm],
    tok: &Tokenizer,
    task: &TldrSynth,
    prompts: &[String],
    per_prompt: usize,
    max_new_tokens: usize,
    seed: u64,
) -> Result<Vec<SampledPair>> {
    let k = policies.len().max(1);
    let mut out = Vec::new();
    for (j, policy) in policies.iter().enumerate() {
        let mine: Vec<String> = prompts.iter().skip(j).step_by(k).cloned().collect();
        out.extend(sample_pairs(
            policy,
            tok,
            task,
            &mine,
            per_prompt,
            max_new_tokens,
            seed.wrapping_add(j as u64 * 1000),
        )?);
    }
    Ok(out)
}

/// What the RM stage reads.
pub(crate) struct RmInputs<'a> {
    /// The task.
    pub task: &'a TldrSynth,
    /// The tokenizer.
    pub tok: &'a Tokenizer,
    /// The SFT policies whose samples are labelled, with their cache keys (one: the policy's
    /// own; several: a pooled RM).
    pub samplers: &'a [&'a Sft],
    /// The RM's backbone (the SFT model of the RM's size, TL;DR detail 11).
    pub backbone: &'a Sft,
    /// The SFT demonstrations (the RM's bias centres their scores).
    pub sft_data: &'a [(Vec<u32>, Vec<u32>)],
}

/// The reward model of `cfg.rm` on pairs of the samplers' samples labelled by the simulated
/// labeller (cached per size, data, samplers and seed), with its held-out accuracies.
// One piece, over 80 lines: the cached RM stage in order inside one `cached_dir` closure: sample
// train and held-out pairs, calibrate the labeller, label, fit, check held-out pairs against the
// gold order, write summary and pairs; then the stage read back from the cache.
pub(crate) fn reward_model(
    cfg: &RunConfig,
    inp: &RmInputs<'_>,
    cache: &Path,
    device: &Device,
) -> Result<RmStage> {
    let r = &cfg.rm;
    let samplers: Vec<&str> = inp.samplers.iter().map(|s| s.size.as_str()).collect();
    let key = format!(
        "rm-{}-p{}-k{}-a{}-e{}-lr{}-from-{}-{}",
        inp.backbone.size,
        r.pairs,
        r.pairs_per_prompt,
        r.labeller_agreement,
        r.epochs,
        r.lr,
        samplers.join("+"),
        sft_budget(cfg, inp.sft_data.len())
    );
    let dir = cache.join(&key);
    let (task, tok) = (inp.task, inp.tok);
    let policies: Vec<&CausalLm> = inp.samplers.iter().map(|s| &s.model).collect();
    let max_new = cfg.judge.max_new_tokens;
    cached_dir(&dir, |tmp| {
        let n_prompts = r.pairs.div_ceil(r.pairs_per_prompt);
        let prompts = Prompts::RmPairs.first(task, cfg.seed, n_prompts);
        let mut raw = sample_pooled(
            &policies,
            tok,
            task,
            &prompts,
            r.pairs_per_prompt,
            max_new,
            cfg.seed.wrapping_add(5),
        )?;
        raw.truncate(r.pairs);
        let eval_prompts = Prompts::RmEval.first(task, cfg.seed, r.eval_pairs);
        let raw_eval = sample_pooled(
            &policies,
            tok,
            task,
            &eval_prompts,
            1,
            max_new,
            cfg.seed.wrapping_add(6),
        )?;
        let calibration: Vec<(f64, f64)> = raw.iter().map(|x| (x.3, x.4)).collect();
        let labeller =
            Labeller::calibrate(&calibration, r.labeller_agreement).ok_or_else(|| {
                Error::Config(
                    "rm: the labeller cannot reach the requested agreement on these pairs".into(),
                )
            })?;
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed.wrapping_add(7));
        let mut agree = (0usize, 0usize);
        let mut label = |raw: Vec<SampledPair>, count: bool| -> Result<Vec<StoredPair>> {
            raw.into_iter()
                .filter(|x| !x.1.is_empty() && !x.2.is_empty())
                .map(|(p, a, b, ga, gb)| {
                    let first = labeller.prefers_first(ga, gb, &mut rng);
                    if count && (ga - gb).abs() > 1e-12 {
                        agree.1 += 1;
                        agree.0 += usize::from(first == (ga > gb));
                    }
                    let (c, rj, gc, gr) = if first {
                        (a, b, ga, gb)
                    } else {
                        (b, a, gb, ga)
                    };
                    Ok(StoredPair {
                        prompt: tok.encode(&p)?,
                        chosen: c,
                        rejected: rj,
                        gold: [gc, gr],
                    })
                })
                .collect()
        };
        let train = label(raw, true)?;
        let eval = label(raw_eval, false)?;
        let train_ranked: Vec<RankedExample> = train.iter().map(StoredPair::ranked).collect();
        let eval_ranked: Vec<RankedExample> = eval.iter().map(StoredPair::ranked).collect();
        let (rm, report) = fit_reward_model(
            cfg,
            inp.backbone.model.clone(),
            &inp.backbone.shape,
            &train_ranked,
            &eval_ranked,
            inp.sft_data,
            &stage_run(tmp),
            device,
        )?;
        rm.save(&tmp.join("model"))?;
        finish_stage_run(tmp)?;
        // the gold order of every held-out pair whose gold scores differ, one draw each
        let scores = score_ranked(&rm.model, &eval_ranked, 64, device)?;
        let gold_correct: Vec<f64> = eval
            .iter()
            .zip(&scores)
            .filter(|(x, _)| x.gold[0] != x.gold[1])
            .map(|(x, s)| {
                let (rm_first, gold_first) = (s[0] - s[1], x.gold[0] - x.gold[1]);
                if rm_first == 0.0 {
                    0.5
                } else if (rm_first > 0.0) == (gold_first > 0.0) {
                    1.0
                } else {
                    0.0
                }
            })
            .collect();
        let tokens: u64 = train
            .iter()
            .map(|x| (2 * x.prompt.len() + x.chosen.len() + x.rejected.len()) as u64)
            .sum();
        let shape = &inp.backbone.shape;
        write_json(
            tmp,
            "summary.json",
            &RmSummary {
                eval_accuracy: report.eval.accuracy,
                eval_gold_accuracy: report.eval.gold_accuracy.unwrap_or(f64::NAN),
                gold_correct,
                labeller_agreement: agree.0 as f64 / agree.1.max(1) as f64,
                flops: (flops(
                    shape,
                    Workload::Train {
                        tokens: tokens * r.epochs as u64,
                    },
                ) + flops(shape, Workload::Forward { tokens })) as f64,
            },
        )?;
        write_json(tmp, "pairs.json", &train)
    })?;
    let summary: RmSummary = read_json(&dir, "summary.json")?;
    let pairs: Vec<StoredPair> = read_json(&dir, "pairs.json")?;
    let tokens: usize = pairs
        .iter()
        .map(|x| 2 * x.prompt.len() + x.chosen.len() + x.rejected.len())
        .sum();
    Ok(RmStage {
        key,
        rm: RewardModel::load(&dir.join("model"), device)?,
        shape: inp.backbone.shape.clone(),
        pairs: pairs.iter().map(StoredPair::ranked).collect(),
        eval_accuracy: summary.eval_accuracy,
        eval_gold_accuracy: summary.eval_gold_accuracy,
        gold_correct: summary.gold_correct,
        labeller_agreement: summary.labeller_agreement,
        flops: summary.flops,
        tokens: (tokens * r.epochs) as f64,
    })
}

/// Trains a reward model on `train` (evaluated on `eval`) from `backbone`: the RM stage's
/// settings (`rm.epochs`, `rm.lr`, batch 16), checkpointing as `run` says (see [`stage_run`]),
/// then the bias that centres the SFT demonstrations' scores (TL;DR detail 5).
#[allow(clippy::too_many_arguments)]
pub(crate) fn fit_reward_model(
    cfg: &RunConfig,
    backbone: CausalLm,
    shape: &TransformerConfig,
    train: &[RankedExample],
    eval: &[RankedExample],
    sft_data: &[(Vec<u32>, Vec<u32>)],
    run: &RunOptions,
    device: &Device,
) -> Result<(RewardModel, rlhf_reward::RmReport)> {
    let r = &cfg.rm;
    let head = seeded(device, cfg.seed.wrapping_add(3), || {
        rlhf_models::ScalarModel::from_backbone(backbone)
    });
    let rm_cfg = RmConfig {
        epochs: r.epochs,
        batch_size: 16,
        optimizer: OptimizerConfig {
            lr: r.lr,
            ..OptimizerConfig::default()
        },
        seed: cfg.seed.wrapping_add(4),
        ..RmConfig::default()
    };
    let (model, report) = train_reward_model(head, train, eval, &rm_cfg, run, device)?;
    let normalisation = normalise(
        &model,
        &sft_data[..sft_data.len().min(200)],
        false,
        32,
        device,
    )?;
    let rm = RewardModel {
        model,
        config: shape.clone(),
        settings: RewardSettings {
            normalisation,
            ..RewardSettings::outcome()
        },
        pad_token_id: None,
    };
    Ok((rm, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_size_s_own_epochs_key_its_sft_model_and_every_stage_built_on_several_sizes() {
        let mut cfg = RunConfig::default();
        cfg.sft.epochs = 24;
        let before = (sft_key(&cfg, "xs", 100), sft_budget(&cfg, 100));
        cfg.sft.epochs_by_size.insert("l".into(), 6);
        // the other sizes' models stay where they were cached
        assert_eq!(sft_key(&cfg, "xs", 100), before.0);
        assert!(sft_key(&cfg, "l", 100).starts_with("sft-l-d100-e6-"));
        // a reward model sampled from several sizes is keyed by all their epochs
        assert_ne!(sft_budget(&cfg, 100), before.1);
        assert!(sft_budget(&cfg, 100).contains("-e24-l6-"));
    }
}
