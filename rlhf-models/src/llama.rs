//! Llama, Qwen2, Qwen3, Mistral and Phi-3, module for module against Hugging Face
//! `transformers`' `modeling_llama.py`, `modeling_qwen2.py`, `modeling_qwen3.py`,
//! `modeling_mistral.py` and `modeling_phi3.py`: `embed_tokens` → layers (`input_layernorm`
//! (RMSNorm), `self_attn` (`q_proj`, `k_proj`, `v_proj`, `o_proj`, grouped-query attention,
//! rotary with `rope_theta` and the config's scaling), `post_attention_layernorm`, `mlp`
//! (`down_proj(silu(gate_proj(x)) · up_proj(x))`), sequential residual) → `norm` → `lm_head`
//! (or the embedding, when tied).
//!
//! What sets the others apart from Llama, each an option of the same modules:
//!
//! | family  | difference                                                                  |
//! |---------|-----------------------------------------------------------------------------|
//! | Qwen2   | a bias on `q_proj`, `k_proj`, `v_proj` (`attention_bias`)                   |
//! | Qwen3   | `q_norm`, `k_norm`: RMSNorm over each head of the queries and keys, before the rotary; `head_dim` of its own |
//! | Mistral | `sliding_window` in the attention mask; `head_dim` of its own               |
//! | Phi-3   | fused `qkv_proj` (`[q | k | v]`) and `gate_up_proj` (`[gate | up]`), partial rotary, `longrope`, `sliding_window` |
//!
//! Left padding works as in [`crate::GptNeox`]: positions from the attention mask, padded keys
//! never attended to.

use burn::module::Module;
use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, Linear, LinearConfig, RmsNorm,
    RmsNormConfig,
};
use burn::tensor::{Device, Int, Tensor, activation};

use crate::attention::{Context, Rotary, attend, repeat_kv};
use crate::cache::{KvCache, LayerCache};
use crate::config::{Architecture, TransformerConfig};
use crate::input::Packed;
use crate::lm::tied_head;
use crate::matmul::linear_layer;
use rlhf_core::{Error, Result};

/// Grouped-query self-attention: `heads` query heads share `kv_heads` key/value heads. Either
/// `q_proj`, `k_proj` and `v_proj` are there, or Phi-3's `qkv_proj`.
#[derive(Module, Debug)]
pub struct LlamaAttention {
    /// `[d, heads·hd]` (bias in Qwen2).
    pub q_proj: Option<Linear>,
    /// `[d, kv_heads·hd]` (bias in Qwen2).
    pub k_proj: Option<Linear>,
    /// `[d, kv_heads·hd]` (bias in Qwen2).
    pub v_proj: Option<Linear>,
    /// Phi-3: `[d, (heads + 2·kv_heads)·hd]`, the queries, keys and values side by side.
    pub qkv_proj: Option<Linear>,
    /// `[heads·hd, d]`.
    pub o_proj: Linear,
    /// Qwen3: RMSNorm `[hd]` of each query head.
    pub q_norm: Option<RmsNorm>,
    /// Qwen3: RMSNorm `[hd]` of each key head.
    pub k_norm: Option<RmsNorm>,
    pub(crate) heads: usize,
    kv_heads: usize,
    head_dim: usize,
    pub(crate) rotary: Rotary,
}

impl LlamaAttention {
    fn forward(&self, x: Tensor<3>, ctx: &Context, cache: Option<&mut LayerCache>) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let (h, kvh, hd) = (self.heads, self.kv_heads, self.head_dim);
        let (q, k, v) = match &self.qkv_proj {
            Some(fused) => {
                let qkv = linear_layer(fused, x);
                (
                    qkv.clone().narrow(2, 0, h * hd),
                    qkv.clone().narrow(2, h * hd, kvh * hd),
                    qkv.narrow(2, (h + kvh) * hd, kvh * hd),
                )
            }
            None => {
                let proj = |p: &Option<Linear>, x: Tensor<3>| {
                    let p = p.as_ref();
                    linear_layer(
                        p.expect("init builds q_proj, k_proj and v_proj unless qkv_proj"),
                        x,
                    )
                };
                (
                    proj(&self.q_proj, x.clone()),
                    proj(&self.k_proj, x.clone()),
                    proj(&self.v_proj, x),
                )
            }
        };
        // [b, t, n·hd] → [b, t, n, hd], Qwen3's per-head norm, → [b, n, t, hd]
        let heads = |y: Tensor<3>, n: usize, norm: &Option<RmsNorm>| {
            let y = y.reshape([b, t, n, hd]);
            match norm {
                Some(norm) => norm.forward(y),
                None => y,
            }
            .swap_dims(1, 2)
        };
        let q = heads(q, h, &self.q_norm);
        let k = heads(k, kvh, &self.k_norm);
        let v = heads(v, kvh, &None);
        // The cache holds the kv_heads keys and values; they are repeated only for the product.
        let (q, k, v) = self.rotary.rotate_and_cache(q, k, v, ctx, cache);
        let out = attend(q, repeat_kv(k, h / kvh), repeat_kv(v, h / kvh), ctx);
        linear_layer(&self.o_proj, out.swap_dims(1, 2).reshape([b, t, h * hd]))
    }
}

