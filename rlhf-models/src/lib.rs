//! # rlhf-models
//!
//! Causal transformer language models for RLHF: the policy, the reference, the critic and the
//! reward model all share one implementation.
//!
//! It holds:
//! - the architecture configuration ([`TransformerConfig`], with the field names of Hugging Face
//!   `config.json`), size presets (tiny CPU models of both families, the Pythia suite, a few
//!   real Llama/Qwen2 shapes) and parameter counts (`N` = non-embedding parameters);
//! - [`GptNeox`] (Pythia) and [`Llama`] (Llama and Qwen2: RMSNorm, SwiGLU, grouped-query
//!   attention, optional QKV bias, tied or untied embeddings), written module for module against
//!   `transformers`, behind one [`CausalLm`]; left padding done right (positions from the
//!   attention mask, padded keys never attended to) and a [`KvCache`];
//! - [`ScalarModel`]: a backbone with a scalar head, read per token (critic) or at the last real
//!   token (reward model);
//! - Hugging Face import and export ([`load_pretrained`], [`save_pretrained`]): `config.json` and
//!   single or sharded safetensors, checked against `transformers` on committed fixtures;
//! - [`generate`]: batched, seeded sampling (temperature, top-k, top-p, min/max new tokens, stop
//!   at EOS per row) that returns tokens, their log-probs and masks; and the `generate` command;
//! - SFT ([`train_sft`]): the loss on response tokens only, optional packing, eval loss and
//!   perplexity, checkpoints that resume exactly, metrics and a progress bar.
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
pub mod generate;
pub mod hf;
pub mod input;
pub mod llama;
pub mod lm;
pub mod neox;
pub mod sequence_kl;
pub mod sft;

pub use cache::KvCache;
pub use config::{Architecture, PRESETS, TransformerConfig};
pub use generate::{Generation, SamplingConfig, generate, sample_texts};
pub use hf::{
    config_from_json, config_to_json, load_pretrained, load_scalar_pretrained, save_pretrained,
    save_scalar_pretrained,
};
pub use input::TokenInput;
pub use llama::Llama;
pub use lm::{CausalLm, ScalarModel, gather_last};
pub use neox::GptNeox;
pub use sequence_kl::sequence_kl;
pub use sft::{
    LmBatch, SftConfig, SftReport, eval_loss, pack, sft_loss, target_logprobs, train_sft,
};
