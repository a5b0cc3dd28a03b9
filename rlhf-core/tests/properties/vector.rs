//! `rlhf_core::vector`: `exp` without libm against f64, over the whole range where it is not
//! clamped.

#[test]
fn exp_is_within_2e_7_relative_of_f64() {
    let (lo, hi, n) = (-87.0f64, 88.0f64, 400_000);
    for i in 0..=n {
        let x = (lo + (hi - lo) * f64::from(i) / f64::from(n)) as f32;
        let want = f64::from(x).exp();
        let rel = (f64::from(rlhf_core::vector::exp(x)) - want).abs() / want;
        assert!(rel <= 2e-7, "exp({x}): relative error {rel:.3e}");
    }
}

#[test]
fn exp_is_zero_below_its_range_finite_above_it_and_nan_for_nan() {
    use rlhf_core::vector::exp;
    for x in [f32::NEG_INFINITY, f32::MIN, -1e6, -87.5] {
        assert_eq!(exp(x), 0.0, "exp({x})");
    }
    let top = exp(88.0);
    assert!(top.is_finite() && top > 1e38, "exp(88) = {top}");
    for x in [88.5, 1e6, f32::MAX, f32::INFINITY] {
        assert_eq!(exp(x), top, "exp({x})");
    }
    assert!(exp(f32::NAN).is_nan());
}
