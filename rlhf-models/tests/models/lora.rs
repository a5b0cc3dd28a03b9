//! LoRA on every family's fixture: the adapters start at zero (the model computes what it did),
//! only they train (the count is `Σ r·(d_in + d_out)` over the targets), the merged export is a
//! plain checkpoint whose untargeted tensors are the original's bit for bit and whose targeted
//! ones moved by a matrix of rank at most `r`, and PEFT's adapter files rebuild the merged
//! weights. Targets are PEFT's: the family defaults, `all-linear` (not the head), and a name no
//! layer has is refused with the names it does have. The device comes from `RLHF_DEVICE`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::Device;
use rlhf_core::host::to_f32_vec;
use rlhf_core::train::OptimizerConfig;
use rlhf_models::lora::{ALL_LINEAR, linear_weights, lora_targets};
use rlhf_models::sft::LmBatch;
use rlhf_models::{
    CausalLm, LoraConfig, TransformerConfig, apply_lora, load_pretrained, save_peft_adapter,
    save_pretrained, sft_loss, trainable_params,
};
use safetensors::SafeTensors;

fn device() -> Device {
    rlhf_core::device_from_env().unwrap().autodiff()
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(name)
}

/// A left-padded batch of two rows over the fixture's vocabulary, every real token a target.
fn batch(config: &TransformerConfig) -> LmBatch {
    let v = config.vocab_size as u32;
    let ids: Vec<u32> = (0..24u32).map(|i| (i * 37 + 11) % v).collect();
    let mut attention = vec![1u8; 24];
    attention[..3].fill(0);
    LmBatch {
        batch: 2,
        seq: 12,
        ids,
        target: attention.clone(),
        attention,
        sequences: Vec::new(),
    }
}

fn logits(model: &CausalLm, b: &LmBatch) -> Vec<f32> {
    to_f32_vec(model.forward(&model.input(&b.ids, &b.attention, b.batch).unwrap(), None))
}

/// `steps` AdamW steps of the SFT loss on `b`.
fn train(mut model: CausalLm, b: &LmBatch, steps: usize, d: &Device) -> CausalLm {
    let cfg = OptimizerConfig {
        lr: 1e-2,
        ..OptimizerConfig::default()
    };
    let mut optim = cfg.build().unwrap();
    for _ in 0..steps {
        let loss = sft_loss(&model, b, d).unwrap();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(cfg.lr, model, grads);
    }
    model
}

/// Every tensor of a safetensors file as `(shape, f32 values)`.
fn tensors(path: &Path) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let values = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            (name, (view.shape().to_vec(), values))
        })
        .collect()
}

/// `model` (adapted) written merged into a temporary directory, which it returns, after checking
/// that the checkpoint there loads and computes `after`, the adapted model's logits on [`batch`].
fn merged_export(
    model: &CausalLm,
    config: &TransformerConfig,
    after: &[f32],
    name: &str,
) -> tempfile::TempDir {
    let out = tempfile::tempdir().unwrap();
    save_pretrained(model, config, out.path()).unwrap();
    let (_, merged) = load_pretrained(out.path(), &device()).unwrap();
    let diff = logits(&merged, &batch(config))
        .iter()
        .zip(after)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(diff < 1e-5, "{name}: merged logits differ by {diff}");
    out
}

/// The numerical rank of a `rows × cols` matrix: Gaussian elimination with full pivoting in
/// f64, counting pivots above `1e-4` of the largest entry.
fn rank(m: &[f32], rows: usize, cols: usize) -> usize {
    let mut a: Vec<f64> = m.iter().map(|&x| f64::from(x)).collect();
    let scale = a.iter().fold(0.0f64, |s, x| s.max(x.abs()));
    if scale == 0.0 {
        return 0;
    }
    let (mut r, mut live_rows, mut live_cols) = (
        0,
        (0..rows).collect::<Vec<_>>(),
        (0..cols).collect::<Vec<_>>(),
    );
    loop {
        let mut best = (0.0, 0, 0);
        for (ri, &i) in live_rows.iter().enumerate() {
            for (ci, &j) in live_cols.iter().enumerate() {
                let x = a[i * cols + j].abs();
                if x > best.0 {
                    best = (x, ri, ci);
                }
            }
        }
        if best.0 <= 1e-4 * scale {
            return r;
        }
        let (pi, pj) = (live_rows.remove(best.1), live_cols.remove(best.2));
        let pivot = a[pi * cols + pj];
        for &i in &live_rows {
            let f = a[i * cols + pj] / pivot;
            for &j in &live_cols {
                a[i * cols + j] -= f * a[pi * cols + j];
            }
        }
        r += 1;
    }
}

