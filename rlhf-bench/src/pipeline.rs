//! The pipeline of one run: task → SFT → reward model → method → judge (`arith-steps` runs
//! its own verifier study, in [`crate::arith`]; a user's preference file runs the same stages
//! with its own labels and the RM as judge, in [`crate::user`]).
//!
//! Stages that several runs share are cached under a directory, keyed by everything that decides
//! them: the tokenizer (task, demonstrations, vocabulary), each SFT model (size, budget, seed), each
//! reward model (its size, its data, the policy it was sampled from, seed). A cached stage is a
//! directory renamed into place when complete, so a killed run never leaves half a model behind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::tensor::Device;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use rlhf_core::train::fs::write_atomic;
use rlhf_core::train::metrics::{names, read_metrics};
use rlhf_core::train::{LrSchedule, OptimizerConfig, RunOptions, seeded, try_seeded};
use rlhf_core::{Error, Result, Scorer};
use rlhf_data::tasks::{Labeller, Task, TldrSynth, win_rate, with_eos};
use rlhf_data::{Split, Tokenizer};
use rlhf_dpo::{DpoConfig, Group, OfflineLoss, RefCache, train_offline};
use rlhf_models::{
    CausalLm, SamplingConfig, SftConfig, TransformerConfig, load_pretrained, sample_texts,
    save_pretrained, train_sft,
};
use rlhf_ppo::{AdvantageEstimator, PolicyAndValue, PpoInputs, train_ppo};
use rlhf_reward::{
    LengthScorer, RankedExample, RewardModel, RewardScorer, RewardSettings, RmConfig, normalise,
    train_reward_model,
};

use crate::compute::{Workload, flops, ppo_iteration_flops};
use crate::config::{MethodKind, RewardSource, RunConfig, model_shape};

