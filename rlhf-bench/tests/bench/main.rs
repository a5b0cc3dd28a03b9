//! rlhf-bench's integration tests, in one binary: the pipeline on a user's preference file, the
//! report against hand-computed values, and the study's statistics on synthetic sweeps.

mod preferences;
mod report;
mod statistics;
