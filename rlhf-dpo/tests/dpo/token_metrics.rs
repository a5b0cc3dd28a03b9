//! DPO's token metrics, TRL's `DPOTrainer` names: `entropy` over every response token,
//! `mean_token_accuracy` over the chosen responses' tokens, `logits/chosen` and `logits/rejected`
//! (the mean logit over the vocabulary at each response token), their `eval_` forms, and
//! `num_tokens`, the prompt and response tokens of every response trained on so far. Checked
//! against `f64` references from each response's own logits, read alone (so the batch's padding
//! changes nothing), and against token counts by hand.

use burn::module::Module;
use proptest::prelude::*;
use rlhf_core::host::to_f64_vec;
use rlhf_core::train::OptimizerConfig;
use rlhf_core::train::metrics::names;
use rlhf_dpo::{DpoConfig, Group, evaluate};
use rlhf_models::CausalLm;

use crate::logged_run;

const VOCAB: usize = 32;

fn model(device: &burn::tensor::Device, seed: u64) -> CausalLm {
    let shape = rlhf_testkit::tiny_shape(VOCAB);
    rlhf_core::train::seeded(device, seed, || CausalLm::init(&shape, device).unwrap())
}

/// One response's sums over its tokens, in `f64` from its logits alone: entropy, how many tokens
/// are the first of the most likely ones, and the mean logit over the vocabulary.
fn reference(model: &CausalLm, prompt: &[u32], response: &[u32]) -> [f64; 3] {
    let ids: Vec<u32> = prompt.iter().chain(response).copied().collect();
    let input = model.input(&ids, &vec![1; ids.len()], 1).unwrap();
    let logits = to_f64_vec(model.forward(&input, None));
    let mut sums = [0.0; 3];
    for t in prompt.len()..ids.len() {
        let row = &logits[(t - 1) * VOCAB..t * VOCAB];
        let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let log_z = max + row.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
        sums[0] -= row
            .iter()
            .map(|&l| (l - log_z).exp() * (l - log_z))
            .sum::<f64>();
        let top = row.iter().position(|&l| l == max).unwrap();
        sums[1] += f64::from(u8::from(top == ids[t] as usize));
        sums[2] += row.iter().sum::<f64>() / VOCAB as f64;
    }
    sums
}

fn close(got: f64, want: f64) -> bool {
    (got - want).abs() < 1e-4 * (1.0 + want.abs())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// On pairs of any lengths, padded together in batches of two, the held-out metrics are the
    /// token means of the responses' references over all batches: entropy over both responses,
    /// accuracy and the chosen logits over the chosen ones, the rejected logits over the rejected
    /// ones.
    #[test]
    fn the_token_metrics_match_the_reference_whatever_the_padding(
        pairs in prop::collection::vec(
            (
                prop::collection::vec(1u32..32, 1..5),
                prop::collection::vec(0u32..32, 1..6),
                prop::collection::vec(0u32..32, 1..6),
            ),
            1..6,
        ),
        seed in 0u64..4,
    ) {
        let device = rlhf_core::device_from_env().unwrap();
        let policy = model(&device, seed);
        let groups: Vec<Group> = pairs
            .iter()
            .map(|(p, c, r)| Group { prompt: p.clone(), responses: vec![c.clone(), r.clone()], rewards: None })
            .collect();
        let refs = vec![vec![0.0, 0.0]; groups.len()];
        let cfg = DpoConfig { batch_size: 2, ..DpoConfig::default() };
        let e = evaluate(&policy, &groups, &refs, &cfg, &device).unwrap();

        let (mut chosen, mut rejected) = ([0.0; 4], [0.0; 4]);
        for (p, c, r) in &pairs {
            for (sums, response) in [(&mut chosen, c), (&mut rejected, r)] {
                let s = reference(&policy, p, response);
                sums.iter_mut().zip(s.iter().chain([&(response.len() as f64)])).for_each(|(a, x)| *a += x);
            }
        }
        let entropy = (chosen[0] + rejected[0]) / (chosen[3] + rejected[3]);
        prop_assert!(close(e.entropy, entropy), "entropy {} against {entropy}", e.entropy);
        prop_assert!(
            close(e.mean_token_accuracy, chosen[1] / chosen[3]),
            "accuracy {} against {}", e.mean_token_accuracy, chosen[1] / chosen[3]
        );
        prop_assert!(close(e.logits.0, chosen[2] / chosen[3]), "{} {}", e.logits.0, chosen[2] / chosen[3]);
        prop_assert!(close(e.logits.1, rejected[2] / rejected[3]), "{} {}", e.logits.1, rejected[2] / rejected[3]);
    }
}

/// The policy's greedy continuation of `prompt`, `len` tokens, from its logits.
fn greedy(model: &CausalLm, prompt: &[u32], len: usize) -> Vec<u32> {
    let mut ids = prompt.to_vec();
    for _ in 0..len {
        let input = model.input(&ids, &vec![1; ids.len()], 1).unwrap();
        let logits = to_f64_vec(model.forward(&input, None));
        let row = &logits[(ids.len() - 1) * VOCAB..ids.len() * VOCAB];
        let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        ids.push(row.iter().position(|&l| l == max).unwrap() as u32);
    }
    ids[prompt.len()..].to_vec()
}

