//! Attention's softmax, `P = softmax(scale·S)` over the keys the mask leaves open, and its
//! gradient `dS = scale·P ⊙ (dP − rowsum(dP ⊙ P))`, each as one pass over the scores on
//! burn-flex.
//!
//! With autodiff, burn computes attention from its own ops (its fallback): scale, mask fill,
//! row maximum, subtraction, `exp`, row sum and division, each a pass over the
//! `[batch, heads, queries, keys]` scores with a tensor of its own, and as many steps again
//! backwards, where `exp`'s gradient calls `exp` a second time. On the study's small models
//! those passes, more than the two matrix products, were what attention cost
//! (`docs/perf-report.md`). Here the forward is one pass per row (mask, scale, maximum, `exp`,
//! sum, division) with [`rlhf_core::vector::exp`], and the backward one pass per row from the kept
//! `P`. Without autodiff the pass replaces burn-flex's own attention, which calls libm's `expf`
//! per score. A row whose keys are all blocked is all zeros, as in burn's fallback.

use rayon::prelude::*;

/// Scores per parallel task at least (a task's rows are whole rows).
const TASK: usize = 1 << 14;

/// `softmax(scale·s)` of every row of `keys` scores, in place: `blocked[i] != 0` blocks key `i`
/// (0 in the output); a row with every key blocked becomes all zeros, and a NaN among the open
/// scores makes its row NaN.
///
/// # Panics
/// When `keys` is 0, or `scores` and `blocked` differ in length or are not whole rows.
pub fn masked_softmax_in_place(scores: &mut [f32], blocked: &[u8], keys: usize, scale: f32) {
    let task = task_len(scores.len(), blocked.len(), keys, "one mask byte per score");
    scores
        .par_chunks_mut(task)
        .zip(blocked.par_chunks(task))
        .for_each(|(s, b)| loops::softmax_rows(s, b, keys, scale));
}

/// The gradient of [`masked_softmax_in_place`] with respect to the scores, in place of `grad`:
/// `scale·p ⊙ (grad − rowsum(grad ⊙ p))` per row of `keys`, from the softmax's output `p`.
///
/// # Panics
/// When `keys` is 0, or `p` and `grad` differ in length or are not whole rows.
pub fn masked_softmax_backward_in_place(p: &[f32], grad: &mut [f32], keys: usize, scale: f32) {
    let task = task_len(p.len(), grad.len(), keys, "one gradient per probability");
    grad.par_chunks_mut(task)
        .zip(p.par_chunks(task))
        .for_each(|(g, p)| loops::softmax_backward_rows(p, g, keys, scale));
}

/// Elements per parallel task, in whole rows of `keys`, after checking that the two slices
/// (`len` and `other` long, `pairing` what they share) are whole rows of equal length.
fn task_len(len: usize, other: usize, keys: usize, pairing: &str) -> usize {
    assert!(keys > 0, "a softmax row needs at least one key");
    assert_eq!(len, other, "{pairing}");
    assert_eq!(len % keys, 0, "whole rows of {keys} keys");
    keys * TASK.div_ceil(keys)
}

/// Whether attention on `device` in `dtype` may run the pass: burn-flex in f32 (elsewhere
/// burn's attention, whose training keeps more; see `rlhf_core::train::memory`).
pub(crate) fn pass_runs(device: &burn::tensor::Device, dtype: burn::tensor::DType) -> bool {
    dtype == burn::tensor::DType::F32 && rlhf_core::device::is_flex(device)
}

/// The row loops, compiled for the CPU's widest vectors.
mod loops {
    use rlhf_core::vector::{dot, exp, max_of, sum_of, widest};

    #[inline(always)]
    fn softmax_row(s: &mut [f32], blocked: &[u8], scale: f32) {
        // the keys from the first open one to the last (a causal row's past): outside them the
        // output is 0 and nothing is computed
        // (`memchr` scans the mask bytes in vectors; a causal row's blocked future is most of it)
        let Some(first) = memchr::memchr(0, blocked) else {
            s.fill(0.0);
            return;
        };
        let end = memchr::memrchr(0, blocked).map_or(first, |l| l + 1);
        let (open, open_blocked) = (&mut s[first..end], &blocked[first..end]);
        for (v, &b) in open.iter_mut().zip(open_blocked) {
            *v = if b != 0 {
                f32::NEG_INFINITY
            } else {
                *v * scale
            };
        }
        let top = max_of(open);
        if top == f32::NEG_INFINITY {
            // every open score −∞: zeros, as in burn's fallback; NaN when an open score is NaN,
            // which `max_of` passed over
            let nan = open.iter().any(|v| v.is_nan());
            s.fill(if nan { f32::NAN } else { 0.0 });
            return;
        }
        // exp(−∞ − top) = 0 for the blocked keys
        for v in open.iter_mut() {
            *v = exp(*v - top);
        }
        // the largest term is 1, so the sum is at least 1
        let inv = 1.0 / sum_of(open);
        for v in open.iter_mut() {
            *v *= inv;
        }
        s[..first].fill(0.0);
        s[end..].fill(0.0);
    }

