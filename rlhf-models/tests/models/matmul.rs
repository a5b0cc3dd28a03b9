//! The products of `rlhf_models::matmul` against the product written in f64 from its definition
//! (strided, transposed and broadcast operands), their gradients `g·Bᵀ` and `Aᵀ·g` through burn's
//! autodiff, the linear layer against burn's `Linear`, and the cases that keep burn's `matmul`.

use burn::nn::LinearConfig;
use burn::tensor::{Device, FloatDType, Tensor, TensorData};
use proptest::prelude::*;
use rlhf_core::host::to_f32_vec;
use rlhf_models::matmul::{Operand, linear_layer, matmul, products};

/// `a · b` for row-major `a` `m × k` and `b` `k × n`, in f64.
fn product_ref(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = (0..k)
                .map(|l| f64::from(a[i * k + l]) * f64::from(b[l * n + j]))
                .sum();
        }
    }
    out
}

/// `x`'s transpose, `rows × cols` → `cols × rows`.
fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..cols * rows)
        .map(|i| x[(i % rows) * cols + i / rows])
        .collect()
}

fn close(got: &[f32], want: &[f64]) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.len(), want.len());
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        prop_assert!(
            (f64::from(g) - w).abs() <= 1e-4 * (1.0 + w.abs()),
            "value {i}: {g} against {w}"
        );
    }
    Ok(())
}

/// Batches, `m`, `k`, `n` (zero included) and the values of both operands.
fn problem() -> impl Strategy<Value = (usize, usize, usize, usize, Vec<f32>, Vec<f32>)> {
    (1usize..=3, 0usize..=6, 0usize..=6, 0usize..=6).prop_flat_map(|(batches, m, k, n)| {
        (
            Just(batches),
            Just(m),
            Just(k),
            Just(n),
            prop::collection::vec(-4.0f32..4.0, batches * m * k),
            prop::collection::vec(-4.0f32..4.0, batches * k * n),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Each batch's product, with either operand stored transposed (column-major) and after a
    /// gap at the start of its buffer.
    #[test]
    fn products_multiply_as_defined(
        (batches, m, k, n, a, b) in problem(),
        lhs_transposed in any::<bool>(),
        rhs_transposed in any::<bool>(),
        gap in 0usize..3,
    ) {
        // each operand's buffer: `gap` values, then its matrices, row- or column-major
        let stored = |x: &[f32], rows: usize, cols: usize, transposed: bool| {
            let mut data = vec![f32::NAN; gap];
            for i in 0..batches {
                let matrix = &x[i * rows * cols..][..rows * cols];
                if transposed {
                    data.extend(transpose(matrix, rows, cols));
                } else {
                    data.extend_from_slice(matrix);
                }
            }
            let starts: Vec<usize> = (0..batches).map(|i| gap + i * rows * cols).collect();
            let (row_stride, col_stride) = if transposed { (1, rows as isize) } else { (cols as isize, 1) };
            (data, starts, row_stride, col_stride)
        };
        let (ld, ls, lr, lc) = stored(&a, m, k, lhs_transposed);
        let (rd, rs, rr, rc) = stored(&b, k, n, rhs_transposed);
        let got = products(
            Operand { data: &ld, starts: &ls, row_stride: lr, col_stride: lc },
            Operand { data: &rd, starts: &rs, row_stride: rr, col_stride: rc },
            m, k, n,
        );
        let want: Vec<f64> = (0..batches)
            .flat_map(|i| product_ref(&a[i * m * k..][..m * k], &b[i * k * n..][..k * n], m, k, n))
            .collect();
        close(&got, &want)?;
    }

    /// Through burn's autodiff the gradients of `Σ w ⊙ (A·B)` are `w·Bᵀ` and `Aᵀ·w`, with `B`
    /// given as a transposed view (as attention's `q·kᵀ` gives it).
    #[test]
    fn autodiff_sends_the_products_gradients((batches, m, k, n, a, b) in problem(), w_seed in 0u32..100) {
        let device = Device::flex().autodiff();
        let t3 = |v: Vec<f32>, s: [usize; 3]| Tensor::<3>::from_data(TensorData::new(v, s), &device);
        let w: Vec<f32> = (0..batches * m * n).map(|i| ((i as u32 * 7 + w_seed) % 11) as f32 * 0.3 - 1.5).collect();
        let bt: Vec<f32> = if k * n == 0 { vec![] } else { b.chunks(k * n).flat_map(|x| transpose(x, k, n)).collect() };
        let lhs = t3(a.clone(), [batches, m, k]).require_grad();
        let rhs_t = t3(bt, [batches, n, k]).require_grad();
        let y = matmul(lhs.clone(), rhs_t.clone().swap_dims(1, 2));
        let grads = y.mul(t3(w.clone(), [batches, m, n])).sum().backward();
        let (mut lhs_grad, mut rhs_grad) = (Vec::new(), Vec::new());
        for i in 0..batches {
            let (ai, bi, wi) = (&a[i * m * k..][..m * k], &b[i * k * n..][..k * n], &w[i * m * n..][..m * n]);
            lhs_grad.extend(product_ref(wi, &transpose(bi, k, n), m, n, k));
            // the gradient of the view's source, Bᵀ: (Aᵀ·w)ᵀ = wᵀ·A
            rhs_grad.extend(product_ref(&transpose(wi, m, n), ai, n, m, k));
        }
        close(&to_f32_vec(lhs.grad(&grads).expect("tracked")), &lhs_grad)?;
        close(&to_f32_vec(rhs_t.grad(&grads).expect("tracked")), &rhs_grad)?;
    }
}

fn values(n: usize, k: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * k) % 13) as f32 * 0.25 - 1.5).collect()
}

