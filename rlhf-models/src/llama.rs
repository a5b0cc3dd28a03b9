//! Llama and Qwen2, module for module against Hugging Face `transformers`' `modeling_llama.py`
//! and `modeling_qwen2.py`: `embed_tokens` → layers (`input_layernorm` (RMSNorm), `self_attn`
//! (`q_proj`, `k_proj`, `v_proj`, `o_proj`, grouped-query attention, rotary on the whole head with
//! `rope_theta`), `post_attention_layernorm`, `mlp` (`down_proj(silu(gate_proj(x)) · up_proj(x))`),
//! sequential residual) → `norm` → `lm_head` (or the embedding, when tied).
//!
//! Qwen2 is Llama with a bias on the Q, K and V projections (`attention_bias`). Left padding works
//! as in [`crate::GptNeox`]: positions from the attention mask, padded keys never attended to.

use burn::module::Module;
use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, Linear, LinearConfig, RmsNorm,
    RmsNormConfig,
};
use burn::tensor::{Device, Int, Tensor, activation};

use crate::attention::{Context, Rotary, attend, repeat_kv};
use crate::cache::{KvCache, LayerCache};
use crate::config::{Architecture, TransformerConfig};
use rlhf_core::{Error, Result};

/// Grouped-query self-attention: `heads` query heads share `kv_heads` key/value heads.
#[derive(Module, Debug)]
pub struct LlamaAttention {
    /// `[d, heads·hd]` (bias in Qwen2).
    pub q_proj: Linear,
    /// `[d, kv_heads·hd]` (bias in Qwen2).
    pub k_proj: Linear,
    /// `[d, kv_heads·hd]` (bias in Qwen2).
    pub v_proj: Linear,
    /// `[heads·hd, d]`.
    pub o_proj: Linear,
    pub(crate) heads: usize,
    kv_heads: usize,
    head_dim: usize,
    rotary: Rotary,
}

impl LlamaAttention {
    fn forward(&self, x: Tensor<3>, ctx: &Context, cache: Option<&mut LayerCache>) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let (h, kvh, hd) = (self.heads, self.kv_heads, self.head_dim);
        let split = |y: Tensor<3>, n: usize| y.reshape([b, t, n, hd]).swap_dims(1, 2);
        let q = split(self.q_proj.forward(x.clone()), h);
        let k = split(self.k_proj.forward(x.clone()), kvh);
        let v = split(self.v_proj.forward(x), kvh);
        let q = self.rotary.apply(q, &ctx.cos, &ctx.sin);
        let k = self.rotary.apply(k, &ctx.cos, &ctx.sin);
        // The cache holds the kv_heads keys and values; they are repeated only for the product.
        let (k, v) = match cache {
            Some(c) => c.append(k, v),
            None => (k, v),
        };
        let out = attend(q, repeat_kv(k, h / kvh), repeat_kv(v, h / kvh), ctx);
        self.o_proj
            .forward(out.swap_dims(1, 2).reshape([b, t, h * hd]))
    }
}

/// The SwiGLU feed-forward block: `down_proj(silu(gate_proj(x)) · up_proj(x))`.
#[derive(Module, Debug)]
pub struct LlamaMlp {
    /// `[d, f]`.
    pub gate_proj: Linear,
    /// `[d, f]`.
    pub up_proj: Linear,
    /// `[f, d]`.
    pub down_proj: Linear,
}

impl LlamaMlp {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let gate = activation::silu(self.gate_proj.forward(x.clone()));
        self.down_proj.forward(gate.mul(self.up_proj.forward(x)))
    }
}

/// One decoder layer with sequential residual: `x += attn(norm₁(x)); x += mlp(norm₂(x))`.
#[derive(Module, Debug)]
pub struct LlamaLayer {
    /// RMSNorm before attention.
    pub input_layernorm: RmsNorm,
    /// Attention.
    pub self_attn: LlamaAttention,
    /// RMSNorm before the MLP.
    pub post_attention_layernorm: RmsNorm,
    /// MLP.
    pub mlp: LlamaMlp,
    /// Dropout on both residual branches (off unless configured).
    pub(crate) dropout: Dropout,
}

