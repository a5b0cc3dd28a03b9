//! Regression test of the correctness review: the centering coefficient is not silently ignored
//! for K-wise (Plackett–Luce) reward models.

use rlhf_core::train::{OptimizerConfig, RunOptions};
use rlhf_models::{CausalLm, ScalarModel, TransformerConfig};
use rlhf_reward::{RankedExample, RmConfig, train_reward_model};

fn model(device: &burn::tensor::Device) -> ScalarModel {
    let mut c = TransformerConfig::preset("tiny-1m").unwrap();
    c.vocab_size = 32;
    c.hidden_size = 32;
    c.num_hidden_layers = 1;
    c.num_attention_heads = 2;
    c.num_key_value_heads = 2;
    c.intermediate_size = 32;
    rlhf_core::train::seeded(device, 5, || {
        ScalarModel::from_backbone(CausalLm::init(&c, device).unwrap())
    })
}

fn ranked(k: usize) -> Vec<RankedExample> {
    (0..16u32)
        .map(|i| RankedExample {
            prompt: vec![i % 7 + 1, 12],
            responses: (0..k as u32)
                .map(|j| vec![(i + j) % 9 + 2, 20 + j, 0])
                .collect(),
            margin: None,
            gold: None,
        })
        .collect()
}

/// With K = 3 the centering term `η·mean[(Σ_k r_k)²]` enters the loss like it does for pairs:
/// the training loss with η > 0 is not the loss without it.
#[test]
fn centering_applies_to_kwise_reward_models() {
    let device = rlhf_core::device_from_env().unwrap().autodiff();
    let quiet = RunOptions {
        progress: false,
        ..RunOptions::default()
    };
    let loss = |center_eta: f32| {
        let cfg = RmConfig {
            center_eta,
            batch_size: 16,
            // the logged metrics are those of the loss before the step's update
            optimizer: OptimizerConfig {
                lr: 1e-3,
                ..OptimizerConfig::default()
            },
            ..RmConfig::default()
        };
        train_reward_model(model(&device), &ranked(3), &[], &cfg, &quiet, &device)
            .unwrap()
            .1
            .final_train_loss
    };
    let (plain, centred) = (loss(0.0), loss(10.0));
    assert!(
        centred > plain + 1e-6,
        "η = 10 left the K = 3 loss at {centred} (η = 0: {plain})"
    );
}
