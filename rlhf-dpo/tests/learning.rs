//! DPO and EXO learn on `tldr-synth`, with fixed seeds: starting from an SFT policy, training on
//! pairs labelled by the calibrated labeller raises the gold win rate of the
//! policy's samples over the SFT policy's (pairs are two samples of the SFT policy, as in the
//! TL;DR reproduction); and the reference cache makes a second run skip every
//! reference forward pass.

use burn::module::Module;
use burn::tensor::Device;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rlhf_core::train::{LrSchedule, OptimizerConfig, RunOptions};
use rlhf_data::tasks::{Labeller, Task, TldrSynth, win_rate, with_eos};
use rlhf_data::{Split, Tokenizer};
use rlhf_dpo::{DpoConfig, Group, OfflineLoss, RefCache, train_offline};
use rlhf_models::{
    CausalLm, SamplingConfig, SftConfig, TransformerConfig, sample_texts, train_sft,
};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn quiet() -> RunOptions {
    RunOptions {
        progress: false,
        ..RunOptions::default()
    }
}

/// Gold scores of samples (T = 0.7, fixed seed) on `prompts`.
fn gold_of_samples(
    model: &CausalLm,
    tok: &Tokenizer,
    task: &TldrSynth,
    prompts: &[String],
) -> Vec<f64> {
    let cfg = SamplingConfig {
        max_new_tokens: 40,
        temperature: 0.7,
        ..Default::default()
    };
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let (_, texts) = sample_texts(
        &model.valid(),
        tok,
        &refs,
        &cfg,
        &mut ChaCha8Rng::seed_from_u64(11),
    )
    .unwrap();
    prompts
        .iter()
        .zip(&texts)
        .map(|(p, t)| task.gold(p, t).total)
        .collect()
}

/// A prompt, two sampled responses, and their gold scores.
type SampledPair = (String, Vec<u32>, Vec<u32>, f64, f64);

struct Setup {
    device: Device,
    task: TldrSynth,
    tok: Tokenizer,
    sft: CausalLm,
    train: Vec<Group>,
    eval: Vec<Group>,
    eval_prompts: Vec<String>,
}

