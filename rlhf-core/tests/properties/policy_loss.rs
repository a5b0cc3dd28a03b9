//! The policy surrogates (PPO/DAPO clip with or without the two-sided cap, GSPO, CISPO, SAPO, VESPO), the five
//! loss aggregations and the truncated importance-sampling weights, against `f64` references
//! written from the formulas, with their gradients and the cases where the definitions coincide.

use proptest::prelude::*;
use rlhf_core::{
    LossAggregation, PolicyLossConfig, PolicyObjective, SapoTemperatures, VespoShape, aggregate,
    policy_loss, truncated_is_weights,
};

use crate::common::*;

const OBJECTIVES: [PolicyObjective; 5] = [
    PolicyObjective::Ppo,
    PolicyObjective::Gspo,
    PolicyObjective::Cispo,
    PolicyObjective::Sapo,
    PolicyObjective::Vespo,
];
const AGGREGATIONS: [LossAggregation; 5] = [
    LossAggregation::Grpo,
    LossAggregation::Dapo,
    LossAggregation::Bnpo,
    LossAggregation::DrGrpo,
    LossAggregation::Luspo,
];

/// One problem in plain numbers: `[batch, seq]` row-major.
struct Problem<'a> {
    batch: usize,
    seq: usize,
    new: &'a [f64],
    old: &'a [f64],
    adv: &'a [f64],
    mask: &'a [bool],
    weights: Option<&'a [f64]>,
}

struct Reference {
    loss: f64,
    clip_low: f64,
    clip_high: f64,
    /// Each row's share of its real tokens clipped at the lower bound (NaN for a row without).
    clip_low_rows: Vec<f64>,
    /// The same at the upper bound.
    clip_high_rows: Vec<f64>,
    ratio_mean: f64,
    /// VESPO's mean over rows of each row's mean `φ` (a row without tokens has `W = 1`: `φ = 1`).
    weight_mean: f64,
}

/// VESPO's `W_i = exp(clamp(Σ_t m·(new − old), ln 10⁻⁸, 20))` of row `i`.
fn product_ratio(p: &Problem, i: usize) -> f64 {
    let s = p.seq;
    let sum: f64 = (i * s..(i + 1) * s)
        .filter(|&k| p.mask[k])
        .map(|k| p.new[k] - p.old[k])
        .sum();
    sum.clamp(1e-8f64.ln(), 20.0).exp()
}

/// VESPO's `φ(W) = e^λ·W^k·e^{−λW}`, `(k, λ)` by the sign of `a` (`_pos` where `a ≥ 0`).
fn gamma_weight(w: f64, a: f64, shape: &VespoShape) -> f64 {
    let (k, lambda) = if a >= 0.0 {
        (shape.k_pos, shape.lambda_pos)
    } else {
        (shape.k_neg, shape.lambda_neg)
    };
    let (k, lambda) = (f64::from(k), f64::from(lambda));
    lambda.exp() * w.powf(k) * (-lambda * w).exp()
}

/// `L = aggregate(w·ℓ)` of the module documentation, in `f64`.
fn aggregate_ref(
    per_token: &[f64],
    mask: &[bool],
    [batch, seq]: [usize; 2],
    how: LossAggregation,
    max_len: usize,
) -> f64 {
    let row_sum = |i: usize| -> f64 {
        (0..seq)
            .filter(|&t| mask[i * seq + t])
            .map(|t| per_token[i * seq + t])
            .sum()
    };
    let row_len = |i: usize| (0..seq).filter(|&t| mask[i * seq + t]).count() as f64;
    let total: f64 = (0..batch).map(row_sum).sum();
    let tokens: f64 = (0..batch).map(row_len).sum();
    match how {
        LossAggregation::Grpo => {
            (0..batch)
                .map(|i| row_sum(i) / row_len(i).max(1.0))
                .sum::<f64>()
                / batch as f64
        }
        LossAggregation::Dapo | LossAggregation::Bnpo => total / tokens.max(1.0),
        LossAggregation::DrGrpo => total / (batch * max_len) as f64,
        LossAggregation::Luspo => (0..batch).map(row_sum).sum::<f64>() / batch as f64,
    }
}

