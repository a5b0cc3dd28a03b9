//! Data and models shared by the reward models' learning tests and examples: labelled
//! `tldr-synth` pairs and step-labelled `arith-steps` chains, tokenized, with a tiny backbone.

use burn::tensor::Device;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rlhf_data::tasks::{ArithSteps, Labeller, Task, TldrSynth, with_eos};
use rlhf_data::{Split, Tokenizer};
use rlhf_models::{CausalLm, TransformerConfig};
use rlhf_reward::{LabelledExample, RankedExample};

/// The [`crate::tiny_shape`] model, initialised from `seed`.
pub fn tiny_backbone(device: &Device, vocab: usize, seed: u64) -> (TransformerConfig, CausalLm) {
    let c = crate::tiny_shape(vocab);
    let m = rlhf_core::train::seeded(device, seed, || CausalLm::init(&c, device).unwrap());
    (c, m)
}

/// Labelled preference pairs of two demonstrations per prompt.
pub struct TldrPairs {
    pub tokenizer: Tokenizer,
    pub train: Vec<RankedExample>,
    pub eval: Vec<RankedExample>,
    /// The labeller's agreement with the gold order on the eval pairs (ties left out).
    pub labeller_agreement: f64,
    /// SFT demonstrations, tokenized and as text (with EOS), for normalisation.
    pub demos: Vec<(Vec<u32>, Vec<u32>)>,
    pub demo_texts: Vec<(String, String)>,
}

impl TldrPairs {
    /// `n_train` train-split and `n_eval` eval-split pairs, labelled by a labeller calibrated to
    /// `agreement` with the gold order.
    pub fn build(n_train: u64, n_eval: u64, agreement: f64, seed: u64) -> Self {
        let task = TldrSynth::default();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let pair = |split: Split, i: u64, rng: &mut ChaCha8Rng| {
            let p = task.prompt(split, i);
            let a = with_eos(&task.demonstrate(&p, rng));
            let b = with_eos(&task.demonstrate(&p, rng));
            let (ga, gb) = (task.gold(&p, &a).total, task.gold(&p, &b).total);
            (p, a, b, ga, gb)
        };
        let calibration: Vec<(f64, f64)> = (0..2000)
            .map(|i| {
                let (_, _, _, ga, gb) = pair(Split::Train, 1_000_000 + i, &mut rng);
                (ga, gb)
            })
            .collect();
        let labeller = Labeller::calibrate(&calibration, agreement).unwrap();
        let raw_train: Vec<_> = (0..n_train)
            .map(|i| pair(Split::Train, i, &mut rng))
            .collect();
        let raw_eval: Vec<_> = (0..n_eval)
            .map(|i| pair(Split::Eval, i, &mut rng))
            .collect();
        let tokenizer = Tokenizer::train_bpe(
            raw_train
                .iter()
                .flat_map(|(p, a, b, _, _)| [p.clone(), a.clone(), b.clone()]),
            512,
        )
        .unwrap();
        let (mut agree, mut differ) = (0usize, 0usize);
        let mut label = |raw: &[(String, String, String, f64, f64)], count: bool| {
            raw.iter()
                .map(|(p, a, b, ga, gb)| {
                    let first = labeller.prefers_first(*ga, *gb, &mut rng);
                    if count && (ga - gb).abs() > 1e-12 {
                        differ += 1;
                        agree += usize::from(first == (ga > gb));
                    }
                    let ((c, gc), (r, gr)) = if first {
                        ((a, ga), (b, gb))
                    } else {
                        ((b, gb), (a, ga))
                    };
                    RankedExample {
                        prompt: tokenizer.encode(p).unwrap(),
                        responses: vec![tokenizer.encode(c).unwrap(), tokenizer.encode(r).unwrap()],
                        margin: None,
                        gold: Some(vec![*gc, *gr]),
                    }
                })
                .collect::<Vec<_>>()
        };
        let train = label(&raw_train, false);
        let eval = label(&raw_eval, true);
        let demo_texts: Vec<(String, String)> = raw_train
            .iter()
            .take(200)
            .map(|(p, a, _, _, _)| (p.clone(), a.clone()))
            .collect();
        let demos = demo_texts
            .iter()
            .map(|(p, a)| (tokenizer.encode(p).unwrap(), tokenizer.encode(a).unwrap()))
            .collect();
        TldrPairs {
            tokenizer,
            train,
            eval,
            labeller_agreement: agree as f64 / differ.max(1) as f64,
            demos,
            demo_texts,
        }
    }
}

/// Byte-level vocabulary without merges.
pub const ARITH_VOCAB: usize = 259;

/// Step-labelled chains: the demonstrator errs at `step_error` per step.
pub struct ArithData {
    pub tokenizer: Tokenizer,
    pub train: Vec<LabelledExample>,
    pub eval: Vec<LabelledExample>,
    /// Share of eval labels in the majority class.
    pub majority: f64,
}

impl ArithData {
    pub fn build(n_train: u64, n_eval: u64, step_error: f64, seed: u64) -> Self {
        let task = ArithSteps {
            step_error,
            ..ArithSteps::default()
        };
        Self::build_for(&task, n_train, n_eval, seed)
    }

    /// The same for any difficulty of the task.
    pub fn build_for(task: &ArithSteps, n_train: u64, n_eval: u64, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut raw = |split: Split, n: u64| {
            (0..n)
                .map(|i| {
                    let p = task.prompt(split, i);
                    let d = task.demonstrate(&p, &mut rng);
                    let (steps, labels) = task.step_labels(&p, &with_eos(&d)).unwrap();
                    (p, steps, labels)
                })
                .collect::<Vec<_>>()
        };
        let raw_train = raw(Split::Train, n_train);
        let raw_eval = raw(Split::Eval, n_eval);
        let tokenizer = Tokenizer::train_bpe(
            raw_train.iter().flat_map(|(p, s, _)| {
                std::iter::once(p.clone()).chain(s.iter().map(|x| format!("{x};")))
            }),
            // bytes and the specials, no merges: digits stay single tokens, so checking a step's
            // arithmetic is a pattern over aligned digits rather than a lookup of number tokens
            ARITH_VOCAB,
        )
        .unwrap();
        let encode = |raw: &[(String, Vec<String>, Vec<bool>)]| {
            raw.iter()
                .map(|(p, steps, labels)| LabelledExample {
                    prompt: tokenizer.encode(p).unwrap(),
                    segments: steps
                        .iter()
                        .map(|s| tokenizer.encode(&format!("{s};")).unwrap())
                        .collect(),
                    labels: labels.clone(),
                })
                .collect::<Vec<_>>()
        };
        let eval = encode(&raw_eval);
        let labels: Vec<bool> = eval.iter().flat_map(|e| e.labels.clone()).collect();
        let pos = labels.iter().filter(|&&l| l).count() as f64 / labels.len() as f64;
        ArithData {
            train: encode(&raw_train),
            eval,
            tokenizer,
            majority: pos.max(1.0 - pos),
        }
    }
}
