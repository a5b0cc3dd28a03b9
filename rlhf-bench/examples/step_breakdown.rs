//! Where one SFT training step of the `bench-perf` models spends its time: forward (model and
//! loss), backward, and the AdamW update, each the median of 10 steps after 3 warm-up steps, for
//! a batch of 16 sequences of 65 tokens (the `sft` workload's shape: 32 prompt and 33 response
//! tokens, loss on the response). `xtask/profile/step_breakdown.py` times the same step of the
//! same model in PyTorch (`GPTNeoXForCausalLM`), so the two can be compared phase by phase.
//!
//! ```sh
//! cargo run -p rlhf-bench --example step_breakdown            # small and 25m
//! ```

use std::time::Instant;

use burn::optim::{AdamWConfig, GradientsParams};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rlhf_bench::perf::{SIZES, VOCAB, median_min_max, random_sft_batch};
use rlhf_models::CausalLm;
use rlhf_models::sft::sft_loss;

const WARM_UP: usize = 3;
const STEPS: usize = 10;

fn main() {
    // as the binaries do: keep freed buffers instead of returning every one to the kernel
    rlhf_core::train::tune_allocator();
    let device = rlhf_core::parse_device("flex")
        .expect("the flex device")
        .autodiff();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    // `step_breakdown forward SIZE`: only forward passes, 30 of them, without autodiff (a tracked
    // forward without its backward would keep every graph), to profile that phase alone
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [mode, name] = args.as_slice()
        && mode == "forward"
    {
        let size = SIZES
            .into_iter()
            .find(|s| s.name == name)
            .expect("small or 25m");
        let shape = size.shape(VOCAB).expect("a preset shape");
        let device = device.clone().without_autodiff();
        let model = CausalLm::init(&shape, &device).expect("a model");
        let batch = random_sft_batch(&mut rng);
        for _ in 0..30 {
            let _ = sft_loss(&model, &batch, &device)
                .expect("ids inside the vocabulary")
                .into_data();
        }
        return;
    }
    for size in SIZES {
        let shape = size.shape(VOCAB).expect("a preset shape");
        let mut model = CausalLm::init(&shape, &device).expect("a model");
        let mut optim = AdamWConfig::new().init();
        let batch = random_sft_batch(&mut rng);
        let (mut fwd, mut bwd, mut upd) = (Vec::new(), Vec::new(), Vec::new());
        for step in 0..WARM_UP + STEPS {
            let t0 = Instant::now();
            let loss = sft_loss(&model, &batch, &device).expect("ids inside the vocabulary");
            // flex runs each operation when it is called; reading the loss waits for all of them
            let _ = loss.clone().into_data();
            let t1 = Instant::now();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let t2 = Instant::now();
            model = optim.step(1e-4, model, grads);
            let t3 = Instant::now();
            if step >= WARM_UP {
                fwd.push((t1 - t0).as_secs_f64() * 1e3);
                bwd.push((t2 - t1).as_secs_f64() * 1e3);
                upd.push((t3 - t2).as_secs_f64() * 1e3);
            }
        }
        let median = |v: &[f64]| median_min_max(v).0;
        let (f, b, u) = (median(&fwd), median(&bwd), median(&upd));
        println!(
            "{{\"size\":\"{}\",\"forward_ms\":{f:.1},\"backward_ms\":{b:.1},\"optimizer_ms\":{u:.1},\"step_ms\":{:.1}}}",
            size.name,
            f + b + u
        );
    }
}
