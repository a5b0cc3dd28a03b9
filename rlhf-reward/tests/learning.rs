// A binary of its own: the slow learning tests, which are run on their own.
//! Reward models learn, with fixed seeds:
//! - an outcome RM trained on labelled `tldr-synth` pairs orders held-out pairs as the *gold*
//!   scorer does well above chance and close to the labeller's own agreement with gold (its
//!   labels are noisy, so that agreement is the ceiling of what the labels can teach);
//! - a process RM learns `arith-steps`' step labels (at a difficulty this size can learn), and a
//!   step model reads each label at its own step;
//! - a likelihood verifier learns which token makes a response wrong, by binary cross-entropy
//!   and by the within-prompt pair loss (then ordering each prompt's responses);
//! - normalisation centres the demonstrations' scores; save/load and the `Scorer` serve the
//!   same numbers;
//! - an LLM judge (a causal LM fine-tuned to answer `post, summary → Rating: [[` with the gold
//!   score's bucket digit) tracks the gold score on held-out summaries through its expected
//!   rating, where the untrained judge and the summary's length do not, and its best-vs-worst
//!   pairs (LongReward's DPO labels) mostly agree with the gold order.
//!
//! Each test takes `rlhf_testkit::serial()`: its reward head is initialised lazily from burn's one
//! generator, so a test running beside it would change its draws.
//!
//! The shared helpers (`rlhf_testkit::pairs`) also back `examples/rm_data_scaling.rs` (RM
//! accuracy against pairs).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rlhf_core::Scorer;
use rlhf_core::train::{LrSchedule, OptimizerConfig, RunOptions};
use rlhf_data::tasks::{ArithSteps, Task, TldrSynth, with_eos};
use rlhf_data::{Split, Tokenizer};
use rlhf_models::{SftConfig, train_sft};
use rlhf_reward::{
    JudgeConfig, JudgeDimension, LabelledExample, LikelihoodVerifier, LlmJudge, RewardModel,
    RewardScorer, RewardSettings, RmConfig, StepAggregate, StepLoss, best_and_worst,
    evaluate_labelled, fit_bias, normalise, prompts_with_pairs, segment_logits, train_reward_model,
    train_step_model,
};
use rlhf_testkit::pairs::{ArithData, TldrPairs, tiny_backbone};

#[test]
fn outcome_rm_on_tldr_synth_approaches_the_labeller_ceiling() {
    let _serial = rlhf_testkit::serial();
    let device = rlhf_core::device_from_env().unwrap().autodiff();
    let data = TldrPairs::build(1000, 400, 0.73, 0);
    let (config, backbone) = tiny_backbone(&device, data.tokenizer.vocab_size(), 1);
    let rm = RewardModel::from_backbone(backbone, config, RewardSettings::outcome());
    let cfg = RmConfig {
        epochs: 2,
        batch_size: 16,
        optimizer: OptimizerConfig {
            lr: 2e-3,
            ..OptimizerConfig::default()
        },
        schedule: LrSchedule::Linear {
            warmup: 10,
            total: 126,
        },
        seed: 3,
        ..RmConfig::default()
    };
    let before = rlhf_reward::evaluate_ranked(&rm.model, &data.eval, &cfg, &device).unwrap();
    let (model, report) = train_reward_model(
        rm.model.clone(),
        &data.train,
        &data.eval,
        &cfg,
        &RunOptions::quiet(),
        &device,
    )
    .unwrap();
    let gold = report.eval.gold_accuracy.unwrap();
    eprintln!(
        "RM: {} steps; held-out label accuracy {:.3}, gold-order accuracy {:.3} (untrained {:.3}); labeller's agreement with gold {:.3}",
        report.steps,
        report.eval.accuracy,
        gold,
        before.gold_accuracy.unwrap(),
        data.labeller_agreement
    );
    assert!(gold > 0.62, "gold-order accuracy {gold}");
    assert!(
        gold > data.labeller_agreement - 0.12,
        "gold-order accuracy {gold} vs ceiling {}",
        data.labeller_agreement
    );

    // normalisation centres the demonstrations, and is applied when serving
    let mut rm = RewardModel { model, ..rm };
    rm.settings.normalisation = normalise(&rm.model, &data.demos, true, 32, &device).unwrap();
    let dir = tempfile::tempdir().unwrap();
    rm.save(dir.path()).unwrap();
    let loaded = RewardModel::load(dir.path(), &device).unwrap();
    assert_eq!(loaded.settings, rm.settings);
    let scorer = RewardScorer::new(loaded, data.tokenizer.clone(), &device);
    let (prompts, responses): (Vec<&str>, Vec<&str>) = data
        .demo_texts
        .iter()
        .map(|(p, r)| (p.as_str(), r.as_str()))
        .unzip();
    let served = scorer.score(&prompts, &responses).unwrap();
    let mean = served.iter().sum::<f32>() / served.len() as f32;
    let var = served.iter().map(|s| (s - mean).powi(2)).sum::<f32>() / served.len() as f32;
    assert!(mean.abs() < 1e-3, "served demonstrations have mean {mean}");
    assert!((var - 1.0).abs() < 1e-2, "and variance {var}");
    // the in-memory model gives the same scores as the reloaded one
    let direct = RewardScorer::new(rm, data.tokenizer.clone(), &device)
        .score(&prompts, &responses)
        .unwrap();
    assert_eq!(served, direct);
}

