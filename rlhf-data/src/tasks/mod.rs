//! Gold-oracle tasks: prompt generators with a hidden **gold** scorer that plays the part of the
//! human labellers and the GPT judge, so the whole RLHF pipeline and the scaling study run offline
//! with ground truth (`docs/tasks.md`, "What a task provides").
//!
//! A task provides seeded endless prompts with disjoint train / eval / test streams, a reference
//! response, a noisy demonstrator (the SFT data), the gold score with its components, a simulated
//! labeller calibrated to human-like agreement ([`Labeller`]) and a judge ([`win_rate`]).
//! Everything is text: responses go through the project's tokenizer like any user's data. A
//! response that ended with EOS carries the EOS token's text ([`EOS`]) at its end; dataset texts
//! never do (trainers append EOS).

mod arith;
mod labeller;
mod tldr;

pub use arith::ArithSteps;
pub use labeller::{Labeller, LabellerScorer, win_rate};
pub use tldr::TldrSynth;

use rand::SeedableRng;
pub use rand_chacha::ChaCha8Rng;
use rlhf_base::seed::seed_of;

use crate::sampling::Split;

/// The EOS token's text, as the tokenizers trained for the tasks spell it.
pub const EOS: &str = crate::tokenizer::EOS_TOKEN;

/// A gold score and its named components (they sum to `total`).
#[derive(Debug, Clone, PartialEq)]
pub struct GoldScore {
    /// The score; higher is better.
    pub total: f64,
    /// `(name, value)` parts, e.g. completeness, faithfulness, conciseness, well-formedness.
    pub components: Vec<(&'static str, f64)>,
}

impl GoldScore {
    fn from_parts(components: Vec<(&'static str, f64)>) -> Self {
        GoldScore {
            total: components.iter().map(|c| c.1).sum(),
            components,
        }
    }

    /// The value of a component (0 when absent).
    pub fn component(&self, name: &str) -> f64 {
        self.components
            .iter()
            .find(|c| c.0 == name)
            .map_or(0.0, |c| c.1)
    }
}

/// What every gold-oracle task provides.
pub trait Task: Send + Sync {
    /// `tldr-synth`, `arith-steps`.
    fn name(&self) -> &'static str;
    /// The `index`-th prompt of a split; the same (split, index) always gives the same prompt. The
    /// three splits are separate seeded streams: nothing stops two of them drawing the same
    /// prompt when a task has few.
    fn prompt(&self, split: Split, index: u64) -> String;
    /// The ideal response (without EOS).
    fn reference(&self, prompt: &str) -> String;
    /// A noisy demonstration (without EOS).
    fn demonstrate(&self, prompt: &str, rng: &mut ChaCha8Rng) -> String;
    /// The gold score of `response` (EOS text at its end when the policy emitted EOS).
    fn gold(&self, prompt: &str, response: &str) -> GoldScore;
    /// Per-step gold labels of a response, for tasks with process supervision.
    fn step_labels(&self, _prompt: &str, _response: &str) -> Option<(Vec<String>, Vec<bool>)> {
        None
    }
}

/// A task by name.
pub fn task_by_name(name: &str) -> Option<Box<dyn Task>> {
    match name {
        "tldr-synth" => Some(Box::new(TldrSynth::default())),
        "arith-steps" => Some(Box::new(ArithSteps::default())),
        _ => None,
    }
}

/// The generator of one prompt: seeded from the task, the split and the index, so streams are
/// endless, reproducible and disjoint.
pub(crate) fn prompt_rng(task: &str, split: Split, index: u64) -> ChaCha8Rng {
    let tag = format!("{task}/{split:?}/{index}");
    ChaCha8Rng::seed_from_u64(seed_of(tag.as_bytes()))
}

/// `text` followed by the EOS text.
pub fn with_eos(text: &str) -> String {
    format!("{text}{EOS}")
}

/// Splits a response into its body and whether it ended with EOS.
pub fn strip_eos(response: &str) -> (&str, bool) {
    match response.strip_suffix(EOS) {
        Some(body) => (body, true),
        None => (response, false),
    }
}

/// The gold oracle as an `rlhf_base::Scorer`, for trainers and the judge.
pub struct GoldScorer<'a>(pub &'a dyn Task);

impl rlhf_base::Scorer for GoldScorer<'_> {
    fn score(&self, prompts: &[&str], responses: &[&str]) -> rlhf_base::Result<Vec<f32>> {
        rlhf_base::check_pairs(prompts, responses)?;
        Ok(prompts
            .iter()
            .zip(responses)
            .map(|(p, r)| self.0.gold(p, r).total as f32)
            .collect())
    }
    fn name(&self) -> String {
        format!("gold:{}", self.0.name())
    }
}

