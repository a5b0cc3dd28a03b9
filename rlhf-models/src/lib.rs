//! # rlhf-models
//!
//! Causal transformer language models for RLHF: the policy, the reference, the critic and the
//! reward model all share one implementation.
//!
//! Today this crate holds:
//! - the architecture configuration ([`TransformerConfig`], with the field names of Hugging Face
//!   `config.json`), size presets (tiny CPU models, the Pythia suite) and parameter counts
//!   (`N` = non-embedding parameters, as in the scaling-law papers);
//! - [`GptNeox`], the GPT-NeoX/Pythia causal LM on burn, written module for module against
//!   `transformers`' `modeling_gpt_neox.py`, with left padding done right (positions from the
//!   attention mask, padded keys never attended to) and a [`KvCache`];
//! - [`generate`]: batched, seeded sampling (temperature, top-k, top-p, min/max new tokens, stop
//!   at EOS per row) that returns tokens, their log-probs and masks;
//! - SFT ([`train_sft`]): the loss on response tokens only, AdamW with global-norm clipping,
//!   eval loss.
//!
//! The Llama/Qwen2 blocks, Hugging Face safetensors import/export with parity fixtures, the
//! `generate` binary and checkpoint/resume of SFT are tracked as the rest of the `rlhf-models`
//! issue.
//!
//! ```
//! use rlhf_models::TransformerConfig;
//!
//! let pythia = TransformerConfig::preset("pythia-70m").unwrap();
//! // The Pythia paper's table: 18,915,328 non-embedding parameters.
//! assert_eq!(pythia.non_embedding_params(), 18_915_328);
//! assert!(TransformerConfig::preset("tiny-1m").unwrap().validate().is_ok());
//! ```

pub mod cache;
pub mod config;
pub mod generate;
pub mod neox;
pub mod sft;

pub use cache::KvCache;
pub use config::{Architecture, PRESETS, TransformerConfig};
pub use generate::{Generation, SamplingConfig, generate};
pub use neox::GptNeox;
pub use sft::{SftConfig, SftReport, eval_loss, sft_loss, train_sft};