fn reference(p: &Problem, cfg: &PolicyLossConfig) -> Reference {
    let (b, s) = (p.batch, p.seq);
    let (low, high) = (
        1.0 - f64::from(cfg.clip_low),
        1.0 + f64::from(cfg.clip_high),
    );
    let real = |k: usize| p.mask[k];
    let seq_ratio: Vec<f64> = (0..b)
        .map(|i| {
            let ks: Vec<usize> = (i * s..(i + 1) * s).filter(|&k| real(k)).collect();
            let mean =
                ks.iter().map(|&k| p.new[k] - p.old[k]).sum::<f64>() / (ks.len().max(1) as f64);
            mean.exp()
        })
        .collect();
    let mut per_token = vec![0.0; b * s];
    let (mut lo, mut hi, mut ratio_sum, mut n) = (0.0, 0.0, 0.0, 0.0);
    // GSPO's clipped shares: per row (its share of its real tokens), then the mean over rows
    let (mut row_lo, mut row_hi) = (vec![0.0; b], vec![0.0; b]);
    // VESPO's weights, summed per row
    let mut row_phi = vec![0.0; b];
    for k in (0..b * s).filter(|&k| real(k)) {
        let a = p.adv[k];
        let rho = match cfg.objective {
            PolicyObjective::Gspo => seq_ratio[k / s],
            PolicyObjective::Vespo => product_ratio(p, k / s),
            _ => (p.new[k] - p.old[k]).exp(),
        };
        let l = match cfg.objective {
            PolicyObjective::Ppo | PolicyObjective::Gspo => {
                let capped = cfg.delta.map_or(rho, |d| rho.min(f64::from(d)));
                (-a * capped).max(-a * rho.clamp(low, high))
            }
            PolicyObjective::Cispo => -rho.clamp(low, high) * a * p.new[k],
            PolicyObjective::Sapo => {
                let tau = f64::from(if a > 0.0 {
                    cfg.sapo.positive
                } else {
                    cfg.sapo.negative
                });
                -a * 4.0 / tau / (1.0 + (-tau * (rho - 1.0)).exp())
            }
            PolicyObjective::Vespo => {
                let phi = gamma_weight(rho, a, &cfg.vespo);
                row_phi[k / s] += phi;
                -phi * a * p.new[k]
            }
        };
        per_token[k] = l * p.weights.map_or(1.0, |w| w[k]);
        let (is_low, is_high) = match cfg.objective {
            PolicyObjective::Cispo => (rho < low, rho > high),
            PolicyObjective::Sapo | PolicyObjective::Vespo => (false, false),
            _ => (rho < low && a < 0.0, rho > high && a > 0.0),
        };
        lo += f64::from(u8::from(is_low));
        hi += f64::from(u8::from(is_high));
        let len = (k / s * s..(k / s + 1) * s).filter(|&j| real(j)).count() as f64;
        row_lo[k / s] += f64::from(u8::from(is_low)) / len;
        row_hi[k / s] += f64::from(u8::from(is_high)) / len;
        ratio_sum += rho;
        n += 1.0;
    }
    let (clip_low, clip_high) = match cfg.objective {
        PolicyObjective::Gspo => (
            row_lo.iter().sum::<f64>() / b as f64,
            row_hi.iter().sum::<f64>() / b as f64,
        ),
        _ => (lo / n, hi / n),
    };
    let row_len = |i: usize| (i * s..(i + 1) * s).filter(|&k| real(k)).count() as f64;
    let or_nan = |shares: Vec<f64>| -> Vec<f64> {
        (0..b)
            .map(|i| {
                if row_len(i) == 0.0 {
                    f64::NAN
                } else {
                    shares[i]
                }
            })
            .collect()
    };
    let (clip_low_rows, clip_high_rows) = (or_nan(row_lo), or_nan(row_hi));
    let row_phi = |i: usize| {
        if row_len(i) == 0.0 {
            1.0
        } else {
            row_phi[i] / row_len(i)
        }
    };
    Reference {
        loss: aggregate_ref(&per_token, p.mask, [b, s], cfg.aggregation, cfg.max_len),
        clip_low,
        clip_high,
        clip_low_rows,
        clip_high_rows,
        ratio_mean: ratio_sum / n,
        weight_mean: (0..b).map(row_phi).sum::<f64>() / b as f64,
    }
}