/// What every family's fixture must show under LoRA with its default targets.
fn check_family(name: &str) {
    check_family_with(name, false);
}

/// [`check_family`] with rank-stabilised LoRA or without: the merged weight is `W + s·B·A` with
/// `s = α/r = 2` (8 over rank 4), or `α/√r = 4` with rsLoRA, and the adapter's config says which.
fn check_family_with(name: &str, rslora: bool) {
    let d = device();
    let dir = fixture(name);
    let (config, base) = load_pretrained(&dir, &d).unwrap();
    let b = batch(&config);
    let before = logits(&base, &b);
    let lora = LoraConfig {
        rslora,
        ..LoraConfig::new(4, 8.0)
    };
    let scale = if rslora { 4.0 } else { 2.0 };
    let targets = lora_targets(&base, &lora, config.architecture).unwrap();
    assert!(!targets.is_empty(), "{name}: the defaults name layers");

    let model = apply_lora(base.clone(), &lora, config.architecture, 7).unwrap();
    assert_eq!(
        logits(&model, &b),
        before,
        "{name}: B = 0, so nothing changes yet"
    );
    let (trained, total) = trainable_params(&model);
    let expected: usize = targets.iter().map(|w| 4 * (w.dims[0] + w.dims[1])).sum();
    assert_eq!(trained, expected, "{name}: only the adapters train");
    assert_eq!(total, base.num_params() + expected, "{name}: total");

    let model = train(model, &b, 3, &d);
    let after = logits(&model, &b);
    let moved = before
        .iter()
        .zip(&after)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(moved > 1e-3, "{name}: training moved the logits by {moved}");

    // the merged export: a plain checkpoint that computes what the adapted model does
    let out = merged_export(&model, &config, &after, name);

    let original = tensors(&dir.join("model.safetensors"));
    let exported = tensors(&out.path().join("model.safetensors"));
    let adapted: Vec<String> = targets
        .iter()
        .map(|w| hf_name(&w.path, &original))
        .collect();
    for (key, (shape, values)) in &exported {
        let (shape0, values0) = original
            .get(key)
            .or_else(|| original.get(key.trim_start_matches("model.")))
            .unwrap_or_else(|| panic!("{name}: {key} not in the original"));
        assert_eq!(shape, shape0, "{name}: {key}");
        if adapted.contains(key) {
            let delta: Vec<f32> = values.iter().zip(values0).map(|(x, y)| x - y).collect();
            let r = rank(&delta, shape[0], shape[1]);
            assert!(
                (1..=4).contains(&r),
                "{name}: {key} moved by a rank-{r} matrix"
            );
        } else {
            assert_eq!(values, values0, "{name}: {key} is frozen");
        }
    }

    // PEFT's files: W + s·B·A (Linear, [out, in]), or its transpose (GPT-2's Conv1D)
    let adapter = out.path().join("adapter");
    save_peft_adapter(&model, &config, &lora, &dir, &adapter).unwrap();
    let peft = tensors(&adapter.join("adapter_model.safetensors"));
    assert_eq!(peft.len(), 2 * targets.len(), "{name}: A and B per target");
    let conv1d = config.architecture == rlhf_models::Architecture::Gpt2;
    for key in &adapted {
        let layer = key.strip_suffix(".weight").unwrap();
        let (sa, a) = &peft[&format!("base_model.model.{layer}.lora_A.weight")];
        let (sb, bm) = &peft[&format!("base_model.model.{layer}.lora_B.weight")];
        let (r, d_in, d_out) = (sa[0], sa[1], sb[0]);
        assert_eq!((r, sb[1]), (4, 4), "{name}: {layer}");
        let (shape, w) = &exported[key];
        let w0 = &original[key].1;
        for o in 0..d_out {
            for i in 0..d_in {
                let ba: f32 = (0..r).map(|k| bm[o * r + k] * a[k * d_in + i]).sum();
                let at = if conv1d {
                    i * shape[1] + o
                } else {
                    o * shape[1] + i
                };
                let rebuilt = w0[at] + scale * ba;
                assert!(
                    (rebuilt - w[at]).abs() < 1e-5,
                    "{name}: {layer}[{o},{i}]: {rebuilt} vs {}",
                    w[at]
                );
            }
        }
    }
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(adapter.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["fan_in_fan_out"], conv1d);
    assert_eq!(cfg["use_rslora"], rslora);
    assert_eq!(cfg["use_dora"], false);
}

