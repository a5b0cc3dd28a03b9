//! `rlhf`: see the crate documentation and `rlhf --help`.

use std::process::ExitCode;

use anyhow::Result;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use rlhf_cli::commands::check::CheckArgs;
use rlhf_cli::commands::distill::DistillArgs;
use rlhf_cli::commands::dpo::DpoArgs;
use rlhf_cli::commands::eval::EvalArgs;
use rlhf_cli::commands::generate::GenerateArgs;
use rlhf_cli::commands::kto::KtoArgs;
use rlhf_cli::commands::online_dpo::OnlineDpoArgs;
use rlhf_cli::commands::onpolicy::{Method, OnPolicyArgs};
use rlhf_cli::commands::plot::PlotArgs;
use rlhf_cli::commands::rm::RmArgs;
use rlhf_cli::commands::sft::SftArgs;
use rlhf_cli::commands::{
    check, distill, dpo, eval, generate, kto, online_dpo, onpolicy, plot, rm, sft,
};
use rlhf_cli::options::{ConfigArgs, normalise_args, resolve, to_toml};

/// RLHF your own model: a Hugging Face checkpoint and your data in, a Hugging Face checkpoint
/// out. Flags take TRL's names (`--learning_rate` and `--learning-rate` both work).
#[derive(Parser)]
#[command(name = "rlhf", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Only warnings and errors on stderr.
    #[arg(long, global = true)]
    quiet: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Supervised fine-tuning on demonstrations (prompt/completion, messages or text records).
    Sft {
        #[command(flatten)]
        args: SftArgs,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// A reward model: Bradley–Terry on pairs, Plackett–Luce on K-wise rankings, a process RM on
    /// step labels, an outcome RM on labelled responses.
    Rm {
        #[command(flatten)]
        args: RmArgs,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Offline preference optimisation: DPO and its variants, SimPO, EXO.
    Dpo {
        #[command(flatten)]
        args: DpoArgs,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// KTO on responses labelled desirable or undesirable one at a time (prompt, completion,
    /// label), or on preference pairs unpaired.
    Kto {
        #[command(flatten)]
        args: KtoArgs,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Online DPO: sample from the policy, score with `--reward`, pair best against worst, a DPO
    /// step; round after round.
    #[command(name = "online-dpo")]
    OnlineDpo {
        #[command(flatten)]
        args: OnlineDpoArgs,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// On-policy distillation: the student samples, and learns a `--teacher`'s next-token
    /// distributions on its samples (GKD's generalised JSD).
    Distill {
        #[command(flatten)]
        args: DistillArgs,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// PPO with the TL;DR reproduction's details: GAE with a critic, KL in the reward.
    Ppo {
        #[command(flatten)]
        args: OnPolicyArgs,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// GRPO: group-normalised advantages, k3 KL in the loss (β 0.04), no critic.
    Grpo {
        #[command(flatten)]
        args: OnPolicyArgs,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// RLOO: leave-one-out baselines, KL in the reward, no critic.
    Rloo {
        #[command(flatten)]
        args: OnPolicyArgs,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// REINFORCE++: whitened discounted returns, KL in the reward, no critic.
    #[command(name = "reinforce-pp")]
    ReinforcePp {
        #[command(flatten)]
        args: OnPolicyArgs,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// DAPO: clip-higher (ε 0.2/0.28), token-mean loss, dynamic sampling, overlong punishment,
    /// no KL, group advantages over 16 samples.
    Dapo {
        #[command(flatten)]
        args: OnPolicyArgs,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// GSPO: the clipped sequence-level ratio (ε 3e-4/4e-4), per-response mean, no KL.
    Gspo {
        #[command(flatten)]
        args: OnPolicyArgs,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// CISPO: clipped, detached importance weights (cap 5) on a REINFORCE-style loss, no KL.
    Cispo {
        #[command(flatten)]
        args: OnPolicyArgs,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Sample continuations of prompts.
    Generate(GenerateArgs),
    /// Sample responses to a prompt file and measure them: reward, KL to a reference, length.
    Eval(EvalArgs),
    /// Read a data file as the trainers would; report bad records with file, line and field.
    Check(CheckArgs),
    /// SVG learning curves of a run's metrics.
    Plot(PlotArgs),
    /// Serve this machine's devices to trainers elsewhere (`--device ws://HOST:PORT`).
    #[cfg(feature = "remote")]
    Serve(rlhf_cli::commands::serve::ServeArgs),
}

/// Resolves a training command's options and either prints them or runs it.
fn train<T>(
    name: &str,
    parsed: &T,
    config: &ConfigArgs,
    matches: &clap::ArgMatches,
    complete: impl FnOnce(T) -> T,
    run: impl FnOnce(&T, &str) -> Result<()>,
) -> Result<ExitCode>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let sub = matches
        .subcommand_matches(name)
        .expect("the parsed subcommand has matches");
    let resolved = complete(resolve(parsed, sub, config.config.as_deref())?);
    let toml = to_toml(&resolved)?;
    if config.print_config {
        print!("{toml}");
        return Ok(ExitCode::SUCCESS);
    }
    run(&resolved, &toml)?;
    // what the operating system measured, beside the estimate logged before the first step
    if let Some(peak) = rlhf_core::train::memory::peak_resident_bytes() {
        tracing::info!(
            "memory: peak resident {:.0} MiB",
            peak as f64 / (1u64 << 20) as f64
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn dispatch(cli: &Cli, matches: &clap::ArgMatches) -> Result<ExitCode> {
    let on_policy = |method: Method, args: &OnPolicyArgs, config: &ConfigArgs| {
        train(
            method.name(),
            args,
            config,
            matches,
            |a: OnPolicyArgs| a.completed(method),
            |a, t| onpolicy::run(method, a, t),
        )
    };
    match &cli.command {
        Command::Sft { args, config } => {
            train("sft", args, config, matches, SftArgs::completed, sft::run)
        }
        Command::Rm { args, config } => {
            train("rm", args, config, matches, RmArgs::completed, rm::run)
        }
        Command::Dpo { args, config } => {
            train("dpo", args, config, matches, DpoArgs::completed, dpo::run)
        }
        Command::Kto { args, config } => {
            train("kto", args, config, matches, KtoArgs::completed, kto::run)
        }
        Command::OnlineDpo { args, config } => train(
            "online-dpo",
            args,
            config,
            matches,
            OnlineDpoArgs::completed,
            online_dpo::run,
        ),
        Command::Distill { args, config } => train(
            "distill",
            args,
            config,
            matches,
            DistillArgs::completed,
            distill::run,
        ),
        Command::Ppo { args, config } => on_policy(Method::Ppo, args, config),
        Command::Grpo { args, config } => on_policy(Method::Grpo, args, config),
        Command::Rloo { args, config } => on_policy(Method::Rloo, args, config),
        Command::ReinforcePp { args, config } => on_policy(Method::ReinforcePp, args, config),
        Command::Dapo { args, config } => on_policy(Method::Dapo, args, config),
        Command::Gspo { args, config } => on_policy(Method::Gspo, args, config),
        Command::Cispo { args, config } => on_policy(Method::Cispo, args, config),
        Command::Generate(args) => generate::run(args).map(|()| ExitCode::SUCCESS),
        Command::Eval(args) => eval::run(args).map(|()| ExitCode::SUCCESS),
        Command::Check(args) => check::run(args),
        Command::Plot(args) => plot::run(args).map(|()| ExitCode::SUCCESS),
        #[cfg(feature = "remote")]
        Command::Serve(args) => rlhf_cli::commands::serve::run(args).map(|()| ExitCode::SUCCESS),
    }
}

fn main() -> ExitCode {
    rlhf_core::train::tune_allocator();
    let matches = Cli::command().get_matches_from(normalise_args(std::env::args_os()));
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    rlhf_cli::init_logging(if cli.quiet { "warn" } else { "info" });
    match dispatch(&cli, &matches) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rlhf: {e:#}");
            ExitCode::from(1)
        }
    }
}
