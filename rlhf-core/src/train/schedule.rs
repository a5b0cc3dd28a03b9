//! Learning-rate schedules.

use serde::{Deserialize, Serialize};

/// How the learning rate moves with the optimizer step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LrSchedule {
    /// The base rate throughout.
    #[default]
    Constant,
    /// Linear warm-up from 0 over `warmup` steps, then the base rate.
    ConstantWithWarmup {
        /// Warm-up steps.
        warmup: u64,
    },
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
            LrSchedule::ConstantWithWarmup { warmup } => warm(warmup).unwrap_or(base),
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

/// A schedule's shape, as transformers' `lr_scheduler_type` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleShape {
    /// The base rate throughout; no warm-up, whatever is asked (as transformers' `constant`).
    Constant,
    /// Warm-up, then the base rate.
    ConstantWithWarmup,
    /// Warm-up, then linear decay to 0 (transformers' default).
    Linear,
    /// Warm-up, then half a cosine to 0.
    Cosine,
}

/// A schedule before the run's length is known: transformers' `lr_scheduler_type`,
/// `warmup_steps` and `warmup_ratio`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SchedulePlan {
    /// The shape.
    pub shape: ScheduleShape,
    /// Warm-up steps; when 0, `warmup_ratio` of the run's steps.
    pub warmup_steps: u64,
    /// Warm-up as a share of the run's steps, in `[0, 1]`.
    pub warmup_ratio: f64,
}

impl SchedulePlan {
    /// Warm-up steps of a run of `total` optimizer steps: `warmup_steps` when > 0, otherwise
    /// `⌈warmup_ratio·total⌉` (transformers' `get_warmup_steps`).
    pub fn warmup(&self, total: u64) -> u64 {
        if self.warmup_steps > 0 {
            self.warmup_steps
        } else {
            (self.warmup_ratio * total as f64).ceil() as u64
        }
    }

    /// The schedule over `total` optimizer steps.
    pub fn over(&self, total: u64) -> LrSchedule {
        let warmup = self.warmup(total);
        let total = total.max(1);
        match self.shape {
            ScheduleShape::Constant => LrSchedule::Constant,
            ScheduleShape::ConstantWithWarmup => LrSchedule::ConstantWithWarmup { warmup },
            ScheduleShape::Linear => LrSchedule::Linear { warmup, total },
            ScheduleShape::Cosine => LrSchedule::Cosine {
                warmup,
                total,
                min_ratio: 0.0,
            },
        }
    }

    /// Refuses a warm-up share outside `[0, 1]`.
    pub fn validate(&self) -> crate::Result<()> {
        if !(0.0..=1.0).contains(&self.warmup_ratio) {
            return Err(crate::Error::Config(format!(
                "warmup_ratio is a share of the run's steps, in [0, 1]; got {}",
                self.warmup_ratio
            )));
        }
        Ok(())
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

    /// transformers' rules: `constant` ignores warm-up, `constant_with_warmup` keeps it, a warm-up
    /// ratio rounds up (`math.ceil`), and warm-up steps win over the ratio.
    #[test]
    fn a_plan_follows_transformers_rules() {
        let plan = |shape, warmup_steps, warmup_ratio| SchedulePlan {
            shape,
            warmup_steps,
            warmup_ratio,
        };
        assert_eq!(
            plan(ScheduleShape::Constant, 3, 0.0).over(10),
            LrSchedule::Constant
        );
        let warm = plan(ScheduleShape::ConstantWithWarmup, 0, 0.1).over(14);
        assert_eq!(warm, LrSchedule::ConstantWithWarmup { warmup: 2 });
        assert!((warm.lr_at(1.0, 0) - 0.5).abs() < 1e-12);
        assert_eq!(warm.lr_at(1.0, 1), 1.0);
        assert_eq!(warm.lr_at(1.0, 13), 1.0);
        assert_eq!(
            plan(ScheduleShape::Linear, 4, 0.5).over(12),
            LrSchedule::Linear {
                warmup: 4,
                total: 12
            }
        );
        assert_eq!(
            plan(ScheduleShape::Cosine, 0, 0.0).over(0),
            LrSchedule::Cosine {
                warmup: 0,
                total: 1,
                min_ratio: 0.0
            }
        );
        assert!(plan(ScheduleShape::Linear, 0, 1.5).validate().is_err());
        assert!(plan(ScheduleShape::Linear, 0, f64::NAN).validate().is_err());
        assert!(plan(ScheduleShape::Linear, 0, 1.0).validate().is_ok());
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
