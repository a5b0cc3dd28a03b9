//! The `arith-steps` run: outcome against process supervision of a verifier, the seed paper's
//! "process supervision scales better in-domain", at CPU scale.
//!
//! 1. The noisy solver of `arith-steps` writes `rm.pairs` solutions of training prompts; each
//!    step errs with `task.arith.step_error`, and later steps build on the wrong value.
//! 2. The gold labels them: one outcome label per solution (is the `ANSWER` right?) for an
//!    outcome RM, or one label per step (is the solution right up to this step?) for a process
//!    RM, as `rm.supervision` says. Both kinds see the same solutions; only the labels differ.
//! 3. The verifier (a scalar model of `rm.size`, trained from scratch with binary cross-entropy)
//!    is evaluated on held-out labelled solutions.
//! 4. Best-of-n: on `task.eval_prompts` held-out prompts the solver writes `method.best_of_n`
//!    candidates; the verifier picks one (an outcome RM by its score at EOS, a process RM by its
//!    lowest step score) and the gold judges the pick's final answer. Beside the pick's accuracy:
//!    a random pick's, a random pick's among the distinct candidates (the right solution is
//!    usually one text sampled several times, and a verifier scores equal texts equally), the
//!    best possible pick's, and the share of (right, wrong) candidate pairs of a prompt that
//!    the verifier orders correctly.
//!
//! The solver stands in for the policy whose samples are reranked: this run measures the
//! verifiers, not an RL stage (the on-policy methods run on `tldr-synth`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use rlhf_core::train::{LrSchedule, OptimizerConfig, try_seeded};
use rlhf_core::{Result, Scorer};
use rlhf_data::tasks::{ArithSteps, Task, with_eos};
use rlhf_data::{Split, Tokenizer};
use rlhf_models::{CausalLm, ScalarModel};
use rlhf_reward::{
    LabelledExample, RewardModel, RewardScorer, RewardSettings, RmConfig, StepAggregate,
    train_step_model,
};

use crate::compute::{Workload, flops};
use crate::config::{RunConfig, Supervision, model_shape};
use crate::cache::quiet_in;
use crate::pipeline::{RunResult, peak_memory_bytes};

/// Bytes and the special tokens, no merges: every digit is its own token, so checking a step is
/// a pattern over aligned digits rather than a lookup of number tokens.
const BYTE_VOCAB: usize = 259;

/// The step delimiter of `arith-steps` solutions.
const DELIMITER: &str = ";";