/// `mean_token_accuracy` reads the chosen responses only: 1 when each is the policy's greedy
/// continuation, whatever the rejected ones are.
#[test]
fn the_token_accuracy_is_the_chosen_responses() {
    let device = rlhf_core::device_from_env().unwrap();
    let policy = model(&device, 3);
    let groups: Vec<Group> = (0..3u32)
        .map(|i| {
            let prompt = vec![i + 1, 7, 2 * i + 3];
            let chosen = greedy(&policy, &prompt, 4);
            // a rejected response whose first token is not the greedy one
            let rejected = vec![(chosen[0] + 1) % VOCAB as u32, chosen[1]];
            Group {
                prompt,
                responses: vec![chosen, rejected],
                rewards: None,
            }
        })
        .collect();
    let refs = vec![vec![0.0, 0.0]; groups.len()];
    let cfg = DpoConfig {
        batch_size: 2,
        ..DpoConfig::default()
    };
    let e = evaluate(&policy, &groups, &refs, &cfg, &device).unwrap();
    assert_eq!(e.mean_token_accuracy, 1.0);
}

/// A training step's token metrics are those of the policy before the step's update: on one
/// batch, the first step logs what `evaluate` gives for the initial policy.
#[test]
fn a_step_logs_the_token_metrics_of_its_batch() {
    let device = rlhf_core::device_from_env().unwrap().autodiff();
    let (policy, reference) = (model(&device, 4), model(&device, 5));
    let data = uneven_groups();
    let cfg = DpoConfig {
        batch_size: data.len(),
        optimizer: OptimizerConfig {
            lr: 1e-3,
            ..OptimizerConfig::default()
        },
        ..DpoConfig::default()
    };
    let refs = vec![vec![0.0, 0.0]; data.len()];
    let inference = device.clone().without_autodiff();
    let before = evaluate(&policy.valid(), &data, &refs, &cfg, &inference).unwrap();
    let first = &logged_run(policy, &reference, &data, &[], &cfg, &device)[0];
    for (name, want) in [
        (names::ENTROPY, before.entropy),
        (names::MEAN_TOKEN_ACCURACY, before.mean_token_accuracy),
        (names::LOGITS_CHOSEN, before.logits.0),
        (names::LOGITS_REJECTED, before.logits.1),
    ] {
        let got = first[name].as_f64().unwrap();
        assert!(
            close(got, want),
            "{name}: logged {got}, evaluate gives {want}"
        );
    }
}

/// Eight groups whose prompts and responses differ in length.
fn uneven_groups() -> Vec<Group> {
    (0..8u32)
        .map(|i| Group {
            prompt: (0..1 + i as usize % 4)
                .map(|j| (i + j as u32) % 30 + 1)
                .collect(),
            responses: vec![
                (0..1 + i as usize % 5)
                    .map(|j| (3 * i + j as u32) % 32)
                    .collect(),
                (0..2 + i as usize % 3)
                    .map(|j| (5 * i + j as u32) % 32)
                    .collect(),
            ],
            rewards: None,
        })
        .collect()
}

/// A run logs the token metrics at every step and held-out evaluation, and `num_tokens` counts
/// every response with its prompt, cut as the truncation cuts them, to the end of each step. A
/// step here is an epoch (four micro-batches of two groups), so its count does not depend on the
/// order the groups were drawn in.
#[test]
fn a_run_logs_the_token_metrics_and_the_tokens_it_trained_on() {
    let device = rlhf_core::device_from_env().unwrap().autodiff();
    let (policy, reference) = (model(&device, 1), model(&device, 2));
    let data = uneven_groups();
    let (max_prompt, max_response) = (2, 3);
    let per_epoch: usize = data
        .iter()
        .flat_map(|g| {
            let prompt = g.prompt.len().min(max_prompt);
            g.responses
                .iter()
                .map(move |r| prompt + r.len().min(max_response))
        })
        .sum();
    let cfg = DpoConfig {
        epochs: 3,
        batch_size: 2,
        grad_accum: 4,
        truncation: Some((max_prompt, max_response)),
        eval_every: 1,
        optimizer: OptimizerConfig {
            lr: 1e-3,
            ..OptimizerConfig::default()
        },
        ..DpoConfig::default()
    };
    let lines = logged_run(policy, &reference, &data, &data[..4], &cfg, &device);
    let steps: Vec<_> = lines
        .iter()
        .filter(|l| l.contains_key(names::NUM_TOKENS))
        .collect();
    assert_eq!(steps.len(), 3, "one step an epoch");
    for (i, line) in steps.iter().enumerate() {
        let get = |k: &str| line[k].as_f64().unwrap();
        assert_eq!(get(names::NUM_TOKENS), ((i + 1) * per_epoch) as f64);
        let accuracy = get(names::MEAN_TOKEN_ACCURACY);
        assert!((0.0..=1.0).contains(&accuracy), "step {i}: {accuracy}");
        let entropy = get(names::ENTROPY);
        assert!((0.0..=(VOCAB as f64).ln() + 1e-4).contains(&entropy));
        assert!(get(names::LOGITS_CHOSEN).is_finite() && get(names::LOGITS_REJECTED).is_finite());
    }
    for name in [
        names::EVAL_ENTROPY,
        names::EVAL_MEAN_TOKEN_ACCURACY,
        names::EVAL_LOGITS_CHOSEN,
        names::EVAL_LOGITS_REJECTED,
    ] {
        let evals = lines.iter().filter(|l| l.contains_key(name)).count();
        assert!(evals >= 3, "{name}: {evals} held-out evaluations");
    }
}
