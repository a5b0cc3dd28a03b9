//! The GELU pass of `rlhf_models::gelu` against plain f64 references written from the
//! definitions, and against burn's own GELU as tensors (forward and gradient, strided input).

use burn::tensor::{Device, Tensor, TensorData, activation};
use proptest::prelude::*;
use rlhf_core::host::to_f32_vec;
use rlhf_models::gelu;

/// erf in f64: its Maclaurin series below 3, the continued fraction of erfc from 3 on.
fn erf_ref(x: f64) -> f64 {
    let a = x.abs();
    let r = if a < 3.0 {
        let (mut sum, mut term, mut k) = (a, a, 0.0);
        loop {
            k += 1.0;
            term *= -a * a / k;
            let add = term / (2.0 * k + 1.0);
            sum += add;
            if add.abs() < 1e-18 {
                break;
            }
        }
        sum * std::f64::consts::FRAC_2_SQRT_PI
    } else {
        // erfc(a) = e^{−a²}/√π · 1/(a + ½/(a + 1/(a + (3/2)/(a + …))))
        let mut f = 0.0;
        for k in (1..100).rev() {
            f = (f64::from(k) / 2.0) / (a + f);
        }
        1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / (a + f)
    };
    r.copysign(x)
}

fn gelu_ref(x: f64) -> f64 {
    0.5 * x * (1.0 + erf_ref(x / std::f64::consts::SQRT_2))
}

fn gelu_grad_ref(x: f64) -> f64 {
    let cdf = 0.5 * (1.0 + erf_ref(x / std::f64::consts::SQRT_2));
    let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
    cdf + x * pdf
}

/// `n + 1` points from `lo` to `hi`.
fn grid(lo: f64, hi: f64, n: usize) -> impl Iterator<Item = f32> {
    (0..=n).map(move |i| (lo + (hi - lo) * i as f64 / n as f64) as f32)
}

#[test]
fn erf_is_within_3e_7_of_the_f64_reference() {
    let mut worst = (0.0f64, 0.0f32);
    for x in grid(-10.0, 10.0, 400_000) {
        let err = (f64::from(gelu::erf(x)) - erf_ref(f64::from(x))).abs();
        if err > worst.0 {
            worst = (err, x);
        }
    }
    assert!(worst.0 <= 3e-7, "erf error {:.3e} at {}", worst.0, worst.1);
    // the reference itself: known values
    assert!((erf_ref(0.5) - 0.520_499_877_813_046_5).abs() < 1e-15);
    assert!((erf_ref(3.5) - 0.999_999_256_901_627_7).abs() < 1e-15);
}

