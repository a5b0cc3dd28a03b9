//! The `Scorer` trait: anything that scores prompt + response text.

use crate::Result;

/// Scores responses to prompts, in batches: a reward model, a gold oracle, a rule.
///
/// PPO and the other on-policy trainers accept any `Scorer`; the scores are the sequence-level
/// rewards `s` of `docs/algorithms.md` ("Notation"), higher is better.
///
/// ```
/// use rlhf_base::{Result, Scorer};
///
/// /// Rewards brevity: the rule-based control of "A Long Way to Go", inverted.
/// struct Short;
/// impl Scorer for Short {
///     fn score(&self, _prompts: &[&str], responses: &[&str]) -> Result<Vec<f32>> {
///         Ok(responses.iter().map(|r| -(r.chars().count() as f32)).collect())
///     }
/// }
/// let s = Short.score(&["p", "p"], &["ab", "abcd"]).unwrap();
/// assert!(s[0] > s[1]);
/// ```
pub trait Scorer {
    /// One score per `(prompts[i], responses[i])` pair. `prompts` and `responses` have the same
    /// length; implementations return an error, not a panic, when they do not.
    fn score(&self, prompts: &[&str], responses: &[&str]) -> Result<Vec<f32>>;

    /// A short name for metrics and reports.
    fn name(&self) -> String {
        std::any::type_name::<Self>()
            .rsplit("::")
            .next()
            .unwrap_or("scorer")
            .to_string()
    }
}

/// The check every `Scorer` makes first: one response per prompt.
pub fn check_pairs(prompts: &[&str], responses: &[&str]) -> Result<()> {
    if prompts.len() == responses.len() {
        Ok(())
    } else {
        Err(crate::Error::Shape(format!(
            "{} prompts, {} responses",
            prompts.len(),
            responses.len()
        )))
    }
}

impl<S: Scorer + ?Sized> Scorer for Box<S> {
    fn score(&self, prompts: &[&str], responses: &[&str]) -> Result<Vec<f32>> {
        (**self).score(prompts, responses)
    }
    fn name(&self) -> String {
        (**self).name()
    }
}
