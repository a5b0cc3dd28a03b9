//! [`LlmJudge`]: a causal language model used as a judge: it is prompted with a rubric per
//! dimension and rates the response, and the score is the rating it *expects* rather than one it
//! samples (the probability-weighted score of G-Eval, Liu et al. 2023), on LongReward's four
//! dimensions (Zhang et al. 2024).
//!
//! LongReward itself has GLM-4 write an analysis and parses a `[[x]]` rating on a 0–10 scale,
//! scores faithfulness from extracted facts and retrieved evidence and completeness from a
//! chunked context, and sums the four scores. Here one forward pass per dimension reads the
//! rating's distribution directly, with no analysis, no retrieval, and a weighted mean: a judge
//! that a small checkpoint can serve, and a smooth reward.
//!
//! For a dimension `d` with template `T_d`, the judge renders `T_d(prompt, response, d)`, runs the
//! model once, and reads the next-token logits `ℓ` at the last position of that text. Restricted
//! to the rating tokens `t_1 … t_K` (values `v_1 … v_K`), they give
//!
//! ```text
//! p_k = exp(ℓ[t_k]) / Σ_j exp(ℓ[t_j])        E_d = Σ_k p_k · v_k
//! ```
//!
//! (a softmax over the rating tokens only, computed in `f64` on the host), and the score of the
//! response is the weighted mean over dimensions, `S = Σ_d w_d · E_d / Σ_d w_d`. LongReward rates
//! helpfulness, logicality, faithfulness and completeness and averages them; those are the
//! defaults ([`JudgeConfig::default`]), with equal weights.
//!
//! The expected rating is smooth where a sampled or argmax rating is a step: two responses the
//! judge rates "mostly 7" and "7 or 8" get different scores, which is what a reward needs.
//!
//! The ratings are single tokens: a rating is read off one next-token distribution, so a rating
//! that the tokenizer encodes as two tokens *where it follows the template* (such as "10" in a
//! tokenizer that splits numbers into digits) is refused. Each rating's token is found in
//! context: `encode(rating_context + rating)` must be `encode(rating_context)` and one token
//! more, which is that token. (Encoded alone, a digit is two tokens in a tokenizer that prepends
//! "▁" to every text, as Llama 2, Mistral and Phi-3 do; after `[[` it is one.) The defaults are
//! "0" … "9", valued 0 … 9, and no rating is a prefix of another (with "1" … "10", the mass of
//! "1" would also hold the start of "10" wherever "10" is two tokens).
//!
//! The default templates end with `Rating: [[` (MT-Bench's `[[rating]]` format), so the rating
//! digit follows a bracket and is the same token whether or not the tokenizer attaches spaces to
//! the next word.
//!
//! Templates are plain text with the variables `prompt`, `response`, `dimension` and
//! `bos_token` (the tokenizer's BOS text, empty without one; the default templates begin with
//! it, as Llama-family models expect): for a chat model, the caller writes its chat markup (the
//! user turn, the opening of the assistant's reply) into them.
//!
//! [`rlhf_core::best_and_worst`] turns a judge's scores of `k` sampled responses per prompt into DPO pairs,
//! LongReward's recipe; `rlhf_dpo::online_round` does the same inside an online round with any
//! `Scorer`, this judge included.

use std::collections::BTreeSet;

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use rlhf_core::host::to_f32_vec;
use rlhf_core::{Error, Result, Scorer};
use rlhf_data::{Tokenizer, collate};
use rlhf_models::CausalLm;
use serde::{Deserialize, Serialize};

/// One dimension the judge rates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeDimension {
    /// The dimension's name, given to the template as `dimension`; unique within a judge.
    pub name: String,
    /// A Jinja template (rendered with `minijinja`) of the judge's input, with the variables
    /// `prompt`, `response` and `dimension`. The rendered text is given to the model as it is
    /// (a trailing newline is kept), and the rating is read from the token that would follow it.
    /// Any other variable is an error.
    pub template: String,
    /// Its weight `w_d ≥ 0` in the mean over dimensions.
    pub weight: f64,
}

