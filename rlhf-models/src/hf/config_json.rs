//! `config.json`, the model's settings in Hugging Face's names: read into a
//! [`TransformerConfig`] for each family, and written back as `transformers` loads it.
//!
//! Reading has two passes. Serde reads the file into [`HfConfig`], the fields this implementation
//! knows by their Hugging Face names, and a value of the wrong type is an error naming its field
//! (`rope_scaling.factor: invalid type: string "x", expected f64`). Then one function per family
//! refuses, by name, the options that are not implemented, fills in `transformers`' defaults for
//! the fields the file leaves out, and builds the config.

use std::path::Path;

use rlhf_core::{Error, Result};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value, json};

use super::{causal_class, data_error};
use crate::config::{Architecture, RopeScaling, TransformerConfig};

/// The fields of a `config.json` that some family reads. Absent and `null` are both `None`,
/// except for the two fields where `transformers` gives them different meanings (see
/// [`absent_or_null`]).
#[derive(Deserialize)]
#[serde(expecting = "a JSON object of model settings")]
struct HfConfig {
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    intermediate_size: Option<usize>,
    max_position_embeddings: Option<usize>,
    head_dim: Option<usize>,
    #[serde(default, deserialize_with = "absent_or_null")]
    num_key_value_heads: Option<Option<usize>>,
    #[serde(default, deserialize_with = "absent_or_null")]
    sliding_window: Option<Option<usize>>,
    use_sliding_window: Option<bool>,
    layer_types: Option<Vec<String>>,
    hidden_act: Option<String>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    tie_word_embeddings: Option<bool>,
    use_parallel_residual: Option<bool>,
    layer_norm_eps: Option<f64>,
    rms_norm_eps: Option<f64>,
    hidden_dropout: Option<f64>,
    attention_dropout: Option<f64>,
    resid_pdrop: Option<f64>,
    // rotary settings at the top level (the older places)
    rope_theta: Option<f64>,
    rotary_emb_base: Option<f64>,
    rotary_pct: Option<f64>,
    partial_rotary_factor: Option<f64>,
    original_max_position_embeddings: Option<usize>,
    rope_scaling: Option<Map<String, Value>>,
    rope_parameters: Option<Map<String, Value>>,
    // GPT-2's names
    n_embd: Option<usize>,
    n_head: Option<usize>,
    n_layer: Option<usize>,
    n_inner: Option<usize>,
    n_positions: Option<usize>,
    layer_norm_epsilon: Option<f64>,
    activation_function: Option<String>,
    scale_attn_weights: Option<bool>,
    scale_attn_by_inverse_layer_idx: Option<bool>,
    add_cross_attention: Option<bool>,
}

/// The fields of the RoPE object (`rope_scaling`, or `rope_parameters` in `transformers` ≥ 5).
#[derive(Deserialize)]
struct RopeParams {
    rope_type: Option<String>,
    /// The older name of `rope_type`.
    #[serde(rename = "type")]
    old_type: Option<String>,
    rope_theta: Option<f64>,
    partial_rotary_factor: Option<f64>,
    factor: Option<f64>,
    low_freq_factor: Option<f64>,
    high_freq_factor: Option<f64>,
    attention_factor: Option<f64>,
    original_max_position_embeddings: Option<usize>,
    short_factor: Option<Vec<f64>>,
    long_factor: Option<Vec<f64>>,
}

/// Keeps an absent field (`None`) apart from one set to `null` (`Some(None)`).
fn absent_or_null<'de, D, T>(d: D) -> std::result::Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// Deserializes `value` as `T`; an error names the field, under `prefix` when one is given.
fn typed<'de, T: Deserialize<'de>>(value: &'de Value, path: &Path, prefix: &str) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        // the path of the value itself is "."
        let inner = e.path().to_string();
        let field = match (prefix.is_empty(), inner == ".") {
            (true, true) => "-".to_string(),
            (true, false) => inner,
            (false, true) => prefix.to_string(),
            (false, false) => format!("{prefix}.{inner}"),
        };
        data_error(path, &field, e.inner().to_string())
    })
}

/// The checks of the second pass: a required field, a refusal, each naming its field.
struct Check<'a> {
    path: &'a Path,
}

