//! `rlhf distill`: on-policy distillation of a checkpoint (the student) from a `--teacher` on a
//! prompt file: the student samples responses and learns the teacher's next-token distributions
//! on them, the generalised JSD of GKD; TRL's `DistillationTrainer` defaults.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args};
use rlhf_core::train::RunOptions;
use rlhf_core::train::metrics::names;
use rlhf_data::Tokenizer;
use rlhf_models::{CausalLm, DistillConfig, DistillInputs, SamplingConfig, train_distill};
use serde::{Deserialize, Serialize};

use crate::args::{
    FrozenArgs, LoraArgs, ModelArgs, PromptArgs, TokenFilterArgs, TrainArgs, defaults_from_clap,
};
use crate::data::prompts;
use crate::{load, output};

/// TRL's `DistillationConfig.learning_rate`.
pub const DEFAULT_LR: f64 = 1e-6;

/// `rlhf distill` options.
#[derive(Args, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(default)]
pub struct DistillArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub train: TrainArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub lora: LoraArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub frozen: FrozenArgs,
    /// The teacher: a causal LM checkpoint directory whose tokenizer is the student's (its
    /// embedding rows may be padded to another count) [TRL: --teacher_model_name_or_path].
    #[arg(long, visible_alias = "teacher-model-name-or-path", value_name = "DIR")]
    pub teacher: Option<PathBuf>,
    #[command(flatten)]
    #[serde(flatten)]
    pub input: PromptArgs,
    /// Held-out prompts, in the same layout: the student samples a response to each and
    /// `eval_loss` is the divergence per response token, every `--eval-steps` steps and at the
    /// end [TRL: --eval_strategy steps with an eval dataset].
    #[arg(long, value_name = "FILE")]
    pub eval_prompts: Option<PathBuf>,
    /// Prompts keep their last this many tokens (default: whole).
    #[arg(long)]
    pub max_prompt_length: Option<usize>,
    /// New tokens the student samples per response [TRL: --max_completion_length].
    #[arg(long, visible_alias = "max-new-tokens", default_value_t = 512)]
    pub max_completion_length: usize,
    /// Temperature of the student's sampling and of both distributions in the loss
    /// [TRL: --temperature].
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    #[command(flatten)]
    #[serde(flatten)]
    pub filters: TokenFilterArgs,
    /// The divergence: 0 the forward KL(teacher ‖ student), 1 the reverse KL(student ‖ teacher),
    /// in between the generalised Jensen–Shannon divergence (0.5: JSD, at most ln 2 a token; near
    /// 0 or 1 it shrinks towards 0, so the step a learning rate gives changes with β)
    /// [TRL: --beta].
    #[arg(long, default_value_t = 1.0)]
    pub beta: f64,
    /// Dropout off in the student [TRL: --disable_dropout].
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub disable_dropout: bool,
    /// Write each logged step's samples (the prompt as the student read it and its completion)
    /// to completions.jsonl in --out [TRL: --log_completions].
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub log_completions: bool,
    /// With --log-completions, this many samples of a step (default: all)
    /// [TRL: --num_completions_to_print].
    #[arg(long)]
    pub num_completions_to_print: Option<usize>,
}

defaults_from_clap!(DistillArgs);

impl DistillArgs {
    /// These options with the command's default learning rate filled in (what `--print-config`
    /// shows and the run directory records).
    pub fn completed(mut self) -> Self {
        self.train.learning_rate.get_or_insert(DEFAULT_LR);
        self
    }

    /// The library's configuration, for epochs of `per_epoch` optimizer steps.
    pub fn config(&self, per_epoch: u64) -> DistillConfig {
        let plan = self.train.plan(per_epoch);
        DistillConfig {
            epochs: plan.epochs,
            max_steps: plan.max_steps,
            batch_size: self.train.per_device_train_batch_size,
            grad_accum: self.train.gradient_accumulation_steps,
            max_prompt_length: self.max_prompt_length,
            sampling: self.filters.apply(SamplingConfig {
                max_new_tokens: self.max_completion_length,
                temperature: self.temperature,
                ..SamplingConfig::default()
            }),
            beta: self.beta,
            optimizer: self.train.optimizer(DEFAULT_LR),
            schedule: self.train.schedule(plan.total),
            disable_dropout: self.disable_dropout,
            eval_every: self.train.eval_steps,
            seed: self.train.seed,
        }
    }
}