/// Runs an `arith-steps` configuration (see the module documentation).
pub fn run_arith(cfg: &RunConfig, _cache: &Path, work: &Path) -> Result<RunResult> {
    let start = Instant::now();
    let device = rlhf_core::parse_device(&cfg.device)?.autodiff();
    let a = &cfg.task.arith;
    let task = ArithSteps {
        max_operand: a.max_operand,
        min_terms: a.terms,
        max_terms: a.terms,
        step_error: a.step_error,
        ..ArithSteps::default()
    };
    // each set has its own stream, so a smaller volume's solutions are the first of a larger's
    // and the held-out set is the same at every volume
    let solutions = |split: Split, count: usize, stream: u64| -> Vec<(String, String)> {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed.wrapping_add(stream));
        (0..count as u64)
            .map(|i| {
                let p = task.prompt(split, i);
                let r = with_eos(&task.demonstrate(&p, &mut rng));
                (p, r)
            })
            .collect()
    };
    let train = solutions(Split::Train, cfg.rm.pairs, 11);
    let held_out = solutions(Split::Eval, cfg.rm.eval_pairs, 13);
    let tok = Tokenizer::train_bpe(
        train.iter().flat_map(|(p, r)| [p.as_str(), r.as_str()]),
        BYTE_VOCAB,
    )?;
    let label = |data: &[(String, String)]| -> Result<Vec<LabelledExample>> {
        data.iter()
            .map(|(p, r)| labelled(&task, &tok, cfg.rm.supervision, p, r))
            .collect()
    };
    let (train_set, eval_set) = (label(&train)?, label(&held_out)?);
    let mut m: BTreeMap<String, f64> = BTreeMap::new();

    // the verifier
    let shape = model_shape(&cfg.rm.size, tok.vocab_size())?;
    let init = try_seeded(&device, cfg.seed.wrapping_add(1), || {
        CausalLm::init(&shape, &device)
    })?;
    let steps = (train_set.len().div_ceil(16) * cfg.rm.epochs) as u64;
    let rm_cfg = RmConfig {
        epochs: cfg.rm.epochs,
        batch_size: 16,
        optimizer: OptimizerConfig {
            lr: cfg.rm.lr,
            ..OptimizerConfig::default()
        },
        schedule: LrSchedule::Cosine {
            warmup: (steps / 30).max(1),
            total: steps,
            min_ratio: 0.1,
        },
        seed: cfg.seed.wrapping_add(4),
        ..RmConfig::default()
    };
    let (model, report) = train_step_model(
        ScalarModel::from_backbone(init),
        &train_set,
        &eval_set,
        &rm_cfg,
        &quiet_in(work.join("rm")),
        &device,
    )?;
    let tokens: u64 = train_set
        .iter()
        .map(|e| (e.prompt.len() + e.segments.iter().map(Vec::len).sum::<usize>()) as u64)
        .sum();
    m.insert("rm/accuracy".into(), report.eval.accuracy);
    if let Some(b) = report.eval.gold_accuracy {
        m.insert("rm/balanced_accuracy".into(), b);
    }
    m.insert("rm/steps".into(), report.steps as f64);
    m.insert("params/rm".into(), shape.non_embedding_params() as f64);
    m.insert("tokens/rm".into(), (tokens * cfg.rm.epochs as u64) as f64);
    m.insert(
        "flops/rm".into(),
        flops(
            &shape,
            Workload::Train {
                tokens: tokens * cfg.rm.epochs as u64,
            },
        ) as f64,
    );

    // best-of-n on held-out prompts, judged by the gold
    let settings = match cfg.rm.supervision {
        Supervision::Outcome => RewardSettings::outcome(),
        Supervision::Process => RewardSettings::process(DELIMITER, StepAggregate::Min),
    };
    let rm = RewardModel {
        model,
        config: shape.clone(),
        settings,
    };
    let scorer = RewardScorer::new(rm, tok.clone(), &device.clone().without_autodiff());
    let n = cfg.method.best_of_n;
    let method_start = Instant::now();
    // the candidates depend on the seed only, so every volume and kind reranks the same ones
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed.wrapping_add(12));
    let (mut picked, mut random, mut oracle, mut gold) = (0.0, 0.0, 0.0, 0.0);
    let (mut random_distinct, mut distinct) = (0.0, 0.0);
    let (mut ordered, mut pairs) = (0.0, 0usize);
    for i in 0..cfg.task.eval_prompts as u64 {
        let p = task.prompt(Split::Eval, 100_000 + i);
        let candidates: Vec<String> = (0..n)
            .map(|_| with_eos(&task.demonstrate(&p, &mut rng)))
            .collect();
        let prompts = vec![p.as_str(); n];
        let refs: Vec<&str> = candidates.iter().map(String::as_str).collect();
        let scores = scorer.score(&prompts, &refs)?;
        let best = (0..n).fold(0, |b, j| if scores[j] > scores[b] { j } else { b });
        let right: Vec<f64> = candidates
            .iter()
            .map(|c| task.gold(&p, c).component("outcome"))
            .collect();
        // every (right, wrong) pair of candidates: does the verifier rank the right one higher?
        for (r, &sr) in right.iter().zip(&scores).filter(|(r, _)| **r == 1.0) {
            for (_, &sw) in right.iter().zip(&scores).filter(|(w, _)| **w < *r) {
                pairs += 1;
                ordered += if sr > sw {
                    1.0
                } else if sr == sw {
                    0.5
                } else {
                    0.0
                };
            }
        }
        picked += right[best];
        random += right.iter().sum::<f64>() / n as f64;
        // A verifier gives equal texts equal scores, and the right solution is usually one text
        // written several times. So a random pick among the *distinct* candidates is the
        // baseline a verifier's pick is comparable with.
        let unique: BTreeMap<&str, f64> = candidates
            .iter()
            .map(String::as_str)
            .zip(right.iter().copied())
            .collect();
        random_distinct += unique.values().sum::<f64>() / unique.len() as f64;
        distinct += unique.len() as f64;
        oracle += right.iter().copied().fold(0.0, f64::max);
        gold += task.gold(&p, &candidates[best]).total;
    }
    let prompts = cfg.task.eval_prompts as f64;
    m.insert("bon/accuracy".into(), picked / prompts);
    m.insert("bon/random".into(), random / prompts);
    m.insert("bon/random_distinct".into(), random_distinct / prompts);
    m.insert("bon/distinct".into(), distinct / prompts);
    m.insert("bon/oracle".into(), oracle / prompts);
    if pairs > 0 {
        m.insert("bon/pair_accuracy".into(), ordered / pairs as f64);
    }
    m.insert("gold/mean".into(), gold / prompts);
    m.insert("time/method".into(), method_start.elapsed().as_secs_f64());
    m.insert("memory/peak_bytes".into(), peak_memory_bytes());
    Ok(RunResult {
        metrics: m,
        items: BTreeMap::new(),
        curve: Vec::new(),
        wall_seconds: start.elapsed().as_secs_f64(),
    })
}

