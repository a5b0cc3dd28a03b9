//! Hugging Face checkpoints: `config.json` and `model.safetensors` (or a sharded
//! `model.safetensors.index.json`) in, the same out, for every family.
//!
//! The module tree uses Hugging Face's own names (`layers.3.attention.query_key_value`,
//! `layers.3.self_attn.q_proj`, `h.3.attn.c_attn`, …), so the only renaming is the one table
//! [`NAME_MAP`]: the prefix each family puts before the transformer body. burn-store's PyTorch
//! adapters do the rest (transpose `Linear` weights, `weight`/`bias` ↔ `gamma`/`beta` on norms);
//! GPT-2's `Conv1D` weights are stored `[in, out]` already, the layout of [`crate::gpt2::Conv1D`],
//! which the adapters leave as it is.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::{
    BurnToPyTorchAdapter, ChainAdapter, FloatCastAdapter, ModuleSnapshot, PyTorchToBurnAdapter,
    SafetensorsStore,
};
use burn::tensor::{DType, Device};
use rlhf_core::train::fs::{write_atomic, write_atomic_parts};
use rlhf_core::{Error, Result};
use serde_json::{Map, Value, json};

use crate::config::{Architecture, RopeScaling, TransformerConfig};
use crate::lm::{CausalLm, ScalarModel};

/// The top-level modules of the families built by [`crate::Llama`].
const LLAMA_MODULES: &[&str] = &["embed_tokens", "layers", "norm"];

/// The name mapping, one row per family: `(architecture, Hugging Face prefix, our top-level
/// modules that carry it)`. Everything else already has its Hugging Face name.
///
/// | family   | Hugging Face                         | here                    |
/// |----------|--------------------------------------|-------------------------|
/// | GPT-NeoX | `gpt_neox.{embed_in,layers,final_layer_norm}.…`, `embed_out.weight` | `{embed_in,layers,final_layer_norm}.…`, `embed_out.weight` |
/// | Llama, Qwen2, Qwen3, Mistral, Phi-3 | `model.{embed_tokens,layers,norm}.…`, `lm_head.weight` | `{embed_tokens,layers,norm}.…`, `lm_head.weight` |
/// | GPT-2    | `transformer.{wte,wpe,h,ln_f}.…`, `lm_head.weight` (untied only) | `{wte,wpe,h,ln_f}.…`, `lm_head.weight` |
///
/// A checkpoint saved from the bare model (no prefix, as `openai-community/gpt2`'s) loads too:
/// its names are already ours.
pub const NAME_MAP: &[(Architecture, &str, &[&str])] = &[
    (
        Architecture::GptNeox,
        "gpt_neox",
        &["embed_in", "layers", "final_layer_norm"],
    ),
    (Architecture::Llama, "model", LLAMA_MODULES),
    (Architecture::Qwen2, "model", LLAMA_MODULES),
    (Architecture::Qwen3, "model", LLAMA_MODULES),
    (Architecture::Mistral, "model", LLAMA_MODULES),
    (Architecture::Phi3, "model", LLAMA_MODULES),
    (
        Architecture::Gpt2,
        "transformer",
        &["wte", "wpe", "h", "ln_f"],
    ),
];

/// Buffers that older checkpoints store but that are recomputed here (rotary frequencies and the
/// causal-mask buffers of GPT-NeoX and GPT-2); they are skipped on import.
const RECOMPUTED_BUFFERS: &[&str] = &[
    ".rotary_emb.inv_freq",
    ".attention.bias",
    ".attention.masked_bias",
    ".attn.bias",
    ".attn.masked_bias",
];

