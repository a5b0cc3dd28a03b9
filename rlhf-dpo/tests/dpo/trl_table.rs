//! Loss values against TRL's `DPOTrainer` formulas on a fixed table, computed independently in
//! Python (`math.log1p`, double precision) from the formulas as TRL writes them
//! (`trl/trainer/dpo_trainer.py`, `dpo_loss`, with `logits = h`):
//!
//! - `sigmoid`: `−logσ(βh)(1−ls) − logσ(−βh)·ls` (ls = 0; cDPO with ls = 0.1, as TRL's `sigmoid`
//!   computed it before its 1.x versions, which ignore `label_smoothing` there: `rlhf dpo --loss
//!   cdpo`);
//! - `robust`: `(−logσ(βh)(1−ls) + logσ(−βh)·ls) / (1 − 2ls)` (ls = 0.1);
//! - `hinge`: `relu(1 − βh)`;
//! - `ipo`: `(h − 1/(2β))²` (h from length-averaged log-probs);
//! - `exo_pair`: `σ(βh)(logσ(βh) − log(1−ε)) + σ(−βh)(logσ(−βh) − log ε)` (ε = 1e−3).
//!
//! The losses on each response's log-ratio (`nca_pair`, `bco_pair`, `sppo_hard`, `apo_zero`,
//! `apo_down`), `discopop` and `sigmoid_norm` were computed in PyTorch (float64) with the lines of
//! TRL 1.16's `DPOTrainer._compute_loss`, on `(ℓ_c, ℓ_r, β, τ, |y_c|, |y_r|)`.
//!
//! One DPO step and one EXO step on the device of `RLHF_DEVICE` (wgpu in CI) against the same
//! step on `flex` are in `tests/dpo/devices.rs`.

use burn::tensor::{Tensor, TensorData};
use rlhf_dpo::{
    apo_down_loss, apo_zero_loss, bco_pair_loss, discopop_loss, dpo_loss, exo_pref_loss,
    hinge_loss, ipo_loss, nca_pair_loss, robust_dpo_loss, sppo_hard_loss,
};

/// `(h, β, sigmoid, cdpo(0.1), robust(0.1), hinge, ipo, exo_pair(1e−3))`
type Row = (f32, f32, f64, f64, f64, f64, f64, f64);

const TABLE: [Row; 4] = [
    (
        2.0,
        0.1,
        0.598138869,
        0.618138869,
        0.573138869,
        0.800000000,
        9.000000000,
        2.422014621,
    ),
    (
        -1.5,
        0.1,
        0.770957048,
        0.755957048,
        0.789707048,
        1.150000000,
        42.250000000,
        3.022554082,
    ),
    (
        0.3,
        0.5,
        0.620957048,
        0.635957048,
        0.602207048,
        0.850000000,
        0.490000000,
        2.505516555,
    ),
    (
        5.0,
        0.05,
        0.575939420,
        0.600939420,
        0.544689420,
        0.750000000,
        25.000000000,
        2.339544750,
    ),
];

#[test]
fn losses_agree_with_trl_formulas_on_a_fixed_table() {
    let device = rlhf_core::device_from_env().unwrap();
    let t = |v: f32| Tensor::<1>::from_data(TensorData::new(vec![v], [1]), &device);
    let s = |x: Tensor<1>| f64::from(x.into_scalar::<f32>());
    for (h, beta, sigmoid, cdpo, robust, hinge, ipo, exo) in TABLE {
        let close = |got: f64, want: f64, what: &str| {
            assert!(
                (got - want).abs() < 2e-6 * (1.0 + want.abs()),
                "{what} at h = {h}, β = {beta}: {got} vs TRL {want}"
            )
        };
        close(s(dpo_loss(t(h), beta, 0.0)), sigmoid, "sigmoid");
        close(s(dpo_loss(t(h), beta, 0.1)), cdpo, "cDPO");
        close(s(robust_dpo_loss(t(h), beta, 0.1)), robust, "robust");
        close(s(hinge_loss(t(h), beta)), hinge, "hinge");
        close(s(ipo_loss(t(h), beta)), ipo, "ipo");
        close(s(exo_pref_loss(t(h), beta, 1e-3)), exo, "exo_pair");
    }
}

/// `(ℓ_c, ℓ_r, β, τ, |y_c|, |y_r|, [nca_pair, bco_pair, sppo_hard, apo_zero, apo_down, discopop,
/// sigmoid_norm])` from TRL's code (see the module's documentation).
type PerResponseRow = (f32, f32, f32, f32, f32, f32, [f64; 7]);

const PER_RESPONSE: [PerResponseRow; 4] = [
    (
        1.2,
        -0.7,
        0.1,
        0.05,
        5.0,
        3.0,
        [
            1.341798930,
            1.293705657,
            32.930000000,
            0.952543091,
            0.982606434,
            0.822051029,
            0.669760543,
        ],
    ),
    (
        -0.4,
        0.9,
        0.5,
        0.05,
        4.0,
        8.0,
        [
            1.568832777,
            1.741387815,
            5.570000000,
            1.160473231,
            1.107176465,
            1.070057247,
            0.747682650,
        ],
    ),
    (
        3.0,
        2.5,
        0.05,
        0.2,
        10.0,
        2.0,
        [
            1.385235089,
            1.378556083,
            205.250000000,
            0.993779528,
            1.031180171,
            0.837211409,
            0.717179185,
        ],
    ),
    (
        -2.0,
        -6.0,
        1.0,
        0.05,
        1.0,
        7.0,
        [
            2.191629859,
            2.129403696,
            36.500000000,
            0.883269701,
            0.137189132,
            0.018315639,
            1.419660171,
        ],
    ),
];

#[test]
fn per_response_losses_agree_with_trls_code_on_a_fixed_table() {
    let device = rlhf_core::device_from_env().unwrap();
    let t = |v: f32| Tensor::<1>::from_data(TensorData::new(vec![v], [1]), &device);
    let s = |x: Tensor<1>| f64::from(x.into_scalar::<f32>());
    for (c, r, beta, tau, len_c, len_r, want) in PER_RESPONSE {
        let got = [
            ("nca_pair", s(nca_pair_loss(t(c), t(r), beta))),
            ("bco_pair", s(bco_pair_loss(t(c), t(r), beta))),
            ("sppo_hard", s(sppo_hard_loss(t(c), t(r), beta))),
            ("apo_zero", s(apo_zero_loss(t(c), t(r), beta))),
            ("apo_down", s(apo_down_loss(t(c), t(r), beta))),
            ("discopop", s(discopop_loss(t(c - r), beta, tau))),
            // sigmoid_norm: DPO on the length-averaged log-ratios
            (
                "sigmoid_norm",
                s(dpo_loss(t(c / len_c - r / len_r), beta, 0.0)),
            ),
        ];
        for ((name, got), want) in got.into_iter().zip(want) {
            assert!(
                (got - want).abs() < 2e-6 * (1.0 + want.abs()),
                "{name} at ℓ_c = {c}, ℓ_r = {r}, β = {beta}: {got} vs TRL {want}"
            );
        }
    }
}
