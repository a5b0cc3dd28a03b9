//! rlhf-data's integration tests, in one binary: the readers on the committed golden files
//! (`tests/data/`), round trips of every layout, malformed input, collation and sampling
//! properties, the tokenizer, and parquet.

mod cli;
mod collation;
mod formats;
mod malformed;
mod sampling;
mod tokenizer;

use std::path::PathBuf;

pub fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("data")
        .join(name)
}
