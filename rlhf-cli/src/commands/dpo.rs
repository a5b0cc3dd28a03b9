//! `rlhf dpo`: offline preference optimisation of a checkpoint against a frozen reference with
//! a loss of the DPO family or EXO, on preference pairs (or K-wise groups for the `-rw` losses).

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args, ValueEnum};
use rlhf_data::{Kind, KwiseRecord, PreferenceRecord};
use rlhf_dpo::{DpoConfig, FDivergence, Group, OfflineLoss, train_offline};
use serde::{Deserialize, Serialize};

use crate::args::{
    DataArgs, FrozenArgs, LoraArgs, ModelArgs, SyncRefArgs, TrainArgs, defaults_from_clap, kind_str,
};
use crate::commands::Prepared;
use crate::data::{Dropped, Encoder, kwise_groups, preference_groups, prompt_key, read_split};
use crate::output;

/// TRL's `DPOConfig.learning_rate`.
pub const DEFAULT_LR: f64 = 1e-6;

/// The loss [TRL: --loss_type].
#[derive(ValueEnum, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DpoLoss {
    /// DPO, `−log σ(β·h)` (TRL `sigmoid`).
    Sigmoid,
    /// Conservative DPO: DPO with label smoothing (default ε 0.1).
    Cdpo,
    /// Robust DPO under label noise ε (default 0.1; TRL `robust`).
    Robust,
    /// IPO on log-probs averaged over response tokens.
    Ipo,
    /// SLiC's hinge, `max(0, 1 − β·h)`.
    Hinge,
    /// SimPO, reference-free, with margin `simpo_gamma`.
    Simpo,
    /// EXO with preference labels (default ε 1e-3; TRL `exo_pair`).
    #[value(alias = "exo_pair")]
    #[serde(alias = "exo_pair")]
    ExoPref,
    /// EXO with rewards, any K (K-wise files, or pairs with `score_chosen`/`score_rejected`).
    ExoRw,
    /// The forward KL on rewards, for comparison with EXO-rw.
    DpoRw,
    /// DPO on log-ratios averaged over response tokens (TRL `sigmoid_norm`).
    #[value(alias = "sigmoid_norm")]
    #[serde(alias = "sigmoid_norm")]
    SigmoidNorm,
    /// NCA on each response's implicit reward (TRL `nca_pair`).
    #[value(alias = "nca_pair")]
    #[serde(alias = "nca_pair")]
    NcaPair,
    /// BCO on each response's implicit reward (TRL `bco_pair`).
    #[value(alias = "bco_pair")]
    #[serde(alias = "bco_pair")]
    BcoPair,
    /// SPPO with hard labels (TRL `sppo_hard`).
    #[value(alias = "sppo_hard")]
    #[serde(alias = "sppo_hard")]
    SppoHard,
    /// APO-zero: raise the chosen likelihood, lower the rejected (TRL `apo_zero`).
    #[value(alias = "apo_zero")]
    #[serde(alias = "apo_zero")]
    ApoZero,
    /// APO-down: lower both likelihoods, the rejected more (TRL `apo_down`).
    #[value(alias = "apo_down")]
    #[serde(alias = "apo_down")]
    ApoDown,
    /// DiscoPOP with temperature `discopop_tau` (TRL `discopop`).
    Discopop,
    /// The chosen responses' negative log-likelihood (TRL `sft`), to add to another loss: with
    /// `sigmoid` it is RPO.
    Sft,
    /// AOT: the batch's policy and reference log-odds matched by rank (TRL `aot`).
    Aot,
    /// AOT, unpaired: the batch's chosen and rejected log-ratios matched by rank (TRL
    /// `aot_unpaired`).
    #[value(alias = "aot_unpaired")]
    #[serde(alias = "aot_unpaired")]
    AotUnpaired,
}

/// The divergence from the reference (f-DPO) [TRL: --f_divergence_type].
#[derive(ValueEnum, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FDivergenceType {
    /// `KL(π ‖ π_ref)`, DPO's own.
    #[value(name = "reverse_kl", alias = "reverse-kl")]
    ReverseKl,
    /// `KL(π_ref ‖ π)`.
    #[value(name = "forward_kl", alias = "forward-kl")]
    ForwardKl,
    /// Jensen–Shannon.
    #[value(name = "js_divergence", alias = "js-divergence")]
    JsDivergence,
    /// The α-divergence with α = `--f-alpha-divergence-coef`.
    #[value(name = "alpha_divergence", alias = "alpha-divergence")]
    AlphaDivergence,
}

