//! Record types, in the layouts of the Hugging Face hub (TRL's dataset formats).
//!
//! Text fields are [`Turns`]: either a plain string (the "standard" layout) or a list of
//! `{role, content}` messages (the "conversational" layout). Records keep what the file had, so
//! writing them back gives the same layout; [`crate::ChatTemplate`] renders messages to text when
//! a trainer needs it.

use serde::{Deserialize, Serialize};

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant`, … (free text, as in the hub's datasets).
    pub role: String,
    /// The message text.
    pub content: String,
}

/// A text field: a plain string or a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Turns {
    /// Standard layout.
    Text(String),
    /// Conversational layout.
    Messages(Vec<Message>),
}

impl Turns {
    /// Whether there is nothing in it (an empty string or no message with content).
    pub fn is_empty(&self) -> bool {
        match self {
            Turns::Text(t) => t.is_empty(),
            Turns::Messages(m) => m.iter().all(|m| m.content.is_empty()),
        }
    }

    /// The plain string, when this is one.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Turns::Text(t) => Some(t),
            Turns::Messages(_) => None,
        }
    }
}

impl From<&str> for Turns {
    fn from(s: &str) -> Self {
        Turns::Text(s.to_string())
    }
}

impl From<String> for Turns {
    fn from(s: String) -> Self {
        Turns::Text(s)
    }
}

/// A comparison `chosen ≻ rejected` of two responses to `prompt`.
///
/// Read from `{prompt, chosen, rejected}`, from the implicit-prompt layout `{chosen, rejected}`
/// (HH-RLHF: the prompt is the shared prefix, see [`crate::split_implicit_prompt`]), and from
/// either in conversational form; `score_chosen` / `score_rejected` are kept when present
/// (UltraFeedback-binarized), and so is `margin` (TRL's reward-modelling column: how far the
/// chosen response's reward should lie above the rejected one's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreferenceRecord {
    /// The conversation so far.
    pub prompt: Turns,
    /// The preferred response.
    pub chosen: Turns,
    /// The dispreferred response.
    pub rejected: Turns,
    /// A rating of the chosen response, when the dataset has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score_chosen: Option<f64>,
    /// A rating of the rejected response, when the dataset has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score_rejected: Option<f64>,
    /// The Bradley–Terry margin, when the dataset has one: every record of a file has one or
    /// none does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub margin: Option<f64>,
}

/// A demonstration for supervised fine-tuning: the loss is taken on `completion` only.
///
/// Read from `{prompt, completion}`, from `{messages}` (the last assistant message is the
/// completion, everything before it the prompt; `rlhf sft --assistant-only-loss` learns the
/// prompt's assistant messages too) and from `{text}` (language modelling: an empty prompt).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SftRecord {
    /// The context.
    pub prompt: Turns,
    /// The demonstration.
    pub completion: Turns,
}

/// A prompt alone, for on-policy RL (`{prompt}`), with the record's other fields kept (a
/// verifier reward reads its reference answer from one, as TRL passes dataset columns to reward
/// functions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptRecord {
    /// The prompt.
    pub prompt: Turns,
    /// Every other field of the record, as the file had it.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// One response to a prompt labelled good or bad on its own (`{prompt, completion, label}`, TRL's
/// unpaired preference layout): an outcome reward model's data, and KTO's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnpairedRecord {
    /// The prompt.
    pub prompt: Turns,
    /// The response.
    pub completion: Turns,
    /// Whether the response is desirable (correct).
    pub label: bool,
}

/// `K ≥ 2` responses to one prompt with a reward each (`{prompt, completions, rewards}`), for
/// EXO-rw and ranking reward models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KwiseRecord {
    /// The prompt.
    pub prompt: Turns,
    /// The responses.
    pub completions: Vec<Turns>,
    /// One finite reward per response.
    pub rewards: Vec<f64>,
}

/// A reasoning trace with a label per step (`{prompt, completions: [steps], labels: [bool]}`,
/// TRL's step-wise supervision layout), for process reward models.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// The problem.
    pub prompt: String,
    /// The steps, in order.
    pub completions: Vec<String>,
    /// Whether each step is correct.
    pub labels: Vec<bool>,
}

/// Which record type a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// [`PreferenceRecord`].
    Preference,
    /// [`SftRecord`].
    Sft,
    /// [`PromptRecord`].
    Prompt,
    /// [`KwiseRecord`].
    Kwise,
    /// [`StepRecord`].
    Steps,
    /// [`UnpairedRecord`].
    Unpaired,
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "preference" => Kind::Preference,
            "sft" => Kind::Sft,
            "prompt" => Kind::Prompt,
            "kwise" => Kind::Kwise,
            "steps" => Kind::Steps,
            "unpaired" => Kind::Unpaired,
            _ => {
                return Err(format!(
                    "unknown kind `{s}`: expected preference, sft, prompt, kwise, steps or unpaired"
                ));
            }
        })
    }
}

/// The field names to read, for datasets that name them differently (like TRL's `prompt_key`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FieldNames {
    /// `prompt`.
    pub prompt: String,
    /// `chosen`.
    pub chosen: String,
    /// `rejected`.
    pub rejected: String,
    /// `completion`.
    pub completion: String,
    /// `messages`.
    pub messages: String,
    /// `text`.
    pub text: String,
    /// `completions`.
    pub completions: String,
    /// `rewards`.
    pub rewards: String,
    /// `labels`.
    pub labels: String,
    /// `label`.
    pub label: String,
    /// `score_chosen`.
    pub score_chosen: String,
    /// `score_rejected`.
    pub score_rejected: String,
    /// `margin`.
    pub margin: String,
}

impl Default for FieldNames {
    fn default() -> Self {
        let s = |x: &str| x.to_string();
        FieldNames {
            prompt: s("prompt"),
            chosen: s("chosen"),
            rejected: s("rejected"),
            completion: s("completion"),
            messages: s("messages"),
            text: s("text"),
            completions: s("completions"),
            rewards: s("rewards"),
            labels: s("labels"),
            label: s("label"),
            score_chosen: s("score_chosen"),
            score_rejected: s("score_rejected"),
            margin: s("margin"),
        }
    }
}
