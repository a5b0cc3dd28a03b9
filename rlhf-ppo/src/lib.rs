//! # rlhf-ppo
//!
//! On-policy RLHF: PPO with every implementation detail of the TL;DR reproduction, and the
//! critic-free estimators RLOO, GRPO, Dr.GRPO and REINFORCE++.
//!
//! Today this crate holds the configuration — each TL;DR detail a named field with the paper's
//! default ([`PpoConfig`]) — and step 3 of the PPO recipe: the per-token KL-penalised rewards with
//! the score on the last real token ([`per_token_rewards`]) and the missing-EOS penalty. The
//! trainer (rollout → rewards → advantages → epochs) is tracked as the `rlhf-ppo` issue.
//!
//! ```
//! use burn::tensor::{Tensor, TensorData};
//! use rlhf_ppo::per_token_rewards;
//!
//! let device = rlhf_core::parse_device("flex")?;
//! // Two responses; the first stopped after 2 tokens, the second used all 3.
//! let mask = Tensor::<2>::from_data(TensorData::new(vec![1f32, 1., 0., 1., 1., 1.], [2, 3]), &device);
//! let kl = Tensor::<2>::zeros([2, 3], &device);
//! let scores = Tensor::<1>::from_data(TensorData::new(vec![5f32, 7.], [2]), &device);
//! let r = per_token_rewards(scores, kl, mask, 0.05);
//! let v: Vec<f32> = r.rewards.into_data().try_into_vec().unwrap();
//! assert_eq!(v, vec![0., 5., 0., 0., 0., 7.]);
//! # Ok::<(), rlhf_core::Error>(())
//! ```

pub mod config;
pub mod rewards;

pub use config::{AdvantageEstimator, PpoConfig};
pub use rewards::{TokenRewards, apply_missing_eos_penalty, last_token_one_hot, per_token_rewards};
