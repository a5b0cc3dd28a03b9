//! Every family (GPT-NeoX with parallel and sequential residual, Llama with grouped-query
//! attention and Llama 3 RoPE scaling, Qwen2 with QKV bias and tied embeddings, Qwen3 with
//! per-head query/key norms and its own head_dim, Mistral with a sliding window, Phi-3 with fused
//! projections, partial rotary, LongRoPE and a sliding window, GPT-2 with learned positions):
//! left padding never changes a real position, the KV cache gives the logits of a full forward
//! pass, sampling is reproducible and stops at EOS, and the scalar head reads the last real token.
//! The device comes from `RLHF_DEVICE` (default `flex`).

use burn::tensor::{Device, Tensor, TensorData};
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rlhf_core::host::to_f32_vec;
use rlhf_models::{
    CausalLm, KvCache, RopeScaling, SamplingConfig, ScalarModel, TransformerConfig, gather_last,
    generate,
};

fn device() -> Device {
    rlhf_core::device_from_env().unwrap()
}

const ARCHS: [&str; 9] = [
    "neox",
    "llama",
    "qwen2",
    "neox-sequential",
    "llama3",
    "qwen3",
    "mistral",
    "phi3",
    "gpt2",
];

/// A tiny model of each family (vocab 64, width 32, 2 layers, 4 heads), seeded and initialised
/// under the process-wide lock (tests run in parallel and share the device's RNG), with each
/// family's options set so that they act on sequences of a few tokens: Llama 3 scaling with an
/// original length of 64, a window of 3 (Mistral) or 5 (Phi-3), Phi-3's LongRoPE switching after
/// 6 tokens.
fn tiny(device: &Device, arch: &str) -> CausalLm {
    let preset = match arch {
        "neox" | "neox-sequential" => "tiny-1m",
        "llama" => "tiny-llama-1m",
        "qwen2" => "tiny-qwen2-1m",
        "llama3" => "llama-3.2-1b",
        "qwen3" => "qwen3-0.6b",
        "mistral" => "mistral-7b",
        "phi3" => "phi-3-mini",
        _ => "gpt2",
    };
    let mut c = TransformerConfig::preset(preset).unwrap();
    c.vocab_size = 64;
    c.hidden_size = 32;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 4;
    c.num_key_value_heads = if arch.starts_with("neox") || arch == "gpt2" {
        4
    } else {
        2
    };
    c.intermediate_size = 64;
    match arch {
        "neox-sequential" => c.use_parallel_residual = false,
        "llama3" => {
            c.rope_scaling = RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 64,
            }
        }
        "qwen3" => c.head_dim = Some(12),
        "mistral" => {
            c.head_dim = Some(6);
            c.sliding_window = Some(3);
        }
        "phi3" => {
            c.rotary_pct = 0.75;
            c.sliding_window = Some(5);
            c.rope_scaling = RopeScaling::Longrope {
                short_factor: vec![1.0, 1.5, 2.0],
                long_factor: vec![2.0, 5.0, 11.0],
                original_max_position_embeddings: 6,
                attention_factor: 1.1,
            };
        }
        "gpt2" => c.max_position_embeddings = 64,
        _ => {}
    }
    rlhf_core::train::seeded(device, 7, || CausalLm::init(&c, device).unwrap())
}