fn row(arch: Architecture) -> (&'static str, &'static [&'static str]) {
    let (_, prefix, modules) = NAME_MAP
        .iter()
        .find(|(a, _, _)| *a == arch)
        .expect("every architecture has a row in NAME_MAP");
    (prefix, modules)
}

/// The Hugging Face name of the parameter at `path` in a [`CausalLm`]'s module tree
/// (`Llama.layers.0.self_attn.q_proj.weight` → `model.layers.0.self_attn.q_proj.weight`): the
/// enum variant dropped, the family's prefix added to its body's modules.
pub(crate) fn hf_parameter_name(arch: Architecture, path: &str) -> String {
    let body = match path.split_once('.') {
        Some((variant, rest)) if ["GptNeox", "Llama", "Gpt2"].contains(&variant) => rest,
        _ => path,
    };
    let (prefix, modules) = row(arch);
    let top = body.split('.').next().unwrap_or(body);
    if modules.contains(&top) {
        format!("{prefix}.{body}")
    } else {
        body.to_string()
    }
}

/// The `transformers` class of a causal checkpoint of `arch`.
fn causal_class(arch: Architecture) -> &'static str {
    match arch {
        Architecture::GptNeox => "GPTNeoXForCausalLM",
        Architecture::Llama => "LlamaForCausalLM",
        Architecture::Qwen2 => "Qwen2ForCausalLM",
        Architecture::Qwen3 => "Qwen3ForCausalLM",
        Architecture::Mistral => "MistralForCausalLM",
        Architecture::Phi3 => "Phi3ForCausalLM",
        Architecture::Gpt2 => "GPT2LMHeadModel",
    }
}

/// The `transformers` class of a sequence-classification checkpoint of `arch`.
fn scalar_class(arch: Architecture) -> &'static str {
    match arch {
        Architecture::GptNeox => "GPTNeoXForSequenceClassification",
        Architecture::Llama => "LlamaForSequenceClassification",
        Architecture::Qwen2 => "Qwen2ForSequenceClassification",
        Architecture::Qwen3 => "Qwen3ForSequenceClassification",
        Architecture::Mistral => "MistralForSequenceClassification",
        Architecture::Phi3 => "Phi3ForSequenceClassification",
        Architecture::Gpt2 => "GPT2ForSequenceClassification",
    }
}

fn data_error(file: &Path, field: &str, message: impl Into<String>) -> Error {
    Error::Data {
        file: file.to_path_buf(),
        line: 0,
        field: field.to_string(),
        message: message.into(),
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
    config_from_value(&v, path)
}

/// Typed reads of `config.json`'s fields, each error naming the field.
struct Fields<'a> {
    v: &'a Value,
    path: &'a Path,
}

impl Fields<'_> {
    fn error(&self, name: &str, message: impl Into<String>) -> Error {
        data_error(self.path, name, message)
    }

    fn refuse<T>(&self, name: &str, why: &str) -> Result<T> {
        Err(self.error(name, why))
    }

    /// A field that is absent or `null` is `None`.
    fn get(&self, name: &str) -> Option<&Value> {
        self.v.get(name).filter(|x| !x.is_null())
    }

    fn usize(&self, name: &str) -> Result<usize> {
        self.opt_usize(name)?
            .ok_or_else(|| self.error(name, "missing or not a non-negative integer"))
    }

    fn opt_usize(&self, name: &str) -> Result<Option<usize>> {
        self.get(name)
            .map(|x| {
                x.as_u64()
                    .and_then(|x| usize::try_from(x).ok())
                    .ok_or_else(|| self.error(name, "not a non-negative integer"))
            })
            .transpose()
    }

    fn usize_or(&self, name: &str, default: usize) -> Result<usize> {
        Ok(self.opt_usize(name)?.unwrap_or(default))
    }

    fn opt_f64(&self, name: &str) -> Result<Option<f64>> {
        self.get(name)
            .map(|x| x.as_f64().ok_or_else(|| self.error(name, "not a number")))
            .transpose()
    }

    fn f64_or(&self, name: &str, default: f64) -> Result<f64> {
        Ok(self.opt_f64(name)?.unwrap_or(default))
    }

    fn bool_or(&self, name: &str, default: bool) -> Result<bool> {
        self.get(name)
            .map(|x| x.as_bool().ok_or_else(|| self.error(name, "not a boolean")))
            .transpose()
            .map(|b| b.unwrap_or(default))
    }

    fn str_or<'s>(&'s self, name: &str, default: &'s str) -> Result<&'s str> {
        self.get(name)
            .map(|x| x.as_str().ok_or_else(|| self.error(name, "not a string")))
            .transpose()
            .map(|s| s.unwrap_or(default))
    }
}

