//! # rlhf-reward
//!
//! Reward-model losses (`algorithms.md`, "Reward model"), on burn tensors of scalar scores.
//!
//! Today this crate holds the losses: Bradley–Terry pairs with an optional margin, the K-wise
//! Plackett–Luce ranking loss, and the centering term. The reward model itself (backbone + scalar
//! head read at the last real token), PRMs, training, normalisation and the `Scorer`
//! implementation are tracked as the `rlhf-reward` issue.
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

pub mod losses;

pub use losses::{bradley_terry_loss, centering_penalty, pair_accuracy, plackett_luce_loss};
