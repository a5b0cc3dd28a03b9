//! Hugging Face parity: the committed fixtures (written once by `cargo xtask fixtures` with
//! `transformers`) load, give `transformers`' logits on a left-padded batch within 1e-4 (the
//! wgpu backend within 5e-4) and its greedy continuations exactly; an exported checkpoint
//! re-imports to identical logits; a mismatched checkpoint is refused with the tensors named.
//! The device comes from `RLHF_DEVICE` (default `flex`).

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rlhf_core::host::to_f32_vec;
use rlhf_models::{CausalLm, SamplingConfig, generate, load_pretrained, save_pretrained};
use serde_json::Value;

fn device() -> Device {
    rlhf_core::device_from_env().unwrap()
}

/// flex computes in f32 on the CPU like PyTorch; lavapipe's shaders reassociate sums.
fn tolerance() -> f32 {
    match std::env::var("RLHF_DEVICE").as_deref() {
        Ok(d) if d.starts_with("wgpu") || d.starts_with("vulkan") => 5e-4,
        _ => 1e-4,
    }
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(name)
}

struct Parity {
    ids: Vec<u32>,
    mask: Vec<u8>,
    batch: usize,
    logits: Vec<f32>,
    greedy: Vec<u32>,
}

fn parity(name: &str) -> Parity {
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(name).join("parity.json")).unwrap())
            .unwrap();
    let rows = |key: &str| -> Vec<Vec<u64>> {
        v[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap())
                    .collect()
            })
            .collect()
    };
    let ids = rows("input_ids");
    Parity {
        batch: ids.len(),
        ids: ids.concat().into_iter().map(|x| x as u32).collect(),
        mask: rows("attention_mask")
            .concat()
            .into_iter()
            .map(|x| x as u8)
            .collect(),
        logits: v["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect(),
        greedy: rows("greedy")
            .concat()
            .into_iter()
            .map(|x| x as u32)
            .collect(),
    }
}

fn logits(model: &CausalLm, p: &Parity) -> Vec<f32> {
    to_f32_vec(model.forward(&model.input(&p.ids, &p.mask, p.batch).unwrap(), None))
}

/// Largest difference over real (unpadded) positions.
fn max_diff_real(a: &[f32], b: &[f32], mask: &[u8]) -> f32 {
    let vocab = a.len() / mask.len();
    mask.iter()
        .enumerate()
        .filter(|(_, m)| **m == 1)
        .flat_map(|(i, _)| (i * vocab..(i + 1) * vocab).map(|j| (a[j] - b[j]).abs()))
        .fold(0.0, f32::max)
}

fn check_parity(name: &str) {
    let d = device();
    let (_, model) = load_pretrained(&fixture(name), &d).unwrap();
    let p = parity(name);
    let ours = logits(&model, &p);
    assert_eq!(ours.len(), p.logits.len());
    let diff = max_diff_real(&ours, &p.logits, &p.mask);
    println!("{name}: max |Δlogit| = {diff:.2e}");
    assert!(diff < tolerance(), "{name}: max |Δlogit| = {diff}");
    let g = generate(
        &model,
        &p.ids,
        &p.mask,
        p.batch,
        &SamplingConfig {
            max_new_tokens: 8,
            temperature: 0.0,
            eos_id: None,
            ..Default::default()
        },
        &mut ChaCha8Rng::seed_from_u64(0),
    )
    .unwrap();
    assert_eq!(g.tokens, p.greedy, "{name}: greedy continuation");
}

#[test]
fn gpt_neox_matches_transformers() {
    check_parity("tiny-neox");
}

#[test]
fn llama_with_grouped_query_attention_matches_transformers() {
    check_parity("tiny-llama");
}

#[test]
fn qwen2_with_qkv_bias_and_tied_embeddings_matches_transformers() {
    check_parity("tiny-qwen2");
}

