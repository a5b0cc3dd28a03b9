//! The reward model: a transformer backbone with a scalar head read at the last real token
//! (outcome RM), or at each step delimiter (process RM), plus its normalisation. Saved as a
//! Hugging Face directory (`config.json` + `model.safetensors`) with the normalisation and kind
//! under `rlhf_scalar`.

use std::path::Path;

use burn::module::Param;
use burn::tensor::{Device, Tensor, TensorData};
use rlhf_core::{Error, Result};
use rlhf_data::SequenceBatch;
use rlhf_models::{
    CausalLm, ScalarModel, TokenInput, TransformerConfig, load_scalar_pretrained,
    save_scalar_pretrained,
};
use serde::{Deserialize, Serialize};

use crate::losses::StepAggregate;

/// Outcome or process supervision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RewardKind {
    /// One score per response, at its last real token.
    Outcome,
    /// One logit per reasoning step, at each step's last token; the sequence score aggregates the
    /// step probabilities.
    Process,
}

/// How raw scores are served: `(r − bias) · gain`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Normalisation {
    /// Mean raw score of the SFT demonstrations.
    pub bias: f32,
    /// 1, or 1/std of the demonstrations' raw scores.
    pub gain: f32,
}

impl Default for Normalisation {
    fn default() -> Self {
        Normalisation {
            bias: 0.0,
            gain: 1.0,
        }
    }
}

impl Normalisation {
    /// From raw scores of demonstrations: `bias` = their mean; `gain` = 1/std when asked.
    pub fn from_scores(scores: &[f32], with_gain: bool) -> Result<Self> {
        if scores.is_empty() {
            return Err(Error::Config(
                "normalisation needs at least one demonstration".into(),
            ));
        }
        let n = scores.len() as f64;
        let mean = scores.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        let var = scores
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / n;
        let gain = if with_gain && var > 1e-12 {
            1.0 / var.sqrt()
        } else {
            1.0
        };
        Ok(Normalisation {
            bias: mean as f32,
            gain: gain as f32,
        })
    }

    /// The served score of a raw one.
    pub fn apply(&self, raw: f32) -> f32 {
        (raw - self.bias) * self.gain
    }
}

/// Where an outcome reward model reads a finished chat reply, whose template writes text after
/// the reply's end of turn (ChatML's `\n` after `<|im_end|>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChatReading {
    /// The conversation as its template renders it, whole: the score is read at the last token
    /// the template writes (ChatML's `\n`), where TRL's `RewardTrainer` learns it and TRL's
    /// online trainers and `transformers` read it.
    Rendered,
    /// The reply up to its end of turn, the EOS (what sampling ends with), and no further: the
    /// reading of settings that name none, where the reward models that wrote them were trained.
    TurnEnd,
}

/// The settings stored with a reward model (`rlhf_scalar` in `config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RewardSettings {
    /// Outcome or process.
    pub kind: RewardKind,
    /// Applied when serving.
    pub normalisation: Normalisation,
    /// Process RMs: how step probabilities become a sequence score.
    pub step_aggregate: StepAggregate,
    /// Process RMs: the text that ends a step (e.g. `;` or a newline).
    pub step_delimiter: Option<String>,
    /// Outcome RMs: where a finished chat reply is read (a process RM reads its steps in the
    /// text, and ignores it).
    #[serde(default = "ChatReading::turn_end")]
    pub chat_reading: ChatReading,
}

impl ChatReading {
    /// [`ChatReading::TurnEnd`], what settings written without the field meant.
    fn turn_end() -> Self {
        ChatReading::TurnEnd
    }
}

impl RewardSettings {
    /// An outcome RM without normalisation.
    pub fn outcome() -> Self {
        RewardSettings {
            kind: RewardKind::Outcome,
            normalisation: Normalisation::default(),
            step_aggregate: StepAggregate::Min,
            step_delimiter: None,
            chat_reading: ChatReading::Rendered,
        }
    }

    /// A process RM whose steps end with `delimiter`, scored by `aggregate`.
    pub fn process(delimiter: &str, aggregate: StepAggregate) -> Self {
        RewardSettings {
            kind: RewardKind::Process,
            normalisation: Normalisation::default(),
            step_aggregate: aggregate,
            step_delimiter: Some(delimiter.to_string()),
            chat_reading: ChatReading::Rendered,
        }
    }
}

/// A reward model: scalar model, its shape, and its settings.
#[derive(Debug, Clone)]
pub struct RewardModel {
    /// Backbone + scalar head.
    pub model: ScalarModel,
    /// The backbone's shape.
    pub config: TransformerConfig,
    /// Kind, normalisation, PRM aggregation.
    pub settings: RewardSettings,
    /// `config.json`'s `pad_token_id`, when the checkpoint names one: `transformers` reads the
    /// score at the last token that is not it, so a checkpoint whose PAD is its EOS (TRL's
    /// `RewardTrainer` sets PAD = EOS on a tokenizer without a PAD) learned its score at the
    /// token before a response's EOS, and is read there ([`crate::RewardScorer`]). A model
    /// trained here has none until it is written; `rlhf rm` writes its PAD only when that is a
    /// real token other than EOS, which no response ends with.
    pub pad_token_id: Option<u32>,
}