impl JudgeDimension {
    /// A dimension of weight 1.
    pub fn new(name: &str, template: &str) -> Self {
        JudgeDimension {
            name: name.to_string(),
            template: template.to_string(),
            weight: 1.0,
        }
    }

    /// The default template for a dimension described by `rubric` (the question the judge
    /// answers), on the 0–9 scale of the default ratings.
    pub fn rubric_template(rubric: &str) -> String {
        format!(
            "{{{{ bos_token }}}}You are an impartial judge. Rate the {{{{ dimension }}}} of the response to the prompt \
             below on a scale from 0 (worst) to 9 (best).\n\
             {{{{ dimension | capitalize }}}}: {rubric}\n\n\
             [Prompt]\n{{{{ prompt }}}}\n\n\
             [Response]\n{{{{ response }}}}\n\n\
             Rating: [["
        )
    }

    /// LongReward's four dimensions with the default template and their rubrics.
    pub fn longreward() -> Vec<JudgeDimension> {
        [
            (
                "helpfulness",
                "does the response address what the prompt asks and meet the asker's needs?",
            ),
            (
                "logicality",
                "is the response logically consistent, free of contradictions, with sound \
                 reasoning?",
            ),
            (
                "faithfulness",
                "is every claim of the response supported by the prompt and its context, with \
                 nothing invented?",
            ),
            (
                "completeness",
                "does the response cover every key point the prompt calls for?",
            ),
        ]
        .into_iter()
        .map(|(name, rubric)| JudgeDimension::new(name, &Self::rubric_template(rubric)))
        .collect()
    }
}

/// A rating the judge can give: a string that encodes to exactly one token, and its value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rating {
    /// The rating's text, encoded on its own with the judge's tokenizer.
    pub text: String,
    /// Its value `v_k`.
    pub value: f64,
}

impl Rating {
    /// The digits `lo ..= hi` (each at most 9), each valued as itself.
    pub fn digits(lo: u8, hi: u8) -> Vec<Rating> {
        (lo..=hi.min(9))
            .map(|d| Rating {
                text: d.to_string(),
                value: f64::from(d),
            })
            .collect()
    }
}

/// The judge's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct JudgeConfig {
    /// The dimensions rated (at least one; weights non-negative with a positive sum).
    pub dimensions: Vec<JudgeDimension>,
    /// The ratings (at least two, each one token, no two the same token).
    pub ratings: Vec<Rating>,
    /// Judge inputs (one per response and dimension) per forward pass.
    pub batch_size: usize,
    /// Remove the EOS text from the end of a response before rendering (a policy's response
    /// carries it when it stopped at EOS; a causal LM reads EOS as the end of a document, not as
    /// part of a quoted reply).
    pub strip_eos: bool,
    /// The EOS text of the policy whose responses are judged (`None`: the judge's own, which is
    /// right only when both share a tokenizer).
    pub response_eos: Option<String>,
    /// The text the templates end with, after which a rating is read: each rating's token is
    /// the one `rating_context + rating` adds to `rating_context` (see the module documentation).
    pub rating_context: String,
}

impl Default for JudgeConfig {
    /// LongReward's dimensions ([`JudgeDimension::longreward`]), equal weights, ratings "0" …
    /// "9", 16 inputs per forward pass, EOS stripped.
    fn default() -> Self {
        JudgeConfig {
            dimensions: JudgeDimension::longreward(),
            ratings: Rating::digits(0, 9),
            batch_size: 16,
            strip_eos: true,
            response_eos: None,
            rating_context: "Rating: [[".to_string(),
        }
    }
}

/// A causal LM with its tokenizer, prompted to rate responses (see the module documentation for
/// the score).
pub struct LlmJudge {
    model: CausalLm,
    tokenizer: Tokenizer,
    config: JudgeConfig,
    templates: Environment<'static>,
    rating_ids: Vec<u32>,
}

fn template_error(dimension: &str, e: minijinja::Error) -> Error {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message.push_str(&format!(": {s}"));
        source = s.source();
    }
    Error::Config(format!(
        "judge: template of dimension `{dimension}`: {message}"
    ))
}

