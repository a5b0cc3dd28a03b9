//! The SFT policy of `arith-steps` and what is sampled from it: the task of a configuration, its
//! tokenizer, the cached SFT models, the cached candidates on held-out prompts and the cached
//! solutions the verifiers learn from.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use rlhf_core::{Result, Scorer};
use rlhf_data::Tokenizer;
use rlhf_data::tasks::{ArithSteps, EOS, Task, with_eos};

use super::Measured;
use super::baselines::final_answer;
use crate::cache::{cached_dir, read_json, write_json};
use crate::config::RunConfig;
use crate::judge::sample;
use crate::metrics::names;
use crate::stages::{Prompts, Sft, sft_model};

/// Bytes and the two special tokens, no merges: every digit is its own token, so checking a
/// step is a pattern over aligned digits rather than a lookup of number tokens.
const BYTE_VOCAB: usize = 258;

/// Rows of one sampling batch. Each batch of prompts is seeded by its index, so the samples of
/// the first prompts do not depend on how many follow them.
const ROWS: usize = 256;

/// The held-out prompts the candidates are drawn on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Held {
    /// Prompts of `task.arith.terms` terms, as in training.
    InDomain,
    /// Prompts of `task.arith.ood_terms` terms: out of distribution.
    Ood,
}

impl Held {
    fn prompts(self) -> Prompts {
        match self {
            Held::InDomain => Prompts::Judge,
            Held::Ood => Prompts::Ood,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Held::InDomain => "in",
            Held::Ood => "ood",
        }
    }
}

/// What every stage of a point reads: its configuration, the task, the tokenizer and where the
/// task's stages are cached.
pub(crate) struct Setup<'a> {
    /// The configuration.
    pub cfg: &'a RunConfig,
    /// The task, with the configuration's difficulty.
    pub task: ArithSteps,
    /// The byte-level tokenizer.
    pub tok: Tokenizer,
    /// `cache/arith-…`: the stages of this difficulty (the SFT models' keys name their budget
    /// and seed only, so the task's settings name the directory).
    pub root: PathBuf,
}

impl<'a> Setup<'a> {
    /// The setup of `cfg`, caching under `cache`.
    pub fn new(cfg: &'a RunConfig, cache: &Path) -> Result<Self> {
        let a = &cfg.task.arith;
        let task = ArithSteps {
            max_operand: a.max_operand,
            min_terms: a.terms,
            max_terms: a.terms,
            ood_terms: Some(a.ood_terms),
            step_error: a.step_error,
            ..ArithSteps::default()
        };
        let root = cache.join(format!(
            "arith-t{}-o{}-e{}",
            a.terms, a.max_operand, a.step_error
        ));
        Ok(Setup {
            cfg,
            task,
            tok: tokenizer()?,
            root,
        })
    }

    /// Prompts `0..n` of `use_` for this seed.
    pub fn prompts(&self, use_: Prompts, n: usize) -> Vec<String> {
        use_.first(&self.task, self.cfg.seed, n)
    }

    /// The SFT model of `size` on this seed's `task.demos` demonstrations of the noisy solver
    /// (cached per size, budget and seed).
    pub fn sft(&self, size: &str, device: &Device) -> Result<Sft> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.cfg.seed);
        let data: Vec<(Vec<u32>, Vec<u32>)> = self
            .prompts(Prompts::Demos, self.cfg.task.demos)
            .iter()
            .map(|p| {
                let d = with_eos(&self.task.demonstrate(p, &mut rng));
                Ok((self.tok.encode(p)?, self.tok.encode(&d)?))
            })
            .collect::<Result<_>>()?;
        sft_model(self.cfg, size, &self.tok, &data, &self.root, device)
    }

    /// The SFT policy's size, tokens and FLOPs.
    pub fn add_sft_metrics(&self, sft: &Sft, out: &mut Measured) {
        out.metric(
            names::PARAMS_POLICY,
            sft.shape.non_embedding_params() as f64,
        );
        out.metric(names::TOKENS_SFT, sft.tokens);
        out.metric(names::FLOPS_SFT, sft.flops);
    }

    /// `method.best_of_n` candidates per prompt of `sft` on `task.eval_prompts` held-out prompts
    /// of `held`, judged (cached per SFT model, prompts and sampling settings).
    pub fn candidates(&self, sft: &Sft, held: Held) -> Result<Candidates> {
        let (cfg, j) = (self.cfg, &self.cfg.judge);
        let n = cfg.method.best_of_n;
        let terms = match held {
            Held::InDomain => cfg.task.arith.terms,
            Held::Ood => cfg.task.arith.ood_terms,
        };
        let dir = self.root.join(format!(
            "candidates-{}-{}{terms}-p{}-n{n}-t{}-m{}",
            sft.key,
            held.name(),
            cfg.task.eval_prompts,
            j.temperature,
            j.max_new_tokens
        ));
        cached_dir(&dir, |tmp| {
            let prompts = self.prompts(held.prompts(), cfg.task.eval_prompts);
            let seed = cfg.seed.wrapping_add(match held {
                Held::InDomain => 31,
                Held::Ood => 32,
            });
            let texts = sample_stable(sft, &self.tok, &prompts, n, self.cfg, seed)?;
            write_json(
                tmp,
                "candidates.json",
                &Candidates::judge(&self.task, prompts, n, texts),
            )
        })?;
        read_json(&dir, "candidates.json")
    }

    /// `count` solutions of `sft`, `per_prompt` on each of the first prompts of `use_`
    /// (prompt-major; cached per SFT model, use, count, solutions per prompt and sampling
    /// settings). The solutions of a smaller count are the first of a larger one's.
    pub fn solutions(
        &self,
        sft: &Sft,
        use_: Prompts,
        count: usize,
        per_prompt: usize,
    ) -> Result<Vec<(String, String)>> {
        let j = &self.cfg.judge;
        let k = per_prompt.max(1);
        let dir = self.root.join(format!(
            "solutions-{}-{use_:?}-c{count}-k{k}-t{}-m{}",
            sft.key, j.temperature, j.max_new_tokens
        ));
        cached_dir(&dir, |tmp| {
            // whole sampling batches, so the first `count` do not depend on `count`
            let batch = (ROWS / k).max(1);
            let prompts = self.prompts(use_, count.div_ceil(k).div_ceil(batch) * batch);
            let seed = self.cfg.seed.wrapping_add(33 + use_ as u64);
            let texts = sample_stable(sft, &self.tok, &prompts, k, self.cfg, seed)?;
            let pairs: Vec<(String, String)> = texts
                .into_iter()
                .enumerate()
                .map(|(i, t)| (prompts[i / k].clone(), t))
                .take(count)
                .collect();
            write_json(tmp, "solutions.json", &pairs)
        })?;
        read_json(&dir, "solutions.json")
    }
}

