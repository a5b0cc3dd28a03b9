//! Masked mean, variance and whitening over the response mask.

use proptest::prelude::*;
use rlhf_core::{masked_mean, masked_sum, masked_var, whiten};

use crate::common::*;

fn mean_ref(x: &[f64], m: &[bool]) -> f64 {
    let (s, n) = x
        .iter()
        .zip(m)
        .filter(|(_, m)| **m)
        .fold((0.0, 0.0), |(s, n), (x, _)| (s + x, n + 1.0));
    s / n
}

fn var_ref(x: &[f64], m: &[bool], unbiased: bool) -> f64 {
    let mu = mean_ref(x, m);
    let n = m.iter().filter(|&&b| b).count() as f64;
    let v = x
        .iter()
        .zip(m)
        .filter(|(_, m)| **m)
        .map(|(x, _)| (x - mu).powi(2))
        .sum::<f64>()
        / n;
    if unbiased {
        v * n / (n - 1.0).max(1.0)
    } else {
        v
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn mean_sum_and_var_match_reference(p in tokens(5.0, 1)) {
        let dev = device();
        let x = t2(&p.a, p.shape(), &dev);
        let m = t2(&p.maskf(), p.shape(), &dev);
        let sum_ref: f64 = p.a.iter().zip(&p.mask).filter(|(_, m)| **m).map(|(x, _)| x).sum();
        assert_close(&[scalar(masked_sum(x.clone(), m.clone()))], &[sum_ref], TOL)?;
        assert_close(&[scalar(masked_mean(x.clone(), m.clone()))], &[mean_ref(&p.a, &p.mask)], TOL)?;
        assert_close(&[scalar(masked_var(x.clone(), m.clone(), false))], &[var_ref(&p.a, &p.mask, false)], TOL)?;
        assert_close(&[scalar(masked_var(x, m, true))], &[var_ref(&p.a, &p.mask, true)], TOL)?;
    }

    #[test]
    fn whitening_matches_reference_and_has_mean_0_variance_1(p in tokens(5.0, 2)) {
        let mu = mean_ref(&p.a, &p.mask);
        let var = var_ref(&p.a, &p.mask, true);
        prop_assume!(var > 1e-2);
        let dev = device();
        let m = t2(&p.maskf(), p.shape(), &dev);
        for shift in [true, false] {
            let got = host(whiten(t2(&p.a, p.shape(), &dev), m.clone(), shift));
            let expected: Vec<f64> = p.a.iter().zip(&p.mask).map(|(x, &r)| {
                if !r { 0.0 } else {
                    let w = (x - mu) / (var + 1e-8).sqrt();
                    if shift { w } else { w + mu }
                }
            }).collect();
            assert_close(&got, &expected, TOL)?;
            if shift {
                prop_assert!(mean_ref(&got, &p.mask).abs() < 1e-4);
                prop_assert!((var_ref(&got, &p.mask, true) - 1.0).abs() < 1e-3);
            } else {
                // scale only: the mean is kept
                prop_assert!((mean_ref(&got, &p.mask) - mu).abs() < 1e-3 * (1.0 + mu.abs()));
            }
        }
    }

    #[test]
    fn masked_positions_never_change_a_result(p in tokens(5.0, 1)) {
        let dev = device();
        let m = t2(&p.maskf(), p.shape(), &dev);
        let clean = t2(&p.a, p.shape(), &dev);
        let dirty = t2(&p.corrupt(&p.a), p.shape(), &dev);
        prop_assert_eq!(scalar(masked_mean(clean.clone(), m.clone())), scalar(masked_mean(dirty.clone(), m.clone())));
        prop_assert_eq!(scalar(masked_var(clean.clone(), m.clone(), true)), scalar(masked_var(dirty.clone(), m.clone(), true)));
        prop_assert_eq!(host(whiten(clean, m.clone(), true)), host(whiten(dirty, m, true)));
    }
}

#[test]
fn nan_and_infinity_at_padded_positions_are_dropped() {
    let dev = device();
    let x = t2(&[1.0, f64::NAN, 3.0, f64::INFINITY], [1, 4], &dev);
    let m = t2(&[1.0, 0.0, 1.0, 0.0], [1, 4], &dev);
    assert_eq!(scalar(masked_mean(x.clone(), m.clone())), 2.0);
    assert_eq!(scalar(masked_var(x, m, false)), 1.0);
}
