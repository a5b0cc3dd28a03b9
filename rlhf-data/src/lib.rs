//! # rlhf-data
//!
//! RLHF data, from the files people download to batches a trainer can use:
//!
//! 1. **records** ([`PreferenceRecord`], [`SftRecord`], [`PromptRecord`], [`KwiseRecord`],
//!    [`StepRecord`]) in the Hugging Face layouts, standard or conversational;
//! 2. **readers** ([`read_records`]) for JSONL, gzip-compressed JSONL and (feature `parquet`)
//!    parquet, with configurable field names and errors that name the file, line and field;
//! 3. **tokenizer** ([`Tokenizer`]): any `tokenizer.json`, or a byte-level BPE trained here, with
//!    PAD/EOS handling and a [`ChatTemplate`] for conversations;
//! 4. **collation** ([`collate`]): left-padded prompts, right-padded responses, masks, position
//!    ids, truncation, length buckets;
//! 5. **sampling** for the scaling axes (volume, diversity) and leak-free hash splits;
//! 6. **gold-oracle tasks** ([`tasks`]): `tldr-synth` and `arith-steps`, with a hidden gold scorer,
//!    a calibrated simulated labeller and a judge.
//!
//! ```
//! use rlhf_data::{PreferenceRecord, ReadOptions, Turns, read_records};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("hh.jsonl");
//! // HH-RLHF's layout: two transcripts with an implicit prompt.
//! std::fs::write(&path, concat!(
//!     r#"{"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."}"#, "\n",
//!     r#"{"chosen": 3}"#, "\n",
//! )).unwrap();
//! let err = read_records::<PreferenceRecord>(&path, &ReadOptions::default()).unwrap_err();
//! assert!(err.to_string().ends_with("hh.jsonl:2: field `chosen`: expected a string or a list of messages, found a number"));
//! let loaded = read_records::<PreferenceRecord>(&path, &ReadOptions { skip_bad: true, ..Default::default() }).unwrap();
//! assert_eq!((loaded.report.read, loaded.report.kept, loaded.report.rejected), (2, 1, 1));
//! assert_eq!(loaded.records[0].prompt, Turns::Text("\n\nHuman: Hi\n\nAssistant:".into()));
//! assert_eq!(loaded.records[0].chosen, Turns::Text(" Hello!".into()));
//! ```

pub mod chat;
pub mod collate;
mod encode_memo;
pub mod generation_config;
pub mod inspect;
pub mod parse;
pub mod reader;
pub mod records;
pub mod sampling;
pub mod tasks;
pub mod template;
pub mod tokenizer;
pub mod tokenizer_config;

pub use chat::ChatTemplate;
pub use collate::{SequenceBatch, Truncation, collate, length_buckets, position_ids};
pub use inspect::{Inspection, inspect};
pub use parse::{FieldError, Record, kind_of, split_implicit_prompt};
pub use reader::{Loaded, ReadOptions, ReadReport, detect_kind, read_records, write_records};
pub use records::{
    FieldNames, Kind, KwiseRecord, Message, PreferenceRecord, PromptRecord, SftRecord, StepRecord,
    Turns, UnpairedRecord,
};
pub use sampling::{Split, hash_split, subsample_diversity, subsample_volume};
pub use template::{ChatFormat, JinjaTemplate};
pub use tokenizer::Tokenizer;
pub use tokenizer_config::TokenizerConfig;
