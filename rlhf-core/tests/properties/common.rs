//! Shared helpers: the test device, tensor ⇄ `f64` conversions, and proptest strategies.

#![allow(dead_code)]

use burn::tensor::{Device, Int, Tensor, TensorData};
use proptest::prelude::*;
use rlhf_core::host::tensor_from_f64;

/// The device the tests run on: `RLHF_DEVICE` or `flex`.
pub fn device() -> Device {
    rlhf_core::device_from_env().expect("RLHF_DEVICE names a compiled-in backend")
}

/// Absolute tolerance for f32 results compared with f64 references. GPU backends (and lavapipe)
/// may reorder reductions, so they get a little more room.
pub const TOL: f64 = 2e-4;

/// Proptest configuration: few cases, so the whole suite stays fast on two cores and on lavapipe.
pub fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(48);
    ProptestConfig {
        cases,
        max_shrink_iters: 64,
        ..ProptestConfig::default()
    }
}

pub fn t1(v: &[f64], dev: &Device) -> Tensor<1> {
    tensor_from_f64(v, [v.len()], dev)
}

pub fn t2(v: &[f64], shape: [usize; 2], dev: &Device) -> Tensor<2> {
    tensor_from_f64(v, shape, dev)
}

pub fn t3(v: &[f64], shape: [usize; 3], dev: &Device) -> Tensor<3> {
    tensor_from_f64(v, shape, dev)
}

pub fn ids2(v: &[usize], shape: [usize; 2], dev: &Device) -> Tensor<2, Int> {
    Tensor::from_data(
        TensorData::new(v.iter().map(|&x| x as i64).collect::<Vec<_>>(), shape),
        dev,
    )
}

pub use rlhf_core::host::to_f64_vec as host;

pub fn scalar(x: Tensor<1>) -> f64 {
    f64::from(x.into_scalar::<f32>())
}

pub fn mask_f(m: &[bool]) -> Vec<f64> {
    m.iter().map(|&b| if b { 1.0 } else { 0.0 }).collect()
}

/// Asserts `|a − b| ≤ tol·(1 + |b|)` elementwise.
pub fn assert_close(actual: &[f64], expected: &[f64], tol: f64) -> Result<(), TestCaseError> {
    prop_assert_eq!(actual.len(), expected.len());
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        prop_assert!(
            (a - e).abs() <= tol * (1.0 + e.abs()),
            "index {}: got {}, expected {}",
            i,
            a,
            e
        );
    }
    Ok(())
}

/// A per-token problem: `[batch, seq]` values, with a mask that has at least one real token.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub batch: usize,
    pub seq: usize,
    pub a: Vec<f64>,
    pub b: Vec<f64>,
    pub c: Vec<f64>,
    pub mask: Vec<bool>,
    /// Other values to put at masked positions (to check they change nothing).
    pub junk: Vec<f64>,
}

impl Tokens {
    pub fn shape(&self) -> [usize; 2] {
        [self.batch, self.seq]
    }
    pub fn maskf(&self) -> Vec<f64> {
        mask_f(&self.mask)
    }
    /// `x` with its masked positions replaced by junk.
    pub fn corrupt(&self, x: &[f64]) -> Vec<f64> {
        x.iter()
            .zip(&self.mask)
            .zip(&self.junk)
            .map(|((&v, &m), &j)| if m { v } else { j })
            .collect()
    }
}

/// Random `[batch, seq]` triples of values in `±range` with a random mask (≥ `min_real` real tokens).
pub fn tokens(range: f64, min_real: usize) -> impl Strategy<Value = Tokens> {
    (1usize..=3, 1usize..=6)
        .prop_filter("room for the real tokens", move |(b, s)| {
            b * s >= min_real.max(1)
        })
        .prop_flat_map(move |(batch, seq)| {
            let n = batch * seq;
            (
                Just(batch),
                Just(seq),
                prop::collection::vec(-range..range, n),
                prop::collection::vec(-range..range, n),
                prop::collection::vec(-range..range, n),
                prop::collection::vec(any::<bool>(), n),
                prop::collection::vec(-1e3f64..1e3, n),
            )
                .prop_filter("enough real tokens", move |(_, _, _, _, _, m, _)| {
                    m.iter().filter(|&&x| x).count() >= min_real
                })
                .prop_map(|(batch, seq, a, b, c, mask, junk)| Tokens {
                    batch,
                    seq,
                    a,
                    b,
                    c,
                    mask,
                    junk,
                })
        })
}

/// Right-padded response masks: each row is `len_b` ones then zeros (len ≥ 1), as the trainers
/// build them.
pub fn right_padded(batch: usize, seq: usize, lens: &[usize]) -> Vec<bool> {
    (0..batch)
        .flat_map(|b| (0..seq).map(move |t| t < lens[b]))
        .collect()
}