/// A process reward model learns `arith-steps`' step labels. Three terms give two steps, and a
/// step is correct only when everything up to it is, so the second label needs both the step's
/// own arithmetic and the first step's. Operands up to 5 keep the arithmetic within what a
/// 2-layer, d = 64 model learns in about 3,000 optimizer steps; the task's default difficulty
/// (operands up to 30, 3 to 5 terms) is beyond it (`examples/prm_study.rs` measures both).
/// Measured with data seeds 0 to 3 (`prm_study` with `SEED`): balanced accuracy 0.72 to 0.82,
/// accuracy 0.14 to 0.22 above the majority class. A model that did not learn stays at 0.5
/// balanced and at the majority rate.
#[test]
fn prm_on_arith_steps_learns_step_labels() {
    let _serial = rlhf_testkit::serial();
    let device = rlhf_core::device_from_env().unwrap().autodiff();
    let task = ArithSteps {
        max_operand: 5,
        min_terms: 3,
        max_terms: 3,
        step_error: 0.25,
        ..ArithSteps::default()
    };
    let data = ArithData::build_for(&task, 3000, 300, 0);
    let (config, backbone) = tiny_backbone(&device, data.tokenizer.vocab_size(), 2);
    let prm = RewardModel::from_backbone(
        backbone,
        config,
        RewardSettings::process(";", StepAggregate::Min),
    );
    let epochs = 16;
    let cfg = RmConfig {
        epochs,
        batch_size: 16,
        optimizer: OptimizerConfig {
            lr: 2e-3,
            ..OptimizerConfig::default()
        },
        schedule: LrSchedule::Cosine {
            warmup: 100,
            total: 3000u64.div_ceil(16) * epochs as u64,
            min_ratio: 0.1,
        },
        seed: 4,
        ..RmConfig::default()
    };
    let (_, report) = train_step_model(
        prm.model,
        &data.train,
        &data.eval,
        &cfg,
        &RunOptions::quiet(),
        &device,
    )
    .unwrap();
    let balanced = report.eval.gold_accuracy.unwrap();
    eprintln!(
        "PRM: {} steps; step-label accuracy {:.3} (majority class {:.3}), balanced accuracy {balanced:.3}",
        report.steps, report.eval.accuracy, data.majority
    );
    assert!(
        report.eval.accuracy > data.majority + 0.10,
        "accuracy {} vs majority {}",
        report.eval.accuracy,
        data.majority
    );
    assert!(balanced > 0.70, "balanced accuracy {balanced}");
}

