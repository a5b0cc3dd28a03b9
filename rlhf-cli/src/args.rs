//! The option groups the training commands share, named as TRL names them (`TrainingArguments`,
//! `ModelConfig`), and what they become in the library's configurations.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use burn::tensor::Device;
use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args, Command, FromArgMatches, ValueEnum};
use rlhf_core::train::{
    LrSchedule, OptimizerConfig, Replicas, RunOptions, SchedulePlan, ScheduleShape, SyncRef,
};
use rlhf_data::{FieldNames, Kind, ReadOptions, detect_kind};
use rlhf_models::{LoraConfig, Precision, SamplingConfig};
use serde::{Deserialize, Serialize};

use crate::load::TemplateChoice;

/// The defaults of an option group: what clap gives for an empty command line. Every field of
/// a group has a default (or is optional), so this is the one place defaults are written.
pub fn clap_default<T: Args + FromArgMatches>() -> T {
    let cmd = T::augment_args(Command::new("defaults"));
    T::from_arg_matches(&cmd.get_matches_from(["defaults"]))
        .expect("every option of a group has a default")
}

/// Implements `Default` through [`clap_default`].
macro_rules! defaults_from_clap {
    ($($t:ty),*) => {$(
        impl Default for $t {
            fn default() -> Self {
                $crate::args::clap_default()
            }
        }
    )*};
}
pub(crate) use defaults_from_clap;

/// The model to start from, where the result goes, and the device.
#[derive(Args, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(default)]
pub struct ModelArgs {
    /// A Hugging Face model directory: config.json, model.safetensors (or shards), tokenizer.json
    /// and, when it has one, tokenizer_config.json (EOS, PAD, chat template) [TRL:
    /// --model_name_or_path].
    #[arg(long, visible_alias = "model-name-or-path", value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Output directory: checkpoints and metrics.jsonl while training, a Hugging Face directory
    /// at the end. The same command run again resumes from the newest checkpoint [TRL:
    /// --output_dir].
    #[arg(long, visible_alias = "output-dir", value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// flex (CPU), wgpu, wgpu:cpu, vulkan, cuda:N (with the cargo feature compiled in).
    #[arg(long, default_value = "flex")]
    pub device: String,
    /// Data-parallel replicas, one per device (`flex,flex` on a CPU; `cuda:0,cuda:1`): each
    /// micro-batch is split between them, each replica's part runs on its own thread, and their
    /// gradients are summed on the first device before one optimizer step. The run computes
    /// what one replica computes, up to f32 rounding. The first device replaces `--device`.
    /// Default: two replicas on flex (faster than one replica on two threads), one elsewhere and
    /// for models with dropout [accelerate's processes; here threads].
    #[arg(long, value_delimiter = ',', value_name = "D1,D2,…")]
    pub devices: Vec<String>,
    /// Recompute memory-bound activations in the backward pass instead of keeping them (burn's
    /// balanced checkpointing): less memory for some more compute [TRL:
    /// --gradient_checkpointing].
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub gradient_checkpointing: bool,
}

impl ModelArgs {
    /// `--model` and `--out`, both required.
    pub fn model_and_out(&self) -> Result<(&Path, &Path)> {
        let (Some(dir), Some(out)) = (&self.model, &self.out) else {
            bail!("--model DIR and --out DIR are required (or `model`, `out` in the config file)");
        };
        refuse_overwrite(dir, out)?;
        Ok((dir, out))
    }

    /// The training device: `--device` with autodiff, and gradient checkpointing when asked.
    pub fn training_device(&self) -> Result<Device> {
        self.autodiff(self.devices.first().unwrap_or(&self.device))
    }

    /// The data-parallel replicas of `--devices`; without it, [`Replicas::default_for`] the
    /// training device (two on flex, one elsewhere), or one replica for a run that `splits_badly`
    /// (a model with dropout, whose masks replicas would draw in thread order; a quantile of each
    /// minibatch's entropies, which replicas would each take over their own shard). The trainers
    /// refuse several `--devices` for such runs.
    pub fn replicas(&self, splits_badly: bool) -> Result<Replicas> {
        if self.devices.is_empty() {
            return Ok(if splits_badly {
                Replicas::default()
            } else {
                Replicas::default_for(&self.training_device()?)
            });
        }
        let devices = self
            .devices
            .iter()
            .map(|d| self.autodiff(d))
            .collect::<Result<_>>()?;
        Ok(Replicas::new(devices))
    }

