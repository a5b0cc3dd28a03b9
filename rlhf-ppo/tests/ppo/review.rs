//! Tests from the correctness review. Regressions: PPO trains with a tokenizer whose PAD lies
//! outside the model's vocabulary (as every checkpoint without a pad token gets one: GPT-2,
//! Llama 3, Pythia); a KL term in the loss with the k1 estimator (zero expected gradient) and an
//! adaptive KL controller that divides by zero are refused. Invariance: every configuration that
//! validates trains an iteration without a non-finite value.

use std::path::PathBuf;

use proptest::prelude::*;
use rlhf_core::train::{OptimizerConfig, RunOptions};
use rlhf_core::{
    Error, KlController, KlEstimator, LossAggregation, PolicyObjective, Result, Scorer,
};
use rlhf_data::Tokenizer;
use rlhf_models::{CausalLm, ScalarModel};
use rlhf_ppo::{AdvantageEstimator, PolicyAndValue, PpoConfig, PpoInputs, train_ppo};

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
        eval_first: false,
    };
    let quiet = RunOptions::quiet();
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
/// loss, the k1 estimator would silently turn the regulariser off, unless the token-level bias
/// correction weighs it by the importance ratio.
#[test]
fn kl_in_the_loss_with_k1_is_refused() {
    let k1_in_loss = PpoConfig {
        kl_in_reward: false,
        kl_estimator: KlEstimator::K1,
        ..PpoConfig::default()
    };
    let e = k1_in_loss.validate().unwrap_err().to_string();
    assert!(e.contains("k1"), "{e}");
    // weighted by the token ratio its gradient is the KL's; by GSPO's sequence ratio it is not
    let corrected = PpoConfig {
        kl_bias_correction: true,
        ..k1_in_loss.clone()
    };
    corrected.validate().unwrap();
    let sequence = PpoConfig {
        policy_objective: rlhf_core::PolicyObjective::Gspo,
        advantage: AdvantageEstimator::Grpo,
        samples_per_prompt: 2,
        ..corrected
    };
    let e = sequence.validate().unwrap_err().to_string();
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

/// The fixture's policy, a critic on its backbone, and its tokenizer (PAD = vocabulary size).
fn fixture_models(device: &burn::tensor::Device) -> (CausalLm, ScalarModel, Tokenizer) {
    let (_, policy) = rlhf_models::load_pretrained(&fixture(), device).unwrap();
    let value = rlhf_core::train::seeded(device, 3, || ScalarModel::from_backbone(policy.clone()));
    let tok = Tokenizer::from_file(&fixture().join("tokenizer.json"), None).unwrap();
    (policy, value, tok)
}

const ESTIMATORS: [AdvantageEstimator; 5] = [
    AdvantageEstimator::Gae,
    AdvantageEstimator::Rloo,
    AdvantageEstimator::Grpo,
    AdvantageEstimator::DrGrpo,
    AdvantageEstimator::ReinforcePp,
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Any configuration the trainer accepts runs an iteration with finite metrics (on the
    /// fixture whose PAD lies past the vocabulary); any it refuses, it refuses as a configuration
    /// error. Each field is drawn from its valid range most of the time and out of it sometimes,
    /// so that both branches are taken.
    #[test]
    fn every_configuration_that_validates_trains_a_finite_iteration(
        estimator in 0usize..5,
        (samples, prompts, minibatches) in (prop_oneof![9 => 1usize..4, 1 => Just(0)], prop_oneof![9 => 1usize..4, 1 => Just(0)], prop_oneof![9 => Just(1usize), 1 => 0usize..3]),
        temperature in prop_oneof![9 => 0.3f32..2.0, 1 => prop_oneof![Just(0.0f32), Just(-1.0)]],
        (beta, adaptive) in (prop_oneof![9 => 0.0f64..0.5, 1 => -0.1f64..0.0], any::<bool>()),
        (target, horizon) in (prop_oneof![9 => 1.0f64..10.0, 1 => -1.0f64..=0.0], prop_oneof![9 => 1.0f64..1e4, 1 => Just(0.0)]),
        (estimator_kl, kl_in_reward) in (0usize..3, any::<bool>()),
        (gamma, lam) in (prop_oneof![9 => 0.0f32..=1.0, 1 => 1.0f32..1.5], prop_oneof![9 => 0.0f32..=1.0, 1 => -0.5f32..0.0]),
        (whiten_rewards, whiten_advantages) in (any::<bool>(), any::<bool>()),
        (clip_eps, value_clip, vf_coef) in (prop_oneof![9 => 0.05f32..0.5, 1 => -0.1f32..=0.0], 0.05f32..1.0, 0.0f32..2.0),
        missing_eos_penalty in prop::option::of(-2.0f32..0.0),
        (score_baseline, bucket) in (any::<bool>(), prop::option::of(prop_oneof![9 => 1usize..3, 1 => Just(0)])),
        ptx_coef in prop_oneof![4 => Just(0.0f32), 4 => 0.0f32..1.0, 1 => -0.5f32..0.0],
        ppo_epochs in prop_oneof![9 => 1usize..3, 1 => Just(0)],
        (objective, aggregation, clip_high) in (0usize..5, 0usize..5, prop::option::of(prop_oneof![9 => 0.05f32..5.0, 1 => -0.1f32..=0.0])),
        normalize in any::<bool>(),
        reward_clip in prop::option::of((-2.0f32..1.0, -1.0f32..2.0)),
        (tau_pos, tau_neg, off_policy) in (prop_oneof![9 => 0.3f32..3.0, 1 => -1.0f32..=0.0], 0.3f32..3.0, prop::option::of(prop_oneof![9 => 0.0f32..1.0, 1 => -1.0f32..0.0])),
        (dynamic, overlong, is_cap) in (prop::option::of(0usize..3), prop::option::of(0usize..5), prop::option::of(prop_oneof![9 => 0.5f32..3.0, 1 => -1.0f32..=0.0])),
    ) {
        let device = rlhf_core::device_from_env().unwrap().autodiff();
        let (policy, value, tok) = fixture_models(&device);
        let kl = if adaptive {
            KlController::Adaptive { value: beta, target, horizon }
        } else {
            KlController::Fixed { value: beta }
        };
        let cfg = PpoConfig {
            iterations: 1,
            advantage: ESTIMATORS[estimator],
            samples_per_prompt: samples,
            prompts_per_batch: prompts,
            num_minibatches: minibatches,
            query_length: 6,
            response_length: 3,
            temperature,
            kl,
            kl_estimator: [KlEstimator::K1, KlEstimator::K2, KlEstimator::K3][estimator_kl],
            kl_in_reward,
            gamma,
            lam,
            whiten_rewards,
            whiten_advantages,
            clip_eps,
            value_clip,
            vf_coef,
            missing_eos_penalty,
            score_baseline,
            length_bucket_width: bucket,
            ptx_coef,
            ptx_batch_size: 2,
            ppo_epochs,
            policy_objective: [PolicyObjective::Ppo, PolicyObjective::Gspo, PolicyObjective::Cispo, PolicyObjective::Sapo, PolicyObjective::Vespo][objective],
            sapo_temperatures: rlhf_core::SapoTemperatures { positive: tau_pos, negative: tau_neg },
            off_policy_mask_threshold: off_policy,
            normalize_advantages: normalize,
            reward_clip_range: reward_clip,
            loss_aggregation: [LossAggregation::Grpo, LossAggregation::Dapo, LossAggregation::Bnpo, LossAggregation::DrGrpo, LossAggregation::Luspo][aggregation],
            clip_eps_high: clip_high,
            dynamic_sampling: dynamic,
            overlong_buffer: overlong,
            rollout_is_cap: is_cap,
            optimizer: OptimizerConfig { lr: 1e-3, ..OptimizerConfig::default() },
            ..PpoConfig::default()
        };
        let prompts: Vec<String> = ["the", "a b c", "the cat sat", "x"].iter().map(|s| s.to_string()).collect();
        let demonstrations = vec![(vec![5u32, 6], vec![7u32, 8, 0])];
        let reference = policy.clone();
        let inputs = PpoInputs {
            reference: &reference,
            scorer: &Length,
            tokenizer: &tok,
            prompts: &prompts,
            demonstrations: &demonstrations,
            eval: None,
            eval_every: 0,
            eval_first: false,
        };
        let critic = cfg.advantage.needs_critic().then_some(value);
        let result = train_ppo(
            PolicyAndValue::new(policy, critic),
            &inputs,
            &cfg,
            &RunOptions::quiet(),
            &device,
        );
        match cfg.validate() {
            Ok(()) => {
                let (_, report) = result.unwrap();
                // one response has no sample standard deviation: `reward_std` is logged `null`
                let one = cfg.samples_per_prompt * cfg.prompts_per_batch == 1;
                for (name, v) in &report.last {
                    if one && *name == rlhf_core::train::metrics::names::REWARD_STD {
                        prop_assert!(v.is_nan(), "{:?}: {} = {}", cfg, name, v);
                        continue;
                    }
                    prop_assert!(v.is_finite(), "{:?}: {} = {}", cfg, name, v);
                }
            }
            Err(_) => prop_assert!(matches!(result, Err(Error::Config(_))), "{:?}", cfg),
        }
    }
}
