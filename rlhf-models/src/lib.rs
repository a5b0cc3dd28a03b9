//! # rlhf-models
//!
//! Causal transformer language models for RLHF: the policy, the reference, the critic and the
//! reward model all share one implementation.
//!
//! It holds:
//! - the architecture configuration ([`TransformerConfig`], with the field names of Hugging Face
//!   `config.json`), size presets (tiny CPU models, the Pythia suite, real shapes of every
//!   family) and parameter counts (`N` = non-embedding parameters);
//! - [`GptNeox`] (Pythia; parallel or sequential residual), [`Llama`] (Llama, Qwen2, Qwen3,
//!   Mistral, Phi-3: RMSNorm, SwiGLU, grouped-query attention, Qwen2's QKV bias, Qwen3's per-head
//!   query/key norms, Phi-3's fused projections, sliding windows, `linear`/`dynamic`/`llama3`/
//!   `longrope` RoPE scaling, tied or untied embeddings) and [`Gpt2`] (learned positions,
//!   `Conv1D`), written module for module against `transformers`, behind one [`CausalLm`]; left
//!   padding done right (positions from the attention mask, padded keys never attended to) and a
//!   [`KvCache`];
//! - [`ScalarModel`]: a backbone with a scalar head, read per token (critic) or at the last real
//!   token (reward model);
//! - Hugging Face import and export ([`load_pretrained`], [`save_pretrained`]): `config.json` and
//!   single or sharded safetensors, checked against `transformers` on committed fixtures;
//! - LoRA ([`apply_lora`]): PEFT's adapters on any family's linear layers (rsLoRA and DoRA as
//!   options), merged on export or written alone in PEFT's layout ([`save_peft_adapter`]);
//! - [`generate`]: batched, seeded sampling (temperature, top-k, top-p, min/max new tokens, stop
//!   at EOS per row) that returns tokens, their log-probs and masks; and the `generate` command;
//! - SFT ([`train_sft`]): the loss on response tokens only, optional packing, eval loss and
//!   perplexity, checkpoints that resume exactly, metrics and a progress bar;
//! - on-policy distillation ([`train_distill`]): the student learns a teacher's next-token
//!   distributions on its own samples (the generalised JSD of GKD, TRL's `DistillationTrainer`).
//!
//! ```
//! use rlhf_models::TransformerConfig;
//!
//! let pythia = TransformerConfig::preset("pythia-70m").unwrap();
//! // The Pythia paper's table: 18,915,328 non-embedding parameters.
//! assert_eq!(pythia.non_embedding_params(), 18_915_328);
//! assert!(TransformerConfig::preset("tiny-1m").unwrap().validate().is_ok());
//! ```

pub mod attention;
pub mod cache;
pub mod config;
pub mod distill;
pub mod gelu;
pub mod generate;
pub mod gpt2;
pub mod hf;
pub mod input;
pub mod llama;
pub mod lm;
pub mod lora;
pub mod matmul;
pub mod neox;
pub mod packing;
pub mod precision;
pub mod rotary;
pub mod sequence_kl;
pub mod sft;
pub mod softmax;

pub use cache::KvCache;
pub use config::{Architecture, PRESETS, RopeScaling, TransformerConfig};
pub use distill::{DistillConfig, DistillInputs, train_distill};
pub use generate::{
    Generation, Responses, SamplingConfig, encode_prompts, generate, sample_responses, sample_texts,
};
pub use gpt2::Gpt2;
pub use hf::{
    config_from_json, config_to_json, load_pretrained, load_scalar_pretrained, save_pretrained,
    save_scalar_pretrained,
};
pub use input::TokenInput;
pub use llama::Llama;
pub use lm::{CausalLm, ScalarModel, gather_last};
pub use lora::{DoraAdapter, LoraConfig, apply_lora, save_peft_adapter, trainable_params};
pub use neox::GptNeox;
pub use packing::{PackedRow, PackingStrategy, pack, packed_batch, rows_per_epoch};
pub use precision::Precision;
pub use sequence_kl::sequence_kl;
pub use sft::{
    LmBatch, SftConfig, SftLoss, SftReport, TargetLogprobs, TokenStats, eval_loss, eval_loss_of,
    sft_loss, sft_loss_of, target_logprobs, target_logprobs_and_stats, target_logprobs_with,
    target_logprobs_with_stats, token_loss, train_sft,
};
