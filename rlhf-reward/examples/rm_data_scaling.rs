//! The first point of the scaling study: reward-model accuracy against the number of labelled
//! comparison pairs, on `tldr-synth`, with a tiny backbone on the CPU.
//!
//! `cargo run -p rlhf-reward --example rm_data_scaling [-- VOLUMES...]` (default 250 500 1000 2000)
//! prints one row per volume: held-out label accuracy and gold-order accuracy, mean ± spread over
//! two seeds, next to the labeller's own agreement with gold (the ceiling the labels allow).

use rlhf_core::train::{LrSchedule, OptimizerConfig, RunOptions};
use rlhf_models::ScalarModel;
use rlhf_reward::{RmConfig, train_reward_model};
use rlhf_testkit::pairs::{TldrPairs, tiny_backbone};

fn main() {
    let volumes: Vec<usize> = {
        let v: Vec<usize> = std::env::args()
            .skip(1)
            .filter_map(|a| a.parse().ok())
            .collect();
        if v.is_empty() {
            vec![250, 500, 1000, 2000]
        } else {
            v
        }
    };
    let device = rlhf_core::device_from_env().unwrap().autodiff();
    let max = *volumes.iter().max().unwrap();
    let data = TldrPairs::build(max as u64, 400, 0.73, 0);
    println!("| pairs | steps | label accuracy | gold-order accuracy | labeller ceiling |");
    println!("| ---: | ---: | ---: | ---: | ---: |");
    for &n in &volumes {
        let mut accs = Vec::new();
        let mut golds = Vec::new();
        let mut steps = 0;
        for seed in [1u64, 2] {
            let (_, backbone) = tiny_backbone(&device, data.tokenizer.vocab_size(), seed);
            let model = ScalarModel::from_backbone(backbone);
            let per_epoch = n.div_ceil(16) as u64;
            let cfg = RmConfig {
                epochs: 2,
                batch_size: 16,
                optimizer: OptimizerConfig {
                    lr: 2e-3,
                    ..OptimizerConfig::default()
                },
                schedule: LrSchedule::Linear {
                    warmup: 10,
                    total: 2 * per_epoch,
                },
                seed,
                ..RmConfig::default()
            };
            let quiet = RunOptions::quiet();
            let (_, report) =
                train_reward_model(model, &data.train[..n], &data.eval, &cfg, &quiet, &device)
                    .unwrap();
            steps = report.steps;
            accs.push(report.eval.accuracy);
            golds.push(report.eval.gold_accuracy.unwrap());
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let spread = |v: &[f64]| (v[0] - v[1]).abs() / 2.0;
        println!(
            "| {n} | {steps} | {:.3} ± {:.3} | {:.3} ± {:.3} | {:.3} |",
            mean(&accs),
            spread(&accs),
            mean(&golds),
            spread(&golds),
            data.labeller_agreement
        );
    }
}
