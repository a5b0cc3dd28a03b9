//! [`RewardScorer`]: a reward model served as an `rlhf_core::Scorer` — text in, normalised
//! scores out, batched.

use burn::module::Module;
use burn::tensor::Device;
use rlhf_core::host::to_f32_vec;
use rlhf_core::{Error, Result, Scorer};
use rlhf_data::{Tokenizer, collate};

use crate::losses::prm_sequence_score;
use crate::model::{RewardKind, RewardModel, last_token_scores};
use crate::step_model::StepModel;

/// A reward model with its tokenizer, ready to score text.
///
/// EOS rules of the TL;DR reproduction are the caller's choice: the response text carries the
/// EOS token's text when the policy emitted it (so the RM sees EOS, as in training), and with
/// `missing_eos_score` set, a response without it gets that score instead of the model's (the
/// "missing-EOS penalty"; the PPO trainer can also apply it itself). A caller that tokenises for
/// the RM itself (a policy of another tokenizer) scores tokens with [`Self::score_tokens`].
pub struct RewardScorer {
    rm: RewardModel,
    tokenizer: Tokenizer,
    device: Device,
    /// Sequences per forward pass.
    pub batch_size: usize,
    /// The score of a response that does not end with EOS (`None`: score it normally).
    pub missing_eos_score: Option<f32>,
}

impl RewardScorer {
    /// Serves `rm` (moved to inference mode on `device`) with `tokenizer`.
    pub fn new(rm: RewardModel, tokenizer: Tokenizer, device: &Device) -> Self {
        let device = device.clone().without_autodiff();
        let rm = RewardModel {
            model: rm.model.valid().to_device(&device),
            ..rm
        };
        RewardScorer {
            rm,
            tokenizer,
            device,
            batch_size: 32,
            missing_eos_score: None,
        }
    }

    /// The served model.
    pub fn model(&self) -> &RewardModel {
        &self.rm
    }

    /// The tokenizer it reads text with.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Normalised scores of `(prompt, response)` token sequences the caller tokenised with this
    /// model's tokenizer: outcome RMs only (a process RM finds its steps in the text).
    pub fn score_tokens(&self, pairs: &[(Vec<u32>, Vec<u32>)]) -> Result<Vec<f32>> {
        if self.rm.settings.kind != RewardKind::Outcome {
            return Err(Error::Config(
                "a process reward model scores text, not tokens".into(),
            ));
        }
        Ok(self
            .raw_outcome(pairs)?
            .into_iter()
            .map(|s| self.rm.settings.normalisation.apply(s))
            .collect())
    }

    /// Raw (unnormalised) scores of token sequences: outcome RMs only. Each is read at its last
    /// token that is not the checkpoint's `pad_token_id` ([`RewardModel::pad_token_id`]), as
    /// `transformers` reads it.
    fn raw_outcome(&self, pairs: &[(Vec<u32>, Vec<u32>)]) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(pairs.len());
        for chunk in pairs.chunks(self.batch_size.max(1)) {
            let refs: Vec<(&[u32], &[u32])> = chunk
                .iter()
                .map(|(p, r)| without_trailing(p, r, self.rm.pad_token_id))
                .collect();
            let batch = collate(&refs, self.tokenizer.pad_id(), None);
            out.extend(to_f32_vec(last_token_scores(
                &self.rm.model,
                &batch,
                &self.device,
            )?));
        }
        Ok(out)
    }

    /// PRM sequence scores: the response is cut after every delimiter; each piece that ends with
    /// the delimiter is a step, read at its last token. A response without any step scores 0.
    fn process_scores(&self, prompts: &[Vec<u32>], responses: &[&str]) -> Result<Vec<f32>> {
        let delim =
            self.rm.settings.step_delimiter.as_deref().ok_or_else(|| {
                Error::Config("a process reward model needs `step_delimiter`".into())
            })?;
        let mut out = Vec::with_capacity(responses.len());
        let mut rows = Vec::new();
        for (p, r) in prompts.iter().zip(responses) {
            let mut ids = Vec::new();
            let mut ends = Vec::new();
            for piece in r.split_inclusive(delim) {
                ids.extend(self.tokenizer.encode(piece)?);
                if piece.ends_with(delim) && !ids.is_empty() {
                    ends.push(ids.len() - 1);
                }
            }
            rows.push((p.clone(), ids, ends));
        }
        for chunk in rows.chunks(self.batch_size.max(1)) {
            let refs: Vec<(&[u32], &[u32])> = chunk
                .iter()
                .map(|(p, r, _)| (p.as_slice(), r.as_slice()))
                .collect();
            let batch = collate(&refs, self.tokenizer.pad_id(), None);
            let positions: Vec<Vec<usize>> = chunk
                .iter()
                .map(|(_, _, ends)| ends.iter().map(|e| batch.prompt_len + e).collect())
                .collect();
            let (logits, mask) = self
                .rm
                .model
                .step_logits(&batch, &positions, &self.device)?;
            let seq = to_f32_vec(prm_sequence_score(
                logits,
                mask,
                self.rm.settings.step_aggregate,
            ));
            for ((_, _, ends), s) in chunk.iter().zip(seq) {
                out.push(if ends.is_empty() { 0.0 } else { s });
            }
        }
        Ok(out)
    }
}