/// The exported name of the weight at `path` (`Llama.layers.0.self_attn.q_proj.weight`): the
/// tensor of the original checkpoint whose name ends with the path without its enum variant.
fn hf_name(path: &str, original: &BTreeMap<String, (Vec<usize>, Vec<f32>)>) -> String {
    let body = path.split_once('.').unwrap().1;
    let found: Vec<&String> = original
        .keys()
        .filter(|k| *k == body || k.ends_with(&format!(".{body}")))
        .collect();
    assert_eq!(found.len(), 1, "{path}: {found:?}");
    found[0].clone()
}

#[test]
fn lora_on_gpt_neox_trains_rank_r_updates_of_query_key_value_only() {
    check_family("tiny-pythia");
}

#[test]
fn lora_on_llama_trains_rank_r_updates_of_the_query_and_value_projections_only() {
    check_family("tiny-llama");
}

#[test]
fn rank_stabilised_lora_scales_by_alpha_over_the_root_of_the_rank() {
    check_family_with("tiny-llama", true);
}

/// DoRA on a family's fixture: it starts at the model's own logits (each magnitude is its
/// column's norm), the adapters and one magnitude per output of each target train, the merged
/// export computes what the adapted model does, and PEFT's files (`lora_A`, `lora_B`,
/// `lora_magnitude_vector`, `use_dora`) rebuild each merged weight as
/// `m_o·(W + s·B·A)_o / ‖(W + s·B·A)_o‖`, output row `o` of the `[out, in]` weight (GPT-2's
/// Conv1D stores its transpose), in `f64`.
fn check_dora(name: &str) {
    let d = device();
    let dir = fixture(name);
    let (config, base) = load_pretrained(&dir, &d).unwrap();
    let b = batch(&config);
    let before = logits(&base, &b);
    let dora = LoraConfig {
        dora: true,
        ..LoraConfig::new(4, 8.0)
    };
    let targets = lora_targets(&base, &dora, config.architecture).unwrap();
    let model = apply_lora(base.clone(), &dora, config.architecture, 7).unwrap();
    // m/‖W‖ is 1 to the last bit on the CPU; a GPU's division may be an ulp off
    let start = logits(&model, &b)
        .iter()
        .zip(&before)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(
        start < 1e-5,
        "{name}: W' = W at the start, but the logits moved by {start}"
    );
    let (trained, _) = trainable_params(&model);
    let expected: usize = targets
        .iter()
        .map(|w| 4 * (w.dims[0] + w.dims[1]) + w.dims[1])
        .sum();
    assert_eq!(
        trained, expected,
        "{name}: the adapters and the magnitudes train"
    );
    // the memory estimate counts two dense copies of each DoRA weight (V and W')
    let dense: usize = targets.iter().map(|w| w.dims[0] * w.dims[1]).sum();
    assert_eq!(
        rlhf_core::train::memory::adapted_params(&model),
        2 * dense as u64,
        "{name}"
    );
    let model = train(model, &b, 3, &d);
    let after = logits(&model, &b);
    let out = merged_export(&model, &config, &after, name);

    let adapter = out.path().join("adapter");
    save_peft_adapter(&model, &config, &dora, &dir, &adapter).unwrap();
    let peft = tensors(&adapter.join("adapter_model.safetensors"));
    assert_eq!(
        peft.len(),
        3 * targets.len(),
        "{name}: A, B and m per target"
    );
    let (original, exported) = (
        tensors(&dir.join("model.safetensors")),
        tensors(&out.path().join("model.safetensors")),
    );
    let conv1d = config.architecture == rlhf_models::Architecture::Gpt2;
    let mut magnitude_moved = 0.0f64;
    for w in &targets {
        let key = hf_name(&w.path, &original);
        let layer = key.strip_suffix(".weight").unwrap();
        let (sa, a) = &peft[&format!("base_model.model.{layer}.lora_A.weight")];
        let (sb, bm) = &peft[&format!("base_model.model.{layer}.lora_B.weight")];
        let (sm, m) = &peft[&format!("base_model.model.{layer}.lora_magnitude_vector")];
        assert_eq!(
            sm,
            &vec![sb[0]],
            "{name}: {layer}: one magnitude per output"
        );
        let (r, d_in, d_out) = (sa[0], sa[1], sm[0]);
        let (shape, w_merged) = &exported[&key];
        let w0 = &original[&key].1;
        let at = |o: usize, i: usize| {
            if conv1d {
                i * shape[1] + o
            } else {
                o * shape[1] + i
            }
        };
        for o in 0..d_out {
            let v: Vec<f64> = (0..d_in)
                .map(|i| {
                    let ba: f64 = (0..r)
                        .map(|k| f64::from(bm[o * r + k]) * f64::from(a[k * d_in + i]))
                        .sum();
                    f64::from(w0[at(o, i)]) + dora.scale() * ba
                })
                .collect();
            let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            let norm0 = (0..d_in)
                .map(|i| f64::from(w0[at(o, i)]).powi(2))
                .sum::<f64>()
                .sqrt();
            magnitude_moved = magnitude_moved.max((f64::from(m[o]) - norm0).abs());
            for (i, vi) in v.iter().enumerate() {
                let rebuilt = f64::from(m[o]) * vi / norm;
                let got = f64::from(w_merged[at(o, i)]);
                assert!(
                    (rebuilt - got).abs() < 1e-5,
                    "{name}: {layer}[{o},{i}]: {rebuilt} vs {got}"
                );
            }
        }
    }
    assert!(
        magnitude_moved > 1e-4,
        "{name}: the magnitudes moved by {magnitude_moved} only"
    );
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(adapter.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["use_dora"], true);
}

