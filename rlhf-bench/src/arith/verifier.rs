//! The verifiers of `arith-steps`: their labels, their training (a cached stage, shared by the
//! best-of-n point and the RL point of the same verifier) and their scores.
//!
//! A verifier reads a finished solution as the policy wrote it, in steps that each end with the
//! step delimiter, the `ANSWER` line last and ending with EOS:
//! `17+25=42;` `42-8=34;` `ANSWER 34<|endoftext|>`. An **outcome** verifier learns one label,
//! read at the EOS: is the final answer right? A **process** verifier learns one label per
//! step, read at each step's last token: is the solution right up to and including this step
//! (the `ANSWER` step: every step and the answer right)? Its score of a solution is its lowest
//! step probability; an outcome verifier's is its probability. A solution that never ended (no
//! EOS) scores 0.
//!
//! Both are likelihood verifiers ([`LikelihoodVerifier`]): the SFT model of their size, LM head
//! kept, whose logit at a token is its log-likelihood of the solution so far plus a bias. The
//! SFT model was trained to write each step's right result, so a sampled wrong result is an
//! unlikely token: the verifier starts from that knowledge, where a fresh scalar head on the
//! SFT model's hidden states would have to find it from a few thousand labels. (The scalar head
//! read at a step's last token sees a state trained to predict the next step, which copies the
//! result whether or not it is right.) As the likelihood only falls from step to step, a
//! process verifier's lowest step probability is its last step's: the two kinds differ in the
//! labels they learn from, not in how they score.
//!
//! They learn by binary cross-entropy on every label (`rm.step_loss = "pointwise"`), or by the
//! within-prompt pair loss (`"within_prompt"`, `rlhf_reward::within_prompt`): one prompt's
//! solutions labelled right at a step against those labelled wrong there. That loss cannot move
//! the bias, so the bias is fitted again after training.

use burn::module::Module;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use rlhf_core::train::{LrSchedule, OptimizerConfig};
use rlhf_core::{Result, Scorer};
use rlhf_data::Tokenizer;
use rlhf_data::tasks::{ArithSteps, EOS, Task};
use rlhf_models::TransformerConfig;
use rlhf_reward::{
    LabelledExample, LikelihoodVerifier, RmConfig, StepLoss, evaluate_labelled, fit_bias,
    prompts_with_pairs, segment_logits, train_step_model,
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

/// Solutions per forward pass when labelling or scoring.
const ROWS: usize = 64;

/// The text a verifier reads of `response`: its body, trimmed, and EOS; `None` when it did not
/// end.
pub(crate) fn verifier_text(response: &str) -> Option<String> {
    let body = response.strip_suffix(EOS)?;
    Some(format!("{}{EOS}", body.trim()))
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
    let segments = segments(tok, supervision, &text)?;
    let labels = match supervision {
        Supervision::Outcome => vec![right],
        Supervision::Process => {
            let (_, mut steps) = task.step_labels(prompt, response).unwrap_or_default();
            steps.reverse();
            let answer_right = right && steps_all_right(task, prompt, response);
            let pieces: Vec<&str> = text.split_inclusive(DELIMITER).collect();
            pieces
                .iter()
                .enumerate()
                .map(|(i, piece)| {
                    if piece.starts_with("ANSWER") {
                        i + 1 == pieces.len() && answer_right
                    } else {
                        steps.pop().unwrap_or(false)
                    }
                })
                .collect()
        }
    };
    Ok(Some(LabelledExample {
        prompt: tok.encode(prompt)?,
        segments,
        labels,
    }))
}

/// The tokens of a verifier text in the pieces `supervision` labels: the whole text (outcome), or
/// each step through its delimiter, the last through EOS (process).
fn segments(tok: &Tokenizer, supervision: Supervision, text: &str) -> Result<Vec<Vec<u32>>> {
    match supervision {
        Supervision::Outcome => Ok(vec![tok.encode(text)?]),
        Supervision::Process => text
            .split_inclusive(DELIMITER)
            .map(|piece| tok.encode(piece))
            .collect(),
    }
}

/// What a trained verifier measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Summary {
    /// `None` when not measured (JSON has no NaN).
    accuracy: Option<f64>,
    balanced_accuracy: Option<f64>,
    steps: u64,
    /// The bias fitted to the untrained model ([`fit_bias`]).
    initial_bias: f64,
    solutions: usize,
    labels: usize,
    tokens: f64,
    flops: f64,
}