impl Check<'_> {
    fn need<T>(&self, value: Option<T>, name: &str) -> Result<T> {
        value.ok_or_else(|| data_error(self.path, name, "missing"))
    }

    fn refuse<T>(&self, name: &str, why: impl Into<String>) -> Result<T> {
        Err(data_error(self.path, name, why))
    }
}

/// Reads a Hugging Face `config.json` (`model_type` `gpt_neox`, `llama`, `qwen2`, `qwen3`,
/// `mistral`, `phi3` or `gpt2`). A field the file leaves out takes `transformers`' default for
/// the family. Options this implementation does not have (RoPE scalings other than a family's
/// `linear`, `dynamic`, `llama3` or Phi-3's `longrope`, per-layer sliding windows, MLP or output
/// biases, an activation other than the family's, GPT-2's cross-attention or inverse-layer
/// scaling, …) are refused by name rather than silently ignored.
pub fn config_from_json(path: &Path) -> Result<TransformerConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let v: Value =
        serde_json::from_str(&text).map_err(|e| data_error(path, "-", format!("not JSON: {e}")))?;
    let check = Check { path };
    // the family first, so that a file of another family is refused as such
    let model_type = match v.get("model_type") {
        Some(Value::String(t)) => t.as_str(),
        _ => return check.refuse("model_type", "missing or not a string"),
    };
    let arch = match model_type {
        "gpt_neox" => Architecture::GptNeox,
        "llama" => Architecture::Llama,
        "qwen2" => Architecture::Qwen2,
        "qwen3" => Architecture::Qwen3,
        "mistral" => Architecture::Mistral,
        "phi3" => Architecture::Phi3,
        "gpt2" => Architecture::Gpt2,
        other => {
            return check.refuse(
                "model_type",
                format!(
                    "`{other}` is not supported (gpt_neox, llama, qwen2, qwen3, mistral, phi3, gpt2)"
                ),
            );
        }
    };
    let c: HfConfig = typed(&v, path, "")?;
    let config = match arch {
        Architecture::GptNeox => neox_config(&c, &check)?,
        Architecture::Gpt2 => gpt2_config(&c, &check)?,
        _ => llama_config(&c, &check, arch)?,
    };
    config
        .validate()
        .map_err(|e| data_error(path, "-", e.to_string()))?;
    Ok(config)
}

/// The rotary settings of a `config.json`: `rope_theta`, the partial rotary factor when the file
/// sets one, and the scaling. They are read as `transformers` ≥ 5 standardises them: the old
/// `rope_scaling` object when it is there and not empty, else `rope_parameters`; `rope_type` (or
/// the old `type`); `rope_theta` inside, else at the top level (else `fallback_theta`);
/// `original_max_position_embeddings` at the top level first (Phi-3 always has one, 4096 by
/// default), else inside, else `max_position_embeddings`.
// One piece, over 80 lines: the choice of the RoPE object, then one match on `rope_type` that
// reads each kind's fields from it, with the refusal of the kinds a family does not implement.
fn rope(
    c: &HfConfig,
    check: &Check,
    arch: Architecture,
    fallback_theta: f64,
    max_positions: usize,
) -> Result<(f64, Option<f64>, RopeScaling)> {
    let empty = Map::new();
    let (key, object) = match &c.rope_scaling {
        Some(m) if !m.is_empty() => ("rope_scaling", m),
        _ => (
            "rope_parameters",
            c.rope_parameters.as_ref().unwrap_or(&empty),
        ),
    };
    if object.values().any(Value::is_object) {
        return check.refuse(key, "RoPE parameters per layer type are not implemented");
    }
    let object = Value::Object(object.clone());
    let params: RopeParams = typed(&object, check.path, key)?;
    let field = |name: &str| format!("{key}.{name}");
    let required = |x: Option<f64>, name: &str| check.need(x, &field(name));
    let original = || -> usize {
        match (c.original_max_position_embeddings, arch) {
            (Some(top), _) => top,
            (None, Architecture::Phi3) => 4096,
            (None, _) => params
                .original_max_position_embeddings
                .unwrap_or(max_positions),
        }
    };
    let theta = params.rope_theta.unwrap_or(fallback_theta);
    let partial = params.partial_rotary_factor.or(c.partial_rotary_factor);
    let kind = params
        .rope_type
        .as_deref()
        .or(params.old_type.as_deref())
        .unwrap_or("default");
    let llama_rope = matches!(
        arch,
        Architecture::Llama | Architecture::Qwen2 | Architecture::Qwen3 | Architecture::Mistral
    );
    let scaling = match kind {
        "default" => RopeScaling::Default,
        "linear" if llama_rope => RopeScaling::Linear {
            factor: required(params.factor, "factor")?,
        },
        "dynamic" if llama_rope => RopeScaling::Dynamic {
            factor: required(params.factor, "factor")?,
        },
        "llama3" if llama_rope => RopeScaling::Llama3 {
            factor: required(params.factor, "factor")?,
            low_freq_factor: required(params.low_freq_factor, "low_freq_factor")?,
            high_freq_factor: required(params.high_freq_factor, "high_freq_factor")?,
            original_max_position_embeddings: original(),
        },
        // transformers' Phi-3 reads the names of older files ("su", "yarn") as longrope
        "longrope" | "su" | "yarn" if arch == Architecture::Phi3 => {
            let original_max = original();
            let factor = params
                .factor
                .unwrap_or(max_positions as f64 / original_max.max(1) as f64);
            let attention_factor = match params.attention_factor {
                Some(x) => x,
                None if factor <= 1.0 => 1.0,
                None => (1.0 + factor.ln() / (original_max as f64).ln()).sqrt(),
            };
            RopeScaling::Longrope {
                short_factor: check.need(params.short_factor, &field("short_factor"))?,
                long_factor: check.need(params.long_factor, &field("long_factor"))?,
                original_max_position_embeddings: original_max,
                attention_factor,
            }
        }
        other => {
            let implemented = match arch {
                Architecture::Phi3 => "default and longrope",
                _ if llama_rope => "default, linear, dynamic and llama3",
                _ => "default",
            };
            return check.refuse(
                &field("rope_type"),
                format!(
                    "`{other}` RoPE is not implemented for {} (only {implemented})",
                    arch.model_type()
                ),
            );
        }
    };
    Ok((theta, partial, scaling))
}

