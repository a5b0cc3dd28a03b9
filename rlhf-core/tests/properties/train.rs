//! Training plumbing: global-norm clipping, gradient accumulation, the KL controller, the device
//! parser, the metrics sink, and checkpoints that resume a run bit for bit.

use burn::nn::{Linear, LinearConfig};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use proptest::prelude::*;
use rand::Rng;
use rlhf_core::train::checkpoint::{
    module_from_bytes, module_to_bytes, optimizer_from_bytes, optimizer_to_bytes,
};
use rlhf_core::train::metrics::read_metrics;
use rlhf_core::train::{
    CheckpointStore, GradAccumulation, LrSchedule, MetricsSink, NewCheckpoint, OptimizerConfig,
    Part, TrainRng, clip_global_grad_norm, global_grad_norm, seeded, soft_update,
};
use rlhf_core::{KlController, parse_device};

use crate::common::*;

fn weights(m: &Linear) -> Vec<f64> {
    let mut w = host(m.weight.val());
    if let Some(b) = &m.bias {
        w.extend(host(b.val()));
    }
    w
}

fn batch(rng: &mut TrainRng, n: usize, dev: &Device) -> (Tensor<2>, Tensor<2>) {
    let xs: Vec<f32> = (0..n * 4).map(|_| rng.random_range(-1.0..1.0)).collect();
    let ys: Vec<f32> = xs
        .chunks(4)
        .map(|x| 3.0 * x[0] - 2.0 * x[1] + x[2] * x[3] + 0.5)
        .collect();
    (
        Tensor::from_data(TensorData::new(xs, [n, 4]), dev),
        Tensor::from_data(TensorData::new(ys, [n, 1]), dev),
    )
}

fn grads_of(model: &Linear, x: Tensor<2>, y: Tensor<2>) -> GradientsParams {
    let loss = model.forward(x).sub(y).square().mean();
    GradientsParams::from_grads(loss.backward(), model)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn global_norm_is_the_norm_of_all_gradients_together(seed in any::<u64>(), max_norm in 0.01f32..2.0) {
        let dev = device().autodiff();
        let model = seeded(&dev, seed, || LinearConfig::new(4, 3).init(&dev));
        let mut rng = TrainRng::seed_from_u64(seed);
        let (x, y) = batch(&mut rng, 5, &dev);
        let y = y.repeat_dim(1, 3);
        let grads = grads_of_any(&model, x, y);
        let gw = host(grads.get::<2>(model.weight.id).unwrap());
        let gb = host(grads.get::<1>(model.bias.as_ref().unwrap().id).unwrap());
        let norm_ref = gw.iter().chain(&gb).map(|g| g * g).sum::<f64>().sqrt();
        let norm = f64::from(global_grad_norm(&model, &grads));
        assert_close(&[norm], &[norm_ref], 1e-4)?;

        let (clipped, before) = clip_global_grad_norm(&model, grads, max_norm);
        prop_assert!((f64::from(before) - norm_ref).abs() < 1e-4 * (1.0 + norm_ref));
        let after = f64::from(global_grad_norm(&model, &clipped));
        prop_assert!(after <= f64::from(max_norm) * (1.0 + 1e-4) + 1e-6, "after {} > {}", after, max_norm);
        if norm_ref <= f64::from(max_norm) {
            assert_close(&[after], &[norm_ref], 1e-4)?;
        } else {
            // the direction is kept: every gradient is scaled by the same factor
            let cw = host(clipped.get::<2>(model.weight.id).unwrap());
            let factor = f64::from(max_norm) / norm_ref;
            assert_close(&cw, &gw.iter().map(|g| g * factor).collect::<Vec<_>>(), 1e-3)?;
        }
    }
}

fn grads_of_any(model: &Linear, x: Tensor<2>, y: Tensor<2>) -> GradientsParams {
    let loss = model.forward(x).sub(y).square().mean();
    GradientsParams::from_grads(loss.backward(), model)
}

