//! Architecture configuration and size presets.

use rlhf_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// Which family of decoder block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    /// GPT-NeoX / Pythia: parallel residual, LayerNorm with bias, partial rotary, GELU MLP of
    /// width `intermediate_size`, biases on every projection, untied embedding and LM head.
    GptNeox,
    /// Llama / Qwen2: RMSNorm, SwiGLU MLP, grouped-query attention, rotary on the whole head,
    /// no biases except the optional QKV bias of Qwen2.
    Llama,
}

/// The shape of a causal transformer LM, with `config.json`'s field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransformerConfig {
    /// Block family.
    pub architecture: Architecture,
    /// Vocabulary size (embedding rows).
    pub vocab_size: usize,
    /// Model width `d`.
    pub hidden_size: usize,
    /// Number of blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (= `num_attention_heads` without grouped-query attention).
    pub num_key_value_heads: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Share of each head's dimensions that gets rotary embeddings (Pythia: 0.25; Llama: 1.0).
    pub rotary_pct: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// Longest sequence.
    pub max_position_embeddings: usize,
    /// Whether the LM head shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Qwen2's bias on the Q, K and V projections (Llama family only).
    pub attention_bias: bool,
    /// Epsilon of every LayerNorm (`layer_norm_eps`) or RMSNorm (`rms_norm_eps`).
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    /// Dropout on the residual branches; 0 (off) by default, as the TL;DR reproduction needs for
    /// PPO's first ratio to be exactly 1.
    #[serde(default)]
    pub dropout: f64,
}

fn default_norm_eps() -> f64 {
    1e-5
}

/// Preset names: tiny CPU models (named by their approximate parameter count), the Pythia suite,
/// and tiny and real Llama/Qwen2 shapes, each with the shape of its published `config.json`.
pub const PRESETS: &[&str] = &[
    "tiny-1m",
    "tiny-4m",
    "tiny-25m",
    "pythia-70m",
    "pythia-160m",
    "pythia-410m",
    "pythia-1b",
    "pythia-1.4b",
    "pythia-2.8b",
    "pythia-6.9b",
    "tiny-llama-1m",
    "tiny-qwen2-1m",
    "smollm2-135m",
    "qwen2-0.5b",
    "qwen2-1.5b",
    "tinyllama-1.1b",
];

