//! One run of the pipeline, as a TOML file: the task, the model sizes, every stage's settings and
//! the device. Every field has a default, so a file names only what it changes; unknown keys are
//! errors (with the file and the key).

use std::collections::BTreeMap;
use std::path::Path;

use rlhf_core::{Error, Result};
use rlhf_data::tasks::TldrSynth;
use rlhf_models::TransformerConfig;
use rlhf_ppo::PpoConfig;
use rlhf_reward::StepLoss;
use serde::{Deserialize, Serialize};

/// The whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// Seed of the run (data, initialisation, sampling, training order).
    pub seed: u64,
    /// `flex`, `wgpu:cpu`, `cuda:0`, … (see `rlhf_core::parse_device`).
    pub device: String,
    /// The gold-oracle task and its splits.
    pub task: TaskConfig,
    /// Supervised fine-tuning of the policy (and of each reward model's backbone).
    pub sft: SftStage,
    /// The reward model.
    pub rm: RmStage,
    /// What optimises the policy.
    pub method: MethodConfig,
    /// How the result is judged.
    pub judge: JudgeConfig,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            seed: 0,
            device: "flex".into(),
            task: TaskConfig::default(),
            sft: SftStage::default(),
            rm: RmStage::default(),
            method: MethodConfig::default(),
            judge: JudgeConfig::default(),
        }
    }
}

/// The task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TaskConfig {
    /// `tldr-synth` (the full pipeline, judged by the gold scorer), `arith-steps` (outcome vs
    /// process verifiers: best-of-n, and RL against each, see [`crate::arith`]) or `preferences` (the full pipeline
    /// on a user's preference file, `task.data`, judged by its reward model, see [`crate::user`]).
    pub name: String,
    /// Demonstrations for SFT (train split).
    pub demos: usize,
    /// BPE vocabulary trained on the demonstrations.
    pub vocab_size: usize,
    /// Prompts the on-policy methods train on (train split, after the demonstrations').
    pub train_prompts: usize,
    /// Held-out prompts the judge samples on (eval split; each seed its own).
    pub eval_prompts: usize,
    /// The demonstrator of `tldr-synth` (the SFT data and the judge's references): the task's
    /// own unless set; the study's presets set [`TldrConfig::study`].
    pub tldr: TldrConfig,
    /// The difficulty of `arith-steps`.
    pub arith: ArithConfig,
    /// The files of `task.name = "preferences"` (a user's own data, see [`crate::user`]).
    pub data: UserData,
}

/// A user's own preference data. With it, `task.demos`, `task.train_prompts`,
/// `task.eval_prompts`, `rm.pairs` and `rm.eval_pairs` are caps (at most that many), and the
/// labeller settings do not apply: the file's labels are the labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UserData {
    /// Preference records (`{prompt, chosen, rejected}`, HH-RLHF's `{chosen, rejected}`, either
    /// conversational): JSONL, `.jsonl.gz` or parquet. A relative path is read from the config
    /// file's directory.
    pub preferences: String,
    /// SFT demonstrations (`{prompt, completion}`, `{messages}` or `{text}`); empty: the prompt
    /// and chosen response of every training pair.
    pub demonstrations: String,
    /// A `tokenizer.json`; empty: a byte-level BPE of `task.vocab_size` entries trained on the
    /// training split.
    pub tokenizer: String,
    /// The EOS token of that tokenizer, when it is not one of the usual names.
    pub eos_token: String,
    /// Share of prompts held out for evaluation, by a hash of the prompt (a prompt is never in
    /// both splits).
    pub eval_share: f64,
    /// Longest prompt in tokens; a longer one keeps its end.
    pub max_prompt_tokens: usize,
    /// Longest response in tokens (EOS included); a longer one keeps its start and loses its EOS.
    pub max_response_tokens: usize,
    /// Skip records that cannot be read (counted in `data/rejected`, the first printed) instead
    /// of stopping at the first with its file, line and field.
    pub skip_bad: bool,
    /// Field names, for files that name them differently.
    pub fields: rlhf_data::FieldNames,
    /// How conversational records become text (ChatML by default).
    pub chat_template: rlhf_data::ChatTemplate,
}