    #[inline(always)]
    fn softmax_rows_body(s: &mut [f32], blocked: &[u8], keys: usize, scale: f32) {
        for (row, b) in s.chunks_exact_mut(keys).zip(blocked.chunks_exact(keys)) {
            softmax_row(row, b, scale);
        }
    }

    #[inline(always)]
    fn softmax_backward_rows_body(p: &[f32], grad: &mut [f32], keys: usize, scale: f32) {
        for (g, p) in grad.chunks_exact_mut(keys).zip(p.chunks_exact(keys)) {
            let dot = dot(g, p);
            for (g, &p) in g.iter_mut().zip(p) {
                *g = scale * p * (*g - dot);
            }
        }
    }

    widest!(softmax_rows, (s: &mut [f32], blocked: &[u8], keys: usize, scale: f32), softmax_rows_body);
    widest!(
        softmax_backward_rows,
        (p: &[f32], grad: &mut [f32], keys: usize, scale: f32),
        softmax_backward_rows_body
    );
}

/// `softmax(scale·scores)` over the last dimension, `true` in `blocked` masking a key, from
/// burn's ops: what every backend but burn-flex runs, and burn-flex for dtypes other than f32.
fn reference<B: burn::backend::Backend>(
    scores: burn::backend::tensor::FloatTensor<B>,
    blocked: burn::backend::tensor::BoolTensor<B>,
    scale: f32,
) -> burn::backend::tensor::FloatTensor<B> {
    use burn::backend::TensorMetadata;
    let last = scores.shape().num_dims() - 1;
    let finfo = scores.dtype().finfo().expect("a float tensor");
    let scaled = B::float_mul_scalar(scores, scale.into());
    let masked = B::float_mask_fill(scaled, blocked, f32::NEG_INFINITY.into());
    // a row with every key blocked: its maximum clamped to a finite value and its sum away from
    // zero, so that it comes out all zeros rather than NaN
    let top = B::float_clamp_min(B::float_max_dim(masked.clone(), last), finfo.min.into());
    let e = B::float_exp(B::float_sub(masked, top));
    let sum = B::float_clamp_min(B::float_sum_dim(e.clone(), last), finfo.min_positive.into());
    B::float_div(e, sum)
}

/// The gradient of [`reference`] from its output `p`: `scale·p ⊙ (grad − rowsum(grad ⊙ p))`.
fn reference_backward<B: burn::backend::Backend>(
    p: burn::backend::tensor::FloatTensor<B>,
    grad: burn::backend::tensor::FloatTensor<B>,
    scale: f32,
) -> burn::backend::tensor::FloatTensor<B> {
    use burn::backend::TensorMetadata;
    let last = p.shape().num_dims() - 1;
    let dot = B::float_sum_dim(B::float_mul(grad.clone(), p.clone()), last);
    let inner = B::float_sub(grad, dot);
    B::float_mul_scalar(B::float_mul(p, inner), scale.into())
}

/// `softmax(scale·scores)` over the last dimension with the keys `blocked` masks (`true`) set to
/// 0: the pass on burn-flex (with or without autodiff), burn's ops on other backends.
pub fn masked_softmax<const D: usize>(
    scores: burn::tensor::Tensor<D>,
    blocked: burn::tensor::Tensor<D, burn::tensor::Bool>,
    scale: f32,
) -> burn::tensor::Tensor<D> {
    #[cfg(feature = "flex")]
    if rlhf_core::device::is_flex(&scores.device()) {
        return flex::masked_softmax(scores, blocked, scale);
    }
    burn::tensor::Tensor::from_dispatch(reference::<burn::backend::Dispatch>(
        scores.into_dispatch(),
        blocked.into_dispatch(),
        scale,
    ))
}