#[test]
fn accumulating_equal_micro_batches_gives_the_full_batch_gradient() {
    let dev = device().autodiff();
    let model = seeded(&dev, 3, || LinearConfig::new(4, 1).init(&dev));
    let mut rng = TrainRng::seed_from_u64(3);
    let (x, y) = batch(&mut rng, 8, &dev);
    let full = grads_of(&model, x.clone(), y.clone());
    let mut acc = GradAccumulation::new();
    for k in 0..4 {
        acc.add(
            &model,
            grads_of(
                &model,
                x.clone().narrow(0, 2 * k, 2),
                y.clone().narrow(0, 2 * k, 2),
            ),
            1.0,
        );
    }
    assert_eq!(acc.micro_batches(), 4);
    let mean = acc.take_mean(&model);
    let a = host(full.get::<2>(model.weight.id).unwrap());
    let b = host(mean.get::<2>(model.weight.id).unwrap());
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() < 1e-5, "{a:?} vs {b:?}");
    }
    assert_eq!(acc.micro_batches(), 0);
}

/// A small training run: AdamW, warm-up + linear decay, global clipping, data drawn from the
/// checkpointed RNG. Stops after `stop_after` steps (simulating a kill) when given, saving a
/// checkpoint every `every` steps; resumes from the store's latest checkpoint when one exists.
fn run(
    store: &CheckpointStore,
    init_seed: u64,
    total: u64,
    every: u64,
    stop_after: Option<u64>,
) -> Vec<f64> {
    let dev = device().autodiff();
    let cfg = OptimizerConfig {
        lr: 0.05,
        max_grad_norm: Some(0.5),
        ..OptimizerConfig::default()
    };
    let schedule = LrSchedule::Linear { warmup: 3, total };
    // under the init lock: the other tests of this binary initialise in parallel
    let mut model = seeded(&dev, init_seed, || LinearConfig::new(4, 1).init(&dev));
    let mut optim = cfg.build().unwrap();
    let mut rng = TrainRng::seed_from_u64(99);
    let mut kl = KlController::Adaptive {
        value: 0.1,
        target: 6.0,
        horizon: 100.0,
    };
    let mut step = 0;
    if let Some(ckpt) = store.latest().unwrap() {
        model = module_from_bytes(model, &ckpt.parts["model"]).unwrap();
        optim = optimizer_from_bytes(optim, &ckpt.parts["optimizer"]).unwrap();
        rng = TrainRng::from_state(&serde_json::from_value(ckpt.state["rng"].clone()).unwrap());
        kl = serde_json::from_value(ckpt.state["kl"].clone()).unwrap();
        step = ckpt.step;
    }
    while step < total {
        let (x, y) = batch(&mut rng, 6, &dev);
        let grads = grads_of(&model, x, y);
        let (grads, _norm) = clip_global_grad_norm(&model, grads, cfg.max_grad_norm.unwrap());
        model = optim.step(schedule.lr_at(cfg.lr, step), model, grads);
        kl.update(rng.random_range(0.0..12.0), 6);
        step += 1;
        if step % every == 0 {
            let parts = vec![
                ("model".to_string(), Part::module(model.clone())),
                ("optimizer".to_string(), Part::optimizer(&optim)),
            ];
            let state = serde_json::json!({ "rng": rng.state(), "kl": kl });
            store.save(NewCheckpoint { step, parts, state }).unwrap();
            // the parts, written from burn's records, are the bytes the in-memory encoders give
            let saved = store.load(step).unwrap();
            assert_eq!(
                saved.parts["model"],
                module_to_bytes(model.clone()).unwrap()
            );
            assert_eq!(
                saved.parts["optimizer"],
                optimizer_to_bytes(&optim).unwrap()
            );
        }
        if stop_after == Some(step) {
            return Vec::new();
        }
    }
    let mut w = weights(&model);
    w.push(kl.value());
    w
}

#[test]
fn a_run_killed_after_its_checkpoint_resumes_bit_for_bit() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let straight = run(&CheckpointStore::new(a.path(), 2), 1, 20, 4, None);
    let store = CheckpointStore::new(b.path(), 2);
    // killed at step 10: the last checkpoint is step 8, so steps 9 and 10 are redone
    run(&store, 1, 20, 4, Some(10));
    assert_eq!(store.steps().unwrap(), vec![4, 8]);
    // the resumed process initialises its model from another seed: everything must come from the checkpoint
    let resumed = run(&store, 12345, 20, 4, None);
    assert_eq!(
        straight, resumed,
        "resumed run differs from the uninterrupted one"
    );
    assert_eq!(store.steps().unwrap(), vec![16, 20], "keeps the last two");
}

