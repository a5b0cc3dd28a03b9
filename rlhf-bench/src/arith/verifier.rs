//! The verifiers of `arith-steps`: their labels, their training (a cached stage, shared by the
//! best-of-n point and the RL point of the same verifier) and their scores.
//!
//! A verifier reads a finished solution as its body with a `;` after the final answer, so that
//! every step — the `ANSWER` line included — ends with the step delimiter:
//! `17+25=42;42-8=34;ANSWER 34;`. An **outcome** verifier learns one label, read at the last
//! `;`: is the final answer right? A **process** verifier learns one label per step, read at
//! each `;`: is the solution right up to and including this step (the `ANSWER` step: every
//! step and the answer right)? Its score of a solution is its lowest step probability; an
//! outcome verifier's is its probability. A solution that never ended (no EOS) scores 0.

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use rlhf_core::train::{LrSchedule, OptimizerConfig, seeded};
use rlhf_core::{Result, Scorer};
use rlhf_data::Tokenizer;
use rlhf_data::tasks::{ArithSteps, EOS, Task};
use rlhf_models::ScalarModel;
use rlhf_reward::{
    LabelledExample, RewardKind, RewardModel, RewardScorer, RewardSettings, RmConfig,
    StepAggregate, train_step_model,
};

use super::Measured;
use super::policy::Setup;
use crate::cache::{cached_dir, finish_stage_run, read_json, stage_run, write_json};
use crate::compute::{Workload, flops};
use crate::config::Supervision;
use crate::metrics::{arith as am, names};
use crate::stages::{Prompts, Sft};

/// The step delimiter of `arith-steps` solutions.
const DELIMITER: &str = ";";

/// The text a verifier reads of `response`: its body with a delimiter after the final answer;
/// `None` when it did not end.
pub(crate) fn verifier_text(response: &str) -> Option<String> {
    let body = response.strip_suffix(EOS)?;
    Some(format!("{}{DELIMITER}", body.trim()))
}

/// Whether every step of `response` is right and there are as many as the prompt has
/// operations (with a right final answer, the process is right too).
fn steps_all_right(task: &ArithSteps, prompt: &str, response: &str) -> bool {
    let operations = task.reference(prompt).split(DELIMITER).count() - 1;
    task.step_labels(prompt, response)
        .is_some_and(|(_, l)| l.len() == operations && l.iter().all(|&x| x))
}

/// A finished solution with its gold labels for `supervision` (`None` when it did not end:
/// verifiers score those 0 without reading them).
pub(crate) fn labelled(
    task: &ArithSteps,
    tok: &Tokenizer,
    supervision: Supervision,
    prompt: &str,
    response: &str,
) -> Result<Option<LabelledExample>> {
    let Some(text) = verifier_text(response) else {
        return Ok(None);
    };
    let right = task.gold(prompt, response).component("outcome") == 1.0;
    let (segments, labels) = match supervision {
        Supervision::Outcome => (vec![tok.encode(&text)?], vec![right]),
        Supervision::Process => {
            let (_, mut steps) = task.step_labels(prompt, response).unwrap_or_default();
            steps.reverse();
            let answer_right = right && steps_all_right(task, prompt, response);
            let pieces: Vec<&str> = text.split_inclusive(DELIMITER).collect();
            let labels = pieces
                .iter()
                .enumerate()
                .map(|(i, piece)| {
                    if piece.starts_with("ANSWER") {
                        i + 1 == pieces.len() && answer_right
                    } else {
                        steps.pop().unwrap_or(false)
                    }
                })
                .collect();
            let segments = pieces
                .iter()
                .map(|piece| tok.encode(piece))
                .collect::<Result<Vec<_>>>()?;
            (segments, labels)
        }
    };
    Ok(Some(LabelledExample {
        prompt: tok.encode(prompt)?,
        segments,
        labels,
    }))
}

/// What a trained verifier measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Summary {
    /// `None` when not measured (JSON has no NaN).
    accuracy: Option<f64>,
    balanced_accuracy: Option<f64>,
    steps: u64,
    solutions: usize,
    labels: usize,
    tokens: f64,
    flops: f64,
}

/// A trained verifier.
pub(crate) struct Stage {
    /// The model.
    pub rm: RewardModel,
    summary: Summary,
}

