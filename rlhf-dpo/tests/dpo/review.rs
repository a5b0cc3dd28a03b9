//! Tests from the correctness review. Regressions: the reference cache's key covers the
//! truncation; configurations that divide by zero (or make the loss constant), and empty prompts,
//! are refused before training; IPO and SimPO log the implicit rewards of the log-probs their
//! losses use (averaged over response tokens). Invariances: accumulated micro-batches give the
//! one-batch step for every loss (`sft`, a token mean per micro-batch as TRL's, where the chosen
//! responses have one length); padding never changes a sequence log-prob; every configuration
//! that validates trains a step without a non-finite value. Each pair loss reads its log-probs
//! through the trainer; a mix of losses is their weighted sum.

use burn::module::Module;
use proptest::prelude::*;
use rlhf_core::Error;
use rlhf_core::host::to_f32_vec;
use rlhf_core::train::metrics::{names, read_metrics};
use rlhf_core::train::{OptimizerConfig, RunOptions};
use rlhf_dpo::{
    DpoConfig, FDivergence, Group, OfflineLoss, RefCache, sequence_logps, sequence_logps_ld,
    train_offline,
};
use rlhf_models::{CausalLm, TransformerConfig};

fn model(device: &burn::tensor::Device, seed: u64) -> CausalLm {
    let mut c = TransformerConfig::preset("tiny-1m").unwrap();
    c.vocab_size = 32;
    c.hidden_size = 32;
    c.num_hidden_layers = 1;
    c.num_attention_heads = 2;
    c.num_key_value_heads = 2;
    c.intermediate_size = 32;
    rlhf_core::train::seeded(device, seed, || CausalLm::init(&c, device).unwrap())
}

/// Pairs whose responses have different lengths (so averaging and summing differ).
fn pairs() -> Vec<Group> {
    (0..8u32)
        .map(|i| Group {
            prompt: vec![i % 7 + 1, i % 5 + 11, 3],
            responses: vec![vec![i % 9 + 2, 21, 22, 0], vec![(i + 4) % 9 + 2, 0]],
            rewards: Some(vec![1.0, 0.0]),
        })
        .collect()
}

fn base() -> DpoConfig {
    DpoConfig {
        epochs: 1,
        batch_size: 8,
        optimizer: OptimizerConfig {
            lr: 1e-3,
            ..OptimizerConfig::default()
        },
        ..DpoConfig::default()
    }
}

/// A second run in the same cache directory with another truncation must not read the first
/// run's reference log-probs, which were computed on differently cut sequences.
#[test]
fn a_new_truncation_is_a_new_reference_cache_key() {
    let device = rlhf_core::device_from_env().unwrap().autodiff();
    let reference = model(&device, 1);
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = RefCache::new(Some(cache_dir.path()));
    let run = |truncation| {
        let cfg = DpoConfig {
            truncation,
            ..base()
        };
        train_offline(
            reference.clone(),
            &reference,
            &pairs(),
            &[],
            &cfg,
            &cache,
            &RunOptions::quiet(),
            &device,
        )
        .unwrap()
        .1
    };
    assert!(run(None).reference_forward_batches > 0);
    assert_eq!(run(None).reference_forward_batches, 0, "same inputs: read");
    assert!(
        run(Some((2, 1))).reference_forward_batches > 0,
        "a cut to 1 response token read the uncut run's reference log-probs"
    );
}

/// Each of these makes a loss divide by zero (or, β = 0, a constant): refused as a
/// configuration error before the first step, not trained into NaN or skipped steps.
#[test]
fn configurations_that_divide_by_zero_are_refused() {
    let device = rlhf_core::device_from_env().unwrap().autodiff();
    let reference = model(&device, 1);
    let cases = [
        ("robust ε = ½", OfflineLoss::Robust { eps: 0.5 }, 0.1),
        ("EXO-pref ε = 0", OfflineLoss::ExoPref { eps: 0.0 }, 0.1),
        (
            "DPO β = 0",
            OfflineLoss::Dpo {
                label_smoothing: 0.0,
            },
            0.0,
        ),
        ("IPO β < 0", OfflineLoss::Ipo, -0.1),
        ("EXO-rw β_r = 0", OfflineLoss::ExoRw { beta_r: 0.0 }, 0.1),
        ("DPO-rw β_r < 0", OfflineLoss::DpoRw { beta_r: -1.0 }, 0.1),
        ("DiscoPOP τ = 0", OfflineLoss::Discopop { tau: 0.0 }, 0.1),
    ];
    for (what, loss, beta) in cases {
        let cfg = DpoConfig {
            loss,
            beta,
            ..base()
        };
        let result = train_offline(
            reference.clone(),
            &reference,
            &pairs(),
            &[],
            &cfg,
            &RefCache::new(None),
            &RunOptions::quiet(),
            &device,
        );
        assert!(
            matches!(result, Err(Error::Config(_))),
            "{what}: {:?}",
            result.map(|r| r.1.final_train_loss)
        );
    }
}

