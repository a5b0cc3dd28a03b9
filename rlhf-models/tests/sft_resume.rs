// A binary of its own: these runs are compared bit for bit, which needs the process to themselves.
//! SFT checkpoints resume exactly: a run stopped after a checkpoint and started again in the same
//! directory ends with the same weights and the same metrics lines as a run that never stopped,
//! with and without packing.
//!
//! The tests take `rlhf_testkit::serial()` first: bit-for-bit comparisons hold only when
//! no other test trains in the process at the same time.

use burn::module::Module;
use burn::tensor::Device;
use rlhf_core::host::to_f32_vec;
use rlhf_core::train::metrics::read_metrics;
use rlhf_core::train::{CheckpointStore, OptimizerConfig, RunOptions};
use rlhf_models::sft::Example;
use rlhf_models::{CausalLm, SftConfig, TransformerConfig, train_sft};

fn model(device: &Device) -> CausalLm {
    rlhf_testkit::tiny_llama(device)
}

fn data() -> Vec<Example> {
    rlhf_testkit::sft_examples()
}

fn probe(m: &CausalLm) -> Vec<f32> {
    let m = m.valid();
    let ids: Vec<u32> = (0..12).collect();
    to_f32_vec(m.forward(&m.input(&ids, &[1; 12], 2).unwrap(), None))
}

fn check(packing: Option<usize>, packing_strategy: rlhf_models::PackingStrategy) {
    let device = rlhf_core::device_from_env().unwrap().autodiff();
    let train = data();
    let eval = train[..8].to_vec();
    let cfg = SftConfig {
        epochs: 2,
        batch_size: 8,
        optimizer: OptimizerConfig {
            lr: 1e-2,
            ..OptimizerConfig::default()
        },
        packing,
        packing_strategy,
        eval_every: 4,
        seed: 9,
        ..SftConfig::default()
    };
    let opts = |dir: &std::path::Path| RunOptions {
        checkpoint_every: 3,
        keep_last: 100,
        progress: false,
        ..RunOptions::in_dir(dir)
    };
    // one initialisation for all three runs (tests run in parallel and share the device's RNG)
    let init = model(&device);
    let straight = tempfile::tempdir().unwrap();
    let (a, ra) = train_sft(
        init.clone(),
        &train,
        &eval,
        &cfg,
        &opts(straight.path()),
        &device,
    )
    .unwrap();

    let broken = tempfile::tempdir().unwrap();
    let (_, rb) = train_sft(
        init.clone(),
        &train,
        &eval,
        &cfg,
        &opts(broken.path()),
        &device,
    )
    .unwrap();
    assert_eq!(ra.steps, rb.steps);
    // "crash" right after the checkpoint of step 3: later checkpoints never happened
    CheckpointStore::new(broken.path().join("checkpoints"), 1)
        .discard_after(3)
        .unwrap();
    let (b, rb) = train_sft(init, &train, &eval, &cfg, &opts(broken.path()), &device).unwrap();
    assert_eq!(rb.steps_this_run, ra.steps - 3, "resumed after step 3");
    assert_eq!(probe(&a), probe(&b), "same final weights");
    let ma = read_metrics(&straight.path().join("metrics.jsonl")).unwrap();
    let mb = read_metrics(&broken.path().join("metrics.jsonl")).unwrap();
    assert_eq!(ma, mb, "same metrics lines, none duplicated");
    assert!(ma.iter().any(|l| l.contains_key("eval_perplexity")));
}

#[test]
fn sft_resumes_exactly() {
    let _serial = rlhf_testkit::serial();
    check(None, rlhf_models::PackingStrategy::Bfd);
}

#[test]
fn packed_sft_resumes_exactly() {
    let _serial = rlhf_testkit::serial();
    check(Some(16), rlhf_models::PackingStrategy::Bfd);
    check(Some(16), rlhf_models::PackingStrategy::BfdSplit);
    check(Some(16), rlhf_models::PackingStrategy::Wrapped);
}

