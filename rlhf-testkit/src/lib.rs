//! # rlhf-testkit
//!
//! What the workspace's tests and examples share, in one place instead of copied or included by
//! path: a dev-dependency of the other crates, never published.
//!
//! - [`crash`]: crash tests — a test of the current binary run as a child, killed (SIGKILL) or
//!   stopped (SIGTERM) at a step, resumed and compared with a run that never stopped; and
//!   [`crash::serial`], the lock for tests that compare runs bit for bit.
//! - [`replicas`]: the check that `n` data-parallel replicas take the step of one.
//! - [`tldr`]: the TL;DR pipeline at laptop scale up to the reward model (SFT → labelled SFT
//!   samples → RM), for PPO's learning tests and its `ppo_study` example.
//! - [`pairs`]: labelled `tldr-synth` pairs and step-labelled `arith-steps` chains with a tiny
//!   backbone, for the reward models' learning tests and examples.

pub mod crash;
pub mod pairs;
pub mod replicas;
pub mod tldr;

pub use crash::serial;