#[test]
fn a_damaged_checkpoint_is_detected_and_the_previous_good_one_named() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::new(dir.path(), 3);
    for step in [1, 2] {
        let parts = vec![("model".to_string(), Part::bytes(vec![step as u8; 64]))];
        store
            .save(NewCheckpoint {
                step,
                parts,
                state: serde_json::json!({"step": step}),
            })
            .unwrap();
    }
    assert_eq!(store.load(2).unwrap().parts["model"], vec![2u8; 64]);
    let part = dir.path().join("checkpoint-000000002").join("model.bin");
    std::fs::write(&part, vec![2u8; 10]).unwrap();
    let err = store.latest().unwrap_err().to_string();
    assert!(
        err.contains("truncated") && err.contains("checkpoint-000000001"),
        "{err}"
    );
    std::fs::write(&part, vec![3u8; 64]).unwrap();
    let err = store.latest().unwrap_err().to_string();
    assert!(err.contains("corrupt"), "{err}");
    assert_eq!(store.load(1).unwrap().state["step"], 1);
}

#[test]
fn a_checkpoint_of_another_format_is_refused_by_its_version() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::new(dir.path(), 1);
    let parts = vec![("model".to_string(), Part::bytes(vec![7u8; 16]))];
    let saved = store
        .save(NewCheckpoint {
            step: 1,
            parts,
            state: serde_json::json!({}),
        })
        .unwrap();
    let manifest = saved.join("manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let current = format!("\"format\": {}", rlhf_core::train::checkpoint::FORMAT);
    assert!(text.contains(&current), "{text}");
    // A version-1 manifest: no `format` field, FNV-1a checksums.
    let v1 = text
        .replace(&format!("{current},"), "")
        .replace("xxh3_64", "fnv1a64");
    std::fs::write(&manifest, v1).unwrap();
    let err = store.load(1).unwrap_err().to_string();
    assert!(
        err.contains("checkpoint format 1") && err.contains("reads format 2"),
        "{err}"
    );
}

/// A part named twice, or with a character outside `[A-Za-z0-9_-]`, is refused, and no
/// checkpoint is published.
#[test]
fn a_checkpoint_with_a_bad_part_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::new(dir.path(), 1);
    for (names, want) in [
        (vec!["model", "model"], "given twice"),
        (vec!["../model"], "must be [A-Za-z0-9_-]+"),
    ] {
        let parts = names
            .into_iter()
            .map(|n| (n.to_string(), Part::bytes(vec![1u8; 4])))
            .collect();
        let err = store
            .save(NewCheckpoint {
                step: 1,
                parts,
                state: serde_json::json!({}),
            })
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{err}");
        assert!(store.load(1).is_err());
    }
}

#[test]
fn adaptive_kl_controller_follows_its_formula() {
    let mut c = KlController::Adaptive {
        value: 0.1,
        target: 6.0,
        horizon: 10_000.0,
    };
    c.update(9.0, 256); // e = clip(9/6 − 1) = 0.2 (clipped from 0.5)
    assert!((c.value() - 0.1 * (1.0 + 0.2 * 256.0 / 10_000.0)).abs() < 1e-15);
    c.update(5.4, 100); // e = −0.1
    let expected = 0.1 * (1.0 + 0.2 * 256.0 / 10_000.0) * (1.0 - 0.1 * 100.0 / 10_000.0);
    assert!((c.value() - expected).abs() < 1e-15);
    let mut fixed = KlController::default();
    fixed.update(100.0, 1000);
    assert_eq!(fixed.value(), 0.05);
}