impl Default for UserData {
    fn default() -> Self {
        UserData {
            preferences: String::new(),
            demonstrations: String::new(),
            tokenizer: String::new(),
            eos_token: String::new(),
            eval_share: 0.1,
            max_prompt_tokens: 64,
            max_response_tokens: 48,
            skip_bad: false,
            fields: rlhf_data::FieldNames::default(),
            chat_template: rlhf_data::ChatTemplate::default(),
        }
    }
}

/// The noise of `tldr-synth`'s demonstrator, whose summaries are the SFT data and the judge's
/// references (`rlhf_data::tasks::TldrSynth`). The default is the task's own; the study's
/// presets run [`TldrConfig::study`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TldrConfig {
    /// Probability that the demonstrator drops each salient fact.
    pub drop_fact: f64,
    /// Probability that it adds a distractor fact from the post.
    pub add_distractor: f64,
    /// Probability that it appends a filler clause (not a fact).
    pub add_filler: f64,
}

impl Default for TldrConfig {
    fn default() -> Self {
        TldrConfig::of(&TldrSynth::default())
    }
}

impl TldrConfig {
    /// The study's demonstrator: the task's, with a filler clause in half of its summaries
    /// (twice the task's rate), so that the references hold a defect that an RLHF policy can
    /// leave out and the SFT policy, imitating them, keeps (`docs/tasks.md`, "Calibration
    /// targets").
    pub fn study() -> Self {
        TldrConfig {
            add_filler: 0.5,
            ..TldrConfig::default()
        }
    }

    fn of(task: &TldrSynth) -> Self {
        TldrConfig {
            drop_fact: task.drop_fact,
            add_distractor: task.add_distractor,
            add_filler: task.add_filler,
        }
    }

    /// The task with this demonstrator (the gold scorer's weights are the task's own).
    pub fn task(&self) -> TldrSynth {
        TldrSynth {
            drop_fact: self.drop_fact,
            add_distractor: self.add_distractor,
            add_filler: self.add_filler,
            ..TldrSynth::default()
        }
    }

    /// The name of the cache directory that holds the stages built on these demonstrations.
    pub fn cache_dir(&self) -> String {
        format!(
            "tldr-d{}-a{}-f{}",
            self.drop_fact, self.add_distractor, self.add_filler
        )
    }
}

/// The difficulty of `arith-steps` and its solver's error rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArithConfig {
    /// Largest operand.
    pub max_operand: i64,
    /// Terms of every in-domain prompt (`terms − 1` steps).
    pub terms: usize,
    /// Terms of the out-of-distribution prompts (longer chains than in training).
    pub ood_terms: usize,
    /// Probability that the noisy solver, whose demonstrations the SFT policy learns from, gets
    /// a step wrong.
    pub step_error: f64,
}

impl Default for ArithConfig {
    fn default() -> Self {
        ArithConfig {
            max_operand: 9,
            terms: 5,
            ood_terms: 7,
            step_error: 0.1,
        }
    }
}

/// What labels a verifier of `arith-steps` learns from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Supervision {
    /// One label per solution: is its final answer right (an outcome reward model).
    #[default]
    Outcome,
    /// One label per step: is the solution right up to this step (a process reward model).
    Process,
}

impl Default for TaskConfig {
    fn default() -> Self {
        TaskConfig {
            name: "tldr-synth".into(),
            demos: 800,
            vocab_size: 512,
            train_prompts: 512,
            eval_prompts: 512,
            tldr: TldrConfig::default(),
            arith: ArithConfig::default(),
            data: UserData::default(),
        }
    }
}