/// Each value within `tolerance · (1 + |want|)` of burn's.
fn assert_close_to(got: Vec<f32>, want: Vec<f32>, tolerance: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (g - w).abs() <= tolerance * (1.0 + w.abs()),
            "{what}, value {i}: {g} against {w}"
        );
    }
}

fn assert_close(got: Vec<f32>, want: Vec<f32>, what: &str) {
    assert_close_to(got, want, 1e-5, what);
}

/// A linear layer (with and without bias, on a `[batch, seq, d]` input) gives burn's `Linear`'s
/// output and gradients for the input, the weight and the bias.
#[test]
fn the_linear_layer_is_burns() {
    let device = Device::flex().autodiff();
    for bias in [true, false] {
        let layer = LinearConfig::new(6, 5).with_bias(bias).init(&device);
        let run = |ours: bool| {
            let x =
                Tensor::<3>::from_data(TensorData::new(values(2 * 3 * 6, 5), [2, 3, 6]), &device)
                    .require_grad();
            let y = if ours {
                linear_layer(&layer, x.clone())
            } else {
                layer.forward(x.clone())
            };
            let w =
                Tensor::<3>::from_data(TensorData::new(values(2 * 3 * 5, 7), [2, 3, 5]), &device);
            let out = to_f32_vec(y.clone());
            let grads = y.mul(w).sum().backward();
            let weight = to_f32_vec(layer.weight.val().grad(&grads).expect("tracked"));
            let b = layer
                .bias
                .as_ref()
                .map(|b| to_f32_vec(b.val().grad(&grads).expect("tracked")));
            (out, to_f32_vec(x.grad(&grads).expect("tracked")), weight, b)
        };
        let (ours, burns) = (run(true), run(false));
        assert_close(ours.0, burns.0, "output");
        assert_close(ours.1, burns.1, "input gradient");
        assert_close(ours.2, burns.2, "weight gradient");
        assert_eq!(ours.3.is_some(), bias);
        if let (Some(a), Some(b)) = (ours.3, burns.3) {
            assert_close(a, b, "bias gradient");
        }
    }
}

/// Operands whose batch dimensions differ broadcast as burn's `matmul` does, with the broadcast
/// operand's gradient summed; an operand expanded along a batch dimension (stride 0, as
/// grouped-query attention's keys are) multiplies as its copies would.
#[test]
fn broadcast_and_expanded_operands_are_burns() {
    let device = Device::flex().autodiff();
    let t3 = |v: Vec<f32>, s: [usize; 3]| Tensor::<3>::from_data(TensorData::new(v, s), &device);
    for expanded in [false, true] {
        let run = |ours: bool| {
            let a = t3(values(2 * 3 * 4, 5), [2, 3, 4]).require_grad();
            let b = t3(values(4 * 2, 3), [1, 4, 2]).require_grad();
            let rhs = if expanded {
                b.clone().expand([2, 4, 2])
            } else {
                b.clone()
            };
            let y = if ours {
                matmul(a.clone(), rhs)
            } else {
                a.clone().matmul(rhs)
            };
            let out = to_f32_vec(y.clone());
            let grads = y.mul(t3(values(12, 7), [2, 3, 2])).sum().backward();
            (
                out,
                to_f32_vec(a.grad(&grads).expect("tracked")),
                to_f32_vec(b.grad(&grads).expect("tracked")),
            )
        };
        let (ours, burns) = (run(true), run(false));
        assert_close(ours.0, burns.0, "output");
        assert_close(ours.1, burns.1, "left gradient");
        assert_close(ours.2, burns.2, "right gradient");
    }
}