/// The step trainer reads each label at its own step: a label defined by the step's position
/// (only the first step is "correct") is learned almost perfectly. A trainer that read labels at
/// the wrong columns, or mixed up rows, would stay near the majority rate.
#[test]
fn step_labels_are_read_at_their_steps() {
    let _serial = rlhf_testkit::serial();
    let device = rlhf_core::device_from_env().unwrap().autodiff();
    let mut data = ArithData::build(400, 100, 0.25, 0);
    for e in data.train.iter_mut().chain(data.eval.iter_mut()) {
        for (i, l) in e.labels.iter_mut().enumerate() {
            *l = i == 0;
        }
    }
    let (_, backbone) = tiny_backbone(&device, data.tokenizer.vocab_size(), 2);
    let model = rlhf_models::ScalarModel::from_backbone(backbone);
    let cfg = step_config(3);
    let (_, report) = train_step_model(
        model,
        &data.train,
        &data.eval,
        &cfg,
        &RunOptions::quiet(),
        &device,
    )
    .unwrap();
    let balanced = report.eval.gold_accuracy.unwrap();
    assert!(balanced > 0.95, "balanced accuracy {balanced}");
}

/// A likelihood verifier learns a label that depends on what a response holds. A right response
/// counts up from 1 (`1 2 3`, `1 2 3 4 5`: 3 to 6 tokens, after a random 2-token prompt); a
/// wrong one has the token `BAD` in place of one of them. From a random tiny LM with the fitted
/// bias, whose logits follow the response's length more than what it holds, training makes the
/// count likely and `BAD` unlikely, and the held-out balanced accuracy passes 0.95; a trainer
/// whose gradients did not reach the LM, or that read the labels before the last token, would
/// stay near the untrained model's.
#[test]
fn likelihood_verifier_learns_which_token_makes_a_response_wrong() {
    let _serial = rlhf_testkit::serial();
    let device = rlhf_core::device_from_env().unwrap().autodiff();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut example = || {
        let prompt: Vec<u32> = (0..2).map(|_| rng.random_range(1..VOCAB)).collect();
        counting_response(&mut rng, prompt)
    };
    let train: Vec<LabelledExample> = (0..600).map(|_| example()).collect();
    let eval: Vec<LabelledExample> = (0..200).map(|_| example()).collect();
    let (_, lm) = tiny_backbone(&device, VOCAB as usize, 3);
    let rows: Vec<(&[u32], &[Vec<u32>])> = train
        .iter()
        .map(|e| (e.prompt.as_slice(), e.segments.as_slice()))
        .collect();
    let untrained = LikelihoodVerifier::new(lm, 0.0, &device);
    let z: Vec<f64> = segment_logits(&untrained, &rows, 64, &device)
        .unwrap()
        .into_iter()
        .map(|z| f64::from(z[0]))
        .collect();
    let labels: Vec<bool> = train.iter().map(|e| e.labels[0]).collect();
    let verifier =
        LikelihoodVerifier::new(untrained.lm, fit_bias(&z, &labels).unwrap() as f32, &device);
    let before = evaluate_labelled(&verifier, &eval, 64, &device)
        .unwrap()
        .gold_accuracy
        .unwrap();
    let cfg = RmConfig {
        seed: 5,
        ..step_config(3)
    };
    let (_, report) =
        train_step_model(verifier, &train, &eval, &cfg, &RunOptions::quiet(), &device).unwrap();
    let after = report.eval.gold_accuracy.unwrap();
    eprintln!(
        "likelihood verifier: {} steps; held-out balanced accuracy {before:.3} → {after:.3}",
        report.steps
    );
    assert!(before < 0.75, "untrained balanced accuracy {before}");
    assert!(after > 0.95, "balanced accuracy {after}");
}