/// The ratio of every real token (the sequence ratio for GSPO) lies at least `margin` from
/// either clip bound, so counts are well defined and a finite difference does not straddle a
/// kink.
fn far_from_kinks(p: &Problem, cfg: &PolicyLossConfig, margin: f64) -> bool {
    let (low, high) = (
        1.0 - f64::from(cfg.clip_low),
        1.0 + f64::from(cfg.clip_high),
    );
    let s = p.seq;
    (0..p.batch * s).filter(|&k| p.mask[k]).all(|k| {
        let log_rho = match cfg.objective {
            PolicyObjective::Gspo => {
                let i = k / s;
                let ks: Vec<usize> = (i * s..(i + 1) * s).filter(|&j| p.mask[j]).collect();
                ks.iter().map(|&j| p.new[j] - p.old[j]).sum::<f64>() / ks.len() as f64
            }
            _ => p.new[k] - p.old[k],
        };
        let rho = log_rho.exp();
        let off_cap = cfg
            .delta
            .is_none_or(|d| (rho - f64::from(d)).abs() > margin);
        // SAPO's gate and VESPO's weight are smooth in ρ: only their switch at A = 0 remains
        let smooth = matches!(
            cfg.objective,
            PolicyObjective::Sapo | PolicyObjective::Vespo
        );
        let off_clip =
            smooth || ((rho - low).abs() > margin && (rho - high).abs() > margin && off_cap);
        off_clip && p.adv[k].abs() > margin
    })
}

fn run(p: &Problem, cfg: &PolicyLossConfig, dev: &burn::tensor::Device) -> rlhf_core::PolicyLoss {
    let s = [p.batch, p.seq];
    policy_loss(
        t2(p.new, s, dev),
        t2(p.old, s, dev),
        t2(p.adv, s, dev),
        t2(&mask_f(p.mask), s, dev),
        p.weights.map(|w| t2(w, s, dev)),
        cfg,
    )
}

fn objective() -> impl Strategy<Value = PolicyObjective> {
    prop::sample::select(OBJECTIVES.to_vec())
}

fn aggregation() -> impl Strategy<Value = LossAggregation> {
    prop::sample::select(AGGREGATIONS.to_vec())
}

/// SAPO's temperatures, each in `[0.3, 3]` (the paper's 1 and 1.05 inside).
fn temperatures() -> impl Strategy<Value = SapoTemperatures> {
    (0.3f32..3.0, 0.3f32..3.0)
        .prop_map(|(positive, negative)| SapoTemperatures { positive, negative })
}

