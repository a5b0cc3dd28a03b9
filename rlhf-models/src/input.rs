//! [`TokenInput`]: the one way token ids reach a model.
//!
//! A tokenizer without a padding token (GPT-2, Llama 3, Pythia's own) gets `[PAD]` added past
//! the model's vocabulary (`rlhf_data::Tokenizer`), so a pad id is not a valid embedding row.
//! Collation and query padding keep pad ids in their host vectors, where the attention mask says
//! what they are; every forward pass (training, reference, critic, reward model, sampling) takes
//! a [`TokenInput`], whose only constructor replaces the id at every masked position by 0 and
//! refuses a real token that the embedding does not have. The mask is kept as it was, so masked
//! positions stay invisible to every real one whatever id they hold.
//!
//! A row may also hold several sequences packed end to end ([`TokenInput::packed`], SFT's
//! best-fit packing): each sequence then has its own positions from 0 and attends only to
//! itself, as `transformers` treats a packed batch whose position ids restart, so that a
//! sequence's logits are those it has alone.

use burn::tensor::{Device, Int, Tensor, TensorData};
use rlhf_core::{Error, Result};

/// The id given to the model at masked positions (any valid row would do: padded keys are never
/// attended to, and a padded position's own output is masked by every caller).
pub const MASKED_ID: u32 = 0;

/// Token ids `[batch, new]` and attention mask `[batch, past + new]` on a device, ready for a
/// forward pass. `past` is the number of positions a KV cache already holds (0 without one).
#[derive(Debug, Clone)]
pub struct TokenInput {
    ids: Tensor<2, Int>,
    attention: Tensor<2>,
    longest: usize,
    packed: Option<Packed>,
}

/// The sequences of packed rows, `[batch, seq]` each: every token's sequence's ordinal in its row
/// (from 1; 0 at padding) and its position in that sequence.
#[derive(Debug, Clone)]
pub(crate) struct Packed {
    pub(crate) sequences: Tensor<2>,
    pub(crate) positions: Tensor<2>,
}

impl TokenInput {
    /// The input of `batch` rows: `ids` holds `batch × new` ids and `attention` `batch × (past +
    /// new)` 0/1 flags, row-major; the ids are the last `new` columns of the mask.
    ///
    /// Every id at a masked position becomes [`MASKED_ID`]; an id `≥ vocab` at a real position is
    /// an error (a special token the tokenizer added past the model's vocabulary, such as its
    /// `[PAD]`, written into the text).
    pub fn new(
        ids: &[u32],
        attention: &[u8],
        batch: usize,
        vocab: usize,
        device: &Device,
    ) -> Result<Self> {
        let shape_error = || {
            Error::Shape(format!(
                "model input: {} ids and {} mask entries do not make {batch} rows with the ids \
                 at the end of the mask",
                ids.len(),
                attention.len()
            ))
        };
        if batch == 0 || !ids.len().is_multiple_of(batch) || !attention.len().is_multiple_of(batch)
        {
            return Err(shape_error());
        }
        let (new, total) = (ids.len() / batch, attention.len() / batch);
        if new == 0 || new > total {
            return Err(shape_error());
        }
        let past = total - new;
        let mut model_ids = Vec::with_capacity(ids.len());
        for row in 0..batch {
            for col in 0..new {
                let id = ids[row * new + col];
                let real = attention[row * total + past + col] != 0;
                if !real {
                    model_ids.push(i64::from(MASKED_ID));
                } else if (id as usize) < vocab {
                    model_ids.push(i64::from(id));
                } else {
                    return Err(Error::Config(format!(
                        "token id {id} (row {row}, column {}) is outside the model's vocabulary \
                         of {vocab}: a special token the tokenizer added past the embedding, \
                         such as its [PAD], appears in the text",
                        past + col
                    )));
                }
            }
        }
        let mask: Vec<f32> = attention.iter().map(|&m| f32::from(m != 0)).collect();
        let longest = attention
            .chunks(total)
            .map(|row| row.iter().filter(|&&m| m != 0).count())
            .max()
            .unwrap_or(0);
        Ok(TokenInput {
            ids: Tensor::from_data(TensorData::new(model_ids, [batch, new]), device),
            attention: Tensor::from_data(TensorData::new(mask, [batch, total]), device),
            longest,
            packed: None,
        })
    }