/// Operands whose batch dimensions are permuted and reversed (negative strides), and products
/// large enough to split over threads (by batches, and inside `gemm`) or to take `gemm`'s
/// matrix–vector kernels, multiply as burn's `matmul` does.
#[test]
fn strided_batches_and_large_products_are_burns() {
    let device = Device::flex();
    let t4 = |v: Vec<f32>, s: [usize; 4]| Tensor::<4>::from_data(TensorData::new(v, s), &device);
    let a = t4(values(3 * 2 * 5 * 4, 5), [3, 2, 5, 4])
        .swap_dims(0, 1)
        .flip([0, 2]);
    let b = t4(values(2 * 3 * 4 * 6, 7), [2, 3, 4, 6]).flip([1]);
    assert_close(
        to_f32_vec(matmul(a.clone(), b.clone())),
        to_f32_vec(a.matmul(b)),
        "permuted and reversed batches",
    );
    for (batches, m, k, n) in [
        (8, 64, 64, 64),
        (2, 200, 200, 200),
        (1, 1, 300, 7),
        (3, 7, 300, 1),
    ] {
        let a = t4(values(batches * m * k, 5), [1, batches, m, k]);
        let b = t4(values(batches * k * n, 7), [1, batches, k, n]);
        assert_close_to(
            to_f32_vec(matmul(a.clone(), b.clone())),
            to_f32_vec(a.matmul(b)),
            1e-4,
            &format!("{batches} × {m} × {k} × {n}"),
        );
    }
}

/// With gradient checkpointing the kept operands may be recomputed (here both come from a
/// memory-bound `exp`, and each is kept for the other's gradient): the gradients are the same
/// either way.
#[test]
fn checkpointing_gives_the_same_gradient() {
    let run = |device: Device| {
        let t4 =
            |v: Vec<f32>, s: [usize; 4]| Tensor::<4>::from_data(TensorData::new(v, s), &device);
        let q = t4(values(2 * 2 * 3 * 4, 5), [2, 2, 3, 4]).require_grad();
        let k = t4(values(2 * 2 * 3 * 4, 3), [2, 2, 3, 4]).require_grad();
        let scores = matmul(
            q.clone().mul_scalar(0.5).exp(),
            k.clone().mul_scalar(0.5).exp().swap_dims(2, 3),
        );
        let grads = scores.sum().backward();
        let mut both = to_f32_vec(q.grad(&grads).expect("tracked"));
        both.extend(to_f32_vec(k.grad(&grads).expect("tracked")));
        both
    };
    rlhf_testkit::assert_checkpointing_keeps_the_gradient(run);
}

/// A bf16 product is burn's; an empty inner dimension gives zeros.
#[test]
fn bf16_and_empty_products() {
    let device = Device::flex();
    let t2 = |v: Vec<f32>, s: [usize; 2]| Tensor::<2>::from_data(TensorData::new(v, s), &device);
    let (a, b) = (t2(values(12, 5), [3, 4]), t2(values(8, 3), [4, 2]));
    let bf16 = |t: Tensor<2>| t.cast(FloatDType::BF16);
    let ours = matmul(bf16(a.clone()), bf16(b.clone()));
    assert_eq!(ours.dtype(), burn::tensor::DType::BF16);
    assert_eq!(
        to_f32_vec(ours.cast(FloatDType::F32)),
        to_f32_vec(bf16(a).matmul(bf16(b)).cast(FloatDType::F32))
    );
    let empty = matmul(t2(vec![], [3, 0]), t2(vec![], [0, 2]));
    assert_eq!(to_f32_vec(empty), vec![0.0; 6]);
}
