//! # rlhf-bench
//!
//! The scaling study of "Does RLHF Scale?" at laptop size, and the compute accounting that puts
//! every point of it on one axis.
//!
//! - [`pipeline::run`]: one run of the pipeline described by a TOML [`RunConfig`]: task →
//!   SFT → reward model (pairs of SFT samples labelled by a noisy labeller) → PPO, GRPO, RLOO,
//!   REINFORCE++, DPO, EXO or best-of-n → the gold judge, with shared stages cached
//!   ([`cache`], [`stages`], [`method`], [`judge`]; names of what it measures in [`metrics`]);
//!   [`user`] runs the same stages on a user's own preference file, judged by its reward model;
//!   [`arith`] runs the verifiers of `arith-steps`;
//! - [`study`]: the presets (`smoke`, `quick`, `full`) of the study's [`axis`]es and the sweep,
//!   which stores every finished point and skips it when started again;
//! - the report: [`findings`] (each claim's effect per seed, its interval and verdict, from
//!   [`stats`]), [`compare`] (matched KL and matched compute), [`fits`], [`tables`], [`plots`],
//!   [`markdown`], written by [`report`] and checked by [`verify`]; [`diff`] sets two sweeps'
//!   findings side by side;
//! - [`compute`]: `6·N` FLOPs per trained token, `2·N` per forward token (`N` = non-embedding
//!   parameters); [`perf`]: the throughput benchmark against TRL.
//!
//! The `rlhf-bench` binary runs one config (`rlhf-bench run CONFIG`) or a sweep
//! (`rlhf-bench sweep --preset quick`); `cargo xtask bench-scaling` calls the latter.
//!
//! ```
//! use rlhf_bench::{Workload, flops};
//! use rlhf_models::TransformerConfig;
//!
//! let model = TransformerConfig::preset("pythia-70m").unwrap();
//! // One SFT step on 8 sequences of 512 tokens.
//! let f = flops(&model, Workload::Train { tokens: 8 * 512 });
//! assert_eq!(f, 6 * 18_915_328 * 8 * 512);
//! ```

pub mod arith;
pub mod axis;
mod cache;
pub mod compare;
pub mod compute;
pub mod config;
pub mod diff;
pub mod findings;
pub mod fits;
mod judge;
pub mod markdown;
mod method;
pub mod metrics;
mod online;
pub mod perf;
pub mod pipeline;
pub mod plots;
pub mod report;
mod stages;
pub mod stats;
pub mod study;
pub mod tables;
pub mod user;
pub mod verify;

pub use axis::Axis;
pub use compute::{Workload, flops, mfu, ppo_iteration_flops};
pub use config::{MethodKind, RewardSource, RunConfig, model_shape};
pub use pipeline::{RunResult, run};
pub use report::write_report;
pub use study::{Point, PointRecord, preset_points, read_points, sweep};
