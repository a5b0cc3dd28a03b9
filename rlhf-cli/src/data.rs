//! From a user's records to what the trainers read: text through the chat format, tokens
//! through the tokenizer, cut to the length limits, each response ending with EOS, split into
//! training and held-out data, with every count announced.

use std::path::Path;

use anyhow::{Context, Result};
use rlhf_data::{
    ChatFormat, KwiseRecord, PreferenceRecord, PromptRecord, ReadOptions, Record, SftRecord, Split,
    StepRecord, Tokenizer, Turns, UnpairedRecord, hash_split, read_records,
};
use rlhf_dpo::Group;
use rlhf_models::sft::Example;
use rlhf_reward::{ChatReading, LabelledExample, RankedExample};

use crate::args::DataArgs;

/// The salt of the train/eval split, so it never depends on a run's seed.
const SPLIT_SALT: &str = "rlhf/eval-split";

/// Reads every record of `path`, announcing how many were read, kept and rejected (and the first
/// errors, when bad records are skipped).
pub fn read<R: Record>(path: &Path, opts: &ReadOptions) -> Result<Vec<R>> {
    let loaded = read_records::<R>(path, opts)?;
    let r = &loaded.report;
    tracing::info!(
        "data {}: read {} records, kept {}, rejected {}",
        path.display(),
        r.read,
        r.kept,
        r.rejected
    );
    for e in &r.errors {
        tracing::warn!("skipped: {e}");
    }
    Ok(loaded.records)
}

/// The training and held-out records: `eval_data` when given, otherwise `eval_share` of the
/// prompts (a prompt is never on both sides).
pub fn read_split<R: Record>(
    args: &DataArgs,
    prompt: impl Fn(&R) -> String,
) -> Result<(Vec<R>, Vec<R>)> {
    let opts = args.read_options();
    let all = read::<R>(args.data()?, &opts)?;
    if let Some(eval) = &args.eval_data {
        return Ok((all, read::<R>(eval, &opts)?));
    }
    if args.eval_share <= 0.0 {
        return Ok((all, Vec::new()));
    }
    let (train, eval): (Vec<R>, Vec<R>) = all
        .into_iter()
        .partition(|r| hash_split(&prompt(r), SPLIT_SALT, args.eval_share, 0.0) == Split::Train);
    tracing::info!(
        "split by prompt: {} records to train on, {} held out",
        train.len(),
        eval.len()
    );
    Ok((train, eval))
}

/// A prompt as the key of the train/eval split.
pub fn prompt_key(t: &Turns) -> String {
    serde_json::to_string(t).unwrap_or_default()
}

/// Whether [`Encoder::pieces`] has said once that a prompt's tokens are not all in its whole
/// sequence.
static SEAM_WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Text to tokens, as TRL's trainers tokenise a record: each response after its prompt's text
/// ([`Encoder::pieces`]), ending with one EOS, or for a reward model's chat reply where its
/// template's rendering ends ([`Encoder::finish`]); a record whose
/// prompt and longest response fit in `max_length` is kept whole ([`Encoder::fit`]), a longer
/// one's prompt keeps its start (BOS) and its last tokens, `max_prompt` in all, and each response
/// its first tokens, as many as fit with the prompt in `max_length`.
#[derive(Clone, Copy)]
pub struct Encoder<'a> {
    /// The tokenizer.
    pub tokenizer: &'a Tokenizer,
    /// The chat format.
    pub format: &'a ChatFormat,
    /// Longest prompt.
    pub max_prompt: usize,
    /// Longest prompt and response together.
    pub max_length: usize,
    /// Where a chat reply ends: at its end of turn (a policy's, where sampling ends), or as its
    /// template renders it (a reward model's, as TRL's).
    pub chat_reading: ChatReading,
}

