//! The clipped policy and value losses, their diagnostics, and their gradients.

use proptest::prelude::*;
use rlhf_core::{clipped_policy_loss, clipped_value_loss};

use crate::common::*;

struct PolicyRef {
    loss: f64,
    approxkl: f64,
    clipfrac: f64,
    ratio_mean: f64,
}

/// `L_pg = masked_mean( max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)) )`, `ρ = exp(logπ_new − logπ_old)`.
fn policy_ref(new: &[f64], old: &[f64], adv: &[f64], m: &[bool], eps: f64) -> PolicyRef {
    let n = m.iter().filter(|&&b| b).count() as f64;
    let (mut loss, mut kl, mut clip, mut ratio) = (0.0, 0.0, 0.0, 0.0);
    for i in 0..new.len() {
        if !m[i] {
            continue;
        }
        let rho = (new[i] - old[i]).exp();
        let a = -adv[i] * rho;
        let b = -adv[i] * rho.clamp(1.0 - eps, 1.0 + eps);
        loss += a.max(b);
        clip += if b > a { 1.0 } else { 0.0 };
        kl += 0.5 * (new[i] - old[i]).powi(2);
        ratio += rho;
    }
    PolicyRef {
        loss: loss / n,
        approxkl: kl / n,
        clipfrac: clip / n,
        ratio_mean: ratio / n,
    }
}

/// `L_v = ½·masked_mean( max((V − R)², (V_old + clip(V − V_old, −ε, ε) − R)²) )`.
fn value_ref(v: &[f64], old: &[f64], ret: &[f64], m: &[bool], eps: f64) -> (f64, f64) {
    let n = m.iter().filter(|&&b| b).count() as f64;
    let (mut loss, mut clip) = (0.0, 0.0);
    for i in 0..v.len() {
        if !m[i] {
            continue;
        }
        let vc = old[i] + (v[i] - old[i]).clamp(-eps, eps);
        let (a, b) = ((v[i] - ret[i]).powi(2), (vc - ret[i]).powi(2));
        loss += a.max(b);
        clip += if b > a && (v[i] - old[i]).abs() > eps {
            1.0
        } else {
            0.0
        };
    }
    (0.5 * loss / n, clip / n)
}

