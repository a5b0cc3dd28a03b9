//! The LLM judge on a tiny checkpoint whose weights force the rating: a GPT-NeoX (d = 64, two
//! layers) fine-tuned to answer each of LongReward's four rubric prompts with one digit
//! (helpfulness 7, logicality 2, faithfulness 5, completeness 8) on `tldr-synth` posts and
//! summaries. Checked on held-out posts: the expected rating lands on the trained digit; a rating
//! set the model never puts mass on gives their plain mean (the softmax is restricted to the
//! rating tokens); the expectation is the `f64` one computed here from the model's own logits;
//! scores do not depend on the batch a row is scored in; the weighted mean over dimensions is the
//! weighted mean of per-dimension scores; configuration and template errors are errors.

use std::sync::OnceLock;
use std::time::Instant;

use burn::module::{Module, Param};
use burn::tensor::Device;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rlhf_core::host::to_f32_vec;
use rlhf_core::train::{LrSchedule, OptimizerConfig, RunOptions, seeded};
use rlhf_core::{Error, Scorer};
use rlhf_data::tasks::{Task, TldrSynth, with_eos};
use rlhf_data::{Split, Tokenizer};
use rlhf_models::{CausalLm, SftConfig, train_sft};
use rlhf_reward::{JudgeConfig, JudgeDimension, LlmJudge, Rating};

/// The digit trained for each of the default dimensions, in their order.
const TARGETS: [u8; 4] = [7, 2, 5, 8];

struct Fixture {
    device: Device,
    tokenizer: Tokenizer,
    /// The fine-tuned judge model.
    model: CausalLm,
    /// Held-out (prompt, response) pairs.
    pairs: Vec<(String, String)>,
}

fn pairs(split: Split, n: u64, seed: u64) -> Vec<(String, String)> {
    let task = TldrSynth::default();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let p = task.prompt(split, i);
            let r = with_eos(&task.demonstrate(&p, &mut rng));
            (p, r)
        })
        .collect()
}

fn fixture() -> &'static Fixture {
    static SETUP: OnceLock<Fixture> = OnceLock::new();
    SETUP.get_or_init(|| {
        let start = Instant::now();
        // The judge is trained on flex and then moved to the device under test: these tests are
        // about scoring, and on a software GPU the training alone takes minutes (SFT's own
        // tests train on every device).
        let device = rlhf_core::parse_device("flex").unwrap().autodiff();
        let train = pairs(Split::Train, 48, 0);
        let dims = JudgeDimension::longreward();
        // the templates' words and the posts; digits are single bytes of the byte-level BPE
        let corpus: Vec<String> = train
            .iter()
            .flat_map(|(p, r)| [p.clone(), r.clone()])
            .chain(
                dims.iter()
                    .flat_map(|d| vec![d.template.replace("{{ bos_token }}", ""); 8]),
            )
            .collect();
        let tokenizer = Tokenizer::train_bpe(corpus.iter(), 512).unwrap();
        let shape = rlhf_testkit::tiny_shape(tokenizer.vocab_size());
        let init = seeded(&device, 1, || CausalLm::init(&shape, &device).unwrap());
        // the judge's own rendering of every (pair, dimension), answered by the dimension's digit
        let render = LlmJudge::new(
            init.clone(),
            tokenizer.clone(),
            JudgeConfig::default(),
            &device,
        )
        .unwrap();
        let mut examples = Vec::new();
        for (p, r) in &train {
            for (d, digit) in TARGETS.iter().enumerate() {
                let input = render.render(p, r, d).unwrap();
                examples.push((
                    tokenizer.encode(&input).unwrap(),
                    tokenizer.encode(&digit.to_string()).unwrap(),
                ));
            }
        }
        let cfg = SftConfig {
            epochs: 5,
            batch_size: 16,
            optimizer: OptimizerConfig {
                lr: 3e-3,
                ..OptimizerConfig::default()
            },
            schedule: LrSchedule::Linear {
                warmup: 5,
                total: 60,
            },
            seed: 2,
            ..SftConfig::default()
        };
        let (model, report) =
            train_sft(init, &examples, &[], &cfg, &RunOptions::quiet(), &device).unwrap();
        eprintln!(
            "judge fixture: {} examples, {} steps, {:.1} s",
            examples.len(),
            report.steps,
            start.elapsed().as_secs_f64()
        );
        let device = rlhf_core::device_from_env().unwrap().autodiff();
        Fixture {
            model: model.fork(&device),
            device,
            tokenizer,
            pairs: pairs(Split::Eval, 6, 1),
        }
    })
}

