//! Rendering conversations to text: a chat template (ChatML by default).

use serde::{Deserialize, Serialize};

use crate::records::{Message, Turns};

/// A chat template as three pieces of text, `{role}` standing for the speaker:
/// each message is `turn_start + content + turn_end`, and a prompt that asks for a reply ends with
/// `generation_start`. The default is ChatML (Qwen, many instruction-tuned models):
/// `<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChatTemplate {
    /// Text before each message's content.
    pub turn_start: String,
    /// Text after each message's content.
    pub turn_end: String,
    /// Text that opens the assistant's reply.
    pub generation_start: String,
}

impl Default for ChatTemplate {
    fn default() -> Self {
        ChatTemplate::chatml()
    }
}

impl ChatTemplate {
    /// ChatML.
    pub fn chatml() -> Self {
        ChatTemplate {
            turn_start: "<|im_start|>{role}\n".into(),
            turn_end: "<|im_end|>\n".into(),
            generation_start: "<|im_start|>assistant\n".into(),
        }
    }

    fn message(&self, m: &Message) -> String {
        format!(
            "{}{}{}",
            self.turn_start.replace("{role}", &m.role),
            m.content,
            self.turn_end
        )
    }

    /// A prompt: every message in full, then the opening of the assistant's reply. Plain text is
    /// returned as it is.
    pub fn prompt(&self, t: &Turns) -> String {
        match t {
            Turns::Text(s) => s.clone(),
            Turns::Messages(ms) => {
                let mut s: String = ms.iter().map(|m| self.message(m)).collect();
                s.push_str(&self.generation_start.replace("{role}", "assistant"));
                s
            }
        }
    }

    /// A response that follows [`Self::prompt`]: the first (assistant) message's content and its
    /// turn end, then any further messages in full. Plain text is returned as it is.
    pub fn response(&self, t: &Turns) -> String {
        match t {
            Turns::Text(s) => s.clone(),
            Turns::Messages(ms) => {
                let mut s = String::new();
                for (i, m) in ms.iter().enumerate() {
                    if i == 0 {
                        s.push_str(&m.content);
                        s.push_str(&self.turn_end);
                    } else {
                        s.push_str(&self.message(m));
                    }
                }
                s
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_prompt_and_response_concatenate_to_the_full_conversation() {
        let t = ChatTemplate::chatml();
        let user = Message {
            role: "user".into(),
            content: "Hi".into(),
        };
        let bot = Message {
            role: "assistant".into(),
            content: "Hello".into(),
        };
        let p = t.prompt(&Turns::Messages(vec![user.clone()]));
        assert_eq!(p, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
        let r = t.response(&Turns::Messages(vec![bot.clone()]));
        assert_eq!(r, "Hello<|im_end|>\n");
        let full: String = [user, bot].iter().map(|m| t.message(m)).collect();
        assert_eq!(format!("{p}{r}"), full);
        assert_eq!(t.prompt(&Turns::Text("x".into())), "x");
    }
}
