//! # rlhf-base
//!
//! What every crate of the workspace shares and none of it needs a tensor library for: the one
//! [`Error`] type (data errors carry file, line and field), atomic file writes and the artefact
//! checksum ([`fs`]), seeds derived from names ([`seed`]), the [`Scorer`] trait (anything that
//! scores prompt + response text), and the
//! allocator settings of the training binaries ([`tune_allocator`], [`release_freed`]).
//!
//! `rlhf-data` builds on this crate alone, so reading and tokenizing data does not compile burn;
//! `rlhf-core` re-exports all of it under its own paths (`rlhf_core::Error`,
//! `rlhf_core::train::fs`, `rlhf_core::Scorer`).
//!
//! ```
//! use rlhf_base::best_and_worst;
//! use rlhf_base::seed::seed_of;
//!
//! // A name decides its seed, on every machine and in every release: FNV-1a, 64 bits.
//! assert_eq!(seed_of(b""), 0xcbf2_9ce4_8422_2325);
//! assert_ne!(seed_of(b"tldr-synth/train/0"), seed_of(b"tldr-synth/train/1"));
//!
//! // Three scored responses for each of two prompts → DPO pairs (best, worst) per prompt; a
//! // prompt whose responses all score the same has no preference to learn.
//! let pairs = best_and_worst(&[0.2, 0.9, -0.4, 1.0, 1.0, 1.0], 3)?;
//! assert_eq!(pairs, vec![Some((1, 2)), None]);
//! # Ok::<(), rlhf_base::Error>(())
//! ```

pub mod allocator;
pub mod error;
pub mod fs;
pub mod scorer;
pub mod seed;

pub use allocator::{release_freed, tune_allocator};
pub use error::{Error, Result};
pub use scorer::{Scored, Scorer, best_and_worst, check_pairs, score_each, score_parts_each};
