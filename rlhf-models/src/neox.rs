//! GPT-NeoX (Pythia), module for module against Hugging Face `transformers`'
//! `modeling_gpt_neox.py`: `embed_in` → layers (`input_layernorm`, `attention`
//! (`query_key_value`, `dense`, partial rotary), `post_attention_layernorm`, `mlp`
//! (`dense_h_to_4h`, GELU, `dense_4h_to_h`), residual) → `final_layer_norm` →
//! `embed_out` (untied LM head). The residual is parallel (Pythia's `use_parallel_residual`) or
//! sequential: `h = x + attn(ln₁(x)); h + mlp(ln₂(h))`.
//!
//! Left padding is handled the way the TL;DR reproduction needs: position ids come from the
//! attention mask, and a padded key is never attended to by a real query. A pad query attends to
//! itself only, so pad rows stay finite and never contaminate real ones.

use burn::module::Module;
use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear,
    LinearConfig,
};
use burn::tensor::{Device, Int, Tensor};

use crate::attention::{Context, Rotary, attend};
use crate::cache::{KvCache, LayerCache};
use crate::config::{Architecture, TransformerConfig};
use crate::input::Packed;
use crate::matmul::linear_layer;
use rlhf_core::{Error, Result};

/// Self-attention with a fused QKV projection (per head: `[q | k | v]`, as Hugging Face lays it out).
#[derive(Module, Debug)]
pub struct NeoxAttention {
    /// `[d, 3d]` with bias.
    pub query_key_value: Linear,
    /// `[d, d]` with bias.
    pub dense: Linear,
    pub(crate) heads: usize,
    head_dim: usize,
    pub(crate) rotary: Rotary,
}

impl NeoxAttention {
    fn forward(&self, x: Tensor<3>, ctx: &Context, cache: Option<&mut LayerCache>) -> Tensor<3> {
        let [b, t, d] = x.dims();
        let (h, hd) = (self.heads, self.head_dim);
        let qkv = linear_layer(&self.query_key_value, x)
            .reshape([b, t, h, 3 * hd])
            .swap_dims(1, 2); // [b, h, t, 3hd]
        let (q, k, v) = self.rotary.rotate_and_cache(
            qkv.clone().narrow(3, 0, hd),
            qkv.clone().narrow(3, hd, hd),
            qkv.narrow(3, 2 * hd, hd),
            ctx,
            cache,
        );
        let out = attend(q, k, v, ctx); // [b, h, t, hd]
        linear_layer(&self.dense, out.swap_dims(1, 2).reshape([b, t, d]))
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

/// One GPT-NeoX layer: with parallel residual `x + attn(ln₁(x)) + mlp(ln₂(x))`, with sequential
/// residual `h + mlp(ln₂(h))` where `h = x + attn(ln₁(x))`.
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
    /// `hidden_dropout` on both residual branches (off unless configured).
    pub(crate) dropout: Dropout,
    /// `use_parallel_residual`.
    pub(crate) parallel: bool,
}

impl NeoxLayer {
    fn forward(&self, x: Tensor<3>, ctx: &Context, cache: Option<&mut LayerCache>) -> Tensor<3> {
        let attn = self
            .attention
            .forward(self.input_layernorm.forward(x.clone()), ctx, cache);
        let mlp = |input: Tensor<3>| {
            let hidden = linear_layer(
                &self.mlp.dense_h_to_4h,
                self.post_attention_layernorm.forward(input),
            );
            let out = linear_layer(&self.mlp.dense_4h_to_h, crate::gelu::gelu(hidden));
            self.dropout.forward(out)
        };
        if self.parallel {
            let mlp = mlp(x.clone());
            x.add(self.dropout.forward(attn)).add(mlp)
        } else {
            let h = x.add(self.dropout.forward(attn));
            let mlp = mlp(h.clone());
            h.add(mlp)
        }
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
    /// LM head `[d, vocab]`, no bias; `None` in the backbone of a [`crate::ScalarModel`].
    pub embed_out: Option<Linear>,
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
        let ln = || {
            LayerNormConfig::new(d)
                .with_epsilon(config.norm_eps)
                .init(device)
        };
        let layers = (0..config.num_hidden_layers)
            .map(|_| NeoxLayer {
                input_layernorm: ln(),
                post_attention_layernorm: ln(),
                attention: NeoxAttention {
                    query_key_value: LinearConfig::new(d, 3 * d).init(device),
                    dense: LinearConfig::new(d, d).init(device),
                    heads: config.num_attention_heads,
                    head_dim: config.head_dim(),
                    rotary: Rotary::new(config),
                },
                mlp: NeoxMlp {
                    dense_h_to_4h: LinearConfig::new(d, config.intermediate_size).init(device),
                    dense_4h_to_h: LinearConfig::new(config.intermediate_size, d).init(device),
                },
                dropout: DropoutConfig::new(config.dropout).init(),
                parallel: config.use_parallel_residual,
            })
            .collect();
        Ok(GptNeox {
            embed_in: EmbeddingConfig::new(config.vocab_size, d).init(device),
            layers,
            final_layer_norm: ln(),
            embed_out: Some(
                LinearConfig::new(d, config.vocab_size)
                    .with_bias(false)
                    .init(device),
            ),
        })
    }

    /// Hidden states after the final LayerNorm, `[batch, new, d]`.
    ///
    /// - `input_ids`: `[batch, new]` — the tokens to process (the whole sequence, or only the new
    ///   ones when `cache` holds the earlier ones), every one a valid embedding row: callers go
    ///   through [`crate::TokenInput`] ([`crate::CausalLm::hidden`]).
    /// - `attention_mask`: `[batch, past + new]` of 0/1 over every position so far.
    /// - `packed`: the sequences of packed rows ([`crate::TokenInput::packed`]), if any.
    /// - `longest`: the real tokens of its longest row ([`crate::TokenInput::longest`]).
    /// - `cache`: the keys and values of the `past` positions; extended in place.
    pub(crate) fn hidden(
        &self,
        input_ids: Tensor<2, Int>,
        attention_mask: Tensor<2>,
        packed: Option<&Packed>,
        longest: usize,
        cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        let [_, new] = input_ids.dims();
        // Every layer has the same head count and rotary; `init` refuses a model without layers.
        let first = &self.layers[0].attention;
        let (keys, slots) = KvCache::slots(cache, self.layers.len(), new);
        let ctx = Context::new(
            attention_mask,
            packed,
            new,
            first.heads,
            Some(&first.rotary),
            None,
            longest,
            keys,
        );
        let mut x = self.embed_in.forward(input_ids);
        for (layer, slot) in self.layers.iter().zip(slots) {
            x = layer.forward(x, &ctx, slot);
        }
        self.final_layer_norm.forward(x)
    }

    /// Logits from hidden states: `embed_out`.
    ///
    /// # Panics
    /// On the headless backbone of a scalar model, which has no LM head.
    pub fn lm_head(&self, hidden: Tensor<3>) -> Tensor<3> {
        let head = self.embed_out.as_ref();
        linear_layer(
            head.expect("the backbone of a scalar model has no LM head"),
            hidden,
        )
    }
}
