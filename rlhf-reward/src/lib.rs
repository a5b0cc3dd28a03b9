//! # rlhf-reward
//!
//! Outcome and process reward models (`docs/algorithms.md`, "Reward models"):
//! - losses on burn tensors: Bradley–Terry pairs with an optional margin, K-wise Plackett–Luce,
//!   the centering term, binary cross-entropy for ORM correctness and PRM step labels, and PRM
//!   sequence scores (min, product or last step);
//! - [`RewardModel`]: an `rlhf-models` backbone with a scalar head (`N(0, 1/√(d+1))`, bias 0)
//!   read at the last real token, or at each step's last token for a PRM; its normalisation
//!   (bias = mean score of the SFT demonstrations, optional gain); saved and loaded as a Hugging
//!   Face directory; a value model can be initialised from it;
//! - training ([`train_reward_model`] for pairs or K-wise groups, [`train_step_model`] for PRM
//!   and ORM labels, by binary cross-entropy or by the [`within_prompt`] pair loss) with gradient
//!   accumulation, LR schedule, eval (loss, accuracy, agreement with the gold order; step
//!   models: balanced and within-prompt pair accuracy), checkpoints and resume, metrics and a
//!   progress bar;
//! - [`RewardScorer`]: the model served as an `rlhf_core::Scorer`; [`EnsembleScorer`] serves
//!   several as one (mean, min or `mean − λ·std`), and [`LengthScorer`] is the length-only
//!   control reward;
//! - [`LlmJudge`]: any causal LM prompted with a rubric per dimension (LongReward's
//!   helpfulness, logicality, faithfulness, completeness by default), scored by its expected
//!   rating `Σ_k p_k·v_k` under the next-token distribution restricted to the rating tokens, the
//!   dimensions averaged with weights; [`best_and_worst`] makes DPO pairs of its scores.
//!
//! ```
//! use burn::tensor::{Tensor, TensorData};
//! use rlhf_reward::{bradley_terry_loss, plackett_luce_loss};
//!
//! let device = rlhf_core::parse_device("flex")?;
//! let chosen = Tensor::<1>::from_data(TensorData::new(vec![2.0f32, 0.5], [2]), &device);
//! let rejected = Tensor::<1>::from_data(TensorData::new(vec![1.0f32, 0.5], [2]), &device);
//! let bt = bradley_terry_loss(chosen.clone(), rejected.clone(), None);
//! // −log σ(1) and −log σ(0), averaged
//! let expected = ((1.0f64 + (-1.0f64).exp()).ln() + 2f64.ln()) / 2.0;
//! assert!((bt.into_scalar::<f32>() as f64 - expected).abs() < 1e-6);
//! // K = 2 Plackett–Luce is the pair loss
//! let pl = plackett_luce_loss(Tensor::stack::<2>(vec![chosen, rejected], 1));
//! assert!((pl.into_scalar::<f32>() as f64 - expected).abs() < 1e-6);
//! # Ok::<(), rlhf_core::Error>(())
//! ```

pub mod combine;
pub mod judge;
pub mod likelihood;
pub mod losses;
pub mod model;
pub mod scorer;
pub mod step_model;
pub mod train;
pub mod verifiers;
pub mod within_prompt;

pub use combine::{Combine, EnsembleScorer, LengthScorer};
pub use judge::{JudgeConfig, JudgeDimension, LlmJudge, Rating};
pub use likelihood::{LikelihoodVerifier, fit_bias};
pub use losses::{
    StepAggregate, binary_cross_entropy, bradley_terry_loss, centering_penalty, pair_accuracy,
    plackett_luce_loss, prm_sequence_score,
};
pub use model::{
    ChatReading, Normalisation, RewardKind, RewardModel, RewardSettings, config_pad_token_id,
};
pub use rlhf_core::best_and_worst;
pub use scorer::RewardScorer;
pub use step_model::StepModel;
pub use train::{
    LabelledExample, RankedExample, RmConfig, RmEval, RmReport, StepLoss, evaluate_labelled,
    evaluate_ranked, normalise, score_ranked, segment_logits, train_reward_model, train_step_model,
};
pub use verifiers::{ExactMatchScorer, RegexScorer};
pub use within_prompt::{
    LabelPair, label_pair_accuracy, label_pairs, prompts_with_pairs, within_prompt_loss,
};
