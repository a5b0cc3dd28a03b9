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
