//! SFT's token metrics (`rlhf_models::sft::target_logprobs_and_stats`, logged as `entropy` and
//! `mean_token_accuracy`) against `f64` references from each example's own logits, read alone: the
//! entropy of the next-token distribution at each target token, and whether the target is the
//! first of its most likely tokens, summed over the target tokens. Read alone, an example has no
//! padding, so the batch's padding changes nothing.

use proptest::prelude::*;
use rlhf_core::host::to_f64_vec;
use rlhf_data::collate;
use rlhf_models::sft::{Example, target_logprobs_and_stats};
use rlhf_models::{CausalLm, LmBatch};

const VOCAB: usize = 32;

/// The entropy and the count of top-1 targets over one example's target tokens (every response
/// token with a token before it), in `f64` from its logits.
fn reference(model: &CausalLm, (prompt, response): &Example) -> (f64, f64) {
    let ids: Vec<u32> = prompt.iter().chain(response).copied().collect();
    let n = ids.len();
    let input = model.input(&ids, &vec![1; n], 1).unwrap();
    let logits = to_f64_vec(model.forward(&input, None));
    let (mut entropy, mut correct) = (0.0, 0.0);
    for t in prompt.len().max(1)..n {
        let row = &logits[(t - 1) * VOCAB..t * VOCAB];
        let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let log_z = max + row.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
        entropy -= row
            .iter()
            .map(|&l| (l - log_z).exp() * (l - log_z))
            .sum::<f64>();
        let top = row.iter().position(|&l| l == max).unwrap();
        correct += f64::from(u8::from(top == ids[t] as usize));
    }
    (entropy, correct)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// The batch's sums equal the sums of the examples' references, read alone.
    #[test]
    fn the_token_metrics_match_the_reference_whatever_the_padding(
        examples in prop::collection::vec(
            (prop::collection::vec(1u32..32, 0..5), prop::collection::vec(0u32..32, 2..6)),
            1..4,
        ),
        seed in 0u64..4,
    ) {
        let device = rlhf_core::device_from_env().unwrap();
        let shape = rlhf_testkit::tiny_shape(VOCAB);
        let init = || CausalLm::init(&shape, &device).unwrap();
        let model = rlhf_core::train::seeded(&device, seed, init);
        let pairs: Vec<(&[u32], &[u32])> =
            examples.iter().map(|(p, r)| (p.as_slice(), r.as_slice())).collect();
        let batch = LmBatch::from_sequences(&collate(&pairs, 0, None));
        let (_, stats) = target_logprobs_and_stats(&model, &batch, &device).unwrap();
        let got = to_f64_vec(stats);
        let (entropy, correct) = examples
            .iter()
            .map(|e| reference(&model, e))
            .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
        prop_assert!(
            (got[0] - entropy).abs() < 1e-4 * (1.0 + entropy),
            "entropy {} against {entropy}", got[0]
        );
        prop_assert_eq!(got[1], correct);
    }
}
