//! Will a run fit? An estimate of a training run's peak memory, checked against what the machine
//! has before the first step, so a run that is too big says so instead of being killed by the OS.
//!
//! A run passes through three phases, and its peak is the largest of them:
//! - **the steps**: the weights of every model held (trained ones in f32, frozen ones in their
//!   own dtype: a reference or reward model may be held in bf16), one gradient per
//!   trained parameter on each data-parallel replica (each replica's gradients are whole until
//!   they are reduced), two AdamW moments per trained parameter, and the activations autodiff
//!   keeps for the backward pass of one micro-batch ([`TransformerShape::activation_bytes`]);
//! - **a checkpoint**: the weights and moments, and the record of the part being written: the
//!   parts are written one after the other, each streamed into its file from burn's record (a
//!   host copy of its tensors), so the largest, the optimizer's moments, is held once more;
//! - **the export** of the trained model (`save_pretrained`): the weights, a dense copy of each
//!   LoRA-adapted weight (the adapters merged; a DoRA weight, counted twice, is overcounted
//!   here), and the model's parameters twice more
//!   (burn-store's snapshot of each tensor and the file's bytes).
//!
//! To the largest phase it adds the process's own memory (code, tokenizer, data), measured when
//! the estimate is made: what the process holds then, less the models' weights. Models that
//! still share their tensors then (a reference cloned from the policy, a critic on the policy's
//! backbone) are counted as the copies they become, so there the difference undercounts the
//! process, down to zero.
//!
//! The formulas are in `docs/algorithms.md`, "Memory". It is an estimate: the check refuses only
//! what clearly cannot fit, and says how it counted. A test checks it against the peak resident
//! memory the operating system measures (`rlhf-cli`'s tests).

pub use rlhf_base::release_freed;

use crate::{Error, Result};

/// Bytes of one f32 value.
const F32: u64 = 4;

/// The parameters a run holds, by what it does with them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Params {
    /// Parameters that train: each has gradients and AdamW moments.
    pub trained: u64,
    /// Bytes of the parameters held for inference only, in their own dtype: LoRA's frozen base,
    /// a reference or reward model (in f32 or bf16).
    pub frozen_bytes: u64,
    /// Parameters of the model the run writes at its end (LoRA's adapters merged into the base).
    pub exported: u64,
    /// Frozen weights with a LoRA adapter: every forward pass rebuilds each of them dense
    /// (`W + s·A·B`), and autodiff keeps that copy for the backward pass; a DoRA-adapted weight
    /// counts twice (`V` and `W'`).
    pub adapted: u64,
}

impl Params {
    /// The parameters of `model`, which the run trains (those that require gradients; LoRA's
    /// base weights do not) and exports.
    pub fn of<M: burn::module::Module>(model: &M) -> Self {
        let (trained, frozen) = parameter_counts(model);
        let frozen_bytes = float_params(model)
            .iter()
            .filter(|p| !p.trains)
            .map(|p| p.bytes)
            .sum();
        Params {
            trained,
            frozen_bytes,
            exported: trained + frozen,
            adapted: adapted_params(model),
        }
    }

    /// The same run holding `frozen_bytes` more bytes of parameters for inference (a reference
    /// model: [`bytes_not_in`]).
    pub fn holding(self, frozen_bytes: u64) -> Self {
        Params {
            frozen_bytes: self.frozen_bytes + frozen_bytes,
            ..self
        }
    }
}

/// The parts of a run's memory, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// Weights of every model held (trained ones in f32, frozen ones in their dtype).
    pub weights: u64,
    /// Gradients: one per trained parameter on each replica.
    pub gradients: u64,
    /// AdamW's two moments per trained parameter.
    pub optimizer: u64,
    /// Activations kept for the backward pass of one micro-batch.
    pub activations: u64,
    /// The record of a checkpoint's largest part while it is written (the moments).
    pub checkpoint: u64,
    /// The export's copies while `model.safetensors` is written (with LoRA's merged weights).
    pub export: u64,
    /// The process's own memory besides the models (code, tokenizer, data), held throughout.
    pub process: u64,
}

