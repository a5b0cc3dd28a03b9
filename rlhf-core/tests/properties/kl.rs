//! KL estimators k1, k2, k3 of `lr = logπ − logπ_ref`.

use proptest::prelude::*;
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

    #[test]
    fn all_estimators_are_zero_when_the_logprobs_are_equal(p in tokens(4.0, 1)) {
        let dev = device();
        for est in [KlEstimator::K1, KlEstimator::K2, KlEstimator::K3] {
            let got = host(kl_estimate(t2(&p.a, p.shape(), &dev), t2(&p.a, p.shape(), &dev), est));
            prop_assert!(got.iter().all(|&k| k == 0.0), "{:?}: {:?}", est, got);
        }
    }
}