fn neox_config(c: &HfConfig, check: &Check) -> Result<TransformerConfig> {
    if !c.attention_bias.unwrap_or(true) {
        return check.refuse(
            "attention_bias",
            "GPT-NeoX without attention bias is not implemented",
        );
    }
    if c.hidden_act.as_deref().unwrap_or("gelu") != "gelu" {
        return check.refuse(
            "hidden_act",
            "GPT-NeoX is implemented with exact `gelu` only",
        );
    }
    let heads = check.need(c.num_attention_heads, "num_attention_heads")?;
    let max_positions = check.need(c.max_position_embeddings, "max_position_embeddings")?;
    let fallback_theta = c.rotary_emb_base.or(c.rope_theta).unwrap_or(10_000.0);
    let (theta, partial, rope_scaling) = rope(
        c,
        check,
        Architecture::GptNeox,
        fallback_theta,
        max_positions,
    )?;
    Ok(TransformerConfig {
        architecture: Architecture::GptNeox,
        vocab_size: check.need(c.vocab_size, "vocab_size")?,
        hidden_size: check.need(c.hidden_size, "hidden_size")?,
        num_hidden_layers: check.need(c.num_hidden_layers, "num_hidden_layers")?,
        num_attention_heads: heads,
        num_key_value_heads: heads,
        intermediate_size: check.need(c.intermediate_size, "intermediate_size")?,
        rotary_pct: partial.or(c.rotary_pct).unwrap_or(0.25),
        rope_theta: theta,
        max_position_embeddings: max_positions,
        tie_word_embeddings: c.tie_word_embeddings.unwrap_or(false),
        attention_bias: false,
        norm_eps: c.layer_norm_eps.unwrap_or(1e-5),
        dropout: c.hidden_dropout.unwrap_or(0.0),
        head_dim: None,
        rope_scaling,
        sliding_window: None,
        use_parallel_residual: c.use_parallel_residual.unwrap_or(true),
    })
}

