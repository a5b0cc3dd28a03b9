//! `rlhf kto`: KTO of a checkpoint against a frozen reference on responses labelled desirable or
//! undesirable one at a time (TRL's unpaired preference layout `{prompt, completion, label}`;
//! a file of preference pairs is unpaired as TRL unpairs it: the chosen response desirable, the
//! rejected one undesirable).

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args, ValueEnum};
use rlhf_core::train::RunOptions;
use rlhf_data::{Kind, PreferenceRecord, UnpairedRecord};
use rlhf_dpo::{KtoConfig, KtoExample, KtoLoss, train_kto};
use serde::{Deserialize, Serialize};

use crate::args::{
    DataArgs, FrozenArgs, LoraArgs, ModelArgs, SyncRefArgs, TrainArgs, defaults_from_clap, kind_str,
};
use crate::commands::Prepared;
use crate::data::{Dropped, Encoder, prompt_key, read_split};
use crate::output;

/// TRL's `KTOConfig.learning_rate`.
pub const DEFAULT_LR: f64 = 1e-6;

/// The loss [TRL: --loss_type].
#[derive(ValueEnum, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum KtoLossArg {
    /// KTO's, against the batch's reference point (TRL `kto`).
    Kto,
    /// The unpaired APO-zero: KTO's loss with the reference point 0, no mismatched pairs (TRL
    /// `apo_zero_unpaired`).
    #[value(name = "apo_zero_unpaired", alias = "apo-zero-unpaired")]
    ApoZeroUnpaired,
}

/// `rlhf kto` options.
#[derive(Args, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(default)]
pub struct KtoArgs {
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
    #[command(flatten)]
    #[serde(flatten)]
    pub frozen: FrozenArgs,
    /// The frozen reference (default: `--model`) [TRL: --ref_model].
    #[arg(long = "ref", visible_alias = "ref-model", value_name = "DIR")]
    pub ref_model: Option<PathBuf>,
    /// The loss [TRL: --loss_type].
    #[arg(long, value_enum, default_value = "kto")]
    pub loss_type: KtoLossArg,
    /// β [TRL: --beta].
    #[arg(long, default_value_t = 0.1)]
    pub beta: f32,
    /// λ_D, the weight of desirable examples' losses [TRL: --desirable_weight].
    #[arg(long, default_value_t = 1.0)]
    pub desirable_weight: f32,
    /// λ_U, the weight of undesirable examples' losses [TRL: --undesirable_weight].
    #[arg(long, default_value_t = 1.0)]
    pub undesirable_weight: f32,
    /// Dropout off in the policy [TRL: --disable_dropout].
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub disable_dropout: bool,
    /// Compute the reference's log-probs (of each example and, for `kto`, of its mismatched
    /// pair) once and keep them in OUT/ref-cache [TRL: --precompute_ref_log_probs].
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub ref_cache: bool,
    #[command(flatten)]
    #[serde(flatten)]
    pub sync: SyncRefArgs,
}

defaults_from_clap!(KtoArgs);

impl KtoArgs {
    /// These options with the command's default learning rate filled in (what `--print-config`
    /// shows and the run directory records).
    pub fn completed(mut self) -> Self {
        self.train.learning_rate.get_or_insert(DEFAULT_LR);
        self
    }

    /// Optimizer steps of one epoch over `n` examples: the trainer's batches (for `kto`, a last
    /// batch of one joins the one before it), `gradient_accumulation_steps` to a step.
    pub fn steps_per_epoch(&self, n: usize) -> u64 {
        let order: Vec<usize> = (0..n).collect();
        let batches = self
            .loss()
            .batches(&order, self.train.per_device_train_batch_size)
            .len();
        self.train.steps_of(batches)
    }

    /// The library's loss.
    pub fn loss(&self) -> KtoLoss {
        match self.loss_type {
            KtoLossArg::Kto => KtoLoss::Kto,
            KtoLossArg::ApoZeroUnpaired => KtoLoss::ApoZeroUnpaired,
        }
    }

    /// The library's configuration, for epochs of `per_epoch` optimizer steps.
    pub fn config(&self, per_epoch: u64) -> KtoConfig {
        let plan = self.train.plan(per_epoch);
        KtoConfig {
            loss_type: self.loss(),
            beta: self.beta,
            desirable_weight: self.desirable_weight,
            undesirable_weight: self.undesirable_weight,
            epochs: plan.epochs,
            max_steps: plan.max_steps,
            batch_size: self.train.per_device_train_batch_size,
            grad_accum: self.train.gradient_accumulation_steps,
            optimizer: self.train.optimizer(DEFAULT_LR),
            schedule: self.train.schedule(plan.total),
            eval_every: self.train.eval_steps,
            truncation: None,
            max_length: Some(self.data.max_length),
            disable_dropout: self.disable_dropout,
            seed: self.train.seed,
            sync_ref: self.sync.config(),
        }
    }
}