/// What a run measured. Metric names are stable (`gold/mean`, `kl`, `rm/gold_accuracy`, …) and
/// documented in `report.rs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// Metrics, by name.
    pub metrics: BTreeMap<String, f64>,
    /// The method's learning curve (one entry per iteration/step: `objective/scores`,
    /// `objective/kl`, …), empty for methods without one.
    pub curve: Vec<BTreeMap<String, f64>>,
    /// Wall seconds of this call (cached stages cost nothing).
    pub wall_seconds: f64,
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
pub fn run(cfg: &RunConfig, cache: &Path, work: &Path) -> Result<RunResult> {
    cfg.validate()?;
    match cfg.task.name.as_str() {
        "arith-steps" => return crate::arith::run_arith(cfg, work),
        "preferences" => return crate::user::run_preferences(cfg, cache, work),
        _ => {}
    }
    let start = Instant::now();
    let device = rlhf_core::parse_device(&cfg.device)?.autodiff();
    let task = TldrSynth::default();
    let mut m: BTreeMap<String, f64> = BTreeMap::new();

    // the task: demonstrations and a tokenizer trained on them
    let demos = demonstrations(&task, cfg.task.demos, cfg.seed);
    let tok = tokenizer(cfg, &task, cache)?;
    let sft_data: Vec<(Vec<u32>, Vec<u32>)> = demos
        .iter()
        .map(|(p, d)| Ok((tok.encode(p)?, tok.encode(&with_eos(d))?)))
        .collect::<Result<_>>()?;

    // SFT of the policy (the reference, TL;DR detail 11)
    let (policy_shape, sft) = policy_sft(cfg, &tok, &sft_data, cache, &device, &mut m)?;

    // the reward model, trained on labelled pairs of the SFT policy's samples
    let rm_stage = if cfg.method.kind.needs_rm() {
        let (rm_shape, rm_backbone) =
            sft_model(cfg, &cfg.rm.size, &tok, &sft_data, cache, &device)?;
        let stage = reward_model(
            cfg,
            &task,
            &tok,
            &sft,
            rm_backbone,
            &rm_shape,
            &sft_data,
            cache,
            &device,
        )?;
        m.insert("rm/accuracy".into(), stage.eval_accuracy);
        m.insert("rm/gold_accuracy".into(), stage.eval_gold_accuracy);
        m.insert("rm/labeller_agreement".into(), stage.labeller_agreement);
        m.insert("params/rm".into(), rm_shape.non_embedding_params() as f64);
        m.insert("flops/rm".into(), stage.flops);
        m.insert("tokens/rm".into(), stage.tokens);
        Some(stage)
    } else {
        None
    };

    // the method
    let train_prompts: Vec<String> = (0..cfg.task.train_prompts as u64)
        .map(|i| task.prompt(Split::Train, 50_000 + i))
        .collect();
    let eval_prompts: Vec<String> = (0..cfg.task.eval_prompts as u64)
        .map(|i| task.prompt(Split::Eval, i))
        .collect();
    let eval_ids: Vec<Vec<u32>> = eval_prompts
        .iter()
        .map(|p| tok.encode(p))
        .collect::<Result<_>>()?;
    let mut query_length = eval_ids.iter().map(Vec::len).max().unwrap_or(1);
    for p in &train_prompts {
        query_length = query_length.max(tok.encode(p)?.len());
    }
    let method_start = Instant::now();
    let mut curve: Vec<BTreeMap<String, f64>> = Vec::new();
    let inputs = MethodInputs {
        sft: &sft,
        policy_shape: &policy_shape,
        rm: rm_stage.as_ref(),
        tok: &tok,
        train_prompts: &train_prompts,
        sft_data: &sft_data,
        query_length,
        eval_pairs: &[],
    };
    let policy = optimise(cfg, &inputs, work, &device, &mut m, &mut curve)?;
    m.insert("time/method".into(), method_start.elapsed().as_secs_f64());

    // the judge: gold score and win rates here; KL to the reference, proxy score and length in
    // `judge`
    let judge_rm = rm_stage
        .as_ref()
        .map(|s| RewardScorer::new(s.rm.clone(), tok.clone(), &device));
    let (judged, baseline) = judge(
        cfg,
        &inputs,
        &policy,
        &eval_prompts,
        judge_rm.as_ref(),
        &device,
        &mut m,
    )?;
    let gold: Vec<f64> = eval_prompts
        .iter()
        .zip(&judged.texts)
        .map(|(p, t)| task.gold(p, t).total)
        .collect();
    let sft_gold: Vec<f64> = eval_prompts
        .iter()
        .zip(&baseline.texts)
        .map(|(p, t)| task.gold(p, t).total)
        .collect();
    let references: Vec<f64> = eval_prompts
        .iter()
        .map(|p| task.gold(p, &with_eos(&task.reference(p))).total)
        .collect();
    let (mean, se) = mean_se(&gold);
    m.insert("gold/mean".into(), mean);
    m.insert("gold/se".into(), se);
    let sft_mean = mean_se(&sft_gold).0;
    m.insert("gold/sft".into(), sft_mean);
    m.insert("gold/gain".into(), mean - sft_mean);
    m.insert("gold/references".into(), mean_se(&references).0);
    m.insert("judge/win_rate_vs_sft".into(), win_rate(&gold, &sft_gold));
    m.insert(
        "judge/win_rate_vs_references".into(),
        win_rate(&gold, &references),
    );
    m.insert("memory/peak_bytes".into(), peak_memory_bytes());
    Ok(RunResult {
        metrics: m,
        curve,
        wall_seconds: start.elapsed().as_secs_f64(),
    })
}

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
    curve: &mut Vec<BTreeMap<String, f64>>,
) -> Result<CausalLm> {
    let policy = match cfg.method.kind {
        MethodKind::Sft | MethodKind::BestOfN => inp.sft.clone(),
        MethodKind::Dpo | MethodKind::Exo => {
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
            m.insert("tokens/method".into(), (tokens * dcfg.epochs as u64) as f64);
            m.insert(
                "flops/method".into(),
                (flops(
                    inp.policy_shape,
                    Workload::Train {
                        tokens: tokens * dcfg.epochs as u64,
                    },
                ) + flops(inp.policy_shape, Workload::Forward { tokens })) as f64,
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
            m.insert("method/steps".into(), report.steps as f64);
            if !eval_groups.is_empty() {
                m.insert(
                    "method/eval_reward_accuracy".into(),
                    report.eval.reward_accuracy,
                );
            }
            policy
        }
        MethodKind::Ppo | MethodKind::Grpo | MethodKind::Rloo | MethodKind::ReinforcePp => {
            let stage = inp.rm.expect("on-policy methods read the RM");
            let mut pcfg = cfg.method.ppo.clone();
            pcfg.seed = cfg.seed;
            pcfg.query_length = inp.query_length;
            pcfg.advantage = match cfg.method.kind {
                MethodKind::Ppo => AdvantageEstimator::Gae,
                MethodKind::Grpo => AdvantageEstimator::Grpo,
                MethodKind::Rloo => AdvantageEstimator::Rloo,
                _ => AdvantageEstimator::ReinforcePp,
            };
            let scorer: Box<dyn Scorer> = match cfg.method.reward {
                RewardSource::Rm => {
                    Box::new(RewardScorer::new(stage.rm.clone(), inp.tok.clone(), device))
                }
                RewardSource::Length => Box::new(LengthScorer::new(0.1, inp.tok.eos_text())),
            };
            // TL;DR detail 6: the critic starts from the reward model (or, switched off, from
            // the SFT policy with a fresh head)
            let value = pcfg.advantage.needs_critic().then(|| {
                if pcfg.value_from_reward_model {
                    stage.rm.to_value_model()
                } else {
                    seeded(device, cfg.seed.wrapping_add(8), || {
                        rlhf_models::ScalarModel::from_backbone(inp.sft.clone())
                    })
                }
            });
            let inputs = PpoInputs {
                reference: inp.sft,
                scorer: scorer.as_ref(),
                tokenizer: inp.tok,
                prompts: inp.train_prompts,
                demonstrations: inp.sft_data,
                eval: None,
                eval_every: 0,
            };
            let dir = work.join("ppo");
            let (models, report) = train_ppo(
                PolicyAndValue::new(inp.sft.clone(), value),
                &inputs,
                &pcfg,
                &quiet_in(dir.clone()),
                device,
            )?;
            for line in read_metrics(&dir.join("metrics.jsonl"))? {
                curve.push(
                    line.into_iter()
                        .filter_map(|(k, v)| v.as_f64().map(|v| (k, v)))
                        .collect(),
                );
            }
            let mean_len = curve
                .iter()
                .filter_map(|c| c.get(names::COMPLETIONS_MEAN_LENGTH))
                .sum::<f64>()
                / curve.len().max(1) as f64;
            let critic = pcfg
                .advantage
                .needs_critic()
                .then_some(if pcfg.value_from_reward_model {
                    &stage.shape
                } else {
                    inp.policy_shape
                });
            let per_iteration = ppo_iteration_flops(
                inp.policy_shape,
                &stage.shape,
                critic,
                pcfg.batch_size() as u64,
                inp.query_length as u64,
                mean_len.round() as u64,
                pcfg.ppo_epochs as u64,
            );
            m.insert(
                "flops/method".into(),
                (per_iteration * report.iterations) as f64,
            );
            m.insert(
                "tokens/method".into(),
                (report.iterations
                    * pcfg.batch_size() as u64
                    * (inp.query_length as u64 + mean_len.round() as u64)
                    * pcfg.ppo_epochs as u64) as f64,
            );
            m.insert("method/iterations".into(), report.iterations as f64);
            m.insert("method/final_kl_coef".into(), report.final_kl_coef);
            models.policy
        }
    };
    Ok(policy)
}

pub(crate) fn quiet_in(dir: PathBuf) -> RunOptions {
    RunOptions {
        out_dir: Some(dir),
        checkpoint_every: 5,
        keep_last: 1,
        progress: false,
        ..RunOptions::default()
    }
}

pub(crate) fn mean_se(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, (var / n).sqrt())
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

fn demonstrations(task: &TldrSynth, count: usize, seed: u64) -> Vec<(String, String)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..count as u64)
        .map(|i| {
            let p = task.prompt(Split::Train, i);
            let d = task.demonstrate(&p, &mut rng);
            (p, d)
        })
        .collect()
}