/// The rotary settings of a `config.json`: `rope_theta`, the partial rotary factor when the file
/// sets one, and the scaling. They are read as `transformers` ≥ 5 standardises them: the old
/// `rope_scaling` object when it is there and not empty, else `rope_parameters`; `rope_type` (or
/// the old `type`); `rope_theta` inside, else at the top level (else `fallback_theta`);
/// `original_max_position_embeddings` at the top level first (Phi-3 always has one, 4096 by
/// default), else inside, else `max_position_embeddings`.
// One piece, over 80 lines: the readers `number`, `required`, `factors` and `original` close
// over the chosen object (`rope_scaling` or `rope_parameters`) and its key for their error
// messages, and the match on `rope_type` reads each kind's fields through them.
fn rope(
    f: &Fields,
    arch: Architecture,
    fallback_theta: f64,
    max_positions: usize,
) -> Result<(f64, Option<f64>, RopeScaling)> {
    let object = |key: &str| -> Result<Option<&Map<String, Value>>> {
        match f.get(key) {
            None => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m)),
            Some(_) => f.refuse(key, "not an object"),
        }
    };
    let (key, params) = match object("rope_scaling")? {
        Some(m) if !m.is_empty() => ("rope_scaling", Some(m)),
        _ => ("rope_parameters", object("rope_parameters")?),
    };
    let empty = Map::new();
    let params = params.unwrap_or(&empty);
    if params.values().any(Value::is_object) {
        return f.refuse(key, "RoPE parameters per layer type are not implemented");
    }
    let field = |name: &str| format!("{key}.{name}");
    let number = |name: &str| -> Result<Option<f64>> {
        params
            .get(name)
            .filter(|x| !x.is_null())
            .map(|x| {
                x.as_f64()
                    .ok_or_else(|| f.error(&field(name), "not a number"))
            })
            .transpose()
    };
    let required = |name: &str| -> Result<f64> {
        number(name)?.ok_or_else(|| f.error(&field(name), "missing"))
    };
    let factors = |name: &str| -> Result<Vec<f64>> {
        params
            .get(name)
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(Value::as_f64).collect::<Option<Vec<f64>>>())
            .ok_or_else(|| f.error(&field(name), "missing or not a list of numbers"))
    };
    let original = || -> Result<usize> {
        let inside = params
            .get("original_max_position_embeddings")
            .filter(|x| !x.is_null())
            .map(|x| {
                x.as_u64()
                    .and_then(|x| usize::try_from(x).ok())
                    .ok_or_else(|| {
                        f.error(
                            &field("original_max_position_embeddings"),
                            "not a non-negative integer",
                        )
                    })
            })
            .transpose()?;
        let default = match arch {
            Architecture::Phi3 => 4096,
            _ => inside.unwrap_or(max_positions),
        };
        f.usize_or("original_max_position_embeddings", default)
    };
    let theta = match number("rope_theta")? {
        Some(t) => t,
        None => fallback_theta,
    };
    let partial = match number("partial_rotary_factor")? {
        Some(p) => Some(p),
        None => f.opt_f64("partial_rotary_factor")?,
    };
    let kind = match params.get("rope_type").or_else(|| params.get("type")) {
        None | Some(Value::Null) => "default",
        Some(x) => x
            .as_str()
            .ok_or_else(|| f.error(&field("rope_type"), "not a string"))?,
    };
    let llama_rope = matches!(
        arch,
        Architecture::Llama | Architecture::Qwen2 | Architecture::Qwen3 | Architecture::Mistral
    );
    let scaling = match kind {
        "default" => RopeScaling::Default,
        "linear" if llama_rope => RopeScaling::Linear {
            factor: required("factor")?,
        },
        "dynamic" if llama_rope => RopeScaling::Dynamic {
            factor: required("factor")?,
        },
        "llama3" if llama_rope => RopeScaling::Llama3 {
            factor: required("factor")?,
            low_freq_factor: required("low_freq_factor")?,
            high_freq_factor: required("high_freq_factor")?,
            original_max_position_embeddings: original()?,
        },
        // transformers' Phi-3 reads the names of older files ("su", "yarn") as longrope
        "longrope" | "su" | "yarn" if arch == Architecture::Phi3 => {
            let original_max = original()?;
            let factor = match number("factor")? {
                Some(x) => x,
                None => max_positions as f64 / original_max.max(1) as f64,
            };
            let attention_factor = match number("attention_factor")? {
                Some(x) => x,
                None if factor <= 1.0 => 1.0,
                None => (1.0 + factor.ln() / (original_max as f64).ln()).sqrt(),
            };
            RopeScaling::Longrope {
                short_factor: factors("short_factor")?,
                long_factor: factors("long_factor")?,
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
            return Err(f.error(
                &field("rope_type"),
                format!(
                    "`{other}` RoPE is not implemented for {} (only {implemented})",
                    arch.model_type()
                ),
            ));
        }
    };
    Ok((theta, partial, scaling))
}

