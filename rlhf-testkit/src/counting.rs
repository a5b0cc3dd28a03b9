//! A tiny policy that emits EOS after a prompt-dependent number of words, its tokenizer, and two
//! scorers, for PPO's detail, device, method and learning tests.

use burn::tensor::Device;
use rlhf_core::train::checkpoint::{module_from_bytes, module_to_bytes};
use rlhf_core::train::{OptimizerConfig, RunOptions, seeded};
use rlhf_core::{Result, Scorer};
use rlhf_data::Tokenizer;
use rlhf_data::tasks::with_eos;
use rlhf_models::{CausalLm, SftConfig, TransformerConfig, train_sft};

/// `count k:` prompts answered with `k` words, then EOS.
pub fn prompt(k: usize) -> String {
    format!("count {k}:")
}

fn answer(k: usize) -> String {
    with_eos(&" yes".repeat(k))
}

pub fn tokenizer() -> Tokenizer {
    let corpus: Vec<String> = (0..10).flat_map(|k| [prompt(k), answer(k)]).collect();
    Tokenizer::train_bpe(corpus.iter().map(String::as_str), 300).unwrap()
}

pub fn shape(vocab: usize, dropout: f64) -> TransformerConfig {
    let mut c = TransformerConfig::preset("tiny-1m").unwrap();
    c.vocab_size = vocab;
    c.hidden_size = 32;
    c.intermediate_size = 64;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 2;
    c.num_key_value_heads = 2;
    c.dropout = dropout;
    c
}

/// A policy trained briefly to answer `count k:` with about `k` words and EOS, so that some
/// responses stop early and some run out of tokens; bytes of its weights, to rebuild it on any
/// device.
pub fn counting_policy(tok: &Tokenizer, dropout: f64) -> Vec<u8> {
    let device = rlhf_core::parse_device("flex").unwrap().autodiff();
    let data: Vec<(Vec<u32>, Vec<u32>)> = (0..64)
        .map(|i| {
            let k = 1 + i % 8;
            (
                tok.encode(&prompt(k)).unwrap(),
                tok.encode(&answer(k)).unwrap(),
            )
        })
        .collect();
    let cfg = SftConfig {
        epochs: 10,
        batch_size: 16,
        optimizer: OptimizerConfig {
            lr: 1e-2,
            ..OptimizerConfig::default()
        },
        seed: 1,
        ..SftConfig::default()
    };
    let model = seeded(&device, 3, || {
        CausalLm::init(&shape(tok.vocab_size(), dropout), &device).unwrap()
    });
    let (model, _) = train_sft(model, &data, &[], &cfg, &RunOptions::quiet(), &device).unwrap();
    module_to_bytes(model).unwrap()
}

/// The model of `bytes` on `device`. The initialisation it overwrites still draws from burn's
/// global generator, so it holds the lock too: an unlocked draw in one test thread would change
/// the sequence another thread's seeded initialisation reads.
pub fn load(bytes: &[u8], vocab: usize, dropout: f64, device: &Device) -> CausalLm {
    let init = seeded(device, 0, || {
        CausalLm::init(&shape(vocab, dropout), device).unwrap()
    });
    module_from_bytes(init, bytes).unwrap()
}

/// Scores every response `value`.
pub struct Constant(pub f32);

impl Scorer for Constant {
    fn score(&self, prompts: &[&str], _responses: &[&str]) -> Result<Vec<f32>> {
        Ok(vec![self.0; prompts.len()])
    }
}

/// Rewards the number of `yes` words (a rule reward the counting policy can learn to raise).
pub struct Words;

impl Scorer for Words {
    fn score(&self, _prompts: &[&str], responses: &[&str]) -> Result<Vec<f32>> {
        Ok(responses
            .iter()
            .map(|r| r.matches("yes").count() as f32 / 4.0)
            .collect())
    }
}
