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
//! TRL 1.16's `DPOTrainer._compute_loss`, on `(ℓ_c, ℓ_r, β, τ, |y_c|, |y_r|)`. `aot` and
//! `aot_unpaired`, which sort the batch, were computed in Python (double precision, `sorted`,
//! `math.log1p`) from the same lines, on a batch of four pairs, and so was `sigmoid` under each
//! of TRL's `f_divergence_type`s (its `chosen_scores`/`rejected_scores` lines, α = 0.5).
//!
//! One DPO step and one EXO step on the device of `RLHF_DEVICE` (wgpu in CI) against the same
//! step on `flex` are in `tests/dpo/devices.rs`.

use std::f64::consts::LN_2;

use burn::tensor::{Tensor, TensorData};
use rlhf_dpo::{
    FDivergence, aot_loss, aot_unpaired_loss, apo_down_loss, apo_zero_loss, bco_pair_loss,
    discopop_loss, dpo_loss, exo_pref_loss, hinge_loss, ipo_loss, nca_pair_loss, robust_dpo_loss,
    sppo_hard_loss,
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

/// One pair's `(logπ(y_c), logπ(y_r), logπ_ref(y_c), logπ_ref(y_r))`.
type PairOfLogps = (f32, f32, f32, f32);

/// A batch of four pairs. The policy's and the reference's third-smallest log-odds are equal, so
/// `aot`'s third value is `log 2`.
const AOT_BATCH: [PairOfLogps; 4] = [
    (-12.5, -14.0, -13.0, -13.2),
    (-8.0, -6.5, -8.4, -7.1),
    (-20.25, -19.0, -19.5, -21.0),
    (-5.5, -9.75, -6.0, -8.0),
];

/// `(β, label_smoothing, aot by rank, aot_unpaired by rank)` from TRL's lines on [`AOT_BATCH`].
type AotRow = (f32, f32, [f64; 4], [f64; 4]);

const AOT: [AotRow; 2] = [
    (
        0.1,
        0.0,
        [0.703197180, 0.768273006, LN_2, 0.586962002],
        [0.644396660, 0.634946102, 0.698159681, 0.770957048],
    ),
    (
        0.5,
        0.1,
        [0.734396660, 1.047459833, LN_2, 0.393650136],
        [0.524076984, 0.497487950, 0.713459648, 1.061871006],
    ),
];

#[test]
fn aot_losses_agree_with_trls_code_on_a_fixed_batch() {
    let device = rlhf_core::device_from_env().unwrap();
    let t = |f: &dyn Fn(&PairOfLogps) -> f32| {
        let v: Vec<f32> = AOT_BATCH.iter().map(f).collect();
        Tensor::<1>::from_data(TensorData::new(v, [AOT_BATCH.len()]), &device)
    };
    let host = |x: Tensor<1>| rlhf_core::host::to_f32_vec(x).into_iter().map(f64::from);
    for (beta, eps, aot, unpaired) in AOT {
        let paired = aot_loss(t(&|p| p.0 - p.1), t(&|p| p.2 - p.3), beta, eps);
        let ratios = aot_unpaired_loss(t(&|p| p.0 - p.2), t(&|p| p.1 - p.3), beta, eps);
        for (name, got, want) in [
            ("aot", host(paired), aot),
            ("aot_unpaired", host(ratios), unpaired),
        ] {
            for (got, want) in got.zip(want) {
                assert!(
                    (got - want).abs() < 2e-6 * (1.0 + want.abs()),
                    "{name} at β = {beta}, ε = {eps}: {got} vs TRL {want}"
                );
            }
        }
    }
}

/// `(ℓ_c, ℓ_r, β, [sigmoid under forward_kl, js_divergence, alpha_divergence (α = 0.5)])` from
/// TRL's lines.
type FDivergenceRow = (f32, f32, f32, [f64; 3]);

const F_DIVERGENCES: [FDivergenceRow; 4] = [
    (1.2, -0.7, 0.1, [0.611180855, 0.652033540, 0.609903546]),
    (-0.4, 0.9, 0.5, [1.000823638, 0.846297445, 1.027042085]),
    (3.0, 2.5, 0.05, [0.692340058, 0.692389908, 0.689983469]),
    (-2.0, -3.0, 0.3, [0.021929359, 0.564424372, 0.297979389]),
];

#[test]
fn f_divergences_agree_with_trls_code_on_a_fixed_table() {
    let device = rlhf_core::device_from_env().unwrap();
    let t = |v: f32| Tensor::<1>::from_data(TensorData::new(vec![v], [1]), &device);
    let s = |x: Tensor<1>| f64::from(x.into_scalar::<f32>());
    let divergences = [
        FDivergence::ForwardKl,
        FDivergence::JsDivergence,
        FDivergence::AlphaDivergence { coef: 0.5 },
    ];
    for (c, r, beta, want) in F_DIVERGENCES {
        for (f, want) in divergences.iter().zip(want) {
            let h = f.scores(t(c)).sub(f.scores(t(r)));
            let got = s(dpo_loss(h, beta, 0.0));
            assert!(
                (got - want).abs() < 2e-6 * (1.0 + want.abs()),
                "sigmoid under {f:?} at ℓ_c = {c}, ℓ_r = {r}, β = {beta}: {got} vs TRL {want}"
            );
        }
    }
}
