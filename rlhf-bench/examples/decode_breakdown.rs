//! Where generation of the `bench-perf` models spends its time: the prefill (the prompt through
//! the model once), the decode steps (one new token per row through the KV cache) and the rest
//! (reading the logits to the host, sampling, growing the inputs), for the `generate` workload's
//! shape: 16 rows, 32 prompt tokens, 48 new tokens, temperature 0.7, no EOS. Each phase is the
//! median over 8 batches after 2 warm-up batches, in milliseconds per batch.
//!
//! ```sh
//! cargo run -p rlhf-bench --example decode_breakdown            # small and 25m
//! cargo run -p rlhf-bench --example decode_breakdown -- small   # one size
//! ```

use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rlhf_bench::perf::{BATCH, NEW_TOKENS, PROMPT_WORDS, SIZES, VOCAB, median_min_max};
use rlhf_models::{CausalLm, SamplingConfig, generate};

const WARM_UP: usize = 2;
const BATCHES: usize = 8;

fn main() {
    let only: Option<String> = std::env::args().nth(1);
    let device = rlhf_core::device_from_env().expect("RLHF_DEVICE");
    let sampling = SamplingConfig {
        max_new_tokens: NEW_TOKENS,
        temperature: 0.7,
        ..SamplingConfig::default()
    };
    for size in SIZES {
        if only.as_deref().is_some_and(|s| s != size.name) {
            continue;
        }
        device.seed(0);
        let model = CausalLm::init(&size.shape(VOCAB).expect("shape"), &device).expect("init");
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let mask = vec![1u8; BATCH * PROMPT_WORDS];
        let (mut whole, mut prefill) = (Vec::new(), Vec::new());
        for i in 0..WARM_UP + BATCHES {
            let ids: Vec<u32> = (0..BATCH * PROMPT_WORDS)
                .map(|_| rng.random_range(3..VOCAB as u32))
                .collect();
            let t = Instant::now();
            let one = SamplingConfig {
                max_new_tokens: 1,
                ..sampling.clone()
            };
            generate(&model, &ids, &mask, BATCH, &one, &mut rng).expect("generate");
            let first = t.elapsed().as_secs_f64() * 1e3;
            let t = Instant::now();
            generate(&model, &ids, &mask, BATCH, &sampling, &mut rng).expect("generate");
            let all = t.elapsed().as_secs_f64() * 1e3;
            if i >= WARM_UP {
                prefill.push(first);
                whole.push(all);
            }
        }
        let (p, _, _) = median_min_max(&prefill);
        let (w, lo, hi) = median_min_max(&whole);
        let steps = (NEW_TOKENS - 1) as f64;
        println!(
            "{}: batch {w:.1} ms ({lo:.1}–{hi:.1}); prefill and first token {p:.1} ms; \
             each later token {:.2} ms; {:.0} new tokens/s",
            size.name,
            (w - p) / steps,
            (BATCH * NEW_TOKENS) as f64 / (w / 1e3),
        );
    }
}