impl LlmJudge {
    /// Serves `model` (moved to inference mode on `device`) as a judge with `tokenizer`.
    ///
    /// Errors when the configuration is not usable: no dimension, a repeated or empty name, a
    /// negative or non-finite weight or weights summing to 0, a template that does not parse,
    /// fewer than two ratings, a rating that is not exactly one token (or is a token the model's
    /// embedding does not have, or the same token as another rating), a non-finite value, a batch
    /// size of 0, or a model without an LM head.
    pub fn new(
        model: CausalLm,
        tokenizer: Tokenizer,
        config: JudgeConfig,
        device: &Device,
    ) -> Result<Self> {
        if !model.has_lm_head() {
            return Err(Error::Config(
                "judge: the model has no LM head (a reward model's backbone cannot rate)".into(),
            ));
        }
        if config.batch_size == 0 {
            return Err(Error::Config("judge: batch_size must be ≥ 1".into()));
        }
        let templates = Self::compile(&config.dimensions)?;
        let rating_ids = Self::resolve_ratings(
            &config.ratings,
            &config.rating_context,
            &tokenizer,
            model.vocab_size(),
        )?;
        let device = device.clone().without_autodiff();
        let model = model.valid().without_dropout().to_device(&device);
        Ok(LlmJudge {
            model,
            tokenizer,
            config,
            templates,
            rating_ids,
        })
    }

