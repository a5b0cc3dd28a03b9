//! Picking one of a prompt's candidates: by a verifier's scores (the highest, or the final answer
//! whose holders' scores sum highest: verifier-weighted voting), and the baselines a verifier
//! has to beat — best-of-1, a random pick, majority vote over the final answers
//! (self-consistency) — and the oracle, the best any pick can do.

use std::collections::BTreeMap;

use rlhf_data::tasks::EOS;

use super::Measured;
use super::policy::{Candidates, Held};
use crate::metrics::arith as am;

/// The final answer of a finished solution (`…;ANSWER 40` then EOS); `None` when it did not
/// end or has no readable answer.
pub(crate) fn final_answer(response: &str) -> Option<i64> {
    let body = response.strip_suffix(EOS)?;
    body.trim()
        .rsplit(';')
        .next()?
        .strip_prefix("ANSWER ")?
        .trim()
        .parse()
        .ok()
}

/// The candidate that majority vote picks: one holding the most common final answer, ties
/// broken by the answer that appears first, and of its holders the first. `None` when no
/// candidate has an answer.
pub(crate) fn majority_vote(answers: &[Option<i64>]) -> Option<usize> {
    // answer → (votes, first holder)
    let mut votes: BTreeMap<i64, (usize, usize)> = BTreeMap::new();
    for (i, a) in answers.iter().enumerate() {
        if let Some(a) = a {
            votes.entry(*a).or_insert((0, i)).0 += 1;
        }
    }
    votes
        .values()
        .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
        .map(|v| v.1)
}

/// The candidate that verifier-weighted voting picks (Uesato et al. 2022; Li et al. 2023): one
/// holding the final answer whose holders' `scores` (probabilities of being right) sum highest,
/// ties broken by the answer that appears first, and of its holders the first. Majority vote is
/// the same with every score 1. `None` when no candidate has an answer.
///
/// Where a task has one right solution string per prompt, its right candidates are copies of
/// one text and share one score, while the wrong ones are distinct: the highest score then
/// lands on a distinct text nearly at random, and the vote is the pick that uses the copies.
pub(crate) fn weighted_vote(answers: &[Option<i64>], scores: &[f64]) -> Option<usize> {
    // answer → (summed score, first holder)
    let mut votes: BTreeMap<i64, (f64, usize)> = BTreeMap::new();
    for (i, (a, s)) in answers.iter().zip(scores).enumerate() {
        if let Some(a) = a {
            votes.entry(*a).or_insert((0.0, i)).0 += s;
        }
    }
    votes
        .values()
        .max_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)))
        .map(|v| v.1)
}

/// Per prompt of `c`: 1 when verifier-weighted voting ([`weighted_vote`]) picks a right
/// candidate.
pub(crate) fn weighted_vote_picks(c: &Candidates, scores: &[f64]) -> Vec<f64> {
    (0..c.prompts.len())
        .map(|i| {
            let r = c.of(i);
            let pick = weighted_vote(&c.answers[r.clone()], &scores[r.clone()]);
            pick.map_or(0.0, |j| f64::from(u8::from(c.right[r.start + j])))
        })
        .collect()
}

/// The index of the highest score (the first of equal ones).
pub(crate) fn best(scores: &[f64]) -> usize {
    (0..scores.len()).fold(0, |b, j| if scores[j] > scores[b] { j } else { b })
}

/// Per prompt of `c`: 1 when the candidate with the highest score is right.
pub(crate) fn verifier_picks(c: &Candidates, scores: &[f64]) -> Vec<f64> {
    (0..c.prompts.len())
        .map(|i| {
            let r = c.of(i);
            f64::from(u8::from(c.right[r.start + best(&scores[r])]))
        })
        .collect()
}

/// The share of (right, wrong) candidate pairs of a prompt, over every prompt, that `scores`
/// order right (ties ½); `None` when no prompt has both.
pub(crate) fn pair_accuracy(c: &Candidates, scores: &[f64]) -> Option<f64> {
    let (mut ordered, mut pairs) = (0.0, 0usize);
    for i in 0..c.prompts.len() {
        let r = c.of(i);
        for a in r.clone().filter(|&a| c.right[a]) {
            for b in r.clone().filter(|&b| !c.right[b]) {
                pairs += 1;
                ordered += crate::judge::win(scores[a], scores[b]);
            }
        }
    }
    (pairs > 0).then(|| ordered / pairs as f64)
}