#[test]
fn gelu_and_its_gradient_follow_the_f64_reference() {
    for x in grid(-12.0, 12.0, 200_000) {
        let xd = f64::from(x);
        let tol = 4e-7 * xd.abs().max(1.0);
        let (y, g) = (gelu::gelu_scalar(x), gelu::gelu_grad_scalar(x));
        assert!(
            (f64::from(y) - gelu_ref(xd)).abs() <= tol,
            "gelu({x}) = {y}"
        );
        assert!(
            (f64::from(g) - gelu_grad_ref(xd)).abs() <= tol,
            "gelu'({x}) = {g}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Any finite input gives a finite GELU and gradient; huge negative inputs give 0 and huge
    /// positive ones themselves.
    #[test]
    fn extreme_inputs_stay_finite(x in proptest::num::f32::NORMAL | proptest::num::f32::SUBNORMAL | proptest::num::f32::ZERO) {
        let (y, g) = (gelu::gelu_scalar(x), gelu::gelu_grad_scalar(x));
        prop_assert!(y.is_finite() && g.is_finite(), "gelu({}) = {}, gelu' = {}", x, y, g);
        if x < -20.0 {
            prop_assert!(y.abs() <= 1e-30 && g.abs() <= 1e-30);
        }
        if x > 20.0 {
            prop_assert!(y == x && g == 1.0);
        }
    }
}

#[test]
fn the_gradient_pass_needs_one_gradient_per_input() {
    let short = std::panic::catch_unwind(|| {
        let mut grad = vec![1.0; 3];
        gelu::gelu_backward_in_place(&[0.5; 4], &mut grad);
    });
    assert!(short.is_err());
}

#[test]
fn nan_stays_nan() {
    assert!(gelu::gelu_scalar(f32::NAN).is_nan());
    assert!(gelu::gelu_grad_scalar(f32::NAN).is_nan());
}

#[test]
fn the_vectorised_loops_equal_the_scalar_function_bit_for_bit() {
    // an odd length, so the loops' scalar tails run too
    let xs: Vec<f32> = grid(-9.0, 9.0, 1_036).collect();
    let grad: Vec<f32> = xs.iter().map(|x| 0.3 - x * 0.1).collect();
    let mut y = xs.clone();
    gelu::gelu_in_place(&mut y);
    let mut g = grad.clone();
    gelu::gelu_backward_in_place(&xs, &mut g);
    for i in 0..xs.len() {
        assert_eq!(
            y[i].to_bits(),
            gelu::gelu_scalar(xs[i]).to_bits(),
            "x = {}",
            xs[i]
        );
        let want = grad[i] * gelu::gelu_grad_scalar(xs[i]);
        assert_eq!(g[i].to_bits(), want.to_bits(), "x = {}", xs[i]);
    }
}

fn values(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 8.0)
        .collect()
}

/// On a strided (transposed) input, under autodiff: the same values and the same gradient as
/// burn's GELU, to f32 rounding.
#[test]
fn on_flex_the_pass_matches_burns_gelu_and_its_gradient() {
    let device = Device::flex().autodiff();
    let data = TensorData::new(values(6 * 7), [6, 7]);
    let weights = Tensor::<2>::from_data(TensorData::new(values(7 * 6), [7, 6]), &device);
    let run = |ours: bool| {
        let x = Tensor::<2>::from_data(data.clone(), &device).require_grad();
        let t = x.clone().transpose();
        let y = if ours {
            gelu::gelu(t)
        } else {
            activation::gelu(t)
        };
        let grads = y.clone().mul(weights.clone()).sum().backward();
        let gx = x.grad(&grads).expect("x is tracked");
        (to_f32_vec(y.inner()), to_f32_vec(gx))
    };
    let (ours, burns) = (run(true), run(false));
    for (a, b) in ours.0.iter().zip(&burns.0) {
        assert!(
            (a - b).abs() <= 1e-6 * b.abs().max(1.0),
            "gelu: {a} against {b}"
        );
    }
    for (a, b) in ours.1.iter().zip(&burns.1) {
        assert!(
            (a - b).abs() <= 1e-6 * b.abs().max(1.0),
            "gradient: {a} against {b}"
        );
    }
    // without autodiff too, and the input is left as it was
    let plain = Device::flex();
    let x = Tensor::<2>::from_data(data.clone(), &plain);
    let y = gelu::gelu(x.clone());
    assert_eq!(to_f32_vec(x), values(6 * 7));
    for (a, b) in to_f32_vec(y).iter().zip(values(42).iter()) {
        let want = gelu_ref(f64::from(*b)) as f32;
        assert!((a - want).abs() <= 1e-6 * want.abs().max(1.0));
    }
}

/// With gradient checkpointing the pass's input may be recomputed rather than kept (here it is
/// the output of a memory-bound `exp`): the gradient is the same either way.
#[test]
fn gradient_checkpointing_gives_the_same_gradient() {
    let run = |device: Device| {
        let x =
            Tensor::<2>::from_data(TensorData::new(values(6 * 7), [6, 7]), &device).require_grad();
        let y = gelu::gelu(x.clone().mul_scalar(0.5).exp())
            .mul_scalar(2.0)
            .sum();
        let grads = y.backward();
        to_f32_vec(x.grad(&grads).expect("x is tracked"))
    };
    let plain = run(Device::flex().autodiff());
    let checkpointing = run(Device::flex().autodiff().gradient_checkpointing());
    assert_eq!(plain, checkpointing);
    // and it is the chain rule's: 2·gelu'(e^{x/2})·e^{x/2}/2
    for (g, x) in plain.iter().zip(values(6 * 7)) {
        let h = (f64::from(x) / 2.0).exp();
        let want = 2.0 * gelu_grad_ref(h) * h / 2.0;
        assert!(
            (f64::from(*g) - want).abs() <= 1e-5 * want.abs().max(1.0),
            "{g} against {want}"
        );
    }
}
