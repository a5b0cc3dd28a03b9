//! Throughput of the RLHF workloads of `docs/performance.md`: the SFT step, the reward-model and
//! DPO steps, batched generation with the KV cache, and the on-policy iteration (PPO, and RLOO,
//! the shape the TRL peer runs), each on the same data as the peer, `rlhf-bench/peer/trl_peer.py`.
//!
//! [`measure`] runs one workload in this process through the project's real trainers
//! (`train_sft`, `train_reward_model`, `train_offline`, `generate`, `train_ppo`) and times only
//! the training (or sampling) call, as the peer times only `trainer.train()`. The `rlhf-perf`
//! binary runs every workload in its own child process, so that the operating system's
//! maximum resident set size of that child is the workload's peak memory, alternates the
//! project's runs with the peer's, and writes `perf.json`.

use std::time::Instant;

use burn::tensor::Device;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rlhf_core::train::{LrSchedule, OptimizerConfig, Replicas, RunOptions, try_seeded};
use rlhf_core::{Error, KlController, Result, Scorer};
use rlhf_data::Tokenizer;
use rlhf_dpo::{DpoConfig, Group, RefCache, cached_reference_logps, train_offline};
use rlhf_models::sft::LmBatch;
use rlhf_models::{
    CausalLm, SamplingConfig, ScalarModel, SftConfig, TransformerConfig, generate, train_sft,
};
use rlhf_ppo::{
    AdvantageEstimator, PolicyAndValue, PpoConfig, PpoInputs, encode_queries, train_ppo,
};
use rlhf_reward::{RankedExample, RewardModel, RewardScorer, RewardSettings, RmConfig};
use serde::{Deserialize, Serialize};

use crate::compute::{Workload as Flops, flops};

/// Sequences per optimizer step (and prompts per generation batch), as the peer's `--batch`.
pub const BATCH: usize = 16;
/// Words per prompt (the peer's `--prompt-words`); each word is one token of the BPE below.
pub const PROMPT_WORDS: usize = 32;
/// Words per response (the peer's `--response-words`).
pub const RESPONSE_WORDS: usize = 32;
/// New tokens per sampled response (the peer's `--new-tokens`).
pub const NEW_TOKENS: usize = 48;
/// Samples per prompt of the on-policy workloads (the peer's `--samples-per-prompt`).
pub const SAMPLES_PER_PROMPT: usize = 4;
/// BPE vocabulary asked for (the peer's `--vocab`).
pub const VOCAB: usize = 512;
/// Learning rate of every trainer (the peer's).
const LR: f64 = 1e-4;

/// The peer's word list: synthetic sentences are drawn from it.
const WORDS: [&str; 30] = [
    "the", "cat", "dog", "ran", "sat", "on", "mat", "big", "small", "red", "blue", "quick", "lazy",
    "fox", "jumped", "over", "under", "tree", "house", "river", "alice", "bob", "paris", "london",
    "apple", "car", "book", "green", "old", "new",
];

/// One measured workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    /// SFT step: forward + backward + AdamW on prompt + response.
    Sft,
    /// Reward-model step on (chosen, rejected) pairs, Bradley–Terry loss.
    Reward,
    /// DPO step: policy on both responses, trained; the frozen reference on both, forward only.
    Dpo,
    /// DPO with the reference log-probs already computed: the trainer reads them from a warm
    /// reference cache (what a user's run finds after the first; the peer: TRL's
    /// `precompute_ref_log_probs=True`, whose reference pass runs when the trainer is built, before
    /// the timed `train()`). The timed run hashes the reference's weights to find its entry.
    DpoRefCache,
    /// Batched sampling with the KV cache, a fixed number of new tokens.
    Generate,
    /// RLOO iteration: sample `n` per prompt, reference log-probs, a rule reward, one epoch of
    /// minibatch updates (TRL's `RLOOTrainer` defaults: β = 0.05, one iteration per batch).
    Rloo,
    /// A PPO iteration in the TL;DR recipe's shape: sample, reference + reward model + critic
    /// forward, GAE, 4 epochs of minibatch updates of policy and critic (4 minibatches, a
    /// constant learning rate, no missing-EOS penalty). The peer has no counterpart.
    Ppo,
}

