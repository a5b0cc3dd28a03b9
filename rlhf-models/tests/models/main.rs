//! rlhf-models' integration tests that need no process of their own, in one binary: Hugging Face
//! parity on the committed fixtures, LoRA on every family, and every family's invariants
//! (padding, KV cache, sampling, scalar head), and the burn-flex passes (GELU, softmax, rotary,
//! matrix products) and the SFT losses and token metrics against f64 references.
//! Exact resume is in `tests/sft_resume.rs`, the SFT learning test in `tests/sft.rs`.

mod gelu;
mod hf;
mod lora;
mod matmul;
mod model;
mod rotary;
mod sft_loss;
mod sft_metrics;
mod softmax;