/// `rlhf dpo` options.
#[derive(Args, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(default)]
pub struct DpoArgs {
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
    /// The loss, or several whose weighted sum is minimised (`sigmoid,sft` is RPO)
    /// [TRL: --loss_type].
    #[arg(long, visible_alias = "loss-type", value_enum, num_args = 1.., value_delimiter = ',', default_values_t = [DpoLoss::Sigmoid])]
    #[serde(with = "crate::args::one_or_many")]
    pub loss: Vec<DpoLoss>,
    /// The weight of each loss, one each (default 1) [TRL: --loss_weights].
    #[arg(long, value_name = "W", num_args = 1.., value_delimiter = ',', allow_negative_numbers = true)]
    pub loss_weights: Option<Vec<f32>>,
    /// β [TRL: --beta].
    #[arg(long, default_value_t = 0.1)]
    pub beta: f32,
    /// ε of cdpo, robust, exo-pref, aot and aot-unpaired (defaults 0.1, 0.1, 1e-3, 0 and 0)
    /// [TRL: --label_smoothing].
    #[arg(long)]
    pub label_smoothing: Option<f32>,
    /// SimPO's target margin γ [TRL CPO: --simpo_gamma].
    #[arg(long, default_value_t = 0.5)]
    pub simpo_gamma: f32,
    /// The reward temperature β_r of exo-rw and dpo-rw.
    #[arg(long, default_value_t = 1.0)]
    pub beta_r: f32,
    /// DiscoPOP's temperature τ [TRL: --discopop_tau].
    #[arg(long, default_value_t = 0.05)]
    pub discopop_tau: f32,
    /// The divergence from the reference that the losses on the difference of implicit rewards
    /// generalise to (f-DPO) [TRL: --f_divergence_type].
    #[arg(long, value_enum, default_value_t = FDivergenceType::ReverseKl)]
    pub f_divergence_type: FDivergenceType,
    /// α of `--f-divergence-type alpha_divergence` [TRL: --f_alpha_divergence_coef].
    #[arg(long, default_value_t = 0.5)]
    pub f_alpha_divergence_coef: f32,
    /// LD-DPO: the weight in [0, 1] of each token a response has beyond the shorter response of
    /// its pair, in the policy's and the reference's sequence log-probs (unset: 1) [TRL:
    /// --ld_alpha].
    #[arg(long, value_name = "ALPHA")]
    pub ld_alpha: Option<f32>,
    /// WPO: multiply each pair's loss by its responses' `exp(mean_t [log π(y_t) − log Σ_v
    /// π(v)²])`, so that pairs the policy would not sample count less (not with aot,
    /// aot-unpaired or the K-wise losses) [TRL: --use_weighting].
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub use_weighting: bool,
    /// Dropout off in the policy; the reference's log-probs are read without it [TRL:
    /// --disable_dropout].
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub disable_dropout: bool,
    /// Compute the reference's log-probs once and keep them in OUT/ref-cache (keyed by the
    /// reference's weights and config.json, the data, the truncation and the temperature) [TRL:
    /// --precompute_ref_log_probs].
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub ref_cache: bool,
    #[command(flatten)]
    #[serde(flatten)]
    pub sync: SyncRefArgs,
}

defaults_from_clap!(DpoArgs);

impl DpoArgs {
    /// These options with the command's default learning rate filled in (what `--print-config`
    /// shows and the run directory records).
    pub fn completed(mut self) -> Self {
        self.train.learning_rate.get_or_insert(DEFAULT_LR);
        // the losses' one ε, when those that take one agree on its default (cdpo and robust 0.1,
        // exo-pref 1e-3, the AOT losses 0); otherwise each takes its own unless
        // --label-smoothing is given
        let defaults: Vec<f32> = self
            .loss
            .iter()
            .filter_map(|loss| match loss {
                DpoLoss::Cdpo | DpoLoss::Robust => Some(0.1),
                DpoLoss::ExoPref => Some(1e-3),
                DpoLoss::Aot | DpoLoss::AotUnpaired => Some(0.0),
                _ => None,
            })
            .collect();
        if let Some(&eps) = defaults.first()
            && defaults.iter().all(|&d| d == eps)
        {
            self.label_smoothing.get_or_insert(eps);
        }
        self
    }