/// The verifier of `setup`'s `rm` settings: initialised from `backbone` (the SFT model of
/// `rm.size`), trained on `rm.pairs` solutions of `policy`, `rm.pairs_per_prompt` on each training prompt, evaluated on
/// `rm.eval_pairs` held-out ones (cached per kind, backbone, sampler, data and training).
// One piece, over 80 lines: the cached verifier stage: its key and settings, then inside
// `cached_dir` the labelled solutions, the training config, the fit, the save and the summary;
// then the stage loaded back.
pub(crate) fn train(
    setup: &Setup<'_>,
    policy: &Sft,
    backbone: &Sft,
    device: &Device,
) -> Result<Stage> {
    let cfg = setup.cfg;
    let r = &cfg.rm;
    let kind = match r.supervision {
        Supervision::Outcome => "outcome",
        Supervision::Process => "process",
    };
    let key = format!(
        "verifier-{kind}-{}-of-{}-v{}-k{}-h{}-e{}-lr{}",
        backbone.key, policy.key, r.pairs, r.pairs_per_prompt, r.eval_pairs, r.epochs, r.lr
    );
    let dir = setup.root.join(&key);
    let settings = match r.supervision {
        Supervision::Outcome => RewardSettings::outcome(),
        Supervision::Process => RewardSettings::process(DELIMITER, StepAggregate::Min),
    };
    cached_dir(&dir, |tmp| {
        let label = |use_: Prompts, count: usize| -> Result<Vec<LabelledExample>> {
            let mut out = Vec::new();
            for (p, s) in setup.solutions(policy, use_, count, r.pairs_per_prompt)? {
                out.extend(labelled(&setup.task, &setup.tok, r.supervision, &p, &s)?);
            }
            Ok(out)
        };
        let train = label(Prompts::RmPairs, r.pairs)?;
        let eval = label(Prompts::RmEval, r.eval_pairs)?;
        let steps = (train.len().div_ceil(16) * r.epochs) as u64;
        let rm_cfg = RmConfig {
            epochs: r.epochs,
            batch_size: 16,
            optimizer: OptimizerConfig {
                lr: r.lr,
                ..OptimizerConfig::default()
            },
            schedule: LrSchedule::Cosine {
                warmup: (steps / 30).max(1),
                total: steps.max(1),
                min_ratio: 0.1,
            },
            seed: cfg.seed.wrapping_add(4),
            ..RmConfig::default()
        };
        let head = seeded(device, cfg.seed.wrapping_add(3), || {
            ScalarModel::from_backbone(backbone.model.clone())
        });
        let (model, report) =
            train_step_model(head, &train, &eval, &rm_cfg, &stage_run(tmp), device)?;
        let rm = RewardModel {
            model,
            config: backbone.shape.clone(),
            settings: settings.clone(),
        };
        rm.save(&tmp.join("model"))?;
        finish_stage_run(tmp)?;
        let tokens: usize = train
            .iter()
            .map(|e| e.prompt.len() + e.segments.iter().map(Vec::len).sum::<usize>())
            .sum();
        let trained = (tokens * r.epochs) as u64;
        write_json(
            tmp,
            "summary.json",
            &Summary {
                accuracy: Some(report.eval.accuracy).filter(|a| a.is_finite()),
                balanced_accuracy: report.eval.gold_accuracy.filter(|a| a.is_finite()),
                steps: report.steps,
                solutions: train.len(),
                labels: train.iter().map(|e| e.labels.len()).sum(),
                tokens: trained as f64,
                flops: flops(&backbone.shape, Workload::Train { tokens: trained }) as f64,
            },
        )
    })?;
    Ok(Stage {
        rm: RewardModel::load(&dir.join("model"), device)?,
        summary: read_json(&dir, "summary.json")?,
    })
}

impl Stage {
    /// Adds the verifier's held-out accuracies, data and cost.
    pub fn add_metrics(&self, out: &mut Measured) {
        let s = &self.summary;
        out.metric(names::RM_ACCURACY, s.accuracy.unwrap_or(f64::NAN));
        out.metric(
            am::BALANCED_ACCURACY,
            s.balanced_accuracy.unwrap_or(f64::NAN),
        );
        out.metric(am::SOLUTIONS, s.solutions as f64);
        out.metric(am::LABELS, s.labels as f64);
        out.metric("rm/steps", s.steps as f64);
        out.metric(names::TOKENS_RM, s.tokens);
        out.metric(names::FLOPS_RM, s.flops);
        out.metric(
            names::PARAMS_RM,
            self.rm.config.non_embedding_params() as f64,
        );
    }

    /// The verifier served as a [`Scorer`] (see the module documentation).
    pub fn scorer(&self, tok: &Tokenizer, device: &Device) -> Verifier {
        Verifier {
            kind: self.rm.settings.kind,
            inner: RewardScorer::new(self.rm.clone(), tok.clone(), device),
        }
    }
}

/// A trained verifier as a scorer: the probability that a finished solution is right (0 for an
/// unfinished one).
pub(crate) struct Verifier {
    kind: RewardKind,
    inner: RewardScorer,
}