fn setup() -> Setup {
    let device = rlhf_core::device_from_env().unwrap().autodiff();
    let task = TldrSynth::default();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let demos: Vec<(String, String)> = (0..800)
        .map(|i| {
            let p = task.prompt(Split::Train, i);
            let d = task.demonstrate(&p, &mut rng);
            (p, d)
        })
        .collect();
    let tok = Tokenizer::train_bpe(
        demos.iter().flat_map(|(p, d)| [p.as_str(), d.as_str()]),
        512,
    )
    .unwrap();
    let enc = |p: &str, r: &str| (tok.encode(p).unwrap(), tok.encode(&with_eos(r)).unwrap());
    let sft_data: Vec<(Vec<u32>, Vec<u32>)> = demos.iter().map(|(p, d)| enc(p, d)).collect();
    device.seed(1);
    let mut shape = TransformerConfig::preset("tiny-1m").unwrap();
    shape.vocab_size = tok.vocab_size();
    shape.hidden_size = 64;
    shape.intermediate_size = 256;
    shape.num_hidden_layers = 2;
    shape.num_attention_heads = 4;
    let sft_cfg = SftConfig {
        epochs: 6,
        batch_size: 16,
        optimizer: OptimizerConfig {
            lr: 3e-3,
            ..OptimizerConfig::default()
        },
        schedule: LrSchedule::Linear {
            warmup: 10,
            total: 300,
        },
        seed: 2,
        ..SftConfig::default()
    };
    let (sft, _) = train_sft(
        CausalLm::init(&shape, &device).unwrap(),
        &sft_data,
        &[],
        &sft_cfg,
        &quiet(),
        &device,
    )
    .unwrap();

    // preference pairs, as in the TL;DR reproduction: two samples of the SFT policy per prompt,
    // labelled by a labeller calibrated to 73% agreement with the gold order on such pairs
    let sample_pairs = |split: Split, from: u64, n: u64, seed: u64| -> Vec<SampledPair> {
        let prompts: Vec<String> = (from..from + n).map(|i| task.prompt(split, i)).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let valid = sft.valid();
        let mut out = Vec::new();
        for chunk in prompts.chunks(64) {
            let twice: Vec<&str> = chunk.iter().flat_map(|p| [p.as_str(); 2]).collect();
            let cfg = SamplingConfig {
                max_new_tokens: 40,
                temperature: 1.0,
                ..Default::default()
            };
            let (ids, texts) = sample_texts(&valid, &tok, &twice, &cfg, &mut rng).unwrap();
            for (k, p) in chunk.iter().enumerate() {
                let ga = task.gold(p, &texts[2 * k]).total;
                let gb = task.gold(p, &texts[2 * k + 1]).total;
                out.push((
                    p.clone(),
                    ids[2 * k].clone(),
                    ids[2 * k + 1].clone(),
                    ga,
                    gb,
                ));
            }
        }
        out
    };
    let train_raw = sample_pairs(Split::Train, 2000, 1200, 5);
    let eval_raw = sample_pairs(Split::Eval, 1000, 64, 6);
    let calibration: Vec<(f64, f64)> = train_raw.iter().map(|x| (x.3, x.4)).collect();
    let labeller = Labeller::calibrate(&calibration, 0.73).unwrap();
    let mut label = |raw: Vec<SampledPair>| -> Vec<Group> {
        raw.into_iter()
            .filter(|x| !x.1.is_empty() && !x.2.is_empty())
            .map(|(p, a, b, ga, gb)| {
                let (c, r) = if labeller.prefers_first(ga, gb, &mut rng) {
                    (a, b)
                } else {
                    (b, a)
                };
                Group {
                    prompt: tok.encode(&p).unwrap(),
                    responses: vec![c, r],
                    rewards: None,
                }
            })
            .collect()
    };
    let train = label(train_raw);
    let eval = label(eval_raw);
    let eval_prompts = (0..48).map(|i| task.prompt(Split::Eval, i)).collect();
    Setup {
        device,
        task,
        tok,
        sft,
        train,
        eval,
        eval_prompts,
    }
}

#[test]
fn dpo_and_exo_raise_the_gold_win_rate_over_sft_and_the_cache_skips_the_reference() {
    let s = setup();
    let baseline = gold_of_samples(&s.sft, &s.tok, &s.task, &s.eval_prompts);
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = RefCache::new(Some(cache_dir.path()));
    for (name, loss) in [
        (
            "DPO",
            OfflineLoss::Dpo {
                label_smoothing: 0.0,
            },
        ),
        ("EXO", OfflineLoss::ExoPref { eps: 1e-3 }),
    ] {
        let cfg = DpoConfig {
            loss,
            beta: env_or("DPO_BETA", 0.3),
            epochs: env_or("DPO_EPOCHS", 1),
            batch_size: 16,
            optimizer: OptimizerConfig {
                lr: env_or("DPO_LR", 1e-4),
                ..OptimizerConfig::default()
            },
            seed: 7,
            ..DpoConfig::default()
        };
        let (policy, report) = train_offline(
            s.sft.clone(),
            &s.sft,
            &s.train,
            &s.eval,
            &cfg,
            &cache,
            &quiet(),
            &s.device,
        )
        .unwrap();
        let gold = gold_of_samples(&policy, &s.tok, &s.task, &s.eval_prompts);
        let wr = win_rate(&gold, &baseline);
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        eprintln!(
            "{name}: {} steps, reference batches run {}; held-out implicit-reward accuracy {:.3}, margin {:.3}; gold {:.3} → {:.3}, win rate over SFT {wr:.3}",
            report.steps,
            report.reference_forward_batches,
            report.eval.reward_accuracy,
            report.eval.reward_margin,
            mean(&baseline),
            mean(&gold)
        );
        if name == "DPO" {
            assert!(
                report.reference_forward_batches > 0,
                "the first run computes the reference"
            );
        } else {
            assert_eq!(
                report.reference_forward_batches, 0,
                "the second run reads the cache"
            );
        }
        assert!(wr > 0.6, "{name}: win rate over SFT {wr}");
    }
}
