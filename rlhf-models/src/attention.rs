//! What the families share: rotary position embeddings (with their scalings), the attention mask
//! (causal, padded keys blocked, optionally a sliding window or packed sequences kept apart), and
//! scaled dot-product attention
//! over (possibly cached, possibly grouped) keys.

use burn::module::Module;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Device, Int, Tensor};

use crate::cache::LayerCache;
use crate::config::{RopeScaling, TransformerConfig};
use crate::input::Packed;
use crate::matmul::matmul;
use crate::precision::like;
use crate::softmax::masked_softmax;

/// `cos` and `sin`, each `[batch, 1, positions, rotary_dims]`.
pub(crate) type Tables = (Tensor<4>, Tensor<4>);

/// What every layer needs besides its input: the positions being processed (`[batch, new]`,
/// from the attention mask), their rotary tables, and the attention mask (`[batch, heads, new,
/// keys]`, `true` = blocked; `keys` is the KV cache's capacity, of which the positions after
/// `past + new` are not written yet and blocked like padding).
pub(crate) struct Context {
    pub(crate) positions: Tensor<2>,
    pub(crate) rope: Option<Tables>,
    pub(crate) mask: Tensor<4, Bool>,
}

impl Context {
    /// The context of `new` positions after `past` cached ones: positions come from the attention
    /// mask (`cumsum − 1`, so a left-padded row's first real token is position 0), as in the
    /// TL;DR reproduction and Hugging Face's generation with left padding. `rotary` is `None` for
    /// learned positions (GPT-2); `window` is a sliding window of attention; `longest` is the
    /// number of real tokens of the longest row so far (one more than the largest position), on
    /// which dynamic NTK and LongRoPE frequencies depend; `keys` is the number of key positions
    /// attention reads (at least `past + new`). With `packed` sequences in a row
    /// ([`crate::TokenInput::packed`]; no past), the positions are each sequence's own and a
    /// token attends only to its sequence's.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        attention_mask: Tensor<2>,
        packed: Option<&Packed>,
        new: usize,
        heads: usize,
        rotary: Option<&Rotary>,
        window: Option<usize>,
        longest: usize,
        keys: usize,
    ) -> Self {
        let [batch, total] = attention_mask.dims();
        let past = total - new;
        let device = attention_mask.device();
        let positions = match packed {
            Some(p) => p.positions.clone().narrow(1, past, new),
            None => positions_from_mask(attention_mask.clone()).narrow(1, past, new),
        };
        let rope = rotary
            .filter(|r| r.dims > 0)
            .map(|r| r.tables(positions.clone(), longest));
        let key_mask = if keys > total {
            let unwritten = Tensor::zeros([batch, keys - total], &device);
            Tensor::cat(vec![attention_mask, unwritten], 1)
        } else {
            attention_mask
        };
        Context {
            positions,
            rope,
            mask: attention_mask_4d(
                key_mask,
                packed.map(|p| p.sequences.clone()),
                past,
                new,
                heads,
                window,
                &device,
            ),
        }
    }
}

/// `cumsum(mask) − 1`, clamped at 0: each real token's position among its row's real tokens
/// (pads before the first real token get 0, pads after a real token repeat its position).
fn positions_from_mask(attention_mask: Tensor<2>) -> Tensor<2> {
    attention_mask.cumsum(1).sub_scalar(1.0).clamp_min(0.0)
}

/// How the inverse frequencies are obtained.
#[derive(Debug, Clone)]
pub(crate) enum Frequencies {
    /// Fixed inverse frequencies (default, linear, llama3).
    Fixed(Vec<f32>),
    /// Dynamic NTK: the base grows with the longest row of the forward pass.
    Dynamic {
        theta: f64,
        factor: f64,
        max_positions: usize,
    },
    /// LongRoPE: the short or the long inverse frequencies by the longest row so far, and a
    /// scale on `cos` and `sin`.
    LongRope {
        short: Vec<f32>,
        long: Vec<f32>,
        original_max: usize,
        scale: f32,
    },
}

/// Rotary position embedding on the first `dims` dimensions of each head.
#[derive(Module, Debug)]
pub struct Rotary {
    pub(crate) dims: usize,
    #[module(skip)]
    pub(crate) frequencies: Frequencies,
}

