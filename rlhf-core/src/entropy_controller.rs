//! The entropy bonus's coefficient `c`: fixed, or Skywork-OR1's adaptive entropy control (He et
//! al. 2025, "Skywork Open Reasoner 1 Technical Report"; TRL's `use_adaptive_entropy`).
//!
//! The adaptive controller reads the policy's mean entropy `H` over the tokens of each optimizer
//! step. After a step whose `H ≤ H_target` it raises `c` by `δ`, otherwise it lowers it, within
//! `[c_min, c_max]`; the next step applies `c` only when that last `H ≤ H_target`, and no bonus
//! before the first measurement. The bonus so switches on, and grows, while the entropy is at or
//! below the target, and switches off as soon as it is above; `c` then decays, which sets how
//! strong the bonus returns.
//!
//! The settings are `f32`, as the configured coefficient is, so that a coefficient equal to a
//! bound compares equal; the state is `f64`.

use serde::{Deserialize, Serialize};

/// The adaptive controller's settings (TRL's defaults; a table that names some takes the others'
/// defaults).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdaptiveEntropy {
    /// `H_target`, the mean per-token entropy (nats): a step applies `c` when the step before
    /// measured at most this.
    pub target: f32,
    /// `δ`, the change of `c` after each optimizer step.
    pub delta: f32,
    /// `c_min`.
    pub min: f32,
    /// `c_max`.
    pub max: f32,
}

impl AdaptiveEntropy {
    /// `(H_target, δ, c_min, c_max)` in `f64`.
    fn wide(&self) -> (f64, f64, f64, f64) {
        let w = f64::from;
        (w(self.target), w(self.delta), w(self.min), w(self.max))
    }
}

impl Default for AdaptiveEntropy {
    /// TRL's defaults: target 0.2 nats, δ 0.005, `c` in `[0, 1]`.
    fn default() -> Self {
        AdaptiveEntropy {
            target: 0.2,
            delta: 0.005,
            min: 0.0,
            max: 1.0,
        }
    }
}

/// The entropy coefficient over a run: its state is saved with a checkpoint, so a resumed run
/// applies the coefficients the uninterrupted one would ([`Self::resume_from`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntropyController {
    /// The current `c` (the initial one: the configured entropy coefficient).
    coef: f64,
    /// The adaptive settings; `None`: `c` stays fixed.
    adaptive: Option<AdaptiveEntropy>,
    /// The mean entropy of the last optimizer step; `None` before the first.
    last_entropy: Option<f64>,
}

impl EntropyController {
    /// A controller starting at `coef`, fixed when `adaptive` is `None`.
    pub fn new(coef: f32, adaptive: Option<AdaptiveEntropy>) -> Self {
        EntropyController {
            coef: f64::from(coef),
            adaptive,
            last_entropy: None,
        }
    }

    /// This run's controller carrying on from `saved`, the state a checkpoint kept: with adaptive
    /// control, its `c` and last entropy (as TRL restores them); the settings stay this run's. A
    /// fixed coefficient keeps this run's value.
    pub fn resume_from(mut self, saved: &EntropyController) -> Self {
        if self.adaptive.is_some() {
            self.coef = saved.coef;
            self.last_entropy = saved.last_entropy;
        }
        self
    }

    /// Checks that every number is finite, `δ ≥ 0`, `0 ≤ c_min ≤ c ≤ c_max` and `H_target > 0`.
    pub fn validate(&self) -> crate::Result<()> {
        let bad = |m: String| Err(crate::Error::Config(format!("entropy control: {m}")));
        if !self.coef.is_finite() {
            return bad(format!("entropy_coef must be finite, got {}", self.coef));
        }
        let Some(a) = self.adaptive else {
            return Ok(());
        };
        let coef = self.coef as f32;
        if !(a.target.is_finite() && a.target > 0.0) {
            return bad(format!(
                "entropy_target is a mean entropy in nats and must be finite and > 0, got {}",
                a.target
            ));
        }
        if !(a.delta.is_finite() && a.delta >= 0.0) {
            return bad(format!(
                "entropy_coef_delta must be finite and ≥ 0, got {}",
                a.delta
            ));
        }
        if !(a.min.is_finite() && a.max.is_finite() && 0.0 <= a.min && a.min <= a.max) {
            return bad(format!(
                "entropy_coef_min and entropy_coef_max must be finite with 0 ≤ min ≤ max, got {} \
                 and {}",
                a.min, a.max
            ));
        }
        if !(a.min..=a.max).contains(&coef) {
            return bad(format!(
                "the initial entropy_coef {coef} must lie in [entropy_coef_min, entropy_coef_max] \
                 = [{}, {}]",
                a.min, a.max
            ));
        }
        Ok(())
    }

    /// Whether the loss carries an entropy term at all: a coefficient other than 0, or adaptive
    /// control (whose `c` can rise from 0).
    pub fn active(&self) -> bool {
        self.coef != 0.0 || self.adaptive.is_some()
    }

    /// The current `c`.
    pub fn coef(&self) -> f64 {
        self.coef
    }

    /// The coefficient the next optimizer step applies: `c`; with adaptive control, `c` when the
    /// last step's entropy was at most the target, else 0 (and 0 before the first step).
    pub fn applied(&self) -> f64 {
        match self.adaptive {
            None => self.coef,
            Some(a) if self.last_entropy.is_some_and(|h| h <= a.wide().0) => self.coef,
            Some(_) => 0.0,
        }
    }

    /// After an optimizer step whose mean entropy over its tokens was `entropy`: with adaptive
    /// control, `c ← min(c + δ, c_max)` when `entropy ≤ H_target`, else `c ← max(c − δ, c_min)`.
    /// A fixed coefficient does not change.
    pub fn update(&mut self, entropy: f64) {
        let Some(a) = self.adaptive else {
            return;
        };
        let (target, delta, min, max) = a.wide();
        self.coef = if entropy <= target {
            (self.coef + delta).min(max)
        } else {
            (self.coef - delta).max(min)
        };
        self.last_entropy = Some(entropy);
    }
}