    /// The replicas of a command whose work replicas do not split: `--devices` is refused there
    /// by the trainer, and there is no default.
    pub fn explicit_replicas(&self) -> Result<Replicas> {
        if self.devices.is_empty() {
            Ok(Replicas::default())
        } else {
            self.replicas(false)
        }
    }

    /// `name` as an autodiff device, with gradient checkpointing when asked.
    fn autodiff(&self, name: &str) -> Result<Device> {
        let device = rlhf_core::parse_device(name)?.autodiff();
        Ok(if self.gradient_checkpointing {
            device.gradient_checkpointing()
        } else {
            device
        })
    }
}

/// The training data.
#[derive(Args, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(default)]
pub struct DataArgs {
    /// JSONL (optionally .gz) or parquet, in a Hugging Face layout [TRL: --dataset_name].
    #[arg(long, visible_alias = "dataset-name", value_name = "FILE")]
    pub data: Option<PathBuf>,
    /// Held-out records in the same layout (otherwise `eval_share` of the prompts is held out).
    #[arg(long, value_name = "FILE")]
    pub eval_data: Option<PathBuf>,
    /// Share of the prompts held out for eval when there is no `eval_data` (0: no eval).
    #[arg(long, default_value_t = 0.0)]
    pub eval_share: f64,
    /// The record kind, when its fields do not tell (preference, sft, prompt, kwise, steps,
    /// unpaired).
    #[arg(long, value_parser = parse_kind)]
    #[serde(with = "kind_name")]
    pub kind: Option<Kind>,
    /// Longest prompt + response in tokens; longer ones are cut: the prompt to
    /// `max_prompt_length` (keeping its end), then the response to what is left (keeping its
    /// start) [TRL: --max_length].
    #[arg(long, default_value_t = 1024)]
    pub max_length: usize,
    /// Longest prompt in tokens of a record longer than `max_length` (default: half of
    /// `max_length`; a shorter prompt leaves the rest to the response); a record that fits is
    /// kept whole, except by `kto` with its KTO loss, which cuts every prompt to it (its KL term
    /// pairs a prompt with another record's response) [TRL: --max_prompt_length, in TRL
    /// versions that have it].
    #[arg(long)]
    pub max_prompt_length: Option<usize>,
    /// Skip records that do not read (reporting them) instead of stopping at the first.
    #[arg(long)]
    pub skip_bad: bool,
    #[command(flatten)]
    #[serde(flatten)]
    pub template: TemplateArgs,
    /// The prompt field, when the file names it differently.
    #[arg(long, default_value = "prompt")]
    pub prompt_field: String,
    /// The field of a plain-text record (language modelling, learned whole), when the file
    /// names it differently [TRL: --dataset_text_field].
    #[arg(long, default_value = "text")]
    pub dataset_text_field: String,
}

fn parse_kind(s: &str) -> std::result::Result<Kind, String> {
    s.parse()
}

mod kind_name {
    use rlhf_data::Kind;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(k: &Option<Kind>, s: S) -> Result<S::Ok, S::Error> {
        match k {
            None => s.serialize_none(),
            Some(k) => s.serialize_some(super::kind_str(*k)),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Kind>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| s.parse().map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// A list that (de)serialises as its one element when it has one, so that a config file's
/// `loss = "ipo"` reads as it did and is written so, and as a list otherwise.
pub mod one_or_many {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<T: Serialize, S: Serializer>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
        match v {
            [one] => one.serialize(s),
            _ => v.serialize(s),
        }
    }

    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<T>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany<T> {
            One(T),
            Many(Vec<T>),
        }
        Ok(match OneOrMany::deserialize(d)? {
            OneOrMany::One(x) => vec![x],
            OneOrMany::Many(v) => v,
        })
    }
}

/// A kind's name as `--kind` takes it.
pub fn kind_str(k: Kind) -> &'static str {
    match k {
        Kind::Preference => "preference",
        Kind::Sft => "sft",
        Kind::Prompt => "prompt",
        Kind::Kwise => "kwise",
        Kind::Steps => "steps",
        Kind::Unpaired => "unpaired",
    }
}

/// How to read a file whose prompts are in the field `prompt_field` (skipping the records that
/// do not read when `skip_bad`).
pub fn read_options(prompt_field: &str, skip_bad: bool) -> ReadOptions {
    ReadOptions {
        fields: FieldNames {
            prompt: prompt_field.to_string(),
            ..FieldNames::default()
        },
        skip_bad,
        ..ReadOptions::default()
    }
}

