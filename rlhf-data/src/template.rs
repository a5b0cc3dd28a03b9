//! A checkpoint's own chat template: the Jinja `chat_template` of its `tokenizer_config.json`,
//! rendered with `minijinja` the way `transformers`' `apply_chat_template` renders it.
//!
//! [`ChatFormat`] is what the trainers use to turn conversations into text: the checkpoint's
//! template when it has one, [`ChatTemplate`] (ChatML by default) otherwise. A prompt is rendered
//! with the generation prompt (`add_generation_prompt = true`); its response is the rendering of
//! the whole conversation with the prompt's rendering cut off the front (as TRL splits prompt
//! and completion), so prompt text + response text is exactly the conversation the template
//! writes, end-of-turn token included.

use minijinja::{Environment, Error as JinjaError, ErrorKind, Value};
use rlhf_base::{Error, Result};

use crate::chat::ChatTemplate;
use crate::records::{Message, Turns};

/// A Jinja chat template with the special tokens it may refer to, and extra variables
/// (`transformers`' `apply_chat_template(..., **kwargs)`, TRL's `chat_template_kwargs`, such as
/// Qwen3's `enable_thinking`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JinjaTemplate {
    source: String,
    bos_token: String,
    eos_token: String,
    variables: serde_json::Map<String, serde_json::Value>,
}

fn template_error(e: JinjaError) -> Error {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message.push_str(&format!(": {s}"));
        source = s.source();
    }
    Error::Config(format!("chat template: {message}"))
}

impl JinjaTemplate {
    /// A template from its source and the tokenizer's BOS and EOS texts. The source is compiled
    /// once here, so a template that does not parse is refused before any data is read.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let template = JinjaTemplate {
            source: source.to_string(),
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            variables: serde_json::Map::new(),
        };
        template
            .environment()
            .template_from_str(&template.source)
            .map_err(template_error)?;
        Ok(template)
    }

    /// The environment `transformers` renders chat templates in: `trim_blocks`, `lstrip_blocks`,
    /// Python's string and dict methods and `raise_exception`. `strftime_now` is left undefined:
    /// templates that print today's date (Llama 3.x) test for it and print their own fixed date
    /// instead, so rendering, and so tokenisation and every cache key that depends on it, never
    /// changes with the clock.
    fn environment(&self) -> Environment<'_> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<Value, JinjaError> {
                Err(JinjaError::new(ErrorKind::InvalidOperation, message))
            },
        );
        env
    }

    /// This template with `variables` defined wherever it renders. As in `transformers`, a
    /// variable may replace `bos_token` or `eos_token`, and `messages` or
    /// `add_generation_prompt` among them is refused (`transformers` raises on the duplicate
    /// argument).
    pub fn with_variables(
        mut self,
        variables: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self> {
        if let Some(name) = ["messages", "add_generation_prompt"]
            .into_iter()
            .find(|n| variables.contains_key(*n))
        {
            return Err(Error::Config(format!(
                "chat template variables: `{name}` is the renderer's own argument"
            )));
        }
        self.variables = variables;
        Ok(self)
    }

    /// The conversation `messages` as the template writes it, with the opening of the
    /// assistant's reply when `add_generation_prompt`.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let env = self.environment();
        let template = env
            .template_from_str(&self.source)
            .map_err(template_error)?;
        template
            // the last definition of a name wins: the variables over the special tokens
            .render(minijinja::value::merge_maps([
                minijinja::context! {
                    bos_token => self.bos_token,
                    eos_token => self.eos_token,
                },
                Value::from_serialize(&self.variables),
                minijinja::context! {
                    messages => messages,
                    add_generation_prompt => add_generation_prompt,
                },
            ]))
            .map_err(template_error)
    }
}

/// How the trainers turn a record's prompt and response into text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatFormat {
    /// The checkpoint's own Jinja template.
    Jinja(JinjaTemplate),
    /// A template of three pieces (ChatML by default), for checkpoints without one.
    Pieces(ChatTemplate),
}

impl Default for ChatFormat {
    fn default() -> Self {
        ChatFormat::Pieces(ChatTemplate::chatml())
    }
}

/// A prompt as the messages before a reply: a plain-text prompt is the user's.
fn as_messages(prompt: &Turns) -> Vec<Message> {
    match prompt {
        Turns::Messages(m) => m.clone(),
        Turns::Text(t) => vec![Message {
            role: "user".into(),
            content: t.clone(),
        }],
    }
}

impl ChatFormat {
    /// The prompt as text: a conversation rendered with the opening of the assistant's reply;
    /// plain text as it is.
    pub fn prompt(&self, prompt: &Turns) -> Result<String> {
        match (self, prompt) {
            (_, Turns::Text(t)) => Ok(t.clone()),
            (ChatFormat::Pieces(t), p) => Ok(t.prompt(p)),
            (ChatFormat::Jinja(j), Turns::Messages(m)) => j.render(m, true),
        }
    }

    /// The whole conversation, `prompt` and then `response`, as the template writes it (a
    /// plain-text response after the prompt's rendering). Unlike [`Self::response`], it needs no
    /// split: a template may render the prompt alone otherwise (a generation prompt that opens a
    /// thought block the finished turn does not have).
    pub fn whole(&self, prompt: &Turns, response: &Turns) -> Result<String> {
        match (self, response) {
            (_, Turns::Text(t)) => Ok(format!("{}{t}", self.prompt(prompt)?)),
            (ChatFormat::Pieces(t), r) => Ok(format!("{}{}", self.prompt(prompt)?, t.response(r))),
            (ChatFormat::Jinja(j), Turns::Messages(reply)) => {
                j.render(&[as_messages(prompt), reply.clone()].concat(), false)
            }
        }
    }

