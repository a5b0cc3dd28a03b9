//! The rotary position embedding of queries and keys, `x·cos + rotate_half(x)·sin` over the
//! first `dims` of each head's features (the rest pass through), and its gradient
//! `g·cos − rotate_half(g·sin)`, each as one pass over the tensor on burn-flex.
//!
//! burn's ops rotate with a narrow, a negation, two concatenations, two products and a sum, each
//! with a tensor of its own and a strided walk over it, and as many steps backwards (the narrows'
//! gradients written into tensors of zeros). On the study's models, whose heads rotate 4 of 16
//! features (GPT-NeoX's `rotary_pct` 0.25), those small strided operations on every layer's
//! queries and keys cost more than attention's softmax. Here the forward and the gradient are
//! each one pass that rewrites the first `dims` features of every row in place.

use rayon::prelude::*;

/// Values per parallel task at least (a task's heads are whole heads).
const TASK: usize = 1 << 14;

/// The shape of a rotation: queries or keys `[batch, heads, seq, head_dim]`, tables
/// `[batch, 1, seq, dims]` (shared by the heads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotaryShape {
    /// Heads.
    pub heads: usize,
    /// Positions.
    pub seq: usize,
    /// Features per head.
    pub head_dim: usize,
    /// The rotated features, the first of each head (even, at most `head_dim`).
    pub dims: usize,
}

/// Rotates `x` in place: for each row, with `c`, `s` its position's tables and `h = dims/2`,
/// `x[j] ← x[j]·c[j] − x[j+h]·s[j]` and `x[j+h] ← x[j+h]·c[j+h] + x[j]·s[j+h]` for `j < h`.
/// With `gradient`, applies the transpose instead (`x` holding the gradient of the output):
/// `x[j] ← x[j]·c[j] + x[j+h]·s[j+h]` and `x[j+h] ← x[j+h]·c[j+h] − x[j]·s[j]`.
///
/// # Panics
/// When `dims` is odd or above `head_dim`, or the slices are not of the shape's sizes.
pub fn rotate_in_place(
    x: &mut [f32],
    cos: &[f32],
    sin: &[f32],
    shape: RotaryShape,
    gradient: bool,
) {
    let RotaryShape {
        heads,
        seq,
        head_dim,
        dims,
    } = shape;
    assert!(
        dims.is_multiple_of(2) && dims <= head_dim,
        "an even number of rotated features, at most {head_dim}"
    );
    let head = seq * head_dim;
    let table = seq * dims;
    if x.is_empty() && cos.is_empty() && sin.is_empty() {
        return;
    }
    assert!(
        heads * head > 0 && x.len().is_multiple_of(heads * head),
        "whole heads of {seq} × {head_dim}"
    );
    let batch = x.len() / (heads * head);
    assert_eq!(
        cos.len(),
        batch * table,
        "a cosine table per row and position"
    );
    assert_eq!(
        sin.len(),
        batch * table,
        "a sine table per row and position"
    );
    if dims == 0 {
        return;
    }
    // whole heads per parallel task, at least `TASK` values (one position's heads when decoding)
    let per_task = TASK.div_ceil(head);
    x.par_chunks_mut(per_task * head)
        .enumerate()
        .for_each(|(task, heads_of_task)| {
            for (k, block) in heads_of_task.chunks_exact_mut(head).enumerate() {
                let b = (task * per_task + k) / heads;
                let (c, s) = (&cos[b * table..][..table], &sin[b * table..][..table]);
                loops::rotate_block(block, c, s, head_dim, dims, gradient);
            }
        });
}

/// The loops, compiled for the CPU's widest vectors.
mod loops {
    use rlhf_core::vector::widest;

    #[inline(always)]
    fn rotate_block_body(
        x: &mut [f32],
        cos: &[f32],
        sin: &[f32],
        head_dim: usize,
        dims: usize,
        gradient: bool,
    ) {
        let half = dims / 2;
        for ((row, c), s) in x
            .chunks_exact_mut(head_dim)
            .zip(cos.chunks_exact(dims))
            .zip(sin.chunks_exact(dims))
        {
            let (first, rest) = row.split_at_mut(half);
            let second = &mut rest[..half];
            let (c1, c2) = c.split_at(half);
            let (s1, s2) = s.split_at(half);
            if gradient {
                for j in 0..half {
                    let (a, b) = (first[j], second[j]);
                    first[j] = a * c1[j] + b * s2[j];
                    second[j] = b * c2[j] - a * s1[j];
                }
            } else {
                for j in 0..half {
                    let (a, b) = (first[j], second[j]);
                    first[j] = a * c1[j] - b * s1[j];
                    second[j] = b * c2[j] + a * s2[j];
                }
            }
        }
    }

    widest!(
        rotate_block,
        (x: &mut [f32], cos: &[f32], sin: &[f32], head_dim: usize, dims: usize, gradient: bool),
        rotate_block_body
    );
}

/// Whether the rotation of `x` may run the pass: burn-flex in f32 (elsewhere burn's ops).
#[cfg(feature = "flex")]
pub(crate) fn pass_runs(x: &burn::tensor::Tensor<4>) -> bool {
    x.dtype() == burn::tensor::DType::F32 && rlhf_core::device::is_flex(&x.device())
}

