//! Hugging Face checkpoints: `config.json` and `model.safetensors` (or a sharded
//! `model.safetensors.index.json`) in, the same out, for both architectures.
//!
//! The module tree uses Hugging Face's own names (`layers.3.attention.query_key_value`,
//! `layers.3.self_attn.q_proj`, …), so the only renaming is the one table [`NAME_MAP`]: the
//! prefix each family puts before the transformer body. burn-store's PyTorch adapters do the rest
//! (transpose `Linear` weights, `weight`/`bias` ↔ `gamma`/`beta` on norms).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use burn::store::{
    BurnToPyTorchAdapter, ChainAdapter, FloatCastAdapter, ModuleSnapshot, PyTorchToBurnAdapter,
    SafetensorsStore,
};
use burn::tensor::{DType, Device};
use rlhf_core::train::fs::write_atomic;
use rlhf_core::{Error, Result};
use serde_json::{Value, json};

use crate::config::{Architecture, TransformerConfig};
use crate::lm::{CausalLm, ScalarModel};

/// The name mapping, one row per family: `(architecture, Hugging Face prefix, our top-level
/// modules that carry it)`. Everything else already has its Hugging Face name.
///
/// | family   | Hugging Face                         | here                    |
/// |----------|--------------------------------------|-------------------------|
/// | GPT-NeoX | `gpt_neox.{embed_in,layers,final_layer_norm}.…`, `embed_out.weight` | `{embed_in,layers,final_layer_norm}.…`, `embed_out.weight` |
/// | Llama    | `model.{embed_tokens,layers,norm}.…`, `lm_head.weight` | `{embed_tokens,layers,norm}.…`, `lm_head.weight` |
pub const NAME_MAP: &[(Architecture, &str, &[&str])] = &[
    (
        Architecture::GptNeox,
        "gpt_neox",
        &["embed_in", "layers", "final_layer_norm"],
    ),
    (
        Architecture::Llama,
        "model",
        &["embed_tokens", "layers", "norm"],
    ),
];

/// Buffers that older checkpoints store but that are recomputed here (rotary frequencies and the
/// causal-mask buffers of GPT-NeoX); they are skipped on import.
const RECOMPUTED_BUFFERS: &[&str] = &[
    ".rotary_emb.inv_freq",
    ".attention.bias",
    ".attention.masked_bias",
];

fn row(arch: Architecture) -> (&'static str, &'static [&'static str]) {
    let (_, prefix, modules) = NAME_MAP
        .iter()
        .find(|(a, _, _)| *a == arch)
        .expect("every architecture has a row in NAME_MAP");
    (prefix, modules)
}

fn data_error(file: &Path, field: &str, message: impl Into<String>) -> Error {
    Error::Data {
        file: file.to_path_buf(),
        line: 0,
        field: field.to_string(),
        message: message.into(),
    }
}

/// Reads a Hugging Face `config.json` (`model_type` `gpt_neox`, `llama` or `qwen2`). Options this
/// implementation does not have (sequential residual in GPT-NeoX, RoPE scaling, MLP bias, an
/// activation other than the family's) are refused by name rather than silently ignored.
pub fn config_from_json(path: &Path) -> Result<TransformerConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let v: Value =
        serde_json::from_str(&text).map_err(|e| data_error(path, "-", format!("not JSON: {e}")))?;
    config_from_value(&v, path)
}

