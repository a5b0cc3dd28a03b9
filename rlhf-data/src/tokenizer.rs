//! The tokenizer: Hugging Face `tokenizers`, loaded from any `tokenizer.json` or trained as a
//! byte-level BPE on a corpus, with the PAD and EOS conventions of the TL;DR reproduction.

use std::path::Path;

use rlhf_base::{Error, Result};

use crate::encode_memo::EncodeMemo;
use crate::tokenizer_config::TokenizerConfig;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, NormalizerWrapper, PostProcessorWrapper, TokenizerBuilder};

/// Names under which tokenizers commonly keep their end-of-sequence token, in order of preference.
pub const EOS_CANDIDATES: &[&str] = &[
    "<|endoftext|>",
    "</s>",
    "<|im_end|>",
    "<eos>",
    "<|end_of_text|>",
];
/// Names under which tokenizers commonly keep a padding token.
pub const PAD_CANDIDATES: &[&str] = &["[PAD]", "<pad>", "<|pad|>", "<|padding|>"];
/// The EOS token of tokenizers trained here (Pythia's).
pub const EOS_TOKEN: &str = "<|endoftext|>";
/// The PAD token added when a tokenizer has none (the TL;DR reproduction's).
pub const PAD_TOKEN: &str = "[PAD]";

/// A tokenizer with known EOS and PAD ids.
///
/// When the loaded tokenizer has no padding token, `[PAD]` is added as a special token with the
/// next free id — which may lie outside the model's embedding matrix. That is deliberate (the
/// TL;DR reproduction does the same instead of resizing the model): pad ids never reach the model,
/// because every forward pass takes its ids through `rlhf_models::TokenInput`, which replaces the
/// id at every masked position.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    eos_id: u32,
    pad_id: u32,
    /// Further ids that end a response as EOS does: the other ids of the checkpoint's
    /// `generation_config.json` `eos_token_id` ([`crate::generation_config`]).
    stop_ids: Vec<u32>,
    /// The special tokens the tokenizer puts before a text (Llama's BOS), as `transformers`
    /// reads them off the post-processor ([`start_tokens`]): what [`Self::encode_start`] adds.
    start: Vec<u32>,
    /// The `tokenizer.json` it was loaded from, written back unchanged by [`Self::save_dir`] (an
    /// added `[PAD]` is this process's business, not the checkpoint's).
    source: Option<std::sync::Arc<[u8]>>,
    /// The checkpoint's `tokenizer_config.json` (empty when it has none or for a trained BPE).
    config: TokenizerConfig,
    /// Recent encodings, shared with this tokenizer's clones.
    memo: EncodeMemo,
}

fn tok_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Config(format!("tokenizer: {what}: {e}"))
}

