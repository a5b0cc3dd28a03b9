//! The token log-probabilities' pass on burn-flex (`rlhf_core::logprobs::pass`): its gradient
//! against `(1[v = y] − softmax(x/T)_v)·g/T` in f64, against burn's ops (what other backends
//! run), at extreme logits, with gradient checkpointing, and with its input shared.

use burn::tensor::{Device, Int, Tensor, TensorData, activation};
use proptest::prelude::*;
use rlhf_core::host::to_f32_vec;
use rlhf_core::logprobs::pass::{entropy_rows, token_logprobs_backward_rows, token_logprobs_rows};
use rlhf_core::{token_logprobs, token_logprobs_and_entropy};

use crate::common::*;

/// `softmax(row/T)` in f64.
fn softmax_ref(row: &[f64], temperature: f64) -> Vec<f64> {
    let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = row
        .iter()
        .map(|x| ((x - max) / temperature).exp())
        .collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|e| e / sum).collect()
}

/// Rows of up to 40 logits (past the 16 lanes of the loops, with a remainder), their tokens, a
/// weight per row (a quarter of them 0: padded positions) and a temperature.
fn problem() -> impl Strategy<Value = (usize, usize, Vec<f64>, Vec<usize>, Vec<f64>, f64)> {
    (1usize..=6, 1usize..=40).prop_flat_map(|(rows, v)| {
        (
            Just(rows),
            Just(v),
            prop::collection::vec(-8.0f64..8.0, rows * v),
            prop::collection::vec(0..v, rows),
            prop::collection::vec(prop_oneof![1 => Just(0.0), 3 => -2.0f64..2.0], rows),
            0.3f64..2.0,
        )
    })
}

fn logits(values: &[f64], rows: usize, v: usize, device: &Device) -> Tensor<3> {
    t3(values, [1, rows, v], device)
}

fn ids(tokens: &[usize], device: &Device) -> Tensor<2, Int> {
    ids2(tokens, [1, tokens.len()], device)
}

/// The gradient of `Σ_n w_n·logp_n` with respect to the logits.
fn gradient(
    x: &[f64],
    rows: usize,
    v: usize,
    tokens: &[usize],
    w: &[f64],
    temperature: f32,
    device: Device,
) -> Vec<f32> {
    let x = logits(x, rows, v, &device).require_grad();
    let lp = token_logprobs(x.clone(), ids(tokens, &device), temperature);
    let loss = lp.mul(t2(w, [1, rows], &device)).sum();
    to_f32_vec(x.grad(&loss.backward()).expect("the log-probs depend on x"))
}

proptest! {
    #![proptest_config(config())]

    /// `∂(Σ w·logp)/∂x_{n,v} = w_n/T·(1[v = y_n] − p_{n,v})`; a row of weight 0 gets none.
    #[test]
    fn the_gradient_is_onehot_less_softmax_over_t((rows, v, x, tokens, w, temp) in problem()) {
        let got = gradient(&x, rows, v, &tokens, &w, temp as f32, Device::flex().autodiff());
        let mut expected = Vec::with_capacity(rows * v);
        for n in 0..rows {
            let p = softmax_ref(&x[n * v..(n + 1) * v], temp);
            expected.extend((0..v).map(|k| w[n] / temp * (f64::from(u8::from(k == tokens[n])) - p[k])));
        }
        let got: Vec<f64> = got.iter().map(|&g| f64::from(g)).collect();
        assert_close(&got, &expected, TOL)?;
        for n in (0..rows).filter(|&n| w[n] == 0.0) {
            prop_assert!(got[n * v..(n + 1) * v].iter().all(|&g| g == 0.0));
        }
    }

    /// The pass gives what burn's log-softmax and gather give, forward and backward: the
    /// computation every other backend runs.
    #[test]
    fn the_pass_agrees_with_burns_ops((rows, v, x, tokens, w, temp) in problem()) {
        let device = Device::flex().autodiff();
        let t = temp as f32;
        let run = |fused: bool| {
            let xs = logits(&x, rows, v, &device).require_grad();
            let ys = ids(&tokens, &device);
            let lp = match fused {
                true => token_logprobs(xs.clone(), ys, t),
                false => activation::log_softmax(xs.clone().div_scalar(t), 2)
                    .gather(2, ys.unsqueeze_dim(2))
                    .squeeze_dim::<2>(2),
            };
            let grads = lp.clone().mul(t2(&w, [1, rows], &device)).sum().backward();
            (to_f32_vec(lp), to_f32_vec(xs.grad(&grads).expect("tracked")))
        };
        let (pass, chain) = (run(true), run(false));
        let f = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>();
        assert_close(&f(&pass.0), &f(&chain.0), 1e-5)?;
        assert_close(&f(&pass.1), &f(&chain.1), 1e-5)?;
    }

    /// The detached entropy of `token_logprobs_and_entropy` is `−Σ p log p` of `softmax(x/T)`.
    #[test]
    fn the_entropy_pass_matches_the_definition((rows, v, x, tokens, _w, temp) in problem()) {
        let device = Device::flex();
        let (_, h) = token_logprobs_and_entropy(logits(&x, rows, v, &device), ids(&tokens, &device), temp as f32);
        let expected: Vec<f64> = (0..rows)
            .map(|n| {
                let p = softmax_ref(&x[n * v..(n + 1) * v], temp);
                -p.iter().filter(|&&p| p > 0.0).map(|p| p * p.ln()).sum::<f64>()
            })
            .collect();
        assert_close(&host(h), &expected, TOL)?;
    }
}