fn config_from_value(v: &Value, path: &Path) -> Result<TransformerConfig> {
    let usize_field = |name: &str| -> Result<usize> {
        v.get(name)
            .and_then(Value::as_u64)
            .map(|x| x as usize)
            .ok_or_else(|| data_error(path, name, "missing or not a non-negative integer"))
    };
    let f64_or = |name: &str, default: f64| -> Result<f64> {
        match v.get(name) {
            None | Some(Value::Null) => Ok(default),
            Some(x) => x
                .as_f64()
                .ok_or_else(|| data_error(path, name, "not a number")),
        }
    };
    let bool_or = |name: &str, default: bool| -> Result<bool> {
        match v.get(name) {
            None | Some(Value::Null) => Ok(default),
            Some(x) => x
                .as_bool()
                .ok_or_else(|| data_error(path, name, "not a boolean")),
        }
    };
    let refuse = |name: &str, why: &str| Err(data_error(path, name, why.to_string()));
    let model_type = v
        .get("model_type")
        .and_then(Value::as_str)
        .ok_or_else(|| data_error(path, "model_type", "missing or not a string"))?;
    let act = v.get("hidden_act").and_then(Value::as_str);
    if !matches!(v.get("rope_scaling"), None | Some(Value::Null)) {
        return refuse("rope_scaling", "RoPE scaling is not implemented");
    }
    if bool_or("use_sliding_window", false)? {
        return refuse(
            "use_sliding_window",
            "sliding-window attention is not implemented",
        );
    }
    // transformers ≥ 5 groups the rotary settings under `rope_parameters`; older files have
    // `rope_theta` / `rotary_emb_base` / `rotary_pct` at the top level.
    let rope = v.get("rope_parameters").filter(|r| !r.is_null());
    if let Some(kind) = rope
        .and_then(|r| r.get("rope_type"))
        .and_then(Value::as_str)
        && kind != "default"
    {
        return refuse(
            "rope_parameters.rope_type",
            "only the default RoPE is implemented",
        );
    }
    let rope_f64 = |name: &str| rope.and_then(|r| r.get(name)).and_then(Value::as_f64);
    let heads = usize_field("num_attention_heads")?;
    let hidden = usize_field("hidden_size")?;
    let config = match model_type {
        "gpt_neox" => {
            if !bool_or("use_parallel_residual", true)? {
                return refuse(
                    "use_parallel_residual",
                    "only the parallel residual of Pythia is implemented",
                );
            }
            if !bool_or("attention_bias", true)? {
                return refuse(
                    "attention_bias",
                    "GPT-NeoX without attention bias is not implemented",
                );
            }
            if act.is_some_and(|a| a != "gelu") {
                return refuse(
                    "hidden_act",
                    "GPT-NeoX is implemented with exact `gelu` only",
                );
            }
            TransformerConfig {
                architecture: Architecture::GptNeox,
                vocab_size: usize_field("vocab_size")?,
                hidden_size: hidden,
                num_hidden_layers: usize_field("num_hidden_layers")?,
                num_attention_heads: heads,
                num_key_value_heads: heads,
                intermediate_size: usize_field("intermediate_size")?,
                rotary_pct: match rope_f64("partial_rotary_factor") {
                    Some(x) => x,
                    None => f64_or("rotary_pct", 0.25)?,
                },
                rope_theta: match rope_f64("rope_theta") {
                    Some(x) => x,
                    None => f64_or("rotary_emb_base", f64_or("rope_theta", 10_000.0)?)?,
                },
                max_position_embeddings: usize_field("max_position_embeddings")?,
                tie_word_embeddings: bool_or("tie_word_embeddings", false)?,
                attention_bias: false,
                norm_eps: f64_or("layer_norm_eps", 1e-5)?,
                dropout: f64_or("hidden_dropout", 0.0)?,
            }
        }
        "llama" | "qwen2" => {
            if act.is_some_and(|a| a != "silu") {
                return refuse("hidden_act", "Llama/Qwen2 are implemented with `silu` only");
            }
            if bool_or("mlp_bias", false)? {
                return refuse("mlp_bias", "an MLP bias is not implemented");
            }
            if model_type == "llama" && bool_or("attention_bias", false)? {
                return refuse(
                    "attention_bias",
                    "Llama with attention bias (on o_proj too) is not implemented; Qwen2's QKV bias is",
                );
            }
            if let Some(hd) = v.get("head_dim").and_then(Value::as_u64)
                && usize::try_from(hd)
                    .ok()
                    .and_then(|hd| hd.checked_mul(heads))
                    != Some(hidden)
            {
                return refuse(
                    "head_dim",
                    "head_dim × num_attention_heads must equal hidden_size",
                );
            }
            TransformerConfig {
                architecture: Architecture::Llama,
                vocab_size: usize_field("vocab_size")?,
                hidden_size: hidden,
                num_hidden_layers: usize_field("num_hidden_layers")?,
                num_attention_heads: heads,
                num_key_value_heads: match v.get("num_key_value_heads") {
                    None | Some(Value::Null) => heads,
                    Some(_) => usize_field("num_key_value_heads")?,
                },
                intermediate_size: usize_field("intermediate_size")?,
                rotary_pct: 1.0,
                rope_theta: match rope_f64("rope_theta") {
                    Some(x) => x,
                    None => f64_or("rope_theta", 10_000.0)?,
                },
                max_position_embeddings: usize_field("max_position_embeddings")?,
                tie_word_embeddings: bool_or("tie_word_embeddings", model_type == "qwen2")?,
                attention_bias: model_type == "qwen2",
                norm_eps: f64_or("rms_norm_eps", 1e-6)?,
                dropout: f64_or("attention_dropout", 0.0)?,
            }
        }
        other => {
            return Err(data_error(
                path,
                "model_type",
                format!("`{other}` is not supported (gpt_neox, llama, qwen2)"),
            ));
        }
    };
    config
        .validate()
        .map_err(|e| data_error(path, "-", e.to_string()))?;
    Ok(config)
}

