//! `rlhf sft`: supervised fine-tuning of a checkpoint on demonstrations (`prompt`/`completion`,
//! `messages` or `text` records), the loss on the completion's tokens.

use anyhow::Result;
use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args, ValueEnum};
use rlhf_data::SftRecord;
use rlhf_models::sft::Example;
use rlhf_models::{PackingStrategy, SftConfig, SftLoss, rows_per_epoch, train_sft};
use serde::{Deserialize, Serialize};

use crate::args::{DataArgs, LoraArgs, ModelArgs, TrainArgs, defaults_from_clap};
use crate::commands::Prepared;
use crate::data::{Encoder, SftTarget, prompt_key, read_split, sft_examples};
use crate::output;

/// TRL's `SFTConfig.learning_rate`.
pub const DEFAULT_LR: f64 = 2e-5;

/// The loss [TRL: --loss_type].
#[derive(ValueEnum, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SftLossArg {
    /// The mean negative log-likelihood of the target tokens.
    Nll,
    /// Dynamic Fine-Tuning: each target token's negative log-likelihood weighted by its own
    /// (detached) probability.
    Dft,
}

/// How `--packing` packs [TRL: --packing_strategy].
#[derive(ValueEnum, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PackingStrategyArg {
    /// Best-fit decreasing: whole examples (a longer one cut to the row), each with its own
    /// positions and attending only to itself.
    Bfd,
    /// `bfd`, with an example longer than a row split into pieces of a row's length, each
    /// packed as an example.
    #[value(name = "bfd_split", alias = "bfd-split")]
    BfdSplit,
    /// The examples as one stream cut into rows: an example may span two, and attention
    /// crosses examples.
    Wrapped,
}

/// `rlhf sft` options.
#[derive(Args, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(default)]
pub struct SftArgs {
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
    /// Pack examples into rows of at most this many tokens (fewer pads); packed training examples
    /// are not cut to --max-length, which then applies to eval only [TRL: --packing with
    /// --max_length].
    #[arg(long, value_name = "TOKENS")]
    pub packing: Option<usize>,
    /// How --packing packs: `bfd` keeps each example whole and apart from the others in its row,
    /// `bfd_split` too but splits an example longer than a row, `wrapped` cuts one stream of them
    /// into rows [TRL: --packing_strategy].
    #[arg(long, value_enum, default_value = "bfd")]
    pub packing_strategy: PackingStrategyArg,
    /// The loss; the eval loss is the same (with `dft`, −mean(p·log p), which can fall when the
    /// targets grow less likely too), and the perplexity reads the likelihood
    /// [TRL: --loss_type].
    #[arg(long, value_enum, default_value = "nll")]
    pub loss_type: SftLossArg,
    /// Learn the completion only (`false`: the prompt too); a `messages` record's completion is
    /// its last assistant message [TRL: --completion_only_loss; TRL learns a `messages` record
    /// whole unless --assistant_only_loss].
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub completion_only_loss: bool,
    /// Learn every assistant message of a conversation, each after the messages before it, and
    /// nothing else; plain-text data is refused [TRL: --assistant_only_loss].
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub assistant_only_loss: bool,
}

defaults_from_clap!(SftArgs);

impl SftArgs {
    /// These options with the command's default learning rate filled in (what `--print-config`
    /// shows and the run directory records).
    pub fn completed(mut self) -> Self {
        self.train.learning_rate.get_or_insert(DEFAULT_LR);
        self
    }

    /// What each example learns.
    pub fn target(&self) -> SftTarget {
        match (self.assistant_only_loss, self.completion_only_loss) {
            (true, _) => SftTarget::AssistantTurns,
            (false, true) => SftTarget::Completion,
            (false, false) => SftTarget::Everything,
        }
    }