fn config_from_value(v: &Value, path: &Path) -> Result<TransformerConfig> {
    let f = Fields { v, path };
    let model_type = v
        .get("model_type")
        .and_then(Value::as_str)
        .ok_or_else(|| f.error("model_type", "missing or not a string"))?;
    let arch = match model_type {
        "gpt_neox" => Architecture::GptNeox,
        "llama" => Architecture::Llama,
        "qwen2" => Architecture::Qwen2,
        "qwen3" => Architecture::Qwen3,
        "mistral" => Architecture::Mistral,
        "phi3" => Architecture::Phi3,
        "gpt2" => Architecture::Gpt2,
        other => {
            return f.refuse(
                "model_type",
                &format!(
                    "`{other}` is not supported (gpt_neox, llama, qwen2, qwen3, mistral, phi3, gpt2)"
                ),
            );
        }
    };
    let config = match arch {
        Architecture::GptNeox => neox_config(&f)?,
        Architecture::Gpt2 => gpt2_config(&f)?,
        _ => llama_config(&f, arch)?,
    };
    config
        .validate()
        .map_err(|e| data_error(path, "-", e.to_string()))?;
    Ok(config)
}

fn neox_config(f: &Fields) -> Result<TransformerConfig> {
    if !f.bool_or("attention_bias", true)? {
        return f.refuse(
            "attention_bias",
            "GPT-NeoX without attention bias is not implemented",
        );
    }
    if f.str_or("hidden_act", "gelu")? != "gelu" {
        return f.refuse(
            "hidden_act",
            "GPT-NeoX is implemented with exact `gelu` only",
        );
    }
    let heads = f.usize("num_attention_heads")?;
    let max_positions = f.usize("max_position_embeddings")?;
    let fallback_theta = match f.opt_f64("rotary_emb_base")? {
        Some(x) => x,
        None => f.f64_or("rope_theta", 10_000.0)?,
    };
    let (theta, partial, rope_scaling) =
        rope(f, Architecture::GptNeox, fallback_theta, max_positions)?;
    Ok(TransformerConfig {
        architecture: Architecture::GptNeox,
        vocab_size: f.usize("vocab_size")?,
        hidden_size: f.usize("hidden_size")?,
        num_hidden_layers: f.usize("num_hidden_layers")?,
        num_attention_heads: heads,
        num_key_value_heads: heads,
        intermediate_size: f.usize("intermediate_size")?,
        rotary_pct: match partial {
            Some(x) => x,
            None => f.f64_or("rotary_pct", 0.25)?,
        },
        rope_theta: theta,
        max_position_embeddings: max_positions,
        tie_word_embeddings: f.bool_or("tie_word_embeddings", false)?,
        attention_bias: false,
        norm_eps: f.f64_or("layer_norm_eps", 1e-5)?,
        dropout: f.f64_or("hidden_dropout", 0.0)?,
        head_dim: None,
        rope_scaling,
        sliding_window: None,
        use_parallel_residual: f.bool_or("use_parallel_residual", true)?,
    })
}