impl DataArgs {
    /// How to read the files.
    pub fn read_options(&self) -> ReadOptions {
        let mut options = read_options(&self.prompt_field, self.skip_bad);
        options.fields.text = self.dataset_text_field.clone();
        options
    }

    /// The chat template these options choose.
    pub fn template(&self) -> TemplateChoice<'_> {
        self.template.choice()
    }

    /// The records' kind: `--kind`, or the kind the training file's fields tell.
    pub fn record_kind(&self) -> Result<Kind> {
        match self.kind {
            Some(k) => Ok(k),
            None => Ok(detect_kind(self.data()?, &self.read_options())?),
        }
    }

    /// The training file.
    pub fn data(&self) -> Result<&Path> {
        match &self.data {
            Some(d) => Ok(d),
            None => bail!("--data FILE is required (or `data` in the config file)"),
        }
    }

    /// `(longest prompt, longest prompt and response together)` in tokens.
    pub fn limits(&self) -> Result<(usize, usize)> {
        let prompt = self.max_prompt_length.unwrap_or(self.max_length / 2);
        if prompt == 0 {
            bail!("max_prompt_length 0 would leave every prompt empty; it must be at least 1");
        }
        if prompt >= self.max_length || self.max_length < 2 {
            bail!(
                "max_prompt_length {prompt} leaves no room for a response in max_length {}",
                self.max_length
            );
        }
        Ok((prompt, self.max_length))
    }
}

/// The learning-rate schedule's shape [TRL: --lr_scheduler_type].
#[derive(ValueEnum, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Scheduler {
    /// The peak rate throughout; a warm-up is ignored, as transformers' `constant` ignores it.
    Constant,
    /// Warm-up, then the peak rate.
    #[value(name = "constant_with_warmup", alias = "constant-with-warmup")]
    ConstantWithWarmup,
    /// Warm-up, then linear decay to 0 (the Hugging Face default).
    Linear,
    /// Warm-up, then half a cosine to 0.
    Cosine,
}

impl Scheduler {
    /// The library's name for this shape.
    pub fn shape(self) -> ScheduleShape {
        match self {
            Scheduler::Constant => ScheduleShape::Constant,
            Scheduler::ConstantWithWarmup => ScheduleShape::ConstantWithWarmup,
            Scheduler::Linear => ScheduleShape::Linear,
            Scheduler::Cosine => ScheduleShape::Cosine,
        }
    }
}

/// How long an offline run trains ([`TrainArgs::plan`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepPlan {
    /// The epochs the trainer prepares.
    pub epochs: usize,
    /// Where the run stops within them (`--max-steps`), if it does.
    pub max_steps: Option<u64>,
    /// Its optimizer steps: what the learning-rate schedule spans.
    pub total: u64,
}