/// A trained verifier.
pub(crate) struct Stage {
    /// The model.
    pub verifier: LikelihoodVerifier,
    /// Its transformer's configuration.
    pub config: TransformerConfig,
    supervision: Supervision,
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
    let loss = match r.step_loss {
        StepLoss::Pointwise => "",
        StepLoss::WithinPrompt => "-within-prompt",
    };
    let key = format!(
        "verifier-{kind}-likelihood{loss}-{}-of-{}-v{}-k{}-h{}-e{}-lr{}",
        backbone.key, policy.key, r.pairs, r.pairs_per_prompt, r.eval_pairs, r.epochs, r.lr
    );
    let dir = setup.root.join(&key);
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
        // what the loss trains on: every solution, or the solutions of the prompts with a pair,
        // each prompt a batch item; about 16 solutions a step either way
        let (trained_on, items, batch_size): (Vec<&LabelledExample>, usize, usize) =
            match r.step_loss {
                StepLoss::Pointwise => (train.iter().collect(), train.len(), 16),
                StepLoss::WithinPrompt => {
                    let prompts = prompts_with_pairs(&train);
                    let solutions = prompts.iter().flatten().map(|&i| &train[i]).collect();
                    (solutions, prompts.len(), (16 / r.pairs_per_prompt).max(1))
                }
            };
        let steps = (items.div_ceil(batch_size) * r.epochs) as u64;
        let rm_cfg = RmConfig {
            epochs: r.epochs,
            batch_size,
            step_loss: r.step_loss,
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
        let untrained = LikelihoodVerifier::new(backbone.model.clone(), 0.0, device);
        let initial_bias = bias_shift(&untrained, &train, device)?;
        let verifier = LikelihoodVerifier::new(untrained.lm, initial_bias as f32, device);
        let (mut verifier, mut report) =
            train_step_model(verifier, &train, &eval, &rm_cfg, &stage_run(tmp), device)?;
        if r.step_loss == StepLoss::WithinPrompt {
            // the pair loss cannot move the bias (it cancels in every difference) while the LM
            // moves every logit: the bias is fitted again, as before training, so that a
            // probability above ½ still means "right"
            let shift = bias_shift(&verifier, &train, device)?;
            let bias = verifier.bias() + shift as f32;
            verifier = LikelihoodVerifier::new(verifier.lm, bias, device);
            report.eval = evaluate_labelled(&verifier, &eval, ROWS, device)?;
        }
        verifier.save(&backbone.shape, &tmp.join("model"))?;
        finish_stage_run(tmp)?;
        let tokens: usize = trained_on
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
                initial_bias,
                solutions: trained_on.len(),
                labels: trained_on.iter().map(|e| e.labels.len()).sum(),
                tokens: trained as f64,
                flops: flops(&backbone.shape, Workload::Train { tokens: trained }) as f64,
            },
        )
    })?;
    let (config, verifier) = LikelihoodVerifier::load(&dir.join("model"), device)?;
    Ok(Stage {
        verifier,
        config,
        supervision: r.supervision,
        summary: read_json(&dir, "summary.json")?,
    })
}

