//! Regression tests of the correctness review: PPO trains with a tokenizer whose PAD lies outside
//! the model's vocabulary (as every checkpoint without a pad token gets one: GPT-2, Llama 3,
//! Pythia); a KL term in the loss with the k1 estimator (zero expected gradient) and an adaptive
//! KL controller that divides by zero are refused.

use std::path::PathBuf;

use rlhf_core::train::{OptimizerConfig, RunOptions};
use rlhf_core::{KlController, KlEstimator, Result, Scorer};
use rlhf_data::Tokenizer;
use rlhf_models::ScalarModel;
use rlhf_ppo::{PolicyAndValue, PpoConfig, PpoInputs, train_ppo};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../rlhf-models/tests/fixtures/hf/tiny-neox")
}

/// Scores a response by its length in characters.
struct Length;

impl Scorer for Length {
    fn score(&self, _prompts: &[&str], responses: &[&str]) -> Result<Vec<f32>> {
        Ok(responses.iter().map(|r| r.len() as f32 / 10.0).collect())
    }
}

/// The committed tiny GPT-NeoX checkpoint has 64 embedding rows and a tokenizer without a pad
/// token, so `[PAD]` is added as id 64: one iteration of PPO (GAE with a critic) left-pads its
/// queries with it and must train, with finite metrics, on every backend.
#[test]
fn ppo_trains_with_a_pad_id_outside_the_vocabulary() {
    let device = rlhf_core::device_from_env().unwrap().autodiff();
    let (config, policy) = rlhf_models::load_pretrained(&fixture(), &device).unwrap();
    let tok = Tokenizer::from_file(&fixture().join("tokenizer.json"), None).unwrap();
    let vocab = config.vocab_size;
    assert_eq!(
        tok.pad_id() as usize,
        vocab,
        "the fixture's PAD lies past the embedding"
    );
    let value = rlhf_core::train::seeded(&device, 3, || ScalarModel::from_backbone(policy.clone()));
    let prompts: Vec<String> = ["the", "a b c d e", "the cat", "x y z"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let cfg = PpoConfig {
        iterations: 1,
        prompts_per_batch: 4,
        query_length: 8,
        response_length: 4,
        ppo_epochs: 1,
        optimizer: OptimizerConfig {
            lr: 1e-3,
            ..OptimizerConfig::default()
        },
        ..PpoConfig::default()
    };
    let reference = policy.clone();
    let inputs = PpoInputs {
        reference: &reference,
        scorer: &Length,
        tokenizer: &tok,
        prompts: &prompts,
        demonstrations: &[],
        eval: None,
        eval_every: 0,
    };
    let quiet = RunOptions {
        progress: false,
        ..RunOptions::default()
    };
    let (_, report) = train_ppo(
        PolicyAndValue::new(policy, Some(value)),
        &inputs,
        &cfg,
        &quiet,
        &device,
    )
    .unwrap();
    assert_eq!(report.iterations, 1);
    assert!(
        report.last.iter().all(|(_, v)| v.is_finite()),
        "{:?}",
        report.last
    );
}

/// `β·mean(logπ − logπ_ref)` at samples of π has zero expected gradient: with the KL in the
/// loss, the k1 estimator would silently turn the regulariser off.
#[test]
fn kl_in_the_loss_with_k1_is_refused() {
    let k1_in_loss = PpoConfig {
        kl_in_reward: false,
        kl_estimator: KlEstimator::K1,
        ..PpoConfig::default()
    };
    let e = k1_in_loss.validate().unwrap_err().to_string();
    assert!(e.contains("k1"), "{e}");
    for estimator in [KlEstimator::K2, KlEstimator::K3] {
        PpoConfig {
            kl_estimator: estimator,
            ..k1_in_loss.clone()
        }
        .validate()
        .unwrap();
    }
}

/// The adaptive controller divides by its target and its horizon, and a negative β rewards
/// moving away from the reference.
#[test]
fn kl_controllers_that_divide_by_zero_are_refused() {
    let adaptive = |value, target, horizon| PpoConfig {
        kl: KlController::Adaptive {
            value,
            target,
            horizon,
        },
        ..PpoConfig::default()
    };
    assert!(adaptive(0.1, 6.0, 10_000.0).validate().is_ok());
    for bad in [
        adaptive(0.1, 0.0, 10_000.0),
        adaptive(0.1, 6.0, 0.0),
        adaptive(0.1, -1.0, 10_000.0),
        adaptive(-0.1, 6.0, 10_000.0),
        PpoConfig {
            kl: KlController::Fixed { value: -0.05 },
            ..PpoConfig::default()
        },
        PpoConfig {
            kl: KlController::Fixed { value: f64::NAN },
            ..PpoConfig::default()
        },
    ] {
        assert!(bad.validate().is_err(), "{:?}", bad.kl);
    }
}