    /// The library's packing strategy.
    fn packing_strategy(&self) -> PackingStrategy {
        match self.packing_strategy {
            PackingStrategyArg::Bfd => PackingStrategy::Bfd,
            PackingStrategyArg::BfdSplit => PackingStrategy::BfdSplit,
            PackingStrategyArg::Wrapped => PackingStrategy::Wrapped,
        }
    }

    /// The library's configuration, for epochs of `per_epoch` optimizer steps.
    pub fn config(&self, per_epoch: u64) -> SftConfig {
        let plan = self.train.plan(per_epoch);
        SftConfig {
            loss_type: match self.loss_type {
                SftLossArg::Nll => SftLoss::Nll,
                SftLossArg::Dft => SftLoss::Dft,
            },
            epochs: plan.epochs,
            max_steps: plan.max_steps,
            batch_size: self.train.per_device_train_batch_size,
            grad_accum: self.train.gradient_accumulation_steps,
            optimizer: self.train.optimizer(DEFAULT_LR),
            schedule: self.train.schedule(plan.total),
            truncation: None,
            packing: self.packing,
            packing_strategy: self.packing_strategy(),
            eval_every: self.train.eval_steps,
            seed: self.train.seed,
        }
    }
}

/// Warns when best-fit packing keeps no response token of some examples: it keeps an example's
/// first `--packing` tokens, and their prompts alone fill that many.
fn warn_on_prompts_that_fill_a_row(train: &[Example], args: &SftArgs) {
    let Some(row) = args.packing else { return };
    if args.packing_strategy() != PackingStrategy::Bfd {
        return;
    }
    let lost = train
        .iter()
        .filter(|(prompt, _)| prompt.len() >= row)
        .count();
    if lost > 0 {
        tracing::warn!(
            "{lost} of {} training examples have prompts of at least --packing {row} tokens: \
             packed with `bfd`, which keeps an example's first {row} tokens, they train on none of \
             their response; raise --packing, or use --packing-strategy bfd_split",
            train.len()
        );
    }
}

/// Trains and writes the model.
pub fn run(args: &SftArgs, toml: &str) -> Result<()> {
    let mut p = Prepared::new(&args.model, &args.data)?;
    // a plain-text record has no prompt: its text is the key
    let (train, eval) = read_split::<SftRecord>(&args.data, |r| {
        prompt_key(if r.prompt.is_empty() {
            &r.completion
        } else {
            &r.prompt
        })
    })?;
    let enc = p.encoder(&args.data)?;
    // packed training examples are not cut to --max-length, as TRL does not truncate when it
    // packs: the packing keeps an example's first --packing tokens (bfd), or all (bfd_split,
    // wrapped)
    let train_enc = match args.packing {
        Some(_) => Encoder {
            max_prompt: usize::MAX,
            max_length: usize::MAX,
            ..enc
        },
        None => enc,
    };
    let (train, dropped) = sft_examples(&train, &train_enc, args.target())?;
    dropped.announce("training data");
    warn_on_prompts_that_fill_a_row(&train, args);
    let (eval, dropped) = sft_examples(&eval, &enc, args.target())?;
    dropped.announce("eval data");
    // the schedule counts the epoch's rows: with packing, far fewer than the examples
    let cfg = args.config(args.train.steps_per_epoch(rows_per_epoch(
        &train,
        args.packing,
        args.packing_strategy(),
    )));
    output::claim(&p.out, "sft", toml)?;
    let (model, report) = train_sft(
        p.policy(&args.lora, args.train.seed)?,
        &train,
        &eval,
        &cfg,
        &p.run_options(&args.train),
        &p.device,
    )?;
    p.save(&model, &args.lora)?;
    tracing::info!(
        "sft: {} steps ({} this run), {} target tokens, final loss {:.4}{}",
        report.steps,
        report.steps_this_run,
        report.tokens,
        report.final_train_loss,
        if eval.is_empty() {
            String::new()
        } else {
            format!(", eval loss {:.4}", report.eval_loss)
        }
    );
    Ok(())
}
