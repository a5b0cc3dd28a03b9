//! What [`train_step_model`](crate::train_step_model) trains: a model that reads one logit at
//! each chosen token of a collated batch — a step's last token (process labels) or the
//! response's last token (outcome labels). A scalar head ([`ScalarModel`]) is one; the
//! [`LikelihoodVerifier`](crate::LikelihoodVerifier) another.

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rlhf_core::Result;
use rlhf_core::train::memory::TransformerShape;
use rlhf_data::SequenceBatch;
use rlhf_models::ScalarModel;

/// A model with a logit at every token, read at label positions.
pub trait StepModel: Module {
    /// The logit at every column of `batch`, `[batch, seq]`.
    fn per_column(&self, batch: &SequenceBatch, device: &Device) -> Result<Tensor<2>>;

    /// Dropout of the transformer (replicas refuse it: their draws would differ).
    fn dropout(&self) -> f64;

    /// The model with dropout switched off.
    fn without_dropout(self) -> Self;

    /// The shape the memory check sizes activations with.
    fn shape(&self) -> TransformerShape;

    /// Logits at chosen columns: `positions[b]` lists columns of row `b`; returns `[batch, S]`
    /// (S = the longest list) and the mask of real entries.
    fn step_logits(
        &self,
        batch: &SequenceBatch,
        positions: &[Vec<usize>],
        device: &Device,
    ) -> Result<(Tensor<2>, Tensor<2>)> {
        Ok(gather_columns(
            self.per_column(batch, device)?,
            positions,
            device,
        ))
    }
}

impl StepModel for ScalarModel {
    fn per_column(&self, batch: &SequenceBatch, device: &Device) -> Result<Tensor<2>> {
        Ok(self.per_token(&crate::model::batch_input(self, batch, device)?))
    }

    fn dropout(&self) -> f64 {
        self.backbone.dropout()
    }

    fn without_dropout(self) -> Self {
        ScalarModel::without_dropout(self)
    }

    fn shape(&self) -> TransformerShape {
        ScalarModel::shape(self)
    }
}

/// `values[b, positions[b][j]]` as `[batch, S]`, and the mask of real entries (rows with fewer
/// positions are padded with column 0, masked).
pub(crate) fn gather_columns(
    values: Tensor<2>,
    positions: &[Vec<usize>],
    device: &Device,
) -> (Tensor<2>, Tensor<2>) {
    let b = positions.len();
    let s = positions.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let mut index = Vec::with_capacity(b * s);
    let mut real = Vec::with_capacity(b * s);
    for row in positions {
        for j in 0..s {
            index.push(row.get(j).copied().unwrap_or(0) as i64);
            real.push(if j < row.len() { 1.0f32 } else { 0.0 });
        }
    }
    let index = Tensor::<2, Int>::from_data(TensorData::new(index, [b, s]), device);
    (
        values.gather(1, index),
        Tensor::from_data(TensorData::new(real, [b, s]), device),
    )
}