impl Workload {
    /// Every workload, in report order.
    pub const ALL: [Workload; 7] = [
        Workload::Sft,
        Workload::Reward,
        Workload::Dpo,
        Workload::DpoRefCache,
        Workload::Generate,
        Workload::Rloo,
        Workload::Ppo,
    ];

    /// The name on the command line and in `perf.json`.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Sft => "sft",
            Workload::Reward => "reward",
            Workload::Dpo => "dpo",
            Workload::DpoRefCache => "dpo-ref-cache",
            Workload::Generate => "generate",
            Workload::Rloo => "rloo",
            Workload::Ppo => "ppo",
        }
    }

    /// The workload called `name`.
    pub fn parse(name: &str) -> Result<Self> {
        Workload::ALL
            .into_iter()
            .find(|w| w.name() == name)
            .ok_or_else(|| {
                Error::Config(format!(
                    "perf: unknown workload `{name}` (one of sft, reward, dpo, dpo-ref-cache, generate, \
                     rloo, ppo)"
                ))
            })
    }

    /// The peer script's `--trainer` for this workload (`None`: TRL has no counterpart here).
    pub fn peer_trainer(self) -> Option<&'static str> {
        match self {
            Workload::Ppo => None,
            w => Some(w.name()),
        }
    }

    /// What one example is: the unit of `examples/s`, the figure compared with the peer.
    pub fn example_unit(self) -> &'static str {
        match self {
            Workload::Sft => "sequences",
            Workload::Reward | Workload::Dpo | Workload::DpoRefCache => "pairs",
            Workload::Generate | Workload::Rloo | Workload::Ppo => "prompts",
        }
    }

    /// The throughput unit of `docs/performance.md`.
    pub fn unit(self) -> &'static str {
        match self {
            Workload::Sft => "tokens/s",
            Workload::Reward | Workload::Dpo | Workload::DpoRefCache => "pairs/s",
            Workload::Generate => "new tokens/s",
            Workload::Rloo | Workload::Ppo => "episodes/s",
        }
    }
}

/// A model size of the benchmark: a GPT-NeoX preset (rotary on a quarter of each head, parallel
/// residual), the same as the peer's `GPTNeoXConfig` for the preset's width, layers and heads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    /// Name on the command line and in `perf.json`.
    pub name: &'static str,
    /// The `rlhf-models` preset with this shape.
    pub preset: &'static str,
}

/// The two sizes: about 3 M non-embedding parameters, and 25 M.
pub const SIZES: [Size; 2] = [
    Size {
        name: "small",
        preset: "tiny-4m",
    },
    Size {
        name: "25m",
        preset: "tiny-25m",
    },
];

impl Size {
    /// The size called `name`.
    pub fn parse(name: &str) -> Result<Self> {
        SIZES.into_iter().find(|s| s.name == name).ok_or_else(|| {
            Error::Config(format!("perf: unknown size `{name}` (one of small, 25m)"))
        })
    }

    /// The model shape for a vocabulary of `vocab` tokens.
    pub fn shape(self, vocab: usize) -> Result<TransformerConfig> {
        let mut shape = TransformerConfig::preset(self.preset)?;
        shape.vocab_size = vocab;
        shape.validate()?;
        Ok(shape)
    }
}

/// Examples per run by default: enough for several optimizer steps, a few seconds to half a
/// minute per run on two cores. Multiples of [`BATCH`]. Generation gets more prompts: a run of
/// a few batches lasts well under a second, and its first batch carries the warm-up.
pub fn default_examples(workload: Workload, size: Size) -> usize {
    let small = size.name == "small";
    match (workload, small) {
        (Workload::Sft | Workload::Reward, true) => 256,
        (Workload::Sft | Workload::Reward, false) => 64,
        (Workload::Dpo | Workload::DpoRefCache, true) => 128,
        (Workload::Dpo | Workload::DpoRefCache, false) => 32,
        (Workload::Generate, true) => 256,
        (Workload::Generate, false) => 64,
        (Workload::Rloo | Workload::Ppo, true) => 64,
        (Workload::Rloo | Workload::Ppo, false) => 16,
    }
}