fn judge(config: JudgeConfig) -> rlhf_core::Result<LlmJudge> {
    let f = fixture();
    LlmJudge::new(f.model.clone(), f.tokenizer.clone(), config, &f.device)
}

fn texts(pairs: &[(String, String)]) -> (Vec<&str>, Vec<&str>) {
    pairs.iter().map(|(p, r)| (p.as_str(), r.as_str())).unzip()
}

/// `Σ_k softmax(ℓ[ids])_k · v_k` in `f64` from the model's full forward pass over `text`, read at
/// its last position.
fn reference_expectation(judge: &LlmJudge, text: &str) -> f64 {
    let tokenizer = &fixture().tokenizer;
    let ids = tokenizer.encode(text).unwrap();
    let model = judge.model();
    let input = model.input(&ids, &vec![1u8; ids.len()], 1).unwrap();
    let logits = to_f32_vec(model.forward(&input, None)); // [1, t, V]
    let vocab = logits.len() / ids.len();
    let last = &logits[(ids.len() - 1) * vocab..];
    let picked: Vec<f64> = judge
        .rating_ids()
        .iter()
        .map(|&id| f64::from(last[id as usize]))
        .collect();
    let max = picked.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let z: f64 = picked.iter().map(|l| (l - max).exp()).sum();
    picked
        .iter()
        .zip(&judge.config().ratings)
        .map(|(l, r)| (l - max).exp() / z * r.value)
        .sum()
}

/// The probability of the judge's rating tokens under the model's whole next-token
/// distribution after `text`.
fn full_mass(judge: &LlmJudge, text: &str) -> f64 {
    let ids = fixture().tokenizer.encode(text).unwrap();
    let model = judge.model();
    let input = model.input(&ids, &vec![1u8; ids.len()], 1).unwrap();
    let logits = to_f32_vec(model.forward(&input, None));
    let vocab = logits.len() / ids.len();
    let last: Vec<f64> = logits[(ids.len() - 1) * vocab..]
        .iter()
        .map(|&l| f64::from(l))
        .collect();
    let max = last.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let z: f64 = last.iter().map(|l| (l - max).exp()).sum();
    judge
        .rating_ids()
        .iter()
        .map(|&id| (last[id as usize] - max).exp() / z)
        .sum()
}

#[test]
fn the_expected_rating_lands_on_the_digit_the_model_was_trained_to_give() {
    let f = fixture();
    let judge = judge(JudgeConfig::default()).unwrap();
    let (prompts, responses) = texts(&f.pairs);
    let scores = judge.dimension_scores(&prompts, &responses).unwrap();
    for (row, s) in scores.iter().enumerate() {
        for ((d, &e), &digit) in s.iter().enumerate().zip(&TARGETS) {
            eprintln!("pair {row} dimension {d}: expected rating {e:.4} (trained {digit})");
            assert!(
                (e - f64::from(digit)).abs() < 0.3,
                "pair {row}, dimension {d}: {e} vs {digit}"
            );
        }
    }
}

/// The fixture's model with the LM-head rows (columns of `[d, vocab]`) of `copies` replaced by
/// the row of `source`: the model gives those tokens exactly the logit it gives `source`.
fn with_copied_head_rows(source: u32, copies: &[u32]) -> CausalLm {
    let CausalLm::GptNeox(mut m) = fixture().model.clone().valid() else {
        panic!("the fixture is a GPT-NeoX")
    };
    let head = m.embed_out.as_mut().expect("an LM head");
    let mut w = head.weight.val();
    let d = w.dims()[0];
    let s = source as usize;
    let row = w.clone().slice([0..d, s..s + 1]);
    for &c in copies {
        let c = c as usize;
        w = w.slice_assign([0..d, c..c + 1], row.clone());
    }
    head.weight = Param::from_tensor(w);
    CausalLm::GptNeox(m)
}