impl Encoder<'_> {
    /// The prompt's tokens: rendered, begun as the tokenizer begins a text (Llama's BOS,
    /// [`Tokenizer::encode_start`]), then cut to `max_prompt` keeping that start and the last
    /// tokens ([`Tokenizer::encode_prompt`]).
    pub fn prompt(&self, prompt: &Turns) -> Result<Vec<u32>> {
        Ok(self
            .tokenizer
            .encode_prompt(&self.format.prompt(prompt)?, self.max_prompt)?)
    }

    /// A record's prompt and responses, uncut and without EOS rules: each response is the tokens
    /// of the whole conversation after the prompt's ([`ChatFormat::whole`]), as TRL tokenises
    /// prompt and completion together (a Metaspace tokenizer marks a text's first word as
    /// following a space, so a response on its own would begin otherwise). The prompt ends where
    /// its own tokens and every whole sequence's agree (TRL's `common_prefix_length`): a token
    /// that spans the seam starts the responses, and so does what a template's generation prompt
    /// writes that the finished turn does not.
    pub fn pieces(
        &self,
        prompt: &Turns,
        responses: &[&Turns],
    ) -> Result<(Vec<u32>, Vec<Vec<u32>>)> {
        let head = self.format.prompt(prompt)?;
        let alone = self.tokenizer.encode_start(&head)?;
        let wholes = responses
            .iter()
            .map(|r| {
                Ok(self
                    .tokenizer
                    .encode_start(&self.format.whole(prompt, r)?)?)
            })
            .collect::<Result<Vec<_>>>()?;
        let agree = |whole: &Vec<u32>| alone.iter().zip(whole).take_while(|(a, b)| a == b).count();
        let common = wholes.iter().map(agree).min().unwrap_or(alone.len());
        if common < alone.len() && !SEAM_WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(
                "a prompt's last tokens {:?} are not in its whole sequence (a token spans the seam, \
                 or the template's generation prompt is not in a finished turn); the response \
                 starts where they differ, as TRL's does (shown once)",
                self.tokenizer.decode(&alone[common..]).unwrap_or_default()
            );
        }
        let rest = wholes.into_iter().map(|w| w[common..].to_vec()).collect();
        Ok((alone[..common].to_vec(), rest))
    }

    /// A record's prompt and responses uncut: [`Self::pieces`], each response ended by
    /// [`Self::finish`].
    pub fn finished(
        &self,
        prompt: &Turns,
        responses: &[&Turns],
    ) -> Result<(Vec<u32>, Vec<Vec<u32>>)> {
        let (p, rs) = self.pieces(prompt, responses)?;
        let rs = rs
            .into_iter()
            .zip(responses)
            .map(|(ids, r)| self.finish(ids, r))
            .collect::<Result<Vec<_>>>()?;
        Ok((p, rs))
    }

    /// A record's prompt and responses ([`Self::finished`]): whole when the prompt and the
    /// longest response fit in `max_length` together (TRL cuts only a longer sequence), else cut
    /// ([`Self::cut`]).
    pub fn fit(&self, prompt: &Turns, responses: &[&Turns]) -> Result<(Vec<u32>, Vec<Vec<u32>>)> {
        let (p, rs) = self.finished(prompt, responses)?;
        let longest = rs.iter().map(Vec::len).max().unwrap_or(0);
        if p.len() + longest <= self.max_length {
            return Ok((p, rs));
        }
        Ok(self.cut(p, rs))
    }

    /// The prompt cut to `max_prompt`, keeping its start tokens (BOS) and its last tokens, and
    /// each response to what `max_length` leaves after it, keeping its first tokens.
    pub fn cut(&self, prompt: Vec<u32>, responses: Vec<Vec<u32>>) -> (Vec<u32>, Vec<Vec<u32>>) {
        let prompt = self.tokenizer.cut_prompt(prompt, self.max_prompt);
        let room = self.max_length.saturating_sub(prompt.len());
        let responses = responses
            .into_iter()
            .map(|mut r| {
                r.truncate(room);
                r
            })
            .collect();
        (prompt, responses)
    }

    /// A response's tokens ([`Self::pieces`]) ending with one EOS. Plain text gets EOS appended
    /// unless it ends with it (as TRL appends it to non-conversational data). A chat reply ends
    /// at its template's last EOS when only whitespace follows it: what the template writes after
    /// it (ChatML's `\n` after `<|im_end|>`) is dropped, so that training ends where sampling
    /// stops. A template that ends its turns with another token (ChatML's pieces beside another
    /// EOS) gets EOS appended. Read as its template renders it ([`ChatReading::Rendered`], a
    /// reward model's), a chat reply is kept whole, as TRL's `RewardTrainer` tokenises it.
    pub fn finish(&self, mut ids: Vec<u32>, response: &Turns) -> Result<Vec<u32>> {
        if let (Turns::Messages(_), ChatReading::Rendered) = (response, self.chat_reading) {
            return Ok(ids);
        }
        let eos = self.tokenizer.eos_id();
        let end = match response {
            // the template's last EOS, when only whitespace follows it (an EOS inside the content
            // of a template that ends its turns otherwise is not the end)
            Turns::Messages(_) => match ids.iter().rposition(|&t| t == eos) {
                Some(i) if self.tokenizer.decode(&ids[i + 1..])?.trim().is_empty() => Some(i + 1),
                _ => None,
            },
            Turns::Text(_) => (ids.last() == Some(&eos)).then_some(ids.len()),
        };
        match end {
            Some(end) => ids.truncate(end),
            None => ids.push(eos),
        }
        Ok(ids)
    }
}

/// Counts what the conversion left out, to announce: how many of what (`records`, or `assistant
/// messages` when each is an example of its own), and why.
#[derive(Debug, Default)]
pub struct Dropped {
    pub count: usize,
    pub unit: &'static str,
    pub why: &'static str,
}

impl Dropped {
    /// Nothing left out yet; records are counted.
    pub fn records(why: &'static str) -> Self {
        Dropped {
            count: 0,
            unit: "records",
            why,
        }
    }

    /// Announces the count, when there is one.
    pub fn announce(&self, what: &str) {
        if self.count > 0 {
            // the units are plurals: one of them is the singular
            let unit = match self.count {
                1 => self.unit.strip_suffix('s').unwrap_or(self.unit),
                _ => self.unit,
            };
            tracing::warn!("{what}: left out {} {unit} ({})", self.count, self.why);
        }
    }
}