/// The tokenizer of `arith-steps`: bytes and the special tokens.
pub(crate) fn tokenizer() -> Result<Tokenizer> {
    let task = ArithSteps::default();
    let corpus: Vec<String> = (0..64)
        .map(|i| {
            let p = task.prompt(rlhf_data::Split::Train, i);
            format!("{p}{}", with_eos(&task.reference(&p)))
        })
        .collect();
    Tokenizer::train_bpe(corpus.iter(), BYTE_VOCAB)
}

/// `k` samples of `sft` per prompt at the judge's temperature, prompt-major, in batches of
/// [`ROWS`] rows each seeded by `seed` and its index.
fn sample_stable(
    sft: &Sft,
    tok: &Tokenizer,
    prompts: &[String],
    k: usize,
    cfg: &RunConfig,
    seed: u64,
) -> Result<Vec<String>> {
    let j = &cfg.judge;
    let mut out = Vec::with_capacity(prompts.len() * k);
    for (b, chunk) in prompts.chunks((ROWS / k.max(1)).max(1)).enumerate() {
        let s = sample(
            &sft.model,
            tok,
            chunk,
            k,
            j.temperature,
            j.max_new_tokens,
            seed.wrapping_add((b as u64) << 20),
        )?;
        out.extend(s.texts);
    }
    Ok(out)
}

/// Candidates of the held-out prompts, judged by the gold final answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Candidates {
    /// Candidates per prompt.
    pub n: usize,
    /// The prompts.
    pub prompts: Vec<String>,
    /// Every candidate, prompt-major (ending with the EOS text when it ended).
    pub texts: Vec<String>,
    /// Every candidate's final answer, when it has one.
    pub answers: Vec<Option<i64>>,
    /// Whether every candidate's final answer is right.
    pub right: Vec<bool>,
}

impl Candidates {
    /// Judges `texts`, `n` per prompt of `prompts`.
    pub fn judge(task: &ArithSteps, prompts: Vec<String>, n: usize, texts: Vec<String>) -> Self {
        let right = texts
            .iter()
            .enumerate()
            .map(|(i, t)| is_right(task, &prompts[i / n], t))
            .collect();
        Candidates {
            n,
            answers: texts.iter().map(|t| final_answer(t)).collect(),
            prompts,
            texts,
            right,
        }
    }

    /// The candidates of prompt `i`: their range in the prompt-major vectors.
    pub fn of(&self, i: usize) -> std::ops::Range<usize> {
        i * self.n..(i + 1) * self.n
    }

    /// `scorer`'s score of every candidate.
    pub fn score(&self, scorer: &dyn Scorer) -> Result<Vec<f64>> {
        let mut out = Vec::with_capacity(self.texts.len());
        for (b, texts) in self.texts.chunks(ROWS).enumerate() {
            let prompts: Vec<&str> = (b * ROWS..b * ROWS + texts.len())
                .map(|j| self.prompts[j / self.n].as_str())
                .collect();
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            out.extend(scorer.score(&prompts, &refs)?.into_iter().map(f64::from));
        }
        Ok(out)
    }
}

/// Whether `response` ends and its final answer is the chain's true result.
pub(crate) fn is_right(task: &ArithSteps, prompt: &str, response: &str) -> bool {
    response.ends_with(EOS) && task.gold(prompt, response).component("outcome") == 1.0
}
