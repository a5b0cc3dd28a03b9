//! The soft update of one model's weights towards another's,
//! `θ_target ← α·θ_source + (1 − α)·θ_target`: TR-DPO's reference update (Gorbatovski et al.
//! 2024, "Learn Your Reference Model for Real Good Alignment"; TRL's `SyncRefModelCallback`,
//! `sync_ref_model` with `ref_model_mixup_alpha` and `ref_model_sync_steps`).

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{DType, FloatDType, Tensor};

use crate::{Error, Result};

/// `target` with every float parameter moved to `α·source + (1 − α)·target`, parameter by
/// parameter in visiting order (the two models must have the same parameters,
/// [`same_parameters`]). The mix is computed in f32 on `target`'s device and stored in
/// `target`'s dtype; `target` keeps its parameter ids and whether each is trained. `α = 1`
/// copies `source`, `α = 0` keeps `target`.
pub fn soft_update<M: Module>(target: M, source: &M, alpha: f32) -> Result<M> {
    if !(0.0..=1.0).contains(&alpha) {
        return Err(Error::Config(format!(
            "a soft update's α must be in [0, 1], got {alpha}"
        )));
    }
    same_parameters(&target, source)?;
    struct Collect(Vec<Tensor<1>>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push(param.val().detach().flatten(0, D - 1));
        }
    }
    let mut sources = Collect(Vec::new());
    source.visit(&mut sources);
    struct Mix {
        sources: std::vec::IntoIter<Tensor<1>>,
        alpha: f32,
    }
    impl ModuleMapper for Mix {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let source = self.sources.next().expect("same_parameters counted them");
            let alpha = self.alpha;
            param.map(|t| {
                let (dtype, device, trained) = (t.dtype(), t.device(), t.is_require_grad());
                let source: Tensor<D> = f32_of(source.to_device(&device).reshape(t.shape()));
                let mixed = f32_of(t.detach())
                    .mul_scalar(1.0 - alpha)
                    .add(source.mul_scalar(alpha));
                let mixed = if dtype == DType::F32 {
                    mixed
                } else {
                    mixed.cast(FloatDType::from(dtype))
                };
                if trained {
                    // a new leaf, as the optimizer makes one, not a node of the mix
                    Tensor::from_data(mixed.into_data(), (&device, dtype)).require_grad()
                } else {
                    mixed
                }
            })
        }
    }
    Ok(target.map(&mut Mix {
        sources: sources.0.into_iter(),
        alpha,
    }))
}

/// Refuses two models whose float parameters differ in number or in shape (in visiting order),
/// which a soft update could not mix: a reference of another architecture or size than the
/// policy, or a policy with adapters.
pub fn same_parameters<A: Module, B: Module>(a: &A, b: &B) -> Result<()> {
    let (a, b) = (shapes(a), shapes(b));
    if a == b {
        return Ok(());
    }
    let first = a.iter().zip(&b).position(|(x, y)| x != y);
    Err(Error::Shape(match first {
        Some(i) => format!(
            "the two models' parameter {i} has the shape {:?} in one and {:?} in the other",
            a[i], b[i]
        ),
        None => format!(
            "the two models have {} and {} float parameters",
            a.len(),
            b.len()
        ),
    }))
}

/// Every float parameter's shape, in visiting order.
fn shapes<M: Module>(module: &M) -> Vec<Vec<usize>> {
    struct Shapes(Vec<Vec<usize>>);
    impl ModuleVisitor for Shapes {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push(param.lazy_shape().to_vec());
        }
    }
    let mut s = Shapes(Vec::new());
    module.visit(&mut s);
    s.0
}

/// `t` in f32.
fn f32_of<const D: usize>(t: Tensor<D>) -> Tensor<D> {
    if t.dtype() == DType::F32 {
        t
    } else {
        t.cast(FloatDType::F32)
    }
}
