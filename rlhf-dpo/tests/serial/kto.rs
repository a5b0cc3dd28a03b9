//! KTO: the loss against a plain f64 reference written from the paper's formula (TRL's form),
//! its invariants and its gradient (finite differences; none through `z_ref`); the fixed batches
//! and their mismatched pairs; the trainer's first step against the reference computed from each
//! example's log-probs read alone (so padding changes nothing); configurations and data the
//! trainer refuses; the unpaired APO-zero loss (KTO's at `z_ref = 0`); and a run killed with
//! SIGKILL that resumes to the same weights.
//!
//! Every test takes `rlhf_testkit::serial()` first: bit-for-bit comparisons hold only when
//! no other test computes in the process at the same time.

use burn::module::Module;
use proptest::prelude::*;
use rlhf_core::Error;
use rlhf_core::host::{tensor_from_f64, to_f32_vec, to_f64_vec};
use rlhf_core::train::metrics::{names, read_metrics};
use rlhf_core::train::{OptimizerConfig, RunOptions};
use rlhf_dpo::{
    KtoConfig, KtoExample, KtoLoss, RefCache, kto_batches, kto_loss, kto_reference_point,
    kto_train_batches, mismatched_partners, pair_logps, train_kto,
};
use rlhf_models::{CausalLm, TransformerConfig};

fn dev() -> burn::tensor::Device {
    rlhf_core::device_from_env().unwrap()
}

fn t1(v: &[f64], d: &burn::tensor::Device) -> burn::tensor::Tensor<1> {
    tensor_from_f64(v, [v.len()], d)
}

/// σ(x), in f64.
fn sig(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        x.exp() / (1.0 + x.exp())
    }
}

/// The paper's reference point: `max(0, mean(kl − kl_ref))`.
fn z_of(kl: &[f64], kl_ref: &[f64]) -> f64 {
    let m = kl.iter().zip(kl_ref).map(|(a, b)| a - b).sum::<f64>() / kl.len() as f64;
    m.max(0.0)
}

/// The per-example KTO loss, as TRL writes it: `λ_D·(1 − σ(β(r − z)))` for a desirable example,
/// `λ_U·(1 − σ(β(z − r)))` for an undesirable one.
fn reference(r: f64, desirable: bool, z: f64, beta: f64, wd: f64, wu: f64) -> f64 {
    if desirable {
        wd * (1.0 - sig(beta * (r - z)))
    } else {
        wu * (1.0 - sig(beta * (z - r)))
    }
}

fn mask(d: &[bool]) -> Vec<f64> {
    d.iter().map(|&x| f64::from(u8::from(x))).collect()
}

