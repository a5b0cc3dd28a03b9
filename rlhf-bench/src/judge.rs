//! The judge of `tldr-synth`: samples on a seed's held-out prompts, scored by the gold scorer,
//! against the references and the SFT policy, prompt by prompt.
//!
//! - The policy writes `judge.samples` responses per prompt at `judge.temperature` (the
//!   training temperature); each prompt's values are averaged over its samples, so a point
//!   stores one value per prompt ([`crate::metrics::items`]) and the findings pair points of a
//!   seed prompt by prompt.
//! - The **references** are one demonstration per prompt, with the demonstrator's noise: the
//!   analogue of the TL;DR dataset's human-written summaries, which an RLHF policy can beat.
//!   The perfect summary's gold score (1) is the ceiling.
//! - The SFT policy's samples at the judge's temperature and at `judge.cold_temperature`
//!   (sharpening alone, no RLHF) are the baselines; they depend on the SFT model and the seed
//!   only, so they are sampled once and cached beside the SFT model.
//! - Best-of-n draws `n_max` SFT samples per prompt once (cached per RM) and judges every
//!   `n ≤ n_max` on disjoint groups of `n` of them.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Module;
use burn::tensor::Device;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use rlhf_core::{Result, Scorer};
use rlhf_data::Tokenizer;
use rlhf_data::tasks::{Task, TldrSynth, with_eos};
use rlhf_models::{CausalLm, SamplingConfig, sample_texts};
use rlhf_reward::RewardScorer;

use crate::cache::{cached_dir, read_json, stop_if_interrupted, write_json};
use crate::config::RunConfig;
use crate::metrics::{items, names};
use crate::stages::Sft;
use crate::stats::mean;

/// Samples of a policy: `k` per prompt, prompt-major.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Samples {
    /// Samples per prompt.
    pub k: usize,
    /// Response tokens.
    pub ids: Vec<Vec<u32>>,
    /// Response texts (ending with the EOS text when the response ended).
    pub texts: Vec<String>,
}

/// Samples `k` responses per prompt from `policy` at `temperature` (seeded by `seed`), in
/// batches of up to 256 sequences. After SIGINT/SIGTERM it stops before its next batch
/// ([`stop_if_interrupted`]).
pub(crate) fn sample(
    policy: &CausalLm,
    tok: &Tokenizer,
    prompts: &[String],
    k: usize,
    temperature: f32,
    max_new_tokens: usize,
    seed: u64,
) -> Result<Samples> {
    let sampling = sampling_at(temperature, max_new_tokens);
    sample_batches(
        policy,
        tok,
        prompts,
        k,
        &sampling,
        seed,
        stop_if_interrupted,
    )
}

/// [`sample`] to the end whatever signal arrives: for an evaluation inside a trainer's iteration.
/// The trainer logs the iteration's line, checkpoints and stops right after it, so the
/// evaluation's point is logged instead of lost.
pub(crate) fn sample_to_the_end(
    policy: &CausalLm,
    tok: &Tokenizer,
    prompts: &[String],
    temperature: f32,
    max_new_tokens: usize,
    seed: u64,
) -> Result<Samples> {
    let sampling = sampling_at(temperature, max_new_tokens);
    sample_batches(policy, tok, prompts, 1, &sampling, seed, || Ok(()))
}

/// Sampling at `temperature`, up to `max_new_tokens`, otherwise by default.
fn sampling_at(temperature: f32, max_new_tokens: usize) -> SamplingConfig {
    SamplingConfig {
        max_new_tokens,
        temperature,
        ..Default::default()
    }
}

/// `k` samples per prompt in batches of up to 256 sequences, calling `between` before each batch.
fn sample_batches(
    policy: &CausalLm,
    tok: &Tokenizer,
    prompts: &[String],
    k: usize,
    sampling: &SamplingConfig,
    seed: u64,
    between: impl Fn() -> Result<()>,
) -> Result<Samples> {
    let valid = policy.valid();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Samples {
        k,
        ids: Vec::with_capacity(prompts.len() * k),
        texts: Vec::with_capacity(prompts.len() * k),
    };
    for chunk in prompts.chunks((256 / k.max(1)).max(1)) {
        between()?;
        let many: Vec<&str> = chunk
            .iter()
            .flat_map(|p| std::iter::repeat_n(p.as_str(), k))
            .collect();
        let (ids, texts) = sample_texts(&valid, tok, &many, sampling, &mut rng)?;
        out.ids.extend(ids);
        out.texts.extend(texts);
    }
    Ok(out)
}