    /// The input of `batch` rows that may each hold several sequences end to end: `sequences`
    /// gives each token's sequence number in its row, 0 at padding, and a sequence's tokens are
    /// one run. Each sequence's positions start at 0 and its tokens attend only to its own, so
    /// every sequence gets the hidden states it has alone. Rows of one sequence (every number 0
    /// or 1) are [`Self::new`]'s input. Ids are checked as there; a sequence number that comes
    /// back after another or after padding is an error. For a full forward pass: a KV cache does
    /// not take it.
    pub fn packed(
        ids: &[u32],
        sequences: &[u32],
        batch: usize,
        vocab: usize,
        device: &Device,
    ) -> Result<Self> {
        if ids.len() != sequences.len() {
            return Err(Error::Shape(format!(
                "packed input: {} ids and {} sequence numbers (a packed input has no past)",
                ids.len(),
                sequences.len()
            )));
        }
        let attention: Vec<u8> = sequences.iter().map(|&s| u8::from(s != 0)).collect();
        let mut input = Self::new(ids, &attention, batch, vocab, device)?;
        let seq = sequences.len() / batch;
        // each token's position in its sequence, and its sequence's ordinal in the row (from 1;
        // 0 at padding): small numbers, which the device compares exactly
        let mut positions = vec![0f32; sequences.len()];
        let mut ordinals = vec![0f32; sequences.len()];
        let mut longest = 0;
        for (row, numbers) in sequences.chunks(seq).enumerate() {
            let mut seen = std::collections::HashSet::new();
            let (mut run, mut ordinal) = (0, 0);
            for (col, &n) in numbers.iter().enumerate() {
                if col > 0 && n == numbers[col - 1] {
                    run += 1;
                } else if n != 0 && !seen.insert(n) {
                    return Err(Error::Shape(format!(
                        "packed input: sequence {n} of row {row} comes back at column {col}: a \
                         sequence's tokens must be one run"
                    )));
                } else {
                    run = 0;
                    ordinal += 1;
                }
                if n != 0 {
                    positions[row * seq + col] = run as f32;
                    ordinals[row * seq + col] = ordinal as f32;
                    longest = longest.max(run + 1);
                }
            }
        }
        // checked above for holes, a row of one sequence is a plain input
        if sequences.iter().all(|&s| s <= 1) {
            return Ok(input);
        }
        input.longest = longest;
        input.packed = Some(Packed {
            sequences: Tensor::from_data(TensorData::new(ordinals, [batch, seq]), device),
            positions: Tensor::from_data(TensorData::new(positions, [batch, seq]), device),
        });
        Ok(input)
    }

    /// The ids `[batch, new]` (0 at masked positions).
    pub fn ids(&self) -> Tensor<2, Int> {
        self.ids.clone()
    }

    /// The attention mask `[batch, past + new]` (1 at real tokens).
    pub fn attention(&self) -> Tensor<2> {
        self.attention.clone()
    }

    /// Real tokens of the longest row (of a packed input, the longest sequence), counting the
    /// past ones: one more than the largest position id.
    pub fn longest(&self) -> usize {
        self.longest
    }

    /// The sequences of packed rows ([`Self::packed`]), `None` when each row is one sequence.
    pub(crate) fn packed_sequences(&self) -> Option<&Packed> {
        self.packed.as_ref()
    }

    /// `[batch, new]`.
    pub fn dims(&self) -> [usize; 2] {
        self.ids.dims()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(input: &TokenInput) -> Vec<i64> {
        input
            .ids()
            .into_data()
            .convert::<i64>()
            .try_into_vec()
            .unwrap()
    }

    #[test]
    fn masked_ids_become_zero_and_real_ones_stay() {
        let d = rlhf_core::parse_device("flex").unwrap();
        // PAD = 50 = vocab size, left and right of the real tokens
        let input = TokenInput::new(&[50, 50, 7, 8, 50], &[0, 0, 1, 1, 0], 1, 50, &d).unwrap();
        assert_eq!(host(&input), vec![0, 0, 7, 8, 0]);
        let mask: Vec<f32> = input.attention().into_data().try_into_vec().unwrap();
        assert_eq!(mask, vec![0.0, 0.0, 1.0, 1.0, 0.0]);
    }

    #[test]
    fn a_real_token_outside_the_vocabulary_is_refused_by_position() {
        let d = rlhf_core::parse_device("flex").unwrap();
        let e = TokenInput::new(&[3, 50], &[1, 1], 1, 50, &d).unwrap_err();
        assert!(
            e.to_string().contains("token id 50 (row 0, column 1)"),
            "{e}"
        );
    }

    #[test]
    fn cached_steps_check_the_last_columns_of_the_mask() {
        let d = rlhf_core::parse_device("flex").unwrap();
        // two rows, three past positions, one new token each; row 1's new token is masked
        let input = TokenInput::new(&[4, 99], &[1, 1, 1, 1, 0, 1, 1, 0], 2, 10, &d).unwrap();
        assert_eq!(input.dims(), [2, 1]);
        assert_eq!(input.longest(), 4);
        assert_eq!(host(&input), vec![4, 0]);
        assert!(TokenInput::new(&[4, 5, 6], &[1, 1], 1, 10, &d).is_err());
        assert!(TokenInput::new(&[], &[], 0, 10, &d).is_err());
    }
}