impl MemoryEstimate {
    /// AdamW training of `params` on `replicas` data-parallel replicas, with `activations` bytes
    /// for the backward pass of a micro-batch (all replicas' shards together; each replica's
    /// forward pass adds its own dense copies of the LoRA-adapted weights).
    pub fn training(params: Params, activations: u64, replicas: u64) -> Self {
        let (trained, replicas) = (params.trained, replicas.max(1));
        MemoryEstimate {
            weights: F32 * trained + params.frozen_bytes,
            gradients: F32 * trained * replicas,
            optimizer: 2 * F32 * trained,
            activations: activations + F32 * params.adapted * replicas,
            checkpoint: 2 * F32 * trained,
            export: 2 * F32 * params.exported + F32 * params.adapted,
            process: 0,
        }
    }

    /// The same estimate for a process that holds `resident` bytes now, the weights included:
    /// the rest is the process's own memory.
    pub fn in_process_holding(self, resident: u64) -> Self {
        MemoryEstimate {
            process: resident.saturating_sub(self.weights),
            ..self
        }
    }

    /// Bytes held during an optimizer step.
    pub fn steps(&self) -> u64 {
        self.weights + self.gradients + self.optimizer + self.activations
    }

    /// Bytes held while a checkpoint is written (between steps: no gradients or activations).
    pub fn checkpointing(&self) -> u64 {
        self.weights + self.optimizer + self.checkpoint
    }

    /// Bytes held while the trained model is exported (the optimizer is gone by then).
    pub fn exporting(&self) -> u64 {
        self.weights + self.export
    }

    /// The peak: the largest of the three phases, and the process's own memory.
    pub fn total(&self) -> u64 {
        self.steps().max(self.checkpointing()).max(self.exporting()) + self.process
    }

