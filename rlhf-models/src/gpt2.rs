//! GPT-2, module for module against Hugging Face `transformers`' `modeling_gpt2.py`: `wte` +
//! `wpe` (learned absolute positions) → blocks `h` (`ln_1`, `attn` (`c_attn`, `c_proj`), `ln_2`,
//! `mlp` (`c_fc`, `gelu_new`, `c_proj`), sequential residual) → `ln_f` → the LM head (tied to `wte`
//! unless the config unties it).
//!
//! The projections are [`Conv1D`]s, whose weights Hugging Face stores `[in, out]` (a `Linear`'s
//! are `[out, in]`). Position ids come from the attention mask like every family's (`cumsum − 1`,
//! so a left-padded row starts at position 0), and index `wpe`.

use burn::module::{Module, Param};
use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, Initializer, LayerNorm, LayerNormConfig,
    Linear, LinearConfig,
};
use burn::tensor::{Device, Int, Tensor};

use crate::attention::{Context, attend};
use crate::cache::{KvCache, LayerCache};
use crate::config::{Architecture, TransformerConfig};
use crate::input::Packed;
use crate::lm::tied_head;
use crate::matmul::{linear, linear_layer};
use rlhf_core::{Error, Result};

/// `transformers.pytorch_utils.Conv1D`: `x·W + b` with `W` stored `[in, out]`, the layout of
/// GPT-2's checkpoints. Named after it so that burn-store's PyTorch adapters, which transpose the
/// weights of a `Linear`, leave it as it is.
#[derive(Module, Debug)]
pub struct Conv1D {
    /// `[in, out]`.
    pub weight: Param<Tensor<2>>,
    /// `[out]`.
    pub bias: Param<Tensor<1>>,
}

impl Conv1D {
    /// `N(0, 0.02)` weights and zero biases, as GPT-2 initialises them.
    fn new(d_in: usize, d_out: usize, device: &Device) -> Self {
        Conv1D {
            weight: Initializer::Normal {
                mean: 0.0,
                std: 0.02,
            }
            .init([d_in, d_out], device),
            bias: Initializer::Zeros.init([d_out], device),
        }
    }

    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        linear(x, self.weight.val(), Some(self.bias.val()))
    }
}

/// `gelu_new` (and `gelu_pytorch_tanh`): `½x(1 + tanh(√(2/π)(x + 0.044715x³)))`, with the cube
/// as a product (a power of a negative base is not defined on every backend).
fn gelu_new(x: Tensor<3>) -> Tensor<3> {
    let sqrt_2_over_pi = (2.0 / std::f64::consts::PI).sqrt();
    let cube = x.clone().mul(x.clone()).mul(x.clone());
    let inner = x
        .clone()
        .add(cube.mul_scalar(0.044715))
        .mul_scalar(sqrt_2_over_pi);
    x.mul(inner.tanh().add_scalar(1.0)).mul_scalar(0.5)
}

/// Self-attention with a fused QKV projection (`[q | k | v]`, each `d` wide).
#[derive(Module, Debug)]
pub struct Gpt2Attention {
    /// `[d, 3d]` with bias.
    pub c_attn: Conv1D,
    /// `[d, d]` with bias.
    pub c_proj: Conv1D,
    pub(crate) heads: usize,
}

impl Gpt2Attention {
    fn forward(&self, x: Tensor<3>, ctx: &Context, cache: Option<&mut LayerCache>) -> Tensor<3> {
        let [b, t, d] = x.dims();
        let (h, hd) = (self.heads, d / self.heads);
        let qkv = self.c_attn.forward(x);
        let split = |i: usize| {
            qkv.clone()
                .narrow(2, i * d, d)
                .reshape([b, t, h, hd])
                .swap_dims(1, 2)
        };
        let (q, k, v) = (split(0), split(1), split(2));
        let (k, v) = match cache {
            Some(c) => c.append(k, v),
            None => (k, v),
        };
        let out = attend(q, k, v, ctx);
        self.c_proj.forward(out.swap_dims(1, 2).reshape([b, t, d]))
    }
}

/// The feed-forward block: `c_proj(gelu_new(c_fc(x)))`.
#[derive(Module, Debug)]
pub struct Gpt2Mlp {
    /// `[d, f]` with bias.
    pub c_fc: Conv1D,
    /// `[f, d]` with bias.
    pub c_proj: Conv1D,
}

/// One block: `x += attn(ln_1(x)); x += mlp(ln_2(x))`.
#[derive(Module, Debug)]
pub struct Gpt2Block {
    /// LayerNorm before attention.
    pub ln_1: LayerNorm,
    /// Attention.
    pub attn: Gpt2Attention,
    /// LayerNorm before the MLP.
    pub ln_2: LayerNorm,
    /// MLP.
    pub mlp: Gpt2Mlp,
    /// `resid_pdrop` on both residual branches (off unless configured).
    pub(crate) dropout: Dropout,
}

