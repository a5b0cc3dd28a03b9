//! Reward-model losses.

use burn::tensor::{Bool, Tensor, TensorData, activation};

/// Bradley–Terry pair loss `mean[−log σ(r_c − r_r − margin)]`.
///
/// `chosen`, `rejected`: `[batch]` scores; `margin`: optional `[batch]` (Llama 2's margin from
/// the labellers' confidence). Returns `[1]`.
pub fn bradley_terry_loss(
    chosen: Tensor<1>,
    rejected: Tensor<1>,
    margin: Option<Tensor<1>>,
) -> Tensor<1> {
    let mut diff = chosen.sub(rejected);
    if let Some(m) = margin {
        diff = diff.sub(m);
    }
    activation::log_sigmoid(diff).mean().neg()
}

/// K-wise Plackett–Luce ranking loss for `y_1 ≻ … ≻ y_K`:
/// `mean over rows of −Σ_{i<K} log( e^{r_i} / Σ_{j≥i} e^{r_j} )`.
///
/// `scores`: `[batch, K]`, each row ordered best first. Returns `[1]`. For K = 2 it equals the
/// Bradley–Terry loss.
pub fn plackett_luce_loss(scores: Tensor<2>) -> Tensor<1> {
    let [_, k] = scores.dims();
    if k < 2 {
        // a single response has nothing to be ranked against
        return Tensor::zeros([1], &scores.device());
    }
    let log_suffix = reverse_log_cumsum_exp(scores.clone());
    // The last position contributes log(e^{r_K}/e^{r_K}) = 0 and is left out exactly.
    let terms = scores.sub(log_suffix).narrow(1, 0, k - 1);
    terms.sum_dim(1).mean().neg()
}

/// `out[b, i] = log Σ_{j≥i} e^{x[b, j]}`, the reversed cumulative log-sum-exp along dim 1.
///
/// Each suffix is shifted by its *own* maximum, so its largest term is `e^0 = 1` and no suffix
/// can underflow to `log 0`, whatever the gaps between scores (shifting every suffix by the row's
/// maximum makes the suffixes below a top score ~88 higher sum to 0 in f32). Built from a
/// `[batch, K, K]` upper-triangular view of the row, which is cheap for the K of ranked data.
/// `x`: `[batch, K]` → `[batch, K]`.
pub fn reverse_log_cumsum_exp(x: Tensor<2>) -> Tensor<2> {
    let [b, k] = x.dims();
    let device = x.device();
    // suffix[b, i, j] = x[b, j] for j ≥ i; the lower triangle (j < i) is left out
    let rows = x.reshape([b, 1, k]).expand([b, k, k]);
    let lower: Vec<bool> = (0..k * k).map(|ij| ij % k < ij / k).collect(); // j < i
    let outside =
        Tensor::<3, Bool>::from_data(TensorData::new(lower, [1, k, k]), &device).expand([b, k, k]);
    let shift = rows
        .clone()
        .mask_fill(outside.clone(), f32::NEG_INFINITY)
        .max_dim(2)
        .detach(); // [b, k, 1]: each suffix's maximum, a constant of the formula
    // the left-out entries are set to 0 before `exp` as well as after it, so that neither the
    // forward pass nor the gradient ever sees an overflowing exponential
    let terms = rows
        .sub(shift.clone())
        .mask_fill(outside.clone(), 0.0)
        .exp()
        .mask_fill(outside, 0.0);
    terms.sum_dim(2).log().add(shift).reshape([b, k])
}

/// The centering term `η·mean over rows of (Σ_k r_k)²`, which keeps each prompt's scores near 0
/// (for pairs, TRL's `center_rewards_coefficient` term `η·mean[(r_c + r_r)²]`).
///
/// `scores`: `[batch, K]`. Returns `[1]`.
pub fn centering_penalty(scores: Tensor<2>, eta: f32) -> Tensor<1> {
    scores.sum_dim(1).square().mean().mul_scalar(eta)
}