/// A group with an empty prompt is refused, with its index: its responses' first tokens would be
/// read where no token predicts them (as the PPO and online trainers refuse such prompts).
#[test]
fn an_empty_prompt_is_refused() {
    let device = rlhf_core::device_from_env().unwrap().autodiff();
    let reference = model(&device, 1);
    let mut data = pairs();
    data[3].prompt.clear();
    let err = train_offline(
        reference.clone(),
        &reference,
        &data,
        &[],
        &base(),
        &RefCache::new(None),
        &RunOptions::quiet(),
        &device,
    )
    .map(|r| r.1.final_train_loss)
    .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
    assert!(
        err.to_string().contains("group 3 has an empty prompt"),
        "{err}"
    );
}

/// IPO and SimPO optimise log-probs averaged over response tokens; the implicit rewards they log
/// are those of the same averaged log-probs (as TRL's CPO trainer and, before 0.29, its DPO
/// trainer log them), not of the summed ones.
#[test]
fn ipo_and_simpo_log_rewards_of_averaged_logprobs() {
    let device = rlhf_core::device_from_env().unwrap().autodiff();
    let reference = model(&device, 1);
    let policy = model(&device, 2);
    let data = pairs();
    let refs: Vec<&Group> = data.iter().collect();
    let inference = device.clone().without_autodiff();
    let logps = |m: &CausalLm| {
        let (sum, len) = sequence_logps(&m.valid(), &refs, None, &inference).unwrap();
        let (sum, len) = (to_f32_vec(sum), to_f32_vec(len));
        let mean: Vec<f64> = sum
            .iter()
            .zip(&len)
            .map(|(s, l)| f64::from(*s) / f64::from(*l))
            .collect();
        mean
    };
    let (pol, refe) = (logps(&policy), logps(&reference));
    for (loss, with_reference) in [
        (OfflineLoss::Ipo, true),
        (OfflineLoss::Simpo { gamma: 0.5 }, false),
    ] {
        let beta = 0.5f64;
        let cfg = DpoConfig {
            loss,
            beta: beta as f32,
            // the logged metrics are those of the loss before the step's update
            optimizer: OptimizerConfig {
                lr: 1e-3,
                ..OptimizerConfig::default()
            },
            ..base()
        };
        let lines = crate::logged_run(policy.clone(), &reference, &data, &[], &cfg, &device);
        let logged = |name: &str| lines[0].get(name).and_then(|v| v.as_f64()).unwrap();
        let reward = |i: usize| beta * (pol[i] - if with_reference { refe[i] } else { 0.0 });
        let n = data.len();
        let chosen = (0..n).map(|g| reward(2 * g)).sum::<f64>() / n as f64;
        let rejected = (0..n).map(|g| reward(2 * g + 1)).sum::<f64>() / n as f64;
        for (name, expected) in [
            (names::REWARDS_CHOSEN, chosen),
            (names::REWARDS_REJECTED, rejected),
        ] {
            let got = logged(name);
            assert!(
                (got - expected).abs() < 1e-4 * (1.0 + expected.abs()),
                "{loss:?} {name}: logged {got}, averaged log-probs give {expected}"
            );
        }
    }
}

/// Every loss the offline trainer offers, with ordinary parameters.
fn every_loss() -> Vec<OfflineLoss> {
    vec![
        OfflineLoss::Dpo {
            label_smoothing: 0.0,
        },
        OfflineLoss::Dpo {
            label_smoothing: 0.1,
        },
        OfflineLoss::Robust { eps: 0.2 },
        OfflineLoss::Ipo,
        OfflineLoss::Hinge,
        OfflineLoss::Simpo { gamma: 0.5 },
        OfflineLoss::ExoPref { eps: 1e-3 },
        OfflineLoss::ExoRw { beta_r: 0.5 },
        OfflineLoss::DpoRw { beta_r: 0.5 },
        OfflineLoss::SigmoidNorm,
        OfflineLoss::NcaPair,
        OfflineLoss::BcoPair,
        OfflineLoss::SppoHard,
        OfflineLoss::ApoZero,
        OfflineLoss::ApoDown,
        OfflineLoss::Discopop { tau: 0.05 },
        // a token mean per micro-batch, as TRL's: the one-batch step here, where every chosen
        // response has one length
        OfflineLoss::Sft,
        // not the AOT losses: they match values by rank within a micro-batch, so micro-batches
        // do not add up to the one-batch step (in TRL neither)
    ]
}

/// The metric `name` of the first line of a run's `metrics.jsonl`.
fn first_line(dir: &std::path::Path, name: &str) -> f64 {
    read_metrics(&dir.join("metrics.jsonl")).unwrap()[0][name]
        .as_f64()
        .unwrap()
}