    fn compile(dimensions: &[JudgeDimension]) -> Result<Environment<'static>> {
        if dimensions.is_empty() {
            return Err(Error::Config("judge: no dimension to rate".into()));
        }
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_keep_trailing_newline(true);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        let mut names = BTreeSet::new();
        for d in dimensions {
            if d.name.trim().is_empty() {
                return Err(Error::Config("judge: a dimension has an empty name".into()));
            }
            if !names.insert(d.name.as_str()) {
                return Err(Error::Config(format!(
                    "judge: dimension `{}` is given twice",
                    d.name
                )));
            }
            if !d.weight.is_finite() || d.weight < 0.0 {
                return Err(Error::Config(format!(
                    "judge: dimension `{}` has weight {}; weights are finite and ≥ 0",
                    d.name, d.weight
                )));
            }
            env.add_template_owned(d.name.clone(), d.template.clone())
                .map_err(|e| template_error(&d.name, e))?;
        }
        let total: f64 = dimensions.iter().map(|d| d.weight).sum();
        if total <= 0.0 || !total.is_finite() {
            return Err(Error::Config(format!(
                "judge: the dimensions' weights sum to {total}; they must sum to a positive number"
            )));
        }
        Ok(env)
    }

    fn resolve_ratings(
        ratings: &[Rating],
        context: &str,
        tokenizer: &Tokenizer,
        vocab: usize,
    ) -> Result<Vec<u32>> {
        let before = tokenizer.encode(context)?;
        if ratings.len() < 2 {
            return Err(Error::Config(format!(
                "judge: {} rating(s); an expected rating needs at least two",
                ratings.len()
            )));
        }
        let mut ids = Vec::with_capacity(ratings.len());
        for r in ratings {
            if !r.value.is_finite() {
                return Err(Error::Config(format!(
                    "judge: rating {:?} has value {}; values are finite",
                    r.text, r.value
                )));
            }
            let encoded = tokenizer.encode(&format!("{context}{}", r.text))?;
            let added = encoded.strip_prefix(before.as_slice()).unwrap_or(&[]);
            let &[id] = added else {
                return Err(Error::Config(format!(
                    "judge: after {context:?}, rating {:?} encodes to {encoded:?} where {:?} \
                     alone is {before:?}; a rating is read from one next-token distribution, so \
                     each rating must add exactly one token to the rating context (use single \
                     digits, or set rating_context to how the templates end)",
                    r.text, context
                )));
            };
            if id as usize >= vocab {
                return Err(Error::Config(format!(
                    "judge: rating {:?} is token {id}, outside the model's vocabulary of {vocab}",
                    r.text
                )));
            }
            if let Some(k) = ids.iter().position(|&other| other == id) {
                return Err(Error::Config(format!(
                    "judge: ratings {:?} and {:?} are the same token {id}",
                    ratings[k].text, r.text
                )));
            }
            ids.push(id);
        }
        Ok(ids)
    }

    /// The settings.
    pub fn config(&self) -> &JudgeConfig {
        &self.config
    }

    /// The served model.
    pub fn model(&self) -> &CausalLm {
        &self.model
    }

    /// The token id of each rating, in the order of [`JudgeConfig::ratings`].
    pub fn rating_ids(&self) -> &[u32] {
        &self.rating_ids
    }

    /// The judge's input for `response` to `prompt` on dimension number `dimension` (EOS
    /// stripped from the response when [`JudgeConfig::strip_eos`]). An index out of range or a
    /// template that fails to render (an unknown variable, a failing filter) is an error.
    pub fn render(&self, prompt: &str, response: &str, dimension: usize) -> Result<String> {
        let d = self.config.dimensions.get(dimension).ok_or_else(|| {
            Error::Config(format!(
                "judge: dimension {dimension} of {}",
                self.config.dimensions.len()
            ))
        })?;
        let eos = self
            .config
            .response_eos
            .clone()
            .unwrap_or_else(|| self.tokenizer.eos_text());
        let response = if self.config.strip_eos && !eos.is_empty() {
            response.strip_suffix(eos.as_str()).unwrap_or(response)
        } else {
            response
        };
        let template = self
            .templates
            .get_template(&d.name)
            .map_err(|e| template_error(&d.name, e))?;
        template
            .render(minijinja::context! {
                prompt => prompt,
                response => response,
                dimension => d.name,
                bos_token => self.tokenizer.config().bos_token.clone().unwrap_or_default(),
            })
            .map_err(|e| template_error(&d.name, e))
    }

    /// The rating distribution `p_1 … p_K` (softmax over the rating tokens' logits only) of the
    /// token following each judge input, in `f64`. Inputs are batched [`JudgeConfig::batch_size`]
    /// at a time, grouped by length and left-padded; an input that encodes to no token is an
    /// error.
    pub fn rating_probabilities(&self, inputs: &[&str]) -> Result<Vec<Vec<f64>>> {
        let rows = inputs
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let ids = self.tokenizer.encode_start(text)?;
                if ids.is_empty() {
                    return Err(Error::Config(format!(
                        "judge: input {i} encodes to no token; nothing to read a rating after"
                    )));
                }
                Ok(ids)
            })
            .collect::<Result<Vec<_>>>()?;
        // similar lengths share a batch, so little of it is padding
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.sort_by_key(|&i| rows[i].len());
        let k = self.rating_ids.len();
        let mut out = vec![Vec::new(); rows.len()];
        for chunk in order.chunks(self.config.batch_size) {
            let batch: Vec<&[u32]> = chunk.iter().map(|&i| rows[i].as_slice()).collect();
            let logits = self.rating_logits(&batch)?;
            for (&i, row) in chunk.iter().zip(logits.chunks(k)) {
                out[i] = restricted_softmax(row).ok_or_else(|| {
                    Error::Config(format!(
                        "judge: the rating logits of input {i} are not finite ({row:?}); the \
                         model's weights may be corrupt"
                    ))
                })?;
            }
        }
        Ok(out)
    }

    /// The expected rating `E = Σ_k p_k · v_k` of each judge input (see
    /// [`Self::rating_probabilities`]).
    pub fn expected_ratings(&self, inputs: &[&str]) -> Result<Vec<f64>> {
        let values: Vec<f64> = self.config.ratings.iter().map(|r| r.value).collect();
        Ok(self
            .rating_probabilities(inputs)?
            .iter()
            .map(|p| p.iter().zip(&values).map(|(p, v)| p * v).sum())
            .collect())
    }

    /// The expected rating `E_d` of every response on every dimension, `[pair][dimension]`:
    /// every (pair, dimension) input goes through the same batched forward passes.
    pub fn dimension_scores(&self, prompts: &[&str], responses: &[&str]) -> Result<Vec<Vec<f64>>> {
        rlhf_core::check_pairs(prompts, responses)?;
        let n_dims = self.config.dimensions.len();
        let mut inputs = Vec::with_capacity(prompts.len() * n_dims);
        for (p, r) in prompts.iter().zip(responses) {
            for d in 0..n_dims {
                inputs.push(self.render(p, r, d)?);
            }
        }
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let expected = self.expected_ratings(&refs)?;
        Ok(expected.chunks(n_dims).map(<[f64]>::to_vec).collect())
    }

    /// The weighted mean `Σ_d w_d · E_d / Σ_d w_d` of one response's dimension scores, one per
    /// dimension in the order of [`JudgeConfig::dimensions`].
    pub fn combine(&self, scores: &[f64]) -> f64 {
        let (num, den) = self
            .config
            .dimensions
            .iter()
            .zip(scores)
            .fold((0.0, 0.0), |(n, d), (dim, s)| {
                (n + dim.weight * s, d + dim.weight)
            });
        num / den
    }

    /// The rating tokens' logits at the last position of each row, `[rows × K]` row-major.
    fn rating_logits(&self, rows: &[&[u32]]) -> Result<Vec<f32>> {
        let pairs: Vec<(&[u32], &[u32])> = rows.iter().map(|r| (*r, &[][..])).collect();
        // left-padded: every row's last token is in the last column
        let batch = collate(&pairs, self.tokenizer.pad_id(), None);
        let input = self
            .model
            .input(&batch.input_ids, &batch.attention_mask, batch.batch)?;
        let hidden = self.model.hidden(&input, None);
        let [b, t, _] = hidden.dims();
        let logits = self.model.lm_head(hidden.narrow(1, t - 1, 1));
        let vocab = logits.dims()[2];
        if let Some(&id) = self.rating_ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::Config(format!(
                "judge: rating token {id} is outside the LM head's {vocab} outputs"
            )));
        }
        let index: Vec<i64> = self.rating_ids.iter().map(|&id| i64::from(id)).collect();
        let k = index.len();
        let index = Tensor::<1, Int>::from_data(TensorData::new(index, [k]), &logits.device());
        Ok(to_f32_vec(logits.reshape([b, vocab]).select(1, index)))
    }
}