/// One reference per prompt of `seed` (see the module documentation) and its gold score.
pub(crate) fn references(task: &TldrSynth, prompts: &[String], seed: u64) -> Vec<(String, f64)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(9_001));
    prompts
        .iter()
        .map(|p| {
            let r = with_eos(&task.demonstrate(p, &mut rng));
            let g = task.gold(p, &r).total;
            (r, g)
        })
        .collect()
}

/// 1 when `a` beats `b`, ½ on a tie, 0 otherwise.
pub(crate) fn win(a: f64, b: f64) -> f64 {
    if a > b {
        1.0
    } else if a == b {
        0.5
    } else {
        0.0
    }
}

/// The gold verdict on samples, per prompt (means over its samples).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Judged {
    /// Gold score of every sample, prompt-major.
    pub gold: Vec<f64>,
    /// Mean gold per prompt.
    pub gold_per_prompt: Vec<f64>,
    /// Win rate against the prompt's reference.
    pub win_per_prompt: Vec<f64>,
    /// Mean length in tokens per prompt.
    pub length_per_prompt: Vec<f64>,
    /// Means of the gold score's components over every sample.
    pub components: BTreeMap<String, f64>,
    /// Share of samples that ended with EOS.
    pub eos: f64,
}

/// Scores `samples` of `prompts` with the gold scorer against `refs`.
pub(crate) fn judge_gold(
    task: &TldrSynth,
    prompts: &[String],
    refs: &[(String, f64)],
    samples: &Samples,
    eos_text: &str,
) -> Judged {
    let k = samples.k.max(1);
    let mut out = Judged::default();
    let mut eos = 0usize;
    for (i, p) in prompts.iter().enumerate() {
        let (mut g, mut w, mut l) = (0.0, 0.0, 0.0);
        for j in i * k..(i + 1) * k {
            let score = task.gold(p, &samples.texts[j]);
            g += score.total;
            w += win(score.total, refs[i].1);
            l += samples.ids[j].len() as f64;
            eos += usize::from(samples.texts[j].ends_with(eos_text));
            for (name, v) in &score.components {
                *out.components.entry(format!("gold/{name}")).or_default() += v;
            }
            out.gold.push(score.total);
        }
        out.gold_per_prompt.push(g / k as f64);
        out.win_per_prompt.push(w / k as f64);
        out.length_per_prompt.push(l / k as f64);
    }
    let n = (prompts.len() * k).max(1) as f64;
    for v in out.components.values_mut() {
        *v /= n;
    }
    out.eos = eos as f64 / n;
    out
}

/// The SFT policy's judged samples at the judge's and at the cold temperature.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Baseline {
    /// Samples at `judge.temperature`.
    pub samples: Samples,
    /// Their verdict.
    pub judged: Judged,
    /// The verdict on samples at `judge.cold_temperature`.
    pub cold: Judged,
}

/// The SFT baselines of `sft` on `prompts` (cached per SFT model, judge settings and prompts).
pub(crate) fn sft_baseline(
    cfg: &RunConfig,
    task: &TldrSynth,
    tok: &Tokenizer,
    sft: &Sft,
    prompts: &[String],
    refs: &[(String, f64)],
    cache: &Path,
) -> Result<Baseline> {
    let j = &cfg.judge;
    let dir = cache.join(format!(
        "judge-{}-n{}-k{}-t{}-c{}-m{}",
        sft.key,
        prompts.len(),
        j.samples,
        j.temperature,
        j.cold_temperature,
        j.max_new_tokens
    ));
    cached_dir(&dir, |tmp| {
        let eos = tok.eos_text();
        let seed = cfg.seed.wrapping_add(11);
        let hot = sample(
            &sft.model,
            tok,
            prompts,
            j.samples,
            j.temperature,
            j.max_new_tokens,
            seed,
        )?;
        let cold = sample(
            &sft.model,
            tok,
            prompts,
            j.samples,
            j.cold_temperature,
            j.max_new_tokens,
            seed.wrapping_add(1),
        )?;
        let baseline = Baseline {
            judged: judge_gold(task, prompts, refs, &hot, &eos),
            cold: judge_gold(task, prompts, refs, &cold, &eos),
            samples: hot,
        };
        write_json(tmp, "baseline.json", &baseline)
    })?;
    read_json(&dir, "baseline.json")
}