impl Scorer for RewardScorer {
    fn score(&self, prompts: &[&str], responses: &[&str]) -> Result<Vec<f32>> {
        rlhf_core::check_pairs(prompts, responses)?;
        let prompt_ids = prompts
            .iter()
            .map(|p| self.tokenizer.encode_start(p))
            .collect::<Result<Vec<_>>>()?;
        let raw = match self.rm.settings.kind {
            RewardKind::Outcome => {
                let pairs = prompt_ids
                    .into_iter()
                    .zip(responses)
                    .map(|(p, r)| Ok((p, self.tokenizer.encode(r)?)))
                    .collect::<Result<Vec<_>>>()?;
                self.raw_outcome(&pairs)?
            }
            RewardKind::Process => self.process_scores(&prompt_ids, responses)?,
        };
        let eos = self.tokenizer.eos_text();
        Ok(raw
            .into_iter()
            .zip(responses)
            .map(|(s, r)| match self.missing_eos_score {
                Some(penalty) if !r.ends_with(&eos) => penalty,
                _ => self.rm.settings.normalisation.apply(s),
            })
            .collect())
    }

    fn name(&self) -> String {
        match self.rm.settings.kind {
            RewardKind::Outcome => "reward-model".into(),
            RewardKind::Process => "process-reward-model".into(),
        }
    }
}

/// `(prompt, response)` without the tokens equal to `pad` at the end of their sequence (the
/// response's, then the prompt's): the last token left is the one `transformers` reads the score
/// at.
fn without_trailing<'a>(
    prompt: &'a [u32],
    response: &'a [u32],
    pad: Option<u32>,
) -> (&'a [u32], &'a [u32]) {
    let Some(pad) = pad else {
        return (prompt, response);
    };
    let kept = |s: &'a [u32]| &s[..s.iter().rposition(|&t| t != pad).map_or(0, |i| i + 1)];
    match (kept(prompt), kept(response)) {
        // a sequence of padding alone is read as it is
        ([], []) => (prompt, response),
        (prompt, []) => (prompt, &[]),
        (_, response) => (prompt, response),
    }
}

#[cfg(test)]
mod tests {
    use super::without_trailing;

    /// The trailing PADs of the response go, then the prompt's when the response was all PAD; a
    /// sequence of PADs alone, or no PAD given, is read as it is.
    #[test]
    fn trailing_pads_go_from_the_end_of_the_sequence() {
        let (prompt, pad) = ([5u32, 2, 6], Some(2));
        assert_eq!(
            without_trailing(&prompt, &[7, 2, 2], pad),
            (&prompt[..], &[7u32][..])
        );
        assert_eq!(
            without_trailing(&prompt, &[7, 2, 8], pad),
            (&prompt[..], &[7u32, 2, 8][..])
        );
        assert_eq!(without_trailing(&[5, 2], &[2], pad), (&[5u32][..], &[][..]));
        assert_eq!(
            without_trailing(&[2], &[2, 2], pad),
            (&[2u32][..], &[2u32, 2][..])
        );
        assert_eq!(
            without_trailing(&prompt, &[7, 2], None),
            (&prompt[..], &[7u32, 2][..])
        );
    }
}
