//! # rlhf-testkit
//!
//! What the workspace's tests and examples share, in one place instead of copied or included by
//! path: a dev-dependency of the other crates, never published.
//!
//! - [`counting`]: a tiny policy that answers `count k:` with `k` words and EOS, for PPO's
//!   detail, device, method and learning tests.
//! - [`crash`]: crash tests — a test of the current binary run as a child, killed (SIGKILL) or
//!   stopped (SIGTERM) at a step, resumed and compared with a run that never stopped; and
//!   [`crash::serial`], the lock for tests that compare runs bit for bit.
//! - [`replicas`]: the check that `n` data-parallel replicas take the step of one.
//! - [`tldr`]: the TL;DR pipeline at laptop scale (SFT → labelled pairs of SFT samples → RM), for
//!   the learning tests of PPO and DPO and the `ppo_study` example.
//! - [`pairs`]: labelled `tldr-synth` pairs and step-labelled `arith-steps` chains with a tiny
//!   backbone, for the reward models' learning tests and examples.
//! - [`assert_checkpointing_keeps_the_gradient`]: the check every burn-flex pass with its own
//!   backward makes under gradient checkpointing.

pub mod counting;
pub mod crash;
pub mod pairs;
pub mod replicas;
pub mod tldr;

pub use crash::serial;

use burn::tensor::Device;
use rlhf_models::sft::Example;
use rlhf_models::{CausalLm, TransformerConfig};

/// Runs `run` (which builds a graph on the device it is given and returns a gradient) on
/// burn-flex with autodiff, plainly and with gradient checkpointing: the gradient is not all
/// zeros, and checkpointing leaves it the same to the bit.
pub fn assert_checkpointing_keeps_the_gradient(run: impl Fn(Device) -> Vec<f32>) {
    let plain = run(Device::flex().autodiff());
    assert!(
        plain.iter().any(|g| *g != 0.0),
        "an all-zero gradient tests nothing"
    );
    assert_eq!(
        plain,
        run(Device::flex().autodiff().gradient_checkpointing())
    );
}

/// The tiny GPT-NeoX of the learning tests over `vocab` tokens: width 64, 4 heads, 2 layers, MLP
/// width 256 (about 100k parameters besides the embeddings).
pub fn tiny_shape(vocab: usize) -> TransformerConfig {
    let mut c = TransformerConfig::preset("tiny-1m").unwrap();
    c.vocab_size = vocab;
    c.hidden_size = 64;
    c.intermediate_size = 256;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 4;
    c
}

/// A tiny Llama (vocabulary 32, width 32, 2 layers, MLP 64) on `device`, initialised from seed 5
/// under the seed lock: the model of the SFT step and resume tests.
pub fn tiny_llama(device: &Device) -> CausalLm {
    let mut c = TransformerConfig::preset("tiny-llama-1m").unwrap();
    c.vocab_size = 32;
    c.hidden_size = 32;
    c.num_hidden_layers = 2;
    c.intermediate_size = 64;
    rlhf_core::train::seeded(device, 5, || CausalLm::init(&c, device).unwrap())
}

/// 40 SFT examples over [`tiny_llama`]'s vocabulary: prompts of 3–6 tokens, responses of 2–4
/// tokens ending in EOS (0), of uneven lengths so that batches carry padding.
pub fn sft_examples() -> Vec<Example> {
    (0..40u32)
        .map(|i| {
            let p: Vec<u32> = (0..3 + i % 4).map(|j| (i + j) % 30 + 1).collect();
            let r: Vec<u32> = (0..2 + i % 3)
                .map(|j| (i * 7 + j) % 30 + 1)
                .chain([0])
                .collect();
            (p, r)
        })
        .collect()
}
