//! Attention's fused softmax (`rlhf_models::softmax`) against a plain f64 softmax written from
//! the definition, and, as tensors with autodiff, attention built on it against burn's own
//! attention (outputs and the gradients of queries, keys and values).

use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Device, FloatDType, Tensor, TensorData};
use proptest::prelude::*;
use rlhf_core::host::to_f32_vec;
use rlhf_models::softmax::{
    masked_softmax, masked_softmax_backward_in_place, masked_softmax_in_place,
};

/// One row of `softmax(scale·s)` over the open keys, in f64 from the f32 products `scale·s` (the
/// pass, like burn, scales in f32); all zeros when every key is blocked.
fn softmax_ref(s: &[f32], blocked: &[u8], scale: f32) -> Vec<f64> {
    let y: Vec<Option<f64>> = s
        .iter()
        .zip(blocked)
        .map(|(&v, &b)| (b == 0).then(|| f64::from(v * scale)))
        .collect();
    let Some(top) = y.iter().flatten().copied().reduce(f64::max) else {
        return vec![0.0; s.len()];
    };
    let e: Vec<f64> = y
        .iter()
        .map(|v| v.map_or(0.0, |v| (v - top).exp()))
        .collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|x| x / sum).collect()
}

/// `scale·p ⊙ (g − Σ g ⊙ p)` for one row, in f64.
fn backward_ref(p: &[f64], g: &[f32], scale: f32) -> Vec<f64> {
    let dot: f64 = p.iter().zip(g).map(|(p, &g)| p * f64::from(g)).sum();
    p.iter()
        .zip(g)
        .map(|(p, &g)| f64::from(scale) * p * (f64::from(g) - dot))
        .collect()
}

/// Rows of scores (some huge), their masks (some rows all blocked), gradients and a scale.
fn cases() -> impl Strategy<Value = (usize, Vec<f32>, Vec<u8>, Vec<f32>, f32)> {
    (1usize..70, 1usize..5).prop_flat_map(|(keys, rows)| {
        let n = keys * rows;
        (
            Just(keys),
            prop::collection::vec(prop_oneof![8 => -40.0f32..40.0, 1 => -1e30f32..1e30], n),
            prop::collection::vec(prop_oneof![3 => Just(0u8), 1 => Just(1u8)], n),
            prop::collection::vec(-5.0f32..5.0, n),
            0.01f32..4.0,
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(600))]

    /// The pass and its gradient against f64, every value finite, blocked keys exactly 0.
    #[test]
    fn the_pass_and_its_gradient_match_f64((keys, s, blocked, g, scale) in cases()) {
        let mut p = s.clone();
        masked_softmax_in_place(&mut p, &blocked, keys, scale);
        let mut dg = g.clone();
        masked_softmax_backward_in_place(&p, &mut dg, keys, scale);
        for row in 0..s.len() / keys {
            let r = row * keys..(row + 1) * keys;
            let want = softmax_ref(&s[r.clone()], &blocked[r.clone()], scale);
            let want_grad = backward_ref(&want, &g[r.clone()], scale);
            let grad_size = f64::from(scale) * g[r.clone()].iter().map(|g| f64::from(g.abs())).sum::<f64>();
            for (i, j) in r.clone().enumerate() {
                prop_assert!(p[j].is_finite() && dg[j].is_finite());
                prop_assert!((f64::from(p[j]) - want[i]).abs() <= 1e-6, "p {} against {}", p[j], want[i]);
                prop_assert!(
                    (f64::from(dg[j]) - want_grad[i]).abs() <= 1e-5 * grad_size.max(1.0),
                    "gradient {} against {}", dg[j], want_grad[i]
                );
                if blocked[j] != 0 {
                    prop_assert!(p[j] == 0.0 && dg[j] == 0.0);
                }
            }
        }
    }

    /// What a blocked key holds never changes a result, even NaN or infinity.
    #[test]
    fn blocked_keys_never_change_a_result((keys, s, blocked, _g, scale) in cases(), junk in prop_oneof![Just(f32::NAN), Just(f32::INFINITY), Just(-1e38f32)]) {
        let mut a = s.clone();
        masked_softmax_in_place(&mut a, &blocked, keys, scale);
        let mut b: Vec<f32> = s.iter().zip(&blocked).map(|(&v, &m)| if m != 0 { junk } else { v }).collect();
        masked_softmax_in_place(&mut b, &blocked, keys, scale);
        prop_assert_eq!(
            a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            b.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
    }
}

#[test]
fn rows_with_nothing_open_are_zeros_nan_stays_nan_and_rows_must_be_whole() {
    let mut s = vec![1.0, 2.0, 3.0, 4.0];
    masked_softmax_in_place(&mut s, &[1, 1, 0, 1], 2, 1.0);
    assert_eq!(s, [0.0, 0.0, 1.0, 0.0]);
    // open scores of −∞ only: zeros, as burn's fallback gives; an open NaN makes its row NaN
    let mut s = vec![f32::NEG_INFINITY, 2.0, f32::NAN, 1.0, f32::NAN, f32::NAN];
    masked_softmax_in_place(&mut s, &[0, 1, 0, 0, 0, 1], 2, 1.0);
    assert_eq!(s[..2], [0.0, 0.0]);
    assert!(s[2..].iter().all(|x| x.is_nan()), "{s:?}");
    let whole = std::panic::catch_unwind(|| {
        let mut s = vec![0.0; 5];
        masked_softmax_in_place(&mut s, &[0; 5], 2, 1.0);
    });
    assert!(whole.is_err());
    let lengths = std::panic::catch_unwind(|| {
        let mut g = vec![0.0; 4];
        masked_softmax_backward_in_place(&[0.0; 6], &mut g, 2, 1.0);
    });
    assert!(lengths.is_err());
}

fn values(n: usize, step: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * step % 101) as f32 - 50.0) / 25.0)
        .collect()
}

