//! `rlhf rm`: a reward model from a checkpoint, by the file's kind: preference pairs →
//! Bradley–Terry (optionally with margins), K-wise rankings → Plackett–Luce, step-labelled
//! traces → a process RM (binary cross-entropy per step), responses labelled good or bad → an
//! outcome RM (binary cross-entropy per response).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args, ValueEnum};
use rlhf_core::train::RunOptions;
use rlhf_data::{
    ChatFormat, Kind, KwiseRecord, PreferenceRecord, StepRecord, Tokenizer, UnpairedRecord,
};
use rlhf_models::ScalarModel;
use rlhf_reward::{
    ChatReading, LabelledExample, Normalisation, RankedExample, RewardModel, RewardSettings,
    RmConfig, StepAggregate, StepLoss, normalise, train_reward_model, train_step_model,
};
use serde::{Deserialize, Serialize};

use crate::args::{DataArgs, LoraArgs, ModelArgs, TrainArgs, defaults_from_clap, kind_str};
use crate::data::{
    Encoder, demonstrations, kwise_groups, outcome_examples, preference_pairs, prompt_key, ranked,
    read_split, step_examples,
};
use crate::{load, output};

/// TRL's `RewardConfig.learning_rate`.
pub const DEFAULT_LR: f64 = 1e-4;

/// How a process RM turns step probabilities into a sequence score.
#[derive(ValueEnum, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Aggregate {
    /// The weakest step.
    Min,
    /// All steps right.
    Product,
    /// The last step.
    Last,
}

/// `rlhf rm` options.
#[derive(Args, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(default)]
pub struct RmArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub train: TrainArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub lora: LoraArgs,
    /// η of the centering term `η·mean[(Σ_k r_k)²]` (0: off) [TRL:
    /// --center_rewards_coefficient].
    #[arg(long, default_value_t = 0.0)]
    pub center_rewards_coefficient: f32,
    /// Pairs: take `score_chosen − score_rejected` as each pair's margin (K-wise records of two:
    /// the difference of their rewards). A file with a `margin` field (TRL's column) uses it
    /// without this flag, and the field wins over the scores.
    #[arg(long)]
    pub use_margin: bool,
    /// Centre the served scores on the chosen responses of the training pairs, or on the
    /// completions of `normalize_on` (TL;DR detail 5: the bias from the SFT demonstrations).
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub normalize: bool,
    /// Demonstrations (prompt/completion) whose mean score becomes the served bias.
    #[arg(long, value_name = "FILE")]
    pub normalize_on: Option<PathBuf>,
    /// Process RMs: the text that ends a step [TRL PRM: --step_separator].
    #[arg(long, default_value = "\n")]
    pub step_separator: String,
    /// Process RMs: how step probabilities become a sequence score.
    #[arg(long, value_enum, default_value_t = Aggregate::Min)]
    pub step_aggregate: Aggregate,
    /// Dropout off in the model [TRL: --disable_dropout].
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub disable_dropout: bool,
}

defaults_from_clap!(RmArgs);

impl RmArgs {
    /// These options with the command's default learning rate filled in (what `--print-config`
    /// shows and the run directory records).
    pub fn completed(mut self) -> Self {
        self.train.learning_rate.get_or_insert(DEFAULT_LR);
        self
    }

    /// The library's configuration, for epochs of `per_epoch` optimizer steps.
    pub fn config(&self, per_epoch: u64) -> RmConfig {
        let plan = self.train.plan(per_epoch);
        RmConfig {
            epochs: plan.epochs,
            max_steps: plan.max_steps,
            batch_size: self.train.per_device_train_batch_size,
            grad_accum: self.train.gradient_accumulation_steps,
            optimizer: self.train.optimizer(DEFAULT_LR),
            schedule: self.train.schedule(plan.total),
            center_eta: self.center_rewards_coefficient,
            use_margin: self.use_margin,
            eval_every: self.train.eval_steps,
            truncation: None,
            seed: self.train.seed,
            // BCE: the within-prompt loss leaves each step position's offset free, which the
            // served step aggregate compares across positions
            step_loss: StepLoss::Pointwise,
            disable_dropout: self.disable_dropout,
        }
    }
}