impl TransformerConfig {
    fn neox(vocab: usize, hidden: usize, layers: usize, heads: usize) -> Self {
        TransformerConfig {
            architecture: Architecture::GptNeox,
            vocab_size: vocab,
            hidden_size: hidden,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: heads,
            intermediate_size: 4 * hidden,
            rotary_pct: 0.25,
            rope_theta: 10_000.0,
            max_position_embeddings: 2048,
            tie_word_embeddings: false,
            attention_bias: false,
            norm_eps: 1e-5,
            dropout: 0.0,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn llama(
        vocab: usize,
        hidden: usize,
        layers: usize,
        heads: usize,
        kv_heads: usize,
        ffn: usize,
        theta: f64,
        tied: bool,
    ) -> Self {
        TransformerConfig {
            architecture: Architecture::Llama,
            vocab_size: vocab,
            hidden_size: hidden,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            intermediate_size: ffn,
            rotary_pct: 1.0,
            rope_theta: theta,
            max_position_embeddings: 2048,
            tie_word_embeddings: tied,
            attention_bias: false,
            norm_eps: 1e-5,
            dropout: 0.0,
        }
    }

    fn qwen2(
        vocab: usize,
        hidden: usize,
        layers: usize,
        heads: usize,
        kv: usize,
        ffn: usize,
    ) -> Self {
        TransformerConfig {
            attention_bias: true,
            norm_eps: 1e-6,
            max_position_embeddings: 32_768,
            ..Self::llama(vocab, hidden, layers, heads, kv, ffn, 1_000_000.0, true)
        }
    }

    /// A preset by name (see [`PRESETS`]).
    pub fn preset(name: &str) -> Result<Self> {
        let pythia_vocab = 50_304;
        Ok(match name {
            "tiny-1m" => TransformerConfig {
                max_position_embeddings: 256,
                ..Self::neox(512, 128, 4, 4)
            },
            "tiny-4m" => TransformerConfig {
                max_position_embeddings: 256,
                ..Self::neox(512, 256, 4, 4)
            },
            "tiny-25m" => TransformerConfig {
                max_position_embeddings: 256,
                ..Self::neox(512, 512, 8, 8)
            },
            "pythia-70m" => Self::neox(pythia_vocab, 512, 6, 8),
            "pythia-160m" => Self::neox(pythia_vocab, 768, 12, 12),
            "pythia-410m" => Self::neox(pythia_vocab, 1024, 24, 16),
            "pythia-1b" => Self::neox(pythia_vocab, 2048, 16, 8),
            "pythia-1.4b" => Self::neox(pythia_vocab, 2048, 24, 16),
            "pythia-2.8b" => Self::neox(pythia_vocab, 2560, 32, 32),
            "pythia-6.9b" => Self::neox(pythia_vocab, 4096, 32, 32),
            "tiny-llama-1m" => TransformerConfig {
                max_position_embeddings: 256,
                ..Self::llama(512, 128, 4, 4, 2, 352, 10_000.0, false)
            },
            "tiny-qwen2-1m" => TransformerConfig {
                max_position_embeddings: 256,
                ..Self::qwen2(512, 128, 4, 4, 2, 352)
            },
            "smollm2-135m" => TransformerConfig {
                max_position_embeddings: 8192,
                ..Self::llama(49_152, 576, 30, 9, 3, 1536, 100_000.0, true)
            },
            "qwen2-0.5b" => Self::qwen2(151_936, 896, 24, 14, 2, 4864),
            "qwen2-1.5b" => Self::qwen2(151_936, 1536, 28, 12, 2, 8960),
            "tinyllama-1.1b" => Self::llama(32_000, 2048, 22, 32, 4, 5632, 10_000.0, false),
            _ => {
                return Err(Error::Config(format!(
                    "unknown model preset `{name}`; known: {}",
                    PRESETS.join(", ")
                )));
            }
        })
    }

    /// Checks that the shape is consistent: heads divide the width, KV heads divide the heads,
    /// the rotary share is in `[0, 1]` and gives an even number of dimensions.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(format!("model: {m}")));
        if self.vocab_size == 0
            || self.hidden_size == 0
            || self.num_hidden_layers == 0
            || self.intermediate_size == 0
        {
            return bad(
                "vocab_size, hidden_size, num_hidden_layers and intermediate_size must be > 0"
                    .into(),
            );
        }
        // far beyond any released model; they keep every size computation in range, so a damaged
        // config.json is refused here instead of overflowing or asking for terabytes
        for (name, value, limit) in [
            ("vocab_size", self.vocab_size, 1usize << 22),
            ("hidden_size", self.hidden_size, 1 << 17),
            ("num_hidden_layers", self.num_hidden_layers, 1 << 12),
            ("intermediate_size", self.intermediate_size, 1 << 20),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                1 << 22,
            ),
        ] {
            if value > limit {
                return bad(format!("{name} {value} is above the supported {limit}"));
            }
        }
        let positive = |x: f64| x.is_finite() && x > 0.0;
        if !positive(self.rope_theta)
            || !positive(self.norm_eps)
            || !(0.0..1.0).contains(&self.dropout)
        {
            return bad(format!(
                "rope_theta {} and norm_eps {} must be > 0 and dropout {} in [0, 1)",
                self.rope_theta, self.norm_eps, self.dropout
            ));
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return bad(format!(
                "{} heads do not divide hidden_size {}",
                self.num_attention_heads, self.hidden_size
            ));
        }
        if self.num_key_value_heads == 0
            || !self
                .num_attention_heads
                .is_multiple_of(self.num_key_value_heads)
        {
            return bad(format!(
                "{} key/value heads do not divide {} heads",
                self.num_key_value_heads, self.num_attention_heads
            ));
        }
        if !(0.0..=1.0).contains(&self.rotary_pct) || !self.rotary_dims().is_multiple_of(2) {
            return bad(format!(
                "rotary_pct {} must be in [0, 1] and give an even number of dimensions",
                self.rotary_pct
            ));
        }
        Ok(())
    }

    /// Dimensions per head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// Dimensions per head that get rotary embeddings.
    pub fn rotary_dims(&self) -> usize {
        (self.head_dim() as f64 * self.rotary_pct) as usize
    }