/// The RM's scores of `texts`, the `k` responses of each of `prompts`.
pub(crate) fn proxy_scores(
    rm: &RewardScorer,
    prompts: &[String],
    texts: &[String],
    k: usize,
) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(texts.len());
    for (ps, ts) in prompts.chunks(64).zip(texts.chunks(64 * k.max(1))) {
        let many: Vec<&str> = ps
            .iter()
            .flat_map(|p| std::iter::repeat_n(p.as_str(), k.max(1)))
            .collect();
        let refs: Vec<&str> = ts.iter().map(String::as_str).collect();
        out.extend(rm.score(&many, &refs)?.into_iter().map(f64::from));
    }
    Ok(out)
}

/// Means of consecutive groups of `k`.
pub(crate) fn per_prompt(v: &[f64], k: usize) -> Vec<f64> {
    v.chunks(k.max(1))
        .map(|c| c.iter().sum::<f64>() / c.len() as f64)
        .collect()
}

/// Adds the SFT baselines' metrics and items (`gold/sft`, `gold/sft_cold`, the win rates against
/// the references, lengths; the RM's score of the SFT samples when there is one).
pub(crate) fn add_baseline(
    base: &Baseline,
    refs: &[(String, f64)],
    prompts: &[String],
    rm: Option<&RewardScorer>,
    m: &mut BTreeMap<String, f64>,
    it: &mut BTreeMap<String, Vec<f64>>,
) -> Result<()> {
    let (hot, cold) = (&base.judged, &base.cold);
    m.insert(names::GOLD_SFT.into(), mean(&hot.gold_per_prompt));
    m.insert(names::GOLD_SFT_COLD.into(), mean(&cold.gold_per_prompt));
    m.insert(
        names::SFT_WIN_VS_REFERENCES.into(),
        mean(&hot.win_per_prompt),
    );
    m.insert(
        names::SFT_COLD_WIN_VS_REFERENCES.into(),
        mean(&cold.win_per_prompt),
    );
    m.insert(names::LENGTH_SFT.into(), mean(&hot.length_per_prompt));
    m.insert(
        names::GOLD_REFERENCES.into(),
        mean(refs.iter().map(|r| r.1)),
    );
    m.insert(names::GOLD_CEILING.into(), 1.0);
    it.insert(items::SFT_GOLD.into(), hot.gold_per_prompt.clone());
    it.insert(items::SFT_WIN.into(), hot.win_per_prompt.clone());
    it.insert(items::SFT_LENGTH.into(), hot.length_per_prompt.clone());
    it.insert(items::SFT_COLD_GOLD.into(), cold.gold_per_prompt.clone());
    it.insert(items::SFT_COLD_WIN.into(), cold.win_per_prompt.clone());
    if let Some(rm) = rm {
        let proxy = proxy_scores(rm, prompts, &base.samples.texts, base.samples.k)?;
        m.insert(names::PROXY_SFT.into(), mean(&proxy));
    }
    Ok(())
}

