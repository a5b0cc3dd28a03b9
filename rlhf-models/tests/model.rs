//! Both architectures (GPT-NeoX, Llama with grouped-query attention, Qwen2 with QKV bias and tied
//! embeddings): left padding never changes a real position, the KV cache gives the logits of a
//! full forward pass, sampling is reproducible and stops at EOS, and the scalar head reads the
//! last real token.
//! The device comes from `RLHF_DEVICE` (default `flex`).

use burn::tensor::{Device, Int, Tensor, TensorData};
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rlhf_core::host::to_f32_vec;
use rlhf_models::{
    CausalLm, KvCache, SamplingConfig, ScalarModel, TransformerConfig, gather_last, generate,
};

fn device() -> Device {
    rlhf_core::device_from_env().unwrap()
}

const ARCHS: [&str; 3] = ["neox", "llama", "qwen2"];

/// A tiny model of each family (vocab 64). Seeding and initialising are one critical section,
/// since tests run in parallel and share the device's RNG.
fn tiny(device: &Device, arch: &str) -> CausalLm {
    static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = INIT.lock().unwrap();
    device.seed(7);
    let preset = match arch {
        "neox" => "tiny-1m",
        "llama" => "tiny-llama-1m",
        _ => "tiny-qwen2-1m",
    };
    let mut c = TransformerConfig::preset(preset).unwrap();
    c.vocab_size = 64;
    c.hidden_size = 32;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 4;
    c.num_key_value_heads = if arch == "neox" { 4 } else { 2 };
    c.intermediate_size = 64;
    CausalLm::init(&c, device).unwrap()
}

fn ids(v: &[u32], shape: [usize; 2], d: &Device) -> Tensor<2, Int> {
    Tensor::from_data(
        TensorData::new(v.iter().map(|&x| i64::from(x)).collect::<Vec<_>>(), shape),
        d,
    )
}

fn mask(v: &[u8], shape: [usize; 2], d: &Device) -> Tensor<2> {
    Tensor::from_data(
        TensorData::new(v.iter().map(|&x| f32::from(x)).collect::<Vec<_>>(), shape),
        d,
    )
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// Changing the pad ids (and how many pads there are) never changes a real position.
    #[test]
    fn left_padding_changes_no_real_position(
        arch in 0usize..3,
        seq in proptest::collection::vec(0u32..64, 1..7),
        pads in proptest::collection::vec(0u32..64, 1..5),
    ) {
        let d = device();
        let m = tiny(&d, ARCHS[arch]);
        let n = seq.len();
        let alone = to_f32_vec(m.forward(ids(&seq, [1, n], &d), mask(&vec![1; n], [1, n], &d), None));
        let padded: Vec<u32> = pads.iter().chain(&seq).copied().collect();
        let pm: Vec<u8> = pads.iter().map(|_| 0).chain(seq.iter().map(|_| 1)).collect();
        let t = padded.len();
        let out = to_f32_vec(m.forward(ids(&padded, [1, t], &d), mask(&pm, [1, t], &d), None));
        prop_assert!(out.iter().all(|x| x.is_finite()), "pad rows stay finite");
        let diff = max_abs_diff(&out[pads.len() * 64..], &alone);
        prop_assert!(diff < 1e-4, "{}: {}", ARCHS[arch], diff);
    }
}

#[test]
fn kv_cache_decoding_matches_a_full_forward_pass() {
    for arch in ARCHS {
        kv_cache_case(arch);
    }
}

fn kv_cache_case(arch: &str) {
    let d = device();
    let m = tiny(&d, arch);
    let toks = [3u32, 3, 7, 11, 19, 23, 29, 31, 1, 2];
    let att = [0u8, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1];
    let (b, t) = (2, 10);
    let batch: Vec<u32> = toks.iter().chain(toks.iter().rev()).copied().collect();
    let full = to_f32_vec(m.forward(ids(&batch, [b, t], &d), mask(&att, [b, t], &d), None));
    // prefix of 6, then one token at a time
    let mut cache = KvCache::new();
    let mut got = vec![0f32; b * t * 64];
    let take = |v: &[u32], from: usize, len: usize| -> Vec<u32> {
        (0..b)
            .flat_map(|r| v[r * t + from..r * t + from + len].to_vec())
            .collect()
    };
    let take_m = |v: &[u8], len: usize| -> Vec<u8> {
        (0..b)
            .flat_map(|r| v[r * t..r * t + len].to_vec())
            .collect()
    };
    let prefix = to_f32_vec(m.forward(
        ids(&take(&batch, 0, 6), [b, 6], &d),
        mask(&take_m(&att, 6), [b, 6], &d),
        Some(&mut cache),
    ));
    for r in 0..b {
        got[r * t * 64..(r * t + 6) * 64].copy_from_slice(&prefix[r * 6 * 64..(r + 1) * 6 * 64]);
    }
    for step in 6..t {
        let out = to_f32_vec(m.forward(
            ids(&take(&batch, step, 1), [b, 1], &d),
            mask(&take_m(&att, step + 1), [b, step + 1], &d),
            Some(&mut cache),
        ));
        for r in 0..b {
            got[(r * t + step) * 64..(r * t + step + 1) * 64]
                .copy_from_slice(&out[r * 64..(r + 1) * 64]);
        }
    }
    assert_eq!(cache.len(), t);
    let diff = max_abs_diff(&got, &full);
    assert!(diff < 1e-4, "{arch}: cached vs full: {diff}");
}