/// Runs `build` into `NAME.partial` beside `dir` and renames it to `dir`, unless `dir` exists.
///
/// - Exclusive: the build holds an advisory lock on `NAME.lock`, so sweeps running side by side
///   build a stage once; the others wait for it and then read it.
/// - Resumable: a build that was killed leaves its `.partial` directory, and the next build of
///   the same stage gets that directory back, so trainers that checkpoint inside it (see
///   [`stage_run`]) resume from their last checkpoint instead of starting over.
pub(crate) fn cached_dir(dir: &Path, build: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if dir.exists() {
        return Ok(());
    }
    let sibling = |suffix: &str| {
        let mut name = dir.file_name().unwrap_or_default().to_os_string();
        name.push(suffix);
        dir.with_file_name(name)
    };
    let (partial, lock_path) = (sibling(".partial"), sibling(".lock"));
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let lock = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| Error::io(&lock_path, e))?;
    lock.lock().map_err(|e| Error::io(&lock_path, e))?;
    if !dir.exists() {
        std::fs::create_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
        build(&partial)?;
        std::fs::rename(&partial, dir).map_err(|e| Error::io(dir, e))?;
    }
    // Whoever waits on this lock checks `dir` again once it has the lock, so removing the file
    // while it is held is safe; it only keeps the cache free of leftovers.
    let _ = std::fs::remove_file(&lock_path);
    Ok(())
}