/// Keeps cases away from the kinks of `max` and `clip`, where the gradient is not defined and a
/// finite difference straddles two branches. Clip counts are also discontinuous there.
fn far_from_kinks(new: &[f64], old: &[f64], m: &[bool], eps: f64, margin: f64) -> bool {
    (0..new.len()).filter(|&i| m[i]).all(|i| {
        let d = new[i] - old[i];
        let rho = d.exp();
        (rho - (1.0 - eps)).abs() > margin && (rho - (1.0 + eps)).abs() > margin && d.abs() > margin
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn policy_loss_and_diagnostics_match_reference(p in tokens(0.6, 1), eps in 0.05f64..0.4) {
        let old: Vec<f64> = p.b.iter().map(|x| x - 1.0).collect();
        let new: Vec<f64> = p.a.iter().zip(&old).map(|(a, o)| o + a).collect();
        prop_assume!(far_from_kinks(&new, &old, &p.mask, eps, 1e-4));
        let adv = p.c.clone();
        let dev = device();
        let s = p.shape();
        let out = clipped_policy_loss(t2(&new, s, &dev), t2(&old, s, &dev), t2(&adv, s, &dev), t2(&p.maskf(), s, &dev), eps as f32);
        let r = policy_ref(&new, &old, &adv, &p.mask, eps);
        assert_close(&[scalar(out.loss)], &[r.loss], TOL)?;
        assert_close(&[scalar(out.approxkl)], &[r.approxkl], TOL)?;
        assert_close(&[scalar(out.clipfrac)], &[r.clipfrac], TOL)?;
        assert_close(&[scalar(out.ratio_mean)], &[r.ratio_mean], TOL)?;
    }

    #[test]
    fn ratio_is_one_and_nothing_clips_when_policies_are_equal(p in tokens(3.0, 1)) {
        let dev = device();
        let s = p.shape();
        let out = clipped_policy_loss(t2(&p.a, s, &dev), t2(&p.a, s, &dev), t2(&p.c, s, &dev), t2(&p.maskf(), s, &dev), 0.2);
        prop_assert_eq!(scalar(out.ratio_mean), 1.0);
        prop_assert_eq!(scalar(out.approxkl), 0.0);
        prop_assert_eq!(scalar(out.clipfrac), 0.0);
        // the loss is then −masked_mean(A)
        let mean_a = p.c.iter().zip(&p.mask).filter(|(_, m)| **m).map(|(a, _)| a).sum::<f64>() / p.mask.iter().filter(|&&m| m).count() as f64;
        assert_close(&[scalar(out.loss)], &[-mean_a], TOL)?;
    }

    #[test]
    fn value_loss_matches_reference(p in tokens(2.0, 1), eps in 0.05f64..0.5) {
        let dev = device();
        let s = p.shape();
        let out = clipped_value_loss(t2(&p.a, s, &dev), t2(&p.b, s, &dev), t2(&p.c, s, &dev), t2(&p.maskf(), s, &dev), eps as f32);
        let (loss, clip) = value_ref(&p.a, &p.b, &p.c, &p.mask, eps);
        assert_close(&[scalar(out.loss)], &[loss], TOL)?;
        prop_assume!((0..p.a.len()).all(|i| ((p.a[i] - p.b[i]).abs() - eps).abs() > 1e-4));
        assert_close(&[scalar(out.clipfrac)], &[clip], TOL)?;
    }

    #[test]
    fn masked_advantages_and_values_never_change_the_losses(p in tokens(0.6, 1)) {
        let dev = device();
        let s = p.shape();
        let m = t2(&p.maskf(), s, &dev);
        let pl = |adv: &[f64], new: &[f64]| scalar(clipped_policy_loss(t2(new, s, &dev), t2(&p.b, s, &dev), t2(adv, s, &dev), m.clone(), 0.2).loss);
        prop_assert_eq!(pl(&p.c, &p.a), pl(&p.corrupt(&p.c), &p.corrupt(&p.a)));
        let vl = |v: &[f64], ret: &[f64]| scalar(clipped_value_loss(t2(v, s, &dev), t2(&p.b, s, &dev), t2(ret, s, &dev), m.clone(), 0.2).loss);
        prop_assert_eq!(vl(&p.a, &p.c), vl(&p.corrupt(&p.a), &p.corrupt(&p.c)));
    }

    #[test]
    fn policy_loss_gradient_matches_central_differences(p in tokens(0.6, 1), eps in 0.1f64..0.3) {
        let old = p.b.clone();
        let new: Vec<f64> = p.a.iter().zip(&old).map(|(a, o)| o + a).collect();
        prop_assume!(far_from_kinks(&new, &old, &p.mask, eps, 2e-2));
        let dev = device().autodiff();
        let s = p.shape();
        let x = t2(&new, s, &dev).require_grad();
        let loss = clipped_policy_loss(x.clone(), t2(&old, s, &dev), t2(&p.c, s, &dev), t2(&p.maskf(), s, &dev), eps as f32).loss;
        let grad = host(x.grad(&loss.backward()).expect("the loss depends on the new log-probs"));
        let h = 1e-5;
        let fd: Vec<f64> = (0..new.len()).map(|i| {
            let mut up = new.clone();
            let mut down = new.clone();
            up[i] += h;
            down[i] -= h;
            (policy_ref(&up, &old, &p.c, &p.mask, eps).loss - policy_ref(&down, &old, &p.c, &p.mask, eps).loss) / (2.0 * h)
        }).collect();
        assert_close(&grad, &fd, 1e-3)?;
    }

    #[test]
    fn value_loss_gradient_matches_central_differences(p in tokens(2.0, 1), eps in 0.1f64..0.5) {
        prop_assume!((0..p.a.len()).filter(|&i| p.mask[i]).all(|i| {
            let d = p.a[i] - p.b[i];
            (d.abs() - eps).abs() > 2e-2
                && ((p.a[i] - p.c[i]).abs() - (p.b[i] + d.clamp(-eps, eps) - p.c[i]).abs()).abs() > 2e-2
        }));
        let dev = device().autodiff();
        let s = p.shape();
        let v = t2(&p.a, s, &dev).require_grad();
        let loss = clipped_value_loss(v.clone(), t2(&p.b, s, &dev), t2(&p.c, s, &dev), t2(&p.maskf(), s, &dev), eps as f32).loss;
        let grad = host(v.grad(&loss.backward()).expect("the loss depends on the values"));
        let h = 1e-5;
        let fd: Vec<f64> = (0..p.a.len()).map(|i| {
            let mut up = p.a.clone();
            let mut down = p.a.clone();
            up[i] += h;
            down[i] -= h;
            (value_ref(&up, &p.b, &p.c, &p.mask, eps).0 - value_ref(&down, &p.b, &p.c, &p.mask, eps).0) / (2.0 * h)
        }).collect();
        assert_close(&grad, &fd, 1e-3)?;
    }
}

/// The old log-probs and the advantages are constants of the surrogate: the loss detaches them
/// itself, so a caller that passes tensors still attached to a graph (the critic's values in
/// the advantages, say) cannot leak a gradient into them.
#[test]
fn the_policy_loss_sends_no_gradient_to_old_logprobs_or_advantages() {
    let dev = device().autodiff();
    let new = t2(&[-1.0, -2.0, -0.5, -1.5], [2, 2], &dev).require_grad();
    let old = t2(&[-1.1, -1.8, -0.7, -1.5], [2, 2], &dev).require_grad();
    let adv = t2(&[0.5, -1.0, 2.0, 0.3], [2, 2], &dev).require_grad();
    let mask = t2(&[1.0, 1.0, 1.0, 0.0], [2, 2], &dev);
    let loss = clipped_policy_loss(new.clone(), old.clone(), adv.clone(), mask, 0.2).loss;
    let grads = loss.backward();
    assert!(new.grad(&grads).is_some());
    assert!(
        old.grad(&grads).is_none(),
        "a gradient reached the old log-probs"
    );
    assert!(
        adv.grad(&grads).is_none(),
        "a gradient reached the advantages"
    );
}
