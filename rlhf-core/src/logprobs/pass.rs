//! The token log-probabilities `log_softmax(x/T)[y]`, their gradient
//! `(1[v = y] − softmax(x/T)_v)·g/T`, and the entropy of `softmax(x/T)`, each as one pass per
//! row of logits on burn-flex.
//!
//! burn's log-softmax and gather are a chain of operations over the `[batch, seq, vocab]`
//! logits (the widest tensor of a small model's step): the division by the temperature, the
//! row maximum, the subtraction, `exp`, the row sum, `log`, the second subtraction and the
//! gather, each with a tensor of its own, and as many steps again backwards, where the gather's
//! gradient is scattered into a tensor of zeros and `exp`'s gradient calls `exp` a second time.
//! Here the forward reads each row once for its maximum and once for `Σ exp` and writes one value
//! per row; the backward takes the softmax from that value (`exp((x_v − x_y)/T + logp)`, one
//! `exp` per logit) and writes the gradient over the logits, which it owns unless another tensor
//! shares them. `exp` is [`crate::vector::exp`].

use rayon::prelude::*;

/// Logits per parallel task at least (a task's rows are whole rows).
const TASK: usize = 1 << 14;

/// `log_softmax(row/T)[token]` of every row of `vocab` logits, into `out` (one value per row).
/// A row with a NaN gives NaN; finite logits give a finite value unless `(x_token − max)/T`
/// overflows to −∞, as a token logit of −∞ does.
///
/// # Panics
/// When `vocab` is 0, `logits` is not whole rows, `tokens` or `out` has not one entry per row,
/// or a token is not below `vocab`.
pub fn token_logprobs_rows(
    logits: &[f32],
    tokens: &[usize],
    vocab: usize,
    temperature: f32,
    out: &mut [f32],
) {
    let rows = rows_per_task(logits.len(), tokens, vocab);
    assert_eq!(out.len(), tokens.len(), "one output per row");
    let inv_t = 1.0 / temperature;
    logits
        .par_chunks(rows * vocab)
        .zip(tokens.par_chunks(rows))
        .zip(out.par_chunks_mut(rows))
        .for_each(|((x, y), o)| loops::logprob_rows(x, y, vocab, inv_t, o));
}

/// The gradient of [`token_logprobs_rows`] with respect to the logits, written over them:
/// `(1[v = token] − softmax(row/T)_v)·grad/T` per row, from the forward's output `logp` (one
/// value per row): `softmax(row/T)_v = exp((x_v − x_token)/T + logp)`. A row whose `logp` is not
/// finite recomputes its log-sum-exp instead.
///
/// # Panics
/// As [`token_logprobs_rows`], with `logp` and `grad` for `out`.
pub fn token_logprobs_backward_rows(
    logits: &mut [f32],
    tokens: &[usize],
    logp: &[f32],
    grad: &[f32],
    vocab: usize,
    temperature: f32,
) {
    let rows = rows_per_task(logits.len(), tokens, vocab);
    assert_eq!(logp.len(), tokens.len(), "one log-probability per row");
    assert_eq!(grad.len(), tokens.len(), "one gradient per row");
    let inv_t = 1.0 / temperature;
    logits
        .par_chunks_mut(rows * vocab)
        .zip(tokens.par_chunks(rows))
        .zip(logp.par_chunks(rows).zip(grad.par_chunks(rows)))
        .for_each(|((x, y), (l, g))| loops::logprob_backward_rows(x, y, l, g, vocab, inv_t));
}

/// The entropy `−Σ_v p_v log p_v` of `p = softmax(row/T)` of every row of `vocab` logits, into
/// `out`. A logit of −∞ contributes nothing (`0·log 0 = 0`).
///
/// # Panics
/// When `vocab` is 0, `logits` is not whole rows, or `out` has not one entry per row.
pub fn entropy_rows(logits: &[f32], vocab: usize, temperature: f32, out: &mut [f32]) {
    assert!(vocab > 0, "a row needs at least one logit");
    assert_eq!(
        logits.len(),
        out.len() * vocab,
        "one output per row of {vocab} logits"
    );
    let rows = TASK.div_ceil(vocab);
    let inv_t = 1.0 / temperature;
    logits
        .par_chunks(rows * vocab)
        .zip(out.par_chunks_mut(rows))
        .for_each(|(x, o)| loops::entropy_rows(x, vocab, inv_t, o));
}