/// Trains and writes the student.
pub fn run(args: &DistillArgs, toml: &str) -> Result<()> {
    let (dir, out) = args.model.model_and_out()?;
    let (Some(teacher_dir), Some(prompt_file)) = (&args.teacher, &args.input.prompts) else {
        bail!(
            "--teacher DIR and --prompts FILE are required (or `teacher`, `prompts` in the config \
             file)"
        );
    };
    if args.model.devices.len() > 1 {
        bail!(
            "distill: --devices with more than one replica is not supported (each replica would \
             sample its own share of the batch)"
        );
    }
    if args.train.eval_steps != 0 && args.eval_prompts.is_none() {
        bail!("distill: --eval-steps evaluates on held-out prompts: give them with --eval-prompts");
    }
    args.config(1).validate()?;
    let device = args.model.training_device()?;
    let ckpt = load::checkpoint(dir, &device, args.input.template())?;
    let teacher = teacher(teacher_dir, &ckpt.tokenizer, &args.frozen, &device)?;
    let student = load::policy(ckpt.model, &ckpt.config, &args.lora, args.train.seed)?;
    let opts = args.input.read_options();
    let prompts = prompts(prompt_file, &opts, &ckpt.format)?;
    let eval_prompts = match &args.eval_prompts {
        Some(file) => self::prompts(file, &opts, &ckpt.format)?.texts,
        None => Vec::new(),
    };
    let cfg = args.config(args.train.steps_per_epoch(prompts.texts.len()));
    tracing::info!(
        "distill: {} prompts, {} per micro-batch × {} per step, {} epochs, {} new tokens at \
         temperature {}, β {} ({})",
        prompts.texts.len(),
        cfg.batch_size,
        cfg.grad_accum,
        cfg.epochs,
        cfg.sampling.max_new_tokens,
        cfg.sampling.temperature,
        cfg.beta,
        match cfg.beta {
            0.0 => "forward KL",
            1.0 => "reverse KL",
            _ => "generalised JSD",
        }
    );
    output::claim(out, "distill", toml)?;
    let inputs = DistillInputs {
        teacher: &teacher,
        tokenizer: &ckpt.tokenizer,
        prompts: &prompts.texts,
        eval_prompts: &eval_prompts,
    };
    let run_options = RunOptions {
        log_completions: args
            .log_completions
            .then(|| args.num_completions_to_print.unwrap_or(usize::MAX)),
        ..args.train.run_options(out)
    };
    let (student, report) =
        train_distill(student, &inputs, &cfg, &run_options, &device).context("rlhf distill")?;
    output::save_causal(
        out,
        &student,
        &ckpt.config,
        &ckpt.tokenizer,
        dir,
        &args.lora,
    )?;
    tracing::info!(
        "distill: {} steps ({} this run); last loss {:.4}{}",
        report.steps,
        report.steps_this_run,
        report.final_train_loss,
        match report.eval.iter().find(|m| m.0 == names::EVAL_LOSS) {
            Some(m) => format!(", eval loss {:.4}", m.1),
            None => String::new(),
        }
    );
    Ok(())
}

/// The teacher in `dir`, on the inference device and in `frozen`'s dtype. Its tokenizer, when
/// the directory has one, must give the student's token ids.
fn teacher(
    dir: &Path,
    student_tokenizer: &Tokenizer,
    frozen: &FrozenArgs,
    device: &burn::tensor::Device,
) -> Result<CausalLm> {
    frozen.frozen_dtype.check_device(device)?;
    if dir.join("tokenizer.json").is_file() {
        let theirs = Tokenizer::from_dir(dir)
            .with_context(|| format!("reading the teacher's tokenizer in {}", dir.display()))?;
        if !theirs.same_ids(student_tokenizer) {
            bail!(
                "the teacher {} has another tokenizer than the student: distillation compares \
                 their distributions token by token, so they must share one",
                dir.display()
            );
        }
    } else {
        tracing::warn!(
            "the teacher {} has no tokenizer.json: its token ids are taken to be the student's",
            dir.display()
        );
    }
    let inference = device.clone().without_autodiff();
    let (config, model) = rlhf_models::load_pretrained(dir, &inference)
        .with_context(|| format!("loading the teacher in {}", dir.display()))?;
    tracing::info!(
        "teacher {}: {:?}, {} layers, width {}, in {}",
        dir.display(),
        config.architecture,
        config.num_hidden_layers,
        config.hidden_size,
        frozen.frozen_dtype
    );
    Ok(frozen.frozen_dtype.apply(model))
}