/// Adds a judged policy's metrics and items, against the SFT baseline `base`: gold (mean,
/// standard error over prompts, components, gain), win rates against the references and the
/// SFT samples, length, EOS share, and the RM's score when there is one.
pub(crate) fn add_judged(
    judged: &Judged,
    proxy: Option<&[f64]>,
    base: &Baseline,
    k: usize,
    m: &mut BTreeMap<String, f64>,
    it: &mut BTreeMap<String, Vec<f64>>,
) {
    let (gold, se) = crate::stats::mean_se(&judged.gold_per_prompt);
    m.insert(names::GOLD.into(), gold);
    m.insert(names::GOLD_SE.into(), se);
    m.insert(
        names::GOLD_GAIN.into(),
        gold - mean(&base.judged.gold_per_prompt),
    );
    for (name, v) in &judged.components {
        m.insert(name.clone(), *v);
    }
    m.insert(
        names::WIN_VS_REFERENCES.into(),
        mean(&judged.win_per_prompt),
    );
    // every sample of the policy against every SFT sample of the same prompt
    let kb = base.samples.k.max(1);
    let vs_sft: Vec<f64> = (0..judged.gold_per_prompt.len())
        .map(|i| {
            let mut w = 0.0;
            for a in &judged.gold[i * k..(i + 1) * k] {
                for b in &base.judged.gold[i * kb..(i + 1) * kb] {
                    w += win(*a, *b);
                }
            }
            w / (k * kb) as f64
        })
        .collect();
    m.insert(names::WIN_VS_SFT.into(), mean(&vs_sft));
    m.insert(names::LENGTH.into(), mean(&judged.length_per_prompt));
    m.insert(names::EOS.into(), judged.eos);
    it.insert(items::GOLD.into(), judged.gold_per_prompt.clone());
    it.insert(items::WIN.into(), judged.win_per_prompt.clone());
    it.insert(items::LENGTH.into(), judged.length_per_prompt.clone());
    if let Some(proxy) = proxy {
        let per = per_prompt(proxy, k);
        m.insert(names::PROXY.into(), mean(&per));
        it.insert(items::PROXY.into(), per);
    }
}

/// Candidates of best-of-n: `n_max` SFT samples per prompt with their RM scores.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Candidates {
    /// Candidates per prompt.
    pub n_max: usize,
    /// Every candidate's tokens, prompt-major.
    pub ids: Vec<Vec<u32>>,
    /// Every candidate's text.
    pub texts: Vec<String>,
    /// The RM's score of every candidate.
    pub proxy: Vec<f64>,
}

/// The best-of-n candidates of `sft` scored by the RM cached under `rm_key` (cached).
#[allow(clippy::too_many_arguments)]
pub(crate) fn candidates(
    cfg: &RunConfig,
    tok: &Tokenizer,
    sft: &Sft,
    rm: &RewardScorer,
    rm_key: &str,
    prompts: &[String],
    n_max: usize,
    cache: &Path,
) -> Result<Candidates> {
    let j = &cfg.judge;
    let dir = cache.join(format!(
        "bon-{}-{rm_key}-n{}-k{n_max}-t{}-m{}",
        sft.key,
        prompts.len(),
        j.temperature,
        j.max_new_tokens
    ));
    cached_dir(&dir, |tmp| {
        let s = sample(
            &sft.model,
            tok,
            prompts,
            n_max,
            j.temperature,
            j.max_new_tokens,
            cfg.seed.wrapping_add(13),
        )?;
        let proxy = proxy_scores(rm, prompts, &s.texts, n_max)?;
        write_json(
            tmp,
            "candidates.json",
            &Candidates {
                n_max,
                ids: s.ids,
                texts: s.texts,
                proxy,
            },
        )
    })?;
    read_json(&dir, "candidates.json")
}

/// Best-of-`n` picks from `c`: the RM's best of each of the `n_max / n` disjoint groups of `n`
/// candidates of every prompt (ties: the first), as [`Samples`] with `n_max / n` per prompt, and
/// their RM scores.
pub(crate) fn best_of(c: &Candidates, n: usize) -> (Samples, Vec<f64>) {
    best_of_by(c, n, &c.proxy)
}

/// Best-of-`n` picks from `c` by the gold score instead of the RM: what a reward model without
/// error would pick among the same candidates (Gao et al.'s gold-RM best-of-n), and their RM
/// scores.
pub(crate) fn best_of_by_gold(
    c: &Candidates,
    n: usize,
    task: &TldrSynth,
    prompts: &[String],
) -> (Samples, Vec<f64>) {
    let gold: Vec<f64> = c
        .texts
        .iter()
        .enumerate()
        .map(|(j, t)| task.gold(&prompts[j / c.n_max.max(1)], t).total)
        .collect();
    best_of_by(c, n, &gold)
}