/// The within-prompt loss orders one prompt's responses. Each prompt has four responses that
/// count up from 1 (3 to 6 tokens), each made wrong with probability ½ by the token `BAD` in
/// place of one count. A random tiny LM orders a prompt's right and wrong responses about as
/// often one way as the other (its logits follow length); trained on the pairs, it orders more
/// than 95% of the held-out prompts' pairs. One optimizer step takes four prompts with all their
/// responses, prompts whose responses are all right or all wrong left out: the step count says
/// so. A loss with the wrong sign, or pairs that ignored the labels, would not pass.
#[test]
fn within_prompt_training_orders_each_prompts_responses() {
    let _serial = rlhf_testkit::serial();
    let device = rlhf_core::device_from_env().unwrap().autodiff();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    // 200 distinct prompts: the first 150 train, the others are held out
    let mut prompt = |i: u32| -> Vec<LabelledExample> {
        let prompt = vec![1 + i / (VOCAB - 1), 1 + i % (VOCAB - 1)];
        (0..4)
            .map(|_| counting_response(&mut rng, prompt.clone()))
            .collect()
    };
    let train: Vec<LabelledExample> = (0..150).flat_map(&mut prompt).collect();
    let eval: Vec<LabelledExample> = (150..200).flat_map(&mut prompt).collect();
    let (_, lm) = tiny_backbone(&device, VOCAB as usize, 3);
    let verifier = LikelihoodVerifier::new(lm, 0.0, &device);
    let before = evaluate_labelled(&verifier, &eval, 64, &device)
        .unwrap()
        .pair_accuracy
        .unwrap();
    let cfg = RmConfig {
        batch_size: 4,
        seed: 5,
        step_loss: StepLoss::WithinPrompt,
        ..step_config(3)
    };
    let (_, report) =
        train_step_model(verifier, &train, &eval, &cfg, &RunOptions::quiet(), &device).unwrap();
    let after = report.eval.pair_accuracy.unwrap();
    let mixed = prompts_with_pairs(&train).len();
    eprintln!(
        "within-prompt verifier: {mixed} of 150 prompts with a pair, {} steps; held-out pair accuracy {before:.3} → {after:.3}",
        report.steps
    );
    assert!(mixed < 150, "every prompt kept: {mixed}");
    assert_eq!(report.steps, (mixed.div_ceil(4) * 3) as u64);
    assert!(before < 0.75, "untrained pair accuracy {before}");
    assert!(after > 0.95, "pair accuracy {after}");
}

/// The vocabulary of the counting responses.
const VOCAB: u32 = 32;
/// The token that makes a counting response wrong.
const BAD: u32 = 20;

/// A response to `prompt` that counts up from 1 (3 to 6 tokens), made wrong with probability ½
/// by `BAD` in place of one count, with its one label.
fn counting_response(rng: &mut ChaCha8Rng, prompt: Vec<u32>) -> LabelledExample {
    let len = rng.random_range(3..7);
    let mut response: Vec<u32> = (1..=len).collect();
    let wrong = rng.random_bool(0.5);
    if wrong {
        response[rng.random_range(0..len as usize)] = BAD;
    }
    LabelledExample {
        prompt,
        segments: vec![response],
        labels: vec![!wrong],
    }
}

/// The step-model tests' training: `epochs` passes in batches of 16 at learning rate 2e-3.
fn step_config(epochs: usize) -> RmConfig {
    RmConfig {
        epochs,
        batch_size: 16,
        optimizer: OptimizerConfig {
            lr: 2e-3,
            ..OptimizerConfig::default()
        },
        ..RmConfig::default()
    }
}

