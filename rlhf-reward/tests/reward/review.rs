//! Tests from the correctness review. Regressions: the centering coefficient is not silently
//! ignored for K-wise (Plackett–Luce) reward models; dropout is off by default; the critic made
//! from a reward model starts on the rewards' scale; the held-out loss is the training loss.
//! Invariances: accumulated micro-batches give the one-batch step for every reward-model loss;
//! every configuration that validates trains a step without a non-finite value.

use burn::module::Module;
use proptest::prelude::*;
use rlhf_core::Error;
use rlhf_core::host::to_f32_vec;
use rlhf_core::train::metrics::{names, read_metrics};
use rlhf_core::train::{OptimizerConfig, RunOptions};
use rlhf_models::{CausalLm, ScalarModel, TransformerConfig};
use rlhf_reward::{
    LabelledExample, Normalisation, RankedExample, RewardModel, RewardSettings, RmConfig,
    StepAggregate, evaluate_ranked, train_reward_model, train_step_model,
};

fn shape() -> TransformerConfig {
    let mut c = TransformerConfig::preset("tiny-1m").unwrap();
    c.vocab_size = 32;
    c.hidden_size = 32;
    c.num_hidden_layers = 1;
    c.num_attention_heads = 2;
    c.num_key_value_heads = 2;
    c.intermediate_size = 32;
    c
}

fn model(device: &burn::tensor::Device) -> ScalarModel {
    with_dropout(device, 0.0)
}

fn with_dropout(device: &burn::tensor::Device, dropout: f64) -> ScalarModel {
    let shape = TransformerConfig { dropout, ..shape() };
    rlhf_core::train::seeded(device, 5, || {
        ScalarModel::from_backbone(CausalLm::init(&shape, device).unwrap())
    })
}

fn ranked(k: usize) -> Vec<RankedExample> {
    (0..16u32)
        .map(|i| RankedExample {
            prompt: vec![i % 7 + 1, 12],
            responses: (0..k as u32)
                .map(|j| vec![(i + j) % 9 + 2, 20 + j, 0])
                .collect(),
            margin: None,
            gold: None,
        })
        .collect()
}

/// With K = 3 the centering term `η·mean[(Σ_k r_k)²]` enters the loss like it does for pairs:
/// the training loss with η > 0 is not the loss without it.
#[test]
fn centering_applies_to_kwise_reward_models() {
    let device = rlhf_core::device_from_env().unwrap().autodiff();
    let quiet = RunOptions::quiet();
    let loss = |center_eta: f32| {
        let cfg = RmConfig {
            center_eta,
            batch_size: 16,
            // the logged metrics are those of the loss before the step's update
            optimizer: OptimizerConfig {
                lr: 1e-3,
                ..OptimizerConfig::default()
            },
            ..RmConfig::default()
        };
        train_reward_model(model(&device), &ranked(3), &[], &cfg, &quiet, &device)
            .unwrap()
            .1
            .final_train_loss
    };
    let (plain, centred) = (loss(0.0), loss(10.0));
    assert!(
        centred > plain + 1e-6,
        "η = 10 left the K = 3 loss at {centred} (η = 0: {plain})"
    );
}

/// Dropout is off in training by default (TRL's `disable_dropout`): a model with dropout 0.3
/// trains exactly as the same weights without dropout, and comes back without it. (Were it on,
/// training would also draw masks from the generator that this binary's other tests seed.)
#[test]
fn dropout_is_off_by_default() {
    let device = rlhf_core::device_from_env().unwrap().autodiff();
    assert!(RmConfig::default().disable_dropout);
    let train = |dropout: f64| {
        let cfg = RmConfig {
            batch_size: 4,
            ..RmConfig::default()
        };
        let (trained, report) = train_reward_model(
            with_dropout(&device, dropout),
            &ranked(2),
            &[],
            &cfg,
            &RunOptions::quiet(),
            &device,
        )
        .unwrap();
        (
            trained.backbone.dropout(),
            probe(&trained),
            report.final_train_loss,
        )
    };
    let (dropout, weights, loss) = train(0.3);
    assert_eq!(dropout, 0.0);
    let (_, plain_weights, plain_loss) = train(0.0);
    assert_eq!((weights, loss), (plain_weights, plain_loss));
}