/// Sampling has no checkpoint to write, so after SIGINT/SIGTERM it stops before its next batch
/// ([`Error::Interrupted`] without a checkpoint) instead of finishing the stage; rerun, the point
/// resumes from its trainers' checkpoints and samples again (the samples are seeded).
fn stop_if_interrupted() -> Result<()> {
    if rlhf_core::train::interrupt::requested() {
        return Err(Error::Interrupted {
            step: 0,
            checkpoint: None,
        });
    }
    Ok(())
}

/// The [`RunOptions`] of a training inside a cached stage: checkpoints in `partial/run` (every 25
/// steps), so a killed stage resumes. Call [`finish_stage_run`] once the stage's model is saved.
pub(crate) fn stage_run(partial: &Path) -> RunOptions {
    RunOptions {
        checkpoint_every: 25,
        ..quiet_in(partial.join("run"))
    }
}

/// Drops a finished stage's checkpoints (its saved model is what the cache keeps).
pub(crate) fn finish_stage_run(partial: &Path) -> Result<()> {
    let run = partial.join("run");
    match std::fs::remove_dir_all(&run) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&run, e)),
        _ => Ok(()),
    }
}

/// The tokenizer: BPE on the demonstrations of seed 0, shared by every seed and size.
fn tokenizer(cfg: &RunConfig, task: &TldrSynth, cache: &Path) -> Result<Tokenizer> {
    let dir = cache.join(format!(
        "tokenizer-{}-{}",
        cfg.task.demos, cfg.task.vocab_size
    ));
    cached_dir(&dir, |tmp| {
        let demos = demonstrations(task, cfg.task.demos, 0);
        let tok = Tokenizer::train_bpe(
            demos.iter().flat_map(|(p, d)| [p.as_str(), d.as_str()]),
            cfg.task.vocab_size,
        )?;
        tok.save(&tmp.join("tokenizer.json"))
    })?;
    Tokenizer::from_file(&dir.join("tokenizer.json"), None)
}

/// The SFT policy of `sft.policy_size` on `data` (cached), with its `params/policy` and
/// `tokens/sft` and `flops/sft`.
pub(crate) fn policy_sft(
    cfg: &RunConfig,
    tok: &Tokenizer,
    data: &[(Vec<u32>, Vec<u32>)],
    cache: &Path,
    device: &Device,
    m: &mut BTreeMap<String, f64>,
) -> Result<(TransformerConfig, CausalLm)> {
    let (shape, sft) = sft_model(cfg, &cfg.sft.policy_size, tok, data, cache, device)?;
    let tokens: u64 = data.iter().map(|(p, r)| (p.len() + r.len()) as u64).sum();
    m.insert("params/policy".into(), shape.non_embedding_params() as f64);
    m.insert("tokens/sft".into(), (tokens * cfg.sft.epochs as u64) as f64);
    m.insert(
        "flops/sft".into(),
        flops(
            &shape,
            Workload::Train {
                tokens: tokens * cfg.sft.epochs as u64,
            },
        ) as f64,
    );
    Ok((shape, sft))
}

