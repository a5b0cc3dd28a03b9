//! rlhf-reward's integration tests that need no process of their own, in one binary: the LLM
//! judge's mechanics, the likelihood verifier's formula and the correctness review's tests.
//! Exact resume is in `tests/resume.rs`, the learning tests in `tests/learning.rs`.

mod judge;
mod likelihood;
mod review;
