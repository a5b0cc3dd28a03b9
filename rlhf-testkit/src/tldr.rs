//! The TL;DR pipeline at laptop scale, up to the reward model, shared by PPO's learning tests and
//! its `ppo_study` example: SFT on 800 noisy `tldr-synth` demonstrations → a reward model
//! initialised from the SFT model, trained for one epoch on pairs of SFT samples labelled by a
//! labeller that agrees with the gold order 73% of the time, normalised on the demonstrations.

use std::time::Instant;

use burn::module::Module;
use burn::tensor::Device;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rlhf_core::train::{LrSchedule, OptimizerConfig, RunOptions, seeded};
use rlhf_data::tasks::{Labeller, Task, TldrSynth, with_eos};
use rlhf_data::{Split, Tokenizer};
use rlhf_models::{
    CausalLm, SamplingConfig, SftConfig, TransformerConfig, sample_texts, train_sft,
};
use rlhf_reward::{
    RankedExample, RewardModel, RewardSettings, RmConfig, normalise, train_reward_model,
};

pub fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Everything PPO needs on `tldr-synth`, built once per test binary.
pub struct Tldr {
    pub device: Device,
    pub task: TldrSynth,
    pub tok: Tokenizer,
    pub sft: CausalLm,
    /// The reward model of `train_rm(s, 7, 3)`.
    pub rm: Option<RewardModel>,
    pub shape: TransformerConfig,
    /// SFT examples (tokenized prompt, demonstration with EOS).
    pub sft_data: Vec<(Vec<u32>, Vec<u32>)>,
    /// Labelled pairs of SFT samples.
    pub rm_train: Vec<RankedExample>,
    pub rm_eval: Vec<RankedExample>,
    pub train_prompts: Vec<String>,
    pub eval_prompts: Vec<String>,
    /// Gold scores of the SFT policy's samples on `eval_prompts`.
    pub sft_gold: Vec<f64>,
    pub query_length: usize,
}

/// Gold scores of samples (T = 0.7, fixed seed) on `prompts`.
pub fn gold_of_samples(model: &CausalLm, s: &Tldr) -> Vec<f64> {
    let cfg = SamplingConfig {
        max_new_tokens: 40,
        temperature: 0.7,
        ..Default::default()
    };
    let refs: Vec<&str> = s.eval_prompts.iter().map(String::as_str).collect();
    let (_, texts) = sample_texts(
        &model.valid(),
        &s.tok,
        &refs,
        &cfg,
        &mut ChaCha8Rng::seed_from_u64(11),
    )
    .unwrap();
    s.eval_prompts
        .iter()
        .zip(&texts)
        .map(|(p, t)| s.task.gold(p, t).total)
        .collect()
}