/// SFT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SftStage {
    /// The policy's size: `xs`, `s`, `m` (see [`model_shape`]) or an `rlhf-models` preset.
    pub policy_size: String,
    /// Passes over the demonstrations.
    pub epochs: usize,
    /// Passes over the demonstrations of the sizes named here, in place of `epochs`: on a fixed
    /// set of demonstrations a larger model's held-out gold peaks after fewer passes (the
    /// presets' values and their probes are in `docs/tasks.md`).
    pub epochs_by_size: BTreeMap<String, usize>,
    /// Examples per step.
    pub batch_size: usize,
    /// Peak learning rate (linear warm-up and decay).
    pub lr: f64,
}

impl SftStage {
    /// The passes over the demonstrations of a model of `size`.
    pub fn epochs_of(&self, size: &str) -> usize {
        self.epochs_by_size
            .get(size)
            .copied()
            .unwrap_or(self.epochs)
    }
}

impl Default for SftStage {
    fn default() -> Self {
        SftStage {
            policy_size: "s".into(),
            epochs: 6,
            epochs_by_size: BTreeMap::new(),
            batch_size: 16,
            lr: 3e-3,
        }
    }
}

/// The reward model: its size, its data (pairs of SFT samples labelled by a noisy labeller) and
/// its training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RmStage {
    /// The RM's size (its backbone is the SFT model of that size, TL;DR detail 11).
    pub size: String,
    /// Labelled comparison pairs (`arith-steps`: labelled solutions).
    pub pairs: usize,
    /// Pairs per prompt (`pairs / pairs_per_prompt` prompts): the diversity axis.
    pub pairs_per_prompt: usize,
    /// The labeller's agreement with the gold order on such pairs.
    pub labeller_agreement: f64,
    /// Passes over the pairs (one in the TL;DR reproduction).
    pub epochs: usize,
    /// Learning rate.
    pub lr: f64,
    /// Held-out pairs for the gold-order accuracy (`arith-steps`: held-out labelled solutions).
    pub eval_pairs: usize,
    /// `arith-steps`: outcome or process labels.
    pub supervision: Supervision,
    /// `arith-steps`: the verifiers' loss, binary cross-entropy (`pointwise`) or each prompt's
    /// right solutions against its wrong ones (`within_prompt`, `rlhf_reward::within_prompt`).
    pub step_loss: StepLoss,
    /// Sizes of the SFT policies whose samples the pairs are drawn from, in equal shares; empty:
    /// the policy's own. One RM for a whole policy-size axis draws from every size.
    pub sample_from: Vec<String>,
}

impl Default for RmStage {
    fn default() -> Self {
        RmStage {
            size: "s".into(),
            pairs: 1000,
            pairs_per_prompt: 1,
            labeller_agreement: 0.73,
            epochs: 1,
            lr: 1e-3,
            eval_pairs: 200,
            supervision: Supervision::Outcome,
            step_loss: StepLoss::Pointwise,
            sample_from: Vec::new(),
        }
    }
}

/// What optimises the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MethodKind {
    /// Nothing: the SFT policy itself.
    Sft,
    /// PPO with a critic (GAE); `ppo.advantage` is overridden.
    #[default]
    Ppo,
    /// GRPO.
    Grpo,
    /// RLOO.
    Rloo,
    /// REINFORCE++.
    ReinforcePp,
    /// DPO on the RM's labelled pairs.
    Dpo,
    /// EXO (preference form) on the RM's labelled pairs.
    Exo,
    /// DPO on the policy's own samples, two per prompt, judged by the labeller as it judged the
    /// RM's pairs, over `online_rounds` rounds with the RM's label budget.
    OnlineDpo,
    /// Best-of-n reranking by the RM at judge time.
    BestOfN,
}

impl MethodKind {
    /// Whether the method reads a reward model.
    pub fn needs_rm(self) -> bool {
        !matches!(self, MethodKind::Sft)
    }
}

/// The reward the on-policy methods optimise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RewardSource {
    /// The trained reward model.
    #[default]
    Rm,
    /// The length-only part of the RM (the "A Long Way to Go" control): `slope × words`, with
    /// `slope` the least-squares slope of the RM's score on response length over the SFT
    /// policy's samples, so the control moves length the way the RM does.
    RmLength,
    /// The gold scorer itself (`tldr-synth` only): what a reward model without error would give,
    /// the ceiling of RLHF against a learned RM (Gao et al.'s gold RM). For calibration: the
    /// `length_control` axis's `gold` point.
    Gold,
}

