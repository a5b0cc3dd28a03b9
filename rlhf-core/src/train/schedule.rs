//! Learning-rate schedules.

use serde::{Deserialize, Serialize};

/// How the learning rate moves with the optimizer step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LrSchedule {
    /// The base rate throughout.
    #[default]
    Constant,
    /// Linear warm-up from 0 over `warmup` steps, then linear decay to 0 at `total` steps
    /// (the TL;DR reproduction anneals PPO's rate linearly to 0).
    Linear {
        /// Warm-up steps.
        warmup: u64,
        /// Step at which the rate reaches 0.
        total: u64,
    },
    /// Linear warm-up, then half a cosine from the base rate down to `min_ratio × base` at `total`.
    Cosine {
        /// Warm-up steps.
        warmup: u64,
        /// Last step of the decay.
        total: u64,
        /// Floor as a share of the base rate.
        min_ratio: f64,
    },
}

impl LrSchedule {
    /// The learning rate for optimizer step `step` (0-based) with peak rate `base`.
    pub fn lr_at(&self, base: f64, step: u64) -> f64 {
        let warm = |warmup: u64| {
            if step < warmup {
                Some(base * (step + 1) as f64 / warmup as f64)
            } else {
                None
            }
        };
        match *self {
            LrSchedule::Constant => base,
            LrSchedule::Linear { warmup, total } => warm(warmup).unwrap_or_else(|| {
                let span = total.saturating_sub(warmup).max(1) as f64;
                let done = step.saturating_sub(warmup) as f64;
                base * (1.0 - done / span).max(0.0)
            }),
            LrSchedule::Cosine {
                warmup,
                total,
                min_ratio,
            } => warm(warmup).unwrap_or_else(|| {
                let span = total.saturating_sub(warmup).max(1) as f64;
                let progress = (step.saturating_sub(warmup) as f64 / span).min(1.0);
                let cos = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
                base * (min_ratio + (1.0 - min_ratio) * cos)
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_linear_decay_reaches_zero() {
        let s = LrSchedule::Linear {
            warmup: 4,
            total: 12,
        };
        assert!((s.lr_at(1.0, 0) - 0.25).abs() < 1e-12);
        assert!((s.lr_at(1.0, 3) - 1.0).abs() < 1e-12);
        assert!((s.lr_at(1.0, 8) - 0.5).abs() < 1e-12);
        assert_eq!(s.lr_at(1.0, 12), 0.0);
        assert_eq!(s.lr_at(1.0, 100), 0.0);
    }

    #[test]
    fn cosine_ends_at_its_floor() {
        let s = LrSchedule::Cosine {
            warmup: 0,
            total: 10,
            min_ratio: 0.1,
        };
        assert!((s.lr_at(2.0, 0) - 2.0).abs() < 1e-12);
        assert!((s.lr_at(2.0, 5) - 1.1).abs() < 1e-12);
        assert!((s.lr_at(2.0, 10) - 0.2).abs() < 1e-12);
    }
}
