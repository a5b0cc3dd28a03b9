//! The data-parallel check: `n` replicas take the step of one.

/// An optimizer whose first step moves each weight by about its gradient: AdamW with learning
/// rate 1, ε = 1 (the first step is `g/(|g| + 1)`), no decay, no clipping. Two runs whose
/// gradients differ then differ in their weights; with the usual ε, AdamW's first step is close to
/// `lr·sign(g)`, which hides any error in a gradient's size.
pub fn gradient_revealing_optimizer() -> rlhf_core::train::OptimizerConfig {
    rlhf_core::train::OptimizerConfig {
        lr: 1.0,
        eps: 1.0,
        weight_decay: 0.0,
        max_grad_norm: None,
        ..rlhf_core::train::OptimizerConfig::default()
    }
}

/// Asserts that a training step from the weights `start` ends at the same weights on `n`
/// data-parallel replicas on `device` as on one, within `tol`, and that it moved the weights by
/// more than a hundred times `tol` somewhere (so that the equality says something about the
/// step). `step(options)` takes the step with `options` (quiet, in memory, with the replicas) and
/// returns the weights.
pub fn assert_replicas_take_one_step(
    device: &burn::tensor::Device,
    n: usize,
    start: &[f32],
    tol: f32,
    step: impl Fn(&rlhf_core::train::RunOptions) -> Vec<f32>,
) {
    let options = |count: usize| rlhf_core::train::RunOptions {
        replicas: rlhf_core::train::Replicas::new(vec![device.clone(); count]),
        ..rlhf_core::train::RunOptions::quiet()
    };
    let (one, many) = (step(&options(1)), step(&options(n)));
    assert_eq!(one.len(), many.len(), "models of one shape");
    let max_diff = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max)
    };
    let moved = max_diff(start, &one);
    assert!(
        moved > 100.0 * tol,
        "the step moved the weights by {moved} only"
    );
    let diff = max_diff(&one, &many);
    assert!(
        diff <= tol,
        "{n} replicas and one differ by {diff} after a step that moved the weights by {moved}"
    );
}