#[test]
fn ratings_the_model_never_gives_average_to_their_plain_mean() {
    // digits in neither the targets nor the templates, which the fine-tuned model gives almost no
    // mass; their head rows made equal, so the model cannot prefer one of them to another
    let digits = [1u8, 3, 4, 6];
    let ratings: Vec<Rating> = digits
        .iter()
        .map(|&d| Rating {
            text: d.to_string(),
            value: f64::from(d),
        })
        .collect();
    let f = fixture();
    let config = JudgeConfig {
        ratings,
        ..JudgeConfig::default()
    };
    let trained = judge(config.clone()).unwrap();
    let ids = trained.rating_ids().to_vec();
    let judge = LlmJudge::new(
        with_copied_head_rows(ids[0], &ids[1..]),
        f.tokenizer.clone(),
        config,
        &f.device,
    )
    .unwrap();
    let (prompts, responses) = texts(&f.pairs);
    let inputs: Vec<String> = (0..4)
        .map(|d| judge.render(prompts[0], responses[0], d).unwrap())
        .collect();
    let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let unforced = trained.expected_ratings(&refs).unwrap();
    let expected = judge.expected_ratings(&refs).unwrap();
    for (d, text) in refs.iter().enumerate() {
        let mass = full_mass(&judge, text);
        eprintln!(
            "dimension {d}: restricted to 1, 3, 4, 6 (mean 3.5): E = {:.6} (head rows as trained: \
             {:.4}); their mass in the whole next-token distribution {mass:.2e}",
            expected[d], unforced[d]
        );
        assert!(mass < 0.01, "the model puts {mass} on the ratings");
        assert!(
            (expected[d] - 3.5).abs() < 1e-6,
            "dimension {d}: {}",
            expected[d]
        );
    }
}

#[test]
fn the_expected_rating_is_the_f64_softmax_of_the_models_own_logits() {
    let f = fixture();
    for config in [
        JudgeConfig::default(),
        JudgeConfig {
            ratings: Rating::digits(4, 9),
            ..JudgeConfig::default()
        },
    ] {
        let judge = judge(config).unwrap();
        let (prompts, responses) = texts(&f.pairs);
        let inputs: Vec<String> = prompts
            .iter()
            .zip(&responses)
            .flat_map(|(p, r)| (0..4).map(|d| judge.render(p, r, d).unwrap()))
            .collect();
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let got = judge.expected_ratings(&refs).unwrap();
        for (text, e) in refs.iter().zip(&got) {
            let want = reference_expectation(&judge, text);
            assert!((e - want).abs() < 1e-5, "{e} vs reference {want}");
        }
    }
}

#[test]
fn a_row_scores_the_same_alone_and_in_any_batch() {
    let f = fixture();
    let judge1 = judge(JudgeConfig::default()).unwrap();
    let (prompts, responses) = texts(&f.pairs);
    let mut inputs: Vec<String> = prompts
        .iter()
        .zip(&responses)
        .map(|(p, r)| judge1.render(p, r, 0).unwrap())
        .collect();
    inputs.sort_by_key(|t| f.tokenizer.encode(t).unwrap().len());
    let lengths: Vec<usize> = inputs
        .iter()
        .map(|t| f.tokenizer.encode(t).unwrap().len())
        .collect();
    eprintln!("token lengths {lengths:?}");
    assert!(lengths[0] < lengths[2] && lengths[2] < lengths[5]);
    let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    // the middle row alone, then between a shorter and a longer one, in several batch sizes and
    // orders
    let alone = judge1.expected_ratings(&refs[2..3]).unwrap()[0];
    for batch_size in [1, 2, 3, 16] {
        let judge = judge(JudgeConfig {
            batch_size,
            ..JudgeConfig::default()
        })
        .unwrap();
        let mixed = [refs[5], refs[2], refs[0], refs[4], refs[1], refs[3]];
        let got = judge.expected_ratings(&mixed).unwrap();
        assert!(
            (got[1] - alone).abs() < 1e-5,
            "batch size {batch_size}: {} vs alone {alone}",
            got[1]
        );
        for (text, e) in mixed.iter().zip(&got) {
            let single = judge1.expected_ratings(&[text]).unwrap()[0];
            assert!(
                (e - single).abs() < 1e-5,
                "batch size {batch_size}: {e} vs {single}"
            );
        }
    }
}

