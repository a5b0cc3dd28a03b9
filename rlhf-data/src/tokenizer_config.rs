//! `tokenizer_config.json`: the special tokens and the chat template a Hugging Face checkpoint
//! declares besides its `tokenizer.json`.

use std::path::Path;

use rlhf_base::{Error, Result};
use serde_json::{Map, Value};

use crate::template::{ChatFormat, JinjaTemplate};

/// What the trainers read from `tokenizer_config.json` (all optional).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenizerConfig {
    /// `eos_token`: ends every response (Qwen2 chat models: `<|im_end|>`).
    pub eos_token: Option<String>,
    /// `pad_token`.
    pub pad_token: Option<String>,
    /// `bos_token` (templates refer to it).
    pub bos_token: Option<String>,
    /// `chat_template`: the default one when the file lists several by name.
    pub chat_template: Option<String>,
    /// The file as it was, to write back next to a trained model.
    pub raw: Map<String, Value>,
}

/// A special token, written as a string or as an `AddedToken` object (`{"content": …}`).
fn token(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

impl TokenizerConfig {
    /// Reads `dir/tokenizer_config.json`; a directory without one gives the empty config, and a
    /// separate `chat_template.jinja` (newer checkpoints keep the template there) is read too.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer_config.json");
        let mut config = if path.is_file() {
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            Self::from_json(&text).map_err(|message| Error::Data {
                file: path.clone(),
                line: 0,
                field: "-".into(),
                message,
            })?
        } else {
            TokenizerConfig::default()
        };
        let jinja = dir.join("chat_template.jinja");
        if config.chat_template.is_none() && jinja.is_file() {
            config.chat_template =
                Some(std::fs::read_to_string(&jinja).map_err(|e| Error::io(&jinja, e))?);
        }
        Ok(config)
    }

    /// Parses the file's text.
    pub fn from_json(text: &str) -> std::result::Result<Self, String> {
        let raw = match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(o)) => o,
            Ok(_) => return Err("not a JSON object".into()),
            Err(e) => return Err(format!("not JSON: {e}")),
        };
        let chat_template = match raw.get("chat_template") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            // a list of named templates: the one named "default"
            Some(Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
            Some(_) => return Err("`chat_template` is neither a string nor a list".into()),
        };
        Ok(TokenizerConfig {
            eos_token: token(raw.get("eos_token")),
            pad_token: token(raw.get("pad_token")),
            bos_token: token(raw.get("bos_token")),
            chat_template,
            raw,
        })
    }

    /// The chat format: the checkpoint's template, or ChatML when it has none.
    pub fn chat_format(&self) -> Result<ChatFormat> {
        Ok(match &self.chat_template {
            Some(source) => ChatFormat::Jinja(JinjaTemplate::new(
                source,
                self.bos_token.as_deref().unwrap_or(""),
                self.eos_token.as_deref().unwrap_or(""),
            )?),
            None => ChatFormat::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_as_strings_or_objects_and_named_templates() {
        let c = TokenizerConfig::from_json(
            r#"{"eos_token": {"content": "<|im_end|>", "special": true}, "pad_token": "<|endoftext|>",
                "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}"#,
        )
        .unwrap();
        assert_eq!(c.eos_token.as_deref(), Some("<|im_end|>"));
        assert_eq!(c.pad_token.as_deref(), Some("<|endoftext|>"));
        assert_eq!(c.bos_token, None);
        assert_eq!(c.chat_template.as_deref(), Some("D"));
        assert!(TokenizerConfig::from_json("[1]").is_err());
        assert_eq!(
            TokenizerConfig::from_json("{}")
                .unwrap()
                .chat_format()
                .unwrap(),
            ChatFormat::default()
        );
    }
}