/// Llama, Qwen2, Qwen3, Mistral, Phi-3, with `transformers`' defaults of each for the fields a
/// file leaves out.
// One piece, over 80 lines: like `neox_config` and `gpt2_config`, the refusals of options not
// implemented, then the per-family defaults (head_dim, KV heads, sliding window) and the config
// built from them, five families in one place so that their differences read side by side.
fn llama_config(c: &HfConfig, check: &Check, arch: Architecture) -> Result<TransformerConfig> {
    let name = arch.model_type();
    if c.hidden_act.as_deref().unwrap_or("silu") != "silu" {
        return check.refuse(
            "hidden_act",
            format!("{name} is implemented with `silu` only"),
        );
    }
    if arch == Architecture::Llama && c.mlp_bias.unwrap_or(false) {
        return check.refuse("mlp_bias", "an MLP bias is not implemented");
    }
    if matches!(arch, Architecture::Llama | Architecture::Qwen3)
        && c.attention_bias.unwrap_or(false)
    {
        return check.refuse(
            "attention_bias",
            format!(
                "{name} with attention bias (on o_proj too) is not implemented; Qwen2's QKV bias is"
            ),
        );
    }
    if matches!(arch, Architecture::Qwen2 | Architecture::Qwen3) {
        if c.use_sliding_window.unwrap_or(false) {
            return check.refuse(
                "use_sliding_window",
                "Qwen's per-layer sliding windows are not implemented",
            );
        }
        let all_full = |types: &Vec<String>| types.iter().all(|t| t == "full_attention");
        if !c.layer_types.as_ref().is_none_or(all_full) {
            return check.refuse(
                "layer_types",
                "only full attention in every layer is implemented",
            );
        }
    }
    let heads = check.need(c.num_attention_heads, "num_attention_heads")?;
    let hidden = check.need(c.hidden_size, "hidden_size")?;
    let max_positions = check.need(c.max_position_embeddings, "max_position_embeddings")?;
    let head_dim = match c.head_dim {
        None if arch == Architecture::Qwen3 => Some(128),
        hd => hd,
    }
    // the usual width is not written back as a head_dim of its own
    .filter(|&hd| heads == 0 || !hidden.is_multiple_of(heads) || hd != hidden / heads);
    let fallback_theta = c.rope_theta.unwrap_or(10_000.0);
    let (theta, partial, rope_scaling) = rope(c, check, arch, fallback_theta, max_positions)?;
    let rotary_pct = partial.unwrap_or(1.0);
    if arch != Architecture::Phi3 && rotary_pct != 1.0 {
        return check.refuse(
            "partial_rotary_factor",
            format!("{name} is implemented with rotary on the whole head only"),
        );
    }
    let kv_default = match arch {
        Architecture::Qwen2 | Architecture::Qwen3 => 32,
        Architecture::Mistral => 8,
        _ => heads,
    };
    let sliding_window = match (arch, c.sliding_window) {
        (Architecture::Mistral, None) => Some(4096),
        (Architecture::Mistral | Architecture::Phi3, set) => set.flatten(),
        _ => None,
    };
    Ok(TransformerConfig {
        architecture: arch,
        vocab_size: check.need(c.vocab_size, "vocab_size")?,
        hidden_size: hidden,
        num_hidden_layers: check.need(c.num_hidden_layers, "num_hidden_layers")?,
        num_attention_heads: heads,
        // absent: the family's default; `null`: as many as the query heads (transformers'
        // `__post_init__`)
        num_key_value_heads: match c.num_key_value_heads {
            None => kv_default,
            Some(None) => heads,
            Some(Some(kv)) => kv,
        },
        intermediate_size: check.need(c.intermediate_size, "intermediate_size")?,
        rotary_pct,
        rope_theta: theta,
        max_position_embeddings: max_positions,
        tie_word_embeddings: c.tie_word_embeddings.unwrap_or(false),
        attention_bias: arch == Architecture::Qwen2,
        norm_eps: match arch {
            Architecture::Phi3 => c.rms_norm_eps.unwrap_or(1e-5),
            _ => c.rms_norm_eps.unwrap_or(1e-6),
        },
        dropout: match arch {
            Architecture::Phi3 => c.resid_pdrop.unwrap_or(0.0),
            _ => c.attention_dropout.unwrap_or(0.0),
        },
        head_dim,
        rope_scaling,
        sliding_window,
        use_parallel_residual: true,
    })
}

