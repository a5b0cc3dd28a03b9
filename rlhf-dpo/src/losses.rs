//! The DPO family and EXO. Every loss returns one value per example (`[batch]`); trainers take
//! the mean.
//!
//! Notation: `h = [logπ(y_c) − logπ_ref(y_c)] − [logπ(y_r) − logπ_ref(y_r)]` with sequence
//! log-probs summed over response tokens, and `z = β·h`.

use burn::tensor::{Tensor, activation};

/// Sequence log-probs of a batch of preference pairs under the policy and the frozen reference,
/// each `[batch]`.
#[derive(Debug, Clone)]
pub struct PairLogps {
    /// `logπ(y_c | x)`.
    pub chosen: Tensor<1>,
    /// `logπ(y_r | x)`.
    pub rejected: Tensor<1>,
    /// `logπ_ref(y_c | x)`.
    pub ref_chosen: Tensor<1>,
    /// `logπ_ref(y_r | x)`.
    pub ref_rejected: Tensor<1>,
}

impl PairLogps {
    /// `h`, the difference of the two log-ratios. `[batch]`.
    pub fn logits(&self) -> Tensor<1> {
        self.chosen
            .clone()
            .sub(self.ref_chosen.clone())
            .sub(self.rejected.clone().sub(self.ref_rejected.clone()))
    }

    /// `ℓ_c = logπ(y_c) − logπ_ref(y_c)`. `[batch]`.
    pub fn chosen_ratio(&self) -> Tensor<1> {
        self.chosen.clone().sub(self.ref_chosen.clone())
    }

    /// `ℓ_r = logπ(y_r) − logπ_ref(y_r)`. `[batch]`.
    pub fn rejected_ratio(&self) -> Tensor<1> {
        self.rejected.clone().sub(self.ref_rejected.clone())
    }

    /// Implicit rewards `β·(logπ − logπ_ref)` of the chosen and the rejected responses.
    pub fn implicit_rewards(&self, beta: f32) -> (Tensor<1>, Tensor<1>) {
        (
            self.chosen
                .clone()
                .sub(self.ref_chosen.clone())
                .mul_scalar(beta),
            self.rejected
                .clone()
                .sub(self.ref_rejected.clone())
                .mul_scalar(beta),
        )
    }
}

/// DPO (Rafailov et al. 2023), sigmoid form; with label smoothing `ε > 0` it is conservative DPO:
/// `L = −(1−ε)·log σ(z) − ε·log σ(−z)`.
pub fn dpo_loss(h: Tensor<1>, beta: f32, label_smoothing: f32) -> Tensor<1> {
    let z = h.mul_scalar(beta);
    let pos = activation::log_sigmoid(z.clone()).mul_scalar(-(1.0 - label_smoothing));
    if label_smoothing == 0.0 {
        return pos;
    }
    pos.sub(activation::log_sigmoid(z.neg()).mul_scalar(label_smoothing))
}

/// Robust DPO (Chowdhury et al. 2024), unbiased under label noise of rate `ε < ½`:
/// `L = [−(1−ε)·log σ(z) + ε·log σ(−z)] / (1 − 2ε)`.
pub fn robust_dpo_loss(h: Tensor<1>, beta: f32, eps: f32) -> Tensor<1> {
    let z = h.mul_scalar(beta);
    activation::log_sigmoid(z.clone())
        .mul_scalar(-(1.0 - eps))
        .add(activation::log_sigmoid(z.neg()).mul_scalar(eps))
        .div_scalar(1.0 - 2.0 * eps)
}

/// IPO (Azar et al. 2023): `L = (h − 1/(2β))²`, where `h` is built from log-probs *averaged* over
/// response tokens (as TRL does).
pub fn ipo_loss(h_mean_logps: Tensor<1>, beta: f32) -> Tensor<1> {
    h_mean_logps.sub_scalar(1.0 / (2.0 * beta)).square()
}

/// Hinge (SLiC, Zhao et al. 2023): `L = max(0, 1 − z)`.
pub fn hinge_loss(h: Tensor<1>, beta: f32) -> Tensor<1> {
    h.mul_scalar(-beta).add_scalar(1.0).clamp_min(0.0)
}

