//! Will a run fit? An estimate of a training run's memory, checked against what the machine has
//! before the first step, so a run that is too big says so instead of being killed by the OS.
//!
//! The estimate counts f32 weights of every model held (trained and frozen), a gradient and two
//! AdamW moments per trained parameter, and the activations autodiff keeps for the backward pass
//! of one micro-batch. Activations per transformer layer follow Korthikanti et al. (2022),
//! `s·b·h·(34 + 5·a·s/h)` bytes at 16 bits, doubled for f32; the logits add `3·b·s·V` floats
//! (logits, log-softmax and their gradient). It is an estimate: the check refuses only what
//! clearly cannot fit, and says how it counted.

use crate::{Error, Result};

/// The parts of a run's memory, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// Weights of every model held (f32).
    pub weights: u64,
    /// One gradient per trained parameter.
    pub gradients: u64,
    /// AdamW's two moments per trained parameter.
    pub optimizer: u64,
    /// Activations kept for the backward pass of one micro-batch.
    pub activations: u64,
}

impl MemoryEstimate {
    /// AdamW training of `trained` parameters while `frozen` more are held for inference, with
    /// `activations` bytes for the backward pass.
    pub fn training(trained: u64, frozen: u64, activations: u64) -> Self {
        MemoryEstimate {
            weights: 4 * (trained + frozen),
            gradients: 4 * trained,
            optimizer: 8 * trained,
            activations,
        }
    }

    /// The sum of the parts.
    pub fn total(&self) -> u64 {
        self.weights + self.gradients + self.optimizer + self.activations
    }

    /// The parts in MiB, for messages.
    pub fn describe(&self) -> String {
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        format!(
            "weights {:.0} MiB, gradients {:.0} MiB, AdamW state {:.0} MiB, activations {:.0} MiB",
            mib(self.weights),
            mib(self.gradients),
            mib(self.optimizer),
            mib(self.activations)
        )
    }
}

/// The shape a transformer's activation estimate needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransformerShape {
    /// Layers.
    pub layers: u64,
    /// Width `h`.
    pub hidden: u64,
    /// Attention heads `a`.
    pub heads: u64,
    /// Vocabulary `V` (0 for a model without an LM head).
    pub vocab: u64,
}

impl TransformerShape {
    /// Bytes of activations kept for one forward + backward pass over `rows` sequences of `seq`
    /// tokens, in f32.
    pub fn activation_bytes(&self, rows: u64, seq: u64) -> u64 {
        let (s, b, h, a) = (seq, rows, self.hidden.max(1), self.heads);
        let per_layer = 2 * s * b * (34 * h + 5 * a * s);
        let logits = 3 * 4 * b * s * self.vocab;
        self.layers * per_layer + logits
    }
}

/// Bytes of memory available to a new allocation (`MemAvailable` of `/proc/meminfo`); `None`
/// where that cannot be read.
pub fn available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_available(&text)
}

fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Refuses, with [`Error::OutOfMemory`], a run (`what`) whose estimate exceeds the memory
/// available; passes when the available memory cannot be read. Only host memory is checked: on
/// a GPU backend the device's own memory is the limit, which this check does not see.
pub fn check_fits(what: &str, estimate: &MemoryEstimate) -> Result<()> {
    match available_bytes() {
        Some(available) => check_against(what, estimate, available),
        None => Ok(()),
    }
}

/// [`check_fits`] against a given number of available bytes.
pub fn check_against(what: &str, estimate: &MemoryEstimate, available: u64) -> Result<()> {
    if estimate.total() > available {
        return Err(Error::OutOfMemory {
            what: what.to_string(),
            needed: estimate.total(),
            available,
            detail: estimate.describe(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_add_up_and_a_run_too_big_is_refused_with_its_parts() {
        let e = MemoryEstimate::training(1000, 500, 7);
        assert_eq!(e.total(), 4 * 1500 + 4 * 1000 + 8 * 1000 + 7);
        assert!(check_against("sft", &e, e.total()).is_ok());
        let msg = check_against("sft", &e, e.total() - 1)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("sft needs about") && msg.contains("activations"),
            "{msg}"
        );
    }

    #[test]
    fn activations_follow_the_formula_and_grow_quadratically_with_length() {
        let shape = TransformerShape {
            layers: 2,
            hidden: 64,
            heads: 4,
            vocab: 100,
        };
        let (s, b) = (10u64, 3u64);
        let expected = 2 * (2 * s * b * (34 * 64 + 5 * 4 * s)) + 12 * b * s * 100;
        assert_eq!(shape.activation_bytes(b, s), expected);
        let long = TransformerShape { vocab: 0, ..shape };
        let ratio =
            long.activation_bytes(1, 40_000) as f64 / long.activation_bytes(1, 20_000) as f64;
        assert!(
            ratio > 3.9,
            "the attention term dominates at long lengths: {ratio}"
        );
    }

    #[test]
    fn meminfo_is_parsed() {
        let text = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   2048 kB\n";
        assert_eq!(parse_mem_available(text), Some(2048 * 1024));
        assert_eq!(parse_mem_available("MemTotal: 5 kB\n"), None);
    }
}