/// Binary cross-entropy on logits, averaged over the positions where `mask` is 1:
/// `mean_mask[−(y·log σ(z) + (1 − y)·log σ(−z))]`.
///
/// The ORM's correctness loss (one logit per response) and the PRM's step loss (one logit per
/// step delimiter). `logits`, `labels` (0/1), `mask`: `[batch, n]`. Masked positions never change
/// the result, whatever they hold. Returns `[1]`.
pub fn binary_cross_entropy(logits: Tensor<2>, labels: Tensor<2>, mask: Tensor<2>) -> Tensor<1> {
    let pos = activation::log_sigmoid(logits.clone());
    let neg = activation::log_sigmoid(logits.neg());
    let ll = labels
        .clone()
        .mul(pos)
        .add(labels.neg().add_scalar(1.0).mul(neg));
    rlhf_core::masked_mean(ll, mask).neg()
}

/// How a PRM turns step probabilities into one sequence score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepAggregate {
    /// The weakest step: `min_s σ(z_s)`.
    Min,
    /// All steps right: `Π_s σ(z_s)`.
    Product,
    /// The last step's probability.
    Last,
}

/// A PRM's sequence score from its step logits: `σ(z_s)` aggregated over the steps where `mask`
/// is 1 (`[batch, steps]` → `[batch]`). Masked steps never change the score. A row without any
/// step scores 1 under `Min` and `Product` (no step is wrong); `Last` needs at least one step.
pub fn prm_sequence_score(
    step_logits: Tensor<2>,
    mask: Tensor<2>,
    agg: StepAggregate,
) -> Tensor<1> {
    let [b, _] = step_logits.dims();
    let probs = activation::sigmoid(step_logits);
    match agg {
        // masked steps become 1, which neither the min nor the product can see
        StepAggregate::Min => {
            let filled = rlhf_core::zero_masked(probs.sub_scalar(1.0), mask).add_scalar(1.0);
            filled.min_dim(1).reshape([b])
        }
        StepAggregate::Product => {
            let logp = rlhf_core::zero_masked(probs.log(), mask);
            logp.sum_dim(1).exp().reshape([b])
        }
        StepAggregate::Last => rlhf_models::gather_last(probs, mask),
    }
}

