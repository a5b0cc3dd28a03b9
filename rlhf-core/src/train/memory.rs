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

/// Every float parameter of `model` as `(id, elements, trains)`, in visiting order: `trains`
/// when it requires gradients (on an autodiff device; LoRA's frozen base weights do not).
pub fn float_params<M: burn::module::Module>(model: &M) -> Vec<(burn::module::ParamId, u64, bool)> {
    struct Collect(Vec<(burn::module::ParamId, u64, bool)>);
    impl burn::module::ModuleVisitor for Collect {
        fn visit_float<const D: usize>(
            &mut self,
            param: &burn::module::Param<burn::tensor::Tensor<D>>,
        ) {
            let n = param.lazy_shape().num_elements() as u64;
            self.0.push((param.id, n, param.val().is_require_grad()));
        }
    }
    let mut c = Collect(Vec::new());
    model.visit(&mut c);
    c.0
}

/// `(trained, frozen)`: the parameters of `model` that require gradients (on an autodiff
/// device) and the others. With LoRA the base weights are frozen and only the adapters train,
/// so gradients and AdamW state are counted for the adapters alone.
pub fn parameter_counts<M: burn::module::Module>(model: &M) -> (u64, u64) {
    float_params(model).into_iter().fold(
        (0, 0),
        |(t, f), (_, n, trains)| {
            if trains { (t + n, f) } else { (t, f + n) }
        },
    )
}

/// Parameters of `reference` that are not frozen parameters of `policy`: a reference cloned from
/// the policy keeps its parameters' ids, and where the policy never updates them (LoRA's frozen
/// base) the two hold one set of weights, counted once; a trained parameter gets new storage at
/// the first step, so the reference's copy counts.
pub fn params_not_in<A: burn::module::Module, B: burn::module::Module>(
    reference: &A,
    policy: &B,
) -> u64 {
    let frozen: std::collections::HashSet<_> = float_params(policy)
        .into_iter()
        .filter(|&(_, _, trains)| !trains)
        .map(|(id, _, _)| id)
        .collect();
    float_params(reference)
        .into_iter()
        .filter(|(id, _, _)| !frozen.contains(id))
        .map(|(_, n, _)| n)
        .sum()
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
            hint: "lower the batch size or the sequence length, or use a smaller model".into(),
        });
    }
    Ok(())
}

/// A run's batch as the memory check sees it: `rows` sequences of up to `seq` tokens in one
/// micro-batch, and the activation bytes of any such micro-batch.
pub struct Batch<'a> {
    /// Sequences in one micro-batch (what autodiff keeps activations for).
    pub rows: u64,
    /// Tokens in the longest sequence.
    pub seq: u64,
    /// Activation bytes of `(rows, seq)`.
    pub activations: &'a dyn Fn(u64, u64) -> u64,
    /// How the trainer's settings name the micro-batch, for the hint (e.g. `batch_size`, with
    /// `grad_accum` keeping the batch; `num_minibatches` for PPO).
    pub rows_knob: &'a str,
    /// How they name the sequence length (e.g. `truncation`, `max_length`).
    pub seq_knob: &'a str,
}

/// Refuses, with [`Error::OutOfMemory`], a run of `trained` and `frozen` parameters whose
/// `batch` does not fit in the memory available, and says which change would make it fit: the
/// largest micro-batch (halving `rows`) that fits, else the longest sequence (halving `seq`,
/// one row per micro-batch), else a smaller model. Passes when the available memory cannot be
/// read.
pub fn check_batch_fits(what: &str, trained: u64, frozen: u64, batch: &Batch) -> Result<()> {
    match available_bytes() {
        Some(available) => check_batch_against(what, trained, frozen, batch, available),
        None => Ok(()),
    }
}

/// [`check_batch_fits`] against a given number of available bytes.
pub fn check_batch_against(
    what: &str,
    trained: u64,
    frozen: u64,
    batch: &Batch,
    available: u64,
) -> Result<()> {
    let estimate = |rows: u64, seq: u64| {
        MemoryEstimate::training(trained, frozen, (batch.activations)(rows, seq))
    };
    let full = estimate(batch.rows, batch.seq);
    if full.total() <= available {
        return Ok(());
    }
    let fits = |rows: u64, seq: u64| estimate(rows, seq).total() <= available;
    let halvings = |start: u64| {
        std::iter::successors(Some(start / 2), |x| Some(x / 2)).take_while(|&x| x >= 1)
    };
    let hint = if let Some(rows) = halvings(batch.rows).find(|&r| fits(r, batch.seq)) {
        format!(
            "micro-batches of {rows} sequences instead of {} would fit ({}; accumulate {} of \
             them to keep the batch)",
            batch.rows,
            batch.rows_knob,
            batch.rows.div_ceil(rows)
        )
    } else if let Some(seq) = halvings(batch.seq).find(|&s| fits(1, s)) {
        format!(
            "one sequence per micro-batch, cut to {seq} tokens instead of {}, would fit ({})",
            batch.seq, batch.seq_knob
        )
    } else {
        "the weights and optimizer state alone do not fit: use a smaller model".into()
    };
    Err(Error::OutOfMemory {
        what: what.to_string(),
        needed: full.total(),
        available,
        detail: full.describe(),
        hint,
    })
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
    fn a_run_that_does_not_fit_is_told_which_knob_makes_it_fit() {
        let shape = TransformerShape {
            layers: 4,
            hidden: 256,
            heads: 4,
            vocab: 1000,
        };
        let activations = |rows: u64, seq: u64| shape.activation_bytes(rows, seq);
        let batch = |rows, seq| Batch {
            rows,
            seq,
            activations: &activations,
            rows_knob: "batch_size",
            seq_knob: "max_length",
        };
        let weights = MemoryEstimate::training(1_000_000, 0, 0).total();
        // room for 4 rows of 512 tokens
        let available = weights + shape.activation_bytes(4, 512);
        assert!(check_batch_against("sft", 1_000_000, 0, &batch(4, 512), available).is_ok());
        let msg = check_batch_against("sft", 1_000_000, 0, &batch(16, 512), available)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("micro-batches of 4 sequences instead of 16")
                && msg.contains("accumulate 4"),
            "{msg}"
        );
        // one row of 8,192 tokens is too much; 4,096 fits in room for 4 × 512
        let tight = weights + shape.activation_bytes(1, 4096);
        let msg = check_batch_against("sft", 1_000_000, 0, &batch(1, 8192), tight)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("cut to 4096 tokens instead of 8192"), "{msg}");
        let msg = check_batch_against("sft", 1_000_000, 0, &batch(1, 8), weights / 2)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("use a smaller model"), "{msg}");
    }

    #[test]
    fn meminfo_is_parsed() {
        let text = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   2048 kB\n";
        assert_eq!(parse_mem_available(text), Some(2048 * 1024));
        assert_eq!(parse_mem_available("MemTotal: 5 kB\n"), None);
    }
}
