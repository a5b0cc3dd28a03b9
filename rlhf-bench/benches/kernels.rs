//! The RLHF kernels one by one, at the shapes of `rlhf-perf`'s workloads: GAE, token log-probs,
//! every loss (forward + backward, as training runs them) and one KV-cached decode step of the
//! small model. The device is `RLHF_DEVICE` (default `flex`).
//!
//! `cargo bench --profile dev -p rlhf-bench --bench kernels`

use burn::tensor::{Distribution, Int, Tensor, TensorData};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use rlhf_core::{
    KlEstimator, clipped_policy_loss, clipped_value_loss, gae, kl_estimate, token_logprobs,
};
use rlhf_dpo::{dpo_loss, exo_pref_loss, exo_rw_loss};
use rlhf_models::{CausalLm, KvCache, TransformerConfig};
use rlhf_reward::{binary_cross_entropy, bradley_terry_loss, plackett_luce_loss};

/// Episodes × response tokens of a PPO batch (64 × 48), sequences × tokens × vocabulary of a
/// training batch (16 × 80 × 512).
const EPISODES: usize = 64;
const RESPONSE: usize = 48;
const BATCH: usize = 16;
const SEQ: usize = 80;
const VOCAB: usize = 512;

fn device() -> burn::tensor::Device {
    rlhf_core::device_from_env().expect("RLHF_DEVICE")
}

fn uniform<const D: usize>(
    shape: [usize; D],
    lo: f64,
    hi: f64,
    d: &burn::tensor::Device,
) -> Tensor<D> {
    Tensor::random(shape, Distribution::Uniform(lo, hi), d)
}

fn sync<const D: usize>(t: Tensor<D>) -> f32 {
    t.sum().into_scalar::<f32>()
}

fn bench_advantages(c: &mut Criterion) {
    let d = device();
    let mut g = c.benchmark_group("kernels/advantages");
    g.throughput(Throughput::Elements((EPISODES * RESPONSE) as u64));
    let rewards = uniform([EPISODES, RESPONSE], -1.0, 1.0, &d);
    let values = uniform([EPISODES, RESPONSE], -1.0, 1.0, &d);
    let mask = Tensor::<2>::ones([EPISODES, RESPONSE], &d);
    g.bench_function("gae/64x48", |b| {
        b.iter(|| {
            let out = gae(rewards.clone(), values.clone(), mask.clone(), 1.0, 0.95);
            sync(out.advantages)
        })
    });
    let lp = uniform([EPISODES, RESPONSE], -3.0, 0.0, &d);
    let ref_lp = uniform([EPISODES, RESPONSE], -3.0, 0.0, &d);
    for (name, est) in [("k1", KlEstimator::K1), ("k3", KlEstimator::K3)] {
        g.bench_function(format!("kl-{name}/64x48"), |b| {
            b.iter(|| sync(kl_estimate(lp.clone(), ref_lp.clone(), est)))
        });
    }
    g.finish();
}

fn bench_logprobs(c: &mut Criterion) {
    let d = device().autodiff();
    let mut g = c.benchmark_group("kernels/logprobs");
    g.throughput(Throughput::Elements((BATCH * SEQ) as u64));
    let tokens: Vec<i64> = (0..BATCH * SEQ).map(|i| (i * 31 % VOCAB) as i64).collect();
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(tokens, [BATCH, SEQ]), &d);
    let logits = uniform([BATCH, SEQ, VOCAB], -4.0, 4.0, &d);
    g.bench_function("forward-backward/16x80x512", |b| {
        b.iter(|| {
            let l = logits.clone().require_grad();
            let lp = token_logprobs(l, tokens.clone(), 0.7);
            lp.sum().backward()
        })
    });
    g.finish();
}