impl Rotary {
    /// The rotary of `config` (its `rotary_dims`, `rope_theta` and `rope_scaling`), with the
    /// inverse frequencies `transformers`' `modeling_rope_utils.py` computes.
    pub(crate) fn new(config: &TransformerConfig) -> Self {
        let dims = config.rotary_dims();
        let theta = config.rope_theta;
        let default: Vec<f64> = (0..dims / 2)
            .map(|i| 1.0 / theta.powf((2 * i) as f64 / dims as f64))
            .collect();
        let f32s = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect();
        let frequencies = match &config.rope_scaling {
            RopeScaling::Default => Frequencies::Fixed(f32s(default)),
            RopeScaling::Linear { factor } => {
                Frequencies::Fixed(f32s(default.iter().map(|f| f / factor).collect()))
            }
            RopeScaling::Dynamic { factor } => Frequencies::Dynamic {
                theta,
                factor: *factor,
                max_positions: config.max_position_embeddings,
            },
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let old = *original_max_position_embeddings as f64;
                let (low_wavelen, high_wavelen) = (old / low_freq_factor, old / high_freq_factor);
                Frequencies::Fixed(f32s(
                    default
                        .iter()
                        .map(|&f| {
                            let wavelen = 2.0 * std::f64::consts::PI / f;
                            if wavelen < high_wavelen {
                                f
                            } else if wavelen > low_wavelen {
                                f / factor
                            } else {
                                let smooth = (old / wavelen - low_freq_factor)
                                    / (high_freq_factor - low_freq_factor);
                                (1.0 - smooth) * f / factor + smooth * f
                            }
                        })
                        .collect(),
                ))
            }
            RopeScaling::Longrope {
                short_factor,
                long_factor,
                original_max_position_embeddings,
                attention_factor,
            } => {
                let scaled = |factors: &[f64]| {
                    f32s(default.iter().zip(factors).map(|(f, s)| f / s).collect())
                };
                Frequencies::LongRope {
                    short: scaled(short_factor),
                    long: scaled(long_factor),
                    original_max: *original_max_position_embeddings,
                    scale: *attention_factor as f32,
                }
            }
        };
        Rotary { dims, frequencies }
    }

    /// Which LongRoPE factors a sequence whose longest row has `longest` real tokens uses
    /// (`true`: the long ones); `None` without LongRoPE. A [`crate::KvCache`] built under the
    /// other factors is re-encoded, as `transformers`' Phi-3 does in generation.
    pub(crate) fn long_factors(&self, longest: usize) -> Option<bool> {
        match &self.frequencies {
            Frequencies::LongRope { original_max, .. } => Some(longest > *original_max),
            _ => None,
        }
    }

    /// The tables of `positions` `[batch, new]` in a sequence whose longest row has `longest`
    /// real tokens (`transformers`' `max(position_ids) + 1`).
    fn tables(&self, positions: Tensor<2>, longest: usize) -> Tables {
        let half = self.dims / 2;
        let (inv, scale) = match &self.frequencies {
            Frequencies::Fixed(inv) => (inv.clone(), 1.0),
            Frequencies::Dynamic {
                theta,
                factor,
                max_positions,
            } => {
                // base = θ·(factor·L/max − (factor − 1))^(d/(d−2)), L at least max
                let d = self.dims as f64;
                let length = longest.max(*max_positions) as f64;
                let base = theta
                    * (factor * length / *max_positions as f64 - (factor - 1.0))
                        .powf(d / (d - 2.0));
                let inv = (0..half)
                    .map(|i| (1.0 / base.powf((2 * i) as f64 / d)) as f32)
                    .collect();
                (inv, 1.0)
            }
            Frequencies::LongRope {
                short,
                long,
                original_max,
                scale,
            } => {
                let inv = if longest > *original_max { long } else { short };
                (inv.clone(), *scale)
            }
        };
        let [batch, seq] = positions.dims();
        let inv = rlhf_core::host::tensor_from_f32(inv, [1, 1, half], &positions.device());
        let freqs = positions.reshape([batch, seq, 1]).mul(inv); // [b, t, half]
        let emb = Tensor::cat(vec![freqs.clone(), freqs], 2).reshape([batch, 1, seq, self.dims]);
        if scale == 1.0 {
            (emb.clone().cos(), emb.sin())
        } else {
            (
                emb.clone().cos().mul_scalar(scale),
                emb.sin().mul_scalar(scale),
            )
        }
    }

    /// Applies the rotation to `x` `[batch, heads, seq, head_dim]`.
    pub(crate) fn apply(&self, x: Tensor<4>, (cos, sin): &Tables) -> Tensor<4> {
        if self.dims == 0 {
            return x;
        }
        #[cfg(feature = "flex")]
        if crate::rotary::pass_runs(&x) {
            return crate::rotary::rotate(x, cos.clone(), sin.clone(), self.dims);
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
        // the tables are f32; a bf16 model rotates in its own dtype (as `transformers` casts them)
        let (cos, sin) = (like(cos.clone(), &x), like(sin.clone(), &x));
        let rot = rot.mul(cos).add(rotated_half.mul(sin));
        if self.dims == hd {
            rot
        } else {
            Tensor::cat(vec![rot, x.narrow(3, self.dims, hd - self.dims)], 3).reshape([b, h, t, hd])
        }
    }

    /// Rotates the new queries and keys with the tables of `ctx` and extends `cache` (which
    /// holds rotated keys): returns the queries and every key and value so far.
    pub(crate) fn rotate_and_cache(
        &self,
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
        ctx: &Context,
        cache: Option<&mut LayerCache>,
    ) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
        let (q, k) = match &ctx.rope {
            Some(tables) => (self.apply(q, tables), self.apply(k, tables)),
            None => (q, k),
        };
        let (k, v) = match cache {
            Some(c) => c.append(k, v),
            None => (k, v),
        };
        (q, k, v)
    }
}