/// Logits of ±1e30 and −∞ (a blocked entry): finite log-probabilities, gradients and entropies
/// where the definition is finite, −∞ for a blocked token, and no gradient into a blocked entry.
#[test]
fn extreme_logits_stay_finite() {
    let inf = f32::INFINITY;
    #[rustfmt::skip]
    let x = [
        1e30, -1e30, 0.0, 5.0,
        -inf, 1.0, 2.0, 3.0,
        -inf, 1.0, 2.0, 3.0,
    ];
    let tokens = [0usize, 2, 0];
    let mut lp = [0.0f32; 3];
    token_logprobs_rows(&x, &tokens, 4, 0.7, &mut lp);
    assert_eq!(lp[0], 0.0, "the dominant token has probability 1");
    assert!(lp[1].is_finite() && lp[1] < 0.0);
    assert_eq!(
        lp[2],
        f32::NEG_INFINITY,
        "a blocked token has probability 0"
    );

    let mut g = x;
    token_logprobs_backward_rows(&mut g, &tokens, &lp, &[1.0, 1.0, 1.0], 4, 0.7);
    assert!(g.iter().all(|v| v.is_finite()), "{g:?}");
    assert_eq!(g[4], 0.0, "no gradient into a blocked entry");
    // a blocked token (log p = −∞): the gradient recomputes the row, 1/T at the token less p/T
    let p = softmax_ref(&[1.0, 2.0, 3.0], 0.7);
    assert!((f64::from(g[8]) - 1.0 / 0.7).abs() < 1e-5);
    for k in 0..3 {
        assert!((f64::from(g[9 + k]) + p[k] / 0.7).abs() < 1e-5);
    }

    let mut h = [0.0f32; 3];
    entropy_rows(&x, 4, 0.7, &mut h);
    assert!(h.iter().all(|v| v.is_finite() && *v >= 0.0), "{h:?}");
    assert!(h[0].abs() < 1e-6, "one token holds all the mass");
    assert!((h[1] - h[2]).abs() < 1e-6);
}

/// A NaN logit makes its row's log-probability NaN, not a number that hides it.
#[test]
fn a_nan_logit_makes_its_row_nan() {
    let x = [0.0, f32::NAN, 1.0, 0.0, 1.0, 2.0];
    let mut lp = [0.0f32; 2];
    token_logprobs_rows(&x, &[0, 0], 3, 1.0, &mut lp);
    assert!(lp[0].is_nan());
    assert!(lp[1].is_finite());
}

#[test]
#[should_panic(expected = "outside the vocabulary")]
fn a_token_outside_the_vocabulary_panics() {
    let mut lp = [0.0f32; 1];
    token_logprobs_rows(&[0.0, 1.0], &[2], 2, 1.0, &mut lp);
}

/// With gradient checkpointing the logits may be recomputed (here they come from a
/// memory-bound `exp`): the gradient is the same either way.
#[test]
fn gradient_checkpointing_gives_the_same_gradient() {
    let x: Vec<f64> = (0..60).map(|i| f64::from(i % 11) * 0.3 - 1.5).collect();
    let tokens = [3usize, 0, 19];
    let run = |device: Device| {
        let xs = logits(&x, 3, 20, &device).require_grad();
        let lp = token_logprobs(xs.clone().mul_scalar(0.5).exp(), ids(&tokens, &device), 0.7);
        to_f32_vec(xs.grad(&lp.sum().backward()).expect("tracked"))
    };
    rlhf_testkit::assert_checkpointing_keeps_the_gradient(run);
}

/// The backward writes the gradient over the logits only when nothing else holds them: logits a
/// caller still holds keep their values.
#[test]
fn logits_the_caller_holds_are_not_overwritten() {
    let device = Device::flex().autodiff();
    let values: Vec<f32> = (0..40).map(|i| (i % 7) as f32 * 0.5).collect();
    let x =
        Tensor::<3>::from_data(TensorData::new(values.clone(), [1, 2, 20]), &device).require_grad();
    let lp = token_logprobs(x.clone(), ids(&[1, 5], &device), 1.0);
    let grads = lp.sum().backward();
    assert!(x.grad(&grads).is_some());
    assert_eq!(to_f32_vec(x), values);
}
