//! [`CausalLm`]: one type for every family, and [`ScalarModel`]: a backbone with a scalar head
//! (the value model and the reward model).

use burn::module::Module;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::{Device, Int, Tensor};

use crate::cache::KvCache;
use crate::config::{Architecture, TransformerConfig};
use crate::gpt2::Gpt2;
use crate::input::{Packed, TokenInput};
use crate::llama::Llama;
use crate::matmul::{linear_layer, matmul};
use crate::neox::GptNeox;
use crate::precision::to_f32;
use rlhf_core::train::memory::{FrozenProjections, TransformerShape};
use rlhf_core::{Error, Result};

/// A causal language model of any family. The variant names do not appear in parameter paths
/// (Hugging Face names are the field names inside each variant).
#[derive(Module, Debug)]
pub enum CausalLm {
    /// GPT-NeoX / Pythia.
    GptNeox(GptNeox),
    /// Llama, Qwen2, Qwen3, Mistral, Phi-3.
    Llama(Llama),
    /// GPT-2.
    Gpt2(Gpt2),
}

impl CausalLm {
    /// A randomly initialised model of `config`'s architecture and shape.
    pub fn init(config: &TransformerConfig, device: &Device) -> Result<Self> {
        Ok(match config.architecture {
            Architecture::GptNeox => CausalLm::GptNeox(GptNeox::init(config, device)?),
            Architecture::Gpt2 => CausalLm::Gpt2(Gpt2::init(config, device)?),
            Architecture::Llama
            | Architecture::Qwen2
            | Architecture::Qwen3
            | Architecture::Mistral
            | Architecture::Phi3 => CausalLm::Llama(Llama::init(config, device)?),
        })
    }

    /// Hidden states after the final norm, `[batch, new, d]`, of `input` (the tokens to process:
    /// all of them, or only the new ones when `cache` holds the earlier ones; its mask covers
    /// every position so far). `cache`: keys and values of the past positions, extended in place.
    ///
    /// Under LongRoPE (Phi-3), a cache built with the other factors than the sequence now needs
    /// is rebuilt from the tokens it saw (as `transformers`' Phi-3 re-encodes the sequence when
    /// generation crosses the switch), so the result is always a full forward pass's.
    ///
    /// # Panics
    /// When a row is longer than a model with learned positions (GPT-2) has positions (the
    /// model's [`Self::input`] refuses such rows with an error), or when a packed input
    /// ([`TokenInput::packed`]) comes with a cache.
    pub fn hidden(&self, input: &TokenInput, cache: Option<&mut KvCache>) -> Tensor<3> {
        if let Err(e) = self.check_positions(input.longest()) {
            panic!("{e}");
        }
        let longest = input.longest();
        if let Some(packed) = input.packed_sequences() {
            assert!(
                cache.is_none(),
                "a packed input is for a full forward pass, without a cache"
            );
            return self.run(input.ids(), input.attention(), Some(packed), longest, None);
        }
        let (cache, long) = match (cache, self.long_factors(longest)) {
            (Some(cache), Some(long)) => (cache, long),
            (cache, _) => return self.run(input.ids(), input.attention(), None, longest, cache),
        };
        let seen = match cache.ids.take() {
            Some(ids) => Tensor::cat(vec![ids, input.ids()], 1),
            None => input.ids(),
        };
        let [_, new] = input.dims();
        let hidden = if cache.long_factors.is_some_and(|l| l != long) {
            // re-encode every token seen under the factors the sequence needs now
            cache.clear();
            let [_, total] = seen.dims();
            self.run(seen.clone(), input.attention(), None, longest, Some(cache))
                .narrow(1, total - new, new)
        } else {
            self.run(input.ids(), input.attention(), None, longest, Some(cache))
        };
        cache.ids = Some(seen);
        cache.long_factors = Some(long);
        hidden
    }

    fn run(
        &self,
        ids: Tensor<2, Int>,
        attention: Tensor<2>,
        packed: Option<&Packed>,
        longest: usize,
        cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        match self {
            CausalLm::GptNeox(m) => m.hidden(ids, attention, packed, longest, cache),
            CausalLm::Llama(m) => m.hidden(ids, attention, packed, longest, cache),
            CausalLm::Gpt2(m) => m.hidden(ids, attention, packed, longest, cache),
        }
    }

    /// Under LongRoPE, whether rows of `longest` tokens use the long factors; `None` otherwise.
    fn long_factors(&self, longest: usize) -> Option<bool> {
        match self {
            CausalLm::Llama(m) => m.layers.first()?.self_attn.rotary.long_factors(longest),
            _ => None,
        }
    }

