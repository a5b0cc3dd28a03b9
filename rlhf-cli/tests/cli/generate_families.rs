//! `rlhf generate --temperature 0` on the checkpoint of every model family added after
//! GPT-NeoX, Llama and Qwen2 (each a tiny random `transformers` model committed under
//! rlhf-models/tests/fixtures/hf) prints the prompt ids the fixture's tokenizer gives and the
//! greedy continuation `transformers` computed for them, stopping after EOS (the `text` record of
//! each fixture's parity.json, written by xtask/fixtures/make_family_fixtures.py).

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

const FAMILIES: [&str; 8] = [
    "tiny-neox-sequential",
    "tiny-llama3",
    "tiny-llama-linear",
    "tiny-llama-dynamic",
    "tiny-qwen3",
    "tiny-mistral",
    "tiny-phi3",
    "tiny-gpt2",
];

#[test]
fn generate_gives_transformers_greedy_tokens_on_every_new_family() {
    let fixtures =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../rlhf-models/tests/fixtures/hf");
    for name in FAMILIES {
        let dir = fixtures.join(name);
        let parity: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("parity.json")).unwrap())
                .unwrap();
        let expected = &parity["text"];
        let out = Command::new(env!("CARGO_BIN_EXE_rlhf"))
            .args(["generate", "--model"])
            .arg(&dir)
            .args([
                "--prompt",
                expected["prompt"].as_str().unwrap(),
                "--max-new-tokens",
                "8",
                "--temperature",
                "0",
                "--json",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            line["prompt_ids"], expected["prompt_ids"],
            "{name}: prompt ids"
        );
        assert_eq!(
            line["completion_ids"], expected["greedy"],
            "{name}: greedy tokens"
        );
    }
}