    /// Refuses `--label-smoothing` where no loss takes an ε: TRL's `sigmoid`, `hinge`, `ipo`
    /// and the other losses without one ignore it (its `sigmoid` was conservative DPO in older
    /// versions: that is `--loss cdpo`), and this `simpo` has none; and `--loss-weights` of
    /// another count than the losses.
    pub fn check_losses(&self) -> Result<()> {
        let uses_eps = self.loss.iter().any(|l| {
            matches!(
                l,
                DpoLoss::Cdpo
                    | DpoLoss::Robust
                    | DpoLoss::ExoPref
                    | DpoLoss::Aot
                    | DpoLoss::AotUnpaired
            )
        });
        let names: Vec<String> = self
            .loss
            .iter()
            .filter_map(|l| l.to_possible_value().map(|v| v.get_name().to_string()))
            .collect();
        if let Some(eps) = self.label_smoothing
            && eps != 0.0
            && !uses_eps
        {
            bail!(
                "--label-smoothing {eps} has no effect on --loss {} (TRL ignores it there too): \
                 conservative DPO is --loss cdpo; robust, exo-pref, aot and aot-unpaired take \
                 it",
                names.join(",")
            );
        }
        if self.loss.is_empty() {
            bail!("--loss needs at least one loss");
        }
        if let Some(w) = &self.loss_weights
            && w.len() != self.loss.len()
        {
            bail!(
                "--loss-weights must have one weight per loss: got {} weights for {} losses ({})",
                w.len(),
                self.loss.len(),
                names.join(",")
            );
        }
        Ok(())
    }

    /// The library's losses with their weights, the first one first.
    pub fn offline_losses(&self) -> Vec<(OfflineLoss, f32)> {
        let weight = |i: usize| self.loss_weights.as_ref().map_or(1.0, |w| w[i]);
        self.loss
            .iter()
            .enumerate()
            .map(|(i, &loss)| (self.offline_loss(loss), weight(i)))
            .collect()
    }

    /// The library's form of one loss.
    pub fn offline_loss(&self, loss: DpoLoss) -> OfflineLoss {
        let eps = |default: f32| self.label_smoothing.unwrap_or(default);
        match loss {
            DpoLoss::Sigmoid => OfflineLoss::Dpo {
                label_smoothing: 0.0,
            },
            DpoLoss::Cdpo => OfflineLoss::Dpo {
                label_smoothing: eps(0.1),
            },
            DpoLoss::Robust => OfflineLoss::Robust { eps: eps(0.1) },
            DpoLoss::Ipo => OfflineLoss::Ipo,
            DpoLoss::Hinge => OfflineLoss::Hinge,
            DpoLoss::Simpo => OfflineLoss::Simpo {
                gamma: self.simpo_gamma,
            },
            DpoLoss::ExoPref => OfflineLoss::ExoPref { eps: eps(1e-3) },
            DpoLoss::ExoRw => OfflineLoss::ExoRw {
                beta_r: self.beta_r,
            },
            DpoLoss::DpoRw => OfflineLoss::DpoRw {
                beta_r: self.beta_r,
            },
            DpoLoss::SigmoidNorm => OfflineLoss::SigmoidNorm,
            DpoLoss::NcaPair => OfflineLoss::NcaPair,
            DpoLoss::BcoPair => OfflineLoss::BcoPair,
            DpoLoss::SppoHard => OfflineLoss::SppoHard,
            DpoLoss::ApoZero => OfflineLoss::ApoZero,
            DpoLoss::ApoDown => OfflineLoss::ApoDown,
            DpoLoss::Discopop => OfflineLoss::Discopop {
                tau: self.discopop_tau,
            },
            DpoLoss::Sft => OfflineLoss::Sft,
            DpoLoss::Aot => OfflineLoss::Aot {
                label_smoothing: eps(0.0),
            },
            DpoLoss::AotUnpaired => OfflineLoss::AotUnpaired {
                label_smoothing: eps(0.0),
            },
        }
    }

