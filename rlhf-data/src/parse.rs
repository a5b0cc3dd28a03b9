//! From one JSON object to one record, with the field at fault named in every error.

use serde_json::{Map, Value};

use crate::records::{
    FieldNames, Kind, KwiseRecord, Message, PreferenceRecord, PromptRecord, SftRecord, StepRecord,
    Turns, UnpairedRecord,
};

/// What is wrong with one record: the field and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field (`-` for the record as a whole).
    pub field: String,
    /// What was expected and what was found.
    pub message: String,
}

type Obj = Map<String, Value>;

fn err(field: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_string(),
        message: message.into(),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn required<'a>(obj: &'a Obj, field: &str) -> Result<&'a Value, FieldError> {
    obj.get(field).ok_or_else(|| err(field, "missing"))
}

fn messages(v: &Value, field: &str) -> Result<Vec<Message>, FieldError> {
    let Value::Array(items) = v else {
        return Err(err(
            field,
            format!(
                "expected a list of {{role, content}} messages, found {}",
                type_name(v)
            ),
        ));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let at = format!("{field}[{i}]");
            let Value::Object(o) = m else {
                return Err(err(
                    &at,
                    format!(
                        "expected a {{role, content}} message, found {}",
                        type_name(m)
                    ),
                ));
            };
            let text = |k: &str| match o.get(k) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(other) => Err(err(
                    &format!("{at}.{k}"),
                    format!("expected a string, found {}", type_name(other)),
                )),
                None => Err(err(&format!("{at}.{k}"), "missing")),
            };
            Ok(Message {
                role: text("role")?,
                content: text("content")?,
            })
        })
        .collect()
}

/// A text field: a non-empty string or a non-empty list of messages.
fn turns(v: &Value, field: &str) -> Result<Turns, FieldError> {
    let t = match v {
        Value::String(s) => Turns::Text(s.clone()),
        Value::Array(_) => Turns::Messages(messages(v, field)?),
        other => {
            return Err(err(
                field,
                format!(
                    "expected a string or a list of messages, found {}",
                    type_name(other)
                ),
            ));
        }
    };
    if t.is_empty() {
        return Err(err(field, "is empty"));
    }
    Ok(t)
}

/// A list field, each item parsed by `item` with its indexed name (`completions[2]`).
fn list<T>(
    obj: &Obj,
    field: &str,
    what: &str,
    item: impl Fn(&Value, &str) -> Result<T, FieldError>,
) -> Result<Vec<T>, FieldError> {
    match required(obj, field)? {
        Value::Array(xs) => xs
            .iter()
            .enumerate()
            .map(|(i, x)| item(x, &format!("{field}[{i}]")))
            .collect(),
        other => Err(err(
            field,
            format!("expected a list of {what}, found {}", type_name(other)),
        )),
    }
}

fn string(v: &Value, at: &str) -> Result<String, FieldError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        other => Err(err(
            at,
            format!("expected a string, found {}", type_name(other)),
        )),
    }
}

fn optional_number(obj: &Obj, field: &str) -> Result<Option<f64>, FieldError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|x| x.is_finite())
            .map(Some)
            .ok_or_else(|| err(field, "is not a finite number")),
        Some(other) => Err(err(
            field,
            format!("expected a number, found {}", type_name(other)),
        )),
    }
}

/// A response field read after its prompt: a conversation needs a conversation before it (a chat
/// template has no turn in which to write a plain-text prompt; TRL refuses the mix too).
fn reply(v: &Value, field: &str, prompt: &Turns) -> Result<Turns, FieldError> {
    let t = turns(v, field)?;
    if matches!((prompt, &t), (Turns::Text(_), Turns::Messages(_))) {
        return Err(err(
            field,
            "is a list of messages after a plain-text prompt: write the prompt as messages too, \
             or the response as text",
        ));
    }
    Ok(t)
}

