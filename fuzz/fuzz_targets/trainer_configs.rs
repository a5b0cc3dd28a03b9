//! The trainers' configurations (PPO, DPO/EXO, reward model) as JSON: parsed and validated, or
//! refused; a configuration that validates trains one step of a tiny model with a finite loss.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rlhf_core::train::RunOptions;
use rlhf_models::{CausalLm, ScalarModel, TransformerConfig};

fn tiny(device: &burn::tensor::Device) -> CausalLm {
    let mut c = TransformerConfig::preset("tiny-1m").expect("preset");
    c.vocab_size = 16;
    c.hidden_size = 16;
    c.num_hidden_layers = 1;
    c.num_attention_heads = 2;
    c.num_key_value_heads = 2;
    c.intermediate_size = 16;
    CausalLm::init(&c, device).expect("tiny model")
}

fn quiet() -> RunOptions {
    RunOptions {
        progress: false,
        ..RunOptions::default()
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, json)) = data.split_first() else {
        return;
    };
    let device = rlhf_core::parse_device("flex").expect("flex").autodiff();
    match which % 2 {
        0 => {
            let Ok(mut cfg) = serde_json::from_slice::<rlhf_dpo::DpoConfig>(json) else {
                return;
            };
            if cfg.validate().is_err() {
                return;
            }
            // one step, whatever the epochs and batch sizes asked for
            (cfg.epochs, cfg.batch_size, cfg.grad_accum, cfg.truncation) = (1, 2, 1, None);
            let groups: Vec<rlhf_dpo::Group> = (0..2u32)
                .map(|i| rlhf_dpo::Group {
                    prompt: vec![i + 1, 2],
                    responses: vec![vec![3, 4, 0], vec![5, 0]],
                    rewards: Some(vec![1.0, 0.0]),
                })
                .collect();
            let reference = tiny(&device);
            let (_, report) = rlhf_dpo::train_offline(
                reference.clone(),
                &reference,
                &groups,
                &[],
                &cfg,
                &rlhf_dpo::RefCache::new(None),
                &quiet(),
                &device,
            )
            .expect("a configuration that validates trains");
            assert!(report.final_train_loss.is_finite(), "{cfg:?}");
        }
        _ => {
            let Ok(mut cfg) = serde_json::from_slice::<rlhf_reward::RmConfig>(json) else {
                return;
            };
            if cfg.validate().is_err() {
                return;
            }
            (cfg.epochs, cfg.batch_size, cfg.grad_accum, cfg.truncation) = (1, 2, 1, None);
            let examples: Vec<rlhf_reward::RankedExample> = (0..2u32)
                .map(|i| rlhf_reward::RankedExample {
                    prompt: vec![i + 1, 2],
                    responses: vec![vec![3, 4, 0], vec![5, 0]],
                    margin: Some(0.5),
                    gold: None,
                })
                .collect();
            let model = ScalarModel::from_backbone(tiny(&device));
            let (_, report) = rlhf_reward::train_reward_model(
                model, &examples, &[], &cfg, &quiet(), &device,
            )
            .expect("a configuration that validates trains");
            assert!(report.final_train_loss.is_finite(), "{cfg:?}");
        }
    }
});