/// The method and its settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MethodConfig {
    /// Which method.
    pub kind: MethodKind,
    /// The reward of the on-policy methods.
    pub reward: RewardSource,
    /// On-policy settings (iterations, n, β, …); `query_length` is set from the prompts. Keys
    /// given here replace those of the bench's defaults ([`bench_ppo_defaults`]) one by one.
    #[serde(deserialize_with = "over_bench_defaults")]
    pub ppo: PpoConfig,
    /// DPO/EXO/online DPO: β.
    pub dpo_beta: f32,
    /// DPO/EXO: passes over the pairs.
    pub dpo_epochs: usize,
    /// DPO/EXO/online DPO: learning rate.
    pub dpo_lr: f64,
    /// Online DPO: rounds (each labels `rm.pairs / online_rounds` new pairs).
    pub online_rounds: usize,
    /// Best-of-n: n.
    pub best_of_n: usize,
    /// Best-of-n: candidates drawn per prompt (once, shared by every `n` that divides it).
    pub best_of_n_max: usize,
}

/// The on-policy defaults of a bench run: the TL;DR recipe (`PpoConfig::default()`) at CPU scale
/// — 15 iterations of 64 episodes, 40 new tokens, 2 minibatches, learning rate 3e-4.
pub fn bench_ppo_defaults() -> PpoConfig {
    PpoConfig {
        iterations: 15,
        prompts_per_batch: 64,
        response_length: 40,
        num_minibatches: 2,
        optimizer: rlhf_core::train::OptimizerConfig {
            lr: 3e-4,
            ..Default::default()
        },
        ..PpoConfig::default()
    }
}

/// Deserialises a partial `[method.ppo]` table over [`bench_ppo_defaults`] (nested tables such
/// as `optimizer` merge key by key too).
fn over_bench_defaults<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<PpoConfig, D::Error> {
    use serde::de::Error as _;
    fn merge(base: &mut serde_json::Value, over: serde_json::Value) {
        match (base, over) {
            (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
                for (k, v) in o {
                    match b.get_mut(&k) {
                        Some(slot) if slot.is_object() && v.is_object() => merge(slot, v),
                        _ => {
                            b.insert(k, v);
                        }
                    }
                }
            }
            (slot, v) => *slot = v,
        }
    }
    let over = serde_json::Value::deserialize(d)?;
    let mut base = serde_json::to_value(bench_ppo_defaults()).map_err(D::Error::custom)?;
    merge(&mut base, over);
    serde_json::from_value(base).map_err(D::Error::custom)
}

impl Default for MethodConfig {
    fn default() -> Self {
        MethodConfig {
            kind: MethodKind::Ppo,
            reward: RewardSource::Rm,
            ppo: bench_ppo_defaults(),
            dpo_beta: 0.3,
            dpo_epochs: 1,
            dpo_lr: 1e-4,
            online_rounds: 8,
            best_of_n: 4,
            best_of_n_max: 16,
        }
    }
}

/// The judge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JudgeConfig {
    /// Sampling temperature of the judged samples (the training temperature).
    pub temperature: f32,
    /// The SFT policy is also judged at this lower temperature: what sharpening alone gives.
    pub cold_temperature: f32,
    /// Samples per held-out prompt.
    pub samples: usize,
    /// New tokens at most.
    pub max_new_tokens: usize,
    /// Held-out prompts of the learning curve's evaluations (one sample each).
    pub curve_prompts: usize,
    /// Iterations between the learning curve's evaluations, which also run after the first
    /// iteration and after the last (0: only those two).
    pub eval_every: usize,
}

impl Default for JudgeConfig {
    fn default() -> Self {
        JudgeConfig {
            temperature: 0.7,
            cold_temperature: 0.3,
            samples: 4,
            max_new_tokens: 40,
            curve_prompts: 128,
            eval_every: 2,
        }
    }
}