    /// The longest row a model with learned positions reads (GPT-2's `n_positions`); `None` for
    /// rotary families.
    pub fn max_positions(&self) -> Option<usize> {
        match self {
            CausalLm::Gpt2(m) => Some(m.max_positions()),
            _ => None,
        }
    }

    /// An error when rows of `longest` real tokens do not fit the position table.
    pub fn check_positions(&self, longest: usize) -> Result<()> {
        match self.max_positions() {
            Some(max) if longest > max => Err(Error::Config(format!(
                "a row of {longest} tokens is longer than the model's {max} learned positions"
            ))),
            _ => Ok(()),
        }
    }

    /// The LM head applied to hidden states: logits `[batch, new, vocab]`, in f32 whatever the
    /// weights' dtype ([`crate::precision`]).
    pub fn lm_head(&self, hidden: Tensor<3>) -> Tensor<3> {
        to_f32(match self {
            CausalLm::GptNeox(m) => m.lm_head(hidden),
            CausalLm::Llama(m) => m.lm_head(hidden),
            CausalLm::Gpt2(m) => m.lm_head(hidden),
        })
    }

    /// Next-token logits `[batch, new, vocab]` of `input` (see [`Self::hidden`]).
    pub fn forward(&self, input: &TokenInput, cache: Option<&mut KvCache>) -> Tensor<3> {
        self.lm_head(self.hidden(input, cache))
    }

    /// The model input of `batch` rows of host ids and mask (see [`TokenInput::new`]: pads
    /// become a valid id, a real id outside the vocabulary is an error), on the model's device. A
    /// row longer than a model with learned positions has positions is an error too.
    pub fn input(&self, ids: &[u32], attention: &[u8], batch: usize) -> Result<TokenInput> {
        let input = TokenInput::new(ids, attention, batch, self.vocab_size(), &self.device())?;
        self.check_positions(input.longest())?;
        Ok(input)
    }

    /// Rows of the input embedding.
    pub fn vocab_size(&self) -> usize {
        match self {
            CausalLm::GptNeox(m) => m.embed_in.weight.lazy_shape()[0],
            CausalLm::Llama(m) => m.embed_tokens.weight.lazy_shape()[0],
            CausalLm::Gpt2(m) => m.wte.weight.lazy_shape()[0],
        }
    }

    /// Model width `d`.
    pub fn hidden_size(&self) -> usize {
        match self {
            CausalLm::GptNeox(m) => m.embed_in.weight.lazy_shape()[1],
            CausalLm::Llama(m) => m.embed_tokens.weight.lazy_shape()[1],
            CausalLm::Gpt2(m) => m.wte.weight.lazy_shape()[1],
        }
    }

    /// The same model with every dropout probability set to 0 (TL;DR detail 1: log-probs must
    /// be reproducible between rollout and update).
    pub fn without_dropout(self) -> Self {
        let off = || burn::nn::DropoutConfig::new(0.0).init();
        match self {
            CausalLm::GptNeox(mut m) => {
                m.layers.iter_mut().for_each(|l| l.dropout = off());
                CausalLm::GptNeox(m)
            }
            CausalLm::Llama(mut m) => {
                m.layers.iter_mut().for_each(|l| l.dropout = off());
                CausalLm::Llama(m)
            }
            CausalLm::Gpt2(mut m) => {
                m.h.iter_mut().for_each(|l| l.dropout = off());
                CausalLm::Gpt2(m)
            }
        }
    }

    /// The same model without its LM head (a tied head shares the embedding and only stops
    /// being used): the backbone of a [`ScalarModel`], which reads hidden states only.
    pub fn without_lm_head(self) -> Self {
        match self {
            CausalLm::GptNeox(mut m) => {
                m.embed_out = None;
                CausalLm::GptNeox(m)
            }
            CausalLm::Llama(mut m) => {
                m.lm_head = None;
                m.tied = false;
                CausalLm::Llama(m)
            }
            CausalLm::Gpt2(mut m) => {
                m.lm_head = None;
                m.tied = false;
                CausalLm::Gpt2(m)
            }
        }
    }

    /// Whether the model has an LM head (`false` for a scalar model's backbone).
    pub fn has_lm_head(&self) -> bool {
        match self {
            CausalLm::GptNeox(m) => m.embed_out.is_some(),
            CausalLm::Llama(m) => m.lm_head.is_some() || m.tied,
            CausalLm::Gpt2(m) => m.lm_head.is_some() || m.tied,
        }
    }

    /// The dropout probability of the residual branches (the same in every layer).
    pub fn dropout(&self) -> f64 {
        match self {
            CausalLm::GptNeox(m) => m.layers.first().map_or(0.0, |l| l.dropout.prob),
            CausalLm::Llama(m) => m.layers.first().map_or(0.0, |l| l.dropout.prob),
            CausalLm::Gpt2(m) => m.h.first().map_or(0.0, |l| l.dropout.prob),
        }
    }

