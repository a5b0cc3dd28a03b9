//! A reward model served the policy's samples as `rlhf rm` encoded its training data
//! ([`Encoder::fit`]): each prompt in the reward model's own chat format and tokens, each
//! finished reply with its own end of turn (a chat reply as its template renders it, or up to its
//! end of turn and EOS, as the model's settings say: `rlhf_reward::ChatReading`; plain text with
//! EOS), the reply tokenised after the prompt's text.
//! So a reward model of another tokenizer than the policy's reads its own format rather than the
//! policy's (TRL's online trainers render prompt and completion with the reward model's own chat
//! template), and one of the same tokenizer reads its samples as it was trained. A reply cut off
//! before the policy's EOS is read as its bare text, with no end.

use std::collections::HashMap;

use rlhf_core::{Error, Scorer};
use rlhf_data::{ChatFormat, Message, Turns};
use rlhf_reward::RewardScorer;

use crate::data::{Encoder, Prompts};

/// The reward model, its chat format, and the prompts it will be asked about.
pub struct ReEncoded {
    rm: RewardScorer,
    format: ChatFormat,
    /// Each prompt as the policy's format renders it (what the trainers pass) → its record's turns.
    turns: HashMap<String, Turns>,
    /// The policy's EOS text: a reply that ends with it is finished.
    policy_eos: String,
}

impl ReEncoded {
    /// Serves `rm` (an outcome reward model) in its tokenizer's chat format, for the policy's
    /// `prompts` and samples ending with `policy_eos`. The policy's chat template `variables`
    /// (`--chat-template-kwargs`), when given, are the reward model's template's too, as TRL's
    /// GRPO and RLOO pass them to a reward model's template; a format that is not a Jinja
    /// template has none to set and ignores them.
    pub fn new(
        rm: RewardScorer,
        prompts: &Prompts,
        policy_eos: String,
        variables: Option<&str>,
    ) -> anyhow::Result<Self> {
        let format = match (rm.tokenizer().config().chat_format()?, variables) {
            (ChatFormat::Jinja(t), Some(json)) => {
                ChatFormat::Jinja(t.with_variables(crate::load::template_variables(json)?)?)
            }
            (format, _) => format,
        };
        let turns = prompts
            .texts
            .iter()
            .zip(&prompts.records)
            .map(|(text, r)| (text.clone(), r.prompt.clone()))
            .collect();
        Ok(ReEncoded {
            rm,
            format,
            turns,
            policy_eos,
        })
    }

    /// `(prompt, response)` in the reward model's tokens.
    fn encode(&self, prompt: &str, response: &str) -> anyhow::Result<(Vec<u32>, Vec<u32>)> {
        let enc = Encoder {
            tokenizer: self.rm.tokenizer(),
            format: &self.format,
            max_prompt: usize::MAX,
            max_length: usize::MAX,
            chat_reading: self.rm.model().settings.chat_reading,
        };
        // a prompt the trainers were not given as a record (a plain string) is its own text
        let turns = self
            .turns
            .get(prompt)
            .cloned()
            .unwrap_or_else(|| Turns::Text(prompt.to_string()));
        Ok(match response.strip_suffix(self.policy_eos.as_str()) {
            Some(body) => {
                let reply = match &turns {
                    Turns::Messages(_) => Turns::Messages(vec![Message {
                        role: "assistant".into(),
                        content: body.to_string(),
                    }]),
                    Turns::Text(_) => Turns::Text(body.to_string()),
                };
                let (p, mut r) = enc.fit(&turns, &[&reply])?;
                (p, r.remove(0))
            }
            // cut off: its bare text after the prompt, no end
            None => {
                let (p, mut r) = enc.pieces(&turns, &[&Turns::Text(response.to_string())])?;
                (p, r.remove(0))
            }
        })
    }
}

impl Scorer for ReEncoded {
    fn score(&self, prompts: &[&str], responses: &[&str]) -> rlhf_core::Result<Vec<f32>> {
        rlhf_core::check_pairs(prompts, responses)?;
        let pairs = prompts
            .iter()
            .zip(responses)
            .map(|(p, r)| self.encode(p, r))
            .collect::<anyhow::Result<Vec<_>>>()
            .map_err(|e| Error::Config(format!("reward model input: {e:#}")))?;
        self.rm.score_tokens(&pairs)
    }

    fn name(&self) -> String {
        self.rm.name()
    }
}
