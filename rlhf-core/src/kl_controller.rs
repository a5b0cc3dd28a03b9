//! The KL coefficient β: fixed (TL;DR default, β = 0.05) or adaptive (Ziegler et al. 2019).

use serde::{Deserialize, Serialize};

/// How β evolves over training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum KlController {
    /// β stays at `value`.
    Fixed {
        /// β.
        value: f64,
    },
    /// `e = clip(KL/KL_target − 1, −0.2, 0.2)`, `β ← β·(1 + e·n_steps/horizon)`.
    Adaptive {
        /// The current β.
        value: f64,
        /// `KL_target`, in nats per sequence.
        target: f64,
        /// `horizon`, in samples.
        horizon: f64,
    },
}

impl Default for KlController {
    /// Fixed β = 0.05, the TL;DR reproduction's default.
    fn default() -> Self {
        KlController::Fixed { value: 0.05 }
    }
}

impl KlController {
    /// The current β.
    pub fn value(&self) -> f64 {
        match self {
            KlController::Fixed { value } | KlController::Adaptive { value, .. } => *value,
        }
    }

    /// Checks that β is finite and ≥ 0 (a negative β would reward moving away from the
    /// reference) and, for the adaptive controller, that the target and the horizon it divides
    /// by are finite and > 0.
    pub fn validate(&self) -> crate::Result<()> {
        let bad = |m: String| Err(crate::Error::Config(format!("kl controller: {m}")));
        let value = self.value();
        if !value.is_finite() || value < 0.0 {
            return bad(format!("β must be finite and ≥ 0, got {value}"));
        }
        if let KlController::Adaptive {
            target, horizon, ..
        } = self
            && !(target.is_finite() && *target > 0.0 && horizon.is_finite() && *horizon > 0.0)
        {
            return bad(format!(
                "the adaptive controller needs a target and a horizon > 0, got {target} and \
                 {horizon}"
            ));
        }
        Ok(())
    }

    /// Updates β after a batch of `n_steps` samples whose mean KL to the reference was `current_kl`.
    pub fn update(&mut self, current_kl: f64, n_steps: usize) {
        if let KlController::Adaptive {
            value,
            target,
            horizon,
        } = self
        {
            let error = (current_kl / *target - 1.0).clamp(-0.2, 0.2);
            *value *= 1.0 + error * n_steps as f64 / *horizon;
        }
    }
}
