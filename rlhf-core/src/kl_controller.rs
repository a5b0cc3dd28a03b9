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
