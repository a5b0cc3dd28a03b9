//! How hard is `arith-steps` for a tiny process reward model? Trains a PRM on step labels of
//! chains of a given difficulty and prints step-label accuracy next to the majority rate.
//!
//! `cargo run -p rlhf-reward --example prm_study` with the environment setting the study:
//! `MAX_OPERAND` (30), `MIN_TERMS`/`MAX_TERMS` (3/5), `TRAIN` (1500), `EPOCHS` (3), `LR` (2e-3),
//! `LAYERS` (2), `HIDDEN` (64), `STEP_ERROR` (0.25), `BATCH` (16), and `SFT_EPOCHS` (0): when
//! positive, the backbone is first trained by SFT on the correct solutions of the training
//! prompts (the papers initialise their reward models from the SFT policy).

mod common;

use common::{ArithData, tiny_backbone};
use rlhf_core::train::{OptimizerConfig, RunOptions};
use rlhf_data::Split;
use rlhf_data::tasks::{ArithSteps, Task};
use rlhf_models::{SftConfig, train_sft};
use rlhf_reward::{RewardModel, RewardSettings, RmConfig, StepAggregate, train_step_model};

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let device = rlhf_core::device_from_env().unwrap().autodiff();
    let task = ArithSteps {
        max_operand: env("MAX_OPERAND", 30),
        min_terms: env("MIN_TERMS", 3),
        max_terms: env("MAX_TERMS", 5),
        step_error: env("STEP_ERROR", 0.25),
        ..ArithSteps::default()
    };
    let n_train = env("TRAIN", 1500);
    let data = ArithData::build_for(&task, n_train, 300, 0);
    let (mut config, _) = tiny_backbone(&device, data.tokenizer.vocab_size(), 2);
    config.num_hidden_layers = env("LAYERS", 2);
    config.hidden_size = env("HIDDEN", 64);
    config.intermediate_size = 4 * config.hidden_size;
    let mut backbone = rlhf_models::CausalLm::init(&config, &device).unwrap();
    let start = std::time::Instant::now();
    let sft_epochs: usize = env("SFT_EPOCHS", 0);
    if sft_epochs > 0 {
        let tok = &data.tokenizer;
        let demos: Vec<_> = (0..n_train)
            .map(|i| {
                let p = task.prompt(Split::Train, i);
                let mut r = tok.encode(&task.reference(&p)).unwrap();
                r.push(tok.eos_id());
                (tok.encode(&p).unwrap(), r)
            })
            .collect();
        let sft = SftConfig {
            epochs: sft_epochs,
            optimizer: OptimizerConfig {
                lr: env("SFT_LR", 3e-3),
                ..OptimizerConfig::default()
            },
            ..SftConfig::default()
        };
        let quiet = RunOptions {
            progress: false,
            ..RunOptions::default()
        };
        let (m, report) = train_sft(backbone, &demos, &[], &sft, &quiet, &device).unwrap();
        println!(
            "SFT on correct chains: {} steps, train loss {:.3}, {:.0} s",
            report.steps,
            report.final_train_loss,
            start.elapsed().as_secs_f64()
        );
        backbone = m;
    }
    let prm = RewardModel::from_backbone(
        backbone,
        config,
        RewardSettings::process(";", StepAggregate::Min),
    );
    let epochs: usize = env("EPOCHS", 3);
    let cfg = RmConfig {
        epochs,
        batch_size: env("BATCH", 16),
        optimizer: OptimizerConfig {
            lr: env("LR", 2e-3),
            ..OptimizerConfig::default()
        },
        seed: 4,
        ..RmConfig::default()
    };
    let quiet = RunOptions {
        progress: false,
        ..RunOptions::default()
    };
    let (_, report) =
        train_step_model(prm.model, &data.train, &data.eval, &cfg, &quiet, &device).unwrap();
    println!(
        "max_operand {} terms {}-{}: {} steps in {:.0} s, train loss {:.3}; step-label accuracy {:.3} (majority {:.3}), balanced {:.3}",
        task.max_operand,
        task.min_terms,
        task.max_terms,
        report.steps,
        start.elapsed().as_secs_f64(),
        report.final_train_loss,
        report.eval.accuracy,
        data.majority,
        report.eval.gold_accuracy.unwrap_or(f64::NAN)
    );
}