/// VESPO's shapes, `k` in `[0, 4]` and `λ` in `[0.5, 4]` (TRL's 2, 3, 3, 2 inside).
fn shapes() -> impl Strategy<Value = VespoShape> {
    (0.0f32..4.0, 0.5f32..4.0, 0.0f32..4.0, 0.5f32..4.0).prop_map(
        |(k_pos, lambda_pos, k_neg, lambda_neg)| VespoShape {
            k_pos,
            lambda_pos,
            k_neg,
            lambda_neg,
        },
    )
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn every_surrogate_and_aggregation_matches_its_reference(
        p in tokens(0.6, 1),
        objective in objective(),
        aggregation in aggregation(),
        clip_low in 0.05f64..0.4,
        extra_high in 0.0f64..0.3,
        max_len in 6usize..12,
        weighted in any::<bool>(),
        delta_above in prop::option::of(0.02f64..0.6),
        sapo in temperatures(),
        vespo in shapes(),
    ) {
        let old: Vec<f64> = p.b.iter().map(|x| x - 1.0).collect();
        let new: Vec<f64> = p.a.iter().zip(&old).map(|(a, o)| o + a).collect();
        let weights: Vec<f64> = p.c.iter().map(|c| 1.0 + c.abs()).collect();
        let problem = Problem { batch: p.batch, seq: p.seq, new: &new, old: &old, adv: &p.c, mask: &p.mask, weights: weighted.then_some(weights.as_slice()) };
        let clip_high = clip_low + extra_high;
        let delta = delta_above.map(|d| (1.0 + clip_high + d) as f32);
        let cfg = PolicyLossConfig { objective, clip_low: clip_low as f32, clip_high: clip_high as f32, delta, aggregation, max_len, sapo, vespo };
        prop_assume!(far_from_kinks(&problem, &cfg, 1e-4));
        let out = run(&problem, &cfg, &device());
        let r = reference(&problem, &cfg);
        assert_close(&[scalar(out.loss)], &[r.loss], TOL)?;
        assert_close(&[scalar(out.clip_low)], &[r.clip_low], TOL)?;
        assert_close(&[scalar(out.clip_high)], &[r.clip_high], TOL)?;
        // each response's clipped shares, NaN where it has no real token
        for (got, want) in [(out.clip_low_rows, &r.clip_low_rows), (out.clip_high_rows, &r.clip_high_rows)] {
            let got = host(got);
            prop_assert_eq!(got.iter().map(|v| v.is_nan()).collect::<Vec<_>>(), want.iter().map(|v| v.is_nan()).collect::<Vec<_>>());
            let keep = |v: &Vec<f64>| v.iter().copied().filter(|x| !x.is_nan()).collect::<Vec<f64>>();
            assert_close(&keep(&got), &keep(want), TOL)?;
        }
        assert_close(&[scalar(out.ratio_mean)], &[r.ratio_mean], TOL)?;
        prop_assert_eq!(out.weight_mean.is_some(), objective == PolicyObjective::Vespo);
        if let Some(phi) = out.weight_mean {
            assert_close(&[scalar(phi)], &[r.weight_mean], TOL)?;
        }
    }

    #[test]
    fn every_surrogate_gradient_matches_central_differences(
        p in tokens(0.6, 1),
        objective in objective(),
        aggregation in aggregation(),
        clip_low in 0.1f64..0.3,
        extra_high in 0.0f64..0.3,
        delta_above in prop::option::of(0.05f64..0.5),
        sapo in temperatures(),
        vespo in shapes(),
    ) {
        let old = p.b.clone();
        let new: Vec<f64> = p.a.iter().zip(&old).map(|(a, o)| o + a).collect();
        let clip_high = clip_low + extra_high;
        let delta = delta_above.map(|d| (1.0 + clip_high + d) as f32);
        let cfg = PolicyLossConfig { objective, clip_low: clip_low as f32, clip_high: clip_high as f32, delta, aggregation, max_len: 8, sapo, vespo };
        let problem = Problem { batch: p.batch, seq: p.seq, new: &new, old: &old, adv: &p.c, mask: &p.mask, weights: None };
        prop_assume!(far_from_kinks(&problem, &cfg, 2e-2));
        let dev = device().autodiff();
        let s = p.shape();
        let x = t2(&new, s, &dev).require_grad();
        let loss = policy_loss(x.clone(), t2(&old, s, &dev), t2(&p.c, s, &dev), t2(&p.maskf(), s, &dev), None, &cfg).loss;
        let grad = host(x.grad(&loss.backward()).expect("the loss depends on the new log-probs"));
        let h = 1e-5;
        let fd: Vec<f64> = (0..new.len()).map(|i| {
            let (mut up, mut down) = (new.clone(), new.clone());
            up[i] += h;
            down[i] -= h;
            let at = |v: &[f64]| reference(&Problem { new: v, ..problem_like(&problem) }, &cfg).loss;
            (at(&up) - at(&down)) / (2.0 * h)
        }).collect();
        // CISPO's and VESPO's weights are constants of the surrogate: the gradient is
        // −w·A·∇logπ only
        let expected = if matches!(objective, PolicyObjective::Cispo | PolicyObjective::Vespo) {
            detached_weight_gradient(&problem, &cfg)
        } else {
            fd
        };
        assert_close(&grad, &expected, 1e-3)?;
    }

    /// Equal lengths (every row `L_max` real tokens) and the symmetric clip: GRPO's per-response
    /// mean, DAPO's and BNPO's token mean and Dr. GRPO's constant are one loss with one gradient,
    /// and LUSPO's per-response sum is `L_max` times it.
    #[test]
    fn the_aggregations_coincide_on_equal_lengths(
        batch in 1usize..4,
        seq in 1usize..6,
        values in prop::collection::vec(-0.6f64..0.6, 45),
        eps in 0.05f64..0.3,
    ) {
        let n = batch * seq;
        let new: Vec<f64> = values[..n].to_vec();
        let old: Vec<f64> = values[n..2 * n].iter().map(|v| v * 0.5).collect();
        let adv: Vec<f64> = values[2 * n..3 * n].iter().map(|v| v * 3.0).collect();
        let mask = vec![1.0; n];
        let dev = device().autodiff();
        let s = [batch, seq];
        let outs: Vec<(f64, Vec<f64>)> = AGGREGATIONS.iter().map(|&aggregation| {
            let cfg = PolicyLossConfig { aggregation, max_len: seq, ..PolicyLossConfig::ppo(eps as f32) };
            let x = t2(&new, s, &dev).require_grad();
            let loss = policy_loss(x.clone(), t2(&old, s, &dev), t2(&adv, s, &dev), t2(&mask, s, &dev), None, &cfg).loss;
            let value = scalar(loss.clone());
            (value, host(x.grad(&loss.backward()).unwrap()))
        }).collect();
        for (&aggregation, (value, grad)) in AGGREGATIONS.iter().zip(&outs).skip(1) {
            let times = if aggregation == LossAggregation::Luspo { seq as f64 } else { 1.0 };
            let scaled: Vec<f64> = outs[0].1.iter().map(|g| g * times).collect();
            assert_close(&[*value], &[outs[0].0 * times], 1e-5)?;
            assert_close(grad, &scaled, 1e-5)?;
        }
    }

    /// On-policy (`ρ = 1`), CISPO's, SAPO's and VESPO's gradients are PPO's: `−A·∇logπ`
    /// aggregated alike (SAPO's gate has slope `4·σ(0)·(1 − σ(0)) = 1` there, whatever its
    /// temperatures, and VESPO's `φ(1) = 1`, whatever its shape).
    #[test]
    fn cispo_sapo_vespo_and_ppo_have_one_gradient_on_policy(
        p in tokens(0.6, 1),
        aggregation in aggregation(),
        sapo in temperatures(),
        vespo in shapes(),
    ) {
        let dev = device().autodiff();
        let s = p.shape();
        let grad_of = |objective: PolicyObjective| {
            let cfg = PolicyLossConfig { objective, aggregation, max_len: 8, sapo, vespo, ..PolicyLossConfig::ppo(0.2) };
            let x = t2(&p.a, s, &dev).require_grad();
            let loss = policy_loss(x.clone(), t2(&p.a, s, &dev), t2(&p.c, s, &dev), t2(&p.maskf(), s, &dev), None, &cfg).loss;
            host(x.grad(&loss.backward()).unwrap())
        };
        let ppo = grad_of(PolicyObjective::Ppo);
        assert_close(&grad_of(PolicyObjective::Cispo), &ppo, 1e-5)?;
        assert_close(&grad_of(PolicyObjective::Sapo), &ppo, 1e-5)?;
        assert_close(&grad_of(PolicyObjective::Vespo), &ppo, 1e-5)?;
    }

    /// With one real token per response, GSPO's sequence ratio is the token ratio.
    #[test]
    fn gspo_on_one_token_responses_is_ppo(
        batch in 1usize..5,
        values in prop::collection::vec(-0.6f64..0.6, 15),
        eps in 0.05f64..0.3,
    ) {
        let dev = device();
        let s = [batch, 1];
        let (new, old, adv) = (&values[..batch], &values[5..5 + batch], &values[10..10 + batch]);
        let loss = |objective| {
            let cfg = PolicyLossConfig { objective, ..PolicyLossConfig::ppo(eps as f32) };
            scalar(policy_loss(t2(new, s, &dev), t2(old, s, &dev), t2(adv, s, &dev), t2(&vec![1.0; batch], s, &dev), None, &cfg).loss)
        };
        assert_close(&[loss(PolicyObjective::Gspo)], &[loss(PolicyObjective::Ppo)], 1e-6)?;
    }

    /// What masked positions hold — junk log-probs, advantages, weights — changes neither the loss
    /// nor the gradient of any surrogate.
    #[test]
    fn masked_positions_change_no_loss_and_no_gradient(
        p in tokens(0.6, 1),
        objective in objective(),
        aggregation in aggregation(),
    ) {
        let dev = device().autodiff();
        let s = p.shape();
        let cfg = PolicyLossConfig { objective, aggregation, max_len: 8, ..PolicyLossConfig::ppo(0.2) };
        let weights: Vec<f64> = p.c.iter().map(|c| 1.0 + c.abs()).collect();
        let eval = |new: &[f64], old: &[f64], adv: &[f64], w: &[f64]| {
            let x = t2(new, s, &dev).require_grad();
            let loss = policy_loss(x.clone(), t2(old, s, &dev), t2(adv, s, &dev), t2(&p.maskf(), s, &dev), Some(t2(w, s, &dev)), &cfg).loss;
            let value = scalar(loss.clone());
            let grad = host(x.grad(&loss.backward()).unwrap());
            // the gradient at masked positions is 0 either way; compare the real ones
            (value, grad)
        };
        let clean = eval(&p.a, &p.b, &p.c, &weights);
        let dirty = eval(&p.corrupt(&p.a), &p.corrupt(&p.b), &p.corrupt(&p.c), &p.corrupt(&weights));
        prop_assert_eq!(clean.0, dirty.0);
        prop_assert_eq!(clean.1, dirty.1);
    }

    /// `w = min(exp(logπ_old − logπ_sampler), C)` at real tokens, 0 at masked ones.
    #[test]
    fn truncated_is_weights_match_reference(p in tokens(3.0, 1), cap in 1.0f64..4.0) {
        let dev = device();
        let s = p.shape();
        let w = host(truncated_is_weights(t2(&p.a, s, &dev), t2(&p.b, s, &dev), t2(&p.maskf(), s, &dev), cap as f32));
        let expected: Vec<f64> = (0..p.a.len()).map(|k| if p.mask[k] { (p.a[k] - p.b[k]).exp().min(cap) } else { 0.0 }).collect();
        assert_close(&w, &expected, TOL)?;
    }
}