    /// Layers, width, heads, feed-forward block, the projections that do not train (LoRA's
    /// frozen base, read off the first layer) and vocabulary, for memory estimates
    /// ([`rlhf_core::train::memory`]).
    pub fn shape(&self) -> TransformerShape {
        use rlhf_core::train::memory::trains;
        let frozen =
            |attention_output: bool, mlp_input: bool, mlp_output: bool| FrozenProjections {
                attention_output: !attention_output,
                mlp_input: !mlp_input,
                mlp_output: !mlp_output,
            };
        // (layers, heads, feed-forward width, gated, frozen projections)
        let none = FrozenProjections::default();
        let (layers, heads, intermediate, gated, frozen) = match self {
            CausalLm::GptNeox(m) => m.layers.first().map_or((0, 1, 0, false, none), |l| {
                let width = l.mlp.dense_h_to_4h.weight.dims()[1];
                let frozen = frozen(
                    trains(&l.attention.dense),
                    trains(&l.mlp.dense_h_to_4h),
                    trains(&l.mlp.dense_4h_to_h),
                );
                (m.layers.len(), l.attention.heads, width, false, frozen)
            }),
            CausalLm::Llama(m) => m.layers.first().map_or((0, 1, 0, true, none), |l| {
                let (mlp, width) = (&l.mlp, l.mlp.down_proj.weight.dims()[0]);
                let frozen = frozen(
                    trains(&l.self_attn.o_proj),
                    trains(&mlp.gate_proj) || trains(&mlp.up_proj) || trains(&mlp.gate_up_proj),
                    trains(&mlp.down_proj),
                );
                (m.layers.len(), l.self_attn.heads, width, true, frozen)
            }),
            CausalLm::Gpt2(m) => m.h.first().map_or((0, 1, 0, false, none), |l| {
                let width = l.mlp.c_fc.weight.dims()[1];
                let frozen = frozen(
                    trains(&l.attn.c_proj),
                    trains(&l.mlp.c_fc),
                    trains(&l.mlp.c_proj),
                );
                (m.h.len(), l.attn.heads, width, false, frozen)
            }),
        };
        TransformerShape {
            layers: layers as u64,
            hidden: self.hidden_size() as u64,
            heads: heads as u64,
            intermediate: intermediate as u64,
            gated,
            vocab: self.vocab_size() as u64,
            frozen,
            fused_passes: self.fused_passes(),
        }
    }

    /// Whether training runs [`crate::softmax`]'s pass for attention and `rlhf_core::logprobs`'
    /// pass for the token log-probabilities: on burn-flex with f32 weights. (The log-probabilities'
    /// pass runs on a bf16 model's f32 logits too; there the estimate counts burn's chain, more.)
    fn fused_passes(&self) -> bool {
        let dtype = match self {
            CausalLm::GptNeox(m) => m.embed_in.weight.val().dtype(),
            CausalLm::Llama(m) => m.embed_tokens.weight.val().dtype(),
            CausalLm::Gpt2(m) => m.wte.weight.val().dtype(),
        };
        crate::softmax::pass_runs(&self.device(), dtype)
    }

    /// The device the parameters live on.
    pub fn device(&self) -> Device {
        match self {
            CausalLm::GptNeox(m) => m.embed_in.weight.lazy_device(),
            CausalLm::Llama(m) => m.embed_tokens.weight.lazy_device(),
            CausalLm::Gpt2(m) => m.wte.weight.lazy_device(),
        }
    }
}

/// `hidden · tableᵀ`: logits `[batch, seq, vocab]` through a tied embedding `table` `[vocab, d]`.
pub(crate) fn tied_head(hidden: Tensor<3>, table: Tensor<2>) -> Tensor<3> {
    let [b, t, d] = hidden.dims();
    let vocab = table.dims()[0];
    let logits = matmul(hidden.reshape([b * t, d]), table.transpose());
    logits.reshape([b, t, vocab])
}

/// A backbone with a scalar head `d → 1` instead of the LM head: the critic (value per token)
/// and the reward model (score at the last real token). The head is `score`, a bias-free linear
/// layer as in `transformers`' `…ForSequenceClassification` (and so in TRL's reward and value
/// models); the offset a reward model's scores need is its normalisation's bias, which a critic
/// made from the reward model carries as its head's bias (`RewardModel::to_value_model` in
/// `rlhf-reward`). The backbone carries no LM head, so a scalar model can be initialised from any
/// causal LM (the SFT policy, as in the TL;DR reproduction) and written as a
/// sequence-classification checkpoint.
#[derive(Module, Debug)]
pub struct ScalarModel {
    /// The transformer, without its LM head.
    pub backbone: CausalLm,
    /// `[d, 1]`; no bias, except in a critic made from a reward model.
    pub score: Linear,
}