/// The critic made from a reward model (TL;DR detail 6) starts on the scale of the rewards the
/// reward model serves: an outcome RM's normalisation `(raw − bias)·gain` is in its value at every
/// token, as the reproduction's critic subtracts its reward model's bias. A process RM's score
/// is not linear in its head, so its critic keeps the head.
#[test]
fn a_critic_made_from_a_reward_model_starts_on_the_rewards_scale() {
    let device = rlhf_core::device_from_env().unwrap();
    let raw = probe(&model(&device));
    let normalised = |settings: RewardSettings| RewardModel {
        model: model(&device),
        config: shape(),
        settings: RewardSettings {
            normalisation: Normalisation {
                bias: 2.5,
                gain: 0.5,
            },
            ..settings
        },
        pad_token_id: None,
    };
    let outcome = probe(&normalised(RewardSettings::outcome()).to_value_model());
    for (v, r) in outcome.iter().zip(&raw) {
        let want = (r - 2.5) * 0.5;
        assert!(
            (v - want).abs() <= 1e-5,
            "value {v}, normalised score {want}"
        );
    }
    let process = normalised(RewardSettings::process(";", StepAggregate::Min));
    assert_eq!(probe(&process.to_value_model()), raw);
}

/// A reward model is evaluated as it is trained: the held-out loss of examples is the training
/// loss of the same examples, cut to the same truncation, with their margins and the centering
/// term. (Read without the truncation, the margins or the centering, it is another number.)
#[test]
fn the_eval_loss_is_the_training_loss() {
    let device = rlhf_core::device_from_env().unwrap().autodiff();
    let examples: Vec<RankedExample> = ranked(2)
        .into_iter()
        .enumerate()
        .map(|(i, mut e)| {
            // a prompt and responses longer than the truncation, and a margin per pair
            e.prompt.splice(0..0, [3, 4, 5]);
            for r in &mut e.responses {
                r.extend([7, 8, i as u32 % 5 + 1]);
            }
            e.margin = Some(0.5 + i as f32 * 0.1);
            e
        })
        .collect();
    let cfg = RmConfig {
        batch_size: examples.len(),
        truncation: Some((2, 2)),
        use_margin: true,
        center_eta: 0.3,
        ..RmConfig::default()
    };
    let start = model(&device);
    let eval = evaluate_ranked(&start, &examples, &cfg, &device).unwrap();
    // one step over every example: its logged loss is that of the weights before the update
    let (_, report) =
        train_reward_model(start, &examples, &[], &cfg, &RunOptions::quiet(), &device).unwrap();
    assert!(
        (eval.loss - report.final_train_loss).abs() <= 1e-5 * (1.0 + eval.loss.abs()),
        "eval loss {}, training loss {}",
        eval.loss,
        report.final_train_loss
    );
}

/// Step-labelled examples with different numbers of steps (so micro-batches hold different
/// numbers of labels).
fn labelled() -> Vec<LabelledExample> {
    (0..12u32)
        .map(|i| LabelledExample {
            prompt: vec![i % 7 + 1, 12],
            segments: (0..1 + i % 3).map(|j| vec![(i + j) % 9 + 2, 25]).collect(),
            labels: (0..1 + i % 3).map(|j| (i + j) % 2 == 0).collect(),
        })
        .collect()
}

fn probe(m: &ScalarModel) -> Vec<f32> {
    let m = m.valid();
    let ids: Vec<u32> = (1..13).collect();
    to_f32_vec(m.per_token(&m.input(&ids, &[1; 12], 2).unwrap()))
}

fn first_line(dir: &std::path::Path, name: &str) -> f64 {
    read_metrics(&dir.join("metrics.jsonl")).unwrap()[0][name]
        .as_f64()
        .unwrap()
}