/// Host logits `[rows, new, vocab]` of `rows` rows of ids and mask (the ids are the mask's last
/// columns), read through the model's `TokenInput`.
fn logits(
    m: &CausalLm,
    ids: &[u32],
    att: &[u8],
    rows: usize,
    cache: Option<&mut KvCache>,
) -> Vec<f32> {
    to_f32_vec(m.forward(&m.input(ids, att, rows).unwrap(), cache))
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

    /// Changing the pad ids (any id, inside the vocabulary of 64 or past it, as a tokenizer's added
    /// PAD is) and how many pads there are, on the left or on the right, never changes a real
    /// position.
    #[test]
    fn padding_changes_no_real_position(
        arch in 0usize..ARCHS.len(),
        seq in proptest::collection::vec(0u32..64, 1..7),
        pads in proptest::collection::vec(0u32..130, 1..5),
        right in any::<bool>(),
    ) {
        let d = device();
        let m = tiny(&d, ARCHS[arch]);
        let n = seq.len();
        let alone = logits(&m, &seq, &vec![1; n], 1, None);
        let (padded, pm): (Vec<u32>, Vec<u8>) = if right {
            (seq.iter().chain(&pads).copied().collect(), seq.iter().map(|_| 1).chain(pads.iter().map(|_| 0)).collect())
        } else {
            (pads.iter().chain(&seq).copied().collect(), pads.iter().map(|_| 0).chain(seq.iter().map(|_| 1)).collect())
        };
        let out = logits(&m, &padded, &pm, 1, None);
        prop_assert!(out.iter().all(|x| x.is_finite()), "pad rows stay finite");
        let real = if right { &out[..n * 64] } else { &out[pads.len() * 64..] };
        let diff = max_abs_diff(real, &alone);
        prop_assert!(diff < 1e-4, "{}: {}", ARCHS[arch], diff);
    }

    /// A prompt sampled alone and sampled after any amount of left padding (pad ids past the
    /// vocabulary) gives the same tokens from the same seed.
    #[test]
    fn padding_changes_no_sampled_token(
        arch in 0usize..ARCHS.len(),
        prompt in proptest::collection::vec(2u32..64, 1..6),
        pad_count in 1usize..5,
        seed in 0u64..1000,
    ) {
        let d = device();
        let m = tiny(&d, ARCHS[arch]);
        let cfg = SamplingConfig { max_new_tokens: 6, temperature: 1.0, eos_id: Some(1), ..Default::default() };
        let alone = generate(&m, &prompt, &vec![1; prompt.len()], 1, &cfg, &mut ChaCha8Rng::seed_from_u64(seed)).unwrap();
        let padded: Vec<u32> = std::iter::repeat_n(64, pad_count).chain(prompt.iter().copied()).collect();
        let pm: Vec<u8> = std::iter::repeat_n(0, pad_count).chain(prompt.iter().map(|_| 1)).collect();
        let with_pads = generate(&m, &padded, &pm, 1, &cfg, &mut ChaCha8Rng::seed_from_u64(seed)).unwrap();
        prop_assert_eq!(alone.tokens, with_pads.tokens);
    }
}

/// A stop id ends a row as EOS does (a checkpoint's `generation_config.json` may list several
/// end tokens): greedy rows stop at its first occurrence, counted as having emitted EOS, and before
/// `min_new_tokens` it is suppressed like EOS.
#[test]
fn a_stop_id_ends_a_row_as_eos_does() {
    let d = device();
    let m = tiny(&d, "llama");
    let prompt = [5u32, 6, 7, 8];
    let greedy = |cfg: &SamplingConfig| {
        generate(
            &m,
            &prompt,
            &[1; 4],
            1,
            cfg,
            &mut ChaCha8Rng::seed_from_u64(0),
        )
        .unwrap()
    };
    let base = SamplingConfig {
        max_new_tokens: 10,
        temperature: 0.0,
        eos_id: Some(1),
        ..Default::default()
    };
    let free = greedy(&base);
    let kept = free.mask.iter().filter(|&&x| x == 1).count();
    assert!(
        kept >= 3,
        "the greedy row is long enough to stop early: {free:?}"
    );
    // a token the row emits that is not EOS (id 1): the stop id
    let first = (1..kept)
        .find(|&i| free.tokens[i] != 1)
        .expect("a token other than EOS");
    let stop = free.tokens[first];
    let first = free.tokens.iter().position(|&t| t == stop).unwrap();
    let stopped = greedy(&SamplingConfig {
        stop_ids: vec![stop],
        ..base.clone()
    });
    assert_eq!(stopped.tokens[..=first], free.tokens[..=first]);
    assert_eq!(stopped.mask.iter().filter(|&&x| x == 1).count(), first + 1);
    assert_eq!(stopped.has_eos, vec![true]);
    let held = greedy(&SamplingConfig {
        stop_ids: vec![stop],
        min_new_tokens: first + 1,
        ..base.clone()
    });
    assert!(
        !held.tokens[..=first].contains(&stop),
        "suppressed before min_new_tokens: {held:?}"
    );
}

