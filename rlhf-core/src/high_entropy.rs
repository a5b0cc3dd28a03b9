//! The policy gradient on the high-entropy tokens only ("Beyond the 80/20 Rule", Wang et al.
//! 2025; TRL's `top_entropy_quantile`): the tokens where the policy is least sure (the "forking"
//! tokens) carry the gradient, the others are left out of the policy loss.
//!
//! For the share `ρ ∈ [0, 1]`, a token is kept when it is real and its entropy `H_t` is at least
//! the `1 − ρ` quantile of the real tokens' entropies. The quantile interpolates linearly
//! between order statistics, as `torch.quantile` does: with the `n` real entropies sorted
//! `h_(0) ≤ … ≤ h_(n−1)` and `x = (1 − ρ)·(n − 1)`, it is `h_(⌊x⌋) + (x − ⌊x⌋)·(h_(⌈x⌉) −
//! h_(⌊x⌋))`. So about the share `ρ` of the real tokens is kept, and ties at the threshold are all
//! kept (`ρ = 0`: the most uncertain token and its ties). The kept tokens' losses are aggregated over the whole mask, as TRL multiplies the
//! per-token loss by the selection before its aggregation.

use burn::tensor::Tensor;

use crate::host::{tensor_from_f32, to_f32_vec};

/// The `[batch, seq]` 0/1 selection of the real tokens (`mask` 1) whose `entropy` is at least the
/// `1 − rho` quantile of the real tokens' entropies (module documentation); all 0 without a real
/// token. Both inputs are `[batch, seq]`; the entropies are read to the host once, and the
/// selection is a constant (no gradient). Padded positions never enter the quantile.
pub fn high_entropy_mask(entropy: Tensor<2>, mask: Tensor<2>, rho: f32) -> Tensor<2> {
    let shape = entropy.dims();
    let device = entropy.device();
    let (h, m) = (to_f32_vec(entropy.detach()), to_f32_vec(mask));
    let mut real: Vec<f64> = h
        .iter()
        .zip(&m)
        .filter(|&(_, &m)| m > 0.0)
        .map(|(&h, _)| f64::from(h))
        .collect();
    let selected: Vec<f32> = match quantile(&mut real, 1.0 - f64::from(rho)) {
        None => vec![0.0; h.len()],
        Some(threshold) => h
            .iter()
            .zip(&m)
            .map(|(&h, &m)| f32::from(u8::from(m > 0.0 && f64::from(h) >= threshold)))
            .collect(),
    };
    tensor_from_f32(selected, shape, &device)
}

/// The `q` quantile of `values` (sorted here), interpolated linearly between order statistics;
/// `None` when there are none. A NaN sorts last, as `total_cmp` orders it.
fn quantile(values: &mut [f64], q: f64) -> Option<f64> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let x = q.clamp(0.0, 1.0) * (n - 1) as f64;
    let (lo, hi) = (x.floor() as usize, x.ceil() as usize);
    Some(values[lo] + (x - lo as f64) * (values[hi] - values[lo]))
}