    /// The parts in MiB, for messages.
    pub fn describe(&self) -> String {
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        format!(
            "weights {:.0} MiB, gradients {:.0} MiB, AdamW state {:.0} MiB, activations {:.0} MiB; \
             steps {:.0} MiB, checkpoints {:.0} MiB, export {:.0} MiB; the process {:.0} MiB",
            mib(self.weights),
            mib(self.gradients),
            mib(self.optimizer),
            mib(self.activations),
            mib(self.steps()),
            mib(self.checkpointing()),
            mib(self.exporting()),
            mib(self.process),
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
    /// Width of the feed-forward block `i`.
    pub intermediate: u64,
    /// Whether the feed-forward block is gated (SwiGLU: gate and up projections), as in the
    /// Llama family, or one activation (GELU), as in GPT-NeoX and GPT-2.
    pub gated: bool,
    /// Vocabulary `V` (0 for a model without an LM head).
    pub vocab: u64,
    /// The projections whose weights do not train (under LoRA, those without an adapter).
    pub frozen: FrozenProjections,
    /// Whether attention's softmax and the token log-probabilities are each one operation that
    /// keeps only what its gradient needs (the passes of `rlhf_models::softmax` and
    /// `crate::logprobs::pass`, on burn-flex in f32) rather than burn's chains of operations.
    pub fused_passes: bool,
}

/// The projections of a transformer layer whose weights do not train: LoRA's frozen base where
/// it carries no adapter. A product with a weight that needs no gradient keeps no input for the
/// backward pass, so each saves the one tensor only it kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrozenProjections {
    /// The attention's output projection, whose input is the context (`bsh`).
    pub attention_output: bool,
    /// The feed-forward block's input projections (up, and gate when gated), whose input is the
    /// second layer norm's output (`bsh`).
    pub mlp_input: bool,
    /// The feed-forward block's output projection, whose input is the activation (or the gated
    /// product) (`bsi`).
    pub mlp_output: bool,
}

impl TransformerShape {
    /// Bytes of activations kept for one forward + backward pass over `rows` sequences of `seq`
    /// tokens, in f32, with or without gradient checkpointing (burn's balanced strategy, which
    /// recomputes memory-bound operations in the backward pass and keeps the outputs of the
    /// matrix products).
    ///
    /// Per layer, counted from what each of burn's autodiff operations keeps (b rows, s tokens,
    /// width h, a heads, feed-forward width i), in f32 values:
    /// - without checkpointing, `12·bsh + m·bsi + 3·bas²`: the two layer norms keep their
    ///   centred and normalised input and their output (3·bsh each), the fused QKV projection
    ///   3·bsh (the values are a view of it), the rotated queries and keys 2·bsh, the context
    ///   bsh; attention keeps the masked scores, their exponential and the softmax (3·bas²;
    ///   bas² with a fused softmax, which keeps only its output);
    ///   the feed-forward block keeps m = 2 tensors of width i (the GELU's input and output; 4
    ///   for a gated block: gate, up, the activation and the product);
    /// - with checkpointing, `9·bsh + m·bsi + 2·bas²`: the layer norms are recomputed, the
    ///   outputs of the products that feed recomputed operations stay (QKV 3·bsh, rotated
    ///   queries and keys 2·bsh, the rotary products bsh, the context bsh, the two residual
    ///   branches 2·bsh), two s² tensors per head (the scores and their scaled copy; with a fused
    ///   softmax the scores and its output), and
    ///   m = 1 tensor of width i (2 for a gated block: gate and up).
    ///
    /// Without checkpointing, each frozen projection ([`FrozenProjections`]) takes its input off
    /// the count. (A run with frozen projections is a LoRA run, which is counted without
    /// checkpointing: see [`checkpointing`].)
    ///
    /// The LM head adds `3·bsV` values: the logits, the log-softmax's input to `exp`, and the
    /// gradient of the logits at the backward pass; `2·bsV` with the fused pass, which keeps the
    /// logits and writes their gradient over them when nothing else holds them (one tensor then;
    /// two are counted for when something does).
    pub fn activation_bytes(&self, rows: u64, seq: u64, checkpointing: bool) -> u64 {
        let (s, b, h, a, i) = (seq, rows, self.hidden.max(1), self.heads, self.intermediate);
        let (bsh, bsi, bass) = (b * s * h, b * s * i, b * a * s * s);
        let scores = match (checkpointing, self.fused_passes) {
            (false, false) => 3,
            (false, true) => 1,
            (true, _) => 2,
        };
        let per_layer = match (checkpointing, self.gated) {
            (false, false) => 12 * bsh + 2 * bsi,
            (false, true) => 12 * bsh + 4 * bsi,
            (true, false) => 9 * bsh + bsi,
            (true, true) => 9 * bsh + 2 * bsi,
        } + scores * bass;
        let frozen = self.frozen;
        let not_kept = match checkpointing {
            true => 0,
            false => {
                u64::from(frozen.attention_output) * bsh
                    + u64::from(frozen.mlp_input) * bsh
                    + u64::from(frozen.mlp_output) * bsi
            }
        };
        let per_layer = per_layer - not_kept;
        let head = if self.fused_passes { 2 } else { 3 };
        F32 * (self.layers * per_layer + head * b * s * self.vocab)
    }
}

/// Whether the activations of `model`'s training on `device` count as recomputed in the backward
/// pass: with gradient checkpointing, and without LoRA, under which checkpointing does not lower
/// the measured peak enough to count on (`docs/algorithms.md`, "Memory").
pub fn checkpointing<M: burn::module::Module>(device: &burn::tensor::Device, model: &M) -> bool {
    let balanced = matches!(
        device.gradient_checkpointing_strategy(),
        Some(burn::tensor::GradientCheckpointingStrategy::Balanced)
    );
    balanced && adapted_params(model) == 0
}

/// The peak resident memory of this process so far (`VmHWM` of `/proc/self/status`), in bytes;
/// `None` where that cannot be read.
pub fn peak_resident_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_kib_field(&text, "VmHWM:")
}

/// The resident memory of this process now (`VmRSS`), after handing back what it has freed
/// ([`release_freed`]), in bytes; `None` where that cannot be read.
pub fn resident_bytes() -> Option<u64> {
    release_freed();
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_kib_field(&text, "VmRSS:")
}

/// One float parameter of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FloatParam {
    /// Its id (shared by a clone that was not updated since).
    pub id: burn::module::ParamId,
    /// Its number of elements.
    pub elements: u64,
    /// Its bytes, in its dtype.
    pub bytes: u64,
    /// Whether it requires gradients (on an autodiff device; LoRA's frozen base weights do
    /// not).
    pub trains: bool,
}

