//! Steps 1–3 of the on-policy recipe: sample `n` responses per prompt, cut them at EOS, score
//! them (DAPO's overlong punishment, the reward clip, the missing-EOS penalty); and DAPO's dynamic
//! sampling, which keeps only groups whose scores differ, sampling more prompts until the batch
//! is full.

use rand::seq::IndexedRandom;
use rlhf_core::train::TrainRng;
use rlhf_core::train::metrics::names;
use rlhf_core::{Result, Scorer};
use rlhf_data::Tokenizer;
use rlhf_models::{CausalLm, Generation, generate};

use crate::config::PpoConfig;
use crate::rewards::{apply_missing_eos_penalty, overlong_penalty};
use crate::trainer::encode_queries;

/// Sampled, scored responses, prompt-major: the `n` samples of a prompt are consecutive rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    /// Left-padded query ids and mask, `[rows, query_length]`.
    pub query_ids: Vec<u32>,
    /// See `query_ids`.
    pub query_mask: Vec<u8>,
    /// The samples, masked after EOS.
    pub generation: Generation,
    /// One score per row: the scorer's plus the overlong punishment, held in `reward_clip_range`,
    /// or the missing-EOS penalty in its place.
    pub scores: Vec<f32>,
    /// The scorer's own scores, before any of those (what dynamic sampling compares: DAPO drops
    /// groups whose accuracy is all 0 or all 1, whatever their lengths).
    pub raw_scores: Vec<f32>,
    /// Response tokens per row (up to and including EOS).
    pub lengths: Vec<usize>,
    /// The overlong punishment of each row (0 when off).
    pub overlong: Vec<f32>,
    /// Each named part of the scorer's scores (several reward functions), one value per row.
    pub score_parts: Vec<(String, Vec<f32>)>,
    /// The parts' weights when the scorer's scores are their weighted sum
    /// ([`rlhf_core::Scored::weights`]).
    pub score_weights: Option<Vec<f32>>,
}

/// Samples `n` responses to each of `prompts` with `policy` (an inference model), cut at the
/// `tokenizer`'s EOS, and scores them with `scorer`.
pub fn sample_and_score(
    policy: &CausalLm,
    (tokenizer, scorer): (&Tokenizer, &dyn Scorer),
    prompts: &[&str],
    cfg: &PpoConfig,
    rng: &mut TrainRng,
) -> Result<Rollout> {
    let n = cfg.samples_per_prompt;
    let q = cfg.query_length;
    let episodes: Vec<&str> = prompts
        .iter()
        .flat_map(|p| std::iter::repeat_n(*p, n))
        .collect();
    // each prompt is tokenised once and its row repeated n times
    let (prompt_ids, prompt_mask) = encode_queries(tokenizer, prompts, q)?;
    let query_ids = repeat_rows(&prompt_ids, q, n);
    let query_mask = repeat_rows(&prompt_mask, q, n);
    let sampling = cfg.sampling().ending_as(tokenizer);
    let generation = generate(
        policy,
        &query_ids,
        &query_mask,
        episodes.len(),
        &sampling,
        rng,
    )?;
    let width = generation.new_len;
    let lengths: Vec<usize> = (0..generation.batch)
        .map(|b| {
            generation.mask[b * width..(b + 1) * width]
                .iter()
                .map(|&m| usize::from(m))
                .sum()
        })
        .collect();
    // responses cut at EOS (the mask), scored; no EOS ⇒ the penalty
    let texts = (0..generation.batch)
        .map(|b| {
            let row = b * width..(b + 1) * width;
            let kept: Vec<u32> = generation.tokens[row.clone()]
                .iter()
                .zip(&generation.mask[row])
                .filter(|(_, m)| **m == 1)
                .map(|(t, _)| *t)
                .collect();
            tokenizer.decode_response(&kept)
        })
        .collect::<Result<Vec<_>>>()?;
    let text_refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let scored = rlhf_core::score_parts_each(scorer, &episodes, &text_refs)?;
    let raw_scores = scored.scores;
    let (scores, overlong) = shaped_scores(&raw_scores, &lengths, &generation.has_eos, cfg);
    Ok(Rollout {
        query_ids,
        query_mask,
        generation,
        scores,
        raw_scores,
        lengths,
        overlong,
        score_parts: scored.parts,
        score_weights: scored.weights,
    })
}

