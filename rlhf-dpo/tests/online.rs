//! The online loop: sample from the policy, score with a `Scorer`, pair best against worst, train.
//! With a rule reward that pays for stopping early, a few rounds make the policy's samples end
//! sooner (fixed seeds; the fixture model of rlhf-models with its tokenizer).

use std::path::Path;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rlhf_core::train::OptimizerConfig;
use rlhf_core::{Result, Scorer};
use rlhf_data::Tokenizer;
use rlhf_dpo::{DpoConfig, OfflineLoss, OnlineConfig, online_round};
use rlhf_models::{SamplingConfig, load_pretrained};

/// Shorter is better: `−(characters)`.
struct Brevity;

impl Scorer for Brevity {
    fn score(&self, _prompts: &[&str], responses: &[&str]) -> Result<Vec<f32>> {
        Ok(responses
            .iter()
            .map(|r| -(r.chars().count() as f32))
            .collect())
    }
}

#[test]
fn online_rounds_follow_the_scorer() {
    let device = rlhf_core::device_from_env().unwrap().autodiff();
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../rlhf-models/tests/fixtures/hf/tiny-llama");
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json"), None).unwrap();
    let (_, reference) = load_pretrained(&dir, &device).unwrap();
    let mut policy = reference.clone();
    let prompts: Vec<String> = [
        "the cat",
        "a summary",
        "numbers 0",
        "the dog ran",
        "keep the",
        "park",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let cfg = OnlineConfig {
        samples_per_prompt: 4,
        sampling: SamplingConfig {
            max_new_tokens: 12,
            temperature: 1.0,
            ..Default::default()
        },
        dpo: DpoConfig {
            loss: OfflineLoss::Dpo {
                label_smoothing: 0.0,
            },
            beta: 0.1,
            epochs: 2,
            batch_size: 6,
            optimizer: OptimizerConfig {
                lr: 5e-3,
                ..OptimizerConfig::default()
            },
            ..DpoConfig::default()
        },
    };
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut scores = Vec::new();
    for _ in 0..8 {
        let (p, report) = online_round(
            policy, &reference, &prompts, &tok, &Brevity, &cfg, &mut rng, &device,
        )
        .unwrap();
        assert!(report.pairs > 0 && report.train.steps > 0);
        scores.push(report.mean_score);
        policy = p;
    }
    eprintln!("mean score per round: {scores:?}");
    // the last rounds' samples are clearly shorter than the first round's
    let late = (scores[6] + scores[7]) / 2.0;
    assert!(late > scores[0] + 2.0, "{scores:?}");
    let bad = OnlineConfig {
        samples_per_prompt: 1,
        ..cfg
    };
    assert!(
        online_round(
            policy, &reference, &prompts, &tok, &Brevity, &bad, &mut rng, &device
        )
        .is_err()
    );
}
