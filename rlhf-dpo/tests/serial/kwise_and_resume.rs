//! The trainer beyond pairs and beyond one run: EXO-rw on K = 3 groups with rewards lowers its
//! loss; the wrong K or missing rewards are refused with the group named; a DPO run stopped after
//! a checkpoint resumes to the same weights and metrics as an uninterrupted one.
//!
//! The tests take `rlhf_testkit::serial()` first: bit-for-bit comparisons hold only when
//! no other test trains in the process at the same time.

use burn::module::Module;
use rlhf_core::host::to_f32_vec;
use rlhf_core::train::metrics::read_metrics;
use rlhf_core::train::{CheckpointStore, OptimizerConfig, RunOptions};
use rlhf_dpo::{DpoConfig, Group, OfflineLoss, RefCache, train_offline};
use rlhf_models::{CausalLm, TransformerConfig};

fn model(device: &burn::tensor::Device) -> CausalLm {
    let mut c = TransformerConfig::preset("tiny-1m").unwrap();
    c.vocab_size = 32;
    c.hidden_size = 32;
    c.num_hidden_layers = 1;
    c.num_attention_heads = 2;
    c.num_key_value_heads = 2;
    c.intermediate_size = 32;
    // under the init lock: tests in parallel share burn's generator
    rlhf_core::train::seeded(device, 21, || CausalLm::init(&c, device).unwrap())
}

fn groups(k: usize) -> Vec<Group> {
    (0..24u32)
        .map(|i| Group {
            prompt: vec![i % 9 + 1, i % 5 + 11],
            responses: (0..k as u32)
                .map(|j| vec![(i + 3 * j) % 20 + 1, j + 21, 0])
                .collect(),
            rewards: Some((0..k).map(|j| j as f32).collect()),
        })
        .collect()
}

#[test]
fn exo_rw_learns_on_k3_and_bad_groups_are_refused() {
    let _serial = rlhf_testkit::serial();
    let device = rlhf_core::device_from_env().unwrap().autodiff();
    let init = model(&device);
    let data = groups(3);
    let cfg = DpoConfig {
        loss: OfflineLoss::ExoRw { beta_r: 1.0 },
        beta: 1.0,
        epochs: 3,
        batch_size: 8,
        optimizer: OptimizerConfig {
            lr: 1e-2,
            ..OptimizerConfig::default()
        },
        ..DpoConfig::default()
    };
    let none = RefCache::new(None);
    let before = rlhf_dpo::evaluate(&init, &data, &vec![vec![0.0; 3]; 24], &cfg, &device).unwrap();
    let (_, report) = train_offline(
        init.clone(),
        &init,
        &data,
        &data,
        &cfg,
        &none,
        &RunOptions::quiet(),
        &device,
    )
    .unwrap();
    assert!(
        report.eval.loss < 0.7 * before.loss.max(1e-6) || report.eval.loss < before.loss - 0.05,
        "EXO-rw loss {} → {}",
        before.loss,
        report.eval.loss
    );
    // pairs-only losses refuse K = 3; reward losses refuse groups without rewards
    let dpo = DpoConfig {
        loss: OfflineLoss::Dpo {
            label_smoothing: 0.0,
        },
        ..cfg.clone()
    };
    let err = train_offline(
        init.clone(),
        &init,
        &data,
        &[],
        &dpo,
        &none,
        &RunOptions::quiet(),
        &device,
    )
    .unwrap_err();
    assert!(err.to_string().contains("K = 3"), "{err}");
    let mut no_rewards = groups(3);
    no_rewards[5].rewards = None;
    let err = train_offline(
        init.clone(),
        &init,
        &no_rewards,
        &[],
        &cfg,
        &none,
        &RunOptions::quiet(),
        &device,
    )
    .unwrap_err();
    assert!(err.to_string().contains("group 5"), "{err}");
}

