//! The output directory of a training command: it belongs to one configuration (recorded in
//! `rlhf.toml`, so running the same command again resumes and another one is refused), it holds
//! the checkpoints and `metrics.jsonl` while training, and it ends as a Hugging Face directory
//! that `transformers` loads unchanged.

use std::path::Path;

use anyhow::{Context, Result, bail};
use rlhf_core::train::fs::write_atomic;
use rlhf_data::Tokenizer;
use rlhf_models::{CausalLm, TransformerConfig, save_peft_adapter, save_pretrained};
use rlhf_reward::RewardModel;
use serde_json::Value;

use crate::args::LoraArgs;

/// The record of the options a run directory was made with.
pub const RUN_RECORD: &str = "rlhf.toml";

/// Keys that may change between a run and its resumption (they do not change what is trained).
const RESUMABLE_CHANGES: &[&str] = &[
    "device",
    "devices",
    "gradient_checkpointing",
    "save_adapter",
    "logging_steps",
    "save_steps",
    "save_total_limit",
    "log_completions",
    "num_completions_to_print",
    "config",
];

/// How this version turns a command's records into tokens. Raise a command's with every change
/// that gives its data other token ids (what a prompt begins with, where a response ends, how
/// prompt and response share `max_length`), so that a run recorded by another version is not
/// resumed on other tokens. This version's: prompts begin with the BOS that the tokenizer's
/// post-processor puts before a text, a record that fits in `max_length` is kept whole, and a
/// response is tokenised after its prompt's text, the prompt ending where the two agree (4); a
/// reward model reads a chat reply as its template renders it (5: `rm`, `online-dpo` and the
/// on-policy commands, which may serve a reward model).
pub fn text_encoding(command: &str) -> u32 {
    match command {
        "sft" | "dpo" | "kto" | "distill" => 4,
        _ => 5,
    }
}

/// Whether a run of `command` recorded at text encoding `recorded` tokenises as this version
/// does: its own [`text_encoding`], or for the commands at 4, also 5, which a version that gave
/// every command one number recorded for the same tokens.
fn same_text_encoding(command: &str, recorded: &str) -> bool {
    let now = text_encoding(command);
    recorded == now.to_string() || (now == 4 && recorded == "5")
}

/// The run record's comment line naming its [`text_encoding`] (a comment, so the record still
/// reads as a `--config` file).
const ENCODING_LINE: &str = "# text encoding ";

/// Claims `out` for the run whose resolved options are `toml_text`: a new directory records
/// them; a directory holding the same run is resumed; one holding another run, or recorded by a
/// version that encodes text otherwise ([`text_encoding`]), is refused with the first option
/// that differs.
pub fn claim(out: &Path, command: &str, toml_text: &str) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let record = out.join(RUN_RECORD);
    let encoding_now = text_encoding(command);
    let mine = format!("# rlhf {command}\n{ENCODING_LINE}{encoding_now}\n{toml_text}");
    if record.is_file() {
        let theirs = std::fs::read_to_string(&record)
            .with_context(|| format!("reading {}", record.display()))?;
        let parse = |t: &str| -> Result<toml::Table> { Ok(toml::from_str(t)?) };
        let (a, b) = (parse(&theirs)?, parse(&mine)?);
        let first_line = |t: &str| t.lines().next().unwrap_or_default().to_string();
        if first_line(&theirs) != first_line(&mine) {
            bail!(
                "{} holds a run of `{}`, not `rlhf {command}`: use another --out or remove it",
                out.display(),
                first_line(&theirs).trim_start_matches("# ")
            );
        }
        let encoding = theirs
            .lines()
            .find_map(|l| l.strip_prefix(ENCODING_LINE))
            .unwrap_or("1");
        if !same_text_encoding(command, encoding.trim()) {
            bail!(
                "{} holds a run recorded by a version of rlhf that turned text into other tokens \
                 (text encoding {} there, {encoding_now} now): resumed, it would train on other \
                 tokens; use another --out",
                out.display(),
                encoding.trim()
            );
        }
        let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        for k in keys {
            if RESUMABLE_CHANGES.contains(&k.as_str()) {
                continue;
            }
            if a.get(k) != b.get(k) {
                // a key missing there was recorded by a version of rlhf without that option,
                // whose behaviour need not be the option's default now
                let older = if a.contains_key(k) {
                    ""
                } else {
                    " (the run there was recorded before rlhf had this option)"
                };
                bail!(
                    "{} holds a run with other options (`{k}`: {} there, {} now{older}): run the \
                     same command to resume it, or use another --out",
                    out.display(),
                    a.get(k).map_or("not set".into(), ToString::to_string),
                    b.get(k).map_or("not set".into(), ToString::to_string)
                );
            }
        }
        tracing::info!("{}: resuming the run recorded there", out.display());
    }
    write_atomic(&record, mine.as_bytes())?;
    Ok(())
}

