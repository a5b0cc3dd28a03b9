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

    /// The scores with, for a scorer that combines several (TRL's several reward functions),
    /// each part's own scores by name: a trainer logs their means and spreads. A scorer of one
    /// part has none.
    fn score_parts(&self, prompts: &[&str], responses: &[&str]) -> Result<Scored> {
        Ok(Scored {
            scores: self.score(prompts, responses)?,
            parts: Vec::new(),
            weights: None,
        })
    }
}

/// What [`Scorer::score_parts`] returns: one score per response, and each named part of them
/// (unweighted), one value per response.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Scored {
    /// The scores.
    pub scores: Vec<f32>,
    /// `(name, one value per response)` of each part the scores combine.
    pub parts: Vec<(String, Vec<f32>)>,
    /// The parts' weights (one per part) when the scores are their weighted sum,
    /// `scores[i] = Σ_k weights[k]·parts[k].1[i]` (TRL's several reward functions and their
    /// `reward_weights`); `None` for a scorer of one part or another combination. GDPO's
    /// normalisation reads them.
    pub weights: Option<Vec<f32>>,
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

/// `scorer`'s scores of the pairs, with the check every caller makes: one score per response.
pub fn score_each(scorer: &dyn Scorer, prompts: &[&str], responses: &[&str]) -> Result<Vec<f32>> {
    let scores = scorer.score(prompts, responses)?;
    if scores.len() != responses.len() {
        return Err(crate::Error::Shape(format!(
            "the scorer {} gave {} scores for {} responses",
            scorer.name(),
            scores.len(),
            responses.len()
        )));
    }
    Ok(scores)
}

/// [`score_each`] with the parts ([`Scorer::score_parts`]), each checked the same way.
pub fn score_parts_each(
    scorer: &dyn Scorer,
    prompts: &[&str],
    responses: &[&str],
) -> Result<Scored> {
    let scored = scorer.score_parts(prompts, responses)?;
    let short = std::iter::once(("", &scored.scores))
        .chain(scored.parts.iter().map(|(n, v)| (n.as_str(), v)))
        .find(|(_, v)| v.len() != responses.len());
    if let Some(w) = scored
        .weights
        .as_ref()
        .filter(|w| w.len() != scored.parts.len())
    {
        return Err(crate::Error::Shape(format!(
            "the scorer {} gave {} weights for {} parts",
            scorer.name(),
            w.len(),
            scored.parts.len()
        )));
    }
    if let Some((part, values)) = short {
        return Err(crate::Error::Shape(format!(
            "the scorer {}{} gave {} scores for {} responses",
            scorer.name(),
            if part.is_empty() {
                String::new()
            } else {
                format!(" (part {part})")
            },
            values.len(),
            responses.len()
        )));
    }
    Ok(scored)
}

impl<S: Scorer + ?Sized> Scorer for Box<S> {
    fn score(&self, prompts: &[&str], responses: &[&str]) -> Result<Vec<f32>> {
        (**self).score(prompts, responses)
    }
    fn name(&self) -> String {
        (**self).name()
    }
    fn score_parts(&self, prompts: &[&str], responses: &[&str]) -> Result<Scored> {
        (**self).score_parts(prompts, responses)
    }
}

/// DPO pairs from scores of `k` responses per prompt (prompt-major: responses `i·k .. (i+1)·k`
/// answer prompt `i`): per prompt, `Some((best, worst))`, the indices within the group of the
/// highest and the lowest score (the first of equal ones, as `torch.argmax` picks), or `None` when
/// every score of the group is the same and there is no preference to learn. LongReward samples
/// `k` responses per prompt and takes the judge's best as chosen and its worst as rejected; online
/// DPO does the same with its scorer's scores.
///
/// Errors when `k < 2`, when the number of scores is not a multiple of `k`, or on a non-finite
/// score.
pub fn best_and_worst(scores: &[f32], k: usize) -> Result<Vec<Option<(usize, usize)>>> {
    if k < 2 || !scores.len().is_multiple_of(k) {
        return Err(crate::Error::Shape(format!(
            "best and worst of {} scores in groups of {k}: groups need at least two responses \
             and the scores must fill them",
            scores.len()
        )));
    }
    if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
        return Err(crate::Error::Config(format!(
            "best and worst: score {i} is {}",
            scores[i]
        )));
    }
    Ok(scores
        .chunks(k)
        .map(|group| {
            let (mut best, mut worst) = (0, 0);
            for (j, &s) in group.iter().enumerate() {
                if s > group[best] {
                    best = j;
                }
                if s < group[worst] {
                    worst = j;
                }
            }
            (group[best] > group[worst]).then_some((best, worst))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_and_worst_per_group() {
        let pairs = best_and_worst(&[0.1, 0.9, 0.5, 2.0, 2.0, 2.0, -1.0, 3.0, -1.0], 3).unwrap();
        assert_eq!(pairs, vec![Some((1, 0)), None, Some((1, 0))]);
        assert!(best_and_worst(&[1.0, 2.0, 3.0], 2).is_err());
        assert!(best_and_worst(&[1.0, 2.0], 1).is_err());
        assert!(best_and_worst(&[1.0, f32::NAN], 2).is_err());
        assert_eq!(best_and_worst(&[], 2).unwrap(), vec![]);
    }

    /// A scorer that drops a response is caught where its scores are used.
    #[test]
    fn a_missing_score_is_an_error() {
        struct AllButOne;
        impl Scorer for AllButOne {
            fn score(&self, _: &[&str], responses: &[&str]) -> Result<Vec<f32>> {
                Ok(vec![0.0; responses.len().saturating_sub(1)])
            }
            fn name(&self) -> String {
                "all-but-one".into()
            }
        }
        let e = score_each(&AllButOne, &["p", "p"], &["a", "b"]).unwrap_err();
        assert!(
            e.to_string().contains("gave 1 scores for 2 responses"),
            "{e}"
        );
        assert_eq!(score_each(&AllButOne, &[], &[]).unwrap(), vec![]);
    }
}
