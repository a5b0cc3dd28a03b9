//! One replica with two threads against two replicas in threads, for the forward and backward
//! pass of one SFT batch of the `bench-perf` models (16 sequences of 65 tokens): the single
//! replica runs the whole batch, burn-flex splitting each product across rayon's threads; the two
//! replicas run 8 sequences each at once (`rayon::join`), and their gradients are averaged, as
//! data-parallel replicas on one device would be. Both give the same gradient (its global norm is
//! printed for each). Six alternating rounds per size, milliseconds.
//!
//! A measurement of what replicas would gain, not a way to run them: both halves share the model's
//! autodiff leaves, so their passes meet in one graph, where burn-autodiff 0.22.1 can deadlock
//! (`docs/perf-report.md`). The trainers' replicas (`rlhf_core::train::replicas`) work on forks
//! with leaves of their own; `rlhf-perf --replicas 1,2` measures them.
//!
//! ```sh
//! cargo run -p rlhf-bench --example replicas
//! ```

use std::time::Instant;

use burn::optim::GradientsParams;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rlhf_bench::perf::{SIZES, VOCAB, random_sft_batch};
use rlhf_core::train::grads::{GradAccumulation, global_grad_norm};
use rlhf_models::CausalLm;
use rlhf_models::sft::{LmBatch, sft_loss};

const ROUNDS: usize = 6;

fn main() {
    rlhf_core::train::tune_allocator();
    let device = rlhf_core::parse_device("flex")
        .expect("the flex device")
        .autodiff();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    for size in SIZES {
        let model =
            CausalLm::init(&size.shape(VOCAB).expect("a preset shape"), &device).expect("a model");
        let whole = random_sft_batch(&mut rng);
        let half = whole.batch / 2;
        let (a, b) = (whole.rows(0..half), whole.rows(half..whole.batch));
        let grads = |batch: &LmBatch| {
            let loss = sft_loss(&model, batch, &device).expect("ids inside the vocabulary");
            GradientsParams::from_grads(loss.backward(), &model)
        };
        for _ in 0..ROUNDS {
            let t = Instant::now();
            let one = grads(&whole);
            let one_ms = t.elapsed().as_secs_f64() * 1e3;
            let t = Instant::now();
            let (ga, gb) = rayon::join(|| grads(&a), || grads(&b));
            // equal halves (same target tokens): the mean of the two is the whole batch's
            let mut acc = GradAccumulation::new();
            acc.add(&model, ga, 1.0);
            acc.add(&model, gb, 1.0);
            let two = acc.take_mean(&model);
            let two_ms = t.elapsed().as_secs_f64() * 1e3;
            println!(
                "{}: one replica {one_ms:.1} ms, two replicas {two_ms:.1} ms ({:.2}×); \
                 gradient norms {} and {}",
                size.name,
                one_ms / two_ms,
                global_grad_norm(&model, &one),
                global_grad_norm(&model, &two),
            );
        }
    }
}
