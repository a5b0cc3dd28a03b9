//! The scaling study: presets of axes, each axis a list of points (one run configuration per
//! value and seed), and a sweep that runs every point not yet stored.
//!
//! A finished point is `DIR/points/<axis>__<value>__s<seed>.json`, written atomically; a sweep
//! started again skips every point whose file exists, and the point that was running resumes its
//! trainers from their last checkpoints (the method's in the point's work directory, a cached
//! stage's in its `.partial` directory), so a kill costs at most the steps since them and the
//! sampling and judging of that point. Points of different axes with the same configuration and
//! seed (the base PPO run appears on several axes) run once; the others copy its result. Models
//! shared between points (the tokenizer, one SFT per size and seed, one RM per RM configuration)
//! are cached in `DIR/cache`. Sweeps on several machines can share `DIR` (on a shared file
//! system with advisory locks): each point is claimed before it runs, so each runs once.

use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};

use rlhf_core::train::fs::write_atomic;
use rlhf_core::{Error, KlController, Result};
use rlhf_ppo::PpoConfig;

use crate::axis::Axis;
use crate::config::{ArithConfig, MethodKind, RewardSource, RunConfig, Supervision, TldrConfig};
use crate::pipeline::{RunResult, run};

/// One point of an axis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// The axis.
    pub axis: Axis,
    /// The value's label (`1000`, `ppo-0.05`, …).
    pub label: String,
    /// The value as a number, for fits and plots (the index for categorical axes).
    pub x: f64,
    /// The run.
    pub config: RunConfig,
}

impl Point {
    /// The file name of the stored result.
    pub fn file_name(&self) -> String {
        format!("{}__{}__s{}.json", self.axis, self.label, self.config.seed)
    }
}

/// A stored point: what ran, where, and what it measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointRecord {
    /// The point (axis, value, full configuration with its seed).
    pub point: Point,
    /// `git rev-parse HEAD` of the code that ran it.
    pub git_revision: String,
    /// The measurements.
    pub result: RunResult,
}

/// The on-policy methods of the `method` axis.
const ON_POLICY: [MethodKind; 4] = [
    MethodKind::Ppo,
    MethodKind::Grpo,
    MethodKind::Rloo,
    MethodKind::ReinforcePp,
];

