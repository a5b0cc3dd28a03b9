//! Matrix products, `[.., m, k] · [.., k, n]`, on burn-flex in f32 that write straight into the
//! buffer their output keeps; the models' linear layers and attention's two products go through
//! them.
//!
//! burn-flex 0.22 makes each product's output as zeroed bytes and then copies those into a
//! 16-byte-aligned buffer (`FlexTensor::empty` through `Bytes::from_bytes_vec`), so every product
//! also pays a `memset` and a `memmove` of its output, a visible share of the study's time on its
//! small models (`docs/perf-report.md`, "Matrix products into their own buffers"). Here the
//! output is a vector of `f32` that `gemm` fills once and the tensor then owns as it is. The
//! gradients, `g·rhsᵀ` and `lhsᵀ·g`, are the same product on transposed views. Other backends
//! and dtypes, and operands whose batch dimensions differ (broadcasting), keep burn's `matmul`.

use burn::nn::Linear;
use burn::tensor::Tensor;

/// `lhs · rhs` over the last two dimensions, batched over the others: the product of this
/// module on burn-flex when both are f32 with the same batch dimensions (with or without
/// autodiff), burn's `matmul` otherwise.
pub fn matmul<const D: usize>(lhs: Tensor<D>, rhs: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if flex::runs(&lhs, &rhs) {
        return flex::product(lhs, rhs);
    }
    lhs.matmul(rhs)
}

/// `x · weight + bias`, `weight` `[d_in, d_out]`, as burn's `module::linear`: the rows of `x`
/// folded into one matrix for [`matmul`].
pub fn linear<const D: usize>(
    x: Tensor<D>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
) -> Tensor<D> {
    let [d_in, d_out] = weight.dims();
    let mut dims = x.dims();
    assert_eq!(
        dims[D - 1],
        d_in,
        "a linear layer of {d_in} inputs given an input of shape {dims:?}"
    );
    let rows = dims[..D - 1].iter().product::<usize>();
    let y = matmul(x.reshape([rows, d_in]), weight);
    let y = match bias {
        Some(bias) => y + bias.unsqueeze::<2>(),
        None => y,
    };
    dims[D - 1] = d_out;
    y.reshape(dims)
}

/// `layer.forward(x)` through [`linear`] (LoRA's reparameterised weight included).
pub fn linear_layer<const D: usize>(layer: &Linear, x: Tensor<D>) -> Tensor<D> {
    linear(x, layer.weight.val(), layer.bias.as_ref().map(|b| b.val()))
}

/// Matrix products per parallel task at least, in multiply-adds (`m·n·k` summed): below it a
/// batch runs on one thread.
#[cfg(feature = "flex")]
const BATCH_TASK: usize = 128 * 128 * 128;

/// A single product of at least this many multiply-adds splits over threads inside `gemm`
/// (when there are too few of them to share the threads out).
#[cfg(feature = "flex")]
const SPLIT_ONE: usize = 192 * 192 * 192;

/// One operand of a batched product in a strided buffer.
#[cfg(feature = "flex")]
#[derive(Debug, Clone, Copy)]
pub struct Operand<'a> {
    /// The buffer.
    pub data: &'a [f32],
    /// Where each batch's matrix starts in `data`.
    pub starts: &'a [usize],
    /// Elements between consecutive rows.
    pub row_stride: isize,
    /// Elements between consecutive columns.
    pub col_stride: isize,
}

/// The products `lhs[i] · rhs[i]`, `m × k` by `k × n`, for each batch `i`, contiguous and
/// row-major in a new vector.
///
/// # Panics
/// When the operands have different numbers of batches, a matrix reaches outside its buffer, or
/// the output's size overflows.
#[cfg(feature = "flex")]
pub fn products(lhs: Operand, rhs: Operand, m: usize, k: usize, n: usize) -> Vec<f32> {
    let batches = lhs.starts.len();
    assert_eq!(batches, rhs.starts.len(), "one right operand per left one");
    for (operand, rows, cols) in [(&lhs, m, k), (&rhs, k, n)] {
        for &start in operand.starts {
            assert!(
                fits(operand, start, rows, cols),
                "a {rows} × {cols} matrix inside its buffer"
            );
        }
    }
    let size = m.checked_mul(n).expect("an output of addressable size");
    let len = size
        .checked_mul(batches)
        .expect("an output of addressable size");
    // gemm's matrix–vector kernels (`m` or `n` of 1) view the output as a slice before they
    // write it, so those outputs start as zeros; the others start uninitialised
    if k == 0 || len == 0 || m == 1 || n == 1 {
        let mut out = vec![0.0; len];
        if k > 0 && len > 0 {
            fill(&mut out, &lhs, &rhs, (m, k, n));
        }
        return out;
    }
    let mut out = Vec::<f32>::with_capacity(len);
    fill(&mut out.spare_capacity_mut()[..len], &lhs, &rhs, (m, k, n));
    // SAFETY: `fill` wrote every one of the `len` values
    unsafe { out.set_len(len) };
    out
}