/// A batch of the `sft` workload's shape with random ids (past the tokenizer's specials): [`BATCH`]
/// sequences of [`PROMPT_WORDS`] prompt tokens and `RESPONSE_WORDS` + 1 response tokens, the loss
/// on the response. The profiling examples time single steps on it.
pub fn random_sft_batch(rng: &mut impl Rng) -> LmBatch {
    let seq = PROMPT_WORDS + RESPONSE_WORDS + 1;
    LmBatch {
        batch: BATCH,
        seq,
        ids: (0..BATCH * seq)
            .map(|_| rng.random_range(3..VOCAB as u32))
            .collect(),
        attention: vec![1; BATCH * seq],
        target: (0..BATCH * seq)
            .map(|i| u8::from(i % seq >= PROMPT_WORDS))
            .collect(),
        sequences: Vec::new(),
    }
}

/// Prompt tokens and two responses.
type PromptAndPair = (Vec<u32>, Vec<Vec<u32>>);

/// What one run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// The workload's name.
    pub workload: String,
    /// The size's name.
    pub size: String,
    /// Examples processed (see [`Workload::example_unit`]).
    pub examples: usize,
    /// Seconds of the timed call.
    pub seconds: f64,
    /// Units of [`Workload::unit`] processed (tokens, pairs, new tokens, episodes).
    pub units: f64,
    /// Useful model FLOPs (`6·N` per trained token, `2·N` per forward token).
    pub flops: u64,
    /// Non-embedding parameters `N`.
    pub non_embedding_params: u64,
}

impl Measurement {
    /// Examples per second.
    pub fn examples_per_s(&self) -> f64 {
        self.examples as f64 / self.seconds
    }

    /// Units of the workload per second.
    pub fn units_per_s(&self) -> f64 {
        self.units / self.seconds
    }

    /// Achieved FLOP/s.
    pub fn flops_per_s(&self) -> f64 {
        self.flops as f64 / self.seconds
    }
}

fn sentence(rng: &mut ChaCha8Rng, words: usize) -> String {
    (0..words)
        .map(|_| WORDS[rng.random_range(0..WORDS.len())])
        .collect::<Vec<_>>()
        .join(" ")
}

/// The benchmark's tokenizer: BPE on 4,000 sentences of 24 words, as the peer trains its own.
pub fn tokenizer() -> Result<Tokenizer> {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let corpus: Vec<String> = (0..4000).map(|_| sentence(&mut rng, 24)).collect();
    Tokenizer::train_bpe(corpus.iter(), VOCAB)
}

/// A word-share rule reward (the share of the word "cat"), the peer's RLOO reward.
struct CatShare;

impl Scorer for CatShare {
    fn score(&self, prompts: &[&str], responses: &[&str]) -> Result<Vec<f32>> {
        rlhf_core::check_pairs(prompts, responses)?;
        Ok(responses
            .iter()
            .map(|r| {
                let words: Vec<&str> = r.split_whitespace().collect();
                words.iter().filter(|w| **w == "cat").count() as f32 / words.len().max(1) as f32
            })
            .collect())
    }
}

/// Runs `workload` at `size` on `examples` examples and times it. `device` is the inference
/// device; training runs on its autodiff twin, with `replicas` data-parallel replicas there (the
/// training workloads; generation has none).
pub fn measure(
    workload: Workload,
    size: Size,
    examples: usize,
    replicas: usize,
    device: &Device,
) -> Result<Measurement> {
    if examples == 0 || !examples.is_multiple_of(BATCH) {
        return Err(Error::Config(format!(
            "perf: examples must be a positive multiple of {BATCH}, not {examples}"
        )));
    }
    let mut bench = Bench::new(size, examples, replicas, device)?;
    let timed = match workload {
        Workload::Sft => bench.time_sft()?,
        Workload::Reward => bench.time_reward()?,
        Workload::Dpo => bench.time_dpo(false)?,
        Workload::DpoRefCache => bench.time_dpo(true)?,
        Workload::Generate => bench.time_generate()?,
        Workload::Rloo => bench.time_rl(false)?,
        Workload::Ppo => bench.time_rl(true)?,
    };
    Ok(Measurement {
        workload: workload.name().into(),
        size: size.name.into(),
        examples,
        seconds: timed.seconds,
        units: timed.units,
        flops: timed.flops,
        non_embedding_params: bench.shape.non_embedding_params(),
    })
}

