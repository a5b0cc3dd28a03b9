//! The likelihood verifier. Its logit at a segment's last token is the response's summed token
//! log-probabilities so far — from a plain f64 log-softmax of the LM's logits, row by row — plus
//! the bias; a row's logits do not change with the rows padded beside it; the fitted bias meets
//! the minimum's condition, also far below zero, stays finite on one class and on extreme logits
//! and refuses a non-finite one; save and load keep the numbers; an empty segment or prompt is
//! an error, and so is within-prompt training on data without a right-versus-wrong pair; the
//! within-prompt pair accuracy pairs solutions across evaluation chunks.

use proptest::prelude::*;
use rlhf_core::host::to_f32_vec;
use rlhf_core::train::RunOptions;
use rlhf_models::{CausalLm, TokenInput, TransformerConfig};
use rlhf_reward::{
    LabelledExample, LikelihoodVerifier, RmConfig, StepLoss, evaluate_labelled, fit_bias,
    label_pair_accuracy, label_pairs, segment_logits, train_step_model,
};

const VOCAB: usize = 32;

fn lm(device: &burn::tensor::Device) -> (TransformerConfig, CausalLm) {
    let c = rlhf_testkit::counting::shape(VOCAB, 0.0);
    let m = rlhf_core::train::seeded(device, 9, || CausalLm::init(&c, device).unwrap());
    (c, m)
}

type Row = (Vec<u32>, Vec<Vec<u32>>);

/// `rows` as `segment_logits` borrows them.
fn refs(rows: &[Row]) -> Vec<(&[u32], &[Vec<u32>])> {
    rows.iter()
        .map(|(p, s)| (p.as_slice(), s.as_slice()))
        .collect()
}

/// The spec in f64: for each segment, `b + Σ_{j ≤ its last token} log softmax(logits at the
/// token before j)[token j]`, over the response tokens `j`, from one unpadded row.
fn reference(lm: &CausalLm, bias: f64, (prompt, segments): &Row) -> Vec<f64> {
    let device = rlhf_core::parse_device("flex").unwrap();
    let response: Vec<u32> = segments.concat();
    let ids: Vec<u32> = prompt.iter().chain(&response).copied().collect();
    let input = TokenInput::new(&ids, &vec![1; ids.len()], 1, VOCAB, &device).unwrap();
    let logits: Vec<f64> = to_f32_vec(lm.forward(&input, None))
        .into_iter()
        .map(f64::from)
        .collect();
    let log_softmax = |col: usize, token: u32| {
        let row = &logits[col * VOCAB..(col + 1) * VOCAB];
        let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = row.iter().map(|x| (x - max).exp()).sum();
        row[token as usize] - max - sum.ln()
    };
    let mut running = bias;
    let mut out = Vec::new();
    let mut j = 0;
    for seg in segments {
        for &token in seg {
            running += log_softmax(prompt.len() + j - 1, token);
            j += 1;
        }
        out.push(running);
    }
    out
}