impl Tokenizer {
    /// Loads a `tokenizer.json`. `eos` names the EOS token when it is not one of [`EOS_CANDIDATES`].
    pub fn from_file(path: &Path, eos: Option<&str>) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| Error::Data {
            file: path.to_path_buf(),
            line: 0,
            field: "-".into(),
            message: format!("not a valid tokenizer.json: {e}"),
        })?;
        let mut tok = Self::wrap(inner, eos, None)?;
        tok.source = Some(bytes.into());
        Ok(tok)
    }

    /// Loads a Hugging Face model directory's tokenizer: `tokenizer.json`, with EOS and PAD as
    /// its `tokenizer_config.json` names them (Qwen2 chat models end replies with `<|im_end|>`;
    /// a PAD the vocabulary does not have is added past it, as [`Self::from_file`] does) and the
    /// config kept for its chat template ([`Self::config`]).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let config = TokenizerConfig::from_dir(dir)?;
        let path = dir.join("tokenizer.json");
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| Error::Data {
            file: path.clone(),
            line: 0,
            field: "-".into(),
            message: format!("not a valid tokenizer.json: {e}"),
        })?;
        let mut tok = Self::wrap(
            inner,
            config.eos_token.as_deref(),
            config.pad_token.as_deref(),
        )
        .map_err(|e| Error::Data {
            file: dir.join("tokenizer_config.json"),
            line: 0,
            field: "eos_token".into(),
            message: e.to_string(),
        })?;
        tok.source = Some(bytes.into());
        tok.config = config;
        let eos = tok.eos_id;
        tok.stop_ids = crate::generation_config::generation_eos_ids(dir)?
            .into_iter()
            .filter(|&id| id != eos)
            .collect();
        tok.stop_ids.sort_unstable();
        tok.stop_ids.dedup();
        Ok(tok)
    }

    /// The checkpoint's `tokenizer_config.json` (special tokens, chat template).
    pub fn config(&self) -> &TokenizerConfig {
        &self.config
    }

    /// Makes `source` the chat template, the one [`Self::save_dir`] writes (a run given its own
    /// template hands it on to the model it writes).
    pub fn set_chat_template(&mut self, source: &str) {
        self.config.raw.remove("chat_template");
        self.config.chat_template = Some(source.to_string());
    }

    /// Writes `dir/tokenizer.json` (the file it was loaded from, unchanged; a trained BPE as
    /// itself) and `dir/tokenizer_config.json` (the checkpoint's, or one naming EOS and, when the
    /// vocabulary has it, PAD), atomically: what `transformers`' `AutoTokenizer` reads. A chat
    /// template that is not in that file (the checkpoint's `chat_template.jinja`, or one set by
    /// [`Self::set_chat_template`]) is written to `dir/chat_template.jinja`, as `transformers`
    /// saves it.
    pub fn save_dir(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        match &self.source {
            Some(bytes) => rlhf_base::fs::write_atomic(&dir.join("tokenizer.json"), bytes)?,
            None => self.save(&dir.join("tokenizer.json"))?,
        }
        let mut config = self.config.raw.clone();
        if config.is_empty() {
            config.insert("tokenizer_class".into(), "PreTrainedTokenizerFast".into());
            config.insert("eos_token".into(), self.eos_text().into());
            if let Some(pad) = self.inner.id_to_token(self.pad_id)
                && self.source.is_none()
            {
                config.insert("pad_token".into(), pad.into());
            }
        }
        let bytes = serde_json::to_vec_pretty(&serde_json::Value::Object(config))
            .map_err(|e| tok_err("tokenizer_config.json", e))?;
        rlhf_base::fs::write_atomic(&dir.join("tokenizer_config.json"), &bytes)?;
        let jinja = dir.join("chat_template.jinja");
        match &self.config.chat_template {
            Some(template) if !self.config.raw.contains_key("chat_template") => {
                rlhf_base::fs::write_atomic(&jinja, template.as_bytes())
            }
            // a template in the config: no older file beside it to be read instead
            _ if jinja.is_file() => std::fs::remove_file(&jinja).map_err(|e| Error::io(&jinja, e)),
            _ => Ok(()),
        }
    }

    fn wrap(
        mut inner: tokenizers::Tokenizer,
        eos: Option<&str>,
        pad: Option<&str>,
    ) -> Result<Self> {
        let eos_id = match eos {
            Some(name) => inner
                .token_to_id(name)
                .ok_or_else(|| tok_err("eos", format!("no token `{name}`")))?,
            None => EOS_CANDIDATES
                .iter()
                .find_map(|t| inner.token_to_id(t))
                .ok_or_else(|| {
                    tok_err(
                        "eos",
                        format!("none of {EOS_CANDIDATES:?} is in the vocabulary; name it"),
                    )
                })?,
        };
        let named = pad.and_then(|p| inner.token_to_id(p));
        let pad_id =
            match named.or_else(|| PAD_CANDIDATES.iter().find_map(|t| inner.token_to_id(t))) {
                Some(id) => id,
                None => {
                    inner.add_special_tokens(&[AddedToken::from(PAD_TOKEN, true)]);
                    inner
                        .token_to_id(PAD_TOKEN)
                        .ok_or_else(|| tok_err("pad", "could not add [PAD]"))?
                }
            };
        let start = start_tokens(&inner);
        Ok(Tokenizer {
            inner,
            eos_id,
            pad_id,
            stop_ids: Vec::new(),
            start,
            source: None,
            config: TokenizerConfig::default(),
            memo: EncodeMemo::default(),
        })
    }

    /// Trains a byte-level BPE with `vocab_size` entries on `corpus`; its special tokens are
    /// `<|endoftext|>` (EOS) and `[PAD]`. Byte-level with no prefix space, so
    /// `decode(encode(s)) == s` for any string.
    pub fn train_bpe<I, S>(corpus: I, vocab_size: usize) -> Result<Self>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
    {
        let specials = vec![
            AddedToken::from(EOS_TOKEN, true),
            AddedToken::from(PAD_TOKEN, true),
        ];
        let mut trainer = BpeTrainerBuilder::new()
            .show_progress(false)
            .vocab_size(vocab_size)
            .min_frequency(2)
            .special_tokens(specials)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        let byte_level = ByteLevel::new(false, true, true);
        let mut tk = TokenizerBuilder::<
            BPE,
            NormalizerWrapper,
            ByteLevel,
            PostProcessorWrapper,
            ByteLevel,
        >::new()
        .with_model(BPE::default())
        .with_pre_tokenizer(Some(byte_level))
        .with_decoder(Some(byte_level))
        .build()
        .map_err(|e| tok_err("build", e))?;
        tk.train(&mut trainer, corpus)
            .map_err(|e| tok_err("train", e))?;
        let json = serde_json::to_string(&tk).map_err(|e| tok_err("serialise", e))?;
        let inner =
            tokenizers::Tokenizer::from_bytes(json.as_bytes()).map_err(|e| tok_err("reload", e))?;
        Self::wrap(inner, Some(EOS_TOKEN), None)
    }

    /// Writes `tokenizer.json`, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = self
            .inner
            .to_string(true)
            .map_err(|e| tok_err("serialise", e))?;
        rlhf_base::fs::write_atomic(path, json.as_bytes())
    }

    /// Token ids of `text`, with no special tokens added (special-token *text* inside `text`,
    /// such as `<|endoftext|>`, still maps to its id). Recent texts' ids are remembered: a
    /// pipeline encodes its prompts at every step.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.memo.ids(text, |text| {
            Ok(self
                .inner
                .encode(text, false)
                .map_err(|e| tok_err("encode", e))?
                .get_ids()
                .to_vec())
        })
    }

    /// Token ids of a text that begins a sequence (a prompt; a plain-text document): the tokens
    /// the tokenizer puts before a text ([`Self::start`]: Llama's BOS) then [`Self::encode`]'s, as
    /// `transformers`' tokenizer gives them (TRL's SFT, DPO and reward trainers tokenise plain
    /// text so; its online DPO samples from prompts tokenised without them), unless the
    /// text's own tokens already begin with them: a chat template writes its own BOS
    /// (`{{ bos_token }}`), and TRL's `apply_chat_template` adds none, so a rendered conversation
    /// keeps one. A template that writes no BOS gets the tokenizer's, where TRL's would have none.
    pub fn encode_start(&self, text: &str) -> Result<Vec<u32>> {
        let ids = self.encode(text)?;
        if ids.starts_with(&self.start) {
            return Ok(ids);
        }
        Ok(self.start.iter().chain(&ids).copied().collect())
    }

    /// [`Self::encode_start`]'s ids cut to at most `max` ([`Self::cut_prompt`]).
    pub fn encode_prompt(&self, text: &str, max: usize) -> Result<Vec<u32>> {
        Ok(self.cut_prompt(self.encode_start(text)?, max))
    }

    /// A prompt's ids (begun with [`Self::start`]) cut to at most `max`: the start tokens stay (a
    /// Llama model never reads a prompt without its BOS) and the rest keeps its last tokens, the
    /// end of a prompt being what a response follows.
    pub fn cut_prompt(&self, ids: Vec<u32>, max: usize) -> Vec<u32> {
        if ids.len() <= max {
            return ids;
        }
        let start = self.start.len().min(max);
        let rest = &ids[ids.len() - (max - start)..];
        ids[..start].iter().chain(rest).copied().collect()
    }

    /// The special tokens the tokenizer puts before a text (Llama's BOS; none for GPT-2, Pythia
    /// or Qwen).
    pub fn start(&self) -> &[u32] {
        &self.start
    }

    /// Text of `ids`, special tokens included (so a trailing EOS stays visible to scorers).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| tok_err("decode", e))
    }

    /// EOS id.
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// PAD id (possibly outside the model's vocabulary: see the type's documentation).
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The EOS token's text.
    pub fn eos_text(&self) -> String {
        self.inner.id_to_token(self.eos_id).unwrap_or_default()
    }

    /// The text of a sampled response: [`Self::decode`], except that a response ending with a
    /// stop id other than EOS ends with the EOS token's text, so that scorers, which look for that
    /// text to tell a finished response, read it as one.
    pub fn decode_response(&self, ids: &[u32]) -> Result<String> {
        match ids.split_last() {
            Some((last, body)) if self.stop_ids.contains(last) => {
                Ok(self.decode(body)? + &self.eos_text())
            }
            _ => self.decode(ids),
        }
    }

    /// The ids besides EOS that end a response (the checkpoint's `generation_config.json` lists
    /// them; none for a tokenizer read from a file alone).
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Whether a model trained on `other`'s ids reads this tokenizer's as the same text: the same
    /// vocabulary, added tokens included (a `[PAD]` added by this process aside: it never reaches
    /// a model), and the same start. Which token each names EOS does not matter here.
    pub fn same_ids(&self, other: &Tokenizer) -> bool {
        let vocab = |t: &Tokenizer| {
            let mut v = t.inner.get_vocab(true);
            if v.get(PAD_TOKEN) == Some(&t.pad_id) {
                v.remove(PAD_TOKEN);
            }
            v
        };
        self.start == other.start
            && (self.source.is_some() && self.source == other.source || vocab(self) == vocab(other))
    }
}

/// The special tokens `transformers` puts before a text: what `tokenizer.json`'s post-processor
/// puts there, read off an encoding (its leading special tokens). `transformers` 5 loads that
/// post-processor as it is: `tokenizer_config.json`'s `add_bos_token` and `add_eos_token` are
/// not read when there is a `tokenizer.json`, and a file without a post-processor adds nothing.
/// What a post-processor puts after a text (an EOS) is not taken: a response's EOS is the
/// trainers' business.
fn start_tokens(inner: &tokenizers::Tokenizer) -> Vec<u32> {
    let mut probe = inner.clone();
    probe.with_padding(None);
    let Ok(probe) = probe.with_truncation(None) else {
        return Vec::new();
    };
    let Ok(encoding) = probe.encode("a", true) else {
        return Vec::new();
    };
    encoding
        .get_ids()
        .iter()
        .zip(encoding.get_special_tokens_mask())
        .take_while(|&(_, &special)| special == 1)
        .map(|(&id, _)| id)
        .collect()
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab", &self.vocab_size())
            .field("eos_id", &self.eos_id)
            .field("pad_id", &self.pad_id)
            .field("stop_ids", &self.stop_ids)
            .field("start", &self.start)
            .finish()
    }
}
