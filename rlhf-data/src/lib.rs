//! # rlhf-data
//!
//! The records RLHF trains on, in the layouts people download from the Hugging Face hub.
//!
//! Today this crate holds the preference record and the split of HH-RLHF-style transcripts,
//! whose prompt is implicit (the shared prefix of `chosen` and `rejected` up to the last
//! `\n\nAssistant:`). The readers, validation, tokenizer, collation and the gold-oracle tasks are
//! tracked as the `rlhf-data` issue and land here next.
//!
//! ```
//! use rlhf_data::split_implicit_prompt;
//!
//! let chosen = "\n\nHuman: Hi\n\nAssistant: Hello! How can I help?";
//! let rejected = "\n\nHuman: Hi\n\nAssistant: Go away.";
//! let r = split_implicit_prompt(chosen, rejected).unwrap();
//! assert_eq!(r.prompt, "\n\nHuman: Hi\n\nAssistant:");
//! assert_eq!(r.chosen, " Hello! How can I help?");
//! assert_eq!(r.rejected, " Go away.");
//! ```

pub mod preference;

pub use preference::{ASSISTANT_TAG, PreferenceRecord, split_implicit_prompt};