/// The checkpoints the `rlhf` command ships with: Pythia's tokenizer conventions (no pad token,
/// so PAD lies past the vocabulary) and a Qwen2 chat model (EOS `<|im_end|>`, ChatML template),
/// each with transformers' own initialisation.
#[test]
fn the_command_line_fixtures_match_transformers() {
    check_parity("tiny-pythia");
    check_parity("tiny-qwen2-chat");
    let pythia = rlhf_data::Tokenizer::from_dir(&fixture("tiny-pythia")).unwrap();
    assert_eq!(
        (pythia.eos_text().as_str(), pythia.pad_id()),
        ("<|endoftext|>", 512)
    );
    let chat = rlhf_data::Tokenizer::from_dir(&fixture("tiny-qwen2-chat")).unwrap();
    assert_eq!(chat.eos_text(), "<|im_end|>");
    assert!(chat.pad_id() < 512);
    let format = chat.config().chat_format().unwrap();
    let prompt = rlhf_data::Turns::Messages(vec![rlhf_data::Message {
        role: "user".into(),
        content: "hi".into(),
    }]);
    assert_eq!(
        format.prompt(&prompt).unwrap(),
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn a_sharded_checkpoint_loads_like_the_single_file() {
    check_parity("tiny-llama-sharded");
    let d = device();
    let p = parity("tiny-llama");
    let (_, single) = load_pretrained(&fixture("tiny-llama"), &d).unwrap();
    let (_, sharded) = load_pretrained(&fixture("tiny-llama-sharded"), &d).unwrap();
    assert_eq!(logits(&single, &p), logits(&sharded, &p));
}

#[test]
fn export_then_import_gives_identical_logits() {
    let d = device();
    for name in [
        "tiny-neox",
        "tiny-llama",
        "tiny-qwen2",
        "tiny-pythia",
        "tiny-qwen2-chat",
    ] {
        let (config, model) = load_pretrained(&fixture(name), &d).unwrap();
        let dir = tempfile::tempdir().unwrap();
        save_pretrained(&model, &config, dir.path()).unwrap();
        let (config2, again) = load_pretrained(dir.path(), &d).unwrap();
        assert_eq!(config, config2, "{name}: config.json round trip");
        let p = parity(name);
        assert_eq!(logits(&model, &p), logits(&again, &p), "{name}");
        // the exported tensors carry Hugging Face's names and layouts
        let original = std::fs::read(fixture(name).join("model.safetensors")).unwrap();
        let exported = std::fs::read(dir.path().join("model.safetensors")).unwrap();
        let names = |bytes: &[u8]| {
            let st = safetensors_names(bytes);
            st.into_iter().collect::<std::collections::BTreeSet<_>>()
        };
        assert_eq!(names(&original), names(&exported), "{name}: tensor names");
    }
}

/// One model saved several times gives one file, byte for byte, so a resumed run's checkpoint
/// can be compared with an uninterrupted run's by its bytes (burn keeps the header's metadata
/// in a hash map, whose order differs from one map to the next).
#[test]
fn a_model_always_saves_to_the_same_bytes() {
    let d = device();
    let (config, model) = load_pretrained(&fixture("tiny-pythia"), &d).unwrap();
    let saved: Vec<Vec<u8>> = (0..6)
        .map(|_| {
            let dir = tempfile::tempdir().unwrap();
            save_pretrained(&model, &config, dir.path()).unwrap();
            std::fs::read(dir.path().join("model.safetensors")).unwrap()
        })
        .collect();
    assert!(saved.windows(2).all(|w| w[0] == w[1]));
    let len = u64::from_le_bytes(saved[0][..8].try_into().unwrap());
    assert_eq!(len % 8, 0, "the header is padded to 8 bytes");
}

/// Tensor names and shapes from a safetensors header (8-byte length, then JSON).
fn safetensors_names(bytes: &[u8]) -> Vec<(String, Vec<u64>)> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| {
            (
                k.clone(),
                v["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap())
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn mismatched_checkpoints_and_unsupported_configs_are_refused_by_name() {
    let d = device();
    let dir = tempfile::tempdir().unwrap();
    // a config that claims more layers than the weights have
    let src = fixture("tiny-neox");
    std::fs::copy(
        src.join("model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    config["num_hidden_layers"] = 3.into();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let err = load_pretrained(dir.path(), &d).unwrap_err().to_string();
    assert!(
        err.contains("missing") && err.contains("layers.2."),
        "{err}"
    );
    // an option that is not implemented is named, not ignored
    config["num_hidden_layers"] = 2.into();
    config["use_parallel_residual"] = false.into();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let err = load_pretrained(dir.path(), &d).unwrap_err().to_string();
    assert!(
        err.contains("config.json") && err.contains("use_parallel_residual"),
        "{err}"
    );
    // a missing field names itself
    config.as_object_mut().unwrap().remove("hidden_size");
    config["use_parallel_residual"] = true.into();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let err = load_pretrained(dir.path(), &d).unwrap_err().to_string();
    assert!(err.contains("hidden_size"), "{err}");
    // no weights at all
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    config["hidden_size"] = 32.into();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let err = load_pretrained(dir.path(), &d).unwrap_err().to_string();
    assert!(err.contains("model.safetensors"), "{err}");
}

#[test]
fn a_scalar_model_round_trips_with_its_extra_settings() {
    let d = device();
    for name in ["tiny-neox", "tiny-qwen2", "tiny-llama"] {
        let (config, lm) = load_pretrained(&fixture(name), &d).unwrap();
        let scalar = rlhf_models::ScalarModel::from_backbone(lm);
        let dir = tempfile::tempdir().unwrap();
        let extra = serde_json::json!({"kind": "reward", "bias": 0.25});
        rlhf_models::save_scalar_pretrained(&scalar, &config, extra.clone(), dir.path()).unwrap();
        let (config2, again, extra2, head) =
            rlhf_models::load_scalar_pretrained(dir.path(), &d).unwrap();
        assert!(head, "{name}: the head is read back");
        assert_eq!((config, extra), (config2, extra2));
        let p = parity(name);
        let run = |m: &rlhf_models::ScalarModel| {
            to_f32_vec(m.per_token(&m.input(&p.ids, &p.mask, p.batch).unwrap()))
        };
        assert_eq!(run(&scalar), run(&again), "{name}");
        // a sequence-classification checkpoint: the backbone under the family's names, the head
        // as `score.weight` without a bias, no LM head
        let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
        let names: Vec<String> = safetensors_names(&bytes).into_iter().map(|x| x.0).collect();
        assert!(names.contains(&"score.weight".to_string()), "{names:?}");
        assert!(
            !names.iter().any(|n| n == "score.bias"
                || n.starts_with("embed_out")
                || n.starts_with("lm_head")),
            "{names:?}"
        );
        assert!(
            names
                .iter()
                .any(|n| n.starts_with("gpt_neox.") || n.starts_with("model."))
        );
        let config_json: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
                .unwrap();
        assert!(
            config_json["architectures"][0]
                .as_str()
                .unwrap()
                .ends_with("ForSequenceClassification"),
            "{config_json}"
        );
    }
}

/// A causal LM checkpoint loads as a scalar model: its LM head is left out and the head is fresh.
#[test]
fn a_causal_checkpoint_loads_as_a_scalar_model_with_a_fresh_head() {
    let d = device();
    for name in ["tiny-neox", "tiny-llama", "tiny-qwen2"] {
        let (_, model, extra, head) =
            rlhf_models::load_scalar_pretrained(&fixture(name), &d).unwrap();
        assert!(!head && extra.is_null(), "{name}");
        assert!(!model.backbone.has_lm_head());
        let (_, lm) = load_pretrained(&fixture(name), &d).unwrap();
        let p = parity(name);
        // the same hidden states as the causal model's
        let hidden =
            |m: &CausalLm| to_f32_vec(m.hidden(&m.input(&p.ids, &p.mask, p.batch).unwrap(), None));
        assert_eq!(hidden(&lm), hidden(&model.backbone), "{name}");
    }
}

/// A value that might break a config field: wrong types, zero, negative, absurdly large.
fn hostile_value() -> impl proptest::strategy::Strategy<Value = Option<Value>> {
    use proptest::prelude::*;
    prop_oneof![
        Just(None), // the key removed
        any::<i64>().prop_map(|v| Some(Value::from(v))),
        any::<u64>().prop_map(|v| Some(Value::from(v))),
        prop::sample::select(vec![
            Value::from(0),
            Value::from(-1),
            Value::from(1e308),
            Value::from(0.5),
            Value::from("x"),
            Value::Null,
            Value::Bool(true),
            serde_json::json!([1, 2]),
            serde_json::json!({"rope_type": "yarn", "factor": -3}),
        ])
        .prop_map(Some),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// A real model directory with one config field replaced by a hostile value and the
    /// safetensors bytes flipped or cut loads, or fails with an error naming a file of the
    /// directory; never a panic, never a huge allocation.
    #[test]
    fn damaged_model_directories_never_panic(
        which in proptest::sample::select(vec!["tiny-llama", "tiny-neox", "tiny-qwen2"]),
        field in proptest::prelude::any::<proptest::sample::Index>(),
        value in hostile_value(),
        flips in proptest::collection::vec((proptest::prelude::any::<proptest::sample::Index>(), proptest::prelude::any::<u8>(), proptest::prelude::any::<bool>()), 0..6),
        cut in proptest::prelude::any::<Option<proptest::sample::Index>>(),
    ) {
        let src = fixture(which);
        let mut config: Value =
            serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
        let obj = config.as_object_mut().unwrap();
        let key = obj.keys().nth(field.index(obj.len())).unwrap().clone();
        match value {
            Some(v) => obj.insert(key, v),
            None => obj.remove(&key),
        };
        let mut weights = std::fs::read(src.join("model.safetensors")).unwrap();
        // safetensors: 8 bytes of header length, then the JSON header, then the data
        let header_end = 8 + u64::from_le_bytes(weights[..8].try_into().unwrap()) as usize;
        for (at, byte, in_header) in flips {
            let span = if in_header { header_end } else { weights.len() };
            weights[at.index(span)] = byte;
        }
        if let Some(c) = cut {
            weights.truncate(c.index(weights.len()));
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("damaged-model");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("config.json"), serde_json::to_vec(&config).unwrap()).unwrap();
        std::fs::write(dir.join("model.safetensors"), &weights).unwrap();
        let device = rlhf_core::parse_device("flex").unwrap();
        if let Err(e) = load_pretrained(&dir, &device) {
            proptest::prop_assert!(e.to_string().contains("damaged-model"), "{}", e);
        }
        if let Err(e) = rlhf_models::load_scalar_pretrained(&dir, &device) {
            proptest::prop_assert!(e.to_string().contains("damaged-model"), "{}", e);
        }
    }
}

/// Regression cases found by the property test above and by `cargo fuzz run model_files`: sizes
/// whose products overflow, or that would make the loader allocate terabytes, are refused.
#[test]
fn sizes_that_overflow_or_exceed_the_files_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    std::fs::create_dir(&dir).unwrap();
    let src = fixture("tiny-llama");
    std::fs::copy(src.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    let base: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    for (field, value, expect) in [
        ("head_dim", Value::from(u64::MAX / 2), "head_dim"),
        ("vocab_size", Value::from(1u64 << 40), "vocab_size"),
        (
            "max_position_embeddings",
            Value::from(u64::MAX),
            "max_position_embeddings",
        ),
        // burn's RmsNorm asserts ε > 0: found by the fuzzer as a panic
        ("rms_norm_eps", Value::from(0.0), "norm_eps"),
        // a valid shape, but 600M parameters cannot be in an 80 kB file
        (
            "intermediate_size",
            Value::from(1u64 << 20),
            "weight files hold only",
        ),
    ] {
        let mut config = base.clone();
        config[field] = value;
        if field == "intermediate_size" {
            config["num_hidden_layers"] = Value::from(300);
        }
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_vec(&config).unwrap(),
        )
        .unwrap();
        let err = load_pretrained(&dir, &device()).unwrap_err().to_string();
        assert!(err.contains(expect), "{field}: {err}");
    }
}
