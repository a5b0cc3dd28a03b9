//! The likelihood verifier: a causal LM — the SFT model with its LM head — whose logit that a
//! response is right up to and including token `t` is its own log-likelihood of the response
//! so far, plus a learned bias:
//!
//! ```text
//! z_t = Σ_{s ≤ t, s in the response} log π_θ(y_s | x, y_<s) + b
//! ```
//!
//! It trains like a scalar-head verifier ([`train_step_model`](crate::train_step_model)):
//! binary cross-entropy on an outcome label at the response's last token, or on step labels
//! at each step's last token. Where a fresh scalar head on the SFT's hidden states starts
//! knowing nothing about correctness, this one starts from what the generator knows — a wrong
//! step is an unlikely one — and training sharpens it. It is the implicit reward of Yuan et al.
//! (2024, "Free Process Rewards without Process Labels"), `β·log π_θ/π_ref`, with `β = 1` and the
//! reference term left out; as there, a step's logit sums the tokens up to it. Without the
//! reference every token lowers the logit: the step logits of one response never rise, and of
//! two equally likely continuations the shorter scores higher.
//!
//! The bias starts where the untrained model's binary cross-entropy is lowest ([`fit_bias`]):
//! log-likelihoods are negative and their scale is the data's, and Adam moves one parameter
//! by about the learning rate per step.

use std::path::Path;

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor, TensorData};
use rlhf_core::masked::zero_masked;
use rlhf_core::train::memory::TransformerShape;
use rlhf_core::{Error, Result};
use rlhf_data::SequenceBatch;
use rlhf_models::sft::{LmBatch, target_logprobs};
use rlhf_models::{CausalLm, TransformerConfig, load_pretrained, save_pretrained};
use serde::{Deserialize, Serialize};

use crate::step_model::StepModel;

/// The file beside the LM's Hugging Face files that holds the bias.
const BIAS_FILE: &str = "likelihood_verifier.json";

/// A causal LM scored by its own log-likelihood (see the module documentation).
#[derive(Module, Debug)]
pub struct LikelihoodVerifier {
    /// The language model, LM head included.
    pub lm: CausalLm,
    /// `[1]`: the bias `b`.
    pub bias: Param<Tensor<1>>,
}

#[derive(Serialize, Deserialize)]
struct Saved {
    bias: f32,
}

impl LikelihoodVerifier {
    /// `lm` with bias `bias`, on `lm`'s device.
    pub fn new(lm: CausalLm, bias: f32, device: &Device) -> Self {
        let bias = Tensor::<1>::from_data(TensorData::new(vec![bias], [1]), device);
        LikelihoodVerifier {
            lm,
            bias: Param::from_tensor(bias),
        }
    }

    /// The bias.
    pub fn bias(&self) -> f32 {
        self.bias.val().into_scalar::<f32>()
    }

    /// Writes the LM as a Hugging Face directory and the bias beside it.
    pub fn save(&self, config: &TransformerConfig, dir: &Path) -> Result<()> {
        save_pretrained(&self.lm, config, dir)?;
        let json = serde_json::to_vec_pretty(&Saved { bias: self.bias() })
            .map_err(|e| Error::Config(format!("likelihood verifier: {e}")))?;
        rlhf_core::train::fs::write_atomic(&dir.join(BIAS_FILE), &json)
    }

    /// Loads what [`LikelihoodVerifier::save`] wrote.
    pub fn load(dir: &Path, device: &Device) -> Result<(TransformerConfig, Self)> {
        let (config, lm) = load_pretrained(dir, device)?;
        let path = dir.join(BIAS_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let saved: Saved = serde_json::from_str(&text).map_err(|e| Error::Data {
            file: path.clone(),
            line: e.line(),
            field: "bias".into(),
            message: e.to_string(),
        })?;
        Ok((config, LikelihoodVerifier::new(lm, saved.bias, device)))
    }
}

impl StepModel for LikelihoodVerifier {
    /// `z_t` at every column: `b` before the response, then the running sum of the response
    /// tokens' log-probabilities plus `b` (padding after the response adds nothing).
    fn per_column(&self, batch: &SequenceBatch, device: &Device) -> Result<Tensor<2>> {
        // the first response token's probability is read at the prompt's last token
        let seq = batch.seq_len();
        if let Some(row) = (0..batch.batch).find(|&r| {
            batch.prompt_len == 0 || batch.attention_mask[r * seq + batch.prompt_len - 1] == 0
        }) {
            return Err(Error::Config(format!(
                "likelihood verifier: row {row} has an empty prompt (the first response token's \
                 probability is read at the token before it)"
            )));
        }
        let t = target_logprobs(&self.lm, &LmBatch::from_sequences(batch), 1.0, device)?;
        // column `first + c` of the batch is the token of log-prob column `c`; the columns
        // before `first` hold no response token
        let own = Tensor::cat(
            vec![
                Tensor::zeros([batch.batch, t.first], device),
                zero_masked(t.logp, t.mask),
            ],
            1,
        );
        Ok(own.cumsum(1).add(
            self.bias
                .val()
                .unsqueeze_dim::<2>(0)
                .expand([batch.batch, batch.seq_len()]),
        ))
    }

    fn dropout(&self) -> f64 {
        self.lm.dropout()
    }

    fn without_dropout(self) -> Self {
        LikelihoodVerifier {
            lm: self.lm.without_dropout(),
            ..self
        }
    }

    fn shape(&self) -> TransformerShape {
        self.lm.shape()
    }
}

/// The bias `b` that minimises the mean binary cross-entropy of `logits + b` against `labels`:
/// Newton's method on that convex function of one variable from `b = 0`, each step at most 4,
/// stopped when the mean probability is within 1e-6 of the share of true labels (the minimum's
/// condition) and the step is below 1e-9, or after 1,000 steps. (Where every probability is near
/// 0 or 1 the mean is that close well before `b` is.) With one class only, the minimum lies at
/// ±∞ and the bias stops where the mean is that close. A non-finite logit is an error.
pub fn fit_bias(logits: &[f64], labels: &[bool]) -> Result<f64> {
    if let Some(i) = logits.iter().position(|z| !z.is_finite()) {
        return Err(Error::Config(format!(
            "fit_bias: logit {i} is {} (a verifier's logits must be finite)",
            logits[i]
        )));
    }
    let n = logits.len().min(labels.len());
    if n == 0 {
        return Ok(0.0);
    }
    let sigmoid = |z: f64| 1.0 / (1.0 + (-z).exp());
    let labels = &labels[..n];
    let one_class = labels.iter().all(|&y| y) || labels.iter().all(|&y| !y);
    let mut b = 0.0f64;
    for _ in 0..1000 {
        let (mut grad, mut hess) = (0.0, 0.0);
        for (z, &y) in logits.iter().zip(labels) {
            let p = sigmoid(z + b);
            grad += p - f64::from(u8::from(y));
            hess += p * (1.0 - p);
        }
        let (grad, hess) = (grad / n as f64, hess / n as f64);
        // a small curvature (every probability near 0 or 1): a bounded step
        let step = (grad / hess.max(1e-6)).clamp(-4.0, 4.0);
        if grad.abs() < 1e-6 && (one_class || step.abs() < 1e-9) {
            break;
        }
        b -= step;
    }
    Ok(b)
}
