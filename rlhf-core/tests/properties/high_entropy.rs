//! The high-entropy token selection (TRL's `top_entropy_quantile`) against an `f64` reading of
//! `torch.quantile`'s linear interpolation, with its invariants: padding never counts, `ρ = 1`
//! keeps every real token, and about the share `ρ` of the real tokens is kept.

use proptest::prelude::*;
use rlhf_core::high_entropy_mask;

use crate::common::*;

/// `torch.quantile(values, q)` with its default linear interpolation: `x = q·(n − 1)` over the
/// sorted values, `v[⌊x⌋] + (x − ⌊x⌋)·(v[⌈x⌉] − v[⌊x⌋])`.
fn torch_quantile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let x = q * (v.len() - 1) as f64;
    let (i, j) = (x.floor() as usize, x.ceil() as usize);
    v[i] + (x - i as f64) * (v[j] - v[i])
}

/// The selection in plain numbers: real and at least the `1 − ρ` quantile of the real values
/// (as the device stores them, in `f32`).
fn reference(h: &[f64], mask: &[bool], rho: f64) -> Vec<f64> {
    let stored: Vec<f64> = h.iter().map(|&x| f64::from(x as f32)).collect();
    let real: Vec<f64> = stored
        .iter()
        .zip(mask)
        .filter(|&(_, &m)| m)
        .map(|(&x, _)| x)
        .collect();
    let threshold = torch_quantile(&real, 1.0 - f64::from(rho as f32));
    stored
        .iter()
        .zip(mask)
        .map(|(&x, &m)| f64::from(u8::from(m && x >= threshold)))
        .collect()
}

fn run(h: &[f64], mask: &[bool], shape: [usize; 2], rho: f64) -> Vec<f64> {
    let dev = device();
    let m = t2(&mask_f(mask), shape, &dev);
    rlhf_core::host::to_f64_vec(high_entropy_mask(t2(h, shape, &dev), m, rho as f32))
}

proptest! {
    #![proptest_config(config())]

    /// The selection is the reference's, whatever the padding holds; with distinct entropies
    /// it keeps between `n − ⌈x⌉` and `n − ⌊x⌋` of the `n` real tokens (`x = (1 − ρ)(n − 1)`).
    #[test]
    fn the_selection_is_the_quantile_cut_of_the_real_tokens(
        p in tokens(1.0, 1),
        rho in 0.0f64..=1.0,
    ) {
        // entropies are ≥ 0
        let h: Vec<f64> = p.a.iter().map(|x| 3.0 * x.abs()).collect();
        let got = run(&h, &p.mask, p.shape(), rho);
        prop_assert_eq!(&got, &reference(&h, &p.mask, rho));
        prop_assert_eq!(&run(&p.corrupt(&h), &p.mask, p.shape(), rho), &got, "padding changed it");
        let n = p.mask.iter().filter(|&&m| m).count();
        let kept = got.iter().sum::<f64>() as usize;
        let x = (1.0 - f64::from(rho as f32)) * (n - 1) as f64;
        prop_assert!(kept >= n - x.ceil() as usize, "kept {kept} of {n} at ρ {rho}");
        let mut real: Vec<f64> = h.iter().zip(&p.mask).filter(|&(_, &m)| m).map(|(&x, _)| x as f32 as f64).collect();
        real.sort_by(f64::total_cmp);
        real.dedup();
        if real.len() == n {
            prop_assert!(kept <= n - x.floor() as usize, "kept {kept} of {n} at ρ {rho}");
        }
        prop_assert!(got.iter().zip(&p.mask).all(|(&s, &m)| m || s == 0.0), "a pad was kept");
    }

    /// `ρ = 1` keeps every real token and no pad.
    #[test]
    fn a_share_of_one_keeps_every_real_token(p in tokens(1.0, 1)) {
        let h: Vec<f64> = p.a.iter().map(|x| x.abs()).collect();
        prop_assert_eq!(run(&h, &p.mask, p.shape(), 1.0), p.maskf());
    }
}

/// No real token: nothing is kept. Entropies of 10³⁰ and 0 side by side: the cut stays finite
/// and the largest is kept.
#[test]
fn empty_and_extreme_inputs() {
    let h = [1e30, 0.0, 5.0, 1e-30];
    assert_eq!(run(&h, &[false; 4], [2, 2], 0.5), vec![0.0; 4]);
    let kept = run(&h, &[true; 4], [2, 2], 0.25);
    assert_eq!(kept, vec![1.0, 0.0, 0.0, 0.0]);
}