/// Spearman's rank correlation (average ranks for ties).
fn spearman(a: &[f64], b: &[f64]) -> f64 {
    fn ranks(x: &[f64]) -> Vec<f64> {
        let mut order: Vec<usize> = (0..x.len()).collect();
        order.sort_by(|&i, &j| x[i].total_cmp(&x[j]));
        let mut r = vec![0.0; x.len()];
        let mut i = 0;
        while i < order.len() {
            let mut j = i;
            while j + 1 < order.len() && x[order[j + 1]] == x[order[i]] {
                j += 1;
            }
            for &k in &order[i..=j] {
                r[k] = (i + j) as f64 / 2.0;
            }
            i = j + 1;
        }
        r
    }
    let (ra, rb) = (ranks(a), ranks(b));
    let n = a.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

#[test]
fn llm_judge_on_tldr_synth_tracks_the_gold_score() {
    let _serial = rlhf_testkit::serial();
    const EPOCHS: usize = 4;
    // held-out responses per prompt, for the judge's DPO pairs
    const K: usize = 4;

    let start = std::time::Instant::now();
    let device = rlhf_core::device_from_env().unwrap().autodiff();
    let task = TldrSynth::default();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut sample = |split: Split, prompts: std::ops::Range<u64>, per_prompt: usize| {
        prompts
            .flat_map(|i| {
                let p = task.prompt(split, i);
                (0..per_prompt)
                    .map(|_| {
                        let r = with_eos(&task.demonstrate(&p, &mut rng));
                        let g = task.gold(&p, &r).total;
                        (p.clone(), r, g)
                    })
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
    };
    let train = sample(Split::Train, 0..800, 2);
    let eval = sample(Split::Eval, 0..100, K);
    // the gold score's bucket on 0..9: [-1, 1] in ten equal steps, clamped (demonstrations'
    // gold spans -1.4..1, its median 0.52; a quarter of them are perfect)
    let bucket = |g: f64| ((g + 1.0) / 2.0 * 9.0).round().clamp(0.0, 9.0) as u8;
    let dimension = JudgeDimension::new("quality", "{{ prompt }}{{ response }}\nRating: [[");
    let config = JudgeConfig {
        dimensions: vec![dimension.clone()],
        batch_size: 32,
        ..JudgeConfig::default()
    };
    let tokenizer = Tokenizer::train_bpe(
        train
            .iter()
            .flat_map(|(p, r, _)| [p.as_str(), r.as_str()])
            .chain(std::iter::once(dimension.template.as_str())),
        512,
    )
    .unwrap();
    let (_, init) = tiny_backbone(&device, tokenizer.vocab_size(), 1);
    let untrained =
        LlmJudge::new(init.clone(), tokenizer.clone(), config.clone(), &device).unwrap();
    let examples: Vec<(Vec<u32>, Vec<u32>)> = train
        .iter()
        .map(|(p, r, g)| {
            let input = untrained.render(p, r, 0).unwrap();
            (
                tokenizer.encode(&input).unwrap(),
                tokenizer.encode(&bucket(*g).to_string()).unwrap(),
            )
        })
        .collect();
    let cfg = SftConfig {
        epochs: EPOCHS,
        batch_size: 16,
        optimizer: OptimizerConfig {
            lr: 2e-3,
            ..OptimizerConfig::default()
        },
        schedule: LrSchedule::Linear {
            warmup: 10,
            total: (examples.len() / 16 * EPOCHS) as u64,
        },
        seed: 3,
        ..SftConfig::default()
    };
    let (model, report) =
        train_sft(init, &examples, &[], &cfg, &RunOptions::quiet(), &device).unwrap();
    let judge = LlmJudge::new(model, tokenizer, config, &device).unwrap();
    let (prompts, responses): (Vec<&str>, Vec<&str>) = eval
        .iter()
        .map(|(p, r, _)| (p.as_str(), r.as_str()))
        .unzip();
    let gold: Vec<f64> = eval.iter().map(|x| x.2).collect();
    let as_f64 = |s: Vec<f32>| s.into_iter().map(f64::from).collect::<Vec<_>>();
    let before = spearman(
        &as_f64(untrained.score(&prompts, &responses).unwrap()),
        &gold,
    );
    let scores = judge.score(&prompts, &responses).unwrap();
    let after = spearman(&as_f64(scores.clone()), &gold);
    // the length-only control: longer summaries state more facts, and more padding
    let words: Vec<f64> = responses
        .iter()
        .map(|r| r.split_whitespace().count() as f64)
        .collect();
    let length = spearman(&words, &gold);
    // LongReward's pairs: the judge's best and worst of each prompt's K responses
    let (mut agree, mut pairs) = (0usize, 0usize);
    for (group, pair) in best_and_worst(&scores, K).unwrap().into_iter().enumerate() {
        if let Some((best, worst)) = pair {
            let (gb, gw) = (gold[group * K + best], gold[group * K + worst]);
            if gb != gw {
                pairs += 1;
                agree += usize::from(gb > gw);
            }
        }
    }
    let agreement = agree as f64 / pairs.max(1) as f64;
    eprintln!(
        "LLM judge on tldr-synth: {} examples, {} SFT steps, {:.0} s; Spearman with gold on {} \
         held-out responses {after:.3} (untrained {before:.3}, length {length:.3}); best-vs-worst \
         pairs of {K} agree with gold on {agree} of {pairs} ({agreement:.3}, gold ties left out)",
        examples.len(),
        report.steps,
        start.elapsed().as_secs_f64(),
        gold.len()
    );
    assert!(after > 0.4, "trained judge: Spearman {after}");
    assert!(
        after > length + 0.2,
        "trained judge {after} vs length {length}"
    );
    assert!(before.abs() < 0.2, "untrained judge: Spearman {before}");
    assert!(agreement > 0.65, "pairs agree with gold on {agreement}");
}