/// `[1, 2, 5, 5]`: causal, the first key padded for every query, and the first query's only
/// open key padded too (a row with every key blocked).
fn mask(device: &Device) -> Tensor<4, Bool> {
    let mut m = vec![false; 2 * 25];
    for h in 0..2 {
        for q in 0..5 {
            for k in 0..5 {
                m[h * 25 + q * 5 + k] = k > q || k == 0;
            }
        }
    }
    Tensor::from_data(TensorData::new(m, [1, 2, 5, 5]), device)
}

/// Attention from the pass (`softmax(q·kᵀ/√d)·v`) against burn's attention, both with autodiff on
/// burn-flex: the same outputs and gradients to f32 rounding; the query tensor is strided.
#[test]
fn attention_on_the_pass_matches_burns_attention_and_its_gradients() {
    let device = Device::flex().autodiff();
    let w = Tensor::<4>::from_data(
        TensorData::new(values(2 * 5 * 4, 13), [1, 2, 5, 4]),
        &device,
    );
    let run = |ours: bool| {
        let make = |step: usize| {
            Tensor::<4>::from_data(
                TensorData::new(values(2 * 5 * 4, step), [1, 2, 5, 4]),
                &device,
            )
            .require_grad()
        };
        let (q0, k, v) = (make(7), make(11), make(17));
        // a strided query: the transpose of a transpose, so its layout is not the data's
        let q = q0.clone().swap_dims(2, 3).mul_scalar(1.0).swap_dims(2, 3);
        let out = if ours {
            let scores = q.matmul(k.clone().swap_dims(2, 3));
            masked_softmax(scores, mask(&device), 0.5).matmul(v.clone())
        } else {
            attention(
                q,
                k.clone(),
                v.clone(),
                Some(mask(&device)),
                None,
                AttentionModuleOptions::default(),
            )
        };
        let grads = out.clone().mul(w.clone()).sum().backward();
        let g = |t: &Tensor<4>| to_f32_vec(t.grad(&grads).expect("tracked"));
        (to_f32_vec(out.inner()), g(&q0), g(&k), g(&v))
    };
    let (ours, burns) = (run(true), run(false));
    for (name, a, b) in [
        ("output", &ours.0, &burns.0),
        ("query gradient", &ours.1, &burns.1),
        ("key gradient", &ours.2, &burns.2),
        ("value gradient", &ours.3, &burns.3),
    ] {
        assert!(a.iter().any(|x| *x != 0.0), "{name} all zeros");
        for (x, y) in a.iter().zip(b) {
            assert!(
                (x - y).abs() <= 2e-6 * y.abs().max(1.0),
                "{name}: {x} against {y}"
            );
        }
    }
    // the row with every key blocked gives zeros, as burn's does
    assert!(ours.0[..4].iter().all(|x| *x == 0.0));
}

