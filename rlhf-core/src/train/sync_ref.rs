//! A reference that follows the policy: TR-DPO's (Gorbatovski et al. 2024, "Learn Your Reference
//! Model for Real Good Alignment"; TRL's `sync_ref_model`). Every `τ` optimizer steps the
//! reference moves to `π_ref ← α·π_θ + (1 − α)·π_ref` ([`soft_update`]), so that the policy is
//! held to a reference that follows it. Its weights are a part of every checkpoint, so that a
//! resumed run trains against the reference the uninterrupted run had.

use std::path::Path;
use std::sync::Mutex;

use burn::module::Module;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::checkpoint::{Checkpoint, Part, module_from_bytes};
use super::fit::AfterStep;
use super::soft_update::{same_parameters, soft_update};
use crate::{Error, Result};

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

/// The checkpoint part that holds a synced reference.
pub const REFERENCE_PART: &str = "reference";

/// The reference of a run that syncs it: held as the caller gave it (an inference copy), moved
/// after every `τ`-th optimizer step ([`AfterStep`]), saved in every checkpoint as its
/// [`REFERENCE_PART`]. Copies on other devices (data-parallel replicas) are made once per update.
pub struct LiveReference<M> {
    model: Mutex<M>,
    copies: Mutex<Vec<(Device, M)>>,
    sync: SyncRef,
}

impl<M: Module> LiveReference<M> {
    /// `reference` as the run starts with it (without gradients), to follow `policy`, whose
    /// parameters it must share in number and shape. A policy with frozen parameters (LoRA's
    /// adapters on frozen weights) is refused: its weights are not the reference's to mix in
    /// (TRL refuses PEFT models too).
    pub fn new(reference: &M, policy: &M, sync: SyncRef) -> Result<Self> {
        sync.validate()?;
        if super::memory::float_params(policy)
            .iter()
            .any(|p| !p.trains)
        {
            return Err(Error::Config(
                "sync_ref_model mixes the policy's weights into the reference's, and this \
                 policy trains adapters on frozen weights (LoRA): train it whole, or leave the \
                 reference frozen (TRL refuses PEFT models too)"
                    .into(),
            ));
        }
        same_parameters(reference, policy).map_err(|e| {
            Error::Config(format!(
                "sync_ref_model mixes the policy's weights into the reference's, and {e}: the \
                 reference must be the policy's architecture and size"
            ))
        })?;
        Ok(LiveReference {
            model: Mutex::new(reference.valid()),
            copies: Mutex::new(Vec::new()),
            sync,
        })
    }

    /// What following the policy holds in memory beyond the frozen `reference` (for the memory
    /// estimate): the moved reference itself (the caller's stays), the new weights while an
    /// update builds them, and a copy on each of the other `devices` that read it ([`Self::on`]),
    /// `devices + 1` times the reference's bytes.
    pub fn held_bytes(reference: &M, devices: u64) -> u64 {
        let bytes: u64 = super::memory::float_params(reference)
            .iter()
            .map(|p| p.bytes)
            .sum();
        bytes * (devices.max(1) + 1)
    }

    /// The reference as it is now (a clone shares its tensors).
    pub fn current(&self) -> M {
        lock(&self.model).clone()
    }

    /// The reference as it is now, on `device` (copied there once per update).
    pub fn on(&self, device: &Device) -> M {
        let mut copies = lock(&self.copies);
        if let Some((_, m)) = copies.iter().find(|(d, _)| d == device) {
            return m.clone();
        }
        let m = self.current().to_device(device);
        copies.push((device.clone(), m.clone()));
        m
    }

    /// Replaces the reference and forgets its copies (both locks held, in [`Self::on`]'s
    /// order, so that no copy of the old weights is made meanwhile).
    fn set(&self, next: impl FnOnce(M) -> Result<M>) -> Result<()> {
        let mut copies = lock(&self.copies);
        let mut reference = lock(&self.model);
        copies.clear();
        *reference = next(reference.clone())?;
        Ok(())
    }
}

/// `m`'s guard: an update replaces the weights whole, so a panic elsewhere cannot leave them
/// half-written.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<M: Module + 'static> AfterStep<M> for LiveReference<M> {
    fn after_step(&self, step: u64, policy: &M) -> Result<()> {
        if step.is_multiple_of(self.sync.steps) {
            self.set(|r| soft_update(r, &policy.valid(), self.sync.alpha))?;
        }
        Ok(())
    }

    fn parts(&self) -> Vec<(String, Part<'static>)> {
        vec![(REFERENCE_PART.to_string(), Part::module(self.current()))]
    }

    fn restore(&self, c: &Checkpoint, dir: &Path) -> Result<()> {
        let bytes = c.part(REFERENCE_PART, dir).map_err(|_| Error::Checkpoint {
            path: dir.to_path_buf(),
            message: format!(
                "checkpoint of step {} holds no synced reference: it was written by a run \
                 whose reference did not follow the policy (sync_ref_model off)",
                c.step
            ),
        })?;
        self.set(|r| module_from_bytes(r, bytes))
    }
}
