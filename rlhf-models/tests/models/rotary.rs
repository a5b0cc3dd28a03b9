//! The rotary pass (`rlhf_models::rotary`) against the rotation written in f64 from its
//! definition, its gradient as the rotation's transpose, and, as tensors with autodiff, the
//! gradient burn's autodiff computes through it.

use burn::tensor::{Device, FloatDType, Tensor, TensorData};
use proptest::prelude::*;
use rlhf_core::host::to_f32_vec;
use rlhf_models::rotary::{RotaryShape, rotate, rotate_in_place};

/// `x·c + rotate_half(x)·s` over the first `dims` features of one row, in f64.
fn rotate_ref(x: &[f32], c: &[f32], s: &[f32], dims: usize) -> Vec<f64> {
    let h = dims / 2;
    let f = |v: f32| f64::from(v);
    (0..x.len())
        .map(|j| match j {
            j if j < h => f(x[j]) * f(c[j]) - f(x[j + h]) * f(s[j]),
            j if j < dims => f(x[j]) * f(c[j]) + f(x[j - h]) * f(s[j]),
            j => f(x[j]),
        })
        .collect()
}

/// A shape (batch, heads, seq, head_dim, dims) and values for `x`, a second tensor of its size,
/// and the two tables, whose halves differ (the loops may not assume they are equal).
fn problem() -> impl Strategy<Value = (usize, RotaryShape, Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>)>
{
    (
        1usize..=2,
        1usize..=3,
        1usize..=4,
        prop_oneof![Just(4usize), Just(8), Just(16), Just(20)],
    )
        .prop_flat_map(|(batch, heads, seq, head_dim)| {
            (0..=head_dim / 2).prop_flat_map(move |half| {
                let shape = RotaryShape {
                    heads,
                    seq,
                    head_dim,
                    dims: 2 * half,
                };
                let n = batch * heads * seq * head_dim;
                let table = batch * seq * 2 * half;
                (
                    Just(batch),
                    Just(shape),
                    prop::collection::vec(-3.0f32..3.0, n),
                    prop::collection::vec(-3.0f32..3.0, n),
                    prop::collection::vec(-1.0f32..1.0, table),
                    prop::collection::vec(-1.0f32..1.0, table),
                )
            })
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn the_pass_rotates_as_defined((_b, shape, x, _g, cos, sin) in problem()) {
        let mut got = x.clone();
        rotate_in_place(&mut got, &cos, &sin, shape, false);
        let RotaryShape { heads, seq, head_dim, dims } = shape;
        for (r, row) in x.chunks(head_dim).enumerate() {
            let (b, t) = (r / (heads * seq), r % seq);
            let at = (b * seq + t) * dims;
            let want = rotate_ref(row, &cos[at..at + dims], &sin[at..at + dims], dims);
            for (j, w) in want.iter().enumerate() {
                prop_assert!((f64::from(got[r * head_dim + j]) - w).abs() < 1e-5, "row {r}, feature {j}");
            }
        }
    }

    /// `⟨rotate(x), g⟩ = ⟨x, rotateᵀ(g)⟩`: the gradient pass is the rotation's transpose.
    #[test]
    fn the_gradient_is_the_transpose((_b, shape, x, g, cos, sin) in problem()) {
        let (mut rx, mut rtg) = (x.clone(), g.clone());
        rotate_in_place(&mut rx, &cos, &sin, shape, false);
        rotate_in_place(&mut rtg, &cos, &sin, shape, true);
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum::<f64>();
        let (lhs, rhs) = (dot(&rx, &g), dot(&x, &rtg));
        prop_assert!((lhs - rhs).abs() < 1e-4 * (1.0 + lhs.abs()), "{lhs} against {rhs}");
    }

    /// Through burn's autodiff the gradient of `Σ w·rotate(x)` is `rotateᵀ(w)`, and the tables
    /// take none.
    #[test]
    fn autodiff_sends_the_transpose((b, shape, x, w, cos, sin) in problem()) {
        let device = Device::flex().autodiff();
        let RotaryShape { heads, seq, head_dim, dims } = shape;
        let t4 = |v: &[f32], s: [usize; 4]| Tensor::<4>::from_data(TensorData::new(v.to_vec(), s), &device);
        let xs = t4(&x, [b, heads, seq, head_dim]).require_grad();
        let c = t4(&cos, [b, 1, seq, dims]).require_grad();
        let y = rotate(xs.clone(), c.clone(), t4(&sin, [b, 1, seq, dims]), dims);
        let grads = y.mul(t4(&w, [b, heads, seq, head_dim])).sum().backward();
        let mut want = w.clone();
        rotate_in_place(&mut want, &cos, &sin, shape, true);
        prop_assert_eq!(to_f32_vec(xs.grad(&grads).expect("tracked")), want);
        prop_assert!(c.grad(&grads).is_none());
    }
}

fn values(n: usize, k: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * k) % 13) as f32 * 0.25 - 1.5).collect()
}

/// With gradient checkpointing the input may be recomputed (here from a memory-bound `exp`):
/// the gradient is the same either way; and an input the caller holds keeps its values.
#[test]
fn checkpointing_gives_the_same_gradient_and_the_input_is_kept() {
    let run = |device: Device| {
        let t4 =
            |v: Vec<f32>, s: [usize; 4]| Tensor::<4>::from_data(TensorData::new(v, s), &device);
        let x = t4(values(64, 5), [1, 2, 4, 8]).require_grad();
        let (c, s) = (
            t4(values(16, 3), [1, 1, 4, 4]),
            t4(values(16, 7), [1, 1, 4, 4]),
        );
        let y = rotate(x.clone().mul_scalar(0.5).exp(), c.clone(), s.clone(), 4);
        let kept = rotate(x.clone(), c, s, 4);
        let grads = y.add(kept).sum().backward();
        assert_eq!(
            to_f32_vec(x.clone()),
            values(64, 5),
            "the caller's input is unchanged"
        );
        to_f32_vec(x.grad(&grads).expect("tracked"))
    };
    rlhf_testkit::assert_checkpointing_keeps_the_gradient(run);
}

/// A bf16 tensor rotates in f32 and comes back in bf16: the f32 result to bf16's precision.
#[test]
fn bf16_rotates_in_f32() {
    let device = Device::flex();
    let t4 = |v: Vec<f32>, s: [usize; 4]| Tensor::<4>::from_data(TensorData::new(v, s), &device);
    let (x, c, s) = (
        t4(values(64, 5), [1, 2, 4, 8]),
        t4(values(16, 3), [1, 1, 4, 4]),
        t4(values(16, 7), [1, 1, 4, 4]),
    );
    let f32s = to_f32_vec(rotate(x.clone(), c.clone(), s.clone(), 4));
    let bf16 = rotate(
        x.cast(FloatDType::BF16),
        c.cast(FloatDType::BF16),
        s.cast(FloatDType::BF16),
        4,
    );
    assert_eq!(bf16.dtype(), burn::tensor::DType::BF16);
    for (a, b) in f32s.iter().zip(to_f32_vec(bf16.cast(FloatDType::F32))) {
        assert!((a - b).abs() <= 0.02 * (1.0 + a.abs()), "{a} against {b}");
    }
}
