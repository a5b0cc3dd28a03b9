//! # rlhf-ppo
//!
//! On-policy RLHF: PPO with every implementation detail of the TL;DR reproduction, and the
//! critic-free estimators RLOO, GRPO, Dr.GRPO and REINFORCE++.
//!
//! - [`PpoConfig`]: each TL;DR detail a named field with the paper's default, the advantage
//!   estimator, samples per prompt, and the ChatGLM-RLHF options (PPO-ptx, score variance
//!   reduction);
//! - [`train_ppo`]: the trainer (sample → cut at EOS → score → log-probs, values, rewards,
//!   advantages → epochs of clipped updates → metrics, checkpoints), built from pieces that are
//!   public so each can be tested and reused: [`encode_queries`], [`make_experience`],
//!   [`minibatch_loss`], [`ppo_update`], [`ppo_iteration`];
//! - [`held_out_metrics`]: the reward of samples on held-out prompts, for
//!   [`PpoInputs::eval`];
//! - [`per_token_rewards`]: `−β·kl_t` on every token plus the score on the last real token.
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

pub mod completions;
pub mod config;
pub mod held_out;
pub mod rewards;
pub mod rollout;
pub mod trainer;

pub use config::{AdvantageEstimator, MultiObjectiveAggregation, PpoConfig};
pub use held_out::{HeldOut, held_out_metrics};
pub use rewards::{
    TokenRewards, apply_missing_eos_penalty, decoupled_scores, last_token_one_hot,
    overlong_penalty, per_token_rewards, reduce_score_variance,
};
pub use rollout::{DynamicSampling, Rollout, dynamic_sampling, sample_and_score};
pub use trainer::{
    Eval, EvalLine, Experience, Iteration, MicroBatch, Minibatch, PolicyAndValue, PpoInputs,
    PpoReport, Share, UpdateStats, encode_queries, make_experience, minibatch_loss, ppo_iteration,
    ppo_update, train_ppo,
};