/// The scores the advantages are made of, from the scorer's `raw` ones of responses of `lengths`
/// tokens, and DAPO's overlong punishment of each. The punishment is one of TRL's reward
/// functions: it joins their sum, which the reward clip then holds, as TRL RLOO's holds it. The
/// missing-EOS penalty replaces the score, clipped or not (the two punishments exclude each
/// other: `PpoConfig::validate`).
fn shaped_scores(
    raw: &[f32],
    lengths: &[usize],
    has_eos: &[bool],
    cfg: &PpoConfig,
) -> (Vec<f32>, Vec<f32>) {
    let mut scores = raw.to_vec();
    let mut overlong = vec![0.0; scores.len()];
    if let Some(buffer) = cfg.overlong_buffer {
        for ((s, &len), pen) in scores.iter_mut().zip(lengths).zip(&mut overlong) {
            *pen = overlong_penalty(len, cfg.response_length, buffer, cfg.overlong_penalty);
            *s += *pen;
        }
    }
    if let Some((lo, hi)) = cfg.reward_clip_range {
        // `max` then `min`, not `clamp`, which panics on a range `validate` would refuse
        for s in scores.iter_mut().filter(|s| !s.is_nan()) {
            *s = s.max(lo).min(hi);
        }
    }
    if let Some(penalty) = cfg.missing_eos_penalty {
        apply_missing_eos_penalty(&mut scores, has_eos, penalty);
    }
    (scores, overlong)
}

/// Each `width`-long row of `v` repeated `n` times in place (prompt-major episodes).
pub(crate) fn repeat_rows<T: Copy>(v: &[T], width: usize, n: usize) -> Vec<T> {
    v.chunks(width)
        .flat_map(|row| std::iter::repeat_n(row, n).flatten().copied())
        .collect()
}

/// What dynamic sampling did in one iteration.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct DynamicSampling {
    /// Sampling rounds (verl's `num_gen_batches`).
    pub rounds: usize,
    /// Groups dropped because their `n` scores were all equal.
    pub dropped: usize,
    /// Dropped groups put back because the round cap left the batch short.
    pub refilled: usize,
}

impl DynamicSampling {
    /// As metrics.
    pub fn metrics(&self) -> rlhf_core::train::Metrics {
        vec![
            (names::DYNAMIC_SAMPLING_ROUNDS, self.rounds as f64),
            (names::DYNAMIC_SAMPLING_DROPPED, self.dropped as f64),
            (names::DYNAMIC_SAMPLING_REFILLED, self.refilled as f64),
        ]
    }
}

/// DAPO's dynamic sampling: starts from `first` (the iteration's own prompts); while fewer than
/// `groups` groups of `n` rows have scorer scores (before penalties and the reward clip) that are
/// not all equal
/// and fewer than `max_rounds`
/// rounds were sampled, samples `groups` more prompts (drawn from `prompts` with `rng`) with
/// `sample`. Keeps the first `groups` informative groups in the order they were sampled; a batch
/// still short after the last round is filled with dropped groups (which carry no group
/// advantage), so the batch keeps its size.
pub fn dynamic_sampling(
    first: Rollout,
    n: usize,
    groups: usize,
    max_rounds: usize,
    prompts: &[String],
    rng: &mut TrainRng,
    sample: &mut dyn FnMut(&[&str], &mut TrainRng) -> Result<Rollout>,
) -> Result<(Rollout, DynamicSampling)> {
    if prompts.is_empty() {
        return Err(rlhf_core::Error::Config(
            "dynamic sampling: no prompts to sample more groups from".into(),
        ));
    }
    let mut parts = vec![first];
    let mut stats = DynamicSampling {
        rounds: 1,
        ..DynamicSampling::default()
    };
    let informative = |r: &Rollout, g: usize| {
        let s = &r.raw_scores[g * n..(g + 1) * n];
        s.iter().any(|x| x.total_cmp(&s[0]).is_ne())
    };
    let count = |parts: &[Rollout]| -> usize {
        parts
            .iter()
            .map(|r| {
                (0..r.scores.len() / n)
                    .filter(|&g| informative(r, g))
                    .count()
            })
            .sum()
    };
    while count(&parts) < groups && stats.rounds < max_rounds {
        let more: Vec<&str> = (0..groups)
            .map(|_| prompts.choose(rng).expect("checked above").as_str())
            .collect();
        parts.push(sample(&more, rng)?);
        stats.rounds += 1;
    }
    let mut kept: Vec<(usize, usize)> = Vec::new();
    let mut flat: Vec<(usize, usize)> = Vec::new();
    for (p, r) in parts.iter().enumerate() {
        for g in 0..r.scores.len() / n {
            if informative(r, g) {
                kept.push((p, g));
            } else {
                flat.push((p, g));
            }
        }
    }
    stats.dropped = flat.len();
    kept.truncate(groups);
    let missing = groups.saturating_sub(kept.len());
    stats.refilled = missing.min(flat.len());
    kept.extend(flat.into_iter().take(missing));
    Ok((gather(&parts, &kept, n), stats))
}