/// How to train: optimizer, schedule, batches, checkpoints and logging.
#[derive(Args, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(default)]
pub struct TrainArgs {
    /// Peak learning rate (default per command: sft 2e-5, rm 1e-4, dpo, kto and distill 1e-6, as
    /// TRL's) [TRL: --learning_rate].
    #[arg(long)]
    pub learning_rate: Option<f64>,
    /// Passes over the data (transformers' default is 3) [TRL: --num_train_epochs].
    #[arg(long, visible_alias = "epochs", default_value_t = 1)]
    pub num_train_epochs: usize,
    /// When > 0, the run's optimizer steps: it passes over the data as many times as that takes
    /// and stops there, within an epoch if need be; --num-train-epochs is not read
    /// [TRL: --max_steps].
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub max_steps: i64,
    /// Examples (sequences, pairs, groups) per micro-batch [TRL:
    /// --per_device_train_batch_size].
    #[arg(long, visible_alias = "batch-size", default_value_t = 8)]
    pub per_device_train_batch_size: usize,
    /// Micro-batches per optimizer step; the step's loss is the mean over all their items
    /// [TRL: --gradient_accumulation_steps].
    #[arg(long, default_value_t = 1)]
    pub gradient_accumulation_steps: usize,
    /// The schedule's shape [TRL: --lr_scheduler_type].
    #[arg(long, value_enum, default_value_t = Scheduler::Linear)]
    pub lr_scheduler_type: Scheduler,
    /// Warm-up steps (wins over `warmup_ratio` when > 0) [TRL: --warmup_steps].
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: u64,
    /// Warm-up as a share of all steps, in [0, 1], rounded up [TRL: --warmup_ratio].
    #[arg(long, default_value_t = WarmupRatio::NONE)]
    pub warmup_ratio: WarmupRatio,
    /// AdamW's decoupled weight decay [TRL: --weight_decay].
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f32,
    /// AdamW β₁ [TRL: --adam_beta1].
    #[arg(long, default_value_t = 0.9)]
    pub adam_beta1: f32,
    /// AdamW β₂ [TRL: --adam_beta2].
    #[arg(long, default_value_t = 0.999)]
    pub adam_beta2: f32,
    /// AdamW ε [TRL: --adam_epsilon].
    #[arg(long, default_value_t = 1e-8)]
    pub adam_epsilon: f32,
    /// Clip the global gradient norm to this (0: no clipping) [TRL: --max_grad_norm].
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f32,
    /// Evaluate every this many steps (0: at the end only) [TRL: --eval_steps].
    #[arg(long, default_value_t = 0)]
    pub eval_steps: u64,
    /// Checkpoint every this many steps (and always at the end) [TRL: --save_steps].
    #[arg(long, default_value_t = 500)]
    pub save_steps: u64,
    /// Checkpoints kept [TRL: --save_total_limit].
    #[arg(long, default_value_t = 2)]
    pub save_total_limit: usize,
    /// A progress line every this many steps when there is no progress bar (stderr is not a
    /// terminal); `--quiet` hides them [TRL: --logging_steps].
    #[arg(long, default_value_t = 10)]
    pub logging_steps: u64,
    /// Seed of the batch order (and of any fresh head) [TRL: --seed].
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// LoRA instead of full fine-tuning [TRL: `ModelConfig`'s PEFT options].
#[derive(Args, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(default)]
pub struct LoraArgs {
    /// Train LoRA adapters of this rank on the target modules and freeze every weight of the
    /// model (0: train every weight). The frozen base is the reference (unless `--ref` names
    /// another), and the output is the model with the adapters merged [TRL: --lora_r, with
    /// --use_peft].
    #[arg(long, visible_alias = "lora-r", default_value_t = 0)]
    pub lora_rank: usize,
    /// LoRA with TRL's default rank, 16, unless `--lora-rank` gives one [TRL: --use_peft].
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub use_peft: bool,
    /// α: the adapters' product is scaled by α/r (α/√r with --use-rslora) [TRL: --lora_alpha].
    #[arg(long, default_value_t = 32.0)]
    pub lora_alpha: f64,
    /// Rank-stabilised LoRA: scale the adapters' product by α/√r instead [TRL: --use_rslora].
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub use_rslora: bool,
    /// DoRA: each adapted weight's columns rescaled by a trained magnitude per output
    /// (`m·(W + s·A·B)/‖W + s·A·B‖`) [TRL: --use_dora].
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub use_dora: bool,
    /// The modules to adapt, by name (`q_proj,v_proj`, `self_attn.o_proj`); `all-linear` is
    /// every linear layer but the head. Default: PEFT's for the family (the query and value
    /// projections) [TRL: --lora_target_modules].
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub lora_target_modules: Vec<String>,
    /// Also write the adapters alone, in PEFT's layout (`adapter_model.safetensors`,
    /// `adapter_config.json`), in OUT/adapter.
    #[arg(long)]
    pub save_adapter: bool,
}

/// How the models a run only reads are held: the reference and the reward models.
#[derive(Args, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(default)]
pub struct FrozenArgs {
    /// The dtype of the frozen reference, reward and teacher models: f32, or bf16 for half their
    /// memory (their outputs are cast back to f32; flex stores bf16 and multiplies in f32, LibTorch
    /// and CUDA compute in bf16, wgpu has no bf16 and refuses it). Trained models stay f32, and
    /// so does a LoRA policy's frozen base when it is the reference (without --ref); an LLM
    /// judge is not cast [TRL: --torch_dtype of the reference; OpenRLHF: --bf16].
    #[arg(long, default_value = "f32", value_parser = parse_precision)]
    pub frozen_dtype: Precision,
}

/// TR-DPO's reference that follows the policy, for the offline trainers (DPO, KTO).
#[derive(Args, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(default)]
pub struct SyncRefArgs {
    /// TR-DPO: every --ref-model-sync-steps optimizer steps, move the reference to α·policy +
    /// (1 − α)·reference, α being --ref-model-mixup-alpha; its log-probs are then computed batch
    /// by batch (--ref-cache is not read), and it is saved in every checkpoint; not with LoRA
    /// [TRL: --sync_ref_model].
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub sync_ref_model: bool,
    /// TR-DPO's α, the policy's share of the new reference [TRL: --ref_model_mixup_alpha].
    #[arg(long, default_value_t = 0.6)]
    pub ref_model_mixup_alpha: f32,
    /// TR-DPO's τ, optimizer steps between the reference's updates [TRL:
    /// --ref_model_sync_steps].
    #[arg(long, default_value_t = 512)]
    pub ref_model_sync_steps: u64,
}

impl SyncRefArgs {
    /// Whether the reference cache is read, `asked` being `--ref-cache`: not with a synced
    /// reference, whose log-probs change as it moves.
    pub fn reads_cache(&self, asked: bool) -> bool {
        asked && !self.sync_ref_model
    }