/// Llama, Qwen2, Qwen3, Mistral, Phi-3, with `transformers`' defaults of each for the fields a
/// file leaves out.
// One piece, over 80 lines: like `neox_config` and `gpt2_config`, the refusals of options not
// implemented, then the per-family defaults (head_dim, KV heads, sliding window) and the config
// built from them, five families in one place so that their differences read side by side.
fn llama_config(f: &Fields, arch: Architecture) -> Result<TransformerConfig> {
    let name = arch.model_type();
    if f.str_or("hidden_act", "silu")? != "silu" {
        return f.refuse(
            "hidden_act",
            &format!("{name} is implemented with `silu` only"),
        );
    }
    if arch == Architecture::Llama && f.bool_or("mlp_bias", false)? {
        return f.refuse("mlp_bias", "an MLP bias is not implemented");
    }
    if matches!(arch, Architecture::Llama | Architecture::Qwen3)
        && f.bool_or("attention_bias", false)?
    {
        return f.refuse(
            "attention_bias",
            &format!(
                "{name} with attention bias (on o_proj too) is not implemented; Qwen2's QKV bias is"
            ),
        );
    }
    if matches!(arch, Architecture::Qwen2 | Architecture::Qwen3) {
        if f.bool_or("use_sliding_window", false)? {
            return f.refuse(
                "use_sliding_window",
                "Qwen's per-layer sliding windows are not implemented",
            );
        }
        if let Some(types) = f.get("layer_types") {
            let all_full = types
                .as_array()
                .is_some_and(|t| t.iter().all(|x| x.as_str() == Some("full_attention")));
            if !all_full {
                return f.refuse(
                    "layer_types",
                    "only full attention in every layer is implemented",
                );
            }
        }
    }
    let heads = f.usize("num_attention_heads")?;
    let hidden = f.usize("hidden_size")?;
    let max_positions = f.usize("max_position_embeddings")?;
    let head_dim = match f.opt_usize("head_dim")? {
        None if arch == Architecture::Qwen3 => Some(128),
        hd => hd,
    }
    // the usual width is not written back as a head_dim of its own
    .filter(|&hd| heads == 0 || !hidden.is_multiple_of(heads) || hd != hidden / heads);
    let (theta, partial, rope_scaling) =
        rope(f, arch, f.f64_or("rope_theta", 10_000.0)?, max_positions)?;
    let rotary_pct = partial.unwrap_or(1.0);
    if arch != Architecture::Phi3 && rotary_pct != 1.0 {
        return f.refuse(
            "partial_rotary_factor",
            &format!("{name} is implemented with rotary on the whole head only"),
        );
    }
    let kv_default = match arch {
        Architecture::Qwen2 | Architecture::Qwen3 => 32,
        Architecture::Mistral => 8,
        _ => heads,
    };
    let sliding_window = match arch {
        Architecture::Mistral => match f.v.get("sliding_window") {
            None => Some(4096),
            Some(_) => f.opt_usize("sliding_window")?,
        },
        Architecture::Phi3 => f.opt_usize("sliding_window")?,
        _ => None,
    };
    Ok(TransformerConfig {
        architecture: arch,
        vocab_size: f.usize("vocab_size")?,
        hidden_size: hidden,
        num_hidden_layers: f.usize("num_hidden_layers")?,
        num_attention_heads: heads,
        // absent: the family's default; `null`: as many as the query heads (transformers'
        // `__post_init__`)
        num_key_value_heads: match f.v.get("num_key_value_heads") {
            Some(Value::Null) => heads,
            _ => f.usize_or("num_key_value_heads", kv_default)?,
        },
        intermediate_size: f.usize("intermediate_size")?,
        rotary_pct,
        rope_theta: theta,
        max_position_embeddings: max_positions,
        tie_word_embeddings: f.bool_or("tie_word_embeddings", false)?,
        attention_bias: arch == Architecture::Qwen2,
        norm_eps: f.f64_or(
            "rms_norm_eps",
            if arch == Architecture::Phi3 {
                1e-5
            } else {
                1e-6
            },
        )?,
        dropout: f.f64_or(
            if arch == Architecture::Phi3 {
                "resid_pdrop"
            } else {
                "attention_dropout"
            },
            0.0,
        )?,
        head_dim,
        rope_scaling,
        sliding_window,
        use_parallel_residual: true,
    })
}