/// The checkpoint in `dir` as `rlhf rm` starts from it: its tokenizer, its chat format
/// (`--chat-template`'s when given) and the model as a reward model (with LoRA when asked).
fn starting_checkpoint(
    args: &RmArgs,
    dir: &Path,
    device: &Device,
) -> Result<(Tokenizer, ChatFormat, RewardModel)> {
    let mut tokenizer = Tokenizer::from_dir(dir)
        .with_context(|| format!("loading the tokenizer in {}", dir.display()))?;
    let format = load::chat_format(&mut tokenizer, args.data.template())?;
    let start = load::reward_model(dir, device, args.train.seed)?;
    let start = RewardModel {
        model: load::scalar(start.model, &start.config, &args.lora, args.train.seed)?,
        ..start
    };
    Ok((tokenizer, format, start))
}

/// The training and held-out examples of a file of preference pairs (Bradley–Terry) or K-wise
/// rankings (Plackett–Luce), best response first, announced.
fn ranked_examples(
    args: &RmArgs,
    kind: Kind,
    enc: &Encoder,
) -> Result<(Vec<RankedExample>, Vec<RankedExample>)> {
    let (train, eval) = if kind == Kind::Preference {
        let (t, e) = read_split::<PreferenceRecord>(&args.data, |r| prompt_key(&r.prompt))?;
        let (t, dropped) = preference_pairs(&t, enc, args.use_margin)?;
        dropped.announce("training pairs");
        (t, preference_pairs(&e, enc, args.use_margin)?.0)
    } else {
        let (t, e) = read_split::<KwiseRecord>(&args.data, |r| prompt_key(&r.prompt))?;
        let (t, dropped) = kwise_groups(&t, enc)?;
        dropped.announce("training groups");
        (
            ranked(&t, args.use_margin),
            ranked(&kwise_groups(&e, enc)?.0, args.use_margin),
        )
    };
    let with_margin = train.iter().filter(|e| e.margin.is_some()).count();
    if args.use_margin && with_margin == 0 && !train.is_empty() {
        bail!(
            "--use-margin: no training example has a margin to take (a `margin` field, both \
             `score_chosen` and `score_rejected`, or a K-wise record of two with its rewards)"
        );
    }
    if with_margin > 0 {
        tracing::info!(
            "rm: {with_margin} of {} training pairs have a margin (the loss is \
             −log σ(r_chosen − r_rejected − margin))",
            train.len()
        );
    }
    tracing::info!(
        "rm: {} with {} training examples of K = {}, {} held out",
        if train.first().is_some_and(|e| e.responses.len() > 2) {
            "Plackett–Luce"
        } else {
            "Bradley–Terry"
        },
        train.len(),
        train.first().map_or(2, |e| e.responses.len()),
        eval.len()
    );
    Ok((train, eval))
}

/// The training and held-out examples of a file of step-labelled traces (a process RM) or of
/// responses labelled one at a time (an outcome RM), announced, with the settings the RM is
/// served with.
fn labelled_examples(
    args: &RmArgs,
    kind: Kind,
    enc: &Encoder,
) -> Result<(Vec<LabelledExample>, Vec<LabelledExample>, RewardSettings)> {
    let (train, eval, settings) = if kind == Kind::Steps {
        let (t, e) = read_split::<StepRecord>(&args.data, |r| r.prompt.clone())?;
        let sep = &args.step_separator;
        let agg = match args.step_aggregate {
            Aggregate::Min => StepAggregate::Min,
            Aggregate::Product => StepAggregate::Product,
            Aggregate::Last => StepAggregate::Last,
        };
        (
            step_examples(&t, enc, sep)?,
            step_examples(&e, enc, sep)?,
            RewardSettings::process(sep, agg),
        )
    } else {
        let (t, e) = read_split::<UnpairedRecord>(&args.data, |r| prompt_key(&r.prompt))?;
        (
            outcome_examples(&t, enc)?,
            outcome_examples(&e, enc)?,
            RewardSettings::outcome(),
        )
    };
    tracing::info!(
        "rm: {} ({} training examples, {} held out)",
        if kind == Kind::Steps {
            "a process RM on step labels"
        } else {
            "an outcome RM on response labels"
        },
        train.len(),
        eval.len()
    );
    Ok((train, eval, settings))
}