/// The SwiGLU feed-forward block: `down_proj(silu(gate_proj(x)) · up_proj(x))`. Either
/// `gate_proj` and `up_proj` are there, or Phi-3's `gate_up_proj`.
#[derive(Module, Debug)]
pub struct LlamaMlp {
    /// `[d, f]`.
    pub gate_proj: Option<Linear>,
    /// `[d, f]`.
    pub up_proj: Option<Linear>,
    /// Phi-3: `[d, 2f]`, the gate then the up projection.
    pub gate_up_proj: Option<Linear>,
    /// `[f, d]`.
    pub down_proj: Linear,
}

impl LlamaMlp {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let (gate, up) = match &self.gate_up_proj {
            Some(fused) => {
                let y = linear_layer(fused, x);
                let f = y.dims()[2] / 2;
                (y.clone().narrow(2, 0, f), y.narrow(2, f, f))
            }
            None => {
                let proj = |p: &Option<Linear>, x: Tensor<3>| {
                    let p = p.as_ref();
                    linear_layer(
                        p.expect("init builds gate_proj and up_proj unless gate_up_proj"),
                        x,
                    )
                };
                (proj(&self.gate_proj, x.clone()), proj(&self.up_proj, x))
            }
        };
        linear_layer(&self.down_proj, activation::silu(gate).mul(up))
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

/// A Llama, Qwen2, Qwen3, Mistral or Phi-3 causal language model.
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
    /// Mistral's and Phi-3's sliding window of attention.
    #[module(skip)]
    pub(crate) sliding_window: Option<usize>,
}

impl Llama {
    /// A randomly initialised model of `config`'s shape (`architecture` one of `llama`, `qwen2`,
    /// `qwen3`, `mistral`, `phi3`).
    pub fn init(config: &TransformerConfig, device: &Device) -> Result<Self> {
        config.validate()?;
        let arch = config.architecture;
        if !arch.is_llama_like() {
            return Err(Error::Config(format!(
                "Llama::init builds llama, qwen2, qwen3, mistral or phi3, not {}",
                arch.model_type()
            )));
        }
        let fused = arch == Architecture::Phi3;
        let d = config.hidden_size;
        let hd = config.head_dim();
        let (h, kvh) = (config.num_attention_heads, config.num_key_value_heads);
        let f = config.intermediate_size;
        let norm = |width: usize| {
            RmsNormConfig::new(width)
                .with_epsilon(config.norm_eps)
                .init(device)
        };
        let linear =
            |i: usize, o: usize, bias: bool| LinearConfig::new(i, o).with_bias(bias).init(device);
        let separate = |o: usize| (!fused).then(|| linear(d, o, config.attention_bias));
        let qk_norm = || (arch == Architecture::Qwen3).then(|| norm(hd));
        let layers = (0..config.num_hidden_layers)
            .map(|_| LlamaLayer {
                input_layernorm: norm(d),
                self_attn: LlamaAttention {
                    q_proj: separate(h * hd),
                    k_proj: separate(kvh * hd),
                    v_proj: separate(kvh * hd),
                    qkv_proj: fused.then(|| linear(d, (h + 2 * kvh) * hd, false)),
                    o_proj: linear(h * hd, d, false),
                    q_norm: qk_norm(),
                    k_norm: qk_norm(),
                    heads: h,
                    kv_heads: kvh,
                    head_dim: hd,
                    rotary: Rotary::new(config),
                },
                post_attention_layernorm: norm(d),
                mlp: LlamaMlp {
                    gate_proj: (!fused).then(|| linear(d, f, false)),
                    up_proj: (!fused).then(|| linear(d, f, false)),
                    gate_up_proj: fused.then(|| linear(d, 2 * f, false)),
                    down_proj: linear(f, d, false),
                },
                dropout: DropoutConfig::new(config.dropout).init(),
            })
            .collect();
        Ok(Llama {
            embed_tokens: EmbeddingConfig::new(config.vocab_size, d).init(device),
            layers,
            norm: norm(d),
            lm_head: (!config.tie_word_embeddings).then(|| linear(d, config.vocab_size, false)),
            tied: config.tie_word_embeddings,
            sliding_window: config.sliding_window,
        })
    }

    /// Hidden states after the final norm, `[batch, new, d]`; arguments as for GPT-NeoX
    /// (reached through [`crate::CausalLm::hidden`]).
    pub(crate) fn hidden(
        &self,
        input_ids: Tensor<2, Int>,
        attention_mask: Tensor<2>,
        packed: Option<&Packed>,
        longest: usize,
        cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        let [_, new] = input_ids.dims();
        let first = &self.layers[0].self_attn;
        let (keys, slots) = KvCache::slots(cache, self.layers.len(), new);
        let ctx = Context::new(
            attention_mask,
            packed,
            new,
            first.heads,
            Some(&first.rotary),
            self.sliding_window,
            longest,
            keys,
        );
        let mut x = self.embed_tokens.forward(input_ids);
        for (layer, slot) in self.layers.iter().zip(slots) {
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
            Some(head) => linear_layer(head, hidden),
            None => {
                assert!(self.tied, "the backbone of a scalar model has no LM head");
                tied_head(hidden, self.embed_tokens.weight.val())
            }
        }
    }
}