/// `softmax(logits)` in `f64`, shifted by the maximum; `None` when a logit is not finite.
fn restricted_softmax(logits: &[f32]) -> Option<Vec<f64>> {
    if logits.iter().any(|l| !l.is_finite()) {
        return None;
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let weights: Vec<f64> = logits
        .iter()
        .map(|&l| (f64::from(l) - f64::from(max)).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    Some(weights.into_iter().map(|w| w / total).collect())
}

impl Scorer for LlmJudge {
    /// `S = Σ_d w_d · E_d / Σ_d w_d` per pair (see [`LlmJudge::dimension_scores`]).
    fn score(&self, prompts: &[&str], responses: &[&str]) -> Result<Vec<f32>> {
        Ok(self
            .dimension_scores(prompts, responses)?
            .iter()
            .map(|s| self.combine(s) as f32)
            .collect())
    }

    fn name(&self) -> String {
        "llm-judge".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restricted_softmax_matches_a_direct_computation_and_survives_large_logits() {
        let p = restricted_softmax(&[1.0, 2.0, 3.0]).unwrap();
        let z: f64 = [1f64, 2.0, 3.0].iter().map(|x| x.exp()).sum();
        for (p, l) in p.iter().zip([1f64, 2.0, 3.0]) {
            assert!((p - l.exp() / z).abs() < 1e-15);
        }
        let p = restricted_softmax(&[1000.0, 1000.0]).unwrap();
        assert_eq!(p, vec![0.5, 0.5]);
        assert!(restricted_softmax(&[0.0, f32::NAN]).is_none());
    }

    #[test]
    fn digit_ratings_and_default_templates() {
        let r = Rating::digits(1, 5);
        assert_eq!(r.len(), 5);
        assert_eq!((r[0].text.as_str(), r[4].value), ("1", 5.0));
        let dims = JudgeDimension::longreward();
        let names: Vec<&str> = dims.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            names,
            ["helpfulness", "logicality", "faithfulness", "completeness"]
        );
        assert!(dims[0].template.ends_with("Rating: [["));
        assert!(dims[0].template.contains("{{ prompt }}"));
    }
}