/// Rows per parallel task, after checking that `len` logits are one row of `vocab` per token
/// and that every token is in the vocabulary.
fn rows_per_task(len: usize, tokens: &[usize], vocab: usize) -> usize {
    assert!(vocab > 0, "a row needs at least one logit");
    assert_eq!(
        len,
        tokens.len() * vocab,
        "one token per row of {vocab} logits"
    );
    if let Some(&bad) = tokens.iter().find(|&&t| t >= vocab) {
        panic!("token id {bad} is outside the vocabulary of {vocab} entries");
    }
    TASK.div_ceil(vocab)
}

/// The row loops, compiled for the CPU's widest vectors.
mod loops {
    use crate::vector::{exp, max_of, widest};

    /// Lanes of the partial sums (a whole AVX-512 register).
    const LANES: usize = 16;

    /// The row's maximum `m` and `ln Σ_v exp((x_v − m)/T)`, the log-sum-exp less `m/T`.
    #[inline(always)]
    fn shift_and_log_sum(x: &[f32], inv_t: f32) -> (f32, f32) {
        let top = max_of(x);
        let mut acc = [0.0f32; LANES];
        let chunks = x.chunks_exact(LANES);
        let rest: f32 = chunks
            .remainder()
            .iter()
            .map(|&v| exp((v - top) * inv_t))
            .sum();
        for c in chunks {
            for (a, &v) in acc.iter_mut().zip(c) {
                *a += exp((v - top) * inv_t);
            }
        }
        // the largest term is 1, so the logarithm is at least 0
        (top, (rest + acc.iter().sum::<f32>()).ln())
    }

    #[inline(always)]
    fn logprob_rows_body(x: &[f32], tokens: &[usize], vocab: usize, inv_t: f32, out: &mut [f32]) {
        for ((row, &y), o) in x.chunks_exact(vocab).zip(tokens).zip(out) {
            let (top, log_sum) = shift_and_log_sum(row, inv_t);
            *o = (row[y] - top) * inv_t - log_sum;
        }
    }

    #[inline(always)]
    fn logprob_backward_rows_body(
        x: &mut [f32],
        tokens: &[usize],
        logp: &[f32],
        grad: &[f32],
        vocab: usize,
        inv_t: f32,
    ) {
        for (((row, &y), &l), &g) in x.chunks_exact_mut(vocab).zip(tokens).zip(logp).zip(grad) {
            // log p_v = (x_v − c)/T − k: c the token's logit and k its −log p, or, where that is
            // not finite, c the row's maximum and k its log-sum-exp
            let (shift, log_sum) = match l.is_finite() {
                true => (row[y], -l),
                false => shift_and_log_sum(row, inv_t),
            };
            let scale = g * inv_t;
            for v in row.iter_mut() {
                *v = -scale * exp((*v - shift) * inv_t - log_sum);
            }
            row[y] += scale;
        }
    }

    #[inline(always)]
    fn entropy_rows_body(x: &[f32], vocab: usize, inv_t: f32, out: &mut [f32]) {
        for (row, o) in x.chunks_exact(vocab).zip(out) {
            let top = max_of(row);
            // Σ e_v and Σ e_v·z_v over z_v = (x_v − m)/T, e_v = exp(z_v): H = ln Σe − Σe·z / Σe
            let (mut sum, mut weighted) = ([0.0f32; LANES], [0.0f32; LANES]);
            let chunks = row.chunks_exact(LANES);
            let (mut rest_sum, mut rest_weighted) = (0.0f32, 0.0f32);
            for &v in chunks.remainder() {
                let z = (v - top) * inv_t;
                let e = exp(z);
                rest_sum += e;
                // z = −∞ where e = 0: its term is 0, not 0·∞
                rest_weighted += e * z.max(f32::MIN);
            }
            for c in chunks {
                for ((s, w), &v) in sum.iter_mut().zip(weighted.iter_mut()).zip(c) {
                    let z = (v - top) * inv_t;
                    let e = exp(z);
                    *s += e;
                    *w += e * z.max(f32::MIN);
                }
            }
            let total = rest_sum + sum.iter().sum::<f32>();
            let weighted = rest_weighted + weighted.iter().sum::<f32>();
            *o = total.ln() - weighted / total;
        }
    }