/// The SFT model of `size` (trained once per size, budget and seed).
pub(crate) fn sft_model(
    cfg: &RunConfig,
    size: &str,
    tok: &Tokenizer,
    data: &[(Vec<u32>, Vec<u32>)],
    cache: &Path,
    device: &Device,
) -> Result<(TransformerConfig, CausalLm)> {
    let s = &cfg.sft;
    let dir = cache.join(format!(
        "sft-{size}-d{}-e{}-b{}-lr{}-s{}",
        data.len(),
        s.epochs,
        s.batch_size,
        s.lr,
        cfg.seed
    ));
    cached_dir(&dir, |tmp| {
        let shape = model_shape(size, tok.vocab_size())?;
        let init = try_seeded(device, cfg.seed.wrapping_add(1), || {
            CausalLm::init(&shape, device)
        })?;
        let steps = (data.len().div_ceil(s.batch_size) * s.epochs) as u64;
        let sft_cfg = SftConfig {
            epochs: s.epochs,
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
    load_pretrained(&dir, device)
}

/// A labelled comparison: tokenized prompt, chosen and rejected responses.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredPair {
    prompt: Vec<u32>,
    chosen: Vec<u32>,
    rejected: Vec<u32>,
    gold: [f64; 2],
}

/// The reward model and its data.
pub struct RmStage {
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
    labeller_agreement: f64,
    flops: f64,
}

/// A prompt, two sampled responses and their gold scores.
type SampledPair = (String, Vec<u32>, Vec<u32>, f64, f64);

/// Samples `per_prompt` pairs on each of `prompts` from `sft` (T = 1), with gold scores.
fn sample_pairs(
    sft: &CausalLm,
    tok: &Tokenizer,
    task: &TldrSynth,
    prompts: &[String],
    per_prompt: usize,
    seed: u64,
) -> Result<Vec<SampledPair>> {
    let valid = sft.valid();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let cfg = SamplingConfig {
        max_new_tokens: 40,
        temperature: 1.0,
        ..Default::default()
    };
    let mut out = Vec::new();
    for chunk in prompts.chunks((64 / (2 * per_prompt)).max(1)) {
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

#[allow(clippy::too_many_arguments)]
fn reward_model(
    cfg: &RunConfig,
    task: &TldrSynth,
    tok: &Tokenizer,
    policy_sft: &CausalLm,
    backbone: CausalLm,
    shape: &TransformerConfig,
    sft_data: &[(Vec<u32>, Vec<u32>)],
    cache: &Path,
    device: &Device,
) -> Result<RmStage> {
    let r = &cfg.rm;
    let dir = cache.join(format!(
        "rm-{}-p{}-k{}-a{}-e{}-lr{}-pol{}-s{}",
        r.size,
        r.pairs,
        r.pairs_per_prompt,
        r.labeller_agreement,
        r.epochs,
        r.lr,
        cfg.sft.policy_size,
        cfg.seed
    ));
    cached_dir(&dir, |tmp| {
        let n_prompts = r.pairs.div_ceil(r.pairs_per_prompt);
        let prompts: Vec<String> = (0..n_prompts as u64)
            .map(|i| task.prompt(Split::Train, 200_000 + i))
            .collect();
        let mut raw = sample_pairs(
            policy_sft,
            tok,
            task,
            &prompts,
            r.pairs_per_prompt,
            cfg.seed.wrapping_add(5),
        )?;
        raw.truncate(r.pairs);
        let eval_prompts: Vec<String> = (0..r.eval_pairs as u64)
            .map(|i| task.prompt(Split::Eval, 10_000 + i))
            .collect();
        let raw_eval = sample_pairs(
            policy_sft,
            tok,
            task,
            &eval_prompts,
            1,
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
        let to_ranked = |v: &[StoredPair]| -> Vec<RankedExample> {
            v.iter()
                .map(|x| RankedExample {
                    prompt: x.prompt.clone(),
                    responses: vec![x.chosen.clone(), x.rejected.clone()],
                    margin: None,
                    gold: Some(x.gold.to_vec()),
                })
                .collect()
        };
        let (rm, report) = fit_reward_model(
            cfg,
            backbone,
            shape,
            &to_ranked(&train),
            &to_ranked(&eval),
            sft_data,
            &stage_run(tmp),
            device,
        )?;
        rm.save(&tmp.join("model"))?;
        finish_stage_run(tmp)?;
        let tokens: u64 = train
            .iter()
            .map(|x| (2 * x.prompt.len() + x.chosen.len() + x.rejected.len()) as u64)
            .sum();
        let summary = RmSummary {
            eval_accuracy: report.eval.accuracy,
            eval_gold_accuracy: report.eval.gold_accuracy.unwrap_or(f64::NAN),
            labeller_agreement: agree.0 as f64 / agree.1.max(1) as f64,
            flops: (flops(
                shape,
                Workload::Train {
                    tokens: tokens * r.epochs as u64,
                },
            ) + flops(shape, Workload::Forward { tokens })) as f64,
        };
        let summary = serde_json::to_string(&summary).map_err(|e| Error::Record(e.to_string()))?;
        let pairs = serde_json::to_string(&train).map_err(|e| Error::Record(e.to_string()))?;
        write_atomic(&tmp.join("summary.json"), summary.as_bytes())?;
        write_atomic(&tmp.join("pairs.json"), pairs.as_bytes())
    })?;
    let read = |name: &str| -> Result<String> {
        let p = dir.join(name);
        std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))
    };
    let summary: RmSummary = serde_json::from_str(&read("summary.json")?)
        .map_err(|e| Error::Record(format!("{}: {e}", dir.display())))?;
    let pairs: Vec<StoredPair> = serde_json::from_str(&read("pairs.json")?)
        .map_err(|e| Error::Record(format!("{}: {e}", dir.display())))?;
    let tokens: usize = pairs
        .iter()
        .map(|x| 2 * x.prompt.len() + x.chosen.len() + x.rejected.len())
        .sum();
    let rm = RewardModel::load(&dir.join("model"), device)?;
    Ok(RmStage {
        rm,
        shape: shape.clone(),
        pairs: pairs
            .into_iter()
            .map(|x| RankedExample {
                prompt: x.prompt,
                responses: vec![x.chosen, x.rejected],
                margin: None,
                gold: Some(x.gold.to_vec()),
            })
            .collect(),
        eval_accuracy: summary.eval_accuracy,
        eval_gold_accuracy: summary.eval_gold_accuracy,
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
    let rm = RewardModel {
        model: head,
        config: shape.clone(),
        settings: RewardSettings::outcome(),
    };
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
    let (model, report) = train_reward_model(rm.model, train, eval, &rm_cfg, run, device)?;
    let mut rm = RewardModel { model, ..rm };
    rm.settings.normalisation = normalise(
        &rm.model,
        &sft_data[..sft_data.len().min(200)],
        false,
        32,
        device,
    )?;
    Ok((rm, report))
}

/// Samples the judged responses of `policy` on `prompts` (best of `method.best_of_n` by `rm`
/// for best-of-n) and one SFT response per prompt, in that order, and adds what needs no gold:
/// `kl` (sampled, or best-of-n's analytic `ln n − (n − 1)/n`), `proxy/mean` (the RM's score of
/// the judged responses), `response/length`, `response/eos` and best-of-n's `flops/method`
/// (`n` forward passes of the longest prompt and the response).
#[allow(clippy::too_many_arguments)]
pub(crate) fn judge(
    cfg: &RunConfig,
    inp: &MethodInputs<'_>,
    policy: &CausalLm,
    prompts: &[String],
    rm: Option<&RewardScorer>,
    device: &Device,
    m: &mut BTreeMap<String, f64>,
) -> Result<(Judged, Judged)> {
    let (sft, tok) = (inp.sft, inp.tok);
    let n = if cfg.method.kind == MethodKind::BestOfN {
        cfg.method.best_of_n
    } else {
        1
    };
    let judged = judge_samples(cfg, policy, tok, prompts, n, rm)?;
    let baseline = judge_samples(cfg, sft, tok, prompts, 1, None)?;
    let prompt_ids: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| tok.encode(p))
        .collect::<Result<_>>()?;
    m.insert(
        "kl".into(),
        if n > 1 {
            // best-of-n: the analytic KL to the sampling policy
            (n as f64).ln() - (n as f64 - 1.0) / n as f64
        } else {
            let kl = rlhf_models::sequence_kl(
                policy,
                sft,
                &prompt_ids,
                &judged.ids,
                cfg.judge.temperature,
                device,
            )?;
            kl.iter().sum::<f64>() / kl.len().max(1) as f64
        },
    );
    if let Some(rm) = rm {
        let proxy = mean_se(&score(rm, prompts, &judged.texts)?).0;
        m.insert("proxy/mean".into(), proxy);
    }
    m.insert(
        "response/length".into(),
        judged.ids.iter().map(|r| r.len() as f64).sum::<f64>() / judged.ids.len() as f64,
    );
    m.insert(
        "response/eos".into(),
        judged
            .texts
            .iter()
            .filter(|t| t.ends_with(&tok.eos_text()))
            .count() as f64
            / judged.texts.len() as f64,
    );
    if cfg.method.kind == MethodKind::BestOfN {
        let eval_tokens: u64 = judged
            .ids
            .iter()
            .map(|r| (inp.query_length + r.len()) as u64)
            .sum();
        m.insert("tokens/method".into(), (n as u64 * eval_tokens) as f64);
        m.insert(
            "flops/method".into(),
            (n as f64)
                * flops(
                    inp.policy_shape,
                    Workload::Forward {
                        tokens: eval_tokens,
                    },
                ) as f64,
        );
    }
    m.entry("flops/method".into()).or_insert(0.0);
    m.entry("tokens/method".into()).or_insert(0.0);
    Ok((judged, baseline))
}

/// `rm`'s scores of `responses` to `prompts`, as `f64`.
pub(crate) fn score(
    rm: &RewardScorer,
    prompts: &[String],
    responses: &[String],
) -> Result<Vec<f64>> {
    let p: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let r: Vec<&str> = responses.iter().map(String::as_str).collect();
    Ok(rm.score(&p, &r)?.into_iter().map(f64::from).collect())
}

/// The judged samples: one per prompt (best of `n` by `rm` when `n > 1`).
pub(crate) struct Judged {
    /// Response tokens.
    pub ids: Vec<Vec<u32>>,
    /// Response texts (ending with the EOS text when the response ended).
    pub texts: Vec<String>,
}

fn judge_samples(
    cfg: &RunConfig,
    policy: &CausalLm,
    tok: &Tokenizer,
    prompts: &[String],
    n: usize,
    rm: Option<&RewardScorer>,
) -> Result<Judged> {
    let sampling = SamplingConfig {
        max_new_tokens: cfg.judge.max_new_tokens,
        temperature: cfg.judge.temperature,
        ..Default::default()
    };
    let valid = policy.valid();
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed.wrapping_add(11));
    let mut out = Judged {
        ids: Vec::new(),
        texts: Vec::new(),
    };
    for chunk in prompts.chunks((64 / n).max(1)) {
        stop_if_interrupted()?;
        let many: Vec<&str> = chunk
            .iter()
            .flat_map(|p| std::iter::repeat_n(p.as_str(), n))
            .collect();
        let (ids, texts) = sample_texts(&valid, tok, &many, &sampling, &mut rng)?;
        if n == 1 {
            out.ids.extend(ids);
            out.texts.extend(texts);
            continue;
        }
        let rm = rm.ok_or_else(|| Error::Config("best-of-n needs a reward model".into()))?;
        let text_refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let scores = rm.score(&many, &text_refs)?;
        for k in 0..chunk.len() {
            let best = (k * n..(k + 1) * n)
                .max_by(|&a, &b| scores[a].total_cmp(&scores[b]))
                .expect("n ≥ 1");
            out.ids.push(ids[best].clone());
            out.texts.push(texts[best].clone());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_stage_killed_mid_build_resumes_in_its_partial_directory() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("sft-x");
        // the first build leaves progress behind and dies
        let first = cached_dir(&dir, |tmp| {
            std::fs::write(tmp.join("progress"), "step 25").unwrap();
            Err(Error::Config("killed".into()))
        });
        assert!(first.is_err());
        assert!(!dir.exists());
        // the next build of the same stage gets that progress back
        let mut seen = String::new();
        cached_dir(&dir, |tmp| {
            seen = std::fs::read_to_string(tmp.join("progress")).unwrap();
            std::fs::write(tmp.join("model"), "weights").unwrap();
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, "step 25");
        assert_eq!(
            std::fs::read_to_string(dir.join("model")).unwrap(),
            "weights"
        );
        // nothing but the stage is left, and a finished stage is never built again
        let names: Vec<String> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["sft-x"]);
        cached_dir(&dir, |_| panic!("a finished stage was built again")).unwrap();
    }

    #[test]
    fn stages_built_side_by_side_are_built_once() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("rm-x");
        let builds = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    cached_dir(&dir, |tmp| {
                        builds.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(100));
                        std::fs::write(tmp.join("model"), "weights").map_err(|e| Error::io(tmp, e))
                    })
                    .unwrap();
                    // every caller returns only once the stage is there
                    assert!(dir.join("model").exists());
                });
            }
        });
        assert_eq!(builds.load(Ordering::SeqCst), 1);
    }
}