    /// The library's setting: `None` for a frozen reference.
    pub fn config(&self) -> Option<SyncRef> {
        self.sync_ref_model.then_some(SyncRef {
            alpha: self.ref_model_mixup_alpha,
            steps: self.ref_model_sync_steps,
        })
    }
}

/// The chat template a command renders conversations with.
#[derive(Args, Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default)]
pub struct TemplateArgs {
    /// A Jinja chat template file to use instead of the tokenizer's [TRL: --chat_template_path].
    #[arg(long, visible_alias = "chat-template-path", value_name = "FILE.jinja")]
    pub chat_template: Option<PathBuf>,
    /// Extra variables of the chat template, a JSON object, e.g. '{"enable_thinking": false}'
    /// [TRL: --chat_template_kwargs].
    #[arg(long, value_name = "JSON")]
    pub chat_template_kwargs: Option<String>,
}

impl TemplateArgs {
    /// The template these options choose.
    pub fn choice(&self) -> TemplateChoice<'_> {
        TemplateChoice {
            file: self.chat_template.as_deref(),
            variables: self.chat_template_kwargs.as_deref(),
        }
    }
}

/// Where a command that samples its own responses reads its prompts.
#[derive(Args, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(default)]
pub struct PromptArgs {
    /// The prompts: JSONL (optionally .gz) or parquet with a prompt field (text or messages); a
    /// command that scores with a verifier reads its reference from the same records
    /// [TRL: --dataset_name].
    #[arg(long, visible_alias = "dataset-name", value_name = "FILE")]
    pub prompts: Option<PathBuf>,
    /// The prompt field, when the file names it differently.
    #[arg(long, default_value = "prompt")]
    pub prompt_field: String,
    /// Skip records that do not read instead of stopping at the first.
    #[arg(long)]
    pub skip_bad: bool,
    #[command(flatten)]
    #[serde(flatten)]
    pub template: TemplateArgs,
}

impl PromptArgs {
    /// How to read the prompt file.
    pub fn read_options(&self) -> ReadOptions {
        read_options(&self.prompt_field, self.skip_bad)
    }

    /// The chat template these options choose.
    pub fn template(&self) -> TemplateChoice<'_> {
        self.template.choice()
    }
}

/// Which tokens sampling may draw, applied in transformers' order (the repetition penalty, the
/// temperature, then top-k, top-p and min-p). A trainer's log-probs stay those of the whole
/// tempered distribution, as TRL's do.
#[derive(Args, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(default)]
pub struct TokenFilterArgs {
    /// Sample from the k most likely tokens only (0: all) [TRL: --top_k].
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Sample from the smallest set of most likely tokens whose probability reaches p (1: all)
    /// [TRL: --top_p].
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Sample only from tokens at least this share of the most likely one's probability (0: all)
    /// [TRL: --min_p].
    #[arg(long)]
    pub min_p: Option<f32>,
    /// Divide the positive logits of the tokens that the prompt or the response so far holds by
    /// this, multiply the negative ones (1: off; above 1 discourages repeats)
    /// [TRL: --repetition_penalty].
    #[arg(long)]
    pub repetition_penalty: Option<f32>,
}

impl TokenFilterArgs {
    /// `sampling` with the filters given here in place of its own.
    pub fn apply(&self, sampling: SamplingConfig) -> SamplingConfig {
        SamplingConfig {
            top_k: self.top_k.or(sampling.top_k),
            top_p: self.top_p.or(sampling.top_p),
            min_p: self.min_p.or(sampling.min_p),
            repetition_penalty: self.repetition_penalty.or(sampling.repetition_penalty),
            ..sampling
        }
    }
}