/// What a timed call gave: its seconds, the units of [`Workload::unit`] and the useful FLOPs.
struct Timed {
    seconds: f64,
    units: f64,
    flops: u64,
}

/// What every workload is built from: the tokenizer, the model shape, one stream of random draws
/// for the data (seed 0), and quiet run options with the replicas.
struct Bench<'a> {
    tok: Tokenizer,
    shape: TransformerConfig,
    examples: usize,
    rng: ChaCha8Rng,
    quiet: RunOptions,
    /// The inference device.
    device: &'a Device,
    /// Its autodiff twin, where training runs.
    train_device: Device,
}

impl<'a> Bench<'a> {
    fn new(size: Size, examples: usize, replicas: usize, device: &'a Device) -> Result<Self> {
        let tok = tokenizer()?;
        let shape = size.shape(tok.vocab_size())?;
        let train_device = device.clone().autodiff();
        let rng = ChaCha8Rng::seed_from_u64(0);
        let quiet = RunOptions {
            progress: false,
            replicas: Replicas::new(vec![train_device.clone(); replicas]),
            ..RunOptions::default()
        };
        Ok(Bench {
            tok,
            shape,
            examples,
            rng,
            quiet,
            device,
            train_device,
        })
    }

    /// A model of the benchmark's shape on `device`, its weights drawn from `seed`.
    fn init(&self, seed: u64, device: &Device) -> Result<CausalLm> {
        try_seeded(device, seed, || CausalLm::init(&self.shape, device))
    }

    /// A prompt of [`PROMPT_WORDS`] words.
    fn prompt_text(&mut self) -> String {
        sentence(&mut self.rng, PROMPT_WORDS)
    }

    /// The tokens of a prompt of [`PROMPT_WORDS`] words.
    fn prompt(&mut self) -> Result<Vec<u32>> {
        let text = self.prompt_text();
        self.tok.encode(&text)
    }

    /// The tokens of a response of [`RESPONSE_WORDS`] words, and EOS.
    fn response(&mut self) -> Result<Vec<u32>> {
        let mut r = self.tok.encode(&sentence(&mut self.rng, RESPONSE_WORDS))?;
        r.push(self.tok.eos_id());
        Ok(r)
    }

    /// A prompt and two responses per example (reward and DPO).
    fn pairs(&mut self) -> Result<Vec<PromptAndPair>> {
        (0..self.examples)
            .map(|_| {
                let prompt = self.prompt()?;
                Ok((prompt, vec![self.response()?, self.response()?]))
            })
            .collect()
    }

    /// [`Workload::Sft`] on a prompt and a response per example.
    fn time_sft(&mut self) -> Result<Timed> {
        let data = (0..self.examples)
            .map(|_| Ok((self.prompt()?, self.response()?)))
            .collect::<Result<Vec<_>>>()?;
        let tokens: usize = data.iter().map(|(p, r)| p.len() + r.len()).sum();
        let cfg = SftConfig {
            batch_size: BATCH,
            optimizer: optimizer(),
            schedule: LrSchedule::Constant,
            ..SftConfig::default()
        };
        let model = self.init(1, &self.train_device)?;
        let t = Instant::now();
        train_sft(model, &data, &[], &cfg, &self.quiet, &self.train_device)?;
        let tokens = tokens as u64;
        Ok(Timed {
            seconds: t.elapsed().as_secs_f64(),
            units: tokens as f64,
            flops: flops(&self.shape, Flops::Train { tokens }),
        })
    }