#[test]
fn device_strings_parse_or_name_the_missing_feature() {
    assert!(parse_device("flex").is_ok());
    assert!(parse_device("FLEX").is_ok());
    for bad in [
        "",
        "tpu",
        "cuda:x",
        "wgpu:gpu",
        "flex:0",
        "tch:gpu",
        "tch:cuda:x",
    ] {
        assert!(parse_device(bad).is_err(), "{bad} should not parse");
    }
    use rlhf_core::{DeviceSpec, TchKind};
    for (text, spec) in [
        ("tch", DeviceSpec::Tch(TchKind::Cpu)),
        ("tch:cpu", DeviceSpec::Tch(TchKind::Cpu)),
        ("tch:cuda:1", DeviceSpec::Tch(TchKind::Cuda(1))),
        ("TCH:MPS", DeviceSpec::Tch(TchKind::Mps)),
        (
            "ws://10.0.0.2:3000",
            DeviceSpec::Remote("ws://10.0.0.2:3000".into()),
        ),
        (
            "WS://gpu-box:3000",
            DeviceSpec::Remote("ws://gpu-box:3000".into()),
        ),
    ] {
        assert_eq!(text.parse::<DeviceSpec>().unwrap(), spec, "{text}");
    }
    for bad in ["ws://", "ws://:3000"] {
        assert!(bad.parse::<DeviceSpec>().is_err(), "{bad} should not parse");
    }
    #[cfg(not(feature = "remote"))]
    {
        let err = parse_device("ws://127.0.0.1:3000").unwrap_err().to_string();
        assert!(err.contains("--features remote"), "{err}");
    }
    #[cfg(not(feature = "tch"))]
    {
        let err = parse_device("tch").unwrap_err().to_string();
        assert!(err.contains("--features tch"), "{err}");
    }
    #[cfg(not(feature = "cuda"))]
    {
        let err = parse_device("cuda:1").unwrap_err().to_string();
        assert!(err.contains("--features cuda"), "{err}");
    }
    #[cfg(not(feature = "vulkan"))]
    {
        let err = parse_device("vulkan:cpu").unwrap_err().to_string();
        assert!(err.contains("--features vulkan"), "{err}");
    }
}

#[test]
fn optimizer_config_rejects_nonsense() {
    assert!(OptimizerConfig::default().validate().is_ok());
    for bad in [
        OptimizerConfig {
            lr: 0.0,
            ..Default::default()
        },
        OptimizerConfig {
            eps: 0.0,
            ..Default::default()
        },
        OptimizerConfig {
            beta2: 1.0,
            ..Default::default()
        },
        OptimizerConfig {
            max_grad_norm: Some(-1.0),
            ..Default::default()
        },
    ] {
        assert!(bad.build().is_err());
    }
    assert_eq!(OptimizerConfig::default().eps, 1e-5);
}