/// The boolean attention mask `[batch, heads, new, past + new]`, `true` where attention is
/// *blocked*: future keys (causal), padded keys, keys `window` or more positions before the query
/// (a sliding window: `transformers` keeps keys with `kv_idx > q_idx − sliding_window`; positions
/// are counted among the row's real tokens, which for left- or right-padded rows is the same),
/// except that every position may attend to itself (so a pad query's softmax is over one finite
/// score instead of none). With `sequences` (`[batch, past + new]`, each token's sequence number
/// in a packed row), keys of another sequence are blocked too.
pub fn attention_mask_4d(
    attention_mask: Tensor<2>,
    sequences: Option<Tensor<2>>,
    past: usize,
    new: usize,
    heads: usize,
    window: Option<usize>,
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
        .clone()
        .lower_elem(0.5)
        .reshape([b, 1, total])
        .expand([b, new, total]);
    let mut blocked = padded_key.bool_or(future.reshape([1, new, total]).expand([b, new, total]));
    if let Some(window) = window {
        let (query_pos, key_pos) = by_query_and_key(positions_from_mask(attention_mask), past, new);
        let too_old = query_pos.sub(key_pos).greater_equal_elem(window as f64);
        blocked = blocked.bool_or(too_old);
    }
    if let Some(sequences) = sequences {
        let (query, key) = by_query_and_key(sequences, past, new);
        blocked = blocked.bool_or(query.not_equal(key));
    }
    let blocked = blocked.bool_and(
        is_self
            .reshape([1, new, total])
            .expand([b, new, total])
            .bool_not(),
    );
    blocked
        .reshape([b, 1, new, total])
        .expand([b, heads, new, total])
}

/// A value per key position, `x` (`[batch, keys]`), as `[batch, new, keys]` twice: each query's
/// (positions `past..past + new`) along its row, and each key's down its column.
fn by_query_and_key(x: Tensor<2>, past: usize, new: usize) -> (Tensor<3>, Tensor<3>) {
    let [b, total] = x.dims();
    let query = x
        .clone()
        .narrow(1, past, new)
        .reshape([b, new, 1])
        .expand([b, new, total]);
    let key = x.reshape([b, 1, total]).expand([b, new, total]);
    (query, key)
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

/// Scores per head above which burn-flex without autodiff tiles attention (flash attention)
/// instead of holding every score: burn-flex 0.22's `NAIVE_SCORE_BUDGET`.
const FLEX_TILED_ABOVE: usize = 256 * 1024;

/// `softmax(q·kᵀ/√d + mask)·v` with the mask of `ctx`, `[b, h, new, hd]`.
pub(crate) fn attend(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, ctx: &Context) -> Tensor<4> {
    let device = q.device();
    let [.., new, hd] = q.dims();
    let keys = k.dims()[2];
    // burn-flex with autodiff computes attention from burn's ops, one pass over the scores at a
    // time (see `crate::softmax`); without autodiff its own attention calls libm's `expf` per
    // score. In f32 the pass is faster on both. Other dtypes keep burn's attention, and so does
    // long attention without autodiff, which burn-flex tiles rather than hold every score.
    let tiled = !device.is_autodiff() && new * keys > FLEX_TILED_ABOVE;
    if crate::softmax::pass_runs(&device, q.dtype()) && !tiled {
        let scale = (1.0 / (hd as f64).sqrt()) as f32;
        let scores = matmul(q, k.swap_dims(2, 3));
        return matmul(masked_softmax(scores, ctx.mask.clone(), scale), v);
    }
    let mask = backend_mask(ctx.mask.clone(), &device);
    attention(q, k, v, Some(mask), None, AttentionModuleOptions::default())
}

/// burn's attention mask is `true` where attention is blocked, and burn's own backends read it so.
/// burn-tch 0.22.1 hands it unchanged to PyTorch's `scaled_dot_product_attention`, whose boolean
/// mask means the opposite (`true` where attention is allowed): every logit came out wrong (by up
/// to 6 on the parity fixtures). On a LibTorch device without autodiff the mask is inverted here,
/// so that it means "blocked" there too.
fn backend_mask(mask: Tensor<4, Bool>, device: &Device) -> Tensor<4, Bool> {
    // with autodiff, burn computes attention from its own ops (its fallback), which read the
    // mask as burn does
    if !device.is_autodiff() && rlhf_core::device::is_libtorch(device) {
        mask.bool_not()
    } else {
        mask
    }
}