fn gpt2_config(f: &Fields) -> Result<TransformerConfig> {
    if !matches!(
        f.str_or("activation_function", "gelu_new")?,
        "gelu_new" | "gelu_pytorch_tanh"
    ) {
        return f.refuse(
            "activation_function",
            "GPT-2 is implemented with `gelu_new` (tanh-approximated GELU) only",
        );
    }
    if !f.bool_or("scale_attn_weights", true)? {
        return f.refuse(
            "scale_attn_weights",
            "attention without the 1/√d scaling is not implemented",
        );
    }
    if f.bool_or("scale_attn_by_inverse_layer_idx", false)? {
        return f.refuse(
            "scale_attn_by_inverse_layer_idx",
            "scaling attention by the inverse layer index is not implemented",
        );
    }
    if f.bool_or("add_cross_attention", false)? {
        return f.refuse(
            "add_cross_attention",
            "GPT-2 with cross-attention is not implemented",
        );
    }
    let hidden = f.usize("n_embd")?;
    let heads = f.usize("n_head")?;
    Ok(TransformerConfig {
        architecture: Architecture::Gpt2,
        vocab_size: f.usize("vocab_size")?,
        hidden_size: hidden,
        num_hidden_layers: f.usize("n_layer")?,
        num_attention_heads: heads,
        num_key_value_heads: heads,
        intermediate_size: f.usize_or("n_inner", hidden.saturating_mul(4))?,
        rotary_pct: 0.0,
        rope_theta: 10_000.0,
        max_position_embeddings: f.usize("n_positions")?,
        tie_word_embeddings: f.bool_or("tie_word_embeddings", true)?,
        attention_bias: false,
        norm_eps: f.f64_or("layer_norm_epsilon", 1e-5)?,
        dropout: f.f64_or("resid_pdrop", 0.1)?,
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
    // the scaling also under its older name, which transformers < 5 and other tools read
    // (transformers 5 reads it first, so both name the same thing)
    if config.rope_scaling != RopeScaling::Default {
        json["rope_scaling"] = rope_json(config);
    }
    json["architectures"] = json!([causal_class(arch)]);
    json["model_type"] = arch.model_type().into();
    json["torch_dtype"] = "float32".into();
    json
}

/// The safetensors files of a model directory: `model.safetensors`, or the shards listed by
/// `model.safetensors.index.json`.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.is_file() {
        return Err(Error::Checkpoint {
            path: dir.to_path_buf(),
            message: "neither model.safetensors nor model.safetensors.index.json is there".into(),
        });
    }
    let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| data_error(&index, "-", format!("not JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| data_error(&index, "weight_map", "missing or not an object"))?;
    let mut shards = BTreeSet::new();
    for (name, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| data_error(&index, &format!("weight_map.{name}"), "not a file name"))?;
        if file.contains('/') || file.contains("..") {
            return Err(data_error(
                &index,
                &format!("weight_map.{name}"),
                "shard names must be plain file names in the same directory",
            ));
        }
        shards.insert(dir.join(file));
    }
    Ok(shards.into_iter().collect())
}

fn store_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Loads a Hugging Face model directory (`config.json` + safetensors) onto `device`, in f32.
/// Every parameter of the model must be found in the files, and every tensor in the files must
/// be used (apart from recomputed buffers): a mismatch is an error naming the tensors.
pub fn load_pretrained(dir: &Path, device: &Device) -> Result<(TransformerConfig, CausalLm)> {
    let config = config_from_json(&dir.join("config.json"))?;
    check_files_hold(&config, dir)?;
    let mut model = CausalLm::init(&config, device)?;
    load_weights(&mut model, &config, dir, "")?;
    Ok((config, model))
}

/// Writes `model` as a Hugging Face directory: `config.json` and `model.safetensors` (f32), each
/// written atomically. `transformers`' `AutoModelForCausalLM.from_pretrained(dir)` loads it.
pub fn save_pretrained(model: &CausalLm, config: &TransformerConfig, dir: &Path) -> Result<()> {
    save_weights(model, config.architecture, dir, "")?;
    write_config(&config_to_json(config), dir)
}

/// Writes a [`ScalarModel`] (value or reward model) as the sequence-classification checkpoint
/// `transformers` loads with `AutoModelForSequenceClassification` (`GPTNeoXForSequenceClassification`,
/// `LlamaForSequenceClassification`, `Qwen2ForSequenceClassification`, `num_labels = 1`): the
/// backbone under the family's Hugging Face names, the head as `score.weight`, and `extra`
/// (normalisation, kind, …) under the `rlhf_scalar` key of `config.json`.
pub fn save_scalar_pretrained(
    model: &ScalarModel,
    config: &TransformerConfig,
    extra: Value,
    dir: &Path,
) -> Result<()> {
    save_weights(model, config.architecture, dir, "backbone.")?;
    let mut json = config_to_json(config);
    json["architectures"] = json!([scalar_class(config.architecture)]);
    json["num_labels"] = 1.into();
    json["rlhf_scalar"] = extra;
    write_config(&json, dir)
}

/// Loads a scalar model from a Hugging Face directory: what [`save_scalar_pretrained`] wrote, a
/// sequence-classification checkpoint with one label, or a causal LM checkpoint (its LM head is
/// left out and the `score` head is fresh). Returns the config, the model, the `rlhf_scalar`
/// value (`null` when absent) and whether the head came from the files.
pub fn load_scalar_pretrained(
    dir: &Path,
    device: &Device,
) -> Result<(TransformerConfig, ScalarModel, Value, bool)> {
    let path = dir.join("config.json");
    let config = config_from_json(&path)?;
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let json = serde_json::from_str::<Value>(&text).unwrap_or(Value::Null);
    let extra = json.get("rlhf_scalar").cloned().unwrap_or(Value::Null);
    if let Some(labels) = json.get("num_labels").and_then(Value::as_u64)
        && labels != 1
    {
        return Err(data_error(
            &path,
            "num_labels",
            format!("a scalar model has one label, this checkpoint has {labels}"),
        ));
    }
    check_files_hold(&config, dir)?;
    let mut model = ScalarModel::from_backbone(CausalLm::init(&config, device)?);
    let loaded = load_weights(&mut model, &config, dir, "backbone.")?;
    Ok((config, model, extra, loaded.contains("score.weight")))
}

fn write_config(json: &Value, dir: &Path) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(json).expect("a JSON value serialises");
    write_atomic(&dir.join("config.json"), &bytes)
}

