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

pub mod allocator;
pub mod error;
pub mod fs;
pub mod scorer;
pub mod seed;

pub use allocator::{release_freed, tune_allocator};
pub use error::{Error, Result};
pub use scorer::{Scorer, best_and_worst, check_pairs};