/// Rotates the first `dims` features of each head of `x` `[batch, heads, seq, head_dim]` with the
/// tables `cos`, `sin` `[batch, 1, seq, dims]` (constants: they take no gradient), as the pass on
/// burn-flex, with or without autodiff (other float dtypes rotate in f32).
///
/// # Panics
/// When `x` is not on burn-flex, or the shapes are not as above.
#[cfg(feature = "flex")]
pub fn rotate(
    x: burn::tensor::Tensor<4>,
    cos: burn::tensor::Tensor<4>,
    sin: burn::tensor::Tensor<4>,
    dims: usize,
) -> burn::tensor::Tensor<4> {
    flex::rotate(x, cos, sin, dims)
}

/// The pass as a burn backend extension: burn-flex runs the loop above; under autodiff the
/// backward is the same loop transposed, from the kept tables.
#[cfg(feature = "flex")]
mod flex {
    use burn::backend::autodiff::Autodiff;
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::flex::FlexTensor;
    use burn::backend::ops::FloatTensorOps;
    use burn::backend::tensor::FloatTensor;
    use burn::backend::{Backend, Dispatch, Flex, backend_extension};
    use burn::tensor::{DType, FloatDType, Tensor};

    use rlhf_core::vector::owned;

    /// The rotation and its transpose (`gradient`).
    #[backend_extension(Flex, Autodiff)]
    pub trait Rotary: Backend {
        fn rotary(
            x: FloatTensor<Self>,
            cos: FloatTensor<Self>,
            sin: FloatTensor<Self>,
            dims: usize,
            gradient: bool,
        ) -> FloatTensor<Self>;
    }

    impl Rotary for Flex {
        fn rotary(
            x: FlexTensor,
            cos: FlexTensor,
            sin: FlexTensor,
            dims: usize,
            gradient: bool,
        ) -> FlexTensor {
            let dtype = x.dtype();
            if dtype != DType::F32 {
                // other float dtypes rotate in f32 and return in their own
                let f32s = |t: FlexTensor| Flex::float_cast(t, FloatDType::F32);
                let out = Self::rotary(f32s(x), f32s(cos), f32s(sin), dims, gradient);
                return Flex::float_cast(out, dtype.into());
            }
            let [batch, heads, seq, head_dim] = x.layout().shape().as_slice() else {
                panic!("queries or keys [batch, heads, seq, head_dim]");
            };
            let shape = super::RotaryShape {
                heads: *heads,
                seq: *seq,
                head_dim: *head_dim,
                dims,
            };
            let table = [*batch, 1, *seq, dims];
            for t in [&cos, &sin] {
                assert_eq!(
                    t.layout().shape().as_slice(),
                    table,
                    "tables [batch, 1, seq, dims]"
                );
                assert_eq!(
                    t.dtype(),
                    DType::F32,
                    "tables in the queries' and keys' dtype"
                );
            }
            let (cos, sin) = (cos.to_contiguous(), sin.to_contiguous());
            let (mut x, range) = owned(x);
            super::rotate_in_place(
                &mut x.storage_mut::<f32>()[range],
                cos.as_slice::<f32>().expect("a contiguous tensor"),
                sin.as_slice::<f32>().expect("a contiguous tensor"),
                shape,
                gradient,
            );
            x
        }
    }

    impl<B: Backend + Rotary, C: CheckpointStrategy> Rotary for Autodiff<B, C> {
        fn rotary(
            x: FloatTensor<Self>,
            cos: FloatTensor<Self>,
            sin: FloatTensor<Self>,
            dims: usize,
            gradient: bool,
        ) -> FloatTensor<Self> {
            #[derive(Debug)]
            struct RotaryBackward;

            impl<B: Backend + Rotary> Backward<B, 1> for RotaryBackward {
                /// The tables, the rotated features and whether the forward was the transpose.
                type State = (FloatTensor<B>, FloatTensor<B>, usize, bool);

                fn backward(
                    self,
                    ops: Ops<Self::State, 1>,
                    grads: &mut Gradients,
                    _checkpointer: &mut Checkpointer,
                ) {
                    let [parent] = ops.parents;
                    let grad = grads.consume::<B>(&ops.node);
                    let (cos, sin, dims, gradient) = ops.state;
                    if let Some(parent) = parent {
                        grads.register::<B>(parent.id, B::rotary(grad, cos, sin, dims, !gradient));
                    }
                }
            }

            let (cos, sin) = (cos.into_primitive(), sin.into_primitive());
            match RotaryBackward
                .prepare::<C>([x.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    let out =
                        B::rotary(x.into_primitive(), cos.clone(), sin.clone(), dims, gradient);
                    prep.finish((cos, sin, dims, gradient), out)
                }
                OpsKind::UnTracked(prep) => {
                    prep.finish(B::rotary(x.into_primitive(), cos, sin, dims, gradient))
                }
            }
        }
    }

    pub(super) fn rotate(x: Tensor<4>, cos: Tensor<4>, sin: Tensor<4>, dims: usize) -> Tensor<4> {
        Tensor::from_dispatch(<Dispatch as Rotary>::rotary(
            x.into_dispatch(),
            cos.into_dispatch(),
            sin.into_dispatch(),
            dims,
            false,
        ))
    }
}