impl RunConfig {
    /// Reads a TOML file; errors name the file (and the key or line TOML reports).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut cfg = Self::from_toml(&text).map_err(|e| match e {
            Error::Config(m) => Error::Config(format!("{}: {m}", path.display())),
            other => other,
        })?;
        // the data files of a config are read from its directory, as cargo reads paths
        let dir = path.parent().unwrap_or(Path::new(""));
        let d = &mut cfg.task.data;
        for f in [&mut d.preferences, &mut d.demonstrations, &mut d.tokenizer] {
            if !f.is_empty() && Path::new(f.as_str()).is_relative() {
                *f = dir.join(f.as_str()).to_string_lossy().into_owned();
            }
        }
        Ok(cfg)
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Self> {
        let cfg: RunConfig = toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks what the stages would otherwise find late.
    // One piece, over 80 lines: a flat list of refusals, the task's own first (a match on
    // task.name), then those every task shares; model sizes and the PPO settings are checked
    // by `model_shape` and `PpoConfig::validate`.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.method.reward == RewardSource::Gold && self.task.name != "tldr-synth" {
            return bad("method.reward = \"gold\" needs tldr-synth's gold scorer".into());
        }
        if self.method.kind == MethodKind::OnlineDpo && self.task.name != "tldr-synth" {
            return bad("method.kind = \"online_dpo\" needs tldr-synth's labeller".into());
        }
        match self.task.name.as_str() {
            "tldr-synth" => {
                let t = &self.task.tldr;
                if ![t.drop_fact, t.add_distractor, t.add_filler]
                    .iter()
                    .all(|p| (0.0..=1.0).contains(p))
                {
                    return bad(
                        "task.tldr: drop_fact, add_distractor and add_filler must be in [0, 1]"
                            .into(),
                    );
                }
            }
            "arith-steps" => {
                let a = &self.task.arith;
                if !(1..=1_000_000).contains(&a.max_operand)
                    || !(2..=64).contains(&a.terms)
                    || !(2..=64).contains(&a.ood_terms)
                {
                    return bad(
                        "task.arith: need 1 ≤ max_operand ≤ 10⁶ and 2 ≤ terms, ood_terms ≤ 64"
                            .into(),
                    );
                }
                if !(0.0..=1.0).contains(&a.step_error) {
                    return bad("task.arith.step_error must be in [0, 1]".into());
                }
                if matches!(
                    self.method.kind,
                    MethodKind::Sft | MethodKind::Dpo | MethodKind::Exo
                ) {
                    return bad(
                        "arith-steps reranks the SFT policy's candidates with a verifier (method.kind = \"best_of_n\") or trains the policy against it (\"grpo\", \"ppo\", \"rloo\" or \"reinforce_pp\")"
                            .into(),
                    );
                }
                if self.rm.eval_pairs == 0 || self.method.best_of_n == 0 {
                    return bad(
                        "arith-steps: rm.eval_pairs and method.best_of_n must be ≥ 1".into(),
                    );
                }
            }
            "preferences" => {
                let d = &self.task.data;
                if d.preferences.is_empty() {
                    return bad(
                        "task.data.preferences: the preference file (JSONL, .jsonl.gz or parquet) is required with task.name = \"preferences\"".into(),
                    );
                }
                if !(d.eval_share > 0.0 && d.eval_share < 1.0) {
                    return bad("task.data.eval_share must be in (0, 1)".into());
                }
                if d.max_prompt_tokens == 0 || d.max_response_tokens < 2 {
                    return bad(
                        "task.data: need max_prompt_tokens ≥ 1 and max_response_tokens ≥ 2".into(),
                    );
                }
                if self.rm.eval_pairs == 0 {
                    return bad("rm.eval_pairs must be ≥ 1".into());
                }
            }
            other => {
                return bad(format!(
                    "task.name: `tldr-synth`, `arith-steps` or `preferences`, got {other:?}"
                ));
            }
        }
        if self.rm.step_loss == StepLoss::WithinPrompt
            && (self.task.name != "arith-steps" || self.rm.pairs_per_prompt < 2)
        {
            return bad(
                "rm.step_loss = \"within_prompt\" is a loss of arith-steps' verifiers and compares solutions of one prompt: it needs rm.pairs_per_prompt ≥ 2"
                    .into(),
            );
        }
        if self.task.demos == 0 || self.task.eval_prompts == 0 || self.task.train_prompts == 0 {
            return bad("task: demos, train_prompts and eval_prompts must be ≥ 1".into());
        }
        if self.rm.pairs_per_prompt == 0 || self.rm.pairs < self.rm.pairs_per_prompt {
            return bad("rm: need pairs ≥ pairs_per_prompt ≥ 1".into());
        }
        if !(0.5..1.0).contains(&self.rm.labeller_agreement) {
            return bad("rm.labeller_agreement must be in [0.5, 1)".into());
        }
        model_shape(&self.sft.policy_size, 512)?;
        model_shape(&self.rm.size, 512)?;
        if self.sft.epochs == 0 {
            return bad("sft.epochs must be ≥ 1".into());
        }
        for (size, &epochs) in &self.sft.epochs_by_size {
            model_shape(size, 512)?;
            if epochs == 0 {
                return bad(format!("sft.epochs_by_size.{size} must be ≥ 1"));
            }
        }
        if self.method.kind == MethodKind::BestOfN
            && (self.method.best_of_n == 0
                || !self
                    .method
                    .best_of_n_max
                    .max(self.method.best_of_n)
                    .is_multiple_of(self.method.best_of_n))
        {
            return bad("method.best_of_n must be ≥ 1 and divide method.best_of_n_max".into());
        }
        let j = &self.judge;
        if j.samples == 0 || j.max_new_tokens == 0 || j.curve_prompts == 0 {
            return bad("judge: samples, max_new_tokens and curve_prompts must be ≥ 1".into());
        }
        if !(j.temperature > 0.0 && j.cold_temperature > 0.0) {
            return bad("judge: temperature and cold_temperature must be > 0".into());
        }
        for s in &self.rm.sample_from {
            model_shape(s, 512)?;
        }
        let mut ppo = self.method.ppo.clone();
        ppo.query_length = ppo.query_length.max(1);
        ppo.validate()
    }
}

