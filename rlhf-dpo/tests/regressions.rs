//! Regression tests of the correctness review: the reference cache's key covers the truncation;
//! configurations that divide by zero (or make the loss constant) are refused before training;
//! IPO and SimPO log the implicit rewards of the log-probs their losses use (averaged over
//! response tokens).

use burn::module::Module;
use rlhf_core::Error;
use rlhf_core::host::to_f32_vec;
use rlhf_core::train::metrics::{names, read_metrics};
use rlhf_core::train::{OptimizerConfig, RunOptions};
use rlhf_dpo::{DpoConfig, Group, OfflineLoss, RefCache, sequence_logps, train_offline};
use rlhf_models::{CausalLm, TransformerConfig};

fn model(device: &burn::tensor::Device, seed: u64) -> CausalLm {
    let mut c = TransformerConfig::preset("tiny-1m").unwrap();
    c.vocab_size = 32;
    c.hidden_size = 32;
    c.num_hidden_layers = 1;
    c.num_attention_heads = 2;
    c.num_key_value_heads = 2;
    c.intermediate_size = 32;
    rlhf_core::train::seeded(device, seed, || CausalLm::init(&c, device).unwrap())
}

/// Pairs whose responses have different lengths (so averaging and summing differ).
fn pairs() -> Vec<Group> {
    (0..8u32)
        .map(|i| Group {
            prompt: vec![i % 7 + 1, i % 5 + 11, 3],
            responses: vec![vec![i % 9 + 2, 21, 22, 0], vec![(i + 4) % 9 + 2, 0]],
            rewards: Some(vec![1.0, 0.0]),
        })
        .collect()
}

fn quiet(dir: Option<&std::path::Path>) -> RunOptions {
    RunOptions {
        progress: false,
        out_dir: dir.map(std::path::Path::to_path_buf),
        ..RunOptions::default()
    }
}

fn base() -> DpoConfig {
    DpoConfig {
        epochs: 1,
        batch_size: 8,
        optimizer: OptimizerConfig {
            lr: 1e-3,
            ..OptimizerConfig::default()
        },
        ..DpoConfig::default()
    }
}

/// A second run in the same cache directory with another truncation must not read the first
/// run's reference log-probs, which were computed on differently cut sequences.
#[test]
fn a_new_truncation_is_a_new_reference_cache_key() {
    let device = rlhf_core::device_from_env().unwrap().autodiff();
    let reference = model(&device, 1);
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = RefCache::new(Some(cache_dir.path()));
    let run = |truncation| {
        let cfg = DpoConfig {
            truncation,
            ..base()
        };
        train_offline(
            reference.clone(),
            &reference,
            &pairs(),
            &[],
            &cfg,
            &cache,
            &quiet(None),
            &device,
        )
        .unwrap()
        .1
    };
    assert!(run(None).reference_forward_batches > 0);
    assert_eq!(run(None).reference_forward_batches, 0, "same inputs: read");
    assert!(
        run(Some((2, 1))).reference_forward_batches > 0,
        "a cut to 1 response token read the uncut run's reference log-probs"
    );
}

/// Each of these makes a loss divide by zero (or, β = 0, a constant): refused as a
/// configuration error before the first step, not trained into NaN or skipped steps.
#[test]
fn configurations_that_divide_by_zero_are_refused() {
    let device = rlhf_core::device_from_env().unwrap().autodiff();
    let reference = model(&device, 1);
    let cases = [
        ("robust ε = ½", OfflineLoss::Robust { eps: 0.5 }, 0.1),
        ("EXO-pref ε = 0", OfflineLoss::ExoPref { eps: 0.0 }, 0.1),
        (
            "DPO β = 0",
            OfflineLoss::Dpo {
                label_smoothing: 0.0,
            },
            0.0,
        ),
        ("IPO β < 0", OfflineLoss::Ipo, -0.1),
        ("EXO-rw β_r = 0", OfflineLoss::ExoRw { beta_r: 0.0 }, 0.1),
        ("DPO-rw β_r < 0", OfflineLoss::DpoRw { beta_r: -1.0 }, 0.1),
    ];
    for (what, loss, beta) in cases {
        let cfg = DpoConfig {
            loss,
            beta,
            ..base()
        };
        let result = train_offline(
            reference.clone(),
            &reference,
            &pairs(),
            &[],
            &cfg,
            &RefCache::new(None),
            &quiet(None),
            &device,
        );
        assert!(
            matches!(result, Err(Error::Config(_))),
            "{what}: {:?}",
            result.map(|r| r.1.final_train_loss)
        );
    }
}

/// IPO and SimPO optimise log-probs averaged over response tokens; the implicit rewards they log
/// are those of the same averaged log-probs (as TRL's CPO trainer and, before 0.29, its DPO
/// trainer log them), not of the summed ones.
#[test]
fn ipo_and_simpo_log_rewards_of_averaged_logprobs() {
    let device = rlhf_core::device_from_env().unwrap().autodiff();
    let reference = model(&device, 1);
    let policy = model(&device, 2);
    let data = pairs();
    let refs: Vec<&Group> = data.iter().collect();
    let inference = device.clone().without_autodiff();
    let logps = |m: &CausalLm| {
        let (sum, len) = sequence_logps(&m.valid(), &refs, None, &inference);
        let (sum, len) = (to_f32_vec(sum), to_f32_vec(len));
        let mean: Vec<f64> = sum
            .iter()
            .zip(&len)
            .map(|(s, l)| f64::from(*s) / f64::from(*l))
            .collect();
        mean
    };
    let (pol, refe) = (logps(&policy), logps(&reference));
    for (loss, with_reference) in [
        (OfflineLoss::Ipo, true),
        (OfflineLoss::Simpo { gamma: 0.5 }, false),
    ] {
        let beta = 0.5f64;
        let cfg = DpoConfig {
            loss,
            beta: beta as f32,
            // the logged metrics are those of the loss before the step's update
            optimizer: OptimizerConfig {
                lr: 1e-3,
                ..OptimizerConfig::default()
            },
            ..base()
        };
        let dir = tempfile::tempdir().unwrap();
        train_offline(
            policy.clone(),
            &reference,
            &data,
            &[],
            &cfg,
            &RefCache::new(None),
            &quiet(Some(dir.path())),
            &device,
        )
        .unwrap();
        let lines = read_metrics(&dir.path().join("metrics.jsonl")).unwrap();
        let logged = |name: &str| lines[0].get(name).and_then(|v| v.as_f64()).unwrap();
        let reward = |i: usize| beta * (pol[i] - if with_reference { refe[i] } else { 0.0 });
        let n = data.len();
        let chosen = (0..n).map(|g| reward(2 * g)).sum::<f64>() / n as f64;
        let rejected = (0..n).map(|g| reward(2 * g + 1)).sum::<f64>() / n as f64;
        for (name, expected) in [
            (names::REWARDS_CHOSEN, chosen),
            (names::REWARDS_REJECTED, rejected),
        ] {
            let got = logged(name);
            assert!(
                (got - expected).abs() < 1e-4 * (1.0 + expected.abs()),
                "{loss:?} {name}: logged {got}, averaged log-probs give {expected}"
            );
        }
    }
}
