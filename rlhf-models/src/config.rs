//! Architecture configuration and size presets.

use rlhf_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// Which family of decoder, named as `config.json`'s `model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    /// GPT-NeoX / Pythia: LayerNorm with bias, partial rotary, GELU MLP of width
    /// `intermediate_size`, biases on every projection, untied embedding and LM head; parallel
    /// residual (Pythia) or sequential (`use_parallel_residual = false`).
    GptNeox,
    /// Llama: RMSNorm, SwiGLU MLP, grouped-query attention, rotary on the whole head (with
    /// `linear`, `dynamic` or `llama3` scaling), no biases.
    Llama,
    /// Qwen2: Llama with a bias on the Q, K and V projections.
    Qwen2,
    /// Qwen3: Llama with a per-head RMSNorm on queries and keys (`q_norm`, `k_norm`) before the
    /// rotary, and a `head_dim` of its own.
    Qwen3,
    /// Mistral: Llama with an optional sliding window of attention.
    Mistral,
    /// Phi-3 (and Phi-4-mini): Llama with fused `qkv_proj` and `gate_up_proj`, partial rotary
    /// (`partial_rotary_factor`), `longrope` scaling and an optional sliding window.
    Phi3,
    /// GPT-2: learned absolute positions (`wpe`), LayerNorm with bias, `Conv1D` projections,
    /// tanh-approximated GELU, tied LM head.
    Gpt2,
}

impl Architecture {
    /// `config.json`'s `model_type`.
    pub fn model_type(self) -> &'static str {
        match self {
            Architecture::GptNeox => "gpt_neox",
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
            Architecture::Qwen3 => "qwen3",
            Architecture::Mistral => "mistral",
            Architecture::Phi3 => "phi3",
            Architecture::Gpt2 => "gpt2",
        }
    }

    /// Whether the family is built by [`crate::Llama`] (Llama, Qwen2, Qwen3, Mistral, Phi-3).
    pub fn is_llama_like(self) -> bool {
        matches!(
            self,
            Architecture::Llama
                | Architecture::Qwen2
                | Architecture::Qwen3
                | Architecture::Mistral
                | Architecture::Phi3
        )
    }

    /// Whether positions enter through rotary embeddings (every family but GPT-2).
    pub fn has_rotary(self) -> bool {
        self != Architecture::Gpt2
    }
}

/// How rotary frequencies are scaled (`rope_parameters.rope_type` in `config.json`, or
/// `rope_scaling.type` in older files), as `transformers`' `modeling_rope_utils.py` computes them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "snake_case")]
pub enum RopeScaling {
    /// `θ^(−2i/d)`.
    #[default]
    Default,
    /// Every frequency divided by `factor` (positions interpolated).
    Linear {
        /// Divisor of every frequency.
        factor: f64,
    },
    /// Dynamic NTK: when the longest row of a forward pass has `L > max_position_embeddings`
    /// tokens, the base becomes `θ·(factor·L/max − (factor − 1))^(d/(d−2))`; shorter passes use
    /// the default frequencies. As in `transformers`, keys already cached keep the frequencies
    /// they were rotated with (so past `max_position_embeddings`, cached decoding is not a full
    /// forward pass, and a row's logits depend on the longest row of its batch). `transformers`
    /// also keeps the grown frequencies from one call to the next; here every forward pass
    /// (with its cache) uses its own, as a freshly loaded `transformers` model does.
    Dynamic {
        /// The NTK factor.
        factor: f64,
    },
    /// Llama 3.1's: wavelengths above `original/low_freq_factor` divided by `factor`, below
    /// `original/high_freq_factor` kept, in between interpolated.
    Llama3 {
        /// Divisor of the low frequencies.
        factor: f64,
        /// Sets the longest wavelength kept unscaled, `original/low_freq_factor`.
        low_freq_factor: f64,
        /// Sets the shortest wavelength scaled, `original/high_freq_factor`.
        high_freq_factor: f64,
        /// The context length of pre-training.
        original_max_position_embeddings: usize,
    },
    /// Phi-3's LongRoPE: frequency `i` divided by `short_factor[i]` while the longest row has at
    /// most `original_max_position_embeddings` tokens, by `long_factor[i]` beyond, and `cos` and
    /// `sin` multiplied by `attention_factor`. As `transformers`' Phi-3 re-encodes the sequence
    /// when generation crosses the switch, a [`crate::KvCache`] built before it is rebuilt from
    /// the tokens it saw, so cached decoding equals a full forward pass. As in `transformers`, the
    /// factors follow the longest row of the batch.
    Longrope {
        /// Per-frequency divisors up to the original context length.
        short_factor: Vec<f64>,
        /// Per-frequency divisors beyond it.
        long_factor: Vec<f64>,
        /// The context length of pre-training.
        original_max_position_embeddings: usize,
        /// Scale of `cos` and `sin` (from the file, or `√(1 + ln(max/original)/ln(original))`).
        attention_factor: f64,
    },
}

