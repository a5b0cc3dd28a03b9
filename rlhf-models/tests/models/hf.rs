//! Hugging Face parity: the committed fixtures (written once by `cargo xtask fixtures` with
//! `transformers`) load, give `transformers`' logits on a left-padded batch within 1e-4 (the
//! wgpu backend within 5e-4) and its greedy continuations exactly; an exported checkpoint
//! re-imports to identical logits; decoding with the KV cache gives a full forward pass's logits
//! and padding changes no real position in every family; a mismatched checkpoint is refused with
//! the tensors named, an option that is not implemented with the option named.
//! The device comes from `RLHF_DEVICE` (default `flex`).

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rlhf_core::host::to_f32_vec;
use rlhf_models::{
    Architecture, CausalLm, KvCache, RopeScaling, SamplingConfig, TransformerConfig, generate,
    load_pretrained, save_pretrained,
};
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

/// The fixtures of the families and options added after GPT-NeoX, Llama and Qwen2.
const NEW_FAMILIES: [&str; 8] = [
    "tiny-neox-sequential",
    "tiny-llama3",
    "tiny-llama-linear",
    "tiny-llama-dynamic",
    "tiny-qwen3",
    "tiny-mistral",
    "tiny-phi3",
    "tiny-gpt2",
];

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

#[test]
fn gpt_neox_with_sequential_residual_matches_transformers() {
    check_parity("tiny-neox-sequential");
    let (config, _) = load_pretrained(&fixture("tiny-neox-sequential"), &device()).unwrap();
    assert!(!config.use_parallel_residual);
    assert_eq!((config.head_dim(), config.rotary_dims()), (9, 4));
}

/// Llama 3's scaling with one frequency kept, one interpolated and three divided by the factor.
#[test]
fn llama3_rope_scaling_matches_transformers() {
    check_parity("tiny-llama3");
    let (config, _) = load_pretrained(&fixture("tiny-llama3"), &device()).unwrap();
    assert_eq!(
        config.rope_scaling,
        RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 64
        }
    );
}

/// Linear scaling, and dynamic NTK with a batch (10 positions) and a greedy continuation (up to
/// 18) longer than max_position_embeddings (8), so the base grows at every step.
#[test]
fn linear_and_dynamic_rope_scaling_match_transformers() {
    check_parity("tiny-llama-linear");
    check_parity("tiny-llama-dynamic");
    let (config, _) = load_pretrained(&fixture("tiny-llama-dynamic"), &device()).unwrap();
    assert_eq!(config.rope_scaling, RopeScaling::Dynamic { factor: 2.0 });
    assert!(parity("tiny-llama-dynamic").ids.len() / 3 > config.max_position_embeddings);
}

/// Per-head RMSNorm on queries and keys, 4 heads of 12 on a width of 32, tied embeddings.
#[test]
fn qwen3_with_query_key_norms_and_its_own_head_dim_matches_transformers() {
    check_parity("tiny-qwen3");
    let (config, _) = load_pretrained(&fixture("tiny-qwen3"), &device()).unwrap();
    assert_eq!((config.head_dim, config.hidden_size), (Some(12), 32));
    assert!(config.tie_word_embeddings);
}

/// A sliding window of 4 over a batch of 10 positions (and greedy continuations to 18), one KV
/// head shared by 4 query heads of 6.
#[test]
fn mistral_with_a_sliding_window_shorter_than_the_batch_matches_transformers() {
    check_parity("tiny-mistral");
    let (config, _) = load_pretrained(&fixture("tiny-mistral"), &device()).unwrap();
    assert_eq!(config.sliding_window, Some(4));
    assert_eq!((config.num_key_value_heads, config.head_dim()), (1, 6));
}

/// Fused qkv_proj and gate_up_proj, rotary on 6 of 8 dimensions, LongRoPE whose switch from the
/// short to the long factors (past 12 positions) the greedy continuation crosses, a window of 7.
#[test]
fn phi3_with_fused_projections_partial_rotary_and_longrope_matches_transformers() {
    check_parity("tiny-phi3");
    let (config, _) = load_pretrained(&fixture("tiny-phi3"), &device()).unwrap();
    assert_eq!(config.rotary_dims(), 6);
    assert_eq!(config.sliding_window, Some(7));
    let RopeScaling::Longrope {
        original_max_position_embeddings,
        attention_factor,
        ..
    } = config.rope_scaling
    else {
        panic!("{:?}", config.rope_scaling)
    };
    assert_eq!(original_max_position_embeddings, 12);
    // √(1 + ln(48/12)/ln(12)), transformers' default
    assert!((attention_factor - (1.0 + 4f64.ln() / 12f64.ln()).sqrt()).abs() < 1e-12);
}

