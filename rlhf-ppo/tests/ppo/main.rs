//! rlhf-ppo's integration tests that need no process of their own, in one binary: one PPO and one
//! GRPO iteration on `RLHF_DEVICE` against `flex`, the newer policy-optimisation settings, and the
//! correctness review's tests. The TL;DR details (compared bit for bit) are in
//! `tests/details.rs`, the learning tests in `tests/learning.rs`.

mod devices;
mod methods;
mod review;