    /// The library's configuration, for epochs of `per_epoch` optimizer steps.
    pub fn config(&self, per_epoch: u64) -> DpoConfig {
        let plan = self.train.plan(per_epoch);
        let mut losses = self.offline_losses().into_iter();
        let (loss, loss_weight) = losses.next().expect("check_losses refuses an empty list");
        DpoConfig {
            loss,
            loss_weight,
            extra_losses: losses.collect(),
            beta: self.beta,
            f_divergence: match self.f_divergence_type {
                FDivergenceType::ReverseKl => FDivergence::ReverseKl,
                FDivergenceType::ForwardKl => FDivergence::ForwardKl,
                FDivergenceType::JsDivergence => FDivergence::JsDivergence,
                FDivergenceType::AlphaDivergence => FDivergence::AlphaDivergence {
                    coef: self.f_alpha_divergence_coef,
                },
            },
            epochs: plan.epochs,
            max_steps: plan.max_steps,
            batch_size: self.train.per_device_train_batch_size,
            grad_accum: self.train.gradient_accumulation_steps,
            optimizer: self.train.optimizer(DEFAULT_LR),
            schedule: self.train.schedule(plan.total),
            eval_every: self.train.eval_steps,
            truncation: None,
            ld_alpha: self.ld_alpha,
            use_weighting: self.use_weighting,
            seed: self.train.seed,
            disable_dropout: self.disable_dropout,
            sync_ref: self.sync.config(),
        }
    }
}

/// The training and held-out groups of the data file.
fn groups(args: &DpoArgs, enc: &Encoder) -> Result<(Vec<Group>, Vec<Group>)> {
    let (train, eval) = all_groups(args, enc)?;
    Ok((with_prompt(train, "training"), with_prompt(eval, "eval")))
}

/// The groups with prompt tokens: a response's first token needs something to follow (a tokenizer
/// without BOS gives an empty prompt no tokens; TRL's DPO leaves that token unscored instead).
fn with_prompt(groups: Vec<Group>, what: &str) -> Vec<Group> {
    let before = groups.len();
    let kept: Vec<Group> = groups
        .into_iter()
        .filter(|g| !g.prompt.is_empty())
        .collect();
    Dropped {
        count: before - kept.len(),
        unit: "groups",
        why: "no prompt tokens",
    }
    .announce(what);
    kept
}

fn all_groups(args: &DpoArgs, enc: &Encoder) -> Result<(Vec<Group>, Vec<Group>)> {
    let kind = args.data.record_kind()?;
    match kind {
        Kind::Preference => {
            let (train, eval) =
                read_split::<PreferenceRecord>(&args.data, |r| prompt_key(&r.prompt))?;
            let (train, dropped) = preference_groups(&train, enc)?;
            dropped.announce("training pairs");
            let (eval, dropped) = preference_groups(&eval, enc)?;
            dropped.announce("eval pairs");
            Ok((train, eval))
        }
        Kind::Kwise => {
            let (train, eval) = read_split::<KwiseRecord>(&args.data, |r| prompt_key(&r.prompt))?;
            let (train, dropped) = kwise_groups(&train, enc)?;
            dropped.announce("training groups");
            let (eval, dropped) = kwise_groups(&eval, enc)?;
            dropped.announce("eval groups");
            Ok((train, eval))
        }
        other => bail!(
            "rlhf dpo reads preference pairs or K-wise groups, and {} holds `{}` records",
            args.data.data()?.display(),
            kind_str(other)
        ),
    }
}

/// Trains and writes the model.
pub fn run(args: &DpoArgs, toml: &str) -> Result<()> {
    args.check_losses()?;
    let mut p = Prepared::new(&args.model, &args.data)?;
    let (policy, reference) = p.policy_and_reference(
        &args.lora,
        args.train.seed,
        args.ref_model.as_deref(),
        &args.frozen,
    )?;
    let enc = p.encoder(&args.data)?;
    let (train, eval) = groups(args, &enc)?;
    tracing::info!(
        "dpo: {} training groups, {} held out, loss {:?}, β {}",
        train.len(),
        eval.len(),
        args.offline_losses(),
        args.beta
    );
    let cfg = args.config(args.train.steps_per_epoch(train.len()));
    output::claim(&p.out, "dpo", toml)?;
    let cache = p.ref_cache(
        args.sync.reads_cache(args.ref_cache),
        args.ref_model.as_deref(),
    )?;
    let (policy, report) = train_offline(
        policy,
        &reference,
        &train,
        &eval,
        &cfg,
        &cache,
        &p.run_options(&args.train),
        &p.device,
    )?;
    p.save(&policy, &args.lora)?;
    tracing::info!(
        "dpo: {} steps ({} this run), reference batches computed {}, final loss {:.4}{}",
        report.steps,
        report.steps_this_run,
        report.reference_forward_batches,
        report.final_train_loss,
        if eval.is_empty() {
            String::new()
        } else {
            format!(
                "; held out: loss {:.4}, reward accuracy {:.3}, margin {:.4}",
                report.eval.loss, report.eval.reward_accuracy, report.eval.reward_margin
            )
        }
    );
    Ok(())
}
