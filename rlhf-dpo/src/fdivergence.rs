//! f-DPO (Wang et al. 2023, "Beyond Reverse KL: Generalizing Direct Preference Optimization
//! with Diverse Divergence Constraints"; TRL's `f_divergence_type`): DPO's implicit reward
//! `β·log(π/π_ref)` comes from the reverse KL that regularises the policy. Under another
//! f-divergence it is `β·f'(π/π_ref)`, so the losses built on the difference of the two
//! responses' rewards read `f'(u_c) − f'(u_r)`, `u = π(y)/π_ref(y)`, in place of `ℓ_c − ℓ_r`,
//! `ℓ = log u`.

use burn::tensor::{Tensor, activation};
use serde::{Deserialize, Serialize};

/// The exponent at which `e^x` is cut, as TRL cuts the α-divergence's in `float32` (`e^80` is
/// finite in `f32`): the forward KL's scores stay finite for any log-ratio, and so do the
/// α-divergence's unless α lies within about 2e−4 of 1 (within 1e−6 the reverse KL's `ℓ` is
/// used). Below the cut the score is flat: a forward-KL log-ratio under −80 gets no gradient.
const MAX_EXPONENT: f32 = 80.0;

/// The divergence from the reference that the policy is held to.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FDivergence {
    /// `KL(π ‖ π_ref)`, DPO's own: `f'(u) = log u + 1`, so the score is `ℓ`.
    #[default]
    ReverseKl,
    /// `KL(π_ref ‖ π)`: `f'(u) = 1 − 1/u`, the score `1 − e^{−ℓ}`.
    ForwardKl,
    /// Jensen–Shannon: `f'(u) = log(2u/(1 + u))`, the score `log 2 + log σ(ℓ)`.
    JsDivergence,
    /// The α-divergence, `f'(u) = (u^{α−1} − 1)/(α − 1)`: the score `(e^{(α−1)·ℓ} − 1)/(α − 1)`;
    /// at α = 1 it is the reverse KL's `ℓ` (TRL falls back to it within 1e−6 of 1).
    AlphaDivergence {
        /// α (TRL's `f_alpha_divergence_coef`, 0.5).
        coef: f32,
    },
}

impl FDivergence {
    /// `f'(u)` of each log-ratio `ℓ = log u`, any shape, the exponentials' arguments cut at 80
    /// ([`MAX_EXPONENT`]).
    pub fn scores<const D: usize>(&self, logratio: Tensor<D>) -> Tensor<D> {
        match *self {
            FDivergence::ReverseKl => logratio,
            FDivergence::ForwardKl => logratio
                .neg()
                .clamp_max(MAX_EXPONENT)
                .exp()
                .neg()
                .add_scalar(1.0),
            FDivergence::JsDivergence => {
                activation::log_sigmoid(logratio).add_scalar(std::f32::consts::LN_2)
            }
            FDivergence::AlphaDivergence { coef } if (coef - 1.0).abs() < 1e-6 => logratio,
            FDivergence::AlphaDivergence { coef } => logratio
                .mul_scalar(coef - 1.0)
                .clamp_max(MAX_EXPONENT)
                .exp()
                .sub_scalar(1.0)
                .div_scalar(coef - 1.0),
        }
    }

    /// Whether the scores are the log-ratios themselves: the reverse KL, or α within 1e−6 of 1.
    pub fn is_reverse_kl(&self) -> bool {
        match *self {
            FDivergence::ReverseKl => true,
            FDivergence::AlphaDivergence { coef } => (coef - 1.0).abs() < 1e-6,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rlhf_core::host::{tensor_from_f64, to_f64_vec as host};

    fn dev() -> burn::tensor::Device {
        rlhf_core::device_from_env().unwrap()
    }

    /// `f'(u)` in `f64` at `u = e^ℓ`, from the f-DPO paper's definitions.
    fn reference(f: FDivergence, l: f64) -> f64 {
        let u = l.exp();
        match f {
            FDivergence::ReverseKl => l,
            FDivergence::ForwardKl => 1.0 - 1.0 / u,
            FDivergence::JsDivergence => (2.0 * u / (1.0 + u)).ln(),
            FDivergence::AlphaDivergence { coef } => {
                let a = f64::from(coef);
                (u.powf(a - 1.0) - 1.0) / (a - 1.0)
            }
        }
    }

    fn every(alpha: f32) -> [FDivergence; 4] {
        [
            FDivergence::ReverseKl,
            FDivergence::ForwardKl,
            FDivergence::JsDivergence,
            FDivergence::AlphaDivergence { coef: alpha },
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Each score against its `f64` definition, its gradient against central differences,
        /// increasing in `ℓ`, 0 at `ℓ = 0` (the reverse KL's constant `f'(1) = 1` is dropped: it
        /// cancels in the difference of two scores), and finite at extreme log-ratios.
        #[test]
        fn scores_match_their_definitions(
            l in prop::collection::vec(-6.0f64..6.0, 1..8),
            alpha in prop_oneof![0.05f32..0.95, 1.05f32..3.0],
        ) {
            for f in every(alpha) {
                let got = host(f.scores(tensor_from_f64(&l, [l.len()], &dev())));
                for (g, &x) in got.iter().zip(&l) {
                    let want = reference(f, x);
                    prop_assert!((g - want).abs() < 1e-4 * (1.0 + want.abs()), "{:?} at {}: {} vs {}", f, x, g, want);
                }
                let ad = dev().autodiff();
                let x = tensor_from_f64(&l, [l.len()], &ad).require_grad();
                let grad = host(x.grad(&f.scores(x.clone()).sum().backward()).expect("depends on ℓ"));
                for (g, &v) in grad.iter().zip(&l) {
                    let d = 1e-4;
                    let fd = (reference(f, v + d) - reference(f, v - d)) / (2.0 * d);
                    prop_assert!((g - fd).abs() < 2e-3 * (1.0 + fd.abs()), "{:?}: d/dℓ at {}: {} vs {}", f, v, g, fd);
                    prop_assert!(*g > 0.0, "{:?}: not increasing at {}", f, v);
                }
                let zero = host(f.scores(tensor_from_f64(&[0.0], [1], &dev())))[0];
                prop_assert!(zero.abs() < 1e-6, "{:?}: {} at ℓ = 0", f, zero);
                let extreme = host(f.scores(tensor_from_f64(&[-1e4, 1e4], [2], &dev())));
                prop_assert!(extreme.iter().all(|v| v.is_finite()), "{:?}: {:?}", f, extreme);
            }
        }
    }

    #[test]
    fn alpha_one_is_the_reverse_kl() {
        let l = [-2.0, 0.5, 3.0];
        let at_one = FDivergence::AlphaDivergence { coef: 1.0 };
        assert!(at_one.is_reverse_kl() && FDivergence::ReverseKl.is_reverse_kl());
        assert!(!FDivergence::ForwardKl.is_reverse_kl());
        assert_eq!(host(at_one.scores(tensor_from_f64(&l, [3], &dev()))), l);
    }
}
