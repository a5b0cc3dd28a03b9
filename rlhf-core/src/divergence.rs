//! The generalised Jensen–Shannon divergence between a student's and a teacher's next-token
//! distributions, position by position: the loss of on-policy distillation (Agarwal et al. 2024,
//! "On-Policy Distillation of Language Models", GKD; TRL's `DistillationTrainer`).
//!
//! With `p_s = softmax(z_s / T)`, `p_t = softmax(z_t / T)` over the vocabulary and the mixture
//! `m = (1 − β)·p_s + β·p_t`:
//!
//! - `β = 0`: the forward KL, `KL(p_t ‖ p_s) = Σ_v p_t (log p_t − log p_s)`;
//! - `β = 1`: the reverse KL, `KL(p_s ‖ p_t) = Σ_v p_s (log p_s − log p_t)`;
//! - `0 < β < 1`: `JSD_β = β·KL(p_t ‖ m) + (1 − β)·KL(p_s ‖ m)` (`β = ½` is the Jensen–Shannon
//!   divergence).
//!
//! The ends are taken by name, as TRL takes them: the mixture's formula itself vanishes there
//! (`D_β → 0` as `β → 0` or `1`; near the ends it is about `β·KL(p_t ‖ p_s)` or
//! `(1 − β)·KL(p_s ‖ p_t)`), so the loss's scale, and with it the step a learning rate gives, jumps
//! between `β = 0` and `β = 0.01`.

use burn::tensor::{Tensor, activation};

/// `D_β(p_s ‖ p_t)` at every position (see the module doc), in nats.
///
/// - `student`, `teacher`: finite logits `[batch, seq, vocab]` (the same vocabulary); the
///   gradient flows to `student` only when `teacher` carries none (a frozen model's output);
/// - `beta` in `[0, 1]`; `temperature > 0`, applied to both.
///
/// Returns `[batch, seq]`.
pub fn generalized_jsd(
    student: Tensor<3>,
    teacher: Tensor<3>,
    beta: f64,
    temperature: f32,
) -> Tensor<2> {
    let log_ps = activation::log_softmax(student.div_scalar(temperature), 2);
    let log_pt = activation::log_softmax(teacher.div_scalar(temperature), 2);
    let per_token = if beta <= 0.0 {
        kl(log_pt, log_ps)
    } else if beta >= 1.0 {
        kl(log_ps, log_pt)
    } else {
        let log_m = log_add_exp(
            log_ps.clone().add_scalar((1.0 - beta).ln()),
            log_pt.clone().add_scalar(beta.ln()),
        );
        kl(log_pt, log_m.clone())
            .mul_scalar(beta)
            .add(kl(log_ps, log_m).mul_scalar(1.0 - beta))
    };
    per_token.squeeze_dim(2)
}

/// `KL(p ‖ q) = Σ_v p (log p − log q)` over the last axis, from log-probabilities; `[b, s, 1]`.
fn kl(log_p: Tensor<3>, log_q: Tensor<3>) -> Tensor<3> {
    log_p.clone().exp().mul(log_p.sub(log_q)).sum_dim(2)
}

/// `log(eᵃ + eᵇ)` elementwise, without overflow.
fn log_add_exp(a: Tensor<3>, b: Tensor<3>) -> Tensor<3> {
    let top = a.clone().max_pair(b.clone());
    let rest = a.sub(top.clone()).exp().add(b.sub(top.clone()).exp()).log();
    top.add(rest)
}