/// Refuses, before allocating anything, a `config.json` that describes more parameters than the
/// weight files could hold (at least 2 bytes each), so a damaged or hostile config cannot make
/// the loader allocate a model the files do not contain.
fn check_files_hold(config: &TransformerConfig, dir: &Path) -> Result<()> {
    let mut bytes = 0u64;
    for f in weight_files(dir)? {
        bytes += std::fs::metadata(&f).map_err(|e| Error::io(&f, e))?.len();
    }
    let params = config.total_params();
    if params.saturating_mul(2) > bytes {
        return Err(data_error(
            &dir.join("config.json"),
            "-",
            format!(
                "describes a model of {params} parameters, but the weight files hold only \
                 {bytes} bytes"
            ),
        ));
    }
    Ok(())
}

/// Loads the safetensors of `dir` into `model`, whose language model sits under `inner`
/// (`""` for a [`CausalLm`], `"backbone."` for a [`ScalarModel`]). Every parameter must be in the
/// files and every tensor of the files must be used, except, for a scalar model, its `score`
/// head (fresh when absent) and a causal LM's head (the backbone has none). Returns the names
/// of the parameters loaded.
fn load_weights<M: ModuleSnapshot>(
    model: &mut M,
    config: &TransformerConfig,
    dir: &Path,
    inner: &str,
) -> Result<BTreeSet<String>> {
    let arch = config.architecture;
    let (prefix, modules) = row(arch);
    let scalar = !inner.is_empty();
    let mut applied = BTreeSet::new();
    let mut unused = Vec::new();
    for file in &weight_files(dir)? {
        let mut store = SafetensorsStore::from_file(file)
            .with_from_adapter(ChainAdapter::new(
                PyTorchToBurnAdapter,
                FloatCastAdapter::to(DType::F32),
            ))
            .with_key_remapping(format!(r"^{prefix}\."), inner.to_string())
            // checkpoints saved from the bare model (GPT-2's own files: `h.0.…`, no prefix)
            .with_key_remapping(
                format!(r"^((?:{})\.)", modules.join("|")),
                format!("{inner}$1"),
            )
            .skip_enum_variants(true)
            .allow_partial(true)
            .validate(true);
        let result = model
            .load_from(&mut store)
            .map_err(|e| store_error(file, e))?;
        if let Some(e) = result.errors.first() {
            return Err(store_error(file, format!("{e:?}")));
        }
        applied.extend(result.applied);
        // a recomputed buffer, or a causal checkpoint's LM head under a scalar model, is expected
        // and so is the stored copy of a tied head, which transformers ties again on load
        let expected = |n: &String| {
            RECOMPUTED_BUFFERS.iter().any(|b| n.ends_with(b))
                || (scalar && LM_HEADS.iter().any(|h| n.starts_with(h)))
                || (config.tie_word_embeddings && n == "lm_head.weight")
        };
        unused.extend(result.unused.into_iter().filter(|n| !expected(n)));
    }
    let expected: BTreeSet<String> = model
        .collect(None, None, true)
        .into_iter()
        .map(|t| t.name.clone())
        .collect();
    let missing: Vec<&String> = expected
        .iter()
        .filter(|n| !(applied.contains(*n) || (scalar && n.starts_with("score."))))
        .collect();
    if !missing.is_empty() || !unused.is_empty() {
        return Err(Error::Checkpoint {
            path: dir.to_path_buf(),
            message: format!(
                "the checkpoint does not match the config: missing {missing:?}, unexpected {unused:?}"
            ),
        });
    }
    Ok(applied)
}

