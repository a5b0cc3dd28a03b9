//! The f32 matmul rate of burn on the default device at the products a training step of the
//! `bench-perf` models performs: for every linear layer `x·W` (`[M, K]·[K, N]`) the forward
//! product and the two backward ones (`dY·Wᵀ` and `xᵀ·dY`, with the transposes as views, as
//! autodiff makes them), and attention's two batched products per head. `xtask/profile/
//! matmul_shapes.py` runs the same products through PyTorch. Figures: `docs/perf-report.md`.
//!
//! ```sh
//! cargo run -p rlhf-bench --example matmul_shapes            # prints one line per product
//! ```

use burn::tensor::{Distribution, Tensor};
use rlhf_bench::perf::matmul_rate;

/// (size, d_model, vocabulary): the two `bench-perf` sizes; `M` = 16 sequences of 65 tokens.
const SIZES: [(&str, usize, usize); 2] = [("small", 256, 512), ("25m", 512, 512)];
const M: usize = 16 * 65;
const REPS: usize = 20;

fn main() {
    // as the binaries do: keep freed buffers instead of returning every one to the kernel
    rlhf_core::train::tune_allocator();
    let device = rlhf_core::parse_device("flex").expect("the flex device");
    let random = |r: usize, c: usize| Tensor::<2>::random([r, c], Distribution::Default, &device);
    for (size, d, vocab) in SIZES {
        for (layer, k, n) in [
            ("qkv", d, 3 * d),
            ("attn_out", d, d),
            ("mlp_up", d, 4 * d),
            ("mlp_down", 4 * d, d),
            ("lm_head", d, vocab),
        ] {
            let (x, w, dy) = (random(M, k), random(k, n), random(M, n));
            let fwd = matmul_rate(&x, &w, REPS);
            let dx = matmul_rate(&dy, &w.clone().transpose(), REPS);
            let dw = matmul_rate(&x.clone().transpose(), &dy, REPS);
            println!(
                "{{\"size\":\"{size}\",\"layer\":\"{layer}\",\"m\":{M},\"k\":{k},\"n\":{n},\
                 \"forward\":{:.1},\"grad_input\":{:.1},\"grad_weight\":{:.1}}}",
                fwd / 1e9,
                dx / 1e9,
                dw / 1e9
            );
        }
        // attention: scores q·kᵀ and the weighted sum p·v, per sequence and head
        let (heads, t, dh) = (d / 64, 65, 64);
        let r3 = |a: usize, b: usize| {
            Tensor::<3>::random([16 * heads, a, b], Distribution::Default, &device)
        };
        let (q, k, p) = (r3(t, dh), r3(t, dh), r3(t, t));
        println!(
            "{{\"size\":\"{size}\",\"layer\":\"attention\",\"batch\":{},\"t\":{t},\"dh\":{dh},\
             \"scores\":{:.1},\"weighted_sum\":{:.1}}}",
            16 * heads,
            matmul_rate(&q, &k.clone().swap_dims(1, 2), REPS) / 1e9,
            matmul_rate(&p, &k, REPS) / 1e9
        );
    }
}
