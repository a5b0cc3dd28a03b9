//! # rlhf-core
//!
//! The mathematics of RLHF on [burn](https://burn.dev) tensors, and the plumbing every trainer
//! shares. Each function is a formula of `docs/algorithms.md`, documented with its shapes, and
//! checked by property tests against a plain `f64` implementation of the same formula.
//!
//! A PPO update reads, in these functions' terms:
//! [`token_logprobs`] (with the sampling temperature reapplied) → [`kl_estimate`] against the
//! reference → per-token rewards → [`gae`] → [`whiten`] the advantages → [`clipped_policy_loss`] and
//! [`clipped_value_loss`] → [`train::clip_global_grad_norm`] → AdamW from [`train::OptimizerConfig`].
//! Critic-free methods swap `gae` for [`group_advantages`] (RLOO, GRPO, Dr.GRPO) or
//! [`reinforce_pp_advantages`]; [`policy_loss`] generalises the clipped loss to DAPO's asymmetric
//! clip, GSPO's sequence ratio, CISPO's clipped weights, SAPO's soft gate and VESPO's Gamma
//! weights, aggregated as [`LossAggregation`] says (GRPO's per-response mean, DAPO's token mean,
//! Dr. GRPO's constant);
//! [`off_policy_mask`] leaves out the negative-advantage responses the policy has drifted from.
//!
//! Nothing here hard-codes a backend: every entry point takes tensors (which carry their device)
//! or a `&Device`, and [`parse_device`] turns a user's `--device` string into one.
//!
//! ```
//! use burn::tensor::{Tensor, TensorData};
//! use rlhf_core::{gae, masked_mean, parse_device};
//!
//! let device = parse_device("flex")?;
//! // One response of three tokens in a row of four (the last position is padding).
//! let t = |v: Vec<f32>| Tensor::<2>::from_data(TensorData::new(v, [1, 4]), &device);
//! let rewards = t(vec![0.0, 0.0, 1.0, 9.0]);
//! let values = t(vec![0.0; 4]);
//! let mask = t(vec![1.0, 1.0, 1.0, 0.0]);
//! // With V = 0 and λ = 1, GAE is the discounted return.
//! let out = gae(rewards, values, mask.clone(), 0.5, 1.0);
//! let adv: Vec<f32> = out.advantages.into_data().try_into_vec().unwrap();
//! assert_eq!(adv, vec![0.25, 0.5, 1.0, 0.0]);
//! let mean = masked_mean(t(vec![1.0, 2.0, 3.0, 100.0]), mask).into_scalar::<f32>();
//! assert!((mean - 2.0).abs() < 1e-6);
//! # Ok::<(), rlhf_core::Error>(())
//! ```

pub mod advantages;
pub mod aggregation;
pub mod device;
pub mod divergence;
pub mod entropy_controller;
pub mod high_entropy;
pub mod host;
pub mod kl;
pub mod kl_controller;
pub mod logprobs;
pub mod masked;
pub mod off_policy_mask;
pub mod policy_loss;
pub mod ppo;
#[cfg(feature = "remote")]
pub mod remote;
pub mod stats;
pub mod train;
pub mod vector;

pub use advantages::{
    Gae, GroupEstimator, batch_normalized, broadcast_to_tokens, decoupled_group_rewards,
    discounted_returns, gae, group_advantages, reinforce_pp_advantages,
};
pub use aggregation::{LossAggregation, aggregate};
pub use device::{AdapterKind, DeviceSpec, TchKind, device_from_env, parse_device};
pub use divergence::generalized_jsd;
pub use entropy_controller::{AdaptiveEntropy, EntropyController};
pub use high_entropy::high_entropy_mask;
pub use kl::{KlEstimator, bias_corrected_kl, kl_estimate};
pub use kl_controller::KlController;
pub use logprobs::{entropy_from_logits, token_logprobs, token_logprobs_and_entropy};
pub use masked::{masked_mean, masked_mean_dim, masked_sum, masked_var, whiten, zero_masked};
pub use off_policy_mask::off_policy_mask;
pub use policy_loss::{
    PolicyLoss, PolicyLossConfig, PolicyObjective, SapoTemperatures, VespoShape, policy_loss,
    sequence_ratio, truncated_is_weights,
};
pub use ppo::{ValueLoss, clipped_policy_loss, clipped_value_loss};
pub use rlhf_base::{Error, Result, error};
pub use rlhf_base::{
    Scored, Scorer, best_and_worst, check_pairs, score_each, score_parts_each, scorer,
};

/// Whether this build has the `gemm` crate's AVX-512 kernels behind `flex` (feature `x86-v4`,
/// on with `flex`); gemm uses them only on a CPU with AVX-512F.
pub const GEMM_X86_V4: bool = cfg!(feature = "x86-v4");

/// burn, re-exported so a downstream crate uses the same version.
pub use burn;