/// The baselines of one prompt's candidates, each 1 when right (a random pick: the chance that
/// it is).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Baseline {
    /// The first candidate: best-of-1.
    pub first: f64,
    /// A uniformly random candidate: the share of right ones.
    pub random: f64,
    /// Majority vote over the final answers.
    pub majority: f64,
    /// Any candidate right.
    pub oracle: f64,
}

/// The baselines of candidates judged `right` with final answers `answers`.
pub(crate) fn baseline(right: &[bool], answers: &[Option<i64>]) -> Baseline {
    let one = |b: bool| f64::from(u8::from(b));
    Baseline {
        first: right.first().copied().map_or(0.0, one),
        random: crate::stats::mean(right.iter().copied().map(one)),
        majority: majority_vote(answers).map_or(0.0, |i| one(right[i])),
        oracle: one(right.iter().any(|&r| r)),
    }
}

/// Adds the baselines of `c` (per prompt) under the names of `held`.
pub(crate) fn add(c: &Candidates, held: Held, out: &mut Measured) {
    let b: Vec<Baseline> = (0..c.prompts.len())
        .map(|i| baseline(&c.right[c.of(i)], &c.answers[c.of(i)]))
        .collect();
    let names = match held {
        Held::InDomain => [am::FIRST, am::RANDOM, am::MAJORITY, am::ORACLE],
        Held::Ood => [
            am::FIRST_OOD,
            am::RANDOM_OOD,
            am::MAJORITY_OOD,
            am::ORACLE_OOD,
        ],
    };
    let fields: [fn(&Baseline) -> f64; 4] =
        [|x| x.first, |x| x.random, |x| x.majority, |x| x.oracle];
    for (name, field) in names.into_iter().zip(fields) {
        out.per_prompt(name, b.iter().map(field).collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rlhf_data::tasks::{ArithSteps, with_eos};

    #[test]
    fn final_answers_are_read_from_finished_solutions_only() {
        assert_eq!(final_answer(&with_eos("1+2=3;3-5=-2;ANSWER -2")), Some(-2));
        assert_eq!(final_answer(&with_eos(" 1+2=3;ANSWER 3 ")), Some(3));
        assert_eq!(final_answer("1+2=3;ANSWER 3"), None, "no EOS");
        assert_eq!(final_answer(&with_eos("1+2=3;ANSWER")), None);
        assert_eq!(final_answer(&with_eos("ANSWER 3;1+2=3")), None);
        assert_eq!(final_answer(&with_eos("")), None);
    }

    #[test]
    fn weighted_vote_sums_each_answers_scores_and_breaks_ties_by_first_appearance() {
        // 7: 0.9 + 0.2 = 1.1 against 4: 0.5 + 0.4 = 0.9; answerless candidates never vote
        let answers = [Some(4), Some(7), None, Some(4), Some(7)];
        assert_eq!(weighted_vote(&answers, &[0.5, 0.9, 5.0, 0.4, 0.2]), Some(1));
        assert_eq!(weighted_vote(&answers, &[0.5, 0.3, 5.0, 0.4, 0.2]), Some(0));
        // a tie (0.5 each): the answer that appeared first
        assert_eq!(weighted_vote(&[Some(9), Some(5)], &[0.5, 0.5]), Some(0));
        // every score 1: majority vote
        let many = [Some(4), Some(7), Some(7), None, Some(4), Some(7)];
        assert_eq!(weighted_vote(&many, &[1.0; 6]), majority_vote(&many));
        assert_eq!(weighted_vote(&[None, None], &[1.0, 1.0]), None);
    }

    /// Six copies of the right solution share one score, two distinct wrong ones straddle it:
    /// the highest score picks a wrong one, the vote the right answer.
    #[test]
    fn copies_of_the_right_solution_are_not_outscored_by_one_noisy_wrong_one() {
        let task = ArithSteps::default();
        let right = with_eos("1+2=3;3+3=6;ANSWER 6");
        let mut texts = vec![right; 6];
        texts.push(with_eos("1+2=3;3+3=7;ANSWER 7"));
        texts.push(with_eos("1+2=4;4+3=8;ANSWER 8"));
        let c = Candidates::judge(&task, vec!["1+2+3=".to_string()], 8, texts);
        assert_eq!(c.right.iter().filter(|&&r| r).count(), 6);
        let scores = [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.6, 0.4];
        assert_eq!(verifier_picks(&c, &scores), [0.0]);
        assert_eq!(weighted_vote_picks(&c, &scores), [1.0]);
    }

    #[test]
    fn majority_vote_takes_the_most_common_answer_and_breaks_ties_by_first_appearance() {
        assert_eq!(
            majority_vote(&[Some(4), Some(7), Some(7), None, Some(4), Some(7)]),
            Some(1)
        );
        // 5 and 9 twice each: 9 appeared first
        assert_eq!(
            majority_vote(&[None, Some(9), Some(5), Some(5), Some(9)]),
            Some(1)
        );
        // answerless candidates never vote
        assert_eq!(majority_vote(&[None, None, Some(-3)]), Some(2));
        assert_eq!(majority_vote(&[None, None]), None);
        assert_eq!(majority_vote(&[]), None);
    }

    #[test]
    fn baselines_of_hand_made_candidates() {
        // truth 10: candidates answer 10, 12, 12, none, 10, 12
        let answers = [Some(10), Some(12), Some(12), None, Some(10), Some(12)];
        let right: Vec<bool> = answers.iter().map(|a| *a == Some(10)).collect();
        let b = baseline(&right, &answers);
        assert_eq!(b.first, 1.0);
        assert_eq!(b.random, 2.0 / 6.0);
        assert_eq!(b.majority, 0.0, "12 wins the vote 3 to 2");
        assert_eq!(b.oracle, 1.0);
        // a wrong first candidate and a right majority
        let answers = [Some(3), Some(10), Some(10)];
        let right = [false, true, true];
        assert_eq!(
            baseline(&right, &answers),
            Baseline {
                first: 0.0,
                random: 2.0 / 3.0,
                majority: 1.0,
                oracle: 1.0
            }
        );
        // nothing right
        let b = baseline(&[false, false], &[None, Some(1)]);
        assert_eq!(
            (b.first, b.random, b.majority, b.oracle),
            (0.0, 0.0, 0.0, 0.0)
        );
    }

    #[test]
    fn a_verifier_picks_its_best_candidate_and_pairs_count_ties_half() {
        let task = ArithSteps::default();
        let p = "1+2+3=".to_string();
        let good = with_eos("1+2=3;3+3=6;ANSWER 6");
        let bad = with_eos("1+2=3;3+3=7;ANSWER 7");
        let unfinished = "1+2=3;3+3=6;ANSWER 6".to_string();
        let c = Candidates::judge(
            &task,
            vec![p.clone(), p],
            3,
            vec![
                bad.clone(),
                good.clone(),
                unfinished,
                good,
                bad.clone(),
                bad,
            ],
        );
        assert_eq!(c.right, [false, true, false, true, false, false]);
        assert_eq!(c.answers[2], None);
        // prompt 0: the right one scores highest; prompt 1: a tie at the top goes to the first
        let scores = [0.2, 0.9, 0.5, 0.4, 0.4, 0.1];
        assert_eq!(verifier_picks(&c, &scores), [1.0, 1.0]);
        let scores = [0.2, 0.1, 0.5, 0.4, 0.6, 0.1];
        assert_eq!(verifier_picks(&c, &scores), [0.0, 0.0]);
        // pairs: (1 vs 0, 1 vs 2) and (3 vs 4, 3 vs 5) — ordered 0, 0, 0, 1
        assert_eq!(pair_accuracy(&c, &scores), Some(0.25));
        let tied = [0.5; 6];
        assert_eq!(pair_accuracy(&c, &tied), Some(0.5));
        let mut out = Measured::default();
        add(&c, Held::Ood, &mut out);
        assert_eq!(out.items[am::FIRST_OOD], [0.0, 1.0]);
        assert_eq!(
            out.items[am::MAJORITY_OOD],
            [0.0, 0.0],
            "7: first of a tie, then two votes to one"
        );
        assert_eq!(out.metrics[am::RANDOM_OOD], 0.5 * (1.0 / 3.0 + 1.0 / 3.0));
        assert_eq!(out.metrics[am::ORACLE_OOD], 1.0);
    }
}