/// What an SFT example learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SftTarget {
    /// The completion (a conversation's last assistant message) [TRL: `completion_only_loss`].
    Completion,
    /// The whole sequence, prompt included (a conversation's every message).
    Everything,
    /// Every assistant message of a conversation (prompt and completion together), each after
    /// the messages before it [TRL: `assistant_only_loss` on `messages` records; on conversational
    /// prompt/completion records TRL also needs `completion_only_loss = false` to learn the
    /// prompt's assistant messages].
    AssistantTurns,
}

/// SFT examples: `target` says what is learned. With [`SftTarget::Everything`] the prompt
/// becomes part of the target, after its first token. With [`SftTarget::AssistantTurns`] each
/// assistant message of the conversation is an example of its own, after the messages before it
/// (so a long conversation's context is read once per assistant message, where TRL masks one
/// sequence; the targets are the same tokens, content and end of turn, an empty message's end of
/// turn too), and a record with plain text is refused (as TRL refuses non-conversational data).
pub fn sft_examples(
    records: &[SftRecord],
    enc: &Encoder,
    target: SftTarget,
) -> Result<(Vec<Example>, Dropped)> {
    let mut out = Vec::with_capacity(records.len());
    let mut dropped = Dropped::records("an empty completion after truncation");
    if target == SftTarget::AssistantTurns {
        dropped.unit = "assistant messages";
    }
    for (i, r) in records.iter().enumerate() {
        let turns = match (target, &r.prompt, &r.completion) {
            (SftTarget::AssistantTurns, Turns::Messages(p), Turns::Messages(c)) => {
                let all: Vec<_> = p.iter().chain(c).cloned().collect();
                (0..all.len())
                    .filter(|&j| all[j].role == "assistant")
                    .map(|j| {
                        (
                            Turns::Messages(all[..j].to_vec()),
                            Turns::Messages(vec![all[j].clone()]),
                        )
                    })
                    .collect()
            }
            (SftTarget::AssistantTurns, ..) => anyhow::bail!(
                "record {i}: plain text has no assistant messages; --assistant-only-loss needs \
                 conversations (`messages`, or conversational prompt and completion)"
            ),
            _ => vec![(r.prompt.clone(), r.completion.clone())],
        };
        for (prompt_turns, completion_turns) in &turns {
            let (prompt, mut completion) = enc.fit(prompt_turns, &[completion_turns])?;
            let completion = completion.remove(0);
            if completion.is_empty() {
                dropped.count += 1;
                continue;
            }
            out.push(if target != SftTarget::Everything || prompt.is_empty() {
                (prompt, completion)
            } else {
                // the first token has no predecessor to be predicted from: it stays the prompt
                let all: Vec<u32> = prompt.iter().chain(&completion).copied().collect();
                (all[..1].to_vec(), all[1..].to_vec())
            });
        }
    }
    Ok((out, dropped))
}

/// Each record's prompt, chosen and rejected tokens, made into an example by `make`; the pairs
/// whose responses are empty or equal after truncation are left out and counted.
fn fitted_pairs<T>(
    records: &[PreferenceRecord],
    enc: &Encoder,
    make: impl Fn(&PreferenceRecord, Vec<u32>, Vec<u32>, Vec<u32>) -> T,
) -> Result<(Vec<T>, Dropped)> {
    let mut out = Vec::with_capacity(records.len());
    let mut dropped = Dropped::records("chosen and rejected empty or equal after truncation");
    for r in records {
        let (prompt, mut pair) = enc.fit(&r.prompt, &[&r.chosen, &r.rejected])?;
        let (rejected, chosen) = (pair.remove(1), pair.remove(0));
        if chosen.is_empty() || rejected.is_empty() || chosen == rejected {
            dropped.count += 1;
            continue;
        }
        out.push(make(r, prompt, chosen, rejected));
    }
    Ok((out, dropped))
}

/// Preference pairs as `[chosen, rejected]` groups, with the dataset's ratings as the `-rw`
/// losses' rewards when it has them (UltraFeedback).
pub fn preference_groups(
    records: &[PreferenceRecord],
    enc: &Encoder,
) -> Result<(Vec<Group>, Dropped)> {
    fitted_pairs(records, enc, |r, prompt, chosen, rejected| Group {
        prompt,
        responses: vec![chosen, rejected],
        rewards: match (r.score_chosen, r.score_rejected) {
            (Some(c), Some(r)) => Some(vec![c as f32, r as f32]),
            _ => None,
        },
    })
}

/// Preference pairs as a Bradley–Terry reward model's examples, chosen first, each with its
/// margin: the record's `margin` (TRL's column) when the file has them, otherwise, with
/// `scores_as_margin`, `score_chosen − score_rejected` when the record has both.
pub fn preference_pairs(
    records: &[PreferenceRecord],
    enc: &Encoder,
    scores_as_margin: bool,
) -> Result<(Vec<RankedExample>, Dropped)> {
    fitted_pairs(records, enc, |r, prompt, chosen, rejected| {
        let from_scores = match (r.score_chosen, r.score_rejected) {
            (Some(c), Some(r)) if scores_as_margin => Some(c - r),
            _ => None,
        };
        RankedExample {
            prompt,
            responses: vec![chosen, rejected],
            margin: r.margin.or(from_scores).map(|m| m as f32),
            gold: None,
        }
    })
}

