//! The `arith-steps` study: outcome against process supervision of a verifier, the seed paper's
//! "process supervision scales better in-domain", at CPU scale — reranking the SFT policy's
//! samples, and training the policy against each verifier.
//!
//! 1. **The policy** ([`policy`]): an SFT model trained on the noisy solver's demonstrations
//!    (`task.demos` prompts of `task.arith.terms` terms; each step of a demonstration errs with
//!    `task.arith.step_error`, and later steps build on the wrong value), cached per size,
//!    budget and seed.
//! 2. **Candidates** ([`policy::candidates`]): `method.best_of_n` samples per prompt of the SFT
//!    policy at `judge.temperature`, on `task.eval_prompts` held-out in-domain prompts and as
//!    many out-of-distribution ones (`task.arith.ood_terms` terms: longer chains), drawn once
//!    per seed. The gold judges each candidate's final answer, and the baselines are read off
//!    them ([`baselines`]): best-of-1 (the SFT policy's pass@1), a random pick, majority vote
//!    over the final answers (self-consistency) and the oracle (any candidate right).
//! 3. **Verifiers** ([`verifier`]): a scalar model initialised from the SFT model of `rm.size`,
//!    trained with binary cross-entropy on `rm.pairs` solutions sampled from the SFT policy,
//!    `rm.pairs_per_prompt` on each training prompt (contrasts within a prompt): one label per solution (is its answer right?) for an outcome verifier,
//!    one per step (is the solution right up to here?) for a process verifier, as
//!    `rm.supervision` says. Both kinds see the same solutions, and a smaller volume's solutions
//!    are the first of a larger's. Each verifier picks its best candidate per prompt; the gold
//!    judges the pick.
//! 4. **RL** ([`rl`], `method.kind` an on-policy method): the SFT policy trained against the
//!    verifier on `task.train_prompts` in-domain prompts, then its pass@1 judged on the same
//!    held-out prompts as the candidates, in-domain and out of distribution.
//!
//! Every value measured per held-out prompt is stored as a metric (its mean) and as items (see
//! [`crate::metrics::arith`]), so the findings ([`findings`]) pair points of a seed prompt by
//! prompt; the report's tables and text are in [`report`].

mod baselines;
mod findings;
mod policy;
mod report;
mod rl;
mod verifier;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use rlhf_core::Result;

use crate::config::{MethodKind, RunConfig};
use crate::metrics::{arith as am, names};
use crate::pipeline::{RunResult, peak_memory_bytes};

pub(crate) use findings::findings;
pub(crate) use report::report_section;
pub use report::{RL_TABLE, TABLE};

/// Runs an `arith-steps` configuration: the verifier's best-of-n for `best_of_n`, RL against the
/// verifier for an on-policy method (see the module documentation).
pub fn run_arith(cfg: &RunConfig, cache: &Path, work: &Path) -> Result<RunResult> {
    if cfg.method.kind == MethodKind::BestOfN {
        run_verifier(cfg, cache)
    } else {
        rl::run_rl(cfg, cache, work)
    }
}

/// Per-prompt values by name, and their means as metrics.
#[derive(Default)]
pub(crate) struct Measured {
    pub metrics: BTreeMap<String, f64>,
    pub items: BTreeMap<String, Vec<f64>>,
}

impl Measured {
    /// Stores `values` (one per prompt) as items and their mean as a metric, under `name`.
    pub fn per_prompt(&mut self, name: &str, values: Vec<f64>) {
        self.metrics
            .insert(name.into(), crate::stats::mean(&values));
        self.items.insert(name.into(), values);
    }

    /// Stores one metric.
    pub fn metric(&mut self, name: &str, value: f64) {
        self.metrics.insert(name.into(), value);
    }
}

/// A verifier point: the SFT policy's candidates reranked by the verifier, beside the baselines.
fn run_verifier(cfg: &RunConfig, cache: &Path) -> Result<RunResult> {
    let start = Instant::now();
    let device = rlhf_core::parse_device(&cfg.device)?.autodiff();
    let setup = policy::Setup::new(cfg, cache)?;
    let mut out = Measured::default();
    let sft = setup.sft(&cfg.sft.policy_size, &device)?;
    setup.add_sft_metrics(&sft, &mut out);
    let backbone = setup.sft(&cfg.rm.size, &device)?;
    let stage = verifier::train(&setup, &sft, &backbone, &device)?;
    stage.add_metrics(&mut out);
    let scorer = stage.scorer(&setup.tok, &device);

    // the untrained verifier: the SFT model's own likelihood, the prior training starts from
    let untrained = stage.untrained_scorer(&backbone, &setup.tok, &device);

    let method_start = Instant::now();
    for (split, pick, vote, pairs, prior, prior_pairs) in [
        (
            policy::Held::InDomain,
            am::PICK,
            am::WEIGHTED_VOTE,
            am::PAIR_ACCURACY,
            am::LIKELIHOOD,
            Some(am::LIKELIHOOD_PAIR_ACCURACY),
        ),
        (
            policy::Held::Ood,
            am::PICK_OOD,
            am::WEIGHTED_VOTE_OOD,
            am::PAIR_ACCURACY_OOD,
            am::LIKELIHOOD_OOD,
            None,
        ),
    ] {
        let c = setup.candidates(&sft, split)?;
        baselines::add(&c, split, &mut out);
        let scores = c.score(&scorer)?;
        out.per_prompt(pick, baselines::verifier_picks(&c, &scores));
        out.per_prompt(vote, baselines::weighted_vote_picks(&c, &scores));
        if let Some(p) = baselines::pair_accuracy(&c, &scores) {
            out.metric(pairs, p);
        }
        let prior_scores = c.score(&untrained)?;
        out.per_prompt(prior, baselines::verifier_picks(&c, &prior_scores));
        if let Some((name, p)) = prior_pairs.zip(baselines::pair_accuracy(&c, &prior_scores)) {
            out.metric(name, p);
        }
    }
    out.metric(names::TIME_METHOD, method_start.elapsed().as_secs_f64());
    out.metric(names::MEMORY_PEAK, peak_memory_bytes());
    Ok(RunResult {
        metrics: out.metrics,
        items: out.items,
        curve: Vec::new(),
        wall_seconds: start.elapsed().as_secs_f64(),
    })
}
