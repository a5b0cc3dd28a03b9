//! # rlhf-bench
//!
//! The scaling study of "Does RLHF Scale?" at laptop size, and the compute accounting that puts
//! every point of it on one axis.
//!
//! - [`pipeline::run`]: one run of the pipeline described by a TOML [`RunConfig`]: task →
//!   SFT → reward model (pairs of SFT samples labelled by a noisy labeller) → PPO, GRPO, RLOO,
//!   REINFORCE++, DPO, EXO or best-of-n → the gold judge (gold score, win rates, KL to the
//!   reference, proxy score, length), with shared stages cached; [`user`] runs the same stages on
//!   a user's own preference file, judged by its reward model;
//! - [`study`]: the presets (`smoke`, `quick`, `full`) of the scaling study's axes and the sweep,
//!   which stores every finished point and skips it when started again;
//! - [`report`]: `summary.csv`, SVG plots and `report.md` with fitted trends and the findings table;
//! - [`compute`]: `6·N` FLOPs per trained token, `2·N` per forward token (`N` = non-embedding
//!   parameters).
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
pub mod compute;
pub mod config;
pub mod perf;
pub mod pipeline;
pub mod report;
pub mod study;
pub mod user;

pub use compute::{Workload, flops, mfu, ppo_iteration_flops};
pub use config::{MethodKind, RewardSource, RunConfig, model_shape};
pub use pipeline::{RunResult, run};
pub use report::write_report;
pub use study::{Point, PointRecord, preset_points, read_points, sweep};
