//! GPT-NeoX on burn: left padding never changes a real position, the KV cache gives the logits of
//! a full forward pass, and sampling is reproducible and stops at EOS.
//! The device comes from `RLHF_DEVICE` (default `flex`).

use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rlhf_core::host::to_f32_vec;
use rlhf_models::{GptNeox, KvCache, SamplingConfig, TransformerConfig, generate};

fn device() -> Device {
    rlhf_core::device_from_env().unwrap()
}

fn tiny(device: &Device) -> GptNeox {
    device.seed(7);
    let mut c = TransformerConfig::preset("tiny-1m").unwrap();
    c.vocab_size = 64;
    c.hidden_size = 32;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 4;
    c.intermediate_size = 64;
    GptNeox::init(&c, device).unwrap()
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

#[test]
fn left_padding_changes_no_real_position() {
    let d = device();
    let m = tiny(&d);
    // the sequence alone …
    let seq = [5u32, 9, 13, 2, 40];
    let alone = to_f32_vec(m.forward(ids(&seq, [1, 5], &d), mask(&[1; 5], [1, 5], &d), None));
    // … and left-padded by three, with two different pad ids
    for pad in [0u32, 63] {
        let padded = [pad, pad, pad, 5, 9, 13, 2, 40];
        let out = to_f32_vec(m.forward(
            ids(&padded, [1, 8], &d),
            mask(&[0, 0, 0, 1, 1, 1, 1, 1], [1, 8], &d),
            None,
        ));
        assert!(out.iter().all(|x| x.is_finite()), "pad rows stay finite");
        let real = &out[3 * 64..];
        assert!(
            max_abs_diff(real, &alone) < 1e-4,
            "pad {pad}: {}",
            max_abs_diff(real, &alone)
        );
    }
}

#[test]
fn kv_cache_decoding_matches_a_full_forward_pass() {
    let d = device();
    let m = tiny(&d);
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
    assert!(diff < 1e-4, "cached vs full: {diff}");
}

#[test]
fn sampling_is_seeded_stops_at_eos_and_the_cache_changes_nothing() {
    let d = device();
    let m = tiny(&d);
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
