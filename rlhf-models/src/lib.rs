//! # rlhf-models
//!
//! Causal transformer language models for RLHF: the policy, the reference, the critic and the
//! reward model all share one implementation.
//!
//! Today this crate holds the architecture configuration ([`TransformerConfig`], with the field
//! names of Hugging Face `config.json`), the size presets (tiny CPU models and the real Pythia
//! suite) and the parameter counts that compute accounting uses (`N` = non-embedding parameters,
//! as in the scaling-law papers). The burn modules (GPT-NeoX and Llama blocks, KV cache,
//! sampling, safetensors import/export, SFT) are tracked as the `rlhf-models` issue.
//!
//! ```
//! use rlhf_models::TransformerConfig;
//!
//! let pythia = TransformerConfig::preset("pythia-70m").unwrap();
//! // The Pythia paper's table: 18,915,328 non-embedding parameters.
//! assert_eq!(pythia.non_embedding_params(), 18_915_328);
//! assert!(TransformerConfig::preset("tiny-1m").unwrap().validate().is_ok());
//! ```

pub mod config;

pub use config::{Architecture, PRESETS, TransformerConfig};
