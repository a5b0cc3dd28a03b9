//! One DPO step and one EXO step on the device of `RLHF_DEVICE` (wgpu + lavapipe in CI) match the
//! same step on `flex`, from the same weights and data: the loss before the step and the held-out
//! loss after it agree within 1e-4 (relative). With `RLHF_DEVICE` unset both sides are `flex`.

use rlhf_core::train::checkpoint::{module_from_bytes, module_to_bytes};
use rlhf_core::train::{OptimizerConfig, RunOptions};
use rlhf_dpo::{DpoConfig, Group, OfflineLoss, RefCache, train_offline};
use rlhf_models::{CausalLm, TransformerConfig};

fn config() -> TransformerConfig {
    let mut c = TransformerConfig::preset("tiny-llama-1m").unwrap();
    c.vocab_size = 32;
    c.hidden_size = 32;
    c.num_hidden_layers = 2;
    c.intermediate_size = 48;
    c
}

fn groups() -> Vec<Group> {
    (0..8u32)
        .map(|i| Group {
            prompt: (0..3 + i % 3).map(|j| (i * 3 + j) % 30 + 1).collect(),
            responses: vec![vec![i % 5 + 1, 7, 0], vec![i % 4 + 9, 0]],
            rewards: None,
        })
        .collect()
}

#[test]
fn one_dpo_and_one_exo_step_match_flex() {
    let flex = rlhf_core::parse_device("flex").unwrap().autodiff();
    let other = rlhf_core::device_from_env().unwrap().autodiff();
    flex.seed(11);
    let bytes = module_to_bytes(CausalLm::init(&config(), &flex).unwrap()).unwrap();
    let on = |d: &burn::tensor::Device| {
        module_from_bytes(CausalLm::init(&config(), d).unwrap(), &bytes).unwrap()
    };
    let data = groups();
    let quiet = RunOptions::quiet();
    for loss in [
        OfflineLoss::Dpo {
            label_smoothing: 0.0,
        },
        OfflineLoss::ExoPref { eps: 1e-3 },
    ] {
        let cfg = DpoConfig {
            loss,
            beta: 0.5,
            batch_size: 8,
            optimizer: OptimizerConfig {
                lr: 1e-2,
                ..OptimizerConfig::default()
            },
            ..DpoConfig::default()
        };
        let run = |d: &burn::tensor::Device| {
            let m = on(d);
            let reference = on(d);
            train_offline(
                m,
                &reference,
                &data,
                &data,
                &cfg,
                &RefCache::new(None),
                &quiet,
                d,
            )
            .unwrap()
            .1
        };
        let (a, b) = (run(&flex), run(&other));
        assert_eq!(a.steps, 1);
        for (x, y, what) in [
            (a.final_train_loss, b.final_train_loss, "loss of the step"),
            (a.eval.loss, b.eval.loss, "loss after the step"),
        ] {
            assert!(
                (x - y).abs() < 1e-4 * (1.0 + x.abs()),
                "{loss:?}: {what}: flex {x} vs {y}"
            );
        }
        // the step moved the policy: after it the held-out loss is no longer the initial one
        assert!((a.eval.loss - a.final_train_loss).abs() > 1e-4, "{loss:?}");
    }
}
