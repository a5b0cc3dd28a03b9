//! # rlhf-bench
//!
//! The scaling study of "Does RLHF Scale?" at laptop size, and the compute accounting that puts
//! every point of it on one axis.
//!
//! Today this crate holds the compute accounting of `performance.md` and `tasks.md`: `6·N` FLOPs
//! per trained token, `2·N` per token of forward-only work (reference and reward scoring,
//! generation), with `N` the non-embedding parameters. The pipeline, the sweep and the report are
//! tracked as the `rlhf-bench` issue.
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

pub mod compute;

pub use compute::{Workload, flops, mfu, ppo_iteration_flops};