    /// [`Workload::Reward`] on a prompt and two responses per example.
    fn time_reward(&mut self) -> Result<Timed> {
        let data: Vec<RankedExample> = self
            .pairs()?
            .into_iter()
            .map(|(prompt, responses)| RankedExample {
                prompt,
                responses,
                margin: None,
                gold: None,
            })
            .collect();
        let tokens = pair_tokens(data.iter().map(|e| (&e.prompt, &e.responses)));
        let cfg = RmConfig {
            batch_size: BATCH,
            optimizer: optimizer(),
            ..RmConfig::default()
        };
        let model = ScalarModel::from_backbone(self.init(1, &self.train_device)?);
        let t = Instant::now();
        rlhf_reward::train_reward_model(model, &data, &[], &cfg, &self.quiet, &self.train_device)?;
        Ok(Timed {
            seconds: t.elapsed().as_secs_f64(),
            units: self.examples as f64,
            flops: flops(&self.shape, Flops::Train { tokens }),
        })
    }

    /// [`Workload::Dpo`], or with `ref_cache` [`Workload::DpoRefCache`].
    fn time_dpo(&mut self, ref_cache: bool) -> Result<Timed> {
        let data: Vec<Group> = self
            .pairs()?
            .into_iter()
            .map(|(prompt, responses)| Group {
                prompt,
                responses,
                rewards: None,
            })
            .collect();
        let tokens = pair_tokens(data.iter().map(|g| (&g.prompt, &g.responses)));
        let cfg = DpoConfig {
            batch_size: BATCH,
            optimizer: optimizer(),
            ..DpoConfig::default()
        };
        let policy = self.init(1, &self.train_device)?;
        let reference = self.init(2, self.device)?;
        // a warm cache for dpo-ref-cache, filled before the clock starts (the directory lives
        // until the run is timed)
        let cache_dir = if ref_cache {
            Some(tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?)
        } else {
            None
        };
        let cache = RefCache::new(cache_dir.as_ref().map(tempfile::TempDir::path));
        if cache_dir.is_some() {
            cached_reference_logps(&reference, &data, &cfg, &cache, self.device, &mut 0)?;
        }
        let t = Instant::now();
        let (_, report) = train_offline(
            policy,
            &reference,
            &data,
            &[],
            &cfg,
            &cache,
            &self.quiet,
            &self.train_device,
        )?;
        let seconds = t.elapsed().as_secs_f64();
        if ref_cache && report.reference_forward_batches > 0 {
            return Err(Error::Config(
                "perf: dpo-ref-cache ran the reference: its cache was not read".into(),
            ));
        }
        let reference_tokens = if ref_cache { 0 } else { tokens };
        Ok(Timed {
            seconds,
            units: self.examples as f64,
            flops: flops(&self.shape, Flops::Train { tokens })
                + flops(
                    &self.shape,
                    Flops::Forward {
                        tokens: reference_tokens,
                    },
                ),
        })
    }

    /// [`Workload::Generate`] on a prompt per example, in batches of [`BATCH`].
    fn time_generate(&mut self) -> Result<Timed> {
        let model = self.init(1, self.device)?;
        let prompts: Vec<String> = (0..self.examples).map(|_| self.prompt_text()).collect();
        let sampling = SamplingConfig {
            max_new_tokens: NEW_TOKENS,
            temperature: 0.7,
            eos_id: None,
            ..SamplingConfig::default()
        };
        let batches = prompts
            .chunks(BATCH)
            .map(|c| {
                let refs: Vec<&str> = c.iter().map(String::as_str).collect();
                encode_queries(&self.tok, &refs, PROMPT_WORDS)
            })
            .collect::<Result<Vec<_>>>()?;
        let t = Instant::now();
        let mut new_tokens = 0u64;
        for (ids, mask) in &batches {
            let g = generate(&model, ids, mask, BATCH, &sampling, &mut self.rng)?;
            new_tokens += g.mask.iter().map(|&m| u64::from(m)).sum::<u64>();
        }
        Ok(Timed {
            seconds: t.elapsed().as_secs_f64(),
            units: new_tokens as f64,
            flops: flops(&self.shape, Flops::Forward { tokens: new_tokens }),
        })
    }