/// Without autodiff, and with the input shared: the pass writes a copy, never the input.
#[test]
fn the_input_is_left_as_it_was() {
    let device = Device::flex();
    let data = TensorData::new(values(50, 7), [1, 2, 5, 5]);
    let s = Tensor::<4>::from_data(data.clone(), &device);
    let p = masked_softmax(s.clone(), mask(&device), 1.0);
    assert_eq!(to_f32_vec(s), values(50, 7));
    let p = to_f32_vec(p);
    // rows 0 and 5 (each head's first query) have every key blocked
    for row in (1..10).filter(|r| r % 5 != 0) {
        let sum: f32 = p[row * 5..(row + 1) * 5].iter().sum();
        assert!((sum - 1.0).abs() < 1e-6, "row {row}: {sum}");
    }
}

/// With gradient checkpointing the scores may be recomputed rather than kept (here they come
/// from a memory-bound `exp`): the gradient is the same either way.
#[test]
fn gradient_checkpointing_gives_the_same_gradient() {
    let run = |device: Device| {
        let s = Tensor::<4>::from_data(TensorData::new(values(50, 7), [1, 2, 5, 5]), &device)
            .require_grad();
        let w = Tensor::<4>::from_data(TensorData::new(values(50, 3), [1, 2, 5, 5]), &device);
        let p = masked_softmax(s.clone().mul_scalar(0.5).exp(), mask(&device), 0.7);
        let grads = p.mul(w).sum().backward();
        to_f32_vec(s.grad(&grads).expect("tracked"))
    };
    rlhf_testkit::assert_checkpointing_keeps_the_gradient(run);
}

/// bf16 scores take burn's ops (the fallback every other backend runs): the same softmax and
/// gradient as the f32 pass, to bf16's precision.
#[test]
fn the_fallback_from_burns_ops_agrees_with_the_pass() {
    let device = Device::flex().autodiff();
    let run = |dtype: FloatDType| {
        let s = Tensor::<4>::from_data(TensorData::new(values(50, 7), [1, 2, 5, 5]), &device)
            .require_grad();
        let w = Tensor::<4>::from_data(TensorData::new(values(50, 3), [1, 2, 5, 5]), &device);
        let p = masked_softmax(s.clone().cast(dtype), mask(&device), 0.7);
        let grads = p.clone().mul(w.cast(dtype)).sum().backward();
        let g = s.grad(&grads).expect("tracked");
        (
            to_f32_vec(p.inner().cast(FloatDType::F32)),
            to_f32_vec(g.cast(FloatDType::F32)),
        )
    };
    let (pass, fallback) = (run(FloatDType::F32), run(FloatDType::BF16));
    assert!(pass.1.iter().any(|g| *g != 0.0));
    for (a, b) in pass
        .0
        .iter()
        .zip(&fallback.0)
        .chain(pass.1.iter().zip(&fallback.1))
    {
        assert!((a - b).abs() <= 2e-2, "{a} against {b}");
    }
    // the row with every key blocked is zeros on both
    assert!(fallback.0[..5].iter().all(|x| *x == 0.0));
}