    widest!(
        logprob_rows,
        (x: &[f32], tokens: &[usize], vocab: usize, inv_t: f32, out: &mut [f32]),
        logprob_rows_body
    );
    widest!(
        logprob_backward_rows,
        (x: &mut [f32], tokens: &[usize], logp: &[f32], grad: &[f32], vocab: usize, inv_t: f32),
        logprob_backward_rows_body
    );
    widest!(
        entropy_rows,
        (x: &[f32], vocab: usize, inv_t: f32, out: &mut [f32]),
        entropy_rows_body
    );
}

/// `log_softmax(logits/T)` gathered at `tokens` along the last dimension, from burn's ops: what
/// every backend but burn-flex runs, and burn-flex for dtypes other than f32.
fn reference<B: burn::backend::Backend>(
    logits: burn::backend::tensor::FloatTensor<B>,
    tokens: burn::backend::tensor::IntTensor<B>,
    temperature: f32,
) -> burn::backend::tensor::FloatTensor<B> {
    use burn::backend::TensorMetadata;
    let last = logits.shape().num_dims() - 1;
    let rows = tokens.shape();
    let logp = B::log_softmax(B::float_div_scalar(logits, temperature.into()), last);
    let picked = B::float_gather(last, logp, B::int_reshape(tokens, with_one(&rows)));
    B::float_reshape(picked, rows)
}

/// The gradient of [`reference`] with respect to the logits, from its ops:
/// `(onehot(tokens) − softmax(logits/T))·grad/T`.
fn reference_backward<B: burn::backend::Backend>(
    logits: burn::backend::tensor::FloatTensor<B>,
    tokens: burn::backend::tensor::IntTensor<B>,
    grad: burn::backend::tensor::FloatTensor<B>,
    temperature: f32,
) -> burn::backend::tensor::FloatTensor<B> {
    use burn::backend::TensorMetadata;
    use burn::backend::tensor::IndexingUpdateOp;
    let (shape, dtype) = (logits.shape(), logits.dtype());
    let device = logits.device();
    let last = shape.num_dims() - 1;
    let rows = tokens.shape();
    let p = B::softmax(B::float_div_scalar(logits, temperature.into()), last);
    let g = B::float_reshape(
        B::float_div_scalar(grad, temperature.into()),
        with_one(&rows),
    );
    let picked = B::float_scatter(
        last,
        B::float_zeros(shape, &device, dtype.into()),
        B::int_reshape(tokens, with_one(&rows)),
        g.clone(),
        IndexingUpdateOp::Add,
    );
    B::float_sub(picked, B::float_mul(p, g))
}

/// The entropy of `softmax(logits/T)` over the last dimension, from burn's ops.
fn reference_entropy<B: burn::backend::Backend>(
    logits: burn::backend::tensor::FloatTensor<B>,
    temperature: f32,
) -> burn::backend::tensor::FloatTensor<B> {
    use burn::backend::TensorMetadata;
    let shape = logits.shape();
    let last = shape.num_dims() - 1;
    let logp = B::log_softmax(B::float_div_scalar(logits, temperature.into()), last);
    let p = B::float_exp(logp.clone());
    let h = B::float_neg(B::float_sum_dim(B::float_mul(p, logp), last));
    B::float_reshape(h, burn::tensor::Shape::from(&shape.as_slice()[..last]))
}

/// `shape` with a trailing dimension of 1.
fn with_one(shape: &burn::tensor::Shape) -> burn::tensor::Shape {
    let mut dims = shape.as_slice().to_vec();
    dims.push(1);
    burn::tensor::Shape::from(dims)
}

/// The passes as a burn backend extension: burn-flex runs the loops above; under autodiff the
/// forward is the same pass and the backward the gradient loop, from the kept logits.
mod flex {
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::autodiff::{Autodiff, NodeId};
    use burn::backend::flex::FlexTensor;
    use burn::backend::tensor::{FloatTensor, IntTensor};
    use burn::backend::{Backend, Dispatch, Flex, backend_extension};
    use burn::tensor::{DType, Int, Shape, Tensor, TensorData};