/// Copies the files of the checkpoint directory `from` that describe generation (and that
/// `transformers` reads) into `out`: `generation_config.json` and `special_tokens_map.json`.
fn copy_generation_files(from: &Path, out: &Path) -> Result<()> {
    for name in ["generation_config.json", "special_tokens_map.json"] {
        let src = from.join(name);
        if src.is_file() {
            let bytes =
                std::fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
            write_atomic(&out.join(name), &bytes)?;
        }
    }
    Ok(())
}

/// Writes a trained causal LM as a Hugging Face directory: `config.json`, `model.safetensors`
/// (LoRA adapters merged), the tokenizer's files, and the starting checkpoint's generation files;
/// with `--save-adapter`, the adapters alone in PEFT's layout in `out/adapter`.
pub fn save_causal(
    out: &Path,
    model: &CausalLm,
    config: &TransformerConfig,
    tokenizer: &Tokenizer,
    from: &Path,
    lora: &LoraArgs,
) -> Result<()> {
    save_pretrained(model, config, out)?;
    tokenizer.save_dir(out)?;
    copy_generation_files(from, out)?;
    tracing::info!(
        "wrote {}: config.json, model.safetensors, tokenizer.json, tokenizer_config.json",
        out.display()
    );
    if let (Some(cfg), true) = (lora.config(), lora.save_adapter) {
        let dir = out.join("adapter");
        let base = std::fs::canonicalize(from).unwrap_or_else(|_| from.to_path_buf());
        save_peft_adapter(model, config, &cfg, &base, &dir)?;
        tracing::info!(
            "wrote {}: the LoRA adapters alone (adapter_model.safetensors, adapter_config.json)",
            dir.display()
        );
    }
    Ok(())
}