/// Decoding with the cache gives, at every step, the logits of a full forward pass of the
/// sequence so far (which, but for LongRoPE's switch to the long factors, are those of the whole
/// sequence at that position).
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
    // the full forward pass of the first `len` columns
    let full = |len: usize| logits(&m, &take(&batch, 0, len), &take_m(&att, len), b, None);
    // prefix of 6, then one token at a time
    let mut cache = KvCache::new();
    let prefix = logits(
        &m,
        &take(&batch, 0, 6),
        &take_m(&att, 6),
        b,
        Some(&mut cache),
    );
    let mut diff = max_abs_diff(&prefix, &full(6));
    for step in 6..t {
        let out = logits(
            &m,
            &take(&batch, step, 1),
            &take_m(&att, step + 1),
            b,
            Some(&mut cache),
        );
        let reference = full(step + 1);
        let last: Vec<f32> = (0..b)
            .flat_map(|r| {
                let at = r * (step + 1) + step;
                reference[at * 64..(at + 1) * 64].to_vec()
            })
            .collect();
        diff = diff.max(max_abs_diff(&out, &last));
    }
    assert_eq!(cache.len(), t);
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
    )
    .unwrap();
    let b = generate(
        &m,
        &prompt,
        &pmask,
        2,
        &cfg,
        &mut ChaCha8Rng::seed_from_u64(3),
    )
    .unwrap();
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
    )
    .unwrap();
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
    )
    .unwrap();
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
    )
    .unwrap();
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
    )
    .unwrap();
    assert_eq!(g1.tokens, g2.tokens);
}