fn parse_precision(s: &str) -> std::result::Result<Precision, String> {
    s.parse().map_err(|e: rlhf_core::Error| e.to_string())
}

defaults_from_clap!(
    ModelArgs,
    DataArgs,
    TrainArgs,
    LoraArgs,
    FrozenArgs,
    SyncRefArgs,
    PromptArgs,
    TokenFilterArgs
);

impl LoraArgs {
    /// The library's LoRA settings, or `None` for full fine-tuning.
    pub fn config(&self) -> Option<LoraConfig> {
        let rank = match (self.lora_rank, self.use_peft) {
            (0, false) => return None,
            (0, true) => 16,
            (r, _) => r,
        };
        Some(LoraConfig {
            rank,
            alpha: self.lora_alpha,
            target_modules: self.lora_target_modules.clone(),
            rslora: self.use_rslora,
            dora: self.use_dora,
        })
    }
}

impl TrainArgs {
    /// AdamW with these settings and the command's default learning rate.
    pub fn optimizer(&self, default_lr: f64) -> OptimizerConfig {
        OptimizerConfig {
            lr: self.learning_rate.unwrap_or(default_lr),
            beta1: self.adam_beta1,
            beta2: self.adam_beta2,
            eps: self.adam_epsilon,
            weight_decay: self.weight_decay,
            max_grad_norm: (self.max_grad_norm > 0.0).then_some(self.max_grad_norm),
        }
    }

    /// Optimizer steps of one epoch over `n` examples in micro-batches of the configured size.
    pub fn steps_per_epoch(&self, n: usize) -> u64 {
        self.steps_of(n.div_ceil(self.per_device_train_batch_size.max(1)))
    }

    /// Optimizer steps of one epoch of `batches` micro-batches,
    /// `gradient_accumulation_steps` to a step.
    pub fn steps_of(&self, batches: usize) -> u64 {
        batches.div_ceil(self.gradient_accumulation_steps.max(1)) as u64
    }

    /// How long a run whose epochs take `per_epoch` optimizer steps trains, by transformers'
    /// rule: `--num-train-epochs` whole epochs, or with `--max-steps` > 0 that many steps, over
    /// as many epochs as they need.
    pub fn plan(&self, per_epoch: u64) -> StepPlan {
        match u64::try_from(self.max_steps) {
            Ok(max) if max > 0 => StepPlan {
                epochs: usize::try_from(max.div_ceil(per_epoch.max(1))).unwrap_or(usize::MAX),
                max_steps: Some(max),
                total: max,
            },
            _ => StepPlan {
                epochs: self.num_train_epochs,
                max_steps: None,
                total: per_epoch * self.num_train_epochs as u64,
            },
        }
    }

    /// The schedule over `total` optimizer steps.
    pub fn schedule(&self, total: u64) -> LrSchedule {
        schedule(
            self.lr_scheduler_type,
            self.warmup_steps,
            self.warmup_ratio.get(),
            total,
        )
    }

    /// Checkpoints, metrics and progress in `out`.
    pub fn run_options(&self, out: &Path) -> RunOptions {
        run_options(
            out,
            self.save_steps,
            self.save_total_limit,
            self.logging_steps,
        )
    }
}

/// Checkpoints, metrics and progress in `out`: a checkpoint every `save_steps` steps (the last
/// `save_total_limit` kept), a progress line every `logging_steps`.
pub fn run_options(
    out: &Path,
    save_steps: u64,
    save_total_limit: usize,
    logging_steps: u64,
) -> RunOptions {
    RunOptions {
        checkpoint_every: save_steps,
        keep_last: save_total_limit.max(1),
        log_every: logging_steps.max(1),
        ..RunOptions::in_dir(out)
    }
}

/// A warm-up as a share of a run's steps: a number in `[0, 1]`, as transformers requires, on the
/// command line and in a config file alike.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
#[serde(try_from = "f64", into = "f64")]
pub struct WarmupRatio(f64);

impl WarmupRatio {
    /// No warm-up.
    pub const NONE: WarmupRatio = WarmupRatio(0.0);

    /// The share.
    pub fn get(self) -> f64 {
        self.0
    }
}

