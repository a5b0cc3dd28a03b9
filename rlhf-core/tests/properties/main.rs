//! Property tests of rlhf-core: every formula against a plain `f64` reference written here from
//! `docs/algorithms.md`, plus the invariants listed there. One test binary keeps link time down.
//!
//! The device comes from `RLHF_DEVICE` (default `flex`), so CI runs the same tests on the
//! `wgpu` backend (lavapipe) with `RLHF_DEVICE=wgpu:cpu cargo test -p rlhf-core --features wgpu`.

mod common;

mod advantages;
mod divergence;
mod entropy_controller;
mod high_entropy;
mod kl;
mod logprobs;
mod logprobs_pass;
mod masked;
mod off_policy_mask;
mod policy_loss;
mod ppo;
mod train;
mod vector;
