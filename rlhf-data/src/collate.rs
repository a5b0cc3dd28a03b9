//! Collation: token ids of prompts and responses into rectangular batches, with the masks and
//! position ids a causal LM needs. Host-side (`Vec`s in row-major order); a trainer turns them
//! into tensors on its device.
//!
//! Layout of a row of `[batch, prompt_len + response_len]`: the prompt **left**-padded to
//! `prompt_len` (so every prompt ends at the same column and generation starts there, TL;DR
//! detail 2), then the response **right**-padded to `response_len`:
//!
//! ```text
//! PAD PAD p0 p1 p2 | r0 r1 EOS PAD
//! ```
//!
//! Position ids count real tokens only (`cumsum(attention_mask) − 1`, 0 on pads), so a
//! left-padded prompt has the positions it would have alone.

use rand::Rng;
use rand::seq::SliceRandom;

/// What to cut when a sequence is too long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncation {
    /// Longest prompt; longer prompts keep their **end** (the part next to the response).
    pub max_prompt: usize,
    /// Longest response; longer responses keep their **start**.
    pub max_response: usize,
}

/// A batch of prompt + response sequences.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequenceBatch {
    /// Rows.
    pub batch: usize,
    /// Columns of the prompt part (the longest prompt after truncation).
    pub prompt_len: usize,
    /// Columns of the response part (the longest response after truncation).
    pub response_len: usize,
    /// `[batch, prompt_len + response_len]` token ids, pads as `pad_id`.
    pub input_ids: Vec<u32>,
    /// 1 on real tokens (prompt and response), 0 on pads.
    pub attention_mask: Vec<u8>,
    /// 1 on real response tokens only (where losses and rewards live).
    pub response_mask: Vec<u8>,
    /// `cumsum(attention_mask) − 1` along the row, 0 on pads.
    pub position_ids: Vec<u32>,
    /// The pad id used.
    pub pad_id: u32,
}

impl SequenceBatch {
    /// Columns per row.
    pub fn seq_len(&self) -> usize {
        self.prompt_len + self.response_len
    }

    /// The prompt part alone: `[batch, prompt_len]` ids and attention mask (left-padded), as the
    /// input of generation.
    pub fn prompts(&self) -> (Vec<u32>, Vec<u8>) {
        let (l, p) = (self.seq_len(), self.prompt_len);
        let mut ids = Vec::with_capacity(self.batch * p);
        let mut mask = Vec::with_capacity(self.batch * p);
        for b in 0..self.batch {
            ids.extend_from_slice(&self.input_ids[b * l..b * l + p]);
            mask.extend_from_slice(&self.attention_mask[b * l..b * l + p]);
        }
        (ids, mask)
    }
}

/// Position ids from an attention mask row: `cumsum(mask) − 1`, 0 on pads.
pub fn position_ids(mask: &[u8]) -> Vec<u32> {
    let mut seen = 0u32;
    mask.iter()
        .map(|&m| {
            if m == 1 {
                seen += 1;
                seen - 1
            } else {
                0
            }
        })
        .collect()
}

/// Collates `(prompt, response)` id pairs. `response` may be empty (prompts alone, for generation).
pub fn collate(
    pairs: &[(&[u32], &[u32])],
    pad_id: u32,
    truncation: Option<Truncation>,
) -> SequenceBatch {
    let cut = |p: &[u32], r: &[u32]| -> (Vec<u32>, Vec<u32>) {
        match truncation {
            Some(t) => (
                p[p.len().saturating_sub(t.max_prompt)..].to_vec(),
                r[..r.len().min(t.max_response)].to_vec(),
            ),
            None => (p.to_vec(), r.to_vec()),
        }
    };
    let cutted: Vec<(Vec<u32>, Vec<u32>)> = pairs.iter().map(|(p, r)| cut(p, r)).collect();
    let prompt_len = cutted.iter().map(|(p, _)| p.len()).max().unwrap_or(0);
    let response_len = cutted.iter().map(|(_, r)| r.len()).max().unwrap_or(0);
    let seq = prompt_len + response_len;
    let batch = cutted.len();
    let mut out = SequenceBatch {
        batch,
        prompt_len,
        response_len,
        input_ids: Vec::with_capacity(batch * seq),
        attention_mask: Vec::with_capacity(batch * seq),
        response_mask: Vec::with_capacity(batch * seq),
        position_ids: Vec::with_capacity(batch * seq),
        pad_id,
    };
    for (p, r) in &cutted {
        let lead = prompt_len - p.len();
        let tail = response_len - r.len();
        let mut mask = vec![0u8; lead];
        mask.extend(std::iter::repeat_n(1u8, p.len() + r.len()));
        mask.extend(std::iter::repeat_n(0u8, tail));
        out.input_ids.extend(std::iter::repeat_n(pad_id, lead));
        out.input_ids.extend_from_slice(p);
        out.input_ids.extend_from_slice(r);
        out.input_ids.extend(std::iter::repeat_n(pad_id, tail));
        out.response_mask
            .extend(std::iter::repeat_n(0u8, prompt_len));
        out.response_mask.extend(std::iter::repeat_n(1u8, r.len()));
        out.response_mask.extend(std::iter::repeat_n(0u8, tail));
        out.position_ids.extend(position_ids(&mask));
        out.attention_mask.extend(mask);
    }
    out
}

/// Groups item indices into batches of similar length (less padding), in a random batch order.
///
/// Items are shuffled, sorted by length (stable, so equal lengths stay shuffled), cut into batches
/// of `batch_size` (the last may be smaller), and the batches shuffled. Every index appears in
/// exactly one batch.
pub fn length_buckets(lengths: &[usize], batch_size: usize, rng: &mut impl Rng) -> Vec<Vec<usize>> {
    let mut idx: Vec<usize> = (0..lengths.len()).collect();
    idx.shuffle(rng);
    idx.sort_by_key(|&i| lengths[i]);
    let mut batches: Vec<Vec<usize>> = idx
        .chunks(batch_size.max(1))
        .map(<[usize]>::to_vec)
        .collect();
    batches.shuffle(rng);
    batches
}