#[test]
fn the_score_is_the_weighted_mean_of_the_dimensions() {
    let f = fixture();
    let mut dimensions = JudgeDimension::longreward();
    let weights = [1.0, 3.0, 0.0, 0.5];
    for (d, w) in dimensions.iter_mut().zip(weights) {
        d.weight = w;
    }
    let judge = judge(JudgeConfig {
        dimensions,
        batch_size: 5,
        ..JudgeConfig::default()
    })
    .unwrap();
    let (prompts, responses) = texts(&f.pairs);
    let scores = judge.score(&prompts, &responses).unwrap();
    assert_eq!(scores.len(), prompts.len());
    for ((p, r), s) in prompts.iter().zip(&responses).zip(&scores) {
        // each dimension scored on its own, combined here in f64
        let per_dim: Vec<f64> = (0..4)
            .map(|d| {
                let input = judge.render(p, r, d).unwrap();
                judge.expected_ratings(&[input.as_str()]).unwrap()[0]
            })
            .collect();
        let want = per_dim.iter().zip(weights).map(|(e, w)| e * w).sum::<f64>()
            / weights.iter().sum::<f64>();
        let plain = per_dim.iter().sum::<f64>() / 4.0;
        eprintln!("dimensions {per_dim:.3?}: weighted {want:.4}, plain {plain:.4}, score {s}");
        assert!((f64::from(*s) - want).abs() < 1e-5, "{s} vs {want}");
        assert!((want - plain).abs() > 0.5, "the weights must matter here");
    }
    assert_eq!(judge.name(), "llm-judge");
}

#[test]
fn eos_is_stripped_from_the_response_unless_asked_not_to() {
    let f = fixture();
    let (p, r) = &f.pairs[0];
    assert!(r.ends_with(&f.tokenizer.eos_text()));
    let body = r.strip_suffix(&f.tokenizer.eos_text()).unwrap();
    let stripping = judge(JudgeConfig::default()).unwrap();
    assert_eq!(
        stripping.render(p, r, 0).unwrap(),
        stripping.render(p, body, 0).unwrap()
    );
    let keeping = judge(JudgeConfig {
        strip_eos: false,
        ..JudgeConfig::default()
    })
    .unwrap();
    assert!(keeping.render(p, r, 0).unwrap().contains(r.as_str()));
}

fn config_error(config: JudgeConfig) -> String {
    match judge(config) {
        Ok(_) => panic!("accepted"),
        Err(Error::Config(m)) => m,
        Err(e) => panic!("not a config error: {e}"),
    }
}

