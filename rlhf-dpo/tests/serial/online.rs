//! The online loop: sample from the policy, score with a `Scorer`, pair best against worst, train.
//! With a rule reward that pays for stopping early, a few rounds make the policy's samples end
//! sooner (fixed seeds; the fixture model of rlhf-models with its tokenizer): one round at a time
//! (`online_round`) and as the trainer of its own (`train_online_dpo`), which logs TRL's
//! online-DPO metrics, builds IPO from summed log-probs as TRL's online trainer, refuses bad
//! settings and scores, and resumes exactly after a SIGKILL.
//!
//! The tests take `rlhf_testkit::serial()` first: bit-for-bit comparisons hold only when
//! no other test trains in the process at the same time.

use std::path::Path;

use burn::module::Module;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rlhf_core::Error;
use rlhf_core::host::to_f32_vec;
use rlhf_core::train::metrics::{names, read_metrics};
use rlhf_core::train::{OptimizerConfig, RunOptions};
use rlhf_core::{Result, Scorer};
use rlhf_data::Tokenizer;
use rlhf_dpo::{
    DpoConfig, OfflineLoss, OnlineConfig, OnlineDpoConfig, OnlineDpoInputs, OnlineDpoReport,
    online_round, train_online_dpo,
};
use rlhf_models::{CausalLm, SamplingConfig, load_pretrained};

/// Shorter is better: `−(characters)`.
struct Brevity;

impl Scorer for Brevity {
    fn score(&self, _prompts: &[&str], responses: &[&str]) -> Result<Vec<f32>> {
        Ok(responses
            .iter()
            .map(|r| -(r.chars().count() as f32))
            .collect())
    }
}

#[test]
fn online_rounds_follow_the_scorer() {
    let _serial = rlhf_testkit::serial();
    let device = rlhf_core::device_from_env().unwrap().autodiff();
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../rlhf-models/tests/fixtures/hf/tiny-llama");
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json"), None).unwrap();
    let (_, reference) = load_pretrained(&dir, &device).unwrap();
    let prompts: Vec<String> = [
        "the cat",
        "a summary",
        "numbers 0",
        "the dog ran",
        "keep the",
        "park",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let cfg = OnlineConfig {
        samples_per_prompt: 4,
        sampling: SamplingConfig {
            max_new_tokens: 12,
            temperature: 1.0,
            ..Default::default()
        },
        dpo: DpoConfig {
            loss: OfflineLoss::Dpo {
                label_smoothing: 0.0,
            },
            beta: 0.1,
            epochs: 2,
            batch_size: 6,
            optimizer: OptimizerConfig {
                lr: 5e-3,
                ..OptimizerConfig::default()
            },
            ..DpoConfig::default()
        },
    };
    // rounds from four seeds: one seed's 8 rounds move the mean length by 1-2.5 tokens, and a
    // round's mean (24 samples) is noisy by about 0.6
    let mut gains = Vec::new();
    let mut last = None;
    for seed in 0..4 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut policy = reference.clone();
        let mut scores = Vec::new();
        for _ in 0..8 {
            let (p, report) = online_round(
                policy, &reference, &prompts, &tok, &Brevity, &cfg, &mut rng, &device,
            )
            .unwrap();
            assert!(report.pairs > 0 && report.train.steps > 0);
            scores.push(report.mean_score);
            policy = p;
        }
        eprintln!("seed {seed}: mean score per round: {scores:?}");
        // the last two rounds' samples against the first round's
        gains.push((scores[6] + scores[7]) / 2.0 - scores[0]);
        last = Some((policy, rng));
    }
    // a seed's gain moves by more than a token between runs whose last bits differ (seed 2:
    // +1.35 in one run, −0.40 in another of the same code), so the test asks for the mean over
    // seeds and for three seeds of four
    let mean_gain = gains.iter().sum::<f64>() / gains.len() as f64;
    let gaining = gains.iter().filter(|&&g| g > 0.0).count();
    assert!(
        mean_gain > 1.0 && gaining >= 3,
        "the samples did not get shorter: gains {gains:?}"
    );
    let (policy, mut rng) = last.expect("four seeds ran");
    let bad = OnlineConfig {
        samples_per_prompt: 1,
        ..cfg
    };
    assert!(
        online_round(
            policy, &reference, &prompts, &tok, &Brevity, &bad, &mut rng, &device
        )
        .is_err()
    );
}