impl ScalarModel {
    /// Drops `backbone`'s LM head and adds a fresh head initialised `N(0, 1/√(d+1))` (the TL;DR
    /// reproduction's reward-head initialisation).
    pub fn from_backbone(backbone: CausalLm) -> Self {
        let std = 1.0 / ((backbone.hidden_size() + 1) as f64).sqrt();
        Self::with_head(backbone, Initializer::Normal { mean: 0.0, std })
    }

    /// Drops `backbone`'s LM head and adds a head of zeros, drawing no random numbers: the shell
    /// a checkpoint's head is loaded into.
    pub fn with_zero_head(backbone: CausalLm) -> Self {
        Self::with_head(backbone, Initializer::Zeros)
    }

    /// `backbone` without its LM head, with a `[d, 1]` score head without bias from `init`.
    fn with_head(backbone: CausalLm, init: Initializer) -> Self {
        let score = LinearConfig::new(backbone.hidden_size(), 1)
            .with_bias(false)
            .with_initializer(init)
            .init(&backbone.device());
        ScalarModel {
            backbone: backbone.without_lm_head(),
            score,
        }
    }

    /// The same model with dropout off (see [`CausalLm::without_dropout`]).
    pub fn without_dropout(self) -> Self {
        ScalarModel {
            backbone: self.backbone.without_dropout(),
            score: self.score,
        }
    }

    /// The backbone's shape without the (unused) LM head, for memory estimates.
    pub fn shape(&self) -> TransformerShape {
        TransformerShape {
            vocab: 0,
            ..self.backbone.shape()
        }
    }

    /// The model input of host ids and mask (see [`CausalLm::input`]).
    pub fn input(&self, ids: &[u32], attention: &[u8], batch: usize) -> Result<TokenInput> {
        self.backbone.input(ids, attention, batch)
    }

    /// One scalar per position, `[batch, seq]` (values of the critic), in f32 whatever the
    /// weights' dtype. Pad positions hold finite numbers that the caller masks.
    pub fn per_token(&self, input: &TokenInput) -> Tensor<2> {
        let hidden = self.backbone.hidden(input, None);
        let [b, t, _] = hidden.dims();
        to_f32(linear_layer(&self.score, hidden).reshape([b, t]))
    }

    /// The scalar at the last real token of each row, `[batch]` (the reward model's score);
    /// left and right padding are both handled.
    pub fn at_last_token(&self, input: &TokenInput) -> Tensor<1> {
        gather_last(self.per_token(input), input.attention())
    }
}

/// `values[b, last(b)]` where `last(b)` is the largest index with `mask[b, ·] = 1` (index 0 for a
/// row without any). `[batch, seq]` → `[batch]`.
pub fn gather_last(values: Tensor<2>, mask: Tensor<2>) -> Tensor<1> {
    let [b, t] = values.dims();
    let device = values.device();
    let index = Tensor::<1, Int>::arange(0..t as i64, &device)
        .float()
        .reshape([1, t])
        .expand([b, t]);
    // positions of real tokens keep their index, the rest −1; the row's max is the last real one
    let last = index
        .mul(mask.clone())
        .add(mask.sub_scalar(1.0))
        .max_dim(1)
        .clamp_min(0.0)
        .int(); // [b, 1]
    values.gather(1, last).reshape([b])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::{ModuleVisitor, Param};

    /// Counts float parameters that do and do not require gradients.
    struct Trainable(usize, usize);
    impl ModuleVisitor for Trainable {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if param.val().is_require_grad() {
                self.0 += 1;
            } else {
                self.1 += 1;
            }
        }
    }

    /// A fresh scalar model trains every parameter, and has no LM head and no head bias.
    #[test]
    fn every_parameter_of_a_fresh_scalar_model_trains() {
        let device = rlhf_core::parse_device("flex").unwrap().autodiff();
        let mut c = TransformerConfig::preset("tiny-1m").unwrap();
        c.vocab_size = 32;
        c.hidden_size = 32;
        c.num_hidden_layers = 1;
        c.intermediate_size = 48;
        let model = ScalarModel::from_backbone(CausalLm::init(&c, &device).unwrap());
        assert!(model.score.bias.is_none() && !model.backbone.has_lm_head());
        let mut count = Trainable(0, 0);
        model.visit(&mut count);
        assert!(count.0 > 0);
        assert_eq!(
            count.1,
            0,
            "{} of {} parameters are frozen",
            count.1,
            count.0 + count.1
        );
    }
}
