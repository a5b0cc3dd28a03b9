//! rlhf-dpo's integration tests that need no process of their own, in one binary: the reference
//! cache's key, one step on `RLHF_DEVICE` against `flex`, one step on every model family, the
//! correctness review's tests, and TRL's formulas on a fixed table. The tests that compare runs
//! bit for bit are in `tests/serial/`, the learning tests in `tests/learning.rs`.

mod cache;
mod devices;
mod families;
mod review;
mod trl_table;