/// The budget of a preset.
struct Budget {
    seeds: usize,
    demos: usize,
    sft_epochs: usize,
    /// Epochs of the sizes that peak sooner (see `SftStage::epochs_by_size`).
    sft_epochs_by_size: Vec<(&'static str, usize)>,
    sft_batch: usize,
    sft_lr: f64,
    vocab: usize,
    train_prompts: usize,
    eval_prompts: usize,
    samples: usize,
    curve_prompts: usize,
    iterations: usize,
    episodes: usize,
    /// The on-policy methods' learning rate.
    rl_lr: f64,
    eval_every: usize,
    volumes: Vec<usize>,
    base_pairs: usize,
    /// The `policy_size` axis's sizes (the pooled RM samples every one of them).
    policy_sizes: Vec<&'static str>,
    /// The `rm_size` axis's sizes.
    rm_sizes: Vec<&'static str>,
    base_size: &'static str,
    ns: Vec<usize>,
    /// β of the base point (every axis but `method` and `kl_budget` runs it).
    base_beta: f64,
    /// β of each on-policy method on the `method` axis.
    method_betas: Vec<f64>,
    /// DPO's and EXO's β on the `method` axis.
    dpo_betas: Vec<f32>,
    /// DPO's and EXO's learning rate (one epoch over the base RM's pairs).
    offline_lr: f64,
    /// PPO's β on the `kl_budget` axis (0 included).
    kl_betas: Vec<f64>,
    kl_iterations: usize,
    best_of: Vec<usize>,
    methods: Vec<MethodKind>,
    /// The `supervision` and `supervision_rl` axes.
    arith: ArithBudget,
}

/// The budget of the `arith-steps` axes: the task's difficulty, its SFT policy, the candidates,
/// the verifiers and the RL runs (see [`crate::arith`]).
struct ArithBudget {
    /// Terms of an in-domain prompt (`terms − 1` steps).
    terms: usize,
    /// Terms of an out-of-distribution prompt.
    ood_terms: usize,
    max_operand: i64,
    /// The noisy solver's error rate per step.
    step_error: f64,
    /// The policy's and the verifiers' size.
    size: &'static str,
    demos: usize,
    sft_epochs: usize,
    sft_batch: usize,
    sft_lr: f64,
    /// Held-out prompts, in-domain and out of distribution each.
    eval_prompts: usize,
    /// Candidates per held-out prompt.
    n: usize,
    /// Labelled solutions per verifier (the RL runs use the largest).
    solutions: Vec<usize>,
    /// Labelled solutions per training prompt: contrasts between solutions of one prompt.
    solutions_per_prompt: usize,
    /// Held-out labelled solutions.
    eval_solutions: usize,
    rm_epochs: usize,
    rm_lr: f64,
    /// New tokens at most (enough for an out-of-distribution solution).
    max_new_tokens: usize,
    /// RL: training prompts, iterations, prompts per iteration, samples per prompt, new tokens
    /// per sample, learning rate.
    rl_prompts: usize,
    rl_iterations: usize,
    rl_prompts_per_batch: usize,
    rl_group: usize,
    rl_response_length: usize,
    rl_lr: f64,
    /// Samples per held-out prompt of the policy after RL.
    rl_samples: usize,
}

/// The seeds a preset runs when `--seeds` is not given: `smoke` one (CI), `quick` three, `full`
/// five (a verdict needs an interval over seeds; see [`crate::stats`]).
pub fn default_seeds(preset: &str) -> Vec<u64> {
    budget(preset).map_or_else(|_| vec![0], |b| (0..b.seeds as u64).collect())
}

// One piece, over 80 lines: a table, the `Budget` literal (with its `ArithBudget`) of each of
// smoke, quick and full side by side, so one knob reads across the three presets in one place.
fn budget(preset: &str) -> Result<Budget> {
    Ok(match preset {
        "smoke" => Budget {
            seeds: 1,
            demos: 240,
            sft_epochs: 2,
            sft_epochs_by_size: Vec::new(),
            sft_batch: 16,
            sft_lr: 3e-3,
            vocab: 384,
            train_prompts: 64,
            eval_prompts: 32,
            samples: 2,
            curve_prompts: 16,
            iterations: 2,
            episodes: 16,
            rl_lr: 3e-4,
            eval_every: 1,
            volumes: vec![64, 128],
            base_pairs: 128,
            policy_sizes: vec!["xs"],
            rm_sizes: vec!["xs"],
            base_size: "xs",
            ns: vec![1, 4],
            base_beta: 0.05,
            method_betas: vec![0.05],
            dpo_betas: vec![0.3],
            offline_lr: 1e-4,
            kl_betas: vec![0.0, 0.05],
            kl_iterations: 2,
            best_of: vec![1, 4],
            methods: vec![MethodKind::Ppo, MethodKind::Grpo, MethodKind::Dpo],
            arith: ArithBudget {
                terms: 3,
                ood_terms: 4,
                max_operand: 9,
                step_error: 0.1,
                size: "xs",
                demos: 128,
                sft_epochs: 1,
                sft_batch: 32,
                sft_lr: 3e-3,
                eval_prompts: 16,
                n: 4,
                solutions: vec![32, 64],
                eval_solutions: 32,
                solutions_per_prompt: 2,
                rm_epochs: 1,
                rm_lr: 1e-3,
                max_new_tokens: 48,
                rl_prompts: 32,
                rl_iterations: 2,
                rl_prompts_per_batch: 4,
                rl_group: 4,
                rl_response_length: 32,
                rl_lr: 1e-4,
                rl_samples: 2,
            },
        },
        "quick" => Budget {
            seeds: 3,
            demos: 2400,
            sft_epochs: 24,
            // on 2,400 demonstrations `l` scores higher held-out gold after 6 epochs than after
            // 24, at a quarter of the cost; `s` scores lower at 12 than at 24 (docs/tasks.md)
            sft_epochs_by_size: vec![("l", 6)],
            sft_batch: 64,
            sft_lr: 6e-3,
            vocab: 512,
            train_prompts: 1024,
            eval_prompts: 512,
            samples: 4,
            curve_prompts: 128,
            iterations: 12,
            episodes: 64,
            // 12 iterations need a larger step than full's 100: at 3e-4 PPO's KL stays near 1
            // at every β, 0 included, so neither the penalty nor the RM's errors come into play
            rl_lr: 1e-3,
            eval_every: 2,
            volumes: vec![250, 500, 1000, 2000],
            base_pairs: 1000,
            // `l` spans 31× over `xs` in non-embedding parameters; both axes share the SFT
            // models of `s` and `l`, so no size is trained for one axis alone
            policy_sizes: vec!["xs", "s", "l"],
            rm_sizes: vec!["xs", "s", "l"],
            base_size: "xs",
            ns: vec![1, 2, 4, 8],
            base_beta: 0.05,
            method_betas: vec![0.02, 0.05, 0.1],
            dpo_betas: vec![0.1, 0.3, 1.0],
            // at 1e-4 the offline sweeps end within KL 0.3 of the SFT policy, below any KL the
            // on-policy runs measure (their first evaluation lies near KL 1), so no KL is
            // common to both; at 5e-4 they span about 0.5–2 (docs/tasks.md)
            offline_lr: 5e-4,
            kl_betas: vec![0.0, 0.01, 0.02, 0.05, 0.1, 0.2],
            // twice the other axes' iterations: at 12, gold still rises at every β; at 24 the
            // proxy and the gold score part at small β (docs/tasks.md)
            kl_iterations: 24,
            best_of: vec![1, 4, 16],
            // RLOO and REINFORCE++ (critic-free like GRPO, with other baselines) run in `full`
            // only: their six points per seed did not fit quick's budget
            methods: vec![
                MethodKind::Ppo,
                MethodKind::Grpo,
                MethodKind::Dpo,
                MethodKind::Exo,
            ],
            arith: ArithBudget {
                terms: 5,
                ood_terms: 6,
                max_operand: 5,
                step_error: 0.1,
                size: "m",
                demos: 3000,
                sft_epochs: 16,
                sft_batch: 32,
                sft_lr: 3e-3,
                eval_prompts: 256,
                n: 8,
                solutions: vec![250, 500, 1000],
                eval_solutions: 256,
                solutions_per_prompt: 4,
                rm_epochs: 8,
                rm_lr: 1e-3,
                max_new_tokens: 80,
                rl_prompts: 1024,
                rl_iterations: 20,
                rl_prompts_per_batch: 8,
                rl_group: 8,
                rl_response_length: 56,
                rl_lr: 1e-4,
                rl_samples: 4,
            },
        },
        "full" => Budget {
            seeds: 5,
            demos: 8000,
            sft_epochs: 8,
            sft_epochs_by_size: Vec::new(),
            sft_batch: 32,
            sft_lr: 3e-3,
            vocab: 1024,
            train_prompts: 8192,
            eval_prompts: 1024,
            samples: 4,
            curve_prompts: 256,
            iterations: 100,
            episodes: 128,
            rl_lr: 3e-4,
            eval_every: 5,
            volumes: vec![250, 1000, 4000, 16000],
            base_pairs: 4000,
            policy_sizes: vec!["xs", "s", "m", "l", "tiny-25m"],
            rm_sizes: vec!["xs", "s", "m", "l", "tiny-25m"],
            base_size: "m",
            ns: vec![1, 2, 4, 8, 16],
            base_beta: 0.05,
            method_betas: vec![0.01, 0.02, 0.05, 0.1, 0.2],
            dpo_betas: vec![0.05, 0.1, 0.3, 1.0],
            offline_lr: 1e-4,
            kl_betas: vec![0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2],
            kl_iterations: 300,
            best_of: vec![1, 2, 4, 8, 16, 32, 64],
            methods: vec![
                MethodKind::Ppo,
                MethodKind::Grpo,
                MethodKind::Rloo,
                MethodKind::ReinforcePp,
                MethodKind::Dpo,
                MethodKind::Exo,
            ],
            arith: ArithBudget {
                terms: 5,
                ood_terms: 7,
                max_operand: 9,
                step_error: 0.1,
                size: "l",
                demos: 8000,
                sft_epochs: 16,
                sft_batch: 32,
                sft_lr: 2e-3,
                eval_prompts: 1024,
                n: 16,
                solutions: vec![500, 1000, 2000, 4000, 8000],
                eval_solutions: 1000,
                solutions_per_prompt: 4,
                rm_epochs: 8,
                rm_lr: 1e-3,
                max_new_tokens: 80,
                rl_prompts: 8192,
                rl_iterations: 100,
                rl_prompts_per_batch: 16,
                rl_group: 8,
                rl_response_length: 56,
                rl_lr: 1e-4,
                rl_samples: 4,
            },
        },
        other => {
            return Err(Error::Config(format!(
                "unknown preset {other:?}: smoke, quick or full"
            )));
        }
    })
}

/// The method's name in labels (`ppo`, `reinforce_pp`, …).
pub fn method_name(kind: MethodKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

/// The points of `preset` on `axes` (all when empty) for `seeds`, on `device`.
pub fn preset_points(
    preset: &str,
    axes: &[String],
    seeds: &[u64],
    device: &str,
) -> Result<Vec<Point>> {
    let b = budget(preset)?;
    let wanted: Vec<Axis> = axes.iter().map(|a| Axis::parse(a)).collect::<Result<_>>()?;
    let base = base_config(&b, device);
    let values = [
        rm_volume_points(&b, &base),
        rm_diversity_points(&base),
        size_points(&b, &base),
        samples_per_prompt_points(&b, &base),
        method_points(&b, &base),
        kl_budget_points(&b, &base),
        best_of_n_points(&b, &base),
        length_control_points(&b, &base),
        supervision_points(&b.arith, device),
        supervision_rl_points(&b.arith, device),
    ]
    .concat();
    let mut points = Vec::new();
    for value in values {
        if wanted.is_empty() || wanted.contains(&value.axis) {
            for &seed in seeds {
                let mut point = value.clone();
                point.config.seed = seed;
                points.push(point);
            }
        }
    }
    Ok(points)
}

/// The base point's configuration: the budget's task, judge, SFT, RM of the base size and PPO
/// at the base β (each axis varies it).
fn base_config(b: &Budget, device: &str) -> RunConfig {
    let mut base = RunConfig {
        device: device.to_string(),
        ..RunConfig::default()
    };
    base.task.tldr = TldrConfig::study();
    base.task.demos = b.demos;
    base.task.vocab_size = b.vocab;
    base.task.train_prompts = b.train_prompts;
    base.task.eval_prompts = b.eval_prompts;
    base.judge.samples = b.samples;
    base.judge.curve_prompts = b.curve_prompts;
    base.judge.eval_every = b.eval_every;
    base.sft.epochs = b.sft_epochs;
    base.sft.epochs_by_size = b
        .sft_epochs_by_size
        .iter()
        .map(|&(size, e)| (size.to_string(), e))
        .collect();
    base.sft.batch_size = b.sft_batch;
    base.sft.lr = b.sft_lr;
    base.sft.policy_size = b.base_size.into();
    base.rm.size = b.base_size.into();
    base.rm.pairs = b.base_pairs;
    base.rm.eval_pairs = 300;
    base.method.ppo.iterations = b.iterations;
    base.method.ppo.prompts_per_batch = b.episodes;
    base.method.ppo.optimizer.lr = b.rl_lr;
    base.method.ppo.kl = KlController::Fixed { value: b.base_beta };
    base.method.best_of_n_max = b.best_of.iter().copied().max().unwrap_or(1);
    base
}

/// One value of an axis, as a point with the default seed (`preset_points` makes one per seed).
fn value(axis: Axis, label: String, x: f64, config: RunConfig) -> Point {
    Point {
        axis,
        label,
        x,
        config,
    }
}

/// `base` run by the on-policy method `kind` with `n` samples per prompt (the budget's episodes
/// shared between them) at β = `beta`.
fn on_policy(b: &Budget, base: &RunConfig, kind: MethodKind, n: usize, beta: f64) -> RunConfig {
    let mut c = base.clone();
    c.method.kind = kind;
    c.method.ppo.samples_per_prompt = n;
    c.method.ppo.prompts_per_batch = (b.episodes / n).max(1);
    c.method.ppo.kl = KlController::Fixed { value: beta };
    c
}

/// `base` run by PPO at β = `beta`.
fn ppo(b: &Budget, base: &RunConfig, beta: f64) -> RunConfig {
    on_policy(b, base, MethodKind::Ppo, 1, beta)
}

/// `c` without policy optimisation, for RM accuracy against pairs: best-of-1 judges the SFT
/// policy's samples and the RM scores them.
fn rm_only(mut c: RunConfig) -> RunConfig {
    c.method.kind = MethodKind::BestOfN;
    c.method.best_of_n = 1;
    c.method.best_of_n_max = 1;
    c
}

/// `rm_volume`: the RM's training pairs.
fn rm_volume_points(b: &Budget, base: &RunConfig) -> Vec<Point> {
    b.volumes
        .iter()
        .map(|&v| {
            let mut c = base.clone();
            c.rm.pairs = v;
            value(Axis::RmVolume, v.to_string(), v as f64, rm_only(c))
        })
        .collect()
}

/// `rm_diversity`: a fixed pair budget, many prompts × 1 pair vs few prompts × 4 pairs.
fn rm_diversity_points(base: &RunConfig) -> Vec<Point> {
    [1usize, 4]
        .iter()
        .map(|&k| {
            let mut c = base.clone();
            c.rm.pairs_per_prompt = k;
            let label = format!("{k}-per-prompt");
            value(Axis::RmDiversity, label, k as f64, rm_only(c))
        })
        .collect()
}

/// `rm_size` and `policy_size`, size by size: PPO against an RM of each size, and each size's
/// policy against one RM of the base size, trained on every policy size's samples.
fn size_points(b: &Budget, base: &RunConfig) -> Vec<Point> {
    let mut points = Vec::new();
    for (i, s) in b.rm_sizes.iter().enumerate() {
        let mut c = ppo(b, base, b.base_beta);
        c.rm.size = (*s).into();
        points.push(value(Axis::RmSize, (*s).into(), i as f64, c));
    }
    for (i, s) in b.policy_sizes.iter().enumerate() {
        let mut c = ppo(b, base, b.base_beta);
        c.sft.policy_size = (*s).into();
        c.rm.sample_from = b.policy_sizes.iter().map(|s| s.to_string()).collect();
        points.push(value(Axis::PolicySize, (*s).into(), i as f64, c));
    }
    points
}

/// `samples_per_prompt`: PPO with `n` samples per prompt.
fn samples_per_prompt_points(b: &Budget, base: &RunConfig) -> Vec<Point> {
    b.ns.iter()
        .map(|&n| {
            let c = on_policy(b, base, MethodKind::Ppo, n, b.base_beta);
            value(Axis::SamplesPerPrompt, n.to_string(), n as f64, c)
        })
        .collect()
}

/// `method`: each on-policy method at each of its βs (GRPO and RLOO with 4 samples per
/// prompt), DPO and EXO at each of theirs; x numbers the values.
fn method_points(b: &Budget, base: &RunConfig) -> Vec<Point> {
    let mut points = Vec::new();
    let mut x = 0.0;
    for &kind in &b.methods {
        let name = method_name(kind);
        if ON_POLICY.contains(&kind) {
            let n = if matches!(kind, MethodKind::Grpo | MethodKind::Rloo) {
                4
            } else {
                1
            };
            for &beta in &b.method_betas {
                let c = on_policy(b, base, kind, n, beta);
                points.push(value(Axis::Method, format!("{name}-{beta}"), x, c));
                x += 1.0;
            }
        } else {
            for &beta in &b.dpo_betas {
                let mut c = base.clone();
                c.method.kind = kind;
                c.method.dpo_beta = beta;
                c.method.dpo_lr = b.offline_lr;
                points.push(value(Axis::Method, format!("{name}-{beta}"), x, c));
                x += 1.0;
            }
        }
    }
    points
}

/// `kl_budget`: PPO at each β (0 included), for the budget's `kl_iterations`.
fn kl_budget_points(b: &Budget, base: &RunConfig) -> Vec<Point> {
    b.kl_betas
        .iter()
        .map(|&beta| {
            let mut c = ppo(b, base, beta);
            c.method.ppo.iterations = b.kl_iterations;
            value(Axis::KlBudget, beta.to_string(), beta, c)
        })
        .collect()
}

/// `best_of_n`: best-of-n against the RM for each n.
fn best_of_n_points(b: &Budget, base: &RunConfig) -> Vec<Point> {
    b.best_of
        .iter()
        .map(|&n| {
            let mut c = base.clone();
            c.method.kind = MethodKind::BestOfN;
            c.method.best_of_n = n;
            value(Axis::BestOfN, n.to_string(), n as f64, c)
        })
        .collect()
}

/// `length_control`: PPO against the RM, against its length-only part, and against the gold
/// score itself (the ceiling of any RM at this budget, for the calibration).
fn length_control_points(b: &Budget, base: &RunConfig) -> Vec<Point> {
    let rm = ppo(b, base, b.base_beta);
    let mut length_only = ppo(b, base, b.base_beta);
    length_only.method.reward = RewardSource::RmLength;
    let mut gold = ppo(b, base, b.base_beta);
    gold.method.reward = RewardSource::Gold;
    vec![
        value(Axis::LengthControl, "rm".into(), 0.0, rm),
        value(Axis::LengthControl, "length-only".into(), 1.0, length_only),
        value(Axis::LengthControl, "gold".into(), 2.0, gold),
    ]
}

/// The verifiers of the `arith-steps` axes, with their label's word.
const SUPERVISIONS: [(Supervision, &str); 2] = [
    (Supervision::Outcome, "outcome"),
    (Supervision::Process, "process"),
];

/// An `arith-steps` point: a verifier of `supervision` trained on `solutions` labelled
/// solutions, picking the best of `a.n` candidates of the SFT policy (see `crate::arith`).
fn arith_config(
    a: &ArithBudget,
    device: &str,
    supervision: Supervision,
    solutions: usize,
) -> RunConfig {
    let mut c = RunConfig {
        device: device.to_string(),
        ..RunConfig::default()
    };
    c.task.name = "arith-steps".into();
    // not read by arith-steps: every point of a preset carries the study's demonstrator
    c.task.tldr = TldrConfig::study();
    c.task.demos = a.demos;
    c.task.eval_prompts = a.eval_prompts;
    c.task.train_prompts = a.rl_prompts;
    c.task.arith = ArithConfig {
        max_operand: a.max_operand,
        terms: a.terms,
        ood_terms: a.ood_terms,
        step_error: a.step_error,
    };
    c.sft.policy_size = a.size.into();
    c.sft.epochs = a.sft_epochs;
    c.sft.batch_size = a.sft_batch;
    c.sft.lr = a.sft_lr;
    c.rm.size = a.size.into();
    c.rm.supervision = supervision;
    c.rm.pairs = solutions;
    c.rm.eval_pairs = a.eval_solutions;
    c.rm.pairs_per_prompt = a.solutions_per_prompt;
    c.rm.epochs = a.rm_epochs;
    c.rm.lr = a.rm_lr;
    c.method.kind = MethodKind::BestOfN;
    c.method.best_of_n = a.n;
    c.method.best_of_n_max = a.n;
    c.judge.samples = a.rl_samples;
    c.judge.max_new_tokens = a.max_new_tokens;
    c
}

/// `supervision`: outcome vs process verifiers of `arith-steps` on the same solutions, per
/// volume of labelled solutions.
fn supervision_points(a: &ArithBudget, device: &str) -> Vec<Point> {
    let mut points = Vec::new();
    for (supervision, kind) in SUPERVISIONS {
        for &v in &a.solutions {
            let c = arith_config(a, device, supervision, v);
            points.push(value(Axis::Supervision, format!("{kind}-{v}"), v as f64, c));
        }
    }
    points
}

/// `supervision_rl`: GRPO against each kind of verifier, trained on the most solutions.
fn supervision_rl_points(a: &ArithBudget, device: &str) -> Vec<Point> {
    let largest = a.solutions.iter().copied().max().unwrap_or(1);
    let mut points = Vec::new();
    for (i, (supervision, kind)) in SUPERVISIONS.into_iter().enumerate() {
        let mut c = arith_config(a, device, supervision, largest);
        c.method.kind = MethodKind::Grpo;
        c.method.ppo = PpoConfig {
            iterations: a.rl_iterations,
            prompts_per_batch: a.rl_prompts_per_batch,
            samples_per_prompt: a.rl_group,
            response_length: a.rl_response_length,
            // trained at the temperature pass@1 is judged at
            temperature: c.judge.temperature,
            optimizer: rlhf_core::train::OptimizerConfig {
                lr: a.rl_lr,
                ..Default::default()
            },
            ..PpoConfig::grpo()
        };
        points.push(value(Axis::SupervisionRl, kind.into(), i as f64, c));
    }
    points
}

/// The git revision of the working directory (`-dirty` when it has uncommitted changes), or
/// `unknown`.
pub fn git_revision() -> String {
    std::process::Command::new("git")
        .args(["describe", "--always", "--dirty", "--abbrev=40"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(
            || "unknown".into(),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_string(),
        )
}

/// What a sweep did.
#[derive(Debug, Clone, Default)]
pub struct SweepReport {
    /// Points run by this call.
    pub ran: usize,
    /// Points whose identical run (same configuration and seed) was stored under another axis.
    pub copied: usize,
    /// Points found finished and skipped.
    pub skipped: usize,
    /// Points another sweep sharing the directory claimed and had not finished when this one
    /// ended (that sweep stores them, and the sweep that finishes last writes the report).
    pub elsewhere: usize,
}

/// Runs every point of `points` whose result is not yet in `out/points/`, in order, with a
/// progress bar; logs one line per point to stderr. Sweeps on several machines (or processes)
/// may share `out`: each point is claimed with an advisory lock on `points/NAME.lock` (the stage
/// cache's lock), so it runs once; a point another sweep holds is passed over and looked at again
/// at the end, when it is run here only if that sweep let it go unfinished (it died).
pub fn sweep(points: &[Point], out: &Path, progress: bool) -> Result<SweepReport> {
    sweep_with(points, out, progress, &run)
}

/// [`sweep`] with the function that runs one point's configuration (`run(config, cache, work)`).
// One piece, over 80 lines: both passes over the points (in order, then those another sweep
// held) call `run_point`, a closure over the progress bar, the log, the cache of stored points
// and the caller's `run`; apart, these would have to travel together in a struct.
pub fn sweep_with(
    points: &[Point],
    out: &Path,
    progress: bool,
    run: &dyn Fn(&RunConfig, &Path, &Path) -> Result<RunResult>,
) -> Result<SweepReport> {
    let dir = out.join("points");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let cache = out.join("cache");
    let revision = git_revision();
    let bar = if progress {
        ProgressBar::with_draw_target(Some(points.len() as u64), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>8} [{elapsed_precise}] {wide_bar} {pos}/{len} eta {eta} {msg}",
        )
        .expect("a valid template"),
    );
    bar.set_prefix("sweep");
    let log = |line: String| {
        if progress {
            bar.println(line);
        } else {
            tracing::info!("{line}");
        }
    };
    let mut report = SweepReport::default();
    // the points stored so far (by earlier sweeps, by this one and by sweeps beside it), for
    // identical runs
    let mut stored = read_points(out)?;
    let mut run_point = |p: &Point, report: &mut SweepReport| -> Result<()> {
        let path = dir.join(p.file_name());
        bar.set_message(p.file_name());
        let start = Instant::now();
        // several axes share a run (the base PPO point appears on several): a stored point with
        // the same configuration and seed already has its result
        if !stored.iter().any(|r| r.point.config == p.config) {
            stored = read_points(out)?;
        }
        let same = stored.iter().find(|r| r.point.config == p.config).cloned();
        let copied = same.is_some();
        let record = match same {
            Some(r) => {
                log(format!("same run as  {}", r.point.file_name()));
                PointRecord {
                    point: p.clone(),
                    git_revision: r.git_revision,
                    result: r.result,
                }
            }
            None => {
                let work: PathBuf = out
                    .join("work")
                    .join(p.file_name().trim_end_matches(".json"));
                let result = run(&p.config, &cache, &work)?;
                let _ = std::fs::remove_dir_all(&work);
                PointRecord {
                    point: p.clone(),
                    git_revision: revision.clone(),
                    result,
                }
            }
        };
        let json =
            serde_json::to_string_pretty(&record).map_err(|e| Error::Record(e.to_string()))?;
        write_atomic(&path, json.as_bytes())?;
        let metric = |name: &str| record.result.metrics.get(name).copied();
        log(format!(
            "done {:6.1} s  {}  gold {:.3}  kl {:.2}",
            start.elapsed().as_secs_f64(),
            p.file_name(),
            metric(crate::metrics::names::GOLD).unwrap_or(f64::NAN),
            metric(crate::metrics::names::KL).unwrap_or(f64::NAN)
        ));
        stored.push(record);
        if copied {
            report.copied += 1;
        } else {
            report.ran += 1;
        }
        Ok(())
    };
    let mut held_elsewhere = Vec::new();
    for p in points {
        match claim(&dir, p)? {
            Claim::Done => {
                log(format!("skip (done)  {}", p.file_name()));
                report.skipped += 1;
            }
            Claim::HeldElsewhere => {
                log(format!("elsewhere    {}", p.file_name()));
                held_elsewhere.push(p);
                continue;
            }
            Claim::Mine(lock) => {
                run_point(p, &mut report)?;
                lock.release();
            }
        }
        bar.inc(1);
    }
    // the points another sweep held: run here those it gave up unfinished
    for p in held_elsewhere {
        match claim(&dir, p)? {
            Claim::Done => report.skipped += 1,
            Claim::HeldElsewhere => report.elsewhere += 1,
            Claim::Mine(lock) => {
                run_point(p, &mut report)?;
                lock.release();
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(report)
}

/// Whether every point of `points` is stored in `out/points/` (the sweep that finds them all
/// stored when it ends writes the report).
pub fn all_stored(points: &[Point], out: &Path) -> bool {
    points
        .iter()
        .all(|p| out.join("points").join(p.file_name()).exists())
}

/// A point as a sweep finds it.
enum Claim {
    /// Its result is stored.
    Done,
    /// Another sweep holds its lock.
    HeldElsewhere,
    /// This sweep holds its lock and runs it.
    Mine(PointLock),
}

/// The advisory lock on `points/NAME.lock`, held while a point runs.
struct PointLock {
    file: std::fs::File,
    path: PathBuf,
}

impl PointLock {
    /// Removes the lock file (after the point's result is stored, so a sweep that was waiting on
    /// it, or that creates it anew, finds the point done) and lets the lock go.
    fn release(self) {
        let _ = std::fs::remove_file(&self.path);
        drop(self.file);
    }
}

/// Claims `p` in `dir` without waiting: done when its result is there, held elsewhere when
/// another sweep holds its lock, else locked for this sweep (and checked again for a result
/// stored between the first look and the lock).
fn claim(dir: &Path, p: &Point) -> Result<Claim> {
    let path = dir.join(p.file_name());
    if path.exists() {
        return Ok(Claim::Done);
    }
    let lock_path = dir.join(format!("{}.lock", p.file_name().trim_end_matches(".json")));
    let file = crate::cache::lock_file(&lock_path)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Ok(Claim::HeldElsewhere),
        Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&lock_path, e)),
    }
    let lock = PointLock {
        file,
        path: lock_path,
    };
    if path.exists() {
        lock.release();
        return Ok(Claim::Done);
    }
    Ok(Claim::Mine(lock))
}

/// Reads every stored point of `out/points/`, sorted by file name.
pub fn read_points(out: &Path) -> Result<Vec<PointRecord>> {
    let dir = out.join("points");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| Error::io(&dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).map_err(|e| Error::io(f, e))?;
            serde_json::from_str(&text).map_err(|e| Error::Data {
                file: f.clone(),
                line: e.line(),
                field: "point".into(),
                message: e.to_string(),
            })
        })
        .collect()
}