fn gpt2_config(c: &HfConfig, check: &Check) -> Result<TransformerConfig> {
    let activation = c.activation_function.as_deref().unwrap_or("gelu_new");
    if !matches!(activation, "gelu_new" | "gelu_pytorch_tanh") {
        return check.refuse(
            "activation_function",
            "GPT-2 is implemented with `gelu_new` (tanh-approximated GELU) only",
        );
    }
    if !c.scale_attn_weights.unwrap_or(true) {
        return check.refuse(
            "scale_attn_weights",
            "attention without the 1/√d scaling is not implemented",
        );
    }
    if c.scale_attn_by_inverse_layer_idx.unwrap_or(false) {
        return check.refuse(
            "scale_attn_by_inverse_layer_idx",
            "scaling attention by the inverse layer index is not implemented",
        );
    }
    if c.add_cross_attention.unwrap_or(false) {
        return check.refuse(
            "add_cross_attention",
            "GPT-2 with cross-attention is not implemented",
        );
    }
    let hidden = check.need(c.n_embd, "n_embd")?;
    let heads = check.need(c.n_head, "n_head")?;
    Ok(TransformerConfig {
        architecture: Architecture::Gpt2,
        vocab_size: check.need(c.vocab_size, "vocab_size")?,
        hidden_size: hidden,
        num_hidden_layers: check.need(c.n_layer, "n_layer")?,
        num_attention_heads: heads,
        num_key_value_heads: heads,
        intermediate_size: c.n_inner.unwrap_or(hidden.saturating_mul(4)),
        rotary_pct: 0.0,
        rope_theta: 10_000.0,
        max_position_embeddings: check.need(c.n_positions, "n_positions")?,
        tie_word_embeddings: c.tie_word_embeddings.unwrap_or(true),
        attention_bias: false,
        norm_eps: c.layer_norm_epsilon.unwrap_or(1e-5),
        dropout: c.resid_pdrop.unwrap_or(0.1),
        head_dim: None,
        rope_scaling: RopeScaling::Default,
        sliding_window: None,
        use_parallel_residual: true,
    })
}

/// `rope_parameters` as `transformers` ≥ 5 writes it.
fn rope_json(config: &TransformerConfig) -> Value {
    let mut rope =
        json!({ "rope_type": config.rope_scaling.name(), "rope_theta": config.rope_theta });
    if config.architecture == Architecture::Phi3 || config.architecture == Architecture::GptNeox {
        rope["partial_rotary_factor"] = config.rotary_pct.into();
    }
    match &config.rope_scaling {
        RopeScaling::Default => {}
        RopeScaling::Linear { factor } | RopeScaling::Dynamic { factor } => {
            rope["factor"] = (*factor).into();
        }
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            rope["factor"] = (*factor).into();
            rope["low_freq_factor"] = (*low_freq_factor).into();
            rope["high_freq_factor"] = (*high_freq_factor).into();
            rope["original_max_position_embeddings"] = (*original_max_position_embeddings).into();
        }
        RopeScaling::Longrope {
            short_factor,
            long_factor,
            original_max_position_embeddings,
            attention_factor,
        } => {
            rope["short_factor"] = json!(short_factor);
            rope["long_factor"] = json!(long_factor);
            rope["original_max_position_embeddings"] = (*original_max_position_embeddings).into();
            rope["attention_factor"] = (*attention_factor).into();
        }
    }
    rope
}

/// The scaling under its older name, `rope_scaling`, as transformers < 5 and other tools read
/// it: [`rope_json`] without the keys those read at the top level (`rope_theta`,
/// `partial_rotary_factor`). transformers 5 reads it before `rope_parameters`, so both name the
/// same scaling. transformers 4's Phi-3 takes exactly `type`, `short_factor` and `long_factor`
/// (and computes the attention factor from the positions, as [`rope`] does when it is absent),
/// so a Phi-3 longrope with that default factor is written so; another factor is kept, which
/// transformers 4 refuses rather than computing with the default.
fn legacy_rope_json(config: &TransformerConfig) -> Value {
    let mut rope = rope_json(config);
    let object = rope.as_object_mut().expect("rope_json writes an object");
    object.remove("rope_theta");
    object.remove("partial_rotary_factor");
    if let RopeScaling::Longrope {
        short_factor,
        long_factor,
        original_max_position_embeddings: original,
        attention_factor,
    } = &config.rope_scaling
    {
        let factor = config.max_position_embeddings as f64 / (*original).max(1) as f64;
        let default = if factor <= 1.0 {
            1.0
        } else {
            (1.0 + factor.ln() / (*original as f64).ln()).sqrt()
        };
        if config.architecture == Architecture::Phi3 && *attention_factor == default {
            return json!({
                "type": "longrope",
                "short_factor": short_factor,
                "long_factor": long_factor,
            });
        }
    }
    rope
}