impl RewardModel {
    /// A fresh head on `backbone` (for example the SFT policy, as in the TL;DR reproduction).
    pub fn from_backbone(
        backbone: CausalLm,
        config: TransformerConfig,
        settings: RewardSettings,
    ) -> Self {
        RewardModel {
            model: ScalarModel::from_backbone(backbone),
            config,
            settings,
            pad_token_id: None,
        }
    }

    /// Writes the model as a Hugging Face directory.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let extra =
            serde_json::to_value(&self.settings).map_err(|e| Error::Record(e.to_string()))?;
        save_scalar_pretrained(&self.model, &self.config, extra, dir)
    }

    /// Loads what [`Self::save`] wrote. A checkpoint without a score head (a causal LM's) is
    /// refused: start a reward model from it with [`Self::from_backbone`].
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let (config, model, extra, head) = load_scalar_pretrained(dir, device)?;
        if !head {
            return Err(Error::Checkpoint {
                path: dir.to_path_buf(),
                message: "no score head (`score.weight`): not a reward model's checkpoint".into(),
            });
        }
        let settings = serde_json::from_value(extra).map_err(|e| Error::Data {
            file: dir.join("config.json"),
            line: 0,
            field: "rlhf_scalar".into(),
            message: e.to_string(),
        })?;
        Ok(RewardModel {
            model,
            config,
            settings,
            pad_token_id: config_pad_token_id(dir)?,
        })
    }

    /// A value model initialised from this reward model (the TL;DR reproduction's critic init),
    /// on the scale of the scores it serves. An outcome RM's normalisation `(raw − bias)·gain`
    /// is folded into the head, which gets the weight `gain·w` and a bias `−bias·gain`, so that
    /// the critic's first values and the rewards share one scale, as in the reproduction, whose
    /// critic subtracts the same bias as its reward model. A process RM's score is not linear in
    /// its head, so its critic keeps the head as it is.
    pub fn to_value_model(&self) -> ScalarModel {
        let mut model = self.model.clone();
        if self.settings.kind == RewardKind::Outcome {
            let Normalisation { bias, gain } = self.settings.normalisation;
            let device = model.backbone.device();
            model.score.weight =
                Param::from_tensor(model.score.weight.val().mul_scalar(gain).detach());
            model.score.bias = Some(Param::from_tensor(Tensor::<1>::from_data(
                TensorData::new(vec![-bias * gain], [1]),
                &device,
            )));
        }
        model
    }
}

/// The model input of a collated batch (pads replaced by a valid id, see [`TokenInput`]); a row
/// longer than a GPT-2 backbone's learned positions is an error.
pub(crate) fn batch_input(
    model: &ScalarModel,
    batch: &SequenceBatch,
    device: &Device,
) -> Result<TokenInput> {
    let input = TokenInput::new(
        &batch.input_ids,
        &batch.attention_mask,
        batch.batch,
        model.backbone.vocab_size(),
        device,
    )?;
    model.backbone.check_positions(input.longest())?;
    Ok(input)
}

/// `config.json`'s `pad_token_id` in `dir` (none when it is absent or `null`).
pub fn config_pad_token_id(dir: &Path) -> Result<Option<u32>> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::Checkpoint {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Data {
        file: path.clone(),
        line: e.line(),
        field: "-".into(),
        message: e.to_string(),
    })?;
    match &json["pad_token_id"] {
        serde_json::Value::Null => Ok(None),
        v => v
            .as_u64()
            .and_then(|id| u32::try_from(id).ok())
            .map(Some)
            .ok_or_else(|| Error::Data {
                file: path,
                line: 0,
                field: "pad_token_id".into(),
                message: format!("{v} is not a token id"),
            }),
    }
}

/// Raw scores `[batch]` of a collated batch (left-padded prompts, right-padded responses): the
/// head's value at each row's last real token.
pub fn last_token_scores(
    model: &ScalarModel,
    batch: &SequenceBatch,
    device: &Device,
) -> Result<Tensor<1>> {
    Ok(model.at_last_token(&batch_input(model, batch, device)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Settings written before `chat_reading` existed read chats at the end of turn, as those
    /// models were trained; new settings say where they read, and read back the same.
    #[test]
    fn settings_without_a_chat_reading_read_at_the_end_of_turn() {
        let old = serde_json::json!({
            "kind": "outcome",
            "normalisation": {"bias": 0.5, "gain": 1.0},
            "step_aggregate": "min",
            "step_delimiter": null
        });
        let read: RewardSettings = serde_json::from_value(old).unwrap();
        assert_eq!(read.chat_reading, ChatReading::TurnEnd);
        let new = RewardSettings::outcome();
        assert_eq!(new.chat_reading, ChatReading::Rendered);
        let json = serde_json::to_value(&new).unwrap();
        assert_eq!(json["chat_reading"], "rendered");
        assert_eq!(serde_json::from_value::<RewardSettings>(json).unwrap(), new);
    }
}
