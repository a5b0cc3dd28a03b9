//! TR-DPO's reference updates (Gorbatovski et al. 2024, "Learn Your Reference Model for Real Good
//! Alignment"; TRL's `sync_ref_model`): every `τ` optimizer steps the reference moves to
//! `π_ref ← α·π_θ + (1 − α)·π_ref`, so that the policy is held to a reference that follows it.
//! Its log-probs are then computed batch by batch, never cached, and the reference's weights are
//! a part of every checkpoint, so that a resumed run trains against the reference the
//! uninterrupted run had.

use std::path::Path;
use std::sync::Mutex;

use burn::module::Module;
use rlhf_core::train::checkpoint::module_from_bytes;
use rlhf_core::train::{AfterStep, Checkpoint, Part, soft_update};
use rlhf_core::{Error, Result};
use rlhf_models::CausalLm;
use serde::{Deserialize, Serialize};

/// How far and how often the reference follows the policy.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SyncRef {
    /// `α`, the policy's share of the new reference (TRL's `ref_model_mixup_alpha`, 0.6).
    pub alpha: f32,
    /// `τ`, optimizer steps between updates (TRL's `ref_model_sync_steps`, 512).
    pub steps: u64,
}

impl Default for SyncRef {
    /// TRL's defaults: `α = 0.6`, `τ = 512`.
    fn default() -> Self {
        SyncRef {
            alpha: 0.6,
            steps: 512,
        }
    }
}

impl SyncRef {
    /// `α` in `(0, 1]` (at 0 the reference would never move) and `τ ≥ 1`.
    pub fn validate(&self) -> Result<()> {
        if !(self.alpha > 0.0 && self.alpha <= 1.0) {
            return Err(Error::Config(format!(
                "sync_ref_model: ref_model_mixup_alpha must be in (0, 1], got {}",
                self.alpha
            )));
        }
        if self.steps == 0 {
            return Err(Error::Config(
                "sync_ref_model: ref_model_sync_steps must be ≥ 1".into(),
            ));
        }
        Ok(())
    }
}

/// The reference of a run that syncs it: held on the inference device, moved after every `τ`-th
/// optimizer step ([`AfterStep`]), and saved in every checkpoint as its `reference` part.
pub struct LiveReference {
    model: Mutex<CausalLm>,
    sync: SyncRef,
}

/// The checkpoint part that holds the synced reference.
pub const REFERENCE_PART: &str = "reference";

impl LiveReference {
    /// `reference` as the run starts with it.
    pub fn new(reference: &CausalLm, sync: SyncRef) -> Self {
        LiveReference {
            model: Mutex::new(reference.valid()),
            sync,
        }
    }

    /// The reference as it is now (a clone shares its tensors).
    pub fn current(&self) -> CausalLm {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CausalLm> {
        // a panic elsewhere cannot leave the weights half-written: each update replaces them whole
        self.model.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl AfterStep<CausalLm> for LiveReference {
    fn after_step(&self, step: u64, policy: &CausalLm) -> Result<()> {
        if step.is_multiple_of(self.sync.steps) {
            let mut reference = self.lock();
            *reference = soft_update(reference.clone(), &policy.valid(), self.sync.alpha)?;
        }
        Ok(())
    }

    fn parts(&self) -> Vec<(String, Part<'static>)> {
        vec![(REFERENCE_PART.to_string(), Part::module(self.current()))]
    }

    fn restore(&self, c: &Checkpoint, dir: &Path) -> Result<()> {
        let bytes = c.part(REFERENCE_PART, dir)?;
        let mut reference = self.lock();
        *reference = module_from_bytes(reference.clone(), bytes)?;
        Ok(())
    }
}