fn problem_like<'a>(p: &Problem<'a>) -> Problem<'a> {
    Problem {
        batch: p.batch,
        seq: p.seq,
        new: p.new,
        old: p.old,
        adv: p.adv,
        mask: p.mask,
        weights: p.weights,
    }
}

/// `∂L/∂logπ_{i,t}` of CISPO and VESPO: `−w·A` times the aggregation's weight of token `(i, t)`,
/// with the detached weight `w` CISPO's `clip(ρ)` or VESPO's `φ(W_i)`.
fn detached_weight_gradient(p: &Problem, cfg: &PolicyLossConfig) -> Vec<f64> {
    let (b, s) = (p.batch, p.seq);
    let (low, high) = (
        1.0 - f64::from(cfg.clip_low),
        1.0 + f64::from(cfg.clip_high),
    );
    // the aggregation is linear: its weight of a token is the loss of a one-hot per-token loss
    (0..b * s)
        .map(|k| {
            if !p.mask[k] {
                return 0.0;
            }
            let mut one_hot = vec![0.0; b * s];
            one_hot[k] = 1.0;
            let weight = aggregate_ref(&one_hot, p.mask, [b, s], cfg.aggregation, cfg.max_len);
            let w = match cfg.objective {
                PolicyObjective::Vespo => {
                    gamma_weight(product_ratio(p, k / s), p.adv[k], &cfg.vespo)
                }
                _ => (p.new[k] - p.old[k]).exp().clamp(low, high),
            };
            -w * p.adv[k] * weight
        })
        .collect()
}