/// What the served scores are centred with: `model`'s mean score on the demonstrations of
/// `--normalize-on`, or else on `demos` (the chosen responses of the training pairs); none for a
/// process RM, with `--normalize false`, or without demonstrations.
fn served_normalisation(
    args: &RmArgs,
    enc: &Encoder,
    model: &ScalarModel,
    settings: &RewardSettings,
    demos: Vec<(Vec<u32>, Vec<u32>)>,
    device: &Device,
) -> Result<Normalisation> {
    if !args.normalize || settings.step_delimiter.is_some() {
        return Ok(Normalisation::default());
    }
    let demos = match &args.normalize_on {
        Some(file) => demonstrations(file, &args.data.read_options(), enc)?,
        None => demos,
    };
    if demos.is_empty() {
        return Ok(Normalisation::default());
    }
    Ok(normalise(
        model,
        &demos,
        false,
        args.train.per_device_train_batch_size,
        device,
    )?)
}

/// Trains and writes the reward model.
pub fn run(args: &RmArgs, toml: &str) -> Result<()> {
    let (dir, out) = args.model.model_and_out()?;
    if args.lora.save_adapter {
        bail!(
            "rlhf rm writes the reward model with its adapters merged; --save-adapter (PEFT's \
             causal-LM layout) is for the policy commands"
        );
    }
    let device = args.model.training_device()?;
    let (tokenizer, format, start) = starting_checkpoint(args, dir, &device)?;
    let (max_prompt, max_length) = args.data.limits()?;
    let enc = Encoder {
        tokenizer: &tokenizer,
        format: &format,
        max_prompt,
        max_length,
        // read as TRL's reward trainer reads a chat, and as the settings written below say
        chat_reading: ChatReading::Rendered,
    };
    let kind = args.data.record_kind()?;
    output::claim(out, "rm", toml)?;
    let run = RunOptions {
        replicas: args.model.replicas(start.model.backbone.dropout() > 0.0)?,
        ..args.train.run_options(out)
    };
    let (model, settings, report, demos) = match kind {
        Kind::Preference | Kind::Kwise => {
            let (train, eval) = ranked_examples(args, kind, &enc)?;
            let chosen = train
                .iter()
                .map(|e| (e.prompt.clone(), e.responses[0].clone()))
                .collect();
            let mut cfg = args.config(args.train.steps_per_epoch(train.len()));
            // TRL takes a file's `margin` column whenever it is there (the held-out file's too)
            cfg.use_margin |= train.iter().chain(&eval).any(|e| e.margin.is_some());
            let (m, r) = train_reward_model(start.model, &train, &eval, &cfg, &run, &device)?;
            (m, RewardSettings::outcome(), r, chosen)
        }
        Kind::Steps | Kind::Unpaired => {
            let (train, eval, settings) = labelled_examples(args, kind, &enc)?;
            let cfg = args.config(args.train.steps_per_epoch(train.len()));
            let (m, r) = train_step_model(start.model, &train, &eval, &cfg, &run, &device)?;
            (m, settings, r, Vec::new())
        }
        other => bail!(
            "rlhf rm reads preference, kwise, steps or unpaired records, and {} holds `{}` records",
            args.data.data()?.display(),
            kind_str(other)
        ),
    };
    let normalisation = served_normalisation(args, &enc, &model, &settings, demos, &device)?;
    let rm = RewardModel {
        model,
        config: start.config,
        settings: RewardSettings {
            normalisation,
            ..settings
        },
        // trained here, at a response's last token whatever the starting checkpoint's PAD
        pad_token_id: None,
    };
    output::save_reward(out, &rm, &tokenizer)?;
    tracing::info!(
        "rm: {} steps ({} this run), final loss {:.4}{}; served bias {:.4}",
        report.steps,
        report.steps_this_run,
        report.final_train_loss,
        if args.data.eval_data.is_some() || args.data.eval_share > 0.0 {
            format!(
                "; held out: loss {:.4}, accuracy {:.3}",
                report.eval.loss, report.eval.accuracy
            )
        } else {
            String::new()
        },
        normalisation.bias
    );
    Ok(())
}