/// Writes a trained reward model as a Hugging Face sequence-classification directory, with the
/// tokenizer's files; `pad_token_id` is the tokenizer's PAD when that is a real token other than
/// EOS (transformers reads the score at the last token that is not the PAD), and `null`
/// otherwise.
pub fn save_reward(out: &Path, rm: &RewardModel, tokenizer: &Tokenizer) -> Result<()> {
    rm.save(out)?;
    tokenizer.save_dir(out)?;
    // a PAD that is a real token other than EOS is named; otherwise `null`, not left out, so
    // that no config class's default applies (Phi3Config's 32000, Phi-3's EOS, would have
    // `transformers` read the score before the EOS where it was trained at it)
    let pad = tokenizer.pad_id();
    let path = out.join("config.json");
    let mut json: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    json["pad_token_id"] = if (pad as usize) < rm.config.vocab_size && pad != tokenizer.eos_id() {
        pad.into()
    } else {
        Value::Null
    };
    write_atomic(&path, &serde_json::to_vec_pretty(&json)?)?;
    tracing::info!(
        "wrote {}: a sequence-classification checkpoint (score head) with its tokenizer",
        out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reward model whose tokenizer has no PAD of its own is written with `pad_token_id: null`,
    /// not without the key, so that `transformers` reads it at its last token, where it was
    /// trained, whatever its config class's default (Phi3Config's is 32000, Phi-3's EOS).
    #[test]
    fn a_reward_model_without_a_pad_of_its_own_is_written_with_a_null_pad() {
        let device = burn::tensor::Device::flex();
        let fixture = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../rlhf-models/tests/fixtures/hf"
        );
        let tokenizer = Tokenizer::from_dir(&Path::new(fixture).join("tiny-phi3")).unwrap();
        // a Llama: its config class has no default PAD, so only a written key says `null`
        let mut c = TransformerConfig::preset("tiny-llama-1m").unwrap();
        // the fixture model's vocabulary, which its tokenizer's PAD (64) lies outside, as a real
        // checkpoint's may: no PAD of the model's own
        c.vocab_size = 64;
        assert_eq!(tokenizer.pad_id(), 64);
        // under the initialisation lock: other tests of the binary draw seeded models meanwhile
        let backbone =
            rlhf_core::train::seeded(&device, 1, || CausalLm::init(&c, &device).unwrap());
        let rm = RewardModel::from_backbone(backbone, c, rlhf_reward::RewardSettings::outcome());
        let out = tempfile::tempdir().unwrap();
        save_reward(out.path(), &rm, &tokenizer).unwrap();
        let text = std::fs::read_to_string(out.path().join("config.json")).unwrap();
        let json: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json.get("pad_token_id"), Some(&Value::Null), "{text}");
        assert_eq!(rlhf_reward::config_pad_token_id(out.path()).unwrap(), None);
    }

    /// The same options resume; another value, or an option that the recorded run did not have,
    /// is refused, naming the key (and, for the second, why).
    #[test]
    fn a_run_directory_resumes_only_its_own_options() {
        let out = tempfile::tempdir().unwrap();
        let first = "beta = 0.1\nseed = 1\n";
        claim(out.path(), "dpo", first).unwrap();
        claim(out.path(), "dpo", first).unwrap();
        let err = claim(out.path(), "dpo", "beta = 0.2\nseed = 1\n").unwrap_err();
        assert!(
            err.to_string().contains("`beta`: 0.1 there, 0.2 now)"),
            "{err}"
        );
        let newer = "beta = 0.1\nseed = 1\ndisable_dropout = true\n";
        let err = claim(out.path(), "dpo", newer).unwrap_err().to_string();
        assert!(
            err.contains(
                "`disable_dropout`: not set there, true now (the run there was recorded before"
            ),
            "{err}"
        );
        let err = claim(out.path(), "kto", first).unwrap_err();
        assert!(err.to_string().contains("not `rlhf kto`"), "{err}");
    }

    /// A run recorded by a version that encoded text otherwise (no encoding line: before BOS) is
    /// refused, naming both encodings; the record still parses as a configuration file.
    #[test]
    fn a_run_of_another_text_encoding_is_not_resumed() {
        let out = tempfile::tempdir().unwrap();
        let options = "beta = 0.1\n";
        std::fs::write(
            out.path().join(RUN_RECORD),
            format!("# rlhf dpo\n{options}"),
        )
        .unwrap();
        let err = claim(out.path(), "dpo", options).unwrap_err().to_string();
        assert!(err.contains("text encoding 1 there, 4 now"), "{err}");
        // an `sft` or `kto` run recorded at 4 or 5 resumes; an `rm` or `grpo` run recorded at 4
        // read chats otherwise, and is refused naming both encodings
        for (command, recorded, resumes) in [
            ("sft", 4, true),
            ("kto", 5, true),
            ("rm", 4, false),
            ("grpo", 4, false),
            ("online-dpo", 5, true),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let record = format!("# rlhf {command}\n{ENCODING_LINE}{recorded}\n{options}");
            std::fs::write(dir.path().join(RUN_RECORD), record).unwrap();
            match claim(dir.path(), command, options) {
                Ok(()) => assert!(resumes, "{command} at {recorded}"),
                Err(e) => {
                    assert!(!resumes, "{command} at {recorded}: {e}");
                    assert!(
                        e.to_string().contains("text encoding 4 there, 5 now"),
                        "{e}"
                    );
                }
            }
        }
        let fresh = tempfile::tempdir().unwrap();
        claim(fresh.path(), "dpo", options).unwrap();
        claim(fresh.path(), "dpo", options).unwrap();
        let record = std::fs::read_to_string(fresh.path().join(RUN_RECORD)).unwrap();
        assert_eq!(
            toml::from_str::<toml::Table>(&record).unwrap()["beta"],
            0.1.into()
        );
    }
}
