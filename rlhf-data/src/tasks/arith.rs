//! `arith-steps`: a chain of small-integer additions and subtractions solved one step at a time,
//! with process (per-step) and outcome (final answer) gold labels — the seed paper's setting for
//! process vs outcome supervision, at laptop scale.
//!
//! Prompt `17+25-8+6=`; reference `17+25=42;42-8=34;34+6=40;ANSWER 40`. The number of terms sets
//! the difficulty; longer chains than in training are the out-of-distribution test.

use rand::Rng;

use super::{ChaCha8Rng, GoldScore, Task, prompt_rng, strip_eos};
use crate::sampling::Split;

/// Difficulty, the demonstrator's error rate and the gold weights.
#[derive(Debug, Clone)]
pub struct ArithSteps {
    /// Fewest terms of an in-distribution prompt.
    pub min_terms: usize,
    /// Most terms of an in-distribution prompt.
    pub max_terms: usize,
    /// Terms of the out-of-distribution (test-split) prompts, when set.
    pub ood_terms: Option<usize>,
    /// Largest operand.
    pub max_operand: i64,
    /// Probability that the noisy demonstrator gets each step wrong (later steps then build on
    /// the wrong value, as a person's would).
    pub step_error: f64,
    /// Gold penalty for a missing EOS.
    pub missing_eos_penalty: f64,
}

impl Default for ArithSteps {
    fn default() -> Self {
        ArithSteps {
            min_terms: 3,
            max_terms: 5,
            ood_terms: None,
            max_operand: 30,
            step_error: 0.08,
            missing_eos_penalty: 1.0,
        }
    }
}

/// `(first, [(op, operand)])` read off a prompt like `17+25-8=`.
fn parse_prompt(prompt: &str) -> Option<(i64, Vec<(char, i64)>)> {
    let body = prompt.trim().strip_suffix('=')?;
    let mut terms = Vec::new();
    let mut start = 0;
    let bytes = body.as_bytes();
    for i in 1..=bytes.len() {
        if i == bytes.len() || bytes[i] == b'+' || bytes[i] == b'-' {
            terms.push(&body[start..i]);
            start = i;
        }
    }
    let first: i64 = terms.first()?.parse().ok()?;
    let rest = terms[1..]
        .iter()
        .map(|t| Some((t.chars().next()?, t[1..].parse().ok()?)))
        .collect::<Option<Vec<_>>>()?;
    Some((first, rest))
}

fn apply(a: i64, op: char, b: i64) -> i64 {
    if op == '+' { a + b } else { a - b }
}

/// One parsed step `a op b = c`.
fn parse_step(s: &str) -> Option<(i64, char, i64, i64)> {
    let (lhs, c) = s.split_once('=')?;
    let pos = lhs
        .char_indices()
        .skip(1)
        .find(|(_, ch)| *ch == '+' || *ch == '-')?
        .0;
    let a = lhs[..pos].parse().ok()?;
    let op = lhs[pos..].chars().next()?;
    let b = lhs[pos + 1..].parse().ok()?;
    Some((a, op, b, c.parse().ok()?))
}

impl ArithSteps {
    fn solve(first: i64, ops: &[(char, i64)], mut error: impl FnMut() -> i64) -> String {
        let mut acc = first;
        let mut steps = Vec::new();
        for &(op, b) in ops {
            let c = apply(acc, op, b) + error();
            steps.push(format!("{acc}{op}{b}={c}"));
            acc = c;
        }
        steps.push(format!("ANSWER {acc}"));
        steps.join(";")
    }

    /// The steps of a response (before `ANSWER`) and their gold labels: a step is correct when its
    /// left operand is the previous step's correct result (the first operand for the first step),
    /// its operation and right operand are the prompt's next term, and its arithmetic is right —
    /// i.e. the solution is correct up to and including it.
    fn label_steps(&self, prompt: &str, body: &str) -> (Vec<String>, Vec<bool>) {
        let Some((first, ops)) = parse_prompt(prompt) else {
            return (Vec::new(), Vec::new());
        };
        let mut acc = Some(first);
        let mut steps = Vec::new();
        let mut labels = Vec::new();
        for (i, s) in body
            .trim()
            .split(';')
            .filter(|s| !s.starts_with("ANSWER"))
            .enumerate()
        {
            let ok = match (parse_step(s), ops.get(i), acc) {
                (Some((a, op, b, c)), Some(&(pop, pb)), Some(expected)) => {
                    a == expected && op == pop && b == pb && c == apply(a, op, b)
                }
                _ => false,
            };
            acc = if ok { parse_step(s).map(|x| x.3) } else { None };
            steps.push(s.to_string());
            labels.push(ok);
        }
        (steps, labels)
    }
}

