//! How hard is `arith-steps` for a tiny process reward model? Trains a PRM on step labels of
//! chains of a given difficulty and prints step-label accuracy next to the majority rate, and
//! each step's accuracy on its correct and its wrong labels.
//!
//! `cargo run -p rlhf-reward --example prm_study` with the environment setting the study:
//! `MAX_OPERAND` (30), `MIN_TERMS`/`MAX_TERMS` (3/5), `TRAIN` (1500), `EPOCHS` (3), `LR` (2e-3),
//! `WARMUP` (0: a constant rate; otherwise warm-up steps of a cosine decay to 0.1 × `LR`),
//! `LAYERS` (2), `HIDDEN` (64), `HEADS` (4), `ROTARY_PCT` (0.25), `STEP_ERROR` (0.25), `BATCH`
//! (16), `SEED` (0: the data, initialisation and shuffling seeds), and `SFT_EPOCHS` (0): when
//! positive, the backbone is first trained by SFT on the correct solutions of the training
//! prompts (the papers initialise their reward models from the SFT policy).
//!
//! The setting of `prm_on_arith_steps_learns_step_labels`: `MAX_OPERAND=5 MIN_TERMS=3
//! MAX_TERMS=3 TRAIN=3000 EPOCHS=16 WARMUP=100`.

use rlhf_core::train::{LrSchedule, OptimizerConfig, RunOptions};
use rlhf_data::Split;
use rlhf_data::tasks::{ArithSteps, Task};
use rlhf_models::{SftConfig, train_sft};
use rlhf_reward::{
    LabelledExample, RewardModel, RewardSettings, RmConfig, StepAggregate, evaluate_labelled,
    train_step_model,
};
use rlhf_testkit::pairs::{ArithData, tiny_backbone};

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
    let seed: u64 = env("SEED", 0);
    let data = ArithData::build_for(&task, n_train, 300, seed);
    let (mut config, _) = tiny_backbone(&device, data.tokenizer.vocab_size(), 2 + seed);
    config.num_hidden_layers = env("LAYERS", 2);
    config.hidden_size = env("HIDDEN", 64);
    config.intermediate_size = 4 * config.hidden_size;
    config.rotary_pct = env("ROTARY_PCT", config.rotary_pct);
    config.num_attention_heads = env("HEADS", config.num_attention_heads);
    config.num_key_value_heads = config.num_attention_heads;
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
        let quiet = RunOptions::quiet();
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
        schedule: match env("WARMUP", 0u64) {
            0 => LrSchedule::Constant,
            warmup => LrSchedule::Cosine {
                warmup,
                total: (n_train as usize).div_ceil(env("BATCH", 16)) as u64 * epochs as u64,
                min_ratio: 0.1,
            },
        },
        seed: 4 + seed,
        ..RmConfig::default()
    };
    let quiet = RunOptions::quiet();
    let (model, report) =
        train_step_model(prm.model, &data.train, &data.eval, &cfg, &quiet, &device).unwrap();
    per_step(&model, &data.eval, &device);
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

/// Accuracy on the positive and the negative labels of each step. A causal model's logit at step
/// `k` does not depend on what follows, so step `k`'s correct count is the difference between the
/// counts over the first `k` and the first `k - 1` steps of the same examples.
fn per_step(
    model: &rlhf_models::ScalarModel,
    eval: &[LabelledExample],
    device: &burn::tensor::Device,
) {
    let steps = eval.iter().map(|e| e.labels.len()).max().unwrap_or(0);
    let correct = |subset: &[&LabelledExample], k: usize| -> f64 {
        if k == 0 {
            return 0.0;
        }
        let cut: Vec<LabelledExample> = subset
            .iter()
            .map(|e| LabelledExample {
                prompt: e.prompt.clone(),
                segments: e.segments[..k].to_vec(),
                labels: e.labels[..k].to_vec(),
            })
            .collect();
        evaluate_labelled(model, &cut, 64, device)
            .expect("ids inside the vocabulary")
            .accuracy
            * (cut.len() * k) as f64
    };
    for k in 1..=steps {
        let mut line = format!("step {k}:");
        for class in [true, false] {
            let subset: Vec<&LabelledExample> = eval
                .iter()
                .filter(|e| e.labels.len() >= k && e.labels[k - 1] == class)
                .collect();
            let right = correct(&subset, k) - correct(&subset, k - 1);
            line += &format!(
                " {} {:.3} of {}",
                if class { "correct" } else { "wrong" },
                right / subset.len().max(1) as f64,
                subset.len()
            );
        }
        println!("{line}");
    }
}