impl LlamaLayer {
    fn forward(&self, x: Tensor<3>, ctx: &Context, cache: Option<&mut LayerCache>) -> Tensor<3> {
        let attn = self
            .self_attn
            .forward(self.input_layernorm.forward(x.clone()), ctx, cache);
        let x = x.add(self.dropout.forward(attn));
        let mlp = self
            .mlp
            .forward(self.post_attention_layernorm.forward(x.clone()));
        x.add(self.dropout.forward(mlp))
    }
}

/// A Llama / Qwen2 causal language model.
#[derive(Module, Debug)]
pub struct Llama {
    /// Token embedding `[vocab, d]`.
    pub embed_tokens: Embedding,
    /// The layers.
    pub layers: Vec<LlamaLayer>,
    /// Final RMSNorm.
    pub norm: RmsNorm,
    /// LM head `[d, vocab]`; `None` when tied to `embed_tokens` or in a headless backbone.
    pub lm_head: Option<Linear>,
    /// Whether the logits are `hidden · embed_tokensᵀ` (tied embeddings). `false` with no
    /// `lm_head` is the headless backbone of a [`crate::ScalarModel`].
    pub tied: bool,
}

impl Llama {
    /// A randomly initialised model of `config`'s shape (`architecture` must be `llama`).
    pub fn init(config: &TransformerConfig, device: &Device) -> Result<Self> {
        config.validate()?;
        if config.architecture != Architecture::Llama {
            return Err(Error::Config("Llama::init needs architecture llama".into()));
        }
        let d = config.hidden_size;
        let hd = config.head_dim();
        let (h, kvh) = (config.num_attention_heads, config.num_key_value_heads);
        let f = config.intermediate_size;
        let norm = || {
            RmsNormConfig::new(d)
                .with_epsilon(config.norm_eps)
                .init(device)
        };
        let linear =
            |i: usize, o: usize, bias: bool| LinearConfig::new(i, o).with_bias(bias).init(device);
        let layers = (0..config.num_hidden_layers)
            .map(|_| LlamaLayer {
                input_layernorm: norm(),
                self_attn: LlamaAttention {
                    q_proj: linear(d, h * hd, config.attention_bias),
                    k_proj: linear(d, kvh * hd, config.attention_bias),
                    v_proj: linear(d, kvh * hd, config.attention_bias),
                    o_proj: linear(h * hd, d, false),
                    heads: h,
                    kv_heads: kvh,
                    head_dim: hd,
                    rotary: Rotary {
                        dims: config.rotary_dims(),
                        theta: config.rope_theta,
                    },
                },
                post_attention_layernorm: norm(),
                mlp: LlamaMlp {
                    gate_proj: linear(d, f, false),
                    up_proj: linear(d, f, false),
                    down_proj: linear(f, d, false),
                },
                dropout: DropoutConfig::new(config.dropout).init(),
            })
            .collect();
        Ok(Llama {
            embed_tokens: EmbeddingConfig::new(config.vocab_size, d).init(device),
            layers,
            norm: norm(),
            lm_head: (!config.tie_word_embeddings).then(|| linear(d, config.vocab_size, false)),
            tied: config.tie_word_embeddings,
        })
    }

    /// Hidden states after the final norm, `[batch, new, d]`; arguments as for GPT-NeoX
    /// (reached through [`crate::CausalLm::hidden`]).
    pub(crate) fn hidden(
        &self,
        input_ids: Tensor<2, Int>,
        attention_mask: Tensor<2>,
        cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        let [_, new] = input_ids.dims();
        let first = &self.layers[0].self_attn;
        let ctx = Context::new(attention_mask, new, first.heads, &first.rotary);
        let mut x = self.embed_tokens.forward(input_ids);
        for (layer, slot) in self
            .layers
            .iter()
            .zip(KvCache::slots(cache, self.layers.len()))
        {
            x = layer.forward(x, &ctx, slot);
        }
        self.norm.forward(x)
    }

    /// Logits from hidden states: `lm_head`, or `hidden · embed_tokensᵀ` when tied.
    ///
    /// # Panics
    /// On the headless backbone of a scalar model, which has no LM head.
    pub fn lm_head(&self, hidden: Tensor<3>) -> Tensor<3> {
        match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => {
                assert!(self.tied, "the backbone of a scalar model has no LM head");
                let [b, t, d] = hidden.dims();
                let table = self.embed_tokens.weight.val(); // [vocab, d]
                let vocab = table.dims()[0];
                hidden
                    .reshape([b * t, d])
                    .matmul(table.transpose())
                    .reshape([b, t, vocab])
            }
        }
    }
}