/// Every float parameter of `model`, in visiting order.
pub fn float_params<M: burn::module::Module>(model: &M) -> Vec<FloatParam> {
    struct Collect(Vec<FloatParam>);
    impl burn::module::ModuleVisitor for Collect {
        fn visit_float<const D: usize>(
            &mut self,
            param: &burn::module::Param<burn::tensor::Tensor<D>>,
        ) {
            let elements = param.lazy_shape().num_elements() as u64;
            let value = param.val();
            self.0.push(FloatParam {
                id: param.id,
                elements,
                bytes: elements * value.dtype().size() as u64,
                trains: value.is_require_grad(),
            });
        }
    }
    let mut c = Collect(Vec::new());
    model.visit(&mut c);
    c.0
}

/// Whether some parameter of `module` trains (a LoRA adapter's factors do).
pub fn trains<M: burn::module::Module>(module: &M) -> bool {
    float_params(module).iter().any(|p| p.trains)
}

/// The elements of the weights of `model` that carry a LoRA adapter, a DoRA-adapted weight's
/// counted twice (its forward pass keeps two dense copies of the weight for the backward pass,
/// `V` and `W'`, where LoRA's keeps one).
pub fn adapted_params<M: burn::module::Module>(model: &M) -> u64 {
    // burn visits an adapted weight's base, then enters its reparameterization (the adapter),
    // whose parameters are LoRA's two factors and, with DoRA, a magnitude vector
    #[derive(Default)]
    struct Count {
        last: u64,
        adapter_of: Option<u64>,
        adapted: u64,
    }
    impl burn::module::ModuleVisitor for Count {
        fn visit_float<const D: usize>(
            &mut self,
            param: &burn::module::Param<burn::tensor::Tensor<D>>,
        ) {
            if let (1, Some(base)) = (D, self.adapter_of) {
                self.adapted += base; // DoRA's magnitude
            }
            self.last = param.lazy_shape().num_elements() as u64;
        }
        fn enter_module(&mut self, _name: &str, container_type: &str) {
            if container_type == "Reparameterization" {
                self.adapted += self.last;
                self.adapter_of = Some(self.last);
            }
        }
        fn exit_module(&mut self, _name: &str, container_type: &str) {
            if container_type == "Reparameterization" {
                self.adapter_of = None;
            }
        }
    }
    let mut c = Count::default();
    model.visit(&mut c);
    c.adapted
}

/// `(trained, frozen)`: the parameters of `model` that require gradients (on an autodiff
/// device) and the others. With LoRA the base weights are frozen and only the adapters train,
/// so gradients and AdamW state are counted for the adapters alone.
pub fn parameter_counts<M: burn::module::Module>(model: &M) -> (u64, u64) {
    float_params(model).into_iter().fold((0, 0), |(t, f), p| {
        if p.trains {
            (t + p.elements, f)
        } else {
            (t, f + p.elements)
        }
    })
}

/// Parameters of `reference` that are not frozen parameters of `policy`: a reference cloned from
/// the policy keeps its parameters' ids, and where the policy never updates them (LoRA's frozen
/// base) the two hold one set of weights, counted once; a trained parameter gets new storage at
/// the first step, so the reference's copy counts.
pub fn params_not_in<A: burn::module::Module, B: burn::module::Module>(
    reference: &A,
    policy: &B,
) -> u64 {
    not_in(reference, policy).map(|p| p.elements).sum()
}

/// The bytes of [`params_not_in`], each parameter in its dtype (a reference held in bf16 counts
/// half).
pub fn bytes_not_in<A: burn::module::Module, B: burn::module::Module>(
    reference: &A,
    policy: &B,
) -> u64 {
    not_in(reference, policy).map(|p| p.bytes).sum()
}

fn not_in<A: burn::module::Module, B: burn::module::Module>(
    reference: &A,
    policy: &B,
) -> impl Iterator<Item = FloatParam> {
    let frozen: std::collections::HashSet<_> = float_params(policy)
        .into_iter()
        .filter(|p| !p.trains)
        .map(|p| p.id)
        .collect();
    float_params(reference)
        .into_iter()
        .filter(move |p| !frozen.contains(&p.id))
}