impl Task for ArithSteps {
    fn name(&self) -> &'static str {
        "arith-steps"
    }

    fn prompt(&self, split: Split, index: u64) -> String {
        let mut rng = prompt_rng(self.name(), split, index);
        let terms = match (split, self.ood_terms) {
            (Split::Test, Some(n)) => n,
            _ => rng.random_range(self.min_terms..=self.max_terms),
        };
        let mut s = rng.random_range(1..=self.max_operand).to_string();
        for _ in 1..terms {
            let op = if rng.random_bool(0.5) { '+' } else { '-' };
            s.push(op);
            s.push_str(&rng.random_range(1..=self.max_operand).to_string());
        }
        s.push('=');
        s
    }

    fn reference(&self, prompt: &str) -> String {
        parse_prompt(prompt)
            .map(|(first, ops)| Self::solve(first, &ops, || 0))
            .unwrap_or_default()
    }

    fn demonstrate(&self, prompt: &str, rng: &mut ChaCha8Rng) -> String {
        let Some((first, ops)) = parse_prompt(prompt) else {
            return String::new();
        };
        let p = self.step_error;
        Self::solve(first, &ops, || {
            if rng.random_bool(p) {
                let d = rng.random_range(1..=3);
                if rng.random_bool(0.5) { d } else { -d }
            } else {
                0
            }
        })
    }

    /// Components: `outcome` (1 when `ANSWER` is the true result), `process` (0.25 × share of
    /// correct steps), `format` (−0.5 when the steps or the `ANSWER` line do not parse or the
    /// step count is wrong), `eos` (−penalty when missing).
    fn gold(&self, prompt: &str, response: &str) -> GoldScore {
        let (body, has_eos) = strip_eos(response);
        let truth =
            parse_prompt(prompt).map(|(f, ops)| ops.iter().fold(f, |a, &(op, b)| apply(a, op, b)));
        let answer = body
            .trim()
            .rsplit(';')
            .next()
            .and_then(|l| l.strip_prefix("ANSWER "))
            .and_then(|a| a.trim().parse::<i64>().ok());
        let (steps, labels) = self.label_steps(prompt, body);
        let n_ops = parse_prompt(prompt).map_or(0, |(_, ops)| ops.len());
        let well_formed = answer.is_some()
            && steps.len() == n_ops
            && steps.iter().all(|s| parse_step(s).is_some());
        let process = if steps.is_empty() {
            0.0
        } else {
            labels.iter().filter(|&&l| l).count() as f64 / n_ops.max(steps.len()) as f64
        };
        GoldScore::from_parts(vec![
            (
                "outcome",
                if answer.is_some() && answer == truth {
                    1.0
                } else {
                    0.0
                },
            ),
            ("process", 0.25 * process),
            ("format", if well_formed { 0.0 } else { -0.5 }),
            (
                "eos",
                if has_eos {
                    0.0
                } else {
                    -self.missing_eos_penalty
                },
            ),
        ])
    }

    fn step_labels(&self, prompt: &str, response: &str) -> Option<(Vec<String>, Vec<bool>)> {
        Some(self.label_steps(prompt, strip_eos(response).0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::with_eos;

    #[test]
    fn reference_solves_the_chain() {
        let t = ArithSteps::default();
        assert_eq!(
            t.reference("17+25-8+6="),
            "17+25=42;42-8=34;34+6=40;ANSWER 40"
        );
        let g = t.gold(
            "17+25-8+6=",
            &with_eos("17+25=42;42-8=34;34+6=40;ANSWER 40"),
        );
        assert_eq!(
            (g.component("outcome"), g.component("process"), g.total),
            (1.0, 0.25, 1.25)
        );
        assert_eq!(t.reference("5-9="), "5-9=-4;ANSWER -4");
        assert!(t.gold("5-9=", &with_eos("5-9=-4;ANSWER -4")).total == 1.25);
    }

    #[test]
    fn a_wrong_middle_step_loses_to_a_correct_chain_and_is_labelled() {
        let t = ArithSteps::default();
        let p = "17+25-8+6=";
        let good = t
            .gold(p, &with_eos("17+25=42;42-8=34;34+6=40;ANSWER 40"))
            .total;
        let bad_middle = "17+25=42;42-8=33;33+6=39;ANSWER 39";
        assert!(good > t.gold(p, &with_eos(bad_middle)).total);
        let (_, labels) = t.step_labels(p, &with_eos(bad_middle)).unwrap();
        // the second step is wrong, and the third builds on it
        assert_eq!(labels, vec![true, false, false]);
        // a right answer reached by a wrong process still has wrong steps
        let lucky = "17+25=43;43-8=34;34+6=40;ANSWER 40";
        let g = t.gold(p, &with_eos(lucky));
        assert_eq!(g.component("outcome"), 1.0);
        assert!(g.component("process") < 0.25);
        // missing EOS and malformed output are penalised
        assert!(t.gold(p, "17+25=42;42-8=34;34+6=40;ANSWER 40").total < good - 0.9);
        assert!(t.gold(p, &with_eos("the answer is 40")).total < 0.0);
    }

    #[test]
    fn demonstrations_err_at_the_set_rate() {
        let t = ArithSteps::default();
        let mut rng = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1);
        let n = 4000;
        let mut wrong_steps = 0;
        let mut steps = 0;
        for i in 0..n {
            let p = t.prompt(Split::Train, i);
            let (_, labels) = t.step_labels(&p, &t.demonstrate(&p, &mut rng)).unwrap();
            // count first errors only: the error rate applies per step while the chain is right
            let first_bad = labels.iter().position(|&l| !l);
            steps += first_bad.map_or(labels.len(), |k| k + 1);
            wrong_steps += usize::from(first_bad.is_some());
        }
        let rate = wrong_steps as f64 / steps as f64;
        assert!((rate - t.step_error).abs() < 0.015, "{rate}");
    }
}