/// The fixture model, its tokenizer and the prompts of these tests.
fn fixture(device: &burn::tensor::Device) -> (Tokenizer, CausalLm, Vec<String>) {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../rlhf-models/tests/fixtures/hf/tiny-llama");
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json"), None).unwrap();
    let (_, model) = load_pretrained(&dir, device).unwrap();
    let prompts = [
        "the cat",
        "a summary",
        "numbers 0",
        "the dog ran",
        "keep the",
        "park",
        "one two",
        "the park was",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    (tok, model, prompts)
}

/// The trainer's inputs without eval.
fn inputs<'a>(
    reference: &'a CausalLm,
    scorer: &'a dyn Scorer,
    tokenizer: &'a Tokenizer,
    prompts: &'a [String],
) -> OnlineDpoInputs<'a> {
    OnlineDpoInputs {
        reference,
        scorer,
        tokenizer,
        prompts,
        eval: None,
        eval_every: 0,
    }
}

/// Trains from `inputs`' reference with `cfg`, logging quietly into `dir`.
fn train_in(
    dir: &Path,
    inputs: &OnlineDpoInputs,
    cfg: &OnlineDpoConfig,
    device: &burn::tensor::Device,
) -> OnlineDpoReport {
    let options = RunOptions::quiet_in(dir);
    train_online_dpo(inputs.reference.clone(), inputs, cfg, &options, device)
        .unwrap()
        .1
}

fn online_cfg() -> OnlineDpoConfig {
    OnlineDpoConfig {
        rounds: 10,
        prompts_per_round: 6,
        samples_per_prompt: 4,
        sampling: SamplingConfig {
            max_new_tokens: 12,
            temperature: 1.0,
            ..Default::default()
        },
        epochs: 2,
        minibatches: 2,
        optimizer: OptimizerConfig {
            lr: 5e-3,
            ..OptimizerConfig::default()
        },
        seed: 3,
        ..OnlineDpoConfig::default()
    }
}