/// Logits of a fixed probe, to compare weights.
fn probe(m: &CausalLm) -> Vec<f32> {
    let m = m.valid();
    let ids: Vec<u32> = (1..13).collect();
    to_f32_vec(m.forward(&m.input(&ids, &[1; 12], 2).unwrap(), None))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// For every loss, `k` micro-batches (the last one smaller) give the step of one batch that
    /// holds all their groups: the same loss, gradient norm and weights.
    #[test]
    fn accumulated_micro_batches_give_the_one_batch_step(n in 5usize..9, micro in 2usize..4) {
        let device = rlhf_core::device_from_env().unwrap().autodiff();
        let reference = model(&device, 1);
        let policy = model(&device, 2);
        let data: Vec<Group> = pairs().into_iter().take(n).collect();
        for loss in every_loss() {
            let run = |batch_size: usize, grad_accum: usize| {
                let cfg = DpoConfig {
                    loss,
                    batch_size,
                    grad_accum,
                    optimizer: OptimizerConfig {
                        lr: 1e-2,
                        max_grad_norm: None,
                        ..OptimizerConfig::default()
                    },
                    ..base()
                };
                let dir = tempfile::tempdir().unwrap();
                let (m, r) = train_offline(policy.clone(), &reference, &data, &[], &cfg, &RefCache::new(None), &RunOptions::quiet_in(dir.path()), &device).unwrap();
                assert_eq!(r.steps, 1);
                (probe(&m), first_line(dir.path(), names::TRAIN_LOSS), first_line(dir.path(), names::TRAIN_GRAD_NORM))
            };
            let (one_w, one_loss, one_norm) = run(n, 1);
            let (acc_w, acc_loss, acc_norm) = run(micro, n.div_ceil(micro));
            prop_assert!((one_loss - acc_loss).abs() <= 1e-5 * one_loss.abs().max(1e-3), "{:?}: loss {} vs {}", loss, one_loss, acc_loss);
            prop_assert!((one_norm - acc_norm).abs() <= 1e-4 * one_norm.max(1e-3), "{:?}: gradient norm {} vs {}", loss, one_norm, acc_norm);
            let diff = one_w.iter().zip(&acc_w).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            prop_assert!(diff < 1e-4, "{:?}: logits after the step differ by {}", loss, diff);
        }
    }

    /// A group's sequence log-probs are the same alone and in a batch where a longer group pads
    /// it (its prompt further on the left, its responses further on the right).
    #[test]
    fn padding_never_changes_a_sequence_logprob(extra_prompt in 0usize..6, extra_response in 0usize..6) {
        let device = rlhf_core::device_from_env().unwrap();
        let policy = model(&device, 2);
        let short = pairs().remove(0);
        let long = Group {
            prompt: (0..short.prompt.len() + extra_prompt).map(|i| (i % 20) as u32 + 1).collect(),
            responses: vec![vec![5; 4 + extra_response], vec![6; 1 + extra_response]],
            rewards: None,
        };
        let alone = to_f32_vec(sequence_logps(&policy, &[&short], None, &device).unwrap().0);
        let padded = to_f32_vec(sequence_logps(&policy, &[&short, &long], None, &device).unwrap().0);
        for (a, b) in alone.iter().zip(&padded) {
            prop_assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "{} vs {}", a, b);
        }
    }

    /// Any configuration the trainer accepts trains a step with finite loss and metrics; any it
    /// refuses, it refuses as a configuration error before training. Fields are drawn from their
    /// valid ranges most of the time, so that both branches are taken.
    #[test]
    fn every_configuration_that_validates_trains_a_finite_step(
        kind in 0usize..19,
        param in prop_oneof![Just(0.0f32), Just(0.5), Just(1.0), -1.0f32..2.0, 1e-12f32..1e-3],
        beta in prop_oneof![6 => 1e-6f32..5.0, 1 => Just(0.0f32), 1 => -1.0f32..0.0],
        lr in prop_oneof![9 => 1e-5f64..1e-2, 1 => -1e-3f64..=0.0],
        batch_size in prop_oneof![9 => 1usize..4, 1 => Just(0)],
        grad_accum in prop_oneof![9 => 1usize..3, 1 => Just(0)],
        f_divergence in prop_oneof![3 => Just(FDivergence::ReverseKl), 1 => Just(FDivergence::ForwardKl), 1 => Just(FDivergence::JsDivergence), 1 => (-1.0f32..3.0).prop_map(|coef| FDivergence::AlphaDivergence { coef })],
    ) {
        let device = rlhf_core::device_from_env().unwrap().autodiff();
        let reference = model(&device, 1);
        let loss = match kind {
            0 => OfflineLoss::Dpo { label_smoothing: param },
            1 => OfflineLoss::Robust { eps: param },
            2 => OfflineLoss::Ipo,
            3 => OfflineLoss::Hinge,
            4 => OfflineLoss::Simpo { gamma: param },
            5 => OfflineLoss::ExoPref { eps: param },
            6 => OfflineLoss::ExoRw { beta_r: param },
            7 => OfflineLoss::DpoRw { beta_r: param },
            8 => OfflineLoss::SigmoidNorm,
            9 => OfflineLoss::NcaPair,
            10 => OfflineLoss::BcoPair,
            11 => OfflineLoss::SppoHard,
            12 => OfflineLoss::ApoZero,
            13 => OfflineLoss::ApoDown,
            14 => OfflineLoss::Discopop { tau: param },
            15 => OfflineLoss::Sft,
            16 => OfflineLoss::Aot { label_smoothing: param },
            17 => OfflineLoss::AotUnpaired { label_smoothing: param },
            _ => OfflineLoss::Dpo { label_smoothing: 0.0 },
        };
        let cfg = DpoConfig {
            loss,
            beta,
            f_divergence,
            batch_size,
            grad_accum,
            optimizer: OptimizerConfig { lr, ..OptimizerConfig::default() },
            ..base()
        };
        let dir = tempfile::tempdir().unwrap();
        let result = train_offline(reference.clone(), &reference, &pairs(), &pairs()[..2], &cfg, &RefCache::new(None), &RunOptions::quiet_in(dir.path()), &device);
        match cfg.validate() {
            Ok(()) => {
                let (_, report) = result.unwrap();
                prop_assert!(report.final_train_loss.is_finite(), "{:?}", cfg);
                for line in read_metrics(&dir.path().join("metrics.jsonl")).unwrap() {
                    for (k, v) in line {
                        prop_assert!(v.as_f64().is_none_or(f64::is_finite), "{:?}: {} = {}", cfg, k, v);
                    }
                }
            }
            Err(_) => prop_assert!(matches!(result, Err(Error::Config(_))), "{:?}", cfg),
        }
    }
}

