//! The TL;DR pipeline at laptop scale, shared by the learning tests and examples of PPO and DPO:
//! SFT on 800 noisy `tldr-synth` demonstrations ([`sft_stage`]); pairs of SFT samples
//! ([`SftStage::sample_pairs`]) labelled by a labeller that agrees with the gold order 73% of the
//! time ([`labeller`], [`SftStage::label`]); and, for PPO, a reward model initialised from the SFT
//! model, trained for one epoch on those pairs and normalised on the demonstrations ([`build`]).

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

use crate::tiny_shape;

pub use rlhf_core::stats::mean;

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

/// Gold scores of `model`'s samples on the evaluation prompts of `s` ([`sample_gold`]).
pub fn gold_of_samples(model: &CausalLm, s: &Tldr) -> Vec<f64> {
    sample_gold(model, &s.tok, &s.task, &s.eval_prompts)
}

/// Gold scores of samples (T = 0.7, 40 new tokens, fixed seed) on `prompts`.
pub fn sample_gold(
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

/// A prompt, two sampled responses (token ids), and their gold scores.
pub type SampledPair = (String, Vec<u32>, Vec<u32>, f64, f64);

/// The SFT policy both trainers start from, with its task, tokenizer and data.
pub struct SftStage {
    pub device: Device,
    pub task: TldrSynth,
    pub tok: Tokenizer,
    pub shape: TransformerConfig,
    /// SFT examples (tokenized prompt, demonstration with EOS).
    pub sft_data: Vec<(Vec<u32>, Vec<u32>)>,
    pub sft: CausalLm,
    /// The labeller's random stream: the demonstrations' stream (seed 0), continued.
    pub label_rng: ChaCha8Rng,
}

/// 800 demonstrations of the train split (seed 0), a 512-token BPE trained on them, and the
/// [`tiny_shape`] model (initialised from seed 1) trained on them for 6 epochs (batch 16, lr 3e-3,
/// linear schedule, seed 2).
pub fn sft_stage() -> SftStage {
    let device = rlhf_core::device_from_env().unwrap().autodiff();
    let task = TldrSynth::default();
    let mut label_rng = ChaCha8Rng::seed_from_u64(0);
    let demos: Vec<(String, String)> = (0..800)
        .map(|i| {
            let p = task.prompt(Split::Train, i);
            let d = task.demonstrate(&p, &mut label_rng);
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
    let shape = tiny_shape(tok.vocab_size());
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
    SftStage {
        device,
        task,
        tok,
        shape,
        sft_data,
        sft,
        label_rng,
    }
}

impl SftStage {
    /// Two samples of the SFT policy (T = 1, 40 new tokens, drawn from `seed`) for each of the
    /// prompts `from..from + n` of `split`, with their gold scores.
    pub fn sample_pairs(&self, split: Split, from: u64, n: u64, seed: u64) -> Vec<SampledPair> {
        let prompts: Vec<String> = (from..from + n)
            .map(|i| self.task.prompt(split, i))
            .collect();
        let sampling = SamplingConfig {
            max_new_tokens: 40,
            temperature: 1.0,
            ..Default::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let valid = self.sft.valid();
        let mut out = Vec::new();
        for chunk in prompts.chunks(64) {
            let twice: Vec<&str> = chunk.iter().flat_map(|p| [p.as_str(); 2]).collect();
            let (ids, texts) =
                sample_texts(&valid, &self.tok, &twice, &sampling, &mut rng).unwrap();
            for (k, p) in chunk.iter().enumerate() {
                let ga = self.task.gold(p, &texts[2 * k]).total;
                let gb = self.task.gold(p, &texts[2 * k + 1]).total;
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
    }

    /// `raw` with the preferred response first, as `labeller` judges from the gold scores
    /// (drawing from [`SftStage::label_rng`]); pairs with an empty response are left out.
    pub fn label(&mut self, labeller: &Labeller, raw: Vec<SampledPair>) -> Vec<SampledPair> {
        raw.into_iter()
            .filter(|x| !x.1.is_empty() && !x.2.is_empty())
            .map(|(p, a, b, ga, gb)| {
                if labeller.prefers_first(ga, gb, &mut self.label_rng) {
                    (p, a, b, ga, gb)
                } else {
                    (p, b, a, gb, ga)
                }
            })
            .collect()
    }
}

/// A labeller calibrated to agree with the gold order on 73% of the pairs `raw`, the agreement
/// of the TL;DR reproduction's labellers.
pub fn labeller(raw: &[SampledPair]) -> Labeller {
    let calibration: Vec<(f64, f64)> = raw.iter().map(|x| (x.3, x.4)).collect();
    Labeller::calibrate(&calibration, 0.73).unwrap()
}

/// Builds the pipeline up to the reward model (about a minute on two cores): the
/// [`sft_stage`], up to 1,200 labelled pairs of its samples (pairs with an empty response
/// dropped; the last 100 held out), the reward model.
pub fn build() -> Tldr {
    let start = Instant::now();
    let mut stage = sft_stage();
    let raw = stage.sample_pairs(Split::Train, 2000, 1200, 5);
    let labeller = labeller(&raw);
    let pairs: Vec<RankedExample> = stage
        .label(&labeller, raw)
        .into_iter()
        .map(|(p, c, r, gc, gr)| RankedExample {
            prompt: stage.tok.encode(&p).unwrap(),
            responses: vec![c, r],
            margin: None,
            gold: Some(vec![gc, gr]),
        })
        .collect();
    let (rm_train, rm_eval) = pairs.split_at(pairs.len() - 100);
    let (rm_train, rm_eval) = (rm_train.to_vec(), rm_eval.to_vec());
    let SftStage {
        device,
        task,
        tok,
        shape,
        sft_data,
        sft,
        ..
    } = stage;
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
        pad_token_id: None,
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