impl RopeScaling {
    /// Whether this is the unscaled default (not written in serialised configs).
    pub fn is_default(&self) -> bool {
        *self == RopeScaling::Default
    }

    /// `rope_type`'s value.
    pub fn name(&self) -> &'static str {
        match self {
            RopeScaling::Default => "default",
            RopeScaling::Linear { .. } => "linear",
            RopeScaling::Dynamic { .. } => "dynamic",
            RopeScaling::Llama3 { .. } => "llama3",
            RopeScaling::Longrope { .. } => "longrope",
        }
    }
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
    /// Share of each head's dimensions that gets rotary embeddings (Pythia: 0.25; Llama: 1.0;
    /// Phi-4-mini: 0.75; GPT-2, without rotary: 0).
    pub rotary_pct: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// Longest sequence (GPT-2: the rows of its learned position table, `n_positions`).
    pub max_position_embeddings: usize,
    /// Whether the LM head shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Qwen2's bias on the Q, K and V projections (Qwen2 only).
    pub attention_bias: bool,
    /// Epsilon of every LayerNorm (`layer_norm_eps`) or RMSNorm (`rms_norm_eps`).
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    /// Dropout on the residual branches; 0 (off) by default, as the TL;DR reproduction needs for
    /// PPO's first ratio to be exactly 1.
    #[serde(default)]
    pub dropout: f64,
    /// Width of each attention head when the family sets it on its own (Llama, Qwen2, Qwen3,
    /// Mistral: `head_dim`); `None` is `hidden_size / num_attention_heads`. See
    /// [`Self::head_dim()`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    /// RoPE scaling (Llama family: `linear`, `dynamic`, `llama3`; Phi-3: `longrope`).
    #[serde(default, skip_serializing_if = "RopeScaling::is_default")]
    pub rope_scaling: RopeScaling,
    /// Sliding window of attention (Mistral, Phi-3): a query attends to itself and the
    /// `sliding_window − 1` positions before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<usize>,
    /// GPT-NeoX's parallel residual (`x + attn(ln₁(x)) + mlp(ln₂(x))`, Pythia); `false` is the
    /// sequential one. `true` for the other families, which have no such option.
    #[serde(default = "yes")]
    pub use_parallel_residual: bool,
}

fn default_norm_eps() -> f64 {
    1e-5
}

fn yes() -> bool {
    true
}