/// Bytes of memory available to a new allocation (`MemAvailable` of `/proc/meminfo`); `None`
/// where that cannot be read.
pub fn available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_available(&text)
}

fn parse_mem_available(meminfo: &str) -> Option<u64> {
    parse_kib_field(meminfo, "MemAvailable:")
}

/// The `NAME:   123 kB` field of a `/proc` file, in bytes.
fn parse_kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
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

/// Refuses, with [`Error::OutOfMemory`], a run of `params` on `replicas` data-parallel replicas
/// whose `batch` does not fit in the memory available, and says which change would make it fit:
/// the largest micro-batch (halving `rows`) that fits, else the longest sequence (halving `seq`,
/// one row per micro-batch), else a smaller model. Passes when the available memory cannot be
/// read. The estimate, with the process's own memory measured now, is logged (`memory: estimated
/// peak … MiB`).
pub fn check_batch_fits(what: &str, params: Params, replicas: u64, batch: &Batch) -> Result<()> {
    let resident = resident_bytes().unwrap_or(0);
    let estimate =
        MemoryEstimate::training(params, (batch.activations)(batch.rows, batch.seq), replicas)
            .in_process_holding(resident);
    tracing::info!(
        "memory: estimated peak {:.0} MiB ({})",
        estimate.total() as f64 / (1u64 << 20) as f64,
        estimate.describe()
    );
    match available_bytes() {
        Some(available) => check_batch_against(what, params, replicas, batch, resident, available),
        None => Ok(()),
    }
}