/// Mean `objective/scores` of a run's first and last three rounds.
fn first_and_last(dir: &Path) -> (f64, f64) {
    let scores: Vec<f64> = read_metrics(&dir.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .map(|l| l[names::OBJECTIVE_SCORES].as_f64().unwrap())
        .collect();
    let n = scores.len();
    (
        scores[..3].iter().sum::<f64>() / 3.0,
        scores[n - 3..].iter().sum::<f64>() / 3.0,
    )
}

/// `train_online_dpo` with the brevity rule: the last rounds' samples are clearly shorter than
/// the first rounds' (with a learning rate of 1e-12 they are not: the margin is the trainer's
/// doing), every round
/// logs TRL's online-DPO metrics (a first round of one step, taken at the reference, has KL and
/// implicit rewards 0 and DPO's loss log 2), and there are at most `rounds · epochs ·
/// minibatches` steps.
#[test]
fn the_online_dpo_trainer_follows_the_scorer() {
    let _serial = rlhf_testkit::serial();
    let device = rlhf_core::device_from_env().unwrap().autodiff();
    let (tok, reference, prompts) = fixture(&device);
    let inputs = inputs(&reference, &Brevity, &tok, &prompts);
    let cfg = online_cfg();
    let dir = tempfile::tempdir().unwrap();
    let report = train_in(dir.path(), &inputs, &cfg, &device);
    assert_eq!(report.rounds, 10);
    assert!(report.steps_this_run > 0 && report.steps_this_run <= 40);
    let (early, late) = first_and_last(dir.path());
    eprintln!("brevity score: first three rounds {early:.2}, last three {late:.2}");
    assert!(late > early + 2.0, "{early} → {late}");
    let lines = read_metrics(&dir.path().join("metrics.jsonl")).unwrap();
    for line in &lines {
        for k in [
            names::OBJECTIVE_SCORES,
            names::VAL_CONTAIN_EOS_TOKEN,
            names::COMPLETIONS_MEAN_LENGTH,
            names::ONLINE_PAIR_SHARE,
            names::BETA,
            names::TRAIN_SKIPPED_STEPS,
        ] {
            assert!(
                line[k].as_f64().is_some_and(f64::is_finite),
                "{k}: {line:?}"
            );
        }
        if line[names::ONLINE_PAIR_SHARE].as_f64().unwrap() > 0.0 {
            for k in [
                names::TRAIN_LOSS,
                names::TRAIN_GRAD_NORM,
                names::TRAIN_LR,
                names::OBJECTIVE_SCORES_MARGIN,
                names::OBJECTIVE_KL,
                names::OBJECTIVE_ENTROPY,
                names::OBJECTIVE_NON_SCORE_REWARD,
                names::OBJECTIVE_RLHF_REWARD,
                names::REWARDS_CHOSEN,
                names::REWARDS_REJECTED,
                names::REWARDS_MARGINS,
                names::REWARDS_ACCURACIES,
                names::LOGPS_CHOSEN,
                names::LOGPS_REJECTED,
            ] {
                assert!(
                    line[k].as_f64().is_some_and(f64::is_finite),
                    "{k}: {line:?}"
                );
            }
            assert!(line[names::OBJECTIVE_SCORES_MARGIN].as_f64().unwrap() > 0.0);
        }
    }
    // one round of one step starts at the reference: its KL and rewards are 0, DPO's loss log 2
    let one = tempfile::tempdir().unwrap();
    let single = OnlineDpoConfig {
        rounds: 1,
        epochs: 1,
        minibatches: 1,
        ..cfg.clone()
    };
    train_in(one.path(), &inputs, &single, &device);
    let first = &read_metrics(&one.path().join("metrics.jsonl")).unwrap()[0];
    let get = |k: &str| first[k].as_f64().unwrap();
    assert!(
        (get(names::TRAIN_LOSS) - 2f64.ln()).abs() < 1e-5,
        "{first:?}"
    );
    for k in [
        names::OBJECTIVE_KL,
        names::OBJECTIVE_NON_SCORE_REWARD,
        names::REWARDS_CHOSEN,
        names::REWARDS_MARGINS,
    ] {
        assert!(get(k).abs() < 1e-4, "{k}: {first:?}");
    }
    assert!(
        (get(names::OBJECTIVE_RLHF_REWARD) - get(names::OBJECTIVE_SCORES)).abs() < 1e-3,
        "{first:?}"
    );

    // the same run with a learning rate of 1e-12 (0 is refused) does not shorten its samples
    let frozen = tempfile::tempdir().unwrap();
    let still = OnlineDpoConfig {
        optimizer: OptimizerConfig {
            lr: 1e-12,
            ..cfg.optimizer.clone()
        },
        ..cfg.clone()
    };
    train_in(frozen.path(), &inputs, &still, &device);
    let (early0, late0) = first_and_last(frozen.path());
    eprintln!("lr 1e-12: first three rounds {early0:.2}, last three {late0:.2}");
    assert!(late0 <= early0 + 2.0, "{early0} → {late0} without learning");
}

/// Online IPO reads summed log-probs, as TRL's online trainer: at the first step (the policy is
/// the reference, so `h = 0`) the loss is `(1/(2β))²`, and the logged `logps/chosen` and
/// `logps/rejected` are sums over response tokens, so their mean is minus the logged entropy
/// (the responses' mean summed log-prob). Averaged log-probs, as the offline IPO reads them,
/// would be several times closer to 0.
#[test]
fn online_ipo_reads_summed_logprobs() {
    let _serial = rlhf_testkit::serial();
    let device = rlhf_core::device_from_env().unwrap().autodiff();
    let (tok, reference, prompts) = fixture(&device);
    let inputs = inputs(&reference, &Brevity, &tok, &prompts);
    let cfg = OnlineDpoConfig {
        rounds: 1,
        epochs: 1,
        minibatches: 1,
        loss: OfflineLoss::Ipo,
        beta: 0.1,
        ..online_cfg()
    };
    let dir = tempfile::tempdir().unwrap();
    train_in(dir.path(), &inputs, &cfg, &device);
    let first = &read_metrics(&dir.path().join("metrics.jsonl")).unwrap()[0];
    let get = |k: &str| first[k].as_f64().unwrap();
    assert!((get(names::TRAIN_LOSS) - 25.0).abs() < 1e-3, "{first:?}");
    let pair_mean = (get(names::LOGPS_CHOSEN) + get(names::LOGPS_REJECTED)) / 2.0;
    let entropy = get(names::OBJECTIVE_ENTROPY);
    assert!(
        (pair_mean + entropy).abs() < 1e-3 * (1.0 + entropy.abs()),
        "logps/chosen and logps/rejected average {pair_mean}; the summed log-probs {}",
        -entropy
    );
}

/// Scores the first response 1 and the others 0, or answers with a given defect.
struct Faulty(&'static str);

impl Scorer for Faulty {
    fn score(&self, _prompts: &[&str], responses: &[&str]) -> Result<Vec<f32>> {
        Ok(match self.0 {
            "nan" => vec![f32::NAN; responses.len()],
            "short" => vec![0.0; responses.len() - 1],
            _ => (0..responses.len())
                .map(|i| f32::from(u8::from(i == 0)))
                .collect(),
        })
    }
}

/// Settings that cannot run are refused as configuration errors before the first round; a
/// scorer's wrong count or non-finite score stops the run with an error that names it; prompts
/// that are missing or empty are refused.
#[test]
fn bad_settings_scores_and_prompts_are_refused() {
    let _serial = rlhf_testkit::serial();
    let device = rlhf_core::device_from_env().unwrap().autodiff();
    let (tok, reference, prompts) = fixture(&device);
    let run = |cfg: &OnlineDpoConfig, scorer: &dyn Scorer, prompts: &[String]| {
        let inputs = inputs(&reference, scorer, &tok, prompts);
        train_online_dpo(
            reference.clone(),
            &inputs,
            cfg,
            &RunOptions::quiet(),
            &device,
        )
        .map(|r| r.1.rounds)
    };
    let one = OnlineDpoConfig {
        rounds: 1,
        ..online_cfg()
    };
    for (what, cfg) in [
        (
            "one sample",
            OnlineDpoConfig {
                samples_per_prompt: 1,
                ..one.clone()
            },
        ),
        (
            "no rounds",
            OnlineDpoConfig {
                rounds: 0,
                ..one.clone()
            },
        ),
        (
            "no minibatches",
            OnlineDpoConfig {
                minibatches: 0,
                ..one.clone()
            },
        ),
        (
            "more minibatches than prompts",
            OnlineDpoConfig {
                minibatches: 7,
                ..one.clone()
            },
        ),
        (
            "negative penalty",
            OnlineDpoConfig {
                missing_eos_penalty: Some(-1.0),
                ..one.clone()
            },
        ),
        (
            "β = 0",
            OnlineDpoConfig {
                beta: 0.0,
                ..one.clone()
            },
        ),
        (
            "robust ε = ½",
            OnlineDpoConfig {
                loss: OfflineLoss::Robust { eps: 0.5 },
                ..one.clone()
            },
        ),
        (
            "no new tokens",
            OnlineDpoConfig {
                sampling: SamplingConfig {
                    max_new_tokens: 0,
                    ..one.sampling.clone()
                },
                ..one.clone()
            },
        ),
        (
            "prompt length 0",
            OnlineDpoConfig {
                max_prompt_length: Some(0),
                ..one.clone()
            },
        ),
    ] {
        let result = run(&cfg, &Faulty("ok"), &prompts);
        assert!(
            matches!(result, Err(Error::Config(_))),
            "{what}: {result:?}"
        );
    }
    assert_eq!(run(&one, &Faulty("ok"), &prompts).unwrap(), 1);
    let err = run(&one, &Faulty("nan"), &prompts).unwrap_err();
    assert!(err.to_string().contains("non-finite score"), "{err}");
    let err = run(&one, &Faulty("short"), &prompts).unwrap_err();
    assert!(err.to_string().contains("scores for"), "{err}");
    let err = run(&one, &Faulty("ok"), &[]).unwrap_err();
    assert!(err.to_string().contains("no training prompts"), "{err}");
    let err = run(&one, &Faulty("ok"), &["a".into(), String::new()]).unwrap_err();
    assert!(err.to_string().contains("prompt 1 is empty"), "{err}");
}

/// Online DPO into `dir` (10 rounds, a checkpoint every 2), from the fixture: the final policy's
/// logits on a probe.
fn online_into(dir: &Path) -> Vec<f32> {
    // bit for bit holds on the CPU backend (GPU reductions need not be deterministic)
    let device = rlhf_core::parse_device("flex").unwrap().autodiff();
    let (tok, reference, prompts) = fixture(&device);
    let inputs = inputs(&reference, &Brevity, &tok, &prompts);
    let opts = RunOptions {
        checkpoint_every: 2,
        progress: false,
        ..RunOptions::in_dir(dir)
    };
    let cfg = OnlineDpoConfig {
        sampling: SamplingConfig {
            max_new_tokens: 8,
            temperature: 1.0,
            ..Default::default()
        },
        ..online_cfg()
    };
    let (m, _) = train_online_dpo(reference.clone(), &inputs, &cfg, &opts, &device).unwrap();
    let m = m.valid();
    let ids: Vec<u32> = (1..13).collect();
    to_f32_vec(m.forward(&m.input(&ids, &[1; 12], 2).unwrap(), None))
}

#[test]
#[ignore = "the child process of online_dpo_survives_sigkill_at_a_random_round"]
fn online_dpo_sigkill_child() {
    let _serial = rlhf_testkit::serial();
    if let Some(dir) = rlhf_testkit::crash::child_dir() {
        online_into(&dir);
    }
}

/// An online DPO run killed with SIGKILL at a random round and started again ends with the
/// weights and the metrics of a run that was never interrupted: the rounds' samples are drawn
/// from `(seed, round)` and the optimizer's moments come back from the checkpoint.
#[test]
fn online_dpo_survives_sigkill_at_a_random_round() {
    let _serial = rlhf_testkit::serial();
    let child = rlhf_testkit::test_name!(online_dpo_sigkill_child);
    rlhf_testkit::crash::assert_resumes_after_sigkill(&child, 10, online_into);
}
