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
use serde_json::{Value, json};

use crate::config::{Architecture, TransformerConfig};
use crate::lm::{CausalLm, ScalarModel};

mod config_json;

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

pub use config_json::{config_from_json, config_to_json};

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
/// left out and the `score` head is zeros: draw a fresh one with [`ScalarModel::from_backbone`],
/// under a seed). Returns the config, the model, the `rlhf_scalar` value (`null` when absent) and
/// whether the head came from the files. Loading draws no random numbers, so it cannot change
/// what a seeded initialisation in another thread draws.
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
    let mut model = ScalarModel::with_zero_head(CausalLm::init(&config, device)?);
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
