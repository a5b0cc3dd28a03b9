//! The soft update of one model's weights towards another's,
//! `θ_target ← α·θ_source + (1 − α)·θ_target`: TR-DPO's reference update (Gorbatovski et al.
//! 2024, "Learn Your Reference Model for Real Good Alignment"; TRL's `SyncRefModelCallback`,
//! `sync_ref_model` with `ref_model_mixup_alpha` and `ref_model_sync_steps`).

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{FloatDType, Tensor};

use crate::{Error, Result};

/// `target` with every float parameter moved to `α·source + (1 − α)·target`, parameter by
/// parameter in visiting order (the two models must have the same parameters: the same
/// architecture, neither with adapters the other lacks). The mix is computed in `target`'s dtype
/// on `target`'s device; `target` keeps its parameter ids and whether each is trained. `α = 1`
/// copies `source`, `α = 0` keeps `target`.
pub fn soft_update<M: Module>(target: M, source: &M, alpha: f32) -> Result<M> {
    if !(0.0..=1.0).contains(&alpha) {
        return Err(Error::Config(format!(
            "a soft update's α must be in [0, 1], got {alpha}"
        )));
    }
    struct Collect(Vec<Tensor<1>>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push(param.val().detach().flatten(0, D - 1));
        }
    }
    let mut sources = Collect(Vec::new());
    source.visit(&mut sources);
    let sources = sources.0;
    let wanted = crate::train::memory::float_params(&target);
    if wanted.len() != sources.len()
        || wanted
            .iter()
            .zip(&sources)
            .any(|(w, s)| w.elements != s.dims()[0] as u64)
    {
        return Err(Error::Shape(format!(
            "a soft update needs two models with the same parameters: the target has {} \
             float parameters, the source {}, or their shapes differ",
            wanted.len(),
            sources.len()
        )));
    }
    struct Mix {
        sources: std::vec::IntoIter<Tensor<1>>,
        alpha: f32,
    }
    impl ModuleMapper for Mix {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let source = self.sources.next().expect("counted above");
            let alpha = self.alpha;
            param.map(|t| {
                let trained = t.is_require_grad();
                let source: Tensor<D> = source.to_device(&t.device()).reshape(t.shape());
                let source = if source.dtype() == t.dtype() {
                    source
                } else {
                    source.cast(FloatDType::from(t.dtype()))
                };
                let device = t.device();
                let mixed = t
                    .detach()
                    .mul_scalar(1.0 - alpha)
                    .add(source.mul_scalar(alpha));
                if trained {
                    // a new leaf, as the optimizer makes one, not a node of the mix
                    Tensor::from_data(mixed.into_data(), &device).require_grad()
                } else {
                    mixed
                }
            })
        }
    }
    Ok(target.map(&mut Mix {
        sources: sources.into_iter(),
        alpha,
    }))
}