/// Several losses at once (TRL's list of `loss_type`s with `loss_weights`): the loss is the
/// weighted sum of each loss's batch mean, and `sft` is the chosen responses' negative
/// log-likelihood as a token mean over the batch. A K-wise loss does not mix, and a weight must
/// be finite.
#[test]
fn a_mix_of_losses_is_their_weighted_sum() {
    let device = rlhf_core::device_from_env().unwrap();
    let (policy, reference) = (model(&device, 2), model(&device, 1));
    let groups = pairs();
    let refs: Vec<&Group> = groups.iter().collect();
    let (ref_logps, _) = sequence_logps(&reference, &refs, None, &device).unwrap();
    let ref_logps: Vec<Vec<f32>> = to_f32_vec(ref_logps)
        .chunks(2)
        .map(<[f32]>::to_vec)
        .collect();
    let loss_of = |cfg: &DpoConfig| -> f64 {
        cfg.validate().unwrap();
        rlhf_dpo::evaluate(&policy, &groups, &ref_logps, cfg, &device)
            .unwrap()
            .loss
    };
    let with = |loss, loss_weight, extra_losses| DpoConfig {
        loss,
        loss_weight,
        extra_losses,
        ..base()
    };
    let dpo = OfflineLoss::Dpo {
        label_smoothing: 0.0,
    };
    let (a, s) = (
        loss_of(&with(dpo, 1.0, vec![])),
        loss_of(&with(OfflineLoss::Sft, 1.0, vec![])),
    );
    let mixed = loss_of(&with(dpo, 2.0, vec![(OfflineLoss::Sft, 0.5)]));
    assert!(
        (mixed - (2.0 * a + 0.5 * s)).abs() < 1e-5 * (1.0 + mixed.abs()),
        "{mixed} against 2·{a} + 0.5·{s}"
    );
    // sft against its definition, from the policy's own sequence log-probs
    let (logps, lengths) = sequence_logps(&policy, &refs, None, &device).unwrap();
    let (logps, lengths) = (to_f32_vec(logps), to_f32_vec(lengths));
    let chosen: f64 = logps.iter().step_by(2).map(|&x| f64::from(x)).sum();
    let tokens: f64 = lengths.iter().step_by(2).map(|&x| f64::from(x)).sum();
    assert!(
        (s - (-chosen / tokens)).abs() < 1e-5 * (1.0 + s.abs()),
        "{s}"
    );
    assert!(s > 0.0 && a.is_finite());
    // refused: a K-wise loss in a mix, a weight that is not finite
    let exo_rw = OfflineLoss::ExoRw { beta_r: 1.0 };
    assert!(
        with(exo_rw, 1.0, vec![(OfflineLoss::Sft, 1.0)])
            .validate()
            .is_err()
    );
    assert!(
        with(dpo, 1.0, vec![(OfflineLoss::Sft, f32::NAN)])
            .validate()
            .is_err()
    );
}

