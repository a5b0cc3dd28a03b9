//! KL estimators k1, k2, k3 of `lr = logπ − logπ_ref`.

use proptest::prelude::*;
use rlhf_core::policy_loss::LOG_RATIO_LIMIT;
use rlhf_core::{KlEstimator, bias_corrected_kl, kl_estimate};

use crate::common::*;

proptest! {
    #![proptest_config(config())]

    #[test]
    fn estimators_match_reference_and_are_nonnegative_where_promised(p in tokens(4.0, 1)) {
        let dev = device();
        let shape = p.shape();
        for (est, f) in [
            (KlEstimator::K1, (|lr: f64| lr) as fn(f64) -> f64),
            (KlEstimator::K2, |lr: f64| lr * lr / 2.0),
            (KlEstimator::K3, |lr: f64| (-lr).exp() - 1.0 + lr),
        ] {
            let got = host(kl_estimate(t2(&p.a, shape, &dev), t2(&p.b, shape, &dev), est));
            let expected: Vec<f64> = p.a.iter().zip(&p.b).map(|(a, b)| f(a - b)).collect();
            assert_close(&got, &expected, TOL)?;
            if est != KlEstimator::K1 {
                prop_assert!(got.iter().all(|&k| k >= 0.0), "{:?} went negative", est);
            }
        }
    }

    /// Log-ratios far beyond any that training meets (k3's `e^{−lr}` overflows f32 below
    /// lr ≈ −88) give finite estimates and gradients, and k3 stays exact within its limit.
    #[test]
    fn extreme_log_ratios_stay_finite(lr in prop::collection::vec(prop_oneof![Just(-1e4f64), Just(1e4), -200.0f64..200.0], 1..6)) {
        let dev = device().autodiff();
        let shape = [1, lr.len()];
        let zeros = vec![0.0; lr.len()];
        for est in [KlEstimator::K1, KlEstimator::K2, KlEstimator::K3] {
            let x = t2(&lr, shape, &dev).require_grad();
            let k = kl_estimate(x.clone(), t2(&zeros, shape, &dev), est);
            let grad = host(x.grad(&k.clone().sum().backward()).unwrap());
            let value = host(k);
            prop_assert!(value.iter().chain(&grad).all(|v| v.is_finite()), "{:?}: {:?} {:?}", est, value, grad);
        }
        let k3 = host(kl_estimate(t2(&lr, shape, &dev), t2(&zeros, shape, &dev), KlEstimator::K3));
        for (got, &l) in k3.iter().zip(&lr) {
            if l.abs() <= f64::from(LOG_RATIO_LIMIT) {
                let want = (-l).exp() - 1.0 + l;
                prop_assert!((got - want).abs() <= 1e-5 * want.abs().max(1.0), "k3({l}) = {got}, want {want}");
            }
        }
    }

    #[test]
    fn all_estimators_are_zero_when_the_logprobs_are_equal(p in tokens(4.0, 1)) {
        let dev = device();
        for est in [KlEstimator::K1, KlEstimator::K2, KlEstimator::K3] {
            let got = host(kl_estimate(t2(&p.a, p.shape(), &dev), t2(&p.a, p.shape(), &dev), est));
            prop_assert!(got.iter().all(|&k| k == 0.0), "{:?}: {:?}", est, got);
        }
    }

    /// The bias-corrected k3 term (TRL's `use_bias_correction_kl`) against an `f64` reading of
    /// `k3(logπ − logπ_ref)·exp(logπ − logπ_old)`: its value and its gradient in `logπ`,
    /// `[(1 − π_ref/π) + k3]·ρ`, over the real tokens; at `π = π_old` the gradient is `logπ −
    /// logπ_ref`, the unbiased reverse-KL gradient. With GSPO's sequence level the ratio is the
    /// exponential of the row's mean log-ratio over its real tokens, whatever the padded ones hold.
    #[test]
    fn the_bias_corrected_kl_weighs_k3_by_the_ratio_and_gives_the_reverse_kl_gradient(
        p in tokens(2.0, 1),
    ) {
        let dev = device().autodiff();
        let shape = p.shape();
        let (mask, real) = (t2(&p.maskf(), shape, &dev), p.maskf());
        let k3 = |lr: f64| (-lr).exp() - 1.0 + lr;
        // logπ = a, logπ_ref = b, logπ_old = c (junk where padded)
        let old = p.corrupt(&p.c);
        let a = t2(&p.a, shape, &dev).require_grad();
        let corrected = |old: &[f64], sequence: bool| {
            let k = kl_estimate(a.clone(), t2(&p.b, shape, &dev), KlEstimator::K3);
            let lr = a.clone().sub(t2(old, shape, &dev));
            bias_corrected_kl(k, lr, mask.clone(), sequence)
        };
        let out = corrected(&old, false);
        let grad = host(a.grad(&out.clone().mul(mask.clone()).sum().backward()).unwrap());
        let value = host(out);
        for i in 0..p.a.len() {
            prop_assert!(value[i].is_finite() && grad[i].is_finite());
            if !p.mask[i] {
                prop_assert_eq!(grad[i], 0.0);
                continue;
            }
            let (lr, rho) = (p.a[i] - p.b[i], (p.a[i] - p.c[i]).exp());
            let want = k3(lr) * rho;
            prop_assert!((value[i] - want).abs() <= TOL * (1.0 + want.abs()), "value {} want {want}", value[i]);
            let want_grad = ((1.0 - (-lr).exp()) + k3(lr)) * rho;
            prop_assert!((grad[i] - want_grad).abs() <= TOL * (1.0 + want_grad.abs()), "grad {} want {want_grad}", grad[i]);
        }
        // on-policy: the reverse KL's gradient
        let on = corrected(&p.a, false);
        let grad = host(a.grad(&on.mul(mask.clone()).sum().backward()).unwrap());
        let want: Vec<f64> = (0..p.a.len()).map(|i| (p.a[i] - p.b[i]) * real[i]).collect();
        assert_close(&grad, &want, TOL)?;
        // sequence level: one ratio per row, from its real tokens only
        let value = host(corrected(&old, true));
        for r in 0..p.batch {
            let row = r * p.seq..(r + 1) * p.seq;
            let n = real[row.clone()].iter().sum::<f64>().max(1.0);
            let mean: f64 = row.clone().map(|i| (p.a[i] - p.c[i]) * real[i]).sum::<f64>() / n;
            for i in row.filter(|&i| p.mask[i]) {
                let want = k3(p.a[i] - p.b[i]) * mean.exp();
                prop_assert!((value[i] - want).abs() <= TOL * (1.0 + want.abs()), "sequence: {} want {want}", value[i]);
            }
        }
    }
}
