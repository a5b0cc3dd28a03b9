//! Masked reductions and whitening over the response mask.
//!
//! A mask is a float tensor of 0s and 1s with the shape of the values (`[batch, seq]` for
//! per-token quantities): 1 on real response tokens, 0 on prompt and padding. Values at masked
//! positions are replaced by 0 *before* any arithmetic, so whatever a padded position holds —
//! even NaN or infinity — never reaches a result.

use burn::tensor::Tensor;

/// `x` with every position where `mask` is 0 set to exactly 0.
///
/// `x`, `mask`: the same shape. Uses a select, not a product, so a NaN at a masked position is
/// dropped rather than propagated.
pub fn zero_masked<const D: usize>(x: Tensor<D>, mask: Tensor<D>) -> Tensor<D> {
    x.mask_fill(mask.lower_elem(0.5), 0.0)
}

/// Sum of `x` over the positions where `mask` is 1. Returns shape `[1]`.
pub fn masked_sum<const D: usize>(x: Tensor<D>, mask: Tensor<D>) -> Tensor<1> {
    zero_masked(x, mask).sum()
}

/// Mean of `x` over the positions where `mask` is 1: `Σ m·x / Σ m`. Returns shape `[1]`.
///
/// With an all-zero mask the result is NaN (0/0), as an empty mean should be; callers that may
/// see an empty batch check the mask first.
pub fn masked_mean<const D: usize>(x: Tensor<D>, mask: Tensor<D>) -> Tensor<1> {
    let count = mask.clone().sum();
    masked_sum(x, mask).div(count)
}

/// Per-row masked mean along `dim` (e.g. a per-sequence mean over tokens). Keeps the reduced
/// dimension with size 1.
pub fn masked_mean_dim<const D: usize>(x: Tensor<D>, mask: Tensor<D>, dim: usize) -> Tensor<D> {
    let count = mask.clone().sum_dim(dim);
    zero_masked(x, mask).sum_dim(dim).div(count)
}

/// Masked variance over the positions where `mask` is 1, returning shape `[1]`.
///
/// `unbiased` applies Bessel's correction `n / (n − 1)` (as TRL's `masked_var` does), with the
/// denominator floored at 1 so a single masked element has variance 0 rather than NaN.
pub fn masked_var<const D: usize>(x: Tensor<D>, mask: Tensor<D>, unbiased: bool) -> Tensor<1> {
    let mean = masked_mean(x.clone(), mask.clone());
    let centered = x.sub(broadcast_scalar::<D>(mean));
    let var = masked_mean(centered.square(), mask.clone());
    if unbiased {
        let n = mask.sum();
        let bessel = n.clone().div(n.sub_scalar(1.0).clamp_min(1.0));
        var.mul(bessel)
    } else {
        var
    }
}

/// Whitening over the mask: `(x − mean) / √(var + 1e−8)` with the unbiased masked variance.
///
/// With `shift_mean = false` the mean is added back (the spread is scaled to 1, the mean kept),
/// which is how reward whitening is done in the TL;DR reproduction; advantages are whitened with `shift_mean = true`.
/// Masked positions of the output are 0. Shapes: `x`, `mask` and the output alike.
pub fn whiten<const D: usize>(x: Tensor<D>, mask: Tensor<D>, shift_mean: bool) -> Tensor<D> {
    let mean = broadcast_scalar::<D>(masked_mean(x.clone(), mask.clone()));
    let var = broadcast_scalar::<D>(masked_var(x.clone(), mask.clone(), true));
    let mut white = x.sub(mean.clone()).div(var.add_scalar(1e-8).sqrt());
    if !shift_mean {
        white = white.add(mean);
    }
    zero_masked(white, mask)
}

/// A `[1]` tensor reshaped to `[1, …, 1]` with `D` dimensions, so it broadcasts against any
/// tensor of rank `D`.
pub fn broadcast_scalar<const D: usize>(x: Tensor<1>) -> Tensor<D> {
    x.reshape([1; D])
}
