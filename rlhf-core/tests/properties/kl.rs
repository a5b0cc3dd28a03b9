//! KL estimators k1, k2, k3 of `lr = logπ − logπ_ref`.

use proptest::prelude::*;
use rlhf_core::policy_loss::LOG_RATIO_LIMIT;
use rlhf_core::{KlEstimator, kl_estimate};

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
}