/// SimPO (Meng et al. 2024), reference-free:
/// `L = −log σ(β·logπ(y_c)/|y_c| − β·logπ(y_r)/|y_r| − γ)`.
///
/// `chosen_mean`, `rejected_mean`: `[batch]` log-probs averaged over response tokens.
pub fn simpo_loss(
    chosen_mean: Tensor<1>,
    rejected_mean: Tensor<1>,
    beta: f32,
    gamma: f32,
) -> Tensor<1> {
    activation::log_sigmoid(
        chosen_mean
            .sub(rejected_mean)
            .mul_scalar(beta)
            .sub_scalar(gamma),
    )
    .neg()
}

/// NCA, pairwise (Chen et al. 2024, "Noise Contrastive Alignment"; TRL's `nca_pair`), on the
/// implicit rewards `r = β·(logπ − logπ_ref)` of each response rather than their difference:
/// `L = −log σ(r_c) − ½·log σ(−r_c) − ½·log σ(−r_r)`.
pub fn nca_pair_loss(logratio_c: Tensor<1>, logratio_r: Tensor<1>, beta: f32) -> Tensor<1> {
    let (rc, rr) = (logratio_c.mul_scalar(beta), logratio_r.mul_scalar(beta));
    activation::log_sigmoid(rc.clone())
        .add(activation::log_sigmoid(rc.neg()).mul_scalar(0.5))
        .add(activation::log_sigmoid(rr.neg()).mul_scalar(0.5))
        .neg()
}

/// BCO, pairwise (Jung et al. 2024; TRL's `bco_pair`, without BCO's running reward shift): the
/// chosen response classified as good and the rejected one as bad on their implicit rewards,
/// `L = −log σ(r_c) − log σ(−r_r)`.
pub fn bco_pair_loss(logratio_c: Tensor<1>, logratio_r: Tensor<1>, beta: f32) -> Tensor<1> {
    let (rc, rr) = (logratio_c.mul_scalar(beta), logratio_r.mul_scalar(beta));
    activation::log_sigmoid(rc)
        .add(activation::log_sigmoid(rr.neg()))
        .neg()
}

/// SPPO with hard labels (Wu et al. 2024, Eq. 4.7 with P = 1 for the winner and 0 for the
/// loser; TRL's `sppo_hard`): each log-ratio regressed to `±1/(2β)`,
/// `L = (ℓ_c − 1/(2β))² + (ℓ_r + 1/(2β))²`, `ℓ = logπ − logπ_ref`.
pub fn sppo_hard_loss(logratio_c: Tensor<1>, logratio_r: Tensor<1>, beta: f32) -> Tensor<1> {
    let target = 0.5 / beta;
    logratio_c
        .sub_scalar(target)
        .square()
        .add(logratio_r.add_scalar(target).square())
}

/// APO-zero (D'Oosterlinck et al. 2024, Eq. 7; TRL's `apo_zero`), for chosen responses better
/// than the model's own: raise the chosen likelihood, lower the rejected one,
/// `L = (1 − σ(r_c)) + σ(r_r)`.
pub fn apo_zero_loss(logratio_c: Tensor<1>, logratio_r: Tensor<1>, beta: f32) -> Tensor<1> {
    let (rc, rr) = (logratio_c.mul_scalar(beta), logratio_r.mul_scalar(beta));
    activation::sigmoid(rc)
        .neg()
        .add_scalar(1.0)
        .add(activation::sigmoid(rr))
}

/// APO-down (Eq. 8; TRL's `apo_down`), for chosen responses worse than the model's own: lower
/// both likelihoods, the rejected one more, `L = σ(r_c) + (1 − σ(r_c − r_r))`.
pub fn apo_down_loss(logratio_c: Tensor<1>, logratio_r: Tensor<1>, beta: f32) -> Tensor<1> {
    let (rc, rr) = (logratio_c.mul_scalar(beta), logratio_r.mul_scalar(beta));
    activation::sigmoid(rc.clone()).add(activation::sigmoid(rc.sub(rr)).neg().add_scalar(1.0))
}

/// DiscoPOP (Chris Lu et al. 2024, Eq. 5; TRL's `discopop`), the log-ratio modulated loss: with
/// `z = β·h` and `m = σ(z/τ)`, `L = (1 − m)·(−log σ(z)) + m·e^{−z}`. The second term is computed
/// as `exp(log σ(z/τ) − z)`, so no extreme `z` makes an `∞·0`.
pub fn discopop_loss(h: Tensor<1>, beta: f32, tau: f32) -> Tensor<1> {
    let z = h.mul_scalar(beta);
    let m = activation::sigmoid(z.clone().div_scalar(tau));
    let logistic = activation::log_sigmoid(z.clone()).neg();
    let exponential = activation::log_sigmoid(z.clone().div_scalar(tau))
        .sub(z)
        .exp();
    m.neg().add_scalar(1.0).mul(logistic).add(exponential)
}