impl Gpt2Block {
    fn forward(&self, x: Tensor<3>, ctx: &Context, cache: Option<&mut LayerCache>) -> Tensor<3> {
        let attn = self.attn.forward(self.ln_1.forward(x.clone()), ctx, cache);
        let x = x.add(self.dropout.forward(attn));
        let hidden = gelu_new(self.mlp.c_fc.forward(self.ln_2.forward(x.clone())));
        x.add(self.dropout.forward(self.mlp.c_proj.forward(hidden)))
    }
}

/// A GPT-2 causal language model.
#[derive(Module, Debug)]
pub struct Gpt2 {
    /// Token embedding `[vocab, d]`.
    pub wte: Embedding,
    /// Position embedding `[n_positions, d]`.
    pub wpe: Embedding,
    /// The blocks.
    pub h: Vec<Gpt2Block>,
    /// Final LayerNorm.
    pub ln_f: LayerNorm,
    /// LM head `[d, vocab]` when untied; `None` when tied to `wte` or in a headless backbone.
    pub lm_head: Option<Linear>,
    /// Whether the logits are `hidden · wteᵀ` (GPT-2's default). `false` with no `lm_head` is
    /// the headless backbone of a [`crate::ScalarModel`].
    pub tied: bool,
}

impl Gpt2 {
    /// A randomly initialised model of `config`'s shape (`architecture` must be `gpt2`).
    pub fn init(config: &TransformerConfig, device: &Device) -> Result<Self> {
        config.validate()?;
        if config.architecture != Architecture::Gpt2 {
            return Err(Error::Config("Gpt2::init needs architecture gpt2".into()));
        }
        let d = config.hidden_size;
        let ln = || {
            LayerNormConfig::new(d)
                .with_epsilon(config.norm_eps)
                .init(device)
        };
        let h = (0..config.num_hidden_layers)
            .map(|_| Gpt2Block {
                ln_1: ln(),
                attn: Gpt2Attention {
                    c_attn: Conv1D::new(d, 3 * d, device),
                    c_proj: Conv1D::new(d, d, device),
                    heads: config.num_attention_heads,
                },
                ln_2: ln(),
                mlp: Gpt2Mlp {
                    c_fc: Conv1D::new(d, config.intermediate_size, device),
                    c_proj: Conv1D::new(config.intermediate_size, d, device),
                },
                dropout: DropoutConfig::new(config.dropout).init(),
            })
            .collect();
        Ok(Gpt2 {
            wte: EmbeddingConfig::new(config.vocab_size, d).init(device),
            wpe: EmbeddingConfig::new(config.max_position_embeddings, d).init(device),
            h,
            ln_f: ln(),
            lm_head: (!config.tie_word_embeddings).then(|| {
                LinearConfig::new(d, config.vocab_size)
                    .with_bias(false)
                    .init(device)
            }),
            tied: config.tie_word_embeddings,
        })
    }

    /// Rows of the position table: the longest sequence the model reads.
    pub fn max_positions(&self) -> usize {
        self.wpe.weight.dims()[0]
    }

    /// Hidden states after `ln_f`, `[batch, new, d]`; arguments as for GPT-NeoX (reached through
    /// [`crate::CausalLm::hidden`], which checks that every row fits the position table).
    pub(crate) fn hidden(
        &self,
        input_ids: Tensor<2, Int>,
        attention_mask: Tensor<2>,
        packed: Option<&Packed>,
        longest: usize,
        cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        let [_, new] = input_ids.dims();
        let heads = self.h[0].attn.heads;
        let (keys, slots) = KvCache::slots(cache, self.h.len(), new);
        let ctx = Context::new(
            attention_mask,
            packed,
            new,
            heads,
            None,
            None,
            longest,
            keys,
        );
        let positions = self.wpe.forward(ctx.positions.clone().int());
        let mut x = self.wte.forward(input_ids).add(positions);
        for (block, slot) in self.h.iter().zip(slots) {
            x = block.forward(x, &ctx, slot);
        }
        self.ln_f.forward(x)
    }

    /// Logits from hidden states: `lm_head`, or `hidden · wteᵀ` when tied.
    ///
    /// # Panics
    /// On the headless backbone of a scalar model, which has no LM head.
    pub fn lm_head(&self, hidden: Tensor<3>) -> Tensor<3> {
        match &self.lm_head {
            Some(head) => linear_layer(head, hidden),
            None => {
                assert!(self.tied, "the backbone of a scalar model has no LM head");
                tied_head(hidden, self.wte.weight.val())
            }
        }
    }
}
