//! Generation throughput (new tokens/s) with and without the KV cache at batch 1 and 16, and SFT
//! step throughput (tokens/s), on the `tiny-4m` preset (GPT-NeoX shape, vocabulary 512) and the
//! device in `RLHF_DEVICE` (default `flex`).
//!
//! `cargo bench -p rlhf-models --bench models`

use burn::module::Module;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rlhf_core::train::OptimizerConfig;
use rlhf_models::{CausalLm, LmBatch, SamplingConfig, TransformerConfig, generate, sft_loss};

const PROMPT: usize = 32;
const NEW: usize = 32;

fn model(device: &burn::tensor::Device) -> CausalLm {
    device.seed(0);
    CausalLm::init(&TransformerConfig::preset("tiny-4m").unwrap(), device).unwrap()
}

fn bench_generation(c: &mut Criterion) {
    let device = rlhf_core::device_from_env().unwrap();
    let m = model(&device);
    let mut group = c.benchmark_group("generate/tiny-4m");
    group.sample_size(10);
    for batch in [1usize, 16] {
        let ids: Vec<u32> = (0..batch * PROMPT).map(|i| (i * 7 % 500) as u32).collect();
        let mask = vec![1u8; batch * PROMPT];
        group.throughput(Throughput::Elements((batch * NEW) as u64));
        for use_cache in [true, false] {
            let cfg = SamplingConfig {
                max_new_tokens: NEW,
                temperature: 1.0,
                eos_id: None,
                use_cache,
                ..Default::default()
            };
            let name = if use_cache { "kv-cache" } else { "no-cache" };
            group.bench_with_input(BenchmarkId::new(name, batch), &batch, |b, &batch| {
                b.iter(|| {
                    generate(
                        &m,
                        &ids,
                        &mask,
                        batch,
                        &cfg,
                        &mut ChaCha8Rng::seed_from_u64(1),
                    )
                    .expect("ids inside the vocabulary")
                })
            });
        }
    }
    group.finish();
}

fn bench_sft_step(c: &mut Criterion) {
    let device = rlhf_core::device_from_env().unwrap().autodiff();
    let (batch, seq) = (16usize, 128usize);
    let lm = LmBatch {
        batch,
        seq,
        ids: (0..batch * seq).map(|i| (i * 13 % 500) as u32).collect(),
        attention: vec![1; batch * seq],
        target: (0..batch * seq)
            .map(|i| u8::from(i % seq >= seq / 2))
            .collect(),
        sequences: Vec::new(),
    };
    let mut group = c.benchmark_group("sft-step/tiny-4m");
    group.sample_size(10);
    group.throughput(Throughput::Elements((batch * seq) as u64));
    let mut m = model(&device);
    let mut optim = OptimizerConfig::default().build().unwrap();
    group.bench_function(
        BenchmarkId::new("forward-backward-adamw", format!("{batch}x{seq}")),
        |b| {
            b.iter(|| {
                let loss = sft_loss(&m, &lm, &device).expect("ids inside the vocabulary");
                let grads = burn::optim::GradientsParams::from_grads(loss.backward(), &m);
                m = optim.step(1e-4, m.clone(), grads);
                m.num_params()
            })
        },
    );
    group.finish();
}

criterion_group!(benches, bench_generation, bench_sft_step);
criterion_main!(benches);