/// The transformer of a size name: `xs` (d = 32, 2 layers), `s` (d = 64, 2 layers), `m`
/// (d = 96, 3 layers), `l` (d = 128, 4 layers) — GPT-NeoX shapes for CPU studies, about 25k,
/// 100k, 330k and 790k non-embedding parameters — or any `rlhf-models` preset; the vocabulary is
/// the tokenizer's.
pub fn model_shape(size: &str, vocab: usize) -> Result<TransformerConfig> {
    let small = |d: usize, layers: usize, heads: usize| {
        let mut c = TransformerConfig::preset("tiny-1m").expect("a built-in preset");
        c.hidden_size = d;
        c.intermediate_size = 4 * d;
        c.num_hidden_layers = layers;
        c.num_attention_heads = heads;
        c.num_key_value_heads = heads;
        c
    };
    let mut c = match size {
        "xs" => small(32, 2, 2),
        "s" => small(64, 2, 4),
        "m" => small(96, 3, 4),
        "l" => small(128, 4, 4),
        other => TransformerConfig::preset(other).map_err(|_| {
            Error::Config(format!(
                "unknown model size {other:?}: use xs, s, m, l or a preset of rlhf-models"
            ))
        })?,
    };
    c.vocab_size = vocab;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_file_takes_defaults_and_unknown_keys_are_refused() {
        let c = RunConfig::from_toml(
            "seed = 3\n[rm]\npairs = 250\n[method]\nkind = \"grpo\"\n[method.ppo]\nsamples_per_prompt = 4\n",
        )
        .unwrap();
        assert_eq!(
            (c.seed, c.rm.pairs, c.method.kind),
            (3, 250, MethodKind::Grpo)
        );
        assert_eq!(c.method.ppo.samples_per_prompt, 4);
        assert_eq!(c.method.ppo.iterations, 15);
        let err = RunConfig::from_toml("[rm]\npair = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("pair"), "{err}");
        assert!(RunConfig::from_toml("[sft]\npolicy_size = \"huge\"\n").is_err());
        // round trip
        let text = toml::to_string(&c).unwrap();
        assert_eq!(RunConfig::from_toml(&text).unwrap(), c);
    }

    #[test]
    fn a_size_named_in_epochs_by_size_trains_its_own_epochs() {
        let c = RunConfig::from_toml("[sft]\nepochs = 24\n[sft.epochs_by_size]\nl = 6\n").unwrap();
        assert_eq!((c.sft.epochs_of("l"), c.sft.epochs_of("xs")), (6, 24));
        for (bad, says) in [
            ("[sft.epochs_by_size]\nhuge = 6\n", "huge"),
            ("[sft.epochs_by_size]\nl = 0\n", "sft.epochs_by_size.l"),
            ("[sft]\nepochs = 0\n", "sft.epochs"),
        ] {
            let err = RunConfig::from_toml(bad).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn the_studys_demonstrator_is_the_tasks_with_twice_its_fillers_and_its_own_cache() {
        // a file without `[task.tldr]`, and a stored point written before the field, read as
        // the task's own demonstrator
        let c = RunConfig::from_toml("seed = 1\n").unwrap().task.tldr;
        let (own, study) = (TldrSynth::default(), TldrConfig::study().task());
        assert_eq!(c.task().add_filler, own.add_filler);
        assert_eq!(study.add_filler, 2.0 * own.add_filler);
        let same = |t: &TldrSynth| (t.drop_fact, t.add_distractor, t.hallucination_penalty);
        assert_eq!(same(&study), same(&own));
        let other = RunConfig::from_toml("[task.tldr]\nadd_filler = 0.5\n").unwrap();
        assert_eq!(other.task.tldr, TldrConfig::study());
        assert_ne!(TldrConfig::study().cache_dir(), c.cache_dir());
        let err = RunConfig::from_toml("[task.tldr]\ndrop_fact = 1.5\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("task.tldr"), "{err}");
    }

    #[test]
    fn the_gold_reward_needs_a_gold_scorer() {
        let gold = "[method]\nkind = \"ppo\"\nreward = \"gold\"\n";
        assert_eq!(
            RunConfig::from_toml(gold).unwrap().method.reward,
            RewardSource::Gold
        );
        let err = RunConfig::from_toml(&format!("[task]\nname = \"arith-steps\"\n{gold}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("gold scorer"), "{err}");
    }

    #[test]
    fn online_dpo_needs_the_gold_tasks_labeller() {
        let online = "[method]\nkind = \"online_dpo\"\nonline_rounds = 4\n";
        let c = RunConfig::from_toml(online).unwrap();
        assert_eq!(
            (c.method.kind, c.method.online_rounds),
            (MethodKind::OnlineDpo, 4)
        );
        for task in ["arith-steps", "preferences"] {
            let err = RunConfig::from_toml(&format!("[task]\nname = \"{task}\"\n{online}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("labeller"), "{task}: {err}");
        }
    }

    #[test]
    fn the_within_prompt_loss_needs_arith_steps_and_several_solutions_a_prompt() {
        let arith = "[task]\nname = \"arith-steps\"\n[method]\nkind = \"best_of_n\"\n";
        let within = "step_loss = \"within_prompt\"\n";
        let ok = format!("{arith}[rm]\npairs_per_prompt = 4\n{within}");
        let c = RunConfig::from_toml(&ok).unwrap();
        assert_eq!(c.rm.step_loss, StepLoss::WithinPrompt);
        for bad in [
            format!("{arith}[rm]\npairs_per_prompt = 1\n{within}"),
            format!("[rm]\npairs_per_prompt = 4\n{within}"),
        ] {
            let err = RunConfig::from_toml(&bad).unwrap_err().to_string();
            assert!(err.contains("rm.pairs_per_prompt ≥ 2"), "{err}");
        }
    }
}