/// The groups `picked` (`(part, group)`) of `parts`, in that order, as one rollout whose
/// responses are padded to the widest part (padding masked, filled with the part's filler).
fn gather(parts: &[Rollout], picked: &[(usize, usize)], n: usize) -> Rollout {
    let width = parts
        .iter()
        .map(|r| r.generation.new_len)
        .max()
        .unwrap_or(0);
    let q = parts[0].query_ids.len() / parts[0].scores.len().max(1);
    let rows = picked.len() * n;
    let mut out = Rollout {
        query_ids: Vec::with_capacity(rows * q),
        query_mask: Vec::with_capacity(rows * q),
        generation: Generation {
            batch: rows,
            new_len: width,
            tokens: Vec::with_capacity(rows * width),
            logprobs: Vec::with_capacity(rows * width),
            mask: Vec::with_capacity(rows * width),
            has_eos: Vec::with_capacity(rows),
        },
        scores: Vec::with_capacity(rows),
        raw_scores: Vec::with_capacity(rows),
        lengths: Vec::with_capacity(rows),
        overlong: Vec::with_capacity(rows),
        score_parts: parts[0]
            .score_parts
            .iter()
            .map(|(name, _)| (name.clone(), Vec::with_capacity(rows)))
            .collect(),
        score_weights: parts[0].score_weights.clone(),
    };
    for &(p, g) in picked {
        let r = &parts[p];
        let w = r.generation.new_len;
        for row in g * n..(g + 1) * n {
            out.query_ids
                .extend_from_slice(&r.query_ids[row * q..(row + 1) * q]);
            out.query_mask
                .extend_from_slice(&r.query_mask[row * q..(row + 1) * q]);
            let span = row * w..(row + 1) * w;
            let filler = r.generation.tokens[span.clone()]
                .last()
                .copied()
                .unwrap_or(0);
            let g_out = &mut out.generation;
            g_out
                .tokens
                .extend_from_slice(&r.generation.tokens[span.clone()]);
            g_out.tokens.extend(std::iter::repeat_n(filler, width - w));
            g_out
                .logprobs
                .extend_from_slice(&r.generation.logprobs[span.clone()]);
            g_out.logprobs.extend(std::iter::repeat_n(0.0, width - w));
            g_out.mask.extend_from_slice(&r.generation.mask[span]);
            g_out.mask.extend(std::iter::repeat_n(0, width - w));
            g_out.has_eos.push(r.generation.has_eos[row]);
            out.scores.push(r.scores[row]);
            out.raw_scores.push(r.raw_scores[row]);
            out.lengths.push(r.lengths[row]);
            out.overlong.push(r.overlong[row]);
            for ((_, to), (_, from)) in out.score_parts.iter_mut().zip(&r.score_parts) {
                to.push(from[row]);
            }
        }
    }
    out
}