/// What [`export_task`] wrote and measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportSummary {
    /// The task.
    pub task: String,
    /// Records per file.
    pub files: Vec<(String, usize)>,
    /// The calibrated labeller's temperature.
    pub labeller_tau: f64,
    /// Its target agreement with the gold order on SFT-like pairs.
    pub labeller_target: f64,
    /// Agreement of the exported preference labels with the gold order (ties left out).
    pub label_gold_agreement: f64,
    /// Win rate of the demonstrations against the references, by gold score (ties half): the
    /// headroom SFT leaves.
    pub demo_win_rate_vs_reference: f64,
    /// Mean gold score of the references and of the demonstrations.
    pub reference_gold_mean: f64,
    /// Mean gold score of the demonstrations.
    pub demo_gold_mean: f64,
    /// Share of demonstrations whose gold outcome component is 1 (arith-steps).
    pub demo_outcome_accuracy: Option<f64>,
    /// Entries of the byte-level BPE trained on the exported texts (`tokenizer.json`).
    pub tokenizer_vocab: usize,
}

/// Writes a task's data as the same JSONL layouts users bring: `sft.jsonl` (noisy demonstrations),
/// `preference.jsonl` (two demonstrations per prompt labelled by the calibrated labeller),
/// `prompts.jsonl`, `references.jsonl` (eval-split prompts with their references, for the judge),
/// `steps.jsonl` (step-labelled demonstrations, for tasks with process labels), `tokenizer.json`
/// (a byte-level BPE trained on the exported texts, reloadable with [`crate::Tokenizer::from_file`])
/// and `task.json` (the summary). `n` records each (train-split prompts `0..n`), deterministic in `seed`.
// One piece, over 80 lines: one rng stream feeds the labeller's calibration and then the loop
// over prompts, so the SFT, preference and step records of prompt i come from the same draws; the
// writes, the tokenizer and the summary then read the vectors that loop filled.
pub fn export_task(
    task: &dyn Task,
    dir: &std::path::Path,
    n: u64,
    seed: u64,
    target_agreement: f64,
) -> rlhf_base::Result<ExportSummary> {
    use crate::reader::write_records;
    use crate::records::{
        FieldNames, PreferenceRecord, PromptRecord, SftRecord, StepRecord, Turns,
    };
    use rand::SeedableRng;

    std::fs::create_dir_all(dir).map_err(|e| rlhf_base::Error::io(dir, e))?;
    let fields = FieldNames::default();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let calibration: Vec<(f64, f64)> = (0..2000u64)
        .map(|i| {
            let p = task.prompt(Split::Train, 1_000_000 + i);
            let a = task.demonstrate(&p, &mut rng);
            let b = task.demonstrate(&p, &mut rng);
            (
                task.gold(&p, &with_eos(&a)).total,
                task.gold(&p, &with_eos(&b)).total,
            )
        })
        .collect();
    let labeller = Labeller::calibrate(&calibration, target_agreement).ok_or_else(|| {
        rlhf_base::Error::Config(format!(
            "{}: demonstrations never differ in gold score",
            task.name()
        ))
    })?;

    let (mut sft, mut prefs, mut prompts, mut steps) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut demo_gold, mut ref_gold, mut outcomes) = (Vec::new(), Vec::new(), Vec::new());
    let (mut agree, mut differing) = (0usize, 0usize);
    for i in 0..n {
        let p = task.prompt(Split::Train, i);
        let demo = task.demonstrate(&p, &mut rng);
        let g_demo = task.gold(&p, &with_eos(&demo));
        demo_gold.push(g_demo.total);
        ref_gold.push(task.gold(&p, &with_eos(&task.reference(&p))).total);
        outcomes.push(g_demo.component("outcome"));
        if let Some((s, l)) = task.step_labels(&p, &with_eos(&demo)) {
            steps.push(StepRecord {
                prompt: p.clone(),
                completions: s,
                labels: l,
            });
        }
        sft.push(SftRecord {
            prompt: Turns::Text(p.clone()),
            completion: Turns::Text(demo.clone()),
        });
        let other = task.demonstrate(&p, &mut rng);
        let (ga, gb) = (g_demo.total, task.gold(&p, &with_eos(&other)).total);
        let first = labeller.prefers_first(ga, gb, &mut rng);
        if (ga - gb).abs() > 1e-12 {
            differing += 1;
            agree += usize::from(first == (ga > gb));
        }
        let (chosen, rejected) = if first { (demo, other) } else { (other, demo) };
        prefs.push(PreferenceRecord {
            prompt: Turns::Text(p.clone()),
            chosen: Turns::Text(chosen),
            rejected: Turns::Text(rejected),
            score_chosen: None,
            score_rejected: None,
            margin: None,
        });
        prompts.push(PromptRecord {
            prompt: Turns::Text(p),
            extra: Default::default(),
        });
    }
    let references: Vec<SftRecord> = (0..n.div_ceil(10).max(1))
        .map(|i| {
            let p = task.prompt(Split::Eval, i);
            SftRecord {
                completion: Turns::Text(task.reference(&p)),
                prompt: Turns::Text(p),
            }
        })
        .collect();
    write_records(&dir.join("sft.jsonl"), &sft, &fields)?;
    write_records(&dir.join("preference.jsonl"), &prefs, &fields)?;
    write_records(&dir.join("prompts.jsonl"), &prompts, &fields)?;
    write_records(&dir.join("references.jsonl"), &references, &fields)?;
    let mut files = vec![
        ("sft.jsonl".to_string(), sft.len()),
        ("preference.jsonl".to_string(), prefs.len()),
        ("prompts.jsonl".to_string(), prompts.len()),
        ("references.jsonl".to_string(), references.len()),
    ];
    if !steps.is_empty() {
        write_records(&dir.join("steps.jsonl"), &steps, &fields)?;
        files.push(("steps.jsonl".to_string(), steps.len()));
    }
    let corpus: Vec<String> = sft
        .iter()
        .flat_map(|r| {
            [
                r.prompt.as_text().unwrap_or_default().to_string(),
                r.completion.as_text().unwrap_or_default().to_string(),
            ]
        })
        .chain(
            references
                .iter()
                .filter_map(|r| r.completion.as_text().map(str::to_string)),
        )
        .collect();
    let tokenizer = crate::Tokenizer::train_bpe(corpus.iter(), 512)?;
    tokenizer.save(&dir.join("tokenizer.json"))?;
    files.push(("tokenizer.json".to_string(), tokenizer.vocab_size()));
    let mean = |v: &[f64]| {
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    let summary = ExportSummary {
        task: task.name().to_string(),
        files,
        labeller_tau: labeller.tau,
        labeller_target: target_agreement,
        label_gold_agreement: if differing == 0 {
            0.0
        } else {
            agree as f64 / differing as f64
        },
        demo_win_rate_vs_reference: win_rate(&demo_gold, &ref_gold),
        reference_gold_mean: mean(&ref_gold),
        demo_gold_mean: mean(&demo_gold),
        demo_outcome_accuracy: (task.name() == "arith-steps").then(|| mean(&outcomes)),
        tokenizer_vocab: tokenizer.vocab_size(),
    };
    let json =
        serde_json::to_vec_pretty(&summary).map_err(|e| rlhf_base::Error::Record(e.to_string()))?;
    rlhf_base::fs::write_atomic(&dir.join("task.json"), &json)?;
    Ok(summary)
}