/// AOT, paired (Melnyk et al. 2024, "Distributional Preference Alignment of LLMs via Optimal
/// Transport"; TRL's `aot`): the batch's log-odds `logπ(y_c) − logπ(y_r)` under the policy
/// (`policy`) and under the reference (`reference`) are each sorted, the `i`-th smallest of one
/// matched with the `i`-th smallest of the other (the optimal transport between two
/// one-dimensional distributions), and (c)DPO's loss is taken of each matched difference:
/// `δ_(i) = policy_(i) − reference_(i)`, `L_i = −(1−ε)·log σ(β·δ_(i)) − ε·log σ(−β·δ_(i))`.
/// Value `i` belongs to the `i`-th rank, not to example `i`: only the batch mean means anything,
/// and it depends on which examples share the batch.
pub fn aot_loss(
    policy: Tensor<1>,
    reference: Tensor<1>,
    beta: f32,
    label_smoothing: f32,
) -> Tensor<1> {
    dpo_loss(policy.sort(0).sub(reference.sort(0)), beta, label_smoothing)
}

/// AOT, unpaired (TRL's `aot_unpaired`): the chosen log-ratios `ℓ_c` and the rejected ones `ℓ_r`
/// are sorted each on its own and matched by rank, `δ_(i) = ℓ_c,(i) − ℓ_r,(i)`, and (c)DPO's loss
/// is taken of each; which rejected response came with which chosen one does not matter. As
/// [`aot_loss`], only the batch mean means anything.
pub fn aot_unpaired_loss(
    logratio_c: Tensor<1>,
    logratio_r: Tensor<1>,
    beta: f32,
    label_smoothing: f32,
) -> Tensor<1> {
    dpo_loss(
        logratio_c.sort(0).sub(logratio_r.sort(0)),
        beta,
        label_smoothing,
    )
}

/// The SFT term of RPO and MPO (TRL's `sft`): the chosen responses' negative log-likelihood as a
/// token mean over the batch, `−Σ_b logπ(y_c,b) / Σ_b |y_c,b|`, the same value for every example
/// (`chosen`: summed log-probs `[batch]`, `lengths`: their token counts).
pub fn sft_loss(chosen: Tensor<1>, lengths: Tensor<1>) -> Tensor<1> {
    let [b] = chosen.dims();
    chosen
        .sum()
        .div(lengths.sum().clamp_min(1.0))
        .neg()
        .expand([b])
}

/// EXO with preference labels (Ji et al. 2024), K = 2: the target puts `1−ε` on the chosen
/// response, and `L = σ(z)·(log σ(z) − log(1−ε)) + σ(−z)·(log σ(−z) − log ε)`,
/// the reverse KL from the policy's pair distribution to the target. `ε` is small (1e−3 … e^−10).
pub fn exo_pref_loss(h: Tensor<1>, beta: f32, eps: f32) -> Tensor<1> {
    let z = h.mul_scalar(beta);
    let log_p = activation::log_sigmoid(z.clone());
    let log_q = activation::log_sigmoid(z.neg());
    let (log_t_c, log_t_r) = (f64::from(1.0 - eps).ln() as f32, f64::from(eps).ln() as f32);
    log_p
        .clone()
        .exp()
        .mul(log_p.sub_scalar(log_t_c))
        .add(log_q.clone().exp().mul(log_q.sub_scalar(log_t_r)))
}

/// `log p_θ` and `log p_r` over the K responses of each prompt:
/// `p_θ = softmax(β_π·(logπ − logπ_ref))`, `p_r = softmax(r / β_r)`.
fn kwise_log_distributions(
    log_ratios: Tensor<2>,
    rewards: Tensor<2>,
    beta_pi: f32,
    beta_r: f32,
) -> (Tensor<2>, Tensor<2>) {
    (
        activation::log_softmax(log_ratios.mul_scalar(beta_pi), 1),
        activation::log_softmax(rewards.div_scalar(beta_r), 1),
    )
}