/// A batch: log-ratios, labels, and the mismatched pairs' log-probs under policy and reference.
fn batch() -> impl Strategy<Value = (Vec<f64>, Vec<bool>, Vec<f64>, Vec<f64>)> {
    (1usize..7).prop_flat_map(|n| {
        (
            prop::collection::vec(-30.0f64..30.0, n),
            prop::collection::vec(any::<bool>(), n),
            prop::collection::vec(-40.0f64..0.0, n),
            prop::collection::vec(-40.0f64..0.0, n),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The loss is the formula, elementwise; `z_ref` is the clamped mean of the mismatched
    /// log-ratios; each loss lies in `[0, λ]`.
    #[test]
    fn loss_matches_the_f64_reference((r, d, kl, kl_ref) in batch(), beta in 0.01f64..2.0, wd in 0.0f64..3.0, wu in 0.0f64..3.0) {
        let dev = dev();
        let z = kto_reference_point(t1(&kl, &dev), t1(&kl_ref, &dev));
        let z_host = to_f64_vec(z.clone())[0];
        let z_expected = z_of(&kl, &kl_ref);
        prop_assert!((z_host - z_expected).abs() <= 1e-4 * (1.0 + z_expected.abs()), "z {} vs {}", z_host, z_expected);
        prop_assert!(z_host >= 0.0);
        let got = to_f64_vec(kto_loss(t1(&r, &dev), t1(&mask(&d), &dev), z, beta as f32, wd as f32, wu as f32));
        for ((g, &ri), &di) in got.iter().zip(&r).zip(&d) {
            let e = reference(ri, di, z_expected, beta, wd, wu);
            prop_assert!((g - e).abs() <= 1e-4 * (1.0 + e.abs()), "{} vs {} (r {}, desirable {})", g, e, ri, di);
            let w = if di { wd } else { wu };
            prop_assert!(*g >= -1e-7 && *g <= w * (1.0 + 1e-6) + 1e-7, "{} outside [0, {}]", g, w);
        }
    }

    /// Invariants: `λ/2` at `r = z`; the desirable loss falls and the undesirable loss rises as
    /// `r` grows; a desirable example at `r` costs what an undesirable one at `2z − r` costs (equal
    /// weights); and the reference point is 0 when the policy is the reference.
    #[test]
    fn invariants(r in -20.0f64..20.0, dr in 0.01f64..5.0, z in 0.0f64..5.0, beta in 0.05f64..1.0, w in 0.1f64..3.0) {
        let _serial = rlhf_testkit::serial();
        let dev = dev();
        let eval = |rs: &[f64], ds: &[bool]| to_f64_vec(kto_loss(t1(rs, &dev), t1(&mask(ds), &dev), t1(&[z], &dev), beta as f32, w as f32, w as f32));
        let at_z = eval(&[z, z], &[true, false]);
        prop_assert!(at_z.iter().all(|l| (l - w / 2.0).abs() < 1e-5), "{:?}", at_z);
        let d = eval(&[r, r + dr], &[true, true]);
        prop_assert!(d[1] <= d[0] + 1e-7, "desirable loss rose with r: {:?}", d);
        let u = eval(&[r, r + dr], &[false, false]);
        prop_assert!(u[1] + 1e-7 >= u[0], "undesirable loss fell with r: {:?}", u);
        let mirror = eval(&[r, 2.0 * z - r], &[true, false]);
        prop_assert!((mirror[0] - mirror[1]).abs() < 1e-5 * (1.0 + mirror[0]), "{:?}", mirror);
        let same = vec![-3.0 - r.abs(); 4];
        prop_assert_eq!(to_f64_vec(kto_reference_point(t1(&same, &dev), t1(&same, &dev)))[0], 0.0);
    }

    /// d(loss)/dr by autodiff equals central differences of the f64 reference; no gradient
    /// reaches the mismatched pairs' log-probs through `z_ref`.
    #[test]
    fn gradients_match_finite_differences((r, d, kl, kl_ref) in batch(), beta in 0.05f64..1.0, wd in 0.1f64..2.0, wu in 0.1f64..2.0) {
        let _serial = rlhf_testkit::serial();
        let ad = dev().autodiff();
        let x = t1(&r, &ad).require_grad();
        let kl_t = t1(&kl, &ad).require_grad();
        let z = kto_reference_point(kl_t.clone(), t1(&kl_ref, &ad));
        let loss = kto_loss(x.clone(), t1(&mask(&d), &ad), z, beta as f32, wd as f32, wu as f32).sum();
        let grads = loss.backward();
        let g = to_f64_vec(x.grad(&grads).expect("depends on r"));
        let z0 = z_of(&kl, &kl_ref);
        let h = 1e-4;
        for (i, (&ri, &di)) in r.iter().zip(&d).enumerate() {
            let fd = (reference(ri + h, di, z0, beta, wd, wu) - reference(ri - h, di, z0, beta, wd, wu)) / (2.0 * h);
            prop_assert!((g[i] - fd).abs() < 2e-3 * (1.0 + fd.abs()), "example {}: {} vs {}", i, g[i], fd);
        }
        let through_z = kl_t.grad(&grads).map(to_f64_vec);
        prop_assert!(through_z.as_ref().is_none_or(|v| v.iter().all(|&x| x == 0.0)), "a gradient reached z_ref's inputs: {:?}", through_z);
    }

    /// Extreme log-ratios, reference points and β give finite losses in `[0, λ]` and finite
    /// gradients (σ is read as exp(log σ)).
    #[test]
    fn extreme_inputs_stay_finite(r in prop::collection::vec(prop_oneof![Just(-1e30f64), Just(1e30), Just(0.0), -1e6f64..1e6], 1..6), d in prop::collection::vec(any::<bool>(), 6), z in prop_oneof![Just(0.0f64), Just(1e30), 0.0f64..1e6], beta in prop_oneof![Just(1e-6f64), Just(1e3), 0.01f64..10.0]) {
        let _serial = rlhf_testkit::serial();
        let ad = dev().autodiff();
        let d = &d[..r.len()];
        let x = t1(&r, &ad).require_grad();
        let loss = kto_loss(x.clone(), t1(&mask(d), &ad), t1(&[z], &ad), beta as f32, 1.0, 1.5);
        let values = to_f64_vec(loss.clone());
        prop_assert!(values.iter().all(|v| v.is_finite() && *v >= 0.0 && *v <= 1.5 + 1e-6), "{:?}", values);
        let g = to_f64_vec(x.grad(&loss.sum().backward()).expect("depends on r"));
        prop_assert!(g.iter().all(|v| v.is_finite()), "{:?}", g);
        let kl = vec![-1e30f64; r.len()];
        let zz = to_f64_vec(kto_reference_point(t1(&kl, &ad), t1(&r, &ad)))[0];
        prop_assert!(zz.is_finite() && zz >= 0.0, "{}", zz);
    }

    /// The fixed batches cover every example once, none smaller than two (for two examples or
    /// more and `batch_size ≥ 2`); each example's mismatched partner is another example of its
    /// batch, and within a batch the partners are a permutation of the batch: the mismatched
    /// responses are the batch's own responses, each paired with another prompt.
    #[test]
    fn batches_and_mismatched_pairs(n in 2usize..40, batch_size in 2usize..9, seed in 0u64..1000) {
        let _serial = rlhf_testkit::serial();
        let mut order: Vec<usize> = (0..n).collect();
        // any permutation: a rotation by the seed, reversed on odd seeds
        order.rotate_left(seed as usize % n);
        if seed % 2 == 1 {
            order.reverse();
        }
        let batches = kto_batches(&order, batch_size);
        let flat: Vec<usize> = batches.concat();
        prop_assert_eq!(&flat, &order);
        prop_assert!(batches.iter().all(|b| b.len() >= 2 && b.len() <= batch_size + 1), "{:?}", batches);
        let partner = mismatched_partners(&batches);
        for b in &batches {
            let mut ps: Vec<usize> = b.iter().map(|&i| partner[i]).collect();
            prop_assert!(b.iter().all(|&i| partner[i] != i));
            ps.sort_unstable();
            let mut sorted = b.clone();
            sorted.sort_unstable();
            prop_assert_eq!(ps, sorted);
            // TRL's rotation: (x_1, y_n), (x_2, y_1), …
            prop_assert_eq!(partner[b[0]], *b.last().unwrap());
            prop_assert_eq!(partner[b[1]], b[0]);
        }
    }
}

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

/// Unpaired examples of different lengths, two thirds of them desirable.
fn examples(n: u32) -> Vec<KtoExample> {
    (0..n)
        .map(|i| KtoExample {
            prompt: (0..(i % 4 + 2)).map(|k| (i * 3 + k) % 20 + 1).collect(),
            response: (0..(i % 5 + 1))
                .map(|k| (i + 7 * k) % 20 + 2)
                .chain([0])
                .collect(),
            desirable: i % 3 != 2,
        })
        .collect()
}

fn base() -> KtoConfig {
    KtoConfig {
        batch_size: 5,
        optimizer: OptimizerConfig {
            lr: 1e-3,
            ..OptimizerConfig::default()
        },
        ..KtoConfig::default()
    }
}

/// The first step's logged loss and metrics equal the f64 reference computed from each example's
/// log-probs read alone (no padding) under the policy and the reference, with the batch and its
/// mismatched pairs the trainer forms (also cut to `max_length`): padding changes nothing, and
/// the pairs are the documented ones; held-out evaluation of the same examples gives the same
/// rewards, and each kind's mean log-prob. With the policy equal to the reference, every example
/// costs exactly `λ/2`.
#[test]
fn the_first_step_matches_the_reference_from_unpadded_logprobs() {
    let _serial = rlhf_testkit::serial();
    let device = dev().autodiff();
    let inference = dev();
    let (policy, reference_model) = (model(&device, 2), model(&device, 1));
    let data = examples(9);
    let cfg = KtoConfig {
        batch_size: 9,
        beta: 0.7,
        desirable_weight: 1.3,
        undesirable_weight: 0.8,
        ..base()
    };
    let alone = |m: &CausalLm, prompt: &[u32], response: &[u32]| -> f64 {
        let pair = [(prompt, response)];
        f64::from(to_f32_vec(pair_logps(&m.valid(), &pair, None, &inference).unwrap().0)[0])
    };
    // one batch of all nine, with the mismatched pairs of the trainer's documented permutation
    let batches = kto_train_batches(data.len(), cfg.batch_size, cfg.seed);
    assert_eq!(batches.len(), 1);
    let partner = mismatched_partners(&batches);
    let beta = f64::from(cfg.beta);
    let (wd, wu) = (
        f64::from(cfg.desirable_weight),
        f64::from(cfg.undesirable_weight),
    );
    // a mismatched pair longer than `max_length` is cut to it, as TRL cuts its KL sequences
    fn cut<'a>(max_length: Option<usize>, prompt: &[u32], response: &'a [u32]) -> &'a [u32] {
        let room = max_length.map_or(usize::MAX, |m| m - prompt.len());
        &response[..response.len().min(room)]
    }
    let cuts = (0..data.len())
        .filter(|&i| {
            cut(Some(6), &data[i].prompt, &data[partner[i]].response).len()
                < data[partner[i]].response.len()
        })
        .count();
    assert!(cuts > 0, "no mismatched pair is longer than 6 tokens");
    for (policy_model, tag, max_length) in [
        (&policy, "policy ≠ reference", None),
        (&policy, "policy ≠ reference, pairs cut to 6", Some(6)),
        (&reference_model, "policy = reference", None),
    ] {
        let cfg = KtoConfig {
            max_length,
            ..cfg.clone()
        };
        let r: Vec<f64> = data
            .iter()
            .map(|e| {
                alone(policy_model, &e.prompt, &e.response)
                    - alone(&reference_model, &e.prompt, &e.response)
            })
            .collect();
        let mismatched = |i: usize| cut(max_length, &data[i].prompt, &data[partner[i]].response);
        let kl: Vec<f64> = (0..data.len())
            .map(|i| alone(policy_model, &data[i].prompt, mismatched(i)))
            .collect();
        let kl_ref: Vec<f64> = (0..data.len())
            .map(|i| alone(&reference_model, &data[i].prompt, mismatched(i)))
            .collect();
        let z = z_of(&kl, &kl_ref);
        eprintln!(
            "{tag}: z_ref {z:.4} (mean mismatched log-ratio before the clamp {:.4})",
            kl.iter().zip(&kl_ref).map(|(a, b)| a - b).sum::<f64>() / kl.len() as f64
        );
        let expected = data
            .iter()
            .zip(&r)
            .map(|(e, &ri)| reference(ri, e.desirable, z, beta, wd, wu))
            .sum::<f64>()
            / data.len() as f64;
        let dir = tempfile::tempdir().unwrap();
        train_kto(
            policy_model.clone(),
            &reference_model,
            &data,
            &[],
            &cfg,
            &RefCache::new(None),
            &RunOptions::quiet_in(dir.path()),
            &device,
        )
        .unwrap();
        let line = &read_metrics(&dir.path().join("metrics.jsonl")).unwrap()[0];
        let get = |k: &str| line[k].as_f64().unwrap();
        assert!(
            (get(names::TRAIN_LOSS) - expected).abs() < 1e-5 * (1.0 + expected),
            "{tag}: loss {} vs {expected}",
            get(names::TRAIN_LOSS)
        );
        assert!(
            (get(names::KTO_KL) - z).abs() < 1e-4 * (1.0 + z),
            "{tag}: kl {} vs {z}",
            get(names::KTO_KL)
        );
        let mean_of = |want: bool| {
            let v: Vec<f64> = data
                .iter()
                .zip(&r)
                .filter(|(e, _)| e.desirable == want)
                .map(|(_, x)| beta * x)
                .collect();
            v.iter().sum::<f64>() / v.len() as f64
        };
        // held-out evaluation of the same examples: the same rewards, and the log-probs of each
        // kind's examples read alone
        let held_out =
            rlhf_dpo::evaluate_kto(policy_model, &reference_model, &data, &cfg, &device).unwrap();
        let logps_of = |want: bool| {
            let v: Vec<f64> = data
                .iter()
                .filter(|e| e.desirable == want)
                .map(|e| alone(policy_model, &e.prompt, &e.response))
                .collect();
            v.iter().sum::<f64>() / v.len() as f64
        };
        for (k, got, e) in [
            (
                names::REWARDS_CHOSEN,
                get(names::REWARDS_CHOSEN),
                mean_of(true),
            ),
            (
                names::REWARDS_REJECTED,
                get(names::REWARDS_REJECTED),
                mean_of(false),
            ),
            (
                names::EVAL_REWARDS_CHOSEN,
                held_out.rewards_chosen,
                mean_of(true),
            ),
            (
                names::EVAL_REWARDS_REJECTED,
                held_out.rewards_rejected,
                mean_of(false),
            ),
            (
                names::EVAL_LOGPS_CHOSEN,
                held_out.logps_chosen,
                logps_of(true),
            ),
            (
                names::EVAL_LOGPS_REJECTED,
                held_out.logps_rejected,
                logps_of(false),
            ),
        ] {
            assert!(
                (got - e).abs() < 1e-4 * (1.0 + e.abs()),
                "{tag}: {k} {got} vs {e}"
            );
        }
        if tag == "policy = reference" {
            let half = (6.0 * wd + 3.0 * wu) / 2.0 / 9.0;
            assert!(
                (get(names::TRAIN_LOSS) - half).abs() < 1e-6,
                "{}",
                get(names::TRAIN_LOSS)
            );
            assert_eq!(get(names::KTO_KL), 0.0);
        }
    }
}

/// The unpaired APO-zero (`loss_type = apo_zero_unpaired`): the first step's loss is the mean of
/// `λ_D·(1 − σ(β·r))` over desirable and `λ_U·σ(β·r)` over undesirable examples, KTO's at
/// `z_ref = 0`, with `kl` logged 0, where KTO's loss on the same batch reads a `z_ref` above 0;
/// a micro-batch of one, and a data set of one example, which KTO refuses, train: one example's
/// loss is its own term, and three examples in micro-batches of one take three steps (KTO's
/// batches would join a last one of one to the one before).
#[test]
fn the_unpaired_apo_zero_is_kto_with_the_reference_point_at_zero() {
    let _serial = rlhf_testkit::serial();
    let device = dev().autodiff();
    let inference = dev();
    let (policy, reference_model) = (model(&device, 2), model(&device, 1));
    let data = examples(9);
    let kto = KtoConfig {
        batch_size: 9,
        beta: 0.7,
        desirable_weight: 1.3,
        undesirable_weight: 0.8,
        ..base()
    };
    let apo = KtoConfig {
        loss_type: KtoLoss::ApoZeroUnpaired,
        ..kto.clone()
    };
    let alone = |m: &CausalLm, prompt: &[u32], response: &[u32]| -> f64 {
        let pair = [(prompt, response)];
        f64::from(to_f32_vec(pair_logps(&m.valid(), &pair, None, &inference).unwrap().0)[0])
    };
    let r: Vec<f64> = data
        .iter()
        .map(|e| {
            alone(&policy, &e.prompt, &e.response) - alone(&reference_model, &e.prompt, &e.response)
        })
        .collect();
    let beta = f64::from(kto.beta);
    let expected = data
        .iter()
        .zip(&r)
        .map(|(e, &ri)| {
            if e.desirable {
                1.3 * (1.0 - sig(beta * ri))
            } else {
                0.8 * sig(beta * ri)
            }
        })
        .sum::<f64>()
        / data.len() as f64;
    let first_step = |cfg: &KtoConfig, data: &[KtoExample]| {
        let dir = tempfile::tempdir().unwrap();
        let (_, report) = train_kto(
            policy.clone(),
            &reference_model,
            data,
            &[],
            cfg,
            &RefCache::new(None),
            &RunOptions::quiet_in(dir.path()),
            &device,
        )
        .unwrap();
        let line = &read_metrics(&dir.path().join("metrics.jsonl")).unwrap()[0];
        (
            line[names::TRAIN_LOSS].as_f64().unwrap(),
            line[names::KTO_KL].as_f64().unwrap(),
            report.steps,
        )
    };
    let (loss, kl, _) = first_step(&apo, &data);
    assert!(
        (loss - expected).abs() < 1e-5 * (1.0 + expected),
        "loss {loss} vs {expected}"
    );
    assert_eq!(kl, 0.0);
    let (kto_loss_value, z, _) = first_step(&kto, &data);
    assert!(
        z > 1e-3,
        "KTO's z_ref {z}: the comparison needs one above 0"
    );
    assert!(
        (kto_loss_value - loss).abs() > 1e-4,
        "KTO {kto_loss_value}, APO-zero {loss}"
    );
    // no mismatched pairs: one example per micro-batch, and one example in all, train
    let single = KtoConfig {
        batch_size: 1,
        ..apo.clone()
    };
    single.validate().unwrap();
    let (one, _, _) = first_step(&single, &data[..1]);
    assert!(data[0].desirable);
    let alone_term = 1.3 * (1.0 - sig(beta * r[0]));
    assert!(
        (one - alone_term).abs() < 1e-5,
        "one example: {one} vs {alone_term}"
    );
    let (_, _, steps) = first_step(&single, &data[..3]);
    assert_eq!(steps, 3);
    assert!(
        KtoConfig {
            batch_size: 1,
            ..kto
        }
        .validate()
        .is_err()
    );
}

/// Each of these is refused as a configuration error before training: β ≤ 0 (a constant loss),
/// negative or non-finite weights, both weights 0, micro-batches of one, no epochs; no data, one
/// example, an empty response or prompt (with its index).
#[test]
fn bad_configurations_and_data_are_refused() {
    let _serial = rlhf_testkit::serial();
    let device = dev().autodiff();
    let reference = model(&device, 1);
    let run = |cfg: &KtoConfig, data: &[KtoExample], eval: &[KtoExample]| {
        train_kto(
            reference.clone(),
            &reference,
            data,
            eval,
            cfg,
            &RefCache::new(None),
            &RunOptions::quiet(),
            &device,
        )
        .map(|r| r.1.steps)
    };
    let data = examples(6);
    for (what, cfg) in [
        (
            "β = 0",
            KtoConfig {
                beta: 0.0,
                ..base()
            },
        ),
        (
            "β < 0",
            KtoConfig {
                beta: -1.0,
                ..base()
            },
        ),
        (
            "β NaN",
            KtoConfig {
                beta: f32::NAN,
                ..base()
            },
        ),
        (
            "λ_D < 0",
            KtoConfig {
                desirable_weight: -0.1,
                ..base()
            },
        ),
        (
            "λ_U ∞",
            KtoConfig {
                undesirable_weight: f32::INFINITY,
                ..base()
            },
        ),
        (
            "λ both 0",
            KtoConfig {
                desirable_weight: 0.0,
                undesirable_weight: 0.0,
                ..base()
            },
        ),
        (
            "batch of one",
            KtoConfig {
                batch_size: 1,
                ..base()
            },
        ),
        (
            "no epochs",
            KtoConfig {
                epochs: 0,
                ..base()
            },
        ),
        (
            "no micro-batches",
            KtoConfig {
                grad_accum: 0,
                ..base()
            },
        ),
    ] {
        let result = run(&cfg, &data, &[]);
        assert!(
            matches!(result, Err(Error::Config(_))),
            "{what}: {result:?}"
        );
    }
    let err = run(&base(), &[], &[]).unwrap_err();
    assert!(err.to_string().contains("no training examples"), "{err}");
    let err = run(&base(), &data[..1], &[]).unwrap_err();
    assert!(err.to_string().contains("one example"), "{err}");
    let mut empty = examples(6);
    empty[4].response.clear();
    let err = run(&base(), &empty, &[]).unwrap_err();
    assert!(
        err.to_string().contains("example 4 has an empty response"),
        "{err}"
    );
    let mut no_prompt = examples(6);
    no_prompt[2].prompt.clear();
    let err = run(&base(), &no_prompt, &[]).unwrap_err();
    assert!(
        err.to_string().contains("example 2 has an empty prompt"),
        "{err}"
    );
    let err = run(&base(), &data, &data[..1]).unwrap_err();
    assert!(err.to_string().contains("held-out"), "{err}");
    // the prompts of `examples` hold 2 to 5 tokens: a pair of 5 has no room for a response
    let short = KtoConfig {
        max_length: Some(5),
        ..base()
    };
    let err = run(&short, &data, &[]).unwrap_err();
    assert!(
        err.to_string().contains("leaves no room in max_length 5"),
        "{err}"
    );
}

/// With no undesirable example in a step's batch, the rejected rewards and the margin are logged
/// as `null` (TRL leaves them out), everything else finite; the eval metrics are TRL's.
#[test]
fn a_batch_of_one_kind_logs_null_for_the_other() {
    let _serial = rlhf_testkit::serial();
    let device = dev().autodiff();
    let reference = model(&device, 1);
    let only_good: Vec<KtoExample> = examples(8)
        .into_iter()
        .map(|e| KtoExample {
            desirable: true,
            ..e
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let (_, report) = train_kto(
        reference.clone(),
        &reference,
        &only_good,
        &examples(6),
        &base(),
        &RefCache::new(None),
        &RunOptions::quiet_in(dir.path()),
        &device,
    )
    .unwrap();
    let lines = read_metrics(&dir.path().join("metrics.jsonl")).unwrap();
    for line in &lines {
        assert!(line[names::REWARDS_REJECTED].is_null() && line[names::REWARDS_MARGINS].is_null());
        for k in [
            names::TRAIN_LOSS,
            names::KTO_KL,
            names::REWARDS_CHOSEN,
            names::LOGPS_CHOSEN,
        ] {
            assert!(
                line[k].as_f64().is_some_and(f64::is_finite),
                "{k}: {line:?}"
            );
        }
    }
    let last = lines.last().unwrap();
    for k in [
        names::EVAL_LOSS,
        names::EVAL_KTO_KL,
        names::EVAL_REWARDS_CHOSEN,
        names::EVAL_REWARDS_REJECTED,
        names::EVAL_REWARD_MARGIN,
        names::EVAL_LOGPS_CHOSEN,
        names::EVAL_LOGPS_REJECTED,
    ] {
        assert!(
            last[k].as_f64().is_some_and(f64::is_finite),
            "{k}: {last:?}"
        );
    }
    assert!(report.eval.loss.is_finite() && report.eval.kl >= 0.0);
}

/// The paper's Eq. (8) as TRL checks it: balanced data needs no advice; 3:1 desirable with equal
/// weights does, and either weight in the advised range silences it.
#[test]
fn weight_advice_follows_eq_8() {
    let cfg = KtoConfig::default();
    assert_eq!(cfg.weight_advice(50, 50), None);
    let advice = cfg.weight_advice(300, 100).expect("3:1 with equal weights");
    assert!(
        advice.contains("desirable_weight in [0.333, 0.444]"),
        "{advice}"
    );
    assert_eq!(
        KtoConfig {
            desirable_weight: 0.4,
            ..KtoConfig::default()
        }
        .weight_advice(300, 100),
        None
    );
    assert_eq!(
        KtoConfig {
            undesirable_weight: 2.5,
            ..KtoConfig::default()
        }
        .weight_advice(300, 100),
        None
    );
}

/// KTO into `dir` (2 epochs of 6 batches, a checkpoint every 4 steps), from one seeded
/// initialisation: the final policy's logits on a probe.
fn kto_into(dir: &std::path::Path) -> Vec<f32> {
    // bit for bit holds on the CPU backend (GPU reductions need not be deterministic)
    let device = rlhf_core::parse_device("flex").unwrap().autodiff();
    let (init, reference) = (model(&device, 3), model(&device, 1));
    let data = examples(26);
    let cfg = KtoConfig {
        epochs: 2,
        batch_size: 4,
        eval_every: 5,
        seed: 9,
        optimizer: OptimizerConfig {
            lr: 1e-2,
            ..OptimizerConfig::default()
        },
        ..KtoConfig::default()
    };
    let opts = RunOptions {
        checkpoint_every: 4,
        progress: false,
        ..RunOptions::in_dir(dir)
    };
    let (m, r) = train_kto(
        init,
        &reference,
        &data,
        &data[..6],
        &cfg,
        &RefCache::new(Some(&dir.join("ref-cache"))),
        &opts,
        &device,
    )
    .unwrap();
    // 26 = 6·4 + 2 examples: seven batches an epoch
    assert_eq!(r.steps, 14);
    let m = m.valid();
    let ids: Vec<u32> = (0..12).collect();
    to_f32_vec(m.forward(&m.input(&ids, &[1; 12], 2).unwrap(), None))
}

#[test]
#[ignore = "the child process of kto_survives_sigkill_at_a_random_step"]
fn kto_sigkill_child() {
    let _serial = rlhf_testkit::serial();
    if let Some(dir) = rlhf_testkit::crash::child_dir() {
        kto_into(&dir);
    }
}

/// A KTO run killed with SIGKILL at a random step and started again ends with the weights and
/// the metrics of a run that was never interrupted.
#[test]
fn kto_survives_sigkill_at_a_random_step() {
    let _serial = rlhf_testkit::serial();
    let child = rlhf_testkit::test_name!(kto_sigkill_child);
    rlhf_testkit::crash::assert_resumes_after_sigkill(&child, 14, kto_into);
}

/// With gradient accumulation, a micro-batch without an undesirable example reports no
/// `rewards/rejected`, and the step's value is the mean over the micro-batches that have one
/// (it was NaN, logged as null, when any micro-batch lacked one).
#[test]
fn accumulated_micro_batches_without_a_kind_leave_its_metrics_finite() {
    let _serial = rlhf_testkit::serial();
    let device = dev().autodiff();
    let reference = model(&device, 1);
    // 8 examples, 2 of them undesirable, in micro-batches of 2, all 4 in one step: at least two
    // micro-batches hold no undesirable example
    let data: Vec<KtoExample> = examples(8)
        .into_iter()
        .enumerate()
        .map(|(i, e)| KtoExample {
            desirable: i >= 2,
            ..e
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    train_kto(
        reference.clone(),
        &reference,
        &data,
        &[],
        &KtoConfig {
            batch_size: 2,
            grad_accum: 4,
            ..base()
        },
        &RefCache::new(None),
        &RunOptions::quiet_in(dir.path()),
        &device,
    )
    .unwrap();
    let lines = read_metrics(&dir.path().join("metrics.jsonl")).unwrap();
    assert!(!lines.is_empty());
    for line in &lines {
        for k in [
            names::REWARDS_CHOSEN,
            names::REWARDS_REJECTED,
            names::REWARDS_MARGINS,
            names::LOGPS_REJECTED,
        ] {
            assert!(
                line[k].as_f64().is_some_and(f64::is_finite),
                "{k}: {line:?}"
            );
        }
    }
}