/// Writes each batch's product into its `m × n` block of `out` (row-major), splitting the work
/// over threads by batches, or inside `gemm` for a few large products.
#[cfg(feature = "flex")]
fn fill<T: Send>(out: &mut [T], lhs: &Operand, rhs: &Operand, (m, k, n): (usize, usize, usize)) {
    use rayon::prelude::*;

    assert_eq!(std::mem::size_of::<T>(), 4, "f32s, initialised or not");
    let size = m * n;
    let one = |dst: &mut [T], i: usize, threads: gemm::Parallelism| {
        // SAFETY: `dst` holds `m × n` values, written row-major; both operands' matrices lie
        // inside their buffers (checked by `products`); with `read_dst` false, `gemm` writes every
        // value of `dst` and reads none (an uninitialised `dst` is only ever viewed as a slice
        // by the matrix–vector kernels, whose outputs `products` zeroes first)
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst.as_mut_ptr().cast::<f32>(),
                1,
                n as isize,
                false,
                lhs.data.as_ptr().add(lhs.starts[i]),
                lhs.col_stride,
                lhs.row_stride,
                rhs.data.as_ptr().add(rhs.starts[i]),
                rhs.col_stride,
                rhs.row_stride,
                0.0,
                1.0,
                false,
                false,
                false,
                threads,
            )
        }
    };
    let batches = out.len() / size;
    let work = m.saturating_mul(n).saturating_mul(k);
    if work >= SPLIT_ONE && batches < 4 {
        for (i, dst) in out.chunks_exact_mut(size).enumerate() {
            one(dst, i, gemm::Parallelism::Rayon(0));
        }
    } else if batches > 1 && work.saturating_mul(batches) >= BATCH_TASK {
        // at least `BATCH_TASK` multiply-adds per task
        let per_task = BATCH_TASK.div_ceil(work);
        out.par_chunks_mut(per_task * size)
            .enumerate()
            .for_each(|(task, chunk)| {
                for (j, dst) in chunk.chunks_exact_mut(size).enumerate() {
                    one(dst, task * per_task + j, gemm::Parallelism::None);
                }
            });
    } else {
        for (i, dst) in out.chunks_exact_mut(size).enumerate() {
            one(dst, i, gemm::Parallelism::None);
        }
    }
}

/// Whether a `rows × cols` matrix at `start` with the operand's strides lies inside its buffer
/// (its four corners bound every element it holds).
#[cfg(feature = "flex")]
fn fits(operand: &Operand, start: usize, rows: usize, cols: usize) -> bool {
    if rows == 0 || cols == 0 {
        return start <= operand.data.len();
    }
    let reach = |stride: isize, count: usize| i128::from(stride as i64) * (count as i128 - 1);
    let (down, across) = (
        reach(operand.row_stride, rows),
        reach(operand.col_stride, cols),
    );
    [0, down, across, down + across].iter().all(|&offset| {
        let at = start as i128 + offset;
        at >= 0 && at < operand.data.len() as i128
    })
}

/// The product as a burn backend extension: burn-flex runs [`products`]; under autodiff the
/// backward is the same product with the other operand transposed.
#[cfg(feature = "flex")]
mod flex {
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::autodiff::{Autodiff, NodeId};
    use burn::backend::flex::{FlexTensor, Layout};
    use burn::backend::tensor::FloatTensor;
    use burn::backend::{Backend, Dispatch, Flex, TensorMetadata, backend_extension};
    use burn::tensor::{Bytes, DType, Shape, Tensor};

    use super::Operand;

    /// Whether the product of `lhs` and `rhs` runs here: burn-flex, f32, the same batch
    /// dimensions (burn's `matmul` broadcasts them, and its gradient sums over the broadcast).
    pub(super) fn runs<const D: usize>(lhs: &Tensor<D>, rhs: &Tensor<D>) -> bool {
        let (l, r) = (lhs.dims(), rhs.dims());
        rlhf_core::device::is_flex(&lhs.device())
            && lhs.dtype() == DType::F32
            && rhs.dtype() == DType::F32
            && same_batch(&l, &r)
            && l[D - 1] == r[D - 2]
    }

    /// Whether `l` and `r` are shapes of matrices (rank ≥ 2) with the same batch dimensions.
    fn same_batch(l: &[usize], r: &[usize]) -> bool {
        let rank = l.len();
        rank >= 2 && rank == r.len() && l[..rank - 2] == r[..rank - 2]
    }

    /// `lhs · rhs`, batched.
    #[backend_extension(Flex, Autodiff)]
    pub trait Product: Backend {
        fn product(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self>;
    }

