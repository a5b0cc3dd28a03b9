//! The within-prompt loss of labelled solutions.
//!
//! A verifier that picks the best of one prompt's candidates must order *those* candidates.
//! Binary cross-entropy pooled over every prompt's solutions also rewards what separates one
//! prompt from another: where most solutions of a hard prompt are wrong, "this prompt is hard"
//! lowers the loss without telling its candidates apart. The within-prompt loss compares
//! solutions of the same prompt only. At each label position `j` (a step, or the one outcome
//! label), every solution labelled right there meets every solution of its prompt labelled wrong
//! there:
//!
//! ```text
//! L = mean over pairs (a right at j, b wrong at j, same prompt) of −log σ(z_j(a) − z_j(b))
//! ```
//!
//! the Bradley–Terry loss of a reward model, with pairs read off the labels: the pairwise
//! (DPO-style) loss of Yuan et al. (2024, "Free Process Rewards without Process Labels") for a
//! verifier trained on right and wrong samples of each instruction. Whatever depends on the
//! prompt alone cancels in the difference, a bias added to every logit included. A prompt whose
//! solutions are all right, or all wrong, at a position gives no pair there; the trainer skips
//! prompts without any pair, as PRIME trains on prompts with mixed outcomes only.

use std::collections::HashMap;

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::losses::bradley_terry_loss;
use crate::train::LabelledExample;

/// Two solutions of one prompt that the labels order at one label position: indices into the
/// examples the pair was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabelPair {
    /// The solution labelled right at `step`.
    pub right: usize,
    /// The solution labelled wrong at `step`.
    pub wrong: usize,
    /// The label position (segment index).
    pub step: usize,
}

/// The indices of `prompts` grouped by equal prompt, groups in order of first appearance and
/// indices in order within each.
pub fn prompt_groups<'a>(prompts: impl IntoIterator<Item = &'a [u32]>) -> Vec<Vec<usize>> {
    let mut group_of: HashMap<&[u32], usize> = HashMap::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, p) in prompts.into_iter().enumerate() {
        let g = *group_of.entry(p).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(i);
    }
    groups
}

/// Every pair of `examples` that share a prompt and whose labels differ at a position both have
/// (see the module documentation), prompt by prompt, then by position.
pub fn label_pairs(examples: &[&LabelledExample]) -> Vec<LabelPair> {
    let mut pairs = Vec::new();
    for group in prompt_groups(examples.iter().map(|e| e.prompt.as_slice())) {
        let steps = group
            .iter()
            .map(|&i| examples[i].labels.len())
            .max()
            .unwrap_or(0);
        for step in 0..steps {
            let at = |want: bool| -> Vec<usize> {
                group
                    .iter()
                    .copied()
                    .filter(|&i| examples[i].labels.get(step) == Some(&want))
                    .collect()
            };
            let (right, wrong) = (at(true), at(false));
            for &r in &right {
                pairs.extend(wrong.iter().map(|&w| LabelPair {
                    right: r,
                    wrong: w,
                    step,
                }));
            }
        }
    }
    pairs
}

/// The prompts of `examples` that give at least one pair, each as the indices of all its
/// solutions: what the within-prompt loss trains on, one batch item per prompt.
pub fn prompts_with_pairs(examples: &[LabelledExample]) -> Vec<Vec<usize>> {
    prompt_groups(examples.iter().map(|e| e.prompt.as_slice()))
        .into_iter()
        .filter(|g| {
            let refs: Vec<&LabelledExample> = g.iter().map(|&i| &examples[i]).collect();
            !label_pairs(&refs).is_empty()
        })
        .collect()
}

/// The within-prompt loss (`[1]`) of `logits` (`[rows, steps]`, row `i` the logits of the
/// example of index `i` that `pairs` were read from, at its label positions). Without a pair
/// it is 0, still connected to `logits` so that a backward pass finds every parameter.
pub fn within_prompt_loss(logits: Tensor<2>, pairs: &[LabelPair], device: &Device) -> Tensor<1> {
    let [rows, steps] = logits.dims();
    if pairs.is_empty() {
        return logits.sum().mul_scalar(0.0);
    }
    let flat = logits.reshape([rows * steps]);
    let column = |pick: &dyn Fn(&LabelPair) -> usize| {
        let idx: Vec<i64> = pairs
            .iter()
            .map(|p| (pick(p) * steps + p.step) as i64)
            .collect();
        flat.clone().select(
            0,
            Tensor::<1, Int>::from_data(TensorData::new(idx, [pairs.len()]), device),
        )
    };
    bradley_terry_loss(column(&|p| p.right), column(&|p| p.wrong), None)
}

