//! The SFT losses (`rlhf_models::token_loss`) against `f64` references written from their
//! formulas: the mean negative log-likelihood `−(1/N)·Σ log p_t` and Dynamic Fine-Tuning's
//! `−(1/N)·Σ sg(p_t)·log p_t`, their gradients (`−1/N` and `−p_t/N` per target token: DFT's weight
//! carries none), what padded positions hold changing nothing, and extreme log-probs staying finite.

use burn::tensor::{Tensor, TensorData};
use proptest::prelude::*;
use rlhf_core::host::to_f32_vec;
use rlhf_models::{SftLoss, token_loss};

const LOSSES: [SftLoss; 2] = [SftLoss::Nll, SftLoss::Dft];

fn t2(v: &[f64], shape: [usize; 2], device: &burn::tensor::Device) -> Tensor<2> {
    let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    Tensor::from_data(TensorData::new(v, shape), device)
}

/// The loss and its gradient by each log-prob, in `f64`: each target token's term is `−log p`
/// (`nll`) or `−p·log p` with `p` a constant (`dft`), averaged over the target tokens.
fn reference(loss: SftLoss, logp: &[f64], mask: &[bool]) -> (f64, Vec<f64>) {
    let n = mask.iter().filter(|&&m| m).count().max(1) as f64;
    let weight = |l: f64| match loss {
        SftLoss::Nll => 1.0,
        SftLoss::Dft => f64::from(l as f32).exp(),
    };
    let value = logp
        .iter()
        .zip(mask)
        .filter(|(_, m)| **m)
        .map(|(&l, _)| -weight(l) * l)
        .sum::<f64>()
        / n;
    let grad = logp
        .iter()
        .zip(mask)
        .map(|(&l, &m)| if m { -weight(l) / n } else { 0.0 })
        .collect();
    (value, grad)
}

fn run(loss: SftLoss, logp: &[f64], mask: &[bool], shape: [usize; 2]) -> (f64, Vec<f64>) {
    let device = rlhf_core::device_from_env().unwrap().autodiff();
    let m: Vec<f64> = mask.iter().map(|&b| f64::from(u8::from(b))).collect();
    let x = t2(logp, shape, &device).require_grad();
    let l = token_loss(loss, x.clone(), t2(&m, shape, &device));
    let value = f64::from(to_f32_vec(l.clone())[0]);
    let grad = to_f32_vec(x.grad(&l.backward()).unwrap())
        .into_iter()
        .map(f64::from)
        .collect();
    (value, grad)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Each loss and its gradient match the reference, whatever the padded positions hold.
    #[test]
    fn each_loss_and_its_gradient_match_the_reference(
        (batch, seq) in (1usize..4, 1usize..6),
        values in prop::collection::vec(-6.0f64..0.0, 18),
        junk in prop::collection::vec(-50.0f64..50.0, 18),
        mask_bits in prop::collection::vec(any::<bool>(), 18),
        which in 0usize..2,
    ) {
        let n = batch * seq;
        let mut mask = mask_bits[..n].to_vec();
        mask[0] = true;
        let logp = &values[..n];
        let dirty: Vec<f64> = (0..n).map(|k| if mask[k] { logp[k] } else { junk[k] }).collect();
        let loss = LOSSES[which];
        let (value, grad) = run(loss, logp, &mask, [batch, seq]);
        let (want, want_grad) = reference(loss, logp, &mask);
        prop_assert!((value - want).abs() < 1e-5 * (1.0 + want.abs()), "{loss:?}: {value} vs {want}");
        for (g, w) in grad.iter().zip(&want_grad) {
            prop_assert!((g - w).abs() < 1e-6, "{loss:?}: gradient {grad:?} vs {want_grad:?}");
        }
        let (dirty_value, dirty_grad) = run(loss, &dirty, &mask, [batch, seq]);
        prop_assert_eq!(dirty_value, value);
        prop_assert_eq!(dirty_grad, grad);
    }
}

/// Log-probs of −10⁴ and 0 side by side: both losses and their gradients stay finite, and DFT's
/// term of the near-impossible token is 0 (its weight `e^{−10⁴}` underflows), its gradient too.
#[test]
fn extreme_log_probs_stay_finite() {
    let logp = [-1e4, 0.0, -1e-8, -30.0];
    let mask = [true; 4];
    for loss in LOSSES {
        let (value, grad) = run(loss, &logp, &mask, [1, 4]);
        assert!(
            value.is_finite() && grad.iter().all(|g| g.is_finite()),
            "{loss:?}: {value} {grad:?}"
        );
    }
    let (value, grad) = run(SftLoss::Dft, &logp, &mask, [1, 4]);
    // the terms of −10⁴ (weight 0), 0 (log-prob 0), −10⁻⁸ and −30
    let want = (1e-8 + 30.0 * (-30.0f64).exp()) / 4.0;
    assert!((value - want).abs() < 1e-4 * want, "{value} vs {want}");
    assert_eq!(grad[0], 0.0);
    assert!((grad[1] + 0.25).abs() < 1e-6, "{grad:?}");
}
