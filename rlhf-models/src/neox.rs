//! GPT-NeoX (Pythia), module for module against Hugging Face `transformers`'
//! `modeling_gpt_neox.py`: `embed_in` → layers (`input_layernorm`, `attention`
//! (`query_key_value`, `dense`, partial rotary), `post_attention_layernorm`, `mlp`
//! (`dense_h_to_4h`, GELU, `dense_4h_to_h`), parallel residual) → `final_layer_norm` →
//! `embed_out` (untied LM head).
//!
//! Left padding is handled the way the TL;DR reproduction needs: position ids come from the
//! attention mask, and a padded key is never attended to by a real query. A pad query attends to
//! itself only, so pad rows stay finite and never contaminate real ones.

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Device, Int, Tensor, activation};

use crate::cache::{KvCache, LayerCache};
use crate::config::{Architecture, TransformerConfig};
use rlhf_core::{Error, Result};

/// What every layer needs besides its input: the rotary tables for the positions being processed
/// (`[batch, 1, new, rotary_dims]`) and the attention mask (`[batch, heads, new, past + new]`,
/// `true` = blocked).
struct Context {
    cos: Tensor<4>,
    sin: Tensor<4>,
    mask: Tensor<4, Bool>,
}

/// Rotary position embedding on the first `dims` dimensions of each head.
#[derive(Module, Debug)]
pub struct Rotary {
    dims: usize,
    theta: f64,
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
    fn apply(&self, x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
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

/// Self-attention with a fused QKV projection (per head: `[q | k | v]`, as Hugging Face lays it out).
#[derive(Module, Debug)]
pub struct NeoxAttention {
    /// `[d, 3d]` with bias.
    pub query_key_value: Linear,
    /// `[d, d]` with bias.
    pub dense: Linear,
    heads: usize,
    head_dim: usize,
    rotary: Rotary,
}

impl NeoxAttention {
    fn forward(&self, x: Tensor<3>, ctx: &Context, cache: Option<&mut LayerCache>) -> Tensor<3> {
        let [b, t, d] = x.dims();
        let (h, hd) = (self.heads, self.head_dim);
        let qkv = self
            .query_key_value
            .forward(x)
            .reshape([b, t, h, 3 * hd])
            .swap_dims(1, 2); // [b, h, t, 3hd]
        let q = self
            .rotary
            .apply(qkv.clone().narrow(3, 0, hd), &ctx.cos, &ctx.sin);
        let k = self
            .rotary
            .apply(qkv.clone().narrow(3, hd, hd), &ctx.cos, &ctx.sin);
        let v = qkv.narrow(3, 2 * hd, hd);
        let (k, v) = match cache {
            Some(c) => c.append(k, v),
            None => (k, v),
        };
        let out = attention(
            q,
            k,
            v,
            Some(ctx.mask.clone()),
            None,
            AttentionModuleOptions::default(),
        ); // [b, h, t, hd]
        self.dense.forward(out.swap_dims(1, 2).reshape([b, t, d]))
    }
}

/// The feed-forward block.
#[derive(Module, Debug)]
pub struct NeoxMlp {
    /// `[d, f]` with bias.
    pub dense_h_to_4h: Linear,
    /// `[f, d]` with bias.
    pub dense_4h_to_h: Linear,
}

/// One GPT-NeoX layer with parallel residual: `x + attn(ln₁(x)) + mlp(ln₂(x))`.
#[derive(Module, Debug)]
pub struct NeoxLayer {
    /// LayerNorm before attention.
    pub input_layernorm: LayerNorm,
    /// LayerNorm before the MLP.
    pub post_attention_layernorm: LayerNorm,
    /// Attention.
    pub attention: NeoxAttention,
    /// MLP.
    pub mlp: NeoxMlp,
}

impl NeoxLayer {
    fn forward(&self, x: Tensor<3>, ctx: &Context, cache: Option<&mut LayerCache>) -> Tensor<3> {
        let attn = self
            .attention
            .forward(self.input_layernorm.forward(x.clone()), ctx, cache);
        let hidden = self
            .mlp
            .dense_h_to_4h
            .forward(self.post_attention_layernorm.forward(x.clone()));
        let mlp = self.mlp.dense_4h_to_h.forward(activation::gelu(hidden));
        x.add(attn).add(mlp)
    }
}

/// A GPT-NeoX causal language model.
#[derive(Module, Debug)]
pub struct GptNeox {
    /// Token embedding `[vocab, d]`.
    pub embed_in: Embedding,
    /// The layers.
    pub layers: Vec<NeoxLayer>,
    /// Final LayerNorm.
    pub final_layer_norm: LayerNorm,
    /// LM head `[d, vocab]`, no bias.
    pub embed_out: Linear,
}

impl GptNeox {
    /// A randomly initialised model of `config`'s shape (`architecture` must be `gpt_neox`).
    pub fn init(config: &TransformerConfig, device: &Device) -> Result<Self> {
        config.validate()?;
        if config.architecture != Architecture::GptNeox {
            return Err(Error::Config(
                "GptNeox::init needs architecture gpt_neox".into(),
            ));
        }
        let d = config.hidden_size;
        let ln = || LayerNormConfig::new(d).with_epsilon(1e-5).init(device);
        let layers = (0..config.num_hidden_layers)
            .map(|_| NeoxLayer {
                input_layernorm: ln(),
                post_attention_layernorm: ln(),
                attention: NeoxAttention {
                    query_key_value: LinearConfig::new(d, 3 * d).init(device),
                    dense: LinearConfig::new(d, d).init(device),
                    heads: config.num_attention_heads,
                    head_dim: config.head_dim(),
                    rotary: Rotary {
                        dims: config.rotary_dims(),
                        theta: config.rope_theta,
                    },
                },
                mlp: NeoxMlp {
                    dense_h_to_4h: LinearConfig::new(d, config.intermediate_size).init(device),
                    dense_4h_to_h: LinearConfig::new(config.intermediate_size, d).init(device),
                },
            })
            .collect();
        Ok(GptNeox {
            embed_in: EmbeddingConfig::new(config.vocab_size, d).init(device),
            layers,
            final_layer_norm: ln(),
            embed_out: LinearConfig::new(d, config.vocab_size)
                .with_bias(false)
                .init(device),
        })
    }

    /// Hidden states after the final LayerNorm, `[batch, new, d]`.
    ///
    /// - `input_ids`: `[batch, new]` — the tokens to process (the whole sequence, or only the new
    ///   ones when `cache` holds the earlier ones). Pad ids must be valid embedding rows (use
    ///   `SequenceBatch::model_input_ids`).
    /// - `attention_mask`: `[batch, past + new]` of 0/1 over every position so far.
    /// - `cache`: the keys and values of the `past` positions; extended in place.
    pub fn hidden(
        &self,
        input_ids: Tensor<2, Int>,
        attention_mask: Tensor<2>,
        mut cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        let [_, new] = input_ids.dims();
        let [_, total] = attention_mask.dims();
        let past = total - new;
        let device = input_ids.device();
        // Every layer has the same head count and rotary; `init` refuses a model without layers.
        let first = &self.layers[0].attention;
        let positions = attention_mask
            .clone()
            .cumsum(1)
            .sub_scalar(1.0)
            .clamp_min(0.0)
            .narrow(1, past, new);
        let (cos, sin) = first.rotary.tables(positions);
        let ctx = Context {
            cos,
            sin,
            mask: attention_mask_4d(attention_mask, past, new, first.heads, &device),
        };
        let mut x = self.embed_in.forward(input_ids);
        if let Some(c) = cache.as_deref_mut() {
            c.ensure_layers(self.layers.len());
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| c.layer(i));
            x = layer.forward(x, &ctx, layer_cache);
        }
        self.final_layer_norm.forward(x)
    }

    /// Next-token logits `[batch, new, vocab]`.
    pub fn forward(
        &self,
        input_ids: Tensor<2, Int>,
        attention_mask: Tensor<2>,
        cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        self.embed_out
            .forward(self.hidden(input_ids, attention_mask, cache))
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
