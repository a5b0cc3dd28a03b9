//! What both architectures share: rotary position embeddings, the combined causal + padding
//! mask, and scaled dot-product attention over (possibly cached, possibly grouped) keys.

use burn::module::Module;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Device, Int, Tensor};

/// What every layer needs besides its input: the rotary tables for the positions being processed
/// (`[batch, 1, new, rotary_dims]`) and the attention mask (`[batch, heads, new, past + new]`,
/// `true` = blocked).
pub(crate) struct Context {
    pub(crate) cos: Tensor<4>,
    pub(crate) sin: Tensor<4>,
    pub(crate) mask: Tensor<4, Bool>,
}

impl Context {
    /// The context of `new` positions after `past` cached ones: positions come from the attention
    /// mask (`cumsum − 1`, so a left-padded row's first real token is position 0), as in the
    /// TL;DR reproduction and Hugging Face's generation with left padding.
    pub(crate) fn new(
        attention_mask: Tensor<2>,
        new: usize,
        heads: usize,
        rotary: &Rotary,
    ) -> Self {
        let [_, total] = attention_mask.dims();
        let past = total - new;
        let device = attention_mask.device();
        let positions = attention_mask
            .clone()
            .cumsum(1)
            .sub_scalar(1.0)
            .clamp_min(0.0)
            .narrow(1, past, new);
        let (cos, sin) = rotary.tables(positions);
        Context {
            cos,
            sin,
            mask: attention_mask_4d(attention_mask, past, new, heads, &device),
        }
    }
}

/// Rotary position embedding on the first `dims` dimensions of each head.
#[derive(Module, Debug)]
pub struct Rotary {
    pub(crate) dims: usize,
    pub(crate) theta: f64,
}

impl Rotary {
    /// `cos` and `sin` for `positions` `[batch, seq]`, each `[batch, 1, seq, dims]`.
    fn tables(&self, positions: Tensor<2>) -> (Tensor<4>, Tensor<4>) {
        let [batch, seq] = positions.dims();
        let half = self.dims / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| (1.0 / self.theta.powf((2 * i) as f64 / self.dims as f64)) as f32)
            .collect();
        let inv = rlhf_core::host::tensor_from_f32(inv_freq, [1, 1, half], &positions.device());
        let freqs = positions.reshape([batch, seq, 1]).mul(inv); // [b, t, half]
        let emb = Tensor::cat(vec![freqs.clone(), freqs], 2).reshape([batch, 1, seq, self.dims]);
        (emb.clone().cos(), emb.sin())
    }

    /// Applies the rotation to `x` `[batch, heads, seq, head_dim]`.
    pub(crate) fn apply(&self, x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
        if self.dims == 0 {
            return x;
        }
        let [b, h, t, hd] = x.dims();
        let half = self.dims / 2;
        let rot = x.clone().narrow(3, 0, self.dims);
        let rotated_half = Tensor::cat(
            vec![
                rot.clone().narrow(3, half, half).neg(),
                rot.clone().narrow(3, 0, half),
            ],
            3,
        );
        let rot = rot.mul(cos.clone()).add(rotated_half.mul(sin.clone()));
        if self.dims == hd {
            rot
        } else {
            Tensor::cat(vec![rot, x.narrow(3, self.dims, hd - self.dims)], 3).reshape([b, h, t, hd])
        }
    }
}

/// The boolean attention mask `[batch, heads, new, past + new]`, `true` where attention is
/// *blocked*: future keys (causal), padded keys, except that every position may attend to itself
/// (so a pad query's softmax is over one finite score instead of none).
pub fn attention_mask_4d(
    attention_mask: Tensor<2>,
    past: usize,
    new: usize,
    heads: usize,
    device: &Device,
) -> Tensor<4, Bool> {
    let [b, total] = attention_mask.dims();
    let q = Tensor::<1, Int>::arange(past as i64..(past + new) as i64, device)
        .reshape([new, 1])
        .expand([new, total]);
    let k = Tensor::<1, Int>::arange(0..total as i64, device)
        .reshape([1, total])
        .expand([new, total]);
    let future = k.clone().greater(q.clone()); // [new, total]
    let is_self = k.equal(q);
    let padded_key = attention_mask
        .lower_elem(0.5)
        .reshape([b, 1, total])
        .expand([b, new, total]);
    let blocked = padded_key
        .bool_or(future.reshape([1, new, total]).expand([b, new, total]))
        .bool_and(
            is_self
                .reshape([1, new, total])
                .expand([b, new, total])
                .bool_not(),
        );
    blocked
        .reshape([b, 1, new, total])
        .expand([b, heads, new, total])
}

/// Repeats each of `kv_heads` key/value heads `rep` times along the head axis (grouped-query
/// attention), `[b, kv_heads, t, hd]` → `[b, kv_heads·rep, t, hd]`, as `repeat_kv` does in
/// `transformers`.
pub(crate) fn repeat_kv(x: Tensor<4>, rep: usize) -> Tensor<4> {
    if rep == 1 {
        return x;
    }
    let [b, kvh, t, hd] = x.dims();
    x.reshape([b, kvh, 1, t, hd])
        .expand([b, kvh, rep, t, hd])
        .reshape([b, kvh * rep, t, hd])
}

/// `softmax(q·kᵀ/√d + mask)·v` with the mask of `ctx`, `[b, h, new, hd]`.
pub(crate) fn attend(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, ctx: &Context) -> Tensor<4> {
    attention(
        q,
        k,
        v,
        Some(ctx.mask.clone()),
        None,
        AttentionModuleOptions::default(),
    )
}