/// One solution with its gold labels for `supervision`: the whole response and its outcome, or
/// its steps (each with its delimiter) and their labels.
fn labelled(
    task: &ArithSteps,
    tok: &Tokenizer,
    supervision: Supervision,
    prompt: &str,
    response: &str,
) -> Result<LabelledExample> {
    let (segments, labels) = match supervision {
        Supervision::Outcome => (
            vec![tok.encode(response)?],
            vec![task.gold(prompt, response).component("outcome") == 1.0],
        ),
        Supervision::Process => {
            let (steps, labels) = task.step_labels(prompt, response).unwrap_or_default();
            let segments = steps
                .iter()
                .map(|s| tok.encode(&format!("{s}{DELIMITER}")))
                .collect::<Result<Vec<_>>>()?;
            (segments, labels)
        }
    };
    Ok(LabelledExample {
        prompt: tok.encode(prompt)?,
        segments,
        labels,
    })
}

/// What the `supervision` tables show.
pub const TABLE: &[&str] = &[
    "bon/accuracy",
    "bon/random",
    "bon/random_distinct",
    "bon/oracle",
    "bon/pair_accuracy",
    "rm/accuracy",
    "rm/balanced_accuracy",
    "flops/rm",
];

/// The supervision findings: process against outcome verifiers, per seed at the largest volume.
pub(crate) fn findings(seeds: &[crate::findings::Seed<'_>], out: &mut Vec<crate::findings::Finding>) {
    use crate::axis::Axis;
    use crate::findings::metric;
    let per_seed: Vec<(u64, f64)> = seeds
        .iter()
        .filter_map(|s| {
            let pts = s.axis(Axis::Supervision);
            let largest = |kind: &str| {
                pts.iter()
                    .filter(|p| p.point.label.starts_with(kind))
                    .max_by(|a, b| a.point.x.total_cmp(&b.point.x))
                    .map(|p| metric(p, "bon/accuracy"))
            };
            Some((s.seed, largest("process")? - largest("outcome")?))
        })
        .collect();
    let interval = crate::stats::Interval::over_seeds(&per_seed.iter().map(|x| x.1).collect::<Vec<_>>());
    let verdict = if per_seed.is_empty() {
        crate::stats::Verdict::NotRun
    } else {
        crate::stats::Verdict::of(interval.as_ref())
    };
    out.push(crate::findings::Finding {
        axis: Axis::Supervision,
        claim: "process supervision beats outcome supervision in-domain".into(),
        effect: "best-of-n accuracy at the largest volume, process − outcome".into(),
        sentence: format!(
            "At the largest volume the process verifier's best-of-n accuracy differed from the outcome verifier's by {}.",
            interval.map_or("—".into(), |i| i.show())
        ),
        per_seed,
        interval,
        verdict,
    });
}

/// The supervision axes' extra text in the report.
pub(crate) fn report_section(
    _md: &mut String,
    _seeds: &[crate::findings::Seed<'_>],
    _axis: crate::axis::Axis,
) {
}