#[test]
fn sampling_is_seeded_stops_at_eos_and_the_cache_changes_nothing() {
    for arch in ARCHS {
        sampling_case(arch);
    }
}

fn sampling_case(arch: &str) {
    let d = device();
    let m = tiny(&d, arch);
    let prompt = [0u32, 0, 5, 6, 7, 8, 9, 10];
    let pmask = [0u8, 0, 1, 1, 1, 1, 1, 1];
    let cfg = SamplingConfig {
        max_new_tokens: 12,
        temperature: 1.0,
        eos_id: Some(1),
        ..Default::default()
    };
    let a = generate(
        &m,
        &prompt,
        &pmask,
        2,
        &cfg,
        &mut ChaCha8Rng::seed_from_u64(3),
    );
    let b = generate(
        &m,
        &prompt,
        &pmask,
        2,
        &cfg,
        &mut ChaCha8Rng::seed_from_u64(3),
    );
    assert_eq!(a, b, "same seed, same samples");
    let c = generate(
        &m,
        &prompt,
        &pmask,
        2,
        &SamplingConfig {
            use_cache: false,
            ..cfg.clone()
        },
        &mut ChaCha8Rng::seed_from_u64(3),
    );
    assert_eq!(
        a.tokens, c.tokens,
        "the cache does not change what is sampled"
    );
    for r in 0..2 {
        let row = &a.tokens[r * a.new_len..(r + 1) * a.new_len];
        let mrow = &a.mask[r * a.new_len..(r + 1) * a.new_len];
        if let Some(e) = row.iter().position(|&x| x == 1) {
            assert!(a.has_eos[r]);
            assert!(mrow[..=e].iter().all(|&x| x == 1) && mrow[e + 1..].iter().all(|&x| x == 0));
        } else {
            assert!(!a.has_eos[r] && mrow.iter().all(|&x| x == 1));
        }
        assert!(
            a.logprobs[r * a.new_len..(r + 1) * a.new_len]
                .iter()
                .all(|&l| l <= 0.0)
        );
    }
    // min_new_tokens holds EOS back
    let forced = SamplingConfig {
        min_new_tokens: 12,
        ..cfg.clone()
    };
    let f = generate(
        &m,
        &prompt,
        &pmask,
        2,
        &forced,
        &mut ChaCha8Rng::seed_from_u64(3),
    );
    assert!(f.tokens.iter().all(|&x| x != 1));
    // greedy decoding with and without the cache agree
    let g = SamplingConfig {
        temperature: 0.0,
        eos_id: None,
        ..cfg
    };
    let g1 = generate(
        &m,
        &prompt,
        &pmask,
        2,
        &g,
        &mut ChaCha8Rng::seed_from_u64(0),
    );
    let g2 = generate(
        &m,
        &prompt,
        &pmask,
        2,
        &SamplingConfig {
            use_cache: false,
            ..g
        },
        &mut ChaCha8Rng::seed_from_u64(9),
    );
    assert_eq!(g1.tokens, g2.tokens);
}

#[test]
fn scalar_head_reads_the_last_real_token_and_starts_small() {
    let d = device();
    for arch in ARCHS {
        let sm = ScalarModel::from_backbone(tiny(&d, arch));
        // bias 0, weights N(0, 1/√(d+1))
        let b = to_f32_vec(sm.score.bias.as_ref().unwrap().val());
        assert_eq!(b, vec![0.0]);
        let w = to_f32_vec(sm.score.weight.val());
        let var = w.iter().map(|x| x * x).sum::<f32>() / w.len() as f32;
        assert!(var < 4.0 / 33.0, "{arch}: weight variance {var}");
        // left-padded prompt, right-padded response: the score is the value at the last 1
        let toks = [0u32, 0, 5, 6, 7, 8, 0, 0, 9, 10, 11, 12, 13, 14, 15, 16];
        let att = [0u8, 0, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1];
        let per_token = to_f32_vec(sm.per_token(ids(&toks, [2, 8], &d), mask(&att, [2, 8], &d)));
        let last = to_f32_vec(sm.at_last_token(
            ids(&toks, [2, 8], &d),
            mask(&att, [2, 8], &d),
            mask(&att, [2, 8], &d),
        ));
        assert_eq!(last, vec![per_token[5], per_token[15]], "{arch}");
    }
    // gather_last on its own: rows with the last 1 at 2, at 0, and none
    let v = Tensor::<2>::from_data(
        TensorData::new((0..12).map(|x| x as f32).collect::<Vec<_>>(), [3, 4]),
        &d,
    );
    let m = mask(&[1, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0], [3, 4], &d);
    assert_eq!(to_f32_vec(gather_last(v, m)), vec![2.0, 4.0, 8.0]);
}
