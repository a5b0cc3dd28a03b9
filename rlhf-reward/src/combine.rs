//! Scorers built from other scorers or from nothing but the response: reward-model ensembles
//! ([`EnsembleScorer`], ChatGLM-RLHF and the over-optimisation literature) and the length-only
//! control ([`LengthScorer`], "A Long Way to Go").

use rlhf_core::{Error, Result, Scorer};
use serde::{Deserialize, Serialize};

/// How an ensemble combines its members' scores of one response.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Combine {
    /// The sum (TRL's combination of several reward functions, at its default weights of 1).
    Sum,
    /// The mean.
    Mean,
    /// The minimum (the most pessimistic member).
    Min,
    /// `mean − λ·std` (population std over members): a conservative estimate that penalises
    /// responses the members disagree on.
    MeanMinusStd {
        /// λ.
        lambda: f32,
    },
}

impl Combine {
    /// The combination of one response's member scores (`scores` non-empty).
    pub fn apply(&self, scores: &[f32]) -> f32 {
        let n = scores.len() as f32;
        let mean = scores.iter().sum::<f32>() / n;
        match self {
            Combine::Sum => scores.iter().sum(),
            Combine::Mean => mean,
            Combine::Min => scores.iter().copied().fold(f32::INFINITY, f32::min),
            Combine::MeanMinusStd { lambda } => {
                let var = scores.iter().map(|s| (s - mean).powi(2)).sum::<f32>() / n;
                mean - lambda * var.sqrt()
            }
        }
    }
}

/// Several scorers (typically reward models trained from different seeds) served as one.
pub struct EnsembleScorer {
    members: Vec<Box<dyn Scorer>>,
    combine: Combine,
}

impl EnsembleScorer {
    /// An ensemble of `members` (at least one) combined by `combine`.
    pub fn new(members: Vec<Box<dyn Scorer>>, combine: Combine) -> Result<Self> {
        if members.is_empty() {
            return Err(Error::Config(
                "an ensemble needs at least one member".into(),
            ));
        }
        Ok(EnsembleScorer { members, combine })
    }

    /// Every member's scores, `[member][response]`.
    pub fn member_scores(&self, prompts: &[&str], responses: &[&str]) -> Result<Vec<Vec<f32>>> {
        self.members
            .iter()
            .map(|m| rlhf_core::score_each(m.as_ref(), prompts, responses))
            .collect()
    }
}

impl Scorer for EnsembleScorer {
    fn score(&self, prompts: &[&str], responses: &[&str]) -> Result<Vec<f32>> {
        let all = self.member_scores(prompts, responses)?;
        Ok((0..responses.len())
            .map(|i| {
                let one: Vec<f32> = all.iter().map(|m| m[i]).collect();
                self.combine.apply(&one)
            })
            .collect())
    }

    fn name(&self) -> String {
        format!("ensemble-{}x{:?}", self.members.len(), self.combine)
    }
}

/// Scores a response by its length alone: `scale × words` (whitespace-separated, after removing
/// the EOS text), plus `eos_bonus` when the response ends with the EOS text. The control of "A
/// Long Way to Go" (Singhal et al. 2023): how much of RLHF's gain does length alone explain?
#[derive(Debug, Clone, PartialEq)]
pub struct LengthScorer {
    /// Score per word.
    pub scale: f32,
    /// The EOS token's text (stripped before counting).
    pub eos_text: String,
    /// Added when the response ends with EOS (0: length only).
    pub eos_bonus: f32,
}

impl LengthScorer {
    /// `scale` per word, nothing for EOS.
    pub fn new(scale: f32, eos_text: impl Into<String>) -> Self {
        LengthScorer {
            scale,
            eos_text: eos_text.into(),
            eos_bonus: 0.0,
        }
    }
}

impl Scorer for LengthScorer {
    fn score(&self, prompts: &[&str], responses: &[&str]) -> Result<Vec<f32>> {
        rlhf_core::check_pairs(prompts, responses)?;
        Ok(responses
            .iter()
            .map(|r| {
                let (body, eos) = match r.strip_suffix(self.eos_text.as_str()) {
                    Some(b) if !self.eos_text.is_empty() => (b, true),
                    _ => (*r, false),
                };
                self.scale * body.split_whitespace().count() as f32
                    + if eos { self.eos_bonus } else { 0.0 }
            })
            .collect())
    }

    fn name(&self) -> String {
        "length".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    struct Fixed(Vec<f32>);
    impl Scorer for Fixed {
        fn score(&self, _p: &[&str], r: &[&str]) -> Result<Vec<f32>> {
            Ok(self.0.iter().copied().take(r.len()).collect())
        }
    }

    proptest! {
        /// Reference: sum, mean, min and mean − λ·std written out in f64.
        #[test]
        fn ensembles_combine_like_the_reference(
            members in prop::collection::vec(prop::collection::vec(-5.0f32..5.0, 4), 1..5),
            lambda in 0.0f32..2.0,
        ) {
            let prompts = ["p"; 4];
            let responses = ["a", "b", "c", "d"];
            for combine in [Combine::Sum, Combine::Mean, Combine::Min, Combine::MeanMinusStd { lambda }] {
                let e = EnsembleScorer::new(
                    members.iter().map(|m| Box::new(Fixed(m.clone())) as Box<dyn Scorer>).collect(),
                    combine,
                ).unwrap();
                let got = e.score(&prompts, &responses).unwrap();
                for i in 0..4 {
                    let xs: Vec<f64> = members.iter().map(|m| f64::from(m[i])).collect();
                    let n = xs.len() as f64;
                    let mean = xs.iter().sum::<f64>() / n;
                    let min = xs.iter().copied().fold(f64::INFINITY, f64::min);
                    let std = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
                    let expected = match combine {
                        Combine::Sum => xs.iter().sum::<f64>(),
                        Combine::Mean => mean,
                        Combine::Min => min,
                        Combine::MeanMinusStd { lambda } => mean - f64::from(lambda) * std,
                    };
                    prop_assert!((f64::from(got[i]) - expected).abs() < 1e-4);
                    // the min never exceeds any member, and mean − λ·std never exceeds the mean
                    if combine == Combine::Min {
                        prop_assert!(xs.iter().all(|&x| f64::from(got[i]) <= x));
                    }
                    if let Combine::MeanMinusStd { .. } = combine {
                        prop_assert!(f64::from(got[i]) <= mean + 1e-5);
                    }
                }
            }
        }

        #[test]
        fn the_length_scorer_is_monotone_in_length(words in 0usize..30, more in 1usize..10, eos in any::<bool>()) {
            let s = LengthScorer::new(0.1, "<|endoftext|>");
            let text = |k: usize| {
                let body = vec!["w"; k].join(" ");
                if eos { format!("{body}<|endoftext|>") } else { body }
            };
            let (a, b) = (text(words), text(words + more));
            let got = s.score(&["p", "p"], &[&a, &b]).unwrap();
            prop_assert!(got[1] > got[0]);
            prop_assert!((got[0] - 0.1 * words as f32).abs() < 1e-5);
        }
    }

    #[test]
    fn an_empty_ensemble_and_mismatched_inputs_are_errors() {
        assert!(EnsembleScorer::new(Vec::new(), Combine::Mean).is_err());
        let s = LengthScorer::new(1.0, "</s>");
        assert!(s.score(&["p"], &["a", "b"]).is_err());
        let short = EnsembleScorer::new(vec![Box::new(Fixed(vec![1.0]))], Combine::Mean).unwrap();
        assert!(short.score(&["p", "p"], &["a", "b"]).is_err());
    }
}