    /// Where each batch's matrix starts in `t`'s buffer, its row and column strides.
    fn operand_layout(t: &FlexTensor) -> (Vec<usize>, isize, isize) {
        let layout = t.layout();
        let dims = layout.shape().as_slice();
        let strides = layout.strides();
        let rank = dims.len();
        let mut starts = vec![layout.start_offset() as isize];
        for (&dim, &stride) in dims[..rank - 2].iter().zip(&strides[..rank - 2]) {
            starts = starts
                .iter()
                .flat_map(|&s| (0..dim as isize).map(move |i| s + i * stride))
                .collect();
        }
        let starts = starts
            .into_iter()
            .map(|s| usize::try_from(s).expect("a matrix inside its buffer"))
            .collect();
        (starts, strides[rank - 2], strides[rank - 1])
    }

    impl Product for Flex {
        fn product(lhs: FlexTensor, rhs: FlexTensor) -> FlexTensor {
            let (l, r) = (lhs.layout().shape().clone(), rhs.layout().shape().clone());
            // what `runs` let through, and the backward's products of the same
            assert!(
                lhs.dtype() == DType::F32 && rhs.dtype() == DType::F32,
                "products in f32"
            );
            assert!(
                same_batch(&l, &r),
                "products of the same batch dimensions, {l:?} and {r:?}"
            );
            let rank = l.num_dims();
            let (m, k, n) = (l[rank - 2], l[rank - 1], r[rank - 1]);
            assert_eq!(k, r[rank - 2], "matmul: inner dimensions must match");
            let (lhs_starts, lhs_rows, lhs_cols) = operand_layout(&lhs);
            let (rhs_starts, rhs_rows, rhs_cols) = operand_layout(&rhs);
            let out = super::products(
                Operand {
                    data: lhs.storage::<f32>(),
                    starts: &lhs_starts,
                    row_stride: lhs_rows,
                    col_stride: lhs_cols,
                },
                Operand {
                    data: rhs.storage::<f32>(),
                    starts: &rhs_starts,
                    row_stride: rhs_rows,
                    col_stride: rhs_cols,
                },
                m,
                k,
                n,
            );
            let mut dims = l.as_slice().to_vec();
            dims[rank - 1] = n;
            let layout = Layout::contiguous(Shape::from(dims));
            FlexTensor::new(Bytes::from_elems(out), layout, DType::F32)
        }
    }

    impl<B: Backend + Product, C: CheckpointStrategy> Product for Autodiff<B, C> {
        fn product(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
            #[derive(Debug)]
            struct ProductBackward;

            impl<B: Backend + Product> Backward<B, 2> for ProductBackward {
                /// The left operand, kept when the right one takes a gradient, and the reverse.
                type State = (Option<NodeId>, Option<NodeId>);

                fn backward(
                    self,
                    ops: Ops<Self::State, 2>,
                    grads: &mut Gradients,
                    checkpointer: &mut Checkpointer,
                ) {
                    let [lhs_node, rhs_node] = ops.parents;
                    let grad = grads.consume::<B>(&ops.node);
                    let (lhs, rhs) = ops.state;
                    let mut kept = |id: Option<NodeId>| {
                        id.map(|id| checkpointer.retrieve_node_output::<FloatTensor<B>>(id))
                    };
                    let (lhs, rhs) = (kept(lhs), kept(rhs));
                    let transposed = |t: FloatTensor<B>| {
                        let rank = t.shape().num_dims();
                        B::float_swap_dims(t, rank - 2, rank - 1)
                    };
                    // ∂L/∂lhs = g · rhsᵀ
                    if let (Some(node), Some(rhs)) = (lhs_node, rhs) {
                        let lhs_grad = B::product(grad.clone(), transposed(rhs));
                        grads.register::<B>(node.id, lhs_grad);
                    }
                    // ∂L/∂rhs = lhsᵀ · g
                    if let (Some(node), Some(lhs)) = (rhs_node, lhs) {
                        grads.register::<B>(node.id, B::product(transposed(lhs), grad));
                    }
                }
            }

            // the gradients below are the operands' own shapes: no batch dimension broadcasts
            let (l, r) = (lhs.shape(), rhs.shape());
            assert!(
                same_batch(&l, &r),
                "products of the same batch dimensions, {l:?} and {r:?}"
            );
            let (lhs_tracked, rhs_tracked) = (lhs.is_tracked(), rhs.is_tracked());
            match ProductBackward
                .prepare::<C>([lhs.node(), rhs.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(mut prep) => {
                    // each operand is needed for the other's gradient only
                    let lhs_state = rhs_tracked.then(|| prep.checkpoint(&lhs));
                    let rhs_state = lhs_tracked.then(|| prep.checkpoint(&rhs));
                    let out = B::product(lhs.into_primitive(), rhs.into_primitive());
                    prep.finish((lhs_state, rhs_state), out)
                }
                OpsKind::UnTracked(prep) => {
                    prep.finish(B::product(lhs.into_primitive(), rhs.into_primitive()))
                }
            }
        }
    }

    pub(super) fn product<const D: usize>(lhs: Tensor<D>, rhs: Tensor<D>) -> Tensor<D> {
        Tensor::from_dispatch(<Dispatch as Product>::product(
            lhs.into_dispatch(),
            rhs.into_dispatch(),
        ))
    }
}