    use crate::vector::owned;

    /// The token log-probabilities, their gradient and the entropy; by default from burn's ops.
    #[backend_extension(Flex, Autodiff)]
    pub trait TokenLogprobs: Backend {
        fn token_logprobs(
            logits: FloatTensor<Self>,
            tokens: IntTensor<Self>,
            temperature: f32,
        ) -> FloatTensor<Self> {
            super::reference::<Self>(logits, tokens, temperature)
        }
        /// `logp` is the forward's output.
        fn token_logprobs_backward(
            logits: FloatTensor<Self>,
            tokens: IntTensor<Self>,
            logp: FloatTensor<Self>,
            grad: FloatTensor<Self>,
            temperature: f32,
        ) -> FloatTensor<Self> {
            let _ = logp;
            super::reference_backward::<Self>(logits, tokens, grad, temperature)
        }
        fn token_entropy(logits: FloatTensor<Self>, temperature: f32) -> FloatTensor<Self> {
            super::reference_entropy::<Self>(logits, temperature)
        }
    }

    /// The vocabulary and the token ids when the pass can run: f32 logits `[..., vocab]`, and
    /// 64- or 32-bit ids of the logits' shape without its last dimension.
    fn pass_operands(logits: &FlexTensor, tokens: &FlexTensor) -> Option<(usize, Vec<usize>)> {
        let dims = logits.layout().shape().as_slice();
        let (&vocab, rows) = dims.split_last()?;
        if logits.dtype() != DType::F32 || tokens.layout().shape().as_slice() != rows || vocab == 0
        {
            return None;
        }
        let tokens = tokens.to_contiguous();
        // a negative id becomes `usize::MAX`, which the pass rejects as outside the vocabulary
        let id = |t: i64| usize::try_from(t).unwrap_or(usize::MAX);
        let ids = match tokens.dtype() {
            DType::I64 => tokens.as_slice::<i64>()?.iter().map(|&t| id(t)).collect(),
            DType::I32 => tokens
                .as_slice::<i32>()?
                .iter()
                .map(|&t| id(i64::from(t)))
                .collect(),
            _ => return None,
        };
        Some((vocab, ids))
    }

    /// A new f32 tensor of `shape` holding `values`.
    fn from_values(values: Vec<f32>, shape: &[usize]) -> FlexTensor {
        FlexTensor::from_data(TensorData::new(values, Shape::from(shape.to_vec())))
    }

    impl TokenLogprobs for Flex {
        fn token_logprobs(logits: FlexTensor, tokens: FlexTensor, temperature: f32) -> FlexTensor {
            let Some((vocab, ids)) = pass_operands(&logits, &tokens) else {
                return super::reference::<Flex>(logits, tokens, temperature);
            };
            let logits = logits.to_contiguous();
            let x = logits.as_slice::<f32>().expect("a contiguous tensor");
            let mut out = vec![0.0; ids.len()];
            super::token_logprobs_rows(x, &ids, vocab, temperature, &mut out);
            from_values(out, tokens.layout().shape().as_slice())
        }

        fn token_logprobs_backward(
            logits: FlexTensor,
            tokens: FlexTensor,
            logp: FlexTensor,
            grad: FlexTensor,
            temperature: f32,
        ) -> FlexTensor {
            let per_row = |t: &FlexTensor| {
                t.dtype() == DType::F32 && t.layout().shape() == tokens.layout().shape()
            };
            let operands = pass_operands(&logits, &tokens);
            let Some((vocab, ids)) = operands.filter(|_| per_row(&logp) && per_row(&grad)) else {
                return super::reference_backward::<Flex>(logits, tokens, grad, temperature);
            };
            let (logp, grad) = (logp.to_contiguous(), grad.to_contiguous());
            let (mut logits, range) = owned(logits);
            super::token_logprobs_backward_rows(
                &mut logits.storage_mut::<f32>()[range],
                &ids,
                logp.as_slice::<f32>().expect("a contiguous tensor"),
                grad.as_slice::<f32>().expect("a contiguous tensor"),
                vocab,
                temperature,
            );
            logits
        }