#[test]
fn unusable_configurations_are_errors() {
    let f = fixture();
    // a rating of two tokens
    let two = "77";
    assert_eq!(f.tokenizer.encode(two).unwrap().len(), 2);
    let mut ratings = Rating::digits(0, 9);
    ratings.push(Rating {
        text: two.into(),
        value: 77.0,
    });
    let m = config_error(JudgeConfig {
        ratings,
        ..JudgeConfig::default()
    });
    assert!(m.contains("rating \"77\" encodes to"), "{m}");
    // ratings that are no token, too few, the same token twice, or without a finite value
    for ratings in [
        vec![
            Rating {
                text: String::new(),
                value: 0.0,
            },
            Rating {
                text: "1".into(),
                value: 1.0,
            },
        ],
        Rating::digits(3, 3),
        [Rating::digits(2, 3), Rating::digits(3, 3)].concat(),
        vec![
            Rating {
                text: "1".into(),
                value: f64::NAN,
            },
            Rating {
                text: "2".into(),
                value: 2.0,
            },
        ],
    ] {
        config_error(JudgeConfig {
            ratings,
            ..JudgeConfig::default()
        });
    }
    // a template that does not parse
    let m = config_error(JudgeConfig {
        dimensions: vec![JudgeDimension::new("helpfulness", "{{ prompt ")],
        ..JudgeConfig::default()
    });
    assert!(m.contains("dimension `helpfulness`"), "{m}");
    // weights and names
    let weighted = |weights: &[f64]| JudgeConfig {
        dimensions: JudgeDimension::longreward()
            .into_iter()
            .zip(weights)
            .map(|(d, &weight)| JudgeDimension { weight, ..d })
            .collect(),
        ..JudgeConfig::default()
    };
    config_error(weighted(&[0.0, 0.0]));
    config_error(weighted(&[1.0, -1.0]));
    config_error(weighted(&[1.0, f64::INFINITY]));
    config_error(JudgeConfig {
        dimensions: vec![],
        ..JudgeConfig::default()
    });
    config_error(JudgeConfig {
        dimensions: [JudgeDimension::longreward(), JudgeDimension::longreward()].concat(),
        ..JudgeConfig::default()
    });
    config_error(JudgeConfig {
        batch_size: 0,
        ..JudgeConfig::default()
    });
    // a reward model's backbone has no LM head
    let headless = LlmJudge::new(
        f.model.clone().without_lm_head(),
        f.tokenizer.clone(),
        JudgeConfig::default(),
        &f.device,
    );
    assert!(headless.is_err());
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let f = fixture();
    let judge1 = judge(JudgeConfig::default()).unwrap();
    let (prompts, responses) = texts(&f.pairs);
    // one response too few
    assert!(matches!(
        judge1.score(&prompts, &responses[1..]),
        Err(Error::Shape(_))
    ));
    assert_eq!(judge1.score(&[], &[]).unwrap(), Vec::<f32>::new());
    // a variable the template does not get fails when rendered
    let typo = judge(JudgeConfig {
        dimensions: vec![JudgeDimension::new("helpfulness", "{{ promt }} Rating: [[")],
        ..JudgeConfig::default()
    })
    .unwrap();
    let e = typo.score(&prompts, &responses).unwrap_err();
    assert!(e.to_string().contains("dimension `helpfulness`"), "{e}");
    // a template whose rendering is empty leaves nothing to read a rating after
    let empty = judge(JudgeConfig {
        dimensions: vec![JudgeDimension::new(
            "helpfulness",
            "{% if false %}x{% endif %}",
        )],
        ..JudgeConfig::default()
    })
    .unwrap();
    assert!(empty.score(&prompts, &responses).is_err());
    // a dimension that does not exist
    assert!(judge1.render(prompts[0], responses[0], 4).is_err());
}

/// A tokenizer that prepends "▁" to every text (Llama 2, Mistral, Phi-3; the committed tiny
/// Llama fixture) encodes a lone digit as two tokens but the digit after `Rating: [[` as one:
/// each rating's token is the one it adds to the rating context, so the default judge is usable
/// with it, and it reads the token the template is followed by.
#[test]
fn ratings_are_found_where_they_follow_the_template() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../rlhf-models/tests/fixtures/hf/tiny-llama");
    let device = rlhf_core::parse_device("flex").unwrap();
    let (_, model) = rlhf_models::load_pretrained(&dir, &device).unwrap();
    let tok = Tokenizer::from_dir(&dir).unwrap();
    assert_eq!(
        tok.encode("7").unwrap().len(),
        2,
        "a lone digit is two tokens here"
    );
    let judge = LlmJudge::new(model, tok.clone(), JudgeConfig::default(), &device).unwrap();
    for (k, &id) in judge.rating_ids().iter().enumerate() {
        let in_context = tok.encode(&format!("Rating: [[{k}")).unwrap();
        assert_eq!(Some(&id), in_context.last(), "rating {k}");
    }
    // a rating context the templates do not end with, after which "77" is two tokens, is refused
    let err = LlmJudge::new(
        judge.model().clone(),
        tok,
        JudgeConfig {
            ratings: vec![
                Rating {
                    text: "7".into(),
                    value: 7.0,
                },
                Rating {
                    text: "77".into(),
                    value: 77.0,
                },
            ],
            ..JudgeConfig::default()
        },
        &device,
    )
    .err()
    .expect("a two-token rating");
    assert!(matches!(err, Error::Config(_)), "{err}");
}