    /// [`Workload::Rloo`] against the word-share rule, or with `ppo` [`Workload::Ppo`] against a
    /// reward model, with a critic.
    fn time_rl(&mut self, ppo: bool) -> Result<Timed> {
        let prompts: Vec<String> = (0..self.examples).map(|_| self.prompt_text()).collect();
        let cfg = rl_config(ppo, self.examples);
        let policy = self.init(1, &self.train_device)?;
        let reference = self.init(2, self.device)?;
        let reward_model;
        let scorer: Box<dyn Scorer> = if ppo {
            reward_model = RewardModel::from_backbone(
                self.init(3, self.device)?,
                self.shape.clone(),
                RewardSettings::outcome(),
            );
            Box::new(RewardScorer::new(
                reward_model,
                self.tok.clone(),
                self.device,
            ))
        } else {
            Box::new(CatShare)
        };
        let value = ppo.then(|| ScalarModel::from_backbone(policy.clone()));
        let inputs = PpoInputs {
            reference: &reference,
            scorer: scorer.as_ref(),
            tokenizer: &self.tok,
            prompts: &prompts,
            demonstrations: &[],
            eval: None,
            eval_every: 0,
            eval_first: false,
        };
        let t = Instant::now();
        let (_, report) = train_ppo(
            PolicyAndValue::new(policy, value),
            &inputs,
            &cfg,
            &self.quiet,
            &self.train_device,
        )?;
        let episodes = report.iterations * cfg.batch_size() as u64;
        let (q, r) = (PROMPT_WORDS as u64, NEW_TOKENS as u64);
        let seq = episodes * (q + r);
        // generation, the reference (and, for PPO, the reward model and the critic) forward,
        // and the epochs of training (PPO: policy and critic)
        let forwards = if ppo { 3 } else { 1 };
        let trained = if ppo { 2 } else { 1 };
        let shape = &self.shape;
        let f = flops(
            shape,
            Flops::Forward {
                tokens: episodes * r,
            },
        ) + forwards * flops(shape, Flops::Forward { tokens: seq })
            + cfg.ppo_epochs as u64 * trained * flops(shape, Flops::Train { tokens: seq });
        Ok(Timed {
            seconds: t.elapsed().as_secs_f64(),
            units: episodes as f64,
            flops: f,
        })
    }
}

/// AdamW at the peer's learning rate, for every trainer.
fn optimizer() -> OptimizerConfig {
    OptimizerConfig {
        lr: LR,
        ..OptimizerConfig::default()
    }
}

/// The on-policy settings over `examples` prompts: RLOO as TRL's `RLOOTrainer` defaults, or with
/// `ppo` the TL;DR recipe's PPO (GAE, 4 epochs).
fn rl_config(ppo: bool, examples: usize) -> PpoConfig {
    PpoConfig {
        iterations: examples / BATCH,
        samples_per_prompt: SAMPLES_PER_PROMPT,
        prompts_per_batch: BATCH,
        query_length: PROMPT_WORDS,
        response_length: NEW_TOKENS,
        temperature: 0.7,
        missing_eos_penalty: None,
        kl: KlController::Fixed { value: 0.05 },
        advantage: if ppo {
            AdvantageEstimator::Gae
        } else {
            AdvantageEstimator::Rloo
        },
        ppo_epochs: if ppo { 4 } else { 1 },
        // minibatches of BATCH episodes, as the peer's optimizer steps
        num_minibatches: SAMPLES_PER_PROMPT,
        anneal_lr: false,
        optimizer: optimizer(),
        ..PpoConfig::default()
    }
}

/// Tokens of prompt + response over every response of every example.
fn pair_tokens<'a>(examples: impl Iterator<Item = (&'a Vec<u32>, &'a Vec<Vec<u32>>)>) -> u64 {
    examples
        .map(|(p, rs)| rs.iter().map(|r| (p.len() + r.len()) as u64).sum::<u64>())
        .sum()
}