/// Preset names: tiny CPU models (named by their approximate parameter count), the Pythia suite,
/// and real shapes of every family, each with the shape of its published `config.json`.
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
    "llama-3.2-1b",
    "qwen3-0.6b",
    "mistral-7b",
    "phi-3-mini",
    "gpt2",
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
            head_dim: None,
            rope_scaling: RopeScaling::Default,
            sliding_window: None,
            use_parallel_residual: true,
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
            head_dim: None,
            rope_scaling: RopeScaling::Default,
            sliding_window: None,
            use_parallel_residual: true,
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
            architecture: Architecture::Qwen2,
            attention_bias: true,
            norm_eps: 1e-6,
            max_position_embeddings: 32_768,
            ..Self::llama(vocab, hidden, layers, heads, kv, ffn, 1_000_000.0, true)
        }
    }

    /// A preset by name (see [`PRESETS`]).
    // One piece, over 80 lines: a table, one match arm per preset named in PRESETS, each built
    // from the neox/llama/qwen2 constructors with that preset's own settings.
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
            // meta-llama/Llama-3.2-1B
            "llama-3.2-1b" => TransformerConfig {
                max_position_embeddings: 131_072,
                rope_scaling: RopeScaling::Llama3 {
                    factor: 32.0,
                    low_freq_factor: 1.0,
                    high_freq_factor: 4.0,
                    original_max_position_embeddings: 8192,
                },
                ..Self::llama(128_256, 2048, 16, 32, 8, 8192, 500_000.0, true)
            },
            // Qwen/Qwen3-0.6B: 16 heads of 128 on a width of 1024
            "qwen3-0.6b" => TransformerConfig {
                architecture: Architecture::Qwen3,
                head_dim: Some(128),
                norm_eps: 1e-6,
                max_position_embeddings: 40_960,
                ..Self::llama(151_936, 1024, 28, 16, 8, 3072, 1_000_000.0, true)
            },
            // mistralai/Mistral-7B-v0.1, with its sliding window of 4096
            "mistral-7b" => TransformerConfig {
                architecture: Architecture::Mistral,
                max_position_embeddings: 32_768,
                sliding_window: Some(4096),
                ..Self::llama(32_000, 4096, 32, 32, 8, 14_336, 10_000.0, false)
            },
            // microsoft/Phi-3-mini-4k-instruct
            "phi-3-mini" => TransformerConfig {
                architecture: Architecture::Phi3,
                max_position_embeddings: 4096,
                sliding_window: Some(2047),
                ..Self::llama(32_064, 3072, 32, 32, 32, 8192, 10_000.0, false)
            },
            // openai-community/gpt2 (124M)
            "gpt2" => TransformerConfig {
                architecture: Architecture::Gpt2,
                vocab_size: 50_257,
                max_position_embeddings: 1024,
                rotary_pct: 0.0,
                tie_word_embeddings: true,
                ..Self::neox(50_257, 768, 12, 12)
            },
            _ => {
                return Err(Error::Config(format!(
                    "unknown model preset `{name}`; known: {}",
                    PRESETS.join(", ")
                )));
            }
        })
    }

    /// Checks that the shape is consistent: heads divide the width (unless the family sets
    /// `head_dim` itself), KV heads divide the heads, the rotary share is in `[0, 1]` and gives an
    /// even number of dimensions, and each option belongs to a family that has it.
    // One piece, over 80 lines: a flat list of refusals, each a condition with its own message
    // (sizes, limits, ranges, head layout, rotary share, which family has which option); the
    // rope scaling's checks are already apart in `validate_rope_scaling`.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(format!("model: {m}")));
        let arch = self.architecture;
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
            ("num_attention_heads", self.num_attention_heads, 1 << 12),
            ("head_dim", self.head_dim.unwrap_or(0), 1 << 12),
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
        match self.head_dim {
            None if self.num_attention_heads == 0
                || !self.hidden_size.is_multiple_of(self.num_attention_heads) =>
            {
                return bad(format!(
                    "{} heads do not divide hidden_size {}",
                    self.num_attention_heads, self.hidden_size
                ));
            }
            Some(hd) if hd == 0 || self.num_attention_heads == 0 => {
                return bad(format!(
                    "head_dim {hd} and num_attention_heads {} must be > 0",
                    self.num_attention_heads
                ));
            }
            Some(_)
                if !matches!(
                    arch,
                    Architecture::Llama
                        | Architecture::Qwen2
                        | Architecture::Qwen3
                        | Architecture::Mistral
                ) =>
            {
                return bad(format!(
                    "{} has no head_dim of its own (hidden_size / num_attention_heads)",
                    arch.model_type()
                ));
            }
            _ => {}
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
        if matches!(arch, Architecture::GptNeox | Architecture::Gpt2)
            && self.num_key_value_heads != self.num_attention_heads
        {
            return bad(format!(
                "{} has no grouped-query attention",
                arch.model_type()
            ));
        }
        if !(0.0..=1.0).contains(&self.rotary_pct) || !self.rotary_dims().is_multiple_of(2) {
            return bad(format!(
                "rotary_pct {} must be in [0, 1] and give an even number of dimensions",
                self.rotary_pct
            ));
        }
        if !arch.has_rotary() && self.rotary_pct != 0.0 {
            return bad("GPT-2 has learned positions, not rotary (rotary_pct 0)".into());
        }
        if self.attention_bias != (arch == Architecture::Qwen2) {
            return bad(format!(
                "attention_bias (a bias on Q, K and V) is Qwen2's, and Qwen2 has it; not {}'s",
                arch.model_type()
            ));
        }
        if !self.use_parallel_residual && arch != Architecture::GptNeox {
            return bad("use_parallel_residual = false is GPT-NeoX's option".into());
        }
        if self.tie_word_embeddings && arch == Architecture::GptNeox {
            return bad("GPT-NeoX with a tied LM head is not implemented".into());
        }
        match self.sliding_window {
            Some(0) => return bad("sliding_window must be ≥ 1".into()),
            Some(_) if !matches!(arch, Architecture::Mistral | Architecture::Phi3) => {
                return bad(format!(
                    "a sliding window on {} is not implemented (Mistral's and Phi-3's are)",
                    arch.model_type()
                ));
            }
            _ => {}
        }
        self.validate_rope_scaling()
    }

    fn validate_rope_scaling(&self) -> Result<()> {
        let arch = self.architecture;
        let bad = |m: String| {
            Err(Error::Config(format!(
                "model: rope_scaling {}: {m}",
                self.rope_scaling.name()
            )))
        };
        let positive = |x: f64| x.is_finite() && x > 0.0;
        let llama_rope = matches!(
            arch,
            Architecture::Llama | Architecture::Qwen2 | Architecture::Qwen3 | Architecture::Mistral
        );
        let half = self.rotary_dims() / 2;
        match &self.rope_scaling {
            RopeScaling::Default => Ok(()),
            _ if !llama_rope && arch != Architecture::Phi3 => bad(format!(
                "RoPE scaling on {} is not implemented",
                arch.model_type()
            )),
            RopeScaling::Longrope { .. } if arch != Architecture::Phi3 => {
                bad("longrope is implemented for Phi-3 only".into())
            }
            RopeScaling::Linear { .. }
            | RopeScaling::Dynamic { .. }
            | RopeScaling::Llama3 { .. }
                if !llama_rope =>
            {
                bad(format!(
                    "{} has default or longrope only",
                    arch.model_type()
                ))
            }
            RopeScaling::Linear { factor } if !positive(*factor) => {
                bad(format!("factor {factor} must be > 0"))
            }
            RopeScaling::Dynamic { factor } if !positive(*factor) || half < 2 => bad(format!(
                "factor {factor} must be > 0, and the rotary more than 2 dimensions"
            )),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } if !(positive(*factor)
                && positive(*low_freq_factor)
                && high_freq_factor > low_freq_factor
                && high_freq_factor.is_finite()
                && (1..=1 << 22).contains(original_max_position_embeddings)) =>
            {
                bad(format!(
                    "factor {factor} and low_freq_factor {low_freq_factor} must be > 0, \
                     high_freq_factor {high_freq_factor} above low_freq_factor, \
                     original_max_position_embeddings {original_max_position_embeddings} > 0"
                ))
            }
            RopeScaling::Longrope {
                short_factor,
                long_factor,
                original_max_position_embeddings,
                attention_factor,
            } if short_factor.len() != half
                || long_factor.len() != half
                || !short_factor.iter().chain(long_factor).all(|&x| positive(x))
                || !positive(*attention_factor)
                || *original_max_position_embeddings == 0
                || *original_max_position_embeddings > 1 << 22 =>
            {
                bad(format!(
                    "short_factor and long_factor need {half} positive numbers (one per rotary \
                     frequency; they have {} and {}), attention_factor {attention_factor} > 0, \
                     original_max_position_embeddings {original_max_position_embeddings} > 0",
                    short_factor.len(),
                    long_factor.len()
                ))
            }
            _ => Ok(()),
        }
    }

    /// Dimensions per head: `head_dim` when set, else `hidden_size / num_attention_heads`.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Dimensions per head that get rotary embeddings (`⌊head_dim · rotary_pct⌋`, as
    /// `transformers` truncates).
    pub fn rotary_dims(&self) -> usize {
        (self.head_dim() as f64 * self.rotary_pct) as usize
    }

    /// Non-embedding parameters `N` (everything but the token embedding, GPT-2's position table
    /// and the LM head), the count the scaling-law papers use for `6·N` FLOPs per trained token.
    pub fn non_embedding_params(&self) -> u64 {
        let d = self.hidden_size as u64;
        let f = self.intermediate_size as u64;
        let hd = self.head_dim() as u64;
        let q = self.num_attention_heads as u64 * hd;
        let kv = self.num_key_value_heads as u64 * hd;
        let per_layer = match self.architecture {
            // qkv (+bias), dense (+bias), fc_in (+bias), fc_out (+bias), two LayerNorms (weight+bias)
            Architecture::GptNeox | Architecture::Gpt2 => {
                (d * 3 * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d) + 4 * d
            }
            // q, k, v (+ Qwen2's bias), o, gate, up, down, two RMSNorms (+ Qwen3's q_norm, k_norm);
            // Phi-3's fused qkv_proj and gate_up_proj hold the same numbers
            _ => {
                let qkv_bias = if self.attention_bias { q + 2 * kv } else { 0 };
                let qk_norm = if self.architecture == Architecture::Qwen3 {
                    2 * hd
                } else {
                    0
                };
                d * q + 2 * d * kv + qkv_bias + q * d + 3 * d * f + 2 * d + qk_norm
            }
        };
        let final_norm = match self.architecture {
            Architecture::GptNeox | Architecture::Gpt2 => 2 * d,
            _ => d,
        };
        per_layer * self.num_hidden_layers as u64 + final_norm
    }

    /// All parameters, counting the LM head once when it is tied to the embedding.
    pub fn total_params(&self) -> u64 {
        let emb = (self.vocab_size * self.hidden_size) as u64;
        let head = if self.tie_word_embeddings { 0 } else { emb };
        let positions = if self.architecture == Architecture::Gpt2 {
            (self.max_position_embeddings * self.hidden_size) as u64
        } else {
            0
        };
        self.non_embedding_params() + emb + head + positions
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
            architecture: Architecture::Qwen2,
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
            head_dim: None,
            rope_scaling: RopeScaling::Default,
            sliding_window: None,
            use_parallel_residual: true,
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

    /// The published totals of each family's reference checkpoint (the parameter count of its
    /// safetensors, where the LM head is tied counting the shared matrix once).
    #[test]
    fn new_family_presets_match_their_published_parameter_counts() {
        for (name, total) in [
            // meta-llama/Llama-3.2-1B: 1.24B, tied
            ("llama-3.2-1b", 1_235_814_400u64),
            // mistralai/Mistral-7B-v0.1: 7.24B
            ("mistral-7b", 7_241_732_096),
            // microsoft/Phi-3-mini-4k-instruct: 3.82B
            ("phi-3-mini", 3_821_079_552),
            // openai-community/gpt2: 124M, tied, with its 1024 learned positions
            ("gpt2", 124_439_808),
            // Qwen/Qwen3-0.6B: "0.6B, 0.44B non-embedding" (tied)
            ("qwen3-0.6b", 596_049_920),
        ] {
            let c = TransformerConfig::preset(name).unwrap();
            c.validate().unwrap();
            assert_eq!(c.total_params(), total, "{name}");
        }
        let qwen3 = TransformerConfig::preset("qwen3-0.6b").unwrap();
        assert_eq!(qwen3.non_embedding_params(), 440_467_456);
        assert_eq!((qwen3.head_dim(), qwen3.hidden_size), (128, 1024));
        // GPT-2's position table is neither a layer nor the token embedding
        let gpt2 = TransformerConfig::preset("gpt2").unwrap();
        assert_eq!(gpt2.non_embedding_params(), 85_056_000);
    }

    #[test]
    fn options_belong_to_the_families_that_have_them() {
        let refused = |f: &dyn Fn(&mut TransformerConfig), preset: &str, what: &str| {
            let mut c = TransformerConfig::preset(preset).unwrap();
            f(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(what), "{preset}: {e}");
        };
        refused(
            &|c| c.sliding_window = Some(8),
            "tinyllama-1.1b",
            "sliding window",
        );
        refused(
            &|c| c.sliding_window = Some(0),
            "mistral-7b",
            "sliding_window",
        );
        refused(&|c| c.head_dim = Some(16), "pythia-70m", "head_dim");
        refused(&|c| c.head_dim = Some(16), "phi-3-mini", "head_dim");
        refused(
            &|c| c.use_parallel_residual = false,
            "qwen2-0.5b",
            "GPT-NeoX",
        );
        refused(&|c| c.attention_bias = true, "qwen3-0.6b", "attention_bias");
        refused(&|c| c.rotary_pct = 0.5, "gpt2", "rotary");
        refused(
            &|c| c.rope_scaling = RopeScaling::Linear { factor: 2.0 },
            "pythia-70m",
            "RoPE scaling",
        );
        refused(
            &|c| c.rope_scaling = RopeScaling::Linear { factor: 2.0 },
            "phi-3-mini",
            "longrope",
        );
        refused(
            &|c| {
                c.rope_scaling = RopeScaling::Longrope {
                    short_factor: vec![1.0; 64],
                    long_factor: vec![1.0; 64],
                    original_max_position_embeddings: 4096,
                    attention_factor: 1.0,
                }
            },
            "tinyllama-1.1b",
            "Phi-3 only",
        );
        refused(
            &|c| {
                c.rope_scaling = RopeScaling::Longrope {
                    short_factor: vec![1.0; 63],
                    long_factor: vec![1.0; 48],
                    original_max_position_embeddings: 4096,
                    attention_factor: 1.0,
                }
            },
            "phi-3-mini",
            "48 positive numbers",
        );
        refused(
            &|c| {
                c.rope_scaling = RopeScaling::Llama3 {
                    factor: 8.0,
                    low_freq_factor: 4.0,
                    high_freq_factor: 1.0,
                    original_max_position_embeddings: 8192,
                }
            },
            "tinyllama-1.1b",
            "high_freq_factor",
        );
    }
}