/// K-wise records as groups with their rewards, best first: a file's order of completions says
/// nothing, so a pair made of a K = 2 record (its chosen response first) follows the rewards.
/// A record whose completions all have the same reward orders nothing and is left out (as a
/// pair whose chosen and rejected responses are equal).
pub fn kwise_groups(records: &[KwiseRecord], enc: &Encoder) -> Result<(Vec<Group>, Dropped)> {
    let mut out = Vec::with_capacity(records.len());
    let mut dropped = Dropped::records("every completion has the same reward");
    for r in records {
        if r.rewards.windows(2).all(|w| w[0] == w[1]) {
            dropped.count += 1;
            continue;
        }
        let completions: Vec<&Turns> = r.completions.iter().collect();
        let (prompt, responses) = enc.fit(&r.prompt, &completions)?;
        let rewards = r.rewards.iter().map(|&x| x as f32).collect();
        let (responses, rewards) = best_first(responses, rewards);
        out.push(Group {
            prompt,
            responses,
            rewards: Some(rewards),
        });
    }
    Ok((out, dropped))
}

/// `responses` and their `rewards` in order of descending reward (ties keep their order).
fn best_first<T>(responses: Vec<T>, rewards: Vec<f32>) -> (Vec<T>, Vec<f32>) {
    let mut both: Vec<(T, f32)> = responses.into_iter().zip(rewards).collect();
    both.sort_by(|a, b| b.1.total_cmp(&a.1));
    both.into_iter().unzip()
}

/// K-wise groups as ranked examples, in the order they come, which is best first
/// ([`kwise_groups`]); with `margins`, a group of two takes the difference of its rewards as
/// its margin.
pub fn ranked(groups: &[Group], margins: bool) -> Vec<RankedExample> {
    groups
        .iter()
        .map(|g| {
            let rewards = g.rewards.as_deref().unwrap_or_default();
            RankedExample {
                prompt: g.prompt.clone(),
                responses: g.responses.clone(),
                margin: (margins && g.responses.len() == 2 && rewards.len() == 2)
                    .then(|| rewards[0] - rewards[1]),
                gold: None,
            }
        })
        .collect()
}

/// Step-labelled traces as a process RM's examples: each step ends with `delimiter`, its label
/// is read at the step's last token.
pub fn step_examples(
    records: &[StepRecord],
    enc: &Encoder,
    delimiter: &str,
) -> Result<Vec<LabelledExample>> {
    records
        .iter()
        .map(|r| {
            let prompt = Turns::Text(r.prompt.clone());
            let segments = r
                .completions
                .iter()
                .map(|s| Ok(enc.tokenizer.encode(&format!("{s}{delimiter}"))?))
                .collect::<Result<Vec<_>>>()?;
            Ok(LabelledExample {
                prompt: enc.prompt(&prompt)?,
                segments,
                labels: r.labels.clone(),
            })
        })
        .collect()
}

/// Responses labelled good or bad as an outcome RM's examples: one segment, the whole response.
pub fn outcome_examples(records: &[UnpairedRecord], enc: &Encoder) -> Result<Vec<LabelledExample>> {
    records
        .iter()
        .map(|r| {
            let (prompt, segments) = enc.fit(&r.prompt, &[&r.completion])?;
            Ok(LabelledExample {
                segments,
                prompt,
                labels: vec![r.label],
            })
        })
        .collect()
}

/// Demonstrations (prompt/completion, messages or text records) as `(prompt, completion)` tokens.
pub fn demonstrations(
    path: &Path,
    opts: &ReadOptions,
    enc: &Encoder,
) -> Result<Vec<(Vec<u32>, Vec<u32>)>> {
    read::<SftRecord>(path, opts)?
        .iter()
        .map(|r| {
            let (prompt, mut completion) = enc.fit(&r.prompt, &[&r.completion])?;
            Ok((prompt, completion.remove(0)))
        })
        .collect()
}

/// Prompts with their texts rendered, and each record's other fields (a verifier's reference).
pub struct Prompts {
    /// The rendered prompt texts.
    pub texts: Vec<String>,
    /// The records, in the same order.
    pub records: Vec<PromptRecord>,
}