/// The pass as a burn backend extension: burn-flex runs the loops above; under autodiff the
/// forward is the same pass and the backward the gradient loop, with the output kept for it.
#[cfg(feature = "flex")]
mod flex {
    use burn::backend::autodiff::Autodiff;
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::flex::FlexTensor;
    use burn::backend::tensor::{BoolTensor, FloatTensor};
    use burn::backend::{Backend, Dispatch, Flex, backend_extension};
    use burn::tensor::{Bool, BoolStore, DType, Tensor};

    use rlhf_core::vector::owned;

    /// Attention's masked, scaled softmax and its gradient; by default from burn's ops.
    #[backend_extension(Flex, Autodiff)]
    pub trait MaskedSoftmax: Backend {
        fn masked_softmax(
            scores: FloatTensor<Self>,
            blocked: BoolTensor<Self>,
            scale: f32,
        ) -> FloatTensor<Self> {
            super::reference::<Self>(scores, blocked, scale)
        }
        fn masked_softmax_backward(
            p: FloatTensor<Self>,
            grad: FloatTensor<Self>,
            scale: f32,
        ) -> FloatTensor<Self> {
            super::reference_backward::<Self>(p, grad, scale)
        }
    }

    impl MaskedSoftmax for Flex {
        fn masked_softmax(scores: FlexTensor, blocked: FlexTensor, scale: f32) -> FlexTensor {
            let one_byte = matches!(
                blocked.dtype(),
                DType::Bool(BoolStore::Native | BoolStore::U8)
            );
            let shape = scores.layout().shape().clone();
            let keys = shape.as_slice().last().copied().unwrap_or(0);
            if scores.dtype() != DType::F32
                || !one_byte
                || blocked.layout().shape() != &shape
                || keys == 0
            {
                return super::reference::<Flex>(scores, blocked, scale);
            }
            let blocked = blocked.to_contiguous();
            let (start, end) = blocked
                .layout()
                .contiguous_offsets()
                .expect("a contiguous tensor");
            let (mut scores, range) = owned(scores);
            super::masked_softmax_in_place(
                &mut scores.storage_mut::<f32>()[range],
                &blocked.bytes()[start..end],
                keys,
                scale,
            );
            scores
        }

        fn masked_softmax_backward(p: FlexTensor, grad: FlexTensor, scale: f32) -> FlexTensor {
            let shape = p.layout().shape().clone();
            let keys = shape.as_slice().last().copied().unwrap_or(0);
            if p.dtype() != DType::F32
                || grad.dtype() != DType::F32
                || grad.layout().shape() != &shape
                || keys == 0
            {
                return super::reference_backward::<Flex>(p, grad, scale);
            }
            let p = p.to_contiguous();
            let ps = p.as_slice::<f32>().expect("a contiguous tensor");
            let (mut grad, range) = owned(grad);
            super::masked_softmax_backward_in_place(
                ps,
                &mut grad.storage_mut::<f32>()[range],
                keys,
                scale,
            );
            grad
        }
    }

    impl<B: Backend + MaskedSoftmax, C: CheckpointStrategy> MaskedSoftmax for Autodiff<B, C> {
        fn masked_softmax(
            scores: FloatTensor<Self>,
            blocked: BoolTensor<Self>,
            scale: f32,
        ) -> FloatTensor<Self> {
            #[derive(Debug)]
            struct SoftmaxBackward;

            impl<B: Backend + MaskedSoftmax> Backward<B, 1> for SoftmaxBackward {
                /// The softmax's output and the scale.
                type State = (FloatTensor<B>, f32);

                fn backward(
                    self,
                    ops: Ops<Self::State, 1>,
                    grads: &mut Gradients,
                    _checkpointer: &mut Checkpointer,
                ) {
                    let [parent] = ops.parents;
                    let grad = grads.consume::<B>(&ops.node);
                    let (p, scale) = ops.state;
                    if let Some(parent) = parent {
                        grads.register::<B>(parent.id, B::masked_softmax_backward(p, grad, scale));
                    }
                }
            }

            match SoftmaxBackward
                .prepare::<C>([scores.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    let p = B::masked_softmax(scores.into_primitive(), blocked, scale);
                    prep.finish((p.clone(), scale), p)
                }
                OpsKind::UnTracked(prep) => {
                    prep.finish(B::masked_softmax(scores.into_primitive(), blocked, scale))
                }
            }
        }
    }

    pub(super) fn masked_softmax<const D: usize>(
        scores: Tensor<D>,
        blocked: Tensor<D, Bool>,
        scale: f32,
    ) -> Tensor<D> {
        Tensor::from_dispatch(<Dispatch as MaskedSoftmax>::masked_softmax(
            scores.into_dispatch(),
            blocked.into_dispatch(),
            scale,
        ))
    }
}
