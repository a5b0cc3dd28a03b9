//! GPT-NeoX's activation, the GELU `x·Φ(x)` with `Φ(x) = ½(1 + erf(x/√2))`, and its gradient
//! `Φ(x) + x·φ(x)`, each as one vectorised pass over the tensor on burn-flex; burn's own `gelu`
//! on every other backend.
//!
//! burn-flex evaluates its GELU through a per-element closure around libm's `erff`, which is
//! neither inlined nor vectorised: on the study's small models the activation took a fifth to
//! a quarter of a pipeline's time (`docs/perf-report.md`). Here `erf` is Abramowitz and Stegun's
//! formula 7.1.26 (`1 − t·P(t)·e^{−x²}`, `t = 1/(1 + p·x)`) at `|x| ≥ 0.6` and its Maclaurin
//! series below, where the formula cancels in f32; `exp` is [`rlhf_core::vector::exp`]. In f32
//! `erf` stays within 3e-7 of the exact value (a property test holds it to an f64 reference), a
//! few units in the last place near ±1, where libm's is within one.
//! The loops are compiled for AVX-512 and for AVX2 with FMA as well, and the CPU's best is
//! chosen when the pass runs ([`rlhf_core::vector`]).

use burn::tensor::Tensor;
use burn::tensor::activation;

/// The GELU of `x`: the vectorised pass on burn-flex for f32 tensors (with or without autodiff;
/// the extension falls back to burn-flex's own GELU for other dtypes), burn's `gelu` on other
/// backends.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if rlhf_core::device::is_flex(&x.device()) {
        return flex::gelu(x);
    }
    activation::gelu(x)
}

/// `erf(x)` in f32 (see the module documentation for the formula and its accuracy).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    erf_given_gaussian(x, rlhf_core::vector::exp(-x * x))
}

/// `erf(x)` from `e^{−x²}` (`gaussian`), which the GELU's gradient shares with `φ`.
#[inline(always)]
fn erf_given_gaussian(x: f32, gaussian: f32) -> f32 {
    let a = x.abs();
    // Abramowitz and Stegun 7.1.26
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let p = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152 + t * 1.061_405_4))));
    let far = 1.0 - p * gaussian;
    // 2/√π · (a − a³/3 + a⁵/10 − a⁷/42 + a⁹/216 − a¹¹/1320)
    let z = a * a;
    let series =
        1.0 + z * (-1.0 / 3.0 + z * (0.1 + z * (-1.0 / 42.0 + z * (1.0 / 216.0 - z / 1320.0))));
    let near = std::f32::consts::FRAC_2_SQRT_PI * a * series;
    let y = if a < 0.6 { near } else { far };
    y.copysign(x)
}

/// `gelu(x) = ½x(1 + erf(x/√2))`.
#[inline(always)]
pub fn gelu_scalar(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// `d gelu / dx = Φ(x) + x·φ(x)`, `φ(x) = e^{−x²/2} / √(2π)`.
#[inline(always)]
pub fn gelu_grad_scalar(x: f32) -> f32 {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    let u = x * std::f32::consts::FRAC_1_SQRT_2;
    // e^{−x²/2}: φ's exponent, and erf's at x/√2
    let gaussian = rlhf_core::vector::exp(-u * u);
    let cdf = 0.5 * (1.0 + erf_given_gaussian(u, gaussian));
    cdf + x * INV_SQRT_2PI * gaussian
}

/// The loops over slices, compiled for the CPU's widest vectors.
mod loops {
    use rlhf_core::vector::widest;

    #[inline(always)]
    fn gelu_loop(x: &mut [f32]) {
        for v in x {
            *v = super::gelu_scalar(*v);
        }
    }

    #[inline(always)]
    fn gelu_backward_loop(x: &[f32], grad: &mut [f32]) {
        assert_eq!(x.len(), grad.len(), "one gradient per input");
        for (g, &v) in grad.iter_mut().zip(x) {
            *g *= super::gelu_grad_scalar(v);
        }
    }

    widest!(gelu_in_place, (x: &mut [f32]), gelu_loop);
    widest!(gelu_backward_in_place, (x: &[f32], grad: &mut [f32]), gelu_backward_loop);
}

pub use loops::{gelu_backward_in_place, gelu_in_place};

/// The pass as a burn backend extension: burn-flex runs the loops above; under autodiff the
/// forward is the same pass and the backward the gradient loop, with the input kept for it.
#[cfg(feature = "flex")]
mod flex {
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::autodiff::{Autodiff, NodeId};
    use burn::backend::flex::FlexTensor;
    use burn::backend::ops::ActivationOps;
    use burn::backend::tensor::FloatTensor;
    use burn::backend::{Backend, Dispatch, Flex, backend_extension};
    use burn::tensor::{DType, Tensor};

    use rlhf_core::vector::owned;

    /// The GELU pass and its gradient; by default burn's own.
    #[backend_extension(Flex, Autodiff)]
    pub trait NeoxGelu: Backend {
        fn neox_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
            Self::gelu(x)
        }
        fn neox_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
            Self::gelu_backward(x, grad)
        }
    }

    impl NeoxGelu for Flex {
        fn neox_gelu(x: FlexTensor) -> FlexTensor {
            if x.dtype() != DType::F32 {
                return <Flex as ActivationOps<Flex>>::gelu(x);
            }
            let (mut x, range) = owned(x);
            super::gelu_in_place(&mut x.storage_mut::<f32>()[range]);
            x
        }

        fn neox_gelu_backward(x: FlexTensor, grad: FlexTensor) -> FlexTensor {
            let same_shape = x.layout().shape() == grad.layout().shape();
            if x.dtype() != DType::F32 || grad.dtype() != DType::F32 || !same_shape {
                return <Flex as ActivationOps<Flex>>::gelu_backward(x, grad);
            }
            let x = x.to_contiguous();
            let xs = x.as_slice::<f32>().expect("a contiguous tensor");
            let (mut grad, range) = owned(grad);
            super::gelu_backward_in_place(xs, &mut grad.storage_mut::<f32>()[range]);
            grad
        }
    }

    impl<B: Backend + NeoxGelu, C: CheckpointStrategy> NeoxGelu for Autodiff<B, C> {
        fn neox_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
            #[derive(Debug)]
            struct GeluBackward;

            impl<B: Backend + NeoxGelu> Backward<B, 1> for GeluBackward {
                type State = NodeId;

                fn backward(
                    self,
                    ops: Ops<Self::State, 1>,
                    grads: &mut Gradients,
                    checkpointer: &mut Checkpointer,
                ) {
                    let [parent] = ops.parents;
                    let grad = grads.consume::<B>(&ops.node);
                    let input: FloatTensor<B> = checkpointer.retrieve_node_output(ops.state);
                    if let Some(parent) = parent {
                        grads.register::<B>(parent.id, B::neox_gelu_backward(input, grad));
                    }
                }
            }

            match GeluBackward
                .prepare::<C>([x.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(mut prep) => {
                    let state = prep.checkpoint(&x);
                    prep.finish(state, B::neox_gelu(x.primitive().clone()))
                }
                OpsKind::UnTracked(prep) => prep.finish(B::neox_gelu(x.into_primitive())),
            }
        }
    }

    pub(super) fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
        Tensor::from_dispatch(<Dispatch as NeoxGelu>::neox_gelu(x.into_dispatch()))
    }
}