#[test]
fn scalar_head_reads_the_last_real_token_and_starts_small() {
    let d = device();
    for arch in ARCHS {
        let sm = ScalarModel::from_backbone(tiny(&d, arch));
        // no bias (as transformers' sequence-classification head), weights N(0, 1/√(d+1))
        assert!(sm.score.bias.is_none());
        let w = to_f32_vec(sm.score.weight.val());
        let var = w.iter().map(|x| x * x).sum::<f32>() / w.len() as f32;
        assert!(var < 4.0 / 33.0, "{arch}: weight variance {var}");
        // left-padded prompt, right-padded response: the score is the value at the last 1
        let toks = [0u32, 0, 5, 6, 7, 8, 0, 0, 9, 10, 11, 12, 13, 14, 15, 16];
        let att = [0u8, 0, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1];
        let input = sm.input(&toks, &att, 2).unwrap();
        let per_token = to_f32_vec(sm.per_token(&input));
        let last = to_f32_vec(sm.at_last_token(&input));
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

/// Every parameter's gradient of `loss`, flattened in module order.
fn gradients(model: &CausalLm, loss: Tensor<1>) -> Vec<f32> {
    struct Flatten<'a>(&'a burn::optim::GradientsParams, Vec<f32>);
    impl burn::module::ModuleVisitor for Flatten<'_> {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            if let Some(g) = self.0.get::<D>(param.id) {
                self.1.extend(to_f32_vec(g.flatten::<1>(0, D - 1)));
            }
        }
    }
    let grads = burn::optim::GradientsParams::from_grads(loss.backward(), model);
    let mut flat = Flatten(&grads, Vec::new());
    burn::module::Module::visit(model, &mut flat);
    flat.1
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// The SFT loss of a prompt and response, and its gradient, are the same unpadded and with
    /// any number of pads (ids inside or past the vocabulary) on either side.
    #[test]
    fn padding_changes_no_loss_and_no_gradient(
        arch in 0usize..ARCHS.len(),
        prompt in proptest::collection::vec(0u32..64, 1..5),
        response in proptest::collection::vec(0u32..64, 1..5),
        (left, right) in (0usize..4, 0usize..4),
        pad_id in prop_oneof![Just(0u32), 1u32..64, 64u32..200],
    ) {
        let d = device().autodiff();
        let m = tiny(&d, ARCHS[arch]);
        let batch = |left: usize, right: usize| {
            let real = prompt.len() + response.len();
            let ids: Vec<u32> = std::iter::repeat_n(pad_id, left)
                .chain(prompt.iter().chain(&response).copied())
                .chain(std::iter::repeat_n(pad_id, right))
                .collect();
            let attention: Vec<u8> = std::iter::repeat_n(0, left).chain(std::iter::repeat_n(1, real)).chain(std::iter::repeat_n(0, right)).collect();
            let target: Vec<u8> = std::iter::repeat_n(0, left + prompt.len()).chain(std::iter::repeat_n(1, response.len())).chain(std::iter::repeat_n(0, right)).collect();
            rlhf_models::LmBatch {
                batch: 1,
                seq: ids.len(),
                ids,
                attention,
                target,
                sequences: Vec::new(),
            }
        };
        let plain = rlhf_models::sft_loss(&m, &batch(0, 0), &d).unwrap();
        let padded = rlhf_models::sft_loss(&m, &batch(left, right), &d).unwrap();
        let (lp, lq) = (plain.clone().into_scalar::<f32>(), padded.clone().into_scalar::<f32>());
        prop_assert!((lp - lq).abs() <= 1e-5 * lp.abs().max(1.0), "loss {} vs {}", lp, lq);
        let (gp, gq) = (gradients(&m, plain), gradients(&m, padded));
        prop_assert_eq!(gp.len(), gq.len());
        let scale = gp.iter().fold(0.0f32, |a, x| a.max(x.abs())).max(1e-6);
        let diff = max_abs_diff(&gp, &gq);
        prop_assert!(diff <= 1e-4 * scale, "gradients differ by {} (largest {})", diff, scale);
    }

    /// The target log-probs, with the LM head applied only from the batch's first target column
    /// on, equal those read from a full forward pass's logits at every target token, for rows
    /// whose prompts and responses differ in length (right-padded, as collated), at any
    /// temperature; the mask marks exactly the targets.
    #[test]
    fn target_logprobs_equal_a_full_forward_passes(
        arch in 0usize..ARCHS.len(),
        rows in proptest::collection::vec((1usize..6, 1usize..5), 1..4),
        temperature in prop_oneof![Just(1.0f32), 0.5f32..2.0],
    ) {
        let d = device();
        let m = tiny(&d, ARCHS[arch]);
        let seq = rows.iter().map(|(p, r)| p + r).max().unwrap();
        let (mut ids, mut attention, mut target) = (Vec::new(), Vec::new(), Vec::new());
        for (row, &(p, r)) in rows.iter().enumerate() {
            ids.extend((0..seq).map(|c| if c < p + r { ((row * 7 + c * 3) % 64) as u32 } else { 0 }));
            attention.extend((0..seq).map(|c| u8::from(c < p + r)));
            target.extend((0..seq).map(|c| u8::from(c >= p && c < p + r)));
        }
        let batch = rlhf_models::LmBatch {
            batch: rows.len(),
            seq,
            ids,
            attention,
            target: target.clone(),
            sequences: Vec::new(),
        };
        let got = rlhf_models::target_logprobs(&m, &batch, temperature, &d).unwrap();
        let first = rows.iter().map(|r| r.0).min().unwrap();
        prop_assert_eq!(got.first, first);
        let (input, _) = batch.input(&m, &d).unwrap();
        let full = to_f32_vec(rlhf_core::token_logprobs(
            m.forward(&input, None).narrow(1, 0, seq - 1),
            input.ids().narrow(1, 1, seq - 1),
            temperature,
        ));
        let (logp, kept) = (to_f32_vec(got.logp), to_f32_vec(got.mask));
        let width = seq - first;
        prop_assert_eq!(logp.len(), rows.len() * width);
        for row in 0..rows.len() {
            for c in 0..width {
                let col = first + c;
                prop_assert_eq!(kept[row * width + c], f32::from(target[row * seq + col]));
                if target[row * seq + col] == 1 {
                    let want = full[row * (seq - 1) + col - 1];
                    let have = logp[row * width + c];
                    prop_assert!((want - have).abs() <= 1e-5 * want.abs().max(1.0), "row {} column {}: {} against {}", row, col, have, want);
                }
            }
        }
    }

    /// A scalar model's score sits on the last real token whatever the padding: the score of a
    /// sequence alone equals its score with pads (any ids) on either side.
    #[test]
    fn the_score_lands_on_the_last_real_token_under_every_padding(
        arch in 0usize..ARCHS.len(),
        seq in proptest::collection::vec(0u32..64, 1..7),
        (left, right) in (0usize..4, 0usize..4),
        pad_id in prop_oneof![Just(0u32), 64u32..200],
    ) {
        let d = device();
        let sm = ScalarModel::from_backbone(tiny(&d, ARCHS[arch]));
        let score = |left: usize, right: usize| {
            let ids: Vec<u32> = std::iter::repeat_n(pad_id, left).chain(seq.iter().copied()).chain(std::iter::repeat_n(pad_id, right)).collect();
            let att: Vec<u8> = std::iter::repeat_n(0, left).chain(seq.iter().map(|_| 1)).chain(std::iter::repeat_n(0, right)).collect();
            to_f32_vec(sm.at_last_token(&sm.input(&ids, &att, 1).unwrap()))[0]
        };
        let (alone, padded) = (score(0, 0), score(left, right));
        prop_assert!((alone - padded).abs() <= 1e-4 * alone.abs().max(1.0), "{} vs {}", alone, padded);
    }
}