/// Splits two full transcripts that share an implicit prompt into prompt and responses.
///
/// Plain text (HH-RLHF): the prompt is the longest common prefix cut back to the end of its last
/// `\n\nAssistant:`, so both responses start right after the tag. Messages: the prompt is the
/// longest common run of whole messages, which must end before an assistant message.
pub fn split_implicit_prompt(
    chosen: &Turns,
    rejected: &Turns,
) -> Result<(Turns, Turns, Turns), String> {
    match (chosen, rejected) {
        (Turns::Text(c), Turns::Text(r)) => {
            const TAG: &str = "\n\nAssistant:";
            let common = c
                .char_indices()
                .zip(r.chars())
                .find(|((_, a), b)| a != b)
                .map(|((i, _), _)| i)
                .unwrap_or_else(|| c.len().min(r.len()));
            let Some(tag) = c[..common].rfind(TAG) else {
                return Err(
                    "chosen and rejected share no `Assistant:` turn to split the prompt at".into(),
                );
            };
            let cut = tag + TAG.len();
            Ok((
                Turns::Text(c[..cut].into()),
                Turns::Text(c[cut..].into()),
                Turns::Text(r[cut..].into()),
            ))
        }
        (Turns::Messages(c), Turns::Messages(r)) => {
            let common = c.iter().zip(r).take_while(|(a, b)| a == b).count();
            let cut = (0..=common).rev().find(|&k| {
                k < c.len() && k < r.len() && c[k].role == "assistant" && r[k].role == "assistant"
            });
            let Some(cut) = cut.filter(|&k| k > 0) else {
                return Err(
                    "chosen and rejected share no prompt that ends before an assistant message"
                        .into(),
                );
            };
            Ok((
                Turns::Messages(c[..cut].to_vec()),
                Turns::Messages(c[cut..].to_vec()),
                Turns::Messages(r[cut..].to_vec()),
            ))
        }
        _ => Err("chosen and rejected mix plain text and messages".into()),
    }
}

/// A record type that can be read from, and written to, one JSON object.
pub trait Record: Sized {
    /// The kind.
    const KIND: Kind;
    /// Parses one object.
    fn from_object(obj: &Obj, f: &FieldNames) -> Result<Self, FieldError>;
    /// The object in the standard layout with these field names.
    fn to_object(&self, f: &FieldNames) -> Obj;
    /// Whether this record fits a file whose first record is `first` (a column that some records
    /// have and others lack is an error at the first record that breaks the pattern).
    fn consistent_with(&self, _first: &Self, _f: &FieldNames) -> Result<(), FieldError> {
        Ok(())
    }
}

fn put(obj: &mut Obj, key: &str, v: impl serde::Serialize) {
    obj.insert(
        key.to_string(),
        serde_json::to_value(v).expect("records serialise"),
    );
}

impl Record for PreferenceRecord {
    const KIND: Kind = Kind::Preference;

    fn from_object(obj: &Obj, f: &FieldNames) -> Result<Self, FieldError> {
        let chosen = turns(required(obj, &f.chosen)?, &f.chosen)?;
        let rejected = turns(required(obj, &f.rejected)?, &f.rejected)?;
        // Conversations that open with the prompt's own messages (UltraFeedback-binarized keeps a
        // `prompt` string beside them) carry their prompt implicitly: it is their shared prefix.
        let opens_with_prompt = |t: &Turns| matches!(t, Turns::Messages(m) if m.first().is_some_and(|m| m.role != "assistant"));
        let (prompt, chosen, rejected) = match obj.get(&f.prompt) {
            Some(p) if !(opens_with_prompt(&chosen) && opens_with_prompt(&rejected)) => {
                let prompt = turns(p, &f.prompt)?;
                let chosen = reply(required(obj, &f.chosen)?, &f.chosen, &prompt)?;
                let rejected = reply(required(obj, &f.rejected)?, &f.rejected, &prompt)?;
                (prompt, chosen, rejected)
            }
            _ => split_implicit_prompt(&chosen, &rejected).map_err(|m| err(&f.chosen, m))?,
        };
        if chosen.is_empty() || rejected.is_empty() {
            return Err(err(
                if chosen.is_empty() {
                    &f.chosen
                } else {
                    &f.rejected
                },
                "the response after the prompt is empty",
            ));
        }
        Ok(PreferenceRecord {
            prompt,
            chosen,
            rejected,
            score_chosen: optional_number(obj, &f.score_chosen)?,
            score_rejected: optional_number(obj, &f.score_rejected)?,
            margin: optional_number(obj, &f.margin)?,
        })
    }