/// Learned positions (taken from the attention mask, as for the rotary families), Conv1D weights
/// stored [in, out], a tied head, gelu_new, heads of 9.
#[test]
fn gpt2_with_learned_positions_and_conv1d_weights_matches_transformers() {
    check_parity("tiny-gpt2");
    let (config, model) = load_pretrained(&fixture("tiny-gpt2"), &device()).unwrap();
    assert_eq!(config.architecture, Architecture::Gpt2);
    assert_eq!(model.max_positions(), Some(32));
    // a row longer than the 32 learned positions is refused before it reaches the table
    let err = model.input(&[1; 33], &[1; 33], 1).unwrap_err().to_string();
    assert!(err.contains("32 learned positions"), "{err}");
    // pads take no position
    let mask: Vec<u8> = [vec![0; 8], vec![1; 32]].concat();
    assert!(model.input(&[1; 40], &mask, 1).is_ok());
}

/// The checkpoints the `rlhf` command ships with: Pythia's tokenizer conventions (no pad token,
/// so PAD lies past the vocabulary), a Qwen2 chat model (EOS `<|im_end|>`, ChatML template) and
/// a Llama 3 chat model (BOS before every text, EOS `<|eot_id|>`, no pad token), each with
/// transformers' own initialisation.
#[test]
fn the_command_line_fixtures_match_transformers() {
    check_parity("tiny-pythia");
    check_parity("tiny-qwen2-chat");
    check_parity("tiny-llama3-chat");
    let llama = rlhf_data::Tokenizer::from_dir(&fixture("tiny-llama3-chat")).unwrap();
    assert_eq!(
        (llama.eos_text().as_str(), llama.start(), llama.pad_id()),
        ("<|eot_id|>", &[0][..], 512)
    );
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
        "tiny-llama3-chat",
    ]
    .into_iter()
    .chain(NEW_FAMILIES)
    {
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

/// The parity batch (left-padded, 10 columns) followed by `transformers`' 8 greedy tokens:
/// `(ids, mask, columns)`, row-major over 3 rows.
fn extended_batch(name: &str) -> (Vec<u32>, Vec<u8>, usize) {
    let p = parity(name);
    let (cols, new) = (p.ids.len() / p.batch, p.greedy.len() / p.batch);
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    for r in 0..p.batch {
        ids.extend_from_slice(&p.ids[r * cols..(r + 1) * cols]);
        ids.extend_from_slice(&p.greedy[r * new..(r + 1) * new]);
        mask.extend_from_slice(&p.mask[r * cols..(r + 1) * cols]);
        mask.extend(std::iter::repeat_n(1, new));
    }
    (ids, mask, cols + new)
}

/// The first `keep` columns of each of `rows` rows of `cols` columns.
fn columns<T: Copy>(v: &[T], rows: usize, cols: usize, keep: usize) -> Vec<T> {
    (0..rows)
        .flat_map(|r| v[r * cols..r * cols + keep].to_vec())
        .collect()
}

/// The longest sequence on which a cached or a padded row of `config` must give what a full
/// forward pass of it alone gives. Dynamic NTK's frequencies depend on the longest row of a
/// forward pass once it exceeds max_position_embeddings, and transformers keeps cached keys at
/// their old frequencies; so do we. Within max_position_embeddings they are the default ones.
fn invariant_length(config: &TransformerConfig, cols: usize) -> usize {
    match config.rope_scaling {
        RopeScaling::Dynamic { .. } => cols.min(config.max_position_embeddings),
        _ => cols,
    }
}

/// Decoding with the KV cache (a prefix of 4 columns, then one column at a time) gives at every
/// step the logits of a full forward pass of the sequence so far, in every new family: sliding
/// windows over cached keys, Qwen3's norms, GPT-2's learned positions, and Phi-3's LongRoPE,
/// whose 18 columns cross the switch to the long factors at 13 (the cache is re-encoded there).
#[test]
fn kv_cache_decoding_gives_the_full_forward_pass_in_every_new_family() {
    let d = device();
    for name in NEW_FAMILIES {
        let (config, model) = load_pretrained(&fixture(name), &d).unwrap();
        let (ids, mask, cols) = extended_batch(name);
        let rows = 3;
        let len = invariant_length(&config, cols);
        let vocab = config.vocab_size;
        let full = |t: usize| {
            to_f32_vec(
                model.forward(
                    &model
                        .input(
                            &columns(&ids, rows, cols, t),
                            &columns(&mask, rows, cols, t),
                            rows,
                        )
                        .unwrap(),
                    None,
                ),
            )
        };
        let mut cache = KvCache::new();
        let prefix = 4;
        let cached = to_f32_vec(
            model.forward(
                &model
                    .input(
                        &columns(&ids, rows, cols, prefix),
                        &columns(&mask, rows, cols, prefix),
                        rows,
                    )
                    .unwrap(),
                Some(&mut cache),
            ),
        );
        let m = columns(&mask, rows, cols, prefix);
        let mut worst = max_diff_real(&cached, &full(prefix), &m);
        for t in prefix..len {
            let step: Vec<u32> = (0..rows).map(|r| ids[r * cols + t]).collect();
            let cached = to_f32_vec(
                model.forward(
                    &model
                        .input(&step, &columns(&mask, rows, cols, t + 1), rows)
                        .unwrap(),
                    Some(&mut cache),
                ),
            );
            let reference = full(t + 1);
            let last: Vec<f32> = (0..rows)
                .flat_map(|r| {
                    reference[(r * (t + 1) + t) * vocab..(r * (t + 1) + t + 1) * vocab].to_vec()
                })
                .collect();
            let m: Vec<u8> = (0..rows).map(|r| mask[r * cols + t]).collect();
            worst = worst.max(max_diff_real(&cached, &last, &m));
        }
        assert_eq!(cache.len(), len, "{name}");
        assert!(worst < tolerance(), "{name}: cached vs full: {worst}");
    }
}

/// In every new family, a row's logits are the same alone and in the left-padded batch, and with
/// more pads (ids past the vocabulary) on either side.
#[test]
fn padding_changes_no_real_position_in_every_new_family() {
    let d = device();
    for name in NEW_FAMILIES {
        let (config, model) = load_pretrained(&fixture(name), &d).unwrap();
        let p = parity(name);
        let (rows, cols) = (p.batch, p.ids.len() / p.batch);
        let len = invariant_length(&config, cols);
        let (ids, mask) = (
            columns(&p.ids, rows, cols, len),
            columns(&p.mask, rows, cols, len),
        );
        let vocab = config.vocab_size;
        let batch = to_f32_vec(model.forward(&model.input(&ids, &mask, rows).unwrap(), None));
        for r in 0..rows {
            let real: Vec<u32> = (0..len)
                .filter(|&c| mask[r * len + c] == 1)
                .map(|c| ids[r * len + c])
                .collect();
            let n = real.len();
            let alone =
                to_f32_vec(model.forward(&model.input(&real, &vec![1; n], 1).unwrap(), None));
            let in_batch = &batch[(r * len + len - n) * vocab..(r + 1) * len * vocab];
            let diff = alone
                .iter()
                .zip(in_batch)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(
                diff < tolerance(),
                "{name} row {r}: alone vs batched {diff}"
            );
        }
        // three more pads on the left and two on the right, with ids past the vocabulary
        let (pad, wide) = (vocab as u32 + 5, len + 5);
        let mut more_ids = Vec::new();
        let mut more_mask = Vec::new();
        for r in 0..rows {
            more_ids.extend([pad; 3]);
            more_ids.extend_from_slice(&ids[r * len..(r + 1) * len]);
            more_ids.extend([pad; 2]);
            more_mask.extend([0; 3]);
            more_mask.extend_from_slice(&mask[r * len..(r + 1) * len]);
            more_mask.extend([0; 2]);
        }
        let padded =
            to_f32_vec(model.forward(&model.input(&more_ids, &more_mask, rows).unwrap(), None));
        let inner: Vec<f32> = (0..rows)
            .flat_map(|r| padded[(r * wide + 3) * vocab..(r * wide + 3 + len) * vocab].to_vec())
            .collect();
        let diff = max_diff_real(&inner, &batch, &mask);
        assert!(diff < tolerance(), "{name}: more pads: {diff}");
    }
}

/// The config of `name` with `edit` applied, written with the fixture's weights into a fresh
/// directory; the error of loading it.
fn load_error(name: &str, edit: impl Fn(&mut Value)) -> String {
    let src = fixture(name);
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        src.join("model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    match load_pretrained(dir.path(), &device()) {
        Ok(_) => panic!("{name}: {config} loaded"),
        Err(e) => e.to_string(),
    }
}

/// A change to a `config.json`.
type Edit = fn(&mut Value);

/// Options of the new families that are not implemented are refused naming the option, never
/// ignored.
#[test]
fn unimplemented_options_of_the_new_families_are_refused_by_name() {
    let cases: [(&str, Edit, &str); 18] = [
        (
            "tiny-llama",
            |c| {
                c["rope_parameters"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0,
                    "original_max_position_embeddings": 16, "rope_theta": 10000.0})
            },
            "rope_parameters.rope_type",
        ),
        (
            "tiny-llama",
            |c| {
                c["rope_scaling"] = serde_json::json!({"type": "longrope", "short_factor": [1.0],
                    "long_factor": [1.0]})
            },
            "rope_scaling.rope_type",
        ),
        (
            "tiny-phi3",
            |c| {
                c["rope_parameters"] =
                    serde_json::json!({"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4})
            },
            "rope_parameters.rope_type",
        ),
        (
            "tiny-neox",
            |c| {
                c["rope_parameters"]["rope_type"] = "dynamic".into();
                c["rope_parameters"]["factor"] = 2.0.into();
            },
            "rope_parameters.rope_type",
        ),
        (
            "tiny-llama",
            |c| {
                c["rope_parameters"] = serde_json::json!({
                    "full_attention": {"rope_type": "default", "rope_theta": 1e4},
                    "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})
            },
            "rope_parameters",
        ),
        (
            "tiny-llama",
            |c| c["partial_rotary_factor"] = 0.5.into(),
            "partial_rotary_factor",
        ),
        ("tiny-llama", |c| c["mlp_bias"] = true.into(), "mlp_bias"),
        (
            "tiny-qwen3",
            |c| c["attention_bias"] = true.into(),
            "attention_bias",
        ),
        (
            "tiny-qwen3",
            |c| c["use_sliding_window"] = true.into(),
            "use_sliding_window",
        ),
        (
            "tiny-qwen3",
            |c| c["layer_types"] = serde_json::json!(["full_attention", "sliding_attention"]),
            "layer_types",
        ),
        (
            "tiny-mistral",
            |c| c["hidden_act"] = "gelu".into(),
            "hidden_act",
        ),
        ("tiny-phi3", |c| c["head_dim"] = 16.into(), "head_dim"),
        (
            "tiny-gpt2",
            |c| c["scale_attn_by_inverse_layer_idx"] = true.into(),
            "scale_attn_by_inverse_layer_idx",
        ),
        (
            "tiny-gpt2",
            |c| c["add_cross_attention"] = true.into(),
            "add_cross_attention",
        ),
        (
            "tiny-gpt2",
            |c| c["activation_function"] = "relu".into(),
            "activation_function",
        ),
        (
            "tiny-gpt2",
            |c| c["scale_attn_weights"] = false.into(),
            "scale_attn_weights",
        ),
        (
            "tiny-neox-sequential",
            |c| c["tie_word_embeddings"] = true.into(),
            "tied LM head",
        ),
        (
            "tiny-llama",
            |c| c["model_type"] = "gemma2".into(),
            "`gemma2` is not supported",
        ),
    ];
    for (name, edit, what) in cases {
        let err = load_error(name, edit);
        assert!(
            err.contains("config.json") && err.contains(what),
            "{name}, {what}: {err}"
        );
    }
}

/// A value of the wrong type is refused naming its field, nested ones by their path; a required
/// field left out is "missing".
#[test]
fn a_value_of_the_wrong_type_names_its_field_path() {
    let cases: [(&str, Edit, &str); 6] = [
        (
            "tiny-llama",
            |c| c["vocab_size"] = "many".into(),
            "field `vocab_size`: invalid type",
        ),
        (
            "tiny-llama",
            |c| c["num_key_value_heads"] = (-2).into(),
            "field `num_key_value_heads`",
        ),
        (
            "tiny-llama",
            |c| c["rope_parameters"]["factor"] = "x".into(),
            "field `rope_parameters.factor`: invalid type",
        ),
        (
            "tiny-qwen3",
            |c| c["layer_types"] = serde_json::json!(["full_attention", 3]),
            "field `layer_types[1]`",
        ),
        (
            "tiny-phi3",
            |c| c["rope_parameters"]["short_factor"] = serde_json::json!([1.0, "x"]),
            "field `rope_parameters.short_factor[1]`",
        ),
        (
            "tiny-gpt2",
            |c| {
                c.as_object_mut().unwrap().remove("n_head");
            },
            "field `n_head`: missing",
        ),
    ];
    for (name, edit, what) in cases {
        let err = load_error(name, edit);
        assert!(err.contains(what), "{name}, {what}: {err}");
    }
}

/// Files from before transformers 5 put the scaling in `rope_scaling` (with `type`) and
/// `rope_theta`, `partial_rotary_factor` and Phi-3's `original_max_position_embeddings` at the
/// top level: they read as the same configuration and give the same logits.
#[test]
fn older_rope_scaling_files_read_like_rope_parameters() {
    let d = device();
    for (name, scaling) in [
        (
            "tiny-llama3",
            serde_json::json!({"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
        ),
        (
            "tiny-llama-linear",
            serde_json::json!({"type": "linear", "factor": 3.0}),
        ),
        (
            "tiny-llama-dynamic",
            serde_json::json!({"type": "dynamic", "factor": 2.0}),
        ),
        (
            "tiny-phi3",
            serde_json::json!({"type": "longrope", "short_factor": [1.0, 1.3, 2.1],
                "long_factor": [1.5, 3.7, 9.0]}),
        ),
    ] {
        let src = fixture(name);
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            src.join("model.safetensors"),
            dir.path().join("model.safetensors"),
        )
        .unwrap();
        let mut config: Value =
            serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap())
                .unwrap();
        let rope = config
            .as_object_mut()
            .unwrap()
            .remove("rope_parameters")
            .unwrap();
        config["rope_theta"] = rope["rope_theta"].clone();
        if let Some(partial) = rope.get("partial_rotary_factor") {
            config["partial_rotary_factor"] = partial.clone();
        }
        config["rope_scaling"] = scaling;
        std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
        let (old, old_model) = load_pretrained(dir.path(), &d).unwrap();
        let (new, new_model) = load_pretrained(&fixture(name), &d).unwrap();
        assert_eq!(old, new, "{name}");
        let p = parity(name);
        assert_eq!(logits(&old_model, &p), logits(&new_model, &p), "{name}");
    }
}

/// `openai-community/gpt2`'s safetensors hold the bare model: names without `transformer.`, and
/// each block's causal-mask buffer `h.N.attn.bias`. Such a file loads to the same model.
#[test]
fn a_gpt2_checkpoint_of_the_bare_model_with_its_mask_buffers_loads() {
    let d = device();
    let src = fixture("tiny-gpt2");
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let mut data = bytes[8 + n..].to_vec();
    let mut bare = serde_json::Map::new();
    for (key, value) in header.as_object().unwrap() {
        bare.insert(
            key.strip_prefix("transformer.").unwrap_or(key).to_string(),
            value.clone(),
        );
    }
    for layer in 0..2 {
        // [1, 1, 32, 32] of f32 ones below the diagonal, as old checkpoints store it
        let start = data.len();
        for i in 0..32 {
            for j in 0..32 {
                data.extend_from_slice(&f32::from(u8::from(j <= i)).to_le_bytes());
            }
        }
        bare.insert(
            format!("h.{layer}.attn.bias"),
            serde_json::json!({"dtype": "F32", "shape": [1, 1, 32, 32],
                "data_offsets": [start, data.len()]}),
        );
    }
    let header = serde_json::to_vec(&Value::Object(bare)).unwrap();
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend(header);
    file.extend(data);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("model.safetensors"), file).unwrap();
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let (_, bare_model) = load_pretrained(dir.path(), &d).unwrap();
    let (_, model) = load_pretrained(&src, &d).unwrap();
    let p = parity("tiny-gpt2");
    assert_eq!(logits(&bare_model, &p), logits(&model, &p));
    // a reward or value model starts from such a file too, with the same backbone
    let (_, scalar, _, head) = rlhf_models::load_scalar_pretrained(dir.path(), &d).unwrap();
    assert!(!head);
    let hidden =
        |m: &CausalLm| to_f32_vec(m.hidden(&m.input(&p.ids, &p.mask, p.batch).unwrap(), None));
    assert_eq!(hidden(&scalar.backbone), hidden(&model));
}

/// A tied checkpoint that also stores its head (`lm_head.weight`, a copy of the embedding, as
/// some exports do) loads: transformers ties the head again and so does this model.
#[test]
fn a_tied_checkpoint_that_stores_its_head_loads() {
    let d = device();
    for name in ["tiny-gpt2", "tiny-qwen3"] {
        let src = fixture(name);
        let config: Value =
            serde_json::from_slice(&std::fs::read(src.join("config.json")).unwrap()).unwrap();
        if config["tie_word_embeddings"] != Value::Bool(true) {
            continue;
        }
        let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let mut header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        let embedding = header
            .as_object()
            .unwrap()
            .keys()
            .find(|k| k.ends_with("wte.weight") || k.ends_with("embed_tokens.weight"))
            .unwrap()
            .clone();
        // the copy's bytes appended to the data (tensors may not share bytes)
        let mut data = bytes[8 + n..].to_vec();
        let range = &header[&embedding]["data_offsets"];
        let (a, b) = (
            range[0].as_u64().unwrap() as usize,
            range[1].as_u64().unwrap() as usize,
        );
        let start = data.len();
        data.extend_from_slice(&bytes[8 + n + a..8 + n + b]);
        let mut copy = header[&embedding].clone();
        copy["data_offsets"] = serde_json::json!([start, data.len()]);
        header["lm_head.weight"] = copy;
        let header = serde_json::to_vec(&header).unwrap();
        let mut file = (header.len() as u64).to_le_bytes().to_vec();
        file.extend(header);
        file.extend(data);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.safetensors"), file).unwrap();
        std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
        let (_, with_head) = load_pretrained(dir.path(), &d).unwrap();
        let (_, model) = load_pretrained(&src, &d).unwrap();
        let p = parity(name);
        assert_eq!(logits(&with_head, &p), logits(&model, &p), "{name}");
    }
}

/// Every float parameter of `model`, flattened, in module order.
fn parameters(model: &CausalLm) -> Vec<Vec<f32>> {
    struct Collect(Vec<Vec<f32>>);
    impl burn::module::ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<burn::Tensor<D>>) {
            self.0.push(to_f32_vec(param.val()));
        }
    }
    let mut all = Collect(Vec::new());
    burn::module::Module::visit(model, &mut all);
    all.0
}

/// One SFT step on each new family, starting from its checkpoint: the step's loss is the
/// model's loss on the batch before it, the loss on that batch falls, and every parameter (Qwen3's
/// norms, Phi-3's fused projections, GPT-2's Conv1D weights and position table, …) gets a
/// gradient and moves (no weight decay, so only a gradient moves a parameter).
#[test]
fn one_sft_step_trains_every_parameter_of_every_new_family() {
    use rlhf_core::train::{OptimizerConfig, RunOptions};
    use rlhf_models::{SftConfig, eval_loss, sft::Example, train_sft};
    let d = device().autodiff();
    let data: Vec<Example> = (0..6u32)
        .map(|i| {
            let prompt = (0..3 + i % 3).map(|j| (i * 5 + j * 3) % 60 + 2).collect();
            let response = (0..2 + i % 4)
                .map(|j| (i * 11 + j * 7) % 60 + 2)
                .chain([0])
                .collect();
            (prompt, response)
        })
        .collect();
    let cfg = SftConfig {
        batch_size: 8,
        optimizer: OptimizerConfig {
            lr: 1e-3,
            ..OptimizerConfig::default()
        },
        ..SftConfig::default()
    };
    let quiet = RunOptions::quiet();
    for name in NEW_FAMILIES {
        let (_, model) = load_pretrained(&fixture(name), &d).unwrap();
        let before = eval_loss(&model, &data, 8, &d).unwrap();
        let weights = parameters(&model);
        let (trained, report) = train_sft(model, &data, &data, &cfg, &quiet, &d).unwrap();
        assert_eq!(report.steps, 1, "{name}");
        assert!(
            (report.final_train_loss - before).abs() < 1e-4 * before,
            "{name}: the step's loss {} vs {before} before it",
            report.final_train_loss
        );
        assert!(
            report.eval_loss < before,
            "{name}: {} ≥ {before}",
            report.eval_loss
        );
        let after = parameters(&trained);
        assert_eq!(weights.len(), after.len());
        for (i, (w, a)) in weights.iter().zip(&after).enumerate() {
            assert!(w != a, "{name}: parameter {i} did not move");
        }
    }
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
    config["attention_bias"] = false.into();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let err = load_pretrained(dir.path(), &d).unwrap_err().to_string();
    assert!(
        err.contains("config.json") && err.contains("attention_bias"),
        "{err}"
    );
    // a missing field names itself
    config.as_object_mut().unwrap().remove("hidden_size");
    config["attention_bias"] = true.into();
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
    for name in ["tiny-neox", "tiny-qwen2", "tiny-llama"]
        .into_iter()
        .chain(NEW_FAMILIES)
    {
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
            names.iter().any(|n| n.starts_with("gpt_neox.")
                || n.starts_with("model.")
                || n.starts_with("transformer.")),
            "{names:?}"
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

/// A causal LM checkpoint loads as a scalar model: its LM head is left out and the head is
/// zeros, for the caller to draw under its seed. Loading, causal or scalar, draws no random
/// numbers: a draw there would change what a seeded initialisation in another thread draws.
#[test]
fn a_causal_checkpoint_loads_as_a_scalar_model_with_a_zero_head() {
    use burn::nn::{Initializer, LinearConfig};
    use burn::tensor::{Distribution, Tensor};
    let d = device();
    let draw = || to_f32_vec(Tensor::<2>::random([2, 8], Distribution::Default, &d));
    // whether the draw after seeding and `load` is the draw after seeding alone; under
    // `seeded`'s lock, so that no seeded initialisation of another test moves (or is moved), and
    // tried a few times, as another test's unseeded draw may fall in between (a loader that draws
    // fails every try)
    let draws_nothing = |load: &dyn Fn()| {
        (0..5).any(|_| {
            let mut same = false;
            rlhf_core::train::seeded(&d, 7, || {
                let undisturbed = draw();
                d.seed(7);
                load();
                same = draw() == undisturbed;
                LinearConfig::new(1, 1)
                    .with_initializer(Initializer::Zeros)
                    .init(&d)
            });
            same
        })
    };
    for name in ["tiny-neox", "tiny-llama", "tiny-qwen2"]
        .into_iter()
        .chain(NEW_FAMILIES)
    {
        let scalar = || drop(rlhf_models::load_scalar_pretrained(&fixture(name), &d).unwrap());
        assert!(
            draws_nothing(&scalar),
            "{name}: loading a scalar model drew"
        );
        let causal = || drop(load_pretrained(&fixture(name), &d).unwrap());
        assert!(
            draws_nothing(&causal),
            "{name}: loading a causal model drew"
        );
        let (_, model, extra, head) =
            rlhf_models::load_scalar_pretrained(&fixture(name), &d).unwrap();
        assert!(!head && extra.is_null(), "{name}");
        assert!(!model.backbone.has_lm_head());
        assert!(
            to_f32_vec(model.score.weight.val())
                .iter()
                .all(|&w| w == 0.0)
        );
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
        which in proptest::sample::select(
            ["tiny-llama", "tiny-neox", "tiny-qwen2"].into_iter().chain(NEW_FAMILIES).collect::<Vec<_>>()
        ),
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

/// `"num_key_value_heads": null` means as many key/value heads as query heads (transformers'
/// `__post_init__`), not the family's default for an absent key; exported scaling is also
/// written under `rope_scaling`, the name older readers know, and each name alone reads back the
/// same scaling. Phi-3's older form has exactly the three keys transformers 4's `Phi3Config`
/// accepts, unless its attention factor is not the one computed from the positions.
#[test]
fn null_kv_heads_mean_the_query_heads_and_scaling_is_written_under_both_names() {
    for name in ["tiny-qwen3", "tiny-mistral"] {
        let src = fixture(name);
        let mut config: Value =
            serde_json::from_slice(&std::fs::read(src.join("config.json")).unwrap()).unwrap();
        config["num_key_value_heads"] = Value::Null;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
        let c = rlhf_models::config_from_json(&path).unwrap();
        assert_eq!(c.num_key_value_heads, c.num_attention_heads, "{name}");
    }
    let read_back = |json: &Value| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, serde_json::to_vec(json).unwrap()).unwrap();
        rlhf_models::config_from_json(&path).unwrap()
    };
    let mut phi3 = None;
    for name in ["tiny-llama3", "tiny-llama-linear", "tiny-phi3"] {
        let c = rlhf_models::config_from_json(&fixture(name).join("config.json")).unwrap();
        assert_ne!(c.rope_scaling, rlhf_models::RopeScaling::Default, "{name}");
        let json = rlhf_models::config_to_json(&c);
        assert_eq!(read_back(&json), c, "{name}");
        for name_alone in ["rope_scaling", "rope_parameters"] {
            let mut alone = json.clone();
            let other = if name_alone == "rope_scaling" {
                "rope_parameters"
            } else {
                "rope_scaling"
            };
            alone.as_object_mut().unwrap().remove(other).unwrap();
            assert_eq!(read_back(&alone), c, "{name}: {name_alone} alone");
        }
        let legacy = json["rope_scaling"].as_object().unwrap();
        assert!(!legacy.contains_key("rope_theta"), "{name}: {legacy:?}");
        if name == "tiny-phi3" {
            let keys: Vec<&String> = legacy.keys().collect();
            assert_eq!(keys, ["long_factor", "short_factor", "type"], "{legacy:?}");
            phi3 = Some(c);
        }
    }
    // another attention factor than the positions give is kept, under both names
    let mut c = phi3.unwrap();
    let rlhf_models::RopeScaling::Longrope {
        attention_factor, ..
    } = &mut c.rope_scaling
    else {
        panic!("tiny-phi3 has longrope")
    };
    *attention_factor += 0.125;
    let json = rlhf_models::config_to_json(&c);
    assert!(
        json["rope_scaling"]["attention_factor"].is_number(),
        "{json}"
    );
    let mut alone = json.clone();
    alone.as_object_mut().unwrap().remove("rope_parameters");
    assert_eq!(read_back(&alone), c);
}

/// Sequences packed into one row (SFT's best-fit packing, `TokenInput::packed`) each get the
/// logits they get as rows of a padded batch, in every family: their own positions from 0
/// (rotary or learned), attention only within the sequence (a sliding window inside it), and the
/// scalings that read the longest sequence reading the same one (13 tokens: past the dynamic
/// NTK fixture's 8 positions and the LongRoPE fixture's original 12, so both scale).
#[test]
fn packed_sequences_get_the_logits_of_a_padded_batch() {
    let d = device();
    let long: Vec<u32> = (0..13).map(|i| (i * 7 + 5) % 60 + 3).collect();
    let sequences: [Vec<u32>; 3] = [long, vec![7, 7, 30], vec![11, 2]];
    // row 0: the three end to end; row 1: the second, then the first, then padding
    let rows: [&[usize]; 2] = [&[0, 1, 2], &[1, 0]];
    let width = 18;
    let (mut ids, mut numbers) = (Vec::new(), Vec::new());
    for row in rows {
        for (n, &s) in (1u32..).zip(row) {
            ids.extend(&sequences[s]);
            numbers.extend(std::iter::repeat_n(n, sequences[s].len()));
        }
        ids.resize(numbers.len().next_multiple_of(width), 0);
        numbers.resize(ids.len(), 0);
    }
    // the reference: one sequence per row, right-padded to the longest
    let longest = sequences.iter().map(Vec::len).max().unwrap();
    let (mut plain_ids, mut plain_mask) = (Vec::new(), Vec::new());
    for s in &sequences {
        plain_ids.extend(
            s.iter()
                .copied()
                .chain(std::iter::repeat_n(0, longest - s.len())),
        );
        plain_mask.extend((0..longest).map(|i| u8::from(i < s.len())));
    }
    for name in ["tiny-neox", "tiny-llama", "tiny-qwen2"]
        .into_iter()
        .chain(NEW_FAMILIES)
    {
        let (_, model) = load_pretrained(&fixture(name), &d).unwrap();
        let vocab = model.vocab_size();
        let packed = rlhf_models::TokenInput::packed(&ids, &numbers, 2, vocab, &d).unwrap();
        assert_eq!(packed.longest(), longest);
        let got = to_f32_vec(model.forward(&packed, None));
        let plain = model
            .input(&plain_ids, &plain_mask, sequences.len())
            .unwrap();
        let want = to_f32_vec(model.forward(&plain, None));
        let mut worst = 0f32;
        for (r, row) in rows.iter().enumerate() {
            let mut col = 0;
            for &s in *row {
                for t in 0..sequences[s].len() {
                    let at = |v: &[f32], i: usize| v[i * vocab..(i + 1) * vocab].to_vec();
                    let a = at(&got, r * width + col + t);
                    let b = at(&want, s * longest + t);
                    for (x, y) in a.iter().zip(&b) {
                        worst = worst.max((x - y).abs());
                    }
                }
                col += sequences[s].len();
            }
        }
        assert!(
            worst <= tolerance(),
            "{name}: packed logits differ by {worst}"
        );
    }
    // rows of one sequence each are the plain input; a sequence that comes back is refused,
    // in a row of one sequence (a hole in it) too
    let one = rlhf_models::TokenInput::packed(&[1, 2, 0], &[1, 1, 0], 1, 64, &d).unwrap();
    let plain = rlhf_models::TokenInput::new(&[1, 2, 0], &[1, 1, 0], 1, 64, &d).unwrap();
    assert_eq!(one.longest(), plain.longest());
    for (numbers, col) in [([1, 2, 1], 2), ([1, 0, 1], 2)] {
        let e = rlhf_models::TokenInput::packed(&[1, 2, 3], &numbers, 1, 64, &d).unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("sequence 1 of row 0 comes back at column {col}")),
            "{e}"
        );
    }
}

/// SFT on best-fit packed rows takes the loss the same examples take as rows of a padded batch:
/// each example's first token, which has nothing of its own before it, is no target, and no
/// example reads another.
#[test]
fn best_fit_packed_rows_take_the_loss_of_the_examples_alone() {
    let d = device();
    let (_, model) = load_pretrained(&fixture("tiny-llama"), &d).unwrap();
    let examples: Vec<rlhf_models::sft::Example> = vec![
        (vec![3, 4, 5], vec![6, 7, 8, 9]),
        (vec![10], vec![11, 12]),
        (vec![13, 14], vec![15]),
        (vec![16, 17, 18, 19], vec![20, 21]),
        (vec![22], vec![23, 24, 25]),
        // a plain-text record: no prompt, its first token no target
        (vec![], vec![26, 27, 28]),
    ];
    let refs: Vec<&rlhf_models::sft::Example> = examples.iter().collect();
    let rows = rlhf_models::pack(&refs, 8, rlhf_models::PackingStrategy::Bfd);
    assert!(rows.len() < examples.len() && rows.iter().any(|r| r.sequences.contains(&2)));
    let packed = rlhf_models::packed_batch(&rows);
    // the same examples as rows of a batch: prompts left-padded, responses right-padded
    let pairs: Vec<(&[u32], &[u32])> = examples
        .iter()
        .map(|(p, r)| (p.as_slice(), r.as_slice()))
        .collect();
    let plain = rlhf_models::LmBatch::from_sequences(&rlhf_data::collate(&pairs, 0, None));
    assert_eq!(packed.predicted_tokens(), plain.predicted_tokens());
    let loss =
        |b: &rlhf_models::LmBatch| to_f32_vec(rlhf_models::sft_loss(&model, b, &d).unwrap())[0];
    let (a, b) = (loss(&packed), loss(&plain));
    assert!(
        (a - b).abs() <= 1e-5 * b.abs().max(1.0),
        "packed {a}, plain {b}"
    );
    // read as one stream (attention across the examples), the same rows take another loss
    let mut crossing = packed.clone();
    crossing.sequences.clear();
    let c = loss(&crossing);
    assert!(
        (c - b).abs() > 1e-3,
        "packed rows read across examples: {c} against {b}"
    );
}
