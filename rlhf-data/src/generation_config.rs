//! `generation_config.json`: the end-of-sequence ids a Hugging Face checkpoint stops generating
//! at, and the sampling settings `transformers`' `generate` starts from. Chat checkpoints often
//! list several end ids (Qwen2.5-Instruct `<|im_end|>` and `<|endoftext|>`, Llama-3.1-Instruct
//! `<|end_of_text|>`, `<|eom_id|>` and `<|eot_id|>`), where `tokenizer_config.json` names one EOS;
//! TRL's samplers stop at any of them.

use std::path::Path;

use rlhf_base::{Error, Result};
use serde::Deserialize;
use serde_json::Value;

/// The sampling settings of a checkpoint's `generation_config.json`, each `None` where the file
/// leaves it out (or `null`), all `None` without the file: what `transformers`' `generate` starts
/// from (`rlhf generate` takes them where no flag is given).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct GenerationDefaults {
    /// `false`: greedy decoding.
    pub do_sample: Option<bool>,
    /// The softmax temperature.
    pub temperature: Option<f32>,
    /// Top-k (0: off).
    pub top_k: Option<usize>,
    /// Nucleus sampling's p.
    pub top_p: Option<f32>,
    /// Min-p.
    pub min_p: Option<f32>,
    /// CTRL's repetition penalty.
    pub repetition_penalty: Option<f32>,
    /// New tokens at most.
    pub max_new_tokens: Option<usize>,
}

/// The sampling settings of `dir/generation_config.json` (see [`GenerationDefaults`]); a field of
/// another type is a data error naming the file and the field.
pub fn generation_defaults(dir: &Path) -> Result<GenerationDefaults> {
    let path = dir.join("generation_config.json");
    if !path.is_file() {
        return Ok(GenerationDefaults::default());
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let mut reader = serde_json::Deserializer::from_str(&text);
    serde_path_to_error::deserialize(&mut reader).map_err(|e| Error::Data {
        file: path,
        line: e.inner().line(),
        field: e.path().to_string(),
        message: e.inner().to_string(),
    })
}

/// The ids of `eos_token_id` in `dir/generation_config.json` (a number or a list of numbers), in
/// the file's order, or, when the checkpoint has no such file, in its `config.json`, from which
/// `transformers` then builds its generation config; none when neither has the field or it is
/// `null`. A field of another shape is a data error naming the file.
pub fn generation_eos_ids(dir: &Path) -> Result<Vec<u32>> {
    let path = ["generation_config.json", "config.json"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file());
    let Some(path) = path else {
        return Ok(Vec::new());
    };
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    eos_ids_of(&text).map_err(|message| Error::Data {
        file: path,
        line: 0,
        field: "eos_token_id".into(),
        message,
    })
}

/// [`generation_eos_ids`] of the file's text.
fn eos_ids_of(text: &str) -> std::result::Result<Vec<u32>, String> {
    let config: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let id = |v: &Value| {
        v.as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .ok_or_else(|| format!("{v} is not a token id"))
    };
    match config.get("eos_token_id") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(ids)) => ids.iter().map(id).collect(),
        Some(v) => Ok(vec![id(v)?]),
    }
}

#[cfg(test)]
mod tests {
    use super::{GenerationDefaults, eos_ids_of, generation_defaults};

    /// The sampling fields a file sets are read, the rest (and `null`) left unset; a field of
    /// another type names the file and the field; no file sets nothing.
    #[test]
    fn the_sampling_settings_a_file_sets() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            generation_defaults(dir.path()).unwrap(),
            GenerationDefaults::default()
        );
        let file = dir.path().join("generation_config.json");
        std::fs::write(
            &file,
            r#"{"do_sample": true, "temperature": 0.6, "top_p": 0.9, "top_k": null,
                "eos_token_id": [1, 2], "bos_token_id": 0}"#,
        )
        .unwrap();
        let read = generation_defaults(dir.path()).unwrap();
        assert_eq!(
            read,
            GenerationDefaults {
                do_sample: Some(true),
                temperature: Some(0.6),
                top_p: Some(0.9),
                ..GenerationDefaults::default()
            }
        );
        std::fs::write(&file, r#"{"temperature": "hot"}"#).unwrap();
        let err = generation_defaults(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("generation_config.json") && err.contains("temperature"),
            "{err}"
        );
    }

    #[test]
    fn one_id_a_list_or_none() {
        assert_eq!(eos_ids_of(r#"{"eos_token_id": 2}"#), Ok(vec![2]));
        assert_eq!(
            eos_ids_of(r#"{"eos_token_id": [151645, 151643], "top_p": 0.8}"#),
            Ok(vec![151645, 151643])
        );
        assert_eq!(eos_ids_of(r#"{"eos_token_id": null}"#), Ok(vec![]));
        assert_eq!(eos_ids_of(r#"{"bos_token_id": 1}"#), Ok(vec![]));
        assert!(eos_ids_of(r#"{"eos_token_id": "</s>"}"#).is_err());
        assert!(eos_ids_of(r#"{"eos_token_id": [1, -2]}"#).is_err());
        assert!(eos_ids_of("{").is_err());
    }
}