/// Share of pairs with `r_c > r_r` (ties count as wrong). Returns `[1]`.
pub fn pair_accuracy(chosen: Tensor<1>, rejected: Tensor<1>) -> Tensor<1> {
    chosen.greater(rejected).float().mean()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rlhf_core::host::tensor_from_f64;

    fn t1(v: &[f64]) -> Tensor<1> {
        tensor_from_f64(v, [v.len()], &rlhf_core::device_from_env().unwrap())
    }

    fn t2(v: &[f64], k: usize) -> Tensor<2> {
        tensor_from_f64(v, [v.len() / k, k], &rlhf_core::device_from_env().unwrap())
    }

    fn s(x: Tensor<1>) -> f64 {
        f64::from(x.into_scalar::<f32>())
    }

    fn log_sigmoid(x: f64) -> f64 {
        -(1.0 + (-x).exp()).ln()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn bradley_terry_matches_reference(pairs in prop::collection::vec((-5.0f64..5.0, -5.0f64..5.0, 0.0f64..2.0), 1..8)) {
            let c: Vec<f64> = pairs.iter().map(|p| p.0).collect();
            let r: Vec<f64> = pairs.iter().map(|p| p.1).collect();
            let m: Vec<f64> = pairs.iter().map(|p| p.2).collect();
            let n = pairs.len() as f64;
            let plain: f64 = pairs.iter().map(|p| -log_sigmoid(p.0 - p.1)).sum::<f64>() / n;
            let margin: f64 = pairs.iter().map(|p| -log_sigmoid(p.0 - p.1 - p.2)).sum::<f64>() / n;
            prop_assert!((s(bradley_terry_loss(t1(&c), t1(&r), None)) - plain).abs() < 1e-4 * (1.0 + plain));
            prop_assert!((s(bradley_terry_loss(t1(&c), t1(&r), Some(t1(&m)))) - margin).abs() < 1e-4 * (1.0 + margin));
            // a margin asks for more separation: the loss can only grow
            prop_assert!(margin >= plain - 1e-12);
            // swapping chosen and rejected mirrors the loss: L(c, r) − L(r, c) = −mean(c − r)
            let swapped = s(bradley_terry_loss(t1(&r), t1(&c), None));
            let mean_diff = pairs.iter().map(|p| p.0 - p.1).sum::<f64>() / n;
            prop_assert!((plain - swapped + mean_diff).abs() < 1e-4 * (1.0 + plain.abs() + swapped.abs()));
        }

        #[test]
        fn bce_matches_reference_and_ignores_masked_positions(
            rows in prop::collection::vec((-6.0f64..6.0, any::<bool>(), any::<bool>()), 1..12),
            junk in -1e6f64..1e6,
        ) {
            let z: Vec<f64> = rows.iter().map(|r| r.0).collect();
            let y: Vec<f64> = rows.iter().map(|r| f64::from(u8::from(r.1))).collect();
            let mut m: Vec<f64> = rows.iter().map(|r| f64::from(u8::from(r.2))).collect();
            m[0] = 1.0;
            let n: f64 = m.iter().sum();
            let expected = rows.iter().zip(&m).map(|(r, mm)| {
                let yy = f64::from(u8::from(r.1));
                mm * -(yy * log_sigmoid(r.0) + (1.0 - yy) * log_sigmoid(-r.0))
            }).sum::<f64>() / n;
            let k = z.len();
            let got = s(binary_cross_entropy(t2(&z, k), t2(&y, k), t2(&m, k)));
            prop_assert!((got - expected).abs() < 1e-4 * (1.0 + expected), "{} vs {}", got, expected);
            // junk logits at masked positions change nothing
            let zj: Vec<f64> = z.iter().zip(&m).map(|(v, mm)| if *mm == 0.0 { junk } else { *v }).collect();
            let again = s(binary_cross_entropy(t2(&zj, k), t2(&y, k), t2(&m, k)));
            prop_assert_eq!(got, again);
        }

        #[test]
        fn prm_aggregates_match_reference(
            rows in prop::collection::vec(prop::collection::vec((-5.0f64..5.0, any::<bool>()), 4), 1..5),
        ) {
            let k = 4;
            let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
            let z: Vec<f64> = rows.iter().flat_map(|r| r.iter().map(|c| c.0)).collect();
            // every row keeps its first step
            let m: Vec<f64> = rows.iter().flat_map(|r| r.iter().enumerate().map(|(i, c)| f64::from(u8::from(i == 0 || c.1)))).collect();
            for agg in [StepAggregate::Min, StepAggregate::Product, StepAggregate::Last] {
                let got = rlhf_core::host::to_f64_vec(prm_sequence_score(t2(&z, k), t2(&m, k), agg));
                for (b, row) in rows.iter().enumerate() {
                    let kept: Vec<f64> = (0..k).filter(|&i| m[b * k + i] == 1.0).map(|i| sig(row[i].0)).collect();
                    let expected = match agg {
                        StepAggregate::Min => kept.iter().cloned().fold(f64::INFINITY, f64::min),
                        StepAggregate::Product => kept.iter().product(),
                        StepAggregate::Last => *kept.last().unwrap(),
                    };
                    prop_assert!((got[b] - expected).abs() < 1e-5, "{:?}: {} vs {}", agg, got[b], expected);
                    // min ≥ product, both in (0, 1]
                    prop_assert!(expected > 0.0 && expected <= 1.0);
                }
            }
        }

        #[test]
        fn plackett_luce_matches_reference_and_equals_bt_at_k2(k in 2usize..6, rows in prop::collection::vec(prop::collection::vec(-5.0f64..5.0, 6), 1..5)) {
            let flat: Vec<f64> = rows.iter().flat_map(|r| r[..k].to_vec()).collect();
            let expected = rows.iter().map(|r| {
                let r = &r[..k];
                -(0..k - 1).map(|i| r[i] - r[i..].iter().map(|x| x.exp()).sum::<f64>().ln()).sum::<f64>()
            }).sum::<f64>() / rows.len() as f64;
            let got = s(plackett_luce_loss(t2(&flat, k)));
            prop_assert!((got - expected).abs() < 1e-4 * (1.0 + expected.abs()), "{} vs {}", got, expected);
            if k == 2 {
                let c: Vec<f64> = rows.iter().map(|r| r[0]).collect();
                let r: Vec<f64> = rows.iter().map(|r| r[1]).collect();
                prop_assert!((got - s(bradley_terry_loss(t1(&c), t1(&r), None))).abs() < 1e-5 * (1.0 + got));
            }
        }

        /// The suffix log-sum-exp must stay finite whatever the gaps between scores: subtracting
        /// only the row's maximum makes every suffix below the top underflow to log 0 once the
        /// top score is ~88 above the rest.
        #[test]
        fn plackett_luce_is_finite_and_exact_for_score_gaps_up_to_1e4(
            k in 2usize..7,
            rows in prop::collection::vec(prop::collection::vec(-1e4f64..1e4, 7), 1..4),
        ) {
            let flat: Vec<f64> = rows.iter().flat_map(|r| r[..k].to_vec()).collect();
            // f64 reference: log Σ_{j≥i} e^{r_j} with the suffix's own maximum taken out
            let expected = rows.iter().map(|r| {
                let r = &r[..k];
                -(0..k - 1).map(|i| {
                    let m = r[i..].iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    r[i] - (m + r[i..].iter().map(|x| (x - m).exp()).sum::<f64>().ln())
                }).sum::<f64>()
            }).sum::<f64>() / rows.len() as f64;
            let got = s(plackett_luce_loss(t2(&flat, k)));
            prop_assert!(got.is_finite(), "{} for {:?}", got, rows);
            // scores of 1e4 in f32 carry about 1e-3 of rounding each
            prop_assert!((got - expected).abs() < 1e-3 * (1.0 + expected.abs()) + 5e-3 * k as f64, "{} vs {}", got, expected);
        }

        #[test]
        fn centering_matches_reference_and_is_symmetric(
            pairs in prop::collection::vec((-5.0f64..5.0, -5.0f64..5.0), 1..8),
            eta in 0.0f64..0.1,
        ) {
            let flat: Vec<f64> = pairs.iter().flat_map(|p| [p.0, p.1]).collect();
            // η·mean[(r_c + r_r)²]
            let reference = eta * pairs.iter().map(|p| (p.0 + p.1).powi(2)).sum::<f64>() / pairs.len() as f64;
            let got = s(centering_penalty(t2(&flat, 2), eta as f32));
            prop_assert!((got - reference).abs() < 1e-4 * (1.0 + reference));
            // it does not care which response is the chosen one
            let swapped: Vec<f64> = pairs.iter().flat_map(|p| [p.1, p.0]).collect();
            let swapped = s(centering_penalty(t2(&swapped, 2), eta as f32));
            prop_assert!((got - swapped).abs() < 1e-6 * (1.0 + got));
            // scores centred pairwise (r = −c) cost nothing
            let centred: Vec<f64> = pairs.iter().flat_map(|p| [p.0, -p.0]).collect();
            prop_assert!(s(centering_penalty(t2(&centred, 2), eta as f32)).abs() < 1e-6);
        }

        #[test]
        fn loss_falls_as_the_margin_between_chosen_and_rejected_grows(base in -3.0f64..3.0, gap in 0.0f64..3.0, extra in 0.01f64..2.0) {
            let near = s(bradley_terry_loss(t1(&[base + gap]), t1(&[base]), None));
            let far = s(bradley_terry_loss(t1(&[base + gap + extra]), t1(&[base]), None));
            prop_assert!(far < near);
        }
    }

    /// The top score far above the rest: the first term is ≈ 0 and the loss is the K = 2 loss of
    /// the remaining pair, `−log σ(0 − (−1)) = log(1 + e^{−1}) ≈ 0.3133`.
    #[test]
    fn plackett_luce_with_a_dominant_top_score() {
        let got = s(plackett_luce_loss(t2(&[200.0, 0.0, -1.0], 3)));
        assert!((got - 0.313_261_7).abs() < 1e-5, "{got}");
    }

    #[test]
    fn centering_and_accuracy() {
        assert!(
            (s(centering_penalty(t2(&[1.0, 0.5, -2.0, 1.0], 2), 0.01)) - 0.01 * (2.25 + 1.0) / 2.0)
                .abs()
                < 1e-7
        );
        assert_eq!(
            s(pair_accuracy(t1(&[1.0, 0.0, 2.0]), t1(&[0.0, 0.0, 3.0]))),
            f64::from(1.0f32 / 3.0)
        );
    }
}
