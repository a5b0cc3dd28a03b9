//! # rlhf-dpo
//!
//! Offline preference optimisation: the DPO family and EXO, as small functions on sequence
//! log-probabilities (`algorithms.md`, "Offline preference optimisation").
//!
//! Today this crate holds the losses. The offline trainer, the on-disk reference log-prob cache
//! and the online loop are tracked as the `rlhf-dpo` issue.
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

pub mod losses;

pub use losses::{
    PairLogps, dpo_loss, dpo_rw_loss, exo_pref_loss, exo_rw_loss, hinge_loss, ipo_loss,
    robust_dpo_loss, simpo_loss,
};