/// The f32 matmul rate of `device` in FLOP/s: the median of `reps` products of two `n × n`
/// matrices (`2·n³` FLOPs each) after one warm-up product.
pub fn matmul_peak(device: &Device, n: usize, reps: usize) -> f64 {
    use burn::tensor::{Distribution, Tensor};
    let a = Tensor::<2>::random([n, n], Distribution::Default, device);
    let b = Tensor::<2>::random([n, n], Distribution::Default, device);
    matmul_rate(&a, &b, reps)
}

/// The rate in FLOP/s of the (batched) product `a·b`, `[.., m, k]·[.., k, n]`: the median of
/// `reps` products after one warm-up product, each read back to the host.
pub fn matmul_rate<const D: usize>(
    a: &burn::tensor::Tensor<D>,
    b: &burn::tensor::Tensor<D>,
    reps: usize,
) -> f64 {
    let (m, k, n) = (a.dims()[D - 2], a.dims()[D - 1], b.dims()[D - 1]);
    let batch: usize = a.dims()[..D - 2].iter().product();
    let _ = a.clone().matmul(b.clone()).into_data();
    let mut times: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            let _ = a.clone().matmul(b.clone()).into_data();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    2.0 * (batch * m * k * n) as f64 / times[times.len() / 2]
}

/// The median, minimum and maximum of `v` (NaN for an empty slice).
pub fn median_min_max(v: &[f64]) -> (f64, f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let mid = s.len() / 2;
    let median = if s.len() % 2 == 1 {
        s[mid]
    } else {
        (s[mid - 1] + s[mid]) / 2.0
    };
    (median, s[0], s[s.len() - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_word_is_one_token_so_shapes_match_the_peer() {
        let tok = tokenizer().unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for _ in 0..20 {
            let s = sentence(&mut rng, PROMPT_WORDS);
            assert_eq!(tok.encode(&s).unwrap().len(), PROMPT_WORDS, "{s}");
        }
    }

    #[test]
    fn sizes_are_the_peer_shapes() {
        // (width, layers, heads) the peer is given, and `N` within 2% of `12·d²·L`
        for (name, (d, l, h)) in [("small", (256, 4, 4)), ("25m", (512, 8, 8))] {
            let s = Size::parse(name).unwrap().shape(400).unwrap();
            let got = (s.hidden_size, s.num_hidden_layers, s.num_attention_heads);
            assert_eq!(got, (d, l, h), "{name}");
            assert_eq!((s.intermediate_size, s.rotary_pct), (4 * d, 0.25), "{name}");
            let n = s.non_embedding_params() as f64;
            let matrices = (12 * d * d * l) as f64;
            assert!((n / matrices - 1.0).abs() < 0.02, "{name}: {n}");
        }
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median_min_max(&[3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(median_min_max(&[4.0, 1.0, 2.0, 3.0]), (2.5, 1.0, 4.0));
        assert!(median_min_max(&[]).0.is_nan());
    }

    #[test]
    fn a_tiny_run_of_each_workload_counts_its_units() {
        let _guard = rlhf_testkit::serial();
        let device = rlhf_core::device_from_env().unwrap();
        let small = Size::parse("small").unwrap();
        for w in Workload::ALL {
            let m = measure(w, small, BATCH, 1, &device).unwrap();
            let expected_units = match w {
                // prompt + response + EOS, one token per word
                Workload::Sft => (BATCH * (PROMPT_WORDS + RESPONSE_WORDS + 1)) as f64,
                Workload::Reward | Workload::Dpo | Workload::DpoRefCache => BATCH as f64,
                Workload::Generate => (BATCH * NEW_TOKENS) as f64,
                Workload::Rloo | Workload::Ppo => (BATCH * SAMPLES_PER_PROMPT) as f64,
            };
            assert_eq!(m.units, expected_units, "{w:?}");
            assert!(m.seconds > 0.0 && m.flops > 0, "{w:?}: {m:?}");
        }
    }
}