#[test]
fn metrics_lines_are_json_and_a_resume_drops_lines_past_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m").join("metrics.jsonl");
    let mut sink = MetricsSink::open(&path).unwrap();
    for step in 1..=5 {
        sink.log(
            step,
            &[
                ("train/loss", 1.0 / step as f64),
                ("train/grad_norm", f64::NAN),
            ],
        )
        .unwrap();
    }
    sink.truncate_after(3).unwrap();
    sink.log(4, &[("train/loss", 0.0)]).unwrap();
    let lines = read_metrics(&path).unwrap();
    let steps: Vec<u64> = lines.iter().map(|l| l["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, vec![1, 2, 3, 4]);
    assert!(lines[0]["train/grad_norm"].is_null());
}

/// Two copies of one module trained together by one optimizer: `clone()` keeps parameter ids, so
/// without fresh ids the copies do not train independently; with them each gets its own gradient.
#[test]
fn fresh_param_ids_let_a_clone_train_independently() {
    #[derive(burn::module::Module, Debug)]
    struct Pair {
        a: Linear,
        b: Linear,
    }
    let dev = device().autodiff();
    let a = seeded(&dev, 5, || LinearConfig::new(4, 1).init(&dev));
    let fresh = rlhf_core::train::with_fresh_param_ids(a.clone());
    assert_ne!(fresh.weight.id, a.weight.id);
    assert_eq!(weights(&fresh), weights(&a));
    let mut rng = TrainRng::seed_from_u64(1);
    let (x, y) = batch(&mut rng, 8, &dev);
    // a is trained towards y, b towards −y: one step must move them apart
    let step = |pair: Pair| {
        let loss = pair
            .a
            .forward(x.clone())
            .sub(y.clone())
            .square()
            .mean()
            .add(pair.b.forward(x.clone()).add(y.clone()).square().mean());
        let grads = GradientsParams::from_grads(loss.backward(), &pair);
        let mut optim = OptimizerConfig::default().build().unwrap();
        optim.step(1e-2, pair, grads)
    };
    // (with shared ids burn finds one gradient, for the sum of both uses, and gives it to the
    // first copy it visits; the second does not move)
    let shared = step(Pair {
        a: a.clone(),
        b: a.clone(),
    });
    assert_eq!(weights(&shared.b), weights(&a));
    let independent = step(Pair {
        a: a.clone(),
        b: fresh,
    });
    assert_ne!(weights(&independent.a), weights(&a));
    assert_ne!(weights(&independent.b), weights(&a));
    assert_ne!(weights(&independent.a), weights(&independent.b));
}

proptest! {
    #![proptest_config(config())]

    /// TR-DPO's reference update: every weight of the target becomes `α·source + (1 − α)·target`
    /// (in f64 here), and the target keeps its parameter ids; `α = 0` keeps the target and
    /// `α = 1` copies the source, bit for bit.
    #[test]
    fn a_soft_update_mixes_every_weight(seeds in (0u64..1000, 0u64..1000), alpha in 0.0f32..=1.0) {
        let dev = device();
        let target = seeded(&dev, seeds.0, || LinearConfig::new(4, 3).init(&dev));
        let source = seeded(&dev, seeds.1 + 1000, || LinearConfig::new(4, 3).init(&dev));
        let (t, s) = (weights(&target), weights(&source));
        let ids = (target.weight.id, target.bias.as_ref().unwrap().id);
        let mixed = soft_update(target.clone(), &source, alpha).unwrap();
        let a = f64::from(alpha);
        let want: Vec<f64> = t.iter().zip(&s).map(|(t, s)| a * s + (1.0 - a) * t).collect();
        assert_close(&weights(&mixed), &want, 1e-6)?;
        prop_assert_eq!((mixed.weight.id, mixed.bias.as_ref().unwrap().id), ids);
        prop_assert_eq!(weights(&soft_update(target.clone(), &source, 0.0).unwrap()), t);
        prop_assert_eq!(weights(&soft_update(target, &source, 1.0).unwrap()), s);
    }
}

/// A soft update needs two models of the same parameters and `α` in `[0, 1]`; a trained target
/// stays trained (a new leaf, not a node of the mix).
#[test]
fn a_soft_update_refuses_other_shapes_and_keeps_a_trained_target_trained() {
    let dev = device();
    let target = seeded(&dev, 1, || LinearConfig::new(4, 3).init(&dev));
    let wider = seeded(&dev, 2, || LinearConfig::new(4, 2).init(&dev));
    let no_bias = seeded(&dev, 3, || {
        LinearConfig::new(4, 3).with_bias(false).init(&dev)
    });
    assert!(soft_update(target.clone(), &wider, 0.5).is_err());
    // as many weights, transposed: 4 × 3 against 3 × 4
    let square = |i, o, seed| {
        seeded(&dev, seed, || {
            LinearConfig::new(i, o).with_bias(false).init(&dev)
        })
    };
    let err = soft_update(square(4, 3, 6), &square(3, 4, 5), 0.5).unwrap_err();
    assert!(err.to_string().contains("[4, 3]"), "{err}");
    assert!(soft_update(target.clone(), &no_bias, 0.5).is_err());
    for alpha in [-0.1, 1.5, f32::NAN] {
        assert!(
            soft_update(target.clone(), &target, alpha).is_err(),
            "{alpha}"
        );
    }
    let ad = dev.autodiff();
    let trained = seeded(&ad, 1, || LinearConfig::new(4, 3).init(&ad));
    let source = seeded(&ad, 4, || LinearConfig::new(4, 3).init(&ad));
    let mixed = soft_update(trained, &source, 0.5).unwrap();
    assert!(mixed.weight.val().is_require_grad());
    let loss = mixed.forward(Tensor::<2>::ones([1, 4], &ad)).sum();
    let grads = GradientsParams::from_grads(loss.backward(), &mixed);
    assert!(grads.get::<2>(mixed.weight.id).is_some());
}
