//! # rlhf-dpo
//!
//! Preference optimisation from sequence log-probabilities: the DPO family, EXO and KTO, as small
//! functions on tensors (`docs/algorithms.md`, "Offline preference optimisation"), and their
//! trainers.
//!
//! It holds the losses, the offline trainer ([`train_offline`]: pairs or K-wise groups, policy
//! and frozen reference, sequence log-probs over response tokens only, gradient accumulation,
//! LR schedule, eval, checkpoints and resume, metrics), the on-disk reference log-prob cache
//! ([`RefCache`], keyed by hashes of the reference weights and of the data), KTO on unpaired
//! examples labelled desirable or undesirable ([`train_kto`]), and online DPO: one round
//! ([`online_round`]: sample from the policy, score with any `Scorer`, pair best against worst,
//! train) and the trainer of many rounds with one optimizer, checkpoints and exact resume
//! ([`train_online_dpo`]).
//!
//! ```
//! use burn::tensor::{Tensor, TensorData};
//! use rlhf_dpo::{PairLogps, dpo_loss};
//!
//! let device = rlhf_core::parse_device("flex")?;
//! let t = |v: f32| Tensor::<1>::from_data(TensorData::new(vec![v], [1]), &device);
//! // The policy has not moved from the reference: z = 0 and the loss is log 2.
//! let p = PairLogps { chosen: t(-3.0), rejected: t(-4.0), ref_chosen: t(-3.0), ref_rejected: t(-4.0) };
//! let loss = dpo_loss(p.logits(), 0.1, 0.0).into_scalar::<f32>();
//! assert!((loss - 2f32.ln()).abs() < 1e-6);
//! # Ok::<(), rlhf_core::Error>(())
//! ```

pub mod cache;
pub mod fdivergence;
pub mod kto;
pub mod losses;
pub mod online;
pub mod online_dpo;
pub mod trainer;

pub use cache::{LogpSpec, RefCache, data_hash, weights_hash};
pub use fdivergence::FDivergence;
pub use kto::{
    KtoConfig, KtoEval, KtoExample, KtoLoss, KtoReport, evaluate_kto, kto_batches, kto_loss,
    kto_reference_point, kto_train_batches, mismatched_partners, train_kto,
};
pub use losses::{
    PairLogps, aot_loss, aot_unpaired_loss, apo_down_loss, apo_zero_loss, bco_pair_loss,
    discopop_loss, dpo_loss, dpo_rw_loss, exo_pref_loss, exo_rw_loss, hinge_loss, ipo_loss,
    nca_pair_loss, robust_dpo_loss, sft_loss, simpo_loss, sppo_hard_loss,
};
pub use online::{OnlineConfig, OnlineReport, best_and_worst, online_round};
pub use online_dpo::{OnlineDpoConfig, OnlineDpoInputs, OnlineDpoReport, train_online_dpo};
pub use rlhf_core::train::{LiveReference, SyncRef};
pub use trainer::{
    DpoConfig, DpoEval, DpoReport, Group, OfflineLoss, cached_reference_logps, evaluate,
    pair_logps, sequence_logps, sequence_logps_ld, train_offline, wpo_weights,
};
