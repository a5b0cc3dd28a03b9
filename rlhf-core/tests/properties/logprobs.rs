//! `logp_t = log_softmax(logits_t / T)[y_t]` and `H_t = −Σ p log p` of the same tempered distribution.

use proptest::prelude::*;
use rlhf_core::{entropy_from_logits, token_logprobs, token_logprobs_and_entropy};

use crate::common::*;

fn log_softmax_ref(row: &[f64], temperature: f64) -> Vec<f64> {
    let scaled: Vec<f64> = row.iter().map(|l| l / temperature).collect();
    let max = scaled.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + scaled.iter().map(|s| (s - max).exp()).sum::<f64>().ln();
    scaled.iter().map(|s| s - lse).collect()
}

fn problem() -> impl Strategy<Value = (usize, usize, usize, Vec<f64>, Vec<usize>, f64)> {
    (1usize..=3, 1usize..=5, 2usize..=7).prop_flat_map(|(b, t, v)| {
        (
            Just(b),
            Just(t),
            Just(v),
            prop::collection::vec(-6.0f64..6.0, b * t * v),
            prop::collection::vec(0..v, b * t),
            0.3f64..2.0,
        )
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn token_logprobs_match_tempered_log_softmax((b, t, v, logits, tokens, temp) in problem()) {
        let dev = device();
        let got = host(token_logprobs(t3(&logits, [b, t, v], &dev), ids2(&tokens, [b, t], &dev), temp as f32));
        let expected: Vec<f64> = (0..b * t)
            .map(|i| log_softmax_ref(&logits[i * v..(i + 1) * v], temp)[tokens[i]])
            .collect();
        assert_close(&got, &expected, TOL)?;
        // log-probabilities are never positive
        prop_assert!(got.iter().all(|&x| x <= 1e-6));
    }

    #[test]
    fn entropy_matches_reference_and_is_bounded((b, t, v, logits, _tokens, temp) in problem()) {
        let dev = device();
        let got = host(entropy_from_logits(t3(&logits, [b, t, v], &dev), temp as f32));
        let expected: Vec<f64> = (0..b * t)
            .map(|i| {
                let lp = log_softmax_ref(&logits[i * v..(i + 1) * v], temp);
                -lp.iter().map(|l| l.exp() * l).sum::<f64>()
            })
            .collect();
        assert_close(&got, &expected, TOL)?;
        // 0 ≤ H ≤ log V
        for h in got {
            prop_assert!(h >= -1e-5 && h <= (v as f64).ln() + 1e-4);
        }
    }

    /// The entropy's gradient (an entropy bonus trains through it) is the central difference of
    /// the `f64` entropy.
    #[test]
    fn entropy_gradient_matches_central_differences((b, t, v, logits, _tokens, temp) in problem()) {
        let dev = device().autodiff();
        let x = t3(&logits, [b, t, v], &dev).require_grad();
        let total = entropy_from_logits(x.clone(), temp as f32).sum();
        let grad = host(x.grad(&total.backward()).expect("the entropy depends on the logits"));
        let entropy_sum = |l: &[f64]| -> f64 {
            (0..b * t)
                .map(|i| {
                    let lp = log_softmax_ref(&l[i * v..(i + 1) * v], temp);
                    -lp.iter().map(|l| l.exp() * l).sum::<f64>()
                })
                .sum()
        };
        let h = 1e-5;
        let fd: Vec<f64> = (0..logits.len())
            .map(|i| {
                let (mut up, mut down) = (logits.clone(), logits.clone());
                up[i] += h;
                down[i] -= h;
                (entropy_sum(&up) - entropy_sum(&down)) / (2.0 * h)
            })
            .collect();
        assert_close(&grad, &fd, 1e-3)?;
    }

    /// One log-softmax for both gives what the two functions give apart, and the gradient of the
    /// log-probs is the same: the entropy (a diagnostic) sends none.
    #[test]
    fn logprobs_and_entropy_from_one_log_softmax_equal_the_two_apart((b, t, v, logits, tokens, temp) in problem()) {
        let ad = device().autodiff();
        let x = t3(&logits, [b, t, v], &ad).require_grad();
        let ids = ids2(&tokens, [b, t], &ad);
        let (lp, h) = token_logprobs_and_entropy(x.clone(), ids.clone(), temp as f32);
        assert_close(&host(lp.clone()), &host(token_logprobs(x.clone(), ids.clone(), temp as f32)), 1e-6)?;
        assert_close(&host(h.clone()), &host(entropy_from_logits(x.clone(), temp as f32)), 1e-6)?;
        let both = host(x.grad(&lp.sum().add(h.sum()).backward()).expect("the log-probs depend on x"));
        let y = t3(&logits, [b, t, v], &ad).require_grad();
        let alone = token_logprobs(y.clone(), ids, temp as f32).sum().backward();
        let alone = host(y.grad(&alone).expect("the log-probs depend on y"));
        assert_close(&both, &alone, 1e-6)?;
    }
}

#[test]
fn temperature_one_is_plain_log_softmax_and_uniform_logits_give_log_v() {
    let dev = device();
    let logits = t3(&[0.0, 0.0, 0.0, 0.0], [1, 1, 4], &dev);
    let lp = host(token_logprobs(
        logits.clone(),
        ids2(&[2], [1, 1], &dev),
        1.0,
    ));
    assert!((lp[0] + 4f64.ln()).abs() < 1e-6);
    let h = host(entropy_from_logits(logits, 0.7));
    assert!((h[0] - 4f64.ln()).abs() < 1e-5);
}