    /// The response to `prompt` as text, such that `prompt(prompt) + response(prompt, response)`
    /// is the whole conversation as the template writes it. A plain-text response is returned as
    /// it is. With a Jinja template the conversation must begin with the prompt's rendering (a
    /// template that rewrites earlier turns once a reply follows cannot be split this way).
    pub fn response(&self, prompt: &Turns, response: &Turns) -> Result<String> {
        match (self, response) {
            (_, Turns::Text(t)) => Ok(t.clone()),
            (ChatFormat::Pieces(t), r) => Ok(t.response(r)),
            (ChatFormat::Jinja(j), Turns::Messages(reply)) => {
                let before = as_messages(prompt);
                let head = j.render(&before, true)?;
                let whole = j.render(&[before, reply.clone()].concat(), false)?;
                whole.strip_prefix(&head).map(str::to_string).ok_or_else(|| {
                    Error::Config(format!(
                        "chat template: the conversation with its reply does not begin with the \
                         prompt's rendering, so the two cannot be split (prompt: {head:?})"
                    ))
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }

    /// Qwen2-Instruct's template (abridged: no tools), as `tokenizer_config.json` holds it.
    const QWEN2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn a_qwen2_template_renders_as_transformers_does_and_splits_prompt_from_reply() {
        let t = ChatFormat::Jinja(JinjaTemplate::new(QWEN2, "", "<|im_end|>").unwrap());
        let prompt = Turns::Messages(vec![msg("user", "Hi")]);
        let reply = Turns::Messages(vec![msg("assistant", "Hello")]);
        let p = t.prompt(&prompt).unwrap();
        assert_eq!(
            p,
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(t.response(&prompt, &reply).unwrap(), "Hello<|im_end|>\n");
        // plain text is left alone
        assert_eq!(t.prompt(&Turns::Text("x".into())).unwrap(), "x");
    }

    /// Llama 3.x's guard around today's date, abridged: without `strftime_now` the template's
    /// own date is printed, the same on every run.
    #[test]
    fn a_template_that_asks_for_today_gets_its_own_fixed_date() {
        let src = "{%- if strftime_now is defined %}{%- set d = strftime_now('%d %b %Y') %}{%- else %}{%- set d = 'fixed' %}{%- endif %}Today: {{ d }}";
        let t = JinjaTemplate::new(src, "", "").unwrap();
        assert_eq!(
            t.render(&[msg("user", "Hi")], false).unwrap(),
            "Today: fixed"
        );
    }

    /// Extra variables reach the template (Qwen3's `enable_thinking`, abridged) and may replace
    /// a special token, as in `transformers`; the conversation and the generation switch are the
    /// renderer's alone.
    #[test]
    fn extra_variables_reach_the_template() {
        let src = "{{ messages[0].content }}{% if enable_thinking is defined and not enable_thinking %}<think></think>{% endif %}";
        let t = JinjaTemplate::new(src, "", "").unwrap();
        let conversation = [msg("user", "Hi")];
        assert_eq!(t.render(&conversation, true).unwrap(), "Hi");
        let vars = |json: &str| -> serde_json::Map<String, serde_json::Value> {
            serde_json::from_str(json).unwrap()
        };
        let off = t
            .clone()
            .with_variables(vars(r#"{"enable_thinking": false}"#))
            .unwrap();
        assert_eq!(
            off.render(&conversation, true).unwrap(),
            "Hi<think></think>"
        );
        let on = t
            .clone()
            .with_variables(vars(r#"{"enable_thinking": true}"#))
            .unwrap();
        assert_eq!(on.render(&conversation, true).unwrap(), "Hi");
        for own in ["messages", "add_generation_prompt"] {
            let e = t
                .clone()
                .with_variables(vars(&format!(r#"{{"{own}": 1}}"#)));
            assert!(e.unwrap_err().to_string().contains(own));
        }
        let eos = JinjaTemplate::new("{{ messages[0].content }}{{ eos_token }}", "", "</s>")
            .unwrap()
            .with_variables(vars(r#"{"eos_token": "<END>"}"#))
            .unwrap();
        assert_eq!(eos.render(&conversation, false).unwrap(), "Hi<END>");
    }

    #[test]
    fn python_methods_raise_exception_and_special_tokens_work() {
        let src = "{{ bos_token }}{% for m in messages %}{% if m.role not in ['user', 'assistant'] %}{{ raise_exception('bad role ' + m.role) }}{% endif %}[{{ m.role.upper() }}] {{ m.content.strip() }}{{ eos_token }}{% endfor %}";
        let t = JinjaTemplate::new(src, "<s>", "</s>").unwrap();
        assert_eq!(
            t.render(&[msg("user", "  hi ")], false).unwrap(),
            "<s>[USER] hi</s>"
        );
        let e = t.render(&[msg("tool", "x")], false).unwrap_err();
        assert!(e.to_string().contains("bad role tool"), "{e}");
        assert!(JinjaTemplate::new("{% for %}", "", "").is_err());
    }
}
