//! `generation_config.json`: the end-of-sequence ids a Hugging Face checkpoint stops generating
//! at. Chat checkpoints often list several (Qwen2.5-Instruct `<|im_end|>` and `<|endoftext|>`,
//! Llama-3.1-Instruct `<|end_of_text|>`, `<|eom_id|>` and `<|eot_id|>`), where
//! `tokenizer_config.json` names one EOS; TRL's samplers stop at any of them.

use std::path::Path;

use rlhf_base::{Error, Result};
use serde_json::Value;

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
    use super::eos_ids_of;

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