/// Through the trainer (`evaluate`), each pair loss reads the log-probs its definition names:
/// the loss on pairs of unequal lengths equals its `f64` formula on the policy's and the
/// reference's summed log-probs and token counts (a loss routed to another's formula, or to the
/// wrong view, sums for averages, fails).
#[test]
fn each_pair_loss_reads_its_log_probs_through_the_trainer() {
    let device = rlhf_core::device_from_env().unwrap();
    let (policy, reference) = (model(&device, 2), model(&device, 1));
    let groups = uneven_pairs();
    let refs: Vec<&Group> = groups.iter().collect();
    let host = |m: &CausalLm| {
        let (l, n) = sequence_logps(m, &refs, None, &device).unwrap();
        let f = |t| {
            to_f32_vec(t)
                .into_iter()
                .map(f64::from)
                .collect::<Vec<f64>>()
        };
        (f(l), f(n))
    };
    let ((pol, len), (rf, _)) = (host(&policy), host(&reference));
    let ref_rows: Vec<Vec<f32>> = rf
        .chunks(2)
        .map(|r| r.iter().map(|&x| x as f32).collect())
        .collect();
    let (beta, tau) = (0.5f64, 0.05f64);
    let ls = |x: f64| -((-x.abs()).exp().ln_1p()) + x.min(0.0);
    let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
    // (ℓ_c, ℓ_r, |y_c|, |y_r|) per pair
    let pairs: Vec<(f64, f64, f64, f64)> = (0..groups.len())
        .map(|i| {
            (
                pol[2 * i] - rf[2 * i],
                pol[2 * i + 1] - rf[2 * i + 1],
                len[2 * i],
                len[2 * i + 1],
            )
        })
        .collect();
    type Formula = Box<dyn Fn(f64, f64, f64, f64) -> f64>;
    let cases: Vec<(OfflineLoss, Formula)> = vec![
        (
            OfflineLoss::SigmoidNorm,
            Box::new(move |c, r, nc, nr| -ls(beta * (c / nc - r / nr))),
        ),
        (
            OfflineLoss::NcaPair,
            Box::new(move |c, r, _, _| -ls(beta * c) - 0.5 * ls(-beta * c) - 0.5 * ls(-beta * r)),
        ),
        (
            OfflineLoss::BcoPair,
            Box::new(move |c, r, _, _| -ls(beta * c) - ls(-beta * r)),
        ),
        (
            OfflineLoss::SppoHard,
            Box::new(move |c, r, _, _| (c - 0.5 / beta).powi(2) + (r + 0.5 / beta).powi(2)),
        ),
        (
            OfflineLoss::ApoZero,
            Box::new(move |c, r, _, _| 1.0 - sig(beta * c) + sig(beta * r)),
        ),
        (
            OfflineLoss::ApoDown,
            Box::new(move |c, r, _, _| sig(beta * c) + 1.0 - sig(beta * (c - r))),
        ),
        (
            OfflineLoss::Discopop { tau: tau as f32 },
            Box::new(move |c, r, _, _| {
                let z = beta * (c - r);
                let m = sig(z / tau);
                (1.0 - m) * -ls(z) + m * (-z).exp()
            }),
        ),
    ];
    // the trainer's held-out loss under `cfg` against the mean of `formula` over the pairs
    let matches_formula = |cfg: DpoConfig, formula: &dyn Fn(f64, f64, f64, f64) -> f64| {
        cfg.validate().unwrap();
        let got = rlhf_dpo::evaluate(&policy, &groups, &ref_rows, &cfg, &device)
            .unwrap()
            .loss;
        let want = pairs
            .iter()
            .map(|&(c, r, nc, nr)| formula(c, r, nc, nr))
            .sum::<f64>()
            / pairs.len() as f64;
        assert!(
            (got - want).abs() < 1e-4 * (1.0 + want.abs()),
            "{:?} under {:?}: {got} against {want}",
            cfg.loss,
            cfg.f_divergence
        );
    };
    for (loss, formula) in cases {
        let cfg = DpoConfig {
            loss,
            beta: beta as f32,
            ..base()
        };
        matches_formula(cfg, &formula);
    }
    // sft over chosen responses of unequal lengths: the token mean, not the mean of averages
    let cfg = DpoConfig {
        loss: OfflineLoss::Sft,
        ..base()
    };
    let got = rlhf_dpo::evaluate(&policy, &groups, &ref_rows, &cfg, &device)
        .unwrap()
        .loss;
    let chosen: f64 = pol.iter().step_by(2).sum();
    let tokens: f64 = len.iter().step_by(2).sum();
    let per_sequence: f64 = -pol
        .iter()
        .step_by(2)
        .zip(len.iter().step_by(2))
        .map(|(l, n)| l / n)
        .sum::<f64>()
        / pairs.len() as f64;
    assert!(
        (got - (-chosen / tokens)).abs() < 1e-5 * (1.0 + got.abs()),
        "sft {got}"
    );
    assert!(
        (got - per_sequence).abs() > 1e-4,
        "the lengths should make the two means differ"
    );
    // AOT matches the batch's values by rank: the policy's log-odds with the reference's
    // (`aot`), the chosen log-ratios with the rejected ones (`aot_unpaired`)
    let sorted = |v: Vec<f64>| {
        let mut v = v;
        v.sort_by(f64::total_cmp);
        v
    };
    let matched = |x: Vec<f64>, y: Vec<f64>| {
        sorted(x)
            .iter()
            .zip(sorted(y))
            .map(|(a, b)| -ls(beta * (a - b)))
            .sum::<f64>()
            / pairs.len() as f64
    };
    let odds = |v: &[f64]| -> Vec<f64> { v.chunks(2).map(|p| p[0] - p[1]).collect() };
    let (ratio_c, ratio_r): (Vec<f64>, Vec<f64>) = pairs.iter().map(|p| (p.0, p.1)).unzip();
    // these pairs do not sort alike, so matching by rank is not DPO pair by pair, and the two AOT
    // losses read different values
    let dpo: f64 = pairs.iter().map(|p| -ls(beta * (p.0 - p.1))).sum::<f64>() / pairs.len() as f64;
    let (paired, unpaired) = (
        matched(odds(&pol), odds(&rf)),
        matched(ratio_c.clone(), ratio_r.clone()),
    );
    assert!(
        (paired - dpo).abs() > 1e-3
            && (unpaired - dpo).abs() > 1e-3
            && (paired - unpaired).abs() > 1e-3,
        "AOT {paired}, AOT-unpaired {unpaired}, DPO {dpo}"
    );
    for (loss, want) in [
        (
            OfflineLoss::Aot {
                label_smoothing: 0.0,
            },
            paired,
        ),
        (
            OfflineLoss::AotUnpaired {
                label_smoothing: 0.0,
            },
            unpaired,
        ),
    ] {
        let cfg = DpoConfig {
            loss,
            beta: beta as f32,
            batch_size: groups.len(),
            ..base()
        };
        let got = rlhf_dpo::evaluate(&policy, &groups, &ref_rows, &cfg, &device)
            .unwrap()
            .loss;
        assert!(
            (got - want).abs() < 1e-4 * (1.0 + want.abs()),
            "{loss:?}: {got} against {want}"
        );
    }
    // f-DPO: the losses on the difference of implicit rewards read f'(π/π_ref) of each summed
    // log-ratio, which IPO and sigmoid_norm then average over the response's tokens
    let alpha = 0.5f64;
    type Score = Box<dyn Fn(f64) -> f64>;
    let divergences: Vec<(FDivergence, Score)> = vec![
        (FDivergence::ForwardKl, Box::new(|l| 1.0 - (-l).exp())),
        (
            FDivergence::JsDivergence,
            Box::new(|l| (2.0 * l.exp() / (1.0 + l.exp())).ln()),
        ),
        (
            FDivergence::AlphaDivergence { coef: alpha as f32 },
            Box::new(move |l| ((alpha - 1.0) * l).exp_m1() / (alpha - 1.0)),
        ),
    ];
    type Under<'a> = Box<dyn Fn(f64, f64, f64, f64) -> f64 + 'a>;
    for (f_divergence, f) in &divergences {
        let cases: Vec<(OfflineLoss, Under)> = vec![
            (
                OfflineLoss::Dpo {
                    label_smoothing: 0.0,
                },
                Box::new(move |c, r, _, _| -ls(beta * (f(c) - f(r)))),
            ),
            (
                OfflineLoss::Ipo,
                Box::new(move |c, r, nc, nr| (f(c) / nc - f(r) / nr - 1.0 / (2.0 * beta)).powi(2)),
            ),
            (
                OfflineLoss::Hinge,
                Box::new(move |c, r, _, _| (1.0 - beta * (f(c) - f(r))).max(0.0)),
            ),
            (
                OfflineLoss::SigmoidNorm,
                Box::new(move |c, r, nc, nr| -ls(beta * (f(c) / nc - f(r) / nr))),
            ),
        ];
        for (loss, formula) in cases {
            let cfg = DpoConfig {
                loss,
                beta: beta as f32,
                f_divergence: *f_divergence,
                ..base()
            };
            matches_formula(cfg, &formula);
        }
    }
    // the losses on each response's own log-ratio have no f-divergence form (TRL refuses them)
    for loss in [
        OfflineLoss::NcaPair,
        OfflineLoss::Aot {
            label_smoothing: 0.0,
        },
    ] {
        let cfg = DpoConfig {
            loss,
            f_divergence: FDivergence::JsDivergence,
            ..base()
        };
        assert!(cfg.validate().is_err(), "{loss:?}");
    }
    // by name, as TRL checks it: α = 1 computes the log-ratios but is refused there too
    let cfg = DpoConfig {
        loss: OfflineLoss::NcaPair,
        f_divergence: FDivergence::AlphaDivergence { coef: 1.0 },
        ..base()
    };
    assert!(cfg.validate().is_err());
}

