//! rlhf-cli's integration tests, in one binary: the `rlhf` command run as a user runs it, and
//! greedy generation on every model family's committed checkpoint.

mod cli;
mod generate_families;
