//! The generalised JSD of distillation, `D_β(p_s ‖ p_t)` with `m = (1 − β)·p_s + β·p_t`:
//! `β·KL(p_t ‖ m) + (1 − β)·KL(p_s ‖ m)`, the forward KL `KL(p_t ‖ p_s)` at `β = 0` and the
//! reverse KL `KL(p_s ‖ p_t)` at `β = 1`, both distributions at temperature `T`.

use proptest::prelude::*;
use rlhf_core::generalized_jsd;

use crate::common::*;

fn softmax_ref(row: &[f64], temperature: f64) -> Vec<f64> {
    let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = row
        .iter()
        .map(|l| ((l - max) / temperature).exp())
        .collect();
    let z: f64 = e.iter().sum();
    e.iter().map(|x| x / z).collect()
}

fn kl_ref(p: &[f64], q: &[f64]) -> f64 {
    p.iter()
        .zip(q)
        .filter(|(p, _)| **p > 0.0)
        .map(|(p, q)| p * (p / q).ln())
        .sum()
}

/// The spec's `D_β` of one position's logits, in f64.
fn jsd_ref(student: &[f64], teacher: &[f64], beta: f64, temperature: f64) -> f64 {
    let ps = softmax_ref(student, temperature);
    let pt = softmax_ref(teacher, temperature);
    if beta == 0.0 {
        return kl_ref(&pt, &ps);
    }
    if beta == 1.0 {
        return kl_ref(&ps, &pt);
    }
    let m: Vec<f64> = ps
        .iter()
        .zip(&pt)
        .map(|(s, t)| (1.0 - beta) * s + beta * t)
        .collect();
    beta * kl_ref(&pt, &m) + (1.0 - beta) * kl_ref(&ps, &m)
}

/// `[b, s, v]` logits of a student and a teacher, β (a third of the cases at each end) and `T`.
#[allow(clippy::type_complexity)]
fn problem() -> impl Strategy<Value = (usize, usize, usize, Vec<f64>, Vec<f64>, f64, f64)> {
    (1usize..=3, 1usize..=4, 2usize..=7).prop_flat_map(|(b, s, v)| {
        (
            Just(b),
            Just(s),
            Just(v),
            prop::collection::vec(-6.0f64..6.0, b * s * v),
            prop::collection::vec(-6.0f64..6.0, b * s * v),
            prop_oneof![Just(0.0), Just(1.0), 0.01f64..0.99],
            0.3f64..2.0,
        )
    })
}

fn per_position(
    (b, s, v): (usize, usize, usize),
    student: &[f64],
    teacher: &[f64],
    beta: f64,
    temperature: f64,
) -> Vec<f64> {
    (0..b * s)
        .map(|i| {
            let r = i * v..(i + 1) * v;
            jsd_ref(&student[r.clone()], &teacher[r], beta, temperature)
        })
        .collect()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn matches_the_reference_and_is_nonnegative((b, s, v, zs, zt, beta, temp) in problem()) {
        let dev = device();
        let got = host(generalized_jsd(t3(&zs, [b, s, v], &dev), t3(&zt, [b, s, v], &dev), beta, temp as f32));
        assert_close(&got, &per_position((b, s, v), &zs, &zt, beta, temp), TOL)?;
        prop_assert!(got.iter().all(|&d| d >= -1e-5), "{:?}", got);
        // a mixture is never further than the entropy of its weights: at most ln 2
        if beta > 0.0 && beta < 1.0 {
            let bound = -beta * beta.ln() - (1.0 - beta) * (1.0 - beta).ln();
            prop_assert!(got.iter().all(|&d| d <= bound + 1e-5), "{:?} > {}", got, bound);
        }
    }

    /// Swapping the models swaps the divergence's ends: `D_β(s ‖ t) = D_{1−β}(t ‖ s)` (the forward
    /// KL of one order is the reverse KL of the other), and a student that is its teacher is at
    /// the minimum: no divergence, no gradient.
    #[test]
    fn swapping_the_models_mirrors_beta_and_equal_models_give_zero((b, s, v, zs, zt, beta, temp) in problem()) {
        let dev = device();
        let shape = [b, s, v];
        let d = |x: &[f64], y: &[f64], beta: f64| host(generalized_jsd(t3(x, shape, &dev), t3(y, shape, &dev), beta, temp as f32));
        assert_close(&d(&zs, &zt, beta), &d(&zt, &zs, 1.0 - beta), 1e-5)?;
        prop_assert!(d(&zs, &zs, beta).iter().all(|x| x.abs() < 1e-5));
        let ad = device().autodiff();
        let x = t3(&zs, shape, &ad).require_grad();
        let out = generalized_jsd(x.clone(), t3(&zs, shape, &ad), beta, temp as f32);
        let g = host(x.grad(&out.sum().backward()).expect("the divergence depends on the student"));
        prop_assert!(g.iter().all(|x| x.abs() < 1e-5), "{:?}", g);
    }

    /// The gradient with respect to the student's logits is the reference's, by central
    /// differences, with the teacher's logits a constant from a device without autodiff, as the
    /// trainer passes a frozen model's output.
    #[test]
    fn the_gradient_is_the_references((b, s, v, zs, zt, beta, temp) in problem()) {
        let ad = device().autodiff();
        let shape = [b, s, v];
        let x = t3(&zs, shape, &ad).require_grad();
        let teacher = t3(&zt, shape, &ad.clone().without_autodiff());
        let out = generalized_jsd(x.clone(), teacher, beta, temp as f32);
        let got = host(x.grad(&out.sum().backward()).expect("the divergence depends on the student"));
        let h = 1e-5;
        let numeric: Vec<f64> = (0..zs.len())
            .map(|i| {
                let at = |d: f64| {
                    let mut z = zs.clone();
                    z[i] += d;
                    per_position((b, s, v), &z, &zt, beta, temp).iter().sum::<f64>()
                };
                (at(h) - at(-h)) / (2.0 * h)
            })
            .collect();
        assert_close(&got, &numeric, 1e-3)?;
    }

    /// Logits far beyond a trained model's (±10⁴, one token taking all the mass) give finite
    /// divergences and gradients, within the bounds above.
    #[test]
    fn extreme_logits_stay_finite(
        zs in prop::collection::vec(prop_oneof![Just(-1e4f64), Just(1e4), -50.0f64..50.0], 5),
        zt in prop::collection::vec(prop_oneof![Just(-1e4f64), Just(1e4), -50.0f64..50.0], 5),
        beta in prop_oneof![Just(0.0), Just(1.0), 0.01f64..0.99],
    ) {
        let ad = device().autodiff();
        let x = t3(&zs, [1, 1, 5], &ad).require_grad();
        let out = generalized_jsd(x.clone(), t3(&zt, [1, 1, 5], &ad), beta, 1.0);
        let g = host(x.grad(&out.clone().sum().backward()).unwrap());
        let value = host(out);
        prop_assert!(value.iter().chain(&g).all(|v| v.is_finite()), "{:?} {:?}", value, g);
        prop_assert!(value[0] >= -1e-3, "{:?}", value);
    }
}

/// Two distributions on disjoint tokens: the JSD (β = ½) is ln 2, its most.
#[test]
fn disjoint_distributions_are_ln_2_apart() {
    let dev = device();
    let s = t3(&[30.0, -30.0], [1, 1, 2], &dev);
    let t = t3(&[-30.0, 30.0], [1, 1, 2], &dev);
    let d = host(generalized_jsd(s, t, 0.5, 1.0));
    assert!((d[0] - 2f64.ln()).abs() < 1e-4, "{d:?}");
}