/// [`check_batch_fits`] in a process holding `resident` bytes, with `available` bytes more
/// available: the run may use both.
pub fn check_batch_against(
    what: &str,
    params: Params,
    replicas: u64,
    batch: &Batch,
    resident: u64,
    available: u64,
) -> Result<()> {
    let available = available + resident;
    let estimate = |rows: u64, seq: u64| {
        MemoryEstimate::training(params, (batch.activations)(rows, seq), replicas)
            .in_process_holding(resident)
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

    const PARAMS: Params = Params {
        trained: 1000,
        frozen_bytes: F32 * 500,
        exported: 1500,
        adapted: 0,
    };

    #[test]
    fn the_peak_is_the_largest_phase_and_a_run_too_big_is_refused_with_its_parts() {
        let e = MemoryEstimate::training(PARAMS, 7, 1);
        assert_eq!(e.steps(), 4 * 1500 + 4 * 1000 + 8 * 1000 + 7);
        assert_eq!(e.checkpointing(), 4 * 1500 + 8 * 1000 + 8 * 1000);
        assert_eq!(e.exporting(), 4 * 1500 + 8 * 1500);
        assert_eq!(e.total(), e.checkpointing());
        // activations large enough make the steps the peak; each replica holds its gradients
        let big = MemoryEstimate::training(PARAMS, 1 << 20, 3);
        assert_eq!(big.gradients, 3 * 4 * 1000);
        assert_eq!(big.total(), big.steps());
        // LoRA: few trained parameters, so the export of the merged model is the peak
        let lora = Params {
            trained: 10,
            frozen_bytes: F32 * 1000,
            exported: 1000,
            adapted: 400,
        };
        let e = MemoryEstimate::training(lora, 7, 2);
        assert_eq!(e.total(), e.exporting());
        // each replica's forward pass rebuilds the adapted weights; the export merges them once
        assert_eq!(e.activations, 7 + 2 * 4 * 400);
        assert_eq!(e.exporting(), 4 * 1010 + 8 * 1000 + 4 * 400);
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
            intermediate: 256,
            gated: false,
            vocab: 100,
            frozen: FrozenProjections::default(),
            fused_passes: false,
        };
        let (s, b) = (10u64, 3u64);
        let (bsh, bsi, bass) = (b * s * 64, b * s * 256, b * 4 * s * s);
        let head = 3 * b * s * 100;
        let plain = 4 * (2 * (12 * bsh + 2 * bsi + 3 * bass) + head);
        let recomputed = 4 * (2 * (9 * bsh + bsi + 2 * bass) + head);
        assert_eq!(shape.activation_bytes(b, s, false), plain);
        assert_eq!(shape.activation_bytes(b, s, true), recomputed);
        let gated = TransformerShape {
            gated: true,
            ..shape
        };
        assert_eq!(gated.activation_bytes(b, s, false) - plain, 4 * 2 * 2 * bsi);
        // LoRA on the queries, keys and values: the other projections keep no input
        let lora = TransformerShape {
            frozen: FrozenProjections {
                attention_output: true,
                mlp_input: true,
                mlp_output: true,
            },
            ..shape
        };
        assert_eq!(
            plain - lora.activation_bytes(b, s, false),
            4 * 2 * (2 * bsh + bsi)
        );
        // the fused passes: one s² tensor per head instead of three (two with checkpointing),
        // and two tensors of the logits' size instead of three
        let fused = TransformerShape {
            fused_passes: true,
            ..shape
        };
        let bsv = b * s * shape.vocab;
        assert_eq!(
            plain - fused.activation_bytes(b, s, false),
            4 * (2 * 2 * bass + bsv)
        );
        assert_eq!(fused.activation_bytes(b, s, true), recomputed - 4 * bsv);
        let long = TransformerShape { vocab: 0, ..shape };
        for checkpointing in [false, true] {
            let ratio = long.activation_bytes(1, 40_000, checkpointing) as f64
                / long.activation_bytes(1, 20_000, checkpointing) as f64;
            assert!(
                ratio > 3.9,
                "the attention term dominates at long lengths: {ratio}"
            );
        }
    }

    #[test]
    fn a_run_that_does_not_fit_is_told_which_knob_makes_it_fit() {
        let shape = TransformerShape {
            layers: 4,
            hidden: 256,
            heads: 4,
            intermediate: 1024,
            gated: false,
            vocab: 1000,
            frozen: FrozenProjections::default(),
            fused_passes: false,
        };
        let activations = |rows: u64, seq: u64| shape.activation_bytes(rows, seq, false);
        let batch = |rows, seq| Batch {
            rows,
            seq,
            activations: &activations,
            rows_knob: "batch_size",
            seq_knob: "max_length",
        };
        let params = Params {
            trained: 1_000_000,
            frozen_bytes: 0,
            exported: 1_000_000,
            adapted: 0,
        };
        let weights = MemoryEstimate::training(params, 0, 1).steps();
        // room for 4 rows of 512 tokens
        let available = weights + shape.activation_bytes(4, 512, false);
        assert!(check_batch_against("sft", params, 1, &batch(4, 512), 0, available).is_ok());
        let msg = check_batch_against("sft", params, 1, &batch(16, 512), 0, available)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("micro-batches of 4 sequences instead of 16")
                && msg.contains("accumulate 4"),
            "{msg}"
        );
        // one row of 8,192 tokens is too much; 4,096 fits in room for 4 × 512
        let tight = weights + shape.activation_bytes(1, 4096, false);
        let msg = check_batch_against("sft", params, 1, &batch(1, 8192), 0, tight)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("cut to 4096 tokens instead of 8192"), "{msg}");
        let msg = check_batch_against("sft", params, 1, &batch(1, 8), 0, weights / 2)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("use a smaller model"), "{msg}");
        // weights the process holds already need no more room; its own memory counts on top
        let room = available - F32 * 1_000_000;
        let holding =
            |resident| check_batch_against("sft", params, 1, &batch(4, 512), resident, room);
        assert!(holding(0).is_err());
        assert!(holding(F32 * 1_000_000).is_ok());
        assert!(holding(F32 * 1_000_000 + (1 << 20)).is_ok());
        let estimate = MemoryEstimate::training(params, 0, 1).in_process_holding(4_000_000 + 7);
        assert_eq!(estimate.process, 7);
        assert_eq!(
            estimate.total(),
            MemoryEstimate::training(params, 0, 1).total() + 7
        );
    }

    #[test]
    fn proc_fields_are_parsed() {
        let text = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   2048 kB\n";
        assert_eq!(parse_mem_available(text), Some(2048 * 1024));
        assert_eq!(parse_mem_available("MemTotal: 5 kB\n"), None);
        let status = "VmPeak:   900 kB\nVmHWM:\t  512 kB\nVmRSS:  100 kB\n";
        assert_eq!(parse_kib_field(status, "VmHWM:"), Some(512 * 1024));
    }
}
