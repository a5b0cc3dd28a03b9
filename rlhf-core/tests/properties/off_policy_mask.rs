//! DeepSeek-V3.2's off-policy sequence mask (TRL's `off_policy_mask_threshold`) against an `f64`
//! reading of its rule, with its invariants: padding never counts, a non-negative advantage is
//! always kept, an on-policy batch keeps every real token, extreme values give a 0/1 mask, and an
//! unscored (NaN) token counts no drift.

use proptest::prelude::*;
use rlhf_core::off_policy_mask;

use crate::common::*;

/// The mean over row `i`'s real tokens of `sampler − new` (0 for a row without one).
fn drift(p: &Tokens, new: &[f64], sampler: &[f64], i: usize) -> f64 {
    let ks: Vec<usize> = (i * p.seq..(i + 1) * p.seq)
        .filter(|&k| p.mask[k])
        .collect();
    ks.iter().map(|&k| sampler[k] - new[k]).sum::<f64>() / ks.len().max(1) as f64
}

/// Kept: real, and `A ≥ 0` or the row's drift at most `δ`.
fn reference(p: &Tokens, adv: &[f64], new: &[f64], sampler: &[f64], delta: f64) -> Vec<f64> {
    (0..p.batch * p.seq)
        .map(|k| {
            let keep = adv[k] >= 0.0 || drift(p, new, sampler, k / p.seq) <= delta;
            f64::from(u8::from(p.mask[k] && keep))
        })
        .collect()
}

fn run(p: &Tokens, adv: &[f64], new: &[f64], sampler: &[f64], delta: f64) -> Vec<f64> {
    let (dev, s) = (device(), p.shape());
    rlhf_core::host::to_f64_vec(off_policy_mask(
        t2(adv, s, &dev),
        t2(new, s, &dev),
        t2(sampler, s, &dev),
        t2(&p.maskf(), s, &dev),
        delta as f32,
    ))
}

proptest! {
    #![proptest_config(config())]

    /// The mask is the reference's whatever the padding holds, and keeps every real token whose
    /// advantage is not negative.
    #[test]
    fn the_mask_drops_negative_advantages_of_drifted_responses(
        p in tokens(1.0, 1),
        delta in 0.0f64..0.5,
    ) {
        // the sampler's log-probs: the policy's, shifted by up to ±1 per token
        let sampler: Vec<f64> = p.a.iter().zip(&p.b).map(|(a, b)| a + b).collect();
        // the rule's comparison is well defined: no row's drift within rounding of δ
        prop_assume!((0..p.batch).all(|i| (drift(&p, &p.a, &sampler, i) - delta).abs() > 1e-4));
        let got = run(&p, &p.c, &p.a, &sampler, delta);
        prop_assert_eq!(&got, &reference(&p, &p.c, &p.a, &sampler, delta));
        let dirty = run(&p, &p.corrupt(&p.c), &p.corrupt(&p.a), &p.corrupt(&sampler), delta);
        prop_assert_eq!(&dirty, &got, "padding changed the mask");
        for k in (0..got.len()).filter(|&k| p.mask[k] && p.c[k] >= 0.0) {
            prop_assert_eq!(got[k], 1.0, "a non-negative advantage was dropped");
        }
    }

    /// On-policy (the sampler's log-probs are the policy's), every real token is kept at any
    /// `δ ≥ 0`.
    #[test]
    fn an_on_policy_batch_keeps_every_real_token(p in tokens(1.0, 1), delta in 0.0f64..0.5) {
        prop_assert_eq!(run(&p, &p.c, &p.a, &p.a, delta), p.maskf());
    }
}

/// Log-probs of −10⁴, infinite and NaN values at padded positions: the mask is still 0/1, and the
/// rows' drifts decide it (row 0 far above δ, row 1 far below).
#[test]
fn extreme_log_probs_give_a_zero_one_mask() {
    let p = Tokens {
        batch: 2,
        seq: 3,
        a: vec![-1e4, -1e4, f64::NAN, 0.0, -1e4, f64::INFINITY],
        b: vec![0.0, 0.0, f64::NAN, -1e4, 0.0, f64::NEG_INFINITY],
        c: vec![-1.0, 2.0, f64::NAN, -1.0, -1.0, f64::NAN],
        mask: vec![true, true, false, true, true, false],
        junk: vec![0.0; 6],
    };
    // row 0: sampler 0 against policy −10⁴, a drift of 10⁴: its negative advantage is dropped
    // row 1: a drift of (−10⁴ + 10⁴)/2 = 0: kept
    let got = run(&p, &p.c, &p.a, &p.b, 0.5);
    assert_eq!(got, vec![0.0, 1.0, 0.0, 1.0, 1.0, 0.0]);
}

/// A real token whose sampler log-prob is NaN counts 0 in its response's drift, as TRL's
/// `nan_to_num`: one unscored token does not drop a response by itself.
#[test]
fn an_unscored_token_is_no_evidence_of_drift() {
    let p = Tokens {
        batch: 1,
        seq: 3,
        a: vec![-1.0, -2.0, -3.0],
        b: vec![f64::NAN, -2.0, -2.5],
        c: vec![-1.0; 3],
        mask: vec![true; 3],
        junk: vec![0.0; 3],
    };
    // drift (0 + 0 + 0.5)/3 = 1/6: kept at δ 0.2, dropped at δ 0.1
    assert_eq!(run(&p, &p.c, &p.a, &p.b, 0.2), vec![1.0; 3]);
    assert_eq!(run(&p, &p.c, &p.a, &p.b, 0.1), vec![0.0; 3]);
}