/// Log-ratios of ±10⁴ and log-probs of −10⁴: every surrogate and its gradient stay finite, with
/// and without the two-sided cap.
#[test]
fn extreme_log_ratios_give_finite_losses() {
    let dev = device().autodiff();
    let new = [1e4, -1e4, 0.0, -1e4, 1e4, -3.0];
    let old = [-1e4, 1e4, 0.0, 0.0, 0.0, -3.0];
    let adv = [1.0, -1.0, 2.0, -5.0, 5.0, 0.5];
    let mask = [1.0, 1.0, 1.0, 1.0, 1.0, 0.0];
    for (objective, delta) in OBJECTIVES
        .into_iter()
        .flat_map(|o| [(o, None), (o, Some(1.5))])
    {
        for aggregation in AGGREGATIONS {
            let cfg = PolicyLossConfig {
                objective,
                aggregation,
                max_len: 3,
                delta,
                ..PolicyLossConfig::ppo(0.2)
            };
            let x = t2(&new, [2, 3], &dev).require_grad();
            let out = policy_loss(
                x.clone(),
                t2(&old, [2, 3], &dev),
                t2(&adv, [2, 3], &dev),
                t2(&mask, [2, 3], &dev),
                None,
                &cfg,
            );
            let grad = host(x.grad(&out.loss.backward()).unwrap());
            assert!(
                grad.iter().all(|g| g.is_finite()),
                "{objective:?}/{aggregation:?}/δ {delta:?}: gradient {grad:?}"
            );
            for (name, v) in [
                ("loss", out.loss),
                ("ratio", out.ratio_mean),
                ("approxkl", out.approxkl),
            ] {
                let v = scalar(v);
                assert!(
                    v.is_finite(),
                    "{objective:?}/{aggregation:?}/δ {delta:?}: {name} = {v}"
                );
            }
        }
    }
}

