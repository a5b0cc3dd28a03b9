//! The optimizer: AdamW with the TL;DR reproduction's settings.

use burn::optim::{AdamWConfig, ModuleOptimizer};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// AdamW settings shared by SFT, reward modelling and PPO (TL;DR detail 10: one learning rate for
/// all three, `eps = 1e−5`, clipping of the global gradient norm).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimizerConfig {
    /// Peak learning rate (TL;DR reproduction: 3e−6 for Pythia 1B+; tiny CPU models want ~1e−3).
    pub lr: f64,
    /// Adam β₁.
    pub beta1: f32,
    /// Adam β₂.
    pub beta2: f32,
    /// Adam ε; 1e−5 as in the TL;DR reproduction (PyTorch's default is 1e−8).
    pub eps: f32,
    /// Decoupled weight decay (TRL's default: 0).
    pub weight_decay: f32,
    /// Clip the *global* gradient norm (over all parameters) to this value; `None` turns it off.
    /// TRL's default is 1.0.
    pub max_grad_norm: Option<f32>,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        OptimizerConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-5,
            weight_decay: 0.0,
            max_grad_norm: Some(1.0),
        }
    }
}

impl OptimizerConfig {
    /// Checks ranges: a positive learning rate and ε, betas in `[0, 1)`, a positive clip norm.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(format!("optimizer: {m}")));
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("lr must be > 0, got {}", self.lr));
        }
        if !is_positive(self.eps) {
            return bad(format!("eps must be > 0, got {}", self.eps));
        }
        for (name, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return bad(format!("{name} must be in [0, 1), got {b}"));
            }
        }
        if self.weight_decay < 0.0 {
            return bad(format!(
                "weight_decay must be ≥ 0, got {}",
                self.weight_decay
            ));
        }
        if let Some(n) = self.max_grad_norm
            && !is_positive(n)
        {
            return bad(format!("max_grad_norm must be > 0, got {n}"));
        }
        Ok(())
    }

    /// burn's AdamW with these settings. Gradient clipping is *not* given to burn: burn's
    /// `GradientClipping::Norm` clips each parameter tensor by its own norm, while the papers clip
    /// the global norm; trainers call [`crate::train::clip_global_grad_norm`] before `step`.
    pub fn build(&self) -> Result<ModuleOptimizer> {
        self.validate()?;
        Ok(AdamWConfig::new()
            .with_beta_1(self.beta1)
            .with_beta_2(self.beta2)
            .with_epsilon(self.eps)
            .with_weight_decay(self.weight_decay)
            .init())
    }
}

/// `x > 0`, and false for NaN.
pub(crate) fn is_positive(x: f32) -> bool {
    x > 0.0
}