/// The `config.json` that `transformers` loads for `config` (`GPTNeoXForCausalLM`,
/// `LlamaForCausalLM`, `Qwen2ForCausalLM`, `Qwen3ForCausalLM`, `MistralForCausalLM`,
/// `Phi3ForCausalLM` or `GPT2LMHeadModel`).
// One piece, over 80 lines: one table, a `json!` literal per family (GPT-NeoX, GPT-2, the Llama
// family with its per-architecture keys), then the keys every family shares added after.
pub fn config_to_json(config: &TransformerConfig) -> Value {
    let arch = config.architecture;
    let mut json = match arch {
        Architecture::GptNeox => json!({
            "vocab_size": config.vocab_size,
            "hidden_size": config.hidden_size,
            "num_hidden_layers": config.num_hidden_layers,
            "num_attention_heads": config.num_attention_heads,
            "intermediate_size": config.intermediate_size,
            "rotary_pct": config.rotary_pct,
            "rotary_emb_base": config.rope_theta,
            "rope_parameters": rope_json(config),
            "max_position_embeddings": config.max_position_embeddings,
            "layer_norm_eps": config.norm_eps,
            "hidden_act": "gelu",
            "use_parallel_residual": config.use_parallel_residual,
            "tie_word_embeddings": config.tie_word_embeddings,
            "attention_bias": true,
            "hidden_dropout": config.dropout,
            "attention_dropout": 0.0,
        }),
        Architecture::Gpt2 => json!({
            "vocab_size": config.vocab_size,
            "n_embd": config.hidden_size,
            "n_layer": config.num_hidden_layers,
            "n_head": config.num_attention_heads,
            "n_inner": config.intermediate_size,
            "n_positions": config.max_position_embeddings,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": config.norm_eps,
            "scale_attn_weights": true,
            "scale_attn_by_inverse_layer_idx": false,
            "reorder_and_upcast_attn": false,
            "add_cross_attention": false,
            "tie_word_embeddings": config.tie_word_embeddings,
            "resid_pdrop": config.dropout,
            "embd_pdrop": config.dropout,
            "attn_pdrop": config.dropout,
        }),
        _ => {
            let mut json = json!({
                "vocab_size": config.vocab_size,
                "hidden_size": config.hidden_size,
                "num_hidden_layers": config.num_hidden_layers,
                "num_attention_heads": config.num_attention_heads,
                "num_key_value_heads": config.num_key_value_heads,
                "head_dim": config.head_dim(),
                "intermediate_size": config.intermediate_size,
                "rope_theta": config.rope_theta,
                "rope_parameters": rope_json(config),
                "max_position_embeddings": config.max_position_embeddings,
                "rms_norm_eps": config.norm_eps,
                "hidden_act": "silu",
                "tie_word_embeddings": config.tie_word_embeddings,
                "attention_bias": false,
                "attention_dropout": config.dropout,
            });
            match arch {
                Architecture::Qwen2 | Architecture::Qwen3 => {
                    json["use_sliding_window"] = false.into();
                }
                Architecture::Mistral => {
                    json["sliding_window"] = json!(config.sliding_window);
                }
                Architecture::Phi3 => {
                    // Phi3Config's default pad_token_id, 32000, is refused by nn.Embedding on a
                    // smaller vocabulary; the pad id plays no part in the weights or the logits
                    if config.vocab_size <= 32_000 {
                        json["pad_token_id"] = Value::Null;
                    }
                    json["sliding_window"] = json!(config.sliding_window);
                    json["resid_pdrop"] = config.dropout.into();
                    json["attention_dropout"] = 0.0.into();
                    json["partial_rotary_factor"] = config.rotary_pct.into();
                    if let RopeScaling::Longrope {
                        original_max_position_embeddings,
                        ..
                    } = config.rope_scaling
                    {
                        json["original_max_position_embeddings"] =
                            original_max_position_embeddings.into();
                    }
                }
                _ => {}
            }
            json
        }
    };
    if config.rope_scaling != RopeScaling::Default {
        json["rope_scaling"] = legacy_rope_json(config);
    }
    json["architectures"] = json!([causal_class(arch)]);
    json["model_type"] = arch.model_type().into();
    json["torch_dtype"] = "float32".into();
    json
}