impl Scorer for Verifier {
    fn score(&self, prompts: &[&str], responses: &[&str]) -> Result<Vec<f32>> {
        rlhf_core::check_pairs(prompts, responses)?;
        let mut out = vec![0.0; responses.len()];
        let (mut idx, mut ps, mut texts) = (Vec::new(), Vec::new(), Vec::new());
        for (i, (p, r)) in prompts.iter().zip(responses).enumerate() {
            if let Some(t) = verifier_text(r) {
                idx.push(i);
                ps.push(*p);
                texts.push(t);
            }
        }
        if idx.is_empty() {
            return Ok(out);
        }
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        for (i, s) in idx.into_iter().zip(self.inner.score(&ps, &refs)?) {
            out[i] = match self.kind {
                RewardKind::Outcome => 1.0 / (1.0 + (-s).exp()),
                RewardKind::Process => s,
            };
        }
        Ok(out)
    }

    fn name(&self) -> String {
        match self.kind {
            RewardKind::Outcome => "outcome-verifier".into(),
            RewardKind::Process => "process-verifier".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rlhf_data::tasks::with_eos;

    fn labels(
        supervision: Supervision,
        prompt: &str,
        response: &str,
    ) -> Option<(Vec<String>, Vec<bool>)> {
        let tok = super::super::policy::tokenizer().unwrap();
        let task = ArithSteps::default();
        labelled(&task, &tok, supervision, prompt, response)
            .unwrap()
            .map(|e| {
                let pieces = e.segments.iter().map(|s| tok.decode(s).unwrap()).collect();
                (pieces, e.labels)
            })
    }

    #[test]
    fn the_tokenizer_is_bytes_and_the_special_tokens() {
        let tok = super::super::policy::tokenizer().unwrap();
        assert_eq!(tok.vocab_size(), 258);
        assert_eq!(tok.encode("17+25=42;").unwrap().len(), 9);
        assert_eq!(tok.encode(&with_eos("1")).unwrap().len(), 2);
    }

    #[test]
    fn an_outcome_verifier_learns_the_final_answer_at_the_last_delimiter() {
        let p = "17+25-8+6=";
        let (pieces, l) = labels(
            Supervision::Outcome,
            p,
            &with_eos("17+25=42;42-8=34;34+6=40;ANSWER 40"),
        )
        .unwrap();
        assert_eq!(pieces, ["17+25=42;42-8=34;34+6=40;ANSWER 40;"]);
        assert_eq!(l, [true]);
        // a lucky answer is right for the outcome verifier
        let (_, l) = labels(
            Supervision::Outcome,
            p,
            &with_eos("17+25=43;43-8=34;34+6=40;ANSWER 40"),
        )
        .unwrap();
        assert_eq!(l, [true]);
        let (_, l) = labels(
            Supervision::Outcome,
            p,
            &with_eos("17+25=42;42-8=34;34+6=41;ANSWER 41"),
        )
        .unwrap();
        assert_eq!(l, [false]);
        // unfinished solutions are not labelled
        assert!(labels(Supervision::Outcome, p, "17+25=42;42-8=34").is_none());
    }

    #[test]
    fn a_process_verifier_learns_each_step_and_the_answer_as_the_last() {
        let p = "17+25-8+6=";
        let (pieces, l) = labels(
            Supervision::Process,
            p,
            &with_eos("17+25=42;42-8=34;34+6=40;ANSWER 40"),
        )
        .unwrap();
        assert_eq!(pieces, ["17+25=42;", "42-8=34;", "34+6=40;", "ANSWER 40;"]);
        assert_eq!(l, [true, true, true, true]);
        // a wrong middle step: it and everything after it are wrong
        let (_, l) = labels(
            Supervision::Process,
            p,
            &with_eos("17+25=42;42-8=33;33+6=39;ANSWER 39"),
        )
        .unwrap();
        assert_eq!(l, [true, false, false, false]);
        // a lucky answer after a wrong step is wrong for the process verifier
        let (_, l) = labels(
            Supervision::Process,
            p,
            &with_eos("17+25=43;43-8=34;34+6=40;ANSWER 40"),
        )
        .unwrap();
        assert_eq!(l, [false, false, false, false]);
        // right steps, a miscopied answer
        let (_, l) = labels(
            Supervision::Process,
            p,
            &with_eos("17+25=42;42-8=34;34+6=40;ANSWER 41"),
        )
        .unwrap();
        assert_eq!(l, [true, true, true, false]);
        // a skipped step, and an answer line that is not the last
        let (_, l) = labels(
            Supervision::Process,
            p,
            &with_eos("17+25=42;42+6=48;ANSWER 48"),
        )
        .unwrap();
        assert_eq!(l, [true, false, false]);
        let (pieces, l) =
            labels(Supervision::Process, "1+2=", &with_eos("ANSWER 3;1+2=3")).unwrap();
        assert_eq!(pieces, ["ANSWER 3;", "1+2=3;"]);
        assert_eq!(l, [false, true]);
    }
}