        fn token_entropy(logits: FlexTensor, temperature: f32) -> FlexTensor {
            let dims = logits.layout().shape().as_slice().to_vec();
            let Some((&vocab, rows)) = dims.split_last() else {
                return super::reference_entropy::<Flex>(logits, temperature);
            };
            if logits.dtype() != DType::F32 || vocab == 0 {
                return super::reference_entropy::<Flex>(logits, temperature);
            }
            let logits = logits.to_contiguous();
            let x = logits.as_slice::<f32>().expect("a contiguous tensor");
            let mut out = vec![0.0; x.len() / vocab];
            super::entropy_rows(x, vocab, temperature, &mut out);
            from_values(out, rows)
        }
    }

    impl<B: Backend + TokenLogprobs, C: CheckpointStrategy> TokenLogprobs for Autodiff<B, C> {
        fn token_logprobs(
            logits: FloatTensor<Self>,
            tokens: IntTensor<Self>,
            temperature: f32,
        ) -> FloatTensor<Self> {
            #[derive(Debug)]
            struct LogprobsBackward;

            impl<B: Backend + TokenLogprobs> Backward<B, 1> for LogprobsBackward {
                /// The logits' node, the tokens, the output and the temperature.
                type State = (NodeId, IntTensor<B>, FloatTensor<B>, f32);

                fn backward(
                    self,
                    ops: Ops<Self::State, 1>,
                    grads: &mut Gradients,
                    checkpointer: &mut Checkpointer,
                ) {
                    let [parent] = ops.parents;
                    let grad = grads.consume::<B>(&ops.node);
                    let (node, tokens, logp, temperature) = ops.state;
                    let logits: FloatTensor<B> = checkpointer.retrieve_node_output(node);
                    if let Some(parent) = parent {
                        let dx =
                            B::token_logprobs_backward(logits, tokens, logp, grad, temperature);
                        grads.register::<B>(parent.id, dx);
                    }
                }
            }

            match LogprobsBackward
                .prepare::<C>([logits.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(mut prep) => {
                    let node = prep.checkpoint(&logits);
                    let out =
                        B::token_logprobs(logits.into_primitive(), tokens.clone(), temperature);
                    prep.finish((node, tokens, out.clone(), temperature), out)
                }
                OpsKind::UnTracked(prep) => prep.finish(B::token_logprobs(
                    logits.into_primitive(),
                    tokens,
                    temperature,
                )),
            }
        }

        /// Without a gradient: the entropy is a diagnostic.
        fn token_entropy(logits: FloatTensor<Self>, temperature: f32) -> FloatTensor<Self> {
            #[derive(Debug)]
            struct NoGradient;

            impl<B: Backend> Backward<B, 1> for NoGradient {
                type State = ();

                fn backward(
                    self,
                    _ops: Ops<Self::State, 1>,
                    _grads: &mut Gradients,
                    _checkpointer: &mut Checkpointer,
                ) {
                }
            }

            NoGradient
                .prepare::<C>([logits.node()])
                .compute_bound()
                .stateless(B::token_entropy(logits.into_primitive(), temperature))
        }
    }

    pub fn token_logprobs<const D: usize, const R: usize>(
        logits: Tensor<D>,
        tokens: Tensor<R, Int>,
        temperature: f32,
    ) -> Tensor<R> {
        Tensor::from_dispatch(<Dispatch as TokenLogprobs>::token_logprobs(
            logits.into_dispatch(),
            tokens.into_dispatch(),
            temperature,
        ))
    }

    pub fn token_entropy<const D: usize, const R: usize>(
        logits: Tensor<D>,
        temperature: f32,
    ) -> Tensor<R> {
        Tensor::from_dispatch(<Dispatch as TokenLogprobs>::token_entropy(
            logits.into_dispatch(),
            temperature,
        ))
    }
}

/// Whether the pass may run on `logits`: burn-flex in f32 (elsewhere burn's ops).
pub(super) fn runs<const D: usize>(logits: &burn::tensor::Tensor<D>) -> bool {
    logits.dtype() == burn::tensor::DType::F32 && crate::device::is_flex(&logits.device())
}

pub(super) use flex::{token_entropy, token_logprobs};