/// Pairs whose longer response is sometimes the chosen one and sometimes the rejected one.
fn uneven_pairs() -> Vec<Group> {
    (0..6u32)
        .map(|i| Group {
            prompt: vec![i % 7 + 1, 3],
            responses: vec![
                (0..(2 + i % 4)).map(|t| (i + t) % 9 + 2).collect(),
                (0..(1 + (i + 2) % 5))
                    .map(|t| (i + 2 * t) % 9 + 12)
                    .collect(),
            ],
            rewards: None,
        })
        .collect()
}

/// The pairs with each response cut to the pair's shorter length.
fn cut_to_shared(groups: &[Group]) -> Vec<Group> {
    groups
        .iter()
        .map(|g| {
            let shared = g.responses.iter().map(Vec::len).min().unwrap();
            Group {
                responses: g.responses.iter().map(|r| r[..shared].to_vec()).collect(),
                ..g.clone()
            }
        })
        .collect()
}

/// LD-DPO's sequence log-prob (TRL's `ld_alpha`): the shared part plus α times the rest. At
/// α = 1 it is the whole sum, at α = 0 the sum over the responses cut to the shared length, and
/// in between linear in α; the token counts stay whole. At α = 0, a DPO step equals the step on
/// the cut responses, the reference read the same way through the cache's key.
#[test]
fn ld_dpo_weighs_the_tokens_past_the_shared_length() {
    let device = rlhf_core::device_from_env().unwrap();
    let policy = model(&device, 2);
    let groups = uneven_pairs();
    let refs: Vec<&Group> = groups.iter().collect();
    let cut = cut_to_shared(&groups);
    let cut_refs: Vec<&Group> = cut.iter().collect();
    let host =
        |(s, n): (burn::tensor::Tensor<1>, burn::tensor::Tensor<1>)| (to_f32_vec(s), to_f32_vec(n));
    let ld = |alpha| host(sequence_logps_ld(&policy, &refs, None, Some(alpha), &device).unwrap());
    let (whole, lengths) = host(sequence_logps(&policy, &refs, None, &device).unwrap());
    let (shared, _) = host(sequence_logps(&policy, &cut_refs, None, &device).unwrap());
    let close = |a: &[f32], b: &[f32], what: &str| {
        for (x, y) in a.iter().zip(b) {
            assert!(
                (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                "{what}: {a:?} against {b:?}"
            );
        }
    };
    let (one, n) = ld(1.0);
    close(&one, &whole, "α = 1");
    assert_eq!(n, lengths);
    close(&ld(0.0).0, &shared, "α = 0");
    assert!(whole.iter().zip(&shared).any(|(w, s)| (w - s).abs() > 1e-2));
    for alpha in [0.25f32, 0.6] {
        let want: Vec<f32> = shared
            .iter()
            .zip(&whole)
            .map(|(s, w)| s + alpha * (w - s))
            .collect();
        close(&ld(alpha).0, &want, "linear in α");
    }

    // one DPO step at α = 0 against the step on the cut responses
    let ad = device.clone().autodiff();
    let reference = model(&ad, 1);
    let step = |data: &[Group], ld_alpha| {
        let cfg = DpoConfig {
            ld_alpha,
            batch_size: data.len(),
            ..base()
        };
        cfg.validate().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cache = RefCache::new(Some(dir.path()));
        let (m, _) = train_offline(
            model(&ad, 2),
            &reference,
            data,
            &[],
            &cfg,
            &cache,
            &RunOptions::quiet_in(dir.path()),
            &ad,
        )
        .unwrap();
        (probe(&m), first_line(dir.path(), names::TRAIN_LOSS))
    };
    let ((ld_w, ld_loss), (cut_w, cut_loss)) = (step(&groups, Some(0.0)), step(&cut, None));
    assert!(
        (ld_loss - cut_loss).abs() < 1e-5,
        "loss {ld_loss} against {cut_loss}"
    );
    let diff = ld_w
        .iter()
        .zip(&cut_w)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(diff < 1e-4, "logits after the step differ by {diff}");
    let (_, whole_loss) = step(&groups, None);
    assert!(
        (whole_loss - cut_loss).abs() > 1e-4,
        "the tails should change the loss"
    );
    // sft (and SimPO) read the plain sums, as TRL's sft ignores ld_alpha: the chosen responses
    // here are sometimes the longer ones, so a weighted NLL would differ
    let zeros: Vec<Vec<f32>> = vec![vec![0.0, 0.0]; groups.len()];
    let loss_at = |loss, ld_alpha| {
        let cfg = DpoConfig {
            loss,
            ld_alpha,
            ..base()
        };
        rlhf_dpo::evaluate(&policy, &groups, &zeros, &cfg, &device)
            .unwrap()
            .loss
    };
    for loss in [OfflineLoss::Sft, OfflineLoss::Simpo { gamma: 0.5 }] {
        assert_eq!(loss_at(loss, Some(0.0)), loss_at(loss, None), "{loss:?}");
    }
    // and their implicit rewards (logged as the first loss's) read no reference: other
    // reference log-probs leave them as they are, where DPO's move
    let rewards_with = |loss, refs: &[Vec<f32>]| {
        let cfg = DpoConfig { loss, ..base() };
        let e = rlhf_dpo::evaluate(&policy, &groups, refs, &cfg, &device).unwrap();
        (e.rewards, e.reward_margin)
    };
    let moved: Vec<Vec<f32>> = (0..groups.len())
        .map(|i| vec![-3.0 - i as f32, -1.0])
        .collect();
    for loss in [OfflineLoss::Sft, OfflineLoss::Simpo { gamma: 0.5 }] {
        assert_eq!(
            rewards_with(loss, &zeros),
            rewards_with(loss, &moved),
            "{loss:?}"
        );
    }
    let dpo_plain = OfflineLoss::Dpo {
        label_smoothing: 0.0,
    };
    assert_ne!(
        rewards_with(dpo_plain, &zeros),
        rewards_with(dpo_plain, &moved)
    );
    let dpo = OfflineLoss::Dpo {
        label_smoothing: 0.0,
    };
    assert_ne!(loss_at(dpo, Some(0.0)), loss_at(dpo, None));
    for bad in [-0.1, 1.5, f32::NAN] {
        let cfg = DpoConfig {
            ld_alpha: Some(bad),
            ..base()
        };
        assert!(cfg.validate().is_err(), "{bad}");
    }
}

/// One response's summed log-prob and WPO weight `exp(mean_t [log π(y_t) − log Σ_v π(v)²])`,
/// in f64 from `policy`'s logits on the sequence alone (no padding).
fn wpo_reference(policy: &CausalLm, prompt: &[u32], response: &[u32]) -> (f64, f64) {
    let ids: Vec<u32> = prompt.iter().chain(response).copied().collect();
    let logits = policy.forward(&policy.input(&ids, &vec![1; ids.len()], 1).unwrap(), None);
    let [_, len, vocab] = logits.dims();
    let flat: Vec<f64> = to_f32_vec(logits).into_iter().map(f64::from).collect();
    let (mut sum, mut adjusted) = (0.0, 0.0);
    for (j, &token) in response.iter().enumerate() {
        let at = prompt.len() + j - 1;
        assert!(at < len);
        let row = &flat[at * vocab..(at + 1) * vocab];
        let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + row.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
        let logp: Vec<f64> = row.iter().map(|x| x - lse).collect();
        let log_sum_sq = logp.iter().map(|l| (2.0 * l).exp()).sum::<f64>().ln();
        sum += logp[token as usize];
        adjusted += logp[token as usize] - log_sum_sq;
    }
    (sum, (adjusted / response.len() as f64).exp())
}

/// WPO (TRL's `use_weighting`): each response's weight is the f64 reading of the policy's logits,
/// on pairs of unequal lengths padded together, and each pair's loss, of every loss in the list and
/// with LD-DPO's sums too, is multiplied by `w(y_c)·w(y_r)` (the weights read the plain
/// log-probs). AOT and the K-wise losses refuse them.
#[test]
fn wpo_weighs_each_pair_by_how_likely_the_policy_samples_it() {
    let device = rlhf_core::device_from_env().unwrap();
    let policy = model(&device, 2);
    let groups = uneven_pairs();
    let refs: Vec<&Group> = groups.iter().collect();
    let zeros: Vec<Vec<f32>> = vec![vec![0.0, 0.0]; groups.len()];
    let reference: Vec<[(f64, f64); 2]> = groups
        .iter()
        .map(|g| [0, 1].map(|k| wpo_reference(&policy, &g.prompt, &g.responses[k])))
        .collect();
    let got = to_f32_vec(rlhf_dpo::wpo_weights(&policy, &refs, None, &device).unwrap());
    for (g, w) in reference.iter().flatten().zip(&got) {
        assert!(
            (f64::from(*w) - g.1).abs() <= 1e-4 * g.1,
            "{w} against {}",
            g.1
        );
    }
    assert!(got.iter().any(|w| (w - 1.0).abs() > 1e-2), "{got:?}");

    let loss_at = |cfg: DpoConfig| {
        let cfg = DpoConfig {
            use_weighting: true,
            batch_size: groups.len(),
            ..cfg
        };
        cfg.validate().unwrap();
        rlhf_dpo::evaluate(&policy, &groups, &zeros, &cfg, &device)
            .unwrap()
            .loss
    };
    let beta = f64::from(base().beta);
    let n = groups.len() as f64;
    let w = |i: usize| reference[i][0].1 * reference[i][1].1;
    let lens = |i: usize| [0, 1].map(|k| groups[i].responses[k].len() as f64);
    // the pair's DPO loss from its two sequence log-probs
    let dpo = |sc: f64, sr: f64| (1.0 + (-beta * (sc - sr)).exp()).ln();
    let mean = |f: &dyn Fn(usize) -> f64| (0..groups.len()).map(f).sum::<f64>() / n;
    let dpo_want = mean(&|i| dpo(reference[i][0].0, reference[i][1].0) * w(i));
    let ipo_want = mean(&|i| {
        let h = reference[i][0].0 / lens(i)[0] - reference[i][1].0 / lens(i)[1];
        (h - 1.0 / (2.0 * beta)).powi(2) * w(i)
    });
    // RPO: DPO at 0.7 plus the chosen responses' token-mean NLL at 1.3, each pair's share weighted
    let nll = -reference.iter().map(|r| r[0].0).sum::<f64>()
        / (0..groups.len()).map(|i| lens(i)[0]).sum::<f64>();
    let rpo_want = 0.7 * dpo_want + 1.3 * nll * mean(&|i| w(i));
    // LD-DPO's sums in the loss, the plain log-probs in the weights
    let ld = to_f32_vec(
        sequence_logps_ld(&policy, &refs, None, Some(0.5), &device)
            .unwrap()
            .0,
    );
    let ld_want = mean(&|i| dpo(f64::from(ld[2 * i]), f64::from(ld[2 * i + 1])) * w(i));
    for (what, cfg, want) in [
        ("dpo", base(), dpo_want),
        (
            "ipo",
            DpoConfig {
                loss: OfflineLoss::Ipo,
                ..base()
            },
            ipo_want,
        ),
        (
            "rpo",
            DpoConfig {
                loss_weight: 0.7,
                extra_losses: vec![(OfflineLoss::Sft, 1.3)],
                ..base()
            },
            rpo_want,
        ),
        (
            "ld-dpo",
            DpoConfig {
                ld_alpha: Some(0.5),
                ..base()
            },
            ld_want,
        ),
    ] {
        let got = loss_at(cfg);
        assert!(
            (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
            "{what}: {got} against {want}"
        );
    }
    for loss in [
        OfflineLoss::Aot {
            label_smoothing: 0.0,
        },
        OfflineLoss::AotUnpaired {
            label_smoothing: 0.0,
        },
        OfflineLoss::ExoRw { beta_r: 1.0 },
        OfflineLoss::DpoRw { beta_r: 1.0 },
    ] {
        let cfg = DpoConfig {
            loss,
            use_weighting: true,
            ..base()
        };
        assert!(cfg.validate().is_err(), "{loss:?}");
    }
}