    /// Non-embedding parameters `N` (everything but the token embedding and the LM head), the
    /// count the scaling-law papers use for `6·N` FLOPs per trained token.
    pub fn non_embedding_params(&self) -> u64 {
        let d = self.hidden_size as u64;
        let f = self.intermediate_size as u64;
        let kv = (self.num_key_value_heads * self.head_dim()) as u64;
        let per_layer = match self.architecture {
            // qkv (+bias), dense (+bias), fc_in (+bias), fc_out (+bias), two LayerNorms (weight+bias)
            Architecture::GptNeox => {
                (d * 3 * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d) + 4 * d
            }
            // q, k, v (+ optional bias), o, gate, up, down, two RMSNorms
            Architecture::Llama => {
                let qkv_bias = if self.attention_bias { d + 2 * kv } else { 0 };
                d * d + 2 * d * kv + qkv_bias + d * d + 3 * d * f + 2 * d
            }
        };
        let final_norm = match self.architecture {
            Architecture::GptNeox => 2 * d,
            Architecture::Llama => d,
        };
        per_layer * self.num_hidden_layers as u64 + final_norm
    }

    /// All parameters, counting the LM head once when it is tied to the embedding.
    pub fn total_params(&self) -> u64 {
        let emb = (self.vocab_size * self.hidden_size) as u64;
        let head = if self.tie_word_embeddings { 0 } else { emb };
        self.non_embedding_params() + emb + head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pythia_non_embedding_counts_match_the_pythia_paper() {
        // Biderman et al. 2023, Table 1 ("Non-Embedding Params").
        for (name, n) in [
            ("pythia-70m", 18_915_328u64),
            ("pythia-160m", 85_056_000),
            ("pythia-410m", 302_311_424),
            ("pythia-1b", 805_736_448),
            ("pythia-1.4b", 1_208_602_624),
            ("pythia-2.8b", 2_517_652_480),
            ("pythia-6.9b", 6_444_163_072),
        ] {
            assert_eq!(
                TransformerConfig::preset(name)
                    .unwrap()
                    .non_embedding_params(),
                n,
                "{name}"
            );
        }
        // and the total of the smallest: 70,426,624 (embedding and head are untied)
        assert_eq!(
            TransformerConfig::preset("pythia-70m")
                .unwrap()
                .total_params(),
            70_426_624
        );
    }

    #[test]
    fn every_preset_is_valid_and_tiny_ones_are_named_by_size() {
        for name in PRESETS {
            TransformerConfig::preset(name).unwrap().validate().unwrap();
        }
        for (name, approx) in [
            ("tiny-1m", 1e6),
            ("tiny-4m", 4e6),
            ("tiny-25m", 25e6),
            ("tiny-llama-1m", 1e6),
            ("tiny-qwen2-1m", 1e6),
        ] {
            let n = TransformerConfig::preset(name).unwrap().total_params() as f64;
            assert!((n / approx - 1.0).abs() < 0.35, "{name}: {n}");
        }
        assert!(TransformerConfig::preset("gpt-5").is_err());
    }

    #[test]
    fn inconsistent_shapes_are_refused() {
        let mut c = TransformerConfig::preset("tiny-1m").unwrap();
        c.num_attention_heads = 3;
        assert!(c.validate().is_err());
        let mut c = TransformerConfig::preset("tiny-1m").unwrap();
        c.num_key_value_heads = 3;
        assert!(c.validate().is_err());
    }

    #[test]
    fn llama_count_follows_its_blocks() {
        // A Qwen2-0.5B-shaped config: d=896, 24 layers, 14 heads, 2 KV heads, f=4864, QKV bias.
        let c = TransformerConfig {
            architecture: Architecture::Llama,
            vocab_size: 151_936,
            hidden_size: 896,
            num_hidden_layers: 24,
            num_attention_heads: 14,
            num_key_value_heads: 2,
            intermediate_size: 4864,
            rotary_pct: 1.0,
            rope_theta: 1_000_000.0,
            max_position_embeddings: 32_768,
            tie_word_embeddings: true,
            attention_bias: true,
            norm_eps: 1e-6,
            dropout: 0.0,
        };
        c.validate().unwrap();
        assert_eq!(TransformerConfig::preset("qwen2-0.5b").unwrap(), c);
        // Qwen2-0.5B has 494,032,768 parameters with tied embeddings.
        assert_eq!(c.total_params(), 494_032_768);
        // SmolLM2-135M: 134,515,008 parameters (tied), TinyLlama-1.1B: 1,100,048,384 (untied).
        let smol = TransformerConfig::preset("smollm2-135m").unwrap();
        assert_eq!(smol.total_params(), 134_515_008);
        let tl = TransformerConfig::preset("tinyllama-1.1b").unwrap();
        assert_eq!(tl.total_params(), 1_100_048_384);
    }
}