#[test]
fn dora_on_llama_rescales_each_output_to_its_trained_magnitude() {
    check_dora("tiny-llama");
}

#[test]
fn dora_on_gpt2_reads_the_conv1d_weights_output_by_output() {
    check_dora("tiny-gpt2");
}

#[test]
fn lora_on_phi3_adapts_the_fused_qkv_projection() {
    check_family("tiny-phi3");
}

#[test]
fn lora_on_gpt2_adapts_conv1d_weights_stored_in_by_out() {
    check_family("tiny-gpt2");
}

#[test]
fn all_linear_takes_every_linear_layer_but_the_head_and_never_an_embedding() {
    let d = device();
    let (config, model) = load_pretrained(&fixture("tiny-llama"), &d).unwrap();
    let all = linear_weights(&model);
    let cfg = LoraConfig {
        target_modules: vec![ALL_LINEAR.into()],
        ..LoraConfig::new(2, 4.0)
    };
    let targets = lora_targets(&model, &cfg, config.architecture).unwrap();
    let names = |ws: &[rlhf_models::lora::LinearWeight]| -> Vec<String> {
        ws.iter().map(|w| w.name().to_string()).collect()
    };
    // 7 projections per layer, and the untied head
    assert_eq!(
        targets.len(),
        7 * config.num_hidden_layers,
        "{:?}",
        names(&targets)
    );
    assert_eq!(
        all.len(),
        targets.len() + usize::from(!config.tie_word_embeddings)
    );
    assert!(
        !names(&targets)
            .iter()
            .any(|n| n == "lm_head" || n.starts_with("embed"))
    );
    // a dotted suffix selects within a block
    let cfg = LoraConfig {
        target_modules: vec!["mlp.down_proj".into()],
        ..LoraConfig::new(2, 4.0)
    };
    let targets = lora_targets(&model, &cfg, config.architecture).unwrap();
    assert_eq!(targets.len(), config.num_hidden_layers);
    assert!(
        targets
            .iter()
            .all(|w| w.path.ends_with("mlp.down_proj.weight"))
    );
}