#[test]
fn dpo_training_resumes_exactly() {
    let _serial = rlhf_testkit::serial();
    let device = rlhf_core::device_from_env().unwrap().autodiff();
    let init = model(&device);
    let data = groups(2);
    let cfg = DpoConfig {
        epochs: 2,
        batch_size: 6,
        eval_every: 2,
        optimizer: OptimizerConfig {
            lr: 1e-2,
            ..OptimizerConfig::default()
        },
        seed: 4,
        ..DpoConfig::default()
    };
    let opts = |dir: &std::path::Path| RunOptions {
        checkpoint_every: 3,
        keep_last: 100,
        progress: false,
        ..RunOptions::in_dir(dir)
    };
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = RefCache::new(Some(cache_dir.path()));
    let straight = tempfile::tempdir().unwrap();
    let (a, ra) = train_offline(
        init.clone(),
        &init,
        &data,
        &data,
        &cfg,
        &cache,
        &opts(straight.path()),
        &device,
    )
    .unwrap();
    assert_eq!(ra.steps, 8);
    let broken = tempfile::tempdir().unwrap();
    train_offline(
        init.clone(),
        &init,
        &data,
        &data,
        &cfg,
        &cache,
        &opts(broken.path()),
        &device,
    )
    .unwrap();
    // "crash" right after the checkpoint of step 3: later checkpoints never happened
    CheckpointStore::new(broken.path().join("checkpoints"), 1)
        .discard_after(3)
        .unwrap();
    let (b, rb) = train_offline(
        init.clone(),
        &init,
        &data,
        &data,
        &cfg,
        &cache,
        &opts(broken.path()),
        &device,
    )
    .unwrap();
    assert_eq!((rb.steps_this_run, rb.reference_forward_batches), (5, 0));
    let probe = |m: &CausalLm| {
        let m = m.valid();
        let ids: Vec<u32> = (0..8).collect();
        to_f32_vec(m.forward(&m.input(&ids, &[1; 8], 2).unwrap(), None))
    };
    assert_eq!(probe(&a), probe(&b));
    assert_eq!(
        read_metrics(&straight.path().join("metrics.jsonl")).unwrap(),
        read_metrics(&broken.path().join("metrics.jsonl")).unwrap()
    );
}

/// DPO into `dir` (24 steps, a checkpoint every 5), from one seeded initialisation: the final
/// policy's logits on a probe.
fn dpo_into(dir: &std::path::Path) -> Vec<f32> {
    // bit for bit holds on the CPU backend (GPU reductions need not be deterministic)
    let device = rlhf_core::parse_device("flex").unwrap().autodiff();
    let init = model(&device);
    let data = groups(2);
    let cfg = DpoConfig {
        epochs: 2,
        batch_size: 2,
        eval_every: 5,
        optimizer: OptimizerConfig {
            lr: 1e-2,
            ..OptimizerConfig::default()
        },
        seed: 4,
        ..DpoConfig::default()
    };
    let opts = RunOptions {
        checkpoint_every: 5,
        progress: false,
        ..RunOptions::in_dir(dir)
    };
    let cache = RefCache::new(None);
    let (m, _) = train_offline(
        init.clone(),
        &init,
        &data,
        &data[..6],
        &cfg,
        &cache,
        &opts,
        &device,
    )
    .unwrap();
    let m = m.valid();
    let ids: Vec<u32> = (0..12).collect();
    to_f32_vec(m.forward(&m.input(&ids, &[1; 12], 2).unwrap(), None))
}

#[test]
#[ignore = "the child process of dpo_survives_sigkill_at_a_random_step"]
fn dpo_sigkill_child() {
    let _serial = rlhf_testkit::serial();
    if let Some(dir) = rlhf_testkit::crash::child_dir() {
        dpo_into(&dir);
    }
}

#[test]
fn dpo_survives_sigkill_at_a_random_step() {
    let _serial = rlhf_testkit::serial();
    let child = rlhf_testkit::test_name!(dpo_sigkill_child);
    rlhf_testkit::crash::assert_resumes_after_sigkill(&child, 24, dpo_into);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(6))]
    /// DPO on 2–3 data-parallel replicas, each with a shard of every batch's pairs, takes the step
    /// one replica takes on whole batches.
    #[test]
    fn replicas_take_the_step_of_one_replica(
        pairs in 3usize..12,
        replicas in 2usize..4,
        grad_accum in 1usize..3,
    ) {
        let _serial = rlhf_testkit::serial();
        let device = rlhf_core::device_from_env().unwrap().autodiff();
        let init = model(&device);
        let data = &groups(2)[..pairs];
        let cfg = DpoConfig {
            epochs: 1,
            batch_size: pairs.div_ceil(grad_accum),
            grad_accum,
            optimizer: rlhf_testkit::replicas::gradient_revealing_optimizer(),
            seed: 4,
            ..DpoConfig::default()
        };
        let cache = RefCache::new(None);
        let values = rlhf_core::train::checkpoint::parameter_values::<CausalLm>;
        rlhf_testkit::replicas::assert_replicas_take_one_step(
            &device,
            replicas,
            &values(&init),
            1e-5,
            |options| {
                let (m, r) =
                    train_offline(init.clone(), &init, data, &[], &cfg, &cache, options, &device)
                        .unwrap();
                assert_eq!(r.steps, 1);
                values(&m)
            },
        );
    }
}
