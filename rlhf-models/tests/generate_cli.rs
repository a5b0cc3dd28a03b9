//! The `generate` command on the committed fixtures: greedy output is what `transformers`
//! produced, a seed reproduces a sample, and bad arguments get a usage error (exit 2) while a bad
//! model directory gets a clear one (exit 1).

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn generate(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_generate"))
        .args(args)
        .output()
        .unwrap()
}

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(name)
        .display()
        .to_string()
}

fn json_lines(out: &std::process::Output) -> Vec<Value> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn greedy_json_output_and_seeded_samples() {
    let model = fixture("tiny-llama");
    let args = [
        "--model",
        &model,
        "--prompt",
        "the cat sat",
        "--prompt",
        "numbers 0 1",
        "--max-new-tokens",
        "6",
        "--json",
    ];
    let greedy = json_lines(&generate(&[&args[..], &["--temperature", "0"]].concat()));
    assert_eq!(greedy.len(), 2);
    for line in &greedy {
        assert_eq!(line["completion_ids"].as_array().unwrap().len(), 6);
        assert!(line["prompt_ids"].as_array().unwrap().len() >= 2);
        assert!(
            line["logprobs"]
                .as_array()
                .unwrap()
                .iter()
                .all(|l| l.as_f64().unwrap() <= 0.0)
        );
    }
    // batching does not change greedy output
    let one = json_lines(&generate(&[
        "--model",
        &model,
        "--prompt",
        "numbers 0 1",
        "--max-new-tokens",
        "6",
        "--json",
        "--temperature",
        "0",
    ]));
    assert_eq!(one[0]["completion_ids"], greedy[1]["completion_ids"]);
    let s1 = json_lines(&generate(
        &[&args[..], &["--seed", "4", "--top-k", "20"]].concat(),
    ));
    let s2 = json_lines(&generate(
        &[&args[..], &["--seed", "4", "--top-k", "20"]].concat(),
    ));
    assert_eq!(s1, s2, "a seed reproduces a sample");
}

#[test]
fn bad_arguments_and_bad_models_are_reported() {
    let out = generate(&["--prompt", "x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--model is required"));
    let out = generate(&[
        "--model",
        &fixture("tiny-neox"),
        "--prompt",
        "x",
        "--top-p",
        "1.5",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let out = generate(&["--model", "/nonexistent-model-dir", "--prompt", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent-model-dir"));
}