    fn consistent_with(&self, first: &Self, f: &FieldNames) -> Result<(), FieldError> {
        match (first.margin.is_some(), self.margin.is_some()) {
            (true, false) => Err(err(
                &f.margin,
                "is missing, and the file's first record has one: give every pair a margin or none",
            )),
            (false, true) => Err(err(
                &f.margin,
                "is here, and the file's first record has none: give every pair a margin or none",
            )),
            _ => Ok(()),
        }
    }

    fn to_object(&self, f: &FieldNames) -> Obj {
        let mut o = Obj::new();
        put(&mut o, &f.prompt, &self.prompt);
        put(&mut o, &f.chosen, &self.chosen);
        put(&mut o, &f.rejected, &self.rejected);
        if let Some(s) = self.score_chosen {
            put(&mut o, &f.score_chosen, s);
        }
        if let Some(s) = self.score_rejected {
            put(&mut o, &f.score_rejected, s);
        }
        if let Some(m) = self.margin {
            put(&mut o, &f.margin, m);
        }
        o
    }
}

impl Record for SftRecord {
    const KIND: Kind = Kind::Sft;

    fn from_object(obj: &Obj, f: &FieldNames) -> Result<Self, FieldError> {
        if let Some(c) = obj.get(&f.completion) {
            let prompt = turns(required(obj, &f.prompt)?, &f.prompt)?;
            return Ok(SftRecord {
                completion: reply(c, &f.completion, &prompt)?,
                prompt,
            });
        }
        if let Some(m) = obj.get(&f.messages) {
            let all = messages(m, &f.messages)?;
            let Some(last) = all.iter().rposition(|m| m.role == "assistant") else {
                return Err(err(&f.messages, "has no assistant message to learn"));
            };
            if last == 0 || all[last].content.is_empty() {
                return Err(err(
                    &f.messages,
                    "needs a non-empty assistant message after at least one other message",
                ));
            }
            return Ok(SftRecord {
                prompt: Turns::Messages(all[..last].to_vec()),
                completion: Turns::Messages(all[last..=last].to_vec()),
            });
        }
        if let Some(t) = obj.get(&f.text) {
            let Value::String(_) = t else {
                return Err(err(
                    &f.text,
                    format!("expected a string, found {}", type_name(t)),
                ));
            };
            return Ok(SftRecord {
                prompt: Turns::Text(String::new()),
                completion: turns(t, &f.text)?,
            });
        }
        Err(err(
            "-",
            format!(
                "expected `{}` + `{}`, `{}` or `{}`",
                f.prompt, f.completion, f.messages, f.text
            ),
        ))
    }

    /// `{text}` for a record with an empty prompt (language modelling), else `{prompt, completion}`.
    fn to_object(&self, f: &FieldNames) -> Obj {
        let mut o = Obj::new();
        if self.prompt == Turns::Text(String::new()) {
            put(&mut o, &f.text, &self.completion);
        } else {
            put(&mut o, &f.prompt, &self.prompt);
            put(&mut o, &f.completion, &self.completion);
        }
        o
    }
}

impl Record for PromptRecord {
    const KIND: Kind = Kind::Prompt;

    fn from_object(obj: &Obj, f: &FieldNames) -> Result<Self, FieldError> {
        let mut extra = obj.clone();
        extra.remove(&f.prompt);
        Ok(PromptRecord {
            prompt: turns(required(obj, &f.prompt)?, &f.prompt)?,
            extra,
        })
    }

    fn to_object(&self, f: &FieldNames) -> Obj {
        let mut o = self.extra.clone();
        put(&mut o, &f.prompt, &self.prompt);
        o
    }
}

impl Record for KwiseRecord {
    const KIND: Kind = Kind::Kwise;

