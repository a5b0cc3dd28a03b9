//! Gradients over a whole module: the global norm, clipping by it, scaling, and accumulation
//! over micro-batches.
//!
//! burn's own `GradientClipping::Norm` clips every parameter tensor by *its own* norm. The
//! papers (and PyTorch's `clip_grad_norm_`) clip by the norm of all gradients together, which
//! keeps the update's direction; that is what this module does.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::Tensor;

/// `‖g‖₂` over every float parameter of `module` that has a gradient in `grads`.
///
/// One device→host read. Returns NaN or infinity when a gradient is not finite, which is how a
/// trainer's non-finite guard sees it.
pub fn global_grad_norm<M: Module>(module: &M, grads: &GradientsParams) -> f32 {
    struct SquaredNorm<'a> {
        grads: &'a GradientsParams,
        total: Option<Tensor<1>>,
    }
    impl ModuleVisitor for SquaredNorm<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(param.id) {
                let sq = g.square().sum();
                self.total = Some(match self.total.take() {
                    Some(t) => t.add(sq),
                    None => sq,
                });
            }
        }
    }
    let mut visitor = SquaredNorm { grads, total: None };
    module.visit(&mut visitor);
    match visitor.total {
        Some(t) => t.into_scalar::<f32>().sqrt(),
        None => 0.0,
    }
}

/// Multiplies every gradient of `module`'s parameters by `factor`.
pub fn scale_grads<M: Module>(module: &M, grads: GradientsParams, factor: f32) -> GradientsParams {
    struct Scale {
        grads: GradientsParams,
        factor: f32,
    }
    impl ModuleVisitor for Scale {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.remove::<D>(param.id) {
                self.grads
                    .register::<D>(param.id, g.mul_scalar(self.factor));
            }
        }
    }
    let mut visitor = Scale { grads, factor };
    module.visit(&mut visitor);
    visitor.grads
}

/// Clips the global gradient norm to `max_norm` (as `torch.nn.utils.clip_grad_norm_`): when
/// `‖g‖ > max_norm`, every gradient is multiplied by `max_norm / (‖g‖ + 1e−6)`.
///
/// Returns the gradients and the norm *before* clipping (the number to log, and the one a
/// non-finite guard checks). Non-finite norms leave the gradients untouched.
pub fn clip_global_grad_norm<M: Module>(
    module: &M,
    grads: GradientsParams,
    max_norm: f32,
) -> (GradientsParams, f32) {
    let norm = global_grad_norm(module, &grads);
    if norm.is_finite() && norm > max_norm {
        (scale_grads(module, grads, max_norm / (norm + 1e-6)), norm)
    } else {
        (grads, norm)
    }
}

/// [`clip_global_grad_norm`] when `max_norm` is set (an optimizer's `max_grad_norm`); otherwise
/// the gradients as they are, and their norm.
pub fn clip_if_set<M: Module>(
    module: &M,
    grads: GradientsParams,
    max_norm: Option<f32>,
) -> (GradientsParams, f32) {
    match max_norm {
        Some(max) => clip_global_grad_norm(module, grads, max),
        None => {
            let norm = global_grad_norm(module, &grads);
            (grads, norm)
        }
    }
}

/// Gradient accumulation: the weighted mean of the gradients of several micro-batches.
///
/// A micro-batch whose loss is a mean over `w` items (examples, pairs, target tokens) is added
/// with the gradients of `w·loss` and weight `w`; [`Self::take_mean`] divides the sum by `Σ w`.
/// The result is the gradient of the mean over every item of the accumulated batch, which is
/// what one batch holding them all gives, however unevenly the items fall into micro-batches
/// (a last, smaller micro-batch, or SFT batches with different numbers of target tokens: TRL's
/// `num_items_in_batch`). With equal weights it is the plain mean of the micro-batch gradients.
pub struct GradAccumulation<M> {
    inner: GradientsAccumulator<M>,
    micro_batches: usize,
    weight: f64,
}

impl<M: Module> Default for GradAccumulation<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M: Module> GradAccumulation<M> {
    /// An empty accumulator.
    pub fn new() -> Self {
        GradAccumulation {
            inner: GradientsAccumulator::new(),
            micro_batches: 0,
            weight: 0.0,
        }
    }

    /// Adds one micro-batch's gradients: those of its loss multiplied by `weight` (use weight 1
    /// with the loss itself for a plain mean over micro-batches).
    pub fn add(&mut self, module: &M, grads: GradientsParams, weight: f64) {
        self.inner.accumulate(module, grads);
        self.micro_batches += 1;
        self.weight += weight;
    }

    /// How many micro-batches have been added since the last [`Self::take_mean`].
    pub fn micro_batches(&self) -> usize {
        self.micro_batches
    }

    /// `Σ gradients / Σ weights` over the micro-batches added so far; resets the accumulator.
    /// Without any weight (nothing added, or only empty micro-batches) the sum is returned as it is.
    pub fn take_mean(&mut self, module: &M) -> GradientsParams {
        let weight = std::mem::take(&mut self.weight);
        self.micro_batches = 0;
        let sum = self.inner.grads();
        if weight > 0.0 && weight != 1.0 {
            scale_grads(module, sum, (1.0 / weight) as f32)
        } else {
            sum
        }
    }
}

/// Gives every parameter of `module` a new [`ParamId`](burn::module::ParamId) and a new autodiff
/// leaf, keeping its values and whether it is trained.
///
/// burn keys gradients and optimizer state by parameter id, and `clone()` keeps the ids: a value
/// model whose backbone was cloned from the policy (directly, or through a reward model trained
/// from the SFT model) would share ids with the policy, and training both with one optimizer
/// would mix their gradients. Trainers that optimise two such models together call this on one.
pub fn with_fresh_param_ids<M: Module>(module: M) -> M {
    struct Fresh;
    impl burn::module::ModuleMapper for Fresh {
        fn map_float<const D: usize>(
            &mut self,
            param: burn::module::Param<burn::tensor::Tensor<D>>,
        ) -> burn::module::Param<burn::tensor::Tensor<D>> {
            // a new leaf too: a clone's tensors are the same autodiff nodes as the original's
            let value = param.val();
            let require_grad = value.is_require_grad();
            burn::module::Param::initialized(burn::module::ParamId::new(), value.detach())
                .set_require_grad(require_grad)
        }
    }
    module.map(&mut Fresh)
}
