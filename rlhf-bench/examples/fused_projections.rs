//! Whether fusing a Llama layer's projections makes generation cheaper: the same model shape
//! built twice, once with Llama's separate `q_proj`, `k_proj`, `v_proj`, `gate_proj` and
//! `up_proj`, once with Phi-3's fused `qkv_proj` and `gate_up_proj` (full rotary, no LongRoPE, so
//! both compute the same function of their weights), each generating batches of the `generate`
//! workload's shape (16 rows, 32 prompt tokens, 48 new tokens, temperature 0.7, no EOS). The two
//! layouts alternate, four rounds of ten batches each; each line is one round's median and
//! minimum, in milliseconds per batch.
//!
//! ```sh
//! cargo run -p rlhf-bench --example fused_projections            # the small size (d 256, 4 layers)
//! cargo run -p rlhf-bench --example fused_projections -- 25m     # d 512, 8 layers
//! ```

use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rlhf_bench::perf::{BATCH, NEW_TOKENS, PROMPT_WORDS, VOCAB, median_min_max};
use rlhf_models::{Architecture, CausalLm, SamplingConfig, TransformerConfig, generate};

const ROUNDS: usize = 4;
const BATCHES: usize = 10;

fn main() {
    let device = rlhf_core::device_from_env().expect("RLHF_DEVICE");
    let (hidden, layers, ffn) = match std::env::args().nth(1).as_deref() {
        Some("25m") => (512, 8, 1408),
        _ => (256, 4, 704),
    };
    let shape = |architecture| TransformerConfig {
        architecture,
        vocab_size: VOCAB,
        hidden_size: hidden,
        num_hidden_layers: layers,
        num_attention_heads: 4,
        num_key_value_heads: 4,
        intermediate_size: ffn,
        ..TransformerConfig::preset("tiny-llama-1m").expect("preset")
    };
    let sampling = SamplingConfig {
        max_new_tokens: NEW_TOKENS,
        temperature: 0.7,
        eos_id: None,
        ..SamplingConfig::default()
    };
    let mask = vec![1u8; BATCH * PROMPT_WORDS];
    for round in 0..ROUNDS {
        for (name, architecture) in [
            ("separate", Architecture::Llama),
            ("fused", Architecture::Phi3),
        ] {
            device.seed(0);
            let model = CausalLm::init(&shape(architecture), &device).expect("init");
            let mut rng = ChaCha8Rng::seed_from_u64(0);
            let mut times = Vec::with_capacity(BATCHES);
            for _ in 0..BATCHES {
                let ids: Vec<u32> = (0..BATCH * PROMPT_WORDS)
                    .map(|_| rng.random_range(3..VOCAB as u32))
                    .collect();
                let t = Instant::now();
                generate(&model, &ids, &mask, BATCH, &sampling, &mut rng).expect("generate");
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
            let (median, min, _) = median_min_max(&times);
            println!("round {round} {name:>8}: median {median:.1} ms per batch (min {min:.1})");
        }
    }
}