fn in_dir(dir: &std::path::Path) -> RunOptions {
    RunOptions {
        progress: false,
        ..RunOptions::in_dir(dir)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]

    /// Bradley–Terry (with margins and centering), Plackett–Luce (K = 3, centering) and the
    /// step model's BCE (a mean over labels, which micro-batches hold unevenly): `k` micro-batches
    /// give the step of one batch holding all their examples.
    #[test]
    fn accumulated_micro_batches_give_the_one_batch_step(n in 5usize..12, micro in 2usize..5) {
        let device = rlhf_core::device_from_env().unwrap().autodiff();
        let cfg = |batch_size: usize, grad_accum: usize| RmConfig {
            batch_size,
            grad_accum,
            center_eta: 0.1,
            use_margin: true,
            optimizer: OptimizerConfig {
                lr: 1e-2,
                max_grad_norm: None,
                ..OptimizerConfig::default()
            },
            ..RmConfig::default()
        };
        let check = |name: &str, run: &dyn Fn(usize, usize, &std::path::Path) -> ScalarModel| -> Result<(), TestCaseError> {
            let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let one = probe(&run(n, 1, a.path()));
            let acc = probe(&run(micro, n.div_ceil(micro), b.path()));
            for m in [names::TRAIN_LOSS, names::TRAIN_GRAD_NORM] {
                let (x, y) = (first_line(a.path(), m), first_line(b.path(), m));
                prop_assert!((x - y).abs() <= 1e-4 * x.abs().max(1e-3), "{}: {} {} vs {}", name, m, x, y);
            }
            let diff = one.iter().zip(&acc).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            prop_assert!(diff < 1e-4, "{}: scores after the step differ by {}", name, diff);
            Ok(())
        };
        for k in [2, 3] {
            let mut data: Vec<RankedExample> = ranked(k).into_iter().take(n).collect();
            for (i, e) in data.iter_mut().enumerate() {
                e.margin = Some(i as f32 * 0.1);
            }
            check(&format!("K = {k}"), &|b, acc, dir| {
                train_reward_model(model(&device), &data, &[], &cfg(b, acc), &in_dir(dir), &device).unwrap().0
            })?;
        }
        let steps: Vec<LabelledExample> = labelled().into_iter().take(n).collect();
        check("step labels", &|b, acc, dir| {
            train_step_model(model(&device), &steps, &[], &cfg(b, acc), &in_dir(dir), &device).unwrap().0
        })?;
    }

    /// Any configuration the trainer accepts trains a step with finite metrics; any it refuses,
    /// it refuses as a configuration error before training. Fields are drawn from their valid
    /// ranges most of the time, so that both branches are taken.
    #[test]
    fn every_configuration_that_validates_trains_a_finite_step(
        center_eta in prop_oneof![4 => Just(0.0f32), 4 => 0.0f32..10.0, 1 => Just(f32::NAN), 1 => -1.0f32..0.0],
        lr in prop_oneof![9 => 1e-5f64..1e-2, 1 => -1e-3f64..=0.0],
        batch_size in prop_oneof![9 => 1usize..5, 1 => Just(0)],
        grad_accum in prop_oneof![9 => 1usize..3, 1 => Just(0)],
        epochs in prop_oneof![9 => Just(1usize), 1 => Just(0)],
        k in 2usize..4,
    ) {
        let device = rlhf_core::device_from_env().unwrap().autodiff();
        let cfg = RmConfig {
            center_eta,
            batch_size,
            grad_accum,
            epochs,
            use_margin: true,
            optimizer: OptimizerConfig { lr, ..OptimizerConfig::default() },
            ..RmConfig::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let result = train_reward_model(model(&device), &ranked(k), &ranked(k)[..2], &cfg, &in_dir(dir.path()), &device);
        match cfg.validate() {
            Ok(()) => {
                let (_, report) = result.unwrap();
                prop_assert!(report.final_train_loss.is_finite(), "{:?}", cfg);
                for line in read_metrics(&dir.path().join("metrics.jsonl")).unwrap() {
                    for (key, v) in line {
                        prop_assert!(v.as_f64().is_none_or(f64::is_finite), "{:?}: {} = {}", cfg, key, v);
                    }
                }
            }
            Err(_) => prop_assert!(matches!(result, Err(Error::Config(_))), "{:?}", cfg),
        }
    }
}

/// A causal LM's checkpoint has no score head: `RewardModel::load` refuses it, naming the
/// directory, rather than serving a head of zeros (which scores every response 0).
#[test]
fn loading_a_checkpoint_without_a_score_head_as_a_reward_model_is_refused() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../rlhf-models/tests/fixtures/hf/tiny-llama");
    let device = rlhf_core::parse_device("flex").unwrap();
    let err = RewardModel::load(&dir, &device).err().unwrap().to_string();
    assert!(
        err.contains("no score head") && err.contains("tiny-llama"),
        "{err}"
    );
}