/// EXO with rewards for any K ≥ 2 (Ji et al. 2024):
/// `L = Σ_i p_θ(i)·(log p_θ(i) − log p_r(i))`, the reverse KL `KL(p_θ ‖ p_r)`.
///
/// - `log_ratios`: `[batch, K]`, `logπ(y_i) − logπ_ref(y_i)` for each response;
/// - `rewards`: `[batch, K]`, `r_i`;
/// - `beta_pi`: β_π; `beta_r`: β_r.
///
/// Returns `[batch]`; ≥ 0, and 0 exactly where `p_θ = p_r`.
pub fn exo_rw_loss(
    log_ratios: Tensor<2>,
    rewards: Tensor<2>,
    beta_pi: f32,
    beta_r: f32,
) -> Tensor<1> {
    let (log_p_theta, log_p_r) = kwise_log_distributions(log_ratios, rewards, beta_pi, beta_r);
    let kl = log_p_theta.clone().exp().mul(log_p_theta.sub(log_p_r));
    kl.sum_dim(1).squeeze_dim(1)
}

/// DPO-rw, the forward direction for comparison: `L = −Σ_i p_r(i)·log p_θ(i)`. Shapes as
/// [`exo_rw_loss`].
pub fn dpo_rw_loss(
    log_ratios: Tensor<2>,
    rewards: Tensor<2>,
    beta_pi: f32,
    beta_r: f32,
) -> Tensor<1> {
    let (log_p_theta, log_p_r) = kwise_log_distributions(log_ratios, rewards, beta_pi, beta_r);
    log_p_r
        .exp()
        .mul(log_p_theta)
        .sum_dim(1)
        .squeeze_dim(1)
        .neg()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rlhf_core::host::{tensor_from_f64, to_f64_vec as host};

    fn dev() -> burn::tensor::Device {
        rlhf_core::device_from_env().unwrap()
    }
    fn t1(v: &[f64]) -> Tensor<1> {
        tensor_from_f64(v, [v.len()], &dev())
    }
    fn t2(v: &[f64], k: usize) -> Tensor<2> {
        tensor_from_f64(v, [v.len() / k, k], &dev())
    }
    fn close(a: &[f64], b: &[f64], tol: f64) -> Result<(), TestCaseError> {
        prop_assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            prop_assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{} vs {}", x, y);
        }
        Ok(())
    }
    fn ls(x: f64) -> f64 {
        // log σ(x), stable
        -((-x.abs()).exp().ln_1p()) + x.min(0.0)
    }
    type LossFn = Box<dyn Fn(Tensor<1>) -> Tensor<1>>;
    type RefFn = Box<dyn Fn(f64) -> f64>;

    fn sig(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// d(loss)/dh by autodiff equals central differences of the f64 reference, for every
        /// pairwise loss; and d(EXO-rw)/d(log-ratio) likewise.
        #[test]
        fn gradients_match_finite_differences(h in prop::collection::vec(-6.0f64..6.0, 1..6), beta in 0.05f64..1.0, eps in 0.01f64..0.3, k in 2usize..5, rows in prop::collection::vec((prop::collection::vec(-2.0f64..2.0, 4), prop::collection::vec(-2.0f64..2.0, 4)), 1..3)) {
            let ad = dev().autodiff();
            let b = beta as f32;
            let refs: Vec<(&str, LossFn, RefFn)> = vec![
                ("dpo", Box::new(move |x| dpo_loss(x, b, eps as f32)), Box::new(move |h| -(1.0 - eps) * ls(beta * h) - eps * ls(-beta * h))),
                ("robust", Box::new(move |x| robust_dpo_loss(x, b, eps as f32)), Box::new(move |h| (-(1.0 - eps) * ls(beta * h) + eps * ls(-beta * h)) / (1.0 - 2.0 * eps))),
                ("ipo", Box::new(move |x| ipo_loss(x, b)), Box::new(move |h| (h - 1.0 / (2.0 * beta)).powi(2))),
                ("exo_pref", Box::new(move |x| exo_pref_loss(x, b, eps as f32)), Box::new(move |h| {
                    let z = beta * h;
                    sig(z) * (ls(z) - (1.0 - eps).ln()) + sig(-z) * (ls(-z) - eps.ln())
                })),
            ];
            for (name, loss, reference) in &refs {
                let x = tensor_from_f64(&h, [h.len()], &ad).require_grad();
                let grad = host(x.grad(&loss(x.clone()).sum().backward()).expect("depends on h"));
                let d = 1e-4;
                let fd: Vec<f64> = h.iter().map(|&v| (reference(v + d) - reference(v - d)) / (2.0 * d)).collect();
                for (g, f) in grad.iter().zip(&fd) {
                    prop_assert!((g - f).abs() < 2e-3 * (1.0 + f.abs()), "{}: {} vs {}", name, g, f);
                }
            }
            // EXO-rw: KL(p_θ ‖ p_r) with p_θ = softmax(β·x), p_r = softmax(r/β_r)
            let lr: Vec<f64> = rows.iter().flat_map(|r| r.0[..k].to_vec()).collect();
            let rw: Vec<f64> = rows.iter().flat_map(|r| r.1[..k].to_vec()).collect();
            let kl = |x: &[f64], r: &[f64]| {
                let lse = |v: Vec<f64>| { let m = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max); m + v.iter().map(|y| (y - m).exp()).sum::<f64>().ln() };
                let (zt, zr) = (lse(x.iter().map(|v| beta * v).collect()), lse(r.to_vec()));
                x.iter().zip(r).map(|(xv, rv)| { let lp = beta * xv - zt; lp.exp() * (lp - (rv - zr)) }).sum::<f64>()
            };
            let x = tensor_from_f64(&lr, [rows.len(), k], &ad).require_grad();
            let loss = exo_rw_loss(x.clone(), tensor_from_f64(&rw, [rows.len(), k], &ad), b, 1.0).sum();
            let grad = host(x.grad(&loss.backward()).expect("depends on the log-ratios"));
            for i in 0..lr.len() {
                let row = i / k;
                let (mut up, mut down) = (lr[row * k..(row + 1) * k].to_vec(), lr[row * k..(row + 1) * k].to_vec());
                up[i % k] += 1e-4;
                down[i % k] -= 1e-4;
                let r = &rw[row * k..(row + 1) * k];
                let fd = (kl(&up, r) - kl(&down, r)) / 2e-4;
                prop_assert!((grad[i] - fd).abs() < 2e-3 * (1.0 + fd.abs()), "exo_rw: {} vs {}", grad[i], fd);
            }
        }

        #[test]
        fn pairwise_losses_match_their_formulas(h in prop::collection::vec(-20.0f64..20.0, 1..8), beta in 0.01f64..1.0, eps in 0.0f64..0.4, gamma in 0.0f64..2.0) {
            let z: Vec<f64> = h.iter().map(|h| beta * h).collect();
            let b = beta as f32;
            close(&host(dpo_loss(t1(&h), b, eps as f32)), &z.iter().map(|z| -(1.0 - eps) * ls(*z) - eps * ls(-z)).collect::<Vec<_>>(), 1e-4)?;
            close(&host(robust_dpo_loss(t1(&h), b, eps as f32)), &z.iter().map(|z| (-(1.0 - eps) * ls(*z) + eps * ls(-z)) / (1.0 - 2.0 * eps)).collect::<Vec<_>>(), 1e-4)?;
            close(&host(ipo_loss(t1(&h), b)), &h.iter().map(|h| (h - 1.0 / (2.0 * beta)).powi(2)).collect::<Vec<_>>(), 1e-4)?;
            close(&host(hinge_loss(t1(&h), b)), &z.iter().map(|z| (1.0 - z).max(0.0)).collect::<Vec<_>>(), 1e-4)?;
            // sft: −Σ chosen / Σ tokens, the same for every example
            let lengths: Vec<f64> = h.iter().enumerate().map(|(i, _)| 1.0 + i as f64).collect();
            let want = -h.iter().sum::<f64>() / lengths.iter().sum::<f64>();
            close(&host(sft_loss(t1(&h), t1(&lengths))), &vec![want; h.len()], 1e-4)?;
            let half: Vec<f64> = h.iter().map(|h| h / 2.0).collect();
            close(&host(simpo_loss(t1(&h), t1(&half), b, gamma as f32)), &h.iter().zip(&half).map(|(c, r)| -ls(beta * c - beta * r - gamma)).collect::<Vec<_>>(), 1e-4)?;
        }

        /// The losses on the two log-ratios (NCA, BCO, SPPO, APO) and DiscoPOP against their f64
        /// formulas, their gradients against central differences, and finite at extremes.
        #[test]
        fn per_response_losses_match_their_formulas(
            rows in prop::collection::vec((-8.0f64..8.0, -8.0f64..8.0), 1..8),
            beta in 0.05f64..1.0,
            tau in 0.02f64..0.5,
        ) {
            let b = beta as f32;
            let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
            type PairFn = Box<dyn Fn(Tensor<1>, Tensor<1>) -> Tensor<1>>;
            type PairRef = Box<dyn Fn(f64, f64) -> f64>;
            let t = tau as f32;
            let cases: Vec<(&str, PairFn, PairRef)> = vec![
                ("nca_pair", Box::new(move |c, r| nca_pair_loss(c, r, b)), Box::new(move |c, r| -ls(beta * c) - 0.5 * ls(-beta * c) - 0.5 * ls(-beta * r))),
                ("bco_pair", Box::new(move |c, r| bco_pair_loss(c, r, b)), Box::new(move |c, r| -ls(beta * c) - ls(-beta * r))),
                ("sppo_hard", Box::new(move |c, r| sppo_hard_loss(c, r, b)), Box::new(move |c, r| (c - 0.5 / beta).powi(2) + (r + 0.5 / beta).powi(2))),
                ("apo_zero", Box::new(move |c, r| apo_zero_loss(c, r, b)), Box::new(move |c, r| 1.0 - sig(beta * c) + sig(beta * r))),
                ("apo_down", Box::new(move |c, r| apo_down_loss(c, r, b)), Box::new(move |c, r| sig(beta * c) + 1.0 - sig(beta * (c - r)))),
                ("discopop", Box::new(move |c, r| discopop_loss(c.sub(r), b, t)), Box::new(move |c, r| {
                    let z = beta * (c - r);
                    let m = sig(z / tau);
                    (1.0 - m) * -ls(z) + m * (-z).exp()
                })),
            ];
            let (c, r): (Vec<f64>, Vec<f64>) = rows.iter().copied().unzip();
            let ad = dev().autodiff();
            for (name, loss, reference) in &cases {
                let want: Vec<f64> = c.iter().zip(&r).map(|(c, r)| reference(*c, *r)).collect();
                let got = host(loss(t1(&c), t1(&r)));
                close(&got, &want, 1e-4).map_err(|e| TestCaseError::fail(format!("{name}: {e}")))?;
                // gradients of the sum, with respect to each log-ratio
                let (xc, xr) = (tensor_from_f64(&c, [c.len()], &ad).require_grad(), tensor_from_f64(&r, [r.len()], &ad).require_grad());
                let grads = loss(xc.clone(), xr.clone()).sum().backward();
                let (gc, gr) = (host(xc.grad(&grads).expect("depends on ℓ_c")), host(xr.grad(&grads).expect("depends on ℓ_r")));
                let d = 1e-4;
                for i in 0..c.len() {
                    let fc = (reference(c[i] + d, r[i]) - reference(c[i] - d, r[i])) / (2.0 * d);
                    let fr = (reference(c[i], r[i] + d) - reference(c[i], r[i] - d)) / (2.0 * d);
                    prop_assert!((gc[i] - fc).abs() < 2e-3 * (1.0 + fc.abs()), "{}: d/dℓ_c {} vs {}", name, gc[i], fc);
                    prop_assert!((gr[i] - fr).abs() < 2e-3 * (1.0 + fr.abs()), "{}: d/dℓ_r {} vs {}", name, gr[i], fr);
                }
                // extreme log-ratios stay finite
                let far = [-1e4, 1e4, 0.0];
                let extreme = host(loss(t1(&far), t1(&[1e4, -1e4, 0.0])));
                prop_assert!(extreme.iter().all(|v| v.is_finite()), "{}: {:?}", name, extreme);
            }
        }

        /// The AOT losses against an f64 reference that sorts, their gradients against central
        /// differences, their invariances (AOT's mean under any reordering of the batch's
        /// examples, AOT-unpaired's under any reordering of the rejected responses alone), DPO
        /// at a batch of one, and finite at extremes.
        #[test]
        fn aot_losses_match_their_formulas(
            rows in prop::collection::vec((-8.0f64..8.0, -8.0f64..8.0, -8.0f64..8.0, -8.0f64..8.0), 1..8),
            beta in 0.05f64..1.0,
            eps in 0.0f64..0.4,
            shift in 1usize..8,
        ) {
            let (b, e) = (beta as f32, eps as f32);
            let sorted = |v: &[f64]| { let mut v = v.to_vec(); v.sort_by(f64::total_cmp); v };
            let dpo = |d: f64| -(1.0 - eps) * ls(beta * d) - eps * ls(-beta * d);
            let matched = |x: &[f64], y: &[f64]| -> Vec<f64> {
                sorted(x).iter().zip(sorted(y)).map(|(a, c)| dpo(a - c)).collect()
            };
            // AOT reads the policy's and the reference's log-odds, AOT-unpaired the two log-ratios
            let x: Vec<f64> = rows.iter().map(|r| r.0 - r.1).collect();
            let y: Vec<f64> = rows.iter().map(|r| r.2 - r.3).collect();
            close(&host(aot_loss(t1(&x), t1(&y), b, e)), &matched(&x, &y), 1e-4)?;
            close(&host(aot_unpaired_loss(t1(&x), t1(&y), b, e)), &matched(&x, &y), 1e-4)?;
            let mean = |v: Vec<f64>| v.iter().sum::<f64>() / v.len() as f64;
            let n = x.len();
            let rotate = |v: &[f64]| -> Vec<f64> { (0..n).map(|i| v[(i + shift) % n]).collect() };
            let (xr, yr) = (rotate(&x), rotate(&y));
            let whole = mean(host(aot_loss(t1(&x), t1(&y), b, e)));
            prop_assert!((mean(host(aot_loss(t1(&xr), t1(&yr), b, e))) - whole).abs() < 1e-5);
            prop_assert!((mean(host(aot_unpaired_loss(t1(&x), t1(&yr), b, e))) - whole).abs() < 1e-5);
            if n == 1 {
                close(&host(aot_loss(t1(&x), t1(&y), b, e)), &host(dpo_loss(t1(&[x[0] - y[0]]), b, e)), 1e-5)?;
            }
            // gradients of the batch sum, away from ties (where the sort is not differentiable)
            let apart = |v: &[f64]| { let s = sorted(v); s.windows(2).all(|w| w[1] - w[0] > 1e-2) };
            if apart(&x) && apart(&y) {
                let ad = dev().autodiff();
                let (gx, gy) = (tensor_from_f64(&x, [n], &ad).require_grad(), tensor_from_f64(&y, [n], &ad).require_grad());
                let grads = aot_unpaired_loss(gx.clone(), gy.clone(), b, e).sum().backward();
                let (dx, dy) = (host(gx.grad(&grads).expect("depends on ℓ_c")), host(gy.grad(&grads).expect("depends on ℓ_r")));
                let total = |x: &[f64], y: &[f64]| matched(x, y).iter().sum::<f64>();
                let d = 1e-4;
                for i in 0..n {
                    let nudge = |v: &[f64], s: f64| { let mut v = v.to_vec(); v[i] += s; v };
                    let fx = (total(&nudge(&x, d), &y) - total(&nudge(&x, -d), &y)) / (2.0 * d);
                    let fy = (total(&x, &nudge(&y, d)) - total(&x, &nudge(&y, -d))) / (2.0 * d);
                    prop_assert!((dx[i] - fx).abs() < 2e-3 * (1.0 + fx.abs()), "d/dℓ_c {} vs {}", dx[i], fx);
                    prop_assert!((dy[i] - fy).abs() < 2e-3 * (1.0 + fy.abs()), "d/dℓ_r {} vs {}", dy[i], fy);
                }
            }
            // matched differences of ±2e4 stay finite
            let (low, high) = ([1e4, -1e4, 0.0], [3e4, 1e4, 2e4]);
            for (x, y) in [(low, high), (high, low)] {
                for loss in [aot_loss(t1(&x), t1(&y), b, e), aot_unpaired_loss(t1(&x), t1(&y), b, e)] {
                    let extreme = host(loss);
                    prop_assert!(extreme.iter().all(|v| v.is_finite()), "{:?}", extreme);
                }
            }
        }

        #[test]
        fn swapping_chosen_and_rejected_maps_sigma_z_to_sigma_minus_z(h in prop::collection::vec(-20.0f64..20.0, 1..8), beta in 0.01f64..1.0) {
            let neg: Vec<f64> = h.iter().map(|x| -x).collect();
            let b = beta as f32;
            close(&host(dpo_loss(t1(&neg), b, 0.0)), &h.iter().map(|h| -ls(-beta * h)).collect::<Vec<_>>(), 1e-4)?;
            // −log σ(z) − (−log σ(−z)) = −z
            let diff: Vec<f64> = host(dpo_loss(t1(&h), b, 0.0)).iter().zip(host(dpo_loss(t1(&neg), b, 0.0))).map(|(a, c)| a - c).collect();
            close(&diff, &h.iter().map(|h| -beta * h).collect::<Vec<_>>(), 1e-3)?;
        }

        #[test]
        fn exo_pref_matches_formula_is_nonnegative_and_equals_exo_rw_at_k2(h in prop::collection::vec(-20.0f64..20.0, 1..8), beta in 0.01f64..1.0, eps_exp in 3.0f64..10.0) {
            let eps = (-eps_exp).exp();
            let b = beta as f32;
            let got = host(exo_pref_loss(t1(&h), b, eps as f32));
            let expected: Vec<f64> = h.iter().map(|h| {
                let z = beta * h;
                sig(z) * (ls(z) - (1.0 - eps).ln()) + sig(-z) * (ls(-z) - eps.ln())
            }).collect();
            close(&got, &expected, 1e-3)?;
            prop_assert!(got.iter().all(|&l| l >= -1e-5));
            // EXO-rw with rewards (r_c − r_r) = β_r·log((1−ε)/ε) puts 1−ε on the chosen response
            let beta_r = 0.5;
            let gap = beta_r * ((1.0 - eps) / eps).ln();
            let ratios: Vec<f64> = h.iter().flat_map(|h| [*h, 0.0]).collect();
            let rewards: Vec<f64> = h.iter().flat_map(|_| [gap, 0.0]).collect();
            close(&host(exo_rw_loss(t2(&ratios, 2), t2(&rewards, 2), b, beta_r as f32)), &got, 1e-3)?;
        }

        #[test]
        fn kwise_losses_match_reference_and_exo_vanishes_at_the_optimum(k in 2usize..6, rows in prop::collection::vec((prop::collection::vec(-3.0f64..3.0, 6), prop::collection::vec(-3.0f64..3.0, 6)), 1..4), beta_pi in 0.1f64..2.0, beta_r in 0.1f64..2.0) {
            let ratios: Vec<f64> = rows.iter().flat_map(|r| r.0[..k].to_vec()).collect();
            let rewards: Vec<f64> = rows.iter().flat_map(|r| r.1[..k].to_vec()).collect();
            let softmax = |x: &[f64]| { let m = x.iter().cloned().fold(f64::MIN, f64::max); let e: Vec<f64> = x.iter().map(|v| (v - m).exp()).collect(); let s: f64 = e.iter().sum(); e.into_iter().map(|v| v / s).collect::<Vec<_>>() };
            let mut exo = Vec::new();
            let mut fwd = Vec::new();
            for (lr, r) in ratios.chunks(k).zip(rewards.chunks(k)) {
                let pt = softmax(&lr.iter().map(|x| beta_pi * x).collect::<Vec<_>>());
                let pr = softmax(&r.iter().map(|x| x / beta_r).collect::<Vec<_>>());
                exo.push(pt.iter().zip(&pr).map(|(p, q)| p * (p.ln() - q.ln())).sum::<f64>());
                fwd.push(-pt.iter().zip(&pr).map(|(p, q)| q * p.ln()).sum::<f64>());
            }
            let got = host(exo_rw_loss(t2(&ratios, k), t2(&rewards, k), beta_pi as f32, beta_r as f32));
            close(&got, &exo, 1e-3)?;
            prop_assert!(got.iter().all(|&l| l >= -1e-5));
            close(&host(dpo_rw_loss(t2(&ratios, k), t2(&rewards, k), beta_pi as f32, beta_r as f32)), &fwd, 1e-3)?;
            // at the optimum β_π·logratio = r/β_r (+ any constant per row): loss 0
            let optimum: Vec<f64> = rewards.iter().map(|r| r / (beta_r * beta_pi) + 0.7).collect();
            let at_opt = host(exo_rw_loss(t2(&optimum, k), t2(&rewards, k), beta_pi as f32, beta_r as f32));
            prop_assert!(at_opt.iter().all(|l| l.abs() < 1e-5), "{:?}", at_opt);
        }
    }

    #[test]
    fn dpo_at_z_zero_is_log_2_and_implicit_rewards_are_beta_log_ratios() {
        let l = host(dpo_loss(t1(&[0.0, 0.0]), 0.3, 0.0));
        assert!(l.iter().all(|x| (x - 2f64.ln()).abs() < 1e-6));
        let p = PairLogps {
            chosen: t1(&[-1.0]),
            rejected: t1(&[-2.0]),
            ref_chosen: t1(&[-1.5]),
            ref_rejected: t1(&[-1.0]),
        };
        assert!((host(p.logits())[0] - 1.5).abs() < 1e-6);
        let (rc, rr) = p.implicit_rewards(0.1);
        assert!((host(rc)[0] - 0.05).abs() < 1e-6 && (host(rr)[0] + 0.1).abs() < 1e-6);
    }
}