fn rows() -> impl Strategy<Value = Vec<Row>> {
    let tokens = |max: usize| proptest::collection::vec(1u32..VOCAB as u32, 1..max);
    proptest::collection::vec(
        (tokens(5), proptest::collection::vec(tokens(4), 1..4)),
        1..5,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn logits_are_the_running_log_likelihood_plus_the_bias(rows in rows(), bias in -4.0f32..4.0) {
        let device = rlhf_core::parse_device("flex").unwrap();
        let (_, m) = lm(&device);
        let verifier = LikelihoodVerifier::new(m.clone(), bias, &device);
        // all rows in one batch: prompts left-padded and responses right-padded to the longest
        let batched = segment_logits(&verifier, &refs(&rows), 8, &device).unwrap();
        let alone: Vec<Vec<f32>> = rows
            .iter()
            .flat_map(|r| segment_logits(&verifier, &refs(std::slice::from_ref(r)), 1, &device).unwrap())
            .collect();
        for ((row, got), single) in rows.iter().zip(&batched).zip(&alone) {
            let want = reference(&m, f64::from(bias), row);
            prop_assert_eq!(got.len(), want.len());
            for ((g, s), w) in got.iter().zip(single).zip(&want) {
                prop_assert!((f64::from(*g) - w).abs() < 1e-4 * (1.0 + w.abs()), "{} vs {}", g, w);
                prop_assert!((g - s).abs() < 1e-5 * (1.0 + s.abs()), "padded {} alone {}", g, s);
            }
            // a running sum of log-probabilities never rises
            prop_assert!(got.windows(2).all(|w| w[1] <= w[0] + 1e-6));
        }
    }

    #[test]
    fn the_fitted_bias_matches_the_mean_probability_to_the_share_of_true_labels(
        data in proptest::collection::vec((-20.0f64..5.0, any::<bool>()), 2..200),
    ) {
        let (z, y): (Vec<f64>, Vec<bool>) = data.into_iter().unzip();
        prop_assume!(y.iter().any(|&l| l) && y.iter().any(|&l| !l));
        let b = fit_bias(&z, &y).unwrap();
        let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
        let bce = |b: f64| -> f64 {
            z.iter().zip(&y).map(|(z, &y)| {
                let p = sigmoid(z + b);
                -if y { p.ln() } else { (1.0 - p).ln() }
            }).sum::<f64>() / z.len() as f64
        };
        let mean_p = z.iter().map(|z| sigmoid(z + b)).sum::<f64>() / z.len() as f64;
        let share = y.iter().filter(|&&l| l).count() as f64 / y.len() as f64;
        prop_assert!((mean_p - share).abs() < 1e-6, "mean {} share {}", mean_p, share);
        prop_assert!(bce(b) <= bce(b + 1e-3) && bce(b) <= bce(b - 1e-3));
    }
}

/// Where every probability at the minimum is near 0 or 1, the mean probability reaches the share
/// of true labels within 1e-6 while the bias is still off by more than 1e-3: the fit goes on to
/// the minimum (a case proptest found).
#[test]
fn the_fitted_bias_is_the_minimum_where_the_curvature_is_small() {
    let (z, y) = ([0.0, -18.267_689_169_453_956], [false, true]);
    let b = fit_bias(&z, &y).unwrap();
    // the minimum is where σ(b) + σ(b + z₁) = 1, at b = −z₁/2 by symmetry
    assert!((b - 18.267_689_169_453_956 / 2.0).abs() < 1e-6, "{b}");
}

#[test]
fn the_fitted_bias_stays_finite_on_one_class_and_extreme_logits() {
    let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
    let z = [-3.0, -12.0, 0.5, -7.0];
    let b = fit_bias(&z, &[true; 4]).unwrap();
    assert!(
        b.is_finite() && z.iter().all(|z| sigmoid(z + b) > 1.0 - 1e-5),
        "{b}"
    );
    let b = fit_bias(&z, &[false; 4]).unwrap();
    assert!(
        b.is_finite() && z.iter().all(|z| sigmoid(z + b) < 1e-5),
        "{b}"
    );
    for z in [[-1e30, 1e30], [-1e300, -1e300], [f64::MAX, f64::MIN]] {
        assert!(fit_bias(&z, &[true, false]).unwrap().is_finite());
    }
    assert_eq!(fit_bias(&[], &[]).unwrap(), 0.0);
    // long responses: summed log-likelihoods far below zero still reach the minimum
    let z = [-1000.0, -1010.0, -1003.0, -995.0];
    let b = fit_bias(&z, &[true, false, false, true]).unwrap();
    let mean = z.iter().map(|z| sigmoid(z + b)).sum::<f64>() / 4.0;
    assert!(
        (mean - 0.5).abs() < 1e-6,
        "bias {b}: mean probability {mean}"
    );
    // a NaN or infinite logit is an error, not a NaN bias
    for bad in [f64::NAN, f64::NEG_INFINITY] {
        let err = fit_bias(&[-1.0, bad], &[true, false]).unwrap_err();
        assert!(err.to_string().contains("logit 1 is"), "{err}");
    }
}

#[test]
fn save_and_load_keep_the_logits() {
    let device = rlhf_core::parse_device("flex").unwrap();
    let (c, m) = lm(&device);
    let verifier = LikelihoodVerifier::new(m, 1.25, &device);
    let rows: Vec<Row> = vec![
        (vec![3, 4], vec![vec![5, 6], vec![7]]),
        (vec![9], vec![vec![2]]),
    ];
    let dir = tempfile::tempdir().unwrap();
    verifier.save(&c, dir.path()).unwrap();
    let (c2, loaded) = LikelihoodVerifier::load(dir.path(), &device).unwrap();
    assert_eq!(c2.vocab_size, c.vocab_size);
    assert_eq!(loaded.bias(), 1.25);
    assert_eq!(
        segment_logits(&verifier, &refs(&rows), 4, &device).unwrap(),
        segment_logits(&loaded, &refs(&rows), 4, &device).unwrap()
    );
}

#[test]
fn an_empty_segment_or_prompt_is_an_error_not_a_panic() {
    let device = rlhf_core::parse_device("flex").unwrap();
    let (_, m) = lm(&device);
    let verifier = LikelihoodVerifier::new(m, 0.0, &device);
    let rows: Vec<Row> = vec![(vec![3], vec![vec![5]]), (vec![], vec![vec![], vec![4]])];
    let err = segment_logits(&verifier, &refs(&rows), 4, &device).unwrap_err();
    assert!(
        err.to_string().contains("row 1 has an empty segment"),
        "{err}"
    );
    // no segments: no logits
    let rows: Vec<Row> = vec![(vec![3], vec![]), (vec![3], vec![vec![5]])];
    let some = segment_logits(&verifier, &refs(&rows), 4, &device).unwrap();
    assert_eq!(some[0], Vec::<f32>::new());
    assert_eq!(some[1].len(), 1);
    // an empty prompt leaves the first response token without a token to predict it
    let rows: Vec<Row> = vec![(vec![], vec![vec![5, 6]])];
    let err = segment_logits(&verifier, &refs(&rows), 4, &device).unwrap_err();
    assert!(
        err.to_string().contains("row 0 has an empty prompt"),
        "{err}"
    );
}

#[test]
fn the_within_prompt_loss_refuses_data_without_a_pair() {
    let device = rlhf_core::parse_device("flex").unwrap().autodiff();
    let (_, m) = lm(&device);
    let verifier = LikelihoodVerifier::new(m, 0.0, &device);
    // two prompts, each with its solutions labelled one way only
    let example = |p: u32, right: bool| LabelledExample {
        prompt: vec![p],
        segments: vec![vec![5, 6]],
        labels: vec![right],
    };
    let train = [example(3, true), example(3, true), example(4, false)];
    let cfg = RmConfig {
        step_loss: StepLoss::WithinPrompt,
        ..RmConfig::default()
    };
    let err =
        train_step_model(verifier, &train, &[], &cfg, &RunOptions::quiet(), &device).unwrap_err();
    assert!(
        err.to_string()
            .contains("no prompt has a solution labelled right and one labelled wrong"),
        "{err}"
    );
}

/// The within-prompt pair accuracy does not depend on how many rows a forward pass takes: a
/// prompt's solutions split across chunks are still paired.
#[test]
fn the_pair_accuracy_does_not_depend_on_the_chunk_size() {
    let device = rlhf_core::parse_device("flex").unwrap();
    let (_, m) = lm(&device);
    let verifier = LikelihoodVerifier::new(m, 0.0, &device);
    let examples: Vec<LabelledExample> = (0..12u32)
        .map(|i| LabelledExample {
            prompt: vec![1 + i % 3, 2],
            segments: vec![vec![3 + i % 5, 4], vec![5 + i % 7]],
            labels: vec![i % 2 == 0, i % 4 == 0],
        })
        .collect();
    let at = |rows: usize| {
        evaluate_labelled(&verifier, &examples, rows, &device)
            .unwrap()
            .pair_accuracy
            .unwrap()
    };
    let whole = at(12);
    for rows in [1, 5] {
        assert_eq!(at(rows), whole);
    }
    // and it is the share of label_pairs that segment_logits orders, ties half
    let rows: Vec<Row> = examples
        .iter()
        .map(|e| (e.prompt.clone(), e.segments.clone()))
        .collect();
    let logits = segment_logits(&verifier, &refs(&rows), 12, &device).unwrap();
    let pairs = label_pairs(&examples.iter().collect::<Vec<_>>());
    assert!(!pairs.is_empty());
    assert_eq!(label_pair_accuracy(&logits, &pairs), Some(whole));
}