/// Reads a prompt file: any layout with a prompt field (prompt, SFT or preference files), or a
/// preference file whose prompts are implicit (HH-RLHF), each distinct prompt once.
pub fn prompts(path: &Path, opts: &ReadOptions, format: &ChatFormat) -> Result<Prompts> {
    let records = if rlhf_data::detect_kind(path, opts)? == rlhf_data::Kind::Preference {
        let mut seen = std::collections::HashSet::new();
        read::<PreferenceRecord>(path, opts)?
            .into_iter()
            .filter(|r| seen.insert(prompt_key(&r.prompt)))
            .map(|r| PromptRecord {
                prompt: r.prompt,
                extra: Default::default(),
            })
            .collect()
    } else {
        read::<PromptRecord>(path, opts)
            .with_context(|| format!("reading prompts from {}", path.display()))?
    };
    let texts = records
        .iter()
        .map(|r| format.prompt(&r.prompt))
        .collect::<rlhf_core::Result<Vec<_>>>()?;
    Ok(Prompts { texts, records })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoder<'a>(
        tokenizer: &'a Tokenizer,
        format: &'a ChatFormat,
        max_prompt: usize,
        max_length: usize,
    ) -> Encoder<'a> {
        Encoder {
            tokenizer,
            format,
            max_prompt,
            max_length,
            chat_reading: ChatReading::TurnEnd,
        }
    }

    /// A committed checkpoint's tokenizer and chat format.
    fn checkpoint_tokenizer(name: &str) -> (Tokenizer, ChatFormat) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../rlhf-models/tests/fixtures/hf")
            .join(name);
        let tokenizer = Tokenizer::from_dir(&dir).unwrap();
        let format = tokenizer.config().chat_format().unwrap();
        (tokenizer, format)
    }

    fn turn(role: &str, content: &str) -> Turns {
        Turns::Messages(vec![rlhf_data::Message {
            role: role.into(),
            content: content.into(),
        }])
    }

    /// `response` after `prompt`, both cut as a record longer than `max_length` is
    /// ([`Encoder::cut`]).
    fn response(enc: &Encoder, prompt: &Turns, response: &Turns) -> Vec<u32> {
        let (p, r) = enc.finished(prompt, &[response]).unwrap();
        enc.cut(p, r).1.remove(0)
    }

    /// Prompt and response share `max_length`: a short prompt leaves the rest to the response,
    /// a long one is cut to `max_prompt` (keeping its end) and leaves the rest; a record that fits
    /// is not cut at all ([`Encoder::fit`]).
    #[test]
    fn a_short_prompt_leaves_the_rest_of_max_length_to_the_response() {
        let words: Vec<String> = (0..40).map(|i| format!("w{i}")).collect();
        let tokenizer = Tokenizer::train_bpe(words.iter(), 300).unwrap();
        let format = ChatFormat::default();
        let enc = encoder(&tokenizer, &format, 8, 20);
        let text = |n: usize| Turns::Text(words[..n].join(" "));
        let reply = |n: usize| Turns::Text(format!(" {}", words[..n].join(" ")));
        let long = reply(40);
        for prompt in [text(1), text(30)] {
            let p = enc.prompt(&prompt).unwrap();
            let r = response(&enc, &prompt, &long);
            assert!(p.len() <= 8, "{p:?}");
            assert_eq!(p.len() + r.len(), 20, "{p:?} {r:?}");
        }
        assert!(enc.prompt(&text(1)).unwrap().len() < 8);
        // a record that fits in `max_length` is kept whole, its prompt longer than `max_prompt`;
        // a longer one is cut as above, and a pair is cut by its longer response
        let (prompt, short) = (text(4), reply(1));
        let (p, rs) = enc.fit(&prompt, &[&short]).unwrap();
        assert_eq!(p, tokenizer.encode_start(&words[..4].join(" ")).unwrap());
        assert!(p.len() > 8 && p.len() + rs[0].len() <= 20, "{p:?} {rs:?}");
        assert_eq!(*rs[0].last().unwrap(), tokenizer.eos_id());
        let long = reply(15);
        let (p, rs) = enc.fit(&prompt, &[&short, &long]).unwrap();
        assert_eq!(p, enc.prompt(&prompt).unwrap());
        assert_eq!(rs[1].len(), 20 - p.len());
        assert_eq!(rs[0], response(&enc, &prompt, &short));
    }

    /// A completion's tokens are the whole sequence's after the prompt's, as TRL tokenises prompt
    /// and completion together: under a Metaspace tokenizer a completion with no leading space is
    /// not a new word, and a token that spans the seam starts the completion (TRL's
    /// `common_prefix_length`), of each response of a pair alike.
    #[test]
    fn a_completion_is_tokenised_as_in_the_whole_sequence() {
        let (tokenizer, format) = checkpoint_tokenizer("tiny-llama");
        let enc = encoder(&tokenizer, &format, 64, 128);
        let (prompt, completion) = (Turns::from("the answer is:"), Turns::from("yes"));
        let whole = tokenizer.encode_start("the answer is:yes").unwrap();
        let (p, c) = enc.fit(&prompt, &[&completion]).unwrap();
        let body = &c[0][..c[0].len() - 1];
        assert_eq!([p.as_slice(), body].concat(), whole);
        // on its own, "yes" begins a word
        assert_ne!(body, tokenizer.encode("yes").unwrap());
        // a seam inside a word: " answ" is a token of the prompt, " answer" of the whole
        let bpe = Tokenizer::train_bpe(["the answer is", "the answer was"].iter(), 300).unwrap();
        let plain = ChatFormat::default();
        let enc = encoder(&bpe, &plain, 64, 128);
        let (prompt, a, b) = (
            Turns::from("the answ"),
            Turns::from("er is"),
            Turns::from("er was"),
        );
        let alone = bpe.encode_start("the answ").unwrap();
        let (p, rs) = enc.fit(&prompt, &[&a, &b]).unwrap();
        assert!(
            p.len() < alone.len() && alone.starts_with(&p),
            "{p:?} {alone:?}"
        );
        for (r, text) in rs.iter().zip(["the answer is", "the answer was"]) {
            let whole = bpe.encode_start(text).unwrap();
            assert_eq!([p.as_slice(), &r[..r.len() - 1]].concat(), whole);
        }
    }

    /// A template whose generation prompt opens a thought block that the finished turn does not
    /// have (DeepSeek-R1's): the prompt ends where the two renderings agree, and the reply is the
    /// rest of the whole conversation, as TRL 1.16 splits it.
    #[test]
    fn a_generation_prompt_the_finished_turn_lacks_is_left_out() {
        let (tokenizer, _) = checkpoint_tokenizer("tiny-qwen2-chat");
        let source = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n\
                      {% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n\
                      {% endif %}";
        let format = ChatFormat::Jinja(
            rlhf_data::JinjaTemplate::new(source, "", &tokenizer.eos_text()).unwrap(),
        );
        let enc = encoder(&tokenizer, &format, 64, 256);
        let (p, rs) = enc
            .fit(&turn("user", "hi"), &[&turn("assistant", "it sat.")])
            .unwrap();
        assert!(
            format
                .response(&turn("user", "hi"), &turn("assistant", "it sat."))
                .is_err()
        );
        assert!(
            tokenizer
                .decode(&p)
                .unwrap()
                .ends_with("<|im_start|>assistant\n"),
            "{:?}",
            tokenizer.decode(&p)
        );
        assert_eq!(tokenizer.decode(&rs[0]).unwrap(), "it sat.<|im_end|>");
    }

    /// Preference records tokenised as TRL's `DPOTrainer` tokenises them (its own dataset
    /// preparation, recorded by `make_cli_fixtures.py` in `tiny-llama3-chat/tokenization.json`):
    /// plain text with and without a leading space, a completion that joins the prompt's last
    /// word, and a conversation.
    #[test]
    fn preference_records_get_trls_token_ids() {
        let (tokenizer, format) = checkpoint_tokenizer("tiny-llama3-chat");
        let enc = encoder(&tokenizer, &format, 512, 1024);
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../rlhf-models/tests/fixtures/hf/tiny-llama3-chat/tokenization.json");
        let fixture: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir).unwrap()).unwrap();
        let turns = |v: &serde_json::Value| -> Turns { serde_json::from_value(v.clone()).unwrap() };
        let ids =
            |v: &serde_json::Value| -> Vec<u32> { serde_json::from_value(v.clone()).unwrap() };
        let cases = fixture["dpo"].as_array().unwrap();
        assert_eq!(cases.len(), 6);
        for case in cases {
            let r = &case["record"];
            let (prompt, chosen, rejected) = (
                turns(&r["prompt"]),
                turns(&r["chosen"]),
                turns(&r["rejected"]),
            );
            let (p, rs) = enc.fit(&prompt, &[&chosen, &rejected]).unwrap();
            assert_eq!(p, ids(&case["prompt_ids"]), "{r}");
            assert_eq!(rs[0], ids(&case["chosen_ids"]), "{r}");
            assert_eq!(rs[1], ids(&case["rejected_ids"]), "{r}");
        }
    }

    /// Under a template that ends its turns with another token (ChatML's pieces, `<|im_end|>`,
    /// beside the EOS `<|endoftext|>`), an EOS inside a reply's content is not its end: the rest
    /// of the reply is kept and EOS appended after the turn's end.
    #[test]
    fn an_eos_inside_a_reply_is_not_its_end() {
        let tokenizer = Tokenizer::train_bpe(["hello world", "more text"].iter(), 300).unwrap();
        let format = ChatFormat::default();
        let enc = encoder(&tokenizer, &format, 64, 256);
        let ids = response(
            &enc,
            &turn("user", "hi"),
            &turn("assistant", "hello<|endoftext|> world"),
        );
        assert_eq!(
            tokenizer.decode(&ids).unwrap(),
            "hello<|endoftext|> world<|im_end|>\n<|endoftext|>"
        );
    }

    /// A chat reply ends at its template's EOS, once: Qwen2's template writes `<|im_end|>\n`
    /// after the reply, and `<|im_end|>` is the EOS, so nothing is appended and the `\n` is
    /// dropped; plain text gets EOS appended once, and text that ends with it keeps it as it is.
    #[test]
    fn a_response_ends_with_one_eos() {
        let (tokenizer, format) = checkpoint_tokenizer("tiny-qwen2-chat");
        let enc = encoder(&tokenizer, &format, 64, 128);
        let eos = tokenizer.eos_id();
        assert_eq!(tokenizer.eos_text(), "<|im_end|>");
        let ids = response(&enc, &turn("user", "hi"), &turn("assistant", "hello there"));
        assert_eq!(ids.iter().filter(|&&t| t == eos).count(), 1, "{ids:?}");
        assert_eq!(ids.last(), Some(&eos));
        assert_eq!(tokenizer.decode(&ids).unwrap(), "hello there<|im_end|>");
        let text = |t: &str| response(&enc, &Turns::Text("q".into()), &Turns::Text(t.into()));
        let plain = text(" hello there");
        assert_eq!(
            (plain.last(), plain.iter().filter(|&&t| t == eos).count()),
            (Some(&eos), 1)
        );
        assert_eq!(text(" hello there<|im_end|>"), plain);
    }

    /// A reward model's chat reply is read as its template renders it, as TRL's `RewardTrainer`
    /// tokenises it: ChatML's `\n` after `<|im_end|>` stays, where a policy's reply ends at the
    /// `<|im_end|>` it samples; Llama 3's template writes nothing after `<|eot_id|>`, so both end
    /// there; plain text ends with EOS either way.
    #[test]
    fn a_reward_models_chat_reply_keeps_what_its_template_writes_after_the_turn() {
        for (fixture, rendered) in [
            ("tiny-qwen2-chat", "hello there<|im_end|>\n"),
            ("tiny-llama3-chat", "hello there<|eot_id|>"),
        ] {
            let (tokenizer, format) = checkpoint_tokenizer(fixture);
            let policy = encoder(&tokenizer, &format, 64, 128);
            let rm = Encoder {
                chat_reading: ChatReading::Rendered,
                ..policy
            };
            let chat = |enc: &Encoder| {
                let ids = response(enc, &turn("user", "hi"), &turn("assistant", "hello there"));
                tokenizer.decode(&ids).unwrap()
            };
            let eos = tokenizer.eos_text();
            assert_eq!(chat(&policy), format!("hello there{eos}"), "{fixture}");
            assert_eq!(chat(&rm), rendered, "{fixture}");
            let text = |enc: &Encoder| response(enc, &Turns::Text("q".into()), &" hi".into());
            assert_eq!(text(&rm), text(&policy), "{fixture}");
        }
    }

    /// Llama 3's tokenizer puts BOS before a text and its template writes BOS itself: a
    /// plain-text prompt gets one, as `transformers`' tokenizer gives it (and TRL trains on it),
    /// a conversation keeps the template's one, a response gets none, and a reply ends with its
    /// `<|eot_id|>` once.
    #[test]
    fn a_prompt_begins_with_one_bos_and_a_response_with_none() {
        let (tokenizer, format) = checkpoint_tokenizer("tiny-llama3-chat");
        let enc = encoder(&tokenizer, &format, 64, 128);
        let bos = tokenizer.start()[0];
        let count = |ids: &[u32], t: u32| ids.iter().filter(|&&i| i == t).count();
        let text = Turns::Text("POST: my cat sat on the mat\nTL;DR:".into());
        let p = enc.prompt(&text).unwrap();
        assert_eq!((p[0], count(&p, bos)), (bos, 1), "{p:?}");
        let r = response(&enc, &text, &Turns::Text(" the cat sat".into()));
        assert_eq!(count(&r, bos), 0, "{r:?}");
        let chat = turn("user", "What did the cat do?");
        let p = enc.prompt(&chat).unwrap();
        assert_eq!((p[0], count(&p, bos)), (bos, 1), "{p:?}");
        let r = response(&enc, &chat, &turn("assistant", "It sat."));
        assert_eq!(count(&r, bos), 0, "{r:?}");
        assert_eq!(tokenizer.decode(&r).unwrap(), "It sat.<|eot_id|>");
        // a long prompt cut to `max_prompt` keeps its BOS
        let short = encoder(&tokenizer, &format, 4, 128);
        let p = short.prompt(&text).unwrap();
        assert_eq!((p.len(), p[0]), (4, bos));
    }

    /// A conversation that opens with a greeting, then two rounds: by default its last reply is
    /// learned; with every assistant turn, the greeting (after the generation prompt alone), the
    /// first reply (after the messages before it), an empty reply's end of turn, and a
    /// completion's user message not; with everything, one example whose target is the whole
    /// conversation after its first token. Plain text has no turns.
    #[test]
    fn every_assistant_turn_is_learned_after_the_messages_before_it() {
        let (tokenizer, format) = checkpoint_tokenizer("tiny-qwen2-chat");
        let enc = encoder(&tokenizer, &format, 128, 256);
        let m = |role: &str, content: &str| rlhf_data::Message {
            role: role.into(),
            content: content.into(),
        };
        let record = SftRecord {
            prompt: Turns::Messages(vec![
                m("assistant", "hello"),
                m("user", "what did the cat do?"),
                m("assistant", "it sat."),
                m("user", "where?"),
            ]),
            completion: Turns::Messages(vec![m("assistant", "on the mat.")]),
        };
        let mut longer = record.clone();
        longer.completion = Turns::Messages(vec![
            m("assistant", "on the mat."),
            m("user", "thanks"),
            m("assistant", ""),
        ]);
        let decode = |ids: &[u32]| tokenizer.decode(ids).unwrap();
        let examples = |target| sft_examples(std::slice::from_ref(&record), &enc, target);
        let (last, _) = examples(SftTarget::Completion).unwrap();
        assert_eq!(last.len(), 1);
        assert_eq!(decode(&last[0].1), "on the mat.<|im_end|>");
        let (turns, _) = examples(SftTarget::AssistantTurns).unwrap();
        let texts: Vec<(String, String)> =
            turns.iter().map(|(p, c)| (decode(p), decode(c))).collect();
        assert_eq!(texts.len(), 3, "{texts:?}");
        assert_eq!(
            texts[0],
            ("<|im_start|>assistant\n".into(), "hello<|im_end|>".into())
        );
        assert!(
            texts[1]
                .0
                .ends_with("what did the cat do?<|im_end|>\n<|im_start|>assistant\n")
                && texts[1].1 == "it sat.<|im_end|>",
            "{texts:?}"
        );
        assert_eq!(turns[2], last[0]);
        let (more, _) = sft_examples(
            std::slice::from_ref(&longer),
            &enc,
            SftTarget::AssistantTurns,
        )
        .unwrap();
        let targets: Vec<String> = more.iter().map(|(_, c)| decode(c)).collect();
        assert_eq!(
            targets,
            [
                "hello<|im_end|>",
                "it sat.<|im_end|>",
                "on the mat.<|im_end|>",
                "<|im_end|>"
            ]
        );
        let (all, _) = examples(SftTarget::Everything).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].0.len(), 1);
        assert!(decode(&all[0].1).contains("it sat.<|im_end|>"));
        let text = SftRecord {
            prompt: Turns::Text("q".into()),
            completion: Turns::Text(" a".into()),
        };
        let e = sft_examples(&[record.clone(), text], &enc, SftTarget::AssistantTurns)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("record 1") && e.contains("--assistant-only-loss"),
            "{e}"
        );
    }

    #[test]
    fn a_pairs_margin_is_its_margin_field_else_with_the_flag_its_score_difference() {
        let texts = ["worse answer", "better answer"];
        let tokenizer = Tokenizer::train_bpe(texts.iter().copied(), 300).unwrap();
        let format = ChatFormat::default();
        let enc = encoder(&tokenizer, &format, 64, 128);
        let pair = |scores: Option<(f64, f64)>, margin: Option<f64>| PreferenceRecord {
            prompt: Turns::Text("question".into()),
            chosen: Turns::Text(texts[1].into()),
            rejected: Turns::Text(texts[0].into()),
            score_chosen: scores.map(|s| s.0),
            score_rejected: scores.map(|s| s.1),
            margin,
        };
        let records = [
            pair(Some((0.9, 0.1)), None),
            pair(Some((0.9, 0.1)), Some(2.0)),
            pair(None, None),
        ];
        let margins = |flag: bool| -> Vec<Option<f32>> {
            let (pairs, dropped) = preference_pairs(&records, &enc, flag).unwrap();
            assert_eq!(dropped.count, 0);
            pairs.iter().map(|p| p.margin).collect()
        };
        let near = |m: Option<f32>, x: f32| m.is_some_and(|m| (m - x).abs() < 1e-6);
        let with = margins(true);
        assert!(
            near(with[0], 0.8) && near(with[1], 2.0) && with[2].is_none(),
            "{with:?}"
        );
        let without = margins(false);
        assert!(without[0].is_none() && near(without[1], 2.0) && without[2].is_none());
        let (pairs, _) = preference_pairs(&records[..1], &enc, false).unwrap();
        let (groups, _) = preference_groups(&records[..1], &enc).unwrap();
        assert_eq!(pairs[0].responses, groups[0].responses);
        assert_eq!(pairs[0].prompt, groups[0].prompt);
    }

    #[test]
    fn a_kwise_record_is_ordered_best_first_even_with_two_completions_and_a_tie_left_out() {
        let texts = ["worse answer", "better answer"];
        let tokenizer = Tokenizer::train_bpe(texts.iter().copied(), 300).unwrap();
        let format = ChatFormat::default();
        let enc = encoder(&tokenizer, &format, 64, 128);
        let record = KwiseRecord {
            prompt: Turns::Text("question".into()),
            completions: texts.iter().map(|t| Turns::Text(t.to_string())).collect(),
            rewards: vec![0.1, 0.9],
        };
        let group = &kwise_groups(std::slice::from_ref(&record), &enc).unwrap().0[0];
        let better = response(&enc, &record.prompt, &record.completions[1]);
        assert_eq!(group.responses[0], better);
        assert_eq!(group.rewards, Some(vec![0.9, 0.1]));
        // a tie orders nothing: left out and counted
        let tie = KwiseRecord {
            rewards: vec![0.5, 0.5],
            ..record.clone()
        };
        let (groups, dropped) = kwise_groups(&[tie, record.clone()], &enc).unwrap();
        assert_eq!((groups.len(), dropped.count), (1, 1));
        assert_eq!(
            best_first(vec!["a", "b"], vec![0.1, 0.9]),
            (vec!["b", "a"], vec![0.9, 0.1])
        );
        assert_eq!(
            best_first(vec!["a", "b", "c", "d"], vec![0.5, 2.0, 0.5, -1.0]),
            (vec!["b", "a", "c", "d"], vec![2.0, 0.5, 0.5, -1.0])
        );
        let pairs = ranked(
            &[Group {
                prompt: vec![1],
                responses: vec![vec![2], vec![3]],
                rewards: Some(vec![0.9, 0.1]),
            }],
            true,
        );
        assert_eq!(pairs[0].responses, vec![vec![2], vec![3]]);
        let margin = pairs[0].margin.unwrap();
        assert!((margin - 0.8).abs() < 1e-6, "{margin}");
    }
}