/// Labelled responses as KTO's examples of `what` (`training examples`, `eval examples`). Those
/// whose response is empty after truncation are left out, and so are those without prompt
/// tokens (a response's first token needs something to follow: a tokenizer without BOS gives an
/// empty prompt none; TRL keeps them and leaves that token unscored), each count announced.
fn examples(
    records: impl IntoIterator<Item = (rlhf_data::Turns, rlhf_data::Turns, bool)>,
    enc: &Encoder,
    loss: KtoLoss,
    what: &str,
) -> Result<Vec<KtoExample>> {
    let mut out = Vec::new();
    let dropped = |why| Dropped {
        count: 0,
        unit: "examples",
        why,
    };
    let (mut empty, mut no_prompt) = (
        dropped("an empty completion after truncation"),
        dropped("no prompt tokens"),
    );
    for (prompt, completion, desirable) in records {
        // for KTO always cut, not only when longer than `max_length` (`Encoder::fit`): it also
        // pairs this prompt with another example's response (its KL estimate), a pair the
        // library cuts to `max_length` as TRL does (`KtoConfig::max_length`), and a prompt of
        // at most `max_prompt` tokens leaves that response `max_length − max_prompt` of them
        let (prompt_ids, mut cut) = if loss.pairs() {
            let (prompt_ids, finished) = enc.finished(&prompt, &[&completion])?;
            enc.cut(prompt_ids, finished)
        } else {
            enc.fit(&prompt, &[&completion])?
        };
        let response = cut.remove(0);
        if response.is_empty() {
            empty.count += 1;
            continue;
        }
        if prompt_ids.is_empty() {
            no_prompt.count += 1;
            continue;
        }
        out.push(KtoExample {
            prompt: prompt_ids,
            response,
            desirable,
        });
    }
    empty.announce(what);
    no_prompt.announce(what);
    Ok(out)
}

/// Preference pairs unpaired: the chosen response desirable, the rejected one undesirable.
fn unpaired(records: Vec<PreferenceRecord>) -> Vec<(rlhf_data::Turns, rlhf_data::Turns, bool)> {
    records
        .into_iter()
        .flat_map(|r| {
            [
                (r.prompt.clone(), r.chosen, true),
                (r.prompt, r.rejected, false),
            ]
        })
        .collect()
}

/// The training and held-out examples of the data file.
fn data(args: &KtoArgs, enc: &Encoder) -> Result<(Vec<KtoExample>, Vec<KtoExample>)> {
    let kind = args.data.record_kind()?;
    let (train, eval) = match kind {
        Kind::Unpaired => {
            let (train, eval) =
                read_split::<UnpairedRecord>(&args.data, |r| prompt_key(&r.prompt))?;
            let as_tuples = |v: Vec<UnpairedRecord>| {
                v.into_iter()
                    .map(|r| (r.prompt, r.completion, r.label))
                    .collect::<Vec<_>>()
            };
            (as_tuples(train), as_tuples(eval))
        }
        Kind::Preference => {
            let (train, eval) =
                read_split::<PreferenceRecord>(&args.data, |r| prompt_key(&r.prompt))?;
            tracing::info!("kto: preference pairs unpaired (chosen desirable, rejected not)");
            (unpaired(train), unpaired(eval))
        }
        other => bail!(
            "rlhf kto reads responses labelled one at a time ({{prompt, completion, label}}) or \
             preference pairs, and {} holds `{}` records",
            args.data.data()?.display(),
            kind_str(other)
        ),
    };
    Ok((
        examples(train, enc, args.loss(), "training examples")?,
        examples(eval, enc, args.loss(), "eval examples")?,
    ))
}

/// Trains and writes the model.
pub fn run(args: &KtoArgs, toml: &str) -> Result<()> {
    let mut p = Prepared::new(&args.model, &args.data)?;
    let (policy, reference) = p.policy_and_reference(
        &args.lora,
        args.train.seed,
        args.ref_model.as_deref(),
        &args.frozen,
    )?;
    let enc = p.encoder(&args.data)?;
    let (train, eval) = data(args, &enc)?;
    let n_desirable = train.iter().filter(|e| e.desirable).count();
    tracing::info!(
        "kto: {} training examples ({n_desirable} desirable, {} undesirable), {} held out, β {}",
        train.len(),
        train.len() - n_desirable,
        eval.len(),
        args.beta
    );
    let cfg = args.config(args.steps_per_epoch(train.len()));
    if let Some(advice) = cfg.weight_advice(n_desirable, train.len() - n_desirable) {
        tracing::warn!("kto: {advice}");
    }
    output::claim(&p.out, "kto", toml)?;
    let cache = p.ref_cache(
        args.sync.reads_cache(args.ref_cache),
        args.ref_model.as_deref(),
    )?;
    let (policy, report) = train_kto(
        policy,
        &reference,
        &train,
        &eval,
        &cfg,
        &cache,
        // KTO's reference point is a whole-batch estimate: replicas only when asked (refused)
        &RunOptions {
            replicas: args.model.explicit_replicas()?,
            ..p.run_options(&args.train)
        },
        &p.device,
    )?;
    p.save(&policy, &args.lora)?;
    tracing::info!(
        "kto: {} steps ({} this run), reference batches computed {}, final loss {:.4}{}",
        report.steps,
        report.steps_this_run,
        report.reference_forward_batches,
        report.final_train_loss,
        if eval.is_empty() {
            String::new()
        } else {
            format!(
                "; held out: loss {:.4}, kl {:.4}, reward margin {:.4}",
                report.eval.loss, report.eval.kl, report.eval.reward_margin
            )
        }
    );
    Ok(())
}
