//! One DPO step on each model family added after GPT-NeoX, Llama and Qwen2 (GPT-NeoX with
//! sequential residual, Llama with llama3/linear/dynamic RoPE, Qwen3, Mistral with a sliding
//! window, Phi-3 with LongRoPE, GPT-2), each from its committed `transformers` checkpoint: the
//! policy starts as the reference, so the first step's loss is ln 2, and the step raises the
//! margin of the pairs it trained on. The device comes from `RLHF_DEVICE` (default `flex`).

use std::path::Path;

use rlhf_core::train::{OptimizerConfig, RunOptions};
use rlhf_dpo::{DpoConfig, Group, OfflineLoss, RefCache, train_offline};
use rlhf_models::load_pretrained;

const FAMILIES: [&str; 8] = [
    "tiny-neox-sequential",
    "tiny-llama3",
    "tiny-llama-linear",
    "tiny-llama-dynamic",
    "tiny-qwen3",
    "tiny-mistral",
    "tiny-phi3",
    "tiny-gpt2",
];

fn groups() -> Vec<Group> {
    (0..6u32)
        .map(|i| Group {
            prompt: (0..3 + i % 3).map(|j| (i * 5 + j * 3) % 60 + 2).collect(),
            responses: vec![vec![i % 5 + 2, 7, 0], vec![i % 4 + 20, 0]],
            rewards: None,
        })
        .collect()
}

#[test]
fn one_dpo_step_on_every_new_family() {
    let device = rlhf_core::device_from_env().unwrap().autodiff();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rlhf-models/tests/fixtures/hf");
    let data = groups();
    let cfg = DpoConfig {
        loss: OfflineLoss::Dpo {
            label_smoothing: 0.0,
        },
        beta: 0.5,
        batch_size: 8,
        optimizer: OptimizerConfig {
            lr: 1e-3,
            ..OptimizerConfig::default()
        },
        ..DpoConfig::default()
    };
    let quiet = RunOptions::quiet();
    for name in FAMILIES {
        let (_, policy) = load_pretrained(&fixtures.join(name), &device).unwrap();
        let reference = policy.clone();
        let (_, report) = train_offline(
            policy,
            &reference,
            &data,
            &data,
            &cfg,
            &RefCache::new(None),
            &quiet,
            &device,
        )
        .unwrap();
        assert_eq!(report.steps, 1, "{name}");
        // policy = reference: every margin is 0 and the loss −log σ(0)
        let ln2 = std::f64::consts::LN_2;
        assert!(
            (report.final_train_loss - ln2).abs() < 1e-5,
            "{name}: first loss {}",
            report.final_train_loss
        );
        assert!(
            report.eval.loss < ln2 - 1e-4,
            "{name}: loss after the step {}",
            report.eval.loss
        );
    }
}