/// Builds the pipeline up to the reward model (about a minute on two cores).
pub fn build() -> Tldr {
    {
        let start = Instant::now();
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
        let sft_data: Vec<(Vec<u32>, Vec<u32>)> = demos
            .iter()
            .map(|(p, d)| (tok.encode(p).unwrap(), tok.encode(&with_eos(d)).unwrap()))
            .collect();
        let shape = {
            let mut c = TransformerConfig::preset("tiny-1m").unwrap();
            c.vocab_size = tok.vocab_size();
            c.hidden_size = 64;
            c.intermediate_size = 256;
            c.num_hidden_layers = 2;
            c.num_attention_heads = 4;
            c
        };
        let init = seeded(&device, 1, || CausalLm::init(&shape, &device).unwrap());
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
            init,
            &sft_data,
            &[],
            &sft_cfg,
            &RunOptions::quiet(),
            &device,
        )
        .unwrap();

        // reward-model data: two SFT samples per prompt, labelled by a labeller that agrees with
        // the gold order 73% of the time
        let prompts: Vec<String> = (2000..3200).map(|i| task.prompt(Split::Train, i)).collect();
        let mut samples = Vec::new();
        let valid = sft.valid();
        let sampling = SamplingConfig {
            max_new_tokens: 40,
            temperature: 1.0,
            ..Default::default()
        };
        let mut srng = ChaCha8Rng::seed_from_u64(5);
        for chunk in prompts.chunks(64) {
            let twice: Vec<&str> = chunk.iter().flat_map(|p| [p.as_str(); 2]).collect();
            let (ids, texts) = sample_texts(&valid, &tok, &twice, &sampling, &mut srng).unwrap();
            for (k, p) in chunk.iter().enumerate() {
                samples.push((
                    p.clone(),
                    [ids[2 * k].clone(), ids[2 * k + 1].clone()],
                    [
                        task.gold(p, &texts[2 * k]).total,
                        task.gold(p, &texts[2 * k + 1]).total,
                    ],
                ));
            }
        }
        let calibration: Vec<(f64, f64)> = samples.iter().map(|x| (x.2[0], x.2[1])).collect();
        let labeller = Labeller::calibrate(&calibration, 0.73).unwrap();
        let pairs: Vec<RankedExample> = samples
            .into_iter()
            .filter(|x| !x.1[0].is_empty() && !x.1[1].is_empty())
            .map(|(p, [a, b], [ga, gb])| {
                let first = labeller.prefers_first(ga, gb, &mut rng);
                let (c, r, gc, gr) = if first {
                    (a, b, ga, gb)
                } else {
                    (b, a, gb, ga)
                };
                RankedExample {
                    prompt: tok.encode(&p).unwrap(),
                    responses: vec![c, r],
                    margin: None,
                    gold: Some(vec![gc, gr]),
                }
            })
            .collect();
        let (rm_train, rm_eval) = pairs.split_at(pairs.len() - 100);
        let (rm_train, rm_eval) = (rm_train.to_vec(), rm_eval.to_vec());
        let train_prompts: Vec<String> = (0..512).map(|i| task.prompt(Split::Train, i)).collect();
        let eval_prompts: Vec<String> = (0..64).map(|i| task.prompt(Split::Eval, i)).collect();
        let query_length = train_prompts
            .iter()
            .chain(&eval_prompts)
            .map(|p| tok.encode(p).unwrap().len())
            .max()
            .unwrap();
        let mut s = Tldr {
            device,
            task,
            tok,
            sft,
            rm: None,
            shape,
            sft_data,
            rm_train,
            rm_eval,
            train_prompts,
            eval_prompts,
            sft_gold: Vec::new(),
            query_length,
        };
        s.sft_gold = gold_of_samples(&s.sft, &s);
        let (rm, rm_eval) = train_rm(&s, 7, 3);
        s.rm = Some(rm);
        eprintln!(
            "setup {:.0} s: RM gold-order accuracy {:.3} (labels {:.3}); SFT gold {:.3}; query length {}",
            start.elapsed().as_secs_f64(),
            rm_eval.gold_accuracy.unwrap_or(f64::NAN),
            rm_eval.accuracy,
            mean(&s.sft_gold),
            s.query_length
        );
        s
    }
}

/// A reward model initialised from the SFT model (head drawn from `init_seed`), trained for one
/// epoch on the labelled pairs in the order of `data_seed` (TL;DR detail 11), its bias the mean
/// score of 200 demonstrations (detail 5). Returns it with its held-out evaluation.
pub fn train_rm(s: &Tldr, init_seed: u64, data_seed: u64) -> (RewardModel, rlhf_reward::RmEval) {
    let rm = RewardModel {
        model: seeded(&s.device, init_seed, || {
            rlhf_models::ScalarModel::from_backbone(s.sft.clone())
        }),
        config: s.shape.clone(),
        settings: RewardSettings::outcome(),
    };
    let rm_cfg = RmConfig {
        epochs: 1,
        batch_size: 16,
        optimizer: OptimizerConfig {
            lr: 1e-3,
            ..OptimizerConfig::default()
        },
        seed: data_seed,
        ..RmConfig::default()
    };
    let (model, report) = train_reward_model(
        rm.model,
        &s.rm_train,
        &s.rm_eval,
        &rm_cfg,
        &RunOptions::quiet(),
        &s.device,
    )
    .unwrap();
    let mut rm = RewardModel { model, ..rm };
    rm.settings.normalisation =
        normalise(&rm.model, &s.sft_data[..200], false, 32, &s.device).unwrap();
    (rm, report.eval)
}

/// The on-policy settings of the tests and examples: 64 episodes per iteration (`64 / n` prompts
/// × `n` samples), 40 new tokens, 2 minibatches × 4 epochs, β = 0.05, seed 4; the rest is the
/// TL;DR recipe (`PpoConfig::default()`).
pub fn ppo_config(
    s: &Tldr,
    advantage: rlhf_ppo::AdvantageEstimator,
    n: usize,
    iterations: usize,
    lr: f64,
) -> rlhf_ppo::PpoConfig {
    rlhf_ppo::PpoConfig {
        iterations,
        seed: 4,
        samples_per_prompt: n,
        prompts_per_batch: 64 / n,
        query_length: s.query_length,
        response_length: 40,
        advantage,
        num_minibatches: 2,
        optimizer: OptimizerConfig {
            lr,
            ..OptimizerConfig::default()
        },
        ..rlhf_ppo::PpoConfig::default()
    }
}