/// SFT into `dir` (20 steps, a checkpoint every 3), from one seeded initialisation: the final
/// weights' probe.
fn sft_into(dir: &std::path::Path) -> Vec<f32> {
    // bit for bit holds on the CPU backend (GPU reductions need not be deterministic)
    let device = rlhf_core::parse_device("flex").unwrap().autodiff();
    let init = model(&device);
    let cfg = SftConfig {
        epochs: 2,
        batch_size: 4,
        optimizer: OptimizerConfig {
            lr: 1e-2,
            ..OptimizerConfig::default()
        },
        eval_every: 4,
        seed: 9,
        ..SftConfig::default()
    };
    let opts = RunOptions {
        checkpoint_every: 3,
        progress: false,
        ..RunOptions::in_dir(dir)
    };
    let train = data();
    let (m, _) = train_sft(init, &train, &train[..8], &cfg, &opts, &device).unwrap();
    probe(&m)
}

#[test]
#[ignore = "the child process of sft_survives_sigkill_at_a_random_step"]
fn sft_sigkill_child() {
    let _serial = rlhf_testkit::serial();
    if let Some(dir) = rlhf_testkit::crash::child_dir() {
        sft_into(&dir);
    }
}

#[test]
fn sft_survives_sigkill_at_a_random_step() {
    let _serial = rlhf_testkit::serial();
    let child = rlhf_testkit::test_name!(sft_sigkill_child);
    rlhf_testkit::crash::assert_resumes_after_sigkill(&child, 20, sft_into);
}

/// The metric `name` of the first line of a run's `metrics.jsonl`.
fn first_line(dir: &std::path::Path, name: &str) -> f64 {
    read_metrics(&dir.join("metrics.jsonl")).unwrap()[0][name]
        .as_f64()
        .unwrap()
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(6))]

    /// Gradient accumulation is an implementation detail: `k` micro-batches of unequal sizes and
    /// unequal numbers of target tokens give the step that one batch holding all their examples
    /// gives (the loss is the mean over every target token of the step, as TRL's
    /// `num_items_in_batch` makes it): the same loss, gradient norm and weights after the step.
    #[test]
    fn accumulated_micro_batches_give_the_one_batch_step(n in 5usize..14, micro in 2usize..5, seed in 0u64..100) {
        let device = rlhf_core::device_from_env().unwrap().autodiff();
        let train: Vec<Example> = data().into_iter().skip(seed as usize % 20).take(n).collect();
        let init = model(&device);
        let run = |batch_size: usize, grad_accum: usize| {
            let cfg = SftConfig {
                epochs: 1,
                batch_size,
                grad_accum,
                optimizer: OptimizerConfig {
                    lr: 1e-2,
                    max_grad_norm: None,
                    ..OptimizerConfig::default()
                },
                seed,
                ..SftConfig::default()
            };
            let dir = tempfile::tempdir().unwrap();
            let (m, r) = train_sft(init.clone(), &train, &[], &cfg, &RunOptions { progress: false, ..RunOptions::in_dir(dir.path()) }, &device).unwrap();
            assert_eq!(r.steps, 1);
            (probe(&m), first_line(dir.path(), "loss"), first_line(dir.path(), "grad_norm"))
        };
        let (one_w, one_loss, one_norm) = run(n, 1);
        let (acc_w, acc_loss, acc_norm) = run(micro, n.div_ceil(micro));
        proptest::prop_assert!((one_loss - acc_loss).abs() <= 1e-5 * one_loss.abs(), "loss {} vs {}", one_loss, acc_loss);
        proptest::prop_assert!((one_norm - acc_norm).abs() <= 1e-4 * one_norm, "gradient norm {} vs {}", one_norm, acc_norm);
        let diff = one_w.iter().zip(&acc_w).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        proptest::prop_assert!(diff < 1e-4, "logits after the step differ by {}", diff);
    }
}