    fn from_object(obj: &Obj, f: &FieldNames) -> Result<Self, FieldError> {
        let prompt = turns(required(obj, &f.prompt)?, &f.prompt)?;
        let completions = list(obj, &f.completions, "responses", |v, at| {
            reply(v, at, &prompt)
        })?;
        let rewards = list(obj, &f.rewards, "numbers", |r, at| {
            r.as_f64().filter(|x| x.is_finite()).ok_or_else(|| {
                err(
                    at,
                    format!("expected a finite number, found {}", type_name(r)),
                )
            })
        })?;
        if completions.len() < 2 {
            return Err(err(
                &f.completions,
                format!("needs at least 2 responses, has {}", completions.len()),
            ));
        }
        if rewards.len() != completions.len() {
            return Err(err(
                &f.rewards,
                format!(
                    "has {} rewards for {} responses",
                    rewards.len(),
                    completions.len()
                ),
            ));
        }
        Ok(KwiseRecord {
            prompt,
            completions,
            rewards,
        })
    }

    fn to_object(&self, f: &FieldNames) -> Obj {
        let mut o = Obj::new();
        put(&mut o, &f.prompt, &self.prompt);
        put(&mut o, &f.completions, &self.completions);
        put(&mut o, &f.rewards, &self.rewards);
        o
    }
}

impl Record for StepRecord {
    const KIND: Kind = Kind::Steps;

    fn from_object(obj: &Obj, f: &FieldNames) -> Result<Self, FieldError> {
        let prompt = match required(obj, &f.prompt)? {
            Value::String(s) if !s.is_empty() => s.clone(),
            Value::String(_) => return Err(err(&f.prompt, "is empty")),
            other => {
                return Err(err(
                    &f.prompt,
                    format!("expected a string, found {}", type_name(other)),
                ));
            }
        };
        let completions = list(obj, &f.completions, "steps", string)?;
        let labels = list(obj, &f.labels, "booleans", |l, at| {
            l.as_bool()
                .ok_or_else(|| err(at, format!("expected a boolean, found {}", type_name(l))))
        })?;
        if completions.is_empty() {
            return Err(err(&f.completions, "has no steps"));
        }
        if labels.len() != completions.len() {
            return Err(err(
                &f.labels,
                format!(
                    "has {} labels for {} steps",
                    labels.len(),
                    completions.len()
                ),
            ));
        }
        Ok(StepRecord {
            prompt,
            completions,
            labels,
        })
    }

    fn to_object(&self, f: &FieldNames) -> Obj {
        let mut o = Obj::new();
        put(&mut o, &f.prompt, &self.prompt);
        put(&mut o, &f.completions, &self.completions);
        put(&mut o, &f.labels, &self.labels);
        o
    }
}

impl Record for UnpairedRecord {
    const KIND: Kind = Kind::Unpaired;

    fn from_object(obj: &Obj, f: &FieldNames) -> Result<Self, FieldError> {
        let label = match required(obj, &f.label)? {
            Value::Bool(b) => *b,
            other => {
                return Err(err(
                    &f.label,
                    format!("expected a boolean, found {}", type_name(other)),
                ));
            }
        };
        let prompt = turns(required(obj, &f.prompt)?, &f.prompt)?;
        Ok(UnpairedRecord {
            completion: reply(required(obj, &f.completion)?, &f.completion, &prompt)?,
            prompt,
            label,
        })
    }

    fn to_object(&self, f: &FieldNames) -> Obj {
        let mut o = Obj::new();
        put(&mut o, &f.prompt, &self.prompt);
        put(&mut o, &f.completion, &self.completion);
        put(&mut o, &f.label, self.label);
        o
    }
}

/// Which record kind an object's fields spell (the first that fits, most specific first):
/// `chosen` + `rejected` → preference; `completions` + `rewards` → K-wise; `completions` +
/// `labels` → steps; `completion` + `label` → unpaired; `completion`, `messages` or `text` →
/// SFT; `prompt` alone → prompt.
pub fn kind_of(obj: &Obj, f: &FieldNames) -> Option<Kind> {
    let has = |k: &str| obj.contains_key(k);
    if has(&f.chosen) && has(&f.rejected) {
        Some(Kind::Preference)
    } else if has(&f.completions) && has(&f.rewards) {
        Some(Kind::Kwise)
    } else if has(&f.completions) && has(&f.labels) {
        Some(Kind::Steps)
    } else if has(&f.completion) && has(&f.label) {
        Some(Kind::Unpaired)
    } else if has(&f.completion) || has(&f.messages) || has(&f.text) {
        Some(Kind::Sft)
    } else if has(&f.prompt) {
        Some(Kind::Prompt)
    } else {
        None
    }
}
