//! Rule rewards that need no model: a verifier that checks a response against a reference
//! answer, and one that checks it against a pattern (the "verifiable rewards" of GRPO-style
//! training). Both score 1 for a pass and 0 for a fail, and read the response without the EOS
//! token's text and surrounding whitespace.

use std::collections::HashMap;

use rlhf_core::{Error, Result, Scorer, check_pairs};

/// The response as a verifier reads it: without a trailing EOS text, trimmed.
fn answer_text<'a>(response: &'a str, eos_text: &str) -> &'a str {
    let r = response.trim_end();
    r.strip_suffix(eos_text).unwrap_or(r).trim()
}

/// 1 when the response equals the prompt's reference answer (both trimmed), 0 otherwise; a
/// prompt without a reference is an error naming it.
#[derive(Debug, Clone)]
pub struct ExactMatchScorer {
    answers: HashMap<String, String>,
    eos_text: String,
}

impl ExactMatchScorer {
    /// A verifier for prompts (as the trainer passes them, i.e. rendered) and their reference
    /// answers.
    pub fn new(
        answers: impl IntoIterator<Item = (String, String)>,
        eos_text: impl Into<String>,
    ) -> Self {
        ExactMatchScorer {
            answers: answers
                .into_iter()
                .map(|(p, a)| (p, a.trim().to_string()))
                .collect(),
            eos_text: eos_text.into(),
        }
    }
}

impl Scorer for ExactMatchScorer {
    fn score(&self, prompts: &[&str], responses: &[&str]) -> Result<Vec<f32>> {
        check_pairs(prompts, responses)?;
        prompts
            .iter()
            .zip(responses)
            .map(|(p, r)| match self.answers.get(*p) {
                Some(a) => Ok(f32::from(u8::from(answer_text(r, &self.eos_text) == a))),
                None => Err(Error::Config(format!(
                    "exact-match: no reference answer for the prompt {p:?}"
                ))),
            })
            .collect()
    }

    fn name(&self) -> String {
        "exact-match".into()
    }
}

/// 1 when the response matches a regular expression (anywhere, unless anchored), 0 otherwise.
#[derive(Debug, Clone)]
pub struct RegexScorer {
    pattern: regex::Regex,
    eos_text: String,
}

impl RegexScorer {
    /// A verifier for `pattern` (Rust `regex` syntax); a pattern that does not compile is an
    /// error.
    pub fn new(pattern: &str, eos_text: impl Into<String>) -> Result<Self> {
        Ok(RegexScorer {
            pattern: regex::Regex::new(pattern)
                .map_err(|e| Error::Config(format!("regex reward: {e}")))?,
            eos_text: eos_text.into(),
        })
    }
}

impl Scorer for RegexScorer {
    fn score(&self, prompts: &[&str], responses: &[&str]) -> Result<Vec<f32>> {
        check_pairs(prompts, responses)?;
        Ok(responses
            .iter()
            .map(|r| {
                f32::from(u8::from(
                    self.pattern.is_match(answer_text(r, &self.eos_text)),
                ))
            })
            .collect())
    }

    fn name(&self) -> String {
        format!("regex:{}", self.pattern.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_match_reads_the_answer_without_eos_and_whitespace() {
        let v = ExactMatchScorer::new([("2+2=".to_string(), " 4 ".to_string())], "<|endoftext|>");
        let s = v
            .score(
                &["2+2=", "2+2=", "2+2="],
                &[" 4<|endoftext|>", "4 ", "5<|endoftext|>"],
            )
            .unwrap();
        assert_eq!(s, vec![1.0, 1.0, 0.0]);
        assert!(
            v.score(&["3+3="], &["6"])
                .unwrap_err()
                .to_string()
                .contains("3+3=")
        );
    }

    #[test]
    fn regex_matches_anywhere_unless_anchored() {
        let v = RegexScorer::new(r"^ANSWER \d+$", "</s>").unwrap();
        let s = v
            .score(
                &["p", "p", "p"],
                &["ANSWER 12</s>", "so ANSWER 12", "ANSWER x"],
            )
            .unwrap();
        assert_eq!(s, vec![1.0, 0.0, 0.0]);
        assert!(RegexScorer::new("(", "").is_err());
    }
}