#[test]
fn a_target_no_layer_has_is_refused_with_the_layers_there_are() {
    let d = device();
    let (config, model) = load_pretrained(&fixture("tiny-pythia"), &d).unwrap();
    let cfg = LoraConfig {
        target_modules: vec!["q_proj".into()],
        ..LoraConfig::new(2, 4.0)
    };
    let e = apply_lora(model.clone(), &cfg, config.architecture, 0)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("`q_proj`"), "{e}");
    assert!(
        e.contains("query_key_value") && e.contains("dense_h_to_4h"),
        "{e}"
    );
    for (bad, what) in [
        (LoraConfig::new(0, 8.0), "rank"),
        (LoraConfig::new(4, f64::NAN), "alpha"),
        (
            LoraConfig {
                target_modules: vec!["q_proj; rm -rf".into()],
                ..LoraConfig::new(4, 8.0)
            },
            "not a module name",
        ),
    ] {
        let e = apply_lora(model.clone(), &bad, config.architecture, 0)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains(what), "{e}");
    }
}

#[test]
fn the_same_seed_draws_the_same_adapters() {
    let d = device();
    let (config, model) = load_pretrained(&fixture("tiny-llama"), &d).unwrap();
    let b = batch(&config);
    let lora = LoraConfig::new(4, 8.0);
    let run = |seed| {
        let m = apply_lora(model.clone(), &lora, config.architecture, seed).unwrap();
        logits(&train(m, &b, 1, &d), &b)
    };
    assert_eq!(run(3), run(3));
    assert_ne!(run(3), run(4));
}