/// Forward + backward of a loss whose inputs are fresh leaves.
fn bench_losses(c: &mut Criterion) {
    let d = device().autodiff();
    let mut g = c.benchmark_group("kernels/losses");
    let leaf = |shape: [usize; 2], lo: f64, hi: f64| uniform(shape, lo, hi, &d);
    let (a, b2, adv, mask) = (
        leaf([EPISODES, RESPONSE], -3.0, 0.0),
        leaf([EPISODES, RESPONSE], -3.0, 0.0),
        leaf([EPISODES, RESPONSE], -1.0, 1.0),
        Tensor::<2>::ones([EPISODES, RESPONSE], &d),
    );
    g.throughput(Throughput::Elements((EPISODES * RESPONSE) as u64));
    g.bench_function("ppo-clipped-policy/64x48", |b| {
        b.iter(|| {
            let lp = a.clone().require_grad();
            clipped_policy_loss(lp, b2.clone(), adv.clone(), mask.clone(), 0.2)
                .loss
                .backward()
        })
    });
    g.bench_function("ppo-clipped-value/64x48", |b| {
        b.iter(|| {
            let v = a.clone().require_grad();
            clipped_value_loss(v, b2.clone(), adv.clone(), mask.clone(), 0.2)
                .loss
                .backward()
        })
    });
    g.bench_function("bce-step-labels/64x48", |b| {
        let labels = Tensor::<2>::random([EPISODES, RESPONSE], Distribution::Bernoulli(0.5), &d);
        b.iter(|| {
            let logits = adv.clone().require_grad();
            binary_cross_entropy(logits, labels.clone(), mask.clone()).backward()
        })
    });
    let pairs = 256;
    g.throughput(Throughput::Elements(pairs as u64));
    let (chosen, rejected) = (
        uniform([pairs], -2.0, 2.0, &d),
        uniform([pairs], -2.0, 2.0, &d),
    );
    g.bench_function("bradley-terry/256", |b| {
        b.iter(|| {
            let c = chosen.clone().require_grad();
            bradley_terry_loss(c, rejected.clone(), None).backward()
        })
    });
    g.bench_function("plackett-luce-k4/256", |b| {
        let scores = leaf([pairs, 4], -2.0, 2.0);
        b.iter(|| plackett_luce_loss(scores.clone().require_grad()).backward())
    });
    g.bench_function("dpo/256", |b| {
        b.iter(|| {
            dpo_loss(chosen.clone().require_grad(), 0.1, 0.0)
                .mean()
                .backward()
        })
    });
    g.bench_function("exo-pref/256", |b| {
        b.iter(|| {
            exo_pref_loss(chosen.clone().require_grad(), 0.1, 1e-3)
                .mean()
                .backward()
        })
    });
    g.bench_function("exo-rw-k4/256", |b| {
        let ratios = leaf([pairs, 4], -1.0, 1.0);
        let rewards = leaf([pairs, 4], -1.0, 1.0);
        b.iter(|| {
            exo_rw_loss(ratios.clone().require_grad(), rewards.clone(), 0.1, 0.1)
                .mean()
                .backward()
        })
    });
    g.finish();
}

/// One new token for 16 rows after a 32-token prompt, through the KV cache.
fn bench_decode_step(c: &mut Criterion) {
    let d = device();
    d.seed(0);
    let shape = TransformerConfig::preset("tiny-4m").expect("preset");
    let model = CausalLm::init(&shape, &d).expect("init");
    let prompt = 32;
    let ids: Vec<u32> = (0..BATCH * prompt).map(|i| (i * 7 % 500) as u32).collect();
    let mut cache = KvCache::new();
    let first = model
        .input(&ids, &vec![1; BATCH * prompt], BATCH)
        .expect("ids inside the vocabulary");
    let _ = model.forward(&first, Some(&mut cache));
    let next = model
        .input(&[5; BATCH], &vec![1; BATCH * (prompt + 1)], BATCH)
        .expect("ids inside the vocabulary");
    let mut g = c.benchmark_group("kernels/decode");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("step-kv-cache/tiny-4m/16x(32+1)", |b| {
        b.iter_batched(
            || cache.clone(),
            |mut cache| {
                let logits = model.forward(&next, Some(&mut cache));
                sync(logits)
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_advantages,
    bench_logprobs,
    bench_losses,
    bench_decode_step
);
criterion_main!(benches);