/// Gradient checkpointing changes what autodiff keeps, not what it computes: two SFT steps on a
/// checkpointing device give the loss, gradient norm and weights of the same steps without it.
#[test]
fn gradient_checkpointing_gives_the_same_steps() {
    let plain = rlhf_core::device_from_env().unwrap().autodiff();
    let checkpointing = plain.clone().gradient_checkpointing();
    assert_ne!(
        format!("{:?}", plain.gradient_checkpointing_strategy()),
        format!("{:?}", checkpointing.gradient_checkpointing_strategy())
    );
    let train: Vec<Example> = data().into_iter().take(8).collect();
    let run = |device: &Device| {
        let cfg = SftConfig {
            epochs: 1,
            batch_size: 4,
            optimizer: OptimizerConfig {
                lr: 1e-2,
                ..OptimizerConfig::default()
            },
            seed: 3,
            ..SftConfig::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let options = RunOptions {
            progress: false,
            ..RunOptions::in_dir(dir.path())
        };
        let (m, r) = train_sft(model(device), &train, &[], &cfg, &options, device).unwrap();
        assert_eq!(r.steps, 2);
        (
            probe(&m),
            first_line(dir.path(), "loss"),
            first_line(dir.path(), "grad_norm"),
        )
    };
    let (w, loss, norm) = run(&plain);
    let (w_gc, loss_gc, norm_gc) = run(&checkpointing);
    assert!(
        (loss - loss_gc).abs() <= 1e-6 * loss.abs(),
        "loss {loss} vs {loss_gc}"
    );
    assert!(
        (norm - norm_gc).abs() <= 1e-5 * norm,
        "gradient norm {norm} vs {norm_gc}"
    );
    let diff = w
        .iter()
        .zip(&w_gc)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(diff < 1e-5, "logits after two steps differ by {diff}");
    let start = probe(&model(&plain));
    assert!(
        w.iter().zip(&start).any(|(a, b)| (a - b).abs() > 1e-3),
        "the steps moved the weights"
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(6))]
    /// SFT on 2–3 data-parallel replicas, each with a shard of every batch's rows, takes the step
    /// one replica takes on whole batches, with and without accumulation (the shards differ in
    /// rows and in target tokens).
    #[test]
    fn replicas_take_the_step_of_one_replica(
        examples in 3usize..12,
        replicas in 2usize..4,
        grad_accum in 1usize..3,
    ) {
        let _serial = rlhf_testkit::serial();
        let device = rlhf_core::device_from_env().unwrap().autodiff();
        let train: Vec<Example> = data().into_iter().take(examples).collect();
        let cfg = SftConfig {
            epochs: 1,
            batch_size: examples.div_ceil(grad_accum),
            grad_accum,
            optimizer: rlhf_testkit::replicas::gradient_revealing_optimizer(),
            seed: 3,
            ..SftConfig::default()
        };
        let init = model(&device);
        let values = rlhf_core::train::checkpoint::parameter_values::<CausalLm>;
        rlhf_testkit::replicas::assert_replicas_take_one_step(
            &device,
            replicas,
            &values(&init),
            1e-5,
            |options| {
                let (m, r) = train_sft(init.clone(), &train, &[], &cfg, options, &device).unwrap();
                assert_eq!(r.steps, 1);
                values(&m)
            },
        );
    }
}

#[test]
fn replicas_are_refused_for_a_model_with_dropout() {
    let device = rlhf_core::device_from_env().unwrap().autodiff();
    let mut c = TransformerConfig::preset("tiny-llama-1m").unwrap();
    c.vocab_size = 32;
    c.dropout = 0.1;
    let model = rlhf_core::train::seeded(&device, 5, || CausalLm::init(&c, &device).unwrap());
    let options = RunOptions {
        progress: false,
        replicas: rlhf_core::train::Replicas::new(vec![device.clone(); 2]),
        ..RunOptions::default()
    };
    let refused = train_sft(
        model,
        &data(),
        &[],
        &SftConfig::default(),
        &options,
        &device,
    );
    let Err(err) = refused else {
        panic!("two replicas of a model with dropout were accepted");
    };
    assert!(err.to_string().contains("dropout 0.1"), "{err}");
}
