//! Scorers built from other scorers or from nothing but the response: reward-model ensembles
//! ([`EnsembleScorer`], ChatGLM-RLHF and the over-optimisation literature) and the length-only
//! control ([`LengthScorer`], "A Long Way to Go").

use rlhf_core::{Error, Result, Scored, Scorer};
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

/// Several scorers (reward models trained from different seeds, or TRL's several reward
/// functions) served as one. Its parts ([`Scorer::score_parts`]) are the members' own scores,
/// named by the members' names (made unique by a suffix `_2`, `_3`, …).
pub struct EnsembleScorer {
    members: Vec<Box<dyn Scorer>>,
    names: Vec<String>,
    weights: Vec<f32>,
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
        let names = members.iter().map(|m| m.name()).collect();
        Ok(EnsembleScorer {
            weights: vec![1.0; members.len()],
            names: unique(names),
            members,
            combine,
        })
    }

    /// The members' parts named `names` (one per member) instead of by the members' names.
    pub fn with_names(mut self, names: Vec<String>) -> Result<Self> {
        if names.len() != self.members.len() {
            return Err(Error::Config(format!(
                "{} names for an ensemble of {} members",
                names.len(),
                self.members.len()
            )));
        }
        self.names = unique(names);
        Ok(self)
    }

    /// A [`Combine::Sum`] of the members' scores weighted by `weights`, one finite weight per
    /// member (TRL's `reward_weights`): `Σ_i w_i·s_i`.
    pub fn with_weights(mut self, weights: Vec<f32>) -> Result<Self> {
        if weights.len() != self.members.len() {
            return Err(Error::Config(format!(
                "number of reward weights ({}) must match number of reward functions ({})",
                weights.len(),
                self.members.len()
            )));
        }
        if self.combine != Combine::Sum {
            return Err(Error::Config(format!(
                "reward weights weight the terms of a sum, not of another combination ({:?})",
                self.combine
            )));
        }
        if let Some(w) = weights.iter().find(|w| !w.is_finite()) {
            return Err(Error::Config(format!("a reward weight is {w}")));
        }
        self.weights = weights;
        Ok(self)
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
        Ok(self.score_parts(prompts, responses)?.scores)
    }

    fn score_parts(&self, prompts: &[&str], responses: &[&str]) -> Result<Scored> {
        let all = self.member_scores(prompts, responses)?;
        let scores = (0..responses.len())
            .map(|i| {
                let one: Vec<f32> = all
                    .iter()
                    .zip(&self.weights)
                    .map(|(m, w)| w * m[i])
                    .collect();
                self.combine.apply(&one)
            })
            .collect();
        Ok(Scored {
            scores,
            parts: self.names.iter().cloned().zip(all).collect(),
            weights: (self.combine == Combine::Sum).then(|| self.weights.clone()),
        })
    }

    fn name(&self) -> String {
        match self.names.as_slice() {
            // a single reward function, named as its part is
            [one] => one.clone(),
            _ => format!("ensemble-{}x{:?}", self.members.len(), self.combine),
        }
    }
}

/// `names` with each repeated one suffixed `_2`, `_3`, … in order.
fn unique(names: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(names.len());
    for name in names {
        let mut candidate = name.clone();
        let mut k = 1;
        while out.contains(&candidate) {
            k += 1;
            candidate = format!("{name}_{k}");
        }
        out.push(candidate);
    }
    out
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
                // only a sum is a weighted sum of its parts
                let weights = e.score_parts(&prompts, &responses).unwrap().weights;
                prop_assert_eq!(weights.is_some(), combine == Combine::Sum);
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

        /// Reference: `Σ_i w_i·s_i` in f64; the parts are the members' unweighted scores.
        #[test]
        fn weighted_sums_match_the_reference_and_parts_stay_unweighted(
            members in prop::collection::vec(prop::collection::vec(-5.0f32..5.0, 3), 1..5),
            seed_weights in prop::collection::vec(-3.0f32..3.0, 5),
        ) {
            let weights: Vec<f32> = seed_weights[..members.len()].to_vec();
            let e = EnsembleScorer::new(
                members.iter().map(|m| Box::new(Fixed(m.clone())) as Box<dyn Scorer>).collect(),
                Combine::Sum,
            ).unwrap().with_weights(weights.clone()).unwrap();
            let scored = e.score_parts(&["p"; 3], &["a", "b", "c"]).unwrap();
            prop_assert_eq!(&scored.scores, &e.score(&["p"; 3], &["a", "b", "c"]).unwrap());
            for i in 0..3 {
                let expected: f64 = members.iter().zip(&weights).map(|(m, w)| f64::from(*w) * f64::from(m[i])).sum();
                prop_assert!((f64::from(scored.scores[i]) - expected).abs() < 1e-4);
            }
            let parts: Vec<&Vec<f32>> = scored.parts.iter().map(|(_, v)| v).collect();
            prop_assert_eq!(parts, members.iter().collect::<Vec<_>>());
            // the weights travel with the parts (GDPO's normalisation reads them)
            prop_assert_eq!(scored.weights, Some(weights));
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

    #[test]
    fn weights_must_fit_a_sum_and_names_are_made_unique() {
        let two = |combine| {
            EnsembleScorer::new(
                vec![Box::new(Fixed(vec![1.0])), Box::new(Fixed(vec![2.0]))],
                combine,
            )
            .unwrap()
        };
        let err = two(Combine::Sum).with_weights(vec![1.0]).err().unwrap();
        assert!(
            err.to_string()
                .contains("(1) must match number of reward functions (2)"),
            "{err}"
        );
        assert!(two(Combine::Mean).with_weights(vec![1.0, 1.0]).is_err());
        assert!(two(Combine::Sum).with_weights(vec![1.0, f32::NAN]).is_err());
        let e = two(Combine::Sum)
            .with_weights(vec![0.5, -1.0])
            .unwrap()
            .with_names(vec!["rm".into(), "rm".into()])
            .unwrap();
        let scored = e.score_parts(&["p"], &["a"]).unwrap();
        assert_eq!(scored.scores, vec![0.5 - 2.0]);
        let names: Vec<&str> = scored.parts.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["rm", "rm_2"]);
        assert!(two(Combine::Sum).with_names(vec!["a".into()]).is_err());
    }
}