/// The LM heads of causal checkpoints, which a scalar model's backbone does not have.
const LM_HEADS: &[&str] = &["embed_out.", "lm_head."];

/// Writes `model` (language model under `inner`) to `dir/model.safetensors`, atomically. LoRA
/// adapters are merged into their weights first ([`Module::materialize`]), so the file is a
/// plain checkpoint of the model as it computes.
fn save_weights<M: Module + ModuleSnapshot>(
    model: &M,
    arch: Architecture,
    dir: &Path,
    inner: &str,
) -> Result<()> {
    // the copies below come on top of what the process holds: hand back what it has freed first
    rlhf_core::train::memory::release_freed();
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let (prefix, modules) = row(arch);
    let inner_re = inner.replace('.', r"\.");
    let mut store = SafetensorsStore::from_bytes(None)
        .with_to_adapter(BurnToPyTorchAdapter)
        .with_key_remapping(
            format!(r"^{inner_re}((?:{})\.)", modules.join("|")),
            format!("{prefix}.$1"),
        )
        .skip_enum_variants(true)
        .metadata("format", "pt");
    if !inner.is_empty() {
        store = store.with_key_remapping(format!("^{inner_re}"), "");
    }
    let path = dir.join("model.safetensors");
    model
        .clone()
        .materialize()
        .save_into(&mut store)
        .map_err(|e| store_error(&path, e))?;
    let bytes = store.get_bytes().map_err(|e| store_error(&path, e))?;
    let (header, body) = canonical_header(&bytes).map_err(|e| store_error(&path, e))?;
    write_atomic_parts(&path, &[&header, body])
}

/// The safetensors file `bytes` with its header's keys sorted, so that one model always gives
/// the same file: burn keeps `__metadata__` in a hash map, whose order changes from process to
/// process. The header is padded with spaces to a multiple of 8 bytes, as the format allows.
/// Returned as the new length and header, and the tensor data of `bytes` that follows them.
fn canonical_header(bytes: &[u8]) -> std::result::Result<(Vec<u8>, &[u8]), String> {
    let len = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
        .ok_or("a safetensors file starts with its header's length")?;
    let body = bytes
        .get(8..8 + len)
        .ok_or("the header is longer than the file")?;
    let header: BTreeMap<String, Value> =
        serde_json::from_slice(body).map_err(|e| format!("header: {e}"))?;
    let sorted: BTreeMap<&String, Value> = header
        .iter()
        .map(|(k, v)| {
            let v = match v.as_object() {
                Some(o) if k == "__metadata__" => {
                    json!(o.iter().collect::<BTreeMap<_, _>>())
                }
                _ => v.clone(),
            };
            (k, v)
        })
        .collect();
    let mut text = serde_json::to_vec(&sorted).map_err(|e| e.to_string())?;
    text.resize(text.len().next_multiple_of(8), b' ');
    let mut header = Vec::with_capacity(8 + text.len());
    header.extend_from_slice(&(text.len() as u64).to_le_bytes());
    header.extend_from_slice(&text);
    Ok((header, &bytes[8 + len..]))
}