/// `aggregate` on its own: an empty mask gives 0 whatever the values, and a ragged mask agrees
/// with the reference. (That `clipped_policy_loss` is the symmetric, token-mean case is checked
/// against its own f64 reference in `ppo.rs`.)
#[test]
fn aggregate_matches_its_reference_and_an_empty_mask_gives_zero() {
    let dev = device();
    let t = |v: &[f64]| t2(v, [2, 3], &dev);
    // an empty mask aggregates to 0 (every normaliser floored at 1), whatever the values
    for how in AGGREGATIONS {
        let got = scalar(aggregate(t(&[f64::NAN; 6]), t(&[0.0; 6]), how, 3));
        assert_eq!(got, 0.0, "{how:?}");
    }
    // and the aggregation function on its own agrees with the reference
    let per_token = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let m = [true, true, false, true, false, false];
    for how in AGGREGATIONS {
        let got = scalar(aggregate(t(&per_token), t(&mask_f(&m)), how, 4));
        let want = aggregate_ref(&per_token, &m, [2, 3], how, 4);
        assert!((got - want).abs() < 1e-6, "{how:?}: {got} vs {want}");
    }
}

/// VESPO at the edges of its definition (shape `k_pos` 0.1, `λ_pos` 3, `k_neg` 0.1, `λ_neg` 2,
/// small powers so that a ratio held at its floor still weighs; every new log-prob −1, so a
/// token's loss is `φ·A`):
/// - one whose log-ratios sum to −30 is held at `W = 10⁻⁸`: `φ_neg = e^{2 − 0.1·18.42} = 1.17`
///   (unheld, `e^{2 − 3} = 0.37`; held at −20, 1);
/// - token log-ratios of +30 and −25 are each held at ±20 before the sum, so `W = 1` and `φ = 1`
///   (the unheld sum, 5, would give `φ ≈ 0`);
/// - `A = 0` takes the `_pos` shape (only `vespo/phi_seq_mean` can tell);
/// - a NaN old log-prob makes its response's `φ` 0 (a NaN held at −20 would give `e^{3 − 2} = 2.7`),
///   and the loss stays finite;
/// - a response without tokens counts `φ(1) = 1` in the mean;
/// - a response whose log-ratios sum to 25 is held at `W = e^20`, where `φ = 0` (as it would be
///   unheld: the ceiling only keeps `W` finite).
#[test]
fn vespo_holds_its_ratio_as_trl_does() {
    let dev = device();
    let shape = VespoShape {
        k_pos: 0.1,
        lambda_pos: 3.0,
        k_neg: 0.1,
        lambda_neg: 2.0,
    };
    let diffs = [
        15.0,
        10.0,
        -15.0,
        -15.0,
        0.1,
        0.2,
        30.0,
        -25.0,
        f64::NAN,
        0.0,
        0.5,
        0.5,
    ];
    let adv = [1.0, 1.0, -1.0, -1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
    let mask = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0];
    let new = [-1.0; 12];
    let old: Vec<f64> = diffs.iter().map(|d| -1.0 - d).collect();
    let cfg = PolicyLossConfig {
        objective: PolicyObjective::Vespo,
        vespo: shape,
        ..PolicyLossConfig::ppo(0.2)
    };
    let out = policy_loss(
        t2(&new, [6, 2], &dev),
        t2(&old, [6, 2], &dev),
        t2(&adv, [6, 2], &dev),
        t2(&mask, [6, 2], &dev),
        None,
        &cfg,
    );
    let phi_floor = (2.0 + 0.1 * 1e-8f64.ln() - 2.0 * 1e-8).exp();
    let phi_zero_adv = (3.0 + 0.1 * 0.3 - 3.0 * 0.3f64.exp()).exp();
    // per token φ·A over the 10 real tokens: rows 0 (φ 0), 1 (−φ_floor each), 2 (A 0), 3 (1
    // each), 4 (φ 0)
    let loss = (-2.0 * phi_floor + 2.0) / 10.0;
    assert_close(&[scalar(out.loss)], &[loss], 1e-5).unwrap();
    // rows 0–4, and the empty row 5 at φ(1) = 1
    let phi_mean = (phi_floor + phi_zero_adv + 1.0 + 1.0) / 6.0;
    let got = scalar(out.weight_mean.expect("vespo logs its weight"));
    assert_close(&[got], &[phi_mean], 1e-5).unwrap();
    // the _neg shape at A = 0 would give another mean
    let phi_neg = (2.0 + 0.1 * 0.3 - 2.0 * 0.3f64.exp()).exp();
    assert!((phi_neg - phi_zero_adv).abs() > 0.1);
}