/// The memory estimate holds a LoRA policy's frozen base and its reference (the same parameters)
/// once, and a fully trained policy's reference as a second copy; the adapted weights (the query
/// and value projections, PEFT's default for Llama) are the ones rebuilt dense at each forward.
#[test]
fn a_lora_policy_and_its_reference_are_counted_once() {
    use rlhf_core::train::memory::{adapted_params, parameter_counts, params_not_in};
    let d = device();
    let (config, base) = load_pretrained(&fixture("tiny-llama"), &d).unwrap();
    let n = base.num_params() as u64;
    let lora = apply_lora(
        base.clone(),
        &LoraConfig::new(4, 8.0),
        config.architecture,
        1,
    )
    .unwrap();
    let (trained, frozen) = parameter_counts(&lora);
    assert_eq!(frozen, n);
    assert_eq!(params_not_in(&base, &lora), 0);
    assert_eq!(parameter_counts(&base), (n, 0));
    assert_eq!(params_not_in(&base, &base.clone()), n);
    assert!(trained > 0 && trained < n / 10);
    let (h, kv) = (
        config.hidden_size,
        config.num_key_value_heads * config.hidden_size / config.num_attention_heads,
    );
    let per_layer = (h * h + h * kv) as u64;
    assert_eq!(
        adapted_params(&lora),
        config.num_hidden_layers as u64 * per_layer
    );
    assert_eq!(adapted_params(&base), 0);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
    /// DoRA's weight and its gradients against an `f64` reference from the paper's formula with
    /// the norm held constant (its §4.3, PEFT's `detach`): for `L = Σ c ⊙ W'` with
    /// `W' = m ⊙ V / ‖V‖`, `V = W + s·A·B`, the gradient reaching `V` is `c·m/‖V‖` (column by
    /// column), so `∂L/∂A = s·G·Bᵀ`, `∂L/∂B = s·Aᵀ·G`, and `∂L/∂m_j = Σ_i c_ij·V_ij/‖V_j‖`.
    /// A column of `W` that is 0 with its magnitude 0 and `B = 0` stays 0, not NaN.
    #[test]
    fn dora_weight_and_gradients_match_the_formula_with_a_constant_norm(
        w in proptest::collection::vec(-1.0f64..1.0, 12),
        a in proptest::collection::vec(-1.0f64..1.0, 8),
        b in proptest::collection::vec(-1.0f64..1.0, 6),
        m in proptest::collection::vec(0.1f64..2.0, 3),
        c in proptest::collection::vec(-1.0f64..1.0, 12),
        scale in 0.5f64..4.0,
        zero_column in proptest::bool::ANY,
    ) {
        use burn::module::{Param, Reparameterization};
        use burn::tensor::{Tensor, TensorData};
        use rlhf_models::lora::DoraAdapter;
        let (d_in, r, d_out) = (4usize, 2usize, 3usize);
        let (mut w, mut b, mut m) = (w, b, m);
        if zero_column {
            // column 0 of W, row-major [d_in, d_out], and its B and magnitude
            for i in 0..d_in {
                w[i * d_out] = 0.0;
            }
            for k in 0..r {
                b[k * d_out] = 0.0;
            }
            m[0] = 0.0;
        }
        let d = device();
        let f32s = |v: &[f64]| -> Vec<f32> { v.iter().map(|&x| x as f32).collect() };
        let t2 = |v: &[f64], shape: [usize; 2]| {
            Tensor::<2>::from_data(TensorData::new(f32s(v), shape), &d)
        };
        let adapter = DoraAdapter {
            a: Param::from_tensor(t2(&a, [d_in, r]).require_grad()),
            b: Param::from_tensor(t2(&b, [r, d_out]).require_grad()),
            magnitude: Param::from_tensor(
                Tensor::<1>::from_data(TensorData::new(f32s(&m), [d_out]), &d).require_grad(),
            ),
            scale,
        };
        let (a_t, b_t, m_t) = (adapter.a.val(), adapter.b.val(), adapter.magnitude.val());
        let merged = adapter.apply(t2(&w, [d_in, d_out]));
        let got = to_f32_vec(merged.clone());
        let grads = merged.mul(t2(&c, [d_in, d_out])).sum().backward();
        let grad = |t: Option<Tensor<2>>| -> Vec<f32> { to_f32_vec(t.expect("a gradient")) };
        let (ga, gb) = (grad(a_t.grad(&grads)), grad(b_t.grad(&grads)));
        let gm = to_f32_vec(m_t.grad(&grads).expect("a gradient"));
        // the reference
        let v: Vec<f64> = (0..d_in * d_out)
            .map(|ij| {
                let (i, j) = (ij / d_out, ij % d_out);
                w[ij] + scale * (0..r).map(|k| a[i * r + k] * b[k * d_out + j]).sum::<f64>()
            })
            .collect();
        let norm: Vec<f64> = (0..d_out)
            .map(|j| (0..d_in).map(|i| v[i * d_out + j].powi(2)).sum::<f64>().sqrt())
            .collect();
        let safe = |j: usize| norm[j].max(f64::from(f32::MIN_POSITIVE));
        let g: Vec<f64> = (0..d_in * d_out)
            .map(|ij| c[ij] * m[ij % d_out] / safe(ij % d_out))
            .collect();
        type Checked = Result<(), proptest::test_runner::TestCaseError>;
        let close = |x: f32, y: f64, what: &str| -> Checked {
            proptest::prop_assert!(x.is_finite(), "{what}: {x}");
            let near = (f64::from(x) - y).abs() <= 1e-4 * (1.0 + y.abs());
            proptest::prop_assert!(near, "{what}: {x} vs {y}");
            Ok(())
        };
        for ij in 0..d_in * d_out {
            close(got[ij], m[ij % d_out] * v[ij] / safe(ij % d_out), "W'")?;
        }
        for i in 0..d_in {
            for k in 0..r {
                let want =
                    scale * (0..d_out).map(|j| g[i * d_out + j] * b[k * d_out + j]).sum::<f64>();
                close(ga[i * r + k], want, "dA")?;
            }
        }
        for k in 0..r {
            for j in 0..d_out {
                let want = scale * (0..d_in).map(|i| a[i * r + k] * g[i * d_out + j]).sum::<f64>();
                close(gb[k * d_out + j], want, "dB")?;
            }
        }
        for j in 0..d_out {
            let want =
                (0..d_in).map(|i| c[i * d_out + j] * v[i * d_out + j]).sum::<f64>() / safe(j);
            close(gm[j], want, "dm")?;
        }
    }
}