/// The `config.json` that `transformers` loads for `config` (`GPTNeoXForCausalLM`,
/// `LlamaForCausalLM`, or `Qwen2ForCausalLM` when the QKV bias is on).
pub fn config_to_json(config: &TransformerConfig) -> Value {
    match config.architecture {
        Architecture::GptNeox => json!({
            "architectures": ["GPTNeoXForCausalLM"],
            "model_type": "gpt_neox",
            "vocab_size": config.vocab_size,
            "hidden_size": config.hidden_size,
            "num_hidden_layers": config.num_hidden_layers,
            "num_attention_heads": config.num_attention_heads,
            "intermediate_size": config.intermediate_size,
            "rotary_pct": config.rotary_pct,
            "rotary_emb_base": config.rope_theta,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": config.rope_theta,
                "partial_rotary_factor": config.rotary_pct,
            },
            "max_position_embeddings": config.max_position_embeddings,
            "layer_norm_eps": config.norm_eps,
            "hidden_act": "gelu",
            "use_parallel_residual": true,
            "tie_word_embeddings": config.tie_word_embeddings,
            "attention_bias": true,
            "hidden_dropout": config.dropout,
            "attention_dropout": 0.0,
            "torch_dtype": "float32",
        }),
        Architecture::Llama => {
            let qwen = config.attention_bias;
            json!({
                "architectures": [if qwen { "Qwen2ForCausalLM" } else { "LlamaForCausalLM" }],
                "model_type": if qwen { "qwen2" } else { "llama" },
                "vocab_size": config.vocab_size,
                "hidden_size": config.hidden_size,
                "num_hidden_layers": config.num_hidden_layers,
                "num_attention_heads": config.num_attention_heads,
                "num_key_value_heads": config.num_key_value_heads,
                "intermediate_size": config.intermediate_size,
                "rope_theta": config.rope_theta,
                "rope_parameters": { "rope_type": "default", "rope_theta": config.rope_theta },
                "max_position_embeddings": config.max_position_embeddings,
                "rms_norm_eps": config.norm_eps,
                "hidden_act": "silu",
                "tie_word_embeddings": config.tie_word_embeddings,
                "attention_bias": false,
                "attention_dropout": config.dropout,
                "torch_dtype": "float32",
            })
        }
    }
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
    load_weights(&mut model, config.architecture, dir, "")?;
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
    let causal = json["architectures"][0]
        .as_str()
        .unwrap_or_default()
        .to_string();
    json["architectures"] = json!([causal.replace("ForCausalLM", "ForSequenceClassification")]);
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
    let loaded = load_weights(&mut model, config.architecture, dir, "backbone.")?;
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
    arch: Architecture,
    dir: &Path,
    inner: &str,
) -> Result<BTreeSet<String>> {
    let (prefix, _) = row(arch);
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
        let expected = |n: &String| {
            RECOMPUTED_BUFFERS.iter().any(|b| n.ends_with(b))
                || (scalar && LM_HEADS.iter().any(|h| n.starts_with(h)))
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

/// Writes `model` (language model under `inner`) to `dir/model.safetensors`, atomically.
fn save_weights<M: ModuleSnapshot>(
    model: &M,
    arch: Architecture,
    dir: &Path,
    inner: &str,
) -> Result<()> {
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
        .save_into(&mut store)
        .map_err(|e| store_error(&path, e))?;
    let bytes = store.get_bytes().map_err(|e| store_error(&path, e))?;
    write_atomic(
        &path,
        &canonical_header(&bytes).map_err(|e| store_error(&path, e))?,
    )
}

/// The safetensors file `bytes` with its header's keys sorted, so that one model always gives
/// the same file: burn keeps `__metadata__` in a hash map, whose order changes from process to
/// process. The header is padded with spaces to a multiple of 8 bytes, as the format allows.
fn canonical_header(bytes: &[u8]) -> std::result::Result<Vec<u8>, String> {
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
    let mut out = Vec::with_capacity(8 + text.len() + bytes.len() - 8 - len);
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[8 + len..]);
    Ok(out)
}