/// The share of `pairs` that `logits` (per example, per label position) order as the labels do,
/// ties counting half; `None` without a pair.
pub fn label_pair_accuracy(logits: &[Vec<f32>], pairs: &[LabelPair]) -> Option<f64> {
    if pairs.is_empty() {
        return None;
    }
    let right: f64 = pairs
        .iter()
        .map(|p| {
            let (a, b) = (logits[p.right][p.step], logits[p.wrong][p.step]);
            f64::from(u8::from(a > b)) + 0.5 * f64::from(u8::from(a == b))
        })
        .sum();
    Some(right / pairs.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rlhf_core::host::tensor_from_f64;

    const STEPS: usize = 4;

    /// One example per `(prompt id, labels)`, each segment one token.
    fn examples(rows: &[(u32, Vec<bool>)]) -> Vec<LabelledExample> {
        rows.iter()
            .map(|(p, labels)| LabelledExample {
                prompt: vec![*p, 7],
                segments: labels.iter().map(|_| vec![1]).collect(),
                labels: labels.clone(),
            })
            .collect()
    }

    fn loss(logits: &[f64], pairs: &[LabelPair]) -> f64 {
        let device = rlhf_core::device_from_env().unwrap();
        let t = tensor_from_f64(logits, [logits.len() / STEPS, STEPS], &device);
        f64::from(within_prompt_loss(t, pairs, &device).into_scalar::<f32>())
    }

    /// The spec in f64, over every ordered pair of examples: same prompt, a position both have,
    /// the first labelled right there and the second wrong.
    fn reference(rows: &[(u32, Vec<bool>)], logits: &[f64]) -> (usize, f64) {
        let (mut n, mut sum) = (0, 0.0);
        for (a, (pa, la)) in rows.iter().enumerate() {
            for (b, (pb, lb)) in rows.iter().enumerate() {
                for j in 0..la.len().min(lb.len()) {
                    if pa == pb && la[j] && !lb[j] {
                        let d = logits[a * STEPS + j] - logits[b * STEPS + j];
                        // −log σ(d), stable for either sign
                        sum += (-d).max(0.0) + (-d.abs()).exp().ln_1p();
                        n += 1;
                    }
                }
            }
        }
        (n, if n == 0 { 0.0 } else { sum / n as f64 })
    }

    fn rows() -> impl Strategy<Value = Vec<(u32, Vec<bool>)>> {
        prop::collection::vec(
            (0u32..3, prop::collection::vec(any::<bool>(), 1..=STEPS)),
            1..10,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn the_loss_matches_the_spec_and_ignores_the_prompt_and_padding(
            rows in rows(),
            z in prop::collection::vec(-6.0f64..6.0, 10 * STEPS),
            shift in prop::collection::vec(-50.0f64..50.0, 3 * STEPS),
            junk in -1e6f64..1e6,
        ) {
            let ex = examples(&rows);
            let refs: Vec<&LabelledExample> = ex.iter().collect();
            let pairs = label_pairs(&refs);
            let logits = &z[..rows.len() * STEPS];
            let (n, expected) = reference(&rows, logits);
            prop_assert_eq!(pairs.len(), n);
            for p in &pairs {
                prop_assert_eq!(&ex[p.right].prompt, &ex[p.wrong].prompt);
                prop_assert!(ex[p.right].labels[p.step] && !ex[p.wrong].labels[p.step]);
            }
            let got = loss(logits, &pairs);
            prop_assert!((got - expected).abs() < 1e-4 * (1.0 + expected), "{} vs {}", got, expected);
            // a constant per prompt and position (a prompt's difficulty, a bias) cancels
            let shifted: Vec<f64> = logits.iter().enumerate().map(|(i, v)| {
                v + shift[rows[i / STEPS].0 as usize * STEPS + i % STEPS]
            }).collect();
            let moved = loss(&shifted, &pairs);
            prop_assert!((moved - got).abs() < 1e-3 * (1.0 + got), "{} vs {}", moved, got);
            // positions past an example's labels are padding
            let padded: Vec<f64> = logits.iter().enumerate().map(|(i, v)| {
                if i % STEPS < rows[i / STEPS].1.len() { *v } else { junk }
            }).collect();
            prop_assert_eq!(loss(&padded, &pairs), got);
            // the accuracy counts the pairs the logits order as labelled
            let per_example: Vec<Vec<f32>> = (0..rows.len())
                .map(|r| logits[r * STEPS..(r + 1) * STEPS].iter().map(|&v| v as f32).collect())
                .collect();
            let acc = label_pair_accuracy(&per_example, &pairs);
            prop_assert_eq!(acc.is_some(), n > 0);
            if let Some(acc) = acc {
                let order = |p: &&LabelPair| per_example[p.right][p.step].total_cmp(&per_example[p.wrong][p.step]);
                let right = pairs.iter().filter(|p| order(p).is_gt()).count() as f64;
                let ties = pairs.iter().filter(|p| order(p).is_eq()).count() as f64;
                prop_assert_eq!(acc, (right + 0.5 * ties) / n as f64);
            }
        }
    }

    #[test]
    fn extreme_logits_give_a_finite_loss() {
        let rows = [(0, vec![true]), (0, vec![false])];
        let ex = examples(&rows);
        let pairs = label_pairs(&ex.iter().collect::<Vec<_>>());
        let pad = [0.0; STEPS - 1];
        for (right, wrong, expected) in [(-1e4, 1e4, 2e4), (1e4, -1e4, 0.0)] {
            let logits: Vec<f64> = [&[right][..], &pad, &[wrong], &pad].concat();
            let got = loss(&logits, &pairs);
            assert!(got.is_finite() && (got - expected).abs() <= 1e-3 * (1.0 + expected));
        }
    }

    #[test]
    fn prompts_without_both_labels_give_no_pair() {
        // prompt 0: all right; prompt 1: right and wrong at the second step only; prompt 2:
        // alone
        let rows = [
            (0, vec![true, true]),
            (0, vec![true]),
            (1, vec![true, true]),
            (2, vec![false]),
            (1, vec![true, false]),
        ];
        let ex = examples(&rows);
        assert_eq!(prompts_with_pairs(&ex), [vec![2, 4]]);
        let pairs = label_pairs(&ex.iter().collect::<Vec<_>>());
        assert_eq!(
            pairs,
            [LabelPair {
                right: 2,
                wrong: 4,
                step: 1
            }]
        );
        assert_eq!(loss(&[0.0; 5 * STEPS], &[]), 0.0);
        // a tie counts half
        let tied = vec![vec![0.0, 1.0]; 5];
        assert_eq!(label_pair_accuracy(&tied, &pairs), Some(0.5));
        assert_eq!(label_pair_accuracy(&tied, &[]), None);
    }
}
