//! Dropout is off in the offline trainer's policy unless asked (TRL's `disable_dropout`): the
//! reference's log-probs are read without it, so a policy equal to its reference starts at DPO's
//! loss `ln 2`; with dropout left on, the first loss is not `ln 2`.
//!
//! The test takes `rlhf_testkit::serial()` first: with dropout on, training draws masks from the
//! generator that other tests seed to initialise their models.

use rlhf_core::train::metrics::{names, read_metrics};
use rlhf_core::train::{OptimizerConfig, RunOptions};
use rlhf_dpo::{DpoConfig, Group, RefCache, train_offline};
use rlhf_models::CausalLm;

fn with_dropout(device: &burn::tensor::Device, dropout: f64) -> CausalLm {
    let c = rlhf_testkit::counting::shape(32, dropout);
    rlhf_core::train::seeded(device, 3, || CausalLm::init(&c, device).unwrap())
}

fn pairs() -> Vec<Group> {
    (0..8u32)
        .map(|i| Group {
            prompt: vec![i % 7 + 1, i % 5 + 11, 3],
            responses: vec![vec![i % 9 + 2, 21, 22, 0], vec![(i + 4) % 9 + 2, 0]],
            rewards: None,
        })
        .collect()
}

#[test]
fn dropout_is_off_unless_asked_so_the_first_loss_is_ln_2() {
    let _serial = rlhf_testkit::serial();
    let device = rlhf_core::device_from_env().unwrap().autodiff();
    let policy = with_dropout(&device, 0.3);
    let first_loss = |disable_dropout: bool| {
        let dir = tempfile::tempdir().unwrap();
        let cfg = DpoConfig {
            batch_size: 8,
            optimizer: OptimizerConfig {
                lr: 1e-3,
                ..OptimizerConfig::default()
            },
            disable_dropout,
            ..DpoConfig::default()
        };
        let (trained, _) = train_offline(
            policy.clone(),
            &policy,
            &pairs(),
            &[],
            &cfg,
            &RefCache::new(None),
            &RunOptions::quiet_in(dir.path()),
            &device,
        )
        .unwrap();
        let first = read_metrics(&dir.path().join("metrics.jsonl")).unwrap()[0][names::TRAIN_LOSS]
            .as_f64()
            .unwrap();
        (first, trained.dropout())
    };
    assert!(DpoConfig::default().disable_dropout);
    let (off, dropout) = first_loss(true);
    assert!((off - std::f64::consts::LN_2).abs() < 1e-5, "{off}");
    assert_eq!(dropout, 0.0);
    let (on, dropout) = first_loss(false);
    assert!((on - std::f64::consts::LN_2).abs() > 1e-4, "{on}");
    assert_eq!(dropout, 0.3);
}