impl TryFrom<f64> for WarmupRatio {
    type Error = String;
    fn try_from(v: f64) -> std::result::Result<Self, String> {
        if (0.0..=1.0).contains(&v) {
            Ok(WarmupRatio(v))
        } else {
            Err(format!(
                "warmup_ratio is a share of the run's steps, in [0, 1]; got {v}"
            ))
        }
    }
}

impl From<WarmupRatio> for f64 {
    fn from(r: WarmupRatio) -> f64 {
        r.0
    }
}

impl std::str::FromStr for WarmupRatio {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let v: f64 = s.parse().map_err(|e| format!("{s}: {e}"))?;
        WarmupRatio::try_from(v)
    }
}

impl std::fmt::Display for WarmupRatio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The schedule of shape `kind` over `total` optimizer steps, with `warmup_steps` of warm-up (or,
/// when that is 0, `⌈warmup_ratio·total⌉`), by transformers' rules ([`SchedulePlan`]).
pub fn schedule(kind: Scheduler, warmup_steps: u64, warmup_ratio: f64, total: u64) -> LrSchedule {
    SchedulePlan {
        shape: kind.shape(),
        warmup_steps,
        warmup_ratio,
    }
    .over(total)
}

/// Refuses an `--out` that is the `--model` directory (by name or, when both exist, on disk):
/// the result would overwrite the model it starts from.
pub fn refuse_overwrite(model: &Path, out: &Path) -> Result<()> {
    let same = model == out
        || matches!(
            (std::fs::canonicalize(model), std::fs::canonicalize(out)),
            (Ok(a), Ok(b)) if a == b
        );
    if same {
        bail!("--out must not be the --model directory: the model there would be overwritten");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// transformers' rule: `max_steps` > 0 takes `⌈max_steps / steps per epoch⌉` epochs and
    /// stops at `max_steps`, which the schedule spans; 0 and −1 leave `num_train_epochs` whole.
    #[test]
    fn max_steps_plans_the_epochs_that_reach_it() {
        let mut t = TrainArgs {
            num_train_epochs: 2,
            ..TrainArgs::default()
        };
        let whole = StepPlan {
            epochs: 2,
            max_steps: None,
            total: 6,
        };
        assert_eq!(t.plan(3), whole);
        for (max, epochs) in [(7, 3), (6, 2), (1, 1), (12, 4)] {
            t.max_steps = max;
            let want = StepPlan {
                epochs,
                max_steps: Some(max as u64),
                total: max as u64,
            };
            assert_eq!(t.plan(3), want, "max_steps {max}");
        }
        for off in [0, -1] {
            t.max_steps = off;
            assert_eq!(t.plan(3), whole, "max_steps {off}");
        }
    }

    #[test]
    fn an_out_that_is_the_model_directory_is_refused_by_name_or_on_disk() {
        let tmp = tempfile::tempdir().unwrap();
        let model = tmp.path().join("model");
        std::fs::create_dir(&model).unwrap();
        assert!(refuse_overwrite(&model, &model).is_err());
        // the same directory by another name
        assert!(refuse_overwrite(&model, &tmp.path().join("model/../model")).is_err());
        assert!(refuse_overwrite(&model, &tmp.path().join("out")).is_ok());
        let out = tmp.path().join("out");
        std::fs::create_dir(&out).unwrap();
        assert!(refuse_overwrite(&model, &out).is_ok());
    }

    /// A warm-up share outside `[0, 1]` is refused on the command line and in a config file,
    /// and the schedule follows transformers' rules.
    #[test]
    fn a_warmup_ratio_is_a_share() {
        for bad in ["2", "-0.1", "NaN"] {
            assert!(bad.parse::<WarmupRatio>().is_err(), "{bad}");
        }
        let e = toml::from_str::<TrainArgs>("warmup_ratio = 1.5").unwrap_err();
        assert!(e.to_string().contains("in [0, 1]"), "{e}");
        let ok = toml::from_str::<TrainArgs>("warmup_ratio = 0.1").unwrap();
        assert_eq!(ok.warmup_ratio.get(), 0.1);
        // 14 steps × 0.1 rounds up to 2 warm-up steps; `constant` ignores them
        assert_eq!(
            schedule(Scheduler::Linear, 0, 0.1, 14),
            LrSchedule::Linear {
                warmup: 2,
                total: 14
            }
        );
        assert_eq!(
            schedule(Scheduler::Constant, 3, 0.0, 14),
            LrSchedule::Constant
        );
    }
}