/// What to add to `verifier`'s bias so that its logits fit the labels of `train` best: the
/// initial bias, for an untrained verifier with bias 0.
fn bias_shift(
    verifier: &LikelihoodVerifier,
    train: &[LabelledExample],
    device: &Device,
) -> Result<f64> {
    let rows: Vec<(&[u32], &[Vec<u32>])> = train
        .iter()
        .map(|e| (e.prompt.as_slice(), e.segments.as_slice()))
        .collect();
    let logits = segment_logits(verifier, &rows, ROWS, device)?;
    let (z, y): (Vec<f64>, Vec<bool>) = logits
        .iter()
        .zip(train)
        .flat_map(|(z, e)| {
            z.iter()
                .map(|&z| f64::from(z))
                .zip(e.labels.iter().copied())
        })
        .unzip();
    fit_bias(&z, &y)
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
        out.metric(am::VERIFIER_BIAS_INITIAL, s.initial_bias);
        out.metric(am::VERIFIER_BIAS, f64::from(self.verifier.bias()));
        out.metric(names::PARAMS_RM, self.config.non_embedding_params() as f64);
    }

    /// The verifier served as a [`Scorer`] (see the module documentation).
    pub fn scorer(&self, tok: &Tokenizer, device: &Device) -> Verifier {
        Verifier::new(self.supervision, &self.verifier, tok, device)
    }

    /// The verifier before training — `backbone`, the SFT model it started from, with the bias
    /// fitted to it — served as a [`Scorer`]: the ranking by the SFT model's own likelihood.
    pub fn untrained_scorer(&self, backbone: &Sft, tok: &Tokenizer, device: &Device) -> Verifier {
        let untrained = LikelihoodVerifier::new(
            backbone.model.clone(),
            self.summary.initial_bias as f32,
            device,
        );
        Verifier::new(self.supervision, &untrained, tok, device)
    }
}

/// A trained verifier as a scorer: the probability that a finished solution is right (0 for an
/// unfinished one).
pub(crate) struct Verifier {
    supervision: Supervision,
    model: LikelihoodVerifier,
    tok: Tokenizer,
    device: Device,
}

impl Verifier {
    fn new(
        supervision: Supervision,
        model: &LikelihoodVerifier,
        tok: &Tokenizer,
        device: &Device,
    ) -> Self {
        let device = device.clone().without_autodiff();
        Verifier {
            supervision,
            model: model.valid().to_device(&device),
            tok: tok.clone(),
            device,
        }
    }
}

impl Scorer for Verifier {
    fn score(&self, prompts: &[&str], responses: &[&str]) -> Result<Vec<f32>> {
        rlhf_core::check_pairs(prompts, responses)?;
        let mut out = vec![0.0; responses.len()];
        let (mut idx, mut rows) = (Vec::new(), Vec::new());
        for (i, (p, r)) in prompts.iter().zip(responses).enumerate() {
            if let Some(t) = verifier_text(r) {
                idx.push(i);
                rows.push((
                    self.tok.encode(p)?,
                    segments(&self.tok, self.supervision, &t)?,
                ));
            }
        }
        let refs: Vec<(&[u32], &[Vec<u32>])> = rows
            .iter()
            .map(|(p, s): &(Vec<u32>, Vec<Vec<u32>>)| (p.as_slice(), s.as_slice()))
            .collect();
        let logits = segment_logits(&self.model, &refs, ROWS, &self.device)?;
        for (i, z) in idx.into_iter().zip(logits) {
            if z.iter().any(|v| v.is_nan()) {
                return Err(rlhf_core::Error::Config(format!(
                    "{}: a NaN logit for response {i}",
                    self.name()
                )));
            }
            // outcome: the one label's probability; process: the lowest step probability
            let lowest = z.into_iter().fold(f32::INFINITY, f32::min);
            out[i] = 1.0 / (1.0 + (-lowest).exp());
        }
        Ok(out)
    }

    fn name(&self) -> String {
        match self.supervision {
            Supervision::Outcome => "outcome-verifier".into(),
            Supervision::Process => "process-verifier".into(),
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
    fn an_outcome_verifier_learns_the_final_answer_at_the_eos() {
        let p = "17+25-8+6=";
        let (pieces, l) = labels(
            Supervision::Outcome,
            p,
            &with_eos("17+25=42;42-8=34;34+6=40;ANSWER 40"),
        )
        .unwrap();
        assert_eq!(pieces, [with_eos("17+25=42;42-8=34;34+6=40;ANSWER 40")]);
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
        assert_eq!(
            pieces,
            ["17+25=42;", "42-8=34;", "34+6=40;", &with_eos("ANSWER 40")]
        );
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
        assert_eq!(pieces, ["ANSWER 3;", &with_eos("1+2=3")]);
        assert_eq!(l, [false, true]);
    }
}