/// Best-of-`n` picks from `c` by `score` (one per candidate).
fn best_of_by(c: &Candidates, n: usize, score: &[f64]) -> (Samples, Vec<f64>) {
    let groups = (c.n_max / n.max(1)).max(1);
    let prompts = c.texts.len() / c.n_max.max(1);
    let mut out = Samples {
        k: groups,
        ids: Vec::new(),
        texts: Vec::new(),
    };
    let mut proxy = Vec::new();
    for i in 0..prompts {
        for g in 0..groups {
            let start = i * c.n_max + g * n;
            let best = (start..start + n)
                .reduce(|b, j| if score[j] > score[b] { j } else { b })
                .expect("n ≥ 1");
            out.ids.push(c.ids[best].clone());
            out.texts.push(c.texts[best].clone());
            proxy.push(c.proxy[best]);
        }
    }
    (out, proxy)
}

/// The sampled KL to `reference` of each sample of `policy`, averaged per prompt.
pub(crate) fn kl_per_prompt(
    policy: &CausalLm,
    reference: &CausalLm,
    tok: &Tokenizer,
    prompts: &[String],
    samples: &Samples,
    temperature: f32,
    device: &Device,
) -> Result<Vec<f64>> {
    let prompt_ids: Vec<Vec<u32>> = prompts
        .iter()
        .flat_map(|p| std::iter::repeat_n(p, samples.k))
        .map(|p| tok.encode_start(p))
        .collect::<Result<_>>()?;
    let kl = rlhf_models::sequence_kl(
        policy,
        reference,
        &prompt_ids,
        &samples.ids,
        temperature,
        device,
    )?;
    Ok(per_prompt(&kl, samples.k))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The child of the test below, alone in its process, since the interrupt flag is the
    /// process's: with the flag raised, `sample` stops before its first batch and
    /// `sample_to_the_end` samples every prompt.
    #[test]
    #[ignore = "the child process of an interrupt test"]
    fn interrupt_child() {
        if rlhf_testkit::crash::child_dir().is_none() {
            return;
        }
        let task = TldrSynth::default();
        let prompts = eval_prompts(&task, 3);
        let tok = Tokenizer::train_bpe(prompts.iter(), 300).unwrap();
        let device = rlhf_core::device::device_from_env().unwrap();
        let (_, policy) = rlhf_testkit::pairs::tiny_backbone(&device, tok.vocab_size(), 1);
        rlhf_core::train::interrupt::request();
        let stopped = sample(&policy, &tok, &prompts, 2, 1.0, 4, 0);
        assert!(
            matches!(stopped, Err(rlhf_core::Error::Interrupted { .. })),
            "{stopped:?}"
        );
        let finished = sample_to_the_end(&policy, &tok, &prompts, 1.0, 4, 0).unwrap();
        assert_eq!(finished.texts.len(), prompts.len());
    }

    #[test]
    fn after_an_interrupt_sampling_stops_but_a_learning_curve_evaluation_finishes() {
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new(&exe)
            .args([
                rlhf_testkit::test_name!(interrupt_child).as_str(),
                "--exact",
                "--ignored",
                "--test-threads=1",
            ])
            .env(rlhf_testkit::crash::CHILD_DIR_ENV, std::env::temp_dir())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn best_of_n_picks_the_rms_best_of_disjoint_groups() {
        let c = Candidates {
            n_max: 4,
            ids: vec![
                vec![1],
                vec![2],
                vec![3],
                vec![4],
                vec![5],
                vec![6],
                vec![7],
                vec![8],
            ],
            texts: (1..=8).map(|i| i.to_string()).collect(),
            proxy: vec![0.1, 0.9, 0.5, 0.2, 0.3, 0.3, 0.8, 0.0],
        };
        let (one, _) = best_of(&c, 1);
        assert_eq!(one.k, 4);
        assert_eq!(one.texts, c.texts);
        let (two, p) = best_of(&c, 2);
        assert_eq!(two.texts, ["2", "3", "5", "7"]);
        assert_eq!(p, [0.9, 0.5, 0.3, 0.8]);
        let (four, _) = best_of(&c, 4);
        assert_eq!((four.k, four.texts), (1, vec!["2".to_string(), "7".into()]));
    }

    /// The first `n` held-out prompts of `tldr-synth`.
    fn eval_prompts(task: &TldrSynth, n: u64) -> Vec<String> {
        (0..n)
            .map(|i| task.prompt(rlhf_data::Split::Eval, i))
            .collect()
    }

    #[test]
    fn the_gold_pick_takes_each_groups_best_gold_whatever_the_rm_says() {
        let task = TldrSynth::default();
        let prompts = eval_prompts(&task, 2);
        let perfect = |i: usize| with_eos(&task.reference(&prompts[i]));
        let hallucinated = with_eos(" nobody owns anything");
        let unfinished = task.reference(&prompts[0]);
        // two groups of two per prompt; the RM prefers the wrong candidate in three of them
        let texts = vec![
            hallucinated.clone(),
            perfect(0),
            unfinished.clone(),
            hallucinated.clone(),
            perfect(1),
            hallucinated.clone(),
            hallucinated.clone(),
            with_eos(" sorry for the long post"),
        ];
        let gold: Vec<f64> = texts
            .iter()
            .enumerate()
            .map(|(j, t)| task.gold(&prompts[j / 4], t).total)
            .collect();
        let c = Candidates {
            n_max: 4,
            ids: vec![vec![0]; 8],
            texts: texts.clone(),
            proxy: vec![0.9, 0.1, 0.2, 0.8, 0.0, 0.5, 0.7, 0.6],
        };
        let (by_rm, _) = best_of(&c, 2);
        assert_eq!(by_rm.texts, [0, 3, 5, 6].map(|j| texts[j].clone()).to_vec());
        let (by_gold, proxy) = best_of_by_gold(&c, 2, &task, &prompts);
        let picked: Vec<usize> = (0..4)
            .map(|g| {
                if gold[2 * g + 1] > gold[2 * g] {
                    2 * g + 1
                } else {
                    2 * g
                }
            })
            .collect();
        assert_eq!(picked[..3], [1, 2, 4]);
        assert_eq!(
            by_gold.texts,
            picked.iter().map(|&j| texts[j].clone()).collect::<Vec<_>>()
        );
        // the picks carry their own RM scores
        assert_eq!(
            proxy,
            picked.iter().map(|&j| c.proxy[j]).collect::<Vec<_>>()
        );
        // over the whole group of four, the perfect summary wins on both prompts
        let (four, _) = best_of_by_gold(&c, 4, &task, &prompts);
        assert_eq!(four.texts, [perfect(0), perfect(1)]);
    }

    #[test]
    fn the_judge_averages_each_prompts_samples() {
        let task = TldrSynth::default();
        let prompts = eval_prompts(&task, 2);
        let perfect: Vec<String> = prompts
            .iter()
            .map(|p| with_eos(&task.reference(p)))
            .collect();
        let samples = Samples {
            k: 2,
            ids: vec![vec![0; 3], vec![0; 5], vec![0; 4], vec![0; 4]],
            texts: vec![
                perfect[0].clone(),
                String::new(),
                perfect[1].clone(),
                perfect[1].clone(),
            ],
        };
        let refs = vec![("r".to_string(), 1.0), ("r".to_string(), 0.5)];
        let j = judge_gold(&task, &prompts, &refs, &samples, rlhf_data::tasks::EOS);
        let empty = task.gold(&prompts[0], "").total;
        assert_eq!(j.gold_per_prompt, [(1.0 + empty) / 2.0, 1.0]);
        // a tie with the reference counts half, a loss nothing, a win one
        assert_eq!(j.win_per_prompt, [0.25, 1.0]);
        assert_eq!(j.length_per_prompt, [4.0, 4.0]);
        assert_eq!(j.eos, 0.75);
    }
}
